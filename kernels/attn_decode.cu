// KV append and split-KV flash decoding over the paged KV cache (l4c_kv_pages). Design, fragment
// maps and the fp8 rule: docs/ATTENTION-DECODE.md.
//
// Append (kv_append_kernel): one thread block per (page, KV head, K|V) segment of a bulk append, or
// one block per sequence in step mode (position read from seq_lens on the device, then advanced).
// fp8 follows crate::kv_cache bit for bit: amax over the segment, power-of-two scale, grow-only,
// stored codes re-encoded when the scale grows.
//
// Decode (attn_decode_kernel): grid (split, KV head, sequence), 4 warps. A warp takes 16 keys per
// step straight from global memory into registers with 16-byte loads (no shared memory in the loop):
//   S^T[16 keys x 8 queries] = K[16 x 128] . Q^T          8 x mma.m16n8k16 (keys in M, the GQA
//                                                          group's <= 8 query heads in N)
//   online softmax on S^T (base 2), P^T -> bf16, movmatrix.trans turns the accumulator layout into
//   the B-operand layout
//   O^T[128 dims x 8 queries] += V^T[128 x 16 keys] . P^T  8 x mma.m16n8k16
// The dot product over head_dim does not care which dims sit in which k slot as long as K and Q
// agree, so each lane loads contiguous 16-byte runs and Q's fragments are gathered to match
// (k_pair_dim); V's dims land in output rows by v_pair_dim. The warps of a block cover interleaved
// tiles of the split and are merged in shared memory; splits are merged by attn_decode_merge_kernel.
#include <stdint.h>

#include "common/attn_decode.cuh"
#include "common/dequant.cuh"
#include "common/dtype.cuh"
#include "common/mma.cuh"
#include "common/reduce.cuh"
#include "common/status.cuh"
#include "llama4_cuda.h"

