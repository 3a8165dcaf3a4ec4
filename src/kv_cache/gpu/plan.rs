//! Pure index and tier math of the GPU KV cache (no CUDA): chunk sizes, ring length, the device /
//! host split, the table entry of a page, and the ring rule an append must keep. Tested on the CPU.
use crate::error::{Error, Result};
use crate::kv_cache::{KvDType, KvLayout, Retention};

pub(super) const OP: &str = "GpuKvLayer";

/// Chunk (page) addresses are aligned to this many bytes (16-byte vector loads need 16).
pub const CHUNK_ALIGN: usize = 256;

/// Bytes of one chunk of K (or V) as the kernels read it: `kv_heads * chunk_tokens * head_dim`
/// elements, then for fp8 `kv_heads` f32 scales (see `l4c_kv_pages`).
pub fn chunk_bytes(l: &KvLayout) -> usize {
    let data = l.kv_heads * l.chunk_tokens * l.head_dim * l.dtype.bytes();
    match l.dtype {
        KvDType::Fp8E4M3 => data + 4 * l.kv_heads,
        _ => data,
    }
}

/// Where one layer's chunks live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvPlan {
    /// Table entries (pages) per sequence: every page of `max_tokens` for [`Retention::All`], a ring
    /// for [`Retention::CurrentAttentionChunk`].
    pub ring: usize,
    /// Bytes of one chunk (data + fp8 scales).
    pub chunk_bytes: usize,
    /// Distance between consecutive chunks in an arena (`chunk_bytes` rounded up to [`CHUNK_ALIGN`]).
    pub stride: usize,
    /// Entries `0 .. dev_entries` of each sequence are in device memory, the rest in pinned host memory.
    pub dev_entries: usize,
    /// `ring - dev_entries`.
    pub host_entries: usize,
}

impl KvPlan {
    /// Checks the layout and arguments and splits the chunks between the tiers: the same number of
    /// device entries for every sequence, as many as `budget` bytes hold (K and V chunks both count).
    pub fn new(
        l: &KvLayout,
        retention: Retention,
        batch: usize,
        max_tokens: usize,
        budget: usize,
    ) -> Result<Self> {
        if l.dtype == KvDType::F32 {
            return Err(Error::DType {
                op: OP,
                msg: "the GPU KV cache stores bf16 or fp8 e4m3, not f32".into(),
            });
        }
        for (name, v) in [
            ("kv_heads", l.kv_heads),
            ("head_dim", l.head_dim),
            ("chunk_tokens", l.chunk_tokens),
            ("batch", batch),
            ("max_tokens", max_tokens),
        ] {
            if v == 0 {
                return Err(Error::invalid(OP, format!("{name} must be positive")));
            }
        }
        if l.chunk_tokens % 16 != 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "chunk_tokens {} must be a multiple of 16 (the kernels' key tile)",
                    l.chunk_tokens
                ),
            ));
        }
        if l.head_dim % 8 != 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "head_dim {} must be a multiple of 8 (16-byte rows)",
                    l.head_dim
                ),
            ));
        }
        if batch > 65535 || l.kv_heads > 65535 {
            return Err(Error::invalid(
                OP,
                format!(
                    "batch {batch} and kv_heads {} must be at most 65535 (CUDA grid limits)",
                    l.kv_heads
                ),
            ));
        }
        let overflow = || {
            Error::invalid(
                OP,
                format!(
                    "{layout:?} x {max_tokens} tokens x batch {batch} overflows",
                    layout = l
                ),
            )
        };
        l.kv_heads
            .checked_mul(l.chunk_tokens)
            .and_then(|x| x.checked_mul(l.head_dim))
            .and_then(|x| x.checked_mul(4))
            .ok_or_else(overflow)?;
        let pages_all = max_tokens.div_ceil(l.chunk_tokens);
        let ring = match retention {
            Retention::All => pages_all,
            Retention::CurrentAttentionChunk { chunk } => {
                if chunk == 0 || chunk % l.chunk_tokens != 0 {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "attention chunk {chunk} must be a positive multiple of chunk_tokens {}",
                            l.chunk_tokens
                        ),
                    ));
                }
                (2 * (chunk / l.chunk_tokens)).min(pages_all)
            }
        };
        let chunk_bytes = chunk_bytes(l);
        let stride = chunk_bytes.div_ceil(CHUNK_ALIGN) * CHUNK_ALIGN;
        let per_entry = stride.checked_mul(2 * batch).ok_or_else(overflow)?;
        ring.checked_mul(per_entry)
            .filter(|&b| i64::try_from(b).is_ok())
            .ok_or_else(overflow)?;
        let dev_entries = (budget / per_entry).min(ring);
        Ok(KvPlan {
            ring,
            chunk_bytes,
            stride,
            dev_entries,
            host_entries: ring - dev_entries,
        })
    }

    /// Device-arena bytes (K and V chunks of every sequence).
    pub fn device_bytes(&self, batch: usize) -> usize {
        self.dev_entries * 2 * batch * self.stride
    }
    /// Host-arena bytes.
    pub fn host_bytes(&self, batch: usize) -> usize {
        self.host_entries * 2 * batch * self.stride
    }

    /// (host tier?, byte offset in that arena) of entry `i` of sequence `b`, part 0 = K, 1 = V.
    pub fn locate(&self, b: usize, i: usize, part: usize) -> (bool, usize) {
        if i < self.dev_entries {
            (false, ((b * self.dev_entries + i) * 2 + part) * self.stride)
        } else {
            let j = i - self.dev_entries;
            (true, ((b * self.host_entries + j) * 2 + part) * self.stride)
        }
    }
}

