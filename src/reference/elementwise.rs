//! Small elementwise ops.
use crate::error::{check_len, Error, Result};

/// `silu(x) = x * sigmoid(x) = x / (1 + exp(-x))` in f32 (0 for x -> -inf, x for x -> +inf).
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `silu(gate) * up`, elementwise.
pub fn silu_mul(gate: &[f32], up: &[f32]) -> Result<Vec<f32>> {
    check_len("silu_mul", "up", up.len(), gate.len())?;
    Ok(gate.iter().zip(up).map(|(&g, &u)| silu(g) * u).collect())
}

/// Rows `ids[i]` of `table[vocab, dim]`; an id >= vocab is an error.
pub fn embedding(table: &[f32], dim: usize, ids: &[u32]) -> Result<Vec<f32>> {
    const OP: &str = "embedding";
    if dim == 0 {
        return Err(Error::invalid(OP, "dim is 0"));
    }
    if table.len() % dim != 0 {
        return Err(Error::shape(
            OP,
            format!(
                "table has {} elements, not a multiple of dim {dim}",
                table.len()
            ),
        ));
    }
    let vocab = table.len() / dim;
    let mut out = Vec::with_capacity(ids.len() * dim);
    for (i, &id) in ids.iter().enumerate() {
        let id = id as usize;
        if id >= vocab {
            return Err(Error::invalid(
                OP,
                format!("token id {id} (position {i}) is outside the vocabulary of {vocab}"),
            ));
        }
        out.extend_from_slice(&table[id * dim..(id + 1) * dim]);
    }
    Ok(out)
}

/// `a += b`.
pub fn residual_add(a: &mut [f32], b: &[f32]) -> Result<()> {
    check_len("residual_add", "b", b.len(), a.len())?;
    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Against f64 `g / (1 + e^-g) * u`. Tolerance 4e-7 relative to max(|want|, 1e-6): exp in f32 is
        /// within ~1 ulp, then one add, one division, one product, each 0.5 ulp (6e-8).
        #[test]
        fn silu_mul_matches_f64(gu in prop::collection::vec((-30.0f32..30.0, -5.0f32..5.0), 1..300)) {
            let (g, u): (Vec<f32>, Vec<f32>) = gu.into_iter().unzip();
            let got = silu_mul(&g, &u).unwrap();
            for ((&g, &u), &y) in g.iter().zip(&u).zip(&got) {
                let want = f64::from(g) / (1.0 + (-f64::from(g)).exp()) * f64::from(u);
                prop_assert!((f64::from(y) - want).abs() <= 4e-7 * want.abs().max(1e-6), "{} {} {} {}", g, u, y, want);
            }
        }

        /// Exact: f32 addition is what the reference is.
        #[test]
        fn residual_add_is_elementwise(ab in prop::collection::vec((-1e3f32..1e3, -1e3f32..1e3), 1..300)) {
            let (mut a, b): (Vec<f32>, Vec<f32>) = ab.into_iter().unzip();
            let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
            residual_add(&mut a, &b).unwrap();
            prop_assert_eq!(a, want);
        }

        /// Exact copies of the chosen rows, in order, repeats allowed.
        #[test]
        fn embedding_gathers_rows(
            (vocab, dim, table, ids) in (1usize..50, 1usize..20).prop_flat_map(|(v, d)| {
                (Just(v), Just(d), prop::collection::vec(-1.0f32..1.0, v * d), prop::collection::vec(0..v as u32, 0..30))
            })
        ) {
            let got = embedding(&table, dim, &ids).unwrap();
            prop_assert_eq!(got.len(), ids.len() * dim);
            for (i, &id) in ids.iter().enumerate() {
                prop_assert_eq!(&got[i * dim..(i + 1) * dim], &table[id as usize * dim..(id as usize + 1) * dim]);
            }
            prop_assert!(vocab * dim == table.len());
        }
    }

    /// Saturation: no NaN at the extremes.
    #[test]
    fn silu_extremes() {
        assert_eq!(silu(-200.0), -0.0);
        assert_eq!(silu(200.0), 200.0);
        assert_eq!(silu(0.0), 0.0);
    }

    #[test]
    fn rejects_bad_arguments() {
        let e = silu_mul(&[1.0, 2.0], &[1.0]).unwrap_err();
        assert!(
            matches!(e, Error::Shape { .. }) && e.to_string().contains("up has 1"),
            "{e}"
        );
        let e = residual_add(&mut [1.0], &[1.0, 2.0]).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
        let table = [0.5f32; 6];
        let e = embedding(&table, 2, &[0, 3]).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("token id 3")
                && msg.contains("vocabulary of 3")
                && msg.contains("position 1"),
            "{msg}"
        );
        assert!(matches!(
            embedding(&table, 4, &[0]),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            embedding(&table, 0, &[0]),
            Err(Error::InvalidArgument { .. })
        ));
    }
}