namespace {
using namespace l4c;

// ------------------------------------------------------------------------------------------------
// Append

constexpr int kAppendThreads = 256;

// Appends `count` rows at slots slot0.. of (page `chunk`, `head`) from `src` (row stride in elements).
// Called by the whole block (fp8 reduces over it).
template <bool kFp8>
__device__ void append_segment(uint8_t *chunk, int64_t head, int64_t slot0, int64_t count, const bf16 *src,
                               int64_t src_stride, int64_t kv_heads, int64_t P, int64_t D) {
    const int64_t vecs_per_row = D / 8;
    const int64_t n_vec = count * vecs_per_row;
    const int64_t head_off = head * P * D;  // element offset of (head, slot 0) in the chunk
    if constexpr (!kFp8) {
        bf16 *dst = reinterpret_cast<bf16 *>(chunk) + head_off + slot0 * D;
        for (int64_t i = threadIdx.x; i < n_vec; i += kAppendThreads) {
            const int64_t row = i / vecs_per_row, col = (i - row * vecs_per_row) * 8;
            *reinterpret_cast<uint4 *>(dst + row * D + col) =
                *reinterpret_cast<const uint4 *>(src + row * src_stride + col);
        }
    } else {
        __shared__ float red[32];
        float amax = 0.0f;
        for (int64_t i = threadIdx.x; i < n_vec; i += kAppendThreads) {
            const int64_t row = i / vecs_per_row, col = (i - row * vecs_per_row) * 8;
            float x[8];
            load_pack<8>(src + row * src_stride + col, x);
#pragma unroll
            for (int j = 0; j < 8; ++j) amax = fmaxf(amax, fabsf(x[j]));
        }
        amax = block_max<kAppendThreads>(amax, red);  // ends with a barrier
        const float want = kv_pow2_scale(amax);
        float *scale_p = reinterpret_cast<float *>(chunk + kv_heads * P * D) + head;
        // A page first written at slot 0 is fresh (new, or a reused ring entry): its old scale is void.
        const float old = slot0 == 0 ? 0.0f : *scale_p;
        uint8_t *codes = chunk + head_off;
        float s = old;
        if (want > old) {
            // With old == 0 every stored code is +-0, which stays +-0 at any scale.
            if (old > 0.0f) {
                const float ratio = __fmul_rn(old, pow2_recip(want));  // == old / want, as the CPU
                for (int64_t i = threadIdx.x; i < slot0 * D; i += kAppendThreads)
                    codes[i] = e4m3_encode_rn(__fmul_rn(e4m3_decode_f32(codes[i]), ratio));
            }
            s = want;
        }
        // x / s == x * (1 / s) exactly for a power of two s (1 / s is representable): one rounding either way.
        const float inv = s == 0.0f ? 1.0f : pow2_recip(s);
        uint8_t *dst = codes + slot0 * D;
        for (int64_t i = threadIdx.x; i < n_vec; i += kAppendThreads) {
            const int64_t row = i / vecs_per_row, col = (i - row * vecs_per_row) * 8;
            float x[8];
            load_pack<8>(src + row * src_stride + col, x);
            uint32_t w[2] = {0u, 0u};
#pragma unroll
            for (int j = 0; j < 8; ++j) w[j / 4] |= uint32_t(e4m3_encode_rn(__fmul_rn(x[j], inv))) << (8 * (j % 4));
            *reinterpret_cast<uint2 *>(dst + row * D + col) = make_uint2(w[0], w[1]);
        }
        __syncthreads();  // every thread has read the old scale
        if (threadIdx.x == 0) *scale_p = s;
    }
}

template <bool kFp8>
__global__ void __launch_bounds__(kAppendThreads) kv_append_kernel(const __grid_constant__ l4c_kv_append_params p) {
    const l4c_kv_pages &kv = p.kv;
    const int64_t P = kv.chunk_tokens, D = kv.head_dim, H = kv.kv_heads;
    if (p.seq < 0) {
        // Step: sequence blockIdx.x takes row b at its own next position.
        const int64_t b = blockIdx.x;
        const int64_t pos = kv.seq_lens[b];
        if (pos < 0 || pos >= p.max_tokens) return;  // full (the host mirror refuses this first)
        const int64_t page = div_nonneg(pos, P);
        const int64_t e = kv_page_entry(kv, b, page);
        for (int64_t r = 0; r < 2 * H; ++r) {
            const bool is_v = r >= H;
            const int64_t h = is_v ? r - H : r;
            uint8_t *chunk = reinterpret_cast<uint8_t *>(is_v ? kv.v_pages[e] : kv.k_pages[e]);
            const bf16 *src = static_cast<const bf16 *>(is_v ? p.v : p.k) + b * (is_v ? p.v_row_stride : p.k_row_stride) + h * D;
            append_segment<kFp8>(chunk, h, pos - page * P, 1, src, 0, H, P, D);
        }
        __syncthreads();  // every thread has read seq_lens[b]
        if (threadIdx.x == 0) kv.seq_lens[b] = pos + 1;
    } else {
        // Bulk: block (x, y, z) = (page first_page + x, KV head y, K or V).
        const int64_t page = p.start / P + blockIdx.x;
        const int64_t h = blockIdx.y;
        const bool is_v = blockIdx.z != 0;
        const int64_t end = p.start + p.tokens;
        const int64_t s0 = max(p.start, page * P), s1 = min(end, (page + 1) * P);
        const int64_t e = kv_page_entry(kv, p.seq, page);
        uint8_t *chunk = reinterpret_cast<uint8_t *>(is_v ? kv.v_pages[e] : kv.k_pages[e]);
        const int64_t stride = is_v ? p.v_row_stride : p.k_row_stride;
        const bf16 *src = static_cast<const bf16 *>(is_v ? p.v : p.k) + (s0 - p.start) * stride + h * D;
        append_segment<kFp8>(chunk, h, s0 - page * P, s1 - s0, src, stride, H, P, D);
        // No block of this launch reads seq_lens.
        if (blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0 && threadIdx.x == 0) kv.seq_lens[p.seq] = end;
    }
}

// ------------------------------------------------------------------------------------------------
// Decode

constexpr int kD = 128;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTile = 16;          // keys per warp step
constexpr int kMaxGroup = 8;       // query heads per KV head (the mma N)
constexpr int kOStride = kD + 4;   // shared-memory row of the warp merge
constexpr float kLog2e = 1.4426950408889634f;
static_assert(kThreads == kD, "the epilogue gives one thread per output dim");

// First dim of K pair u (0..15) of lane column c: bf16 lanes load 16 B at dims 8c + 32i (i < 4),
// fp8 lanes 16 B at dims 16c + 64i (i < 2). k-step j uses pairs 2j (slots 2c..) and 2j+1 (slots 2c+8..).
template <bool kFp8>
__device__ __forceinline__ int k_pair_dim(int u, int c) {
    return kFp8 ? c * 16 + (u >> 3) * 64 + 2 * (u & 7) : c * 8 + (u >> 2) * 32 + 2 * (u & 3);
}
// First dim of V pair t (0..7) of lane row r: output rows (dim slot r, r+8) of m-tile t are dims
// (d, d+1). bf16 lanes load dims 8r.. and 64 + 8r.., fp8 lanes 16r.. .
template <bool kFp8>
__device__ __forceinline__ int v_pair_dim(int t, int r) {
    return kFp8 ? 16 * r + 2 * t : (t < 4 ? 8 * r + 2 * t : 64 + 8 * r + 2 * (t - 4));
}

// K pair u (bf16x2) from the raw loads of one key row.
template <bool kFp8>
__device__ __forceinline__ uint32_t k_pair(const uint4 (&raw)[kFp8 ? 2 : 4], int u) {
    if constexpr (kFp8) return e4m3x2_to_bf16x2(u4_word(raw[u >> 3], (u & 7) >> 1), (u & 1) != 0);
    else return u4_word(raw[u >> 2], u & 3);
}
// V pair t (bf16x2) from the raw loads of one key row.
template <bool kFp8>
__device__ __forceinline__ uint32_t v_pair(const uint4 (&raw)[kFp8 ? 1 : 2], int t) {
    if constexpr (kFp8) return e4m3x2_to_bf16x2(u4_word(raw[0], t >> 1), (t & 1) != 0);
    else return u4_word(raw[t >> 2], t & 3);
}

template <bool kFp8>
__global__ void __launch_bounds__(kThreads, 4) attn_decode_kernel(const __grid_constant__ l4c_attn_decode_params p) {
    constexpr int kElem = kFp8 ? 1 : 2;
    const l4c_kv_pages &kv = p.kv;
    const int split = blockIdx.x, kvh = blockIdx.y;
    const int64_t b = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 2, c = lane & 3;
    const int group = static_cast<int>(p.heads / kv.kv_heads);
    const int64_t P = kv.chunk_tokens;
    const int64_t len = kv.seq_lens[b];
    const int64_t pos = len - 1;

    // This split's keys [k0, k1): the sequence's visible keys cut into num_splits 16-aligned parts.
    int64_t k0 = 0, k1 = 0;
    float sc = 0.0f;
    if (len > 0) {
        const int64_t lo = p.attn_chunk > 0 ? div_nonneg(pos, p.attn_chunk) * p.attn_chunk : 0;
        int64_t per = (len - lo + p.num_splits - 1) / p.num_splits;
        per = (per + kTile - 1) / kTile * kTile;
        k0 = lo + split * per;
        k1 = min(len, k0 + per);
        // NoPE temperature, as reference::attention::TempTuning::factor computes it in f32.
        float t = 1.0f;
        if (p.temp_floor_scale > 0.0f) {
            const float fl = floorf(__fdiv_rn(__fadd_rn(__ll2float_rn(pos), 1.0f), p.temp_floor_scale));
            t = __fadd_rn(__fmul_rn(log1pf(fl), p.temp_attn_scale), 1.0f);
        }
        sc = p.scale * t * kLog2e;
    }

    // Q^T as the B operand, gathered to K's dim order; query columns >= group are zero.
    uint32_t qf[8][2];
    {
        const bool valid = r < group;
        const bf16 *qrow = static_cast<const bf16 *>(p.q) + b * p.q_row_stride +
                           static_cast<int64_t>(kvh * group + (valid ? r : 0)) * kD;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            qf[j][0] = valid ? *reinterpret_cast<const uint32_t *>(qrow + k_pair_dim<kFp8>(2 * j, c)) : 0u;
            qf[j][1] = valid ? *reinterpret_cast<const uint32_t *>(qrow + k_pair_dim<kFp8>(2 * j + 1, c)) : 0u;
        }
    }

