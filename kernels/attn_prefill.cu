// Flash-attention prefill over the paged KV cache (l4c_attn_prefill, docs/ATTENTION.md).
//
// One CTA = 128 query rows x one KV head, 8 warps of 16 rows. Rows are (token, head-in-group) pairs,
// token-major (row r -> token r / G, head kvh * G + r % G, G = heads / kv_heads), so the G query heads
// of a KV head share every K/V tile in shared memory (GQA packing). Per KV tile of 64 keys:
// S = Q K^T and O += P V with mma.sync m16n8k16 bf16 (f32 accumulate) from ldmatrix'd 128B-swizzled
// tiles; online softmax in f32 (exp2 domain, the softmax scale and the NoPE temperature factor folded
// into one per-row multiplier of the scores, which equals scaling q in f32 without rounding q again).
// Q lives in registers after the prologue. K/V tiles are double-buffered: bf16 with cp.async; fp8
// e4m3 through registers (loads issued before the tile's math, dequantized with the chunk's per-head
// power-of-two scale into bf16 after it). Tiles only cover keys some row of the CTA can see, so a
// chunked-local layer costs O(T x chunk); tiles fully visible to every row skip the mask.
// Positions, page indices and byte offsets are int64.
#include <cuda_runtime.h>
#include <cmath>

#include "common/attn.cuh"
#include "common/dequant.cuh"
#include "common/mma.cuh"
#include "common/status.cuh"
#include "llama4_cuda.h"

