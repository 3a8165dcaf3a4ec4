//! One NoPE layer's fp8 cache on the GPU filled with 10,000,000 tokens of 8 KV heads x 128
//! (1.0e10 elements per K and per V, past 2^32; 20.5 GB), then ONE decode step over all of it, 40
//! query heads. Checked three ways:
//!  - planted keys: KV head h has one key of 448 * pattern at position PLANTED[h] (one early, one at
//!    an element offset past 2^32, one the last position, ...); query heads of group h carry the
//!    pattern, so the planted score beats every other by ~8000 (e^-8000 is 0 in f32) and the output is
//!    the planted value row, decoded from the cache's own bytes, exactly (a single weight of 1 times an
//!    e4m3 value times a power of two: exact in bf16);
//!  - sampled pages (up to the next-to-last, and ones past 2^32 elements) hold the bytes a CPU cache
//!    produces for the same tokens (the reference's fp8 encoding);
//!  - the decode time against its floor (K/V bytes / a device-to-device copy's bandwidth) is printed.
//!
//! Runs only when the GPU has the memory free; otherwise one "skipped" line.
mod attn_common;

use attn_common::Rng;
use half::bf16;
use llama4_cuda::device::{device_for_test, EventTimer};
use llama4_cuda::kv_cache::gpu::GpuKvLayer;
use llama4_cuda::kv_cache::{ChunkPool, KvDType, KvLayout, KvPart, KvRow, Retention};
use llama4_cuda::ops::attn_decode::{attn_decode, AttnScratch};
use llama4_cuda::quant::fp8::e4m3_decode;
use llama4_cuda::reference::attention::{AttnParams, MaskKind, TempTuning};

const TOKENS: usize = 10_000_000;
const H: usize = 8;
const D: usize = 128;
const ROW: usize = H * D;
const PAGE: usize = 8192;
/// Tokens per bulk append (a multiple of PAGE, so pages without a planted key get one segment).
const PIECE: usize = 8 * PAGE;
const PLANTED: [usize; H] = [
    12_345,
    1_000_003,
    4_194_311,
    5_000_000,
    7_777_777,
    8_388_609,
    9_800_000,
    TOKENS - 1,
];

fn pattern(j: usize) -> f32 {
    if (j * 7 + j / 3) % 2 == 0 {
        1.0
    } else {
        -1.0
    }
}