    float o[8][4];
#pragma unroll
    for (int t = 0; t < 8; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;  // queries 2c and 2c+1
    const int64_t head_bytes = static_cast<int64_t>(kvh) * P * kD * kElem;
    const int64_t scale_off = kv.kv_heads * P * kD + kvh * 4;  // fp8: this head's f32 scale

    for (int64_t t0 = (k0 & ~int64_t(kTile - 1)) + warp * kTile; t0 < k1; t0 += kWarps * kTile) {
        const int64_t page = div_nonneg(t0, P);
        const int64_t e = kv_page_entry(kv, b, page);
        const uint8_t *kc = reinterpret_cast<const uint8_t *>(kv.k_pages[e]) + head_bytes;
        const uint8_t *vc = reinterpret_cast<const uint8_t *>(kv.v_pages[e]) + head_bytes;
        const int64_t base = page * P;
        // Byte offset of key t0 + i's row, the key clamped into [k0, k1) (same page: the tile overlaps
        // [k0, k1)); clamped keys are masked below, and clamping keeps loads in bounds and finite.
        auto row_off = [&](int i) -> int64_t {
            int64_t key = t0 + i;
            key = key < k0 ? k0 : (key >= k1 ? k1 - 1 : key);
            return (key - base) * (kD * kElem);
        };
        uint4 kr[2][kFp8 ? 2 : 4];
        uint4 vr[4][kFp8 ? 1 : 2];
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
            const uint8_t *row = kc + row_off(r + 8 * kk);
#pragma unroll
            for (int i = 0; i < (kFp8 ? 2 : 4); ++i)
                kr[kk][i] = ldg_nc128(row + (kFp8 ? c * 16 + i * 64 : (c * 8 + i * 32) * 2));
        }
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            const uint8_t *row = vc + row_off(2 * c + (kk & 1) + 8 * (kk >> 1));
#pragma unroll
            for (int i = 0; i < (kFp8 ? 1 : 2); ++i) vr[kk][i] = ldg_nc128(row + (kFp8 ? 16 * r : (8 * r + 64 * i) * 2));
        }
        float ks = 1.0f, vs = 1.0f;
        if constexpr (kFp8) {
            ks = __ldg(reinterpret_cast<const float *>(kc - head_bytes + scale_off));
            vs = __ldg(reinterpret_cast<const float *>(vc - head_bytes + scale_off));
        }

        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const uint32_t a[4] = {k_pair<kFp8>(kr[0], 2 * j), k_pair<kFp8>(kr[1], 2 * j),
                                   k_pair<kFp8>(kr[0], 2 * j + 1), k_pair<kFp8>(kr[1], 2 * j + 1)};
            mma_16816(s, a, qf[j][0], qf[j][1], bf16());
        }
        // s[0..1]: key t0 + r, queries 2c, 2c+1; s[2..3]: key t0 + r + 8.
        const float ss = sc * ks;
        const bool in0 = t0 + r >= k0 && t0 + r < k1, in1 = t0 + r + 8 >= k0 && t0 + r + 8 < k1;
        s[0] = in0 ? s[0] * ss : -INFINITY;
        s[1] = in0 ? s[1] * ss : -INFINITY;
        s[2] = in1 ? s[2] * ss : -INFINITY;
        s[3] = in1 ? s[3] * ss : -INFINITY;
        float mt0 = fmaxf(s[0], s[2]), mt1 = fmaxf(s[1], s[3]);
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) {
            mt0 = fmaxf(mt0, __shfl_xor_sync(kFullMask, mt0, off));
            mt1 = fmaxf(mt1, __shfl_xor_sync(kFullMask, mt1, off));
        }
        // At least one key of the tile is in [k0, k1), so the new maxima are finite.
        const float mn0 = fmaxf(m0, mt0), mn1 = fmaxf(m1, mt1);
        const float a0 = exp2f(m0 - mn0), a1 = exp2f(m1 - mn1);
        m0 = mn0;
        m1 = mn1;
        const float p0 = exp2f(s[0] - mn0), p1 = exp2f(s[1] - mn1);
        const float p2 = exp2f(s[2] - mn0), p3 = exp2f(s[3] - mn1);
        l0 = l0 * a0 + (p0 + p2);
        l1 = l1 * a1 + (p1 + p3);
