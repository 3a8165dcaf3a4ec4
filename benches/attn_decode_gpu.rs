//! Split-KV decode on the GPU: one sequence, Llama 4's NoPE layer (40 query heads over 8 KV heads x
//! 128, causal, temperature tuning) at 4K, 128K, 1M and 10M tokens, bf16 and fp8 caches. Reports the
//! K/V bytes read per step as GB/s (criterion throughput) and prints, per size, the fraction of HBM
//! bandwidth measured by a 1 GiB device-to-device copy in the same run, and the time against its floor
//! (K/V bytes / copy bandwidth). Sizes the GPU cannot hold are skipped with a line; without a GPU the
//! whole bench prints one skip line.

mod common;

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use llama4_cuda::device::{time_stream, CudaStream, Device, EventTimer};
use llama4_cuda::kv_cache::gpu::GpuKvLayer;
use llama4_cuda::kv_cache::{KvDType, KvLayout, Retention};
use llama4_cuda::ops::attn_decode::{attn_decode, AttnScratch};
use llama4_cuda::reference::attention::{AttnParams, MaskKind, TempTuning};

const SIZES: [usize; 4] = [4096, 131_072, 1_048_576, 10_000_000];
const ROW: usize = 8 * 128;
const PAGE: usize = 8192;
const PIECE: usize = 8 * PAGE;

/// Deterministic K/V values in ±[0.05, 1].
fn values(n: usize, salt: u32) -> Vec<bf16> {
    (0..n as u32)
        .map(|i| {
            let h = (i ^ salt).wrapping_mul(2_654_435_761) >> 8;
            let v = 0.05 + (h % 950) as f32 / 1000.0;
            bf16::from_f32(if h & 1 == 0 { v } else { -v })
        })
        .collect()
}

/// A one-sequence cache of `tokens` positions filled with the same piece of K/V over and over.
fn filled(
    dev: &Device,
    dtype: KvDType,
    tokens: usize,
    piece: &(Vec<bf16>, Vec<bf16>),
) -> llama4_cuda::Result<GpuKvLayer> {
    let s: &Arc<CudaStream> = dev.stream();
    let l = KvLayout {
        kv_heads: 8,
        head_dim: 128,
        chunk_tokens: PAGE,
        dtype,
    };
    let mut kv = GpuKvLayer::new(s, l, Retention::All, 1, tokens, usize::MAX)?;
    let (k, v) = (dev.upload(&piece.0)?, dev.upload(&piece.1)?);
    let mut pos = 0;
    while pos < tokens {
        let n = PIECE.min(tokens - pos);
        kv.append(s, 0, &k, &v, n)?;
        pos += n;
    }
    Ok(kv)
}

fn gpu(c: &mut Criterion) {
    let Some(dev) = common::device("attn_decode_gpu") else {
        return;
    };
    let s = dev.stream().clone();
    let bw = common::copy_bandwidth(dev.stream()) / 1e9;
    println!(
        "attn_decode_gpu: {} , device-to-device copy {bw:.0} GB/s",
        dev.name().unwrap_or_default()
    );
    let piece = (values(PIECE * ROW, 1), values(PIECE * ROW, 2));
    let p = AttnParams {
        heads: 40,
        kv_heads: 8,
        head_dim: 128,
        scale: (128f32).powf(-0.5),
        mask: MaskKind::Causal,
        temp: Some(TempTuning {
            floor_scale: 8192.0,
            attn_scale: 0.1,
        }),
    };
    let q = dev.upload(&values(40 * 128, 3)).expect("upload");
    let mut out = dev.zeros::<bf16>(40 * 128).expect("alloc");
    let mut g = c.benchmark_group("attn_decode_gpu");
    g.sample_size(10);
    for dtype in [KvDType::BF16, KvDType::Fp8E4M3] {
        for tokens in SIZES {
            let bytes = 2 * tokens * ROW * dtype.bytes();
            let free = dev.memory().map_or(0, |(f, _)| f);
            if bytes + (1 << 30) > free {
                println!(
                    "attn_decode_gpu {dtype:?} {tokens}: skipped: needs {:.1} GB, {:.1} GB free",
                    bytes as f64 / 1e9,
                    free as f64 / 1e9
                );
                continue;
            }
            let kv = filled(&dev, dtype, tokens, &piece).expect("fill");
            let mut scratch = AttnScratch::default();
            attn_decode(&s, &q, &kv, &p, &mut out, &mut scratch).expect("decode");
            // A direct measurement for the printed row (20 steps, CUDA events).
            let timer = EventTimer::new(&s).expect("events");
            timer.start(&s).expect("events");
            for _ in 0..20 {
                attn_decode(&s, &q, &kv, &p, &mut out, &mut scratch).expect("decode");
            }
            let t = timer.stop(&s).expect("events").as_secs_f64() / 20.0;
            let gbs = bytes as f64 / t / 1e9;
            println!(
                "attn_decode_gpu {dtype:?} {tokens} tokens: {:.3} ms, K/V {:.2} GB, {gbs:.0} GB/s, {:.0}% of copy bandwidth (floor {:.3} ms)",
                t * 1e3,
                bytes as f64 / 1e9,
                100.0 * gbs / bw,
                bytes as f64 / 1e9 / bw * 1e3
            );
            g.throughput(Throughput::Bytes(bytes as u64));
            g.bench_with_input(
                BenchmarkId::new(format!("{dtype:?}"), tokens),
                &tokens,
                |b, _| {
                    b.iter_custom(|iters| {
                        time_stream(&s, iters, || {
                            attn_decode(&s, &q, &kv, &p, &mut out, &mut scratch)
                        })
                        .expect("decode")
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, gpu);
criterion_main!(benches);