/// The table entry (within a sequence) of absolute page `page`.
pub fn ring_entry(plan: &KvPlan, page: usize) -> usize {
    page % plan.ring
}

/// Checks that appending positions `start .. end` keeps every page a later query can see: the pages
/// from the start of `start`'s attention chunk to the last one written must be distinct ring entries.
/// With a ring of two attention chunks this holds exactly when `end - 1` lies in `start`'s attention
/// chunk or the next one, e.g. for any append of at most one attention chunk of tokens.
pub fn check_ring(
    plan: &KvPlan,
    l: &KvLayout,
    retention: Retention,
    start: usize,
    end: usize,
) -> Result<()> {
    let Retention::CurrentAttentionChunk { chunk } = retention else {
        return Ok(());
    };
    if end <= start {
        return Ok(());
    }
    let first_needed = start / chunk * chunk / l.chunk_tokens;
    let last = (end - 1) / l.chunk_tokens;
    if last - first_needed >= plan.ring {
        return Err(Error::invalid(
            OP,
            format!(
                "appending positions {start}..{end} at once would overwrite ring pages that its own \
                 queries see (the ring holds {} pages of {}); append at most {chunk} tokens at a time",
                plan.ring, l.chunk_tokens
            ),
        ));
    }
    Ok(())
}

