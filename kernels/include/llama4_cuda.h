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
 * Norm / RoPE family (kernels/norm_rope.cu). Float dtypes: F32, F16, BF16.
 * ---------------------------------------------------------------------------------------------- */

/** RMSNorm over rows: out[r, c] = x[r, c] * rsqrt(mean_c(x[r, c]^2) + eps) * weight[c], for
 *  r < rows, c < dim, in f32 (transformers' Llama4TextRMSNorm; weight = null is the weightless norm).
 *  x_dtype and out_dtype: any float combination; weight_dtype: F32 or equal to x_dtype. Row strides
 *  must be >= dim when rows > 1. In place is allowed: out may equal x exactly, with the same dtype
 *  and row stride. dim must be > 0 when rows > 0; eps must be finite and >= 0. */
typedef struct l4c_rmsnorm_params {
    void *out;
    const void *x;
    /** [dim] or null (no weight). */
    const void *weight;
    int64_t rows;
    int64_t dim;
    int64_t out_row_stride;
    int64_t x_row_stride;
    float eps;
    l4c_dtype out_dtype;
    l4c_dtype x_dtype;
    l4c_dtype weight_dtype;
} l4c_rmsnorm_params;

l4c_status l4c_rmsnorm(const l4c_rmsnorm_params *p, l4c_stream_t stream);

/** In-place interleaved RoPE and / or weightless qk norm on q [tokens, q_heads, head_dim] and
 *  k [tokens, k_heads, head_dim] in one launch. Heads are contiguous within a token; tokens are
 *  `*_token_stride` elements apart (>= heads * head_dim when tokens > 1), so q and k may be views
 *  of one fused qkv projection output. k_heads = 0 (k may be null then) processes q alone.
 *
 *  RoPE: pair (x[2i], x[2i+1]) of every head of token t is rotated by the angle
 *  positions[t] * inv_freq[i], i < head_dim / 2 (a complex multiply). inv_freq is the f32 table the
 *  host computes (llama3 scaling included; llama4-cuda's reference::rope::inv_freq). The angle and
 *  its cosine and sine are evaluated in f64 and rounded to f32, so positions up to 2^53 in magnitude
 *  (negative ones rotate backwards) lose no accuracy; the rotation is f32. head_dim must be even.
 *  QK norm: each head row is then scaled by rsqrt(mean(x^2) + eps) (Llama4TextL2Norm), in f32,
 *  rounded once to `dtype`. head_dim <= 4096. */
typedef struct l4c_rope_params {
    void *q;
    /** May be null when k_heads == 0. */
    void *k;
    /** [tokens] absolute positions; read by the RoPE launchers only. */
    const int64_t *positions;
    /** [head_dim / 2]; read by the RoPE launchers only. */
    const float *inv_freq;
    int64_t tokens;
    int64_t q_heads;
    int64_t k_heads;
    int64_t head_dim;
    int64_t q_token_stride;
    int64_t k_token_stride;
    /** Read by the qk-norm launchers only; finite and >= 0. */
    float eps;
    /** The dtype of q and k. */
    l4c_dtype dtype;
} l4c_rope_params;

/** RoPE on q and k, no norm. */
l4c_status l4c_rope(const l4c_rope_params *p, l4c_stream_t stream);
/** Weightless qk norm on q and k, no RoPE (head_dim may be odd). */
l4c_status l4c_qk_norm(const l4c_rope_params *p, l4c_stream_t stream);
/** RoPE then weightless qk norm on q and k (Llama 4 RoPE layers with use_qk_norm), one pass. */
l4c_status l4c_rope_qk_norm(const l4c_rope_params *p, l4c_stream_t stream);

/* ------------------------------------------------------------------------------------------------
 * Quantized GEMM family (kernels/gemm_w4a16.cu, kernels/gemm_fp8.cu); design in docs/GEMM.md.
 * All compute Y[m, n] = X[m, k] . W^T (W is [n, k], the Hugging Face Linear layout), accumulate in
 * f32 and write bf16, optionally adding a bf16 residual [m, n]. Row strides are in elements.
 * The plan fields (path, token_tiles, split_k) come from the Rust dispatcher (ops::gemm::GemmPlan);
 * a C caller picks them the same way (docs/GEMM.md). Needs sm_80 or newer.
 * ---------------------------------------------------------------------------------------------- */

