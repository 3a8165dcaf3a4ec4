//! The chunked KV cache: round trips per dtype, fp8 scale growth, chunk reuse, all-or-nothing appends,
//! retention of chunked-local layers, many interleaved sequences, typed errors.
mod attn_common;

use attn_common::Rng;
use half::bf16;
use llama4_cuda::kv_cache::{ChunkPool, KvDType, KvLayout, KvPart, Retention, SeqId};
use llama4_cuda::quant::fp8::e4m3_decode;
use llama4_cuda::Error;
use proptest::prelude::*;

const DTYPES: [KvDType; 3] = [KvDType::F32, KvDType::BF16, KvDType::Fp8E4M3];

fn layout(kv_heads: usize, head_dim: usize, chunk_tokens: usize, dtype: KvDType) -> KvLayout {
    KvLayout {
        kv_heads,
        head_dim,
        chunk_tokens,
        dtype,
    }
}

/// Checks stored `got` against appended `want` (both `[n, kv_heads, head_dim]` for positions
/// `first..`, `first` page-aligned and every token of those pages included):
/// - f32: bit-exact;
/// - bf16: exactly `bf16::from_f32(x)` (round to nearest even);
/// - fp8: `|got - x| <= 2^-4 |x| + 2^-9 s` with `s <= 2 amax / 448` (amax over that page and head):
///   e4m3's half-ulp for normals plus the subnormal re-rounding bound of the power-of-two scale.
fn assert_stored(l: KvLayout, first: usize, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    let (h, d, p) = (l.kv_heads, l.head_dim, l.chunk_tokens);
    let n = want.len() / (h * d);
    let amax = |t: usize, head: usize| {
        let page = (first + t) / p;
        (0..n)
            .filter(|&u| (first + u) / p == page)
            .flat_map(|u| want[(u * h + head) * d..][..d].iter())
            .fold(0.0f32, |m, x| m.max(x.abs()))
    };
    for t in 0..n {
        for head in 0..h {
            let a = if l.dtype == KvDType::Fp8E4M3 {
                amax(t, head)
            } else {
                0.0
            };
            for i in 0..d {
                let j = (t * h + head) * d + i;
                let (g, x) = (got[j], want[j]);
                match l.dtype {
                    KvDType::F32 => assert_eq!(g.to_bits(), x.to_bits(), "f32 at {j}"),
                    KvDType::BF16 => assert_eq!(g, bf16::from_f32(x).to_f32(), "bf16 at {j}"),
                    KvDType::Fp8E4M3 => {
                        let bound = x.abs() / 16.0 + 2.0 * a / 448.0 / 512.0;
                        assert!(
                            (g - x).abs() <= bound * 1.0001,
                            "fp8 at {j}: {g} vs {x} (bound {bound})"
                        );
                    }
                }
            }
        }
    }
}

