//! The GPU MoE block (`ops::moe::moe_block`) at Llama 4 sizes (hidden 5120, expert intermediate
//! 8192, a shared expert of the same size, top-1), E = 16 and 128, tokens 1 / 8 / 64 / 512 / 4096 /
//! 8192 / 16384, bf16 / int4 / fp8 experts; CUDA-event timing (`iter_custom`). The plan in each row
//! names the path: above 32 rows per expert every format takes the prefill (fp8: the W8A16
//! tensor-core prefill; E = 128 fp8 at 8192 / 16384 tokens are the Maverick prefill rows, peers
//! `fp8_deq_gmm` / `fp8_scaled` of tools/peers_moe.py).
//!
//! Each row: the plan, time, GB/s over the bytes the block must read (the touched experts' weights,
//! counted from the routing of that run, plus the shared expert and the router), TFLOP/s, and the
//! fraction of the floor max(bytes / measured copy bandwidth, flops / datasheet tensor peak).
//! Weights are distinct zero-filled device buffers per expert (the kernels' memory traffic does not
//! depend on the values; H100 applies no compression to ordinary allocations); the router and x are
//! random so the routing spreads over the experts. tools/peers_moe.py prints the torch rows.
//!
//! `L4C_MOE_TOKENS=1,512`, `L4C_MOE_E=16`, `L4C_MOE_FMT=int4` narrow the grid. Without a CUDA device
//! the bench prints "skipped: no CUDA device". E = 128 bf16 needs 32 GB of device memory.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{copy_bandwidth, env_list, env_usizes, print_rows, tensor_peaks, xorshift_unit, Row};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use llama4_cuda::device::time_stream;
use llama4_cuda::ops::gemm::{device_info, GpuBf16Weight, GpuFp8Weight, GpuInt4Weight, GpuLinear};
use llama4_cuda::ops::moe::{moe_block, ExpertFormat, GpuExpert, GpuMoe, MoeScratch};
use llama4_cuda::quant::repack::Act16;

const HIDDEN: usize = 5120;
const INTER: usize = 8192;
const TOKENS: [usize; 7] = [1, 8, 64, 512, 4096, 8192, 16384];
const EXPERTS: [usize; 2] = [16, 128];

/// A zero-filled device weight `[n, k]` in `fmt` (int4: group 128, symmetric, repacked layout sizes).
fn linear(s: &Arc<CudaStream>, fmt: ExpertFormat, n: usize, k: usize) -> GpuLinear {
    match fmt {
        ExpertFormat::Bf16 => GpuLinear::Bf16(GpuBf16Weight {
            n,
            k,
            data: s.alloc_zeros(n * k).expect("alloc"),
        }),
        ExpertFormat::Fp8 => GpuLinear::Fp8(GpuFp8Weight {
            n,
            k,
            codes: s.alloc_zeros(n * k).expect("alloc"),
            scales: s.alloc_zeros(n).expect("alloc"),
        }),
        ExpertFormat::Int4 => {
            let (k_slabs, tiles) = (k.div_ceil(64), n.div_ceil(16));
            let groups = (k_slabs * 64).div_ceil(128);
            GpuLinear::Int4(GpuInt4Weight {
                n,
                k,
                group_size: 128,
                act: Act16::BF16,
                k_slabs,
                groups,
                qweight: s.alloc_zeros(tiles * k_slabs * 128).expect("alloc"),
                scales: s.alloc_zeros(tiles * groups * 16).expect("alloc"),
                zero_bias: None,
            })
        }
    }
}

fn expert(s: &Arc<CudaStream>, fmt: ExpertFormat) -> GpuExpert {
    GpuExpert {
        gate: linear(s, fmt, INTER, HIDDEN),
        up: linear(s, fmt, INTER, HIDDEN),
        down: linear(s, fmt, HIDDEN, INTER),
    }
}

