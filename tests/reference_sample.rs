//! The device sampler's specification (`reference::sample`) against the host sampler
//! (`model::sampling::nucleus`): the same kept set and weights on random logits (fresh seed, odd
//! vocab sizes, ties, tiny and large temperatures, top_p = 1), inverse-CDF picking in index order that
//! gives each kept token exactly its share of [0, 1), and the edge cases (vocab 1, all equal, -inf,
//! NaN / +inf, bad parameters). CPU only.

use common::Rng;
use llama4_cuda::model::sampling::{self, nucleus};
use llama4_cuda::reference::sample::{draw_bits, kept, mix, pick, uniform, weights};

mod common;

/// Kept ids and weights, sorted by id, from `nucleus` (sorted by weight there).
fn nucleus_by_id(l: &[f32], t: f32, p: f32) -> Vec<(u32, f64)> {
    let mut v = nucleus(l, t, p);
    v.sort_by_key(|x| x.0);
    v
}

fn random_logits(rng: &mut Rng, n: usize, amp: f32) -> Vec<f32> {
    rng.vec(n, amp)
}

#[test]
fn kept_set_equals_nucleus_on_random_logits() {
    let (mut rng, seed) = Rng::fresh();
    for &n in &[1usize, 2, 3, 7, 100, 1001, 5003] {
        for &t in &[1e-6f32, 0.05, 0.3, 0.6, 1.0, 2.5] {
            for &p in &[0.05f32, 0.5, 0.9, 0.95, 0.999, 1.0] {
                let l = random_logits(&mut rng, n, 8.0);
                let got = kept(&l, t, p).unwrap();
                // Weights are computed by the same f64 formula: equal exactly.
                assert_eq!(
                    got,
                    nucleus_by_id(&l, t, p),
                    "n {n} t {t} p {p} seed {seed}"
                );
            }
        }
    }
}

#[test]
fn kept_set_equals_nucleus_with_ties() {
    let (mut rng, seed) = Rng::fresh();
    for &n in &[2usize, 5, 64, 999] {
        for &levels in &[1usize, 2, 3, 7] {
            for &p in &[0.1f32, 0.3, 0.5, 0.9, 1.0] {
                // Logits from a few levels (many exact ties), some -inf.
                let l: Vec<f32> = (0..n)
                    .map(|_| match rng.below(levels + 1) {
                        0 if levels > 1 => f32::NEG_INFINITY,
                        k => -(k as f32) * 0.75,
                    })
                    .collect();
                for &t in &[0.5f32, 1.0] {
                    let got = kept(&l, t, p).unwrap();
                    let want = nucleus_by_id(&l, t, p);
                    assert_eq!(got, want, "n {n} levels {levels} t {t} p {p} seed {seed}");
                }
            }
        }
    }
}

#[test]
fn pick_gives_each_kept_token_its_share() {
    let (mut rng, seed) = Rng::fresh();
    for &n in &[1usize, 3, 50, 997] {
        let l = random_logits(&mut rng, n, 3.0);
        for &(t, p) in &[(1.0f32, 1.0f32), (0.6, 0.9), (2.0, 0.5), (0.3, 0.95)] {
            let k = kept(&l, t, p).unwrap();
            let total: f64 = k.iter().map(|x| x.1).sum();
            // u on a grid of N points: token i gets N * p_i of them, +-1 (its interval's ends).
            const N: usize = 20_000;
            let mut count = vec![0usize; n];
            for j in 0..N {
                let u = (j as f64 + 0.5) / N as f64;
                count[pick(&l, t, p, u).unwrap() as usize] += 1;
            }
            let kept_ids: Vec<u32> = k.iter().map(|x| x.0).collect();
            for (i, &c) in count.iter().enumerate() {
                let share = k
                    .iter()
                    .find(|x| x.0 as usize == i)
                    .map_or(0.0, |x| x.1 / total);
                let ctx = format!("n {n} t {t} p {p} token {i} seed {seed}");
                assert!(
                    (c as f64 - N as f64 * share).abs() <= 1.0,
                    "{c} vs {share}: {ctx}"
                );
                assert!(c == 0 || kept_ids.contains(&(i as u32)), "{ctx}");
            }
            // Index order: a larger u never picks a lower id.
            let mut last = 0;
            for j in 0..200 {
                let id = pick(&l, t, p, j as f64 / 200.0).unwrap();
                assert!(id >= last, "n {n}: u {j}/200 picked {id} after {last}");
                last = id;
            }
        }
    }
}

