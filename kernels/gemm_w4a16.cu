// W4A16 GEMM: Y[m, n] = X[m, k] . W^T with int4 group-wise weights (symmetric or with zero points),
// bf16 / f16 activations, f32 accumulation, bf16 output (+ optional residual). Design in docs/GEMM.md.
//
// Both paths compute the transposed product Y^T = W . X^T ("swap AB"): the weight is the MMA's A
// operand (16 rows of W per fragment) and the tokens are its N dimension (8 per mma.sync fragment).
// The repacked weight (crate::quant::repack) stores each thread's A fragment nibbles contiguously,
// 16 bytes per lane per 16x64 slab, so one coalesced 16-byte load feeds four k16 MMAs, and the
// same fragment order feeds mma.sync (sm_80) and register-A wgmma (sm_90a). The main loops are the
// dense (one-group) instantiations of common/gemm_grouped.cuh, shared with the MoE grouped GEMM:
//   decode:  grouped_decode<kInt4, MT, T, dense>, a tensor-core GEMV streaming W from global memory;
//   prefill: grouped_prefill<kInt4, T, dense>, 128 x 128 tiles through a 4-stage cp.async ring,
//            mma.sync (sm_80) or register-A wgmma.m64n128k16 (sm_90a).
#include "llama4_cuda.h"

#include <algorithm>

#include "common/gemm_epilogue.cuh"
#include "common/gemm_grouped.cuh"
#include "common/status.cuh"

namespace {
using namespace l4c;

template <typename T, int MT>
__global__ void __launch_bounds__(kGgDecWarps * 32, MT == 4 ? 3 : 4)
    gemm_w4a16_decode(const __grid_constant__ GroupedGemm a) {
  grouped_decode<WFmt::kInt4, MT, T, true>(a);
}

template <typename T>
__global__ void __launch_bounds__(kGgPreThreads, 1) gemm_w4a16_prefill(const __grid_constant__ GroupedGemm a) {
  grouped_prefill<WFmt::kInt4, T, true>(a);
}

// ------------------------------------------------------------------------------------------------
// Split-K reduction: out = epilogue(sum over splits, in split order: deterministic). Grouped rows
// that hold no token (at or past *end, or padding in sorted_slots) are skipped.
__global__ void gemm_splitk_reduce(const float* __restrict__ ws, int split, const Epilogue ep,
                                   const uint32_t* sorted_slots, const uint32_t* end_at,
                                   const uint32_t* begin_at) {
  const int64_t total = ep.m * ep.n;
  const int64_t end = end_at ? static_cast<int64_t>(*end_at) : ep.m;
  const int64_t begin = begin_at ? static_cast<int64_t>(*begin_at) : 0;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / ep.n;
    if (i >= end || i < begin || (sorted_slots && sorted_slots[i] == 0xffffffffu)) continue;
    float v = 0.f;
    for (int s = 0; s < split; ++s) v += ws[s * total + idx];
    ep.store(v, i, idx % ep.n);
  }
}