/* Kernel path. DECODE: tensor-core GEMV, weights streamed once from global memory, tokens in the
 * mma N dimension, 8 * token_tiles tokens per block (more via grid.z), optional split-K.
 * PREFILL: 128 x 128 tiles through a cp.async shared-memory ring; the body is mma.sync on sm_80 and
 * wgmma on sm_90a (chosen by the GPU the binary runs on). */
#define L4C_GEMM_PATH_DECODE 1
#define L4C_GEMM_PATH_PREFILL 2

/* int4 weights repacked by crate::quant::repack (layout in docs/GEMM.md). */
typedef struct l4c_gemm_w4a16_params {
  const void* x;             /* [m, k] bf16 or f16, row stride ldx; 16-byte aligned for PREFILL */
  const uint32_t* qweight;   /* [ceil(n/16)][k_slabs][32][4] u32 */
  const void* scales;        /* [ceil(n/16)][groups][16] act dtype, rows interleaved (r, r+8) */
  const void* zero_bias;     /* same layout as scales holding magic + zero point; NULL = symmetric */
  const void* residual;      /* [m, n] bf16, row stride ldr, or NULL */
  void* out;                 /* [m, n] bf16, row stride ldo */
  float* workspace;          /* split_k > 1: split_k * m * n floats; else unused */
  int64_t m, n, k;
  int64_t ldx, ldo, ldr;
  int64_t k_slabs;           /* ceil(k / 64) */
  int64_t groups;            /* scale groups per 16-row tile in the repacked layout */
  int32_t group_size;        /* 32, 64 or 128 */
  l4c_dtype act_dtype;       /* L4C_DTYPE_BF16 or L4C_DTYPE_F16 (also the scales' dtype) */
  int32_t path;              /* L4C_GEMM_PATH_* */
  int32_t token_tiles;       /* DECODE: 1, 2 or 4 */
  int32_t split_k;           /* DECODE: 1..k_slabs */
} l4c_gemm_w4a16_params;

l4c_status l4c_gemm_w4a16(const l4c_gemm_w4a16_params* p, l4c_stream_t stream);

/* Dynamic per-token fp8 e4m3 quantization of bf16 activations, bit-exact with
 * crate::quant::fp8::quantize_per_token: scale = absmax(row) / 448 (1 for an all-zero row),
 * code = e4m3(x / scale) rounded to nearest even, saturating. */
typedef struct l4c_fp8_quantize_params {
  const void* x;             /* [m, k] bf16, row stride ldx */
  uint8_t* codes;            /* [m, ldc] e4m3, ldc >= round_up(k, 16); columns k.. are zeroed; or NULL */
  float* scales;             /* [m] */
  void* decoded;             /* [m, k] bf16 = decode(code), row stride k, or NULL (the decode path's input) */
  int64_t m, k, ldx, ldc;
} l4c_fp8_quantize_params;

l4c_status l4c_fp8_quantize_per_token(const l4c_fp8_quantize_params* p, l4c_stream_t stream);

/* fp8 e4m3 weights [n, k] (k % 16 == 0) with per-output-channel f32 scales.
 * DECODE: x is bf16 [m, k] (W8A16; or W8A8 with x = the quantizer's `decoded` and x_scales set).
 * PREFILL: x is e4m3 codes [m, ldx] from l4c_fp8_quantize_per_token, x_scales required (W8A8). */
typedef struct l4c_gemm_fp8_params {
  const void* x;
  const float* x_scales;     /* [m] or NULL */
  const uint8_t* w;          /* [n, ldw] e4m3 */
  const float* w_scales;     /* [n] */
  const void* residual;      /* [m, n] bf16 or NULL */
  void* out;                 /* [m, n] bf16 */
  float* workspace;          /* split_k > 1: split_k * m * n floats */
  int64_t m, n, k;
  int64_t ldx, ldw, ldo, ldr;
  int32_t path;              /* L4C_GEMM_PATH_* */
  int32_t token_tiles;       /* DECODE: 1, 2 or 4 */
  int32_t split_k;           /* DECODE: 1..k/64 */
} l4c_gemm_fp8_params;

l4c_status l4c_gemm_fp8(const l4c_gemm_fp8_params* p, l4c_stream_t stream);

