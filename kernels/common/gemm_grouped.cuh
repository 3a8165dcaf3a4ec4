// Grouped (MoE) and one-group (dense) GEMM main loops on the shared machinery of the int4 / fp8
// GEMMs (docs/GEMM.md, docs/MOE.md): the swap-AB formulation (W rows are the MMA's M side, tokens
// its N side), the tensor-core GEMV decode loop that streams W from global memory straight into A
// fragments, and the prefill cp.async ring with an mma.sync body (sm_80) and a wgmma body (sm_90a).
//
// The three axes the issue asks for are the template / argument parameters:
//  (a) where the rows of X come from: contiguous rows (dense), rows gathered through the routing
//      permutation (sorted position p reads token sorted_slots[p] / topk), or rows already in sorted
//      order; the router score of a row is a per-row scale of its output, which equals scaling the
//      input row (the GEMM is linear; under SwiGLU both gate and up are scaled before silu);
//  (b) which weight a row tile uses: the expert e whose group holds it (offsets from moe_gate), via
//      per-expert pointer tables, or the one weight of the dense case;
//  (c) the epilogue: bf16 store (+ residual), split-K partials, or SwiGLU of paired gate/up tiles.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

#include "dequant.cuh"
#include "gemm_epilogue.cuh"
#include "mma.cuh"
#include "wgmma.cuh"

namespace l4c {

enum class WFmt : int { kBf16 = 0, kInt4 = 1, kFp8 = 2 };

// One weight as the kernels read it: bf16 / e4m3 rows [n, ldw], or the repacked int4 layout with its
// scales and zero biases (null: symmetric). fp8 `scales` are f32 per output channel.
struct WeightRef {
  const void* data;
  const void* scales;
  const void* zero_bias;
};

// Arguments of every kernel built from these templates (the C ABI structs are converted into it).
struct GroupedGemm {
  const uint16_t* x;  // bf16, or f16 where the kernel's activation type T is __half
  int64_t ldx;
  // Grouped: sorted position -> slot (UINT32_MAX = padding); null in the dense (one-group) case.
  const uint32_t* sorted_slots;
  const float* scores;  // [slots] or null: row p is scaled by scores[sorted_slots[p]]
  int64_t topk;
  int32_t gather;       // 1: x is [tokens, k], row p reads token slot / topk; 0: x row p
  const uint32_t* counts;   // [experts], null in the dense case
  const uint32_t* offsets;  // [experts + 1], null in the dense case
  int64_t experts;
  // Grouped: the local experts [expert_begin, expert_end) that run (expert parallelism; all by
  // default); counts / offsets stay global, the tables hold the local experts only.
  int64_t expert_begin, expert_end;
  // Per-expert device pointer tables [which][data|scales|zero_bias] (grouped, entry e - expert_begin),
  // or the weights themselves (dense). which = 0: the weight (gate under SwiGLU), 1: up.
  const void* const* tables[2][3];
  WeightRef single[2];
  const __nv_bfloat16* residual;  // dense only, [rows, n] row stride ldr
  int64_t ldr;
  // Dense fp8 only: the Epilogue's per-row (token) and per-column (channel) scales, applied to the
  // unscaled accumulator (after the split-K sum) as acc * (row * col), as gemm_fp8 always has.
  const float* row_scale;
  const float* col_scale;
  __nv_bfloat16* out;
  int64_t ldo;
  float* workspace;  // split_k > 1: [split_k][rows][n] f32 partials (already scaled)
  int64_t rows;      // dense: m; grouped: sorted positions (capacity)
  int64_t n, k, ldw; // n: rows of each weight (= output columns, also under SwiGLU)
  int64_t k_slabs, groups;
  int32_t group_size, swiglu, split_k;