namespace l4c {
namespace {

constexpr int kD = 128;                        // head_dim
constexpr int kBM = 128;                       // query rows per CTA
constexpr int kBN = L4C_ATTN_PREFILL_KV_TILE;  // keys per KV tile
constexpr int kWarps = kBM / 16;
constexpr int kThreads = kWarps * 32;
constexpr int kQBytes = kBM * kD * 2;  // Q tile; reused to stage the output
constexpr int kKVBytes = kBN * kD * 2;  // one bf16 K (or V) tile
constexpr int kSmemBytes = kQBytes + 4 * kKVBytes;  // Q + double-buffered K and V: 96 KB
static_assert(kBN == 64, "the tile loops below assume 64-key tiles");

// Tiles of `rows` x 128 bf16 are stored as two halves of 64 columns (128-byte rows, 128B XOR
// swizzle), so ldmatrix and the 16-byte copies are bank-conflict free. Byte offset of 16-byte chunk
// c (0..15) of row r:
__device__ __forceinline__ uint32_t tile_off(uint32_t rows, uint32_t r, uint32_t c) {
  return (c >> 3) * rows * 128u + sw128(r, c & 7u);
}

// fp8 staging: this thread's 2 x 16 codes of the next K and V tiles, and the tiles' scales.
struct Fp8Stage {
  uint4 k[2], v[2];
  float k_scale, v_scale;
};

template <bool kFp8>
__global__ void __launch_bounds__(kThreads, 1)
    attn_prefill_kernel(const l4c_attn_prefill_params p, int64_t group) {
  extern __shared__ __align__(1024) uint8_t smem[];
  const uint32_t s_q = smem_u32(smem);
  const uint32_t s_k = s_q + kQBytes;        // [2][kKVBytes]
  const uint32_t s_v = s_k + 2 * kKVBytes;   // [2][kKVBytes]
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;

  const int64_t kvh = blockIdx.y;
  const int64_t rows = p.tokens * group;
  const int64_t m_blocks = (rows + kBM - 1) / kBM;
  const int64_t r0 = (m_blocks - 1 - static_cast<int64_t>(blockIdx.x)) * kBM;  // longest rows first
  const int64_t t_lo = r0 / group;
  // Row r of the CTA is token t_lo + (rem0 + r) / G, head-in-group (rem0 + r) % G: 32-bit math.
  const uint32_t g32 = static_cast<uint32_t>(group);
  const uint32_t rem0 = static_cast<uint32_t>(r0 - t_lo * group);
  const int64_t t_hi = (min(r0 + kBM, rows) - 1) / group;
  const int64_t pos_lo = p.q_start + t_lo, pos_hi = p.q_start + t_hi;
  const int64_t ct = p.kv.chunk_tokens;
  const int64_t seq_len = p.kv.seq_lens[p.b];
  // Keys [key_begin, key_end): everything a row of this CTA may see, never past the cache.
  const int64_t key_end = min(pos_hi + 1, seq_len);
  const int64_t key_begin = first_visible(pos_lo, p.attn_chunk) / kBN * kBN;
  const int64_t n_tiles = key_end > key_begin ? (key_end - key_begin + kBN - 1) / kBN : 0;

  // ---- Q: 128 rows x 16 chunks, 8 per thread; rows past the last token are zero ----
  const uint8_t* q = static_cast<const uint8_t*>(p.q);
#pragma unroll
  for (int j = 0; j < kBM * 16 / kThreads; ++j) {
    const int id = tid + j * kThreads, r = id >> 4, c = id & 15;
    const uint32_t x = rem0 + r, dt = x / g32;
    const bool ok = r0 + r < rows;
    const int64_t t = t_lo + dt, h = kvh * group + (x - dt * g32);
    const uint8_t* src = ok ? q + ((t * p.q_row_stride + h * kD + c * 8) * 2) : q;
    cp_async16(s_q + tile_off(kBM, r, c), src, ok ? 16u : 0u);
  }

  // The page table entry and slot of the next tile to load, advanced by kBN keys per tile (a tile
  // never straddles a page: ct % kBN == 0), so the loop does no 64-bit division.
  const int64_t ring_lo = p.kv.page_indptr[p.b];
  const int64_t ring_n = p.kv.page_indptr[p.b + 1] - ring_lo;
  int64_t entry = ring_lo + (key_begin / ct) % ring_n;
  int64_t slot = key_begin % ct;
  auto next_tile = [&]() {
    slot += kBN;
    if (slot == ct) {
      slot = 0;
      entry = entry + 1 == ring_lo + ring_n ? ring_lo : entry + 1;
    }
  };

  // K/V tile `i` (at entry / slot) -> shared buffer `buf`. bf16: cp.async (16-byte chunks, keys past
  // key_end zero-filled).
  auto issue_bf16 = [&](int64_t i, int buf) {
    const int64_t key0 = key_begin + i * kBN;
    const int64_t off = kv_row_bytes(kvh, slot, ct, kD, 2);
    const uint8_t* kp = reinterpret_cast<const uint8_t*>(p.kv.k_pages[entry]) + off;
    const uint8_t* vp = reinterpret_cast<const uint8_t*>(p.kv.v_pages[entry]) + off;
#pragma unroll
    for (int j = 0; j < kBN * 16 / kThreads; ++j) {
      const int id = tid + j * kThreads, r = id >> 4, c = id & 15;
      const bool ok = key0 + r < key_end;
      const int64_t o = ok ? (r * kD + c * 8) * 2 : 0;
      const uint32_t d = tile_off(kBN, r, c) + buf * kKVBytes;
      cp_async16(s_k + d, kp + o, ok ? 16u : 0u);
      cp_async16(s_v + d, vp + o, ok ? 16u : 0u);
    }
  };
  // fp8: 64 rows x 128 codes = 512 16-byte units, 2 per thread, into registers.
  auto load_fp8 = [&](int64_t i, Fp8Stage& st) {
    const int64_t key0 = key_begin + i * kBN;
    const int64_t off = kv_row_bytes(kvh, slot, ct, kD, 1);
    const uint8_t* kpage = reinterpret_cast<const uint8_t*>(p.kv.k_pages[entry]);
    const uint8_t* vpage = reinterpret_cast<const uint8_t*>(p.kv.v_pages[entry]);
    st.k_scale = kv_fp8_scale(kpage, kvh, p.kv.kv_heads, ct, kD);
    st.v_scale = kv_fp8_scale(vpage, kvh, p.kv.kv_heads, ct, kD);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int id = tid + j * kThreads, r = id >> 3, u = id & 7;
      const bool ok = key0 + r < key_end;
      const int64_t o = off + r * kD + u * 16;
      st.k[j] = ok ? *reinterpret_cast<const uint4*>(kpage + o) : make_uint4(0, 0, 0, 0);
      st.v[j] = ok ? *reinterpret_cast<const uint4*>(vpage + o) : make_uint4(0, 0, 0, 0);
    }
  };
  // Dequantize 16 codes (code * scale: exact in bf16, the scale is a power of two) to two chunks.
  auto store_fp8_unit = [&](uint32_t base, int id, uint4 w, float scale) {
    const int r = id >> 3, u = id & 7;
    const __nv_bfloat162 s2 = __float2bfloat162_rn(scale);
    const uint32_t in[4] = {w.x, w.y, w.z, w.w};
    uint32_t o[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const uint32_t c = e4m3x2_to_bf16x2(in[k >> 1], k & 1);
      const __nv_bfloat162 v = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&c), s2);
      o[k] = *reinterpret_cast<const uint32_t*>(&v);
    }
    asm volatile("st.shared.v4.u32 [%0], {%1,%2,%3,%4};\n" ::"r"(base + tile_off(kBN, r, 2 * u)), "r"(o[0]),
                 "r"(o[1]), "r"(o[2]), "r"(o[3]));
    asm volatile("st.shared.v4.u32 [%0], {%1,%2,%3,%4};\n" ::"r"(base + tile_off(kBN, r, 2 * u + 1)),
                 "r"(o[4]), "r"(o[5]), "r"(o[6]), "r"(o[7]));
  };
  auto store_fp8 = [&](const Fp8Stage& st, int buf) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      store_fp8_unit(s_k + buf * kKVBytes, tid + j * kThreads, st.k[j], st.k_scale);
      store_fp8_unit(s_v + buf * kKVBytes, tid + j * kThreads, st.v[j], st.v_scale);
    }
  };

  Fp8Stage stage;
  if (n_tiles > 0) {
    if constexpr (kFp8) {
      load_fp8(0, stage);
      store_fp8(stage, 0);
    } else {
      issue_bf16(0, 0);
    }
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  // Q fragments for this warp's 16 rows, all 8 k-steps of 16 dims (lane -> row l%16, chunk half l/16).
  uint32_t qf[kD / 16][4];
#pragma unroll
  for (int ks = 0; ks < kD / 16; ++ks)
    ldmatrix_x4(qf[ks], s_q + tile_off(kBM, warp * 16 + (lane & 15), ks * 2 + (lane >> 4)));

  // This thread's two rows (g and g + 8 of the warp's slab): position, first visible key, and the
  // score multiplier scale * temperature * log2(e). Rows past the last token act as the last token.
  int64_t pos[2], fv[2];
  float sc[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int64_t t = t_lo + (rem0 + warp * 16 + (lane >> 2) + 8 * i) / g32;
    pos[i] = p.q_start + min(t, p.tokens - 1);
    fv[i] = first_visible(pos[i], p.attn_chunk);
    const float f = p.temp_tuning ? temp_factor(pos[i], p.floor_scale, p.attn_scale) : 1.0f;
    sc[i] = p.scale * f * 1.4426950408889634f;
  }
  const int64_t fv_hi = first_visible(pos_hi, p.attn_chunk);

  // ldmatrix row addresses of this lane at k-step / dim-block 0 of tile row-block 0. A 16-byte chunk
  // c = 2q + b (q = step % 4) of row r sits at physical chunk (b ^ r % 8) ^ 2q, and every other term of
  // the address is a multiple of 128 bytes (tile bases are 1024-byte aligned), so later steps are
  // this base + an immediate, XOR (q << 5): no per-step address registers.
  //   K (S = Q K^T, x4 = 16 keys x 16 dims): lanes 0-7 keys 0-7 dims lo, 8-15 keys 0-7 dims hi,
  //     16-31 keys 8-15. V (O += P V, trans): lanes 0-7 keys 0-7 dims lo, 8-15 keys 8-15 dims lo,
  //     16-31 dims hi.
  const uint32_t k_lane = s_k + ((lane & 7) + ((lane >> 4) << 3)) * 128 + ((((lane >> 3) & 1) ^ (lane & 7)) << 4);
  const uint32_t v_lane = s_v + ((lane & 7) + (((lane >> 3) & 1) << 3)) * 128 + (((lane >> 4) ^ (lane & 7)) << 4);

  float o[kD / 8][4];
#pragma unroll
  for (int j = 0; j < kD / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m[2] = {-CUDART_INF_F, -CUDART_INF_F}, l[2] = {0.0f, 0.0f};

  for (int64_t it = 0; it < n_tiles; ++it) {
    const int buf = static_cast<int>(it & 1);
    const bool more = it + 1 < n_tiles;
    if (more) {
      next_tile();
      if constexpr (kFp8) {
        load_fp8(it + 1, stage);
      } else {
        issue_bf16(it + 1, buf ^ 1);
      }
    }
    cp_async_commit();

    // ---- S = Q K^T: 16 rows x 64 keys per warp ----
    float s[kBN / 8][4];
#pragma unroll
    for (int j = 0; j < kBN / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
    const uint32_t kb = k_lane + buf * kKVBytes;
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) {
#pragma unroll
      for (int nb = 0; nb < kBN / 16; ++nb) {
        uint32_t r[4];
        ldmatrix_x4(r, ((kb + (ks >> 2) * kBN * 128 + nb * 16 * 128) ^ ((ks & 3) << 5)));
        mma_16816(s[2 * nb], qf[ks], r[0], r[1], __nv_bfloat16());
        mma_16816(s[2 * nb + 1], qf[ks], r[2], r[3], __nv_bfloat16());
      }
    }

    // ---- scale, mask, online softmax ----
    const int64_t key0 = key_begin + it * kBN;
    // Every row sees every key of the tile: no per-element mask.
    const bool full = key0 + kBN - 1 <= pos_lo && key0 >= fv_hi && key0 + kBN <= key_end;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      // Visible keys of row i inside this tile: offsets lo ..= hi (int, clamped to the tile).
      const int64_t hi64 = min(pos[i], key_end - 1) - key0;
      const int64_t lo64 = fv[i] - key0;
      const int hi = static_cast<int>(hi64 < -1 ? -1 : hi64 > kBN ? kBN : hi64);
      const int lo = static_cast<int>(lo64 < 0 ? 0 : lo64 > kBN ? kBN : lo64);
      float mx = m[i];
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int k = 8 * j + 2 * (lane & 3) + e;
          float x = s[j][2 * i + e] * sc[i];
          if (!full && (k < lo || k > hi)) x = -CUDART_INF_F;
          s[j][2 * i + e] = x;
          mx = fmaxf(mx, x);
        }
      }
      mx = quad_max(mx);
      const float base = softmax_base(mx);
      const float alpha = exp2f(m[i] - base);  // m = -inf -> 0
      m[i] = mx;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pe = exp2f(s[j][2 * i + e] - base);
          s[j][2 * i + e] = pe;
          sum += pe;
        }
      }
      l[i] = l[i] * alpha + sum;  // per-thread partial; the quad is summed once at the end
