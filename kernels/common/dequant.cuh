// Register-level dequantization into tensor-core fragments (int4 group-wise, fp8 e4m3).
#pragma once

#include "mma.cuh"

namespace l4c {

// One 32-bit word of the repacked int4 layout holds the 8 nibbles of one thread's m16k16 A fragment
// (see docs/GEMM.md and src/quant/repack.rs): fragment register p (0..3) takes nibble p in its low
// half and nibble p + 4 in its high half, so shifting by 4p and masking 0x000f000f isolates a pair.
// OR-ing the magic exponent gives (magic + q) exactly; subtracting (magic + z) is exact, the multiply
// by the group scale rounds once. Rows: registers 0 and 2 belong to row g, 1 and 3 to row g + 8, so
// `zb_lo/s_lo` are row g's (zero bias, scale) broadcast to both halves and `zb_hi/s_hi` row g + 8's.
template <typename T>
__device__ __forceinline__ void dequant_int4_frag(uint32_t w, uint32_t zb_lo, uint32_t zb_hi,
                                                  uint32_t s_lo, uint32_t s_hi, uint32_t (&a)[4]) {
  constexpr uint32_t kMask = 0x000f000fu;
  constexpr uint32_t kMagic = Half2<T>::kMagic2;
  a[0] = sub_mul2(lop3_and_or(w, kMask, kMagic), zb_lo, s_lo, T());
  a[1] = sub_mul2(lop3_and_or(w >> 4, kMask, kMagic), zb_hi, s_hi, T());
  a[2] = sub_mul2(lop3_and_or(w >> 8, kMask, kMagic), zb_lo, s_lo, T());
  a[3] = sub_mul2(lop3_and_or(w >> 12, kMask, kMagic), zb_hi, s_hi, T());
}

// fp8 e4m3 -> bf16, exact for every finite code (NaN codes 0x7f/0xff are not produced by the
// quantizers and decode as 480). Two codes (bytes 0 and 1 of `u` when hi = false, bytes 2 and 3
// when hi = true) become one bf16 pair: place the 7 exponent+mantissa bits at bf16 bits 4..10 and
// the sign at bit 15, which reads as value * 2^-120, then multiply by 2^120 (exact: a power of two,
// and bf16 arithmetic keeps subnormals, which e4m3 subnormals pass through). e4m3_b13_to_bf16x2 is
// the core: the two codes in bytes 1 (low result half) and 3 (high half).
__device__ __forceinline__ uint32_t e4m3_b13_to_bf16x2(uint32_t t) {
  // t = [b3|x|b1|x]: only bytes 1 and 3 are read (the shift and mask drop bytes 0 and 2), so a caller's
  // prmt may leave anything there.
  const uint32_t sign = t & 0x80008000u;
  const uint32_t bits = lop3_and_or(t >> 4, 0x07f007f0u, sign);
  __nv_bfloat162 v = *reinterpret_cast<const __nv_bfloat162*>(&bits);
  const __nv_bfloat162 k2p120 = __halves2bfloat162(__ushort_as_bfloat16(0x7b80), __ushort_as_bfloat16(0x7b80));
  v = __hmul2(v, k2p120);
  return *reinterpret_cast<uint32_t*>(&v);
}
__device__ __forceinline__ uint32_t e4m3x2_to_bf16x2(uint32_t u, bool hi) {
  // bytes -> high byte of each 16-bit half: [b1|0|b0|0] or [b3|0|b2|0]
  return e4m3_b13_to_bf16x2(prmt(u, 0, hi ? 0x3424u : 0x1404u));
}

}  // namespace l4c