  __host__ __device__ __forceinline__ Epilogue epilogue() const {
    return Epilogue{out, residual, row_scale, col_scale, rows, n, ldo, ldr};
  }
  __device__ __forceinline__ WeightRef weight(int which, int64_t e) const {
    if (!offsets) return single[which];
    const int64_t i = e - expert_begin;
    WeightRef r;
    r.data = tables[which][0][i];
    r.scales = tables[which][1] ? tables[which][1][i] : nullptr;
    r.zero_bias = tables[which][2] ? tables[which][2][i] : nullptr;
    return r;
  }
  // Element offset of the X row feeding sorted position p (-1: padding), and its output scale.
  __device__ __forceinline__ int64_t source_row(int64_t p, float& scale) const {
    scale = 1.0f;
    if (!sorted_slots) return p * ldx;
    const uint32_t slot = sorted_slots[p];
    if (slot == 0xffffffffu) return -1;
    if (scores) scale = scores[slot];
    return (gather ? static_cast<int64_t>(slot / static_cast<uint64_t>(topk)) : p) * ldx;
  }
};

// Host check of a decode plan (every decode launcher): 8 * token_tiles rows per block, split_k
// k-slices of k_slabs slabs (grid.y), a workspace for the split-K partials.
inline bool decode_plan_ok(int64_t token_tiles, int64_t split_k, int64_t k_slabs, const void* workspace) {
  if (token_tiles != 1 && token_tiles != 2 && token_tiles != 4) return false;
  if (split_k < 1 || split_k > k_slabs || split_k > 65535) return false;
  return split_k == 1 || workspace != nullptr;
}

// The dense (one-group) case: Y[m, n] = X[m, k] . W^T (+ residual), W one weight of n rows.
inline GroupedGemm dense_gemm(const void* x, int64_t ldx, WeightRef w, const void* residual, int64_t ldr, void* out,
                              int64_t ldo, float* workspace, int64_t m, int64_t n, int64_t k, int64_t ldw,
                              int64_t k_slabs, int32_t split_k) {
  GroupedGemm a{};
  a.x = static_cast<const uint16_t*>(x);
  a.ldx = ldx;
  a.topk = 1;
  a.single[0] = w;
  a.single[1] = w;
  a.residual = static_cast<const __nv_bfloat16*>(residual);
  a.ldr = ldr;
  a.out = static_cast<__nv_bfloat16*>(out);
  a.ldo = ldo;
  a.workspace = workspace;
  a.rows = m;
  a.n = n;
  a.k = k;
  a.ldw = ldw;
  a.k_slabs = k_slabs;
  a.group_size = 128;
  a.split_k = split_k;
  return a;
}

__device__ __forceinline__ float silu_f32(float v) { return v / (1.0f + expf(-v)); }

constexpr int kGgSlabK = 64;

// ---- cp.async ring (prefill) ------------------------------------------------------------------------
// load(stage, slab) issues one slab's cp.async copies. The prologue queues slabs 0..kAhead-1, one
// commit group each (empty past the end); ring_advance makes slab s's stage visible (kFence: to the
// async proxy too, for wgmma operands read by descriptor) and queues slab s + kAhead.
template <int kAhead, typename Load>
__device__ __forceinline__ void ring_prologue(int64_t nslabs, Load&& load) {
#pragma unroll
  for (int st = 0; st < kAhead; ++st) {
    if (st < nslabs) load(st, st);
    cp_async_commit();
  }
}
template <int kAhead, int kStages, bool kFence, typename Load>
__device__ __forceinline__ void ring_advance(int64_t s, int64_t nslabs, Load&& load) {
  cp_async_wait<kAhead - 1>();
#if L4C_WGMMA
  if constexpr (kFence) fence_proxy_async();
#else
  static_assert(!kFence, "the async-proxy fence is for wgmma (sm_90a)");
#endif
  __syncthreads();
  if (s + kAhead < nslabs) load(static_cast<int>((s + kAhead) % kStages), s + kAhead);
  cp_async_commit();
}

// ---- int4 scales of one 16-row tile for one 64-k slab (the repacked layout, docs/GEMM.md) --------
// Pointers to (s[g], s[g+8]) pairs of one tile: group grp of that tile is at [grp * 8].
struct Int4TileScales {
  const uint32_t* s;
  const uint32_t* z;  // null: symmetric
  __device__ __forceinline__ void init(const WeightRef& w, int64_t groups, int64_t tile, int g) {
    s = static_cast<const uint32_t*>(w.scales) + tile * groups * 8 + g;
    z = w.zero_bias ? static_cast<const uint32_t*>(w.zero_bias) + tile * groups * 8 + g : nullptr;
  }
};
template <typename T> struct Int4SlabScales {
  uint32_t s[2], z[2];
  __device__ __forceinline__ void load(const Int4TileScales& t, int64_t slab, int gshift) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t grp = (slab * kGgSlabK + h * 32) >> gshift;
      s[h] = __ldg(t.s + grp * 8);
      // Symmetric: zero point 8, so the bias is magic + 8.
      z[h] = t.z ? __ldg(t.z + grp * 8) : Half2<T>::kMagic2 + 0x00080008u;
    }
  }
  __device__ __forceinline__ void dequant(uint32_t word, int j, uint32_t (&a)[4]) const {
    const int h = j >> 1;
    dequant_int4_frag<T>(word, bcast_lo(z[h]), bcast_hi(z[h]), bcast_lo(s[h]), bcast_hi(s[h]), a);
  }
};

// ---- fp8 W tile in shared memory (prefill) ----------------------------------------------------------
// 128 virtual rows x 64 e4m3 codes per stage in natural k order (what cp.async copies), row pitch 80
// bytes: 16-byte aligned for cp.async, and each fragment word load below (8 rows g x 2 words c >> 1)
// hits 16 distinct banks (row g starts at word 20g: banks 0, 20, 8, 28, 16, 4, 24, 12, + c >> 1); a
// 64-byte pitch would be 4-way conflicted. tests/moe_fp8_fragments.rs mirrors this map on the CPU.
constexpr int kGgFp8Pitch = 80;
// bf16 A fragment of k16 step j (mma.sync m16n8k16, and wgmma's register A: warp w holds rows 16w..)
// of the 16-row tile whose row 0 is at shared address `tile`: lane (g, c) needs codes k = 16j + 2c, +1
// (a[0]: row g, a[1]: row g + 8) and 16j + 2c + 8, +9 (a[2], a[3]). The words at 16j + 4(c >> 1) and
// 16j + 8 + 4(c >> 1) hold them at bytes 2(c & 1), +1; one prmt moves a pair to bytes 1 and 3 and the
// exact widening reads them there. The value is the bare code: the per-channel scale multiplies the
// f32 accumulator in the epilogue, as in the decode loop.
__device__ __forceinline__ void fp8_frag_smem(uint32_t tile, int j, int g, int c, uint32_t (&a)[4]) {
  const uint32_t off = 16 * j + 4 * (c >> 1);
  const uint32_t sel = 0x1000u + 0x2020u * static_cast<uint32_t>(c & 1);  // bytes 1, 3 <- lo[2(c&1)], +1
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const uint32_t row = tile + (g + 8 * h) * kGgFp8Pitch + off;
    const uint32_t lo = lds32(row), hi = lds32(row + 8);
    a[h] = e4m3_b13_to_bf16x2(prmt(lo, hi, sel));
    a[2 + h] = e4m3_b13_to_bf16x2(prmt(lo, hi, sel + 0x4040u));  // the same bytes of hi (k + 8)
  }
}

