// Synthetic weights generated on the device: a counter-based hash (splitmix64's finaliser over
// seed, tensor id and element index) fills bf16 values, raw 32-bit words (int4 nibbles in any
// layout: every nibble is a valid value), e4m3 codes (never NaN) and small positive bf16 scales.
// Element i's value depends only on (seed, tensor, i), never on the launch shape, so any grid gives
// the same bits and a host mirror (src/ops/synthetic.rs) can check one element exactly.
#include <cuda_bf16.h>
#include <stdint.h>

#include "common/status.cuh"
#include "llama4_cuda.h"

namespace {

constexpr int kBlock = 256;

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// The 64 random bits of element i of tensor `tensor` under `seed`.
__device__ __forceinline__ uint64_t bits_at(uint64_t seed, uint64_t tensor, uint64_t i) {
    return mix64(mix64(seed ^ (tensor * 0x9e3779b97f4a7c15ull)) + i * 0x9e3779b97f4a7c15ull);
}

// A uniform float in [0, 1) from the top 24 bits.
__device__ __forceinline__ float unit(uint64_t r) { return float(r >> 40) * (1.0f / 16777216.0f); }

__global__ void __launch_bounds__(kBlock) synthetic_fill_kernel(l4c_synthetic_params p) {
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n; i += stride) {
        const uint64_t r = bits_at(p.seed, p.tensor, uint64_t(i));
        switch (p.kind) {
            case L4C_SYNTH_BF16_UNIFORM:
            case L4C_SYNTH_BF16_RANGE: {
                const float v = p.lo + (p.hi - p.lo) * unit(r);
                static_cast<__nv_bfloat16 *>(p.out)[i] = __float2bfloat16_rn(v);
                break;
            }
            case L4C_SYNTH_U32_BITS: static_cast<uint32_t *>(p.out)[i] = uint32_t(r >> 32); break;
            case L4C_SYNTH_FP8_CODES: {
                // sign | exponent 3..10 | mantissa: |v| in [2^-4, 2^3 * 1.875], never the NaN codes.
                const uint32_t sign = uint32_t(r >> 63) << 7;
                const uint32_t expo = 3u + uint32_t((r >> 32) & 7u);
                const uint32_t mant = uint32_t((r >> 40) & 7u);
                static_cast<uint8_t *>(p.out)[i] = uint8_t(sign | (expo << 3) | mant);
                break;
            }
            default: break;
        }
    }
}

}  // namespace

extern "C" l4c_status l4c_synthetic_fill(const l4c_synthetic_params *p, l4c_stream_t stream) {
    L4C_REQUIRE(p != nullptr);
    L4C_REQUIRE(p->n >= 0);
    L4C_REQUIRE(p->kind == L4C_SYNTH_BF16_UNIFORM || p->kind == L4C_SYNTH_BF16_RANGE ||
                p->kind == L4C_SYNTH_U32_BITS || p->kind == L4C_SYNTH_FP8_CODES);
    if (p->n == 0) return L4C_OK;
    L4C_REQUIRE(p->out != nullptr);
    if (p->kind == L4C_SYNTH_BF16_UNIFORM || p->kind == L4C_SYNTH_BF16_RANGE) {
        L4C_REQUIRE(p->lo == p->lo && p->hi == p->hi && p->lo <= p->hi);  // not NaN, ordered
    }
    const unsigned grid = l4c::grid_for(p->n, kBlock, int64_t(1) << 15);
    synthetic_fill_kernel<<<grid, kBlock, 0, stream>>>(*p);
    return L4C_LAUNCH_STATUS();
}
