// W4A16 GEMM: Y[m, n] = X[m, k] . W^T with int4 group-wise weights (symmetric or with zero points),
// bf16 / f16 activations, f32 accumulation, bf16 output (+ optional residual). Design in docs/GEMM.md.
//
// Both paths compute the transposed product Y^T = W . X^T ("swap AB"): the weight is the MMA's A
// operand (16 rows of W per fragment) and the tokens are its N dimension (8 per mma.sync fragment).
// The repacked weight (crate::quant::repack) stores each thread's A fragment nibbles contiguously,
// 16 bytes per lane per 16x64 slab, so one coalesced 16-byte load feeds four k16 MMAs, and the
// same fragment order feeds mma.sync (sm_80) and register-A wgmma (sm_90a).
#include "llama4_cuda.h"

#include <algorithm>

#include "common/dequant.cuh"
#include "common/gemm_epilogue.cuh"
#include "common/mma.cuh"
#include "common/status.cuh"
#include "common/wgmma.cuh"

namespace {
using namespace l4c;

constexpr int kSlabK = 64;  // k per repacked slab; a slab of one 16-row tile is 512 bytes

// (s[g], s[g+8]) of one 16-row tile and scale group, as one 32-bit load.
__device__ __forceinline__ uint32_t ld_row_pair(const void* base, int64_t tile, int64_t groups,
                                                int64_t grp, int g) {
  return __ldg(reinterpret_cast<const uint32_t*>(base) + (tile * groups + grp) * 8 + g);
}

// Scale and zero-bias pairs of one 16-row tile for one 64-wide slab: half h covers k16 tiles 2h and
// 2h + 1 (a group of 32 changes between the halves; larger groups give the same pair twice).
template <typename T> struct SlabScales {
  uint32_t s[2], z[2];
  __device__ __forceinline__ void load(const l4c_gemm_w4a16_params& p, int64_t tile, int64_t slab,
                                       int gshift, int g) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t grp = (slab * kSlabK + h * 32) >> gshift;
      s[h] = ld_row_pair(p.scales, tile, p.groups, grp, g);
      // Symmetric: zero point 8, so the bias is magic + 8 in both halves.
      z[h] = p.zero_bias ? ld_row_pair(p.zero_bias, tile, p.groups, grp, g)
                         : Half2<T>::kMagic2 + 0x00080008u;
    }
  }
  // A fragment of k16 tile j (0..3) of the slab from its packed word.
  __device__ __forceinline__ void dequant(uint32_t word, int j, uint32_t (&a)[4]) const {
    const int h = j >> 1;
    dequant_int4_frag<T>(word, bcast_lo(z[h]), bcast_hi(z[h]), bcast_lo(s[h]), bcast_hi(s[h]), a);
  }
};

__device__ __forceinline__ uint32_t word_of(const uint4& v, int j) {
  return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w;
}

__device__ __forceinline__ Epilogue make_epilogue(const l4c_gemm_w4a16_params& p) {
  return Epilogue{static_cast<__nv_bfloat16*>(p.out), static_cast<const __nv_bfloat16*>(p.residual),
                  nullptr, nullptr, p.m, p.n, p.ldo, p.ldr};
}

// ------------------------------------------------------------------------------------------------
// Decode: a tensor-core GEMV. Each warp owns one 16-row tile of W and streams its slabs straight
// from global memory into registers (16-byte loads, kDecPrefetch slabs in flight), dequantizes them
// into A fragments and multiplies by the block's 8 * MT tokens, staged in shared memory 512 k at a
// time. Blocks split K (grid.y) when N alone cannot fill the GPU; grid.z walks token groups.

constexpr int kDecWarps = 4;
constexpr int kDecChunkSlabs = 8;
constexpr int kDecChunk = kDecChunkSlabs * kSlabK;  // 512 k per staged chunk of X
constexpr int kDecPitch = kDecChunk + 8;            // +16 bytes: ldmatrix rows land on distinct banks
constexpr int kDecPrefetch = 4;                     // divides kDecChunkSlabs