/// Appends `[n, h, d]` `k`/`v` in pieces cut at random points.
fn append_in_pieces(
    pool: &mut ChunkPool,
    seq: SeqId,
    k: &[f32],
    v: &[f32],
    pieces: usize,
    rng: &mut Rng,
) {
    let row = pool.layout().kv_heads * pool.layout().head_dim;
    let n = k.len() / row;
    let mut cuts: Vec<usize> = (0..pieces.saturating_sub(1))
        .map(|_| rng.below(n + 1))
        .collect();
    cuts.extend([0, n]);
    cuts.sort_unstable();
    for w in cuts.windows(2) {
        let r = w[0] * row..w[1] * row;
        pool.append(seq, &k[r.clone()], &v[r]).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Every dtype reads back what was appended (within its stated rounding), appended in pieces
    /// that cross pages; `row` and sub-range `read` agree with `read_all`.
    #[test]
    fn round_trip_all_dtypes(
        h in 1usize..=3,
        d in prop::sample::select(vec![1usize, 3, 8, 17]),
        page in 1usize..=9,
        n in 1usize..=50,
        pieces in 1usize..=5,
        seed: u64,
    ) {
        let mut rng = Rng(seed);
        for dtype in DTYPES {
            let l = layout(h, d, page, dtype);
            let mut pool = ChunkPool::new(l, n.div_ceil(page) + 1).unwrap();
            let seq = pool.create_seq(Retention::All).unwrap();
            // Pieces of different magnitude make fp8 scales grow inside a page.
            let mut k = rng.vec(n * h * d, 1.0);
            let v = rng.vec(n * h * d, 3.0);
            for (t, row) in k.chunks_exact_mut(h * d).enumerate() {
                let f = [1.0 / 64.0, 1.0, 50.0][(t + seed as usize) % 3];
                row.iter_mut().for_each(|x| *x *= f);
            }
            append_in_pieces(&mut pool, seq, &k, &v, pieces, &mut rng);
            let view = pool.view(seq).unwrap();
            prop_assert_eq!(view.len(), n);
            let (gk, gv) = (view.read_all(KvPart::Key, 0..n).unwrap(), view.read_all(KvPart::Value, 0..n).unwrap());
            assert_stored(l, 0, &gk, &k);
            assert_stored(l, 0, &gv, &v);
            let (pos, head) = (rng.below(n), rng.below(h));
            prop_assert_eq!(view.row(KvPart::Value, pos, head).unwrap().to_vec(), gv[(pos * h + head) * d..][..d].to_vec());
            let (a, b) = (rng.below(n), rng.below(n + 1));
            let (a, b) = (a.min(b), a.max(b));
            let mut sub = vec![0.0; (b - a) * d];
            view.read(KvPart::Key, head, a..b, &mut sub).unwrap();
            for t in a..b {
                prop_assert_eq!(&sub[(t - a) * d..][..d], &gk[(t * h + head) * d..][..d]);
            }
        }
    }

    /// Retention of a chunked-local layer: after appending at position `s` the sequence holds exactly
    /// the pages from `floor(s / C) * C`, every held position reads back, and dropped ones are errors.
    #[test]
    fn retention_drops_chunks_exactly_when_invisible(
        page in prop::sample::select(vec![1usize, 2, 4]),
        mult in 1usize..=4,
        n in 1usize..=40,
        piece_max in 1usize..=9,
        seed: u64,
    ) {
        let (c, (h, d)) = (page * mult, (2, 3));
        let mut rng = Rng(seed);
        let l = layout(h, d, page, KvDType::F32);
        let total = n.div_ceil(page) + 1;
        let mut pool = ChunkPool::new(l, total).unwrap();
        let seq = pool.create_seq(Retention::CurrentAttentionChunk { chunk: c }).unwrap();
        let (k, v) = (rng.vec(n * h * d, 1.0), rng.vec(n * h * d, 1.0));
        let mut s = 0;
        while s < n {
            let m = (1 + rng.below(piece_max)).min(n - s);
            pool.append(seq, &k[s * h * d..(s + m) * h * d], &v[s * h * d..(s + m) * h * d]).unwrap();
            let keep = s / c * c;
            let view = pool.view(seq).unwrap();
            prop_assert_eq!(view.start(), keep);
            prop_assert_eq!(view.chunk_table().len(), (s + m).div_ceil(page) - keep / page);
            prop_assert_eq!(pool.free_chunks(), total - view.chunk_table().len());
            let got = view.read_all(KvPart::Key, keep..s + m).unwrap();
            prop_assert_eq!(&got[..], &k[keep * h * d..(s + m) * h * d]);
            if keep > 0 {
                prop_assert!(view.row(KvPart::Key, keep - 1, 0).is_err());
            }
            s += m;
        }
    }
}

/// Pre-encoded fp8 codes read back exactly as `decode(code) * scale`; a later append with a 4x larger
/// scale re-encodes the page's earlier codes, and a smaller incoming scale converts the incoming codes:
/// both within `2^-9 s_final` (only subnormal values are rounded again).
#[test]
fn append_fp8_codes_and_rescale() {
    let mut rng = Rng(7);
    let (h, d, page) = (2, 5, 8);
    let mut pool = ChunkPool::new(layout(h, d, page, KvDType::Fp8E4M3), 4).unwrap();
    let seq = pool.create_seq(Retention::All).unwrap();
    let codes = |rng: &mut Rng, n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| loop {
                let c = rng.next_u64() as u8;
                if c & 0x7f != 0x7f {
                    break c;
                }
            })
            .collect()
    };
    let (k1, v1) = (codes(&mut rng, 3 * h * d), codes(&mut rng, 3 * h * d));
    pool.append_fp8(seq, &k1, &[0.25, 2.0], &v1, &[1.0, 1.0])
        .unwrap();
    let view = pool.view(seq).unwrap();
    let want = |c: &[u8], s: &[f32]| -> Vec<f32> {
        c.iter()
            .enumerate()
            .map(|(i, &c)| e4m3_decode(c) * s[(i / d) % h])
            .collect()
    };
    let wk1 = want(&k1, &[0.25, 2.0]);
    assert_eq!(view.read_all(KvPart::Key, 0..3).unwrap(), wk1);
    assert_eq!(
        view.read_all(KvPart::Value, 0..3).unwrap(),
        want(&v1, &[1.0, 1.0])
    );
    // K head 0 grows 0.25 -> 1.0 (old codes re-encoded); head 1 stays 2.0 (incoming codes converted).
    let (k2, v2) = (codes(&mut rng, 2 * h * d), codes(&mut rng, 2 * h * d));
    pool.append_fp8(seq, &k2, &[1.0, 0.5], &v2, &[1.0, 1.0])
        .unwrap();
    let view = pool.view(seq).unwrap();
    let got = view.read_all(KvPart::Key, 0..5).unwrap();
    let mut wk = wk1;
    wk.extend(want(&k2, &[1.0, 0.5]));
    for (i, (g, w)) in got.iter().zip(&wk).enumerate() {
        let s_final = [1.0, 2.0][(i / d) % h];
        assert!((g - w).abs() <= s_final / 512.0, "{i}: {g} vs {w}");
    }
    assert!(
        got.iter().zip(&wk).any(|(g, w)| g != w),
        "some subnormal must have been re-rounded"
    );
}

