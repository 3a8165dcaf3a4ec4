//! The attention reference against an independent naive f64 attention over plain dense K/V arrays:
//! random shapes (T = 1, odd head_dim, GQA 1/2/5, chunk boundaries, temperature thresholds),
//! continuing prefill, decode one token at a time, bf16 and fp8 caches, typed errors.
mod attn_common;

use attn_common::{naive_attention, rel_err, NaiveSpec, Rng};
use llama4_cuda::kv_cache::{ChunkPool, KvDType, KvLayout, KvPart, Retention, SeqId};
use llama4_cuda::reference::attention::{
    attention, AttnParams, MaskKind, TempTuning, KEYS_PER_SPLIT,
};
use llama4_cuda::Error;
use proptest::prelude::*;

/// f32 cache: f32 rounding of a <= 5000-term dot product and softmax, relative to max |ref|.
const TOL_F32: f64 = 2e-5;

#[derive(Clone, Debug)]
struct Case {
    kv_heads: usize,
    group: usize,
    head_dim: usize,
    page: usize,
    len: usize,
    /// Queries: the last `tokens` positions (the cache already holds `len - tokens` earlier ones).
    tokens: usize,
    chunk: Option<usize>,
    temp: Option<(f32, f32)>,
    seed: u64,
}

impl Case {
    fn params(&self) -> AttnParams {
        AttnParams {
            heads: self.kv_heads * self.group,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            scale: (self.head_dim as f32).powf(-0.5),
            mask: self
                .chunk
                .map_or(MaskKind::Causal, |chunk| MaskKind::ChunkedLocal { chunk }),
            temp: self.temp.map(|(floor_scale, attn_scale)| TempTuning {
                floor_scale,
                attn_scale,
            }),
        }
    }
    fn spec(&self) -> NaiveSpec {
        let p = self.params();
        NaiveSpec {
            heads: p.heads,
            kv_heads: p.kv_heads,
            head_dim: p.head_dim,
            scale: (self.head_dim as f64).powf(-0.5),
            chunk: self.chunk,
            temp: self.temp.map(|(a, b)| (a as f64, b as f64)),
        }
    }
    /// Chunked retention when the attention chunk is a multiple of the page (then it is exercised too).
    fn retention(&self) -> Retention {
        match self.chunk {
            Some(c) if c % self.page == 0 => Retention::CurrentAttentionChunk { chunk: c },
            _ => Retention::All,
        }
    }
    /// Random K, V `[len, kv_heads, d]` and q `[len, heads, d]` (for every position).
    fn data(&self) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut rng = Rng(self.seed);
        let kv = self.len * self.kv_heads * self.head_dim;
        let q = self.len * self.kv_heads * self.group * self.head_dim;
        (rng.vec(kv, 1.0), rng.vec(kv, 1.0), rng.vec(q, 1.5))
    }
    fn pool(&self, dtype: KvDType) -> (ChunkPool, SeqId) {
        let l = KvLayout {
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            chunk_tokens: self.page,
            dtype,
        };
        let mut pool = ChunkPool::new(l, self.len.div_ceil(self.page) + 1).unwrap();
        let seq = pool.create_seq(self.retention()).unwrap();
        (pool, seq)
    }
}

fn case(max_len: usize) -> impl Strategy<Value = Case> {
    (
        1usize..=3,
        prop::sample::select(vec![1usize, 2, 5]),
        prop::sample::select(vec![1usize, 3, 8, 17, 33]),
        prop::sample::select(vec![1usize, 2, 4, 8]),
        1usize..=max_len,
        1usize..=max_len,
        prop::option::of(prop::sample::select(vec![4usize, 8])),
        prop::option::of((1u32..=4, 0.05f32..1.0)),
        any::<u64>(),
    )
        .prop_map(
            |(kv_heads, group, head_dim, page, len, tokens, chunk, temp, seed)| Case {
                kv_heads,
                group,
                head_dim,
                page,
                len,
                tokens: tokens.min(len),
                chunk,
                temp: temp.map(|(f, a)| (f as f32, a)),
                seed,
            },
        )
}

/// Appends K/V of `range` (positions) and attends for the same positions.
fn step(
    pool: &mut ChunkPool,
    seq: SeqId,
    c: &Case,
    data: &(Vec<f32>, Vec<f32>, Vec<f32>),
    r: std::ops::Range<usize>,
) -> Vec<f32> {
    let (kvr, qr) = (c.kv_heads * c.head_dim, c.kv_heads * c.group * c.head_dim);
    pool.append(
        seq,
        &data.0[r.start * kvr..r.end * kvr],
        &data.1[r.start * kvr..r.end * kvr],
    )
    .unwrap();
    let view = pool.view(seq).unwrap();
    attention(
        &data.2[r.start * qr..r.end * qr],
        r.start,
        &view,
        &c.params(),
    )
    .unwrap()
}