template <typename T, int MT>
__global__ void __launch_bounds__(kDecWarps * 32, MT == 4 ? 3 : 4)
    gemm_w4a16_decode(const __grid_constant__ l4c_gemm_w4a16_params p) {
  __shared__ __align__(16) T xs[MT * 8][kDecPitch];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int64_t ntiles = (p.n + 15) / 16;
  const int64_t tile = static_cast<int64_t>(blockIdx.x) * kDecWarps + warp;
  const bool active = tile < ntiles;
  const int64_t m0 = static_cast<int64_t>(blockIdx.z) * (MT * 8);
  const int64_t per_split = (p.k_slabs + p.split_k - 1) / p.split_k;
  const int64_t s_begin = blockIdx.y * per_split;
  const int64_t s_end = min(p.k_slabs, s_begin + per_split);
  const int gshift = __ffs(p.group_size) - 1;
  const T* x = static_cast<const T*>(p.x);
  const uint4* wq = reinterpret_cast<const uint4*>(p.qweight) + (active ? tile : 0) * p.k_slabs * 32 + lane;
  const bool xvec = (p.k % 8 == 0) && (p.ldx % 8 == 0) && ((reinterpret_cast<uintptr_t>(x) & 15) == 0);

  float acc[MT][4];
#pragma unroll
  for (int t = 0; t < MT; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.f;

  uint4 wbuf[kDecPrefetch];
  SlabScales<T> sbuf[kDecPrefetch];
#pragma unroll
  for (int i = 0; i < kDecPrefetch; ++i) {
    if (active && s_begin + i < s_end) {
      wbuf[i] = ldg_stream128(wq + (s_begin + i) * 32);
      sbuf[i].load(p, tile, s_begin + i, gshift, g);
    }
  }

  for (int64_t cs = s_begin; cs < s_end; cs += kDecChunkSlabs) {
    __syncthreads();  // the previous chunk's readers are done
    const int64_t kc = cs * kSlabK;
    if (xvec) {
      for (int u = threadIdx.x; u < MT * 8 * (kDecChunk / 8); u += kDecWarps * 32) {
        const int r = u / (kDecChunk / 8), col = (u % (kDecChunk / 8)) * 8;
        const int64_t gm = m0 + r, gk = kc + col;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (gm < p.m && gk < p.k) v = __ldg(reinterpret_cast<const uint4*>(x + gm * p.ldx + gk));
        *reinterpret_cast<uint4*>(&xs[r][col]) = v;
      }
    } else {
      for (int u = threadIdx.x; u < MT * 8 * kDecChunk; u += kDecWarps * 32) {
        const int r = u / kDecChunk, col = u % kDecChunk;
        const int64_t gm = m0 + r, gk = kc + col;
        xs[r][col] = (gm < p.m && gk < p.k) ? x[gm * p.ldx + gk] : T(0.f);
      }
    }
    __syncthreads();

#pragma unroll
    for (int i = 0; i < kDecChunkSlabs; ++i) {
      const int64_t s = cs + i;
      if (s >= s_end) break;
      const uint4 w = wbuf[i % kDecPrefetch];
      const SlabScales<T> sc = sbuf[i % kDecPrefetch];
      if (active && s + kDecPrefetch < s_end) {
        wbuf[i % kDecPrefetch] = ldg_stream128(wq + (s + kDecPrefetch) * 32);
        sbuf[i % kDecPrefetch].load(p, tile, s + kDecPrefetch, gshift, g);
      }
      if (!active) continue;
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {  // k16 tiles 2jj, 2jj + 1
        uint32_t a0[4], a1[4];
        sc.dequant(word_of(w, 2 * jj), 2 * jj, a0);
        sc.dequant(word_of(w, 2 * jj + 1), 2 * jj + 1, a1);
#pragma unroll
        for (int t = 0; t < MT; ++t) {
          uint32_t b[4];
          ldmatrix_x4(b, smem_u32(&xs[t * 8 + (lane & 7)][i * kSlabK + jj * 32 + (lane >> 3) * 8]));
          mma_16816(acc[t], a0, b[0], b[1], T());
          mma_16816(acc[t], a1, b[2], b[3], T());
        }
      }
    }
  }
  if (!active) return;

  // acc[t][r]: W row (output column) tile*16 + g + 8(r>>1), token m0 + 8t + 2c + (r&1).
  const Epilogue ep = make_epilogue(p);
#pragma unroll
  for (int t = 0; t < MT; ++t) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int64_t n = tile * 16 + g + 8 * (r >> 1), m = m0 + t * 8 + 2 * c + (r & 1);
      if (p.split_k == 1) {
        ep.store(acc[t][r], m, n);
      } else if (m < p.m && n < p.n) {
        p.workspace[(static_cast<int64_t>(blockIdx.y) * p.m + m) * p.n + n] = acc[t][r];
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Prefill: 128 (W rows) x 128 (tokens) tiles, 64 k per stage, a 4-stage cp.async ring holding the
// raw int4 slabs (4 KiB) and the X tile (16 KiB, 128-byte rows with the SW128 swizzle). 8 warps.
//   sm_80 body: warp (wn, wm) = (warp % 4, warp / 4) owns W rows 32wn..+32 and tokens 64wm..+64:
//     per k16 step 2 A fragments (dequantized from shared memory) x 8 token tiles (ldmatrix) = 16 HMMA.
//   sm_90a body: warpgroup wg owns W rows 64wg..+64 and all 128 tokens: per k16 step one
//     wgmma.m64n128k16 with A = the warp's dequantized fragment in registers, B = the X tile by
//     descriptor. The dequant of slab s + 1 overlaps the wgmmas of slab s (wait_group 1).

constexpr int kPreBN = 128, kPreBM = 128, kPreStages = 4, kPreThreads = 256;
constexpr int kPreXBytes = kPreBM * 128;          // 64 k of 16-bit per token row
constexpr int kPreWBytes = (kPreBN / 16) * 512;   // 8 tiles x 512 bytes
constexpr int kPreStageBytes = kPreXBytes + kPreWBytes;
constexpr int kPreCsPitch = kPreBN + 4;           // f32 epilogue staging, conflict-free writes
constexpr int kPreSmem = kPreStages * kPreStageBytes + 1024;  // + slack to align the ring to 1024
static_assert(kPreBM * kPreCsPitch * 4 <= kPreStages * kPreStageBytes, "epilogue staging fits the ring");

template <typename T>
__global__ void __launch_bounds__(kPreThreads, 1)
    gemm_w4a16_prefill(const __grid_constant__ l4c_gemm_w4a16_params p) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const uint32_t sbase = smem_u32(smem);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, c = lane % 4;
  const int64_t ntiles = (p.n + 15) / 16;
  const int64_t tile0 = static_cast<int64_t>(blockIdx.x) * (kPreBN / 16);
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kPreBM;
  const int gshift = __ffs(p.group_size) - 1;
  const T* x = static_cast<const T*>(p.x);
  const int64_t nslabs = p.k_slabs;

  auto load_stage = [&](int st, int64_t s) {
    const uint32_t xs = sbase + st * kPreStageBytes, ws = xs + kPreXBytes;
#pragma unroll
    for (int q = 0; q < kPreXBytes / 16 / kPreThreads; ++q) {
      const int u = tid + q * kPreThreads, r = u / 8, ch = u % 8;
      const int64_t gm = m0 + r, gk = s * kSlabK + ch * 8;
      const bool ok = gm < p.m && gk < p.k;
      cp_async16(xs + sw128(r, ch), ok ? static_cast<const void*>(x + gm * p.ldx + gk) : p.x, ok ? 16 : 0);
    }
    const int64_t t = tile0 + tid / 32;
    const bool ok = t < ntiles;
    cp_async16(ws + tid * 16, p.qweight + ((ok ? t : 0) * nslabs + s) * 128 + (tid % 32) * 4, ok ? 16 : 0);
  };

  // Every MMA reading a stage has retired before the barrier that precedes its rewrite (mma.sync is
  // synchronous; the wgmma body waits for all groups each slab), so 3 stages load ahead.
  constexpr int kAhead = kPreStages - 1;
#pragma unroll
  for (int st = 0; st < kAhead; ++st) {
    if (st < nslabs) load_stage(st, st);
    cp_async_commit();
  }

#if L4C_WGMMA
  const int wg = warp / 4;
  const int64_t my_tile = tile0 + warp;  // warp w of warpgroup wg: W rows 64wg + 16(w%4) = 16*warp
  const int64_t sc_tile = min(my_tile, ntiles - 1);
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.f;
  SlabScales<T> sc_next;
  sc_next.load(p, sc_tile, 0, gshift, g);
  for (int64_t s = 0; s < nslabs; ++s) {
    cp_async_wait<kAhead - 1>();
    fence_proxy_async();  // cp.async wrote through the generic proxy; wgmma reads through the async one
    __syncthreads();
    if (s + kAhead < nslabs) load_stage((s + kAhead) % kPreStages, s + kAhead);
    cp_async_commit();
    const SlabScales<T> sc = sc_next;
    if (s + 1 < nslabs) sc_next.load(p, sc_tile, s + 1, gshift, g);
    const uint32_t xs = sbase + (s % kPreStages) * kPreStageBytes;
    const uint4 w = lds128(xs + kPreXBytes + warp * 512 + lane * 16);
    uint32_t a[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j) sc.dequant(word_of(w, j), j, a[j]);
    wgmma_fence();
    const uint64_t desc = wgmma_desc_sw128(xs);
#pragma unroll
    for (int j = 0; j < 4; ++j) wgmma_m64n128k16_rs(acc, a[j], desc + 2 * j, 1, T());  // +32 B per k16
    wgmma_commit();
    // wgmma reads its register A operands asynchronously and the next slab's dequant rewrites the
    // same (PTX) registers, so the slab's wgmmas retire here (wait_group 0). Overlap comes from the
    // other warpgroup; a producer/consumer split would recover the rest (docs/GEMM.md).
    wgmma_wait<0>();
  }
  cp_async_wait<0>();
  __syncthreads();
  // acc[4j + r]: W row 64wg + 16(warp%4) + g + 8(r>>1) = 16*warp + g + 8(r>>1), token 8j + 2c + (r&1).
  float* cs = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int j = 0; j < 16; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r)
      cs[(8 * j + 2 * c + (r & 1)) * kPreCsPitch + 16 * warp + g + 8 * (r >> 1)] = acc[4 * j + r];
  (void)wg;
#else
  const int wn = warp % 4, wm = warp / 4;
  const int64_t sc_tile0 = min(tile0 + 2 * wn, ntiles - 1), sc_tile1 = min(tile0 + 2 * wn + 1, ntiles - 1);
  float acc[2][8][4];
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < 8; ++b) acc[a][b][0] = acc[a][b][1] = acc[a][b][2] = acc[a][b][3] = 0.f;
  SlabScales<T> nx0, nx1;
  nx0.load(p, sc_tile0, 0, gshift, g);
  nx1.load(p, sc_tile1, 0, gshift, g);
  for (int64_t s = 0; s < nslabs; ++s) {
    cp_async_wait<kAhead - 1>();
    __syncthreads();
    if (s + kAhead < nslabs) load_stage((s + kAhead) % kPreStages, s + kAhead);
    cp_async_commit();
    const SlabScales<T> sc0 = nx0, sc1 = nx1;
    if (s + 1 < nslabs) {
      nx0.load(p, sc_tile0, s + 1, gshift, g);
      nx1.load(p, sc_tile1, s + 1, gshift, g);
    }
    const uint32_t xs = sbase + (s % kPreStages) * kPreStageBytes;
    const uint4 w0 = lds128(xs + kPreXBytes + (2 * wn) * 512 + lane * 16);
    const uint4 w1 = lds128(xs + kPreXBytes + (2 * wn + 1) * 512 + lane * 16);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      uint32_t a0[4], a1[4];
      sc0.dequant(word_of(w0, j), j, a0);
      sc1.dequant(word_of(w1, j), j, a1);
#pragma unroll
      for (int tp = 0; tp < 4; ++tp) {
        // matrices: (tokens +0..7, k 0..7), (+0..7, k 8..15), (+8..15, k 0..7), (+8..15, k 8..15)
        const int row = 64 * wm + 16 * tp + (lane & 7) + 8 * (lane >> 4);
        uint32_t b[4];
        ldmatrix_x4(b, xs + sw128(row, 2 * j + ((lane >> 3) & 1)));
        mma_16816(acc[0][2 * tp], a0, b[0], b[1], T());
        mma_16816(acc[1][2 * tp], a1, b[0], b[1], T());
        mma_16816(acc[0][2 * tp + 1], a0, b[2], b[3], T());
        mma_16816(acc[1][2 * tp + 1], a1, b[2], b[3], T());
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();
  // acc[wt][tt][r]: W row 32wn + 16wt + g + 8(r>>1), token 64wm + 8tt + 2c + (r&1).
  float* cs = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int wt = 0; wt < 2; ++wt)
#pragma unroll
    for (int tt = 0; tt < 8; ++tt)
#pragma unroll
      for (int r = 0; r < 4; ++r)
        cs[(64 * wm + 8 * tt + 2 * c + (r & 1)) * kPreCsPitch + 32 * wn + 16 * wt + g + 8 * (r >> 1)] =
            acc[wt][tt][r];
#endif
  __syncthreads();
  store_tile_from_smem<kPreThreads>(make_epilogue(p), reinterpret_cast<const float*>(smem), kPreCsPitch,
                                    kPreBM, kPreBN, m0, tile0 * 16);
}

// ------------------------------------------------------------------------------------------------
// Split-K reduction: out = epilogue(sum over splits, in split order: deterministic).
__global__ void gemm_splitk_reduce(const float* __restrict__ ws, int split, const Epilogue ep) {
  const int64_t total = ep.m * ep.n;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = 0.f;
    for (int s = 0; s < split; ++s) v += ws[s * total + idx];
    ep.store(v, idx / ep.n, idx % ep.n);
  }
}

