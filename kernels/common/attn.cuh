// Device helpers shared by the attention kernels (attn_prefill.cu, attn_decode.cu): the paged-KV
// address rule of l4c_kv_pages, the NoPE temperature factor, online-softmax pieces (quad reductions
// over an mma accumulator row, a NaN-free exp base) and the transposing ldmatrix for P*V.
#pragma once

#include <cuda_bf16.h>
#include <math_constants.h>
#include <stdint.h>

#include "common/mma.cuh"
#include "llama4_cuda.h"

namespace l4c {

// ---- paged KV (l4c_kv_pages) ----------------------------------------------------------------------

// Base address of page `page` (= position / chunk_tokens) of sequence b: entry
// page_indptr[b] + page % (page_indptr[b + 1] - page_indptr[b]) (a ring when the table is short).
__device__ __forceinline__ const uint8_t* kv_page(const uint64_t* pages, const int64_t* indptr, int64_t b,
                                                  int64_t page) {
  const int64_t lo = indptr[b];
  const int64_t n = indptr[b + 1] - lo;
  return reinterpret_cast<const uint8_t*>(pages[lo + page % n]);
}

// Byte offset of row (head, slot) inside a chunk: [kv_heads][chunk_tokens][head_dim] elements.
__device__ __forceinline__ int64_t kv_row_bytes(int64_t head, int64_t slot, int64_t chunk_tokens,
                                               int64_t head_dim, int64_t elem_bytes) {
  return (head * chunk_tokens + slot) * head_dim * elem_bytes;
}

// The f32 scale of `head` in an fp8 chunk: after the kv_heads * chunk_tokens * head_dim codes.
__device__ __forceinline__ float kv_fp8_scale(const uint8_t* page, int64_t head, int64_t kv_heads,
                                              int64_t chunk_tokens, int64_t head_dim) {
  return reinterpret_cast<const float*>(page + kv_heads * chunk_tokens * head_dim)[head];
}

// ---- masks and temperature --------------------------------------------------------------------------

// The first key the query at `pos` sees: 0 (causal) or the start of its attention chunk.
__device__ __forceinline__ int64_t first_visible(int64_t pos, int64_t attn_chunk) {
  return attn_chunk > 0 ? pos / attn_chunk * attn_chunk : 0;
}

// Llama 4 NoPE temperature factor for the query at 0-based position `pos`, rounded step by step as
// crate::reference::attention::TempTuning::factor (f32; explicit _rn ops so nvcc does not fuse).
__device__ __forceinline__ float temp_factor(int64_t pos, float floor_scale, float attn_scale) {
  const float x = floorf(__fdiv_rn(__fadd_rn(static_cast<float>(pos), 1.0f), floor_scale));
  return __fadd_rn(__fmul_rn(log1pf(x), attn_scale), 1.0f);
}

// ---- online softmax ---------------------------------------------------------------------------------

// Max / sum over the 4 lanes of a quad: the lanes holding one row of an m16n8 accumulator.
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// The value subtracted before exp2: the running max, or 0 while a row has seen no visible key
// (max = -inf), so exp2(-inf - base) = 0 instead of exp2(-inf + inf) = NaN.
__device__ __forceinline__ float softmax_base(float m) { return m == -CUDART_INF_F ? 0.0f : m; }

// 1 / l for the final normalisation; 0 for a row with no visible key (its accumulator is 0).
__device__ __forceinline__ float softmax_inv_sum(float l) { return l > 0.0f ? 1.0f / l : 0.0f; }

// ---- fragments ----------------------------------------------------------------------------------------

// Two floats as a bf16 pair (lo in the low half), round to nearest even.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Four transposed 8x8 b16 matrices (the B operand of P*V from a row-major [key][dim] V tile); lane l
// supplies the row address of row l%8 of matrix l/8.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

}  // namespace l4c
