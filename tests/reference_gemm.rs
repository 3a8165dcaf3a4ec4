//! The CPU dequant-GEMM and W8A8 GEMM against naive f64 triple loops over independently decoded
//! weights, on random shapes (M = 1, N = 1, odd sizes, K not a multiple of the group).
mod common;

use common::{fp8_value, naive_dequant, naive_matmul_t, to_f64, Rng};
use llama4_cuda::quant::fp8::quantize_per_token;
use llama4_cuda::quant::int4::GROUP_SIZES;
use llama4_cuda::quant::{
    DenseWeight, Fp8Scaling, Fp8Weight, Int4Config, Int4Weight, ScaleDType, Weight,
};
use llama4_cuda::reference::gemm::{dot, gemm, gemm_w8a8};
use llama4_cuda::Error;
use proptest::prelude::*;

/// f32 accumulation against f64: each output's error is a sum of k roundings of partial sums, a
/// random walk of about sqrt(k) * 2^-24 * sum|x w| (at most k * 2^-24 * sum|x w|), so errors are
/// measured against max sum|x w| (see [`accum_err`]), not max|ref|: with M = N = 1 the one output can
/// cancel to far below its terms. At k < 600 the walk is about 1e-7; 1e-5 leaves two orders of margin
/// and still catches any wrong element, scale or index.
const F32_TOL: f64 = 1e-5;

/// max |got - want| / max sum|a||b|, where `abs_sum` is the product of the operands' absolute values
/// (the scale f32 accumulation errors live on); NaN anywhere is infinitely wrong.
fn accum_err(got: &[f32], want: &[f64], abs_sum: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length");
    if got.iter().any(|g| g.is_nan()) {
        return f64::INFINITY;
    }
    let scale = abs_sum.iter().fold(0.0f64, |m, &v| m.max(v));
    assert!(scale > 0.0, "operands are all zero: the test cannot fail");
    let err = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w).abs()));
    err / scale
}

fn abs(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| x.abs()).collect()
}

/// A weight in one of the formats, built from a random dense `[n, k]` tensor.
fn make_weight(kind: usize, w: &[f32], n: usize, k: usize) -> Weight {
    let int4 = |gs, symmetric, scale_dtype| {
        Weight::Int4(
            Int4Weight::quantize(
                w,
                n,
                k,
                Int4Config {
                    group_size: gs,
                    symmetric,
                    scale_dtype,
                },
            )
            .unwrap(),
        )
    };
    match kind {
        0 => Weight::Dense(DenseWeight {
            n,
            k,
            data: w.to_vec(),
        }),
        1 => Weight::Fp8(Fp8Weight::quantize(w, n, k, Fp8Scaling::PerTensor).unwrap()),
        2 => Weight::Fp8(Fp8Weight::quantize(w, n, k, Fp8Scaling::PerChannel).unwrap()),
        3..=5 => int4(GROUP_SIZES[kind - 3], true, ScaleDType::BF16),
        _ => int4(GROUP_SIZES[kind - 6], false, ScaleDType::F32),
    }
}

