//! GPU test support, shared by the tests/gpu_*.rs files (`mod common;` then `use common::gpu::...`;
//! random data from [`super::Rng`]: `Rng::fresh()` gives a per-run seed for failure messages, and
//! `rng.signed(0.05, 4.0)` values that are never zero; compare with [`super::rel_err`], which
//! counts a NaN left in a poisoned output as an infinite error).
//!
//! - [`Elem`]: the float storage types the kernels take (f32, f16, bf16) and their f32 conversions;
//! - [`f32s`], [`rounded`]: to f32, and f32 rounded through a storage type (RNE, as kernels store);
//! - [`random`]: `n` random values of a storage type; [`poisoned`]: a NaN-filled device buffer.

use half::{bf16, f16};
use llama4_cuda::device::{CudaSlice, Device, DeviceElem};

use super::Rng;

/// A float storage type the kernels take.
pub trait Elem: DeviceElem {
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}
impl Elem for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}
impl Elem for f16 {
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}
impl Elem for bf16 {
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// The values as f32 (exact for every [`Elem`]).
pub fn f32s<T: Elem>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// f32 values rounded to T (round to nearest even, as the kernels store) and back.
pub fn rounded<T: Elem>(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| T::from_f32(x).to_f32()).collect()
}

/// `n` values in ±[0.05, 4) (never zero) stored as T.
pub fn random<T: Elem>(rng: &mut Rng, n: usize) -> Vec<T> {
    (0..n).map(|_| T::from_f32(rng.signed(0.05, 4.0))).collect()
}

/// A device buffer of `n` NaNs: an output element a kernel fails to write stays NaN.
pub fn poisoned<T: Elem>(dev: &Device, n: usize) -> CudaSlice<T> {
    dev.filled(n, T::from_f32(f32::NAN))
        .expect("poisoned output buffer")
}
