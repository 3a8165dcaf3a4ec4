//! Offline repacking of int4 weights into the layout the W4A16 kernels read (kernels/gemm_w4a16.cu,
//! docs/GEMM.md), and back.
//!
//! The kernels compute `Yᵀ = W · Xᵀ` with W as the tensor-core A operand, one 16-row tile of W per
//! warp. A *slab* is one tile's 16 rows × 64 columns (k): 512 nibbles = 32 lanes × 16 bytes, so one
//! coalesced 16-byte load per lane brings the lane's A-fragment values for four k16 MMAs.
//!
//! `qweight` is `u32` words `[tile][slab][lane][j]` (tile = row / 16, slab = k / 64, j = k16 step in
//! the slab). Word j of lane l (g = l / 4, c = l % 4) holds 8 nibbles; nibble i (bits 4i..4i+3), with
//! p = i % 4 and h = i / 4, is the weight at
//!
//! ```text
//! row = 16·tile + g + 8·(p & 1),   col = 64·slab + 16·j + 2c + 8·(p >> 1) + h
//! ```
//!
//! i.e. fragment register p of mma.m16n8k16's A operand takes nibble p in its low half and nibble
//! p + 4 in its high half, which the kernel isolates with one shift and one LOP3 each.
//!
//! `scales` (and `zero_bias` when asymmetric) are 16-bit values in the activation dtype,
//! `[tile][group][16]`, the 16 rows of a tile interleaved as (r, r + 8) pairs: position 2i + h holds
//! row i + 8h, so one 32-bit load gives a lane its rows g and g + 8. `zero_bias` stores
//! `magic + z` (magic = 128 for bf16, 1024 for f16: the exponent the dequant ORs into a nibble), so
//! the kernel's `(magic + q) - (magic + z)` is exact and the weight is `round16((q - z) · scale)`.
//!
//! Rows are padded to a multiple of 16 and k to a multiple of 64 with zero weights (nibble = zero
//! point, scale 0 on padded rows); the kernels also zero the activations past k.

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::quant::int4::{Int4Config, Int4Weight, ScaleDType};

/// Rows per tile and k per slab of the repacked layout.
pub const TILE_ROWS: usize = 16;
/// Columns (k) per slab.
pub const SLAB_K: usize = 64;
/// `u32` words per (tile, slab): 32 lanes × 4 words.
pub const SLAB_WORDS: usize = 128;

/// The 16-bit activation dtype a repacked weight is prepared for (its scales are stored in it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act16 {
    BF16,
    F16,
}

impl Act16 {
    /// The value the dequant ORs a nibble into (its ulp is 1).
    pub fn magic(self) -> f32 {
        match self {
            Act16::BF16 => 128.0,
            Act16::F16 => 1024.0,
        }
    }
    /// Rounds to this dtype (nearest even) and returns the bits.
    pub fn to_bits(self, v: f32) -> u16 {
        match self {
            Act16::BF16 => bf16::from_f32(v).to_bits(),
            Act16::F16 => f16::from_f32(v).to_bits(),
        }
    }
    /// Widens bits of this dtype to f32 (exact).
    pub fn from_bits(self, b: u16) -> f32 {
        match self {
            Act16::BF16 => bf16::from_bits(b).to_f32(),
            Act16::F16 => f16::from_bits(b).to_f32(),
        }
    }
}

/// An int4 weight `[n, k]` in the kernels' layout (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct RepackedInt4 {
    pub n: usize,
    pub k: usize,
    pub config: Int4Config,
    pub act: Act16,
    /// `ceil(k / 64)`.
    pub k_slabs: usize,
    /// Scale groups per tile in `scales`: `ceil(64 · k_slabs / group_size)`.
    pub groups: usize,
    /// `[ceil(n/16)][k_slabs][32][4]`.
    pub qweight: Vec<u32>,
    /// `[ceil(n/16)][groups][16]` bits of `act`.
    pub scales: Vec<u16>,
    /// Asymmetric only: same layout as `scales`, bits of `magic + z`.
    pub zero_bias: Option<Vec<u16>>,
}

/// Where nibble `i` of word `j` of lane `lane` of (tile, slab) sits in the `[n, k]` weight.
pub fn nibble_coords(tile: usize, slab: usize, lane: usize, j: usize, i: usize) -> (usize, usize) {
    let (g, c) = (lane / 4, lane % 4);
    let (p, h) = (i % 4, i / 4);
    let row = TILE_ROWS * tile + g + 8 * (p & 1);
    let col = SLAB_K * slab + 16 * j + 2 * c + 8 * (p >> 1) + h;
    (row, col)
}

