//! GPU MoE gating against the CPU reference `reference::moe::top_k_gating`: random logits (never
//! zero, fresh seed printed on failure), tokens 1 / 7 / 8192 / 16384, experts 16 / 128 / 256, k 1 / 2 / 8,
//! all tokens to one expert, empty experts, f32 and bf16 logits, padded offsets. Outputs are poisoned
//! (0xAAAAAAAA) before each launch. Ids, counts, offsets, sorted order and inverse must match exactly;
//! scores within 1e-6 (CUDA expf is within 2 ulp of the reference's exp, and sigmoid <= 1).
//! Without a GPU each test prints one "skipped" line and passes.

use common::Rng;
use half::bf16;
use llama4_cuda::device::{device_for_test, Device};
use llama4_cuda::ops::{moe_gate, MoeGateBuffers};
use llama4_cuda::reference::moe::{top_k_gating, Routing};

mod common;

const POISON: u32 = 0xAAAA_AAAA;

/// Runs the kernel on `logits` (as f32 or bf16) and returns the downloaded outputs as a Routing
/// (sorted_slots truncated to offsets[experts]) plus the raw sorted buffer.
fn gpu_routing(
    dev: &Device,
    logits: &[f32],
    tokens: usize,
    experts: usize,
    k: usize,
    pad: usize,
    as_bf16: bool,
) -> (Routing, Vec<f32>, Vec<u32>) {
    let s = dev.stream();
    let mut out = MoeGateBuffers::new(s, tokens, experts, k, pad).expect("alloc");
    // Twice on the same buffers, poisoned before each launch: the second run checks that the
    // workspace (the scan's block counter) is re-armed by every launch.
    for _ in 0..2 {
        for buf in [
            &mut out.topk_ids,
            &mut out.counts,
            &mut out.offsets,
            &mut out.sorted_slots,
            &mut out.inverse,
        ] {
            let n = buf.len();
            *buf = dev.upload(&vec![POISON; n]).expect("poison");
        }
        out.topk_scores = dev
            .upload(&vec![f32::NAN; out.topk_scores.len()])
            .expect("poison");
        if as_bf16 {
            let b: Vec<bf16> = logits.iter().map(|&v| bf16::from_f32(v)).collect();
            let d = dev.upload(&b).expect("upload");
            moe_gate(s, &d, &mut out).expect("moe_gate");
        } else {
            let d = dev.upload(logits).expect("upload");
            moe_gate(s, &d, &mut out).expect("moe_gate");
        }
    }
    let slots = tokens * k;
    let ids = dev.download(&out.topk_ids).expect("download");
    let scores = dev.download(&out.topk_scores).expect("download");
    let sorted = dev.download(&out.sorted_slots).expect("download");
    let r = Routing {
        tokens,
        k,
        experts,
        topk_ids: ids[..slots].to_vec(),
        topk_scores_bits: scores[..slots].iter().map(|s| s.to_bits()).collect(),
        counts: dev.download(&out.counts).expect("download"),
        offsets: dev.download(&out.offsets).expect("download"),
        sorted_slots: sorted[..slots.min(sorted.len())].to_vec(),
        inverse: dev.download(&out.inverse).expect("download")[..slots].to_vec(),
    };
    (r, scores[..slots].to_vec(), sorted)
}

/// Compares a pad = 1 GPU routing with the reference on the (possibly bf16-rounded) logits.
fn check(
    dev: &Device,
    logits: &[f32],
    tokens: usize,
    experts: usize,
    k: usize,
    bf: bool,
    seed: u64,
) {
    let used: Vec<f32> = if bf {
        logits.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
    } else {
        logits.to_vec()
    };
    let want = top_k_gating(&used, tokens, experts, k).expect("reference");
    let (got, scores, _) = gpu_routing(dev, logits, tokens, experts, k, 1, bf);
    let ctx = format!("tokens {tokens} experts {experts} k {k} bf16 {bf} seed {seed}");
    assert_eq!(got.topk_ids, want.topk_ids, "ids: {ctx}");
    assert_eq!(got.counts, want.counts, "counts: {ctx}");
    assert_eq!(got.offsets, want.offsets, "offsets: {ctx}");
    assert_eq!(got.sorted_slots, want.sorted_slots, "sorted_slots: {ctx}");
    assert_eq!(got.inverse, want.inverse, "inverse: {ctx}");
    for (s, &g) in scores.iter().enumerate() {
        // 1e-6: expf within 2 ulp of exp; scores are in (0, 1].
        assert!(
            (g - want.score(s)).abs() <= 1e-6,
            "score {s}: {g} vs {}: {ctx}",
            want.score(s)
        );
    }
}

