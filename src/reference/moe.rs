//! MoE: top-k gating, routing permutation, grouped expert GEMM, combine, and the Llama 4 MoE block.
//!
//! The pipeline the kernels mirror: router logits -> [`top_k_gating`] (expert-sorted permutation) ->
//! [`grouped_gemm_swiglu`] (gate_up, rows gathered through the permutation, scaled by the score) ->
//! [`grouped_gemm_sorted`] (down, rows already in sorted order) -> [`combine`] (scatter-add back).
use std::borrow::Borrow;
use std::ops::Range;

use crate::error::{check_len, Error, Result};
use crate::quant::Weight;
use crate::reference::gemm::gemm;

/// Largest k the routing kernels support.
pub const MAX_TOP_K: usize = 8;

/// A SwiGLU MLP: `down(silu(gate(x)) * up(x))` (the shared expert, the dense MLP, one routed expert).
#[derive(Clone, Debug, PartialEq)]
pub struct SwiGlu {
    pub gate: Weight,
    pub up: Weight,
    pub down: Weight,
}

impl SwiGlu {
    /// (hidden, intermediate), or an error naming the mismatched weight shapes.
    pub fn dims(&self) -> Result<(usize, usize)> {
        let (g, u, d) = (&self.gate, &self.up, &self.down);
        swiglu_dims(
            "SwiGlu",
            "",
            [(g.n(), g.k()), (u.n(), u.k()), (d.n(), d.k())],
        )
    }
}

/// (hidden, intermediate) of a SwiGLU MLP from its gate, up and down shapes `(n, k)`, or a shape
/// error under `op` naming them (`what`: which MLP, may be empty). Shared with the GPU experts.
pub fn swiglu_dims(
    op: &'static str,
    what: &str,
    [g, u, d]: [(usize, usize); 3],
) -> Result<(usize, usize)> {
    if g.1 != u.1 || g.0 != u.0 || d.1 != g.0 || d.0 != g.1 {
        let what = if what.is_empty() {
            String::new()
        } else {
            format!("{what}: ")
        };
        return Err(Error::shape(
            op,
            format!(
                "{what}gate [{}, {}], up [{}, {}], down [{}, {}] do not form a SwiGLU MLP",
                g.0, g.1, u.0, u.1, d.0, d.1
            ),
        ));
    }
    Ok((g.1, g.0))
}

/// `1 / (1 + exp(-x))` in f32 (0 for very negative x, never NaN for non-NaN x).
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `x * sigmoid(x)`.
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// Routing of `tokens` tokens to `k` experts each, from router logits `[tokens, experts]`.
/// A "slot" is `t * k + j`, the j-th choice of token t.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    pub tokens: usize,
    pub k: usize,
    pub experts: usize,
    /// `[tokens * k]` expert of each slot, best first, ties to the lower index (as torch.topk).
    pub topk_ids: Vec<u32>,
    /// `[tokens * k]` sigmoid of the chosen raw logit, stored as f32 bits so Routing stays `Eq`.
    pub topk_scores_bits: Vec<u32>,
    /// `[experts]` slots routed to each expert.
    pub counts: Vec<u32>,
    /// `[experts + 1]` prefix sums of counts.
    pub offsets: Vec<u32>,
    /// `[tokens * k]` slots in expert-sorted order (stable: ascending slot within an expert).
    pub sorted_slots: Vec<u32>,
    /// `[tokens * k]` inverse: `sorted_slots[inverse[s]] == s`.
    pub inverse: Vec<u32>,
}

impl Routing {
    /// The score of `slot`.
    pub fn score(&self, slot: usize) -> f32 {
        f32::from_bits(self.topk_scores_bits[slot])
    }