/* bf16 weights [n, k] (k % 16 == 0), bf16 activations: the one-group case of the grouped expert GEMM
 * (kernels/moe_grouped_gemm.cu, docs/MOE.md). DECODE: tensor-core GEMV as the fp8 decode, split-K
 * through `workspace`; PREFILL: 128 x 128 x 64 tiles, mma.sync (sm_80) / wgmma with both operands in
 * shared memory (sm_90a). x, w 16-byte aligned; ldx, ldw multiples of 8. */
typedef struct l4c_gemm_bf16_params {
  const void* x;             /* [m, k] bf16, row stride ldx */
  const void* w;             /* [n, ldw] bf16 */
  const void* residual;      /* [m, n] bf16, row stride ldr, or NULL */
  void* out;                 /* [m, n] bf16, row stride ldo */
  float* workspace;          /* split_k > 1: split_k * m * n floats */
  int64_t m, n, k;
  int64_t ldx, ldw, ldo, ldr;
  int32_t path;              /* L4C_GEMM_PATH_* */
  int32_t token_tiles;       /* DECODE: 1, 2 or 4 */
  int32_t split_k;           /* DECODE: 1..ceil(k/64) */
} l4c_gemm_bf16_params;

l4c_status l4c_gemm_bf16(const l4c_gemm_bf16_params* p, l4c_stream_t stream);

/* ------------------------------------------------------------------------------------------------
 * Grouped expert GEMM and combine (kernels/moe_grouped_gemm.cu; docs/MOE.md). Rows are sorted
 * positions of the routing of l4c_moe_gate: position p (offsets[e] <= p < offsets[e] + counts[e])
 * belongs to expert e and holds slot sorted_slots[p] (UINT32_MAX: padding, never written).
 * Every count and offset is read on the device: no host synchronisation (CUDA-graph capturable).
 * ---------------------------------------------------------------------------------------------- */
#define L4C_MOE_WEIGHT_BF16 0  /* data[e]: bf16 [n, k] row-major */
#define L4C_MOE_WEIGHT_INT4 1  /* data[e]: repacked int4 qweight, scales[e] bf16, zero_bias[e] or NULL (docs/GEMM.md) */
#define L4C_MOE_WEIGHT_FP8 2   /* data[e]: e4m3 [n, k] row-major, scales[e]: f32 [n] per output channel (W8A16) */
#define L4C_MOE_EPILOGUE_STORE 0
#define L4C_MOE_EPILOGUE_SWIGLU 1 /* out = silu(x.gate^T) * (x.up^T); w = gate, w2 = up */

/* Per-expert weights: each field is a DEVICE array of `experts` device pointers (NULL where the
 * format has no such part: scales for bf16, zero_bias for symmetric int4 and for the others).
 * Every data[e] is 16-byte aligned (read 16 bytes at a time; rows of k elements, k % 16 == 0, keep
 * that alignment); scales[e] 4-byte aligned. The tables live on the device: not checked here. */
typedef struct l4c_moe_expert_weights {
  const void* const* data;
  const void* const* scales;
  const void* const* zero_bias;
} l4c_moe_expert_weights;

typedef struct l4c_moe_grouped_gemm_params {
  const void* x;               /* bf16; gather: [tokens, ldx] token rows; else [rows, ldx] sorted rows */
  const uint32_t* sorted_slots;/* [rows] from l4c_moe_gate (capacity positions) */
  const float* scores;         /* [tokens * topk] or NULL: row p's output (gate and up before silu) is
                                  scaled by scores[sorted_slots[p]], which equals scaling its input */
  const uint32_t* counts;      /* [experts] */
  const uint32_t* offsets;     /* [experts + 1], every group starting on a multiple of `pad` */
  l4c_moe_expert_weights w;    /* the weight (gate for SWIGLU) */
  l4c_moe_expert_weights w2;   /* up for SWIGLU; ignored otherwise */
  void* out;                   /* [rows, n] bf16, row stride ldo, row = sorted position */
  float* workspace;            /* split_k > 1: split_k * rows * n floats */
  int64_t rows;                /* sorted positions: >= offsets[experts] (the moe_gate capacity) */
  int64_t tokens, topk, experts, pad;
  int64_t n, k;                /* every expert weight is [n, k]; k % 16 == 0 */
  int64_t ldx, ldo;
  int64_t k_slabs, groups;     /* INT4: ceil(k/64) and scale groups per 16-row tile */
  int32_t group_size;          /* INT4: 32, 64 or 128 */
  int32_t gather;              /* 1: x row of position p is token sorted_slots[p] / topk; 0: row p */
  int32_t weight_format;       /* L4C_MOE_WEIGHT_* */
  int32_t epilogue;            /* L4C_MOE_EPILOGUE_*; SWIGLU needs split_k == 1 */
  int32_t path;                /* L4C_GEMM_PATH_*; PREFILL needs pad % 128 == 0 (every format; FP8:
                                  W8A16, codes widened to bf16 exactly, f32 accumulation) */
  int32_t token_tiles;         /* DECODE: 1, 2 or 4 (8 * token_tiles rows per pass of a block) */
  int32_t split_k;             /* DECODE: 1..ceil(k/64) */
  /* Expert parallelism (docs/MULTI-GPU.md): only experts [expert_begin, expert_end) run; counts and
   * offsets stay global (all `experts`), the tables in w / w2 hold the local experts only (entry
   * e - expert_begin), and out rows outside [offsets[expert_begin], offsets[expert_end]) are not
   * written. expert_end == 0 means `experts`, so a zero-initialised struct runs every expert. */
  int64_t expert_begin, expert_end;
} l4c_moe_grouped_gemm_params;

