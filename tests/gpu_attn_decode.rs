//! GPU split-KV decode against the CPU reference `reference::attention::attention` reading a CPU
//! cache that holds the same bytes (tests/gpu_kv_cache.rs proves the bytes equal): lengths 1, 113,
//! 8191, 8192, 8193, 70000 in one batch (mixed lengths), causal with NoPE temperature tuning and
//! chunked-local 8192, bf16 and fp8 caches, pages in the pinned host tier, a ring cache decoded step
//! by step across attention-chunk boundaries, GQA groups 1 / 3 / 5 / 8. Outputs are poisoned with NaN
//! before each launch. Without a GPU each test prints one "skipped" line and passes.
//!
//! Tolerance: max |gpu - ref| / max |ref| <= 1e-2. The kernel feeds bf16 Q and K (exact copies of
//! the cache's values) to the tensor cores with f32 accumulation; the softmax weights are rounded to
//! bf16 (2^-9 relative) for the P.V product and the output to bf16 (2^-9): ~4e-3 worst case.
//! fp8 against the unquantized bf16 reference: 0.1 (e4m3 keeps 4 significant bits, 2^-4 relative
//! per element, which averages down over keys and dims).
mod attn_common;
mod gpu_kv_common;

use attn_common::Rng;
use gpu_kv_common::{bf16_vec, layout, to_f32, Twin};
use half::bf16;
use llama4_cuda::device::{device_for_test, Device};
use llama4_cuda::kv_cache::{KvDType, KvLayout, Retention};
use llama4_cuda::ops::attn_decode::{attn_decode, AttnScratch};
use llama4_cuda::reference::attention::{AttnParams, MaskKind, TempTuning};
use llama4_cuda::Error;

const TOL: f64 = 1e-2;
const NOPE: Option<TempTuning> = Some(TempTuning {
    floor_scale: 8192.0,
    attn_scale: 0.1,
});

fn params(heads: usize, kv_heads: usize, mask: MaskKind, temp: Option<TempTuning>) -> AttnParams {
    AttnParams {
        heads,
        kv_heads,
        head_dim: 128,
        scale: (128f32).powf(-0.5),
        mask,
        temp,
    }
}

/// Runs the decode for all sequences with a fresh random q; returns (q as f32, out as f32).
fn decode(
    dev: &Device,
    t: &Twin,
    p: &AttnParams,
    rng: &mut Rng,
    scratch: &mut AttnScratch,
) -> (Vec<f32>, Vec<f32>) {
    let n = t.gpu.batch() * p.heads * p.head_dim;
    let q = bf16_vec(rng, n, 4.0);
    let qd = dev.upload(&q).unwrap();
    let mut out = dev.filled(n, bf16::NAN).unwrap();
    attn_decode(dev.stream(), &qd, &t.gpu, p, &mut out, scratch).expect("attn_decode");
    let o = to_f32(&dev.download(&out).unwrap());
    assert!(
        o.iter().all(|x| x.is_finite()),
        "every output element written and finite"
    );
    (to_f32(&q), o)
}

/// max |a - b| / max |b| over sequence b's rows.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max);
    let den = b.iter().map(|y| y.abs() as f64).fold(0.0, f64::max);
    num / den.max(f64::MIN_POSITIVE)
}

/// Checks every sequence of `t` against the reference; returns the worst error.
fn check(
    dev: &Device,
    t: &Twin,
    p: &AttnParams,
    rng: &mut Rng,
    scratch: &mut AttnScratch,
    what: &str,
) -> f64 {
    let (q, out) = decode(dev, t, p, rng, scratch);
    let row = p.heads * p.head_dim;
    let mut worst = 0.0f64;
    for b in 0..t.gpu.batch() {
        let want = t.reference(b, &q[b * row..][..row], p);
        let e = rel(&out[b * row..][..row], &want);
        assert!(
            e <= TOL,
            "{what}: sequence {b} (len {}): error {e:e}",
            t.gpu.len(b)
        );
        worst = worst.max(e);
    }
    worst
}

const LENGTHS: [usize; 6] = [1, 113, 8191, 8192, 8193, 70_000];

fn twin_with_lengths(dev: &Device, dtype: KvDType, budget: usize, rng: &mut Rng) -> Twin {
    let mut t = Twin::new(
        dev,
        layout(dtype, 256),
        Retention::All,
        LENGTHS.len(),
        70_000,
        budget,
    );
    for (b, &n) in LENGTHS.iter().enumerate() {
        // Magnitudes (so fp8 scales) that differ by page and head: a wrong scale must fail.
        t.append_varied(dev, rng, b, n);
    }
    t
}