/// Position of row `r` (0..16) of a tile inside its 16-entry scale block.
pub fn scale_slot(r: usize) -> usize {
    2 * (r % 8) + r / 8
}

/// The raw nibble (0..=15) of `w` at (row, col), per [`Int4Weight`]'s byte layout.
fn nibble(w: &Int4Weight, row: usize, col: usize) -> u8 {
    let byte = w.packed[row * w.k.div_ceil(2) + col / 2];
    if col % 2 == 0 {
        byte & 0x0f
    } else {
        byte >> 4
    }
}

fn zero_point(w: &Int4Weight, row: usize, grp: usize) -> u8 {
    match &w.zeros {
        Some(z) => z[row * w.groups_per_row() + grp],
        None => 8,
    }
}

/// Checks the internal consistency of an [`Int4Weight`] before it is read by index.
fn validate(w: &Int4Weight) -> Result<()> {
    const OP: &str = "repack_int4";
    if w.n == 0 || w.k == 0 {
        return Err(Error::shape(
            OP,
            format!("weight is [{}, {}]: empty", w.n, w.k),
        ));
    }
    if !matches!(w.config.group_size, 32 | 64 | 128) {
        return Err(Error::invalid(
            OP,
            format!(
                "group size {} (the kernels take 32, 64 or 128)",
                w.config.group_size
            ),
        ));
    }
    crate::error::check_len(OP, "packed", w.packed.len(), w.n * w.k.div_ceil(2))?;
    let gpr = w.groups_per_row();
    crate::error::check_len(OP, "scales", w.scales.len(), w.n * gpr)?;
    match (&w.zeros, w.config.symmetric) {
        (None, true) => {}
        (Some(z), false) => {
            crate::error::check_len(OP, "zeros", z.len(), w.n * gpr)?;
            if let Some(bad) = z.iter().find(|&&v| v > 15) {
                return Err(Error::invalid(
                    OP,
                    format!("zero point {bad} outside [0, 15]"),
                ));
            }
        }
        (None, false) => return Err(Error::invalid(OP, "asymmetric weight without zero points")),
        (Some(_), true) => return Err(Error::invalid(OP, "symmetric weight with zero points")),
    }
    if let Some(bad) = w.scales.iter().find(|s| !s.is_finite()) {
        return Err(Error::invalid(OP, format!("non-finite scale {bad}")));
    }
    Ok(())
}

/// Repacks `w` for activations of dtype `act`. The scales are rounded to `act` (exact for bf16 scales
/// with bf16 activations, the default recipe); everything else is kept bit for bit.
pub fn repack_int4(w: &Int4Weight, act: Act16) -> Result<RepackedInt4> {
    validate(w)?;
    let gs = w.config.group_size;
    let tiles = w.n.div_ceil(TILE_ROWS);
    let k_slabs = w.k.div_ceil(SLAB_K);
    let groups = (k_slabs * SLAB_K).div_ceil(gs);
    let gpr = w.groups_per_row();

    let mut qweight = vec![0u32; tiles * k_slabs * SLAB_WORDS];
    for tile in 0..tiles {
        for slab in 0..k_slabs {
            let base = (tile * k_slabs + slab) * SLAB_WORDS;
            for lane in 0..32 {
                for j in 0..4 {
                    let mut word = 0u32;
                    for i in 0..8 {
                        let (row, col) = nibble_coords(tile, slab, lane, j, i);
                        let q = if row < w.n && col < w.k {
                            nibble(w, row, col)
                        } else if row < w.n && col / gs < gpr {
                            zero_point(w, row, col / gs)
                        } else {
                            8
                        };
                        word |= u32::from(q) << (4 * i);
                    }
                    qweight[base + lane * 4 + j] = word;
                }
            }
        }
    }

    let mut scales = vec![0u16; tiles * groups * TILE_ROWS];
    let mut zero_bias =
        (!w.config.symmetric).then(|| vec![act.to_bits(act.magic() + 8.0); scales.len()]);
    for row in 0..w.n {
        let (tile, r) = (row / TILE_ROWS, row % TILE_ROWS);
        for grp in 0..gpr {
            let at = (tile * groups + grp) * TILE_ROWS + scale_slot(r);
            scales[at] = act.to_bits(w.scales[row * gpr + grp]);
            if let Some(zb) = zero_bias.as_mut() {
                zb[at] = act.to_bits(act.magic() + f32::from(zero_point(w, row, grp)));
            }
        }
    }
    Ok(RepackedInt4 {
        n: w.n,
        k: w.k,
        config: w.config,
        act,
        k_slabs,
        groups,
        qweight,
        scales,
        zero_bias,
    })
}

