//! One NoPE layer's fp8 cache filled with 10,000,000 tokens of 1 KV head x 440 (4.4e9 elements per
//! K and per V, past 2^32; 8.8 GB in all: the largest test of the suite, and the only one here), then
//! ONE reference decode step over all of it. Planted keys must dominate: one at an element offset
//! past 2^32, one near the end, and one early (which a 32-bit offset wrap would overwrite).
mod attn_common;

use attn_common::Rng;
use llama4_cuda::kv_cache::{ChunkPool, KvDType, KvLayout, KvPart, Retention};
use llama4_cuda::quant::fp8::{e4m3_decode, e4m3_encode};
use llama4_cuda::reference::attention::{attention, AttnParams, MaskKind, TempTuning};
use std::time::Instant;

const TOKENS: usize = 10_000_000;
const D: usize = 440;
const PAGE: usize = 4096;
/// Tokens per bulk append.
const BATCH: usize = 1 << 16;

#[test]
fn ten_million_token_fp8_decode_crosses_u32_offsets() {
    // Planted positions: past 2^32 elements, near the end, and early.
    let planted = [9_800_000usize, TOKENS - 3, 12_345];
    assert!(TOKENS * D > 1 << 32 && planted[0] * D > 1 << 32);
    // Mutually orthogonal +-1 patterns (440 is a multiple of 4): query head h looks for pattern h.
    let pattern = |h: usize, j: usize| -> f32 {
        let bit = [0, j, j / 2][h] % 2;
        if bit == 0 {
            1.0
        } else {
            -1.0
        }
    };
    let l = KvLayout {
        kv_heads: 1,
        head_dim: D,
        chunk_tokens: PAGE,
        dtype: KvDType::Fp8E4M3,
    };
    let mut pool = ChunkPool::new(l, TOKENS.div_ceil(PAGE)).unwrap();
    let seq = pool.create_seq(Retention::All).unwrap();

    // Background: random codes with exponent field < 8 (|x| < 2, never NaN), scale 1.
    let mut rng = Rng(0x1e7);
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n.div_ceil(8))
            .flat_map(|_| rng.next_u64().to_le_bytes())
            .take(n)
            .collect()
    };
    let (bg_k, bg_v): (Vec<u8>, Vec<u8>) = (
        bytes(BATCH * D).iter().map(|b| b & 0xbf).collect(),
        bytes(BATCH * D).iter().map(|b| b & 0xbf).collect(),
    );
    // Planted keys: 448 * pattern; planted values: random codes over the whole range (NaN 0x7f -> 0x7e).
    let big_k: Vec<Vec<u8>> = (0..3)
        .map(|h| (0..D).map(|j| e4m3_encode(448.0 * pattern(h, j))).collect())
        .collect();
    let big_v: Vec<Vec<u8>> = (0..3)
        .map(|_| {
            bytes(D)
                .iter()
                .map(|&c| if c & 0x7f == 0x7f { c ^ 1 } else { c })
                .collect()
        })
        .collect();

    let t0 = Instant::now();
    for b in (0..TOKENS).step_by(BATCH) {
        let m = BATCH.min(TOKENS - b);
        let mut k = std::borrow::Cow::Borrowed(&bg_k[..m * D]);
        let mut v = std::borrow::Cow::Borrowed(&bg_v[..m * D]);
        for (h, &p) in planted.iter().enumerate() {
            if (b..b + m).contains(&p) {
                k.to_mut()[(p - b) * D..][..D].copy_from_slice(&big_k[h]);
                v.to_mut()[(p - b) * D..][..D].copy_from_slice(&big_v[h]);
            }
        }
        pool.append_fp8(seq, &k, &[1.0], &v, &[1.0]).unwrap();
    }
    let fill = t0.elapsed();
    let view = pool.view(seq).unwrap();
    assert_eq!(view.len(), TOKENS);
    for (h, &p) in planted.iter().enumerate() {
        let want: Vec<f32> = big_k[h].iter().map(|&c| e4m3_decode(c)).collect();
        assert_eq!(
            view.row(KvPart::Key, p, 0).unwrap().to_vec(),
            want,
            "planted key {h} read back"
        );
        assert_ne!(view.row(KvPart::Key, p + 1, 0).unwrap().to_vec(), want);
    }

    // One decode step for the last position: 3 query heads over the single KV head.
    let q: Vec<f32> = (0..3)
        .flat_map(|h| (0..D).map(move |j| pattern(h, j)))
        .collect();
    let p = AttnParams {
        heads: 3,
        kv_heads: 1,
        head_dim: D,
        scale: (D as f32).powf(-0.5),
        mask: MaskKind::Causal,
        temp: Some(TempTuning {
            floor_scale: 8192.0,
            attn_scale: 0.1,
        }),
    };
    let t1 = Instant::now();
    let out = attention(&q, TOKENS - 1, &view, &p).unwrap();
    let decode = t1.elapsed();
    // The planted score (448 * 440 * scale * temp ~ 1.6e4) beats any background score (< 1.875 * 440
    // * scale * temp ~ 67) and the other planted keys (orthogonal: 0) by e^-15000: every other weight
    // is exactly 0 in f32, so the output is the planted value row up to f32 rounding (1e-6).
    for h in 0..3 {
        let want: Vec<f32> = big_v[h].iter().map(|&c| e4m3_decode(c)).collect();
        let got = &out[h * D..(h + 1) * D];
        let amax = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            err <= 1e-6 * amax,
            "head {h} (planted at {}): error {err} of {amax}",
            planted[h]
        );
    }
    let gb = (2 * TOKENS * D) as f64 / 1e9;
    eprintln!(
        "ten_million: {TOKENS} tokens x {D} fp8 ({gb:.1} GB K+V): fill {:.1} s, decode {:.2} s ({:.1} GB/s)",
        fill.as_secs_f64(),
        decode.as_secs_f64(),
        gb / decode.as_secs_f64()
    );
}