template <typename T>
l4c_status launch_w4a16(const l4c_gemm_w4a16_params& p, cudaStream_t stream) {
  const int64_t ntiles = (p.n + 15) / 16;
  if (p.path == L4C_GEMM_PATH_DECODE) {
    const int64_t tokens = 8 * p.token_tiles;
    const dim3 grid(static_cast<unsigned>((ntiles + kDecWarps - 1) / kDecWarps), static_cast<unsigned>(p.split_k),
                    static_cast<unsigned>((p.m + tokens - 1) / tokens));
    switch (p.token_tiles) {
      case 1: gemm_w4a16_decode<T, 1><<<grid, kDecWarps * 32, 0, stream>>>(p); break;
      case 2: gemm_w4a16_decode<T, 2><<<grid, kDecWarps * 32, 0, stream>>>(p); break;
      default: gemm_w4a16_decode<T, 4><<<grid, kDecWarps * 32, 0, stream>>>(p); break;
    }
    if (p.split_k > 1) {
      const l4c_status st = L4C_LAUNCH_STATUS();
      if (st != L4C_OK) return st;
      const Epilogue ep{static_cast<__nv_bfloat16*>(p.out), static_cast<const __nv_bfloat16*>(p.residual),
                        nullptr, nullptr, p.m, p.n, p.ldo, p.ldr};
      return l4c::launch_splitk_reduce(p.workspace, p.split_k, ep, stream);
    }
    return L4C_LAUNCH_STATUS();
  }
  const cudaError_t e = cudaFuncSetAttribute(gemm_w4a16_prefill<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, kPreSmem);
  if (e != cudaSuccess) return l4c::status_from_cuda(e);
  const dim3 grid(static_cast<unsigned>((p.n + kPreBN - 1) / kPreBN), static_cast<unsigned>((p.m + kPreBM - 1) / kPreBM));
  gemm_w4a16_prefill<T><<<grid, kPreThreads, kPreSmem, stream>>>(p);
  return L4C_LAUNCH_STATUS();
}

}  // namespace