#[test]
fn lengths_masks_and_dtypes_match_the_reference() {
    let Some(dev) = device_for_test("lengths_masks_and_dtypes_match_the_reference") else {
        return;
    };
    let mut scratch = AttnScratch::default();
    for dtype in [KvDType::BF16, KvDType::Fp8E4M3] {
        // The fp8 cache puts 100 of each sequence's 274 pages in device memory, the rest on the host.
        let budget = match dtype {
            KvDType::BF16 => usize::MAX,
            _ => 100 * 2 * LENGTHS.len() * (8 * 256 * 128 + 256),
        };
        let mut rng = Rng(0xdec0 + budget as u64 % 7);
        let t = twin_with_lengths(&dev, dtype, budget, &mut rng);
        for (mask, temp) in [
            (MaskKind::Causal, NOPE),
            (MaskKind::Causal, None),
            (MaskKind::ChunkedLocal { chunk: 8192 }, None),
            (MaskKind::ChunkedLocal { chunk: 1000 }, None),
        ] {
            let p = params(40, 8, mask, temp);
            let e = check(
                &dev,
                &t,
                &p,
                &mut rng,
                &mut scratch,
                &format!("{dtype:?} {mask:?} {temp:?}"),
            );
            eprintln!(
                "{dtype:?} {mask:?} temp {}: worst error {e:.2e}",
                temp.is_some()
            );
        }
    }
}

#[test]
fn fp8_cache_is_close_to_the_bf16_reference() {
    let Some(dev) = device_for_test("fp8_cache_is_close_to_the_bf16_reference") else {
        return;
    };
    let mut scratch = AttnScratch::default();
    let mut rng = Rng(0xf8f8);
    let l8 = layout(KvDType::Fp8E4M3, 256);
    let mut t8 = Twin::new(&dev, l8, Retention::All, 2, 9000, usize::MAX);
    let mut t16 = Twin::new(
        &dev,
        KvLayout {
            dtype: KvDType::BF16,
            ..l8
        },
        Retention::All,
        2,
        9000,
        usize::MAX,
    );
    for (b, n) in [(0usize, 777usize), (1, 9000)] {
        let k = bf16_vec(&mut rng, n * 1024, 1.0);
        let v = bf16_vec(&mut rng, n * 1024, 1.0);
        t8.append_rows(&dev, b, &k, &v);
        t16.append_rows(&dev, b, &k, &v);
    }
    let p = params(40, 8, MaskKind::Causal, NOPE);
    let q = bf16_vec(&mut rng, 2 * 40 * 128, 4.0);
    let qd = dev.upload(&q).unwrap();
    let mut out = dev.filled(q.len(), bf16::NAN).unwrap();
    attn_decode(dev.stream(), &qd, &t8.gpu, &p, &mut out, &mut scratch).unwrap();
    let o = to_f32(&dev.download(&out).unwrap());
    let qf = to_f32(&q);
    for b in 0..2 {
        let want = t16.reference(b, &qf[b * 5120..][..5120], &p);
        let e = rel(&o[b * 5120..][..5120], &want);
        assert!(e <= 0.1, "fp8 vs bf16 reference, sequence {b}: {e:e}");
        eprintln!("fp8 vs bf16 reference, sequence {b}: {e:.2e}");
    }
}

#[test]
fn gqa_groups() {
    let Some(dev) = device_for_test("gqa_groups") else {
        return;
    };
    let mut scratch = AttnScratch::default();
    for (heads, kv_heads) in [(8usize, 8usize), (24, 8), (16, 2), (5, 1)] {
        let mut rng = Rng(0x6a0 + heads as u64);
        let l = KvLayout {
            kv_heads,
            ..layout(KvDType::BF16, 64)
        };
        let mut t = Twin::new(&dev, l, Retention::All, 3, 3000, usize::MAX);
        for (b, n) in [(0usize, 3000usize), (1, 17), (2, 1234)] {
            t.append(&dev, &mut rng, b, n, 1.0);
        }
        check(
            &dev,
            &t,
            &params(heads, kv_heads, MaskKind::Causal, NOPE),
            &mut rng,
            &mut scratch,
            &format!("GQA {heads}/{kv_heads}"),
        );
    }
}

