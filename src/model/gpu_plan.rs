//! The memory plan on a real device: weights, then the KV pool sized from what is free, then the
//! host tier for what does not fit; a typed [`Error::OutOfMemory`] with the numbers when the model
//! cannot run. Also the bytes one decode step must move, for the decode floor of `bench-model`.
//! Pure arithmetic: runs (and is tested) without a GPU.
use crate::error::{Error, Result};
use crate::kv_cache::KvDType;
use crate::model::cache::{layout, CacheOptions};
use crate::model::checkpoint::Role;
use crate::model::config::Config;
use crate::model::plan::{headroom_bytes, kv_bytes_per_token_layer, linear_bytes, weight_bytes};
use crate::model::quantize::QuantizeSpec;

/// What to plan for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GpuPlanRequest {
    /// Sequences decoded together.
    pub batch: usize,
    /// Positions per sequence.
    pub context: usize,
    /// KV element type on the device: BF16 or Fp8E4M3.
    pub kv_dtype: KvDType,
    /// Free device memory now (`cuMemGetInfo`), bytes.
    pub free_bytes: u64,
    /// Pinned host memory the KV overflow tier may take, bytes (0: no host tier).
    pub host_bytes: u64,
}

/// Where every byte goes.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuPlan {
    pub request: GpuPlanRequest,
    /// Tokens per KV page (what the device budget is rounded to).
    pub page_tokens: usize,
    pub weight_bytes: u64,
    /// Activations, scratch, the CUDA context: [`crate::model::plan::headroom_bytes`] plus a row of
    /// logits per sequence.
    pub headroom_bytes: u64,
    /// KV of the chunked (RoPE) layers, all on the device: at most one attention chunk each.
    pub kv_chunked_bytes: u64,
    /// KV of the global (NoPE) layers on the device.
    pub kv_global_device_bytes: u64,
    /// KV of the global layers in the pinned host tier.
    pub kv_global_host_bytes: u64,
    /// Tokens per sequence of each global layer on the device and in the host tier.
    pub global_device_tokens: usize,
    pub global_host_tokens: usize,
}

impl GpuPlan {
    /// Device bytes the plan uses.
    pub fn device_bytes(&self) -> u64 {
        self.weight_bytes
            + self.headroom_bytes
            + self.kv_chunked_bytes
            + self.kv_global_device_bytes
    }
    /// The device budget to give one layer's [`crate::kv_cache::gpu::GpuKvLayer::new`].
    pub fn kv_device_budget(&self, config: &Config, global: bool) -> usize {
        let per = kv_bytes_per_token_layer(config, self.request.kv_dtype.bytes() as u64);
        let b = self.request.batch as u64;
        let bytes = if global {
            per * b * self.global_device_tokens as u64
        } else {
            per * b * chunked_tokens(config, self.request.context) as u64
        };
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }
}

/// Positions a chunked layer holds at once: one attention chunk (or the whole context if shorter).
fn chunked_tokens(config: &Config, context: usize) -> usize {
    context.min(config.attention_chunk_size)
}

/// Plans `config` with weights as `spec` quantizes them (None: bf16) for `req`. Fails with
/// [`Error::OutOfMemory`] (needed, free) when the weights, working memory and the chunked layers'
/// KV do not fit the device, or the global layers' overflow does not fit the host tier.
pub fn plan_gpu(
    config: &Config,
    spec: Option<&QuantizeSpec>,
    req: GpuPlanRequest,
) -> Result<GpuPlan> {
    plan_with(config, weight_bytes(config, spec), req)
}

/// [`plan_gpu`] for the KV cache and working memory only, when the weights are already resident
/// (`req.free_bytes` is what is free beside them).
pub fn plan_kv(config: &Config, req: GpuPlanRequest) -> Result<GpuPlan> {
    plan_with(config, 0, req)
}

