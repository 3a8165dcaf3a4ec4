// Norm / RoPE family: RMSNorm, weightless qk norm, interleaved RoPE, and RoPE + qk norm fused.
//
// Memory-bound. A row (one RMSNorm row, or one head of one token) belongs to a group of G threads:
// G a power of two <= 32 lanes for short rows (several rows per warp, reduced with xor shuffles), or
// the whole 256-thread block for long rows. Each thread moves kVecElems elements per access (16-byte
// loads) when pointers, lengths and strides allow, else 2 (a RoPE pair) or 1. With a norm, a row is
// read once into registers (up to kCache vectors per thread; longer rows are read again from L1/L2),
// reduced, then scaled and written. Indices are 64-bit.
//
// RoPE's inv_freq comes from the host (reference::rope::inv_freq): one definition of llama3 scaling,
// and the GPU rotates by bit-identical f32 frequencies. Per token a block evaluates the angles
// pos * inv_freq[i] and their sincos in f64 once into shared memory (head_dim / 2 entries), shared by
// all q and k heads of that token: f64 is cheap at that rate, and an f32 angle would be off by up to
// 0.5 rad at position 10M.
#include <math.h>
#include <stdint.h>

#include "common/dispatch.cuh"
#include "common/dtype.cuh"
#include "common/reduce.cuh"
#include "common/status.cuh"
#include "llama4_cuda.h"