l4c_status l4c_moe_grouped_gemm(const l4c_moe_grouped_gemm_params* p, l4c_stream_t stream);

/* Combine: out[t] = bf16(shared[t] + sum_j y_sorted[inverse[t * topk + j]]) (j ascending, f32 sums;
 * shared NULL = 0). y_sorted is the down projection's output in sorted positions.
 * Expert parallelism: with `offsets` non-NULL only positions in [offsets[expert_begin],
 * offsets[expert_end]) are local; any other slot adds 0 (its y row is never read). The shared expert
 * is added by passing `shared` on exactly one rank and NULL on the others. offsets NULL (zero-init):
 * every position is local and the range is ignored. */
typedef struct l4c_moe_combine_params {
  const void* y_sorted;        /* [rows, n] bf16, row stride ldy */
  const uint32_t* inverse;     /* [tokens * topk] */
  const void* shared;          /* [tokens, n] bf16, row stride lds, or NULL */
  void* out;                   /* [tokens, n] bf16, row stride ldo; may alias shared */
  int64_t tokens, topk, n, rows;
  int64_t ldy, lds, ldo;
  const uint32_t* offsets;     /* [experts + 1] from l4c_moe_gate, or NULL: every position local */
  int64_t expert_begin, expert_end; /* with offsets: 0 <= expert_begin <= expert_end <= experts */
} l4c_moe_combine_params;

l4c_status l4c_moe_combine(const l4c_moe_combine_params* p, l4c_stream_t stream);

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

/* ------------------------------------------------------------------------------------------------
 * Paged KV cache as the attention kernels see it (kernels/attn_prefill.cu, kernels/attn_decode.cu).
 * One layer, a batch of sequences. A chunk (page) holds `chunk_tokens` tokens of one layer's K (or V):
 * [kv_heads][chunk_tokens][head_dim] elements of `dtype`, and for F8E4M3 then [kv_heads] f32 scales
 * (stored value = e4m3_decode(code) * scale; a power of two, grow-only: crate::kv_cache docs), so a
 * chunk is self-describing and may live in device memory or in mapped pinned host memory (the
 * overflow tier): kernels only follow its address. Page p (= position / chunk_tokens) of sequence b
 * is entry page_indptr[b] + p % (page_indptr[b + 1] - page_indptr[b]) of k_pages / v_pages: a table
 * that covers every page is a plain table, a shorter one is a ring (chunked-local layers); writers
 * never overwrite a page a query in flight can see. All arrays are device memory, so a step that
 * advances seq_lens on the device can be replayed from a CUDA graph.
 * ---------------------------------------------------------------------------------------------- */

/** Bytes of one chunk of K (or V): kv_heads * chunk_tokens * head_dim * elem, + kv_heads * 4 for
 *  F8E4M3. */
