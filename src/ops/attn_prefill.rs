//! Flash-attention prefill over the paged KV cache (kernels/attn_prefill.cu, docs/ATTENTION.md).
//!
//! The CPU specification is [`crate::reference::attention::attention`]: causal GQA, the layer's mask
//! kind, NoPE temperature tuning (applied to the scores in f32, which equals scaling q), K/V read
//! through the cache's page table. The kernel takes head_dim 128, bf16 or fp8 e4m3 K/V, and a cache
//! whose `chunk_tokens` is a multiple of [`KV_TILE`]; [`check_attn_prefill`] says which argument is at
//! fault before anything is launched.
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use half::bf16;

use super::{launch, to_i64};
use crate::error::{check_len, Error, Result};
use crate::kv_cache::gpu::GpuKvLayer;
use crate::kv_cache::{KvDType, KvLayout};
use crate::reference::attention::{AttnParams, MaskKind};
use crate::sys;

const OP: &str = "attn_prefill";

/// Keys per KV tile of the kernel (`L4C_ATTN_PREFILL_KV_TILE`): the cache's `chunk_tokens` must be a
/// multiple, so that a tile never straddles a page.
pub const KV_TILE: usize = sys::L4C_ATTN_PREFILL_KV_TILE as usize;
/// The one head_dim the kernel is built for.
pub const HEAD_DIM: usize = 128;

/// What the host knows about the cache one prefill launch reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefillCache {
    /// The layer's layout.
    pub layout: KvLayout,
    /// Sequences in the cache.
    pub batch: usize,
    /// The sequence read.
    pub b: usize,
    /// Tokens held by sequence `b` (the host mirror of the device `seq_lens[b]`).
    pub seq_len: usize,
}

/// Checks every argument of [`attn_prefill`] on the host: `q_len` / `out_len` elements of q and out
/// for `tokens` queries at positions `q_start ..`, the cache as [`PrefillCache`], the layer's `p`.
/// Errors name the argument: [`Error::Shape`] for lengths and head counts that disagree,
/// [`Error::DType`] for a K/V dtype the kernel does not take, [`Error::InvalidArgument`] for the rest
/// (head_dim other than 128, `chunk_tokens` not a multiple of [`KV_TILE`], `b` out of range, queries
/// past the cache length, a bad scale or mask).
pub fn check_attn_prefill(
    q_len: usize,
    out_len: usize,
    tokens: usize,
    q_start: usize,
    cache: &PrefillCache,
    p: &AttnParams,
) -> Result<()> {
    let l = cache.layout;
    p.check(OP, &l)?;
    if p.heads > 65535 {
        return Err(Error::invalid(
            OP,
            format!("heads {} exceeds 65535", p.heads),
        ));
    }
    if p.head_dim != HEAD_DIM {
        return Err(Error::invalid(
            OP,
            format!(
                "head_dim {} is not supported: the prefill kernel is built for head_dim {HEAD_DIM} only",
                p.head_dim
            ),
        ));
    }
    if !matches!(l.dtype, KvDType::BF16 | KvDType::Fp8E4M3) {
        return Err(Error::DType {
            op: OP,
            msg: format!(
                "K/V cache is {:?}; the kernel reads BF16 or Fp8E4M3",
                l.dtype
            ),
        });
    }
    if l.chunk_tokens == 0 || l.chunk_tokens % KV_TILE != 0 {
        return Err(Error::invalid(
            OP,
            format!(
                "cache chunk_tokens {} must be a positive multiple of the kernel's KV tile {KV_TILE}",
                l.chunk_tokens
            ),
        ));
    }
    if let MaskKind::ChunkedLocal { chunk } = p.mask {
        to_i64(OP, "attention chunk", chunk)?;
    }
    if cache.b >= cache.batch {
        return Err(Error::invalid(
            OP,
            format!(
                "sequence index b = {} out of range: the cache holds {} sequences",
                cache.b, cache.batch
            ),
        ));
    }
    let want = tokens
        .checked_mul(p.heads * p.head_dim)
        .ok_or_else(|| Error::invalid(OP, format!("tokens = {tokens} overflows the q size")))?;
    check_len(OP, "q", q_len, want)?;
    check_len(OP, "out", out_len, want)?;
    let past_cache = match q_start.checked_add(tokens) {
        Some(end) => end > cache.seq_len,
        None => true,
    };
    if past_cache {
        return Err(Error::invalid(
            OP,
            format!(
                "queries at positions {q_start}..+{tokens} need their own keys, but sequence {} of \
                 the cache holds positions < {}: append K/V before attending",
                cache.b, cache.seq_len
            ),
        ));
    }
    // The kernel works in int64 positions and rows: keep a wide margin.
    to_i64(OP, "q_start + tokens", q_start + tokens)?;
    if (q_start + tokens) as u128 * p.heads as u128 >= 1u128 << 62 {
        return Err(Error::invalid(
            OP,
            format!(
                "{tokens} tokens at {q_start} x {} heads overflow int64",
                p.heads
            ),
        ));
    }
    Ok(())
}