namespace {

using l4c::kVecElems;
using l4c::load_pack;
using l4c::store_pack;

constexpr int kBlock = 256;
// Vectors per thread held in registers between the sum pass and the scale pass: RMSNorm rows are
// long (4 covers hidden 5120 in one 256-thread block); a head row needs one per lane up to head_dim
// 32 * kVecElems, and more would cost registers (occupancy) in the fused RoPE kernel.
constexpr int kCache = 4;
constexpr int kCacheHead = 1;
// Largest head_dim the RoPE launchers take: its (cos, sin) table must fit in shared memory.
constexpr int64_t kMaxHeadDim = 4096;
constexpr double kInvPi = 0.31830988618379067154;

// Sum over aligned groups of G lanes (G a power of two <= 32), or over the whole block when G > 32
// (then G == blockDim.x == kBlock). Every thread of the block must call it.
__device__ __forceinline__ float group_sum(float v, int G, float *scratch) {
    if (G > 32) return l4c::block_sum<kBlock>(v, scratch);
    for (int o = G >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(l4c::kFullMask, v, o);
    return v;
}

// One row of `nvec` vectors of VEC elements spread over a group of G threads (this one is `lane`).
// load(j, v) reads vector j as f32 (and may transform it); store(j, v, s) writes it, s the norm scale
// (1 without NORM). With NORM, s = rsqrt(mean(v^2) + eps) over the row's `dim` elements; the first
// CACHE vectors of each thread stay in registers, later ones are loaded again. Inactive threads (a
// row past the end) load and store nothing but take part in the reduction.
template <int VEC, int CACHE, bool NORM, typename Load, typename Store>
__device__ __forceinline__ void process_row(bool active, int lane, int G, int64_t nvec, int64_t dim, float eps,
                                            float *scratch, Load load, Store store) {
    if (!NORM) {
        if (active)
            for (int64_t j = lane; j < nvec; j += G) {
                float v[VEC];
                load(j, v);
                store(j, v, 1.0f);
            }
        return;
    }
    float cache[CACHE][VEC];
    float ss = 0.0f;
#pragma unroll
    for (int c = 0; c < CACHE; ++c) {
        const int64_t j = lane + int64_t(c) * G;
        if (active && j < nvec) {
            load(j, cache[c]);
#pragma unroll
            for (int e = 0; e < VEC; ++e) ss += cache[c][e] * cache[c][e];
        }
    }
    if (active)
        for (int64_t j = lane + int64_t(CACHE) * G; j < nvec; j += G) {
            float v[VEC];
            load(j, v);
#pragma unroll
            for (int e = 0; e < VEC; ++e) ss += v[e] * v[e];
        }
    ss = group_sum(ss, G, scratch);
    if (!active) return;
    const float s = rsqrtf(ss / float(dim) + eps);
#pragma unroll
    for (int c = 0; c < CACHE; ++c) {
        const int64_t j = lane + int64_t(c) * G;
        if (j < nvec) store(j, cache[c], s);
    }
    for (int64_t j = lane + int64_t(CACHE) * G; j < nvec; j += G) {
        float v[VEC];
        load(j, v);
        store(j, v, s);
    }
}

// Threads per row: a power of two covering the row's vectors up to a warp; then a warp, or (when
// `block_ok`, long RMSNorm rows past kCache vectors per lane) the whole block. Head rows stay within a
// warp: the RoPE kernel reduces with shuffles only.
int group_size(int64_t nvec, bool block_ok) {
    if (block_ok && nvec > int64_t(32) * kCache) return kBlock;
    int g = 1;
    while (g < nvec && g < 32) g <<= 1;
    return g;
}

// ---- RMSNorm ------------------------------------------------------------------------------------

// No __restrict__ on x / out: in place (out == x) is allowed; each element is read and then written
// by the same thread.
template <typename TO, typename TX, typename TW, int VEC>
__global__ void __launch_bounds__(kBlock)
    rmsnorm_kernel(TO *out, const TX *x, const TW *__restrict__ w, int64_t rows, int64_t dim, int64_t so, int64_t sx,
                   float eps, int G) {
    __shared__ float scratch[32];
    const int rows_per_block = G > 32 ? 1 : kBlock / G;
    const int lane = G > 32 ? int(threadIdx.x) : int(threadIdx.x) % G;
    const int sub = G > 32 ? 0 : int(threadIdx.x) / G;
    const int64_t nvec = dim / VEC;
    // The loop bound is uniform over the block: block_sum needs every thread.
    for (int64_t r0 = int64_t(blockIdx.x) * rows_per_block; r0 < rows; r0 += int64_t(gridDim.x) * rows_per_block) {
        const int64_t r = r0 + sub;
        const bool active = r < rows;
        const TX *xr = x + (active ? r : 0) * sx;
        TO *orow = out + (active ? r : 0) * so;
        process_row<VEC, kCache, true>(
            active, lane, G, nvec, dim, eps, scratch, [&](int64_t j, float(&v)[VEC]) { load_pack<VEC>(xr + j * VEC, v); },
            [&](int64_t j, float(&v)[VEC], float s) {
                if (w != nullptr) {
                    float wv[VEC];
                    load_pack<VEC>(w + j * VEC, wv);
#pragma unroll
                    for (int e = 0; e < VEC; ++e) v[e] = v[e] * s * wv[e];
                } else {
#pragma unroll
                    for (int e = 0; e < VEC; ++e) v[e] *= s;
                }
                store_pack<VEC>(orow + j * VEC, v);
            });
    }
}

// ---- RoPE / qk norm -----------------------------------------------------------------------------

// Rotates the VEC / 2 interleaved pairs of v by the (cos, sin) entries cs[0 .. VEC/2).
template <int VEC>
__device__ __forceinline__ void rotate_pairs(float (&v)[VEC], const float2 *cs) {
#pragma unroll
    for (int m = 0; m < VEC / 2; ++m) {
        const float2 e = cs[m];
        const float a = v[2 * m], b = v[2 * m + 1];
        v[2 * m] = a * e.x - b * e.y;
        v[2 * m + 1] = a * e.y + b * e.x;
    }
}

// One block per token (grid-stride): the token's (cos, sin) table in shared memory, then its q rows
// and k rows, G lanes each. In place.
template <typename T, int VEC, bool ROPE, bool NORM>
__global__ void __launch_bounds__(kBlock)
    rope_qk_kernel(T *q, T *k, const int64_t *__restrict__ positions, const float *__restrict__ inv_freq,
                   int64_t tokens, int hq, int hk, int64_t head_dim, int64_t sq, int64_t sk, float eps, int G) {
    static_assert(!ROPE || VEC % 2 == 0, "RoPE needs whole pairs per vector");
    extern __shared__ float2 cs[];  // [head_dim / 2] (cos, sin) of the current token, with ROPE
    const int rows = hq + hk;
    const int rows_per_pass = int(blockDim.x) / G;
    const int lane = int(threadIdx.x) % G, sub = int(threadIdx.x) / G;
    const int64_t nvec = head_dim / VEC;
    for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
        if (ROPE) {
            __syncthreads();  // every thread is done with the previous token's table
            const double pos = double(positions[t]);
            for (int64_t i = threadIdx.x; i < head_dim / 2; i += blockDim.x) {
                // sincospi reduces its argument exactly (no Payne-Hanek local-memory path); the extra
                // rounding of angle / pi costs ~1e-9 rad at 1e7 rad, far below f32 output precision.
                double s, c;
                sincospi(pos * double(inv_freq[i]) * kInvPi, &s, &c);
                cs[i] = make_float2(float(c), float(s));
            }
            __syncthreads();
        }
        for (int r0 = 0; r0 < rows; r0 += rows_per_pass) {  // uniform over the block
            const int r = r0 + sub;
            const bool active = r < rows;
            T *row = !active ? q : r < hq ? q + t * sq + int64_t(r) * head_dim : k + t * sk + int64_t(r - hq) * head_dim;
            process_row<VEC, kCacheHead, NORM>(
                active, lane, G, nvec, head_dim, eps, /*scratch: unused, G <= 32*/ nullptr,
                [&](int64_t j, float(&v)[VEC]) {
                    load_pack<VEC>(row + j * VEC, v);
                    if constexpr (ROPE) rotate_pairs<VEC>(v, cs + j * (VEC / 2));
                },
                [&](int64_t j, float(&v)[VEC], float s) {
                    if constexpr (NORM) {
#pragma unroll
                        for (int e = 0; e < VEC; ++e) v[e] *= s;
                    }
                    store_pack<VEC>(row + j * VEC, v);
                });
        }
    }
}

// ---- host helpers -------------------------------------------------------------------------------

// (rows - 1) * stride + cols fits in int64 (cols <= stride is checked by the caller).
bool extent_fits(int64_t rows, int64_t cols, int64_t stride) {
    return rows <= 1 || stride <= (INT64_MAX - cols) / (rows - 1);
}

bool eps_ok(float eps) { return isfinite(eps) && eps >= 0.0f; }

template <typename TO, typename TX, typename TW>
l4c_status launch_rmsnorm(const l4c_rmsnorm_params *p, bool vec, l4c_stream_t stream) {
    const int vw = vec ? kVecElems : 1;
    const int G = group_size(p->dim / vw, true);
    const unsigned grid = l4c::grid_for(p->rows, G > 32 ? 1 : kBlock / G);
    TO *out = static_cast<TO *>(p->out);
    const TX *x = static_cast<const TX *>(p->x);
    const TW *w = static_cast<const TW *>(p->weight);
    if (vec)
        rmsnorm_kernel<TO, TX, TW, kVecElems><<<grid, kBlock, 0, stream>>>(
            out, x, w, p->rows, p->dim, p->out_row_stride, p->x_row_stride, p->eps, G);
    else
        rmsnorm_kernel<TO, TX, TW, 1>
            <<<grid, kBlock, 0, stream>>>(out, x, w, p->rows, p->dim, p->out_row_stride, p->x_row_stride, p->eps, G);
    return L4C_LAUNCH_STATUS();
}

template <typename T, int VEC, bool ROPE, bool NORM>
l4c_status launch_rope_vec(const l4c_rope_params *p, l4c_stream_t stream) {
    const int G = group_size(p->head_dim / VEC, false);
    const int64_t threads = (p->q_heads + p->k_heads) * G;
    const int block = int(threads >= kBlock ? kBlock : (threads + 31) / 32 * 32);
    const unsigned grid = l4c::grid_for(p->tokens, 1);
    const size_t smem = ROPE ? size_t(p->head_dim / 2) * sizeof(float2) : 0;
    rope_qk_kernel<T, VEC, ROPE, NORM><<<grid, block, smem, stream>>>(
        static_cast<T *>(p->q), static_cast<T *>(p->k), p->positions, p->inv_freq, p->tokens, int(p->q_heads),
        int(p->k_heads), p->head_dim, p->q_token_stride, p->k_token_stride, p->eps, G);
    return L4C_LAUNCH_STATUS();
}

// Validates, picks the vector width and launches the RoPE / qk-norm kernel for one mode.
template <bool ROPE, bool NORM>
l4c_status launch_rope(const l4c_rope_params *p, l4c_stream_t stream) {
    L4C_REQUIRE(p != nullptr);
    L4C_REQUIRE(p->tokens >= 0 && p->q_heads >= 0 && p->k_heads >= 0 && p->head_dim >= 0);
    L4C_REQUIRE_DTYPE(l4c::is_float_dtype(p->dtype));
    const int64_t rows = p->q_heads + p->k_heads;  // both < 2^63: no overflow
    if (p->tokens == 0 || rows == 0) return L4C_OK;
    L4C_REQUIRE(p->head_dim > 0);
    if (p->head_dim > kMaxHeadDim || rows > (int64_t(1) << 24)) return L4C_ERR_UNSUPPORTED;
    L4C_REQUIRE(p->q_heads == 0 || p->q != nullptr);
    L4C_REQUIRE(p->k_heads == 0 || p->k != nullptr);
    if (ROPE) L4C_REQUIRE(p->head_dim % 2 == 0 && p->positions != nullptr && p->inv_freq != nullptr);
    if (NORM) L4C_REQUIRE(eps_ok(p->eps));
    const int64_t qw = p->q_heads * p->head_dim, kw = p->k_heads * p->head_dim;
    if (p->tokens > 1) {
        L4C_REQUIRE(p->q_heads == 0 || (p->q_token_stride >= qw && extent_fits(p->tokens, qw, p->q_token_stride)));
        L4C_REQUIRE(p->k_heads == 0 || (p->k_token_stride >= kw && extent_fits(p->tokens, kw, p->k_token_stride)));
    }
    // Vector width: kVecElems when every row start is 16-byte aligned, else a pair (RoPE), else 1.
    const bool multi = p->tokens > 1;
    const bool vec = p->head_dim % kVecElems == 0 && (p->q_heads == 0 || l4c::is_aligned(p->q, 16)) &&
                     (p->k_heads == 0 || l4c::is_aligned(p->k, 16)) &&
                     (!multi || p->q_heads == 0 || p->q_token_stride % kVecElems == 0) &&
                     (!multi || p->k_heads == 0 || p->k_token_stride % kVecElems == 0);
    const int64_t esize = l4c::dtype_size(p->dtype);
    const bool pair = p->head_dim % 2 == 0 && (p->q_heads == 0 || l4c::is_aligned(p->q, unsigned(2 * esize))) &&
                      (p->k_heads == 0 || l4c::is_aligned(p->k, unsigned(2 * esize))) &&
                      (!multi || p->q_heads == 0 || p->q_token_stride % 2 == 0) &&
                      (!multi || p->k_heads == 0 || p->k_token_stride % 2 == 0);
    if (ROPE) L4C_REQUIRE(pair);  // RoPE reads whole pairs: element-aligned odd offsets are not taken
    return l4c::dispatch_float(p->dtype, [&](auto tt) {
        using T = typename decltype(tt)::type;
        if (vec) return launch_rope_vec<T, kVecElems, ROPE, NORM>(p, stream);
        if (ROPE || pair) return launch_rope_vec<T, 2, ROPE, NORM>(p, stream);
        if constexpr (!ROPE) return launch_rope_vec<T, 1, ROPE, NORM>(p, stream);
        return L4C_ERR_INVALID_ARGUMENT;  // unreachable: RoPE required `pair` above
    });
}

}  // namespace

