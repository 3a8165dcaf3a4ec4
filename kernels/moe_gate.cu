// MoE gating: router logits [tokens, E] -> top-k ids, sigmoid scores, per-expert counts, (padded)
// offsets, the expert-sorted slot order and its inverse. A "slot" is t * k + j (token t, choice j).
//
// Three launches on one stream, no host synchronisation (capturable in a CUDA graph). Tokens are cut
// into tiles of kTileTokens tokens; the workspace holds one E-entry histogram per tile (never E^2).
//  1. moe_gate_topk_kernel (one block per tile, one warp per token): k rounds of a warp argmax. Round j
//     takes the best (value desc, index asc) among entries ranking strictly after round j-1's winner,
//     so no "taken" list is kept and ties go to the lower index (torch.topk / the reference). NaN ranks
//     as -inf (the CPU reference rejects NaN). Writes ids, sigmoid scores and the tile's histogram.
//  2. moe_gate_scan_kernel (one block): per expert, an exclusive scan of its histogram over tiles
//     (in place: entry [tile][e] becomes the slots of e in earlier tiles), the count, then a block scan
//     of the padded counts into offsets; writes UINT32_MAX into each expert's padding positions.
//  3. moe_gate_scatter_kernel (one warp per tile): walks the tile's slots in ascending order, 32 at a
//     time; __match_any_sync groups lanes by expert, a lane's rank is the number of lower lanes with
//     its expert, and a shared per-expert cursor (offsets[e] + earlier tiles) advances by the group
//     size. Positions are therefore ascending in slot order within each expert: a stable counting sort
//     that equals Routing::sorted_slots exactly when pad = 1.
#include <stdint.h>

#include "common/dispatch.cuh"
#include "common/dtype.cuh"
#include "common/reduce.cuh"
#include "common/status.cuh"
#include "llama4_cuda.h"

namespace {

using l4c::kFullMask;
using l4c::to_float;

constexpr int kTileTokens = 64;
constexpr int kTopkWarps = 8;
constexpr int kScanBlock = 1024;
constexpr int kScanBatch = 8;
constexpr int64_t kMaxExperts = 8192;  // shared cursors / histograms: E * 4 bytes <= 32 KiB
constexpr int64_t kMaxK = 8;

// (v, e) ranks before (bv, be): larger value first, lower index among equals.
__device__ __forceinline__ bool ranks_before(float v, int e, float bv, int be) {
    return v > bv || (v == bv && e < be);
}

template <typename T>
__global__ void __launch_bounds__(kTopkWarps * 32)
    moe_gate_topk_kernel(const T *__restrict__ logits, int64_t stride, int tokens, int experts, int k,
                         uint32_t *__restrict__ ids, float *__restrict__ scores, uint32_t *__restrict__ tile_hist) {
    extern __shared__ uint32_t hist[];
    for (int e = threadIdx.x; e < experts; e += blockDim.x) hist[e] = 0;
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int t0 = blockIdx.x * kTileTokens;
    const int t1 = min(t0 + kTileTokens, tokens);
    for (int t = t0 + warp; t < t1; t += kTopkWarps) {
        const T *row = logits + int64_t(t) * stride;
        float pv = INFINITY;  // the previous winner; everything ranks after (+inf, -1)
        int pe = -1;
        for (int j = 0; j < k; ++j) {
            float bv = -INFINITY;
            int be = experts;  // sentinel: any real entry ranks before it
            for (int e = lane; e < experts; e += 32) {
                float v = to_float(row[e]);
                if (isnan(v)) v = -INFINITY;
                const bool after = v < pv || (v == pv && e > pe);
                if (after && ranks_before(v, e, bv, be)) {
                    bv = v;
                    be = e;
                }
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                const float ov = __shfl_xor_sync(kFullMask, bv, o);
                const int oe = __shfl_xor_sync(kFullMask, be, o);
                if (ranks_before(ov, oe, bv, be)) {
                    bv = ov;
                    be = oe;
                }
            }
            pv = bv;
            pe = be;
            if (lane == 0) {
                const int64_t s = int64_t(t) * k + j;
                ids[s] = uint32_t(be);
                scores[s] = 1.0f / (1.0f + expf(-bv));
                atomicAdd(&hist[be], 1u);
            }
        }
    }
    __syncthreads();
    uint32_t *out = tile_hist + int64_t(blockIdx.x) * experts;
    for (int e = threadIdx.x; e < experts; e += blockDim.x) out[e] = hist[e];
}

// Exclusive block scan of v over kScanBlock threads; *total receives the block's sum.
__device__ __forceinline__ uint32_t block_exclusive_scan(uint32_t v, uint32_t *warp_sums, uint32_t *total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    uint32_t incl = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const uint32_t x = __shfl_up_sync(kFullMask, incl, o);
        if (lane >= o) incl += x;
    }
    if (lane == 31) warp_sums[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        uint32_t w = warp_sums[lane];  // kScanBlock / 32 == 32 warps
        uint32_t wi = w;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const uint32_t x = __shfl_up_sync(kFullMask, wi, o);
            if (lane >= o) wi += x;
        }
        warp_sums[lane] = wi - w;
        if (lane == 31) *total = wi;
    }
    __syncthreads();
    const uint32_t r = warp_sums[warp] + incl - v;
    __syncthreads();  // warp_sums / total reusable after return
    return r;
}

