//! Elementwise family: the CPU reference now, the GPU kernels (CUDA-event timing) when a device is
//! present. Shapes are Scout / Maverick's: hidden 5120, expert intermediate 8192; a 512-token prefill
//! chunk and a single decode token. Throughput is bytes moved (read + written).

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use llama4_cuda::device::time_stream;
use llama4_cuda::{ops, reference::elementwise as reference};

const HIDDEN: usize = 5120;
const INTER: usize = 8192;
const TOKENS: [usize; 2] = [1, 512];

/// Deterministic non-zero values in ±[0.5, 1.5].
fn values(n: usize, salt: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| 0.5 + ((i.wrapping_mul(2_654_435_761) ^ salt) % 1000) as f32 / 1000.0)
        .collect()
}

fn cpu(c: &mut Criterion) {
    let mut g = c.benchmark_group("elementwise_cpu");
    for t in TOKENS {
        let (gate, up) = (values(t * INTER, 1), values(t * INTER, 2));
        g.throughput(Throughput::Bytes((3 * t * INTER * 4) as u64));
        g.bench_with_input(BenchmarkId::new("silu_mul_f32", t), &t, |b, _| {
            b.iter(|| reference::silu_mul(&gate, &up))
        });
        let (mut a, x) = (values(t * HIDDEN, 3), values(t * HIDDEN, 4));
        g.throughput(Throughput::Bytes((3 * t * HIDDEN * 4) as u64));
        g.bench_with_input(BenchmarkId::new("residual_add_f32", t), &t, |b, _| {
            b.iter(|| reference::residual_add(&mut a, &x))
        });
        let vocab = 4096; // a slice of the 202048-token table: the cost is per gathered row
        let table = values(vocab * HIDDEN, 5);
        let ids: Vec<u32> = (0..t as u32)
            .map(|i| i.wrapping_mul(7919) % vocab as u32)
            .collect();
        g.throughput(Throughput::Bytes((2 * t * HIDDEN * 4) as u64));
        g.bench_with_input(BenchmarkId::new("embedding_f32", t), &t, |b, _| {
            b.iter(|| reference::embedding(&table, HIDDEN, &ids))
        });
    }
    g.finish();
}

fn gpu(c: &mut Criterion) {
    let Some(dev) = common::device("elementwise_gpu") else {
        return;
    };
    let s = dev.stream().clone();
    let bf = |v: Vec<f32>| v.into_iter().map(bf16::from_f32).collect::<Vec<_>>();
    let mut g = c.benchmark_group("elementwise_gpu");
    for t in [1usize, 512, 8192] {
        let gate_up = dev.upload(&bf(values(t * 2 * INTER, 1))).expect("upload");
        let mut out = dev.zeros::<bf16>(t * INTER).expect("alloc");
        g.throughput(Throughput::Bytes((3 * t * INTER * 2) as u64));
        g.bench_with_input(BenchmarkId::new("silu_mul_fused_bf16", t), &t, |b, _| {
            b.iter_custom(|iters| {
                time_stream(&s, iters, || {
                    ops::silu_mul_fused(&s, &gate_up, t, INTER, &mut out)
                })
                .expect("silu_mul")
            })
        });
        let mut resid = dev.upload(&values(t * HIDDEN, 3)).expect("upload");
        let x = dev.upload(&bf(values(t * HIDDEN, 4))).expect("upload");
        g.throughput(Throughput::Bytes((t * HIDDEN * (4 + 4 + 2)) as u64));
        g.bench_with_input(BenchmarkId::new("residual_add_f32_bf16", t), &t, |b, _| {
            b.iter_custom(|iters| {
                time_stream(&s, iters, || ops::residual_add(&s, &mut resid, &x))
                    .expect("residual_add")
            })
        });
        let vocab = 202_048;
        let table = dev
            .zeros::<bf16>(vocab * HIDDEN)
            .expect("alloc the 2 GB table");
        let ids = dev
            .upload(
                &(0..t as u32)
                    .map(|i| i.wrapping_mul(7919) % vocab as u32)
                    .collect::<Vec<_>>(),
            )
            .expect("upload");
        let mut emb = dev.zeros::<f32>(t * HIDDEN).expect("alloc");
        g.throughput(Throughput::Bytes((t * HIDDEN * (2 + 4)) as u64));
        g.bench_with_input(BenchmarkId::new("embedding_bf16_to_f32", t), &t, |b, _| {
            b.iter_custom(|iters| {
                time_stream(&s, iters, || {
                    ops::embedding(&s, &table, HIDDEN, &ids, &mut emb, None)
                })
                .expect("embedding")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
