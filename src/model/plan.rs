//! Parameter counts, bytes per weight format, KV bytes per token and a GPU memory plan.
use crate::model::checkpoint::Role;
use crate::model::config::Config;
use crate::model::quantize::{QuantFormat, QuantizeSpec};
use crate::quant::ScaleDType;

/// Parameters of a text model, by part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParamCounts {
    pub embed: u64,
    pub lm_head: u64,
    /// q, k, v, o of every layer.
    pub attention: u64,
    /// RMSNorm weights.
    pub norms: u64,
    pub routers: u64,
    /// All routed experts of all MoE layers.
    pub routed_experts: u64,
    pub shared_experts: u64,
    pub dense_mlp: u64,
    pub total: u64,
    /// Touched per token: everything but the routed experts, plus top-k of them per MoE layer
    /// (the embedding table counted whole, as Meta's 17B does).
    pub active: u64,
}

/// Every linear weight of the model as `(role, n, k, how many)`.
fn linears(c: &Config) -> Vec<(Role, u64, u64, u64)> {
    let (h, hd) = (c.hidden_size as u64, c.head_dim as u64);
    let (qd, kvd) = (
        c.num_attention_heads as u64 * hd,
        c.num_key_value_heads as u64 * hd,
    );
    let (moe, dense) = (
        c.num_moe_layers() as u64,
        (c.layers.len() - c.num_moe_layers()) as u64,
    );
    let (i, imlp, e) = (
        c.intermediate_size as u64,
        c.intermediate_size_mlp as u64,
        c.num_local_experts as u64,
    );
    let layers = c.layers.len() as u64;
    let vocab = c.vocab_size as u64;
    let mut v = vec![
        (Role::Embed, vocab, h, 1),
        (Role::Attention, qd, h, layers),
        (Role::Attention, kvd, h, 2 * layers),
        (Role::Attention, h, qd, layers),
        (Role::Router, e, h, moe),
        (Role::RoutedExpert, i, h, 2 * e * moe),
        (Role::RoutedExpert, h, i, e * moe),
        (Role::SharedExpert, i, h, 2 * moe),
        (Role::SharedExpert, h, i, moe),
        (Role::DenseMlp, imlp, h, 2 * dense),
        (Role::DenseMlp, h, imlp, dense),
    ];
    if !c.tie_word_embeddings {
        v.push((Role::LmHead, vocab, h, 1));
    }
    v
}

impl ParamCounts {
    /// Counts the parameters `config` describes.
    pub fn of(config: &Config) -> ParamCounts {
        let mut p = ParamCounts {
            norms: (2 * config.layers.len() as u64 + 1) * config.hidden_size as u64,
            ..Default::default()
        };
        for (role, n, k, count) in linears(config) {
            let x = n * k * count;
            match role {
                Role::Embed => p.embed += x,
                Role::LmHead => p.lm_head += x,
                Role::Attention => p.attention += x,
                Role::Router => p.routers += x,
                Role::RoutedExpert => p.routed_experts += x,
                Role::SharedExpert => p.shared_experts += x,
                Role::DenseMlp => p.dense_mlp += x,
            }
        }
        p.total = p.embed
            + p.lm_head
            + p.attention
            + p.norms
            + p.routers
            + p.routed_experts
            + p.shared_experts
            + p.dense_mlp;
        let experts = config.num_local_experts.max(1) as u64;
        let active_routed = p.routed_experts / experts * config.num_experts_per_tok as u64;
        p.active = p.total - p.routed_experts + active_routed;
        p
    }
}

/// Bytes of one `[n, k]` weight stored bf16 (None) or in `format`.
pub fn linear_bytes(n: u64, k: u64, format: Option<&QuantFormat>) -> u64 {
    match format {
        None => 2 * n * k,
        Some(QuantFormat::Fp8) => n * k + 4 * n,
        Some(QuantFormat::Int4(c)) => {
            let groups = k.div_ceil(c.group_size as u64);
            let scale = match c.scale_dtype {
                ScaleDType::BF16 => 2,
                ScaleDType::F32 => 4,
            };
            let zeros = if c.symmetric { 0 } else { 1 };
            n * k.div_ceil(2) + n * groups * (scale + zeros)
        }
    }
}

/// Bytes of all weights when `spec` quantizes (None: everything bf16).
pub fn weight_bytes(config: &Config, spec: Option<&QuantizeSpec>) -> u64 {
    let norms = 2 * (2 * config.layers.len() as u64 + 1) * config.hidden_size as u64;
    norms
        + linears(config)
            .into_iter()
            .map(|(role, n, k, count)| {
                let format = spec.filter(|s| s.selects(role)).map(|s| &s.format);
                count * linear_bytes(n, k, format)
            })
            .sum::<u64>()
}