__global__ void __launch_bounds__(kScanBlock)
    moe_gate_scan_kernel(uint32_t *__restrict__ tile_hist, int tiles, int experts, uint32_t pad,
                         uint32_t *__restrict__ counts, uint32_t *__restrict__ offsets, uint32_t *__restrict__ sorted) {
    static_assert(kScanBlock == 1024, "block_exclusive_scan assumes 32 warps");
    __shared__ uint32_t warp_sums[32];
    __shared__ uint32_t total;
    uint32_t carry = 0;
    for (int base = 0; base < experts; base += kScanBlock) {
        const int e = base + threadIdx.x;
        uint32_t c = 0;
        if (e < experts) {
            for (int t0 = 0; t0 < tiles; t0 += kScanBatch) {
                uint32_t x[kScanBatch];
#pragma unroll
                for (int i = 0; i < kScanBatch; ++i)
                    x[i] = t0 + i < tiles ? tile_hist[int64_t(t0 + i) * experts + e] : 0u;
#pragma unroll
                for (int i = 0; i < kScanBatch; ++i) {
                    if (t0 + i < tiles) tile_hist[int64_t(t0 + i) * experts + e] = c;
                    c += x[i];
                }
            }
            counts[e] = c;
        }
        const uint32_t padded = (c + pad - 1) / pad * pad;
        const uint32_t excl = carry + block_exclusive_scan(padded, warp_sums, &total);
        if (e < experts) {
            offsets[e] = excl;
            for (uint32_t p = excl + c; p < excl + padded; ++p) sorted[p] = UINT32_MAX;
        }
        carry += total;
        __syncthreads();
    }
    if (threadIdx.x == 0) offsets[experts] = carry;
}

__global__ void __launch_bounds__(32)
    moe_gate_scatter_kernel(const uint32_t *__restrict__ ids, const uint32_t *__restrict__ tile_base,
                            const uint32_t *__restrict__ offsets, uint32_t slots, int experts, int k,
                            uint32_t *__restrict__ sorted, uint32_t *__restrict__ inverse) {
    extern __shared__ uint32_t cursor[];
    const int lane = threadIdx.x;
    const uint32_t *base_row = tile_base + int64_t(blockIdx.x) * experts;
    for (int e = lane; e < experts; e += 32) cursor[e] = offsets[e] + base_row[e];
    __syncwarp();
    const uint32_t s0 = uint32_t(blockIdx.x) * uint32_t(kTileTokens * k);
    const uint32_t s1 = min(s0 + uint32_t(kTileTokens * k), slots);
    for (uint32_t base = s0; base < s1; base += 32) {
        const uint32_t s = base + lane;
        const bool valid = s < s1;
        const uint32_t e = valid ? ids[s] : UINT32_MAX;
        const unsigned peers = __match_any_sync(kFullMask, e);
        const int leader = __ffs(peers) - 1;
        const uint32_t rank = __popc(peers & ((1u << lane) - 1u));
        uint32_t b = (valid && lane == leader) ? cursor[e] : 0u;
        b = __shfl_sync(kFullMask, b, leader);
        if (valid) {
            sorted[b + rank] = s;
            inverse[s] = b + rank;
            if (lane == leader) cursor[e] = b + uint32_t(__popc(peers));
        }
        __syncwarp();
    }
}