// ---- C ABI --------------------------------------------------------------------------------------

extern "C" l4c_status l4c_rmsnorm(const l4c_rmsnorm_params *p, l4c_stream_t stream) {
    L4C_REQUIRE(p != nullptr);
    L4C_REQUIRE(p->rows >= 0 && p->dim >= 0);
    L4C_REQUIRE_DTYPE(l4c::is_float_dtype(p->out_dtype) && l4c::is_float_dtype(p->x_dtype));
    const bool w_f32 = p->weight_dtype == L4C_DTYPE_F32;
    L4C_REQUIRE_DTYPE(p->weight == nullptr || w_f32 || p->weight_dtype == p->x_dtype);
    if (p->rows == 0) return L4C_OK;
    L4C_REQUIRE(p->dim > 0 && p->out != nullptr && p->x != nullptr && eps_ok(p->eps));
    if (p->rows > 1) {
        L4C_REQUIRE(p->out_row_stride >= p->dim && p->x_row_stride >= p->dim);
        L4C_REQUIRE(extent_fits(p->rows, p->dim, p->out_row_stride) && extent_fits(p->rows, p->dim, p->x_row_stride));
    }
    const bool strides_vec =
        p->rows == 1 || (p->out_row_stride % kVecElems == 0 && p->x_row_stride % kVecElems == 0);
    const bool vec = p->dim % kVecElems == 0 && strides_vec && l4c::is_aligned(p->out, 16) &&
                     l4c::is_aligned(p->x, 16) && (p->weight == nullptr || l4c::is_aligned(p->weight, 16));
    return l4c::dispatch_float2(p->out_dtype, p->x_dtype, [&](auto to, auto tx) {
        using TO = typename decltype(to)::type;
        using TX = typename decltype(tx)::type;
        if (p->weight == nullptr || w_f32) return launch_rmsnorm<TO, TX, float>(p, vec, stream);
        return launch_rmsnorm<TO, TX, TX>(p, vec, stream);
    });
}

extern "C" l4c_status l4c_rope(const l4c_rope_params *p, l4c_stream_t stream) {
    return launch_rope<true, false>(p, stream);
}

extern "C" l4c_status l4c_qk_norm(const l4c_rope_params *p, l4c_stream_t stream) {
    return launch_rope<false, true>(p, stream);
}

extern "C" l4c_status l4c_rope_qk_norm(const l4c_rope_params *p, l4c_stream_t stream) {
    return launch_rope<true, true>(p, stream);
}
