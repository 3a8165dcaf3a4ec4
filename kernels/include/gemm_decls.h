/* ---- Quantized GEMMs (kernels/gemm_w4a16.cu, kernels/gemm_fp8.cu) --------------------------------
 * All compute Y[m, n] = X[m, k] . W^T (W is [n, k], the Hugging Face Linear layout), accumulate in
 * f32 and write bf16, optionally adding a bf16 residual [m, n]. Row strides are in elements.
 * The plan fields (path, token_tiles, split_k) come from the Rust dispatcher (ops::gemm::GemmPlan);
 * a C caller picks them the same way (docs/GEMM.md). */

/* Activation dtype of a W4A16 GEMM. */
#define L4C_GEMM_ACT_BF16 0
#define L4C_GEMM_ACT_F16 1

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
  int32_t act_dtype;         /* L4C_GEMM_ACT_* */
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
