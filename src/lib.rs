//! llama4-cuda: CUDA kernels, a C ABI, a safe Rust layer and a CPU reference for Llama 4 Scout and
//! Maverick. See README.md and docs/.

pub mod device;
pub mod dtype;
pub mod error;
pub mod kv_cache;
pub mod model;
pub mod ops;
pub mod quant;
pub mod reference;
pub mod sys;

pub use dtype::DType;
pub use error::{Error, Result};
