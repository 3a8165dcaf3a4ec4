// Next-token sampling on the device: logits [rows, vocab] -> token ids [rows], no host round trip.
// The specification is src/reference/sample.rs; the header (l4c_sample) states the contract.
//
// One block of kBlock threads per row (the row is re-read from L2 on every sweep: 404 KB of bf16 at
// vocab 202048, too big for shared memory).
//  Greedy (temperature 0): one sweep, block argmax (value desc, index asc).
//  Top-p: weights w = expf((l - max) / t) in f32 (all 1 when every logit is -inf), quantised masses
//  q = rint(w * 2^S) as u64 with S = 63 - bitlen(vocab) (so sum q < 2^63 and integer sums are exact and
//  order-independent: the result is deterministic). Q = sum q, target = ceil(top_p * Q).
//    w* = the largest weight with sum{q_i : w_i >= w*} >= target: a radix select over the f32 bit
//    pattern of w (non-negative, so bit order is value order), 11 + 11 + 10 bits, each pass a shared
//    histogram of (mass, count) per digit and a block suffix scan that picks the highest digit whose
//    suffix mass (plus the mass already above) reaches the target. The first histogram is built in
//    the sweep that sums Q. A = mass strictly above w*; ties at w* are kept lowest index first, the
//    fewest c >= 1 with A + c q(w*) >= target. Kept = {w > w*} + those c ties; K = A + c q(w*).
//    The draw r = floor(u * K), u = the top 53 bits of hash(seed, step, row) / 2^53, picks the first
//    kept index (in index order) whose inclusive prefix mass exceeds r: per-warp kept mass over
//    contiguous warp segments, a scan over warps, then the one warp holding r walks its segment.
//  A NaN or +inf logit: the row gets id 0 and *status |= L4C_SAMPLE_BAD_LOGIT.
// A second one-thread launch advances *step after every row has read it.
#include <math.h>
#include <stdint.h>

#include "common/dispatch.cuh"
#include "common/dtype.cuh"
#include "common/reduce.cuh"
#include "common/status.cuh"
#include "llama4_cuda.h"

namespace {

using l4c::kFullMask;
using l4c::ranks_before;
using l4c::warp_argmax;
using l4c::to_float;

constexpr int kBlock = 1024;
constexpr int kWarps = kBlock / 32;
constexpr int kBins = 2048;  // 11-bit digits

// splitmix64's finaliser of z + golden ratio (the reference's `mix`).
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}


// Inclusive scan of a u64 over the 32 lanes of a warp.
__device__ __forceinline__ uint64_t warp_scan_u64(uint64_t v) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const uint64_t x = __shfl_up_sync(kFullMask, v, o);
        if (lane >= o) v += x;
    }
    return v;
}

__device__ __forceinline__ uint64_t warp_sum_u64(uint64_t v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
    return v;
}

// Exclusive scan of a u64 over the block (thread order); ends with a barrier.
__device__ __forceinline__ uint64_t block_exclusive_scan_u64(uint64_t v, uint64_t *warp_tot) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const uint64_t incl = warp_scan_u64(v);
    if (lane == 31) warp_tot[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        const uint64_t t = warp_tot[lane];  // kWarps == 32
        warp_tot[lane] = warp_scan_u64(t) - t;
    }
    __syncthreads();
    const uint64_t r = warp_tot[warp] + incl - v;
    __syncthreads();
    return r;
}

// The weight of logit v (f32, as the reference's `weight` within expf's 2 ulp).
__device__ __forceinline__ float weight(float v, float m, float t) {
    return m == -INFINITY ? 1.0f : expf((v - m) / t);
}

// Adds q to the 64-bit mass of bin d with native 32-bit shared atomics (a 64-bit shared atomicAdd is
// a compare-and-swap loop, slow under the contention of a histogram): each add to the low word carries
// into the high word exactly when it wraps, so the total is exact in any order.
__device__ __forceinline__ void add_mass(uint32_t *lo, uint32_t *hi, uint64_t q) {
    const uint32_t ql = uint32_t(q), qh = uint32_t(q >> 32);
    const uint32_t old = atomicAdd(lo, ql);
    const uint32_t up = qh + (old + ql < old ? 1u : 0u);
    if (up != 0) atomicAdd(hi, up);
}