// ---- decode weight streams: one warp, one 16-row tile, 64 k per slab ----------------------------
// kPermutedK: the A fragment's k slots {2c, 2c+1 | 2c+8, 2c+9} of k16 step j hold actual k
// 16c + 4j + {0, 1 | 2, 3} (lane c reads 16 consecutive k of its rows; the B side reads X the same
// way, legal because the k reduction is order-free). Otherwise the standard order (ldmatrix B).
// T: the activation type (bf16, or f16 for int4 weights, whose dequant targets either).
template <WFmt F, typename T> struct DecodeW;

template <typename T> struct DecodeW<WFmt::kBf16, T> {
  static_assert(sizeof(T) == 2 && !std::is_same<T, __half>::value, "bf16 weights take bf16 activations");
  static constexpr int kPrefetch = 2;  // 2 slabs x 64 bytes per lane in flight
  static constexpr bool kPermutedK = true;
  struct Buf { uint4 lo[2], hi[2]; };
  const __nv_bfloat16 *lo_, *hi_;
  int64_t k_;
  int c_;
  __device__ __forceinline__ void init(const GroupedGemm& a, const WeightRef& w, int64_t tile, int lane) {
    const int g = lane / 4;
    c_ = lane % 4;
    k_ = a.k;
    const __nv_bfloat16* base = static_cast<const __nv_bfloat16*>(w.data);
    lo_ = base + min(tile * 16 + g, a.n - 1) * a.ldw + 16 * c_;  // rows past n read row n - 1
    hi_ = base + min(tile * 16 + g + 8, a.n - 1) * a.ldw + 16 * c_;
  }
  __device__ __forceinline__ void fetch(Buf& b, int64_t s, bool active) const {
    const int64_t kk = s * kGgSlabK;
    const bool ok = active && kk + 16 * c_ < k_;  // k % 16 == 0: 16 k are all in or all out
    const uint4 z = make_uint4(0, 0, 0, 0);
    b.lo[0] = ok ? ldg_stream128(lo_ + kk) : z;
    b.lo[1] = ok ? ldg_stream128(lo_ + kk + 8) : z;
    b.hi[0] = ok ? ldg_stream128(hi_ + kk) : z;
    b.hi[1] = ok ? ldg_stream128(hi_ + kk + 8) : z;
  }
  __device__ __forceinline__ void frag(const Buf& b, int j, uint32_t (&a)[4]) const {
    const uint4 &l = b.lo[j >> 1], &h = b.hi[j >> 1];
    a[0] = (j & 1) ? l.z : l.x;
    a[2] = (j & 1) ? l.w : l.y;
    a[1] = (j & 1) ? h.z : h.x;
    a[3] = (j & 1) ? h.w : h.y;
  }
  __device__ __forceinline__ float col_scale(int64_t) const { return 1.0f; }
};

template <typename T> struct DecodeW<WFmt::kFp8, T> {
  static_assert(!std::is_same<T, __half>::value, "fp8 weights decode to bf16");
  static constexpr int kPrefetch = 4;
  static constexpr bool kPermutedK = true;
  struct Buf { uint4 lo, hi; };
  const uint8_t *lo_, *hi_;
  const float* scales_;
  int64_t k_, n_;
  int c_;
  __device__ __forceinline__ void init(const GroupedGemm& a, const WeightRef& w, int64_t tile, int lane) {
    const int g = lane / 4;
    c_ = lane % 4;
    k_ = a.k;
    n_ = a.n;
    const uint8_t* base = static_cast<const uint8_t*>(w.data);
    lo_ = base + min(tile * 16 + g, a.n - 1) * a.ldw + 16 * c_;
    hi_ = base + min(tile * 16 + g + 8, a.n - 1) * a.ldw + 16 * c_;
    scales_ = static_cast<const float*>(w.scales);
  }
  __device__ __forceinline__ void fetch(Buf& b, int64_t s, bool active) const {
    const int64_t kk = s * kGgSlabK;
    const bool ok = active && kk + 16 * c_ < k_;
    b.lo = ok ? ldg_stream128(lo_ + kk) : make_uint4(0, 0, 0, 0);
    b.hi = ok ? ldg_stream128(hi_ + kk) : make_uint4(0, 0, 0, 0);
  }
  __device__ __forceinline__ void frag(const Buf& b, int j, uint32_t (&a)[4]) const {
    a[0] = e4m3x2_to_bf16x2(u4_word(b.lo, j), false);
    a[1] = e4m3x2_to_bf16x2(u4_word(b.hi, j), false);
    a[2] = e4m3x2_to_bf16x2(u4_word(b.lo, j), true);
    a[3] = e4m3x2_to_bf16x2(u4_word(b.hi, j), true);
  }
  // Grouped only: the dense kernels (kDense) leave the scales to the Epilogue (GroupedGemm::col_scale).
  __device__ __forceinline__ float col_scale(int64_t col) const { return __ldg(scales_ + min(col, n_ - 1)); }
};