#[test]
fn greedy_is_the_host_argmax() {
    let (mut rng, seed) = Rng::fresh();
    for &n in &[1usize, 2, 33, 202_048] {
        let mut l = random_logits(&mut rng, n, 4.0);
        if n > 2 {
            // A tie for the maximum: the lower id wins.
            let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let a = rng.below(n / 2);
            let b = n / 2 + rng.below(n - n / 2);
            l[a] = m + 1.0;
            l[b] = m + 1.0;
        }
        let u = uniform(seed, 0, n as u64);
        assert_eq!(
            pick(&l, 0.0, 0.9, u).unwrap(),
            sampling::argmax(&l),
            "n {n} seed {seed}"
        );
    }
    assert_eq!(pick(&[f32::NEG_INFINITY; 4], 0.0, 1.0, 0.5).unwrap(), 0);
    assert_eq!(pick(&[1.0, 3.0, 3.0, -1.0], 0.0, 1.0, 0.99).unwrap(), 1);
}

#[test]
fn edge_cases() {
    // Vocab 1: always token 0.
    for u in [0.0, 0.5, 0.999_999] {
        assert_eq!(pick(&[-3.0], 0.7, 0.1, u).unwrap(), 0);
        assert_eq!(pick(&[f32::NEG_INFINITY], 0.7, 1.0, u).unwrap(), 0);
    }
    // All equal: the first ceil(top_p * n) ids, uniformly (top_p 0.9 of 10 keeps 9).
    let l = [0.25f32; 10];
    let k: Vec<u32> = kept(&l, 0.6, 0.9).unwrap().iter().map(|x| x.0).collect();
    assert_eq!(k, (0..9).collect::<Vec<_>>());
    for j in 0..9 {
        let u = (j as f64 + 0.5) / 9.0;
        assert_eq!(pick(&l, 0.6, 0.9, u).unwrap(), j);
    }
    // -inf logits are never kept; all -inf is uniform over the first ids (as nucleus).
    let l = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0];
    let k: Vec<u32> = kept(&l, 1.0, 1.0).unwrap().iter().map(|x| x.0).collect();
    assert_eq!(k, vec![1, 3]);
    let l = [f32::NEG_INFINITY; 4];
    assert_eq!(kept(&l, 1.0, 0.5).unwrap(), vec![(0, 1.0), (1, 1.0)]);
    assert_eq!(kept(&l, 1.0, 0.5).unwrap(), nucleus_by_id(&l, 1.0, 0.5));
    // A tiny temperature keeps only the maximum (its weight is exactly 1, the rest underflow).
    let l = [0.0f32, 1.0, 0.999, -5.0];
    assert_eq!(kept(&l, 1e-6, 1.0).unwrap(), vec![(1, 1.0)]);
    assert_eq!(pick(&l, 1e-6, 1.0, 0.999).unwrap(), 1);
    // top_p small keeps the single most likely token.
    assert_eq!(kept(&[0.0, 2.0, 1.0], 1.0, 1e-6).unwrap().len(), 1);
    // Errors: NaN, +inf, empty, bad parameters, u outside [0, 1).
    for bad in [f32::NAN, f32::INFINITY] {
        let e = pick(&[0.0, bad], 1.0, 0.9, 0.5).unwrap_err().to_string();
        assert!(e.contains("logit 1"), "{e}");
        assert!(pick(&[0.0, bad], 0.0, 0.9, 0.5).is_err());
    }
    assert!(pick(&[], 1.0, 0.9, 0.5)
        .unwrap_err()
        .to_string()
        .contains("vocab 0"));
    assert!(pick(&[0.0], -1.0, 0.9, 0.5)
        .unwrap_err()
        .to_string()
        .contains("temperature"));
    assert!(pick(&[0.0], 1.0, 0.0, 0.5)
        .unwrap_err()
        .to_string()
        .contains("top_p"));
    assert!(pick(&[0.0], 1.0, 1.5, 0.5)
        .unwrap_err()
        .to_string()
        .contains("top_p"));
    assert!(pick(&[0.0], 1.0, 0.5, 1.0)
        .unwrap_err()
        .to_string()
        .contains("u = 1"));
    assert_eq!(weights(&[f32::NEG_INFINITY, 0.0], 1.0), vec![0.0, 1.0]);
}

