//! Tokens/s of the embedded default model on the CPU reference: a 64-token prefill and single-token
//! decode steps at position 64. Throughput is reported in tokens (criterion "elements"); the matmul
//! work per token is printed once, so GFLOP/s = tokens/s x that.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use llama4_cuda::model::plan::ParamCounts;
use llama4_cuda::model::{synthetic, Logits};
use std::hint::black_box;

const PROMPT: usize = 64;

fn bench_model(c: &mut Criterion) {
    let model = synthetic::default_model().expect("embedded model");
    let vocab = model.config().vocab_size as u64;
    let p = ParamCounts::of(model.config());
    // Every active weight but the embedding lookup and the norms is one multiply-add per token.
    let flops = 2 * (p.active - p.embed - p.norms);
    eprintln!(
        "embedded model: {:.1} MFLOP per token (matmuls)",
        flops as f64 / 1e6
    );
    let tokens: Vec<u32> = (0..PROMPT as u64)
        .map(|i| ((i * 7919 + 13) % vocab) as u32)
        .collect();

    let mut g = c.benchmark_group("model_cpu_embedded");
    g.sample_size(10);
    g.throughput(Throughput::Elements(PROMPT as u64));
    g.bench_function("prefill_64", |b| {
        b.iter(|| {
            let mut cache = model.new_cache(PROMPT).unwrap();
            black_box(
                model
                    .forward(&mut cache, black_box(&tokens), Logits::Last)
                    .unwrap(),
            )
        })
    });

    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_at_64", |b| {
        b.iter_batched(
            || {
                let mut c = model.new_cache(PROMPT + 1).unwrap();
                model.forward(&mut c, &tokens, Logits::Last).unwrap();
                c
            },
            |mut c| black_box(model.forward(&mut c, &[5], Logits::Last).unwrap()),
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_model);
criterion_main!(benches);
