//! MoE: top-k gating, routing permutation, grouped expert GEMM, combine, and the Llama 4 MoE block.
//! OWNER: quant helper.
use crate::error::Result;
use crate::quant::Weight;

/// A SwiGLU MLP: `down(silu(gate(x)) * up(x))` (the shared expert, the dense MLP, one routed expert).
#[derive(Clone, Debug, PartialEq)]
pub struct SwiGlu {
    pub gate: Weight,
    pub up: Weight,
    pub down: Weight,
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
    pub fn score(&self, slot: usize) -> f32 {
        f32::from_bits(self.topk_scores_bits[slot])
    }
}

/// Router logits -> top-k -> sigmoid scores -> expert-sorted permutation, counts, offsets, inverse.
pub fn top_k_gating(logits: &[f32], tokens: usize, experts: usize, k: usize) -> Result<Routing> {
    let _ = (logits, tokens, experts, k);
    todo!("quant helper")
}

/// One SwiGLU MLP over rows `x[m, hidden]`.
pub fn swiglu(x: &[f32], m: usize, mlp: &SwiGlu) -> Result<Vec<f32>> {
    let _ = (x, m, mlp);
    todo!("quant helper")
}

/// Grouped expert GEMM: for each position p of the expert-sorted order, row
/// `x[sorted_slots[p] / k] * (scale_input ? score : 1)` times expert e's `weights[e]`ᵀ; output
/// `[tokens * k, n]` in sorted order. `swiglu_pairs = Some((gate, up))` computes `silu(x·gateᵀ) * (x·upᵀ)`
/// instead (fused gate_up); `weights` is then ignored.
pub fn grouped_gemm(
    x: &[f32],
    hidden: usize,
    routing: &Routing,
    weights: &[Weight],
    scale_input: bool,
) -> Result<Vec<f32>> {
    let _ = (x, hidden, routing, weights, scale_input);
    todo!("quant helper")
}

/// Grouped gate_up with fused SwiGLU: sorted-order output `[tokens * k, inter]`.
pub fn grouped_gemm_swiglu(
    x: &[f32],
    hidden: usize,
    routing: &Routing,
    gate: &[Weight],
    up: &[Weight],
    scale_input: bool,
) -> Result<Vec<f32>> {
    let _ = (x, hidden, routing, gate, up, scale_input);
    todo!("quant helper")
}

/// Combine: `out[t] += sum_j y_sorted[inverse[t*k + j]]`.
pub fn combine(y_sorted: &[f32], n: usize, routing: &Routing, out: &mut [f32]) -> Result<()> {
    let _ = (y_sorted, n, routing, out);
    todo!("quant helper")
}

/// The Llama 4 MoE block (LLAMA4.md): router, top-k, sigmoid score scaling the expert INPUT, experts,
/// plus the unweighted shared expert. `x` is `[tokens, hidden]`.
pub fn moe_block(
    x: &[f32],
    tokens: usize,
    router: &Weight,
    experts: &[SwiGlu],
    shared: Option<&SwiGlu>,
    k: usize,
) -> Result<Vec<f32>> {
    let _ = (x, tokens, router, experts, shared, k);
    todo!("quant helper")
}
