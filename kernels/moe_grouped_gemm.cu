// Grouped expert GEMM (bf16 / int4 / fp8 experts), the bf16 dense GEMM (its one-group case) and the
// MoE combine. The main loops live in common/gemm_grouped.cuh; this file instantiates them and holds
// the launchers. Design: docs/MOE.md.
#include "llama4_cuda.h"

#include <algorithm>

#include "common/gemm_grouped.cuh"
#include "common/status.cuh"

namespace {
using namespace l4c;

template <WFmt F, int MT>
__global__ void __launch_bounds__(kGgDecWarps * 32, MT == 4 ? 2 : 3)
    moe_grouped_gemm_decode(const __grid_constant__ GroupedGemm a) {
  grouped_decode<F, MT>(a);
}

template <WFmt F>
__global__ void __launch_bounds__(kGgPreThreads, 1) moe_grouped_gemm_prefill(const __grid_constant__ GroupedGemm a) {
  grouped_prefill<F>(a);
}

// One block per token: out[t] = shared[t] + sum_j y[inverse[t * topk + j]], f32, j ascending.
// Expert parallelism (offsets non-null): a position outside the local rows adds 0 and is never read.
constexpr int kCombineThreads = 256;
__global__ void __launch_bounds__(kCombineThreads) moe_combine_kernel(const __grid_constant__ l4c_moe_combine_params p) {
  const __nv_bfloat16* y = static_cast<const __nv_bfloat16*>(p.y_sorted);
  const __nv_bfloat16* sh = static_cast<const __nv_bfloat16*>(p.shared);
  __nv_bfloat16* out = static_cast<__nv_bfloat16*>(p.out);
  const int64_t lo = p.offsets ? static_cast<int64_t>(p.offsets[p.expert_begin]) : 0;
  const int64_t hi = p.offsets ? static_cast<int64_t>(p.offsets[p.expert_end]) : p.rows;
  for (int64_t t = blockIdx.x; t < p.tokens; t += gridDim.x) {
    for (int64_t col = threadIdx.x; col < p.n; col += kCombineThreads) {
      float v = sh ? __bfloat162float(sh[t * p.lds + col]) : 0.f;
      for (int64_t j = 0; j < p.topk; ++j) {
        const int64_t pos = p.inverse[t * p.topk + j];
        if (pos >= lo && pos < hi) v += __bfloat162float(y[pos * p.ldy + col]);
      }
      out[t * p.ldo + col] = __float2bfloat16_rn(v);
    }
  }
}

template <WFmt F>
l4c_status launch_decode(const GroupedGemm& a, int token_tiles, dim3 grid, cudaStream_t s) {
  switch (token_tiles) {
    case 1: moe_grouped_gemm_decode<F, 1><<<grid, kGgDecWarps * 32, 0, s>>>(a); break;
    case 2: moe_grouped_gemm_decode<F, 2><<<grid, kGgDecWarps * 32, 0, s>>>(a); break;
    default: moe_grouped_gemm_decode<F, 4><<<grid, kGgDecWarps * 32, 0, s>>>(a); break;
  }
  return L4C_LAUNCH_STATUS();
}

template <WFmt F>
l4c_status launch_prefill(const GroupedGemm& a, dim3 grid, cudaStream_t s) {
  const cudaError_t e =
      cudaFuncSetAttribute(moe_grouped_gemm_prefill<F>, cudaFuncAttributeMaxDynamicSharedMemorySize, gg_pre_smem<F>());
  if (e != cudaSuccess) return status_from_cuda(e);
  moe_grouped_gemm_prefill<F><<<grid, kGgPreThreads, gg_pre_smem<F>(), s>>>(a);
  return L4C_LAUNCH_STATUS();
}

// Launches the main kernel for (format, path) and the split-K reduction when split_k > 1.
// `groups_z`: local experts (grouped) or dense row tiles.
l4c_status run(const GroupedGemm& a, WFmt f, int path, int token_tiles, int64_t groups_z, cudaStream_t s) {
  const int64_t ntiles = (a.n + 15) / 16;
  l4c_status st;
  if (path == L4C_GEMM_PATH_DECODE) {
    const int64_t tiles_per_block = a.swiglu ? 2 : kGgDecWarps;
    const dim3 grid(static_cast<unsigned>((ntiles + tiles_per_block - 1) / tiles_per_block),
                    static_cast<unsigned>(a.split_k), static_cast<unsigned>(groups_z));
    switch (f) {
      case WFmt::kBf16: st = launch_decode<WFmt::kBf16>(a, token_tiles, grid, s); break;
      case WFmt::kInt4: st = launch_decode<WFmt::kInt4>(a, token_tiles, grid, s); break;
      default: st = launch_decode<WFmt::kFp8>(a, token_tiles, grid, s); break;
    }
    if (st != L4C_OK || a.split_k == 1) return st;
    // Grouped partials are already scaled (the Epilogue has no scales here).
    // Grouped: only the local rows [offsets[expert_begin], offsets[expert_end]) were written.
    return launch_splitk_reduce(a.workspace, a.split_k, a.epilogue(), s, a.sorted_slots,
                                a.offsets ? a.offsets + a.expert_end : nullptr,
                                a.offsets && a.expert_begin > 0 ? a.offsets + a.expert_begin : nullptr);
  }
  const int64_t cols_per_block = a.swiglu ? kGgPreBN / 2 : kGgPreBN;
  const dim3 grid(static_cast<unsigned>((a.n + cols_per_block - 1) / cols_per_block),
                  static_cast<unsigned>((a.rows + kGgPreBM - 1) / kGgPreBM));
  switch (f) {
    case WFmt::kBf16: return launch_prefill<WFmt::kBf16>(a, grid, s);
    case WFmt::kInt4: return launch_prefill<WFmt::kInt4>(a, grid, s);
    default: return launch_prefill<WFmt::kFp8>(a, grid, s);
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

extern "C" l4c_status l4c_gemm_bf16(const l4c_gemm_bf16_params* p, l4c_stream_t stream) {
  if (!p || p->m < 0 || p->n <= 0 || p->k <= 0) return L4C_ERR_INVALID_ARGUMENT;
  if (p->m == 0) return L4C_OK;
  if (!p->x || !p->w || !p->out) return L4C_ERR_INVALID_ARGUMENT;
  if (p->k % 16 != 0 || p->ldw < p->k || p->ldw % 8 != 0 || p->ldx < p->k || p->ldx % 8 != 0) return L4C_ERR_INVALID_ARGUMENT;
  if (!aligned16(p->x) || !aligned16(p->w)) return L4C_ERR_INVALID_ARGUMENT;
  if (p->ldo < p->n || (p->residual && p->ldr < p->n)) return L4C_ERR_INVALID_ARGUMENT;
  const int64_t k_slabs = (p->k + kGgSlabK - 1) / kGgSlabK;
  int64_t groups_z = 1;
  if (p->path == L4C_GEMM_PATH_DECODE) {
    if (!decode_plan_ok(p->token_tiles, p->split_k, k_slabs, p->workspace)) return L4C_ERR_INVALID_ARGUMENT;
    groups_z = (p->m + 8 * p->token_tiles - 1) / (8 * p->token_tiles);
    if (groups_z > 65535) return L4C_ERR_INVALID_ARGUMENT;
  } else if (p->path != L4C_GEMM_PATH_PREFILL) {
    return L4C_ERR_INVALID_ARGUMENT;
  }
  const GroupedGemm a = dense_gemm(p->x, p->ldx, WeightRef{p->w, nullptr, nullptr}, p->residual, p->ldr, p->out,
                                   p->ldo, p->workspace, p->m, p->n, p->k, p->ldw, k_slabs,
                                   p->path == L4C_GEMM_PATH_DECODE ? p->split_k : 1);
  return run(a, WFmt::kBf16, p->path, p->token_tiles, groups_z, reinterpret_cast<cudaStream_t>(stream));
}

extern "C" l4c_status l4c_moe_grouped_gemm(const l4c_moe_grouped_gemm_params* p, l4c_stream_t stream) {
  if (!p || p->rows < 0 || p->tokens < 0 || p->n <= 0 || p->k <= 0) return L4C_ERR_INVALID_ARGUMENT;
  if (p->experts < 1 || p->experts > 65535 || p->topk < 1 || p->topk > 8 || p->pad < 1) return L4C_ERR_INVALID_ARGUMENT;
  if (p->rows == 0 || p->tokens == 0) return L4C_OK;
  if (!p->x || !p->sorted_slots || !p->counts || !p->offsets || !p->out || !p->w.data) return L4C_ERR_INVALID_ARGUMENT;
  if (p->k % 16 != 0 || p->ldx < p->k || p->ldx % 8 != 0 || !aligned16(p->x) || p->ldo < p->n) return L4C_ERR_INVALID_ARGUMENT;
  if (p->gather != 0 && p->gather != 1) return L4C_ERR_INVALID_ARGUMENT;
  // The local experts (expert_end 0: all); the tables hold expert_end - expert_begin entries.
  const int64_t e_end = p->expert_end == 0 ? p->experts : p->expert_end;
  if (p->expert_begin < 0 || p->expert_begin >= e_end || e_end > p->experts) return L4C_ERR_INVALID_ARGUMENT;
  const bool swiglu = p->epilogue == L4C_MOE_EPILOGUE_SWIGLU;
  if (!swiglu && p->epilogue != L4C_MOE_EPILOGUE_STORE) return L4C_ERR_INVALID_ARGUMENT;
  if (swiglu && !p->w2.data) return L4C_ERR_INVALID_ARGUMENT;
  const int64_t k_slabs = (p->k + kGgSlabK - 1) / kGgSlabK;
  WFmt f;
  switch (p->weight_format) {
    case L4C_MOE_WEIGHT_BF16: f = WFmt::kBf16; break;
    case L4C_MOE_WEIGHT_INT4:
      f = WFmt::kInt4;
      if (!p->w.scales || (swiglu && !p->w2.scales)) return L4C_ERR_INVALID_ARGUMENT;
      if (p->group_size != 32 && p->group_size != 64 && p->group_size != 128) return L4C_ERR_INVALID_ARGUMENT;
      if (p->k_slabs != k_slabs || p->groups < (k_slabs * kGgSlabK + p->group_size - 1) / p->group_size)
        return L4C_ERR_INVALID_ARGUMENT;
      break;
    case L4C_MOE_WEIGHT_FP8:
      f = WFmt::kFp8;
      if (!p->w.scales || (swiglu && !p->w2.scales)) return L4C_ERR_INVALID_ARGUMENT;
      break;
    default: return L4C_ERR_UNSUPPORTED_DTYPE;
  }
  if (p->path == L4C_GEMM_PATH_DECODE) {
    if (!decode_plan_ok(p->token_tiles, p->split_k, k_slabs, p->workspace) || (p->split_k > 1 && swiglu))
      return L4C_ERR_INVALID_ARGUMENT;
  } else if (p->path == L4C_GEMM_PATH_PREFILL) {
    if (p->pad % kGgPreBM != 0) return L4C_ERR_INVALID_ARGUMENT;
    if ((p->rows + kGgPreBM - 1) / kGgPreBM > 65535) return L4C_ERR_INVALID_ARGUMENT;
  } else {
    return L4C_ERR_INVALID_ARGUMENT;
  }
  // The dense fields (single weight unused), then the grouping.
  GroupedGemm a = dense_gemm(p->x, p->ldx, WeightRef{}, nullptr, 0, p->out, p->ldo, p->workspace, p->rows, p->n, p->k,
                             p->k, k_slabs, p->path == L4C_GEMM_PATH_DECODE ? p->split_k : 1);
  a.sorted_slots = p->sorted_slots;
  a.scores = p->scores;
  a.topk = p->topk;
  a.gather = p->gather;
  a.counts = p->counts;
  a.offsets = p->offsets;
  a.experts = p->experts;
  a.expert_begin = p->expert_begin;
  a.expert_end = e_end;
  const l4c_moe_expert_weights* ws[2] = {&p->w, swiglu ? &p->w2 : &p->w};
  for (int i = 0; i < 2; ++i) {
    a.tables[i][0] = ws[i]->data;
    a.tables[i][1] = ws[i]->scales;
    a.tables[i][2] = ws[i]->zero_bias;
  }
  a.groups = p->groups;
  a.group_size = f == WFmt::kInt4 ? p->group_size : 128;
  a.swiglu = swiglu ? 1 : 0;
  return run(a, f, p->path, p->token_tiles, e_end - p->expert_begin, reinterpret_cast<cudaStream_t>(stream));
}

extern "C" l4c_status l4c_moe_combine(const l4c_moe_combine_params* p, l4c_stream_t stream) {
  if (!p || p->tokens < 0 || p->topk < 1 || p->n <= 0 || p->rows < 0) return L4C_ERR_INVALID_ARGUMENT;
  if (p->tokens == 0) return L4C_OK;
  if (!p->y_sorted || !p->inverse || !p->out || p->ldy < p->n || p->ldo < p->n) return L4C_ERR_INVALID_ARGUMENT;
  if (p->shared && p->lds < p->n) return L4C_ERR_INVALID_ARGUMENT;
  if (p->offsets && (p->expert_begin < 0 || p->expert_end < p->expert_begin)) return L4C_ERR_INVALID_ARGUMENT;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(p->tokens, 65535));
  moe_combine_kernel<<<blocks, kCombineThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(*p);
  return L4C_LAUNCH_STATUS();
}
