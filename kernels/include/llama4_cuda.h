/*
 * llama4_cuda.h: the C ABI of the llama4-cuda kernel library.
 *
 * Link the static library `libllama4_cuda_kernels.a` plus the static CUDA runtime
 * (`-lcudart_static -ldl -lrt -lpthread -lstdc++`); see docs/BUILD.md. This header needs no CUDA
 * header: `l4c_stream_t` is ABI-identical to `cudaStream_t` and to the driver API's `CUstream`, so
 * a stream from the CUDA runtime, the driver API, cudarc, PyTorch or candle can be passed directly.
 *
 * Conventions, for every launcher `l4c_<op>(const l4c_<op>_params *p, l4c_stream_t stream)`:
 *  - Parameters are validated on the host before any CUDA call: a null params struct, a null
 *    tensor pointer, a negative size or an unsupported dtype is reported as a status, and nothing
 *    is launched. The launcher never aborts, prints or throws.
 *  - Sizes, strides and offsets are int64_t, counted in ELEMENTS (not bytes). Strides are row
 *    strides of row-major 2-D views; the innermost stride is always 1.
 *  - Pointers are device pointers (or managed memory) on the CURRENT device (cudaSetDevice /
 *    cuCtxSetCurrent). A size of zero launches nothing and returns L4C_OK (pointers may be null then).
 *  - Work is enqueued on `stream` (NULL = the legacy default stream) and runs asynchronously: an
 *    L4C_OK return means the launch was accepted, not that the kernel finished. Errors raised while
 *    the kernel runs surface on a later synchronisation, as with any CUDA kernel.
 *  - Launchers are thread-safe; l4c_last_cuda_error() is per thread.
 *  - Unless stated otherwise, inputs and outputs must not overlap (in-place ops say so).
 *  - Arithmetic is f32 whatever the storage dtype; a result is rounded once to the output dtype
 *    (round to nearest even).
 */
#ifndef LLAMA4_CUDA_H
#define LLAMA4_CUDA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Version of this ABI: major * 10000 + minor * 100 + patch. */
#define L4C_VERSION 100

/** A CUDA stream; identical to cudaStream_t and CUstream. NULL is the legacy default stream. */
typedef struct CUstream_st *l4c_stream_t;

/** The result of every call. L4C_OK is zero; every error is non-zero. */
typedef enum l4c_status {
    /** Success (for launchers: the kernel was enqueued). */
    L4C_OK = 0,
    /** A null pointer, a negative size, inconsistent sizes or strides. Nothing was launched. */
    L4C_ERR_INVALID_ARGUMENT = 1,
    /** A dtype (or dtype combination) this launcher does not take. Nothing was launched. */
    L4C_ERR_UNSUPPORTED_DTYPE = 2,
    /** The library holds no kernel image that runs on the current device (needs sm_80 or newer;
     *  sm_90a-only kernels need an sm_90 device). */
    L4C_ERR_UNSUPPORTED_ARCH = 3,
    /** A CUDA allocation failed. */
    L4C_ERR_OUT_OF_MEMORY = 4,
    /** The kernel launch was rejected (bad configuration, too many resources). */
    L4C_ERR_LAUNCH_FAILED = 5,
    /** Another CUDA runtime error (no driver, no device, a sticky error from earlier work, ...).
     *  l4c_last_cuda_error() tells which. */
    L4C_ERR_CUDA = 6,
    /** A valid argument that this build does not implement (e.g. a head_dim without a kernel). */
    L4C_ERR_UNSUPPORTED = 7
} l4c_status;

/** Element types. The numeric values are part of the ABI. */
typedef enum l4c_dtype {
    L4C_DTYPE_F32 = 0,
    L4C_DTYPE_F16 = 1,
    L4C_DTYPE_BF16 = 2,
    /** fp8 e4m3fn (max 448, no infinities): taken by the fp8 kernel families only. */
    L4C_DTYPE_F8E4M3 = 3,
    /** fp8 e5m2: taken by the fp8 kernel families only. */
    L4C_DTYPE_F8E5M2 = 4
} l4c_dtype;

/** The ABI version the library was built with (L4C_VERSION of its header). */
uint32_t l4c_version(void);

/** A static, never-null English description of `status` ("unknown status" for other values). */
const char *l4c_status_string(l4c_status status);

/**
 * The CUDA runtime error behind the calling thread's most recent non-OK status that came from
 * CUDA (L4C_ERR_UNSUPPORTED_ARCH, _OUT_OF_MEMORY, _LAUNCH_FAILED, _CUDA), as a cudaError_t value;
 * 0 when there was none. `name` and `message`, when not null, receive static strings
 * (cudaGetErrorName / cudaGetErrorString), or "" when the code is 0.
 */
int32_t l4c_last_cuda_error(const char **name, const char **message);

/* ------------------------------------------------------------------------------------------------
 * Elementwise family (kernels/elementwise.cu). Float dtypes: F32, F16, BF16, in any combination.
 * ---------------------------------------------------------------------------------------------- */

/** a[i] += b[i] for i < n, in place (the residual connection). a and b may have different dtypes
 *  (e.g. an f32 residual stream plus a bf16 layer output); the sum is rounded to a's dtype. a and b
 *  must not overlap. */
