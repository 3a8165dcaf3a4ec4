//! Checkpoints: memory-mapped safetensors (one file or sharded through model.safetensors.index.json),
//! Hugging Face names with or without the `language_model.` prefix, bf16 / f16 / f32, Meta's FP8
//! (compressed-tensors) and this library's quantized format (docs/FORMATS.md). Every tensor is checked
//! against the config (present, shape, dtype) when the checkpoint is opened, before any is read.
//! OWNER: checkpoint helper.
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::model::config::{Config, GenerationConfig};
use crate::model::quantize::QuantizeSpec;
use crate::model::weights::{LayerWeights, Weights};
use crate::quant::{DenseWeight, Weight};

/// How [`load_model`] loads.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Quantize on load (weights already stored in the target format are kept as they are).
    pub quantize: Option<QuantizeSpec>,
    /// Show an indicatif progress bar on stderr.
    pub progress: bool,
}

/// How [`write_checkpoint_with`] writes.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// Largest shard, in bytes; more than one shard adds model.safetensors.index.json.
    pub shard_bytes: u64,
    pub progress: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            shard_bytes: 4 << 30,
            progress: false,
        }
    }
}

/// An opened, validated checkpoint directory: its config, and every tensor resolved and checked.
pub struct Checkpoint {
    dir: PathBuf,
    config: Config,
    generation: Option<GenerationConfig>,
}

impl Checkpoint {
    /// Reads config.json (and generation_config.json when present), maps the safetensors file(s) and
    /// checks every tensor the config needs (present, shape, dtype) without reading tensor data.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let _ = dir;
        todo!("checkpoint helper")
    }
    /// The directory it was opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The model configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// generation_config.json, when the directory has one.
    pub fn generation_config(&self) -> Option<&GenerationConfig> {
        self.generation.as_ref()
    }
    /// `[vocab, hidden]` token embeddings (always dense).
    pub fn load_embed(&self) -> Result<DenseWeight> {
        todo!("checkpoint helper")
    }
    /// The final RMSNorm weight `[hidden]`.
    pub fn load_final_norm(&self) -> Result<Vec<f32>> {
        todo!("checkpoint helper")
    }
    /// The output projection `[vocab, hidden]` (the embeddings when tied).
    pub fn load_lm_head(&self, spec: Option<&QuantizeSpec>) -> Result<Weight> {
        let _ = spec;
        todo!("checkpoint helper")
    }
    /// One decoder layer, quantized as `spec` says.
    pub fn load_layer(&self, layer: usize, spec: Option<&QuantizeSpec>) -> Result<LayerWeights> {
        let _ = (layer, spec);
        todo!("checkpoint helper")
    }
    /// All weights.
    pub fn load(&self, opts: &LoadOptions) -> Result<Weights> {
        let _ = opts;
        todo!("checkpoint helper")
    }
}

/// Opens `dir` and loads every weight: the entry point of the model.
pub fn load_model(dir: &Path, opts: &LoadOptions) -> Result<(Config, Weights)> {
    let ck = Checkpoint::open(dir)?;
    let weights = ck.load(opts)?;
    Ok((ck.config, weights))
}

/// Writes `config` and `weights` as a checkpoint directory (config.json + model.safetensors) that
/// [`load_model`] reads back to equal weights: dense weights in Hugging Face names and layout (bf16
/// when every value is exactly bf16, else f32; routed experts fused as `experts.gate_up_proj` /
/// `experts.down_proj` when all are dense), quantized ones in this library's format.
pub fn write_checkpoint(dir: &Path, config: &Config, weights: &Weights) -> Result<()> {
    write_checkpoint_with(dir, config, weights, &WriteOptions::default())
}

/// [`write_checkpoint`] with explicit options (sharding).
pub fn write_checkpoint_with(
    dir: &Path,
    config: &Config,
    weights: &Weights,
    opts: &WriteOptions,
) -> Result<()> {
    let _ = (dir, config, weights, opts);
    todo!("checkpoint helper")
}
