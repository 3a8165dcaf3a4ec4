//! RMSNorm and the weightless qk norm.
//!
//! As transformers' `Llama4TextRMSNorm` / `Llama4TextL2Norm`: `x * rsqrt(mean(x^2) + eps)` in f32, then
//! times the weight. The sum of squares is accumulated in f32, in index order.
use crate::error::{check_len, Error, Result};

const OP: &str = "rms_norm";

/// `y = x * rsqrt(mean(x^2) + eps) * weight` over rows of `dim`; `weight = None` is the weightless qk norm.
///
/// Errors: `dim == 0`, `x.len()` not a multiple of `dim`, `weight.len() != dim`, `eps` negative or not
/// finite.
pub fn rms_norm(x: &[f32], dim: usize, weight: Option<&[f32]>, eps: f32) -> Result<Vec<f32>> {
    check_rms_args(x.len(), dim, weight.map(<[f32]>::len), eps)?;
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(dim) {
        let sum_sq: f32 = row.iter().map(|v| v * v).sum();
        let inv_rms = 1.0 / (sum_sq / dim as f32 + eps).sqrt();
        match weight {
            Some(w) => out.extend(row.iter().zip(w).map(|(v, w)| v * inv_rms * w)),
            None => out.extend(row.iter().map(|v| v * inv_rms)),
        }
    }
    Ok(out)
}

/// The argument checks shared by the reference and the GPU entry points: `len` elements in rows of
/// `dim`, an optional weight of `weight_len` elements, `eps`. Returns the number of rows.
pub fn check_rms_args(
    len: usize,
    dim: usize,
    weight_len: Option<usize>,
    eps: f32,
) -> Result<usize> {
    if dim == 0 {
        return Err(Error::invalid(OP, "dim is 0"));
    }
    if len % dim != 0 {
        return Err(Error::shape(
            OP,
            format!("x has {len} elements, not a multiple of dim {dim}"),
        ));
    }
    if let Some(wl) = weight_len {
        check_len(OP, "weight", wl, dim)?;
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::invalid(
            OP,
            format!("eps = {eps}, must be finite and >= 0"),
        ));
    }
    Ok(len / dim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Naive f64 evaluation of the same formula.
    fn rms_norm_f64(x: &[f32], dim: usize, weight: Option<&[f32]>, eps: f32) -> Vec<f64> {
        let mut out = Vec::new();
        for row in x.chunks(dim) {
            let ms = row
                .iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                / dim as f64;
            let r = 1.0 / (ms + f64::from(eps)).sqrt();
            for (j, &v) in row.iter().enumerate() {
                out.push(f64::from(v) * r * weight.map_or(1.0, |w| f64::from(w[j])));
            }
        }
        out
    }

    /// Largest `|got - want| / max(|want|, 1e-3 * max|want|)`: relative per element, with a floor so that
    /// elements near zero are judged against the row scale.
    fn max_rel_err(got: &[f32], want: &[f64]) -> f64 {
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        got.iter()
            .zip(want)
            .map(|(&g, &w)| (f64::from(g) - w).abs() / w.abs().max(1e-3 * scale))
            .fold(0.0, f64::max)
    }

    fn rows_strategy() -> impl Strategy<Value = (usize, usize, Vec<f32>, Vec<f32>, f32)> {
        // dim 1, odd dims, one row and many rows; values in [-8, 8] (never all zeros: see the filter).
        (
            prop_oneof![Just(1usize), 1usize..40, 100usize..1100],
            1usize..24,
            1e-6f32..1e-2,
        )
            .prop_flat_map(|(dim, rows, eps)| {
                (
                    Just(dim),
                    Just(rows),
                    prop::collection::vec(-8.0f32..8.0, dim * rows),
                    prop::collection::vec(0.05f32..2.0, dim),
                    Just(eps),
                )
            })
            .prop_filter("not all zero", |(_, _, x, _, _)| {
                x.iter().any(|v| v.abs() > 1e-3)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Tolerance 2e-5: f32 sums of <= 1100 positive squares err by ~sqrt(n) * 6e-8 typically
        /// (n * 6e-8 = 6.6e-5 worst case, which random data never approaches), plus a few ulps for
        /// the sqrt, the division and the products. A mean over `dim - 1`, a missing eps or a
        /// misplaced weight each err by far more for the dims drawn.
        #[test]
        fn matches_f64_with_weight((dim, _rows, x, w, eps) in rows_strategy()) {
            let got = rms_norm(&x, dim, Some(&w), eps).unwrap();
            let want = rms_norm_f64(&x, dim, Some(&w), eps);
            prop_assert_eq!(got.len(), want.len());
            let err = max_rel_err(&got, &want);
            prop_assert!(err < 2e-5, "dim {} err {}", dim, err);
        }

        /// The weightless qk norm; same tolerance and reasoning as above.
        #[test]
        fn matches_f64_weightless((dim, _rows, x, _w, eps) in rows_strategy()) {
            let got = rms_norm(&x, dim, None, eps).unwrap();
            let want = rms_norm_f64(&x, dim, None, eps);
            let err = max_rel_err(&got, &want);
            prop_assert!(err < 2e-5, "dim {} err {}", dim, err);
        }
    }

    /// Hand-computed, eps 0: row [3, 4] has mean square 12.5, so y = x / sqrt(12.5) * w; row [1, -1]
    /// has mean square 1, so y = x * w. Tolerance 2 ulps (one sqrt, one division, two products).
    #[test]
    fn hand_computed() {
        let y = rms_norm(&[3.0, 4.0, 1.0, -1.0], 2, Some(&[2.0, 0.5]), 0.0).unwrap();
        let r = 1.0 / 12.5f64.sqrt();
        let want = [3.0 * r * 2.0, 4.0 * r * 0.5, 2.0, -0.5];
        for (g, w) in y.iter().zip(want) {
            assert!(
                (f64::from(*g) - w).abs() < 2.0 * f64::from(f32::EPSILON) * w.abs(),
                "{y:?}"
            );
        }
    }

    /// dim 1: every element becomes sign(x) * |x| / sqrt(x^2 + eps); tolerance 4 ulps.
    #[test]
    fn dim_one() {
        let y = rms_norm(&[-2.0, 0.5], 1, None, 1e-5).unwrap();
        let want = [-2.0 / (4.0f64 + 1e-5).sqrt(), 0.5 / (0.25f64 + 1e-5).sqrt()];
        for (g, w) in y.iter().zip(want) {
            assert!(
                (f64::from(*g) - w).abs() < 4.0 * f64::from(f32::EPSILON),
                "{y:?}"
            );
        }
    }

    #[test]
    fn rejects_bad_arguments() {
        let x = [1.0f32; 6];
        assert!(matches!(
            rms_norm(&x, 0, None, 1e-5),
            Err(Error::InvalidArgument { .. })
        ));
        let e = rms_norm(&x, 4, None, 1e-5).unwrap_err();
        assert!(
            matches!(e, Error::Shape { .. }) && e.to_string().contains("dim 4"),
            "{e}"
        );
        let e = rms_norm(&x, 3, Some(&[1.0, 1.0]), 1e-5).unwrap_err();
        assert!(
            matches!(e, Error::Shape { .. }) && e.to_string().contains("weight"),
            "{e}"
        );
        for eps in [-1e-5, f32::NAN, f32::INFINITY] {
            let e = rms_norm(&x, 3, None, eps).unwrap_err();
            assert!(
                matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("eps"),
                "{e}"
            );
        }
        assert_eq!(rms_norm(&[], 3, None, 1e-5).unwrap(), Vec::<f32>::new());
    }
}