/// A released sequence's chunks are reused; the reused chunks hold only the new data (fp8 scales are
/// reset: the new, small values keep their own precision).
#[test]
fn chunk_reuse_after_release() {
    for dtype in DTYPES {
        let mut rng = Rng(11);
        let (h, d, page) = (2, 4, 4);
        let l = layout(h, d, page, dtype);
        let mut pool = ChunkPool::new(l, 3).unwrap();
        let a = pool.create_seq(Retention::All).unwrap();
        let big = rng.vec(12 * h * d, 1000.0);
        pool.append(a, &big, &big).unwrap();
        assert_eq!(pool.free_chunks(), 0);
        let b = pool.create_seq(Retention::All).unwrap();
        let one = rng.vec(h * d, 1.0);
        match pool.append(b, &one, &one) {
            Err(Error::CacheFull {
                needed: 1,
                free: 0,
                total: 3,
            }) => {}
            other => panic!("{dtype:?}: expected CacheFull, got {other:?}"),
        }
        let mut held: Vec<u32> = pool.view(a).unwrap().chunk_table().to_vec();
        pool.release(a).unwrap();
        assert_eq!(pool.free_chunks(), 3);
        assert!(pool.view(a).is_err());
        let (k, v) = (rng.vec(10 * h * d, 0.01), rng.vec(10 * h * d, 0.01));
        append_in_pieces(&mut pool, b, &k, &v, 3, &mut rng);
        let view = pool.view(b).unwrap();
        let mut reused: Vec<u32> = view.chunk_table().to_vec();
        held.sort_unstable();
        reused.sort_unstable();
        assert_eq!(reused, held, "{dtype:?}");
        assert_stored(l, 0, &view.read_all(KvPart::Key, 0..10).unwrap(), &k);
        assert_stored(l, 0, &view.read_all(KvPart::Value, 0..10).unwrap(), &v);
    }
}

