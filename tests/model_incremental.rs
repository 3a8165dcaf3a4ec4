//! Prefill + decode through the chunked KV cache equals one whole forward: every split of a sequence
//! into segments gives the logits of a single prefill, across attention-chunk boundaries (chunks of
//! 3 and 4 tokens) and NoPE temperature steps (floor_scale 2 and 3), on tiny Scout- and
//! Maverick-shaped models with random weights.
use llama4_cuda::kv_cache::KvDType;
use llama4_cuda::model::cache::CacheOptions;
use llama4_cuda::model::generate::{generate, GenerateOptions, StopReason};
use llama4_cuda::model::sampling::{argmax, Rng, SamplingParams};
use llama4_cuda::model::synthetic::{layer_kinds, random_weights};
use llama4_cuda::model::{synthetic, Config, CpuBackend, Logits, Model};
use llama4_cuda::Error;
use proptest::prelude::*;

/// Scout's structure at toy size: every layer MoE, qk norm, llama3 scaling (all three regimes at
/// head_dim 8 with original 64), NoPE layer 3, chunk 3, temperature steps every 2 positions.
fn tiny_scout() -> Config {
    let mut c = synthetic::config();
    c.vocab_size = 97;
    c.hidden_size = 32;
    c.num_hidden_layers = 4;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 8;
    c.intermediate_size = 24;
    c.intermediate_size_mlp = 40;
    c.num_local_experts = 3;
    c.num_experts_per_tok = 1;
    c.rope_theta = 10_000.0;
    if let Some(s) = c.rope_scaling.as_mut() {
        s.original_max_position_embeddings = 64.0;
    }
    c.attention_chunk_size = 3;
    c.floor_scale = 2.0;
    c.attn_scale = 0.5;
    c.max_position_embeddings = 64;
    c.layers = layer_kinds(4, 1);
    c
}

/// Maverick's structure at toy size: dense / MoE alternation, no qk norm, no scaling, top-2, chunk 4.
fn tiny_maverick() -> Config {
    let mut c = tiny_scout();
    c.use_qk_norm = false;
    c.rope_scaling = None;
    c.num_local_experts = 4;
    c.num_experts_per_tok = 2;
    c.attention_chunk_size = 4;
    c.floor_scale = 3.0;
    c.layers = layer_kinds(4, 2);
    c
}

fn model(c: Config, seed: u64) -> Model {
    let w = random_weights(&c, seed);
    Model::new(c, w, CpuBackend).unwrap()
}

fn random_tokens(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect()
}

/// Logits of `tokens` fed in segments of the given sizes (the remainder as one last segment).
fn segmented(m: &Model, tokens: &[u32], sizes: &[usize]) -> Vec<f32> {
    let mut cache = m.new_cache(tokens.len()).unwrap();
    let mut out = Vec::new();
    let mut at = 0usize;
    for &s in sizes.iter().chain(std::iter::once(&usize::MAX)) {
        let end = at.saturating_add(s).min(tokens.len());
        if end > at {
            out.extend(
                m.forward(&mut cache, &tokens[at..end], Logits::All)
                    .unwrap(),
            );
        }
        at = end;
    }
    assert_eq!(cache.len(), tokens.len());
    out
}

/// max |a - b| / (max b - min b).
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let range = b.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x))
        - b.iter().fold(f32::INFINITY, |m, &x| m.min(x));
    assert!(range > 0.0, "degenerate logits");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / range
}

// Tolerance 1e-5 of the logit range: both sides run the same f32 ops on the same rows; only the
// summation order over keys / rows may differ between a prefill and a decode, ~1e-7 per op.
const TOL: f32 = 1e-5;

#[test]
fn every_prefill_split_matches_one_forward() {
    for (name, c, seed) in [
        ("scout", tiny_scout(), 11),
        ("maverick", tiny_maverick(), 12),
    ] {
        let m = model(c, seed);
        let tokens = random_tokens(seed + 100, 23, 97);
        let whole = m.logits(&tokens, None).unwrap();
        for prefill in [1, 2, 3, 4, 5, 7, 8, 12, 22] {
            let split = m.logits(&tokens, Some(prefill)).unwrap();
            let e = rel_err(&split, &whole);
            assert!(e <= TOL, "{name} prefill {prefill}: error {e} of the range");
        }
    }
}

