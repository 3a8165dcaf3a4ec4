// MoE gating: router logits [tokens, E] -> top-k ids, sigmoid scores, per-expert counts, (padded)
// offsets, the expert-sorted slot order and its inverse. A "slot" is t * k + j (token t, choice j).
//
// Three launches on one stream, no host synchronisation (capturable in a CUDA graph). Tokens are cut
// into tiles of kTileTokens tokens; the workspace holds one E-entry histogram per tile (never E^2) and
// one u32 block counter after it.
//  1. moe_gate_topk_kernel (one block per tile, one warp per token): k rounds of a warp argmax. Round j
//     takes the best (value desc, index asc) among entries ranking strictly after round j-1's winner,
//     so no "taken" list is kept and ties go to the lower index (torch.topk / the reference). NaN ranks
//     as -inf (the CPU reference rejects NaN). Writes ids, sigmoid scores and the tile's histogram;
//     block 0 zeroes the block counter for step 2.
//  2. moe_gate_scan_kernel (one block per 32 experts, two-level): lane = expert, warp = one of 32
//     contiguous tile segments. Each thread sums its segment, the 32 segment sums of an expert are
//     scanned by one warp (a shared-memory transpose), then each thread rewrites its segment in place
//     as an exclusive scan over tiles: entry [tile][e] becomes the slots of e in earlier tiles. The
//     last block to finish (a counter, threadfence-reduction style) scans the padded counts of all
//     experts into offsets and writes UINT32_MAX into each expert's padding positions. So no thread
//     walks more than ceil(tiles / 32) tiles, and the blocks run side by side.
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
using l4c::ranks_before;
using l4c::warp_argmax;
using l4c::to_float;

constexpr int kTileTokens = 64;
constexpr int kTopkWarps = 16;  // 4 tokens per warp: 16384 tokens keep 4096 warps loading rows
constexpr int kScanBlock = 1024;
constexpr int kScanBatch = 8;
constexpr int64_t kMaxExperts = 8192;  // shared cursors / histograms: E * 4 bytes <= 32 KiB
constexpr int64_t kMaxK = 8;
constexpr int kScatterIters = kTileTokens * int(kMaxK) / 32;  // 32-slot steps in a tile at most


