//! Flash-attention prefill on the GPU (`ops::attn_prefill`) at the Llama 4 shape: bf16, head_dim 128,
//! 40 query heads over 8 KV heads, one sequence, queries 0..T over a cache of T tokens, timed with CUDA
//! events (`device::time_stream`).
//!
//! Rows: T in {8K, 32K, 128K} for a full causal layer (NoPE: temperature tuning on) and a
//! chunked-local layer (attention chunk 8192). TFLOP/s counts only unmasked work:
//! `4 * heads * head_dim * sum_i visible(i)` (QK^T and PV, 2 flops per multiply-add), with
//! `visible(i) = i + 1` (causal) or `i % 8192 + 1` (chunked). The fraction is against the dense bf16
//! tensor peak from the datasheet (H100 SXM 989 TFLOP/s, A100 312), stated, not measured:
//! tools/peers_attention.py measures torch's flash backend at the same rows for the achieved ceiling.
//! The chunked rows also print time / T (constant when the cost is linear in T).
//!
//! `L4C_ATTN_T=8192,32768` narrows the lengths. Without a CUDA device the bench prints
//! "skipped: no CUDA device".

mod common;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use cudarc::driver::CudaSlice;
use half::bf16;
use llama4_cuda::device::time_stream;
use llama4_cuda::kv_cache::gpu::GpuKvLayer;
use llama4_cuda::kv_cache::{KvDType, KvLayout, Retention};
use llama4_cuda::ops::attn_prefill::attn_prefill;
use llama4_cuda::reference::attention::{AttnParams, MaskKind, TempTuning};

const HEADS: usize = 40;
const KV_HEADS: usize = 8;
const D: usize = 128;
const CHUNK: usize = 8192;
const TS: [usize; 3] = [8192, 32768, 131072];

/// Deterministic small bf16 values (a hash of the index), never all equal.
fn values(n: usize, salt: u64) -> Vec<bf16> {
    (0..n as u64)
        .map(|i| {
            let h = (i ^ salt).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
            bf16::from_f32((h as f32 / (1u64 << 24) as f32 - 0.5) * 2.0)
        })
        .collect()
}

/// Sum over queries 0..t of the keys each sees.
fn visible_pairs(t: usize, chunk: Option<usize>) -> f64 {
    match chunk {
        None => t as f64 * (t as f64 + 1.0) / 2.0,
        Some(c) => {
            let (full, rest) = (t / c, t % c);
            full as f64 * (c as f64 * (c as f64 + 1.0) / 2.0)
                + rest as f64 * (rest as f64 + 1.0) / 2.0
        }
    }
}

fn bench(c: &mut Criterion) {
    let Some(dev) = common::device("attn_prefill_gpu") else {
        return;
    };
    let s = dev.stream().clone();
    let ts = common::env_usizes("L4C_ATTN_T", &TS);
    let peak = common::tensor_peaks(dev.compute_capability().expect("compute capability")).0;
    let mut g = c.benchmark_group("attn_prefill_gpu");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let mut rows = Vec::new();
    for &t in &ts {
        let layout = KvLayout {
            kv_heads: KV_HEADS,
            head_dim: D,
            chunk_tokens: 256,
            dtype: KvDType::BF16,
        };
        let mut kv = GpuKvLayer::new(&s, layout, Retention::All, 1, t, usize::MAX).expect("kv");
        let k: CudaSlice<bf16> = s.clone_htod(&values(t * KV_HEADS * D, 1)).expect("k");
        let v: CudaSlice<bf16> = s.clone_htod(&values(t * KV_HEADS * D, 2)).expect("v");
        kv.append(&s, 0, &k, &v, t).expect("append");
        drop((k, v));
        let q: CudaSlice<bf16> = s.clone_htod(&values(t * HEADS * D, 3)).expect("q");
        let mut out = s.alloc_zeros::<bf16>(t * HEADS * D).expect("out");
        for (name, chunk) in [("causal", None), ("chunked8192", Some(CHUNK))] {
            let p = AttnParams {
                heads: HEADS,
                kv_heads: KV_HEADS,
                head_dim: D,
                scale: (D as f32).powf(-0.5),
                mask: chunk.map_or(MaskKind::Causal, |chunk| MaskKind::ChunkedLocal { chunk }),
                temp: chunk.is_none().then_some(TempTuning {
                    floor_scale: 8192.0,
                    attn_scale: 0.1,
                }),
            };
            let mut best = f64::INFINITY;
            g.bench_function(BenchmarkId::new(name, t), |b| {
                b.iter_custom(|iters| {
                    let d = time_stream(&s, iters, || {
                        attn_prefill(&s, &q, t, 0, &kv, 0, &p, &mut out)
                    })
                    .expect("attn_prefill");
                    best = best.min(d.as_secs_f64() / iters as f64);
                    d
                })
            });
            let flops = 4.0 * (HEADS * D) as f64 * visible_pairs(t, chunk);
            rows.push((name, t, best, flops));
        }
    }
    g.finish();
    println!(
        "\n{:<12} {:>7} {:>10} {:>9} {:>7} {:>12}",
        "layer", "T", "ms", "TFLOP/s", "peak", "us / 1K tok"
    );
    for (name, t, secs, flops) in rows {
        println!(
            "{name:<12} {t:>7} {:>10.3} {:>9.1} {:>6.1}% {:>12.2}",
            secs * 1e3,
            flops / secs / 1e12,
            100.0 * flops / secs / peak,
            secs * 1e6 / (t as f64 / 1024.0)
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