/// Everything observable about a pool, to compare before and after a failed append.
fn snapshot(pool: &ChunkPool, seqs: &[SeqId]) -> Vec<(usize, usize, Vec<u32>, Vec<u32>, Vec<u32>)> {
    let mut out = Vec::new();
    for &s in seqs {
        let v = pool.view(s).unwrap();
        let bits = |p| {
            v.read_all(p, v.start()..v.len())
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        out.push((
            v.start(),
            v.len(),
            v.chunk_table().to_vec(),
            bits(KvPart::Key),
            bits(KvPart::Value),
        ));
    }
    out.push((pool.free_chunks(), 0, vec![], vec![], vec![]));
    out
}

/// A failing append (no chunk left, or bad input) changes nothing: no data, length, scale, chunk table
/// or free count; not even the retention drop it would have done.
#[test]
fn failed_append_changes_nothing() {
    for dtype in DTYPES {
        let mut rng = Rng(3);
        let (h, d, page) = (2, 3, 4);
        let row = h * d;
        let mut pool = ChunkPool::new(layout(h, d, page, dtype), 6).unwrap();
        let a = pool.create_seq(Retention::All).unwrap();
        let c = pool
            .create_seq(Retention::CurrentAttentionChunk { chunk: 8 })
            .unwrap();
        let x = rng.vec(10 * row, 1.0);
        pool.append(a, &x, &x).unwrap(); // 3 chunks, 2 free slots in the last
        let y = rng.vec(12 * row, 1.0);
        pool.append(c, &y, &y).unwrap(); // 3 chunks: positions 0..12; pool now full
        let before = snapshot(&pool, &[a, c]);
        // 4 tokens of large values: 2 fit, the rest need a chunk (and would raise fp8 scales).
        let big = rng.vec(4 * row, 300.0);
        assert!(matches!(
            pool.append(a, &big, &big),
            Err(Error::CacheFull {
                needed: 1,
                free: 0,
                total: 6
            })
        ));
        // c would drop pages 0, 1 (positions 0..8 invisible from 12) but needs 3 for 12 more tokens.
        let more = rng.vec(12 * row, 1.0);
        match pool.append(c, &more, &more) {
            Err(Error::CacheFull {
                needed: 3,
                free: 2,
                total: 6,
            }) => {}
            other => panic!("{dtype:?}: expected CacheFull 3/2/6, got {other:?}"),
        }
        let mut nan = rng.vec(2 * row, 1.0);
        nan[row + 1] = f32::NAN;
        assert!(matches!(
            pool.append(a, &rng.vec(2 * row, 1.0), &nan),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            pool.append(a, &x[..row + 1], &x[..row + 1]),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            pool.append(a, &x[..row], &x[..2 * row]),
            Err(Error::Shape { .. })
        ));
        if dtype == KvDType::BF16 {
            let huge = vec![f32::MAX; row];
            assert!(
                pool.append(a, &huge, &huge).is_err(),
                "f32::MAX rounds to inf in bf16"
            );
        }
        assert_eq!(snapshot(&pool, &[a, c]), before, "{dtype:?}");
        // The 2 tokens that fit still go in; then c can continue once a chunk is free.
        pool.append(a, &big[..2 * row], &big[..2 * row]).unwrap();
        pool.release(a).unwrap();
        pool.append(c, &more, &more).unwrap();
        let v = pool.view(c).unwrap();
        assert_eq!((v.start(), v.len(), v.chunk_table().len()), (8, 24, 4));
    }
}

/// Many sequences with mixed retention, appended to in random interleaved order, released and
/// re-created: each reads back its own data and no chunk leaks.
#[test]
fn many_sequences_interleaved() {
    let mut rng = Rng(99);
    let (h, d, page) = (2, 5, 4);
    let row = h * d;
    let total = 400;
    let mut pool = ChunkPool::new(layout(h, d, page, KvDType::F32), total).unwrap();
    // (id, retention chunk, K data, V data) with data for every position from 0.
    let mut live: Vec<(SeqId, Option<usize>, Vec<f32>, Vec<f32>)> = Vec::new();
    for step in 0..400 {
        if live.len() < 6 || rng.below(20) == 0 {
            if live.len() >= 6 {
                let (id, ..) = live.swap_remove(rng.below(live.len()));
                pool.release(id).unwrap();
            }
            let chunk = [None, Some(4), Some(8)][rng.below(3)];
            let ret = chunk.map_or(Retention::All, |c| Retention::CurrentAttentionChunk {
                chunk: c,
            });
            live.push((pool.create_seq(ret).unwrap(), chunk, vec![], vec![]));
        }
        let i = rng.below(live.len());
        let m = 1 + rng.below(7);
        let (k, v) = (rng.vec(m * row, 1.0), rng.vec(m * row, 1.0));
        pool.append(live[i].0, &k, &v)
            .unwrap_or_else(|e| panic!("step {step}: {e}"));
        live[i].2.extend(&k);
        live[i].3.extend(&v);
        let mut held = 0;
        for (id, _, ks, vs) in &live {
            let view = pool.view(*id).unwrap();
            held += view.chunk_table().len();
            let r = view.start()..view.len();
            assert_eq!(
                view.read_all(KvPart::Key, r.clone()).unwrap(),
                ks[r.start * row..]
            );
            assert_eq!(
                view.read_all(KvPart::Value, r.clone()).unwrap(),
                vs[r.start * row..]
            );
        }
        assert_eq!(
            held + pool.free_chunks(),
            total,
            "step {step}: chunks leaked"
        );
    }
    assert!(
        live.iter()
            .any(|s| s.1.is_some() && pool.view(s.0).unwrap().start() > 0),
        "retention exercised"
    );
}

/// Bad arguments are typed errors naming the problem.
#[test]
fn bad_input_is_a_typed_error() {
    let l = layout(2, 3, 4, KvDType::F32);
    assert!(ChunkPool::new(KvLayout { head_dim: 0, ..l }, 4).is_err());
    assert!(ChunkPool::new(l, 0).is_err());
    assert!(ChunkPool::new(
        KvLayout {
            kv_heads: usize::MAX / 2,
            ..l
        },
        4
    )
    .is_err());
    let mut pool = ChunkPool::new(l, 4).unwrap();
    assert!(
        pool.create_seq(Retention::CurrentAttentionChunk { chunk: 6 })
            .is_err(),
        "not a multiple of 4"
    );
    assert!(pool
        .create_seq(Retention::CurrentAttentionChunk { chunk: 0 })
        .is_err());
    let ghost = SeqId(12345);
    assert!(pool.view(ghost).is_err() && pool.release(ghost).is_err());
    assert!(pool.append(ghost, &[1.0; 6], &[1.0; 6]).is_err());
    let s = pool.create_seq(Retention::All).unwrap();
    let e = pool
        .append_fp8(s, &[1; 6], &[1.0, 1.0], &[1; 6], &[1.0, 1.0])
        .unwrap_err();
    assert!(matches!(e, Error::DType { .. }), "{e}");
    pool.append(s, &[0.5; 12], &[0.25; 12]).unwrap();
    let view = pool.view(s).unwrap();
    let e = view.row(KvPart::Key, 2, 0).unwrap_err();
    assert!(e.to_string().contains("positions 2..3"), "{e}");
    assert!(view.row(KvPart::Key, 1, 2).is_err(), "head 2 of 2");
    assert!(
        view.read(KvPart::Key, 0, 0..2, &mut [0.0; 5]).is_err(),
        "output length"
    );

    let mut fp8 = ChunkPool::new(layout(1, 2, 4, KvDType::Fp8E4M3), 2).unwrap();
    let s = fp8.create_seq(Retention::All).unwrap();
    assert!(
        fp8.append_fp8(s, &[1, 2], &[3.0], &[1, 2], &[1.0]).is_err(),
        "scale not a power of two"
    );
    assert!(
        fp8.append_fp8(s, &[1, 2], &[1.0, 1.0], &[1, 2], &[1.0])
            .is_err(),
        "one scale per head"
    );
    assert!(
        fp8.append_fp8(s, &[1, 0x7f], &[1.0], &[1, 2], &[1.0])
            .is_err(),
        "NaN code"
    );
    assert!(fp8
        .append_fp8(s, &[1, 0xff], &[1.0], &[1, 2], &[-1.0])
        .is_err());
    assert_eq!(fp8.view(s).unwrap().len(), 0);
}
