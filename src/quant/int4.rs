//! int4 group-wise quantization along K.
//! OWNER: quant helper. Signatures are the contract; bodies to be written.

use crate::error::Result;

/// Dtype the group scales are stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleDType {
    F32,
    BF16,
}

/// How to quantize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Int4Config {
    /// 32, 64 or 128.
    pub group_size: usize,
    /// Symmetric (Meta's recipe: scale = absmax / 8, q in [-8, 7]) or asymmetric (scale, zero point, q in [0, 15]).
    pub symmetric: bool,
    pub scale_dtype: ScaleDType,
}

impl Default for Int4Config {
    /// Meta's recipe: group 128, symmetric, bf16 scales.
    fn default() -> Self {
        Int4Config { group_size: 128, symmetric: true, scale_dtype: ScaleDType::BF16 }
    }
}

/// An int4 weight `[n, k]`. Row i, column j sits in byte `i * ceil(k/2) + j/2`, low nibble for even j.
/// Groups run along k; the last group of a row may be short when k is not a multiple of the group.
/// Symmetric: `w = (q - 8) * scale`, nibble stores q + 8 ... (exact nibble convention documented in the impl).
#[derive(Clone, Debug, PartialEq)]
pub struct Int4Weight {
    pub n: usize,
    pub k: usize,
    pub config: Int4Config,
    pub packed: Vec<u8>,
    /// `[n, ceil(k / group)]`, already rounded to `config.scale_dtype`.
    pub scales: Vec<f32>,
    /// Asymmetric only: `[n, ceil(k / group)]` zero points in [0, 15].
    pub zeros: Option<Vec<u8>>,
}

impl Int4Weight {
    pub fn quantize(w: &[f32], n: usize, k: usize, config: Int4Config) -> Result<Self> {
        let _ = (w, n, k, config);
        todo!("quant helper")
    }
    pub fn dequantize(&self) -> Vec<f32> {
        todo!("quant helper")
    }
    pub fn groups_per_row(&self) -> usize {
        self.k.div_ceil(self.config.group_size)
    }
    pub fn nbytes(&self) -> usize {
        let scale_bytes = match self.config.scale_dtype {
            ScaleDType::F32 => 4,
            ScaleDType::BF16 => 2,
        };
        self.packed.len() + self.scales.len() * scale_bytes + self.zeros.as_ref().map_or(0, |z| z.len())
    }
}
