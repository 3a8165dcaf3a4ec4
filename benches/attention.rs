//! Attention benches. CPU group: the reference at Scout's head shape (40 query heads, 8 KV heads,
//! head_dim 128) — decode over 4K and 32K keys and a small prefill, per cache dtype — reporting GB/s of
//! K/V read (each KV head's keys and values once per query token; GQA heads share the read).
//! GPU group: for the attention kernels, when a device is present.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use llama4_cuda::kv_cache::{ChunkPool, KvDType, KvLayout, Retention, SeqId};
use llama4_cuda::reference::attention::{attention, AttnParams, MaskKind};
use std::time::Duration;

const HEADS: usize = 40;
const KV_HEADS: usize = 8;
const D: usize = 128;

/// Deterministic nonzero values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn filled(dtype: KvDType, keys: usize) -> (ChunkPool, SeqId) {
    let l = KvLayout {
        kv_heads: KV_HEADS,
        head_dim: D,
        chunk_tokens: 256,
        dtype,
    };
    let mut pool = ChunkPool::new(l, keys.div_ceil(256)).expect("pool");
    let seq = pool.create_seq(Retention::All).expect("seq");
    for b in (0..keys).step_by(4096) {
        let m = 4096.min(keys - b) * KV_HEADS * D;
        pool.append(seq, &values(m, b as u64), &values(m, !(b as u64)))
            .expect("append");
    }
    (pool, seq)
}

fn params() -> AttnParams {
    AttnParams {
        heads: HEADS,
        kv_heads: KV_HEADS,
        head_dim: D,
        scale: (D as f32).powf(-0.5),
        mask: MaskKind::Causal,
        temp: None,
    }
}

fn cpu(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention_cpu");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for dtype in [KvDType::BF16, KvDType::Fp8E4M3] {
        for keys in [4096usize, 32768] {
            let (pool, seq) = filled(dtype, keys);
            let view = pool.view(seq).expect("view");
            let q = values(HEADS * D, 7);
            g.throughput(Throughput::Bytes(
                (2 * keys * KV_HEADS * D * dtype.bytes()) as u64,
            ));
            g.bench_with_input(
                BenchmarkId::new(format!("decode_{dtype:?}"), keys),
                &keys,
                |b, &keys| b.iter(|| attention(&q, keys - 1, &view, &params()).expect("attention")),
            );
        }
        // Small prefill: 128 causal queries over 128 keys (each reads its visible prefix).
        let t = 128;
        let (pool, seq) = filled(dtype, t);
        let view = pool.view(seq).expect("view");
        let q = values(t * HEADS * D, 9);
        g.throughput(Throughput::Bytes(
            (t * (t + 1) / 2 * 2 * KV_HEADS * D * dtype.bytes()) as u64,
        ));
        g.bench_function(BenchmarkId::new(format!("prefill_{dtype:?}"), t), |b| {
            b.iter(|| attention(&q, 0, &view, &params()).expect("attention"))
        });
    }
    g.finish();
}

/// The GPU rows live in benches/attn_prefill_gpu.rs and benches/attn_decode_gpu.rs (this line used to
/// say "skipped: no CUDA device", which reads as a failure on a GPU machine).
fn gpu(_c: &mut Criterion) {
    println!("attention_gpu: the GPU rows are in the attn_prefill_gpu and attn_decode_gpu benches");
}

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