/// Tokens per sequence in each tier: the device entries' capacity (at most `max_tokens`), the rest
/// on the host. For a ring this is where the ring's pages sit, whatever positions they hold now.
pub fn tier_tokens(plan: &KvPlan, l: &KvLayout, max_tokens: usize) -> (usize, usize) {
    let cap = (plan.ring * l.chunk_tokens).min(max_tokens);
    let dev = (plan.dev_entries * l.chunk_tokens).min(cap);
    (dev, cap - dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(dtype: KvDType, p: usize) -> KvLayout {
        KvLayout {
            kv_heads: 8,
            head_dim: 128,
            chunk_tokens: p,
            dtype,
        }
    }

    #[test]
    fn chunk_bytes_include_fp8_scales() {
        assert_eq!(chunk_bytes(&layout(KvDType::BF16, 64)), 8 * 64 * 128 * 2);
        assert_eq!(
            chunk_bytes(&layout(KvDType::Fp8E4M3, 64)),
            8 * 64 * 128 + 32
        );
        let p = KvPlan::new(&layout(KvDType::Fp8E4M3, 64), Retention::All, 1, 64, 0).unwrap();
        assert_eq!(p.stride % CHUNK_ALIGN, 0);
        assert!(p.stride >= p.chunk_bytes && p.stride - p.chunk_bytes < CHUNK_ALIGN);
    }

    #[test]
    fn budget_splits_tiers_per_sequence() {
        let l = layout(KvDType::BF16, 64);
        let cb = chunk_bytes(&l);
        // 10 pages per sequence, 3 sequences; a budget of 4 pages' K+V per sequence (+ change).
        let p = KvPlan::new(&l, Retention::All, 3, 600, 4 * 2 * 3 * cb + 100).unwrap();
        assert_eq!((p.ring, p.dev_entries, p.host_entries), (10, 4, 6));
        assert_eq!(tier_tokens(&p, &l, 600), (256, 344));
        assert_eq!(p.device_bytes(3), 4 * 2 * 3 * p.stride);
        assert_eq!(p.host_bytes(3), 6 * 2 * 3 * p.stride);
        // Entries are distinct, in bounds, and tiers follow dev_entries.
        let mut seen = std::collections::HashSet::new();
        for b in 0..3 {
            for i in 0..10 {
                for part in 0..2 {
                    let (host, off) = p.locate(b, i, part);
                    assert_eq!(host, i >= 4);
                    let cap = if host {
                        p.host_bytes(3)
                    } else {
                        p.device_bytes(3)
                    };
                    assert!(off + p.chunk_bytes <= cap && off % CHUNK_ALIGN == 0);
                    assert!(seen.insert((host, off)));
                }
            }
        }
        // Everything on the device, or everything on the host.
        let all = KvPlan::new(&l, Retention::All, 3, 600, usize::MAX).unwrap();
        assert_eq!((all.dev_entries, all.host_entries), (10, 0));
        let none = KvPlan::new(&l, Retention::All, 3, 600, 0).unwrap();
        assert_eq!((none.dev_entries, none.host_entries), (0, 10));
        assert_eq!(tier_tokens(&none, &l, 600), (0, 600));
    }

    #[test]
    fn ring_holds_two_attention_chunks() {
        let l = layout(KvDType::Fp8E4M3, 64);
        let r = Retention::CurrentAttentionChunk { chunk: 256 };
        let p = KvPlan::new(&l, r, 1, 100_000, usize::MAX).unwrap();
        assert_eq!(p.ring, 8);
        assert_eq!(ring_entry(&p, 9), 1);
        // Capped by max_tokens.
        assert_eq!(KvPlan::new(&l, r, 1, 100, usize::MAX).unwrap().ring, 2);
        // One attention chunk at a time, or a piece that crosses one boundary: fine.
        for (s, e) in [(0, 256), (100, 356), (255, 512), (300, 301), (256, 512)] {
            check_ring(&p, &l, r, s, e).unwrap();
        }
        // Reaching into the attention chunk after next would overwrite pages still visible.
        assert!(check_ring(&p, &l, r, 100, 513).is_err());
        assert!(check_ring(&p, &l, r, 0, 513).is_err());
        check_ring(&p, &l, Retention::All, 0, 100_000).unwrap();
        // A ring never aliases within the span check_ring accepts.
        for s in 0..600 {
            for e in s + 1..s + 600 {
                if check_ring(&p, &l, r, s, e).is_ok() {
                    let first = s / 256 * 256 / 64;
                    let entries: std::collections::HashSet<_> = (first..=(e - 1) / 64)
                        .map(|pg| ring_entry(&p, pg))
                        .collect();
                    assert_eq!(entries.len(), (e - 1) / 64 - first + 1);
                }
            }
        }
    }

    /// The append kernel's division-free `kv_pow2_scale` (kernels/common/attn_decode.cuh), mirrored
    /// step for step.
    fn device_pow2_scale(amax: f32) -> f32 {
        if amax == 0.0 {
            return 0.0;
        }
        let amax = if amax <= f32::MAX { amax } else { f32::MAX };
        let eb = (amax.to_bits() >> 23) as i32;
        let mut s = f32::from_bits(((eb - 8).max(1) as u32) << 23);
        while amax > 448.0 * s {
            s *= 2.0;
        }
        while s > f32::MIN_POSITIVE && amax <= 448.0 * (s * 0.5) {
            s *= 0.5;
        }
        s
    }

    #[test]
    fn device_scale_rule_equals_the_cpu_cache() {
        use crate::kv_cache::storage::pow2_scale;
        let check = |a: f32| {
            assert_eq!(
                device_pow2_scale(a).to_bits(),
                pow2_scale(a).to_bits(),
                "amax {a:e}"
            )
        };
        // Every power of two and its neighbours, the 448 * 2^k and 1.75 * 2^k edges, subnormals.
        for e in -149..128 {
            let p = 2f32.powi(e);
            for a in [p, 1.75 * p, 448.0 * p, 3.5 * p] {
                if a.is_finite() && a > 0.0 {
                    check(a);
                    check(f32::from_bits(a.to_bits() + 1));
                    check(f32::from_bits(a.to_bits() - 1));
                }
            }
        }
        check(f32::MAX);
        check(f32::from_bits(1));
        // A prime stride through every positive finite bit pattern (~214k values, all binades).
        for bits in (1..0x7f80_0000u32).step_by(9973) {
            check(f32::from_bits(bits));
        }
    }

    #[test]
    fn bad_layouts_are_typed_errors() {
        let ok = layout(KvDType::BF16, 64);
        let bad = |l: KvLayout, r: Retention, b: usize, t: usize| KvPlan::new(&l, r, b, t, 0);
        assert!(matches!(
            bad(layout(KvDType::F32, 64), Retention::All, 1, 64),
            Err(Error::DType { .. })
        ));
        for (l, r, b, t) in [
            (layout(KvDType::BF16, 40), Retention::All, 1, 64),
            (KvLayout { head_dim: 12, ..ok }, Retention::All, 1, 64),
            (KvLayout { kv_heads: 0, ..ok }, Retention::All, 1, 64),
            (ok, Retention::All, 0, 64),
            (ok, Retention::All, 1, 0),
            (ok, Retention::All, 70_000, 64),
            (ok, Retention::CurrentAttentionChunk { chunk: 100 }, 1, 64),
            (ok, Retention::CurrentAttentionChunk { chunk: 0 }, 1, 64),
            (ok, Retention::All, 1 << 20, usize::MAX / 2),
        ] {
            let e = bad(l, r, b, t).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        }
    }
}
