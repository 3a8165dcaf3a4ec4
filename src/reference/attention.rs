//! Attention reference: causal GQA, per-layer mask kind, NoPE temperature tuning, K/V read through the
//! chunked cache. Prefill (many queries, possibly continuing a cache) and decode (one query) are one
//! function.
//!
//! For each (query token, KV head) the keys it may see are cut into fixed splits of
//! [`KEYS_PER_SPLIT`] keys (flash-decoding). Each split is an exact two-pass softmax in f32: scores,
//! their max, `p = exp(s - max)`, `sum p`, `sum p * v`. Splits are then merged with the usual rescale by
//! `exp(m_split - m_all)`. Work runs in parallel over (token, KV head) and over splits (rayon); the
//! split boundaries are fixed, so results do not depend on the thread count.
use crate::error::{Error, Result};
use crate::kv_cache::{KvLayout, KvPart, SeqView};
use crate::reference::gemm::dot;
use rayon::prelude::*;
use std::ops::Range;

const OP: &str = "attention";

/// Keys per parallel work item of one (token, KV head).
pub const KEYS_PER_SPLIT: usize = 2048;
/// Keys decoded to f32 at a time (a block stays in L1/L2).
const BLOCK: usize = 64;

/// Which keys a query may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskKind {
    /// Key j visible to query i iff j <= i.
    Causal,
    /// Also `floor(i / chunk) == floor(j / chunk)` (chunks aligned to absolute positions).
    ChunkedLocal { chunk: usize },
}

impl MaskKind {
    /// The first key visible to the query at `pos` (the last is `pos`).
    pub fn first_visible(self, pos: usize) -> usize {
        match self {
            MaskKind::Causal => 0,
            MaskKind::ChunkedLocal { chunk } => pos / chunk.max(1) * chunk.max(1),
        }
    }
}

/// Llama 4 NoPE-layer temperature tuning: `q *= log1p(floor((pos + 1) / floor_scale)) * attn_scale + 1`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TempTuning {
    pub floor_scale: f32,
    pub attn_scale: f32,
}

impl TempTuning {
    /// The factor for the query at 0-based absolute position `pos`, in f32 as transformers computes it.
    pub fn factor(&self, pos: usize) -> f32 {
        ((pos as f32 + 1.0) / self.floor_scale).floor().ln_1p() * self.attn_scale + 1.0
    }
}

/// One layer's attention parameters.
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