#pragma unroll
        for (int t = 0; t < 8; ++t) {
            o[t][0] *= a0;
            o[t][1] *= a1;
            o[t][2] *= a0;
            o[t][3] *= a1;
        }
        // fp8: V's power-of-two scale rides on P (exact in bf16 while p * vs stays normal).
        const uint32_t b0 = movmatrix_trans(pack_bf16x2(p0 * vs, p1 * vs));
        const uint32_t b1 = movmatrix_trans(pack_bf16x2(p2 * vs, p3 * vs));
#pragma unroll
        for (int t = 0; t < 8; ++t) {
            const uint32_t v0 = v_pair<kFp8>(vr[0], t), v1 = v_pair<kFp8>(vr[1], t);
            const uint32_t v2 = v_pair<kFp8>(vr[2], t), v3 = v_pair<kFp8>(vr[3], t);
            const uint32_t a[4] = {prmt(v0, v1, 0x5410), prmt(v0, v1, 0x7632), prmt(v2, v3, 0x5410),
                                   prmt(v2, v3, 0x7632)};
            mma_16816(o[t], a, b0, b1, bf16());
        }
    }

    // Merge the warps: l is per lane so far (its own keys); sum over the 8 lanes of a column.
    __shared__ float s_m[kWarps][kMaxGroup], s_l[kWarps][kMaxGroup];
    __shared__ float s_o[kWarps][kMaxGroup][kOStride];
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) {
        l0 += __shfl_xor_sync(kFullMask, l0, off);
        l1 += __shfl_xor_sync(kFullMask, l1, off);
    }
    if (r == 0) {
        s_m[warp][2 * c] = m0;
        s_m[warp][2 * c + 1] = m1;
        s_l[warp][2 * c] = l0;
        s_l[warp][2 * c + 1] = l1;
    }
    __syncthreads();
    float M0 = -INFINITY, M1 = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
        M0 = fmaxf(M0, s_m[w][2 * c]);
        M1 = fmaxf(M1, s_m[w][2 * c + 1]);
    }
    const float f0 = lse_weight(m0, M0), f1 = lse_weight(m1, M1);