template <typename T>
__global__ void __launch_bounds__(kTopkWarps * 32)
    moe_gate_topk_kernel(const T *__restrict__ logits, int64_t stride, int64_t tokens, int experts, int k,
                         uint32_t *__restrict__ ids, float *__restrict__ scores, uint32_t *__restrict__ tile_hist,
                         uint32_t *__restrict__ done) {
    extern __shared__ uint32_t hist[];
    if (blockIdx.x == 0 && threadIdx.x == 0) *done = 0u;  // step 2's block counter
    for (int e = threadIdx.x; e < experts; e += blockDim.x) hist[e] = 0;
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    // 64-bit token indices: slots < 2^32 allows tokens above INT32_MAX when k = 1.
    const int64_t t0 = int64_t(blockIdx.x) * kTileTokens;
    const int64_t t1 = min(t0 + kTileTokens, tokens);
    for (int64_t t = t0 + warp; t < t1; t += kTopkWarps) {
        const T *row = logits + t * stride;
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
            warp_argmax(bv, be);
            pv = bv;
            pe = be;
            if (lane == 0) {
                const int64_t s = t * k + j;
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

// Two-level scan over tiles and experts (header comment, step 2). Block b owns experts
// [32 b, 32 b + 32): lane = expert, warp = a contiguous segment of ceil(tiles / 32) tiles.
__global__ void __launch_bounds__(kScanBlock)
    moe_gate_scan_kernel(uint32_t *__restrict__ tile_hist, int tiles, int experts, uint32_t pad,
                         uint32_t *__restrict__ counts, uint32_t *__restrict__ offsets,
                         uint32_t *__restrict__ sorted, uint32_t *__restrict__ done) {
    static_assert(kScanBlock == 1024, "32 segments x 32 experts; block_exclusive_scan assumes 32 warps");
    __shared__ uint32_t seg[32][33];  // [segment][expert]; the 33rd column keeps the transpose conflict-free
    __shared__ uint32_t warp_sums[32];
    __shared__ uint32_t total;
    __shared__ bool is_last;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int e = blockIdx.x * 32 + lane;
    const bool live = e < experts;
    const int per = (tiles + 31) / 32;  // tiles < 2^26: no overflow
    const int t0 = min(warp * per, tiles), t1 = min(t0 + per, tiles);
    uint32_t *col = tile_hist + e;  // entry [t][e] is col[t * experts]; lanes read 32 adjacent words

    // Pass 1: the sum of this thread's segment, kScanBatch loads in flight.
    uint32_t sum = 0;
    if (live) {
        for (int t = t0; t < t1; t += kScanBatch) {
            uint32_t x[kScanBatch];
#pragma unroll
            for (int i = 0; i < kScanBatch; ++i) x[i] = t + i < t1 ? col[int64_t(t + i) * experts] : 0u;
#pragma unroll
            for (int i = 0; i < kScanBatch; ++i) sum += x[i];
        }
    }
    seg[warp][lane] = sum;
    __syncthreads();

    // Warp w scans expert 32 b + w over the 32 segments (lane = segment): exclusive segment bases.
    {
        const uint32_t v = seg[lane][warp];
        uint32_t incl = v;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const uint32_t x = __shfl_up_sync(kFullMask, incl, o);
            if (lane >= o) incl += x;
        }
        seg[lane][warp] = incl - v;
        const int ew = blockIdx.x * 32 + warp;
        if (lane == 31 && ew < experts) {
            counts[ew] = incl;
            __threadfence();  // visible to the last block before this block is counted below
        }
    }
    __syncthreads();

    // Pass 2: the segment in place as an exclusive scan, starting after the earlier segments.
    if (live) {
        uint32_t c = seg[warp][lane];
        for (int t = t0; t < t1; t += kScanBatch) {
            uint32_t x[kScanBatch];
#pragma unroll
            for (int i = 0; i < kScanBatch; ++i) x[i] = t + i < t1 ? col[int64_t(t + i) * experts] : 0u;
#pragma unroll
            for (int i = 0; i < kScanBatch; ++i) {
                if (t + i < t1) col[int64_t(t + i) * experts] = c;
                c += x[i];
            }
        }
    }

    // The last block to finish (every block's counts are fenced before its increment) does the offsets.
    if (threadIdx.x == 0) is_last = atomicAdd(done, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    uint32_t carry = 0;
    for (int base = 0; base < experts; base += kScanBlock) {
        const int x = base + threadIdx.x;
        const uint32_t c = x < experts ? __ldcg(counts + x) : 0u;  // L2: written by other blocks
        const uint32_t padded = (c + pad - 1) / pad * pad;
        const uint32_t excl = carry + block_exclusive_scan(padded, warp_sums, &total);
        if (x < experts) {
            offsets[x] = excl;
            for (uint32_t p = excl + c; p < excl + padded; ++p) sorted[p] = UINT32_MAX;
        }
        carry += total;
        __syncthreads();
    }
    if (threadIdx.x == 0) offsets[experts] = carry;
}

// One warp per tile (header comment, step 3).
__global__ void __launch_bounds__(32)
    moe_gate_scatter_kernel(const uint32_t *__restrict__ ids, const uint32_t *__restrict__ tile_base,
                            const uint32_t *__restrict__ offsets, uint32_t slots, int experts, int k,
                            uint32_t *__restrict__ sorted, uint32_t *__restrict__ inverse) {
    extern __shared__ uint32_t cursor[];
    const int lane = threadIdx.x;
    // The tile's slots s0 .. s0 + n - 1 (s0 < slots < 2^32; n in 64 bits so the last tile cannot wrap).
    const uint32_t s0 = uint32_t(blockIdx.x) * uint32_t(kTileTokens * k);
    const uint32_t n = uint32_t(min(int64_t(slots) - int64_t(s0), int64_t(kTileTokens) * k));
    // All of the tile's ids up front (at most kScatterIters per lane): one memory latency, not one per
    // 32 slots.
    uint32_t tile_ids[kScatterIters];
#pragma unroll
    for (int i = 0; i < kScatterIters; ++i) {
        const uint32_t j = uint32_t(i * 32 + lane);
        tile_ids[i] = j < n ? ids[s0 + j] : UINT32_MAX;
    }
    const uint32_t *base_row = tile_base + int64_t(blockIdx.x) * experts;
    for (int e = lane; e < experts; e += 32) cursor[e] = offsets[e] + base_row[e];
    __syncwarp();
#pragma unroll
    for (int i = 0; i < kScatterIters; ++i) {
        if (uint32_t(i * 32) >= n) break;  // warp-uniform
        const uint32_t j = uint32_t(i * 32 + lane);
        const bool valid = j < n;
        const uint32_t s = s0 + j;
        const uint32_t e = tile_ids[i];  // UINT32_MAX on invalid lanes: never an expert
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

// Workspace words: the per-tile histograms, then the scan kernel's block counter.
int64_t workspace_words(int64_t tokens, int64_t experts) { return num_tiles(tokens) * experts + 1; }

}  // namespace

// ---- C ABI --------------------------------------------------------------------------------------

extern "C" l4c_status l4c_moe_gate_workspace_size(int64_t tokens, int64_t experts, int64_t *bytes) {
    L4C_REQUIRE(bytes != nullptr);
    L4C_REQUIRE(tokens >= 0 && tokens <= UINT32_MAX && experts >= 1 && experts <= kMaxExperts);
    *bytes = workspace_words(tokens, experts) * int64_t(sizeof(uint32_t));
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
    L4C_REQUIRE(tiles <= INT32_MAX &&
                p->workspace_bytes >= workspace_words(tokens, experts) * int64_t(sizeof(uint32_t)));
    if (tokens > 0)
        L4C_REQUIRE(p->logits != nullptr && p->topk_ids != nullptr && p->topk_scores != nullptr &&
                    p->sorted_slots != nullptr && p->inverse != nullptr);
    uint32_t *ws = static_cast<uint32_t *>(p->workspace);
    uint32_t *done = ws + tiles * experts;
    const size_t shmem = size_t(experts) * sizeof(uint32_t);
    if (tokens > 0) {
        const l4c_status st = l4c::dispatch_float(p->logits_dtype, [&](auto tl) {
            using T = typename decltype(tl)::type;
            moe_gate_topk_kernel<T><<<unsigned(tiles), kTopkWarps * 32, shmem, stream>>>(
                static_cast<const T *>(p->logits), p->logits_row_stride, tokens, int(experts), int(k),
                p->topk_ids, p->topk_scores, ws, done);
            return L4C_LAUNCH_STATUS();
        });
        if (st != L4C_OK) return st;
    }
    l4c_status st = L4C_OK;
    if (tokens == 0) {  // no top-k launch zeroed the block counter
        st = l4c::status_from_cuda(cudaMemsetAsync(done, 0, sizeof(uint32_t), stream));
        if (st != L4C_OK) return st;
    }
    // Runs even for zero tokens: counts and offsets are then all zero.
    const unsigned groups = unsigned((experts + 31) / 32);
    moe_gate_scan_kernel<<<groups, kScanBlock, 0, stream>>>(ws, int(tiles), int(experts), uint32_t(pad),
                                                            p->counts, p->offsets, p->sorted_slots, done);
    st = L4C_LAUNCH_STATUS();
    if (st != L4C_OK || tokens == 0) return st;
    moe_gate_scatter_kernel<<<unsigned(tiles), 32, shmem, stream>>>(
        p->topk_ids, ws, p->offsets, uint32_t(slots), int(experts), int(k), p->sorted_slots, p->inverse);
    return L4C_LAUNCH_STATUS();
}
