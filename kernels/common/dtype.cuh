// Storage dtypes: the C++ type of each l4c_dtype and conversions to and from f32 (the compute type).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "llama4_cuda.h"

namespace l4c {

using bf16 = __nv_bfloat16;
using f16 = __half;

// Storage -> f32 (exact for all three types).
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(f16 x) { return __half2float(x); }
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }

// f32 -> storage, round to nearest even (NaN stays NaN, overflow gives inf).
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ f16 from_float<f16>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float x) { return __float2bfloat16_rn(x); }

// N consecutive elements moved as one aligned vector access (N * sizeof(T) of 16 or 32 bytes
// becomes one or two 128-bit loads). The pointer must be aligned to min(16, N * sizeof(T)).
template <typename T, int N>
struct alignas(N * sizeof(T) >= 16 ? 16 : N * sizeof(T)) Pack {
    T v[N];
};

// Loads N elements at p (aligned as Pack requires) into f32.
template <int N, typename T>
__device__ __forceinline__ void load_pack(const T *p, float (&out)[N]) {
    Pack<T, N> pk = *reinterpret_cast<const Pack<T, N> *>(p);
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = to_float(pk.v[i]);
}

// Stores N f32 values to p (aligned as Pack requires), converted to T.
template <int N, typename T>
__device__ __forceinline__ void store_pack(T *p, const float (&in)[N]) {
    Pack<T, N> pk;
#pragma unroll
    for (int i = 0; i < N; ++i) pk.v[i] = from_float<T>(in[i]);
    *reinterpret_cast<Pack<T, N> *>(p) = pk;
}

// Elements per vectorised access in the elementwise-style kernels: 8 (16 bytes of a 2-byte type,
// 32 of f32). A host launcher uses it only when every pointer is 16-byte aligned and every row
// stride and length is a multiple of it.
constexpr int kVecElems = 8;

// Bytes per element of a dtype; 0 for values that are not an l4c_dtype.
inline int64_t dtype_size(l4c_dtype d) {
    switch (d) {
        case L4C_DTYPE_F32: return 4;
        case L4C_DTYPE_F16:
        case L4C_DTYPE_BF16: return 2;
        case L4C_DTYPE_F8E4M3:
        case L4C_DTYPE_F8E5M2: return 1;
    }
    return 0;
}

}  // namespace l4c