namespace l4c {
l4c_status launch_splitk_reduce(const float* ws, int split, const Epilogue& ep, cudaStream_t stream) {
  const int64_t total = ep.m * ep.n;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 4096);
  gemm_splitk_reduce<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(ws, split, ep);
  return L4C_LAUNCH_STATUS();
}
}  // namespace l4c

extern "C" l4c_status l4c_gemm_w4a16(const l4c_gemm_w4a16_params* p, l4c_stream_t stream) {
  if (!p) return L4C_ERR_INVALID_ARGUMENT;
  if (p->m < 0 || p->n <= 0 || p->k <= 0) return L4C_ERR_INVALID_ARGUMENT;
  if (p->m == 0) return L4C_OK;
  if (!p->x || !p->qweight || !p->scales || !p->out) return L4C_ERR_INVALID_ARGUMENT;
  if (p->group_size != 32 && p->group_size != 64 && p->group_size != 128) return L4C_ERR_INVALID_ARGUMENT;
  if (p->k_slabs != (p->k + kSlabK - 1) / kSlabK) return L4C_ERR_INVALID_ARGUMENT;
  if (p->groups < (p->k_slabs * kSlabK + p->group_size - 1) / p->group_size) return L4C_ERR_INVALID_ARGUMENT;
  if (p->ldx < p->k || p->ldo < p->n || (p->residual && p->ldr < p->n)) return L4C_ERR_INVALID_ARGUMENT;
  if (p->act_dtype != L4C_DTYPE_BF16 && p->act_dtype != L4C_DTYPE_F16) return L4C_ERR_UNSUPPORTED_DTYPE;
  if (p->path == L4C_GEMM_PATH_DECODE) {
    if (p->token_tiles != 1 && p->token_tiles != 2 && p->token_tiles != 4) return L4C_ERR_INVALID_ARGUMENT;
    if (p->split_k < 1 || p->split_k > p->k_slabs || p->split_k > 65535) return L4C_ERR_INVALID_ARGUMENT;
    if (p->split_k > 1 && !p->workspace) return L4C_ERR_INVALID_ARGUMENT;
  } else if (p->path == L4C_GEMM_PATH_PREFILL) {
    // cp.async moves 16-byte pieces of X rows.
    if (p->k % 8 != 0 || p->ldx % 8 != 0 || (reinterpret_cast<uintptr_t>(p->x) & 15) != 0) return L4C_ERR_INVALID_ARGUMENT;
  } else {
    return L4C_ERR_INVALID_ARGUMENT;
  }
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  return p->act_dtype == L4C_DTYPE_BF16 ? launch_w4a16<__nv_bfloat16>(*p, s) : launch_w4a16<__half>(*p, s);
}