#pragma unroll
      for (int j = 0; j < kD / 8; ++j) {
        o[j][2 * i] *= alpha;
        o[j][2 * i + 1] *= alpha;
      }
    }

    // ---- O += P V: P from the S accumulators (bf16), V via transposed ldmatrix ----
    const uint32_t vb = v_lane + buf * kKVBytes;
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      const uint32_t pa[4] = {pack_bf16x2(s[2 * kk][0], s[2 * kk][1]), pack_bf16x2(s[2 * kk][2], s[2 * kk][3]),
                              pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int db = 0; db < kD / 16; ++db) {
        uint32_t r[4];
        ldmatrix_x4_trans(r, ((vb + (db >> 2) * kBN * 128 + kk * 16 * 128) ^ ((db & 3) << 5)));
        mma_16816(o[2 * db], pa, r[0], r[1], __nv_bfloat16());
        mma_16816(o[2 * db + 1], pa, r[2], r[3], __nv_bfloat16());
      }
    }

    if (more) {
      if constexpr (kFp8) store_fp8(stage, buf ^ 1);
    }
    cp_async_wait<0>();
    __syncthreads();  // tile it+1 is in place and nobody still reads buffer `buf`
  }

  // ---- epilogue: normalise, stage through the Q buffer, 16-byte coalesced stores ----
  __syncthreads();
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float inv = softmax_inv_sum(quad_sum(l[i]));
    const uint32_t row = warp * 16 + (lane >> 2) + 8 * i;