#pragma unroll
    for (int t = 0; t < 8; ++t) {
        const int d = v_pair_dim<kFp8>(t, r);
        s_o[warp][2 * c][d] = o[t][0] * f0;
        s_o[warp][2 * c + 1][d] = o[t][1] * f1;
        s_o[warp][2 * c][d + 1] = o[t][2] * f0;
        s_o[warp][2 * c + 1][d + 1] = o[t][3] * f1;
    }
    __syncthreads();
    const int d = threadIdx.x;
    for (int q = 0; q < group; ++q) {
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) M = fmaxf(M, s_m[w][q]);
        float L = 0.0f, acc = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) {
            L += s_l[w][q] * lse_weight(s_m[w][q], M);
            acc += s_o[w][q][d];
        }
        const int64_t h = static_cast<int64_t>(kvh) * group + q;
        if (p.num_splits == 1) {
            bf16 *out = static_cast<bf16 *>(p.out) + b * p.out_row_stride + h * kD;
            out[d] = __float2bfloat16_rn(L > 0.0f ? acc / L : 0.0f);
        } else {
            const int64_t row = (b * p.heads + h) * p.num_splits + split;
            float *ws = static_cast<float *>(p.workspace);
            ws[row * kD + d] = acc;
            if (d == 0) {
                float *ml = ws + kv.batch * p.heads * p.num_splits * kD;
                ml[2 * row] = M;
                ml[2 * row + 1] = L;
            }
        }
    }
}