    /// Builds the permutation from per-slot choices (`ids[t * k + j]`, scores as f32). Errors: k out
    /// of 1..=min(8, experts), lengths, an expert id out of range.
    pub fn from_topk(
        tokens: usize,
        k: usize,
        experts: usize,
        ids: Vec<u32>,
        scores: &[f32],
    ) -> Result<Self> {
        const OP: &str = "Routing::from_topk";
        check_k(OP, k, experts)?;
        check_len(OP, "topk_ids", ids.len(), tokens * k)?;
        check_len(OP, "topk_scores", scores.len(), tokens * k)?;
        if let Some(s) = ids.iter().position(|&e| e as usize >= experts) {
            return Err(Error::invalid(
                OP,
                format!("slot {s} routes to expert {} of {experts}", ids[s]),
            ));
        }
        let mut counts = vec![0u32; experts];
        for &e in &ids {
            counts[e as usize] += 1;
        }
        let mut offsets = Vec::with_capacity(experts + 1);
        offsets.push(0u32);
        for &c in &counts {
            offsets.push(offsets[offsets.len() - 1] + c);
        }
        // Counting sort over ascending slots: stable by construction.
        let mut next: Vec<u32> = offsets[..experts].to_vec();
        let mut sorted_slots = vec![0u32; ids.len()];
        let mut inverse = vec![0u32; ids.len()];
        for (s, &e) in ids.iter().enumerate() {
            let p = next[e as usize];
            next[e as usize] += 1;
            sorted_slots[p as usize] = s as u32;
            inverse[s] = p;
        }
        let topk_scores_bits = scores.iter().map(|s| s.to_bits()).collect();
        Ok(Routing {
            tokens,
            k,
            experts,
            topk_ids: ids,
            topk_scores_bits,
            counts,
            offsets,
            sorted_slots,
            inverse,
        })
    }

