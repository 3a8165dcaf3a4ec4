//! Quantized weight formats, bit-exact and shared by the CPU reference and the GPU kernels.
//!
//! Every weight is logically `[n, k]` = `[out_features, in_features]` (Hugging Face `Linear` layout),
//! and a GEMM computes `Y[m, n] = X[m, k] · Wᵀ`.

pub mod fp8;
pub mod int4;
pub mod repack;

use crate::error::{check_len, Result};

pub use fp8::{Fp8Format, Fp8Scaling, Fp8Weight};
pub use int4::{Int4Config, Int4Weight, ScaleDType};

/// A dense f32 weight `[n, k]`, row-major (the CPU path's unquantized form).
#[derive(Clone, Debug, PartialEq)]
pub struct DenseWeight {
    pub n: usize,
    pub k: usize,
    pub data: Vec<f32>,
}

/// A linear layer's weight in any supported format.
#[derive(Clone, Debug, PartialEq)]
pub enum Weight {
    Dense(DenseWeight),
    Int4(Int4Weight),
    Fp8(Fp8Weight),
}

impl Weight {
    /// Output features.
    pub fn n(&self) -> usize {
        match self {
            Weight::Dense(w) => w.n,
            Weight::Int4(w) => w.n,
            Weight::Fp8(w) => w.n,
        }
    }
    /// Input features.
    pub fn k(&self) -> usize {
        match self {
            Weight::Dense(w) => w.k,
            Weight::Int4(w) => w.k,
            Weight::Fp8(w) => w.k,
        }
    }
    /// Checks the fields agree (lengths, scales, codes); see each format's `validate`.
    pub fn validate(&self) -> Result<()> {
        match self {
            Weight::Dense(w) => check_len("DenseWeight", "data", w.data.len(), w.n * w.k),
            Weight::Int4(w) => w.validate(),
            Weight::Fp8(w) => w.validate(),
        }
    }
    /// Row `i` (output feature) as f32 into `out[..k]`, exactly as [`Self::dequantize`] gives it.
    /// Expects a valid weight ([`Self::validate`]).
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        match self {
            Weight::Dense(w) => out[..w.k].copy_from_slice(&w.data[i * w.k..(i + 1) * w.k]),
            Weight::Int4(w) => w.dequantize_row(i, out),
            Weight::Fp8(w) => w.dequantize_row(i, out),
        }
    }
    /// The weight as dense f32 `[n, k]` (exactly what the kernels compute with).
    /// Expects a valid weight ([`Self::validate`]).
    pub fn dequantize(&self) -> Vec<f32> {
        match self {
            Weight::Dense(w) => w.data.clone(),
            Weight::Int4(w) => w.dequantize(),
            Weight::Fp8(w) => w.dequantize(),
        }
    }
    /// Bytes this weight occupies (codes plus scales).
    pub fn nbytes(&self) -> usize {
        match self {
            Weight::Dense(w) => w.data.len() * 4,
            Weight::Int4(w) => w.nbytes(),
            Weight::Fp8(w) => w.nbytes(),
        }
    }
}