impl AttnParams {
    /// Checks what every attention implementation (CPU reference, GPU prefill and decode) needs of
    /// the params against the cache `layout`; `op` names the caller in the error. Head counts:
    /// [`Error::InvalidArgument`] unless heads is a positive multiple of kv_heads (and head_dim > 0);
    /// [`Error::Shape`] when kv_heads x head_dim disagree with the cache; [`Error::InvalidArgument`]
    /// for a non-finite scale, a zero attention chunk or bad temperature tuning.
    pub fn check(&self, op: &'static str, layout: &KvLayout) -> Result<()> {
        let p = self;
        if p.heads == 0 || p.kv_heads == 0 || p.head_dim == 0 || p.heads % p.kv_heads != 0 {
            return Err(Error::invalid(
                op,
                format!(
                    "heads {} must be a positive multiple of kv_heads {} (head_dim {})",
                    p.heads, p.kv_heads, p.head_dim
                ),
            ));
        }
        if (p.kv_heads, p.head_dim) != (layout.kv_heads, layout.head_dim) {
            return Err(Error::shape(
                op,
                format!(
                    "params have kv_heads {} x head_dim {}, the cache {} x {}",
                    p.kv_heads, p.head_dim, layout.kv_heads, layout.head_dim
                ),
            ));
        }
        if !p.scale.is_finite() {
            return Err(Error::invalid(
                op,
                format!("softmax scale {} is not finite", p.scale),
            ));
        }
        if p.mask == (MaskKind::ChunkedLocal { chunk: 0 }) {
            return Err(Error::invalid(op, "attention chunk must be positive"));
        }
        if let Some(t) = p.temp {
            if !(t.floor_scale.is_finite() && t.floor_scale > 0.0 && t.attn_scale.is_finite()) {
                return Err(Error::invalid(
                    op,
                    format!(
                        "temperature tuning {t:?}: need a finite floor_scale > 0 and attn_scale"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `q` is `[tokens, heads, head_dim]` for absolute positions `q_start .. q_start + tokens`; the cache
/// already holds their keys and values (and every key they can see). Query head `h` reads KV head
/// `h / (heads / kv_heads)`. Returns `[tokens, heads, head_dim]`.
pub fn attention(q: &[f32], q_start: usize, kv: &SeqView<'_>, p: &AttnParams) -> Result<Vec<f32>> {
    validate(q, q_start, kv, p)?;
    let (d, g) = (p.head_dim, p.heads / p.kv_heads);
    let mut out = vec![0.0; q.len()];
    // out[t, kvh*g .. (kvh+1)*g, :] is one contiguous run of g * d per (token, KV head).
    out.par_chunks_mut(g * d)
        .enumerate()
        .try_for_each(|(i, o)| -> Result<()> {
            let (t, kvh) = (i / p.kv_heads, i % p.kv_heads);
            let pos = q_start + t;
            let factor = p.temp.map_or(1.0, |tt| tt.factor(pos));
            let qg: Vec<f32> = q[(t * p.heads + kvh * g) * d..][..g * d]
                .iter()
                .map(|x| x * factor)
                .collect();
            let (lo, hi) = (p.mask.first_visible(pos), pos + 1);
            let splits: Vec<Range<usize>> = (lo..hi)
                .step_by(KEYS_PER_SPLIT)
                .map(|a| a..(a + KEYS_PER_SPLIT).min(hi))
                .collect();
            let parts = splits
                .into_par_iter()
                .map(|keys| partial(kv, kvh, &qg, d, p.scale, keys))
                .collect::<Result<Vec<_>>>()?;
            merge(&parts, d, o);
            Ok(())
        })?;
    if let Some(i) = out.iter().position(|x| !x.is_finite()) {
        return Err(Error::invalid(
            OP,
            format!("output[{i}] is not finite: scores overflow f32"),
        ));
    }
    Ok(out)
}

/// Checks everything the caller controls.
fn validate(q: &[f32], q_start: usize, kv: &SeqView<'_>, p: &AttnParams) -> Result<()> {
    p.check(OP, &kv.layout())?;
    let row = p.heads * p.head_dim;
    if q.len() % row != 0 {
        return Err(Error::shape(
            OP,
            format!(
                "q has {} elements, not a multiple of heads {} x head_dim {}",
                q.len(),
                p.heads,
                p.head_dim
            ),
        ));
    }
    if let Some(i) = q.iter().position(|x| !x.is_finite()) {
        return Err(Error::invalid(
            OP,
            format!("q[{i}] = {} is not finite", q[i]),
        ));
    }
    let tokens = q.len() / row;
    let end = q_start.checked_add(tokens).filter(|&e| e <= kv.len()).ok_or_else(|| {
        Error::invalid(
            OP,
            format!(
                "queries at positions {q_start}..+{tokens} need their own keys, but the cache holds \
                 positions < {}: append K/V before attending",
                kv.len()
            ),
        )
    })?;
    // The first visible key never decreases with the position: checking the first query suffices.
    if tokens > 0 && p.mask.first_visible(q_start) < kv.start() {
        return Err(Error::invalid(
            OP,
            format!(
                "query at position {q_start} sees keys from {}, but the cache dropped positions < {} \
                 (queries {q_start}..{end})",
                p.mask.first_visible(q_start),
                kv.start()
            ),
        ));
    }
    Ok(())
}

/// One split's softmax statistics for `g` query heads: max score, sum of `exp(s - max)`, and the
/// unnormalised `sum exp(s - max) * v` (`[g, d]`).
struct Partial {
    max: Vec<f32>,
    sum: Vec<f32>,
    acc: Vec<f32>,
}

/// Two-pass softmax of the queries `q` (`[g, d]`) over `keys` of KV head `head`.
fn partial(
    kv: &SeqView<'_>,
    head: usize,
    q: &[f32],
    d: usize,
    scale: f32,
    keys: Range<usize>,
) -> Result<Partial> {
    let (n, g) = (keys.len(), q.len() / d);
    let mut s = vec![0.0f32; g * n];
    let mut buf = vec![0.0f32; BLOCK * d];
    for b in keys.clone().step_by(BLOCK) {
        let rows = &mut buf[..BLOCK.min(keys.end - b) * d];
        kv.read(KvPart::Key, head, b..b + rows.len() / d, rows)?;
        for (j, k) in rows.chunks_exact(d).enumerate() {
            for (h, qh) in q.chunks_exact(d).enumerate() {
                s[h * n + b - keys.start + j] = dot(qh, k) * scale;
            }
        }
    }
    let mut max = vec![f32::NEG_INFINITY; g];
    let mut sum = vec![0.0f32; g];
    for (h, sh) in s.chunks_exact_mut(n).enumerate() {
        max[h] = sh.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for x in sh.iter_mut() {
            *x = (*x - max[h]).exp();
            sum[h] += *x;
        }
    }
    let mut acc = vec![0.0f32; g * d];
    for b in keys.clone().step_by(BLOCK) {
        let rows = &mut buf[..BLOCK.min(keys.end - b) * d];
        kv.read(KvPart::Value, head, b..b + rows.len() / d, rows)?;
        for (j, v) in rows.chunks_exact(d).enumerate() {
            for (h, ah) in acc.chunks_exact_mut(d).enumerate() {
                axpy(ah, s[h * n + b - keys.start + j], v);
            }
        }
    }
    Ok(Partial { max, sum, acc })
}

/// Combines the splits (in key order) into the normalised output `out` (`[g, d]`).
fn merge(parts: &[Partial], d: usize, out: &mut [f32]) {
    for (h, o) in out.chunks_exact_mut(d).enumerate() {
        let m = parts
            .iter()
            .map(|p| p.max[h])
            .fold(f32::NEG_INFINITY, f32::max);
        let mut l = 0.0f32;
        o.fill(0.0);
        for p in parts {
            let w = (p.max[h] - m).exp();
            l += p.sum[h] * w;
            axpy(o, w, &p.acc[h * d..(h + 1) * d]);
        }
        o.iter_mut().for_each(|x| *x /= l);
    }
}

/// `y += a * x`.
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}
