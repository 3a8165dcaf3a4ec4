//! Norm / RoPE family: the CPU reference at Scout shapes, and the GPU kernels (CUDA-event timing) when
//! a device is present. hidden 5120 (RMSNorm), 40 q heads + 8 k heads of 128 (RoPE, qk norm); a single
//! decode token and a 512-token prefill chunk. Throughput is bytes moved (read + written).
//! silu_mul is benched with the rest of the elementwise family in benches/elementwise.rs.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use llama4_cuda::reference::{norm, rope};

const HIDDEN: usize = 5120;
const Q_HEADS: usize = 40;
const KV_HEADS: usize = 8;
const HEAD_DIM: usize = 128;
const TOKENS: [usize; 2] = [1, 512];
const EPS: f32 = 1e-5;

/// Deterministic non-zero values in [0.5, 1.5].
fn values(n: usize, salt: u32) -> Vec<f32> {
    (0..n as u32).map(|i| 0.5 + ((i.wrapping_mul(2_654_435_761) ^ salt) % 1000) as f32 / 1000.0).collect()
}

fn scout_inv_freq() -> Vec<f32> {
    let s = rope::Llama3Scaling {
        factor: 16.0,
        low_freq_factor: 1.0,
        high_freq_factor: 1.0,
        original_max_position_embeddings: 8192.0,
    };
    rope::inv_freq(HEAD_DIM, 500_000.0, Some(&s))
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

criterion_group!(benches, cpu);
criterion_main!(benches);