template <typename T> struct DecodeW<WFmt::kInt4, T> {
  static constexpr int kPrefetch = 4;
  static constexpr bool kPermutedK = false;
  struct Buf { uint4 w; Int4SlabScales<T> sc; };
  const uint4* wq_;
  Int4TileScales ts_;
  int gshift_;
  __device__ __forceinline__ void init(const GroupedGemm& a, const WeightRef& w, int64_t tile, int lane) {
    const int64_t t = min(tile, (a.n + 15) / 16 - 1);
    ts_.init(w, a.groups, t, lane / 4);
    gshift_ = __ffs(a.group_size) - 1;
    wq_ = static_cast<const uint4*>(w.data) + t * a.k_slabs * 32 + lane;
  }
  __device__ __forceinline__ void fetch(Buf& b, int64_t s, bool active) const {
    if (!active) return;
    b.w = ldg_stream128(wq_ + s * 32);
    b.sc.load(ts_, s, gshift_);
  }
  __device__ __forceinline__ void frag(const Buf& b, int j, uint32_t (&a)[4]) const {
    b.sc.dequant(u4_word(b.w, j), j, a);
  }
  __device__ __forceinline__ float col_scale(int64_t) const { return 1.0f; }
};

// ---- decode ------------------------------------------------------------------------------------------
// Block = 4 warps over 4 (SwiGLU: 2 gate + 2 up) 16-row tiles of W, and 8 * MT rows of X staged in
// shared memory 512 k at a time. grid = (column blocks, split_k, local experts | dense row tiles). A grouped
// block reads its expert's count on the device: count 0 exits at once; more rows than 8 * MT loop
// (the weight is re-streamed per row tile, which the plan keeps rare).
// kDense (gemm_w4a16 / gemm_fp8 decode): one weight, contiguous rows, no SwiGLU, known at compile
// time; X may be f16 (T) and unaligned / k % 8 != 0 (staged element-wise); the epilogue is the
// GroupedGemm's Epilogue (fp8 row / column scales) and split-K partials are unscaled.
constexpr int kGgDecWarps = 4;
constexpr int kGgDecChunkSlabs = 8;
constexpr int kGgDecChunk = kGgDecChunkSlabs * kGgSlabK;
constexpr int kGgDecPitch = kGgDecChunk + 8;

