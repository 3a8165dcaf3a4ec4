//! Norm / RoPE family: the CPU reference at Scout shapes, and the GPU kernels (CUDA-event timing) when
//! a device is present. hidden 5120 (RMSNorm), 40 q heads + 8 k heads of 128 (RoPE, qk norm); a single
//! decode token and a 512-token prefill chunk. Throughput is bytes moved (read + written).
//! silu_mul is benched with the rest of the elementwise family in benches/elementwise.rs.

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use llama4_cuda::device::time_stream;
use llama4_cuda::ops::norm_rope as ops;
use llama4_cuda::reference::{norm, rope};

const HIDDEN: usize = 5120;
const Q_HEADS: usize = 40;
const KV_HEADS: usize = 8;
const HEAD_DIM: usize = 128;
const TOKENS: [usize; 2] = [1, 512];
const EPS: f32 = 1e-5;

/// Deterministic non-zero values in [0.5, 1.5].
fn values(n: usize, salt: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| 0.5 + ((i.wrapping_mul(2_654_435_761) ^ salt) % 1000) as f32 / 1000.0)
        .collect()
}

const SCOUT: rope::Llama3Scaling = rope::Llama3Scaling {
    factor: 16.0,
    low_freq_factor: 1.0,
    high_freq_factor: 1.0,
    original_max_position_embeddings: 8192.0,
};

fn scout_inv_freq() -> Vec<f32> {
    rope::inv_freq(HEAD_DIM, 500_000.0, Some(&SCOUT))
}

fn cpu(c: &mut Criterion) {
    let mut g = c.benchmark_group("small_ops_cpu");
    let inv = scout_inv_freq();
    for t in TOKENS {
        let x = values(t * HIDDEN, 1);
        let w = values(HIDDEN, 2);
        g.throughput(Throughput::Bytes((2 * t * HIDDEN * 4) as u64));
        g.bench_with_input(BenchmarkId::new("rms_norm_f32", t), &t, |b, _| {
            b.iter(|| norm::rms_norm(&x, HIDDEN, Some(&w), EPS).expect("rms_norm"))
        });
        let mut q = values(t * Q_HEADS * HEAD_DIM, 3);
        let pos: Vec<usize> = (0..t).map(|i| 9_000_000 + i).collect();
        g.throughput(Throughput::Bytes((2 * q.len() * 4) as u64));
        g.bench_with_input(BenchmarkId::new("rope_q_f32", t), &t, |b, _| {
            b.iter(|| rope::apply_rope(&mut q, Q_HEADS, HEAD_DIM, &pos, &inv).expect("rope"))
        });
        g.bench_with_input(BenchmarkId::new("qk_norm_q_f32", t), &t, |b, _| {
            b.iter(|| norm::rms_norm(&q, HEAD_DIM, None, EPS).expect("qk norm"))
        });
    }
    g.finish();
}

/// bf16 storage, as the decoder runs them; tokens 1 (decode), 512 and 8192 (a prefill chunk).
fn gpu(c: &mut Criterion) {
    let Some(dev) = common::device("small_ops_gpu") else {
        return;
    };
    let s = dev.stream().clone();
    let bf = |v: Vec<f32>| v.into_iter().map(bf16::from_f32).collect::<Vec<_>>();
    let inv = ops::inv_freq_on_device(&s, HEAD_DIM, 500_000.0, Some(&SCOUT)).expect("inv_freq");
    let w = dev.upload(&bf(values(HIDDEN, 2))).expect("upload");
    let mut g = c.benchmark_group("small_ops_gpu");
    for t in [1usize, 512, 8192] {
        let x = dev.upload(&bf(values(t * HIDDEN, 1))).expect("upload");
        let mut out = dev.zeros::<bf16>(t * HIDDEN).expect("alloc");
        g.throughput(Throughput::Bytes((2 * t * HIDDEN * 2 + HIDDEN * 2) as u64));
        g.bench_with_input(BenchmarkId::new("rms_norm_bf16", t), &t, |b, _| {
            b.iter_custom(|iters| {
                time_stream(&s, iters, || {
                    ops::rms_norm(&s, &x, HIDDEN, &w, EPS, &mut out)
                })
                .expect("rms_norm")
            })
        });
        let width = (Q_HEADS + 2 * KV_HEADS) * HEAD_DIM;
        let mut qkv = dev.upload(&bf(values(t * width, 3))).expect("upload");
        let pos = ops::positions_on_device(&s, &(0..t).map(|i| 9_000_000 + i).collect::<Vec<_>>())
            .expect("upload");
        // q and k read and written, positions read (the inv_freq table is negligible).
        g.throughput(Throughput::Bytes(
            (t * (Q_HEADS + KV_HEADS) * HEAD_DIM * 2 * 2 + t * 8) as u64,
        ));
        g.bench_with_input(BenchmarkId::new("rope_qkv_bf16", t), &t, |b, _| {
            b.iter_custom(|iters| {
                time_stream(&s, iters, || {
                    ops::rope_qkv(&s, &mut qkv, Q_HEADS, KV_HEADS, HEAD_DIM, &pos, &inv, None)
                })
                .expect("rope")
            })
        });
        g.bench_with_input(BenchmarkId::new("rope_qk_norm_qkv_bf16", t), &t, |b, _| {
            b.iter_custom(|iters| {
                time_stream(&s, iters, || {
                    ops::rope_qkv(
                        &s,
                        &mut qkv,
                        Q_HEADS,
                        KV_HEADS,
                        HEAD_DIM,
                        &pos,
                        &inv,
                        Some(EPS),
                    )
                })
                .expect("rope_qk_norm")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
