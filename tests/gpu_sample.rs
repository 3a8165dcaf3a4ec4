//! The device sampler (`ops::sample`, kernels/sample.cu) against its specification
//! (`reference::sample`): random logits (fresh seed, printed on failure) as bf16 and f32, rows 1 / 3 /
//! 64, vocab 1 / 7 / 1000 / 4099 / 202048, row strides past the vocab, planted ties. Ids are poisoned
//! (0xAAAAAAAA) before every launch. Greedy must equal the reference exactly; top-p must be
//! `reference::sample::consistent` at TOL with the u the reference derives from (seed, step, row).
//! Also: the step counter and the history ring, NaN / +inf rows, the distribution of many draws, and
//! the host validation through the op. Without a GPU each test prints one "skipped" line and passes.

use common::gpu::{random, Elem};
use common::Rng;
use half::bf16;
use llama4_cuda::device::{device_for_test, CudaSlice, Device};
use llama4_cuda::model::sampling::SamplingParams;
use llama4_cuda::ops::{sample, LogitsShape, SampleState};
use llama4_cuda::reference::sample::{consistent, pick, uniform};

mod common;

const POISON: u32 = 0xAAAA_AAAA;

/// Top-p tolerance on the CDF and on top_p: the kernel's weights are f32 `expf` (2 ulp, 2.4e-7
/// relative), its masses exact integers of 2^-45 of the largest weight; the reference is f64. A
/// boundary within 1e-5 of a threshold is accepted either way; a wrong kept set, tie order or draw
/// misses by the mass of a whole token (>= 1e-3 here except for far-tail tokens, never picked).
const TOL: f64 = 1e-5;

/// Runs the sampler once over `rows` rows (row stride `stride`) of `host` logits at counter `step`;
/// returns the ids, the counter after the call and the history ring.
fn run<T: Elem>(
    dev: &Device,
    host: &[T],
    shape: LogitsShape,
    params: &SamplingParams,
    step: u64,
    ring: usize,
) -> (Vec<u32>, u64, Vec<u32>, u32) {
    let s = dev.stream();
    let logits = dev.upload(host).expect("upload");
    let mut ids = dev.upload(&vec![POISON; shape.rows]).expect("poison");
    let mut history: CudaSlice<u32> = dev
        .upload(&vec![POISON; ring * shape.rows])
        .expect("poison");
    let mut state = SampleState::new(s, step).expect("state");
    sample(
        s,
        &logits,
        shape,
        params,
        &mut state,
        &mut ids,
        Some(&mut history),
    )
    .expect("sample");
    let ids = dev.download(&ids).expect("download");
    let status = state.status(s).expect("status");
    (
        ids,
        state.step(s).unwrap(),
        dev.download(&history).unwrap(),
        status,
    )
}

fn row(l: &[f32], shape: LogitsShape, r: usize) -> &[f32] {
    &l[r * shape.row_stride..r * shape.row_stride + shape.vocab]
}

/// Checks one launch against the reference; `l` is the logits as the kernel sees them (rounded to T).
fn check<T: Elem>(
    dev: &Device,
    l: &[f32],
    shape: LogitsShape,
    p: &SamplingParams,
    rng: &mut Rng,
    ctx: &str,
) {
    let host: Vec<T> = l.iter().map(|&x| T::from_f32(x)).collect();
    let seen: Vec<f32> = host.iter().map(|&x| x.to_f32()).collect();
    let step = rng.next_u64() >> 1;
    let ring = 3;
    let (ids, after, hist, status) = run(dev, &host, shape, p, step, ring);
    assert_eq!(after, step + 1, "counter: {ctx}");
    assert_eq!(status, 0, "status: {ctx}");
    let at = (step % ring as u64) as usize * shape.rows;
    assert_eq!(&hist[at..at + shape.rows], &ids[..], "history: {ctx}");
    for (r, &id) in ids.iter().enumerate() {
        let lr = row(&seen, shape, r);
        let u = uniform(p.seed, step, r as u64);
        let want = pick(lr, p.temperature, p.top_p, u).unwrap();
        if p.temperature == 0.0 {
            assert_eq!(id, want, "row {r}: {ctx}");
        } else {
            assert!(
                consistent(lr, p.temperature, p.top_p, u, id, TOL),
                "row {r}: got {id}, reference {want} (u {u}): {ctx}"
            );
        }
    }
}

fn random_shape(rng: &mut Rng, rows: usize, vocab: usize) -> LogitsShape {
    let pad = if rng.below(2) == 0 {
        0
    } else {
        1 + rng.below(9)
    };
    LogitsShape {
        rows,
        vocab,
        row_stride: vocab + pad,
    }
}

fn logits(rng: &mut Rng, shape: LogitsShape, amp: f32) -> Vec<f32> {
    let n = (shape.rows - 1) * shape.row_stride + shape.vocab;
    rng.vec(n, amp)
}

