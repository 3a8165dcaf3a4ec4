//! int4 group-wise quantization along K.
//!
//! Rounding is `f32::round_ties_even` (torch.round) of one f32 division `w / scale`; the scale is
//! first rounded to its storage dtype, so dequantization uses exactly the stored scale.

use half::bf16;

use crate::error::{check_len, Error, Result};

/// Dtype the group scales are stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleDType {
    F32,
    BF16,
}

impl ScaleDType {
    /// `s` rounded (to nearest even) to this dtype, back in f32.
    pub fn round(self, s: f32) -> f32 {
        match self {
            ScaleDType::F32 => s,
            ScaleDType::BF16 => bf16::from_f32(s).to_f32(),
        }
    }
}

/// Group sizes the kernels are built for.
pub const GROUP_SIZES: [usize; 3] = [32, 64, 128];

/// How to quantize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Int4Config {
    /// 32, 64 or 128 ([`GROUP_SIZES`]).
    pub group_size: usize,
    /// Symmetric (Meta's recipe: scale = absmax / 8, q in [-8, 7]) or asymmetric (scale, zero point, q in [0, 15]).
    pub symmetric: bool,
    pub scale_dtype: ScaleDType,
}

impl Default for Int4Config {
    /// Meta's recipe: group 128, symmetric, bf16 scales.
    fn default() -> Self {
        Int4Config {
            group_size: 128,
            symmetric: true,
            scale_dtype: ScaleDType::BF16,
        }
    }
}

impl Int4Config {
    /// Fails with [`Error::InvalidArgument`] unless the group size is one of [`GROUP_SIZES`].
    pub fn validate(&self) -> Result<()> {
        if GROUP_SIZES.contains(&self.group_size) {
            Ok(())
        } else {
            Err(Error::invalid(
                "Int4Config",
                format!(
                    "group_size {} is not one of {GROUP_SIZES:?}",
                    self.group_size
                ),
            ))
        }
    }
}

/// An int4 weight `[n, k]`, groups of `config.group_size` along k (the last group of a row is short
/// when k is not a multiple of the group).
///
/// Packing: row i, column j sits in byte `i * ceil(k/2) + j/2`, the LOW nibble for even j and the
/// high nibble for odd j; each row starts on a byte boundary, and when k is odd the unused high nibble
/// of the row's last byte is 0. Every nibble is an unsigned u in [0, 15]:
/// - symmetric: `u = q + 8` for q in [-8, 7]; `w = (u - 8) * scale`;
/// - asymmetric: `u = q` in [0, 15]; `w = (u - zero) * scale`, zero point in [0, 15].
///
/// Both are one f32 product of a small exact integer and the stored scale.
#[derive(Clone, Debug, PartialEq)]
pub struct Int4Weight {
    pub n: usize,
    pub k: usize,
    pub config: Int4Config,
    /// `[n, ceil(k / 2)]` nibbles, see the struct docs.
    pub packed: Vec<u8>,
    /// `[n, ceil(k / group)]`, already rounded to `config.scale_dtype`.
    pub scales: Vec<f32>,
    /// Asymmetric only: `[n, ceil(k / group)]` zero points in [0, 15].
    pub zeros: Option<Vec<u8>>,
}