#[test]
fn draws_are_splitmix_hashes_of_seed_step_row() {
    // mix is one splitmix64 step: from state 0 its first output.
    assert_eq!(mix(0), sampling::Rng::new(0).next_u64());
    assert_eq!(mix(0), 0xe220_a839_7b1d_cdaf);
    assert_eq!(draw_bits(7, 3, 2), mix(mix(mix(7) ^ 3) ^ 2));
    // Different seeds, steps and rows give different numbers, all in [0, 1).
    let mut seen = std::collections::HashSet::new();
    for seed in 0..4u64 {
        for step in 0..16u64 {
            for row in 0..16u64 {
                let u = uniform(seed, step, row);
                assert!((0.0..1.0).contains(&u));
                assert!(seen.insert(u.to_bits()), "repeat at {seed} {step} {row}");
            }
        }
    }
    // Roughly uniform: the mean of 1024 draws is 0.5 +- 4 sigma (sigma = 0.29 / 32 = 0.009).
    let mean: f64 = (0..1024).map(|s| uniform(9, s, 0)).sum::<f64>() / 1024.0;
    assert!((mean - 0.5).abs() < 0.036, "{mean}");
}

/// kernels/sample.cu's top-p path step by step on the host (f32 weights with Rust's `exp` for CUDA's
/// `expf`, the same fixed-point masses, the three radix passes over 2048-bin histograms, the tie count,
/// the 32 warp segments and the walk of the chosen warp): the index math the GPU runs, checkable here.
fn kernel_mirror(l: &[f32], t: f32, top_p: f32, x: u64) -> u32 {
    const WARPS: usize = 32;
    let v = l.len();
    let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let argmax = sampling::argmax(l);
    let bitlen = 64 - (v as u64).leading_zeros() as i32;
    let scale = 2f32.powi(63 - bitlen);
    let w = |i: usize| -> f32 {
        if m == f32::NEG_INFINITY {
            1.0
        } else {
            ((l[i] - m) / t).exp()
        }
    };
    let q = |w: f32| -> u64 { (w * scale).round_ties_even() as u64 };
    let total: u64 = (0..v).map(|i| q(w(i))).sum();
    let mut target = total;
    if top_p < 1.0 {
        let tq = (top_p as f64 * total as f64).ceil();
        target = if tq < 1.0 {
            1
        } else if tq >= total as f64 {
            total
        } else {
            tq as u64
        };
    }
    let (mut wbits, mut above, mut c, mut qstar) = (0u32, 0u64, 0u64, 0u64);
    if target < total {
        let (mut prefix, mut known, mut ties) = (0u32, 0u32, 0u32);
        for pass in 0..3 {
            let width = if pass == 2 { 10 } else { 11 };
            let shift = 32 - known - width;
            let mut mass = vec![0u64; 2048];
            let mut count = vec![0u32; 2048];
            for i in 0..v {
                let wi = w(i);
                let bits = wi.to_bits();
                if known > 0 && bits >> (32 - known) != prefix {
                    continue;
                }
                let qi = q(wi);
                if qi == 0 {
                    continue;
                }
                let d = ((bits >> shift) & ((1 << width) - 1)) as usize;
                mass[d] += qi;
                count[d] += 1;
            }
            // Descending digits: the highest whose suffix mass (plus above) reaches target.
            let mut s = above;
            let mut sel = None;
            for d in (0..2048).rev() {
                if s < target && s + mass[d] >= target {
                    sel = Some((d, s));
                    break;
                }
                s += mass[d];
            }
            let (d, a) = sel.expect("a digit reaches the target");
            above = a;
            ties = count[d];
            prefix = (prefix << width) | d as u32;
            known += width;
        }
        wbits = prefix;
        qstar = q(f32::from_bits(wbits));
        c = ((target - above).div_ceil(qstar)).min(ties as u64);
    }
    let kept_total = if target < total {
        above + c * qstar
    } else {
        total
    };
    let r = (((x & !0x7ff) as u128 * kept_total as u128) >> 64) as u64;
    let seg = (v.div_ceil(WARPS) + 31) & !31;
    let (mut mass_base, mut tie_base) = (0u64, 0u64);
    for warp in 0..WARPS {
        let (b0, b1) = ((warp * seg).min(v), (warp * seg + seg).min(v));
        let (mut wm, mut wt) = (0u64, 0u64);
        for i in b0..b1 {
            let wi = w(i);
            let (bits, qi) = (wi.to_bits(), q(wi));
            if bits > wbits {
                wm += qi;
            }
            wt += (bits == wbits && qi != 0) as u64;
        }
        let kt = if tie_base >= c {
            0
        } else {
            (c - tie_base).min(wt)
        };
        let mw = wm + kt * qstar;
        if mass_base <= r && r < mass_base + mw {
            // The walk: first kept index whose inclusive prefix exceeds r.
            let (mut run, mut rank) = (mass_base, tie_base);
            for i in b0..b1 {
                let wi = w(i);
                let (bits, qi) = (wi.to_bits(), q(wi));
                let tie = bits == wbits && qi != 0;
                let kept = bits > wbits || (tie && rank < c);
                rank += tie as u64;
                let mk = if kept { qi } else { 0 };
                if mk != 0 && run + mk > r {
                    return i as u32;
                }
                run += mk;
            }
            panic!("warp {warp} holds r but its walk found nothing");
        }
        mass_base += mw;
        tie_base += wt;
    }
    argmax
}

