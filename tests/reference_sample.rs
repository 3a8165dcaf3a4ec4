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
/// It follows the kernel's data layout where that matters and asserts the invariants the kernel relies
/// on without checking them: bins accumulated as (lo, hi) u32 words with add_mass's carry, in a
/// shuffled order (the atomics' order is arbitrary); exactly one of the 1024 threads (two descending
/// digits each) writes sel_digit per pass; exactly one warp holds r; the walk of 32-lane chunks (tie
/// ranks by popcount of lower lanes) hits exactly once. A violation panics instead of falling back to
/// the argmax as the kernel would, so the fallback can never hide a wrong threshold here.
fn kernel_mirror(l: &[f32], t: f32, top_p: f32, x: u64, rng: &mut Rng) -> u32 {
    const WARPS: usize = 32;
    const THREADS: usize = 1024;
    const BINS: usize = 2048;
    let v = l.len();
    let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
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
    assert!(total < 1 << 63 && total > 0, "Q = {total}");
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
    // Elements in a random order: the order the shared atomics happen to run in.
    let mut order: Vec<usize> = (0..v).collect();
    for i in (1..v).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let (mut wbits, mut above, mut c, mut qstar) = (0u32, 0u64, 0u64, 0u64);
    if target < total {
        let (mut prefix, mut known, mut ties) = (0u32, 0u32, 0u32);
        for pass in 0..3 {
            let width = if pass == 2 { 10 } else { 11 };
            let shift = 32 - known - width;
            let (mut lo, mut hi, mut count) =
                (vec![0u32; BINS], vec![0u32; BINS], vec![0u32; BINS]);
            for &i in &order {
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
                // add_mass: the low word's atomicAdd returns old; a wrap carries into the high word.
                let (ql, qh) = (qi as u32, (qi >> 32) as u32);
                let old = lo[d];
                lo[d] = old.wrapping_add(ql);
                hi[d] += qh + u32::from(old.wrapping_add(ql) < old);
                count[d] += 1;
            }
            let mass = |d: usize| (u64::from(hi[d]) << 32) + u64::from(lo[d]);
            // Thread t owns digits 2047 - 2t and 2046 - 2t; an exclusive scan in thread order.
            let (mut excl, mut sel) = (0u64, Vec::new());
            for tid in 0..THREADS {
                let hd = BINS - 1 - 2 * tid;
                let (m_hi, m_lo) = (mass(hd), mass(hd - 1));
                let (s0, s1) = (above + excl, above + excl + m_hi);
                let s2 = s1 + m_lo;
                if s0 < target && s1 >= target {
                    sel.push((hd, s0));
                } else if s1 < target && s2 >= target {
                    sel.push((hd - 1, s1));
                }
                excl += m_hi + m_lo;
            }
            assert_eq!(sel.len(), 1, "pass {pass}: sel_digit writers {sel:?}");
            let (d, a) = sel[0];
            above = a;
            ties = count[d];
            prefix = (prefix << width) | d as u32;
            known += width;
        }
        wbits = prefix;
        qstar = q(f32::from_bits(wbits));
        assert!(qstar > 0 && target > above && ties >= 1);
        c = (target - above).div_ceil(qstar); // the kernel's (target - above + qstar - 1) / qstar
        assert!(c >= 1 && c <= ties as u64, "c {c} ties {ties}");
    }
    let kept_total = if target < total {
        above + c * qstar
    } else {
        total
    };
    let r = (((x & !0x7ff) as u128 * kept_total as u128) >> 64) as u64;
    let seg = (v.div_ceil(WARPS) + 31) & !31;
    let bounds = |warp: usize| {
        (
            (warp * seg).min(v),
            (warp * seg).min(v).saturating_add(seg).min(v),
        )
    };
    // Per warp: mass above w*, ties at w*; then warp 0's exclusive scans.
    let (mut mass_base, mut tie_base, mut holders) = (0u64, 0u64, Vec::new());
    let mut bases = Vec::new();
    for warp in 0..WARPS {
        let (b0, b1) = bounds(warp);
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
            holders.push(warp);
        }
        bases.push((mass_base, tie_base));
        mass_base += mw;
        tie_base += wt;
    }
    assert_eq!(mass_base, kept_total, "the warps' kept masses sum to K");
    assert_eq!(holders.len(), 1, "warps holding r = {r}: {holders:?}");
    let warp = holders[0];
    let (b0, b1) = bounds(warp);
    let (mut run, mut tie_rank) = bases[warp];
    let mut i0 = b0;
    while i0 < b1 {
        // One 32-lane chunk: ballots of ties and hits, a scan of the kept masses.
        let lanes: Vec<(bool, u64, u32)> = (0..32)
            .map(|lane| {
                let i = i0 + lane;
                let wi = if i < b1 { w(i) } else { 0.0 };
                let (bits, qi) = (wi.to_bits(), q(wi));
                (i < b1, qi, bits)
            })
            .collect();
        let tie_mask = (0..32).fold(0u32, |acc, lane| {
            let (inb, qi, bits) = lanes[lane];
            acc | (u32::from(inb && bits == wbits && qi != 0) << lane)
        });
        let mut incl = run;
        let mut hit = 0u32;
        for (lane, &(inb, qi, bits)) in lanes.iter().enumerate() {
            let tie = inb && bits == wbits && qi != 0;
            let my_rank = tie_rank + u64::from((tie_mask & ((1u32 << lane) - 1)).count_ones());
            let kept = inb && (bits > wbits || (tie && my_rank < c));
            let mk = if kept { qi } else { 0 };
            incl += mk;
            if mk != 0 && incl > r && incl - mk <= r {
                hit |= 1 << lane;
            }
        }
        assert!(hit.count_ones() <= 1, "several lanes hit: {hit:#x}");
        if hit != 0 {
            return (i0 + hit.trailing_zeros() as usize) as u32;
        }
        run = incl;
        tie_rank += u64::from(tie_mask.count_ones());
        i0 += 32;
    }
    panic!("warp {warp} holds r = {r} but its walk found nothing");
}

