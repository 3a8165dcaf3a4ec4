// GEMM epilogues shared by the dense, quantized and grouped GEMMs: f32 accumulators ->
// optional per-row / per-column scales -> optional bf16 residual -> bf16 output.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "llama4_cuda.h"

namespace l4c {

// Everything an epilogue needs; all row strides in elements, 64-bit.
struct Epilogue {
  __nv_bfloat16* out;              // [m, n], row stride ldo
  const __nv_bfloat16* residual;   // [m, n], row stride ldr, or null
  const float* row_scale;          // [m] or null (fp8 per-token activation scales)
  const float* col_scale;          // [n] or null (fp8 per-channel weight scales)
  int64_t m, n, ldo, ldr;

  // out[i, j] = bf16(acc * (row_scale[i] * col_scale[j]) + residual[i, j]); the scale product is
  // formed first, as the CPU reference does.
  __device__ __forceinline__ float apply(float acc, int64_t i, int64_t j) const {
    float s = 1.0f;
    if (row_scale) s = row_scale[i];
    if (col_scale) s = row_scale ? s * col_scale[j] : col_scale[j];
    float v = (row_scale || col_scale) ? acc * s : acc;
    if (residual) v += __bfloat162float(residual[i * ldr + j]);
    return v;
  }
  __device__ __forceinline__ void store(float acc, int64_t i, int64_t j) const {
    if (i < m && j < n) out[i * ldo + j] = __float2bfloat16_rn(apply(acc, i, j));
  }
};

// Writes one m16n8 mma accumulator fragment (d_r: row r0 + g + 8(r>>1), column c0 + 2c + (r&1),
// g = lane / 4, c = lane % 4) into the f32 staging tile cs; kTrans stores it as cs[column][row]
// (swap-AB: the MMA rows are the output columns).
template <bool kTrans>
__device__ __forceinline__ void stage_frag(float* cs, int pitch, int r0, int c0, int g, int c, float d0, float d1,
                                           float d2, float d3) {
  const float d[4] = {d0, d1, d2, d3};
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int row = r0 + g + 8 * (r >> 1), col = c0 + 2 * c + (r & 1);
    cs[kTrans ? col * pitch + row : row * pitch + col] = d[r];
  }
}

// out[0..8) = bf16(f[e] + residual[e]) (residual optional), one 16-byte load and store; both
// pointers 16-byte aligned.
__device__ __forceinline__ void store8_bf16(__nv_bfloat16* out, const __nv_bfloat16* residual, float (&f)[8]) {
  if (residual) {
    const uint4 rv = *reinterpret_cast<const uint4*>(residual);
    const __nv_bfloat162* r2 = reinterpret_cast<const __nv_bfloat162*>(&rv);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float2 rf = __bfloat1622float2(r2[e]);
      f[2 * e] += rf.x;
      f[2 * e + 1] += rf.y;
    }
  }
  uint4 ov;
  __nv_bfloat162* o2 = reinterpret_cast<__nv_bfloat162*>(&ov);
#pragma unroll
  for (int e = 0; e < 4; ++e) o2[e] = __floats2bfloat162_rn(f[2 * e], f[2 * e + 1]);
  *reinterpret_cast<uint4*>(out) = ov;
}

// Writes a tile staged in shared memory as f32 `cs[r * pitch + c]` (r = row of the output, c =
// column) for output rows [m0, m0 + rows) and columns [n0, n0 + cols), 8 columns per step with one
// 16-byte store where the row is fully in range and aligned, element-wise at the edges.
template <int THREADS>
__device__ __forceinline__ void store_tile_from_smem(const Epilogue& ep, const float* cs, int pitch,
                                                     int rows, int cols, int64_t m0, int64_t n0) {
  const int vecs_per_row = cols / 8;
  const bool vec_ok = (ep.ldo % 8 == 0) && (!ep.residual || ep.ldr % 8 == 0) &&
                      ((reinterpret_cast<uintptr_t>(ep.out) & 15) == 0) &&
                      (!ep.residual || (reinterpret_cast<uintptr_t>(ep.residual) & 15) == 0);
  for (int v = threadIdx.x; v < rows * vecs_per_row; v += THREADS) {
    const int r = v / vecs_per_row;
    const int c = (v % vecs_per_row) * 8;
    const int64_t i = m0 + r, j = n0 + c;
    if (i >= ep.m) continue;
    const float* src = cs + r * pitch + c;
    if (vec_ok && j + 8 <= ep.n) {
      float f[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) f[e] = src[e];
      if (ep.row_scale || ep.col_scale) {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          float s = ep.row_scale ? ep.row_scale[i] : 1.0f;
          if (ep.col_scale) s = ep.row_scale ? s * ep.col_scale[j + e] : ep.col_scale[j + e];
          f[e] *= s;
        }
      }
      store8_bf16(ep.out + i * ep.ldo + j, ep.residual ? ep.residual + i * ep.ldr + j : nullptr, f);
    } else {
      for (int e = 0; e < 8; ++e) ep.store(src[e], i, j + e);
    }
  }
}

struct Epilogue;
// Sums split-K partials `ws[split][m][n]` (f32) in split order and applies `ep`; defined in
// gemm_w4a16.cu, used by every split-K GEMM. Grouped: rows at or past `*end` (device), rows before
// `*begin` (device; null: 0) and rows whose `sorted_slots` entry is padding (UINT32_MAX) are left
// untouched (begin / end: the local experts' offsets under expert parallelism).
l4c_status launch_splitk_reduce(const float* ws, int split, const Epilogue& ep, cudaStream_t stream,
                                const uint32_t* sorted_slots = nullptr, const uint32_t* end = nullptr,
                                const uint32_t* begin = nullptr);

}  // namespace l4c