#[test]
fn greedy_equals_reference() {
    let Some(dev) = device_for_test("greedy_equals_reference") else {
        return;
    };
    let (mut rng, seed) = Rng::fresh();
    let p = SamplingParams {
        temperature: 0.0,
        top_p: 1.0,
        seed,
    };
    for rows in [1usize, 3, 64] {
        for vocab in [1usize, 7, 1000, 4099, 202_048] {
            let shape = random_shape(&mut rng, rows, vocab);
            let mut l = logits(&mut rng, shape, 8.0);
            // A planted tie for the maximum in every row: the lower index must win.
            if vocab > 2 {
                for r in 0..rows {
                    let (a, b) = (rng.below(vocab), rng.below(vocab));
                    l[r * shape.row_stride + a] = 9.0;
                    l[r * shape.row_stride + b] = 9.0;
                }
            }
            let ctx = format!("rows {rows} vocab {vocab} {shape:?} seed {seed}");
            check::<bf16>(&dev, &l, shape, &p, &mut rng, &format!("bf16 {ctx}"));
            check::<f32>(&dev, &l, shape, &p, &mut rng, &format!("f32 {ctx}"));
        }
    }
}

#[test]
fn top_p_is_consistent_with_reference() {
    let Some(dev) = device_for_test("top_p_is_consistent_with_reference") else {
        return;
    };
    let (mut rng, seed) = Rng::fresh();
    for rows in [1usize, 3, 64] {
        for vocab in [1usize, 7, 1000, 4099, 202_048] {
            for (t, top_p) in [
                (1.0f32, 1.0f32),
                (0.6, 0.9),
                (0.3, 0.5),
                (1.5, 0.99),
                (0.05, 0.9),
            ] {
                let shape = random_shape(&mut rng, rows, vocab);
                let l = logits(&mut rng, shape, 6.0);
                let p = SamplingParams {
                    temperature: t,
                    top_p,
                    seed: rng.next_u64(),
                };
                let ctx =
                    format!("rows {rows} vocab {vocab} t {t} p {top_p} {shape:?} seed {seed}");
                check::<bf16>(&dev, &l, shape, &p, &mut rng, &format!("bf16 {ctx}"));
                if vocab < 10_000 {
                    check::<f32>(&dev, &l, shape, &p, &mut rng, &format!("f32 {ctx}"));
                }
            }
        }
    }
}

#[test]
fn ties_and_edge_rows() {
    let Some(dev) = device_for_test("ties_and_edge_rows") else {
        return;
    };
    let (mut rng, seed) = Rng::fresh();
    let ninf = f32::NEG_INFINITY;
    // Rows of few levels (exact ties everywhere), all equal, all -inf, one finite among -inf.
    let vocab = 4099;
    let shape = LogitsShape::dense(6, vocab);
    let mut l = Vec::new();
    for r in 0..6 {
        l.extend((0..vocab).map(|i| match r {
            0 | 1 => -(rng.below(3) as f32) * 0.5,
            2 => 0.25,
            3 => ninf,
            4 => {
                if i == 4000 {
                    -7.0
                } else {
                    ninf
                }
            }
            _ => {
                if rng.below(4) == 0 {
                    ninf
                } else {
                    -(rng.below(2) as f32)
                }
            }
        }));
    }
    for (t, top_p) in [
        (0.0f32, 1.0f32),
        (1.0, 1.0),
        (0.7, 0.5),
        (1.0, 0.001),
        (1e-6, 0.9),
    ] {
        let p = SamplingParams {
            temperature: t,
            top_p,
            seed: rng.next_u64(),
        };
        let ctx = format!("t {t} p {top_p} seed {seed}");
        check::<bf16>(&dev, &l, shape, &p, &mut rng, &ctx);
        check::<f32>(&dev, &l, shape, &p, &mut rng, &ctx);
    }
    // Vocab 1: always 0.
    let p = SamplingParams {
        temperature: 0.8,
        top_p: 0.3,
        seed,
    };
    let (ids, ..) = run(
        &dev,
        &[1.5f32, -2.0, 0.0],
        LogitsShape::dense(3, 1),
        &p,
        5,
        1,
    );
    assert_eq!(ids, vec![0, 0, 0]);
}