/// Rows the radix select finds hard: exact ties (equal masses in one bin down to the last pass),
/// -inf entries, all -inf, a single level, two levels a bf16 ulp apart.
fn tie_heavy_logits(rng: &mut Rng, n: usize, kind: usize) -> Vec<f32> {
    match kind {
        0 => vec![rng.signed(-4.0, 4.0); n],
        1 => vec![f32::NEG_INFINITY; n],
        2 => (0..n)
            .map(|_| match rng.below(4) {
                0 => f32::NEG_INFINITY,
                k => -(k as f32) * 0.5,
            })
            .collect(),
        _ => {
            // Two bf16 neighbours (weights 2^-8 relative apart at t <= 2: distinct in f32). Logits
            // one f32 ulp apart would not do: their f32 weights can round to a tie that the f64
            // reference does not see, and the tie order then keeps the other token (a 1e-8 mass).
            let a = half::bf16::from_f32(rng.signed(0.5, 4.0));
            let b = half::bf16::from_bits(a.to_bits() + 1);
            let (a, b) = (a.to_f32(), b.to_f32());
            (0..n)
                .map(|_| if rng.below(2) == 0 { a } else { b })
                .collect()
        }
    }
}

/// The kernel mirror's pick for one fresh (step, row) draw must be consistent with the reference.
/// 1e-5: f32 weights (exp within 1 ulp here, CUDA expf 2 ulp: 2.4e-7 relative) summed as exact
/// integers after rounding to 2^-45 of the largest, against the reference's f64: far below it; exact
/// ties stay bit-identical in f32, so the tie counts and order are exact.
fn check_mirror(l: &[f32], t: f32, p: f32, seed: u64, rng: &mut Rng, what: &str) {
    let (step, row) = (rng.next_u64(), rng.below(64) as u64);
    let u = uniform(seed, step, row);
    let id = kernel_mirror(l, t, p, draw_bits(seed, step, row), rng);
    assert!(
        llama4_cuda::reference::sample::consistent(l, t, p, u, id, 1e-5),
        "{what} t {t} p {p} u {u}: mirror picked {id}, reference {}; seed {seed}",
        pick(l, t, p, u).unwrap()
    );
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
                check_mirror(&l, t, p, seed, &mut rng, &format!("n {n}"));
                cases += 1;
            }
        }
    }
    assert!(cases > 100);
}

#[test]
fn kernel_mirror_handles_ties_and_equal_masses() {
    let (mut rng, seed) = Rng::fresh();
    let mut cases = 0;
    for &n in &[1usize, 2, 10, 33, 1000, 4099] {
        for kind in 0..4 {
            for &(t, p) in &[
                (1.0f32, 1.0f32),
                (0.6, 0.9),
                (1.0, 0.5),
                (2.0, 0.31),
                (1e-6, 0.7),
            ] {
                let l = tie_heavy_logits(&mut rng, n, kind);
                check_mirror(&l, t, p, seed, &mut rng, &format!("n {n} kind {kind}"));
                cases += 1;
            }
        }
    }
    // All equal: top_p 0.5 of 10 keeps exactly ids 0..5, each a fifth of [0, 1).
    let l = [0.25f32; 10];
    for j in 0..5u64 {
        let x = ((u128::from(2 * j + 1) << 64) / 10) as u64;
        assert_eq!(
            kernel_mirror(&l, 1.0, 0.5, x, &mut rng),
            j as u32,
            "seed {seed}"
        );
    }
    // The target exactly at a digit boundary (weights 1, 1/2, 1/2 in f32: Q = 2^(S+1), target at
    // top_p 0.5 = the mass of the first bin): that digit is selected and only id 0 is kept; a
    // selection with `> target` would leave sel_digit unwritten (caught by the writer count).
    let half_w = -std::f32::consts::LN_2;
    assert_eq!(
        half_w.exp(),
        0.5,
        "the case needs an exact f32 weight of 1/2"
    );
    let l = [0.0f32, half_w, half_w];
    for j in 0..8u64 {
        let x = ((u128::from(2 * j + 1) << 64) / 16) as u64;
        assert_eq!(kernel_mirror(&l, 1.0, 0.5, x, &mut rng), 0, "seed {seed}");
        // top_p 0.75: token 0 (2/3 of the kept mass) and the first tie (1/3); u = (2j + 1) / 16.
        let want = u32::from(j >= 5);
        assert_eq!(
            kernel_mirror(&l, 1.0, 0.75, x, &mut rng),
            want,
            "seed {seed}"
        );
    }
    assert!(cases > 100);
}
