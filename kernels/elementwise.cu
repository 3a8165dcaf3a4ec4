// Elementwise family: residual add, dtype casts, SiLU-and-multiply, embedding gather.
// Memory-bound: each thread moves kVecElems elements with 16-byte accesses when every pointer is
// 16-byte aligned and every length / row stride is a multiple of kVecElems; otherwise one element at
// a time. Indices are 64-bit throughout; grids are capped and the kernels loop (grid-stride).
#include <stdint.h>

#include "common/dispatch.cuh"
#include "common/dtype.cuh"
#include "common/status.cuh"
#include "llama4_cuda.h"

namespace {

using l4c::from_float;
using l4c::kVecElems;
using l4c::load_pack;
using l4c::store_pack;
using l4c::to_float;

constexpr int kBlock = 256;
constexpr int64_t kMaxGridY = 65535;

__device__ __forceinline__ int64_t global_thread() { return int64_t(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t grid_threads() { return int64_t(gridDim.x) * blockDim.x; }

// ---- kernels ------------------------------------------------------------------------------------

template <typename TA, typename TB, int VEC>
__global__ void __launch_bounds__(kBlock)
    elementwise_residual_add_kernel(TA *__restrict__ a, const TB *__restrict__ b, int64_t n) {
    const int64_t nvec = n / VEC;
    for (int64_t i = global_thread(); i < nvec; i += grid_threads()) {
        float x[VEC], y[VEC];
        load_pack<VEC>(a + i * VEC, x);
        load_pack<VEC>(b + i * VEC, y);
#pragma unroll
        for (int k = 0; k < VEC; ++k) x[k] += y[k];
        store_pack<VEC>(a + i * VEC, x);
    }
    for (int64_t i = nvec * VEC + global_thread(); i < n; i += grid_threads())
        a[i] = from_float<TA>(to_float(a[i]) + to_float(b[i]));
}

template <typename TD, typename TS, int VEC>
__global__ void __launch_bounds__(kBlock)
    elementwise_cast_kernel(TD *__restrict__ dst, const TS *__restrict__ src, int64_t n) {
    const int64_t nvec = n / VEC;
    for (int64_t i = global_thread(); i < nvec; i += grid_threads()) {
        float x[VEC];
        load_pack<VEC>(src + i * VEC, x);
        store_pack<VEC>(dst + i * VEC, x);
    }
    for (int64_t i = nvec * VEC + global_thread(); i < n; i += grid_threads()) dst[i] = from_float<TD>(to_float(src[i]));
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

// Rows over blockIdx.y (grid-stride), columns over x. cols is a multiple of VEC.
// No __restrict__: out may be gate or up exactly (in place).
template <typename TO, typename TI, int VEC>
__global__ void __launch_bounds__(kBlock)
    elementwise_silu_mul_kernel(TO *out, const TI *gate, const TI *up, int64_t rows, int64_t cols, int64_t so,
                                int64_t sg, int64_t su) {
    const int64_t cvec = cols / VEC;
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        for (int64_t c = global_thread(); c < cvec; c += grid_threads()) {
            float g[VEC], u[VEC];
            load_pack<VEC>(gate + r * sg + c * VEC, g);
            load_pack<VEC>(up + r * su + c * VEC, u);
#pragma unroll
            for (int k = 0; k < VEC; ++k) g[k] = silu(g[k]) * u[k];
            store_pack<VEC>(out + r * so + c * VEC, g);
        }
    }
}

// Token rows over blockIdx.y, the embedding dimension over x. dim is a multiple of VEC.
template <typename TO, typename TT, int VEC>
__global__ void __launch_bounds__(kBlock)
    elementwise_embedding_kernel(TO *__restrict__ out, const TT *__restrict__ table, const uint32_t *__restrict__ ids,
                                 uint32_t *error_flag, int64_t num_ids, int64_t vocab, int64_t dim) {
    const int64_t dvec = dim / VEC;
    for (int64_t t = blockIdx.y; t < num_ids; t += gridDim.y) {
        const int64_t id = ids[t];
        float x[VEC];
        if (id < vocab) {
            for (int64_t c = global_thread(); c < dvec; c += grid_threads()) {
                load_pack<VEC>(table + id * dim + c * VEC, x);
                store_pack<VEC>(out + t * dim + c * VEC, x);
            }
        } else {
            // Out of range: a NaN row nobody can mistake for data, and the flag for the host.
#pragma unroll
            for (int k = 0; k < VEC; ++k) x[k] = __int_as_float(0x7fc00000);
            for (int64_t c = global_thread(); c < dvec; c += grid_threads()) store_pack<VEC>(out + t * dim + c * VEC, x);
            if (error_flag != nullptr && global_thread() == 0) atomicExch(error_flag, 1u);
        }
    }
}

// ---- host helpers -------------------------------------------------------------------------------

// Vector width for a launch: kVecElems when every pointer is 16-byte aligned and every length /
// stride is a multiple of it, else 1.
bool can_vectorise(std::initializer_list<const void *> ptrs, std::initializer_list<int64_t> lens) {
    for (const void *p : ptrs)
        if (!l4c::is_aligned(p, 16)) return false;
    for (int64_t n : lens)
        if (n % kVecElems != 0) return false;
    return true;
}

// A 2-D launch: x covers `cols_vec` vectors of one row, y covers the rows (grid-stride beyond 65535).
struct Grid2 {
    dim3 grid, block;
};
Grid2 grid_2d(int64_t rows, int64_t cols_vec) {
    int block = cols_vec >= kBlock ? kBlock : int((cols_vec + 31) / 32 * 32);
    if (block < 32) block = 32;
    const unsigned gx = l4c::grid_for(cols_vec, block, 4096);
    const unsigned gy = unsigned(rows < kMaxGridY ? (rows > 0 ? rows : 1) : kMaxGridY);
    return {dim3(gx, gy), dim3(block)};
}

// (rows - 1) * stride + cols, the extent of a strided 2-D view, fits in int64.
bool extent_fits(int64_t rows, int64_t cols, int64_t stride) {
    if (rows <= 1) return true;
    return stride <= (INT64_MAX - cols) / (rows - 1);
}

}  // namespace

// ---- C ABI --------------------------------------------------------------------------------------

extern "C" l4c_status l4c_residual_add(const l4c_residual_add_params *p, l4c_stream_t stream) {
    L4C_REQUIRE(p != nullptr);
    L4C_REQUIRE(p->n >= 0);
    L4C_REQUIRE_DTYPE(l4c::is_float_dtype(p->a_dtype) && l4c::is_float_dtype(p->b_dtype));
    if (p->n == 0) return L4C_OK;
    L4C_REQUIRE(p->a != nullptr && p->b != nullptr);
    const bool vec = can_vectorise({p->a, p->b}, {});
    const unsigned grid = l4c::grid_for(vec ? p->n / kVecElems + kVecElems : p->n, kBlock);
    return l4c::dispatch_float2(p->a_dtype, p->b_dtype, [&](auto ta, auto tb) {
        using TA = typename decltype(ta)::type;
        using TB = typename decltype(tb)::type;
        TA *a = static_cast<TA *>(p->a);
        const TB *b = static_cast<const TB *>(p->b);
        if (vec)
            elementwise_residual_add_kernel<TA, TB, kVecElems><<<grid, kBlock, 0, stream>>>(a, b, p->n);
        else
            elementwise_residual_add_kernel<TA, TB, 1><<<grid, kBlock, 0, stream>>>(a, b, p->n);
        return L4C_LAUNCH_STATUS();
    });
}

extern "C" l4c_status l4c_cast(const l4c_cast_params *p, l4c_stream_t stream) {
    L4C_REQUIRE(p != nullptr);
    L4C_REQUIRE(p->n >= 0);
    L4C_REQUIRE_DTYPE(l4c::is_float_dtype(p->dst_dtype) && l4c::is_float_dtype(p->src_dtype));
    if (p->n == 0) return L4C_OK;
    L4C_REQUIRE(p->dst != nullptr && p->src != nullptr);
    if (p->dst_dtype == p->src_dtype) {
        const size_t bytes = size_t(p->n) * size_t(l4c::dtype_size(p->src_dtype));
        return l4c::status_from_cuda(cudaMemcpyAsync(p->dst, p->src, bytes, cudaMemcpyDeviceToDevice, stream));
    }
    const bool vec = can_vectorise({p->dst, p->src}, {});
    const unsigned grid = l4c::grid_for(vec ? p->n / kVecElems + kVecElems : p->n, kBlock);
    return l4c::dispatch_float2(p->dst_dtype, p->src_dtype, [&](auto td, auto ts) {
        using TD = typename decltype(td)::type;
        using TS = typename decltype(ts)::type;
        TD *dst = static_cast<TD *>(p->dst);
        const TS *src = static_cast<const TS *>(p->src);
        if (vec)
            elementwise_cast_kernel<TD, TS, kVecElems><<<grid, kBlock, 0, stream>>>(dst, src, p->n);
        else
            elementwise_cast_kernel<TD, TS, 1><<<grid, kBlock, 0, stream>>>(dst, src, p->n);
        return L4C_LAUNCH_STATUS();
    });
}

extern "C" l4c_status l4c_silu_mul(const l4c_silu_mul_params *p, l4c_stream_t stream) {
    L4C_REQUIRE(p != nullptr);
    L4C_REQUIRE(p->rows >= 0 && p->cols >= 0);
    L4C_REQUIRE_DTYPE(l4c::is_float_dtype(p->out_dtype) && l4c::is_float_dtype(p->in_dtype));
    if (p->rows == 0 || p->cols == 0) return L4C_OK;
    L4C_REQUIRE(p->out != nullptr && p->gate != nullptr && p->up != nullptr);
    int64_t rows = p->rows, cols = p->cols, so = p->out_row_stride, sg = p->gate_row_stride, su = p->up_row_stride;
    if (rows > 1) {
        L4C_REQUIRE(so >= cols && sg >= cols && su >= cols);
        L4C_REQUIRE(extent_fits(rows, cols, so) && extent_fits(rows, cols, sg) && extent_fits(rows, cols, su));
    }
    if (rows == 1 || (so == cols && sg == cols && su == cols)) {
        // Contiguous: one long row vectorises best and needs no row loop.
        cols *= rows;
        rows = 1;
        so = sg = su = cols;
    }
    const bool vec = can_vectorise({p->out, p->gate, p->up}, {cols, so, sg, su});
    const Grid2 g = grid_2d(rows, vec ? cols / kVecElems : cols);
    return l4c::dispatch_float2(p->out_dtype, p->in_dtype, [&](auto to, auto ti) {
        using TO = typename decltype(to)::type;
        using TI = typename decltype(ti)::type;
        TO *out = static_cast<TO *>(p->out);
        const TI *gate = static_cast<const TI *>(p->gate);
        const TI *up = static_cast<const TI *>(p->up);
        if (vec)
            elementwise_silu_mul_kernel<TO, TI, kVecElems>
                <<<g.grid, g.block, 0, stream>>>(out, gate, up, rows, cols, so, sg, su);
        else
            elementwise_silu_mul_kernel<TO, TI, 1><<<g.grid, g.block, 0, stream>>>(out, gate, up, rows, cols, so, sg, su);
        return L4C_LAUNCH_STATUS();
    });
}

extern "C" l4c_status l4c_embedding(const l4c_embedding_params *p, l4c_stream_t stream) {
    L4C_REQUIRE(p != nullptr);
    L4C_REQUIRE(p->num_ids >= 0 && p->vocab >= 0 && p->dim >= 0);
    L4C_REQUIRE_DTYPE(l4c::is_float_dtype(p->out_dtype) && l4c::is_float_dtype(p->table_dtype));
    if (p->num_ids == 0 || p->dim == 0) return L4C_OK;
    L4C_REQUIRE(p->out != nullptr && p->ids != nullptr && p->vocab > 0 && p->table != nullptr);
    L4C_REQUIRE(p->vocab <= INT64_MAX / p->dim && p->num_ids <= INT64_MAX / p->dim);
    const bool vec = can_vectorise({p->out, p->table}, {p->dim});
    const Grid2 g = grid_2d(p->num_ids, vec ? p->dim / kVecElems : p->dim);
    return l4c::dispatch_float2(p->out_dtype, p->table_dtype, [&](auto to, auto tt) {
        using TO = typename decltype(to)::type;
        using TT = typename decltype(tt)::type;
        TO *out = static_cast<TO *>(p->out);
        const TT *table = static_cast<const TT *>(p->table);
        if (vec)
            elementwise_embedding_kernel<TO, TT, kVecElems>
                <<<g.grid, g.block, 0, stream>>>(out, table, p->ids, p->error_flag, p->num_ids, p->vocab, p->dim);
        else
            elementwise_embedding_kernel<TO, TT, 1>
                <<<g.grid, g.block, 0, stream>>>(out, table, p->ids, p->error_flag, p->num_ids, p->vocab, p->dim);
        return L4C_LAUNCH_STATUS();
    });
}