fn plan_with(config: &Config, weights: u64, req: GpuPlanRequest) -> Result<GpuPlan> {
    const OP: &str = "memory plan";
    if !matches!(req.kv_dtype, KvDType::BF16 | KvDType::Fp8E4M3) {
        return Err(Error::invalid(
            OP,
            format!(
                "KV dtype {:?}: the GPU cache stores bf16 or fp8 e4m3",
                req.kv_dtype
            ),
        ));
    }
    if req.batch == 0 || req.context == 0 {
        return Err(Error::invalid(
            OP,
            format!(
                "batch {} and context {} must be at least 1",
                req.batch, req.context
            ),
        ));
    }
    if req.context > config.max_position_embeddings {
        return Err(Error::ContextTooLong {
            needed: req.context,
            limit: config.max_position_embeddings,
        });
    }
    let page = layout(
        config,
        &CacheOptions {
            page_tokens: None,
            dtype: req.kv_dtype,
        },
    )?
    .chunk_tokens;
    let per = kv_bytes_per_token_layer(config, req.kv_dtype.bytes() as u64);
    let (b, ctx) = (req.batch as u64, req.context as u64);
    let nope = config.num_nope_layers() as u64;
    let rope = config.layers.len() as u64 - nope;
    let headroom = headroom_bytes(config, ctx) + b * 4 * config.vocab_size as u64;
    let chunked = per * b * rope * chunked_tokens(config, req.context) as u64;
    // Every global layer keeps at least its first page of every sequence on the device.
    let min_global = per * b * nope * page.min(req.context) as u64;
    let fixed = weights + headroom + chunked;
    if fixed + min_global > req.free_bytes {
        return Err(Error::OutOfMemory {
            op: OP,
            needed: to_usize(fixed + min_global),
            free: to_usize(req.free_bytes),
        });
    }
    let (dev_tokens, host_tokens) = if nope == 0 {
        (0, 0)
    } else {
        let avail = req.free_bytes - fixed;
        let fit = (avail / (per * b * nope)).min(ctx) as usize;
        let dev = if fit >= req.context {
            req.context
        } else {
            fit / page * page
        };
        (dev, req.context - dev)
    };
    let host = per * b * nope * host_tokens as u64;
    if host > req.host_bytes {
        return Err(Error::OutOfMemory {
            op: "memory plan (KV host tier)",
            needed: to_usize(fixed + per * b * nope * ctx),
            free: to_usize(req.free_bytes + req.host_bytes),
        });
    }
    Ok(GpuPlan {
        request: req,
        page_tokens: page,
        weight_bytes: weights,
        headroom_bytes: headroom,
        kv_chunked_bytes: chunked,
        kv_global_device_bytes: per * b * nope * dev_tokens as u64,
        kv_global_host_bytes: host,
        global_device_tokens: dev_tokens,
        global_host_tokens: host_tokens,
    })
}

fn to_usize(x: u64) -> usize {
    usize::try_from(x).unwrap_or(usize::MAX)
}

/// Bytes one decode step of `batch` sequences at `context` positions reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodeBytes {
    /// Weights every step reads whatever the routing: attention, router, shared expert, dense MLP,
    /// lm_head, norms, and the `batch` embedding rows.
    pub fixed_weights: u64,
    /// Routed experts touched: per MoE layer the expected number of distinct experts that `batch`
    /// tokens pick with uniform routing, `E (1 - (1 - k/E)^batch)`, times one expert's bytes.
    pub routed_weights: u64,
    /// K and V read by attention: every global layer its whole context, every chunked layer the
    /// tokens of the current chunk.
    pub kv: u64,
}

impl DecodeBytes {
    /// Weights touched.
    pub fn weights(&self) -> u64 {
        self.fixed_weights + self.routed_weights
    }
    /// Everything a step must read.
    pub fn total(&self) -> u64 {
        self.weights() + self.kv
    }
    /// The floor of one step at `bandwidth` bytes/s (weights + KV), seconds.
    pub fn floor_secs(&self, bandwidth: f64) -> f64 {
        self.total() as f64 / bandwidth
    }
}

/// The bytes of one decode step (see [`DecodeBytes`]).
pub fn decode_bytes(
    config: &Config,
    spec: Option<&QuantizeSpec>,
    batch: usize,
    context: usize,
    kv_dtype: KvDType,
) -> DecodeBytes {
    let fmt = |role| spec.filter(|s| s.selects(role)).map(|s| &s.format);
    let c = config;
    let (h, i) = (c.hidden_size as u64, c.intermediate_size as u64);
    let expert = 2 * linear_bytes(i, h, fmt(Role::RoutedExpert))
        + linear_bytes(h, i, fmt(Role::RoutedExpert));
    let moe = c.num_moe_layers() as u64;
    let all = weight_bytes(c, spec);
    let embed = linear_bytes(c.vocab_size as u64, h, None);
    let routed_all = moe * c.num_local_experts as u64 * expert;
    let fixed = all - embed - routed_all + batch as u64 * 2 * h;
    let e = c.num_local_experts.max(1) as f64;
    let k = c.num_experts_per_tok as f64;
    let distinct = e * (1.0 - (1.0 - k / e).powi(batch as i32));
    let routed = (moe as f64 * distinct * expert as f64) as u64;
    let per = kv_bytes_per_token_layer(c, kv_dtype.bytes() as u64);
    let nope = c.num_nope_layers() as u64;
    let rope = c.layers.len() as u64 - nope;
    let in_chunk = ((context.max(1) - 1) % c.attention_chunk_size + 1) as u64;
    let kv = batch as u64 * per * (nope * context as u64 + rope * in_chunk);
    DecodeBytes {
        fixed_weights: fixed,
        routed_weights: routed,
        kv,
    }
}