/// Inverse of [`repack_int4`]: the [`Int4Weight`] the kernels compute with (its scales are the
/// 16-bit values widened to f32).
pub fn unpack_int4(r: &RepackedInt4) -> Result<Int4Weight> {
    const OP: &str = "unpack_int4";
    let gs = r.config.group_size;
    let tiles = r.n.div_ceil(TILE_ROWS);
    if r.n == 0 || r.k == 0 || !matches!(gs, 32 | 64 | 128) {
        return Err(Error::invalid(
            OP,
            format!("n {} k {} group {}", r.n, r.k, gs),
        ));
    }
    if r.k_slabs != r.k.div_ceil(SLAB_K) || r.groups != (r.k_slabs * SLAB_K).div_ceil(gs) {
        return Err(Error::invalid(
            OP,
            format!(
                "k_slabs {} / groups {} do not match k {}",
                r.k_slabs, r.groups, r.k
            ),
        ));
    }
    crate::error::check_len(
        OP,
        "qweight",
        r.qweight.len(),
        tiles * r.k_slabs * SLAB_WORDS,
    )?;
    crate::error::check_len(OP, "scales", r.scales.len(), tiles * r.groups * TILE_ROWS)?;
    if let Some(zb) = &r.zero_bias {
        crate::error::check_len(OP, "zero_bias", zb.len(), r.scales.len())?;
    }

    let gpr = r.k.div_ceil(gs);
    let row_bytes = r.k.div_ceil(2);
    let mut packed = vec![0u8; r.n * row_bytes];
    for tile in 0..tiles {
        for slab in 0..r.k_slabs {
            let base = (tile * r.k_slabs + slab) * SLAB_WORDS;
            for lane in 0..32 {
                for j in 0..4 {
                    let word = r.qweight[base + lane * 4 + j];
                    for i in 0..8 {
                        let (row, col) = nibble_coords(tile, slab, lane, j, i);
                        if row < r.n && col < r.k {
                            let q = ((word >> (4 * i)) & 0xf) as u8;
                            packed[row * row_bytes + col / 2] |=
                                if col % 2 == 0 { q } else { q << 4 };
                        }
                    }
                }
            }
        }
    }
    let mut scales = vec![0f32; r.n * gpr];
    let mut zeros = r.zero_bias.as_ref().map(|_| vec![0u8; r.n * gpr]);
    for row in 0..r.n {
        let (tile, rr) = (row / TILE_ROWS, row % TILE_ROWS);
        for grp in 0..gpr {
            let at = (tile * r.groups + grp) * TILE_ROWS + scale_slot(rr);
            scales[row * gpr + grp] = r.act.from_bits(r.scales[at]);
            if let (Some(z), Some(zb)) = (zeros.as_mut(), r.zero_bias.as_ref()) {
                let zp = r.act.from_bits(zb[at]) - r.act.magic();
                if !(0.0..=15.0).contains(&zp) || zp.fract() != 0.0 {
                    return Err(Error::invalid(
                        OP,
                        format!("zero bias decodes to {zp}, not a zero point"),
                    ));
                }
                z[row * gpr + grp] = zp as u8;
            }
        }
    }
    let config = Int4Config {
        scale_dtype: match r.act {
            Act16::BF16 => ScaleDType::BF16,
            Act16::F16 => r.config.scale_dtype,
        },
        ..r.config
    };
    Ok(Int4Weight {
        n: r.n,
        k: r.k,
        config,
        packed,
        scales,
        zeros,
    })
}

