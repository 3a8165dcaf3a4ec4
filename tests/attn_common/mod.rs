//! Test support shared by the KV-cache and attention tests: a seeded generator and an independent
//! naive f64 attention over plain dense K/V arrays.
#![allow(dead_code)]

#[path = "../common/rng.rs"]
mod rng;
pub use rng::Rng;

/// The mask and temperature of one naive attention call.
#[derive(Clone, Copy, Debug)]
pub struct NaiveSpec {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f64,
    /// `Some(c)`: chunked-local with attention chunk `c`; `None`: plain causal.
    pub chunk: Option<usize>,
    /// `(floor_scale, attn_scale)`.
    pub temp: Option<(f64, f64)>,
}

/// Naive attention in f64: `q` `[t, heads, d]` at positions `q_start..`, `k`/`v` `[len, kv_heads, d]`
/// holding every position from 0. Returns `[t, heads, d]`.
pub fn naive_attention(q: &[f32], q_start: usize, k: &[f32], v: &[f32], s: &NaiveSpec) -> Vec<f64> {
    let (h_n, kvh_n, d) = (s.heads, s.kv_heads, s.head_dim);
    let t_n = q.len() / (h_n * d);
    let mut out = vec![0.0f64; q.len()];
    for t in 0..t_n {
        let pos = q_start + t;
        let f = s.temp.map_or(1.0, |(fs, a)| {
            ((pos as f64 + 1.0) / fs).floor().ln_1p() * a + 1.0
        });
        for h in 0..h_n {
            let kvh = h / (h_n / kvh_n);
            let qh = &q[(t * h_n + h) * d..][..d];
            let visible: Vec<usize> = (0..=pos)
                .filter(|&j| s.chunk.map_or(true, |c| j / c == pos / c))
                .collect();
            let scores: Vec<f64> = visible
                .iter()
                .map(|&j| {
                    let kj = &k[(j * kvh_n + kvh) * d..][..d];
                    qh.iter()
                        .zip(kj)
                        .map(|(&a, &b)| a as f64 * f * b as f64)
                        .sum::<f64>()
                        * s.scale
                })
                .collect();
            let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
            let total: f64 = w.iter().sum();
            let o = &mut out[(t * h_n + h) * d..][..d];
            for (&j, wj) in visible.iter().zip(&w) {
                let vj = &v[(j * kvh_n + kvh) * d..][..d];
                for (o, &x) in o.iter_mut().zip(vj) {
                    *o += wj / total * x as f64;
                }
            }
        }
    }
    out
}

/// `max |out - want| / max |want|`.
pub fn rel_err(out: &[f32], want: &[f64]) -> f64 {
    assert_eq!(out.len(), want.len());
    let num = out
        .iter()
        .zip(want)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0, f64::max);
    let den = want.iter().map(|x| x.abs()).fold(0.0, f64::max);
    num / den.max(f64::MIN_POSITIVE)
}