/// Bytes of one expert (three projections) in `fmt`.
fn expert_bytes(fmt: ExpertFormat) -> f64 {
    let w = (3 * INTER * HIDDEN) as f64;
    match fmt {
        ExpertFormat::Bf16 => 2.0 * w,
        ExpertFormat::Fp8 => w + 4.0 * (2 * INTER + HIDDEN) as f64,
        ExpertFormat::Int4 => 0.5 * w + 2.0 * w / 128.0,
    }
}

fn bench(c: &mut Criterion) {
    let Some(device) = common::device("moe_gpu") else {
        return;
    };
    let s = device.stream().clone();
    let dev = device_info(&s).expect("device info");
    let peak = tensor_peaks(dev.cc).0;
    let bw = copy_bandwidth(&s);
    let mut rows = Vec::new();
    common::print_device(&dev, bw);
    let tokens = env_usizes("L4C_MOE_TOKENS", &TOKENS);
    let experts = env_usizes("L4C_MOE_E", &EXPERTS);
    let fmts: Vec<ExpertFormat> = env_list("L4C_MOE_FMT").map_or(
        vec![ExpertFormat::Int4, ExpertFormat::Fp8, ExpertFormat::Bf16],
        |v| {
            v.iter()
                .filter_map(|f| match f.as_str() {
                    "bf16" => Some(ExpertFormat::Bf16),
                    "int4" => Some(ExpertFormat::Int4),
                    "fp8" => Some(ExpertFormat::Fp8),
                    _ => None,
                })
                .collect()
        },
    );
    let max_t = *tokens.iter().max().unwrap_or(&1);
    let mut seed = 0x1234_5678u64;
    let x: CudaSlice<bf16> = s
        .clone_htod(
            &(0..max_t * HIDDEN)
                .map(|_| bf16::from_f32(xorshift_unit(&mut seed)))
                .collect::<Vec<_>>(),
        )
        .expect("x");
    let mut out = s.alloc_zeros::<bf16>(max_t * HIDDEN).expect("out");

    let mut g = c.benchmark_group("moe_gpu");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for &fmt in &fmts {
        for &e in &experts {
            let router: Vec<bf16> = (0..e * HIDDEN)
                .map(|_| bf16::from_f32(0.02 * xorshift_unit(&mut seed)))
                .collect();
            let router = GpuBf16Weight {
                n: e,
                k: HIDDEN,
                data: s.clone_htod(&router).expect("router"),
            };
            let xs: Vec<GpuExpert> = (0..e).map(|_| expert(&s, fmt)).collect();
            let moe = GpuMoe::new(&s, router, xs, expert(&s, fmt)).expect("moe");
            let mut scratch = MoeScratch::new();
            for &t in &tokens {
                moe_block(&s, &x, t, &moe, 1, &mut out, &mut scratch).expect("moe_block");
                let plan = *scratch.last_plan().expect("plan");
                let counts = s
                    .clone_dtoh(&scratch.routing().expect("routing").counts)
                    .expect("counts");
                let touched = counts.iter().filter(|&&c| c > 0).count();
                let mut best = f64::INFINITY;
                g.bench_function(BenchmarkId::new(format!("{fmt}-E{e}"), t), |b| {
                    b.iter_custom(|iters| {
                        let d = time_stream(&s, iters, || {
                            moe_block(&s, &x, t, &moe, 1, &mut out, &mut scratch)
                        })
                        .expect("time");
                        best = best.min(d.as_secs_f64() / iters as f64);
                        d
                    })
                });
                let bytes = (touched + 1) as f64 * expert_bytes(fmt)
                    + (2 * e * HIDDEN + 4 * t * HIDDEN) as f64;
                let flops =
                    2.0 * 3.0 * (2 * t * HIDDEN * INTER) as f64 + 2.0 * (t * e * HIDDEN) as f64;
                rows.push(Row {
                    name: format!("{fmt} E={e} tokens={t} touched={touched} [{plan}]"),
                    secs: best,
                    bytes,
                    flops,
                    peak,
                });
            }
        }
    }
    g.finish();
    print_rows(&rows, bw, 150);
}

criterion_group!(benches, bench);
criterion_main!(benches);
