//! The GPU KV cache against the CPU cache (the specification): appends of bf16 K/V (bulk appends of
//! odd sizes across page boundaries, graph-capturable steps, fp8 scale growth with re-encoding, ring
//! pages reused, chunks in the pinned host tier) must leave identical bytes, fp8 scales included.
//! CacheFull writes nothing. Without a GPU each test prints one "skipped" line and passes.
mod attn_common;
mod gpu_kv_common;

use attn_common::Rng;
use gpu_kv_common::{layout, Twin};
use llama4_cuda::device::device_for_test;
use llama4_cuda::kv_cache::{KvDType, Retention};
use llama4_cuda::Error;

const DTYPES: [KvDType; 2] = [KvDType::BF16, KvDType::Fp8E4M3];

#[test]
fn bulk_appends_are_bit_exact_with_the_cpu_cache() {
    let Some(dev) = device_for_test("bulk_appends_are_bit_exact_with_the_cpu_cache") else {
        return;
    };
    for dtype in DTYPES {
        for budget in [usize::MAX, 1 << 20] {
            let mut rng = Rng(0x5eed ^ budget as u64);
            // Pages of 64 tokens; a 1 MiB budget: 2 (bf16) or 3 (fp8) pages of 16 on the device, the rest in pinned host memory.
            let mut t = Twin::new(&dev, layout(dtype, 64), Retention::All, 2, 1000, budget);
            if budget != usize::MAX {
                assert!(t.gpu.tiers().host_tokens > 0, "{:?}", t.gpu.tiers());
            }
            // Odd pieces crossing pages; amplitudes growing so fp8 scales grow and re-encode.
            for (i, n) in [1usize, 63, 2, 129, 300, 17].into_iter().enumerate() {
                t.append(&dev, &mut rng, 0, n, 0.01 * 4f32.powi(i as i32));
                t.append(&dev, &mut rng, 1, n + 5, 1000.0 / 3f32.powi(i as i32));
            }
            t.assert_same_bytes(&dev, 0);
            t.assert_same_bytes(&dev, 1);
        }
    }
}

#[test]
fn steps_are_bit_exact_and_keep_the_mirror() {
    let Some(dev) = device_for_test("steps_are_bit_exact_and_keep_the_mirror") else {
        return;
    };
    for dtype in DTYPES {
        let mut rng = Rng(0x57e9);
        let mut t = Twin::new(&dev, layout(dtype, 32), Retention::All, 3, 200, usize::MAX);
        t.append(&dev, &mut rng, 0, 31, 1.0);
        t.append(&dev, &mut rng, 2, 70, 0.5);
        for s in 0..40 {
            // Amplitudes that sometimes grow (scale growth mid-page) and sometimes shrink.
            let a = [0.1 * (1 + s % 7) as f32, 3.0, 0.01 * (s * s) as f32 + 0.001];
            t.step(&dev, &mut rng, &a);
        }
        for b in 0..3 {
            t.assert_same_bytes(&dev, b);
        }
        let before: Vec<usize> = (0..3).map(|b| t.gpu.len(b)).collect();
        t.gpu.sync_lens(dev.stream()).unwrap();
        assert_eq!(before, (0..3).map(|b| t.gpu.len(b)).collect::<Vec<_>>());
        assert_eq!(before, vec![71, 40, 110]);
    }
}

#[test]
fn ring_pages_are_reused_exactly() {
    let Some(dev) = device_for_test("ring_pages_are_reused_exactly") else {
        return;
    };
    for dtype in DTYPES {
        let mut rng = Rng(0x7149);
        // Attention chunk 128 over pages of 32: a ring of 8 pages, 2 or 3 of them on the device.
        let r = Retention::CurrentAttentionChunk { chunk: 128 };
        let mut t = Twin::new(&dev, layout(dtype, 32), r, 1, 2000, 4 * 2 * 8 * 32 * 128);
        assert_eq!(t.gpu.plan().ring, 8);
        assert!(t.gpu.tiers().host_tokens > 0);
        for n in [100usize, 128, 5, 128, 90, 1, 1, 128, 100] {
            t.append(&dev, &mut rng, 0, n, 2.0);
            t.assert_same_bytes(&dev, 0);
        }
        for _ in 0..50 {
            t.step(&dev, &mut rng, &[0.5]);
        }
        t.assert_same_bytes(&dev, 0);
        // Reaching into the attention chunk after next is refused, nothing written.
        let len = t.gpu.len(0);
        let big = dev.upload(&vec![half::bf16::ONE; 300 * 1024]).unwrap();
        let e = t.gpu.append(dev.stream(), 0, &big, &big, 300).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        assert_eq!(t.gpu.len(0), len);
        t.assert_same_bytes(&dev, 0);
    }
}