/// KV bytes one token adds to one layer: K and V, `kv_heads * head_dim` each, `elem_bytes` per value
/// (2 for bf16: 4096 B for Llama 4; 1 for fp8).
pub fn kv_bytes_per_token_layer(config: &Config, elem_bytes: u64) -> u64 {
    2 * config.num_key_value_heads as u64 * config.head_dim as u64 * elem_bytes
}

/// KV bytes of one sequence of `context` tokens: NoPE layers hold every token, chunked (RoPE)
/// layers at most one chunk.
pub fn kv_bytes(config: &Config, context: u64, elem_bytes: u64) -> u64 {
    let per = kv_bytes_per_token_layer(config, elem_bytes);
    let nope = config.num_nope_layers() as u64;
    let rope = config.layers.len() as u64 - nope;
    per * (nope * context + rope * context.min(config.attention_chunk_size as u64))
}

/// Fixed reserve for the CUDA context, kernel workspaces and fragmentation.
pub const RESERVE_BYTES: u64 = 2 << 30;

/// Working memory beyond weights and KV: [`RESERVE_BYTES`] plus f32 activations of one prefill step of
/// `min(context, attention_chunk_size)` tokens (residual, normed input, attention and FFN outputs,
/// q / k / v, gate and up of the shared and top-k experts, SwiGLU product) and one row of logits.
pub fn headroom_bytes(config: &Config, context: u64) -> u64 {
    let c = config;
    let tokens = context.min(c.attention_chunk_size as u64).max(1);
    let qkv = ((c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim) as u64;
    let moe = c.num_moe_layers();
    let inter_moe = if moe > 0 { c.intermediate_size } else { 0 };
    let inter_mlp = if moe < c.layers.len() {
        c.intermediate_size_mlp
    } else {
        0
    };
    let inter = inter_moe.max(inter_mlp) as u64;
    let per_token =
        4 * (4 * c.hidden_size as u64 + qkv + 3 * inter * (1 + c.num_experts_per_tok as u64));
    RESERVE_BYTES + tokens * per_token + 4 * c.vocab_size as u64
}

/// Whether a model, its KV cache for one sequence of `context` tokens and working memory fit a GPU.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    pub context: u64,
    pub gpu_bytes: u64,
    pub weight_bytes: u64,
    /// KV bytes per token per layer.
    pub kv_per_token_layer: u64,
    /// KV bytes for `context` tokens.
    pub kv_bytes: u64,
    pub headroom_bytes: u64,
    /// weights + KV + headroom.
    pub total_bytes: u64,
    pub fits: bool,
    /// The longest context whose KV fits beside the weights and headroom; `None` when unbounded (no
    /// NoPE layers), 0 when not even the weights fit.
    pub max_context: Option<u64>,
}

/// The memory plan of `config` quantized by `spec` (None: bf16) with a KV cache of `kv_elem_bytes`
/// per value, for one sequence of `context` tokens on a GPU of `gpu_bytes`.
pub fn memory_plan(
    config: &Config,
    spec: Option<&QuantizeSpec>,
    context: u64,
    gpu_bytes: u64,
    kv_elem_bytes: u64,
) -> MemoryPlan {
    let weights = weight_bytes(config, spec);
    let per = kv_bytes_per_token_layer(config, kv_elem_bytes);
    let kv = kv_bytes(config, context, kv_elem_bytes);
    let headroom = headroom_bytes(config, context);
    let total = weights + kv + headroom;
    let nope = config.num_nope_layers() as u64;
    let layers = config.layers.len() as u64;
    let chunk = config.attention_chunk_size as u64;
    let avail = gpu_bytes.saturating_sub(weights + headroom);
    let max_context = if per == 0 {
        None
    } else if avail < per * layers * chunk {
        // Shorter than one chunk: every layer holds every token.
        Some(avail / (per * layers))
    } else if nope == 0 {
        None
    } else {
        Some((avail - per * (layers - nope) * chunk) / (per * nope))
    };
    MemoryPlan {
        context,
        gpu_bytes,
        weight_bytes: weights,
        kv_per_token_layer: per,
        kv_bytes: kv,
        headroom_bytes: headroom,
        total_bytes: total,
        fits: total <= gpu_bytes,
        max_context,
    }
}
