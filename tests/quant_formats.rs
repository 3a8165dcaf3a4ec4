//! fp8 e4m3fn / e5m2 and int4 formats: exhaustive code checks, rounding, saturation, packing,
//! quantization error bounds, typed errors.
mod common;

use common::{fp8_value, naive_dequant, Rng};
use half::bf16;
use llama4_cuda::quant::fp8::{
    e4m3_decode, e4m3_encode, e5m2_decode, e5m2_encode, quantize_per_token, E4M3_MAX, E5M2_MAX,
};
use llama4_cuda::quant::int4::{pack, GROUP_SIZES};
use llama4_cuda::quant::{
    Fp8Format, Fp8Scaling, Fp8Weight, Int4Config, Int4Weight, ScaleDType, Weight,
};
use llama4_cuda::Error;
use proptest::prelude::*;

const FORMATS: [(Fp8Format, bool); 2] = [(Fp8Format::E4M3, true), (Fp8Format::E5M2, false)];

/// Positive finite codes in increasing value order (codes increase with magnitude).
fn finite_positive_codes(fmt: Fp8Format) -> Vec<u8> {
    (0u8..0x80).filter(|&c| fmt.decode(c).is_finite()).collect()
}

/// Brute-force nearest encoding: the finite code closest to `x` (clamped to ±max), ties to the
/// even code, the sign taken from `x`.
fn nearest_code(fmt: Fp8Format, x: f32) -> u8 {
    let is_e4m3 = fmt == Fp8Format::E4M3;
    let a = (x.abs() as f64).min(fmt.max() as f64);
    let mut best = 0u8;
    for c in finite_positive_codes(fmt) {
        let (d, db) = (
            (fp8_value(c, is_e4m3) - a).abs(),
            (fp8_value(best, is_e4m3) - a).abs(),
        );
        if d < db || (d == db && c % 2 == 0) {
            best = c;
        }
    }
    best | if x.is_sign_negative() { 0x80 } else { 0 }
}

#[test]
fn fp8_decode_matches_formula_for_all_codes() {
    for (fmt, is_e4m3) in FORMATS {
        for c in 0..=255u8 {
            let (got, want) = (fmt.decode(c), fp8_value(c, is_e4m3));
            if want.is_nan() {
                assert!(got.is_nan(), "{fmt:?} {c:#04x}: {got} should be NaN");
            } else {
                assert_eq!(got.to_bits(), (want as f32).to_bits(), "{fmt:?} {c:#04x}");
            }
        }
    }
    // Spot values from the OCP fp8 spec.
    assert_eq!(e4m3_decode(0x7e), 448.0);
    assert_eq!(e4m3_decode(0x01), 2f32.powi(-9));
    assert!(e4m3_decode(0x7f).is_nan() && e4m3_decode(0xff).is_nan());
    assert_eq!(e5m2_decode(0x7b), 57344.0);
    assert_eq!(e5m2_decode(0x7c), f32::INFINITY);
    assert_eq!(e5m2_decode(0xfc), f32::NEG_INFINITY);
    assert_eq!(e5m2_decode(0x01), 2f32.powi(-16));
}

#[test]
fn fp8_every_finite_code_round_trips() {
    for (fmt, _) in FORMATS {
        for c in 0..=255u8 {
            let v = fmt.decode(c);
            if v.is_finite() {
                assert_eq!(fmt.encode(v), c, "{fmt:?} {c:#04x} = {v}");
            }
        }
    }
    // e5m2 infinities saturate to the max finite code.
    assert_eq!(e5m2_encode(f32::INFINITY), 0x7b);
    assert_eq!(e5m2_encode(f32::NEG_INFINITY), 0xfb);
}

