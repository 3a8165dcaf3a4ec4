//! Dequant-GEMM `Y[m, n] = X[m, k] · Wᵀ`, and the fp8 W8A8 GEMM.
//!
//! Every output element is one [`dot`] of an X row and a W row dequantized exactly as stored
//! ([`Weight::dequantize_row`]), accumulated in f32. Work is split over the n weight rows with rayon;
//! each weight row is dequantized once and used for all m rows of X.
use rayon::prelude::*;

use crate::error::{check_len, Result};
use crate::quant::fp8::quantize_per_token;
use crate::quant::{Fp8Format, Fp8Weight, Weight};

/// f32 dot product of `a` and `b[..a.len()]`, eight interleaved partial sums (lane l takes elements
/// l, l + 8, ...) added pairwise at the end, then the tail: a fixed order, so results are
/// reproducible, and one the compiler vectorises.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let b = &b[..a.len()];
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (pa, pb) in ca.zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(pa).zip(pb) {
            *s += x * y;
        }
    }
    (((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))) + tail
}

/// `Y[m, n]` with `Y[i, j] = epilogue(i, j, dot(X[i], row_j))`, where `fill_row(j, buf)` writes
/// weight row j (k values) into `buf`. Parallel over j; each weight row is produced once.
fn matmul_by_rows(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    fill_row: impl Fn(usize, &mut [f32]) + Sync,
    epilogue: impl Fn(usize, usize, f32) -> f32 + Sync,
) -> Vec<f32> {
    if m == 0 || n == 0 {
        return vec![0.0; m * n];
    }
    // Column-major while computing (one task owns one output column), transposed at the end.
    let mut yt = vec![0.0f32; n * m];
    yt.par_chunks_mut(m).enumerate().for_each_init(
        || vec![0.0f32; k],
        |row, (j, col)| {
            fill_row(j, row);
            for (i, y) in col.iter_mut().enumerate() {
                *y = epilogue(i, j, dot(&x[i * k..(i + 1) * k], row));
            }
        },
    );
    let mut y = vec![0.0f32; m * n];
    for (j, col) in yt.chunks_exact(m).enumerate() {
        for (i, &v) in col.iter().enumerate() {
            y[i * n + j] = v;
        }
    }
    y
}

/// W16/W4/W8 with A in f32: `Y[m, n] = X[m, k] · Wᵀ` with W dequantized exactly as stored, f32
/// accumulation ([`dot`]). Errors: an inconsistent weight, `x.len() != m * k`.
pub fn gemm(x: &[f32], m: usize, w: &Weight) -> Result<Vec<f32>> {
    w.validate()?;
    let (n, k) = (w.n(), w.k());
    check_len("gemm", "x", x.len(), m * k)?;
    Ok(matmul_by_rows(
        x,
        m,
        k,
        n,
        |j, row| w.dequantize_row(j, row),
        |_, _, acc| acc,
    ))
}

/// W8A8: X quantized per token to e4m3 ([`quantize_per_token`]), fp8 × fp8 products (exact in f32)
/// accumulated in f32 ([`dot`]), then `Y[i, j] = (acc * x_scale[i]) * w_scale(j)`.
/// Errors: an inconsistent weight, `x.len() != m * k`, a non-finite activation.
pub fn gemm_w8a8(x: &[f32], m: usize, w: &Fp8Weight) -> Result<Vec<f32>> {
    w.validate()?;
    let (n, k) = (w.n, w.k);
    check_len("gemm_w8a8", "x", x.len(), m * k)?;
    let (x_codes, x_scales) = quantize_per_token(x, m, k)?;
    let table = Fp8Format::E4M3.table();
    let xq: Vec<f32> = x_codes.iter().map(|&c| table[c as usize]).collect();
    let fill_row = |j: usize, row: &mut [f32]| {
        for (o, &c) in row.iter_mut().zip(&w.codes[j * k..(j + 1) * k]) {
            *o = table[c as usize];
        }
    };
    Ok(matmul_by_rows(&xq, m, k, n, fill_row, |i, j, acc| {
        acc * x_scales[i] * w.scale(j)
    }))
}
