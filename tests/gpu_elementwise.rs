//! GPU elementwise kernels against the CPU reference (`reference::elementwise`) and the `half` crate's
//! conversions. Random inputs (never zero), fresh per run (the seed is printed on failure), odd sizes
//! (1, 7, 4097, 1e6 + 3), aligned (16-byte vector path) and offset-by-one (scalar path) buffers, outputs
//! poisoned with NaN before each launch. Without a GPU each test prints one "skipped" line and passes.

use std::sync::Arc;

use common::gpu::{f32s, poisoned, random, rounded, Elem};
use common::{rel_err, Rng};
use half::{bf16, f16};
use llama4_cuda::device::{device_for_test, CudaStream, Device};
use llama4_cuda::reference::elementwise as reference;
use llama4_cuda::{ops, Error};

mod common;

const SIZES: [usize; 4] = [1, 7, 4097, 1_000_003];

fn stream(dev: &Device) -> &Arc<CudaStream> {
    dev.stream()
}

fn check_residual<A: Elem, B: Elem>(dev: &Device, rng: &mut Rng, seed: u64) {
    for n in SIZES {
        for off in [0usize, 1] {
            if n <= off {
                continue;
            }
            let (a, b): (Vec<A>, Vec<B>) = (random(rng, n), random(rng, n));
            let mut want = f32s(&a);
            reference::residual_add(&mut want, &f32s(&b)).expect("reference residual_add");
            let want = rounded::<A>(&want[off..]);
            let (mut da, db) = (dev.upload(&a).unwrap(), dev.upload(&b).unwrap());
            {
                let (mut va, vb) = (da.slice_mut(off..), db.slice(off..));
                ops::residual_add(stream(dev), &mut va, &vb).expect("residual_add");
            }
            let got = f32s(&dev.download(&da).unwrap());
            // Tolerance 0: both sides compute fl32(a + b) and round once to A's dtype (RNE).
            let e = rel_err(&got[off..], &want);
            assert!(
                e == 0.0,
                "residual_add {}+={} n={n} off={off}: rel err {e} (seed {seed})",
                A::DTYPE,
                B::DTYPE
            );
            // Elements before the view are untouched.
            assert_eq!(got[..off], f32s(&a[..off]), "seed {seed}");
        }
    }
}

#[test]
fn residual_add_matches_reference() {
    let Some(dev) = device_for_test("residual_add_matches_reference") else {
        return;
    };
    let (mut rng, seed) = Rng::fresh();
    check_residual::<f32, f32>(&dev, &mut rng, seed);
    check_residual::<f32, bf16>(&dev, &mut rng, seed);
    check_residual::<bf16, bf16>(&dev, &mut rng, seed);
    check_residual::<f16, f16>(&dev, &mut rng, seed);
    check_residual::<bf16, f32>(&dev, &mut rng, seed);
}

fn check_cast<D: Elem, S: Elem>(dev: &Device, rng: &mut Rng, seed: u64) {
    for n in SIZES {
        for off in [0usize, 1] {
            if n <= off {
                continue;
            }
            let src: Vec<S> = random(rng, n);
            let want = rounded::<D>(&f32s(&src[off..]));
            let dsrc = dev.upload(&src).unwrap();
            let mut dst = poisoned::<D>(dev, n);
            {
                let mut vd = dst.slice_mut(off..);
                ops::cast(stream(dev), &dsrc.slice(off..), &mut vd).expect("cast");
            }
            let got = f32s(&dev.download(&dst).unwrap());
            // Tolerance 0: S -> f32 is exact, f32 -> D rounds once (RNE) on both sides.
            let e = rel_err(&got[off..], &want);
            assert!(
                e == 0.0,
                "cast {}->{} n={n} off={off}: rel err {e} (seed {seed})",
                S::DTYPE,
                D::DTYPE
            );
            assert!(
                got[..off].iter().all(|x| x.is_nan()),
                "cast wrote before its view (seed {seed})"
            );
        }
    }
}

#[test]
fn cast_matches_half_conversions() {
    let Some(dev) = device_for_test("cast_matches_half_conversions") else {
        return;
    };
    let (mut rng, seed) = Rng::fresh();
    check_cast::<bf16, f32>(&dev, &mut rng, seed);
    check_cast::<f16, f32>(&dev, &mut rng, seed);
    check_cast::<f32, bf16>(&dev, &mut rng, seed);
    check_cast::<f32, f16>(&dev, &mut rng, seed);
    check_cast::<f16, bf16>(&dev, &mut rng, seed);
    check_cast::<f32, f32>(&dev, &mut rng, seed);
}

