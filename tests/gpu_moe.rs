//! The GPU MoE block (`ops::moe::moe_block`: router GEMM, moe_gate, grouped gate_up with the score
//! and SwiGLU fused, grouped down, shared expert, combine) against the CPU reference
//! `reference::moe::moe_block` (which composes top_k_gating, grouped_gemm_swiglu,
//! grouped_gemm_sorted and combine), on random inputs fresh per case (seed printed on failure):
//! every token to one expert, empty experts, E = 128 with one token, 8192 tokens, E = 16 / 128,
//! top-k 1 and 2, bf16 / int4 / fp8 experts, decode and prefill plans (fp8 prefill: `fp8_prefill`).
//! Expert parallelism (`expert_ranges`): blocks holding experts e0..e1 only, against the reference
//! partial block, their sum against the full block, the default range bit for bit the full block.
//! Plus typed host errors.
//! Without a GPU (or without kernels) every test prints one "skipped" line and passes.
//!
//! Routing: the GPU computes the router logits in bf16 (as the Hugging Face model does), the
//! reference in f32, so a token whose top-k is a near tie may route differently. The test reads the
//! GPU's routing back, requires it to be the top-k of the bf16-rounded reference logits (all but
//! tokens / 500 + 2 tokens) and excludes tokens whose f32 routing differs from the value check. The
//! forced routings use a router whose allowed experts lead the others by ~8: every chosen expert
//! must be an allowed one.

mod common;

use std::sync::Arc;

use common::{vary_rows, Rng};
use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use llama4_cuda::error::Error;
use llama4_cuda::ops::gemm::{GpuBf16Weight, GpuLinear};
use llama4_cuda::ops::moe::{moe_block, GpuExpert, GpuMoe, MoePath, MoeScratch};
use llama4_cuda::quant::repack::{repack_int4, unpack_int4, Act16};
use llama4_cuda::quant::{
    DenseWeight, Fp8Scaling, Fp8Weight, Int4Config, Int4Weight, ScaleDType, Weight,
};
use llama4_cuda::reference::gemm::gemm;
use llama4_cuda::reference::moe::{
    moe_block as ref_moe_block, moe_block_range as ref_moe_block_range, top_k_gating, SwiGlu,
};

/// Metric max|out - ref| / max|ref| over the checked tokens. The GPU rounds to bf16 where the f32
/// reference does not: the logits, the SwiGLU intermediate h (2^-9 relative), the expert outputs,
/// the shared expert's gate/up/h/out, the final sum; weights and x are the same values on both sides
/// (bf16-rounded dense weights, int4 as the kernel dequantizes it, exact fp8). Five stacked bf16
/// roundings are <= 1e-2 in the worst case; 2e-2 is still far below the O(1) error of a wrong
/// expert, row or score.
const TOL: f32 = 2e-2;

const POISON: bf16 = bf16::from_bits(0x7fc0); // NaN

#[derive(Clone, Copy, Debug)]
enum Fmt {
    Bf16,
    Int4,
    Fp8,
}

