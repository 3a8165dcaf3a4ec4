//! Dequant-GEMM `Y[m, n] = X[m, k] · Wᵀ`. OWNER: quant helper.
use crate::error::Result;
use crate::quant::{Fp8Weight, Weight};

/// W16/W4/W8 with A in f32: dequantize W exactly as the kernels do, accumulate in f32.
pub fn gemm(x: &[f32], m: usize, w: &Weight) -> Result<Vec<f32>> {
    let _ = (x, m, w);
    todo!("quant helper")
}

/// W8A8: X quantized per token to e4m3 (dynamic scales), fp8 x fp8 products accumulated in f32,
/// then scaled by `x_scale[row] * w_scale[col]`.
pub fn gemm_w8a8(x: &[f32], m: usize, w: &Fp8Weight) -> Result<Vec<f32>> {
    let _ = (x, m, w);
    todo!("quant helper")
}
