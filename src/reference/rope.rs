//! Interleaved RoPE with llama3 frequency scaling.
//!
//! Precision contract (the GPU kernels follow it, see kernels/norm_rope.cu):
//! - `inv_freq` is evaluated in f64 and rounded once to f32; the GPU takes these very f32 values.
//! - The angle `pos * inv_freq[i]` and its cosine and sine are evaluated in f64, then rounded to f32.
//!   In f32 the angle at position 10,000,000 would be off by up to 0.5 rad (its ulp is 1.0), which is
//!   what transformers does; here it is exact (a 24-bit position times a 24-bit frequency fits f64).
//! - The rotation itself is f32: `(a + ib) * (cos + i sin)`.
//! - The GPU must give cos/sin within 1e-6 absolute of these values at every position up to 2^31, so its
//!   rotated outputs lie within ~2e-6 * |pair| of the reference (tests/gpu_norm_rope.rs checks 1e-5 of
//!   the largest magnitude).
use crate::error::{Error, Result};

const OP: &str = "rope";

/// llama3 rope scaling parameters (LLAMA4.md).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: f32,
}

impl Llama3Scaling {
    /// Checks that the parameters are usable: all finite and positive, `high_freq_factor >=
    /// low_freq_factor` (equal is Scout Instruct's step function). Errors name the offending key.
    pub fn validate(&self) -> Result<()> {
        let keys = [
            ("rope_scaling.factor", self.factor),
            ("rope_scaling.low_freq_factor", self.low_freq_factor),
            ("rope_scaling.high_freq_factor", self.high_freq_factor),
            (
                "rope_scaling.original_max_position_embeddings",
                self.original_max_position_embeddings,
            ),
        ];
        for (key, v) in keys {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::config(key, v, "must be finite and > 0"));
            }
        }
        if self.high_freq_factor < self.low_freq_factor {
            return Err(Error::config(
                "rope_scaling.high_freq_factor",
                self.high_freq_factor,
                format!("must be >= low_freq_factor ({})", self.low_freq_factor),
            ));
        }
        Ok(())
    }
}

/// `inv_freq[i] = theta^(-2i/head_dim)`, i < head_dim/2, then llama3 scaling when given.
///
/// Evaluated in f64 and rounded once to f32. The arguments are not validated here (a config reader
/// calls [`Llama3Scaling::validate`]); with `high_freq_factor == low_freq_factor` the smooth band is a
/// single wavelength, where the unscaled frequency is kept.
pub fn inv_freq(head_dim: usize, theta: f32, scaling: Option<&Llama3Scaling>) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let f = f64::from(theta).powf(-((2 * i) as f64) / head_dim as f64);
            scaling.map_or(f, |s| llama3_scale(f, s)) as f32
        })
        .collect()
}

/// llama3 scaling of one frequency (LLAMA4.md), in f64.
fn llama3_scale(f: f64, s: &Llama3Scaling) -> f64 {
    let (factor, low, high) = (
        f64::from(s.factor),
        f64::from(s.low_freq_factor),
        f64::from(s.high_freq_factor),
    );
    let orig = f64::from(s.original_max_position_embeddings);
    let wl = 2.0 * std::f64::consts::PI / f;
    if wl < orig / high {
        f
    } else if wl > orig / low {
        f / factor
    } else {
        let s = if high > low {
            (orig / wl - low) / (high - low)
        } else {
            1.0
        };
        (1.0 - s) * f / factor + s * f
    }
}

/// Checks RoPE arguments shared by the reference and the GPU entry points: `what` (a tensor name for
/// the message) has `len` elements of `[tokens, heads, head_dim]`, head_dim even and non-zero,
/// `inv_freq_len == head_dim / 2`.
pub fn check_rope_args(
    what: &str,
    len: usize,
    heads: usize,
    head_dim: usize,
    tokens: usize,
    inv_freq_len: usize,
) -> Result<()> {
    if heads == 0 || head_dim == 0 || head_dim % 2 != 0 {
        return Err(Error::invalid(
            OP,
            format!("{what}: heads = {heads}, head_dim = {head_dim}: need heads > 0 and an even head_dim > 0"),
        ));
    }
    if inv_freq_len != head_dim / 2 {
        return Err(Error::shape(
            OP,
            format!(
                "inv_freq has {inv_freq_len} elements, expected head_dim/2 = {}",
                head_dim / 2
            ),
        ));
    }
    let want = tokens
        .checked_mul(heads)
        .and_then(|n| n.checked_mul(head_dim));
    if want != Some(len) {
        return Err(Error::shape(
            OP,
            format!("{what} has {len} elements, expected tokens {tokens} x heads {heads} x head_dim {head_dim}"),
        ));
    }
    Ok(())
}