/// Shapes that hit the edges: M and N of 1, odd sizes, K off every group multiple.
fn dims() -> impl Strategy<Value = (usize, usize, usize)> {
    (
        prop_oneof![Just(1usize), 1usize..17],
        prop_oneof![Just(1usize), 1usize..40],
        prop_oneof![Just(1usize), 1usize..400, Just(127), Just(129), Just(255)],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn gemm_matches_naive_f64_in_every_format(seed in any::<u64>(), (m, n, k) in dims(), kind in 0usize..9) {
        let mut rng = Rng(seed);
        let x = rng.vec(m * k, 2.0);
        let w = make_weight(kind, &rng.vec(n * k, 0.5), n, k);
        let y = gemm(&x, m, &w).unwrap();
        let (xd, wd) = (to_f64(&x), naive_dequant(&w));
        let want = naive_matmul_t(&xd, m, k, &wd, n);
        let abs_sum = naive_matmul_t(&abs(&xd), m, k, &abs(&wd), n);
        let err = accum_err(&y, &want, &abs_sum);
        prop_assert!(err <= F32_TOL, "kind {} m {} n {} k {}: rel err {:e}", kind, m, n, k, err);
    }

    #[test]
    fn w8a8_matches_naive_f64(seed in any::<u64>(), (m, n, k) in dims(), per_channel in any::<bool>()) {
        let mut rng = Rng(seed);
        let x = rng.vec(m * k, 3.0);
        let wd = rng.vec(n * k, 0.5);
        let scaling = if per_channel { Fp8Scaling::PerChannel } else { Fp8Scaling::PerTensor };
        let w = Fp8Weight::quantize(&wd, n, k, scaling).unwrap();
        let y = gemm_w8a8(&x, m, &w).unwrap();
        // Exact spec: the fp8 operands decoded by the textbook formula, summed in f64, then scaled.
        let (xc, xs) = quantize_per_token(&x, m, k).unwrap();
        let xq: Vec<f64> = xc.iter().map(|&c| fp8_value(c, true)).collect();
        let wq: Vec<f64> = w.codes.iter().map(|&c| fp8_value(c, true)).collect();
        let acc = naive_matmul_t(&xq, m, k, &wq, n);
        let scaled = |a: &[f64]| -> Vec<f64> {
            (0..m * n).map(|idx| a[idx] * xs[idx / n] as f64 * w.scale(idx % n) as f64).collect()
        };
        let want = scaled(&acc);
        let abs_sum = scaled(&naive_matmul_t(&abs(&xq), m, k, &abs(&wq), n));
        let err = accum_err(&y, &want, &abs_sum);
        prop_assert!(err <= F32_TOL, "m {} n {} k {}: rel err {:e}", m, n, k, err);
        // Against the unquantized product, element by element, within the worst case of two e4m3
        // roundings: |x - x̂| <= ex = |x| 2^-4 + x_scale 2^-10 (half an ulp, or half the smallest
        // subnormal), likewise for w, so |xw - x̂ŵ| <= ex|w| + |x|ew + ex ew; plus the f32
        // accumulation (F32_TOL of sum|xw|, generous as above).
        for i in 0..m {
            for j in 0..n {
                let (xs, ws) = (xs[i] as f64, w.scale(j) as f64);
                let (mut exact, mut bound, mut abs_sum) = (0.0f64, 0.0f64, 0.0f64);
                for l in 0..k {
                    let (a, b) = (x[i * k + l] as f64, wd[j * k + l] as f64);
                    let (ea, eb) = (a.abs() / 16.0 + xs / 1024.0, b.abs() / 16.0 + ws / 1024.0);
                    exact += a * b;
                    abs_sum += (a * b).abs();
                    bound += ea * b.abs() + a.abs() * eb + ea * eb;
                }
                let err = (y[i * n + j] as f64 - exact).abs();
                prop_assert!(err <= bound + F32_TOL * (abs_sum + bound),
                    "[{}, {}] {} vs unquantized {} (bound {})", i, j, y[i * n + j], exact, bound);
            }
        }
    }
}

#[test]
fn dot_matches_f64_at_every_tail_length() {
    let mut rng = Rng(42);
    for len in 0..40 {
        let (a, b) = (rng.vec(len, 1.0), rng.vec(len + 3, 1.0)); // b may be longer: a's length rules
        let want: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
        // At most 40 terms of magnitude <= 1: 40 * 2^-24 absolute.
        assert!(
            (dot(&a, &b) as f64 - want).abs() <= 40.0 * 6e-8,
            "len {len}"
        );
    }
}

#[test]
fn gemm_shape_errors_are_typed() {
    let mut rng = Rng(1);
    let w = make_weight(3, &rng.vec(6 * 40, 1.0), 6, 40);
    let x = rng.vec(3 * 40, 1.0);
    assert!(matches!(gemm(&x, 4, &w), Err(Error::Shape { .. })));
    assert!(gemm(&x[..39], 1, &w)
        .unwrap_err()
        .to_string()
        .contains("x has 39 elements, expected 40"));
    // An inconsistent weight (built by hand) is an error, not a panic.
    let Weight::Int4(mut q) = w else {
        unreachable!()
    };
    q.scales.pop();
    assert!(matches!(
        gemm(&x, 3, &Weight::Int4(q)),
        Err(Error::Shape { .. })
    ));
    let bad = Weight::Dense(DenseWeight {
        n: 2,
        k: 40,
        data: vec![1.0; 79],
    });
    assert!(matches!(gemm(&x, 3, &bad), Err(Error::Shape { .. })));
    // Empty M is a valid, empty product.
    assert_eq!(
        gemm(&[], 0, &make_weight(0, &rng.vec(6 * 40, 1.0), 6, 40))
            .unwrap()
            .len(),
        0
    );

    let f = Fp8Weight::quantize(&rng.vec(6 * 40, 1.0), 6, 40, Fp8Scaling::PerChannel).unwrap();
    assert!(matches!(gemm_w8a8(&x, 2, &f), Err(Error::Shape { .. })));
    let mut xn = x.clone();
    xn[41] = f32::INFINITY;
    assert!(matches!(
        gemm_w8a8(&xn, 3, &f),
        Err(Error::InvalidArgument { .. })
    ));
}
