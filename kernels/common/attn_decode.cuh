// Device helpers of the KV append and split-KV decode kernels (kernels/attn_decode.cu): the
// power-of-two KV scale rule (bit-exact with crate::kv_cache; the scalar e4m3 codec is
// common/fp8.cuh), the paged-view address math, movmatrix, and the base-2 log-sum-exp merge.
#pragma once

#include <cuda_bf16.h>
#include <float.h>
#include <math.h>
#include <stdint.h>

#include "fp8.cuh"
#include "llama4_cuda.h"

namespace l4c {

// crate::kv_cache::storage::pow2_scale: the smallest power of two s >= 2^-126 with amax / s <= 448;
// 0 for amax == 0. The CPU computes it from amax / 448 and corrects upward; that is exactly this
// smallest power of two, found here without a division: a guess from amax's exponent, then exact
// comparisons (448 * s is exact). A non-finite amax (outside the contract) is clamped.
__device__ __forceinline__ float kv_pow2_scale(float amax) {
    if (amax == 0.0f) return 0.0f;
    if (!(amax <= FLT_MAX)) amax = FLT_MAX;
    const int eb = static_cast<int>(__float_as_uint(amax) >> 23);  // biased exponent (amax >= 0)
    float s = __uint_as_float(static_cast<uint32_t>(max(eb - 8, 1)) << 23);
    while (amax > __fmul_rn(kE4M3Max, s)) s = __fmul_rn(s, 2.0f);
    while (s > FLT_MIN && amax <= __fmul_rn(kE4M3Max, __fmul_rn(s, 0.5f))) s = __fmul_rn(s, 0.5f);
    return s;
}

// 1 / s for a power of two s in [2^-126, 2^126] (exact, normal).
__device__ __forceinline__ float pow2_recip(float s) {
    return __uint_as_float((254u - (__float_as_uint(s) >> 23)) << 23);
}

// Table entry of absolute page `page` of sequence b (a plain table or a ring: l4c_kv_pages).
__device__ __forceinline__ int64_t kv_page_entry(const l4c_kv_pages &kv, int64_t b, int64_t page) {
    const int64_t base = kv.page_indptr[b];
    const int64_t n = kv.page_indptr[b + 1] - base;
    return base + page % n;
}

// a / b for non-negative a, positive b; 32-bit division when both fit (the usual case, ~4x cheaper).
__device__ __forceinline__ int64_t div_nonneg(int64_t a, int64_t b) {
    if (((a | b) >> 31) == 0) return static_cast<int64_t>(static_cast<uint32_t>(a) / static_cast<uint32_t>(b));
    return a / b;
}

// Transposes an 8x8 b16 matrix held in the mma fragment layout (lane l: row l/4, columns 2(l%4)..+1).
__device__ __forceinline__ uint32_t movmatrix_trans(uint32_t x) {
    uint32_t r;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(r) : "r"(x));
    return r;
}

// Two f32 -> one bf16x2 (x in the low half), round to nearest even.
__device__ __forceinline__ uint32_t pack_bf16x2(float x, float y) {
    __nv_bfloat162 v = __floats2bfloat162_rn(x, y);
    return *reinterpret_cast<uint32_t *>(&v);
}

// exp2(m - mmax) as a merge weight; 0 for an empty part (m == -inf), never NaN.
__device__ __forceinline__ float lse_weight(float m, float mmax) {
    return m == -INFINITY ? 0.0f : exp2f(m - mmax);
}

// 16-byte read-only global load, not kept in L1 (K/V are read once per step). Not volatile, so the
// compiler may hoist it: the cache is never written while a decode kernel runs.
__device__ __forceinline__ uint4 ldg_nc128(const void *p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

}  // namespace l4c
