//! Attention reference: causal GQA, per-layer mask kind, NoPE temperature tuning, K/V read through the
//! chunked cache. Prefill (many queries, possibly continuing a cache) and decode (one query) are one
//! function. OWNER: attention helper.
use crate::error::Result;
use crate::kv_cache::SeqView;

/// Which keys a query may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskKind {
    /// Key j visible to query i iff j <= i.
    Causal,
    /// Also `floor(i / chunk) == floor(j / chunk)` (chunks aligned to absolute positions).
    ChunkedLocal { chunk: usize },
}

/// Llama 4 NoPE-layer temperature tuning: `q *= log1p(floor((pos + 1) / floor_scale)) * attn_scale + 1`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TempTuning {
    pub floor_scale: f32,
    pub attn_scale: f32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnParams {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Softmax scale, `head_dim^-0.5` for Llama 4.
    pub scale: f32,
    pub mask: MaskKind,
    pub temp: Option<TempTuning>,
}

/// `q` is `[tokens, heads, head_dim]` for absolute positions `q_start .. q_start + tokens`; the cache
/// already holds their keys and values. Returns `[tokens, heads, head_dim]`.
pub fn attention(q: &[f32], q_start: usize, kv: &SeqView<'_>, p: &AttnParams) -> Result<Vec<f32>> {
    let _ = (q, q_start, kv, p);
    todo!("attention helper")
}
