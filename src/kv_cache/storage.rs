//! Typed K (or V) arenas: `[chunks, kv_heads, chunk_tokens, head_dim]`, and the fp8 scale rules.
use super::{KvDType, KvLayout, KvRow};
use crate::quant::fp8::{e4m3_decode, e4m3_encode, E4M3_MAX};
use half::bf16;
use std::sync::OnceLock;

/// One arena. bf16 is kept as raw `u16` bits so that every arena is allocated zeroed: the OS then
/// commits its pages lazily, as a cache fills. (Transparent huge pages were tried for the 10M-token
/// fill: fewer faults, but direct compaction on a busy machine made the fill slower.)
pub(super) enum Storage {
    F32(Vec<f32>),
    BF16(Vec<u16>),
    /// `scales` is `[chunks, kv_heads]`; 0 means nothing nonzero was stored in that (chunk, head).
    Fp8 {
        codes: Vec<u8>,
        scales: Vec<f32>,
    },
}

impl Storage {
    /// `elems` elements per arena (the caller checked the byte size fits `usize`).
    pub(super) fn new(layout: KvLayout, chunks: usize, elems: usize) -> Self {
        match layout.dtype {
            KvDType::F32 => Storage::F32(vec![0.0; elems]),
            KvDType::BF16 => Storage::BF16(vec![0; elems]),
            KvDType::Fp8E4M3 => Storage::Fp8 {
                codes: vec![0; elems],
                scales: vec![0.0; chunks * layout.kv_heads],
            },
        }
    }

    /// Forgets a reused chunk's scales (data need no clearing: only appended slots are ever read).
    pub(super) fn reset_chunk(&mut self, layout: KvLayout, chunk: usize) {
        if let Storage::Fp8 { scales, .. } = self {
            scales[chunk * layout.kv_heads..(chunk + 1) * layout.kv_heads].fill(0.0);
        }
    }

    /// Rows `slot .. slot + m` of `(chunk, head)`, one contiguous run.
    pub(super) fn rows(
        &self,
        layout: KvLayout,
        chunk: usize,
        head: usize,
        slot: usize,
        m: usize,
    ) -> KvRow<'_> {
        let off = layout.row_offset(chunk, head, slot);
        let r = off..off + m * layout.head_dim;
        match self {
            Storage::F32(x) => KvRow::F32(&x[r]),
            Storage::BF16(x) => KvRow::BF16(bytemuck::cast_slice(&x[r])),
            Storage::Fp8 { codes, scales } => KvRow::Fp8 {
                codes: &codes[r],
                scale: scales[chunk * layout.kv_heads + head],
            },
        }
    }

    /// Writes `rows` (`[m, head_dim]` f32, finite) at `slot ..` of `(chunk, head)`.
    pub(super) fn write_f32(
        &mut self,
        layout: KvLayout,
        chunk: usize,
        head: usize,
        slot: usize,
        rows: &[f32],
    ) {
        let off = layout.row_offset(chunk, head, slot);
        match self {
            Storage::F32(x) => x[off..off + rows.len()].copy_from_slice(rows),
            Storage::BF16(x) => {
                for (o, &r) in x[off..off + rows.len()].iter_mut().zip(rows) {
                    *o = bf16::from_f32(r).to_bits();
                }
            }
            Storage::Fp8 { codes, scales } => {
                let amax = rows.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                let s = raise_scale(layout, codes, scales, chunk, head, slot, pow2_scale(amax));
                // `s` is 0 only when every row is ±0; `x / s` is exact for a power-of-two `s`.
                let div = if s == 0.0 { 1.0 } else { s };
                for (o, &r) in codes[off..off + rows.len()].iter_mut().zip(rows) {
                    *o = e4m3_encode(r / div);
                }
            }
        }
    }

    /// Writes e4m3 `rows` (`[m, head_dim]`, no NaN) with power-of-two `scale` at `slot ..` of
    /// `(chunk, head)`. Only called on fp8 arenas.
    pub(super) fn write_fp8(
        &mut self,
        layout: KvLayout,
        chunk: usize,
        head: usize,
        slot: usize,
        rows: &[u8],
        scale: f32,
    ) {
        let Storage::Fp8 { codes, scales } = self else {
            unreachable!("append_fp8 checks the dtype first")
        };
        let off = layout.row_offset(chunk, head, slot);
        let s = raise_scale(layout, codes, scales, chunk, head, slot, scale);
        let dst = &mut codes[off..off + rows.len()];
        if s == scale {
            dst.copy_from_slice(rows);
        } else {
            let (lut, ratio) = (e4m3_lut(), scale / s);
            for (o, &c) in dst.iter_mut().zip(rows) {
                *o = e4m3_encode(lut[c as usize] * ratio);
            }
        }
    }
}

/// Raises the scale of `(chunk, head)` to at least `want` (both powers of two or 0), re-encoding the
/// `slot` rows already stored when it grows; returns the scale now in force.
fn raise_scale(
    layout: KvLayout,
    codes: &mut [u8],
    scales: &mut [f32],
    chunk: usize,
    head: usize,
    slot: usize,
    want: f32,
) -> f32 {
    let s = &mut scales[chunk * layout.kv_heads + head];
    let old = *s;
    if want <= old {
        return old;
    }
    // With `old == 0` every stored code is ±0, which stays ±0 at any scale.
    if old > 0.0 {
        let (lut, ratio) = (e4m3_lut(), old / want);
        let off = layout.row_offset(chunk, head, 0);
        for c in &mut codes[off..off + slot * layout.head_dim] {
            *c = e4m3_encode(lut[*c as usize] * ratio);
        }
    }
    *s = want;
    want
}

/// The smallest power of two `s >= 2^-126` with `amax / s <= 448`; 0 for `amax == 0`.
pub(super) fn pow2_scale(amax: f32) -> f32 {
    if amax == 0.0 {
        return 0.0;
    }
    let t = (amax / E4M3_MAX).max(f32::MIN_POSITIVE);
    let bits = t.to_bits();
    let mut s = if bits & 0x7f_ffff == 0 {
        t
    } else {
        f32::from_bits((bits & 0x7f80_0000) + 0x80_0000)
    };
    // `t` may have rounded down past a power of two; `amax / s` is exact, so this check is too.
    while amax / s > E4M3_MAX {
        s *= 2.0;
    }
    s
}

/// A positive normal power of two.
pub(super) fn is_pow2(x: f32) -> bool {
    x.is_normal() && x > 0.0 && x.to_bits() & 0x7f_ffff == 0
}

/// `e4m3_decode` for all 256 codes (a table lookup is what makes the 10M-token decode fast).
pub(super) fn e4m3_lut() -> &'static [f32; 256] {
    static LUT: OnceLock<[f32; 256]> = OnceLock::new();
    LUT.get_or_init(|| std::array::from_fn(|c| e4m3_decode(c as u8)))
}