int64_t num_tiles(int64_t tokens) { return (tokens + kTileTokens - 1) / kTileTokens; }

}  // namespace

// ---- C ABI --------------------------------------------------------------------------------------

extern "C" l4c_status l4c_moe_gate_workspace_size(int64_t tokens, int64_t experts, int64_t *bytes) {
    L4C_REQUIRE(bytes != nullptr);
    L4C_REQUIRE(tokens >= 0 && tokens <= UINT32_MAX && experts >= 1 && experts <= kMaxExperts);
    *bytes = num_tiles(tokens) * experts * int64_t(sizeof(uint32_t));
    return L4C_OK;
}

extern "C" l4c_status l4c_moe_gate(const l4c_moe_gate_params *p, l4c_stream_t stream) {
    L4C_REQUIRE(p != nullptr);
    const int64_t tokens = p->tokens, experts = p->experts, k = p->k, pad = p->pad;
    L4C_REQUIRE(tokens >= 0 && experts >= 1 && experts <= kMaxExperts && k >= 1 && k <= kMaxK && k <= experts);
    L4C_REQUIRE(pad >= 1 && pad <= 1024);
    L4C_REQUIRE_DTYPE(l4c::is_float_dtype(p->logits_dtype));
    const int64_t slots = tokens * k;  // tokens <= 2^32 checked below before any use of a large value
    L4C_REQUIRE(tokens <= UINT32_MAX && slots + experts * (pad - 1) < int64_t(UINT32_MAX));
    L4C_REQUIRE(p->sorted_capacity >= slots + experts * (pad - 1));
    L4C_REQUIRE(tokens <= 1 || p->logits_row_stride >= experts);
    L4C_REQUIRE(p->counts != nullptr && p->offsets != nullptr && p->workspace != nullptr);
    const int64_t tiles = num_tiles(tokens);
    L4C_REQUIRE(tiles <= INT32_MAX && p->workspace_bytes >= tiles * experts * int64_t(sizeof(uint32_t)));
    if (tokens > 0)
        L4C_REQUIRE(p->logits != nullptr && p->topk_ids != nullptr && p->topk_scores != nullptr &&
                    p->sorted_slots != nullptr && p->inverse != nullptr);
    uint32_t *ws = static_cast<uint32_t *>(p->workspace);
    const size_t shmem = size_t(experts) * sizeof(uint32_t);
    if (tokens > 0) {
        const l4c_status st = l4c::dispatch_float(p->logits_dtype, [&](auto tl) {
            using T = typename decltype(tl)::type;
            moe_gate_topk_kernel<T><<<unsigned(tiles), kTopkWarps * 32, shmem, stream>>>(
                static_cast<const T *>(p->logits), p->logits_row_stride, int(tokens), int(experts), int(k),
                p->topk_ids, p->topk_scores, ws);
            return L4C_LAUNCH_STATUS();
        });
        if (st != L4C_OK) return st;
    }
    // Runs even for zero tokens: counts and offsets are then all zero.
    moe_gate_scan_kernel<<<1, kScanBlock, 0, stream>>>(ws, int(tiles), int(experts), uint32_t(pad), p->counts,
                                                       p->offsets, p->sorted_slots);
    l4c_status st = L4C_LAUNCH_STATUS();
    if (st != L4C_OK || tokens == 0) return st;
    moe_gate_scatter_kernel<<<unsigned(tiles), 32, shmem, stream>>>(
        p->topk_ids, ws, p->offsets, uint32_t(slots), int(experts), int(k), p->sorted_slots, p->inverse);
    return L4C_LAUNCH_STATUS();
}