// One block per (query head, sequence), one thread per dim: the log-sum-exp merge of the splits.
__global__ void __launch_bounds__(kD) attn_decode_merge_kernel(const __grid_constant__ l4c_attn_decode_params p) {
    const int64_t h = blockIdx.x, b = blockIdx.y;
    const int d = threadIdx.x;
    const int64_t S = p.num_splits;
    const int64_t row = (b * p.heads + h) * S;
    const float *ws = static_cast<const float *>(p.workspace);
    const float *part = ws + row * kD;
    const float *ml = ws + p.kv.batch * p.heads * S * kD + 2 * row;
    float M = -INFINITY;
    for (int64_t s = 0; s < S; ++s) M = fmaxf(M, ml[2 * s]);
    float L = 0.0f, acc = 0.0f;
    for (int64_t s = 0; s < S; ++s) {
        const float f = lse_weight(ml[2 * s], M);
        if (f > 0.0f) {
            L += ml[2 * s + 1] * f;
            acc += f * part[s * kD + d];
        }
    }
    bf16 *out = static_cast<bf16 *>(p.out) + b * p.out_row_stride + h * kD;
    out[d] = __float2bfloat16_rn(L > 0.0f ? acc / L : 0.0f);
}

// Host checks shared by both launchers. Returns L4C_OK or the status to return.
l4c_status check_pages(const l4c_kv_pages &kv) {
    L4C_REQUIRE(kv.batch >= 0 && kv.kv_heads > 0 && kv.head_dim > 0 && kv.chunk_tokens > 0);
    L4C_REQUIRE(kv.k_pages && kv.v_pages && kv.page_indptr && kv.seq_lens);
    L4C_REQUIRE_DTYPE(kv.dtype == L4C_DTYPE_BF16 || kv.dtype == L4C_DTYPE_F8E4M3);
    if (kv.chunk_tokens % 16 != 0 || kv.head_dim % 8 != 0) return L4C_ERR_UNSUPPORTED;
    if (kv.batch > 65535 || kv.kv_heads > 65535) return L4C_ERR_UNSUPPORTED;  // grid y / z limits
    return L4C_OK;
}

}  // namespace

extern "C" l4c_status l4c_kv_append(const l4c_kv_append_params *p, l4c_stream_t stream) {
    L4C_REQUIRE(p);
    L4C_REQUIRE(p->tokens >= 0);
    const l4c_kv_pages &kv = p->kv;
    if (p->tokens == 0 || kv.batch == 0) return L4C_OK;
    const l4c_status st = check_pages(kv);
    if (st != L4C_OK) return st;
    const int64_t row = kv.kv_heads * kv.head_dim;
    L4C_REQUIRE(p->k && p->v && is_aligned(p->k, 16) && is_aligned(p->v, 16));
    L4C_REQUIRE(p->k_row_stride >= row && p->v_row_stride >= row && p->k_row_stride % 8 == 0 && p->v_row_stride % 8 == 0);
    L4C_REQUIRE(p->max_tokens > 0);
    const bool fp8 = kv.dtype == L4C_DTYPE_F8E4M3;
    if (p->seq < 0) {
        L4C_REQUIRE(p->seq == -1 && p->tokens == kv.batch);
        const dim3 grid(static_cast<unsigned>(kv.batch));
        if (fp8) kv_append_kernel<true><<<grid, kAppendThreads, 0, stream>>>(*p);
        else kv_append_kernel<false><<<grid, kAppendThreads, 0, stream>>>(*p);
    } else {
        L4C_REQUIRE(p->seq < kv.batch && p->start >= 0 && p->tokens <= p->max_tokens && p->start <= p->max_tokens - p->tokens);
        const int64_t pages = (p->start + p->tokens - 1) / kv.chunk_tokens - p->start / kv.chunk_tokens + 1;
        L4C_REQUIRE(pages <= INT32_MAX);
        const dim3 grid(static_cast<unsigned>(pages), static_cast<unsigned>(kv.kv_heads), 2);
        if (fp8) kv_append_kernel<true><<<grid, kAppendThreads, 0, stream>>>(*p);
        else kv_append_kernel<false><<<grid, kAppendThreads, 0, stream>>>(*p);
    }
    return L4C_LAUNCH_STATUS();
}

