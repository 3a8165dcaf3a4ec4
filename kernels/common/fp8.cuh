// Scalar e4m3fn codec shared by the fp8 activation quantizer (gemm_fp8.cu) and the fp8 KV cache
// (attn_decode.cu): bit-exact with crate::quant::fp8. The register-level pair decode into mma
// fragments is e4m3x2_to_bf16x2 in dequant.cuh.
#pragma once

#include <math.h>
#include <stdint.h>

namespace l4c {

constexpr float kE4M3Max = 448.0f;

// e4m3fn, round to nearest even, saturating to +-448; NaN -> 0x7f (sign kept). Bit-exact with
// crate::quant::fp8::e4m3_encode.
__device__ __forceinline__ uint8_t e4m3_encode_rn(float v) {
  const uint32_t sign = (__float_as_uint(v) >> 24) & 0x80u;
  const float a = fabsf(v);
  if (!(a == a)) return static_cast<uint8_t>(sign | 0x7fu);
  if (a >= kE4M3Max) return static_cast<uint8_t>(sign | 0x7eu);
  if (a < 0.015625f) {  // below 2^-6: subnormal grid of step 2^-9 (a * 512 is exact)
    return static_cast<uint8_t>(sign | static_cast<uint32_t>(rintf(a * 512.0f)));
  }
  const uint32_t b = __float_as_uint(a);
  const uint32_t r = b + 0x7ffffu + ((b >> 20) & 1u);  // round the 23-bit mantissa to 3 bits, RNE
  uint32_t code = (((r >> 23) - 120u) << 3) | ((r >> 20) & 7u);
  if (code > 0x7eu) code = 0x7eu;
  return static_cast<uint8_t>(sign | code);
}

// Exact value of an e4m3fn code, built from its bit fields: 2^(e-7) (1 + m/8), or m 2^-9 for
// e = 0 (NaN codes decode as +-480; no quantizer here produces them).
__device__ __forceinline__ float e4m3_decode_f32(uint32_t c) {
  const uint32_t e = (c >> 3) & 15u, m = c & 7u;
  const float mag = e ? __uint_as_float(((e + 120u) << 23) | (m << 20)) : static_cast<float>(m) * 0.001953125f;
  return (c & 0x80u) ? -mag : mag;
}

}  // namespace l4c
