//! MoE routing, grouped GEMMs, combine and the Llama 4 MoE block against naive per-token f64
//! evaluations written here.
mod common;

use common::{naive_dequant, naive_matmul_t, rel_err, sigmoid64, silu64, to_f64, Rng};
use llama4_cuda::quant::{
    DenseWeight, Fp8Scaling, Fp8Weight, Int4Config, Int4Weight, ScaleDType, Weight,
};
use llama4_cuda::reference::moe::{
    combine, combine_range, grouped_gemm, grouped_gemm_sorted, grouped_gemm_swiglu, moe_block,
    moe_block_range, swiglu, top_k_gating, Routing, SwiGlu,
};
use llama4_cuda::Error;
use proptest::prelude::*;

/// Chained f32 GEMMs (gate/up, then down) each add ~1e-7 relative error (see reference_gemm.rs);
/// silu and the products keep it at that order. 2e-5 leaves two orders of margin.
const CHAIN_TOL: f64 = 2e-5;

/// Top-k by the definition: sort (logit descending, index ascending), keep k.
fn naive_topk(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Every invariant of the permutation, checked from the definitions.
fn check_permutation(r: &Routing) -> Result<(), TestCaseError> {
    let slots = r.tokens * r.k;
    let mut seen = vec![false; slots];
    for (p, &s) in r.sorted_slots.iter().enumerate() {
        let s = s as usize;
        prop_assert!(s < slots && !seen[s], "sorted_slots is not a permutation");
        seen[s] = true;
        prop_assert_eq!(r.inverse[s] as usize, p);
        if p > 0 {
            let prev = r.sorted_slots[p - 1] as usize;
            let (e0, e1) = (r.topk_ids[prev], r.topk_ids[s]);
            prop_assert!(
                e0 < e1 || (e0 == e1 && prev < s),
                "not expert-sorted and stable at {}",
                p
            );
        }
    }
    for e in 0..r.experts {
        let count = r.topk_ids.iter().filter(|&&x| x as usize == e).count();
        prop_assert_eq!(r.counts[e] as usize, count);
        prop_assert_eq!(r.offsets[e + 1] - r.offsets[e], r.counts[e]);
    }
    prop_assert_eq!(r.offsets[0], 0);
    prop_assert_eq!(r.offsets[r.experts] as usize, slots);
    Ok(())
}

/// A random weight `[n, k]`: dense, fp8 per channel, or int4 (g32 symmetric bf16 / asymmetric f32).
fn weight(rng: &mut Rng, kind: usize, n: usize, k: usize, amp: f32) -> Weight {
    let w = rng.vec(n * k, amp);
    let int4 = |symmetric, scale_dtype| {
        let c = Int4Config {
            group_size: 32,
            symmetric,
            scale_dtype,
        };
        Weight::Int4(Int4Weight::quantize(&w, n, k, c).unwrap())
    };
    match kind {
        0 => Weight::Dense(DenseWeight {
            n,
            k,
            data: w.clone(),
        }),
        1 => Weight::Fp8(Fp8Weight::quantize(&w, n, k, Fp8Scaling::PerChannel).unwrap()),
        2 => int4(true, ScaleDType::BF16),
        _ => int4(false, ScaleDType::F32),
    }
}

fn mlp(rng: &mut Rng, kind: usize, hidden: usize, inter: usize) -> SwiGlu {
    SwiGlu {
        gate: weight(rng, kind, inter, hidden, 0.5),
        up: weight(rng, kind, inter, hidden, 0.5),
        down: weight(rng, kind, hidden, inter, 0.5),
    }
}

/// `down(silu(gate x) * up x)` for one row, in f64 from the independently decoded weights.
fn naive_swiglu(x: &[f64], m: &SwiGlu) -> Vec<f64> {
    let (hidden, inter) = (m.gate.k(), m.gate.n());
    let g = naive_matmul_t(x, 1, hidden, &naive_dequant(&m.gate), inter);
    let u = naive_matmul_t(x, 1, hidden, &naive_dequant(&m.up), inter);
    let h: Vec<f64> = g.iter().zip(&u).map(|(&g, &u)| silu64(g) * u).collect();
    naive_matmul_t(&h, 1, inter, &naive_dequant(&m.down), hidden)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Top-k on logits drawn from a few integers (ties everywhere) or continuous values.
    #[test]
    fn gating_matches_definition(
        seed in any::<u64>(),
        tokens in 1usize..20,
        experts in 1usize..24,
        kk in 1usize..=8,
        tied in any::<bool>(),
    ) {
        let k = kk.min(experts);
        let mut rng = Rng(seed);
        let logits: Vec<f32> = (0..tokens * experts)
            .map(|_| if tied { rng.below(3) as f32 - 1.0 } else { rng.uniform() * 4.0 })
            .collect();
        let r = top_k_gating(&logits, tokens, experts, k).unwrap();
        prop_assert_eq!((r.tokens, r.k, r.experts), (tokens, k, experts));
        for t in 0..tokens {
            let row = &logits[t * experts..(t + 1) * experts];
            let want = naive_topk(row, k);
            for j in 0..k {
                let s = t * k + j;
                prop_assert_eq!(r.topk_ids[s] as usize, want[j], "token {} choice {}", t, j);
                let score = sigmoid64(row[want[j]] as f64);
                // exp, add, divide in f32 on a value <= 1: a few 2^-24.
                prop_assert!((r.score(s) as f64 - score).abs() <= 3e-7, "score {} vs {}", r.score(s), score);
            }
        }
        check_permutation(&r)?;
        r.validate().unwrap();
    }

    /// Grouped GEMMs and combine against per-slot naive products; many experts and few tokens leave
    /// experts empty.
    #[test]
    fn grouped_ops_match_per_slot_naive(
        seed in any::<u64>(),
        tokens in 1usize..9,
        experts in 1usize..12,
        kk in 1usize..=8,
        hidden in 1usize..50,
        inter in 1usize..20,
        kind in 0usize..4,
        scale_input in any::<bool>(),
    ) {
        let k = kk.min(experts);
        let mut rng = Rng(seed);
        let x = rng.vec(tokens * hidden, 1.0);
        let r = top_k_gating(&rng.vec(tokens * experts, 3.0), tokens, experts, k).unwrap();
        let mlps: Vec<SwiGlu> = (0..experts).map(|_| mlp(&mut rng, kind, hidden, inter)).collect();
        let gates: Vec<Weight> = mlps.iter().map(|m| m.gate.clone()).collect();
        let ups: Vec<&Weight> = mlps.iter().map(|m| &m.up).collect();
        let downs: Vec<&Weight> = mlps.iter().map(|m| &m.down).collect();

        let g = grouped_gemm(&x, hidden, &r, &gates, scale_input).unwrap();
        let h = grouped_gemm_swiglu(&x, hidden, &r, &gates.iter().collect::<Vec<_>>(), &ups, scale_input).unwrap();
        let hs = rng.vec(tokens * k * inter, 1.0);
        let d = grouped_gemm_sorted(&hs, inter, &r, &downs).unwrap();
        let (mut want_g, mut want_h, mut want_d) = (vec![0.0; g.len()], vec![0.0; h.len()], vec![0.0; d.len()]);
        for s in 0..tokens * k {
            let (t, e, p) = (s / k, r.topk_ids[s] as usize, r.inverse[s] as usize);
            let sc = if scale_input { r.score(s) as f64 } else { 1.0 };
            let xin: Vec<f64> = x[t * hidden..(t + 1) * hidden].iter().map(|&v| v as f64 * sc).collect();
            let gv = naive_matmul_t(&xin, 1, hidden, &naive_dequant(&mlps[e].gate), inter);
            let uv = naive_matmul_t(&xin, 1, hidden, &naive_dequant(&mlps[e].up), inter);
            let dv = naive_matmul_t(&to_f64(&hs[p * inter..(p + 1) * inter]), 1, inter, &naive_dequant(&mlps[e].down), hidden);
            for c in 0..inter {
                want_g[p * inter + c] = gv[c];
                want_h[p * inter + c] = silu64(gv[c]) * uv[c];
            }
            want_d[p * hidden..(p + 1) * hidden].copy_from_slice(&dv);
        }
        for (name, got, want) in [("gate", &g, &want_g), ("swiglu", &h, &want_h), ("sorted", &d, &want_d)] {
            let err = rel_err(got, want);
            prop_assert!(err <= CHAIN_TOL, "{}: rel err {:e}", name, err);
        }

        // combine: out[t] = base[t] + sum_j y[inverse[t*k+j]], exact up to k f32 additions.
        let base = rng.vec(tokens * hidden, 1.0);
        let mut out = base.clone();
        combine(&d, hidden, &r, &mut out).unwrap();
        let want: Vec<f64> = (0..tokens * hidden)
            .map(|i| {
                let (t, c) = (i / hidden, i % hidden);
                base[i] as f64 + (0..k).map(|j| d[r.inverse[t * k + j] as usize * hidden + c] as f64).sum::<f64>()
            })
            .collect();
        let err = rel_err(&out, &want);
        prop_assert!(err <= 1e-6, "combine: rel err {:e}", err); // k <= 8 f32 additions: 8 * 2^-24
    }

    /// The MoE block against a naive per-token evaluation of LLAMA4.md's formula.
    #[test]
    fn moe_block_matches_per_token_naive(
        seed in any::<u64>(),
        tokens in 1usize..7,
        experts in 1usize..9,
        kk in 1usize..=3,
        hidden in 1usize..40,
        inter in 1usize..16,
        kind in 0usize..4,
        with_shared in any::<bool>(),
    ) {
        let k = kk.min(experts);
        let mut rng = Rng(seed);
        let x = rng.vec(tokens * hidden, 1.0);
        let router = weight(&mut rng, 0, experts, hidden, 1.0);
        let mlps: Vec<SwiGlu> = (0..experts).map(|_| mlp(&mut rng, kind, hidden, inter)).collect();
        let shared = mlp(&mut rng, kind, hidden, inter);
        let shared = with_shared.then_some(&shared);
        let y = moe_block(&x, tokens, &router, &mlps, shared, k).unwrap();

        let rw = naive_dequant(&router);
        let mut want = vec![0.0f64; tokens * hidden];
        for t in 0..tokens {
            let xt = to_f64(&x[t * hidden..(t + 1) * hidden]);
            let logits = naive_matmul_t(&xt, 1, hidden, &rw, experts);
            let mut order: Vec<usize> = (0..experts).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
            // A near-tie at the k-th place could route differently in f32: skip such draws.
            if k < experts {
                prop_assume!(logits[order[k - 1]] - logits[order[k]] > 1e-4);
            }
            let mut acc = match shared {
                Some(m) => naive_swiglu(&xt, m),
                None => vec![0.0; hidden],
            };
            for &e in &order[..k] {
                let score = sigmoid64(logits[e]);
                let routed: Vec<f64> = xt.iter().map(|v| v * score).collect();
                for (a, v) in acc.iter_mut().zip(naive_swiglu(&routed, &mlps[e])) {
                    *a += v;
                }
            }
            want[t * hidden..(t + 1) * hidden].copy_from_slice(&acc);
        }
        let err = rel_err(&y, &want);
        prop_assert!(err <= CHAIN_TOL, "rel err {:e}", err);
    }
}

#[test]
fn every_token_to_one_expert_leaves_the_rest_empty() {
    let (tokens, experts, hidden, inter) = (6, 5, 33, 7);
    let mut rng = Rng(17);
    // Expert 3 wins by a wide margin for every token.
    let logits: Vec<f32> = (0..tokens * experts)
        .map(|i| if i % experts == 3 { 5.0 } else { rng.uniform() })
        .collect();
    let r = top_k_gating(&logits, tokens, experts, 1).unwrap();
    assert_eq!(r.counts, vec![0, 0, 0, 6, 0]);
    assert_eq!(r.offsets, vec![0, 0, 0, 0, 6, 6]);
    assert_eq!(r.sorted_slots, vec![0, 1, 2, 3, 4, 5]);
    let x = rng.vec(tokens * hidden, 1.0);
    let ws: Vec<Weight> = (0..experts)
        .map(|_| weight(&mut rng, 0, inter, hidden, 1.0))
        .collect();
    let y = grouped_gemm(&x, hidden, &r, &ws, true).unwrap();
    let xs: Vec<f64> = (0..tokens * hidden)
        .map(|i| x[i] as f64 * r.score(i / hidden) as f64)
        .collect();
    let want = naive_matmul_t(&xs, tokens, hidden, &naive_dequant(&ws[3]), inter);
    assert!(rel_err(&y, &want) <= 1e-5); // one f32 GEMM, see reference_gemm.rs
}

#[test]
fn all_tied_logits_pick_the_lowest_indices() {
    let r = top_k_gating(&[0.25; 2 * 16], 2, 16, 8).unwrap();
    assert_eq!(r.topk_ids, [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7]);
    assert!(r
        .topk_scores_bits
        .iter()
        .all(|&b| f32::from_bits(b) == 1.0 / (1.0 + (-0.25f32).exp())));
    // Stable within an expert: token 0's slot before token 1's.
    assert_eq!(r.sorted_slots[..4], [0, 8, 1, 9]);
}

#[test]
fn one_token_over_128_experts_with_k_8() {
    let mut rng = Rng(128);
    let logits = rng.vec(128, 5.0);
    for k in 1..=8 {
        let r = top_k_gating(&logits, 1, 128, k).unwrap();
        let want = naive_topk(&logits, k);
        assert_eq!(
            r.topk_ids.iter().map(|&e| e as usize).collect::<Vec<_>>(),
            want
        );
        assert_eq!(r.counts.iter().filter(|&&c| c == 1).count(), k);
        // Sorted order is by expert id.
        let mut by_id = want.clone();
        by_id.sort();
        let sorted: Vec<usize> = r
            .sorted_slots
            .iter()
            .map(|&s| r.topk_ids[s as usize] as usize)
            .collect();
        assert_eq!(sorted, by_id);
    }
}

#[test]
fn bad_arguments_are_typed_errors() {
    let logits = vec![0.5f32; 3 * 16];
    for (e, k) in [(16, 0), (16, 9), (4, 5), (0, 1)] {
        let err = top_k_gating(&logits[..3 * e], 3, e, k).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    }
    assert!(matches!(
        top_k_gating(&logits, 3, 15, 1),
        Err(Error::Shape { .. })
    ));
    let mut nan = logits.clone();
    nan[20] = f32::NAN;
    assert!(top_k_gating(&nan, 3, 16, 1)
        .unwrap_err()
        .to_string()
        .contains("token 1"));

    let mut rng = Rng(5);
    let (hidden, inter) = (12, 5);
    let mlps: Vec<SwiGlu> = (0..4).map(|_| mlp(&mut rng, 0, hidden, inter)).collect();
    let router = weight(&mut rng, 0, 4, hidden, 1.0);
    let x = rng.vec(2 * hidden, 1.0);
    assert!(matches!(
        moe_block(&x, 2, &router, &mlps[..3], None, 1),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        moe_block(&x, 3, &router, &mlps, None, 1),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        moe_block(&x, 2, &router, &mlps, None, 5),
        Err(Error::InvalidArgument { .. })
    ));
    let odd = mlp(&mut rng, 0, hidden + 1, inter);
    assert!(matches!(
        moe_block(&x, 2, &router, &mlps, Some(&odd), 1),
        Err(Error::Shape { .. })
    ));
    let mut broken = mlps[1].clone();
    broken.down = weight(&mut rng, 0, hidden, inter + 1, 1.0);
    assert!(matches!(swiglu(&x, 2, &broken), Err(Error::Shape { .. })));

    // A tampered routing is caught before any indexing.
    let r = top_k_gating(&rng.vec(2 * 4, 1.0), 2, 4, 2).unwrap();
    let gates: Vec<&Weight> = mlps.iter().map(|m| &m.gate).collect();
    let mut bad = r.clone();
    bad.inverse.swap(0, 1);
    assert!(grouped_gemm(&x, hidden, &bad, &gates, true).is_err());
    let mut bad = r.clone();
    bad.sorted_slots[0] = 99;
    assert!(grouped_gemm(&x, hidden, &bad, &gates, true).is_err());
    assert!(matches!(
        grouped_gemm(&x, hidden, &r, &gates[..3], true),
        Err(Error::Shape { .. })
    ));
    let mut out = vec![0.0; 2 * hidden];
    assert!(matches!(
        combine(&x, hidden, &r, &mut out),
        Err(Error::Shape { .. })
    ));
}

/// Expert parallelism's partial blocks (docs/MULTI-GPU.md): for random inputs and every format, the
/// full range is moe_block bit for bit, and ranges partitioning 0..E (2 and 3 pieces, one of them
/// empty; the shared expert on one piece) sum to moe_block. Tolerance: the sum regroups each
/// token's <= k + 1 f32 terms, a few ulps of the output's scale: 1e-5 relative (rel_err is
/// against the largest |value|).
#[test]
fn partial_ranges_sum_to_the_full_block() {
    let (mut rng, seed) = Rng::fresh();
    for case in 0..8u64 {
        let experts = [16, 5, 9, 16, 3, 12, 16, 7][case as usize];
        let (tokens, hidden, inter) = (3 + rng.below(6), 8 + rng.below(40), 1 + rng.below(20));
        let k = (1 + rng.below(3)).min(experts);
        let kind = case as usize % 4;
        let x = rng.vec(tokens * hidden, 1.0);
        let router = weight(&mut rng, 0, experts, hidden, 1.0);
        let mlps: Vec<SwiGlu> = (0..experts)
            .map(|_| mlp(&mut rng, kind, hidden, inter))
            .collect();
        let shared = mlp(&mut rng, kind, hidden, inter);
        let full = moe_block(&x, tokens, &router, &mlps, Some(&shared), k).unwrap();
        let whole =
            moe_block_range(&x, tokens, &router, &mlps, Some(&shared), k, 0..experts).unwrap();
        assert_eq!(
            whole, full,
            "seed {seed} case {case}: the full range is moe_block"
        );
        let cut = 1 + rng.below(experts - 1).min(experts - 2);
        let splits: [Vec<usize>; 3] = [
            vec![0, cut, experts],
            vec![0, cut, cut, experts], // an empty middle piece
            vec![0, experts / 3, 2 * experts / 3, experts],
        ];
        for bounds in &splits {
            let mut sum = vec![0.0f64; tokens * hidden];
            for (i, w) in bounds.windows(2).enumerate() {
                let sh = (i == 0).then_some(&shared);
                let part = moe_block_range(&x, tokens, &router, &mlps, sh, k, w[0]..w[1]).unwrap();
                if w[0] == w[1] && i > 0 {
                    assert!(
                        part.iter().all(|&v| v == 0.0),
                        "empty range without shared is 0"
                    );
                }
                for (a, v) in sum.iter_mut().zip(&part) {
                    *a += *v as f64;
                }
            }
            let sum: Vec<f32> = sum.iter().map(|&v| v as f32).collect();
            let err = rel_err(&sum, &to_f64(&full));
            assert!(
                err <= 1e-5,
                "seed {seed} case {case} {bounds:?}: rel err {err:e}"
            );
        }
    }
}

/// A partial range leaves other experts' slots out: combine_range over 0..0 adds nothing, over the
/// full range equals combine; a range past E is a typed error.
#[test]
fn combine_range_and_bad_ranges() {
    let mut rng = Rng(77);
    let (tokens, experts, k, n) = (5, 6, 2, 7);
    let r = top_k_gating(&rng.vec(tokens * experts, 1.0), tokens, experts, k).unwrap();
    let y = rng.vec(tokens * k * n, 1.0);
    let base = rng.vec(tokens * n, 1.0);
    let mut a = base.clone();
    combine(&y, n, &r, &mut a).unwrap();
    let mut b = base.clone();
    combine_range(&y, n, &r, 0..experts, &mut b).unwrap();
    assert_eq!(a, b);
    let mut c = base.clone();
    combine_range(&y, n, &r, 2..2, &mut c).unwrap();
    assert_eq!(c, base);
    assert!(matches!(
        combine_range(&y, n, &r, 3..7, &mut c),
        Err(Error::InvalidArgument { .. })
    ));
    let (hidden, inter) = (8, 4);
    let mlps: Vec<SwiGlu> = (0..experts)
        .map(|_| mlp(&mut rng, 0, hidden, inter))
        .collect();
    let router = weight(&mut rng, 0, experts, hidden, 1.0);
    let x = rng.vec(2 * hidden, 1.0);
    #[allow(clippy::reversed_empty_ranges)]
    for bad in [0..7, 4..3] {
        assert!(matches!(
            moe_block_range(&x, 2, &router, &mlps, None, 1, bad),
            Err(Error::InvalidArgument { .. })
        ));
    }
}