#[test]
fn ten_million_token_fp8_decode_on_the_gpu() {
    let Some(dev) = device_for_test("ten_million_token_fp8_decode_on_the_gpu") else {
        return;
    };
    assert!(TOKENS * ROW > 1 << 32 && PLANTED[2] * ROW > 1 << 32);
    let l = KvLayout {
        kv_heads: H,
        head_dim: D,
        chunk_tokens: PAGE,
        dtype: KvDType::Fp8E4M3,
    };
    let bytes = 2 * TOKENS.div_ceil(PAGE) * (H * PAGE * D + 256);
    let (free, _) = dev.memory().unwrap();
    if free < bytes + (3 << 30) {
        eprintln!(
            "skipped: {:.1} GB free, the 10M-token fp8 cache needs {:.1} GB: ten_million_token_fp8_decode_on_the_gpu",
            free as f64 / 1e9,
            bytes as f64 / 1e9
        );
        return;
    }
    let s = dev.stream();
    let mut kv = GpuKvLayer::new(s, l, Retention::All, 1, TOKENS, usize::MAX).unwrap();
    assert_eq!(kv.tiers().host_tokens, 0);

    // Background K/V: random bf16 in [-1, 1), one PIECE reused for every piece (uploaded once).
    let mut rng = Rng(0x10e7);
    let bg_k: Vec<bf16> = rng
        .vec(PIECE * ROW, 1.0)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let bg_v: Vec<bf16> = rng
        .vec(PIECE * ROW, 1.0)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let (dk, dv) = (dev.upload(&bg_k).unwrap(), dev.upload(&bg_v).unwrap());
    // The planted rows: head h of PLANTED[h] is 448 * pattern (K) and random in [-8, 8) (V).
    let mut planted_rows = Vec::new();
    for (h, &p) in PLANTED.iter().enumerate() {
        let i = p % PIECE;
        let mut k = bg_k[i * ROW..][..ROW].to_vec();
        let mut v = bg_v[i * ROW..][..ROW].to_vec();
        for j in 0..D {
            k[h * D + j] = bf16::from_f32(448.0 * pattern(j));
            v[h * D + j] = bf16::from_f32(rng.uniform() * 8.0);
        }
        planted_rows.push((dev.upload(&k).unwrap(), dev.upload(&v).unwrap()));
    }
    let t0 = std::time::Instant::now();
    let mut pos = 0;
    while pos < TOKENS {
        let end = (pos + PIECE).min(TOKENS);
        // Split the piece at planted positions: background before, the planted row, background after.
        let mut a = pos;
        for (h, &p) in PLANTED.iter().enumerate() {
            if (pos..end).contains(&p) {
                if p > a {
                    let (ks, vs) = (dk.slice((a - pos) * ROW..), dv.slice((a - pos) * ROW..));
                    append_view(&mut kv, s, &ks, &vs, p - a);
                }
                kv.append(s, 0, &planted_rows[h].0, &planted_rows[h].1, 1)
                    .unwrap();
                a = p + 1;
            }
        }
        if end > a {
            let (ks, vs) = (dk.slice((a - pos) * ROW..), dv.slice((a - pos) * ROW..));
            append_view(&mut kv, s, &ks, &vs, end - a);
        }
        pos = end;
    }
    s.synchronize().unwrap();
    let fill = t0.elapsed();
    assert_eq!(kv.len(0), TOKENS);

    // One decode step: query heads of group h carry pattern h's signs (all groups the same pattern;
    // each KV head has its own planted key).
    let q: Vec<bf16> = (0..40 * D)
        .map(|i| bf16::from_f32(pattern(i % D)))
        .collect();
    let qd = dev.upload(&q).unwrap();
    let mut out = dev.filled(40 * D, bf16::NAN).unwrap();
    let p = AttnParams {
        heads: 40,
        kv_heads: H,
        head_dim: D,
        scale: (D as f32).powf(-0.5),
        mask: MaskKind::Causal,
        temp: Some(TempTuning {
            floor_scale: 8192.0,
            attn_scale: 0.1,
        }),
    };
    let mut scratch = AttnScratch::default();
    attn_decode(s, &qd, &kv, &p, &mut out, &mut scratch).unwrap();
    let timer = EventTimer::new(s).unwrap();
    timer.start(s).unwrap();
    attn_decode(s, &qd, &kv, &p, &mut out, &mut scratch).unwrap();
    let t_decode = timer.stop(s).unwrap();
    let o: Vec<f32> = dev
        .download(&out)
        .unwrap()
        .iter()
        .map(|x| x.to_f32())
        .collect();

    for (h, &pp) in PLANTED.iter().enumerate() {
        let page = kv.read_page(s, KvPart::Value, 0, pp / PAGE).unwrap();
        let slot = pp % PAGE;
        let codes = &page[(h * PAGE + slot) * D..][..D];
        let so = H * PAGE * D + 4 * h;
        let scale = f32::from_le_bytes(page[so..so + 4].try_into().unwrap());
        let want: Vec<f32> = codes.iter().map(|&c| e4m3_decode(c) * scale).collect();
        for g in 0..5 {
            let got = &o[(h * 5 + g) * D..][..D];
            assert_eq!(
                got,
                &want[..],
                "query head {} (KV head {h}, planted at {pp})",
                h * 5 + g
            );
        }
    }

    // Sampled pages against a CPU cache fed the same tokens in the same single segment.
    let cpu_layout = l;
    for page in [0usize, 3, 600, 700, TOKENS / PAGE - 1] {
        let (a, b) = (page * PAGE, ((page + 1) * PAGE).min(TOKENS));
        if PLANTED.iter().any(|p| (a..b).contains(p)) {
            continue;
        }
        let off = a % PIECE;
        let mut pool = ChunkPool::new(cpu_layout, 1).unwrap();
        let seq = pool.create_seq(Retention::All).unwrap();
        let f = |x: &[bf16]| x.iter().map(|v| v.to_f32()).collect::<Vec<f32>>();
        pool.append(
            seq,
            &f(&bg_k[off * ROW..(off + b - a) * ROW]),
            &f(&bg_v[off * ROW..(off + b - a) * ROW]),
        )
        .unwrap();
        let view = pool.view(seq).unwrap();
        for part in [KvPart::Key, KvPart::Value] {
            let g = kv.read_page(s, part, 0, page).unwrap();
            for h in 0..H {
                for slot in 0..b - a {
                    let KvRow::Fp8 { codes, scale } = view.row(part, slot, h).unwrap() else {
                        unreachable!("an fp8 pool")
                    };
                    assert_eq!(
                        &g[(h * PAGE + slot) * D..][..D],
                        codes,
                        "page {page} {part:?} head {h} slot {slot}"
                    );
                    let so = H * PAGE * D + 4 * h;
                    assert_eq!(f32::from_le_bytes(g[so..so + 4].try_into().unwrap()), scale);
                }
            }
        }
    }

    // The floor: K/V bytes over the bandwidth of a large device-to-device copy.
    let gb = bytes as f64 / 1e9;
    let copy_n = 1usize << 30;
    let src = dev.zeros::<u8>(copy_n).unwrap();
    let mut dst = dev.zeros::<u8>(copy_n).unwrap();
    s.memcpy_dtod(&src, &mut dst).unwrap();
    timer.start(s).unwrap();
    for _ in 0..5 {
        s.memcpy_dtod(&src, &mut dst).unwrap();
    }
    let t_copy = timer.stop(s).unwrap().as_secs_f64() / 5.0;
    let bw = 2.0 * copy_n as f64 / t_copy / 1e9;
    let t = t_decode.as_secs_f64();
    eprintln!(
        "ten_million (GPU): {TOKENS} tokens x {H} x {D} fp8 ({gb:.1} GB K+V): fill {:.1} s, decode {:.2} ms \
         ({:.0} GB/s), copy bandwidth {bw:.0} GB/s, floor {:.2} ms, {:.0}% of the floor",
        fill.as_secs_f64(),
        t * 1e3,
        gb / t,
        gb / bw * 1e3,
        100.0 * (gb / bw) / t
    );
}

/// Bulk-appends the first `n` rows of two views.
fn append_view(
    kv: &mut GpuKvLayer,
    s: &std::sync::Arc<llama4_cuda::device::CudaStream>,
    k: &llama4_cuda::device::CudaView<'_, bf16>,
    v: &llama4_cuda::device::CudaView<'_, bf16>,
    n: usize,
) {
    kv.append_from(s, 0, k, v, n).unwrap();
}