typedef struct l4c_kv_pages {
    /** [page_indptr[batch]] chunk addresses (device or mapped pinned host), 16-byte aligned. */
    const uint64_t *k_pages;
    const uint64_t *v_pages;
    /** [batch + 1], page_indptr[0] = 0, non-decreasing, each sequence >= 1 entry. */
    const int64_t *page_indptr;
    /** [batch] tokens held (= the next position); positions 0 .. seq_lens[b] - 1 are readable, except
     *  ring pages already reused. */
    int64_t *seq_lens;
    int64_t batch;
    int64_t kv_heads;
    int64_t head_dim;
    int64_t chunk_tokens;
    /** L4C_DTYPE_BF16, L4C_DTYPE_F16 or L4C_DTYPE_F8E4M3. */
    l4c_dtype dtype;
} l4c_kv_pages;

/* ------------------------------------------------------------------------------------------------
 * Synthetic weights (kernels/synthetic.cu): fills a buffer from a counter-based hash, so that a
 * model at the real shapes can be measured with no checkpoint. Element i depends only on
 * (seed, tensor, i): the same bits for any grid, and reproducible on the host.
 * ---------------------------------------------------------------------------------------------- */

/** What l4c_synthetic_fill writes. */
typedef enum l4c_synth_kind {
    /** bf16 uniform in [lo, hi) (weights: lo = -hi). */
    L4C_SYNTH_BF16_UNIFORM = 0,
    /** bf16 uniform in [lo, hi), for positive ranges (int4 group scales, norm weights). */
    L4C_SYNTH_BF16_RANGE = 1,
    /** Raw 32-bit words (packed int4: every nibble is a valid value in any layout). */
    L4C_SYNTH_U32_BITS = 2,
    /** e4m3 codes with exponent field 3..10 (|v| in [1/16, 15]), never the NaN codes 0x7f / 0xff. */
    L4C_SYNTH_FP8_CODES = 3
} l4c_synth_kind;

/** out[i] for i < n, elements of the kind's type (bf16, uint32 or uint8). */
typedef struct l4c_synthetic_params {
    void *out;
    int64_t n;
    uint64_t seed;
    /** Distinguishes the tensors of one model (a different stream of values per tensor). */
    uint64_t tensor;
    float lo;
    float hi;
    l4c_synth_kind kind;
} l4c_synthetic_params;

l4c_status l4c_synthetic_fill(const l4c_synthetic_params *p, l4c_stream_t stream);

/* ------------------------------------------------------------------------------------------------
 * Flash-attention prefill (kernels/attn_prefill.cu): the queries of `tokens` consecutive positions
 * q_start .. q_start + tokens - 1 of sequence `b` attend to the keys of `kv` they may see: causal,
 * and with attn_chunk > 0 chunked-local (key j visible to the query at i iff
 * floor(j / attn_chunk) == floor(i / attn_chunk), chunks aligned to absolute positions). The cache
 * must already hold every such key (append first); keys at or past seq_lens[b] are never read.
 * Query head h reads KV head h / (heads / kv_heads). With temp_tuning != 0 (NoPE layers) the scores
 * of the query at position i are multiplied by log1p(floor((i + 1) / floor_scale)) * attn_scale + 1
 * (f32, as crate::reference::attention::TempTuning::factor), which equals scaling q by it.
 * q and out are bf16 [tokens][*_row_stride] with head h at columns h * head_dim ..; rows 16-byte
 * aligned (pointers 16-byte aligned, strides multiples of 8, >= heads * head_dim). Softmax in f32,
 * P rounded to bf16 for the P*V product, output rounded once to bf16. A query that sees no key
 * (impossible for causal masks) gets a zero row, never NaN.
 * Limits: head_dim == 128 (else L4C_ERR_UNSUPPORTED); kv.dtype BF16 or F8E4M3 (F16:
 * L4C_ERR_UNSUPPORTED_DTYPE; fp8 K/V are dequantized with the chunk's per-head scale into bf16 tiles);
 * kv.chunk_tokens a multiple of L4C_ATTN_PREFILL_KV_TILE (a KV tile never straddles a page; else
 * L4C_ERR_UNSUPPORTED); 0 <= b < kv.batch. One launch, no host synchronisation; needs sm_80+.
 * ---------------------------------------------------------------------------------------------- */

/** Keys per KV tile of the prefill kernel; kv.chunk_tokens must be a multiple of it. */
#define L4C_ATTN_PREFILL_KV_TILE 64