template <typename T>
l4c_status launch_w4a16(const l4c_gemm_w4a16_params& p, cudaStream_t stream) {
  GroupedGemm a = dense_gemm(p.x, p.ldx, WeightRef{p.qweight, p.scales, p.zero_bias}, p.residual, p.ldr, p.out,
                             p.ldo, p.workspace, p.m, p.n, p.k, p.k, p.k_slabs,
                             p.path == L4C_GEMM_PATH_DECODE ? p.split_k : 1);
  a.groups = p.groups;
  a.group_size = p.group_size;
  const int64_t ntiles = (p.n + 15) / 16;
  if (p.path == L4C_GEMM_PATH_DECODE) {
    const int64_t tokens = 8 * p.token_tiles;
    const dim3 grid(static_cast<unsigned>((ntiles + kGgDecWarps - 1) / kGgDecWarps), static_cast<unsigned>(p.split_k),
                    static_cast<unsigned>((p.m + tokens - 1) / tokens));
    switch (p.token_tiles) {
      case 1: gemm_w4a16_decode<T, 1><<<grid, kGgDecWarps * 32, 0, stream>>>(a); break;
      case 2: gemm_w4a16_decode<T, 2><<<grid, kGgDecWarps * 32, 0, stream>>>(a); break;
      default: gemm_w4a16_decode<T, 4><<<grid, kGgDecWarps * 32, 0, stream>>>(a); break;
    }
    const l4c_status st = L4C_LAUNCH_STATUS();
    if (st != L4C_OK || p.split_k == 1) return st;
    return l4c::launch_splitk_reduce(p.workspace, p.split_k, a.epilogue(), stream);
  }
  constexpr int kSmem = gg_pre_smem<WFmt::kInt4>();
  const cudaError_t e = cudaFuncSetAttribute(gemm_w4a16_prefill<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (e != cudaSuccess) return l4c::status_from_cuda(e);
  const dim3 grid(static_cast<unsigned>((p.n + kGgPreBN - 1) / kGgPreBN), static_cast<unsigned>((p.m + kGgPreBM - 1) / kGgPreBM));
  gemm_w4a16_prefill<T><<<grid, kGgPreThreads, kSmem, stream>>>(a);
  return L4C_LAUNCH_STATUS();
}

}  // namespace

namespace l4c {
l4c_status launch_splitk_reduce(const float* ws, int split, const Epilogue& ep, cudaStream_t stream,
                                const uint32_t* sorted_slots, const uint32_t* end, const uint32_t* begin) {
  const int64_t total = ep.m * ep.n;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 4096);
  gemm_splitk_reduce<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(ws, split, ep, sorted_slots, end, begin);
  return L4C_LAUNCH_STATUS();
}
}  // namespace l4c

extern "C" l4c_status l4c_gemm_w4a16(const l4c_gemm_w4a16_params* p, l4c_stream_t stream) {
  if (!p) return L4C_ERR_INVALID_ARGUMENT;
  if (p->m < 0 || p->n <= 0 || p->k <= 0) return L4C_ERR_INVALID_ARGUMENT;
  if (p->m == 0) return L4C_OK;
  if (!p->x || !p->qweight || !p->scales || !p->out) return L4C_ERR_INVALID_ARGUMENT;
  if (p->group_size != 32 && p->group_size != 64 && p->group_size != 128) return L4C_ERR_INVALID_ARGUMENT;
  if (p->k_slabs != (p->k + kGgSlabK - 1) / kGgSlabK) return L4C_ERR_INVALID_ARGUMENT;
  if (p->groups < (p->k_slabs * kGgSlabK + p->group_size - 1) / p->group_size) return L4C_ERR_INVALID_ARGUMENT;
  if (p->ldx < p->k || p->ldo < p->n || (p->residual && p->ldr < p->n)) return L4C_ERR_INVALID_ARGUMENT;
  if (p->act_dtype != L4C_DTYPE_BF16 && p->act_dtype != L4C_DTYPE_F16) return L4C_ERR_UNSUPPORTED_DTYPE;
  if (p->path == L4C_GEMM_PATH_DECODE) {
    if (!decode_plan_ok(p->token_tiles, p->split_k, p->k_slabs, p->workspace)) return L4C_ERR_INVALID_ARGUMENT;
  } else if (p->path == L4C_GEMM_PATH_PREFILL) {
    // cp.async moves 16-byte pieces of X rows.
    if (p->k % 8 != 0 || p->ldx % 8 != 0 || (reinterpret_cast<uintptr_t>(p->x) & 15) != 0) return L4C_ERR_INVALID_ARGUMENT;
  } else {
    return L4C_ERR_INVALID_ARGUMENT;
  }
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  return p->act_dtype == L4C_DTYPE_BF16 ? launch_w4a16<__nv_bfloat16>(*p, s) : launch_w4a16<__half>(*p, s);
}