/// Tolerance of a silu_mul result stored as O: f32 1e-5 (expf on the GPU is within 2 ulp of the CPU's
/// exp, so results differ by a few f32 ulp); a 16-bit output 1e-2 (those ulps can flip one rounding
/// of a bf16 (2^-8) or f16 (2^-11) value).
fn silu_tol<O: Elem>() -> f64 {
    if std::mem::size_of::<O>() == 4 {
        1e-5
    } else {
        1e-2
    }
}

fn check_silu<O: Elem, I: Elem>(dev: &Device, rng: &mut Rng, seed: u64) {
    for n in SIZES {
        for off in [0usize, 1] {
            if n <= off {
                continue;
            }
            let (g, u): (Vec<I>, Vec<I>) = (random(rng, n), random(rng, n));
            let want = reference::silu_mul(&f32s(&g[off..]), &f32s(&u[off..]))
                .expect("reference silu_mul");
            let want = rounded::<O>(&want);
            let (dg, du) = (dev.upload(&g).unwrap(), dev.upload(&u).unwrap());
            let mut out = poisoned::<O>(dev, n);
            {
                let mut vo = out.slice_mut(off..);
                ops::silu_mul(stream(dev), &dg.slice(off..), &du.slice(off..), &mut vo)
                    .expect("silu_mul");
            }
            let got = f32s(&dev.download(&out).unwrap());
            let e = rel_err(&got[off..], &want);
            assert!(
                e <= silu_tol::<O>(),
                "silu_mul {}<-{} n={n} off={off}: rel err {e} (seed {seed})",
                O::DTYPE,
                I::DTYPE
            );
        }
    }
}

#[test]
fn silu_mul_matches_reference() {
    let Some(dev) = device_for_test("silu_mul_matches_reference") else {
        return;
    };
    let (mut rng, seed) = Rng::fresh();
    check_silu::<f32, f32>(&dev, &mut rng, seed);
    check_silu::<bf16, bf16>(&dev, &mut rng, seed);
    check_silu::<f32, bf16>(&dev, &mut rng, seed);
    check_silu::<f16, f16>(&dev, &mut rng, seed);
}

fn check_silu_fused<O: Elem, I: Elem>(dev: &Device, rng: &mut Rng, seed: u64) {
    for (rows, cols) in [(1, 1), (3, 7), (5, 64), (2, 4097), (70_000, 8)] {
        let gu: Vec<I> = random(rng, rows * 2 * cols);
        let gu32 = f32s(&gu);
        let mut want = Vec::with_capacity(rows * cols);
        for r in gu32.chunks(2 * cols) {
            want.extend(reference::silu_mul(&r[..cols], &r[cols..]).expect("reference silu_mul"));
        }
        let want = rounded::<O>(&want);
        let dgu = dev.upload(&gu).unwrap();
        let mut out = poisoned::<O>(dev, rows * cols);
        ops::silu_mul_fused(stream(dev), &dgu, rows, cols, &mut out).expect("silu_mul_fused");
        let got = f32s(&dev.download(&out).unwrap());
        let e = rel_err(&got, &want);
        assert!(
            e <= silu_tol::<O>(),
            "silu_mul_fused {rows}x{cols}: rel err {e} (seed {seed})"
        );
    }
}

#[test]
fn silu_mul_fused_matches_reference() {
    let Some(dev) = device_for_test("silu_mul_fused_matches_reference") else {
        return;
    };
    let (mut rng, seed) = Rng::fresh();
    check_silu_fused::<bf16, bf16>(&dev, &mut rng, seed);
    check_silu_fused::<f32, f32>(&dev, &mut rng, seed);
}

fn check_embedding<O: Elem, T: Elem>(dev: &Device, rng: &mut Rng, seed: u64) {
    let vocab = 1009;
    for (num_ids, dim) in [(1, 1), (7, 7), (4097, 64), (3, 4097), (1, 5120)] {
        let table: Vec<T> = random(rng, vocab * dim);
        let ids: Vec<u32> = (0..num_ids).map(|_| rng.below(vocab) as u32).collect();
        let want = rounded::<O>(
            &reference::embedding(&f32s(&table), dim, &ids).expect("reference embedding"),
        );
        let dtable = dev.upload(&table).unwrap();
        let mut out = poisoned::<O>(dev, num_ids * dim);
        ops::embedding_host_ids(stream(dev), &dtable, dim, &ids, &mut out).expect("embedding");
        let got = f32s(&dev.download(&out).unwrap());
        // Tolerance 0: a gather, converted once.
        let e = rel_err(&got, &want);
        assert!(
            e == 0.0,
            "embedding {}<-{} {num_ids}x{dim}: rel err {e} (seed {seed})",
            O::DTYPE,
            T::DTYPE
        );
    }
}

