// FP8 e4m3 GEMMs with per-output-channel weight scales, bf16 output (+ optional residual), and the
// dynamic per-token activation quantizer. Design in docs/GEMM.md.
//   decode  (W8A16, or W8A8 on the quantizer's decoded activations): tensor-core GEMV, weights
//           streamed once, tokens in the mma N dimension, split-K. sm_80 and sm_90a alike.
//   prefill (W8A8): 128 x 128 x 128-byte tiles through a 4-stage cp.async ring (SW128 swizzle);
//           sm_90a: wgmma.m64n128k32 e4m3 x e4m3 from shared memory (QGMMA);
//           sm_80:  codes widened to bf16 in registers (exact) and mma.sync m16n8k16 (HMMA).
// Every fp8 product is exact in f32 on both paths, so the two agree with the CPU reference up to
// the f32 summation order.
#include "llama4_cuda.h"

#include <algorithm>

#include "common/dequant.cuh"
#include "common/fp8.cuh"
#include "common/gemm_epilogue.cuh"
#include "common/gemm_grouped.cuh"
#include "common/mma.cuh"
#include "common/status.cuh"
#include "common/wgmma.cuh"

namespace {
using namespace l4c;

// ------------------------------------------------------------------------------------------------
// Per-token quantization: one block per row. absmax -> scale = absmax / 448 (1 for a zero row) ->
// code = e4m3(x / scale) with IEEE division, as the CPU reference does.
constexpr int kQuantThreads = 256;

__global__ void __launch_bounds__(kQuantThreads) gemm_fp8_quantize_per_token(const __grid_constant__ l4c_fp8_quantize_params p) {
  const int64_t row = blockIdx.x;
  const __nv_bfloat16* x = static_cast<const __nv_bfloat16*>(p.x) + row * p.ldx;
  float amax = 0.f;
  for (int64_t j = threadIdx.x; j < p.k; j += kQuantThreads) amax = fmaxf(amax, fabsf(__bfloat162float(x[j])));
  __shared__ float red[kQuantThreads / 32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = amax;
  __syncthreads();
  amax = red[0];
#pragma unroll
  for (int w = 1; w < kQuantThreads / 32; ++w) amax = fmaxf(amax, red[w]);
  const float scale = amax > 0.f ? __fdiv_rn(amax, kE4M3Max) : 1.0f;
  if (threadIdx.x == 0) p.scales[row] = scale;
  const int64_t kpad = p.codes ? p.ldc : p.k;
  for (int64_t j = threadIdx.x; j < kpad; j += kQuantThreads) {
    const uint8_t code = j < p.k ? e4m3_encode_rn(__fdiv_rn(__bfloat162float(x[j]), scale)) : 0;
    if (p.codes) p.codes[row * p.ldc + j] = code;
    if (p.decoded && j < p.k) static_cast<__nv_bfloat16*>(p.decoded)[row * p.k + j] = __float2bfloat16_rn(e4m3_decode_f32(code));
  }
}

// ------------------------------------------------------------------------------------------------
// Decode (W8A16): the dense instantiation of the shared tensor-core GEMV (common/gemm_grouped.cuh,
// DecodeW<kFp8>: lane c reads 16 bytes of rows g and g + 8 at k = 16c per 64-k slab, k16 step j
// maps fragment slots to k 16c + 4j.., codes widened to bf16 exactly). Scales in the Epilogue.
template <int MT>
__global__ void __launch_bounds__(kGgDecWarps * 32, MT == 4 ? 3 : 4)
    gemm_fp8_decode(const __grid_constant__ GroupedGemm a) {
  grouped_decode<WFmt::kFp8, MT, __nv_bfloat16, true>(a);
}

// ------------------------------------------------------------------------------------------------
// Prefill (W8A8): block = 128 tokens x 128 output columns, 128 k (bytes) per stage, 8 warps.
constexpr int kPreBM = 128, kPreBN = 128, kPreBK = 128, kPreStages = 4, kPreThreads = 256;
constexpr int kPreTileBytes = 128 * kPreBK;  // 16 KiB each for X and W
constexpr int kPreStageBytes = 2 * kPreTileBytes;
constexpr int kPreCsPitch = kPreBN + 4;
constexpr int kPreSmem = kPreStages * kPreStageBytes + 1024;
static_assert(kPreBM * kPreCsPitch * 4 <= kPreStages * kPreStageBytes, "epilogue staging fits the ring");

__global__ void __launch_bounds__(kPreThreads, 1) gemm_fp8_prefill(const __grid_constant__ l4c_gemm_fp8_params p) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const uint32_t sbase = smem_u32(smem);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, c = lane % 4;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kPreBN, m0 = static_cast<int64_t>(blockIdx.y) * kPreBM;
  const int64_t ktiles = (p.k + kPreBK - 1) / kPreBK;
  const uint8_t* xq = static_cast<const uint8_t*>(p.x);

  auto load_stage = [&](int st, int64_t kt) {
    const uint32_t xs = sbase + st * kPreStageBytes, ws = xs + kPreTileBytes;
#pragma unroll
    for (int q = 0; q < kPreTileBytes / 16 / kPreThreads; ++q) {
      const int u = tid + q * kPreThreads, r = u / 8, ch = u % 8;
      const int64_t gk = kt * kPreBK + ch * 16;
      const bool okx = m0 + r < p.m && gk < p.k, okw = n0 + r < p.n && gk < p.k;
      cp_async16(xs + sw128(r, ch), okx ? static_cast<const void*>(xq + (m0 + r) * p.ldx + gk) : p.x, okx ? 16 : 0);
      cp_async16(ws + sw128(r, ch), okw ? static_cast<const void*>(p.w + (n0 + r) * p.ldw + gk) : p.w, okw ? 16 : 0);
    }
  };

  // sm_90a retires each stage's wgmma group before the next stage (the promotion below), so the ring
  // may run kPreStages - 1 ahead on both archs.
  constexpr int kAhead = kPreStages - 1;
  ring_prologue<kAhead>(ktiles, load_stage);

  float* cs = reinterpret_cast<float*>(smem);
#if L4C_WGMMA
  const int wg = warp / 4, w = warp % 4;
  // Promotion (as DeepSeek-V3 / DeepGEMM do): Hopper's fp8 wgmma keeps only ~14 mantissa bits in
  // its accumulator, so each 128-byte k stage (4 QGMMA k32 steps) sums into `part` from zero
  // (scale_d = 0 on the first step) and is then added into the f32 registers `acc`. Over k = 8192
  // that turns up to ~1.5% of max|ref| (all of K in the wgmma accumulator) into f32 summation of 64
  // partials, each within ~2^-14 of its own magnitude.
  float acc[64], part[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.f;
  for (int64_t kt = 0; kt < ktiles; ++kt) {
    ring_advance<kAhead, kPreStages, true>(kt, ktiles, load_stage);
    const uint32_t xs = sbase + (kt % kPreStages) * kPreStageBytes;
    const uint64_t da = wgmma_desc_sw128(xs + wg * (64 * 128)), db = wgmma_desc_sw128(xs + kPreTileBytes);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kPreBK / 32; ++kk) wgmma_m64n128k32_ss_e4m3(part, da + 2 * kk, db + 2 * kk, kk > 0);
    wgmma_commit();
    wgmma_wait<0>();  // `part` is read next, and the stage is refilled next iteration
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] += part[i];
  }
  cp_async_wait<0>();
  __syncthreads();
  // acc[4j + r]: token 64wg + 16w + g + 8(r>>1), column 8j + 2c + (r&1).
#pragma unroll
  for (int j = 0; j < 16; ++j)
    stage_frag<false>(cs, kPreCsPitch, 64 * wg + 16 * w, 8 * j, g, c, acc[4 * j], acc[4 * j + 1], acc[4 * j + 2], acc[4 * j + 3]);
#else
  // Warp (wm, wn) = (warp / 4, warp % 4): tokens 64wm..+64 (4 m16 tiles) x columns 32wn..+32 (4 n8 tiles).
  // Per 32-byte k unit u, lane (g, c) reads 8 bytes at k = 32u + 8c of its rows, which become the
  // fragment slots of k16 steps 2u and 2u + 1 (the same slot-to-k map for A and B, see decode).
  const int wm = warp / 4, wn = warp % 4;
  float acc[4][4][4];
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b) acc[a][b][0] = acc[a][b][1] = acc[a][b][2] = acc[a][b][3] = 0.f;
  for (int64_t kt = 0; kt < ktiles; ++kt) {
    ring_advance<kAhead, kPreStages, false>(kt, ktiles, load_stage);
    const uint32_t xs = sbase + (kt % kPreStages) * kPreStageBytes, ws = xs + kPreTileBytes;
#pragma unroll
    for (int u = 0; u < kPreBK / 32; ++u) {
      const uint32_t off = (8 * c) & 15;  // byte offset inside the 16-byte chunk
      const uint32_t ch = 2 * u + (c >> 1);
      uint32_t bw[4][2];
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const uint2 v = lds64(ws + sw128(32 * wn + 8 * nt + g, ch) + off);
        bw[nt][0] = v.x;
        bw[nt][1] = v.y;
      }
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
        const int row = 64 * wm + 16 * mt + g;
        const uint2 lo = lds64(xs + sw128(row, ch) + off), hi = lds64(xs + sw128(row + 8, ch) + off);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint32_t wl = h ? lo.y : lo.x, wh = h ? hi.y : hi.x;
          const uint32_t a[4] = {e4m3x2_to_bf16x2(wl, false), e4m3x2_to_bf16x2(wh, false),
                                 e4m3x2_to_bf16x2(wl, true), e4m3x2_to_bf16x2(wh, true)};
#pragma unroll
          for (int nt = 0; nt < 4; ++nt)
            mma_16816(acc[mt][nt], a, e4m3x2_to_bf16x2(bw[nt][h], false), e4m3x2_to_bf16x2(bw[nt][h], true),
                      __nv_bfloat16());
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();
  // acc[mt][nt][r]: token 64wm + 16mt + g + 8(r>>1), column 32wn + 8nt + 2c + (r&1).
#pragma unroll
  for (int mt = 0; mt < 4; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
      stage_frag<false>(cs, kPreCsPitch, 64 * wm + 16 * mt, 32 * wn + 8 * nt, g, c, acc[mt][nt][0], acc[mt][nt][1],
                        acc[mt][nt][2], acc[mt][nt][3]);
#endif
  __syncthreads();
  const Epilogue ep{static_cast<__nv_bfloat16*>(p.out), static_cast<const __nv_bfloat16*>(p.residual),
                    p.x_scales, p.w_scales, p.m, p.n, p.ldo, p.ldr};
  store_tile_from_smem<kPreThreads>(ep, cs, kPreCsPitch, kPreBM, kPreBN, m0, n0);
}

}  // namespace