/// `(cos, sin)` of `pos * inv_freq` evaluated in f64, rounded to f32 (the precision contract above).
pub fn rope_cos_sin(pos: usize, inv_freq: f32) -> (f32, f32) {
    let (s, c) = (pos as f64 * f64::from(inv_freq)).sin_cos();
    (c as f32, s as f32)
}

/// Rotates interleaved pairs `(x[2i], x[2i+1])` of every head in place: x is `[tokens, heads, head_dim]`,
/// token t at absolute position `positions[t]`.
pub fn apply_rope(
    x: &mut [f32],
    heads: usize,
    head_dim: usize,
    positions: &[usize],
    inv_freq: &[f32],
) -> Result<()> {
    check_rope_args(
        "x",
        x.len(),
        heads,
        head_dim,
        positions.len(),
        inv_freq.len(),
    )?;
    let mut cs = vec![(0.0f32, 0.0f32); inv_freq.len()];
    for (tok, &pos) in x.chunks_exact_mut(heads * head_dim).zip(positions) {
        for (c, &f) in cs.iter_mut().zip(inv_freq) {
            *c = rope_cos_sin(pos, f);
        }
        for head in tok.chunks_exact_mut(head_dim) {
            for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(&cs) {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * c - b * s;
                pair[1] = a * s + b * c;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SCOUT: Llama3Scaling = Llama3Scaling {
        factor: 16.0,
        low_freq_factor: 1.0,
        high_freq_factor: 1.0,
        original_max_position_embeddings: 8192.0,
    };
    const SCOUT_BASE: Llama3Scaling = Llama3Scaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192.0,
    };

    /// Distance in f32 ulps (same sign assumed: all frequencies are positive).
    fn ulps(a: f32, b: f32) -> u32 {
        a.to_bits().abs_diff(b.to_bits())
    }

    /// Scout Instruct (head_dim 128, theta 500000, factor 16, low = high = 1, orig 8192), values computed
    /// independently in python3 (`theta ** (-(2*i)/128)`, the scaling in float, struct-rounded to f32).
    /// Tolerance 1 ulp: python's and Rust's libm `pow` may differ by one f64 ulp, which can flip an f32
    /// rounding. i = 34 (wavelength 6695) is the last unscaled one, i = 35 (8219) the first divided by 16.
    #[test]
    fn scout_inv_freq_spot_checks() {
        let f = inv_freq(128, 500000.0, Some(&SCOUT));
        assert_eq!(f.len(), 64);
        // f32 bit patterns printed by python3 (`struct.pack('<f', v)`).
        let want: [(usize, u32); 10] = [
            (0, 0x3f800000),
            (1, 0x3f508ac1),
            (10, 0x3e03c69f),
            (20, 0x3c87a9c3),
            (21, 0x3c5d06ec),
            (31, 0x3ae38c10),
            (34, 0x3a7603ea),
            (35, 0x38486886),
            (40, 0x378fc8f8),
            (63, 0x3424c2ff),
        ];
        for (i, w) in want {
            let w = f32::from_bits(w);
            assert!(ulps(f[i], w) <= 1, "inv_freq[{i}] = {} want {w}", f[i]);
        }
    }

    /// Scout base scaling (factor 8, low 1, high 4): i = 29..=34 have wavelengths in [2048, 8192], the
    /// smooth band; values from python3 as above, tolerance 1 ulp for the same reason.
    #[test]
    fn scout_base_smooth_band() {
        let f = inv_freq(128, 500000.0, Some(&SCOUT_BASE));
        let want: [(usize, u32); 7] = [
            (29, 0x3b0dfd07),
            (30, 0x3ab3d11c),
            (31, 0x3a60979d),
            (32, 0x3a0995d4),
            (33, 0x39a3f10b),
            (34, 0x393b2dd3),
            (63, 0x34a4c2ff),
        ];
        for (i, w) in want {
            let w = f32::from_bits(w);
            assert!(ulps(f[i], w) <= 1, "inv_freq[{i}] = {} want {w}", f[i]);
        }
    }

    /// The three regimes against an independent f64 evaluation written the other way round (scale
    /// factor applied as a ratio to the unscaled value), on a small theta so all three occur.
    #[test]
    fn llama3_three_regimes() {
        let s = Llama3Scaling {
            factor: 4.0,
            low_freq_factor: 1.0,
            high_freq_factor: 3.0,
            original_max_position_embeddings: 64.0,
        };
        let plain = inv_freq(32, 10000.0, None);
        let scaled = inv_freq(32, 10000.0, Some(&s));
        let (mut high, mut low, mut mid) = (0, 0, 0);
        for (i, (&p, &g)) in plain.iter().zip(&scaled).enumerate() {
            let f = 10000f64.powf(-(2.0 * i as f64) / 32.0);
            let wl = 2.0 * std::f64::consts::PI / f;
            let ratio = if wl < 64.0 / 3.0 {
                high += 1;
                1.0
            } else if wl > 64.0 {
                low += 1;
                0.25
            } else {
                mid += 1;
                let t = (64.0 / wl - 1.0) / 2.0;
                0.25 + 0.75 * t
            };
            assert!(
                ulps(g, (f * ratio) as f32) <= 1,
                "i {i}: {g} vs {}",
                f * ratio
            );
            assert!(ulps(p, f as f32) <= 1, "unscaled i {i}");
        }
        assert!(high > 0 && low > 0 && mid > 0, "regimes {high} {low} {mid}");
    }

    #[test]
    fn inv_freq_unscaled_and_odd_head_dim() {
        assert!(inv_freq(0, 10000.0, None).is_empty());
        let f = inv_freq(7, 10000.0, None);
        assert_eq!(f.len(), 3);
        assert_eq!(f[0], 1.0);
        assert!(ulps(f[2], 10000f64.powf(-4.0 / 7.0) as f32) <= 1);
    }

    /// Hand-computed: head_dim 4, inv_freq [1, 0.5], position 2: angles 2 and 1. Pair (1, 2) rotated by 2
    /// rad is (cos2 - 2 sin2, sin2 + 2 cos2); pair (3, -1) by 1 rad is (3cos1 + sin1, 3sin1 - cos1).
    /// Position 0 leaves the token unchanged. Tolerance 4 f32 ulps of magnitude 3.
    #[test]
    fn hand_computed_rotation() {
        let mut x = vec![1.0, 2.0, 3.0, -1.0, 0.7, -0.2, 1.5, 2.5];
        apply_rope(&mut x, 1, 4, &[2, 0], &[1.0, 0.5]).unwrap();
        let (c2, s2, c1, s1) = (2f64.cos(), 2f64.sin(), 1f64.cos(), 1f64.sin());
        let want = [
            c2 - 2.0 * s2,
            s2 + 2.0 * c2,
            3.0 * c1 + s1,
            3.0 * s1 - c1,
            0.7,
            -0.2,
            1.5,
            2.5,
        ];
        for (g, w) in x.iter().zip(want) {
            assert!(
                (f64::from(*g) - w).abs() < 12.0 * f64::from(f32::EPSILON),
                "{x:?}"
            );
        }
    }

    /// Naive f64 RoPE: every pair rotated in f64 from the f32 inputs.
    fn rope_f64(x: &[f32], heads: usize, hd: usize, pos: &[usize], inv: &[f32]) -> Vec<f64> {
        let mut out = vec![0.0; x.len()];
        for (t, &p) in pos.iter().enumerate() {
            for h in 0..heads {
                for (i, &f) in inv.iter().enumerate() {
                    let j = (t * heads + h) * hd + 2 * i;
                    let ang = p as f64 * f64::from(f);
                    let (a, b) = (f64::from(x[j]), f64::from(x[j + 1]));
                    out[j] = a * ang.cos() - b * ang.sin();
                    out[j + 1] = a * ang.sin() + b * ang.cos();
                }
            }
        }
        out
    }

    /// Random shapes: 1 head, odd head counts, head_dim 2 up to 130, one token or many, positions
    /// near 0 and up to 10.5M, random theta; x uniform in [-4, 4].
    fn rope_case() -> impl Strategy<Value = (usize, usize, Vec<usize>, f32, Vec<f32>)> {
        let pos = prop_oneof![0usize..20_000, 9_990_000usize..10_485_760];
        (
            1usize..10,
            1usize..66,
            prop::collection::vec(pos, 1..12),
            prop_oneof![Just(500000.0f32), 100.0f32..1e6],
        )
            .prop_flat_map(|(heads, half, pos, theta)| {
                let n = pos.len() * heads * 2 * half;
                (
                    Just(heads),
                    Just(2 * half),
                    Just(pos),
                    Just(theta),
                    prop::collection::vec(-4.0f32..4.0, n),
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Tolerance 1e-6 of the largest |x|: cos/sin rounded to f32 (0.5 ulp each), two f32 products
        /// and a sum add a few 6e-8 relative; the angle itself is exact. An f32 angle at these
        /// positions errs by up to 0.25 rad and fails this.
        #[test]
        fn matches_f64((heads, hd, pos, theta, x) in rope_case()) {
            let inv = inv_freq(hd, theta, Some(&SCOUT));
            let want = rope_f64(&x, heads, hd, &pos, &inv);
            let mut got = x.clone();
            apply_rope(&mut got, heads, hd, &pos, &inv).unwrap();
            let scale = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            prop_assume!(scale > 1e-3);
            for (g, w) in got.iter().zip(&want) {
                prop_assert!((f64::from(*g) - w).abs() <= 1e-6 * f64::from(scale), "{} vs {}", g, w);
            }
        }
    }

    /// The angle at large positions is exact: at position 10,485,759 with inv_freq 0.8146172 (Scout's
    /// i = 1) the f32 product errs by 0.19 rad; the reference must match the f64 angle to 2e-7.
    #[test]
    fn exact_angle_at_10m() {
        let (p, f) = (10_485_759usize, 0.814_617_2f32);
        let mut x = vec![1.0f32, 0.0];
        apply_rope(&mut x, 1, 2, &[p], &[f]).unwrap();
        let ang = p as f64 * f64::from(f);
        assert!(
            (f64::from(x[0]) - ang.cos()).abs() < 2e-7
                && (f64::from(x[1]) - ang.sin()).abs() < 2e-7,
            "{x:?}"
        );
        let f32_ang = p as f32 * f;
        assert!(
            (f64::from(f32_ang) - ang).abs() > 0.1,
            "the f32 product should be inexact here"
        );
    }

    #[test]
    fn rejects_bad_arguments() {
        let mut x = vec![1.0f32; 24];
        let e = apply_rope(&mut x, 2, 3, &[0, 1, 2, 3], &[1.0]).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("head_dim = 3"),
            "{e}"
        );
        let e = apply_rope(&mut x, 0, 4, &[0], &[1.0, 1.0]).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        let e = apply_rope(&mut x, 2, 4, &[0, 1], &[1.0, 1.0]).unwrap_err();
        assert!(
            matches!(e, Error::Shape { .. }) && e.to_string().contains("x has 24"),
            "{e}"
        );
        let e = apply_rope(&mut x, 2, 4, &[0, 1, 2], &[1.0]).unwrap_err();
        assert!(
            matches!(e, Error::Shape { .. }) && e.to_string().contains("inv_freq"),
            "{e}"
        );
        let e = apply_rope(&mut x, usize::MAX, 4, &[0, 1], &[1.0, 1.0]).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
        assert!(
            x.iter().all(|&v| v == 1.0),
            "a rejected call must not touch x"
        );
    }

    #[test]
    fn validate_scaling() {
        assert!(SCOUT.validate().is_ok() && SCOUT_BASE.validate().is_ok());
        let bad = Llama3Scaling {
            factor: 0.0,
            ..SCOUT
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("rope_scaling.factor"));
        let bad = Llama3Scaling {
            high_freq_factor: 0.5,
            ..SCOUT
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("high_freq_factor"));
        let bad = Llama3Scaling {
            original_max_position_embeddings: f32::NAN,
            ..SCOUT
        };
        assert!(bad.validate().is_err());
    }
}