#[test]
fn last_logits_are_the_last_row_of_all() {
    let m = model(tiny_scout(), 3);
    let tokens = random_tokens(4, 9, 97);
    let all = m.logits(&tokens, None).unwrap();
    let mut cache = m.new_cache(9).unwrap();
    let last = m.forward(&mut cache, &tokens, Logits::Last).unwrap();
    assert_eq!(last.as_slice(), &all[8 * 97..]);
}

/// Chunks are aligned to absolute positions: with only chunked layers, changing the token at
/// position 2 changes the logits of positions 2 and 3 (chunk 0 of 4 tokens) and leaves every later
/// chunk bit-identical, also when the later positions run as decode steps.
#[test]
fn chunks_are_aligned_to_absolute_positions() {
    let mut c = tiny_maverick();
    c.layers.iter_mut().for_each(|l| l.rope = true);
    let m = model(c, 7);
    let a = random_tokens(8, 13, 97);
    let mut b = a.clone();
    b[2] = (a[2] + 1) % 97;
    for prefill in [13, 3, 6] {
        let (la, lb) = (
            m.logits(&a, Some(prefill)).unwrap(),
            m.logits(&b, Some(prefill)).unwrap(),
        );
        let row = |l: &[f32], p: usize| l[p * 97..(p + 1) * 97].to_vec();
        for p in 0..13 {
            let same = row(&la, p) == row(&lb, p);
            assert_eq!(
                same,
                !(2..4).contains(&p),
                "prefill {prefill}, position {p}"
            );
        }
    }
}

/// Pages smaller than the attention chunk (several pages per chunk, partly filled at the end of a
/// segment) and pages equal to it give the same logits.
#[test]
fn page_sizes_do_not_change_logits() {
    let mut six = tiny_scout();
    six.attention_chunk_size = 6;
    for (name, c, pages) in [
        ("maverick", tiny_maverick(), [1, 2, 4]),
        ("scout", six, [2, 3, 6]),
    ] {
        let m = model(c, 51);
        let tokens = random_tokens(52, 21, 97);
        let whole = m.logits(&tokens, None).unwrap();
        for page in pages {
            let opts = CacheOptions {
                page_tokens: Some(page),
                ..Default::default()
            };
            let mut cache = m.new_cache_with(tokens.len(), &opts).unwrap();
            let mut got = Vec::new();
            for seg in [
                &tokens[..5],
                &tokens[5..6],
                &tokens[6..13],
                &tokens[13..14],
                &tokens[14..],
            ] {
                got.extend(m.forward(&mut cache, seg, Logits::All).unwrap());
            }
            let e = rel_err(&got, &whole);
            assert!(e <= TOL, "{name} page {page}: error {e}");
        }
        let opts = CacheOptions {
            page_tokens: Some(5),
            ..Default::default()
        };
        let e = m
            .new_cache_with(8, &opts)
            .err()
            .expect("a page that does not divide the chunk");
        assert!(e.to_string().contains("page_tokens"), "{e}");
    }
}

/// A bf16 KV cache stays close to the f32 one: keys and values rounded to 8 bits of mantissa
/// (relative error 2^-9 each) move logits by well under 2% of their range on these unit-scale models.
#[test]
fn bf16_cache_is_close_to_f32() {
    let m = model(tiny_scout(), 61);
    let tokens = random_tokens(62, 17, 97);
    let whole = m.logits(&tokens, None).unwrap();
    let opts = CacheOptions {
        dtype: KvDType::BF16,
        ..Default::default()
    };
    let mut cache = m.new_cache_with(tokens.len(), &opts).unwrap();
    let mut got = m.forward(&mut cache, &tokens[..9], Logits::All).unwrap();
    for t in &tokens[9..] {
        got.extend(
            m.forward(&mut cache, std::slice::from_ref(t), Logits::All)
                .unwrap(),
        );
    }
    let e = rel_err(&got, &whole);
    assert!(e <= 2e-2 && e > 0.0, "bf16 cache: error {e} of the range");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Arbitrary segmentations (several multi-token segments after the prefill) equal one forward.
    #[test]
    fn random_segmentations_match(seed in 0u64..1_000_000, len in 1usize..30, sizes in prop::collection::vec(1usize..7, 1..8), maverick: bool) {
        let c = if maverick { tiny_maverick() } else { tiny_scout() };
        let m = model(c, seed);
        let tokens = random_tokens(seed ^ 0x5eed, len, 97);
        let whole = m.logits(&tokens, None).unwrap();
        let seg = segmented(&m, &tokens, &sizes);
        let e = rel_err(&seg, &whole);
        prop_assert!(e <= TOL, "segments {:?} of {}: error {}", sizes, len, e);
    }
}