/// Quantization of one group: (scale, zero point or None, nibbles).
fn quantize_group(g: &[f32], cfg: &Int4Config, nibbles: &mut Vec<u8>) -> (f32, Option<u8>) {
    if cfg.symmetric {
        let absmax = g.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = cfg.scale_dtype.round(absmax / 8.0);
        nibbles.extend(
            g.iter()
                .map(|&v| (quantize_value(v, scale).clamp(-8.0, 7.0) + 8.0) as u8),
        );
        (scale, None)
    } else {
        // The range always holds 0 (GPTQ / compressed-tensors), so the zero point lies in [0, 15].
        let (lo, hi) = g
            .iter()
            .fold((0.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let scale = cfg.scale_dtype.round((hi - lo) / 15.0);
        let zero = (-quantize_value(lo, scale)).clamp(0.0, 15.0);
        nibbles.extend(
            g.iter()
                .map(|&v| (quantize_value(v, scale) + zero).clamp(0.0, 15.0) as u8),
        );
        (scale, Some(zero as u8))
    }
}

/// `round_ties_even(v / scale)`, and 0 for a zero scale (an all-zero group, or one whose scale
/// underflowed), so no NaN ever appears.
fn quantize_value(v: f32, scale: f32) -> f32 {
    if scale > 0.0 {
        (v / scale).round_ties_even()
    } else {
        0.0
    }
}

impl Int4Weight {
    /// Quantize a dense f32 `[n, k]` weight group-wise (see the struct docs for the formats).
    /// Errors: `w.len() != n * k`, a group size not in [`GROUP_SIZES`], a non-finite weight.
    pub fn quantize(w: &[f32], n: usize, k: usize, config: Int4Config) -> Result<Self> {
        const OP: &str = "Int4Weight::quantize";
        config.validate()?;
        check_len(OP, "weight", w.len(), n * k)?;
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(
                OP,
                format!("weight[{i}] = {} is not finite", w[i]),
            ));
        }
        let groups = k.div_ceil(config.group_size);
        let mut packed = Vec::with_capacity(n * k.div_ceil(2));
        let mut scales = Vec::with_capacity(n * groups);
        let mut zeros = Vec::with_capacity(if config.symmetric { 0 } else { n * groups });
        let mut nibbles = Vec::with_capacity(k);
        for i in 0..n {
            nibbles.clear();
            for g in w[i * k..(i + 1) * k].chunks(config.group_size) {
                let (s, z) = quantize_group(g, &config, &mut nibbles);
                scales.push(s);
                zeros.extend(z);
            }
            pack_row(&nibbles, &mut packed);
        }
        let zeros = (!config.symmetric).then_some(zeros);
        Ok(Int4Weight {
            n,
            k,
            config,
            packed,
            scales,
            zeros,
        })
    }

    /// Checks the fields agree: group size, lengths, zero points present iff asymmetric and in
    /// [0, 15], scales finite and representable in `scale_dtype`. A loader that fills the public
    /// fields itself calls this; [`crate::reference::gemm`] calls it before reading the weight.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "Int4Weight";
        self.config.validate()?;
        let per_row = self.groups_per_row();
        check_len(OP, "packed", self.packed.len(), self.n * self.k.div_ceil(2))?;
        check_len(OP, "scales", self.scales.len(), self.n * per_row)?;
        for (i, &s) in self.scales.iter().enumerate() {
            if !s.is_finite() || self.config.scale_dtype.round(s).to_bits() != s.to_bits() {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "scales[{i}] = {s} is not a finite {:?} value",
                        self.config.scale_dtype
                    ),
                ));
            }
        }
        match (&self.zeros, self.config.symmetric) {
            (None, true) => Ok(()),
            (Some(z), false) => {
                check_len(OP, "zeros", z.len(), self.n * per_row)?;
                match z.iter().position(|&v| v > 15) {
                    Some(i) => Err(Error::invalid(
                        OP,
                        format!("zeros[{i}] = {} is above 15", z[i]),
                    )),
                    None => Ok(()),
                }
            }
            (Some(_), true) => Err(Error::invalid(OP, "symmetric weight carries zero points")),
            (None, false) => Err(Error::invalid(OP, "asymmetric weight has no zero points")),
        }
    }

    /// The unsigned nibble of row `i`, column `j` (see the struct docs).
    pub fn nibble(&self, i: usize, j: usize) -> u8 {
        let b = self.packed[i * self.k.div_ceil(2) + j / 2];
        if j % 2 == 0 {
            b & 0x0f
        } else {
            b >> 4
        }
    }

    /// Row `i` dequantized into `out[..k]`. Expects a valid weight ([`Self::validate`]).
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        let per_row = self.groups_per_row();
        let row_bytes = self.k.div_ceil(2);
        let bytes = &self.packed[i * row_bytes..(i + 1) * row_bytes];
        // Groups hold an even number of columns (32, 64, 128), so a byte never straddles two.
        let (gs, gb) = (self.config.group_size, self.config.group_size / 2);
        for (g, (chunk, gbytes)) in out[..self.k]
            .chunks_mut(gs)
            .zip(bytes.chunks(gb))
            .enumerate()
        {
            let s = self.scales[i * per_row + g];
            let zero = self.zeros.as_ref().map_or(8, |z| z[i * per_row + g] as i32);
            // The 16 values this group can take: the same one f32 product per nibble.
            let value: [f32; 16] = std::array::from_fn(|u| (u as i32 - zero) as f32 * s);
            for (pair, &b) in chunk.chunks_mut(2).zip(gbytes) {
                pair[0] = value[(b & 0x0f) as usize];
                if let Some(hi) = pair.get_mut(1) {
                    *hi = value[(b >> 4) as usize];
                }
            }
        }
    }

    /// Dense f32 `[n, k]`. Expects a valid weight ([`Self::validate`]).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.n * self.k];
        if self.k > 0 {
            for (i, row) in out.chunks_exact_mut(self.k).enumerate() {
                self.dequantize_row(i, row);
            }
        }
        out
    }

    /// Unsigned nibbles `[n, k]`, one per byte (the inverse of the packing).
    pub fn unpack(&self) -> Vec<u8> {
        (0..self.n)
            .flat_map(|i| (0..self.k).map(move |j| self.nibble(i, j)))
            .collect()
    }

    /// Groups in one row: `ceil(k / group_size)`.
    pub fn groups_per_row(&self) -> usize {
        self.k.div_ceil(self.config.group_size)
    }

    /// Bytes of nibbles, scales (in their storage dtype) and zero points.
    pub fn nbytes(&self) -> usize {
        let scale_bytes = match self.config.scale_dtype {
            ScaleDType::F32 => 4,
            ScaleDType::BF16 => 2,
        };
        self.packed.len()
            + self.scales.len() * scale_bytes
            + self.zeros.as_ref().map_or(0, |z| z.len())
    }
}

/// Packs one row of unsigned nibbles (each < 16), low nibble first, into `out` (see the struct docs).
pub fn pack_row(nibbles: &[u8], out: &mut Vec<u8>) {
    out.extend(
        nibbles
            .chunks(2)
            .map(|p| (p[0] & 0x0f) | (p.get(1).copied().unwrap_or(0) << 4)),
    );
}

/// Packs unsigned nibbles `[n, k]` (one per byte, each < 16) into the [`Int4Weight`] layout.
/// Errors: wrong length or a value above 15.
pub fn pack(nibbles: &[u8], n: usize, k: usize) -> Result<Vec<u8>> {
    check_len("int4::pack", "nibbles", nibbles.len(), n * k)?;
    if let Some(i) = nibbles.iter().position(|&v| v > 15) {
        return Err(Error::invalid(
            "int4::pack",
            format!("nibbles[{i}] = {} is above 15", nibbles[i]),
        ));
    }
    let mut out = Vec::with_capacity(n * k.div_ceil(2));
    if k > 0 {
        for row in nibbles.chunks_exact(k) {
            pack_row(row, &mut out);
        }
    }
    Ok(out)
}
