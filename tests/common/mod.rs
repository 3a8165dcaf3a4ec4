//! Test helpers shared by the quant / gemm / moe and GPU tests: a seeded generator, naive f64
//! evaluations written independently of the library (they read the stored formats field by field),
//! the relative error every comparison uses, and GPU test support ([`gpu`]).
#![allow(dead_code)]

use llama4_cuda::quant::{Fp8Scaling, Weight};

#[path = "rng.rs"]
mod rng;
pub use rng::Rng;

#[path = "gpu.rs"]
pub mod gpu;

/// The value of an fp8 code from the textbook formula: (-1)^s 2^(e - bias) (1 + m / 2^mbits), or
/// the subnormal m / 2^mbits 2^(1 - bias); e4m3fn has no infinities and NaN at S.1111.111.
pub fn fp8_value(code: u8, e4m3: bool) -> f64 {
    let (mbits, ebits, bias) = if e4m3 { (3, 4, 7) } else { (2, 5, 15) };
    let s = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((code >> mbits) & ((1 << ebits) - 1)) as i32;
    let m = (code & ((1 << mbits) - 1)) as f64;
    let frac = m / f64::from(1u32 << mbits);
    let emax = (1 << ebits) - 1;
    if e4m3 && code & 0x7f == 0x7f {
        return f64::NAN;
    }
    if !e4m3 && e == emax {
        return if m == 0.0 {
            s * f64::INFINITY
        } else {
            f64::NAN
        };
    }
    if e == 0 {
        s * frac * 2f64.powi(1 - bias)
    } else {
        s * (1.0 + frac) * 2f64.powi(e - bias)
    }
}

/// A weight as f64 `[n, k]`, decoded from its stored fields by the documented layout.
pub fn naive_dequant(w: &Weight) -> Vec<f64> {
    match w {
        Weight::Dense(d) => d.data.iter().map(|&v| v as f64).collect(),
        Weight::Fp8(f) => (0..f.n * f.k)
            .map(|idx| {
                let i = idx / f.k;
                let s = match f.scaling {
                    Fp8Scaling::PerTensor => f.scales[0],
                    Fp8Scaling::PerChannel => f.scales[i],
                };
                fp8_value(f.codes[idx], true) * s as f64
            })
            .collect(),
        Weight::Int4(q) => {
            let groups = q.k.div_ceil(q.config.group_size);
            let row_bytes = q.k.div_ceil(2);
            let mut out = Vec::with_capacity(q.n * q.k);
            for i in 0..q.n {
                for j in 0..q.k {
                    let byte = q.packed[i * row_bytes + j / 2];
                    let u = if j % 2 == 0 { byte & 15 } else { byte >> 4 } as f64;
                    let g = i * groups + j / q.config.group_size;
                    let zero = q.zeros.as_ref().map_or(8.0, |z| z[g] as f64);
                    out.push((u - zero) * q.scales[g] as f64);
                }
            }
            out
        }
    }
}

/// `Y[m, n] = X[m, k] · Wᵀ` with W `[n, k]`, triple loop in f64.
pub fn naive_matmul_t(x: &[f64], m: usize, k: usize, w: &[f64], n: usize) -> Vec<f64> {
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0;
            for l in 0..k {
                acc += x[i * k + l] * w[j * k + l];
            }
            y[i * n + j] = acc;
        }
    }
    y
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

pub fn sigmoid64(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

pub fn silu64(x: f64) -> f64 {
    x * sigmoid64(x)
}

/// `max|got - want| / max|want|` (0 when both are empty; `want` must not be all zero). A NaN in `got`
/// (an unwritten poisoned output, or a kernel's NaN) is an infinite error: `f64::max` would skip it.
pub fn rel_err<W: Copy + Into<f64>>(got: &[f32], want: &[W]) -> f64 {
    assert_eq!(got.len(), want.len(), "length");
    if want.is_empty() {
        return 0.0;
    }
    if got.iter().any(|g| g.is_nan()) {
        return f64::INFINITY;
    }
    let scale = want.iter().fold(0.0f64, |m, &v| m.max(v.into().abs()));
    assert!(scale > 0.0, "reference is all zero: the test cannot fail");
    let err = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w.into()).abs()));
    err / scale
}

/// Scales row r of the row-major `[_, k]` matrix `v` by 1, 1/4, 3, 1/2 or 2 (r mod 5): rows of
/// random values otherwise share one amax, so a kernel that applied another row's per-channel /
/// per-token scale (or group scale) would be off by ~1e-4 only and pass any tolerance.
pub fn vary_rows(v: &mut [f32], k: usize) {
    const F: [f32; 5] = [1.0, 0.25, 3.0, 0.5, 2.0];
    for (r, row) in v.chunks_mut(k).enumerate() {
        row.iter_mut().for_each(|x| *x *= F[r % 5]);
    }
}
