//! Synthetic device buffers (kernels/synthetic.cu): bf16 values, int4 words and e4m3 codes from a
//! counter-based hash, so a model at the real shapes runs with no checkpoint. Element `i` of tensor
//! `tensor` under `seed` depends on nothing else; [`synthetic_bits`] is the host mirror.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtrMut};
use half::bf16;

use super::{launch, to_i64};
use crate::error::{Error, Result};
use crate::sys;

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 64 random bits of element `i` (host mirror of the kernel's `bits_at`).
pub fn synthetic_bits(seed: u64, tensor: u64, i: u64) -> u64 {
    mix64(mix64(seed ^ tensor.wrapping_mul(GOLDEN)).wrapping_add(i.wrapping_mul(GOLDEN)))
}

/// Element `i` of a [`Synth::Uniform`] / [`Synth::Range`] fill over `[lo, hi)`, as bf16.
pub fn synthetic_bf16(seed: u64, tensor: u64, i: u64, lo: f32, hi: f32) -> bf16 {
    let u = (synthetic_bits(seed, tensor, i) >> 40) as f32 * (1.0 / 16_777_216.0);
    bf16::from_f32(lo + (hi - lo) * u)
}

/// Element `i` of a [`Synth::Fp8Codes`] fill: sign, exponent field 3..10, mantissa.
pub fn synthetic_fp8(seed: u64, tensor: u64, i: u64) -> u8 {
    let r = synthetic_bits(seed, tensor, i);
    let sign = ((r >> 63) as u8) << 7;
    let expo = 3 + ((r >> 32) & 7) as u8;
    let mant = ((r >> 40) & 7) as u8;
    sign | (expo << 3) | mant
}

/// Element `i` of a [`Synth::U32Bits`] fill.
pub fn synthetic_u32(seed: u64, tensor: u64, i: u64) -> u32 {
    (synthetic_bits(seed, tensor, i) >> 32) as u32
}

/// What a fill writes, and into which element type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Synth {
    /// bf16 uniform in `[-amp, amp)`.
    Uniform { amp: f32 },
    /// bf16 uniform in `[lo, hi)`.
    Range { lo: f32, hi: f32 },
    /// Raw u32 words.
    U32Bits,
    /// e4m3 codes (never NaN).
    Fp8Codes,
}

/// A buffer element type a [`Synth`] kind can fill.
pub trait SynthElem: cudarc::driver::DeviceRepr {
    /// Whether `kind` writes this type.
    fn takes(kind: Synth) -> bool;
}
impl SynthElem for bf16 {
    fn takes(kind: Synth) -> bool {
        matches!(kind, Synth::Uniform { .. } | Synth::Range { .. })
    }
}
impl SynthElem for u32 {
    fn takes(kind: Synth) -> bool {
        kind == Synth::U32Bits
    }
}
impl SynthElem for u8 {
    fn takes(kind: Synth) -> bool {
        kind == Synth::Fp8Codes
    }
}
/// bf16 bits as u16 (int4 scales are stored as raw bf16 bits).
impl SynthElem for u16 {
    fn takes(kind: Synth) -> bool {
        matches!(kind, Synth::Uniform { .. } | Synth::Range { .. })
    }
}

/// Fills all of `out` with `kind` from `(seed, tensor)`.
pub fn synthetic_fill<T: SynthElem>(
    stream: &Arc<CudaStream>,
    out: &mut impl DevicePtrMut<T>,
    kind: Synth,
    seed: u64,
    tensor: u64,
) -> Result<()> {
    const OP: &str = "synthetic_fill";
    if !T::takes(kind) {
        return Err(Error::DType {
            op: OP,
            msg: format!(
                "{kind:?} cannot fill a buffer of {}",
                std::any::type_name::<T>()
            ),
        });
    }
    let (lo, hi, k) = match kind {
        Synth::Uniform { amp } => (-amp, amp, sys::l4c_synth_kind::L4C_SYNTH_BF16_UNIFORM),
        Synth::Range { lo, hi } => (lo, hi, sys::l4c_synth_kind::L4C_SYNTH_BF16_RANGE),
        Synth::U32Bits => (0.0, 0.0, sys::l4c_synth_kind::L4C_SYNTH_U32_BITS),
        Synth::Fp8Codes => (0.0, 0.0, sys::l4c_synth_kind::L4C_SYNTH_FP8_CODES),
    };
    if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
        return Err(Error::invalid(
            OP,
            format!("range [{lo}, {hi}) is not finite and ordered"),
        ));
    }
    let n = to_i64(OP, "out.len()", out.len())?;
    launch(OP, stream, |s| {
        let (po, _g) = out.device_ptr_mut(stream);
        let p = sys::l4c_synthetic_params {
            out: po as *mut c_void,
            n,
            seed,
            tensor,
            lo,
            hi,
            kind: k,
        };
        // SAFETY: out is a live device buffer of n elements of the kind's element type (checked by
        // SynthElem above); the guard keeps cudarc's stream ordering until the launch is enqueued.
        unsafe { sys::l4c_synthetic_fill(&p, s) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_codes_are_never_nan_and_stay_in_range() {
        for i in 0..100_000u64 {
            let c = synthetic_fp8(3, 7, i);
            assert_ne!(c & 0x7f, 0x7f, "NaN code at {i}");
            let e = (c >> 3) & 0xf;
            assert!((3..=10).contains(&e), "exponent {e} at {i}");
        }
    }

    #[test]
    fn values_depend_on_seed_tensor_and_index() {
        let a = synthetic_bits(1, 2, 3);
        assert_eq!(a, synthetic_bits(1, 2, 3));
        assert_ne!(a, synthetic_bits(1, 2, 4));
        assert_ne!(a, synthetic_bits(1, 3, 3));
        assert_ne!(a, synthetic_bits(2, 2, 3));
        let v: Vec<f32> = (0..10_000)
            .map(|i| synthetic_bf16(9, 1, i, -0.5, 0.5).to_f32())
            .collect();
        assert!(v.iter().all(|x| (-0.5..=0.5).contains(x)));
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        // Uniform on [-0.5, 0.5): std of the mean over 10^4 draws is 0.0029.
        assert!(mean.abs() < 0.015, "mean {mean}");
        let ones = (0..4096)
            .map(|i| synthetic_u32(5, 0, i).count_ones())
            .sum::<u32>();
        // 4096 * 32 bits, half set: std 90.5.
        assert!((ones as i64 - 65_536).abs() < 600, "{ones} bits set");
    }
}