#[test]
fn cache_full_writes_nothing() {
    let Some(dev) = device_for_test("cache_full_writes_nothing") else {
        return;
    };
    for dtype in DTYPES {
        let mut rng = Rng(0xf011);
        let mut t = Twin::new(&dev, layout(dtype, 16), Retention::All, 2, 50, usize::MAX);
        t.append(&dev, &mut rng, 0, 45, 1.0);
        t.append(&dev, &mut rng, 1, 50, 1.0);
        let ones = dev
            .upload(&vec![half::bf16::from_f32(300.0); 6 * 1024])
            .unwrap();
        let e = t.gpu.append(dev.stream(), 0, &ones, &ones, 6).unwrap_err();
        assert!(matches!(e, Error::CacheFull { .. }), "{e}");
        // Sequence 1 is full: a step is refused for everyone.
        let e = t.gpu.append_step(dev.stream(), &ones, &ones).unwrap_err();
        assert!(matches!(e, Error::CacheFull { .. }), "{e}");
        assert!(t.gpu.note_replayed_steps(1).is_err());
        // Too-short inputs are shape errors.
        let e = t.gpu.append(dev.stream(), 0, &ones, &ones, 7).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
        // A view not 16-byte aligned is named on the host (the launcher copies 16-byte pieces).
        let (k1, v1) = (ones.slice(1..), ones.slice(1..));
        let e = t.gpu.append_from(dev.stream(), 0, &k1, &v1, 1).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("aligned"),
            "{e}"
        );
        assert!(t.gpu.append(dev.stream(), 2, &ones, &ones, 1).is_err());
        t.gpu.sync_lens(dev.stream()).unwrap();
        assert_eq!((t.gpu.len(0), t.gpu.len(1)), (45, 50));
        t.assert_same_bytes(&dev, 0);
        t.assert_same_bytes(&dev, 1);
    }
}

#[test]
fn tiers_and_typed_errors() {
    let Some(dev) = device_for_test("tiers_and_typed_errors") else {
        return;
    };
    let s = dev.stream();
    let l = layout(KvDType::Fp8E4M3, 64);
    let chunk: usize = 8 * 64 * 128 + 32;
    let stride = chunk.div_ceil(256) * 256;
    let kv = llama4_cuda::kv_cache::gpu::GpuKvLayer::new(
        s,
        l,
        Retention::All,
        2,
        640,
        2 * 2 * 3 * stride,
    )
    .unwrap();
    let t = kv.tiers();
    assert_eq!((t.device_tokens, t.host_tokens), (192, 448));
    let bad = llama4_cuda::kv_cache::gpu::GpuKvLayer::new(
        s,
        layout(KvDType::F32, 64),
        Retention::All,
        1,
        64,
        0,
    );
    assert!(matches!(bad, Err(Error::DType { .. })));
    let bad = llama4_cuda::kv_cache::gpu::GpuKvLayer::new(
        s,
        layout(KvDType::BF16, 24),
        Retention::All,
        1,
        64,
        0,
    );
    assert!(matches!(bad, Err(Error::InvalidArgument { .. })));
    // More device memory than exists, and no host tier asked for: OutOfMemory with numbers.
    let (free, _) = dev.memory().unwrap();
    let huge = free / (2 * 8 * 64 * 128 * 2) * 64 * 2;
    match llama4_cuda::kv_cache::gpu::GpuKvLayer::new(
        s,
        layout(KvDType::BF16, 64),
        Retention::All,
        1,
        huge,
        usize::MAX,
    ) {
        Err(Error::OutOfMemory { needed, .. }) => assert!(needed > free),
        Err(e) => panic!("expected OutOfMemory, got {e}"),
        Ok(_) => panic!("allocating twice the free memory succeeded"),
    }
}