    /// Checks the fields agree: lengths, ids in range, counts / offsets / sorted order / inverse
    /// consistent. The grouped ops call it, so a hand-built Routing cannot index out of bounds.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "Routing";
        let slots = self.tokens * self.k;
        check_k(OP, self.k, self.experts)?;
        check_len(OP, "topk_ids", self.topk_ids.len(), slots)?;
        check_len(OP, "topk_scores_bits", self.topk_scores_bits.len(), slots)?;
        check_len(OP, "counts", self.counts.len(), self.experts)?;
        check_len(OP, "offsets", self.offsets.len(), self.experts + 1)?;
        check_len(OP, "sorted_slots", self.sorted_slots.len(), slots)?;
        check_len(OP, "inverse", self.inverse.len(), slots)?;
        let bad = |msg: String| Err(Error::invalid(OP, msg));
        if self.offsets[0] != 0 || self.offsets[self.experts] as usize != slots {
            return bad(format!("offsets must run from 0 to {slots}"));
        }
        for e in 0..self.experts {
            let (lo, hi) = (self.offsets[e], self.offsets[e + 1]);
            if hi < lo || hi - lo != self.counts[e] {
                return bad(format!(
                    "offsets[{e}..={}] disagree with counts[{e}]",
                    e + 1
                ));
            }
            for p in lo as usize..hi as usize {
                let s = self.sorted_slots[p] as usize;
                if s >= slots || self.topk_ids[s] as usize != e || self.inverse[s] as usize != p {
                    return bad(format!(
                        "sorted position {p} (slot {s}) is not a slot of expert {e}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Fails unless 1 <= k <= min(MAX_TOP_K, experts).
fn check_k(op: &'static str, k: usize, experts: usize) -> Result<()> {
    if experts == 0 || experts > u32::MAX as usize {
        return Err(Error::invalid(
            op,
            format!("{experts} experts (need 1 to {})", u32::MAX),
        ));
    }
    if k == 0 || k > MAX_TOP_K.min(experts) {
        return Err(Error::invalid(
            op,
            format!("k = {k}: need 1 <= k <= min({MAX_TOP_K}, experts = {experts})"),
        ));
    }
    Ok(())
}

/// Router logits -> top-k (best first, ties to the lower index) -> sigmoid scores -> expert-sorted
/// permutation, counts, offsets, inverse. Errors: k or experts out of range, lengths, a NaN logit.
pub fn top_k_gating(logits: &[f32], tokens: usize, experts: usize, k: usize) -> Result<Routing> {
    const OP: &str = "top_k_gating";
    check_k(OP, k, experts)?;
    check_len(OP, "logits", logits.len(), tokens * experts)?;
    if let Some(i) = logits.iter().position(|v| v.is_nan()) {
        return Err(Error::invalid(
            OP,
            format!("logits[{i}] (token {}) is NaN", i / experts),
        ));
    }
    let mut ids = Vec::with_capacity(tokens * k);
    let mut scores = Vec::with_capacity(tokens * k);
    for row in logits.chunks_exact(experts) {
        // k rounds of "largest, first among equals": the lower index wins every tie.
        let mut taken = [usize::MAX; MAX_TOP_K];
        for j in 0..k {
            let mut best: Option<usize> = None;
            for (e, &v) in row.iter().enumerate() {
                let better = match best {
                    None => true,
                    Some(b) => v > row[b],
                };
                if better && !taken[..j].contains(&e) {
                    best = Some(e);
                }
            }
            let b = best.expect("k <= experts leaves a candidate");
            taken[j] = b;
            ids.push(b as u32);
            scores.push(sigmoid(row[b]));
        }
    }
    Routing::from_topk(tokens, k, experts, ids, &scores)
}

/// One SwiGLU MLP over rows `x[m, hidden]`: `down(silu(x·gateᵀ) * (x·upᵀ))`.
pub fn swiglu(x: &[f32], m: usize, mlp: &SwiGlu) -> Result<Vec<f32>> {
    let (hidden, _) = mlp.dims()?;
    check_len("swiglu", "x", x.len(), m * hidden)?;
    let h = gate_up(x, m, &mlp.gate, &mlp.up)?;
    gemm(&h, m, &mlp.down)
}

/// `silu(x·gateᵀ) * (x·upᵀ)`, `[m, inter]`.
fn gate_up(x: &[f32], m: usize, gate: &Weight, up: &Weight) -> Result<Vec<f32>> {
    let g = gemm(x, m, gate)?;
    let u = gemm(x, m, up)?;
    Ok(g.iter().zip(&u).map(|(&g, &u)| silu(g) * u).collect())
}

/// Where the input row of sorted position p comes from.
#[derive(Clone, Copy)]
enum Rows {
    /// `x[sorted_slots[p] / k]`, times the slot's score when `scale_input` (x is `[tokens, in]`).
    Gather { scale_input: bool },
    /// `x[p]` (x is already `[tokens * k, in]` in sorted order).
    Sorted,
}

/// Runs `f(rows, count, e)` on each non-empty expert's input rows `[count, in_features]`, writing
/// its `[count, n]` result into the sorted-order output `[tokens * k, n]`. Only experts in `local`
/// run (expert parallelism); the other rows stay 0.
#[allow(clippy::too_many_arguments)]
fn per_expert(
    op: &'static str,
    x: &[f32],
    in_features: usize,
    n: usize,
    routing: &Routing,
    rows: Rows,
    local: Range<usize>,
    f: impl Fn(&[f32], usize, usize) -> Result<Vec<f32>>,
) -> Result<Vec<f32>> {
    routing.validate()?;
    let slots = routing.tokens * routing.k;
    let x_rows = match rows {
        Rows::Gather { .. } => routing.tokens,
        Rows::Sorted => slots,
    };
    check_len(op, "x", x.len(), x_rows * in_features)?;
    let mut out = vec![0.0f32; slots * n];
    for e in local {
        let (lo, hi) = (routing.offsets[e] as usize, routing.offsets[e + 1] as usize);
        if lo == hi {
            continue;
        }
        let input: Vec<f32> = match rows {
            Rows::Sorted => x[lo * in_features..hi * in_features].to_vec(),
            Rows::Gather { scale_input } => (lo..hi)
                .flat_map(|p| {
                    let s = routing.sorted_slots[p] as usize;
                    let t = s / routing.k;
                    let scale = if scale_input { routing.score(s) } else { 1.0 };
                    x[t * in_features..(t + 1) * in_features]
                        .iter()
                        .map(move |v| v * scale)
                })
                .collect(),
        };
        out[lo * n..hi * n].copy_from_slice(&f(&input, hi - lo, e)?);
    }
    Ok(out)
}

/// Checks one weight per expert, all `[n, in_features]`, and returns n.
fn check_experts<W: Borrow<Weight>>(
    op: &'static str,
    what: &str,
    weights: &[W],
    routing: &Routing,
    in_features: usize,
) -> Result<usize> {
    check_len(op, what, weights.len(), routing.experts)?;
    let n = weights.first().map_or(0, |w| w.borrow().n());
    for (e, w) in weights.iter().enumerate() {
        let w = w.borrow();
        if w.k() != in_features || w.n() != n {
            return Err(Error::shape(
                op,
                format!(
                    "{what}[{e}] is [{}, {}], expected [{n}, {in_features}]",
                    w.n(),
                    w.k()
                ),
            ));
        }
    }
    Ok(n)
}

/// Grouped expert GEMM: for each position p of the expert-sorted order, row
/// `x[sorted_slots[p] / k] * (scale_input ? score(sorted_slots[p]) : 1)` times expert e's
/// `weights[e]`ᵀ; output `[tokens * k, n]` in sorted order. `x` is `[tokens, hidden]`; every expert's
/// weight is `[n, hidden]`. Takes `&[Weight]` or `&[&Weight]`.
pub fn grouped_gemm<W: Borrow<Weight>>(
    x: &[f32],
    hidden: usize,
    routing: &Routing,
    weights: &[W],
    scale_input: bool,
) -> Result<Vec<f32>> {
    const OP: &str = "grouped_gemm";
    let n = check_experts(OP, "weights", weights, routing, hidden)?;
    per_expert(
        OP,
        x,
        hidden,
        n,
        routing,
        Rows::Gather { scale_input },
        0..routing.experts,
        |r, c, e| gemm(r, c, weights[e].borrow()),
    )
}

/// Grouped GEMM whose input is already in sorted order: `x_sorted[tokens * k, in_features]`, row p
/// times `weights[e]`ᵀ for the expert e that owns position p (the down projection). Output
/// `[tokens * k, n]` in sorted order.
pub fn grouped_gemm_sorted<W: Borrow<Weight>>(
    x_sorted: &[f32],
    in_features: usize,
    routing: &Routing,
    weights: &[W],
) -> Result<Vec<f32>> {
    const OP: &str = "grouped_gemm_sorted";
    let n = check_experts(OP, "weights", weights, routing, in_features)?;
    per_expert(
        OP,
        x_sorted,
        in_features,
        n,
        routing,
        Rows::Sorted,
        0..routing.experts,
        |r, c, e| gemm(r, c, weights[e].borrow()),
    )
}

/// Grouped gate_up with fused SwiGLU: rows gathered as in [`grouped_gemm`], output
/// `silu(row·gate[e]ᵀ) * (row·up[e]ᵀ)`, sorted-order `[tokens * k, inter]`.
pub fn grouped_gemm_swiglu<W: Borrow<Weight>>(
    x: &[f32],
    hidden: usize,
    routing: &Routing,
    gate: &[W],
    up: &[W],
    scale_input: bool,
) -> Result<Vec<f32>> {
    const OP: &str = "grouped_gemm_swiglu";
    let inter = check_experts(OP, "gate", gate, routing, hidden)?;
    let inter_up = check_experts(OP, "up", up, routing, hidden)?;
    if inter_up != inter {
        return Err(Error::shape(
            OP,
            format!("gate has {inter} outputs, up has {inter_up}"),
        ));
    }
    per_expert(
        OP,
        x,
        hidden,
        inter,
        routing,
        Rows::Gather { scale_input },
        0..routing.experts,
        |r, c, e| gate_up(r, c, gate[e].borrow(), up[e].borrow()),
    )
}

/// Combine: `out[t] += y_sorted[inverse[t*k + j]]` for j = 0, 1, ..., k-1 in that order.
/// `y_sorted` is `[tokens * k, n]`, `out` is `[tokens, n]`.
pub fn combine(y_sorted: &[f32], n: usize, routing: &Routing, out: &mut [f32]) -> Result<()> {
    combine_range(y_sorted, n, routing, 0..routing.experts, out)
}

/// [`combine`] over the positions of the experts in `local` only (expert parallelism): a slot
/// routed elsewhere adds nothing, as in `l4c_moe_combine` with offsets and a range.
pub fn combine_range(
    y_sorted: &[f32],
    n: usize,
    routing: &Routing,
    local: Range<usize>,
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "combine";
    routing.validate()?;
    check_range(OP, &local, routing.experts)?;
    let (lo, hi) = (
        routing.offsets[local.start] as usize,
        routing.offsets[local.end] as usize,
    );
    check_len(
        OP,
        "y_sorted",
        y_sorted.len(),
        routing.tokens * routing.k * n,
    )?;
    check_len(OP, "out", out.len(), routing.tokens * n)?;
    if n == 0 {
        return Ok(());
    }
    for (t, o) in out.chunks_exact_mut(n).enumerate() {
        for j in 0..routing.k {
            let p = routing.inverse[t * routing.k + j] as usize;
            if p < lo || p >= hi {
                continue;
            }
            for (a, b) in o.iter_mut().zip(&y_sorted[p * n..(p + 1) * n]) {
                *a += b;
            }
        }
    }
    Ok(())
}

/// The Llama 4 MoE block (LLAMA4.md): `logits = x·W_routerᵀ`; top-k on the raw logits;
/// `score = sigmoid(logit)`; expert e gets `x * score` and computes `down(silu(gate(.)) * up(.))`;
/// output = `shared(x)` (unweighted; zero when `shared` is None) + the selected experts' outputs,
/// added in choice order. `x` is `[tokens, hidden]`, router `[experts, hidden]`; all experts must
/// share one intermediate size. Returns `[tokens, hidden]`.
pub fn moe_block(
    x: &[f32],
    tokens: usize,
    router: &Weight,
    experts: &[SwiGlu],
    shared: Option<&SwiGlu>,
    k: usize,
) -> Result<Vec<f32>> {
    moe_block_range(x, tokens, router, experts, shared, k, 0..experts.len())
}

/// One rank's part of the expert-parallel MoE block (docs/MULTI-GPU.md), the spec of the GPU
/// block with a local expert range: the routing is [`moe_block`]'s over all `experts` (the router is
/// replicated), but only the experts in `local` run and only their slots are combined; `shared` is
/// added where given (exactly one rank passes it). Summing the outputs of ranges that partition
/// `0..experts` (one of them with the shared expert) gives [`moe_block`] up to f32 reassociation;
/// `local = 0..experts` is [`moe_block`] exactly. An empty range gives the shared expert (or zeros).
/// `experts` holds every expert (only those in `local` are read).
pub fn moe_block_range(
    x: &[f32],
    tokens: usize,
    router: &Weight,
    experts: &[SwiGlu],
    shared: Option<&SwiGlu>,
    k: usize,
    local: Range<usize>,
) -> Result<Vec<f32>> {
    const OP: &str = "moe_block";
    check_range(OP, &local, experts.len())?;
    let hidden = router.k();
    check_len(OP, "x", x.len(), tokens * hidden)?;
    check_len(OP, "experts (router rows)", experts.len(), router.n())?;
    for (e, mlp) in experts.iter().enumerate() {
        let (h, i) = mlp.dims()?;
        if i != experts[0].gate.n() {
            return Err(Error::shape(
                OP,
                format!("expert {e} has inter {i}, expert 0 {}", experts[0].gate.n()),
            ));
        }
        if h != hidden {
            return Err(Error::shape(
                OP,
                format!("expert {e} takes hidden {h}, the router {hidden}"),
            ));
        }
    }
    let logits = gemm(x, tokens, router)?;
    let routing = top_k_gating(&logits, tokens, experts.len(), k)?;
    let inter = experts[0].gate.n();
    // The grouped GEMMs of grouped_gemm_swiglu / grouped_gemm_sorted over the local experts only.
    let h = per_expert(
        OP,
        x,
        hidden,
        inter,
        &routing,
        Rows::Gather { scale_input: true },
        local.clone(),
        |r, c, e| gate_up(r, c, &experts[e].gate, &experts[e].up),
    )?;
    let y_sorted = per_expert(
        OP,
        &h,
        inter,
        hidden,
        &routing,
        Rows::Sorted,
        local.clone(),
        |r, c, e| gemm(r, c, &experts[e].down),
    )?;
    let mut out = match shared {
        Some(mlp) => {
            let (h, _) = mlp.dims()?;
            if h != hidden {
                return Err(Error::shape(
                    OP,
                    format!("shared expert takes hidden {h}, the router {hidden}"),
                ));
            }
            swiglu(x, tokens, mlp)?
        }
        None => vec![0.0; tokens * hidden],
    };
    combine_range(&y_sorted, hidden, &routing, local, &mut out)?;
    Ok(out)
}

/// `local` must lie in `0..experts` (it may be empty).
fn check_range(op: &'static str, local: &Range<usize>, experts: usize) -> Result<()> {
    if local.start > local.end || local.end > experts {
        return Err(Error::invalid(
            op,
            format!("expert range {local:?} is not inside 0..{experts}"),
        ));
    }
    Ok(())
}