struct Shared {
    // A bin's mass is (mass_hi << 32) + mass_lo, accumulated by add_mass.
    uint32_t mass_lo[kBins];
    uint32_t mass_hi[kBins];
    uint32_t count[kBins];
    uint64_t warp_tot[kWarps];
    uint64_t warp_aux[kWarps];
    float red_v[kWarps];
    int red_i[kWarps];
    uint32_t sel_digit;
    uint64_t sel_above;
    int sel_warp;
    int chosen;
};

template <typename T>
__global__ void __launch_bounds__(kBlock, 1)
    sample_kernel(const T *__restrict__ logits, int64_t stride, int vocab, float temperature, float top_p,
                  float scale, uint64_t seed, const uint64_t *__restrict__ step_word, uint32_t *__restrict__ ids,
                  uint32_t *__restrict__ history, int64_t history_len, uint32_t *__restrict__ status) {
    __shared__ Shared sh;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t rows = gridDim.x, row_i = blockIdx.x;
    const T *row = logits + row_i * stride;

    // Sweep 1: argmax (ties to the lower index) and the bad-logit check.
    float bv = -INFINITY;
    int bi = vocab;  // sentinel: every real entry ranks before (-inf, vocab)
    int bad = 0;
#pragma unroll 4
    for (int i = tid; i < vocab; i += kBlock) {
        const float v = to_float(row[i]);
        bad |= isnan(v) || v == INFINITY;
        if (ranks_before(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
    warp_argmax(bv, bi);
    if (lane == 0) {
        sh.red_v[warp] = bv;
        sh.red_i[warp] = bi;
    }
    bad = __syncthreads_or(bad);
    if (warp == 0) {
        bv = sh.red_v[lane];
        bi = sh.red_i[lane];
        warp_argmax(bv, bi);
        if (lane == 0) {
            sh.red_v[0] = bv;
            sh.chosen = bi;  // the most likely token: also the top-p fallback, always kept
            sh.sel_warp = -1;
        }
    }
    __syncthreads();
    const float m = sh.red_v[0];
    const uint64_t step = *step_word;

    if (!bad && temperature > 0.0f) {
        // Sweep 2: Q and the histogram of the top 11 bits. Masses of zero are skipped (never kept).
        for (int d = tid; d < kBins; d += kBlock) {
            sh.mass_lo[d] = 0;
            sh.mass_hi[d] = 0;
            sh.count[d] = 0;
        }
        __syncthreads();
        uint64_t part = 0;
#pragma unroll 4
        for (int i = tid; i < vocab; i += kBlock) {
            const float w = weight(to_float(row[i]), m, temperature);
            const uint64_t q = __float2ull_rn(w * scale);
            if (q == 0) continue;
            part += q;
            const uint32_t d = __float_as_uint(w) >> 21;
            add_mass(&sh.mass_lo[d], &sh.mass_hi[d], q);
            atomicAdd(&sh.count[d], 1u);
        }
        part = warp_sum_u64(part);
        if (lane == 0) sh.warp_tot[warp] = part;
        __syncthreads();
        uint64_t total = 0;
#pragma unroll 8
        for (int w = 0; w < kWarps; ++w) total += sh.warp_tot[w];
        uint64_t target = total;
        if (top_p < 1.0f) {
            const double tq = ceil(double(top_p) * double(total));
            target = tq < 1.0 ? 1 : (tq >= double(total) ? total : uint64_t(tq));
        }
        __syncthreads();  // every thread has read warp_tot

        uint32_t wbits = 0;  // w*'s bit pattern; 0 with c = 0 keeps every positive mass
        uint64_t above = 0;
        uint64_t c = 0, qstar = 0;
        if (target < total) {
            uint32_t prefix = 0;
            int known = 0;  // bits of w* determined by earlier passes
            uint32_t ties = 0;
            for (int pass = 0; pass < 3; ++pass) {
                const int width = pass == 2 ? 10 : 11, shift = 32 - known - width;
                if (pass > 0) {
                    for (int d = tid; d < kBins; d += kBlock) {
                        sh.mass_lo[d] = 0;
                        sh.mass_hi[d] = 0;
                        sh.count[d] = 0;
                    }
                    __syncthreads();
#pragma unroll 4
                    for (int i = tid; i < vocab; i += kBlock) {
                        const float w = weight(to_float(row[i]), m, temperature);
                        const uint32_t bits = __float_as_uint(w);
                        if ((bits >> (32 - known)) != prefix) continue;
                        const uint64_t q = __float2ull_rn(w * scale);
                        if (q == 0) continue;
                        const uint32_t d = (bits >> shift) & ((1u << width) - 1);
                        add_mass(&sh.mass_lo[d], &sh.mass_hi[d], q);
                        atomicAdd(&sh.count[d], 1u);
                    }
                    __syncthreads();
                }
                // Thread t owns digits hi = 2047 - 2t and hi - 1: thread order is descending digit
                // order, so an exclusive scan gives the mass of all higher digits.
                const int hi = kBins - 1 - 2 * tid;
                const uint64_t m_hi = (uint64_t(sh.mass_hi[hi]) << 32) + sh.mass_lo[hi];
                const uint64_t m_lo = (uint64_t(sh.mass_hi[hi - 1]) << 32) + sh.mass_lo[hi - 1];
                const uint64_t excl = block_exclusive_scan_u64(m_hi + m_lo, sh.warp_tot);
                const uint64_t s0 = above + excl, s1 = s0 + m_hi, s2 = s1 + m_lo;
                if (s0 < target && s1 >= target) {
                    sh.sel_digit = hi;
                    sh.sel_above = s0;
                } else if (s1 < target && s2 >= target) {
                    sh.sel_digit = hi - 1;
                    sh.sel_above = s1;
                }
                __syncthreads();
                const uint32_t d = sh.sel_digit;
                above = sh.sel_above;
                ties = sh.count[d];
                prefix = (prefix << width) | d;
                known += width;
                __syncthreads();  // sel_* and the histogram are rewritten by the next pass
            }
            wbits = prefix;
            qstar = __float2ull_rn(__uint_as_float(wbits) * scale);
            // target > above and qstar > 0 (the selected digit held mass): c in [1, ties].
            c = (target - above + qstar - 1) / qstar;
            if (c > ties) c = ties;
        }
        const uint64_t kept_total = target < total ? above + c * qstar : total;
        const uint64_t x = mix64(mix64(mix64(seed) ^ step) ^ uint64_t(row_i));
        const uint64_t r = __umul64hi(x & ~uint64_t(0x7ff), kept_total);  // floor(u * K), u = (x >> 11) / 2^53

        // Sweep: per warp, over a contiguous segment, the mass kept above w* and the ties at w*.
        const int seg = ((vocab + kWarps - 1) / kWarps + 31) & ~31;
        const int b0 = min(warp * seg, vocab), b1 = min(b0 + seg, vocab);
        uint64_t wmass = 0;
        uint32_t wties = 0;
        for (int i = b0 + lane; i < b1; i += 32) {
            const float w = weight(to_float(row[i]), m, temperature);
            const uint32_t bits = __float_as_uint(w);
            const uint64_t q = __float2ull_rn(w * scale);
            if (bits > wbits) wmass += q;
            wties += (bits == wbits && q != 0);
        }
        wmass = warp_sum_u64(wmass);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) wties += __shfl_xor_sync(kFullMask, wties, o);
        if (lane == 0) {
            sh.warp_tot[warp] = wmass;
            sh.warp_aux[warp] = wties;
        }
        __syncthreads();
        if (warp == 0) {
            // Tie ranks before each warp, then the kept mass before each warp (both exclusive).
            const uint64_t tw = sh.warp_aux[lane];
            const uint64_t tie_base = warp_scan_u64(tw) - tw;
            const uint64_t kt = tie_base >= c ? 0 : (c - tie_base < tw ? c - tie_base : tw);
            const uint64_t mw = sh.warp_tot[lane] + kt * qstar;
            const uint64_t mass_base = warp_scan_u64(mw) - mw;
            sh.warp_aux[lane] = tie_base;
            sh.warp_tot[lane] = mass_base;
            // The warp holding r: base <= r < base + mass (empty warps never match).
            if (mass_base <= r && r < mass_base + mw) sh.sel_warp = lane;
        }
        __syncthreads();
        if (warp == sh.sel_warp) {
            uint64_t run = sh.warp_tot[warp], tie_rank = sh.warp_aux[warp];
            for (int i0 = b0; i0 < b1; i0 += 32) {
                const int i = i0 + lane;
                float w = 0.0f;
                if (i < b1) w = weight(to_float(row[i]), m, temperature);
                const uint32_t bits = __float_as_uint(w);
                const uint64_t q = __float2ull_rn(w * scale);
                const bool tie = i < b1 && bits == wbits && q != 0;
                const unsigned tie_mask = __ballot_sync(kFullMask, tie);
                const uint64_t my_rank = tie_rank + __popc(tie_mask & ((1u << lane) - 1));
                const bool kept = i < b1 && (bits > wbits || (tie && my_rank < c));
                const uint64_t mk = kept ? q : 0;
                const uint64_t incl = run + warp_scan_u64(mk);
                const unsigned hit = __ballot_sync(kFullMask, mk != 0 && incl > r && incl - mk <= r);
                if (hit) {
                    if (lane == __ffs(hit) - 1) sh.chosen = i;
                    break;
                }
                run = __shfl_sync(kFullMask, incl, 31);
                tie_rank += __popc(tie_mask);
            }
        }
        __syncthreads();
    }
    if (tid == 0) {
        const uint32_t id = bad ? 0u : uint32_t(sh.chosen);
        if (bad) atomicOr(status, uint32_t(L4C_SAMPLE_BAD_LOGIT));
        ids[row_i] = id;
        if (history) history[int64_t(step % uint64_t(history_len)) * rows + row_i] = id;
    }
}

// Advances the step counter after every row of the launch before it has read it.
__global__ void sample_advance_kernel(uint64_t *step) { *step += 1; }

}  // namespace

extern "C" l4c_status l4c_sample(const l4c_sample_params *p, l4c_stream_t stream) {
    L4C_REQUIRE(p != nullptr);
    L4C_REQUIRE(p->rows >= 0 && p->vocab >= 0);
    if (p->rows == 0) return L4C_OK;
    L4C_REQUIRE(p->vocab >= 1 && p->vocab <= (int64_t(1) << 30));  // i + kBlock never overflows int
    L4C_REQUIRE(p->rows <= INT32_MAX);
    L4C_REQUIRE(p->logits_row_stride >= p->vocab);
    L4C_REQUIRE(p->logits && p->ids && p->step && p->status);
    L4C_REQUIRE(p->history == nullptr || p->history_len >= 1);
    L4C_REQUIRE(isfinite(p->temperature) && p->temperature >= 0.0f);
    L4C_REQUIRE(p->top_p > 0.0f && p->top_p <= 1.0f);
    // q = w * 2^S with w <= 1: vocab * 2^S < 2^63.
    int bitlen = 0;
    for (int64_t v = p->vocab; v != 0; v >>= 1) ++bitlen;
    const float scale = ldexpf(1.0f, 63 - bitlen);
    auto s = reinterpret_cast<cudaStream_t>(stream);
    const l4c_status st = l4c::dispatch_float(p->logits_dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        sample_kernel<T><<<unsigned(p->rows), kBlock, 0, s>>>(
            static_cast<const T *>(p->logits), p->logits_row_stride, int(p->vocab), p->temperature, p->top_p, scale,
            p->seed, p->step, p->ids, p->history, p->history_len, p->status);
        return L4C_LAUNCH_STATUS();
    });
    if (st != L4C_OK) return st;
    sample_advance_kernel<<<1, 1, 0, s>>>(p->step);
    return L4C_LAUNCH_STATUS();
}