typedef struct l4c_attn_prefill_params {
    const void *q;
    void *out;
    /** The paged cache (read only; seq_lens is only read). */
    l4c_kv_pages kv;
    /** The sequence of kv this launch reads. */
    int64_t b;
    int64_t tokens;
    /** Absolute position of the first query. */
    int64_t q_start;
    int64_t heads;
    int64_t q_row_stride;
    int64_t out_row_stride;
    /** Softmax scale (head_dim^-0.5 for Llama 4), finite. */
    float scale;
    /** 0: plain causal; > 0: chunked-local with this attention chunk. */
    int64_t attn_chunk;
    /** Non-zero: NoPE temperature tuning with floor_scale (> 0) and attn_scale (finite). */
    int32_t temp_tuning;
    float floor_scale;
    float attn_scale;
    /** L4C_DTYPE_BF16 (q and out). */
    l4c_dtype q_dtype;
} l4c_attn_prefill_params;

l4c_status l4c_attn_prefill(const l4c_attn_prefill_params *p, l4c_stream_t stream);

/* ------------------------------------------------------------------------------------------------
 * KV append and split-KV decode attention (kernels/attn_decode.cu; design in docs/ATTENTION-DECODE.md).
 * K/V inputs are bf16; the cache is l4c_kv_pages with dtype BF16 or F8E4M3, head_dim 128, chunk_tokens
 * a multiple of 16. Needs sm_80 or newer.
 * ---------------------------------------------------------------------------------------------- */

/** Writes bf16 K/V rows ([rows, kv_heads * head_dim], head h at columns h * head_dim ..) into the cache.
 *  Two modes:
 *   - seq >= 0 (bulk, e.g. a prefill): rows 0 .. tokens - 1 go to sequence `seq` at positions
 *     start .. start + tokens - 1; then seq_lens[seq] = start + tokens. `start` is the sequence's
 *     length as the caller knows it. The caller guarantees the pages touched are distinct ring entries
 *     (the Rust layer checks its ring rule).
 *   - seq == -1 (step, CUDA-graph capturable): tokens == batch; row b goes to sequence b at position
 *     seq_lens[b] (read on the device), then seq_lens[b] += 1. A sequence already at max_tokens is left
 *     untouched (nothing written, length not advanced).
 *  fp8: per (page, KV head), bit-exact with crate::kv_cache: the scale is the smallest power of two
 *  s >= 2^-126 with amax / s <= 448 over everything appended to that (page, head), grow-only; rows
 *  already stored are re-encoded when it grows; a page whose first written slot is 0 starts fresh
 *  (scale 0). One append call is one "segment" per page, as in the CPU cache's append.
 *  Inputs must be finite (the CPU cache rejects the rest; here they are stored saturated / as NaN). */
typedef struct l4c_kv_append_params {
    l4c_kv_pages kv;
    const void *k;
    const void *v;
    /** Row strides of k and v in elements (>= kv_heads * head_dim, multiples of 8). */
    int64_t k_row_stride;
    int64_t v_row_stride;
    int64_t tokens;
    /** The sequence (bulk mode) or -1 (step mode). */
    int64_t seq;
    /** Bulk mode: the position of row 0. */
    int64_t start;
    /** Positions per sequence; nothing at or past it is written. */
    int64_t max_tokens;
} l4c_kv_append_params;

l4c_status l4c_kv_append(const l4c_kv_append_params *p, l4c_stream_t stream);

/** One decode query per sequence: row b of q ([batch, heads * head_dim] bf16) is the query at position
 *  seq_lens[b] - 1 (its K/V already appended), read on the device: the call is CUDA-graph capturable.
 *  Query head h reads KV head h / (heads / kv_heads); heads / kv_heads <= 8. Keys visible: positions
 *  lo .. seq_lens[b] - 1 with lo = 0 (attn_chunk == 0, causal) or floor(pos / attn_chunk) * attn_chunk
 *  (chunked-local). Scores are (q . k) * scale * t(pos), t the NoPE temperature
 *  log1p(floor((pos + 1) / temp_floor_scale)) * temp_attn_scale + 1 when temp_floor_scale > 0, else 1.
 *  Each sequence's visible keys are cut into num_splits equal, 16-aligned ranges (empty ones exit), each
 *  a thread block per KV head, merged by log-sum-exp in a second launch (none when num_splits == 1).
 *  A sequence with seq_lens[b] == 0 gets zeros. out: [batch, heads * head_dim] bf16. */