typedef struct l4c_residual_add_params {
    void *a;
    const void *b;
    int64_t n;
    l4c_dtype a_dtype;
    l4c_dtype b_dtype;
} l4c_residual_add_params;

l4c_status l4c_residual_add(const l4c_residual_add_params *p, l4c_stream_t stream);

/** dst[i] = src[i] converted, for i < n (round to nearest even; NaN stays NaN, overflow gives inf).
 *  dst_dtype == src_dtype is a plain copy. */
typedef struct l4c_cast_params {
    void *dst;
    const void *src;
    int64_t n;
    l4c_dtype dst_dtype;
    l4c_dtype src_dtype;
} l4c_cast_params;

l4c_status l4c_cast(const l4c_cast_params *p, l4c_stream_t stream);

/** out[r, c] = silu(gate[r, c]) * up[r, c], silu(x) = x / (1 + exp(-x)), for r < rows, c < cols.
 *  Row strides let gate and up be the two halves of one fused [rows, 2 * cols] gate_up tensor
 *  (up = gate + cols, both with stride 2 * cols). gate and up share `in_dtype`. Each row stride must
 *  be >= cols when rows > 1. In place is allowed: out may equal gate (or up) exactly, with the same
 *  dtype and row stride; any other overlap is undefined. */
typedef struct l4c_silu_mul_params {
    void *out;
    const void *gate;
    const void *up;
    int64_t rows;
    int64_t cols;
    int64_t out_row_stride;
    int64_t gate_row_stride;
    int64_t up_row_stride;
    l4c_dtype out_dtype;
    l4c_dtype in_dtype;
} l4c_silu_mul_params;

l4c_status l4c_silu_mul(const l4c_silu_mul_params *p, l4c_stream_t stream);

/** out[t, :] = table[ids[t], :] for t < num_ids; table is [vocab, dim] row-major, out is
 *  [num_ids, dim] row-major. An id >= vocab cannot be checked on the host (ids live on the device):
 *  that row of out is filled with NaN and, when `error_flag` is not null, *error_flag is set to 1
 *  (the caller zeroes it beforehand and reads it after synchronising). */
typedef struct l4c_embedding_params {
    void *out;
    const void *table;
    const uint32_t *ids;
    /** Optional device flag, set to 1 when any id is out of range; may be null. */
    uint32_t *error_flag;
    int64_t num_ids;
    int64_t vocab;
    int64_t dim;
    l4c_dtype out_dtype;
    l4c_dtype table_dtype;
} l4c_embedding_params;

l4c_status l4c_embedding(const l4c_embedding_params *p, l4c_stream_t stream);

/* ------------------------------------------------------------------------------------------------
 * MoE gating (kernels/moe_gate.cu). A "slot" is t * k + j, the j-th choice of token t.
 * ---------------------------------------------------------------------------------------------- */

/** Router logits [tokens, experts] (F32, F16 or BF16, row stride logits_row_stride) -> top-k routing,
 *  the contract of the CPU reference reference::moe::top_k_gating:
 *   - topk_ids[tokens * k]: experts of each slot, best first, ties to the lower index; NaN ranks as -inf;
 *   - topk_scores[tokens * k]: sigmoid of the chosen raw logit (f32);
 *   - counts[experts]: slots routed to each expert (not padded);
 *   - offsets[experts + 1]: offsets[0] = 0, offsets[e + 1] = offsets[e] + round_up(counts[e], pad), so each
 *     expert's group starts on a multiple of `pad` (a GEMM row tile); pad = 1 gives plain prefix sums;
 *   - sorted_slots[sorted_capacity]: positions offsets[e] .. offsets[e] + counts[e] hold expert e's slots in
 *     ascending slot order (stable); the padding positions up to offsets[e + 1] hold UINT32_MAX; positions
 *     from offsets[experts] on are not written. sorted_capacity must be >= tokens * k + experts * (pad - 1);
 *   - inverse[tokens * k]: sorted_slots[inverse[s]] == s.
 *  Limits: 1 <= experts <= 8192, 1 <= k <= min(8, experts), 1 <= pad <= 1024, and
 *  tokens * k + experts * (pad - 1) < 2^32 - 1. `workspace` is caller-allocated device scratch of at least
 *  l4c_moe_gate_workspace_size(tokens, experts) bytes, 4-byte aligned; it need not be initialised and must
 *  not be shared by launches in flight at once. Three kernel launches, no host synchronisation (CUDA
 *  graph capturable). tokens = 0 writes zero counts and offsets only. */
typedef struct l4c_moe_gate_params {
    const void *logits;
    uint32_t *topk_ids;
    float *topk_scores;
    uint32_t *counts;
    uint32_t *offsets;
    uint32_t *sorted_slots;
    uint32_t *inverse;
    void *workspace;
    int64_t workspace_bytes;
    int64_t tokens;
    int64_t experts;
    int64_t k;
    int64_t pad;
    int64_t logits_row_stride;
    int64_t sorted_capacity;
    l4c_dtype logits_dtype;
} l4c_moe_gate_params;

/** *bytes = the workspace l4c_moe_gate needs for this many tokens and experts. */
l4c_status l4c_moe_gate_workspace_size(int64_t tokens, int64_t experts, int64_t *bytes);

l4c_status l4c_moe_gate(const l4c_moe_gate_params *p, l4c_stream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* LLAMA4_CUDA_H */
