//! GEMM throughput. Group `gemm/cpu_ref`: the CPU reference (the specification) at decode-sized
//! shapes. Throughput is counted in FLOPs (2·m·n·k), so criterion's `elem/s` reads as FLOP/s.
//! The GPU group `gemm/gpu` goes beside it (see [`bench_gpu`]).
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use llama4_cuda::quant::{DenseWeight, Fp8Scaling, Fp8Weight, Int4Config, Int4Weight, Weight};
use llama4_cuda::reference::gemm::{gemm, gemm_w8a8};
use std::hint::black_box;
use std::time::Duration;

#[path = "../tests/common/mod.rs"]
mod common;

/// Hidden size of Scout / Maverick, and an output slice of a projection.
const K: usize = 5120;
const N: usize = 1024;
/// Decode batch sizes.
const MS: [usize; 3] = [1, 4, 16];

/// The weight formats benchmarked, by name (shared with the GPU group).
fn weights() -> Vec<(&'static str, Weight)> {
    let w = common::Rng(1).vec(N * K, 0.05);
    vec![
        (
            "f32",
            Weight::Dense(DenseWeight {
                n: N,
                k: K,
                data: w.clone(),
            }),
        ),
        (
            "int4_g128",
            Weight::Int4(Int4Weight::quantize(&w, N, K, Int4Config::default()).unwrap()),
        ),
        (
            "fp8_channel",
            Weight::Fp8(Fp8Weight::quantize(&w, N, K, Fp8Scaling::PerChannel).unwrap()),
        ),
    ]
}

fn bench_cpu(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm/cpu_ref");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let weights = weights();
    for m in MS {
        let x = common::Rng(m as u64).vec(m * K, 1.0);
        g.throughput(Throughput::Elements((2 * m * N * K) as u64));
        for (name, w) in &weights {
            let id = BenchmarkId::new(*name, format!("m{m}_k{K}_n{N}"));
            g.bench_with_input(id, &x, |b, x| b.iter(|| gemm(black_box(x), m, w).unwrap()));
        }
        if let Some((_, Weight::Fp8(w))) = weights.iter().find(|(n, _)| *n == "fp8_channel") {
            let id = BenchmarkId::new("w8a8_channel", format!("m{m}_k{K}_n{N}"));
            g.bench_with_input(id, &x, |b, x| {
                b.iter(|| gemm_w8a8(black_box(x), m, w).unwrap())
            });
        }
    }
    g.finish();
}

/// The GPU rows live in benches/gemm_gpu.rs; this group only says so (on a GPU machine a silent
/// empty group, or a "skipped: no CUDA device" line, would read as a missing result).
fn bench_gpu(_c: &mut Criterion) {
    println!("gemm/gpu: the GPU GEMM rows are in the gemm_gpu bench");
}

criterion_group!(benches, bench_cpu, bench_gpu);
criterion_main!(benches);