#[test]
fn nan_and_inf_rows_flag_the_status() {
    let Some(dev) = device_for_test("nan_and_inf_rows_flag_the_status") else {
        return;
    };
    let (mut rng, seed) = Rng::fresh();
    let (rows, vocab) = (8, 1000);
    let shape = LogitsShape::dense(rows, vocab);
    let mut l = logits(&mut rng, shape, 4.0);
    l[2 * vocab + 17] = f32::NAN;
    l[5 * vocab + 999] = f32::INFINITY;
    for t in [0.0f32, 0.8] {
        let p = SamplingParams {
            temperature: t,
            top_p: 0.9,
            seed,
        };
        let host: Vec<bf16> = l.iter().map(|&x| bf16::from_f32(x)).collect();
        let (ids, _, _, status) = run(&dev, &host, shape, &p, 0, 1);
        assert_eq!(
            status,
            llama4_cuda::sys::L4C_SAMPLE_BAD_LOGIT,
            "t {t} seed {seed}"
        );
        assert_eq!((ids[2], ids[5]), (0, 0), "t {t}");
        assert!(ids.iter().all(|&i| (i as usize) < vocab), "{ids:?}");
        if t == 0.0 {
            let seen: Vec<f32> = host.iter().map(|x| x.to_f32()).collect();
            assert_eq!(ids[0], pick(row(&seen, shape, 0), 0.0, 1.0, 0.0).unwrap());
        }
    }
    // check() reports once, then the flag is clear.
    let s = dev.stream();
    let logits = dev.upload(&l).unwrap();
    let mut ids = dev.upload(&vec![POISON; rows]).unwrap();
    let mut state = SampleState::new(s, 0).unwrap();
    let p = SamplingParams::greedy();
    sample(s, &logits, shape, &p, &mut state, &mut ids, None).unwrap();
    let e = state.check(s).unwrap_err().to_string();
    assert!(e.contains("NaN or +inf"), "{e}");
    state.check(s).unwrap();
}

#[test]
fn many_draws_follow_the_distribution() {
    let Some(dev) = device_for_test("many_draws_follow_the_distribution") else {
        return;
    };
    let (mut rng, seed) = Rng::fresh();
    // 64 identical rows of 8 logits, 200 calls (the counter advances): 12800 draws.
    let (rows, vocab, calls) = (64usize, 8usize, 200usize);
    let base: Vec<f32> = (0..vocab).map(|_| rng.signed(0.05, 2.0)).collect();
    let l: Vec<f32> = (0..rows).flat_map(|_| base.clone()).collect();
    let p = SamplingParams {
        temperature: 0.8,
        top_p: 0.9,
        seed,
    };
    let s = dev.stream();
    let logits = dev.upload(&l).unwrap();
    let mut ids = dev.upload(&vec![POISON; rows]).unwrap();
    let mut state = SampleState::new(s, 0).unwrap();
    let mut count = vec![0usize; vocab];
    for _ in 0..calls {
        sample(
            s,
            &logits,
            LogitsShape::dense(rows, vocab),
            &p,
            &mut state,
            &mut ids,
            None,
        )
        .unwrap();
        for id in dev.download(&ids).unwrap() {
            count[id as usize] += 1;
        }
    }
    assert_eq!(state.step(s).unwrap(), calls as u64);
    let kept = llama4_cuda::reference::sample::kept(&base, 0.8, 0.9).unwrap();
    let total: f64 = kept.iter().map(|x| x.1).sum();
    let n = (rows * calls) as f64;
    for (i, &c) in count.iter().enumerate() {
        let q = kept
            .iter()
            .find(|x| x.0 as usize == i)
            .map_or(0.0, |x| x.1 / total);
        // 5 sigma of a binomial count (plus 1): fails only for a biased hash or a wrong kept set.
        let sigma = (n * q * (1.0 - q)).sqrt();
        assert!(
            (c as f64 - n * q).abs() <= 5.0 * sigma + 1.0,
            "token {i}: {c} draws, expected {:.1}: {count:?} seed {seed}",
            n * q
        );
    }
}

#[test]
fn bad_arguments_are_typed_errors() {
    let Some(dev) = device_for_test("bad_arguments_are_typed_errors") else {
        return;
    };
    let (mut rng, _) = Rng::fresh();
    let s = dev.stream();
    let logits = dev.upload(&random::<bf16>(&mut rng, 40)).unwrap();
    let mut ids = dev.zeros::<u32>(4).unwrap();
    let mut state = SampleState::new(s, 0).unwrap();
    let good = SamplingParams::default();
    let mut call = |shape, p: SamplingParams, ids: &mut CudaSlice<u32>| {
        sample(s, &logits, shape, &p, &mut state, ids, None)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let e = call(
        LogitsShape::dense(4, 10),
        SamplingParams {
            temperature: -1.0,
            ..good
        },
        &mut ids,
    );
    assert!(e.contains("temperature"), "{e}");
    let e = call(
        LogitsShape::dense(4, 10),
        SamplingParams { top_p: 0.0, ..good },
        &mut ids,
    );
    assert!(e.contains("top_p"), "{e}");
    let e = call(LogitsShape::dense(4, 0), good, &mut ids);
    assert!(e.contains("vocab = 0"), "{e}");
    let e = call(
        LogitsShape {
            rows: 4,
            vocab: 10,
            row_stride: 8,
        },
        good,
        &mut ids,
    );
    assert!(e.contains("row stride"), "{e}");
    let e = call(LogitsShape::dense(4, 11), good, &mut ids);
    assert!(e.contains("logits has 40"), "{e}");
    let e = call(LogitsShape::dense(3, 10), good, &mut ids);
    assert!(e.contains("ids has 4"), "{e}");
}