extern "C" l4c_status l4c_fp8_quantize_per_token(const l4c_fp8_quantize_params* p, l4c_stream_t stream) {
  if (!p || p->m < 0 || p->k <= 0 || !p->x || !p->scales || p->ldx < p->k) return L4C_ERR_INVALID_ARGUMENT;
  if (!p->codes && !p->decoded) return L4C_ERR_INVALID_ARGUMENT;
  if (p->codes && p->ldc < (p->k + 15) / 16 * 16) return L4C_ERR_INVALID_ARGUMENT;
  if (p->m == 0) return L4C_OK;
  if (p->m > 0x7fffffff) return L4C_ERR_INVALID_ARGUMENT;
  gemm_fp8_quantize_per_token<<<static_cast<unsigned>(p->m), kQuantThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(*p);
  return L4C_LAUNCH_STATUS();
}

extern "C" l4c_status l4c_gemm_fp8(const l4c_gemm_fp8_params* p, l4c_stream_t stream) {
  if (!p || p->m < 0 || p->n <= 0 || p->k <= 0) return L4C_ERR_INVALID_ARGUMENT;
  if (p->m == 0) return L4C_OK;
  if (!p->x || !p->w || !p->w_scales || !p->out) return L4C_ERR_INVALID_ARGUMENT;
  // 16-byte pieces of W rows (and of X rows) are loaded whole.
  if (p->k % 16 != 0 || p->ldw < p->k || p->ldw % 16 != 0 || (reinterpret_cast<uintptr_t>(p->w) & 15) != 0)
    return L4C_ERR_INVALID_ARGUMENT;
  if (p->ldx < p->k || p->ldo < p->n || (p->residual && p->ldr < p->n)) return L4C_ERR_INVALID_ARGUMENT;
  if ((reinterpret_cast<uintptr_t>(p->x) & 15) != 0) return L4C_ERR_INVALID_ARGUMENT;
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const int64_t ntiles = (p->n + 15) / 16;
  if (p->path == L4C_GEMM_PATH_DECODE) {
    const int64_t kslabs = (p->k + l4c::kGgSlabK - 1) / l4c::kGgSlabK;
    if (p->ldx % 8 != 0) return L4C_ERR_INVALID_ARGUMENT;
    if (!l4c::decode_plan_ok(p->token_tiles, p->split_k, kslabs, p->workspace)) return L4C_ERR_INVALID_ARGUMENT;
    // The per-channel scales go to the Epilogue (DecodeW<kFp8> leaves the accumulator unscaled).
    l4c::GroupedGemm a = l4c::dense_gemm(p->x, p->ldx, l4c::WeightRef{p->w, nullptr, nullptr}, p->residual, p->ldr,
                                         p->out, p->ldo, p->workspace, p->m, p->n, p->k, p->ldw, kslabs, p->split_k);
    a.row_scale = p->x_scales;
    a.col_scale = p->w_scales;
    const int64_t tokens = 8 * p->token_tiles;
    const dim3 grid(static_cast<unsigned>((ntiles + l4c::kGgDecWarps - 1) / l4c::kGgDecWarps),
                    static_cast<unsigned>(p->split_k), static_cast<unsigned>((p->m + tokens - 1) / tokens));
    switch (p->token_tiles) {
      case 1: gemm_fp8_decode<1><<<grid, l4c::kGgDecWarps * 32, 0, s>>>(a); break;
      case 2: gemm_fp8_decode<2><<<grid, l4c::kGgDecWarps * 32, 0, s>>>(a); break;
      default: gemm_fp8_decode<4><<<grid, l4c::kGgDecWarps * 32, 0, s>>>(a); break;
    }
    const l4c_status st = L4C_LAUNCH_STATUS();
    if (st != L4C_OK || p->split_k == 1) return st;
    return l4c::launch_splitk_reduce(p->workspace, p->split_k, a.epilogue(), s);
  }
  if (p->path != L4C_GEMM_PATH_PREFILL) return L4C_ERR_INVALID_ARGUMENT;
  if (!p->x_scales || p->ldx % 16 != 0) return L4C_ERR_INVALID_ARGUMENT;
  const cudaError_t e = cudaFuncSetAttribute(gemm_fp8_prefill, cudaFuncAttributeMaxDynamicSharedMemorySize, kPreSmem);
  if (e != cudaSuccess) return l4c::status_from_cuda(e);
  const dim3 grid(static_cast<unsigned>((p->n + kPreBN - 1) / kPreBN), static_cast<unsigned>((p->m + kPreBM - 1) / kPreBM));
  gemm_fp8_prefill<<<grid, kPreThreads, kPreSmem, s>>>(*p);
  return L4C_LAUNCH_STATUS();
}