template <WFmt F, int MT, typename T = __nv_bfloat16, bool kDense = false>
__device__ __forceinline__ void grouped_decode(const GroupedGemm& a) {
  using W = DecodeW<F, T>;
  constexpr int kRows = MT * 8;
  __shared__ __align__(16) T xs[kRows][kGgDecPitch];
  __shared__ int64_t src[kRows];
  __shared__ float rscale[kRows];
  __shared__ float swap[2][MT][4][32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;

  const T* x = reinterpret_cast<const T*>(a.x);
  int64_t e = 0, row0, nrows;
  if (!kDense && a.offsets) {
    e = a.expert_begin + blockIdx.z;  // grid.z covers the local experts only
    row0 = a.offsets[e];
    nrows = a.counts[e];
  } else {
    row0 = static_cast<int64_t>(blockIdx.z) * kRows;
    nrows = min(static_cast<int64_t>(kRows), a.rows - row0);
  }
  if (nrows <= 0) return;  // uniform over the block

  const int64_t ntiles = (a.n + 15) / 16;
  const bool swiglu = !kDense && a.swiglu;
  const int which = swiglu ? warp >> 1 : 0;
  const int64_t tile = swiglu ? static_cast<int64_t>(blockIdx.x) * 2 + (warp & 1)
                              : static_cast<int64_t>(blockIdx.x) * kGgDecWarps + warp;
  const bool active = tile < ntiles;
  const int64_t per_split = (a.k_slabs + a.split_k - 1) / a.split_k;
  const int64_t s_begin = blockIdx.y * per_split;
  const int64_t s_end = min(a.k_slabs, s_begin + per_split);
  W wsrc;
  wsrc.init(a, a.weight(which, e), tile, lane);
  // Output columns of the accumulator rows g and g + 8, and their per-channel scales (fp8).
  // Dense: 1 (the Epilogue scales), and one row tile per block (nrows <= kRows), known at compile time.
  const int64_t col_lo = tile * 16 + g, col_hi = col_lo + 8;
  const float cs_lo = kDense ? 1.f : active ? wsrc.col_scale(col_lo) : 0.f;
  const float cs_hi = kDense ? 1.f : active ? wsrc.col_scale(col_hi) : 0.f;
  const int64_t row_end = kDense ? 1 : nrows;

  for (int64_t r0 = 0; r0 < row_end; r0 += kRows) {
    __syncthreads();  // the previous row tile's readers of src / xs / swap are done
    if (threadIdx.x < kRows) {
      const int64_t r = r0 + threadIdx.x;
      float sc = 1.0f;
      src[threadIdx.x] = r >= nrows ? -1 : kDense ? (row0 + r) * a.ldx : a.source_row(row0 + r, sc);
      rscale[threadIdx.x] = sc;
    }
    __syncthreads();  // src / rscale visible (an empty split runs no chunk barrier)
    float acc[MT][4];
#pragma unroll
    for (int t = 0; t < MT; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.f;
    // 16-byte staging of X needs k, ldx and x 16-byte aligned (always so for the grouped GEMM).
    const bool xvec = !kDense || ((a.k % 8 == 0) && (a.ldx % 8 == 0) && ((reinterpret_cast<uintptr_t>(x) & 15) == 0));
    typename W::Buf wb[W::kPrefetch];
#pragma unroll
    for (int i = 0; i < W::kPrefetch; ++i)
      if (s_begin + i < s_end) wsrc.fetch(wb[i], s_begin + i, active);

    for (int64_t cs = s_begin; cs < s_end; cs += kGgDecChunkSlabs) {
      __syncthreads();  // the previous chunk's readers are done
      const int64_t kc = cs * kGgSlabK;
      if (xvec) {
        for (int u = threadIdx.x; u < kRows * (kGgDecChunk / 8); u += kGgDecWarps * 32) {
          const int r = u / (kGgDecChunk / 8), col = (u % (kGgDecChunk / 8)) * 8;
          const int64_t sr = src[r], gk = kc + col;
          uint4 v = make_uint4(0, 0, 0, 0);
          if (sr >= 0 && gk < a.k) v = __ldg(reinterpret_cast<const uint4*>(x + sr + gk));
          *reinterpret_cast<uint4*>(&xs[r][col]) = v;
        }
      } else {
        for (int u = threadIdx.x; u < kRows * kGgDecChunk; u += kGgDecWarps * 32) {
          const int r = u / kGgDecChunk, col = u % kGgDecChunk;
          const int64_t sr = src[r], gk = kc + col;
          xs[r][col] = (sr >= 0 && gk < a.k) ? x[sr + gk] : T(0.f);
        }
      }
      __syncthreads();
#pragma unroll
      for (int i = 0; i < kGgDecChunkSlabs; ++i) {
        const int64_t s = cs + i;
        if (s >= s_end) break;
        const typename W::Buf cur = wb[i % W::kPrefetch];
        if (s + W::kPrefetch < s_end) wsrc.fetch(wb[i % W::kPrefetch], s + W::kPrefetch, active);
        if (!active) continue;
        if constexpr (W::kPermutedK) {
          uint4 bx[MT][2];
#pragma unroll
          for (int t = 0; t < MT; ++t) {
            const uint32_t addr = smem_u32(&xs[t * 8 + g][i * kGgSlabK + 16 * c]);
            bx[t][0] = lds128(addr);
            bx[t][1] = lds128(addr + 16);
          }
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            uint32_t af[4];
            wsrc.frag(cur, j, af);
#pragma unroll
            for (int t = 0; t < MT; ++t) {
              const uint4& v = bx[t][j >> 1];
              mma_16816(acc[t], af, (j & 1) ? v.z : v.x, (j & 1) ? v.w : v.y, T());
            }
          }
        } else {
#pragma unroll
          for (int jj = 0; jj < 2; ++jj) {
            uint32_t a0[4], a1[4];
            wsrc.frag(cur, 2 * jj, a0);
            wsrc.frag(cur, 2 * jj + 1, a1);
#pragma unroll
            for (int t = 0; t < MT; ++t) {
              uint32_t b[4];
              ldmatrix_x4(b, smem_u32(&xs[t * 8 + (lane & 7)][i * kGgSlabK + jj * 32 + (lane >> 3) * 8]));
              mma_16816(acc[t], a0, b[0], b[1], T());
              mma_16816(acc[t], a1, b[2], b[3], T());
            }
          }
        }
      }
    }

    // acc[t][r]: W row (output column) col_lo / col_hi for r < 2 / r >= 2, local row 8t + 2c + (r&1).
    // Dense: v is the raw accumulator; the Epilogue scales the stored value / the split-K sum.
    const Epilogue ep = a.epilogue();
#pragma unroll
    for (int t = 0; t < MT; ++t) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int lr = t * 8 + 2 * c + (r & 1);
        const int64_t col = (r >> 1) ? col_hi : col_lo;
        const float v = kDense ? acc[t][r] : acc[t][r] * ((r >> 1) ? cs_hi : cs_lo) * rscale[lr];
        const bool row_ok = src[lr] >= 0;
        const int64_t pos = row0 + r0 + lr;
        if (swiglu) {
          if (warp >= 2) swap[warp - 2][t][r][lane] = v;
          acc[t][r] = v;
        } else if (active && row_ok && col < a.n) {
          if (a.split_k > 1) {
            a.workspace[(static_cast<int64_t>(blockIdx.y) * a.rows + pos) * a.n + col] = v;
          } else {
            a.out[pos * a.ldo + col] = __float2bfloat16_rn(ep.apply(v, pos, col));
          }
        }
      }
    }
    if (swiglu) {  // warps 0, 1 hold gate tiles, warps 2, 3 the matching up tiles
      __syncthreads();
      if (warp < 2 && active) {
#pragma unroll
        for (int t = 0; t < MT; ++t) {
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            const int lr = t * 8 + 2 * c + (r & 1);
            const int64_t col = (r >> 1) ? col_hi : col_lo;
            if (src[lr] >= 0 && col < a.n) {
              const float h = silu_f32(acc[t][r]) * swap[warp][t][r][lane];
              a.out[(row0 + r0 + lr) * a.ldo + col] = __float2bfloat16_rn(h);
            }
          }
        }
      }
    }
  }
}