fn gpu(test: &str) -> Option<Arc<CudaStream>> {
    llama4_cuda::device::device_for_test(test).map(|d| d.stream().clone())
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

/// A random `[n, k]` weight in `fmt`, holding exactly the values the kernels compute with.
fn weight(rng: &mut Rng, n: usize, k: usize, fmt: Fmt) -> Weight {
    let mut w = rng.vec(n * k, 2.0 / (k as f32).sqrt());
    vary_rows(&mut w, k); // a per-channel / group scale of the wrong row must show

    match fmt {
        Fmt::Bf16 => Weight::Dense(DenseWeight {
            n,
            k,
            data: round_bf16(&w),
        }),
        Fmt::Int4 => {
            let cfg = Int4Config {
                group_size: 64,
                symmetric: true,
                scale_dtype: ScaleDType::BF16,
            };
            let q = Int4Weight::quantize(&w, n, k, cfg).expect("quantize");
            // The kernel's weight: the repack round trip (bf16 scales, exact).
            Weight::Int4(
                unpack_int4(&repack_int4(&q, Act16::BF16).expect("repack")).expect("unpack"),
            )
        }
        Fmt::Fp8 => {
            Weight::Fp8(Fp8Weight::quantize(&w, n, k, Fp8Scaling::PerChannel).expect("fp8"))
        }
    }
}

/// A router `[experts, hidden]` and `experts` bf16 SwiGLU experts for the host-validation tests.
fn bf16_block(
    rng: &mut Rng,
    experts: usize,
    hidden: usize,
    inter: usize,
) -> (DenseWeight, Vec<SwiGlu>) {
    let router = DenseWeight {
        n: experts,
        k: hidden,
        data: rng.vec(experts * hidden, 0.1),
    };
    let mlps = (0..experts)
        .map(|_| mlp(rng, hidden, inter, Fmt::Bf16))
        .collect();
    (router, mlps)
}

fn mlp(rng: &mut Rng, hidden: usize, inter: usize, fmt: Fmt) -> SwiGlu {
    SwiGlu {
        gate: weight(rng, inter, hidden, fmt),
        up: weight(rng, inter, hidden, fmt),
        down: weight(rng, hidden, inter, fmt),
    }
}

/// One block case. `allowed`: experts the router may pick (None: all, with a random router).
#[allow(clippy::too_many_arguments)]
fn case(
    stream: &Arc<CudaStream>,
    fmt: Fmt,
    tokens: usize,
    experts: usize,
    top_k: usize,
    hidden: usize,
    inter: usize,
    allowed: Option<&[usize]>,
) -> Option<MoePath> {
    let s = seed();
    let mut rng = Rng(s);
    let what = format!("{fmt:?} tokens={tokens} E={experts} k={top_k} hidden={hidden} inter={inter} allowed={allowed:?} seed={s}");
    let mut x = round_bf16(&rng.vec(tokens * hidden, 1.0));
    let mut router = round_bf16(&rng.vec(experts * hidden, 1.0 / (hidden as f32).sqrt()));
    if let Some(a) = allowed {
        // Feature 0 is 1 for every token; allowed experts read it with +4, the others with -4.
        for t in 0..tokens {
            x[t * hidden] = 1.0;
        }
        for e in 0..experts {
            for j in 0..hidden {
                // Rounded again: the GPU's router is bf16, and the routing check below needs the
                // reference's logits to be the GPU's before their bf16 rounding.
                router[e * hidden + j] = bf16::from_f32(router[e * hidden + j] * 0.05).to_f32();
            }
            router[e * hidden] = if a.contains(&e) { 4.0 } else { -4.0 };
        }
    }
    let router = DenseWeight {
        n: experts,
        k: hidden,
        data: router,
    };
    let mlps: Vec<SwiGlu> = (0..experts)
        .map(|_| mlp(&mut rng, hidden, inter, fmt))
        .collect();
    // An fp8 shared expert runs W8A8 (per-token activation quantization) on sm_90 above 32 tokens,
    // which the f32 reference block does not model: there it is bf16 (its fp8 GEMMs are checked
    // against reference::gemm_w8a8 in tests/gpu_gemm.rs).
    let shared_fmt = match fmt {
        Fmt::Fp8 if tokens > 32 => Fmt::Bf16,
        f => f,
    };
    let shared = mlp(&mut rng, hidden, inter + 32, shared_fmt);

    let moe = GpuMoe::upload(stream, &router, &mlps, &shared).expect(&what);
    let gx = stream
        .clone_htod(&x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>())
        .expect("x");
    let mut out: CudaSlice<bf16> = stream
        .clone_htod(&vec![POISON; tokens * hidden])
        .expect("out");
    let mut scratch = MoeScratch::new();
    match moe_block(stream, &gx, tokens, &moe, top_k, &mut out, &mut scratch) {
        Err(Error::KernelsNotBuilt(why)) => {
            println!("skipped: kernels not built ({why})");
            return None;
        }
        r => r.expect(&what),
    }
    stream.synchronize().expect(&what);
    let plan = *scratch.last_plan().expect("plan");
    let what = format!("{what} [{plan}]");
    let got: Vec<f32> = stream
        .clone_dtoh(&out)
        .expect("download")
        .iter()
        .map(|v| v.to_f32())
        .collect();
    assert_eq!(
        got.iter().filter(|v| v.is_nan()).count(),
        0,
        "{what}: outputs not written (NaN)"
    );

    // Routing agreement. Rounding the logits to bf16 is monotonic, so it never swaps two experts but
    // it turns near ties into exact ties (won by the lower index): with random routers that changes
    // the top-k of ~0.5% (E = 16) to ~2.3% (E = 128, k = 2) of the tokens against the f32 reference,
    // too many for a fixed rate, and in the forced routings (allowed experts all near +4, where a bf16
    // step is 2^-6) far more. So the GPU's routing must equal the exact top-k of the bf16-rounded
    // reference logits; only an f32 summation-order difference at a bf16 rounding boundary may change
    // one (rare: ~2 expected in the 5000-token forced case), hence tokens / 500 + 2. Tokens whose f32
    // routing differs are left out of the value check below.
    let logits = gemm(&x, tokens, &Weight::Dense(router.clone())).expect("logits");
    let want_route = top_k_gating(&logits, tokens, experts, top_k).expect("gating");
    let bf16_route =
        top_k_gating(&round_bf16(&logits), tokens, experts, top_k).expect("gating (bf16)");
    let gpu_ids = stream
        .clone_dtoh(&scratch.routing().expect("routing").topk_ids)
        .expect("ids");
    let ids_of = |ids: &[u32], t: usize| ids[t * top_k..(t + 1) * top_k].to_vec();
    let differs: Vec<bool> = (0..tokens)
        .map(|t| ids_of(&gpu_ids, t) != ids_of(&want_route.topk_ids, t))
        .collect();
    let n_wrong = (0..tokens)
        .filter(|&t| ids_of(&gpu_ids, t) != ids_of(&bf16_route.topk_ids, t))
        .count();
    let limit = tokens / 500 + 2;
    assert!(
        n_wrong <= limit,
        "{what}: {n_wrong} tokens routed unlike the top-k of the bf16 logits"
    );
    if let Some(a) = allowed {
        assert!(
            gpu_ids[..tokens * top_k]
                .iter()
                .all(|e| a.contains(&(*e as usize))),
            "{what}"
        );
    }

    let want = ref_moe_block(
        &x,
        tokens,
        &Weight::Dense(router),
        &mlps,
        Some(&shared),
        top_k,
    )
    .expect("reference");
    let (mut err, mut mag) = (0f32, 0f32);
    for t in (0..tokens).filter(|&t| !differs[t]) {
        for j in 0..hidden {
            let (g, w) = (got[t * hidden + j], want[t * hidden + j]);
            err = err.max((g - w).abs());
            mag = mag.max(w.abs());
        }
    }
    let rel = err / mag.max(f32::MIN_POSITIVE);
    assert!(
        rel <= TOL,
        "{what}: max|out-ref|/max|ref| = {rel:.3e} > {TOL:e}"
    );
    Some(plan.path)
}

const FMTS: [Fmt; 3] = [Fmt::Bf16, Fmt::Int4, Fmt::Fp8];

#[test]
fn decode_random_routings() {
    let Some(s) = gpu("decode_random_routings") else {
        return;
    };
    for fmt in FMTS {
        for (tokens, experts, k) in [(1, 16, 1), (3, 16, 2), (8, 16, 1), (17, 16, 2), (40, 16, 1)] {
            let Some(path) = case(&s, fmt, tokens, experts, k, 256, 128, None) else {
                return;
            };
            assert!(matches!(path, MoePath::Decode { .. }), "{fmt:?} {tokens}");
        }
    }
}

#[test]
fn one_token_of_128_experts() {
    let Some(s) = gpu("one_token_of_128_experts") else {
        return;
    };
    for fmt in FMTS {
        for k in [1, 2] {
            if case(&s, fmt, 1, 128, k, 128, 64, None).is_none() {
                return;
            }
        }
    }
}

#[test]
fn every_token_to_one_expert() {
    let Some(s) = gpu("every_token_to_one_expert") else {
        return;
    };
    for fmt in FMTS {
        // 7 tokens, and 300 on one expert (the decode loop makes 10 passes over its rows).
        for tokens in [7, 300] {
            if case(&s, fmt, tokens, 16, 1, 128, 64, Some(&[3])).is_none() {
                return;
            }
        }
    }
}

#[test]
fn empty_experts() {
    let Some(s) = gpu("empty_experts") else {
        return;
    };
    for fmt in FMTS {
        for tokens in [5, 700] {
            if case(&s, fmt, tokens, 16, 2, 128, 64, Some(&[1, 5, 9])).is_none() {
                return;
            }
        }
        if case(&s, fmt, 1000, 128, 1, 128, 64, Some(&[0, 64, 127])).is_none() {
            return;
        }
    }
}

#[test]
fn prefill_random_routings() {
    let Some(s) = gpu("prefill_random_routings") else {
        return;
    };
    for fmt in FMTS {
        for (tokens, experts, k) in [(1000, 16, 1), (777, 16, 2), (5000, 128, 1)] {
            let Some(path) = case(&s, fmt, tokens, experts, k, 256, 144, None) else {
                return;
            };
            assert!(!matches!(path, MoePath::Decode { .. }), "{fmt:?} {tokens}");
        }
    }
}

/// fp8 experts on the prefill path (W8A16: codes widened to bf16 in registers, per-channel scales on
/// the f32 accumulator with the score, each weight's own under SwiGLU): every token to one expert,
/// empty experts (3 of 16 with k = 2, 3 of 128), odd inter (a partial 64-column gate_up block and a
/// partial last 64-k slab of the down projection), 8192 tokens over 128 experts. Every case must plan
/// the prefill. Tolerance: TOL as for every format; the fp8 codes and scales are the same values on
/// both sides (the reference multiplies code * scale in f32 before the dot product, the kernel after:
/// an f32 rounding apart, far below the bf16 roundings TOL budgets).
#[test]
fn fp8_prefill() {
    let Some(s) = gpu("fp8_prefill") else { return };
    // (tokens, experts, top_k, hidden, inter, allowed experts)
    type Case = (usize, usize, usize, usize, usize, Option<&'static [usize]>);
    let cases: [Case; 5] = [
        (600, 16, 1, 128, 64, Some(&[3])),
        (700, 16, 2, 256, 144, Some(&[1, 5, 9])),
        (5000, 128, 1, 128, 80, Some(&[0, 64, 127])),
        (1000, 16, 2, 384, 208, None),
        (8192, 128, 2, 128, 64, None),
    ];
    for (tokens, experts, k, hidden, inter, allowed) in cases {
        let Some(path) = case(&s, Fmt::Fp8, tokens, experts, k, hidden, inter, allowed) else {
            return;
        };
        assert!(
            !matches!(path, MoePath::Decode { .. }),
            "fp8 {tokens} E={experts}: {path:?}"
        );
    }
}

/// Runs `moe` on `x` (bf16 values) and returns the output (poisoned before) and the GPU's top-k ids.
fn run_block(
    stream: &Arc<CudaStream>,
    moe: &GpuMoe,
    x: &[f32],
    tokens: usize,
    top_k: usize,
    what: &str,
) -> Option<(Vec<f32>, Vec<u32>, MoePath)> {
    let hidden = moe.hidden();
    let gx = stream
        .clone_htod(&x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>())
        .expect("x");
    let mut out = stream
        .clone_htod(&vec![POISON; tokens * hidden])
        .expect("out");
    let mut scratch = MoeScratch::new();
    match moe_block(stream, &gx, tokens, moe, top_k, &mut out, &mut scratch) {
        Err(Error::KernelsNotBuilt(why)) => {
            println!("skipped: kernels not built ({why})");
            return None;
        }
        r => r.expect(what),
    }
    stream.synchronize().expect(what);
    let got: Vec<f32> = stream
        .clone_dtoh(&out)
        .expect("download")
        .iter()
        .map(|v| v.to_f32())
        .collect();
    assert!(
        !got.iter().any(|v| v.is_nan()),
        "{what}: outputs not written"
    );
    let ids = stream
        .clone_dtoh(&scratch.routing().expect("routing").topk_ids)
        .expect("ids");
    Some((got, ids, scratch.last_plan().expect("plan").path))
}

/// max|got - want| / max|want| over the tokens not excluded.
fn rel_over(got: &[f32], want: &[f32], hidden: usize, skip: &[bool]) -> f32 {
    let (mut err, mut mag) = (0f32, 0f32);
    for (t, _) in skip.iter().enumerate().filter(|(_, &s)| !s) {
        for j in t * hidden..(t + 1) * hidden {
            err = err.max((got[j] - want[j]).abs());
            mag = mag.max(want[j].abs());
        }
    }
    err / mag.max(f32::MIN_POSITIVE)
}

/// Expert parallelism, kernel side (docs/MULTI-GPU.md): E = 16 and 128 split into 2 and 4 ranges,
/// decode (with split-K on the down projection) and prefill plans, bf16 / int4 / fp8 experts. Each
/// range's block (its experts only, the shared expert on range 0 only) against
/// reference::moe::moe_block_range (TOL, tokens routed unlike the f32 reference left out as in
/// `case`); the sum of the ranges' outputs against the full GPU block: the same routing and the same
/// expert rows, only the combine rounds each partial to bf16 (<= 4 + 1 roundings of 2^-9 relative to
/// the largest value: 1e-2); the default range (upload_range over 0..E) equals upload bit for bit.
#[test]
fn expert_ranges() {
    let Some(s) = gpu("expert_ranges") else {
        return;
    };
    for fmt in FMTS {
        for (tokens, experts, k) in [
            (3, 16, 2),
            (40, 16, 1),
            (900, 16, 2),
            (1, 128, 2),
            (3000, 128, 1),
        ] {
            let seed = seed();
            let mut rng = Rng(seed);
            let (hidden, inter) = (256, 144);
            let what = format!("{fmt:?} tokens={tokens} E={experts} k={k} seed={seed}");
            let x = round_bf16(&rng.vec(tokens * hidden, 1.0));
            let router = DenseWeight {
                n: experts,
                k: hidden,
                data: round_bf16(&rng.vec(experts * hidden, 1.0 / (hidden as f32).sqrt())),
            };
            let mlps: Vec<SwiGlu> = (0..experts)
                .map(|_| mlp(&mut rng, hidden, inter, fmt))
                .collect();
            // fp8 shared expert above 32 tokens is W8A8 on sm_90 (see `case`): bf16 there.
            let shared_fmt = match fmt {
                Fmt::Fp8 if tokens > 32 => Fmt::Bf16,
                f => f,
            };
            let shared = mlp(&mut rng, hidden, inter + 32, shared_fmt);
            let full_moe = GpuMoe::upload(&s, &router, &mlps, &shared).expect(&what);
            let Some((full, ids, path)) = run_block(&s, &full_moe, &x, tokens, k, &what) else {
                return;
            };
            let default =
                GpuMoe::upload_range(&s, &router, &mlps, Some(&shared), 0..experts).expect(&what);
            assert_eq!(default.expert_range(), 0..experts);
            let (same, ..) = run_block(&s, &default, &x, tokens, k, &what).expect("ran above");
            assert!(
                same.iter()
                    .zip(&full)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{what}: the default range differs from the full block"
            );
            let logits = gemm(&x, tokens, &Weight::Dense(router.clone())).expect("logits");
            let want_route = top_k_gating(&logits, tokens, experts, k).expect("gating");
            let skip: Vec<bool> = (0..tokens)
                .map(|t| ids[t * k..(t + 1) * k] != want_route.topk_ids[t * k..(t + 1) * k])
                .collect();
            assert!(
                skip.iter().filter(|&&d| d).count() <= tokens / 20 + 2,
                "{what}: routing"
            );
            let rw = Weight::Dense(router.clone());
            for pieces in [2, 4] {
                let mut sum = vec![0f32; tokens * hidden];
                for i in 0..pieces {
                    let r = experts * i / pieces..experts * (i + 1) / pieces;
                    let sh = (i == 0).then_some(&shared);
                    let what = format!("{what} range {r:?} of {pieces}");
                    let moe = GpuMoe::upload_range(&s, &router, &mlps[r.clone()], sh, r.clone())
                        .expect(&what);
                    assert_eq!(moe.adds_shared(), i == 0);
                    let (got, rids, rpath) =
                        run_block(&s, &moe, &x, tokens, k, &what).expect("ran");
                    assert_eq!(rids, ids, "{what}: the routing is global");
                    assert_eq!(rpath, path, "{what}");
                    let want = ref_moe_block_range(&x, tokens, &rw, &mlps, sh, k, r).expect("ref");
                    let rel = rel_over(&got, &want, hidden, &skip);
                    assert!(rel <= TOL, "{what}: partial vs reference {rel:.3e}");
                    for (a, v) in sum.iter_mut().zip(&got) {
                        *a += v;
                    }
                }
                let rel = rel_over(&sum, &full, hidden, &vec![false; tokens]);
                assert!(
                    rel <= 1e-2,
                    "{what}: sum of {pieces} ranges vs full {rel:.3e}"
                );
            }
            if experts == 128 && tokens == 3000 {
                assert!(!matches!(path, MoePath::Decode { .. }), "{what}: {path:?}");
            }
        }
    }
}

/// Typed host errors of the expert range (no launch needed).
#[test]
fn expert_range_errors() {
    let Some(s) = gpu("expert_range_errors") else {
        return;
    };
    let mut rng = Rng(seed());
    let (hidden, inter) = (64, 32);
    let (router, mlps) = bf16_block(&mut rng, 8, hidden, inter);
    // Empty range, past E, experts / range length mismatch.
    for (r, n, shape) in [(3..3, 0, false), (6..9, 3, false), (2..5, 2, true)] {
        let e = GpuMoe::upload_range(&s, &router, &mlps[..n], None, r.clone()).err();
        let ok = match e {
            Some(Error::Shape { .. }) => shape,
            Some(Error::InvalidArgument { ref msg, .. }) => !shape && msg.contains("range"),
            _ => false,
        };
        assert!(ok, "{r:?} with {n} experts: {e:?}");
    }
    let moe = GpuMoe::upload_range(&s, &router, &mlps[2..6], None, 2..6).expect("moe");
    assert_eq!(
        (moe.experts(), moe.expert_range(), moe.adds_shared()),
        (8, 2..6, false)
    );
}

#[test]
fn tokens_8192() {
    let Some(s) = gpu("tokens_8192") else { return };
    for fmt in FMTS {
        for k in [1, 2] {
            if case(&s, fmt, 8192, 16, k, 128, 64, None).is_none() {
                return;
            }
        }
    }
}

/// Host validation: typed errors naming the problem, before any launch.
#[test]
fn rejects_bad_arguments() {
    let Some(s) = gpu("moe rejects_bad_arguments") else {
        return;
    };
    let mut rng = Rng(seed());
    let (hidden, inter, experts) = (64, 32, 4);
    let (router, mlps) = bf16_block(&mut rng, experts, hidden, inter);
    let shared = mlp(&mut rng, hidden, inter, Fmt::Bf16);
    // Router rows must equal the expert count.
    let bad = GpuMoe::upload(&s, &router, &mlps[..3], &shared);
    assert!(matches!(bad, Err(Error::Shape { .. })), "{:?}", bad.err());
    // Routed experts in mixed formats.
    let mut mixed = mlps.clone();
    mixed[2] = mlp(&mut rng, hidden, inter, Fmt::Fp8);
    let bad = GpuMoe::upload(&s, &router, &mixed, &shared);
    assert!(
        matches!(bad, Err(Error::InvalidArgument { .. })),
        "{:?}",
        bad.err()
    );
    // An expert with the wrong shape.
    let mut wrong = mlps.clone();
    wrong[1] = mlp(&mut rng, hidden, inter + 16, Fmt::Bf16);
    assert!(GpuMoe::upload(&s, &router, &wrong, &shared).is_err());
    // hidden not a multiple of 16.
    let r2 = DenseWeight {
        n: experts,
        k: 40,
        data: rng.vec(experts * 40, 0.1),
    };
    let m2: Vec<SwiGlu> = (0..experts)
        .map(|_| mlp(&mut rng, 40, inter, Fmt::Bf16))
        .collect();
    let sh2 = mlp(&mut rng, 40, inter, Fmt::Bf16);
    assert!(matches!(
        GpuMoe::upload(&s, &r2, &m2, &sh2),
        Err(Error::InvalidArgument { .. })
    ));
    // Assembling from device weights checks the router too.
    let gr = GpuBf16Weight::upload(
        &s,
        &DenseWeight {
            n: 3,
            k: hidden,
            data: rng.vec(3 * hidden, 0.1),
        },
    )
    .expect("router");
    let xs: Vec<GpuExpert> = mlps
        .iter()
        .map(|m| GpuExpert::upload(&s, m).expect("expert"))
        .collect();
    let sh = GpuExpert::upload(&s, &shared).expect("shared");
    assert!(matches!(
        GpuMoe::new(&s, gr, xs, sh),
        Err(Error::Shape { .. })
    ));

    let moe = GpuMoe::upload(&s, &router, &mlps, &shared).expect("moe");
    let x = s.alloc_zeros::<bf16>(4 * hidden).expect("x");
    let mut out = s.alloc_zeros::<bf16>(4 * hidden).expect("out");
    let mut sc = MoeScratch::new();
    for k in [0, 5] {
        let r = moe_block(&s, &x, 4, &moe, k, &mut out, &mut sc);
        assert!(
            matches!(r, Err(Error::InvalidArgument { .. })),
            "k={k}: {r:?}"
        );
    }
    let r = moe_block(&s, &x, 5, &moe, 1, &mut out, &mut sc);
    assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
    // GpuLinear reports its shape.
    let l = GpuLinear::upload(&s, &weight(&mut rng, 48, 64, Fmt::Int4)).expect("linear");
    assert_eq!((l.n(), l.k()), (48, 64));
}

/// CPU mirror of the decode loop's permuted-k fragment map for bf16 weights
/// (`DecodeW<kBf16>::frag` and the B selection in `grouped_decode`): lane (g, c) holds 16 consecutive
/// k of rows g and g + 8 as words w0..w7 (pairs), step j feeds a[0] = w_{2j}, a[2] = w_{2j+1} and
/// b0 / b1 from the X words at 16c + 8(j >> 1) picked by j & 1. Simulating mma.m16n8k16 with the
/// PTX fragment layout over the 4 steps of a 64-k slab must give the plain product W · Xᵀ.
#[test]
fn bf16_decode_fragment_map_is_a_permutation_of_k() {
    let mut rng = Rng(seed());
    let w: Vec<f32> = rng.vec(16 * 64, 1.0); // [16 rows][64 k]
    let x: Vec<f32> = rng.vec(8 * 64, 1.0); // [8 tokens][64 k]
    let mut d = [[0f64; 8]; 16];
    for j in 0..4 {
        // Assemble A[16][16] and B[16][8] of step j from all lanes, then D += A · B.
        let mut a = [[0f32; 16]; 16];
        let mut b = [[0f32; 8]; 16];
        for lane in 0..32 {
            let (g, c) = (lane / 4, lane % 4);
            let wk =
                |r: usize, i: usize| (w[r * 64 + 16 * c + 2 * i], w[r * 64 + 16 * c + 2 * i + 1]);
            let sel = |base: usize| if j & 1 == 1 { base + 2 } else { base };
            let h = 4 * (j >> 1);
            let set = |m: &mut [[f32; 16]; 16], r: usize, s: usize, p: (f32, f32)| {
                m[r][s] = p.0;
                m[r][s + 1] = p.1;
            };
            set(&mut a, g, 2 * c, wk(g, h + sel(0)));
            set(&mut a, g + 8, 2 * c, wk(g + 8, h + sel(0)));
            set(&mut a, g, 2 * c + 8, wk(g, h + sel(1)));
            set(&mut a, g + 8, 2 * c + 8, wk(g + 8, h + sel(1)));
            let xk = |comp: usize| {
                let k = 16 * c + 8 * (j >> 1) + 2 * comp;
                (x[g * 64 + k], x[g * 64 + k + 1])
            };
            let (p0, p1) = (xk(sel(0)), xk(sel(1)));
            b[2 * c][g] = p0.0;
            b[2 * c + 1][g] = p0.1;
            b[2 * c + 8][g] = p1.0;
            b[2 * c + 9][g] = p1.1;
        }
        for (r, dr) in d.iter_mut().enumerate() {
            for (t, dv) in dr.iter_mut().enumerate() {
                *dv += (0..16)
                    .map(|s| a[r][s] as f64 * b[s][t] as f64)
                    .sum::<f64>();
            }
        }
    }
    for r in 0..16 {
        for t in 0..8 {
            let want: f64 = (0..64)
                .map(|k| w[r * 64 + k] as f64 * x[t * 64 + k] as f64)
                .sum();
            assert!(
                (d[r][t] - want).abs() < 1e-9,
                "row {r} token {t}: {} vs {want}",
                d[r][t]
            );
        }
    }
}

/// CPU mirror of the prefill's expert lookup (`grouped_prefill`): the largest e with
/// offsets[e] <= p0 is the non-empty group holding p0, empty experts included.
#[test]
fn prefill_tile_expert_lookup() {
    // The kernel's lookup over the local experts [e0, e1): tiles outside the local rows exit (None).
    let find = |offsets: &[u32], p0: u32, e0: usize, e1: usize| {
        if p0 >= offsets[e1] || p0 < offsets[e0] {
            return None;
        }
        let (mut lo, mut hi) = (e0, e1 - 1);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if offsets[mid] <= p0 {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Some(lo)
    };
    let mut rng = Rng(seed());
    for _ in 0..200 {
        let experts = 1 + rng.below(40);
        let counts: Vec<u32> = (0..experts)
            .map(|_| {
                if rng.below(3) == 0 {
                    0
                } else {
                    rng.below(300) as u32
                }
            })
            .collect();
        let mut offsets = vec![0u32];
        for c in &counts {
            offsets.push(offsets.last().unwrap() + c.div_ceil(128) * 128);
        }
        let e0 = rng.below(experts);
        let e1 = e0 + 1 + rng.below(experts - e0);
        // The full range (the default) and a random local one; each tile runs on exactly the range
        // whose experts hold it.
        for (b, e) in [(0, experts), (e0, e1)] {
            let mut p0 = 0;
            while p0 < *offsets.last().unwrap() + 256 {
                let owner = (0..experts).find(|&x| offsets[x] <= p0 && p0 < offsets[x + 1]);
                let want = owner.filter(|&x| b <= x && x < e);
                assert_eq!(
                    find(&offsets, p0, b, e),
                    want,
                    "{counts:?} p0={p0} {b}..{e}"
                );
                if let Some(x) = want {
                    assert!(counts[x] > 0, "{counts:?} p0={p0}");
                }
                p0 += 128;
            }
        }
    }
}