#[test]
fn matches_reference_on_random_logits() {
    let Some(dev) = device_for_test("matches_reference_on_random_logits") else {
        return;
    };
    let (mut rng, seed) = Rng::fresh();
    for tokens in [1usize, 7, 8192, 16384] {
        for experts in [16usize, 128, 256] {
            for k in [1usize, 2, 8] {
                let logits: Vec<f32> = (0..tokens * experts)
                    .map(|_| rng.signed(0.05, 4.0))
                    .collect();
                check(&dev, &logits, tokens, experts, k, false, seed);
                if tokens <= 8192 {
                    check(&dev, &logits, tokens, experts, k, true, seed);
                }
            }
        }
    }
}

#[test]
fn all_tokens_to_one_expert_and_empty_experts() {
    let Some(dev) = device_for_test("all_tokens_to_one_expert_and_empty_experts") else {
        return;
    };
    let (mut rng, seed) = Rng::fresh();
    for (tokens, experts) in [(7usize, 16usize), (8192, 128), (16384, 256)] {
        let mut logits: Vec<f32> = (0..tokens * experts)
            .map(|_| rng.signed(0.05, 4.0))
            .collect();
        for t in 0..tokens {
            logits[t * experts + experts / 3] = 1e4; // one huge column: k = 1 sends everything there
        }
        check(&dev, &logits, tokens, experts, 1, false, seed);
        // Bf16 ties: quantised logits collide often, exercising ties-to-lower-index.
        check(&dev, &logits, tokens, experts, 8, true, seed);
        // Only the first 4 experts can win: the rest are empty.
        let mut few = logits.clone();
        for (i, v) in few.iter_mut().enumerate() {
            if i % experts >= 4 {
                *v = -100.0 - v.abs();
            }
        }
        check(&dev, &few, tokens, experts, 2, false, seed);
    }
}

#[test]
fn padded_offsets_hold_each_expert_group() {
    let Some(dev) = device_for_test("padded_offsets_hold_each_expert_group") else {
        return;
    };
    let (mut rng, seed) = Rng::fresh();
    let (tokens, experts, k, pad) = (1000usize, 128usize, 2usize, 64usize);
    let logits: Vec<f32> = (0..tokens * experts)
        .map(|_| rng.signed(0.05, 4.0))
        .collect();
    let want = top_k_gating(&logits, tokens, experts, k).expect("reference");
    let (got, _, sorted) = gpu_routing(&dev, &logits, tokens, experts, k, pad, false);
    assert_eq!(got.counts, want.counts, "seed {seed}");
    assert_eq!(got.topk_ids, want.topk_ids, "seed {seed}");
    for e in 0..experts {
        let (lo, c) = (got.offsets[e] as usize, want.counts[e] as usize);
        assert_eq!(lo % pad, 0, "offset of expert {e} not padded, seed {seed}");
        assert_eq!(
            got.offsets[e + 1] as usize,
            lo + c.div_ceil(pad) * pad,
            "seed {seed}"
        );
        let (wlo, whi) = (want.offsets[e] as usize, want.offsets[e + 1] as usize);
        assert_eq!(
            sorted[lo..lo + c],
            want.sorted_slots[wlo..whi],
            "expert {e}, seed {seed}"
        );
        assert!(sorted[lo + c..got.offsets[e + 1] as usize]
            .iter()
            .all(|&x| x == u32::MAX));
        for (p, &s) in sorted[lo..lo + c].iter().enumerate() {
            assert_eq!(
                got.inverse[s as usize] as usize,
                lo + p,
                "inverse, seed {seed}"
            );
        }
    }
}