// ---- prefill -----------------------------------------------------------------------------------------
// Block = 128 virtual W rows (SwiGLU: 64 gate + the matching 64 up) x 128 sorted positions x 64 k per
// stage, 256 threads, 4-stage cp.async ring; X tile 128 rows x 128 bytes with the SW128 swizzle.
// Grouped: a row tile lies inside one expert's group (groups padded to 128 by moe_gate), found by a
// binary search over the local experts' offsets; tiles outside [offsets[expert_begin],
// offsets[expert_end]) exit (the grid covers every row tile: the local rows are known on the device).
//  bf16 W: a second SW128 tile (128 rows x 64 k). sm_80: ldmatrix A and B, mma.sync. sm_90a: each
//    warpgroup 4 x wgmma.m64n128k16 with both operands by descriptor (one group kept in flight).
//  int4 W: 8 raw repacked slabs (4 KiB); dequantized into register A fragments (mma.sync / wgmma RS).
//  fp8 W (W8A16): 128 rows x 64 codes, pitch 80 (fp8_frag_smem); widened exactly into register A
//    fragments as int4 (mma.sync / wgmma RS); the per-channel scales (wscale) multiply the f32
//    accumulator in the epilogue with the router score, each weight's own under SwiGLU.
// kDense (gemm_w4a16 prefill): one weight, contiguous rows, X bf16 or f16 (T), and the Epilogue's
// tile store.
constexpr int kGgPreBM = 128, kGgPreBN = 128, kGgPreStages = 4, kGgPreThreads = 256;
constexpr int kGgPreXBytes = kGgPreBM * 128;
template <WFmt F> constexpr int gg_pre_wbytes() {
  return F == WFmt::kBf16 ? kGgPreBN * 128 : F == WFmt::kFp8 ? kGgPreBN * kGgFp8Pitch : (kGgPreBN / 16) * 512;
}
template <WFmt F> constexpr int gg_pre_stage_bytes() { return kGgPreXBytes + gg_pre_wbytes<F>(); }
template <WFmt F> constexpr int gg_pre_smem() { return kGgPreStages * gg_pre_stage_bytes<F>() + 1024; }
constexpr int kGgPreCsPitch = kGgPreBN + 4;
static_assert(kGgPreBM * kGgPreCsPitch * 4 <= kGgPreStages * (kGgPreXBytes + 4096), "epilogue staging fits the ring");