/// Whole, pieces and token-by-token runs of one case: (whole, pieces, decode) outputs for all positions.
fn three_ways(c: &Case, dtype: KvDType, rng: &mut Rng) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let data = c.data();
    let (mut pool, seq) = c.pool(dtype);
    let whole = step(&mut pool, seq, c, &data, 0..c.len);
    let (mut pool, seq) = c.pool(dtype);
    let mut pieces = Vec::new();
    let mut s = 0;
    while s < c.len {
        let e = (s + 1 + rng.below(9)).min(c.len);
        pieces.extend(step(&mut pool, seq, c, &data, s..e));
        s = e;
    }
    let (mut pool, seq) = c.pool(dtype);
    let decode = (0..c.len)
        .flat_map(|t| step(&mut pool, seq, c, &data, t..t + 1))
        .collect();
    (whole, pieces, decode)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Prefill continuing a cache (the last `tokens` positions, after `len - tokens` earlier ones were
    /// appended) equals naive f64 attention over all K/V, for every mask, GQA ratio and temperature.
    #[test]
    fn continuing_prefill_matches_naive_f64(c in case(40)) {
        let data = c.data();
        let (mut pool, seq) = c.pool(KvDType::F32);
        let first = c.len - c.tokens;
        let kvr = c.kv_heads * c.head_dim;
        pool.append(seq, &data.0[..first * kvr], &data.1[..first * kvr]).unwrap();
        let out = step(&mut pool, seq, &c, &data, first..c.len);
        let qr = c.kv_heads * c.group * c.head_dim;
        let want = naive_attention(&data.2[first * qr..], first, &data.0, &data.1, &c.spec());
        prop_assert!(rel_err(&out, &want) <= TOL_F32, "{:?}: {}", c, rel_err(&out, &want));
    }

    /// Prefill in random pieces and decode one token at a time give bit-identical outputs to one whole
    /// prefill (f32 and bf16 caches hold the same values whatever the append order; the split points
    /// are absolute). fp8: the page scales end equal, only subnormal re-rounding differs, so the
    /// outputs agree to 1e-4 of max |out| (a subnormal step is 2^-10 of a scale, < 1e-5 of amax).
    #[test]
    fn pieces_and_decode_equal_whole_prefill(c in case(40)) {
        let mut rng = Rng(c.seed ^ 1);
        for dtype in [KvDType::F32, KvDType::BF16] {
            let (whole, pieces, decode) = three_ways(&c, dtype, &mut rng);
            prop_assert_eq!(&pieces, &whole);
            prop_assert_eq!(&decode, &whole);
        }
        let (whole, pieces, decode) = three_ways(&c, KvDType::Fp8E4M3, &mut rng);
        let whole64: Vec<f64> = whole.iter().map(|&x| x as f64).collect();
        prop_assert!(rel_err(&pieces, &whole64) <= 1e-4);
        prop_assert!(rel_err(&decode, &whole64) <= 1e-4);
    }

    /// bf16 and fp8 caches: tight against naive attention over the values the cache actually holds
    /// (read back), and within the quantization's effect against the f32 inputs: bf16 2e-2 (2^-9
    /// relative per element moves scores by < 1%), fp8 0.3 (2^-4 per element moves scores of up to
    /// ~|q||k| sqrt(d) by up to ~0.1 and v by 6%).
    #[test]
    fn quantized_caches_match_naive(c in case(40)) {
        let data = c.data();
        for (dtype, tol) in [(KvDType::BF16, 2e-2), (KvDType::Fp8E4M3, 0.3)] {
            let (mut pool, seq) = c.pool(dtype);
            let out = step(&mut pool, seq, &c, &data, 0..c.len);
            let exact = naive_attention(&data.2, 0, &data.0, &data.1, &c.spec());
            prop_assert!(rel_err(&out, &exact) <= tol, "{:?} {:?}: {}", dtype, c, rel_err(&out, &exact));
            // Whole prefill: retention dropped nothing, every position is still held.
            let view = pool.view(seq).unwrap();
            let (k, v) = (view.read_all(KvPart::Key, 0..c.len).unwrap(), view.read_all(KvPart::Value, 0..c.len).unwrap());
            let held = naive_attention(&data.2, 0, &k, &v, &c.spec());
            prop_assert!(rel_err(&out, &held) <= TOL_F32, "{:?} {:?}: {}", dtype, c, rel_err(&out, &held));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    /// Contexts longer than one split (several splits merged), decode and a short continuing prefill,
    /// with chunk sizes that put split and chunk boundaries in different places.
    #[test]
    fn long_context_multi_split_matches_naive(
        len in KEYS_PER_SPLIT + 1..=2 * KEYS_PER_SPLIT + 700,
        tokens in 1usize..=3,
        group in prop::sample::select(vec![1usize, 5]),
        chunk in prop::option::of(prop::sample::select(vec![1024usize, 3000])),
        seed: u64,
    ) {
        let c = Case { kv_heads: 2, group, head_dim: 7, page: 16, len, tokens, chunk, temp: Some((64.0, 0.3)), seed };
        let data = c.data();
        let (mut pool, seq) = c.pool(KvDType::F32);
        let first = len - tokens;
        let kvr = c.kv_heads * c.head_dim;
        pool.append(seq, &data.0[..first * kvr], &data.1[..first * kvr]).unwrap();
        let out = step(&mut pool, seq, &c, &data, first..len);
        let qr = c.kv_heads * group * c.head_dim;
        let want = naive_attention(&data.2[first * qr..], first, &data.0, &data.1, &c.spec());
        prop_assert!(rel_err(&out, &want) <= TOL_F32, "{:?}: {}", c, rel_err(&out, &want));
    }
}

/// The temperature factor itself, at the positions where `floor((pos + 1) / floor_scale)` steps.
#[test]
fn temperature_factor_steps_at_thresholds() {
    let t = TempTuning {
        floor_scale: 3.0,
        attn_scale: 0.5,
    };
    for (pos, floor) in [
        (0usize, 0.0f64),
        (1, 0.0),
        (2, 1.0),
        (4, 1.0),
        (5, 2.0),
        (8, 3.0),
    ] {
        let want = floor.ln_1p() * 0.5 + 1.0;
        assert!(
            (t.factor(pos) as f64 - want).abs() < 1e-6,
            "pos {pos}: {} vs {want}",
            t.factor(pos)
        );
    }
    // Scout's values at 10M tokens.
    let scout = TempTuning {
        floor_scale: 8192.0,
        attn_scale: 0.1,
    };
    let want = ((10_000_000f64 / 8192.0).floor()).ln_1p() * 0.1 + 1.0;
    assert!((scout.factor(9_999_999) as f64 - want).abs() < 1e-6);
}

/// Bad calls are typed errors: heads not a multiple of kv_heads, q of the wrong size, a head_dim the
/// cache does not have, queries past the cache, keys a chunked layer has dropped, non-finite q.
#[test]
fn bad_calls_are_typed_errors() {
    let c = Case {
        kv_heads: 2,
        group: 2,
        head_dim: 3,
        page: 4,
        len: 20,
        tokens: 1,
        chunk: Some(8),
        temp: None,
        seed: 5,
    };
    let data = c.data();
    let (mut pool, seq) = c.pool(KvDType::F32);
    let _ = step(&mut pool, seq, &c, &data, 0..12);
    let _ = step(&mut pool, seq, &c, &data, 12..20); // drops positions < 8
    let view = pool.view(seq).unwrap();
    let p = c.params();
    let q = &data.2[..12]; // one token: 4 heads x 3
    assert!(attention(q, 19, &view, &p).is_ok());
    let e = attention(q, 19, &view, &AttnParams { heads: 3, ..p }).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("multiple"),
        "{e}"
    );
    assert!(matches!(
        attention(&q[..11], 19, &view, &p),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        attention(&data.2[..8], 19, &view, &AttnParams { head_dim: 2, ..p }),
        Err(Error::Shape { .. })
    ));
    let e = attention(q, 20, &view, &p).unwrap_err();
    assert!(e.to_string().contains("append K/V before attending"), "{e}");
    let e = attention(q, 7, &view, &p).unwrap_err();
    assert!(e.to_string().contains("dropped positions < 8"), "{e}");
    let e = attention(
        q,
        9,
        &view,
        &AttnParams {
            mask: MaskKind::Causal,
            ..p
        },
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("dropped"),
        "a causal query needs position 0: {e}"
    );
    assert!(attention(
        q,
        19,
        &view,
        &AttnParams {
            mask: MaskKind::ChunkedLocal { chunk: 0 },
            ..p
        }
    )
    .is_err());
    let mut nan = q.to_vec();
    nan[4] = f32::NAN;
    assert!(attention(&nan, 19, &view, &p).is_err());
    assert_eq!(attention(&[], 19, &view, &p).unwrap(), Vec::<f32>::new());
}