#pragma unroll
    for (int j = 0; j < kD / 8; ++j) {
      const uint32_t v = pack_bf16x2(o[j][2 * i] * inv, o[j][2 * i + 1] * inv);
      asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(s_q + tile_off(kBM, row, j) + 4 * (lane & 3)), "r"(v));
    }
  }
  __syncthreads();
  uint8_t* out = static_cast<uint8_t*>(p.out);
  // Not unrolled: otherwise nvcc keeps the prologue's row addresses alive across the loop (spilled).
#pragma unroll 1
  for (int j = 0; j < kBM * 16 / kThreads; ++j) {
    const int id = tid + j * kThreads, r = id >> 4, c = id & 15;
    const uint32_t x = rem0 + r, dt = x / g32;
    if (r0 + r < rows) {
      const int64_t t = t_lo + dt, h = kvh * group + (x - dt * g32);
      *reinterpret_cast<uint4*>(out + (t * p.out_row_stride + h * kD + c * 8) * 2) =
          lds128(s_q + tile_off(kBM, r, c));
    }
  }
}

template <bool kFp8>
l4c_status launch(const l4c_attn_prefill_params& p, int64_t group, int64_t m_blocks, cudaStream_t stream) {
  const cudaError_t e =
      cudaFuncSetAttribute(attn_prefill_kernel<kFp8>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  if (e != cudaSuccess) return status_from_cuda(e);
  const dim3 grid(static_cast<unsigned>(m_blocks), static_cast<unsigned>(p.kv.kv_heads));
  attn_prefill_kernel<kFp8><<<grid, kThreads, kSmemBytes, stream>>>(p, group);
  return L4C_LAUNCH_STATUS();
}

bool aligned16(const void* ptr) { return is_aligned(ptr, 16); }

}  // namespace
}  // namespace l4c

