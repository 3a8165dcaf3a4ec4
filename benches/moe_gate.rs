//! MoE gating: the CPU reference and the GPU kernel (CUDA-event timing, when a device is present) at
//! 16384 tokens x 128 experts (Maverick's router), k = 1 and 8. Throughput is the logits read.

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use llama4_cuda::device::time_stream;
use llama4_cuda::ops::{moe_gate, MoeGateBuffers};
use llama4_cuda::reference::moe::top_k_gating;

const TOKENS: usize = 16384;
const EXPERTS: usize = 128;

/// Deterministic non-zero logits in ±[0.05, 4].
fn logits(n: usize) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = i.wrapping_mul(2_654_435_761) >> 8;
            let v = 0.05 + (h % 3950) as f32 / 1000.0;
            if h & 1 == 0 {
                v
            } else {
                -v
            }
        })
        .collect()
}

fn cpu(c: &mut Criterion) {
    let mut g = c.benchmark_group("moe_gate_cpu");
    g.sample_size(10);
    let x = logits(TOKENS * EXPERTS);
    g.throughput(Throughput::Bytes((x.len() * 4) as u64));
    for k in [1usize, 8] {
        g.bench_with_input(BenchmarkId::new("top_k_gating_f32", k), &k, |b, &k| {
            b.iter(|| top_k_gating(&x, TOKENS, EXPERTS, k).expect("gating"))
        });
    }
    g.finish();
}

fn gpu(c: &mut Criterion) {
    let Some(dev) = common::device("moe_gate_gpu") else {
        return;
    };
    let s = dev.stream().clone();
    let x = dev.upload(&logits(TOKENS * EXPERTS)).expect("upload");
    let mut g = c.benchmark_group("moe_gate_gpu");
    g.throughput(Throughput::Bytes((TOKENS * EXPERTS * 4) as u64));
    for k in [1usize, 8] {
        let mut out = MoeGateBuffers::new(&s, TOKENS, EXPERTS, k, 1).expect("alloc");
        g.bench_with_input(BenchmarkId::new("moe_gate_f32", k), &k, |b, _| {
            b.iter_custom(|iters| {
                time_stream(&s, iters, || moe_gate(&s, &x, &mut out)).expect("moe_gate")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