/// The two-level scan's edges: a last 32-expert group that is partly empty (40, 200 experts), more
/// tiles than one batch per segment (100003 tokens: 1563 tiles, 49 per segment), and zero tokens
/// (counts and offsets all zero, the block counter zeroed by a memset rather than the top-k kernel).
#[test]
fn ragged_expert_groups_long_segments_and_zero_tokens() {
    let Some(dev) = device_for_test("ragged_expert_groups_long_segments_and_zero_tokens") else {
        return;
    };
    let (mut rng, seed) = Rng::fresh();
    for (tokens, experts, k) in [(300usize, 40usize, 2usize), (65, 200, 8), (100_003, 16, 2)] {
        let logits: Vec<f32> = (0..tokens * experts)
            .map(|_| rng.signed(0.05, 4.0))
            .collect();
        check(&dev, &logits, tokens, experts, k, false, seed);
    }
    // Twice on the same buffers, as in gpu_routing.
    let s = dev.stream();
    let mut out = MoeGateBuffers::new(s, 0, 40, 2, 16).expect("alloc");
    let one = dev.upload(&[1.0f32]).expect("upload");
    for _ in 0..2 {
        out.counts = dev.upload(&[POISON; 40]).expect("poison");
        out.offsets = dev.upload(&[POISON; 41]).expect("poison");
        moe_gate(s, &one.slice(0..0), &mut out).expect("moe_gate with zero tokens");
        assert_eq!(dev.download(&out.counts).expect("download"), vec![0; 40]);
        assert_eq!(dev.download(&out.offsets).expect("download"), vec![0; 41]);
    }
}

/// CPU mirror of moe_gate_scan_kernel's index math (runs without a GPU): per 32-expert block, 32
/// warps own contiguous segments of ceil(tiles / 32) tiles (clamped), the segment bases come from an
/// exclusive scan over segments, and each segment is rewritten from its base. The result must equal
/// the serial per-expert exclusive scan over tiles, for tile counts around the segment edges.
#[test]
fn scan_segments_mirror_equals_serial_scan() {
    let (mut rng, seed) = Rng::fresh();
    for tiles in [0usize, 1, 5, 31, 32, 33, 64, 255, 256, 257, 1563] {
        for experts in [1usize, 16, 40] {
            let hist: Vec<u32> = (0..tiles * experts).map(|_| rng.below(65) as u32).collect();
            // Serial: what the one-block kernel did.
            let mut want = hist.clone();
            let mut want_counts = vec![0u32; experts];
            for e in 0..experts {
                for t in 0..tiles {
                    let x = want[t * experts + e];
                    want[t * experts + e] = want_counts[e];
                    want_counts[e] += x;
                }
            }
            // The kernel's way.
            let mut got = hist.clone();
            let mut counts = vec![u32::MAX; experts];
            let per = tiles.div_ceil(32);
            let seg = |w: usize| {
                let t0 = (w * per).min(tiles);
                (t0, (t0 + per).min(tiles))
            };
            for e in 0..experts {
                let sums: Vec<u32> = (0..32)
                    .map(|w| {
                        let (t0, t1) = seg(w);
                        (t0..t1).map(|t| hist[t * experts + e]).sum()
                    })
                    .collect();
                let mut base = 0u32;
                for (w, &s) in sums.iter().enumerate() {
                    let (t0, t1) = seg(w);
                    let mut c = base;
                    for t in t0..t1 {
                        let x = got[t * experts + e];
                        got[t * experts + e] = c;
                        c += x;
                    }
                    base += s;
                }
                counts[e] = base;
            }
            let ctx = format!("tiles {tiles} experts {experts} seed {seed}");
            assert_eq!(got, want, "{ctx}");
            assert_eq!(counts, want_counts, "{ctx}");
            // The segments cover every tile exactly once, in order.
            let covered: Vec<usize> = (0..32).flat_map(|w| seg(w).0..seg(w).1).collect();
            assert_eq!(covered, (0..tiles).collect::<Vec<_>>(), "{ctx}");
        }
    }
}