#[test]
fn greedy_generation_follows_the_argmax_of_a_full_forward() {
    let m = model(tiny_scout(), 21);
    let prompt = random_tokens(22, 5, 97);
    let opts = GenerateOptions {
        max_new_tokens: 12,
        sampling: SamplingParams::greedy(),
        stop_tokens: vec![],
    };
    let mut streamed = Vec::new();
    let g = generate(&m, &prompt, &opts, |t| streamed.push(t)).unwrap();
    assert_eq!(g.tokens.len(), 12);
    assert_eq!(g.tokens, streamed);
    assert_eq!(g.stop, StopReason::MaxNewTokens);
    let mut all = prompt.clone();
    all.extend(&g.tokens[..11]);
    let logits = m.logits(&all, None).unwrap();
    for (i, &t) in g.tokens.iter().enumerate() {
        let row = &logits[(prompt.len() - 1 + i) * 97..][..97];
        assert_eq!(argmax(row), t, "token {i}");
    }
    // A stop token ends generation right after it is produced.
    let opts = GenerateOptions {
        stop_tokens: vec![g.tokens[3]],
        ..opts
    };
    let first = g.tokens.iter().position(|&t| t == g.tokens[3]).unwrap();
    let h = generate(&m, &prompt, &opts, |_| {}).unwrap();
    assert_eq!(h.tokens, g.tokens[..=first]);
    assert_eq!(h.stop, StopReason::StopToken(g.tokens[3]));
}

#[test]
fn sampled_generation_repeats_with_its_seed() {
    let m = model(tiny_maverick(), 31);
    let prompt = random_tokens(32, 4, 97);
    let run = |seed| {
        let sampling = SamplingParams {
            temperature: 1.0,
            top_p: 0.95,
            seed,
        };
        let opts = GenerateOptions {
            max_new_tokens: 16,
            sampling,
            stop_tokens: vec![],
        };
        generate(&m, &prompt, &opts, |_| {}).unwrap().tokens
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn user_errors_are_typed() {
    let m = model(tiny_scout(), 41);
    let mut cache = m.new_cache(8).unwrap();
    let e = m.forward(&mut cache, &[3, 97], Logits::All).unwrap_err();
    assert!(e.to_string().contains("token id 97"), "{e}");
    // The rejected call left the cache usable.
    m.forward(&mut cache, &[3, 96], Logits::All).unwrap();
    let e = m.forward(&mut cache, &[1; 7], Logits::All).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ContextTooLong {
                needed: 9,
                limit: 8
            }
        ),
        "{e}"
    );
    let e = m.new_cache(65).err().unwrap();
    assert!(
        matches!(
            e,
            Error::ContextTooLong {
                needed: 65,
                limit: 64
            }
        ),
        "{e}"
    );
    let opts = GenerateOptions {
        max_new_tokens: 60,
        sampling: SamplingParams::greedy(),
        stop_tokens: vec![],
    };
    let e = generate(&m, &[1; 5], &opts, |_| {}).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ContextTooLong {
                needed: 65,
                limit: 64
            }
        ),
        "{e}"
    );
    // A weight of the wrong shape is named.
    let c = tiny_scout();
    let mut w = random_weights(&c, 1);
    w.layers[2].k = w.layers[2].q.clone();
    let e = Model::new(c, w, CpuBackend).err().unwrap().to_string();
    assert!(e.contains("layers.2.self_attn.k_proj"), "{e}");
}