#[test]
fn kernel_index_math_mirrored_on_the_host_agrees() {
    let (mut rng, seed) = Rng::fresh();
    let mut cases = 0;
    for &n in &[1usize, 2, 31, 33, 1000, 4097, 202_048] {
        for &(t, p) in &[
            (1.0f32, 1.0f32),
            (0.6, 0.9),
            (0.3, 0.5),
            (2.0, 0.99),
            (0.01, 0.9),
        ] {
            let reps = if n > 10_000 { 2 } else { 6 };
            for rep in 0..reps {
                let mut l = random_logits(&mut rng, n, 6.0);
                if rep % 2 == 1 {
                    // bf16 logits: many exact ties.
                    l = l
                        .iter()
                        .map(|&x| half::bf16::from_f32(x).to_f32())
                        .collect();
                }
                let (step, row) = (rng.next_u64(), rng.below(64) as u64);
                let x = draw_bits(seed, step, row);
                let u = uniform(seed, step, row);
                let id = kernel_mirror(&l, t, p, x);
                // 1e-5: f32 weights (exp within 1 ulp here, CUDA expf 2 ulp: 2.4e-7 relative) summed
                // as exact integers after rounding to 2^-45 of the largest: far below it.
                assert!(
                    llama4_cuda::reference::sample::consistent(&l, t, p, u, id, 1e-5),
                    "n {n} t {t} p {p} u {u}: mirror picked {id}, reference {}; seed {seed}",
                    pick(&l, t, p, u).unwrap()
                );
                cases += 1;
            }
        }
    }
    assert!(cases > 100);
}