#[test]
fn ring_cache_decodes_step_by_step_across_chunk_boundaries() {
    let Some(dev) = device_for_test("ring_cache_decodes_step_by_step_across_chunk_boundaries")
    else {
        return;
    };
    let mut scratch = AttnScratch::default();
    for dtype in [KvDType::BF16, KvDType::Fp8E4M3] {
        let mut rng = Rng(0x1a1a);
        // Attention chunk 512 over pages of 128; 2 of each ring's 8 pages on the device.
        let r = Retention::CurrentAttentionChunk { chunk: 512 };
        let budget = 2 * 2 * 2 * (8 * 128 * 128 * 2);
        let mut t = Twin::new(&dev, layout(dtype, 128), r, 2, 5000, budget);
        t.append(&dev, &mut rng, 0, 500, 1.0);
        t.append(&dev, &mut rng, 1, 300, 1.0);
        t.append(&dev, &mut rng, 1, 250, 1.0);
        let p = params(40, 8, MaskKind::ChunkedLocal { chunk: 512 }, None);
        // Sequence 0 crosses 512 at step 12, sequence 1 crosses 1024 at step 474.
        for s in 0..480 {
            t.step(&dev, &mut rng, &[1.0, 1.0]);
            if s % 37 == 0 || (10..14).contains(&s) || (472..476).contains(&s) {
                check(
                    &dev,
                    &t,
                    &p,
                    &mut rng,
                    &mut scratch,
                    &format!("{dtype:?} ring step {s}"),
                );
            }
        }
        // A causal mask cannot run over a ring.
        let q = dev.upload(&vec![bf16::ONE; 2 * 5120]).unwrap();
        let mut out = dev.filled(2 * 5120, bf16::NAN).unwrap();
        let e = attn_decode(
            dev.stream(),
            &q,
            &t.gpu,
            &params(40, 8, MaskKind::Causal, None),
            &mut out,
            &mut scratch,
        )
        .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    }
}

#[test]
fn host_validation_names_the_problem() {
    let Some(dev) = device_for_test("host_validation_names_the_problem") else {
        return;
    };
    let mut scratch = AttnScratch::default();
    let mut rng = Rng(0xbad);
    let mut t = Twin::new(
        &dev,
        layout(KvDType::BF16, 64),
        Retention::All,
        2,
        100,
        usize::MAX,
    );
    t.append(&dev, &mut rng, 0, 10, 1.0);
    let q = dev.upload(&vec![bf16::ONE; 2 * 5120]).unwrap();
    let mut out = dev.filled(2 * 5120, bf16::NAN).unwrap();
    let p = params(40, 8, MaskKind::Causal, None);
    // Sequence 1 is empty.
    let e = attn_decode(dev.stream(), &q, &t.gpu, &p, &mut out, &mut scratch).unwrap_err();
    assert!(e.to_string().contains("sequence 1 holds no token"), "{e}");
    t.append(&dev, &mut rng, 1, 3, 1.0);
    let cases: Vec<(AttnParams, &str)> = vec![
        (params(40, 4, MaskKind::Causal, None), "kv_heads"),
        (params(72, 8, MaskKind::Causal, None), "at most 8"),
        (params(41, 8, MaskKind::Causal, None), "multiple"),
        (
            AttnParams {
                scale: f32::NAN,
                ..p
            },
            "scale",
        ),
        (
            params(40, 8, MaskKind::ChunkedLocal { chunk: 0 }, None),
            "chunk",
        ),
        (
            params(
                40,
                8,
                MaskKind::Causal,
                Some(TempTuning {
                    floor_scale: 0.0,
                    attn_scale: 0.1,
                }),
            ),
            "floor_scale",
        ),
    ];
    for (bad, needle) in cases {
        let e = attn_decode(dev.stream(), &q, &t.gpu, &bad, &mut out, &mut scratch).unwrap_err();
        assert!(e.to_string().contains(needle), "{needle}: {e}");
    }
    let short = dev.upload(&vec![bf16::ONE; 5120]).unwrap();
    let e = attn_decode(dev.stream(), &short, &t.gpu, &p, &mut out, &mut scratch).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    // head_dim 64: the cache takes it, the decode does not.
    let l64 = KvLayout {
        head_dim: 64,
        ..layout(KvDType::BF16, 64)
    };
    let mut t64 = Twin::new(&dev, l64, Retention::All, 1, 100, usize::MAX);
    t64.append(&dev, &mut rng, 0, 5, 1.0);
    let e = attn_decode(
        dev.stream(),
        &q,
        &t64.gpu,
        &AttnParams { head_dim: 64, ..p },
        &mut out,
        &mut scratch,
    )
    .unwrap_err();
    assert!(e.to_string().contains("head_dim 64"), "{e}");
}