typedef struct l4c_attn_decode_params {
    l4c_kv_pages kv;
    const void *q;
    void *out;
    /** num_splits > 1: at least l4c_attn_decode_workspace_size(...) bytes, 16-byte aligned; not shared
     *  by launches in flight at once. May be null when num_splits == 1. */
    void *workspace;
    int64_t workspace_bytes;
    int64_t heads;
    /** Row strides in elements (>= heads * head_dim, even). */
    int64_t q_row_stride;
    int64_t out_row_stride;
    /** 0: causal over every held position; > 0: chunked-local attention chunk (a multiple of chunk_tokens
     *  when the cache is a ring). */
    int64_t attn_chunk;
    /** 1 .. 65535: splits per (sequence, KV head); the Rust layer chooses it from a host upper bound on the
     *  length (ops::attn_decode::decode_splits). */
    int64_t num_splits;
    float scale;
    /** > 0 enables temperature tuning. */
    float temp_floor_scale;
    float temp_attn_scale;
} l4c_attn_decode_params;

/** *bytes = the workspace l4c_attn_decode needs: batch * heads * num_splits * (head_dim + 2) * 4 when
 *  num_splits > 1, else 0. */
l4c_status l4c_attn_decode_workspace_size(int64_t batch, int64_t heads, int64_t head_dim, int64_t num_splits,
                                          int64_t *bytes);

l4c_status l4c_attn_decode(const l4c_attn_decode_params *p, l4c_stream_t stream);

/* ------------------------------------------------------------------------------------------------
 * Sampling (kernels/sample.cu): logits -> next token ids on the device, CUDA-graph capturable.
 * The specification is src/reference/sample.rs.
 * ---------------------------------------------------------------------------------------------- */

/** Bit of *status set when a row holds a NaN or +inf logit (that row's id is 0). */
#define L4C_SAMPLE_BAD_LOGIT 1u

/** ids[r] = the next token of row r of logits ([rows, vocab] with row stride, f32 / f16 / bf16).
 *  temperature == 0: argmax, ties to the lowest index (an all -inf row gives 0).
 *  temperature > 0: weights w = exp((l - max) / t) (all 1 when every logit is -inf), in f32, as masses
 *  q = round(w * 2^(63 - bitlen(vocab))) (u64, exact integer sums; weights that round to 0 are never
 *  kept). Q = sum q, target = Q when top_p == 1 else clamp(ceil(top_p * Q), 1, Q) (in double). w* = the
 *  largest weight whose mass of weights >= w* reaches target; A = the mass of weights > w*; the kept set
 *  is every token with w > w* plus the c lowest-index tokens with w == w*, c = min(ties, ceil((target -
 *  A) / q(w*))) (the smallest most-likely prefix reaching top_p, ties to lower ids). K = its mass. With
 *  x = mix(mix(mix(seed) ^ step) ^ r) (mix: splitmix64 of z + 0x9e3779b97f4a7c15) and u = (x >> 11) /
 *  2^53, the id is the first kept token in index order whose inclusive prefix mass exceeds floor(u * K).
 *  *step is read by every row, then incremented by 1 by a second launch of this call: a replayed graph
 *  draws fresh numbers. When history is not null, history[(step % history_len) * rows + r] = ids[r] too.
 *  A NaN or +inf logit: ids[r] = 0 and *status |= L4C_SAMPLE_BAD_LOGIT (never cleared by the kernel).
 *  One thread block per row. */
typedef struct l4c_sample_params {
    const void *logits;
    /** [rows] output. */
    uint32_t *ids;
    /** [history_len, rows] ring of every call's ids, or null. */
    uint32_t *history;
    /** [1] the step counter (read, then advanced by one). */
    uint64_t *step;
    /** [1] sticky error bits (L4C_SAMPLE_BAD_LOGIT). */
    uint32_t *status;
    int64_t rows;
    /** 1 .. 2^30. */
    int64_t vocab;
    /** >= vocab. */
    int64_t logits_row_stride;
    /** >= 1 when history is not null. */
    int64_t history_len;
    /** finite, >= 0. */
    float temperature;
    /** (0, 1]. */
    float top_p;
    uint64_t seed;
    l4c_dtype logits_dtype;
} l4c_sample_params;

l4c_status l4c_sample(const l4c_sample_params *p, l4c_stream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* LLAMA4_CUDA_H */
