//! Quantized GEMMs on the GPU at the Llama 4 shapes, timed with CUDA events (`iter_custom`).
//!
//! For each (kind, m, n, k): weight GB/s, TFLOP/s and the fraction of the floor, where the floor is
//! max(bytes / measured copy bandwidth, flops / tensor peak). The bandwidth is measured in the same
//! run (a 1 GiB device-to-device copy, read + write bytes); the tensor peaks are datasheet numbers
//! for dense math (H100 SXM: 989 TFLOP/s bf16, 1979 fp8; A100: 312 bf16), stated, not measured here:
//! tools/peers_gemm.py measures cuBLAS bf16 at the same shapes for the achieved ceiling.
//! Weights rotate over enough copies to exceed L2, so decode shapes read DRAM as in a real model.
//!
//! `L4C_GEMM_M=1,16,2048` and `L4C_GEMM_SHAPES=5120x5120,...` narrow the grid. Without a CUDA device
//! the bench prints "skipped: no CUDA device".

mod common;

use std::time::Duration;

use common::{copy_bandwidth, env_list, env_usizes, print_rows, tensor_peaks, time, xorshift, Row};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use cudarc::driver::CudaSlice;
use half::bf16;
use llama4_cuda::ops::gemm::{
    self, device_info, DeviceInfo, Fp8Mode, GemmScratch, GpuFp8Weight, GpuInt4Weight,
};
use llama4_cuda::quant::repack::{Act16, RepackedInt4, SLAB_WORDS};
use llama4_cuda::quant::{Int4Config, ScaleDType};

const SHAPES: [(usize, usize); 7] = [
    (1024, 5120),
    (5120, 5120),
    (8192, 5120),
    (16384, 5120),
    (202048, 5120),
    (5120, 8192),
    (5120, 16384),
];
const MS: [usize; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 512, 2048, 8192];
/// Total weight bytes the rotation spans (H100 L2 is 50 MB).
const ROTATE_BYTES: usize = 256 << 20;

/// A random repacked int4 weight (random nibbles, small bf16 scales): timing needs no quantizer.
fn random_int4(n: usize, k: usize, seed: u64) -> RepackedInt4 {
    let mut s = seed | 1;
    let k_slabs = k.div_ceil(64);
    let groups = (k_slabs * 64).div_ceil(128);
    let tiles = n.div_ceil(16);
    let qweight = (0..tiles * k_slabs * SLAB_WORDS)
        .map(|_| xorshift(&mut s) as u32)
        .collect();
    let scales = (0..tiles * groups * 16)
        .map(|_| Act16::BF16.to_bits(1e-3 * (1 + xorshift(&mut s) % 8) as f32))
        .collect();
    let config = Int4Config {
        group_size: 128,
        symmetric: true,
        scale_dtype: ScaleDType::BF16,
    };
    RepackedInt4 {
        n,
        k,
        config,
        act: Act16::BF16,
        k_slabs,
        groups,
        qweight,
        scales,
        zero_bias: None,
    }
}

fn random_fp8(n: usize, k: usize, seed: u64) -> llama4_cuda::quant::Fp8Weight {
    let mut s = seed | 1;
    let codes = (0..n * k)
        .map(|_| {
            let c = xorshift(&mut s) as u8 & 0xf7; // clears a mantissa bit: never the NaN codes 0x7f / 0xff
            c & !0x40 // and keep magnitudes below 2^0 so sums stay finite
        })
        .collect();
    let scales = (0..n).map(|i| 1e-3 * (1 + i % 7) as f32).collect();
    llama4_cuda::quant::Fp8Weight {
        n,
        k,
        codes,
        scaling: llama4_cuda::quant::Fp8Scaling::PerChannel,
        scales,
    }
}

