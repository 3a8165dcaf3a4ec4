//! The CPU reference of every kernel: the specification. Simple, obviously right, f32 accumulation.
//! Activations are f32 `[rows, features]` row-major; weights are [`crate::quant::Weight`] `[n, k]`.

pub mod attention;
pub mod elementwise;
pub mod gemm;
pub mod moe;
pub mod norm;
pub mod rope;
pub mod sample;