template <WFmt F, typename T = __nv_bfloat16, bool kDense = false>
__device__ __forceinline__ void grouped_prefill(const GroupedGemm& a) {
  static_assert(!kDense || F != WFmt::kFp8, "dense fp8 prefill is W8A8 (gemm_fp8.cu)");
  static_assert(F == WFmt::kInt4 || std::is_same<T, __nv_bfloat16>::value, "bf16 weights take bf16 activations");
  static_assert(F == WFmt::kInt4 || !std::is_same<T, __half>::value, "fp8 weights widen to bf16");
  constexpr int kStageBytes = gg_pre_stage_bytes<F>();
  static_assert(kStageBytes % 1024 == 0, "each stage's X tile stays 1024-byte aligned (SW128)");
  extern __shared__ uint8_t smem_raw[];
  __shared__ int64_t src[kGgPreBM];
  __shared__ float rscale[kGgPreBM];
  __shared__ float wscale[F == WFmt::kFp8 ? kGgPreBN : 1];  // fp8: scale of each virtual W row
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const uint32_t sbase = smem_u32(smem);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, c = lane % 4;
  const int64_t p0 = static_cast<int64_t>(blockIdx.y) * kGgPreBM;

  int64_t e = 0, pend = a.rows;
  if (!kDense && a.offsets) {
    // Uniform over the block. Default range: offsets[0] == 0 <= p0, so only the end test can fire.
    if (p0 >= a.offsets[a.expert_end] || p0 < a.offsets[a.expert_begin]) return;
    int lo = static_cast<int>(a.expert_begin), hi = static_cast<int>(a.expert_end) - 1;
    while (lo < hi) {  // the largest e with offsets[e] <= p0: the non-empty group holding p0
      const int mid = (lo + hi + 1) / 2;
      if (a.offsets[mid] <= p0) lo = mid; else hi = mid - 1;
    }
    e = lo;
    pend = a.offsets[e] + a.counts[e];
  }
  const int64_t ntiles = (a.n + 15) / 16;
  const WeightRef w0 = a.weight(0, e);
  const bool swiglu = !kDense && a.swiglu;
  const WeightRef w1 = swiglu ? a.weight(1, e) : w0;
  // Virtual W row vr of the block: weight (vr >= 64 under SwiGLU) and its actual row.
  const int64_t vrow0 = swiglu ? static_cast<int64_t>(blockIdx.x) * (kGgPreBN / 2)
                               : static_cast<int64_t>(blockIdx.x) * kGgPreBN;
  auto actual_row = [&](int vr) -> int64_t { return swiglu ? vrow0 + (vr & 63) : vrow0 + vr; };
  auto weight_of = [&](int vr) {
    const bool up = swiglu && vr >= 64;
    return WeightRef{up ? w1.data : w0.data, up ? w1.scales : w0.scales, up ? w1.zero_bias : w0.zero_bias};
  };
  const int64_t nslabs = a.k_slabs;
  if (tid < kGgPreBM) {
    float sc = 1.0f;
    src[tid] = p0 + tid >= pend ? -1 : kDense ? (p0 + tid) * a.ldx : a.source_row(p0 + tid, sc);
    rscale[tid] = sc;
  }
  if constexpr (F == WFmt::kFp8) {
    static_assert(kGgPreThreads - kGgPreBM >= kGgPreBN, "threads 128.. stage the scales");
    const int vr = tid - kGgPreBM;
    if (vr >= 0 && vr < kGgPreBN)  // rows past n read row n - 1 (their columns are never stored)
      wscale[vr] = __ldg(static_cast<const float*>(weight_of(vr).scales) + min(actual_row(vr), a.n - 1));
  }
  __syncthreads();

  auto load_stage = [&](int st, int64_t s) {
    const uint32_t xs = sbase + st * kStageBytes, ws = xs + kGgPreXBytes;
#pragma unroll
    for (int q = 0; q < kGgPreXBytes / 16 / kGgPreThreads; ++q) {
      const int u = tid + q * kGgPreThreads, r = u / 8, ch = u % 8;
      const int64_t sr = src[r], gk = s * kGgSlabK + ch * 8;
      const bool ok = sr >= 0 && gk < a.k;
      cp_async16(xs + sw128(r, ch), ok ? static_cast<const void*>(a.x + sr + gk) : a.x, ok ? 16 : 0);
    }
    if constexpr (F == WFmt::kBf16) {
#pragma unroll
      for (int q = 0; q < kGgPreBN * 8 / kGgPreThreads; ++q) {
        const int u = tid + q * kGgPreThreads, vr = u / 8, ch = u % 8;
        const int64_t row = actual_row(vr), gk = s * kGgSlabK + ch * 8;
        const bool ok = row < a.n && gk < a.k;
        const __nv_bfloat16* wp = static_cast<const __nv_bfloat16*>(weight_of(vr).data);
        cp_async16(ws + sw128(vr, ch), ok ? static_cast<const void*>(wp + row * a.ldw + gk) : a.x, ok ? 16 : 0);
      }
    } else if constexpr (F == WFmt::kFp8) {
      // 16 codes per copy (k % 16 == 0: all in or all out); rows past n zero-filled.
#pragma unroll
      for (int q = 0; q < kGgPreBN * 4 / kGgPreThreads; ++q) {
        const int u = tid + q * kGgPreThreads, vr = u / 4, ch = u % 4;
        const int64_t row = actual_row(vr), gk = s * kGgSlabK + ch * 16;
        const bool ok = row < a.n && gk < a.k;
        const uint8_t* wp = static_cast<const uint8_t*>(weight_of(vr).data);
        cp_async16(ws + vr * kGgFp8Pitch + ch * 16, ok ? static_cast<const void*>(wp + row * a.ldw + gk) : a.x,
                   ok ? 16 : 0);
      }
    } else {
      const int vt = tid / 32;  // virtual tile: 16 virtual rows
      const int64_t t = actual_row(vt * 16) / 16;
      const bool ok = t < ntiles;
      const uint32_t* qw = static_cast<const uint32_t*>(weight_of(vt * 16).data);
      cp_async16(ws + tid * 16, ok ? static_cast<const void*>(qw + (t * nslabs + s) * 128 + (tid % 32) * 4) : a.x,
                 ok ? 16 : 0);
    }
  };

  float* cs = reinterpret_cast<float*>(smem);
#if L4C_WGMMA
  // bf16: SS wgmma, one group in flight (the stage it reads is not the one being refilled).
  // int4: RS wgmma from freshly dequantized registers, retired each slab (docs/GEMM.md).
  constexpr int kAhead = F == WFmt::kBf16 ? kGgPreStages - 2 : kGgPreStages - 1;
#else
  constexpr int kAhead = kGgPreStages - 1;
#endif
  ring_prologue<kAhead>(nslabs, load_stage);

#if L4C_WGMMA
  const int wg = warp / 4;
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.f;
  [[maybe_unused]] Int4SlabScales<T> sc_next;
  [[maybe_unused]] Int4TileScales my_ts;
  [[maybe_unused]] const int gshift = __ffs(a.group_size) - 1;
  if constexpr (F == WFmt::kInt4) {
    my_ts.init(weight_of(16 * warp), a.groups, min(actual_row(16 * warp) / 16, ntiles - 1), g);
    sc_next.load(my_ts, 0, gshift);
  }
  for (int64_t s = 0; s < nslabs; ++s) {
    ring_advance<kAhead, kGgPreStages, true>(s, nslabs, load_stage);
    const uint32_t xs = sbase + (s % kGgPreStages) * kStageBytes;
    const uint64_t db = wgmma_desc_sw128(xs);
    if constexpr (F == WFmt::kBf16) {
      const uint64_t da = wgmma_desc_sw128(xs + kGgPreXBytes + wg * (64 * 128));
      wgmma_fence();
#pragma unroll
      for (int j = 0; j < 4; ++j) wgmma_m64n128k16_ss_bf16(acc, da + 2 * j, db + 2 * j, 1);
      wgmma_commit();
      wgmma_wait<1>();
    } else {
      uint32_t af[4][4];
      if constexpr (F == WFmt::kInt4) {
        const Int4SlabScales<T> sc = sc_next;
        if (s + 1 < nslabs) sc_next.load(my_ts, s + 1, gshift);
        const uint4 w = lds128(xs + kGgPreXBytes + warp * 512 + lane * 16);
#pragma unroll
        for (int j = 0; j < 4; ++j) sc.dequant(u4_word(w, j), j, af[j]);
      } else {  // warp w of the block holds virtual rows 16w..16w+15 (warpgroup w / 4, its warp w % 4)
#pragma unroll
        for (int j = 0; j < 4; ++j) fp8_frag_smem(xs + kGgPreXBytes + 16 * warp * kGgFp8Pitch, j, g, c, af[j]);
      }
      wgmma_fence();
#pragma unroll
      for (int j = 0; j < 4; ++j) wgmma_m64n128k16_rs(acc, af[j], db + 2 * j, 1, T());
      wgmma_commit();
      wgmma_wait<0>();  // register-A operands are rewritten next slab
    }
  }
  wgmma_wait<0>();
  cp_async_wait<0>();
  __syncthreads();
  // acc[4j + r]: virtual W row 16*warp + g + 8(r>>1), row 8j + 2c + (r&1).
#pragma unroll
  for (int j = 0; j < 16; ++j)
    stage_frag<true>(cs, kGgPreCsPitch, 16 * warp, 8 * j, g, c, acc[4 * j], acc[4 * j + 1], acc[4 * j + 2], acc[4 * j + 3]);
#else
  const int wn = warp % 4, wm = warp / 4;
  float acc[2][8][4];
#pragma unroll
  for (int x = 0; x < 2; ++x)
#pragma unroll
    for (int y = 0; y < 8; ++y) acc[x][y][0] = acc[x][y][1] = acc[x][y][2] = acc[x][y][3] = 0.f;
  [[maybe_unused]] const int gshift = __ffs(a.group_size) - 1;
  [[maybe_unused]] Int4TileScales ts0, ts1;
  [[maybe_unused]] Int4SlabScales<T> nx0, nx1;
  if constexpr (F == WFmt::kInt4) {
    ts0.init(weight_of(32 * wn), a.groups, min(actual_row(32 * wn) / 16, ntiles - 1), g);
    ts1.init(weight_of(32 * wn + 16), a.groups, min(actual_row(32 * wn + 16) / 16, ntiles - 1), g);
    nx0.load(ts0, 0, gshift);
    nx1.load(ts1, 0, gshift);
  }
  for (int64_t s = 0; s < nslabs; ++s) {
    ring_advance<kAhead, kGgPreStages, false>(s, nslabs, load_stage);
    const uint32_t xs = sbase + (s % kGgPreStages) * kStageBytes, ws = xs + kGgPreXBytes;
    [[maybe_unused]] Int4SlabScales<T> sc0, sc1;
    [[maybe_unused]] uint4 w0q, w1q;
    if constexpr (F == WFmt::kInt4) {
      sc0 = nx0;
      sc1 = nx1;
      if (s + 1 < nslabs) {
        nx0.load(ts0, s + 1, gshift);
        nx1.load(ts1, s + 1, gshift);
      }
      w0q = lds128(ws + (2 * wn) * 512 + lane * 16);
      w1q = lds128(ws + (2 * wn + 1) * 512 + lane * 16);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      uint32_t a0[4], a1[4];
      if constexpr (F == WFmt::kBf16) {
        // matrices: (W rows +0..7, k 16j..+7), (+8..15, 16j..), (+0..7, 16j+8..), (+8..15, 16j+8..)
        const int row = 32 * wn + (lane & 7) + 8 * ((lane >> 3) & 1), ch = 2 * j + (lane >> 4);
        ldmatrix_x4(a0, ws + sw128(row, ch));
        ldmatrix_x4(a1, ws + sw128(row + 16, ch));
      } else if constexpr (F == WFmt::kFp8) {
        fp8_frag_smem(ws + (32 * wn) * kGgFp8Pitch, j, g, c, a0);
        fp8_frag_smem(ws + (32 * wn + 16) * kGgFp8Pitch, j, g, c, a1);
      } else {
        sc0.dequant(u4_word(w0q, j), j, a0);
        sc1.dequant(u4_word(w1q, j), j, a1);
      }
#pragma unroll
      for (int tp = 0; tp < 4; ++tp) {
        // matrices: (rows +0..7, k 0..7), (+0..7, k 8..15), (+8..15, k 0..7), (+8..15, k 8..15)
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
  // acc[wt][tt][r]: virtual W row 32wn + 16wt + g + 8(r>>1), row 64wm + 8tt + 2c + (r&1).
#pragma unroll
  for (int wt = 0; wt < 2; ++wt)
#pragma unroll
    for (int tt = 0; tt < 8; ++tt)
      stage_frag<true>(cs, kGgPreCsPitch, 32 * wn + 16 * wt, 64 * wm + 8 * tt, g, c, acc[wt][tt][0], acc[wt][tt][1],
                       acc[wt][tt][2], acc[wt][tt][3]);
#endif
  __syncthreads();

  if constexpr (kDense) {
    store_tile_from_smem<kGgPreThreads>(a.epilogue(), cs, kGgPreCsPitch, kGgPreBM, kGgPreBN, p0, vrow0);
    return;
  }
  // Epilogue from the f32 tile cs[row][virtual W row]: 8 output columns per step. Each value is
  // acc * channel scale (fp8) * router score, as in the decode loop; SwiGLU then silu(gate) * up.
  auto wsc = [&](int vr) -> float {
    if constexpr (F == WFmt::kFp8) return wscale[vr];
    else return 1.0f;
  };
  const int out_cols = a.swiglu ? kGgPreBN / 2 : kGgPreBN;
  const int vecs = out_cols / 8;
  const bool vec_ok = (a.ldo % 8 == 0) && ((reinterpret_cast<uintptr_t>(a.out) & 15) == 0) &&
                      (!a.residual || ((a.ldr % 8 == 0) && (reinterpret_cast<uintptr_t>(a.residual) & 15) == 0));
  for (int v = tid; v < kGgPreBM * vecs; v += kGgPreThreads) {
    const int r = v / vecs, c0 = (v % vecs) * 8;
    if (src[r] < 0) continue;
    const int64_t pos = p0 + r, col0 = vrow0 + c0;
    const float rs = rscale[r];
    const float* row = cs + r * kGgPreCsPitch;
    float f[8];
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      f[q] = row[c0 + q] * wsc(c0 + q) * rs;
      if (a.swiglu) f[q] = silu_f32(f[q]) * (row[64 + c0 + q] * wsc(64 + c0 + q) * rs);
    }
    if (vec_ok && col0 + 8 <= a.n) {
      store8_bf16(a.out + pos * a.ldo + col0, a.residual ? a.residual + pos * a.ldr + col0 : nullptr, f);
    } else {
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        if (col0 + q < a.n) {
          float o = f[q];
          if (a.residual) o += __bfloat162float(a.residual[pos * a.ldr + col0 + q]);
          a.out[pos * a.ldo + col0 + q] = __float2bfloat16_rn(o);
        }
      }
    }
  }
}

}  // namespace l4c