fn bench(c: &mut Criterion) {
    let Some(device) = common::device("gemm_gpu") else {
        return;
    };
    let s = device.stream().clone();
    let dev: DeviceInfo = device_info(&s).expect("device info");
    let mut scratch = GemmScratch::new();
    let bw = copy_bandwidth(&s);
    let (peak_bf16, peak_fp8) = tensor_peaks(dev.cc);
    let mut rows = Vec::new();
    common::print_device(&dev, bw);
    let ms = env_usizes("L4C_GEMM_M", &MS);
    let shapes: Vec<(usize, usize)> = env_list("L4C_GEMM_SHAPES").map_or(SHAPES.to_vec(), |v| {
        v.iter()
            .filter_map(|s| {
                s.split_once('x')
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            })
            .collect()
    });

    let mut g = c.benchmark_group("gemm_gpu");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for &(n, k) in &shapes {
        let max_m = *ms.iter().max().unwrap_or(&1);
        let x: CudaSlice<bf16> = s
            .clone_htod(&vec![bf16::from_f32(0.0078125); max_m * k])
            .expect("x");
        let mut out = s.alloc_zeros::<bf16>(max_m * n).expect("out");

        let int4 = random_int4(n, k, 1);
        let copies = ROTATE_BYTES.div_ceil(int4.nbytes()).clamp(1, 32);
        let ws: Vec<GpuInt4Weight> = (0..copies)
            .map(|_| GpuInt4Weight::upload(&s, &int4).expect("upload"))
            .collect();
        for &m in &ms {
            let plan =
                gemm::gemm_w4a16(&s, &x, m, &ws[0], None, &mut out, &mut scratch).expect("w4a16");
            let name = format!("w4a16 m={m} n={n} k={k}");
            g.throughput(Throughput::Bytes(int4.nbytes() as u64));
            let mut best = f64::INFINITY;
            g.bench_function(BenchmarkId::new("w4a16", format!("{m}x{n}x{k}")), |b| {
                b.iter_custom(|iters| {
                    let t = time(&s, iters, |i| {
                        gemm::gemm_w4a16(
                            &s,
                            &x,
                            m,
                            &ws[i as usize % copies],
                            None,
                            &mut out,
                            &mut scratch,
                        )
                        .expect("w4a16");
                    });
                    best = best.min(t.as_secs_f64() / iters as f64);
                    t
                })
            });
            let bytes = (int4.nbytes() + 2 * m * (k + n)) as f64;
            rows.push(Row {
                name: format!("{name} [{plan}]"),
                secs: best,
                bytes,
                flops: 2.0 * (m * n * k) as f64,
                peak: peak_bf16,
            });
        }
        drop(ws);

        let f8 = random_fp8(n, k, 2);
        let copies = ROTATE_BYTES.div_ceil(n * k).clamp(1, 32);
        let ws: Vec<GpuFp8Weight> = (0..copies)
            .map(|_| GpuFp8Weight::upload(&s, &f8).expect("upload"))
            .collect();
        for &m in &ms {
            for mode in [Fp8Mode::W8A8, Fp8Mode::W8A16] {
                if mode == Fp8Mode::W8A16 && m > gemm::DECODE_MAX_M {
                    continue; // the decode format
                }
                let plan = gemm::gemm_fp8(&s, &x, m, &ws[0], mode, None, &mut out, &mut scratch)
                    .expect("fp8");
                let tag = if mode == Fp8Mode::W8A8 {
                    "fp8-w8a8"
                } else {
                    "fp8-w8a16"
                };
                g.throughput(Throughput::Bytes((n * k) as u64));
                let mut best = f64::INFINITY;
                g.bench_function(BenchmarkId::new(tag, format!("{m}x{n}x{k}")), |b| {
                    b.iter_custom(|iters| {
                        let t = time(&s, iters, |i| {
                            gemm::gemm_fp8(
                                &s,
                                &x,
                                m,
                                &ws[i as usize % copies],
                                mode,
                                None,
                                &mut out,
                                &mut scratch,
                            )
                            .expect("fp8");
                        });
                        best = best.min(t.as_secs_f64() / iters as f64);
                        t
                    })
                });
                let bytes = (n * k + 4 * n + 2 * m * (k + n)) as f64;
                let peak = if mode == Fp8Mode::W8A8 {
                    peak_fp8
                } else {
                    peak_bf16
                };
                rows.push(Row {
                    name: format!("{tag} m={m} n={n} k={k} [{plan}]"),
                    secs: best,
                    bytes,
                    flops: 2.0 * (m * n * k) as f64,
                    peak,
                });
            }
        }
    }
    g.finish();

    print_rows(&rows, bw, 100);
}

criterion_group!(benches, bench);
criterion_main!(benches);