#[test]
fn embedding_matches_reference() {
    let Some(dev) = device_for_test("embedding_matches_reference") else {
        return;
    };
    let (mut rng, seed) = Rng::fresh();
    check_embedding::<f32, bf16>(&dev, &mut rng, seed);
    check_embedding::<bf16, bf16>(&dev, &mut rng, seed);
    check_embedding::<f32, f32>(&dev, &mut rng, seed);
    check_embedding::<f16, f16>(&dev, &mut rng, seed);
}

#[test]
fn embedding_out_of_range_ids() {
    let Some(dev) = device_for_test("embedding_out_of_range_ids") else {
        return;
    };
    let (mut rng, seed) = Rng::fresh();
    let (vocab, dim) = (50usize, 24usize);
    let table: Vec<f32> = random(&mut rng, vocab * dim);
    let ids: Vec<u32> = vec![3, 49, 7, 50, 0, u32::MAX];
    let dtable = dev.upload(&table).unwrap();
    let mut out = poisoned::<f32>(&dev, ids.len() * dim);

    // Host ids: rejected before anything runs, naming the first bad position.
    let err = ops::embedding_host_ids(stream(&dev), &dtable, dim, &ids, &mut out).unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { .. }) && err.to_string().contains("position 3"),
        "{err}"
    );

    // Device ids: bad rows become NaN, good rows are gathered, and the flag is raised.
    let dids = dev.upload(&ids).unwrap();
    let mut flag = dev.zeros::<u32>(1).unwrap();
    ops::embedding(stream(&dev), &dtable, dim, &dids, &mut out, Some(&mut flag))
        .expect("embedding");
    let got = dev.download(&out).unwrap();
    assert_eq!(dev.download(&flag).unwrap(), vec![1], "seed {seed}");
    for (t, &id) in ids.iter().enumerate() {
        let row = &got[t * dim..(t + 1) * dim];
        if (id as usize) < vocab {
            assert_eq!(
                row,
                &table[id as usize * dim..(id as usize + 1) * dim],
                "row {t} (seed {seed})"
            );
        } else {
            assert!(
                row.iter().all(|x| x.is_nan()),
                "row {t} of bad id {id} must be NaN"
            );
        }
    }
    // All ids valid: the flag stays 0.
    let good = dev.upload(&[1u32, 2, 3]).unwrap();
    let mut flag = dev.zeros::<u32>(1).unwrap();
    let mut out3 = poisoned::<f32>(&dev, 3 * dim);
    ops::embedding(
        stream(&dev),
        &dtable,
        dim,
        &good,
        &mut out3,
        Some(&mut flag),
    )
    .expect("embedding");
    assert_eq!(dev.download(&flag).unwrap(), vec![0]);
}

#[test]
fn bad_shapes_are_typed_errors() {
    let Some(dev) = device_for_test("bad_shapes_are_typed_errors") else {
        return;
    };
    let mut a = dev.filled(10, 1.5f32).unwrap();
    let b = dev.filled(9, 0.5f32).unwrap();
    let e = ops::residual_add(stream(&dev), &mut a, &b).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "residual_add",
                ..
            }
        ),
        "{e}"
    );
    let mut out = dev.filled(10, 0.0f32).unwrap();
    let e = ops::silu_mul(stream(&dev), &a, &b, &mut out).unwrap_err();
    assert!(matches!(e, Error::Shape { op: "silu_mul", .. }), "{e}");
    let e = ops::silu_mul_fused(stream(&dev), &a, 2, 3, &mut out).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let mut u = dev.filled(10, 1u32).unwrap();
    let e = ops::residual_add(stream(&dev), &mut u, &b).unwrap_err();
    assert!(
        matches!(e, Error::Shape { .. } | Error::DType { .. }),
        "{e}"
    );
    let c = dev.filled(10, 2u32).unwrap();
    let e = ops::residual_add(stream(&dev), &mut u, &c).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DType {
                op: "residual_add",
                ..
            }
        ),
        "{e}"
    );
    let e = ops::embedding_host_ids(stream(&dev), &a, 3, &[0], &mut out).unwrap_err();
    assert!(
        matches!(e, Error::Shape { .. }),
        "table of 10 is not a multiple of dim 3: {e}"
    );
    let e = ops::embedding_host_ids(stream(&dev), &a, 0, &[0], &mut out).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
}