extern "C" l4c_status l4c_attn_decode_workspace_size(int64_t batch, int64_t heads, int64_t head_dim,
                                                     int64_t num_splits, int64_t *bytes) {
    L4C_REQUIRE(bytes && batch >= 0 && heads >= 0 && head_dim >= 0 && num_splits >= 1);
    if (num_splits == 1) {
        *bytes = 0;
        return L4C_OK;
    }
    // batch * heads * splits * (head_dim + 2) * 4 without overflow (each factor < 2^31 checked first).
    L4C_REQUIRE(batch < (int64_t(1) << 31) && heads < (int64_t(1) << 31) && num_splits < (int64_t(1) << 31) &&
                head_dim < (int64_t(1) << 31));
    const __int128 b = static_cast<__int128>(batch) * heads * num_splits * (head_dim + 2) * 4;
    L4C_REQUIRE(b <= INT64_MAX);
    *bytes = static_cast<int64_t>(b);
    return L4C_OK;
}

extern "C" l4c_status l4c_attn_decode(const l4c_attn_decode_params *p, l4c_stream_t stream) {
    L4C_REQUIRE(p);
    const l4c_kv_pages &kv = p->kv;
    L4C_REQUIRE(p->heads >= 0);
    if (kv.batch == 0 || p->heads == 0) return L4C_OK;
    const l4c_status st = check_pages(kv);
    if (st != L4C_OK) return st;
    L4C_REQUIRE(p->heads % kv.kv_heads == 0);
    if (kv.head_dim != kD || p->heads / kv.kv_heads > kMaxGroup) return L4C_ERR_UNSUPPORTED;
    const int64_t row = p->heads * kD;
    L4C_REQUIRE(p->q && p->out && is_aligned(p->q, 4) && is_aligned(p->out, 2));
    L4C_REQUIRE(p->q_row_stride >= row && p->q_row_stride % 2 == 0 && p->out_row_stride >= row);
    L4C_REQUIRE(p->attn_chunk >= 0 && p->num_splits >= 1 && p->num_splits <= 65535);
    L4C_REQUIRE(isfinite(p->scale) && isfinite(p->temp_floor_scale) && p->temp_floor_scale >= 0.0f &&
                isfinite(p->temp_attn_scale));
    if (p->num_splits > 1) {
        int64_t need = 0;
        const l4c_status ws = l4c_attn_decode_workspace_size(kv.batch, p->heads, kD, p->num_splits, &need);
        if (ws != L4C_OK) return ws;
        L4C_REQUIRE(p->workspace && is_aligned(p->workspace, 16) && p->workspace_bytes >= need);
    }
    const dim3 grid(static_cast<unsigned>(p->num_splits), static_cast<unsigned>(kv.kv_heads),
                    static_cast<unsigned>(kv.batch));
    if (kv.dtype == L4C_DTYPE_F8E4M3) attn_decode_kernel<true><<<grid, kThreads, 0, stream>>>(*p);
    else attn_decode_kernel<false><<<grid, kThreads, 0, stream>>>(*p);
    l4c_status s = L4C_LAUNCH_STATUS();
    if (s != L4C_OK || p->num_splits == 1) return s;
    attn_decode_merge_kernel<<<dim3(static_cast<unsigned>(p->heads), static_cast<unsigned>(kv.batch)), kD, 0, stream>>>(*p);
    return L4C_LAUNCH_STATUS();
}
