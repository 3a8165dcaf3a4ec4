//! What gets quantized, and `llama4 quantize`: a streaming checkpoint-to-checkpoint quantizer.
//! OWNER: checkpoint helper.
use std::path::Path;

use crate::error::{Error, Result};
use crate::quant::{Fp8Scaling, Fp8Weight, Int4Config, Int4Weight, Weight};

/// The quantized format of the weights a [`QuantizeSpec`] selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantFormat {
    /// Group-wise int4 along K (Meta's recipe: group 128, symmetric, bf16 scales).
    Int4(Int4Config),
    /// fp8 e4m3, one scale per output channel.
    Fp8,
}

/// Which weights are quantized, and to what. Everything not selected stays dense (f32 on the CPU).
/// The router and the embeddings are never quantized (the router's logits pick the experts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantizeSpec {
    pub format: QuantFormat,
    /// The routed experts of MoE layers.
    pub routed_experts: bool,
    /// The shared expert of MoE layers.
    pub shared_expert: bool,
    /// The dense SwiGLU MLP of non-MoE layers (Maverick's even layers).
    pub dense_mlp: bool,
    /// q, k, v, o projections.
    pub attention: bool,
    /// The output projection.
    pub lm_head: bool,
}

impl QuantizeSpec {
    /// Meta's recipe: routed and shared experts quantized; attention, router, dense MLP, embeddings,
    /// norms and lm_head dense.
    pub fn meta(format: QuantFormat) -> Self {
        QuantizeSpec {
            format,
            routed_experts: true,
            shared_expert: true,
            dense_mlp: false,
            attention: false,
            lm_head: false,
        }
    }
    /// Meta's recipe in int4 (group 128, symmetric, bf16 scales).
    pub fn int4() -> Self {
        Self::meta(QuantFormat::Int4(Int4Config::default()))
    }
    /// Meta's recipe in fp8 (per output channel).
    pub fn fp8() -> Self {
        Self::meta(QuantFormat::Fp8)
    }
    /// `"int4"` or `"fp8"` (Meta's recipe), as the command line spells them.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "int4" => Ok(Self::int4()),
            "fp8" => Ok(Self::fp8()),
            other => Err(Error::invalid(
                "quantize",
                format!("unknown format `{other}` (expected int4 or fp8)"),
            )),
        }
    }
}

/// Quantizes a dense f32 `[n, k]` weight into `format`.
pub fn quantize_weight(w: &[f32], n: usize, k: usize, format: &QuantFormat) -> Result<Weight> {
    Ok(match format {
        QuantFormat::Int4(cfg) => Weight::Int4(Int4Weight::quantize(w, n, k, *cfg)?),
        QuantFormat::Fp8 => Weight::Fp8(Fp8Weight::quantize(w, n, k, Fp8Scaling::PerChannel)?),
    })
}

/// Options of [`quantize_checkpoint`].
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub spec: QuantizeSpec,
    /// Largest shard written, in bytes (a tensor larger than this gets a shard of its own).
    pub shard_bytes: u64,
    /// Show an indicatif progress bar on stderr.
    pub progress: bool,
}

impl QuantizeOptions {
    /// Default shard size: 4 GiB.
    pub const DEFAULT_SHARD_BYTES: u64 = 4 << 30;
    pub fn new(spec: QuantizeSpec) -> Self {
        QuantizeOptions {
            spec,
            shard_bytes: Self::DEFAULT_SHARD_BYTES,
            progress: false,
        }
    }
}

/// Reads the checkpoint in `src`, quantizes it tensor by tensor as `opts.spec` says and writes a
/// checkpoint in `dst` (docs/FORMATS.md) that [`crate::model::checkpoint::load_model`] reads back
/// into exactly the weights quantize-on-load gives. Returns the bytes of tensor data written.
pub fn quantize_checkpoint(src: &Path, dst: &Path, opts: &QuantizeOptions) -> Result<u64> {
    let _ = (src, dst, opts);
    todo!("checkpoint helper")
}
