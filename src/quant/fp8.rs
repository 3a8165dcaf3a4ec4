//! fp8 e4m3fn and e5m2: encoding (round to nearest even, saturating), decoding, and fp8 weight /
//! activation scaling.
//! OWNER: quant helper. Signatures are the contract; bodies to be written.

use crate::error::Result;

/// The two fp8 encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Format {
    E4M3,
    E5M2,
}

/// How an fp8 weight is scaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Scaling {
    /// One scale for the whole tensor.
    PerTensor,
    /// One scale per output channel (row of `[n, k]`).
    PerChannel,
}

/// An fp8 e4m3 weight `[n, k]`: `w[i, j] = decode(codes[i*k + j]) * scale(i)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Fp8Weight {
    pub n: usize,
    pub k: usize,
    pub codes: Vec<u8>,
    pub scaling: Fp8Scaling,
    /// `[1]` per tensor, `[n]` per channel.
    pub scales: Vec<f32>,
}

/// Largest finite e4m3fn value.
pub const E4M3_MAX: f32 = 448.0;
/// Largest finite e5m2 value.
pub const E5M2_MAX: f32 = 57344.0;

pub fn e4m3_encode(x: f32) -> u8 {
    let _ = x;
    todo!("quant helper")
}
pub fn e4m3_decode(code: u8) -> f32 {
    let _ = code;
    todo!("quant helper")
}
pub fn e5m2_encode(x: f32) -> u8 {
    let _ = x;
    todo!("quant helper")
}
pub fn e5m2_decode(code: u8) -> f32 {
    let _ = code;
    todo!("quant helper")
}

impl Fp8Weight {
    /// Quantize a dense `[n, k]` f32 weight (symmetric, scale = absmax / 448).
    pub fn quantize(w: &[f32], n: usize, k: usize, scaling: Fp8Scaling) -> Result<Self> {
        let _ = (w, n, k, scaling);
        todo!("quant helper")
    }
    /// Dense f32 `[n, k]`.
    pub fn dequantize(&self) -> Vec<f32> {
        todo!("quant helper")
    }
    pub fn nbytes(&self) -> usize {
        self.codes.len() + 4 * self.scales.len()
    }
}

/// Dynamic per-token activation quantization of `x[m, k]`: returns (e4m3 codes `[m, k]`, scales `[m]`),
/// scale = absmax(row) / 448 (a zero row gets scale 1).
pub fn quantize_per_token(x: &[f32], m: usize, k: usize) -> Result<(Vec<u8>, Vec<f32>)> {
    let _ = (x, m, k);
    todo!("quant helper")
}