/// Attends queries `q` (`[tokens, heads * head_dim]` bf16, absolute positions
/// `q_start .. q_start + tokens`) of sequence `b` to the keys of `kv` that each may see (causal, the
/// mask kind and NoPE temperature tuning of `p`). The cache must already hold positions up to
/// `q_start + tokens - 1` (append first); for a chunked-local ring the caller keeps the attention
/// chunk of `q_start` resident (as the CPU cache's retention does). Writes `out`
/// `[tokens, heads * head_dim]` bf16. `tokens == 0` launches nothing.
#[allow(clippy::too_many_arguments)]
pub fn attn_prefill(
    stream: &Arc<CudaStream>,
    q: &CudaSlice<bf16>,
    tokens: usize,
    q_start: usize,
    kv: &GpuKvLayer,
    b: usize,
    p: &AttnParams,
    out: &mut CudaSlice<bf16>,
) -> Result<()> {
    let batch = kv.batch();
    // kv.len(b) needs b in range: report it before asking.
    let seq_len = if b < batch { kv.len(b) } else { 0 };
    let cache = PrefillCache {
        layout: kv.layout(),
        batch,
        b,
        seq_len,
    };
    check_attn_prefill(q.len(), out.len(), tokens, q_start, &cache, p)?;
    if tokens == 0 {
        return Ok(());
    }
    let row = to_i64(OP, "row", p.heads * p.head_dim)?;
    let (attn_chunk, (temp_tuning, floor_scale, attn_scale)) = (
        match p.mask {
            MaskKind::Causal => 0,
            MaskKind::ChunkedLocal { chunk } => to_i64(OP, "attention chunk", chunk)?,
        },
        p.temp
            .map_or((0, 1.0, 0.0), |t| (1, t.floor_scale, t.attn_scale)),
    );
    let pages = kv.pages();
    launch(OP, stream, |s| {
        let (pq, _gq) = q.device_ptr(stream);
        let (po, _go) = out.device_ptr_mut(stream);
        let params = sys::l4c_attn_prefill_params {
            q: pq as *const c_void,
            out: po as *mut c_void,
            kv: pages,
            b: b as i64,
            tokens: tokens as i64,
            q_start: q_start as i64,
            heads: p.heads as i64,
            q_row_stride: row,
            out_row_stride: row,
            scale: p.scale,
            attn_chunk,
            temp_tuning,
            floor_scale,
            attn_scale,
            q_dtype: sys::l4c_dtype::L4C_DTYPE_BF16,
        };
        // SAFETY: q and out are live device buffers of tokens * heads * 128 bf16 (checked above), out
        // is borrowed mutably so they do not overlap; `pages` is the view of `kv`, which is borrowed
        // (not mutated) for the call and holds every position < q_start + tokens of sequence b; the
        // guards keep cudarc's stream ordering until the launch is enqueued.
        unsafe { sys::l4c_attn_prefill(&params, s) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::attention::TempTuning;

    fn cache(dtype: KvDType, chunk_tokens: usize, head_dim: usize) -> PrefillCache {
        PrefillCache {
            layout: KvLayout {
                kv_heads: 8,
                head_dim,
                chunk_tokens,
                dtype,
            },
            batch: 2,
            b: 1,
            seq_len: 300,
        }
    }
    fn params(head_dim: usize) -> AttnParams {
        AttnParams {
            heads: 40,
            kv_heads: 8,
            head_dim,
            scale: (head_dim as f32).powf(-0.5),
            mask: MaskKind::Causal,
            temp: Some(TempTuning {
                floor_scale: 8192.0,
                attn_scale: 0.1,
            }),
        }
    }
    const ROW: usize = 40 * 128;

    /// The kernel's per-CTA index math (kernels/attn_prefill.cu), mirrored: for row block `mb` of
    /// `tokens * g` rows, the KV tiles it loads as (first key, page-table entry, slot) and the
    /// positions of its rows. Same formulas, same order of operations.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn cta_plan(
        mb: i64,
        tokens: i64,
        g: i64,
        q_start: i64,
        chunk: i64,
        seq_len: i64,
        ct: i64,
        ring: (i64, i64),
    ) -> (Vec<(i64, i64, i64)>, Vec<i64>) {
        let (bm, bn) = (128i64, KV_TILE as i64);
        let fv = |pos: i64| if chunk > 0 { pos / chunk * chunk } else { 0 };
        let rows = tokens * g;
        let r0 = mb * bm;
        let t_lo = r0 / g;
        let rem0 = r0 - t_lo * g;
        let t_hi = ((r0 + bm).min(rows) - 1) / g;
        let (pos_lo, pos_hi) = (q_start + t_lo, q_start + t_hi);
        let key_end = (pos_hi + 1).min(seq_len);
        let key_begin = fv(pos_lo) / bn * bn;
        let n_tiles = if key_end > key_begin {
            (key_end - key_begin + bn - 1) / bn
        } else {
            0
        };
        let (ring_lo, ring_n) = ring;
        let mut entry = ring_lo + (key_begin / ct) % ring_n;
        let mut slot = key_begin % ct;
        let mut tiles = Vec::new();
        for it in 0..n_tiles {
            if it > 0 {
                slot += bn;
                if slot == ct {
                    slot = 0;
                    entry = if entry + 1 == ring_lo + ring_n {
                        ring_lo
                    } else {
                        entry + 1
                    };
                }
            }
            tiles.push((key_begin + it * bn, entry, slot));
        }
        let pos = (0..bm)
            .map(|r| q_start + (t_lo + (rem0 + r) / g).min(tokens - 1))
            .collect();
        (tiles, pos)
    }

    #[test]
    fn kernel_tiles_cover_every_visible_key_and_follow_the_page_table() {
        // (tokens, g, q_start, chunk, ct, ring pages or 0 = plain table)
        for (tokens, g, q_start, chunk, ct, ring_pages) in [
            (1i64, 5i64, 0i64, 0i64, 256i64, 0i64),
            (113, 5, 0, 0, 256, 0),
            (8193, 5, 0, 0, 256, 0),
            (300, 3, 417, 0, 64, 0),
            (1000, 5, 0, 256, 64, 0),
            (700, 7, 0, 192, 64, 0),
            (231, 5, 768, 256, 64, 5),
            (100, 1, 256, 256, 64, 5),
            (5000, 5, 9000, 8192, 256, 33),
        ] {
            let ctx = format!("tokens {tokens} g {g} q_start {q_start} chunk {chunk} ct {ct}");
            let seq_len = q_start + tokens;
            let fv = |pos: i64| if chunk > 0 { pos / chunk * chunk } else { 0 };
            let pages = (seq_len + ct - 1) / ct;
            let ring = (3, if ring_pages > 0 { ring_pages } else { pages });
            let blocks = (tokens * g + 127) / 128;
            let mut rows_seen = 0;
            for mb in 0..blocks {
                let (tiles, pos) = cta_plan(mb, tokens, g, q_start, chunk, seq_len, ct, ring);
                for &(key0, entry, slot) in &tiles {
                    // A tile lies in one page, at the entry the l4c_kv_pages rule names.
                    assert_eq!(slot, key0 % ct, "{ctx}");
                    assert!(slot + KV_TILE as i64 <= ct, "{ctx}");
                    assert_eq!(entry, ring.0 + (key0 / ct) % ring.1, "{ctx}");
                    assert!(key0 < seq_len, "{ctx}: tile past the cache");
                }
                let lo = tiles.first().map_or(i64::MAX, |t| t.0);
                let hi = tiles.last().map_or(i64::MIN, |t| t.0 + KV_TILE as i64);
                for r in 0..128 {
                    let row = mb * 128 + r;
                    if row >= tokens * g {
                        continue;
                    }
                    rows_seen += 1;
                    let want = q_start + row / g;
                    assert_eq!(pos[r as usize], want, "{ctx}: row {row}");
                    // Every visible key of the row is inside the loaded tiles.
                    assert!(
                        lo <= fv(want) && want < hi,
                        "{ctx}: row {row} keys {}..={want}",
                        fv(want)
                    );
                    // Ring: the keys the row sees were not overwritten (the ring holds them).
                    if ring_pages > 0 {
                        assert!(fv(want) / ct > (seq_len - 1) / ct - ring.1, "{ctx}");
                    }
                }
            }
            assert_eq!(rows_seen, tokens * g, "{ctx}");
        }
    }

    #[test]
    fn accepts_valid_arguments() {
        let (c, p) = (cache(KvDType::BF16, 256, 128), params(128));
        check_attn_prefill(100 * ROW, 100 * ROW, 100, 200, &c, &p).unwrap();
        check_attn_prefill(0, 0, 0, 300, &c, &p).unwrap();
        let c = cache(KvDType::Fp8E4M3, 64, 128);
        check_attn_prefill(ROW, ROW, 1, 299, &c, &p).unwrap();
    }

    #[test]
    fn rejects_wrong_q_and_out_lengths() {
        let (c, p) = (cache(KvDType::BF16, 256, 128), params(128));
        let e = check_attn_prefill(100 * ROW - 1, 100 * ROW, 100, 0, &c, &p).unwrap_err();
        assert!(
            matches!(e, Error::Shape { .. }) && e.to_string().contains("q has"),
            "{e}"
        );
        let e = check_attn_prefill(100 * ROW, 99 * ROW, 100, 0, &c, &p).unwrap_err();
        assert!(
            matches!(e, Error::Shape { .. }) && e.to_string().contains("out has"),
            "{e}"
        );
    }

    #[test]
    fn rejects_b_out_of_range() {
        let (mut c, p) = (cache(KvDType::BF16, 256, 128), params(128));
        c.b = 2;
        let e = check_attn_prefill(ROW, ROW, 1, 0, &c, &p).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("b = 2"),
            "{e}"
        );
    }

    #[test]
    fn rejects_head_dim_64() {
        let (c, p) = (cache(KvDType::BF16, 256, 64), params(64));
        let e = check_attn_prefill(40 * 64, 40 * 64, 1, 0, &c, &p).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("head_dim 64"),
            "{e}"
        );
        // Params and cache disagreeing is a shape error.
        let c = cache(KvDType::BF16, 256, 128);
        let e = check_attn_prefill(40 * 64, 40 * 64, 1, 0, &c, &p).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
    }

    #[test]
    fn rejects_tokens_past_the_cache() {
        let (c, p) = (cache(KvDType::BF16, 256, 128), params(128));
        let e = check_attn_prefill(2 * ROW, 2 * ROW, 2, 299, &c, &p).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("positions < 300"),
            "{e}"
        );
        let e = check_attn_prefill(ROW, ROW, 1, usize::MAX, &c, &p).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    }

    #[test]
    fn rejects_unsupported_cache_and_params() {
        let p = params(128);
        let e = check_attn_prefill(ROW, ROW, 1, 0, &cache(KvDType::F32, 256, 128), &p).unwrap_err();
        assert!(matches!(e, Error::DType { .. }), "{e}");
        let e = check_attn_prefill(ROW, ROW, 1, 0, &cache(KvDType::BF16, 96, 128), &p).unwrap_err();
        assert!(e.to_string().contains("chunk_tokens 96"), "{e}");
        let c = cache(KvDType::BF16, 256, 128);
        for bad in [
            AttnParams { heads: 41, ..p },
            AttnParams {
                scale: f32::NAN,
                ..p
            },
            AttnParams {
                mask: MaskKind::ChunkedLocal { chunk: 0 },
                ..p
            },
            AttnParams {
                temp: Some(TempTuning {
                    floor_scale: 0.0,
                    attn_scale: 0.1,
                }),
                ..p
            },
        ] {
            let e =
                check_attn_prefill(bad.heads * 128, bad.heads * 128, 1, 0, &c, &bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument { .. }), "{bad:?}: {e}");
        }
    }
}