impl RepackedInt4 {
    /// Bytes the kernels stream per call: codes, scales and zero biases.
    pub fn nbytes(&self) -> usize {
        4 * self.qweight.len()
            + 2 * self.scales.len()
            + self.zero_bias.as_ref().map_or(0, |z| 2 * z.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A random int4 weight built directly (independent of the quantizer): random nibbles, random
    /// bf16-exact scales, random zero points.
    fn random_weight(n: usize, k: usize, gs: usize, symmetric: bool, seed: u64) -> Int4Weight {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let gpr = k.div_ceil(gs);
        let mut packed = vec![0u8; n * k.div_ceil(2)];
        for row in 0..n {
            for col in 0..k {
                let q = (next() % 16) as u8;
                packed[row * k.div_ceil(2) + col / 2] |= if col % 2 == 0 { q } else { q << 4 };
            }
        }
        let scales = (0..n * gpr)
            .map(|_| bf16::from_f32(((next() % 1000) as f32 + 1.0) * 1e-4).to_f32())
            .collect();
        let zeros = (!symmetric).then(|| (0..n * gpr).map(|_| (next() % 16) as u8).collect());
        let config = Int4Config {
            group_size: gs,
            symmetric,
            scale_dtype: ScaleDType::BF16,
        };
        Int4Weight {
            n,
            k,
            config,
            packed,
            scales,
            zeros,
        }
    }

    #[test]
    fn nibble_coords_cover_each_slab_position_once() {
        let mut seen = vec![false; TILE_ROWS * SLAB_K];
        for lane in 0..32 {
            for j in 0..4 {
                for i in 0..8 {
                    let (r, c) = nibble_coords(0, 0, lane, j, i);
                    assert!(!seen[r * SLAB_K + c], "({r}, {c}) twice");
                    seen[r * SLAB_K + c] = true;
                }
            }
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn fragment_order_matches_mma_a_layout() {
        // Lane 5 (g = 1, c = 1), word 0: register p = nibble p (low) / p + 4 (high).
        // mma.m16n8k16 A: a0 = (g, 2c..2c+1), a1 = (g+8, 2c..), a2 = (g, 2c+8..), a3 = (g+8, 2c+8..).
        assert_eq!(nibble_coords(0, 0, 5, 0, 0), (1, 2));
        assert_eq!(nibble_coords(0, 0, 5, 0, 4), (1, 3));
        assert_eq!(nibble_coords(0, 0, 5, 0, 1), (9, 2));
        assert_eq!(nibble_coords(0, 0, 5, 0, 2), (1, 10));
        assert_eq!(nibble_coords(0, 0, 5, 0, 7), (9, 11));
        assert_eq!(nibble_coords(2, 3, 5, 1, 0), (33, 64 * 3 + 16 + 2));
        assert_eq!(scale_slot(0), 0);
        assert_eq!(scale_slot(8), 1);
        assert_eq!(scale_slot(7), 14);
        assert_eq!(scale_slot(15), 15);
    }

    #[test]
    fn dequant_of_repacked_matches_the_weight() {
        // Evaluate what the kernel computes per element, (q - z) * s, from the repacked arrays alone.
        let w = random_weight(37, 200, 32, false, 7);
        let r = repack_int4(&w, Act16::BF16).unwrap();
        let gpr = w.groups_per_row();
        for tile in 0..w.n.div_ceil(16) {
            for slab in 0..r.k_slabs {
                for lane in 0..32 {
                    for j in 0..4 {
                        let word = r.qweight[((tile * r.k_slabs + slab) * 32 + lane) * 4 + j];
                        for i in 0..8 {
                            let (row, col) = nibble_coords(tile, slab, lane, j, i);
                            let q = ((word >> (4 * i)) & 15) as f32;
                            let at = (tile * r.groups + col / 32) * 16 + scale_slot(row % 16);
                            let s = r.act.from_bits(r.scales[at]);
                            let zb = r.act.from_bits(r.zero_bias.as_ref().unwrap()[at]);
                            let got = (r.act.magic() + q - zb) * s;
                            let want = if row < w.n && col < w.k {
                                let z = w.zeros.as_ref().unwrap()[row * gpr + col / 32] as f32;
                                (nibble(&w, row, col) as f32 - z) * w.scales[row * gpr + col / 32]
                            } else {
                                0.0 // padding must contribute nothing
                            };
                            assert_eq!(got, want, "row {row} col {col}");
                        }
                    }
                }
            }
        }
    }

    /// The quantizer's own weights: what the kernel reconstructs from the repacked arrays,
    /// `(magic + q - zero_bias) * scale` before its single bf16 rounding, equals
    /// `Int4Weight::dequantize` exactly (symmetric and asymmetric, every group size, ragged k).
    #[test]
    fn kernel_dequant_equals_the_quantizer() {
        for (gs, sym, n, k) in [
            (128, true, 20, 300),
            (64, false, 33, 130),
            (32, false, 16, 64),
            (32, true, 7, 45),
        ] {
            let mut seed = 0x1234_5678_9abc_def1u64 ^ (n * k) as u64;
            let dense: Vec<f32> = (0..n * k)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed % 2001) as f32 / 1000.0 - 1.0
                })
                .collect();
            let config = Int4Config {
                group_size: gs,
                symmetric: sym,
                scale_dtype: ScaleDType::BF16,
            };
            let w = Int4Weight::quantize(&dense, n, k, config).unwrap();
            let want = w.dequantize();
            let r = repack_int4(&w, Act16::BF16).unwrap();
            assert_eq!(unpack_int4(&r).unwrap(), w);
            for tile in 0..n.div_ceil(16) {
                for slab in 0..r.k_slabs {
                    for lane in 0..32 {
                        for j in 0..4 {
                            let word = r.qweight[((tile * r.k_slabs + slab) * 32 + lane) * 4 + j];
                            for i in 0..8 {
                                let (row, col) = nibble_coords(tile, slab, lane, j, i);
                                if row >= n || col >= k {
                                    continue;
                                }
                                let q = ((word >> (4 * i)) & 15) as f32;
                                let at = (tile * r.groups + col / gs) * 16 + scale_slot(row % 16);
                                let zb = r
                                    .zero_bias
                                    .as_ref()
                                    .map_or(r.act.magic() + 8.0, |z| r.act.from_bits(z[at]));
                                let got = (r.act.magic() + q - zb) * r.act.from_bits(r.scales[at]);
                                assert_eq!(
                                    got,
                                    want[row * k + col],
                                    "g{gs} sym={sym} ({row}, {col})"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_inconsistent_weights() {
        let mut w = random_weight(16, 64, 128, true, 1);
        w.packed.pop();
        assert!(matches!(
            repack_int4(&w, Act16::BF16),
            Err(Error::Shape { .. })
        ));
        let mut w = random_weight(16, 64, 128, true, 1);
        w.config.group_size = 96;
        assert!(matches!(
            repack_int4(&w, Act16::BF16),
            Err(Error::InvalidArgument { .. })
        ));
        let mut w = random_weight(16, 64, 128, false, 1);
        w.zeros.as_mut().unwrap()[0] = 16;
        assert!(matches!(
            repack_int4(&w, Act16::BF16),
            Err(Error::InvalidArgument { .. })
        ));
        let mut w = random_weight(16, 64, 128, true, 1);
        w.scales[0] = f32::NAN;
        assert!(repack_int4(&w, Act16::BF16).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// repack -> unpack returns the weight bit for bit (bf16 scales, bf16 activations), on odd
        /// shapes: n not a multiple of 16, k not a multiple of 64 or of the group, k odd.
        #[test]
        fn round_trip_bf16(n in 1usize..50, k in 1usize..300, gsi in 0usize..3, sym: bool, seed: u64) {
            let gs = [32, 64, 128][gsi];
            let w = random_weight(n, k, gs, sym, seed);
            let r = repack_int4(&w, Act16::BF16).unwrap();
            prop_assert_eq!(r.qweight.len(), n.div_ceil(16) * k.div_ceil(64) * 128);
            prop_assert_eq!(unpack_int4(&r).unwrap(), w);
        }

        /// For f16 activations the scales round to f16; the codes and zero points survive exactly,
        /// and repacking the unpacked weight is a fixed point.
        #[test]
        fn round_trip_f16(n in 1usize..40, k in 1usize..260, sym: bool, seed: u64) {
            let w = random_weight(n, k, 128, sym, seed);
            let r = repack_int4(&w, Act16::F16).unwrap();
            let u = unpack_int4(&r).unwrap();
            prop_assert_eq!(&u.packed, &w.packed);
            prop_assert_eq!(&u.zeros, &w.zeros);
            for (a, b) in u.scales.iter().zip(&w.scales) {
                prop_assert_eq!(*a, f16::from_f32(*b).to_f32());
            }
            prop_assert_eq!(repack_int4(&u, Act16::F16).unwrap(), r);
        }
    }
}
