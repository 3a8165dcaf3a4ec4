//! Next-token sampling at Llama 4's vocab (202048): the device sampler (`ops::sample`, CUDA events)
//! at rows 1 / 8 / 64, greedy and top-p (t 0.6, top_p 0.9), against the host path it replaces
//! (download the bf16 logits + `model::sampling::Sampler` per row). Printed rows: time, GB/s of the
//! logits read once, and the fraction of the floor (one read of the logits at the measured copy
//! bandwidth; greedy reads them once, top-p five times from L2). Without a GPU: the CPU rows only
//! and a skip line for the rest.

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use llama4_cuda::device::{time_stream, EventTimer};
use llama4_cuda::model::sampling::{Sampler, SamplingParams};
use llama4_cuda::ops::{sample, LogitsShape, SampleState};

const VOCAB: usize = 202_048;
const ROWS: [usize; 3] = [1, 8, 64];

/// Deterministic logits in [-8, 8): a hash, so every row differs.
fn logits(n: usize) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let h = llama4_cuda::reference::sample::mix(i);
            ((h >> 40) as f32 / (1u64 << 24) as f32) * 16.0 - 8.0
        })
        .collect()
}

fn modes() -> [(&'static str, SamplingParams); 2] {
    [
        ("greedy", SamplingParams::greedy()),
        ("top_p", SamplingParams::default()),
    ]
}

fn cpu(c: &mut Criterion) {
    let mut g = c.benchmark_group("sample_cpu");
    g.sample_size(10);
    let x = logits(VOCAB);
    g.throughput(Throughput::Bytes((VOCAB * 2) as u64));
    for (name, p) in modes() {
        let mut s = Sampler::new(p).expect("params");
        g.bench_with_input(BenchmarkId::new(name, 1), &1, |b, _| {
            b.iter(|| s.sample(&x).expect("sample"))
        });
    }
    g.finish();
}

fn gpu(c: &mut Criterion) {
    let Some(dev) = common::device("sample_gpu") else {
        return;
    };
    let s = dev.stream().clone();
    let bw = common::copy_bandwidth(&s) / 1e9;
    println!(
        "sample_gpu: {}, device-to-device copy {bw:.0} GB/s",
        dev.name().unwrap_or_default()
    );
    let mut g = c.benchmark_group("sample_gpu");
    for rows in ROWS {
        let host: Vec<bf16> = logits(rows * VOCAB)
            .iter()
            .map(|&v| bf16::from_f32(v))
            .collect();
        let x = dev.upload(&host).expect("upload");
        let mut ids = dev.zeros::<u32>(rows).expect("alloc");
        let mut state = SampleState::new(&s, 0).expect("state");
        let shape = LogitsShape::dense(rows, VOCAB);
        let bytes = rows * VOCAB * 2;
        for (name, p) in modes() {
            let mut run = || sample(&s, &x, shape, &p, &mut state, &mut ids, None);
            run().expect("sample");
            let timer = EventTimer::new(&s).expect("events");
            timer.start(&s).expect("events");
            for _ in 0..50 {
                run().expect("sample");
            }
            let t = timer.stop(&s).expect("events").as_secs_f64() / 50.0;
            let gbs = bytes as f64 / t / 1e9;
            // The host path it replaces: the download of the logits alone (then a CPU sort per row).
            let t0 = std::time::Instant::now();
            let _ = dev.download(&x).expect("download");
            let dl = t0.elapsed().as_secs_f64();
            println!(
                "sample_gpu {name} rows {rows}: {:.1} us, {gbs:.0} GB/s of logits, {:.1}% of the floor \
                 ({:.2} us); host path's download alone {:.1} us",
                t * 1e6,
                100.0 * gbs / bw,
                bytes as f64 / 1e9 / bw * 1e6,
                dl * 1e6
            );
            g.throughput(Throughput::Bytes(bytes as u64));
            g.bench_with_input(BenchmarkId::new(name, rows), &rows, |b, _| {
                b.iter_custom(|iters| time_stream(&s, iters, &mut run).expect("sample"))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
