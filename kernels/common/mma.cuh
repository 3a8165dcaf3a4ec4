// Tensor-core and async-copy primitives shared by the GEMM, MoE and attention kernels (sm_80+).
// One copy of each: mma.sync m16n8k16, ldmatrix, cp.async with zero-fill, lop3/prmt, the 128-byte
// XOR swizzle used for every K-major shared-memory tile (the same byte layout wgmma's SWIZZLE_128B
// reads, see wgmma.cuh), and bf16/f16 pair helpers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace l4c {

// ---- 16-bit element traits: the activation dtypes the GEMMs take ---------------------------------

template <typename T> struct Half2;
template <> struct Half2<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  // bf16 128.0: with the 7-bit mantissa its ulp is 1, so OR-ing a nibble into the low mantissa bits
  // gives exactly 128 + q.
  static constexpr uint32_t kMagic2 = 0x43004300u;
  static constexpr float kMagic = 128.0f;
};
template <> struct Half2<__half> {
  using T2 = __half2;
  // f16 1024.0: 10-bit mantissa, ulp 1, so 1024 + q.
  static constexpr uint32_t kMagic2 = 0x64006400u;
  static constexpr float kMagic = 1024.0f;
};

// (a - b) * c on packed pairs, each op rounded to nearest even (the subtraction is exact for the
// integer-valued operands the int4 dequant feeds it).
__device__ __forceinline__ uint32_t sub_mul2(uint32_t a, uint32_t b, uint32_t c, __nv_bfloat16) {
  __nv_bfloat162 r = __hmul2(__hsub2(*reinterpret_cast<__nv_bfloat162*>(&a),
                                     *reinterpret_cast<__nv_bfloat162*>(&b)),
                             *reinterpret_cast<__nv_bfloat162*>(&c));
  return *reinterpret_cast<uint32_t*>(&r);
}
__device__ __forceinline__ uint32_t sub_mul2(uint32_t a, uint32_t b, uint32_t c, __half) {
  __half2 r = __hmul2(__hsub2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b)),
                      *reinterpret_cast<__half2*>(&c));
  return *reinterpret_cast<uint32_t*>(&r);
}

// ---- bit tricks ------------------------------------------------------------------------------------

// (a & b) | c in one LOP3 (the compiler does not always find it).
__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, %4;\n" : "=r"(r) : "r"(a), "r"(b), "r"(c), "n"((0xf0 & 0xcc) | 0xaa));
  return r;
}

// Byte permute: result byte i = byte sel[i] of {b:a} (selector nibbles 0-3 pick a, 4-7 pick b).
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

// Broadcast the low (hi=0) or high (hi=1) 16-bit half of a pair into both halves.
__device__ __forceinline__ uint32_t bcast_lo(uint32_t x) { return prmt(x, 0, 0x1010); }
__device__ __forceinline__ uint32_t bcast_hi(uint32_t x) { return prmt(x, 0, 0x3232); }

// ---- mma.sync -------------------------------------------------------------------------------------

// D += A(16x16, row) * B(16x8, col), f32 accumulate. Fragment layout (g = lane/4, c = lane%4):
//   a[0] = A[g][2c..2c+1]  a[1] = A[g+8][2c..]  a[2] = A[g][2c+8..]  a[3] = A[g+8][2c+8..]
//   b[0] = B[2c..2c+1][g]  b[1] = B[2c+8..][g]
//   d[0..1] = D[g][2c..2c+1]  d[2..3] = D[g+8][2c..2c+1]
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1, __nv_bfloat16) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1, __half) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---- shared memory ----------------------------------------------------------------------------------

// Component w (0..3, a compile-time constant after unrolling) of a 16-byte vector.
__device__ __forceinline__ uint32_t u4_word(const uint4& v, int w) {
  return w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w;
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices; lane l supplies the row address of row l%8 of matrix l/8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ uint4 lds128(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(addr));
  return v;
}
__device__ __forceinline__ uint2 lds64(uint32_t addr) {
  uint2 v;
  asm volatile("ld.shared.v2.u32 {%0,%1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(addr));
  return v;
}
__device__ __forceinline__ uint32_t lds32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(addr));
  return v;
}

// Byte offset of 16-byte chunk `chunk` (0..7) of row `row` in a tile of 128-byte rows stored with the
// 128B XOR swizzle (chunk ^= row % 8). The tile base must be 1024-byte aligned for wgmma to read it.
__device__ __forceinline__ uint32_t sw128(uint32_t row, uint32_t chunk) {
  return row * 128u + ((chunk ^ (row & 7u)) << 4);
}

// ---- cp.async -----------------------------------------------------------------------------------------

// 16-byte global -> shared copy, bypassing L1; bytes past src_bytes (0 or 16) are zero-filled.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, uint32_t src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// ---- global loads -------------------------------------------------------------------------------------

// Streamed 16-byte load that is not kept in L1 (weights are read exactly once).
__device__ __forceinline__ uint4 ldg_stream128(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

}  // namespace l4c