#[test]
fn fp8_midpoints_round_to_even_and_neighbours_to_nearest() {
    for (fmt, _) in FORMATS {
        let codes = finite_positive_codes(fmt);
        for w in codes.windows(2) {
            let (lo, hi) = (fmt.decode(w[0]), fmt.decode(w[1]));
            let mid = (lo + hi) / 2.0; // exact: fp8 values have few significant bits
            assert_eq!((mid as f64), (lo as f64 + hi as f64) / 2.0);
            let even = if w[0] % 2 == 0 { w[0] } else { w[1] };
            for sign in [1.0f32, -1.0] {
                let s = if sign < 0.0 { 0x80 } else { 0 };
                assert_eq!(
                    fmt.encode(sign * mid),
                    even | s,
                    "{fmt:?} tie between {lo} and {hi}"
                );
                let below = f32::from_bits(mid.to_bits() - 1);
                let above = f32::from_bits(mid.to_bits() + 1);
                assert_eq!(
                    fmt.encode(sign * below),
                    w[0] | s,
                    "{fmt:?} just below {mid}"
                );
                assert_eq!(
                    fmt.encode(sign * above),
                    w[1] | s,
                    "{fmt:?} just above {mid}"
                );
            }
        }
    }
}

#[test]
fn fp8_saturates_and_keeps_nan_and_negative_zero() {
    let cases = [
        (Fp8Format::E4M3, 0x7eu8, 480.0f32),
        (Fp8Format::E5M2, 0x7b, 65536.0),
    ];
    for (fmt, max_code, next) in cases {
        let max = fmt.max();
        // The midpoint towards the first value past max, values past it, huge, infinite: all max.
        for x in [
            max,
            (max + next) / 2.0,
            next,
            next * 3.0,
            1e30,
            f32::MAX,
            f32::INFINITY,
        ] {
            assert_eq!(fmt.encode(x), max_code, "{fmt:?} {x}");
            assert_eq!(fmt.encode(-x), max_code | 0x80, "{fmt:?} -{x}");
        }
        for nan in [f32::NAN, -f32::NAN] {
            assert!(fmt.decode(fmt.encode(nan)).is_nan(), "{fmt:?} NaN");
        }
        assert_eq!(fmt.encode(-0.0), 0x80);
        assert_eq!(fmt.encode(0.0), 0x00);
        assert!(fmt.decode(0x80) == 0.0 && fmt.decode(0x80).is_sign_negative());
        // Half the smallest subnormal ties to zero (even); just above rounds up; f32 subnormals -> 0.
        let tiny = fmt.decode(0x01);
        assert_eq!(fmt.encode(tiny / 2.0), 0x00);
        assert_eq!(fmt.encode(-tiny / 2.0), 0x80);
        assert_eq!(fmt.encode(f32::from_bits((tiny / 2.0).to_bits() + 1)), 0x01);
        assert_eq!(fmt.encode(f32::from_bits(1)), 0x00);
    }
    assert_eq!(E4M3_MAX, 448.0);
    assert_eq!(E5M2_MAX, 57344.0);
    assert_eq!(
        (e4m3_encode(-E4M3_MAX), e5m2_encode(E5M2_MAX)),
        (0xfe, 0x7b)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The encoder agrees with a brute-force nearest search on random f32 bit patterns and on
    /// values spread over the fp8 range.
    #[test]
    fn fp8_encode_is_nearest(bits in any::<u32>(), exp in -20i32..20, frac in -1.0f32..1.0) {
        let scaled = frac * 2f32.powi(exp);
        for x in [f32::from_bits(bits), scaled] {
            if x.is_nan() { continue; }
            for (fmt, _) in FORMATS {
                prop_assert_eq!(fmt.encode(x), nearest_code(fmt, x), "{:?} x = {:e}", fmt, x);
            }
        }
    }
}

/// Relative error of one e4m3 rounding: half an ulp of 3 mantissa bits, 2^-4 of the value, plus
/// half the smallest subnormal (2^-10) absolute, in units of the scale.
fn e4m3_bound(w: f32, scale: f32) -> f32 {
    w.abs() * 2f32.powi(-4) + scale * 2f32.powi(-10) + w.abs() * 1e-6
}

#[test]
fn fp8_weight_per_tensor_and_per_channel() {
    let mut rng = Rng(7);
    let (n, k) = (5, 37);
    let mut w = rng.vec(n * k, 3.0);
    w[2 * k..3 * k].iter_mut().for_each(|v| *v *= 1e-3); // a row at a much smaller scale
    w[4 * k..].iter_mut().for_each(|v| *v = 0.0); // an all-zero row
    for scaling in [Fp8Scaling::PerTensor, Fp8Scaling::PerChannel] {
        let q = Fp8Weight::quantize(&w, n, k, scaling).unwrap();
        q.validate().unwrap();
        let deq = q.dequantize();
        assert_eq!(deq, Weight::Fp8(q.clone()).dequantize());
        let naive = naive_dequant(&Weight::Fp8(q.clone()));
        for i in 0..n {
            let row = &w[i * k..(i + 1) * k];
            let block = match scaling {
                Fp8Scaling::PerTensor => &w[..],
                Fp8Scaling::PerChannel => row,
            };
            let absmax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let want_scale = if absmax > 0.0 { absmax / 448.0 } else { 1.0 };
            assert_eq!(q.scale(i), want_scale, "{scaling:?} row {i}");
            for j in 0..k {
                assert_eq!(naive[i * k + j] as f32, deq[i * k + j]);
                let err = (row[j] - deq[i * k + j]).abs();
                assert!(
                    err <= e4m3_bound(row[j], q.scale(i)),
                    "{scaling:?} [{i},{j}] {}",
                    row[j]
                );
                // The block's largest magnitude lands on ±448 exactly.
                if absmax > 0.0 && row[j].abs() == absmax {
                    assert_eq!(q.codes[i * k + j] & 0x7f, 0x7e, "{scaling:?} [{i},{j}]");
                }
            }
        }
    }
    assert!(matches!(
        Fp8Weight::quantize(&w, n, k + 1, Fp8Scaling::PerTensor),
        Err(Error::Shape { .. })
    ));
    let mut bad = w.clone();
    bad[3] = f32::INFINITY;
    assert!(matches!(
        Fp8Weight::quantize(&bad, n, k, Fp8Scaling::PerChannel),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn fp8_weight_validate_catches_inconsistent_fields() {
    let w = Rng(3).vec(12, 1.0);
    let good = Fp8Weight::quantize(&w, 3, 4, Fp8Scaling::PerChannel).unwrap();
    let mut a = good.clone();
    a.scales.pop();
    let mut b = good.clone();
    b.codes[5] = 0x7f;
    let mut c = good.clone();
    c.codes.push(0);
    let mut d = good.clone();
    d.scales[1] = f32::NAN;
    for (bad, what) in [(a, "scales"), (b, "NaN"), (c, "codes"), (d, "scales[1]")] {
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains(what), "{e}");
    }
}

#[test]
fn per_token_activation_quantization() {
    let mut rng = Rng(11);
    let (m, k) = (4, 29);
    let mut x = rng.vec(m * k, 10.0);
    x[k..2 * k].iter_mut().for_each(|v| *v = 0.0);
    let (codes, scales) = quantize_per_token(&x, m, k).unwrap();
    assert_eq!((codes.len(), scales.len()), (m * k, m));
    assert_eq!(scales[1], 1.0, "zero row gets scale 1");
    for i in 0..m {
        let row = &x[i * k..(i + 1) * k];
        let absmax = row.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        if absmax > 0.0 {
            assert_eq!(scales[i], absmax / 448.0);
        }
        for j in 0..k {
            let deq = fp8_value(codes[i * k + j], true) as f32 * scales[i];
            assert!(
                (row[j] - deq).abs() <= e4m3_bound(row[j], scales[i]),
                "[{i},{j}]"
            );
        }
    }
    assert!(matches!(
        quantize_per_token(&x, m, k - 1),
        Err(Error::Shape { .. })
    ));
    x[5] = f32::NAN;
    let e = quantize_per_token(&x, m, k).unwrap_err().to_string();
    assert!(e.contains("activations[5]"), "{e}");
}

// ---- int4 ----

fn cfg(group_size: usize, symmetric: bool, scale_dtype: ScaleDType) -> Int4Config {
    Int4Config {
        group_size,
        symmetric,
        scale_dtype,
    }
}

#[test]
fn int4_rejects_bad_group_sizes_and_inputs() {
    let w = Rng(1).vec(2 * 64, 1.0);
    for gs in [0, 1, 16, 48, 96, 256] {
        let e = Int4Weight::quantize(&w, 2, 64, cfg(gs, true, ScaleDType::F32)).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("group_size"),
            "{e}"
        );
    }
    assert!(matches!(
        Int4Weight::quantize(&w, 3, 64, Int4Config::default()),
        Err(Error::Shape { .. })
    ));
    let mut bad = w.clone();
    bad[70] = f32::NAN;
    let e = Int4Weight::quantize(&bad, 2, 64, Int4Config::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("weight[70]"), "{e}");
}

#[test]
fn int4_zero_group_has_zero_scale_and_no_nan() {
    let (n, k) = (2, 80); // groups of 32: [0, 32), [32, 64), [64, 80) short
    let mut w = Rng(5).vec(n * k, 1.0);
    w[32..64].iter_mut().for_each(|v| *v = 0.0);
    for symmetric in [true, false] {
        let q = Int4Weight::quantize(&w, n, k, cfg(32, symmetric, ScaleDType::BF16)).unwrap();
        assert_eq!(q.groups_per_row(), 3);
        assert_eq!(q.scales[1], 0.0);
        let deq = q.dequantize();
        assert!(deq.iter().all(|v| v.is_finite()));
        assert!(deq[32..64].iter().all(|&v| v == 0.0));
    }
}

#[test]
fn int4_pack_layout_and_round_trip() {
    let mut rng = Rng(9);
    for (n, k) in [(1, 1), (3, 7), (2, 32), (4, 131)] {
        let nibbles: Vec<u8> = (0..n * k).map(|_| rng.below(16) as u8).collect();
        let packed = pack(&nibbles, n, k).unwrap();
        let row_bytes = k.div_ceil(2);
        assert_eq!(packed.len(), n * row_bytes);
        for i in 0..n {
            for j in 0..k {
                let b = packed[i * row_bytes + j / 2];
                let want = if j % 2 == 0 { b & 0xf } else { b >> 4 };
                assert_eq!(nibbles[i * k + j], want, "[{i},{j}] low nibble first");
            }
            if k % 2 == 1 {
                assert_eq!(
                    packed[i * row_bytes + row_bytes - 1] >> 4,
                    0,
                    "padding nibble is zero"
                );
            }
        }
        let groups = k.div_ceil(32);
        let w = Int4Weight {
            n,
            k,
            config: cfg(32, true, ScaleDType::F32),
            packed,
            scales: vec![1.0; n * groups],
            zeros: None,
        };
        w.validate().unwrap();
        assert_eq!(w.unpack(), nibbles);
        // Symmetric with unit scales: the value is the nibble minus 8.
        let deq = w.dequantize();
        assert!(deq.iter().zip(&nibbles).all(|(&d, &u)| d == u as f32 - 8.0));
    }
    assert!(pack(&[1, 2, 16], 1, 3).is_err());
    assert!(pack(&[1, 2], 1, 3).is_err());
}

#[test]
fn int4_validate_catches_inconsistent_fields() {
    let w = Rng(2).vec(2 * 40, 1.0);
    let sym = Int4Weight::quantize(&w, 2, 40, cfg(32, true, ScaleDType::BF16)).unwrap();
    let asym = Int4Weight::quantize(&w, 2, 40, cfg(32, false, ScaleDType::F32)).unwrap();
    sym.validate().unwrap();
    asym.validate().unwrap();
    let mut a = sym.clone();
    a.packed.pop();
    let mut b = sym.clone();
    b.scales[0] = 0.1; // not a bf16 value
    let mut c = sym.clone();
    c.zeros = Some(vec![0; 4]);
    let mut d = asym.clone();
    d.zeros.as_mut().unwrap()[3] = 16;
    let mut e = asym.clone();
    e.zeros = None;
    let mut f = sym.clone();
    f.config.group_size = 100;
    for (bad, what) in [
        (a, "packed"),
        (b, "scales[0]"),
        (c, "zero"),
        (d, "zeros[3]"),
        (e, "zero"),
        (f, "group_size"),
    ] {
        let msg = bad.validate().unwrap_err().to_string();
        assert!(msg.contains(what), "{msg}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Quantize random weights in every configuration; check scales against the recipe, that
    /// dequantize uses exactly the stored scale, and |w - deq| <= scale / 2 inside the clamp range.
    #[test]
    fn int4_quantization_recipe_and_error_bound(
        seed in any::<u64>(),
        n in 1usize..5,
        k in 1usize..300,
        gi in 0usize..3,
        symmetric in any::<bool>(),
        bf16_scales in any::<bool>(),
        offset in prop_oneof![Just(0.0f32), -2.0f32..2.0],
    ) {
        let mut rng = Rng(seed);
        let gs = GROUP_SIZES[gi];
        let sd = if bf16_scales { ScaleDType::BF16 } else { ScaleDType::F32 };
        // An offset makes one-signed groups, which exercise the asymmetric zero point.
        let w: Vec<f32> = rng.vec(n * k, 1.5).into_iter().map(|v| v + offset).collect();
        let q = Int4Weight::quantize(&w, n, k, cfg(gs, symmetric, sd)).unwrap();
        q.validate().unwrap();
        let groups = k.div_ceil(gs);
        prop_assert_eq!(q.scales.len(), n * groups);
        prop_assert_eq!(q.packed.len(), n * k.div_ceil(2));
        let deq = q.dequantize();
        let naive = naive_dequant(&Weight::Int4(q.clone()));
        for i in 0..n {
            for g in 0..groups {
                let lo = i * k + g * gs;
                let grp = &w[lo..i * k + ((g + 1) * gs).min(k)];
                let gi = i * groups + g;
                let s = q.scales[gi];
                prop_assert!(s > 0.0, "random groups are never all zero");
                let (want, zero) = if symmetric {
                    (grp.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 8.0, 8.0)
                } else {
                    let mn = grp.iter().fold(0.0f32, |m, &v| m.min(v));
                    let mx = grp.iter().fold(0.0f32, |m, &v| m.max(v));
                    let z = q.zeros.as_ref().unwrap()[gi];
                    prop_assert!(z <= 15);
                    ((mx - mn) / 15.0, z as f32)
                };
                let want = if bf16_scales { bf16::from_f32(want).to_f32() } else { want };
                prop_assert_eq!(s.to_bits(), want.to_bits(), "scale of row {} group {}", i, g);
                for (jj, &v) in grp.iter().enumerate() {
                    let idx = lo + jj;
                    // The f64 product of a small integer and the scale is exact; one rounding to f32 = the f32 product.
                    prop_assert_eq!(deq[idx], naive[idx] as f32, "stored scale used exactly at {}", idx);
                    let u = ((deq[idx] / s) + zero).round();
                    prop_assert!((0.0..=15.0).contains(&u));
                    let pos = (v / s) as f64 + zero as f64;
                    if (-0.5..=15.5).contains(&pos) {
                        // One f32 division and one f32 product: 2^-23 relative slack.
                        let err = (v - deq[idx]).abs();
                        prop_assert!(err <= s / 2.0 + v.abs() * 2.4e-7,
                            "[{}] w {} deq {} scale {}", idx, v, deq[idx], s);
                    } else {
                        // Clamped: the nearest end of the range.
                        let end = if pos < 0.0 { -zero } else { 15.0 - zero };
                        prop_assert_eq!(deq[idx], end * s);
                    }
                }
            }
        }
    }
}