extern "C" l4c_status l4c_attn_prefill(const l4c_attn_prefill_params* p, l4c_stream_t stream) {
  using namespace l4c;
  L4C_REQUIRE(p != nullptr);
  const l4c_kv_pages& kv = p->kv;
  L4C_REQUIRE_DTYPE(p->q_dtype == L4C_DTYPE_BF16);
  L4C_REQUIRE_DTYPE(kv.dtype == L4C_DTYPE_BF16 || kv.dtype == L4C_DTYPE_F8E4M3);
  L4C_REQUIRE(p->tokens >= 0 && p->q_start >= 0 && p->heads > 0 && p->attn_chunk >= 0);
  L4C_REQUIRE(kv.kv_heads > 0 && kv.head_dim > 0 && kv.chunk_tokens > 0 && kv.batch > 0);
  L4C_REQUIRE(p->heads % kv.kv_heads == 0 && kv.kv_heads <= 65535 && p->heads <= 65535);
  L4C_REQUIRE(p->b >= 0 && p->b < kv.batch);
  L4C_REQUIRE(std::isfinite(p->scale));
  L4C_REQUIRE(!p->temp_tuning || (std::isfinite(p->floor_scale) && p->floor_scale > 0.0f && std::isfinite(p->attn_scale)));
  if (kv.head_dim != 128 || kv.chunk_tokens % kBN != 0) return L4C_ERR_UNSUPPORTED;
  const int64_t row = p->heads * kv.head_dim;
  L4C_REQUIRE(p->heads <= (int64_t(1) << 40) / kv.head_dim);
  L4C_REQUIRE(p->tokens <= 1 || (p->q_row_stride >= row && p->out_row_stride >= row));
  L4C_REQUIRE(p->q_row_stride % 8 == 0 && p->out_row_stride % 8 == 0);
  L4C_REQUIRE(p->q_start <= INT64_MAX / 2 - p->tokens);
  if (p->tokens == 0) return L4C_OK;
  L4C_REQUIRE(p->q && p->out && kv.k_pages && kv.v_pages && kv.page_indptr && kv.seq_lens);
  L4C_REQUIRE(aligned16(p->q) && aligned16(p->out));
  const int64_t group = p->heads / kv.kv_heads;
  L4C_REQUIRE(p->tokens <= (INT64_MAX / 4) / group);
  const int64_t m_blocks = (p->tokens * group + kBM - 1) / kBM;
  L4C_REQUIRE(m_blocks <= INT32_MAX);
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  return kv.dtype == L4C_DTYPE_F8E4M3 ? launch<true>(*p, group, m_blocks, s) : launch<false>(*p, group, m_blocks, s);
}
