//! MoE throughput. Group `moe/cpu_ref`: the CPU reference (the specification) on 64 tokens over 16
//! int4 experts (k = 1, Scout's routing) at a reduced width. Throughput is counted in FLOPs, so
//! criterion's `elem/s` reads as FLOP/s. The GPU group `moe/gpu` goes beside it (see [`bench_gpu`]).
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use llama4_cuda::quant::{DenseWeight, Int4Config, Int4Weight, Weight};
use llama4_cuda::reference::moe::{grouped_gemm_swiglu, moe_block, top_k_gating, SwiGlu};
use std::hint::black_box;
use std::time::Duration;

#[path = "../tests/common/mod.rs"]
mod common;

const TOKENS: usize = 64;
const EXPERTS: usize = 16;
const TOP_K: usize = 1;
/// Reduced from 5120 / 8192 so 16 experts fit a small CPU machine; the GPU group adds real sizes.
const HIDDEN: usize = 1024;
const INTER: usize = 1024;

fn int4(rng: &mut common::Rng, n: usize, k: usize) -> Weight {
    let w = rng.vec(n * k, 0.05);
    Weight::Int4(Int4Weight::quantize(&w, n, k, Int4Config::default()).unwrap())
}

fn mlp(rng: &mut common::Rng) -> SwiGlu {
    SwiGlu {
        gate: int4(rng, INTER, HIDDEN),
        up: int4(rng, INTER, HIDDEN),
        down: int4(rng, HIDDEN, INTER),
    }
}

fn bench_cpu(c: &mut Criterion) {
    let mut rng = common::Rng(3);
    let x = rng.vec(TOKENS * HIDDEN, 1.0);
    let router = Weight::Dense(DenseWeight {
        n: EXPERTS,
        k: HIDDEN,
        data: rng.vec(EXPERTS * HIDDEN, 0.05),
    });
    let experts: Vec<SwiGlu> = (0..EXPERTS).map(|_| mlp(&mut rng)).collect();
    let shared = mlp(&mut rng);
    let logits = rng.vec(TOKENS * EXPERTS, 2.0);
    let shape = format!("t{TOKENS}_e{EXPERTS}_k{TOP_K}_h{HIDDEN}_i{INTER}");
    // One SwiGLU MLP per row: gate, up and down, 2 FLOPs per multiply-add.
    let mlp_flops = 2 * 3 * HIDDEN * INTER;

    let mut g = c.benchmark_group("moe/cpu_ref");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    g.throughput(Throughput::Elements((TOKENS * EXPERTS) as u64));
    g.bench_function(BenchmarkId::new("top_k_gating", &shape), |b| {
        b.iter(|| top_k_gating(black_box(&logits), TOKENS, EXPERTS, TOP_K).unwrap())
    });

    let routing = top_k_gating(&logits, TOKENS, EXPERTS, TOP_K).unwrap();
    let gates: Vec<&Weight> = experts.iter().map(|e| &e.gate).collect();
    let ups: Vec<&Weight> = experts.iter().map(|e| &e.up).collect();
    g.throughput(Throughput::Elements(
        (TOKENS * TOP_K * 2 * 2 * HIDDEN * INTER) as u64,
    ));
    g.bench_function(BenchmarkId::new("grouped_gemm_swiglu_int4", &shape), |b| {
        b.iter(|| grouped_gemm_swiglu(black_box(&x), HIDDEN, &routing, &gates, &ups, true).unwrap())
    });

    let block_flops = TOKENS * (2 * EXPERTS * HIDDEN + (TOP_K + 1) * mlp_flops);
    g.throughput(Throughput::Elements(block_flops as u64));
    g.bench_function(BenchmarkId::new("moe_block_int4", &shape), |b| {
        b.iter(|| {
            moe_block(
                black_box(&x),
                TOKENS,
                &router,
                &experts,
                Some(&shared),
                TOP_K,
            )
            .unwrap()
        })
    });
    g.finish();
}

/// The GPU rows live in benches/moe_gpu.rs; this group only says so (on a GPU machine a silent
/// empty group, or a "skipped: no CUDA device" line, would read as a missing result).
fn bench_gpu(_c: &mut Criterion) {
    println!("moe/gpu: the GPU MoE rows are in the moe_gpu bench");
}

criterion_group!(benches, bench_cpu, bench_gpu);
criterion_main!(benches);
