//! Checkpoints: memory-mapped safetensors (one file or sharded through model.safetensors.index.json),
//! Hugging Face names with or without the `language_model.` prefix, bf16 / f16 / f32, Meta's FP8
//! (compressed-tensors) and this library's quantized format (docs/FORMATS.md). Every tensor is checked
//! against the config (present, shape, dtype) when the checkpoint is opened, before any is read.
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::config::{read_json, Config, GenerationConfig};
use crate::model::quantize::QuantizeSpec;
use crate::model::weights::{Ffn, LayerWeights, Weights};
use crate::quant::{DenseWeight, Weight};
use crate::reference::moe::SwiGlu;

mod files;
mod names;
mod qconfig;
mod read;
mod source;
mod write_model;
mod writer;

pub(crate) use files::{Files, TensorLoc};
pub(crate) use names::Naming;
pub(crate) use qconfig::{our_config, StoredQuant};
pub(crate) use read::read_linear;
pub(crate) use source::{FfnSrc, Lin, MlpSrc, ModelSrc, Role, Src};
pub(crate) use writer::{encode_weight, write_json, write_units, Planned, Stored, Unit};

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
    files: Files,
    src: ModelSrc,
}

impl Checkpoint {
    /// Reads config.json (and generation_config.json when present), maps the safetensors file(s) and
    /// checks every tensor the config needs (present, shape, dtype) without reading tensor data.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        if !dir.is_dir() {
            return Err(Error::checkpoint(dir, "not a directory"));
        }
        let json = read_json(&dir.join("config.json"))?;
        let config = Config::from_json(&json)?;
        let stored = StoredQuant::parse(&json)?;
        let generation = GenerationConfig::load(dir)?;
        let files = Files::open(dir)?;
        let src = source::resolve(&files, &config, &stored)?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            generation,
            files,
            src,
        })
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
        Ok(to_dense(read_linear(&self.files, &self.src.embed)?))
    }
    /// The final RMSNorm weight `[hidden]`.
    pub fn load_final_norm(&self) -> Result<Vec<f32>> {
        read::read_vector(&self.files, &self.src.norm)
    }
    /// The output projection `[vocab, hidden]` (the embeddings when tied).
    pub fn load_lm_head(&self, spec: Option<&QuantizeSpec>) -> Result<Weight> {
        self.load_lin(&self.src.lm_head, spec)
    }
    /// One decoder layer, quantized as `spec` says.
    pub fn load_layer(&self, layer: usize, spec: Option<&QuantizeSpec>) -> Result<LayerWeights> {
        let l = self.src.layers.get(layer).ok_or_else(|| {
            Error::invalid(
                "load checkpoint",
                format!("layer {layer} of {}", self.src.layers.len()),
            )
        })?;
        let [q, k, v, o] = [0, 1, 2, 3].map(|i| self.load_lin(&l.attn[i], spec));
        let ffn = match &l.ffn {
            FfnSrc::Dense(m) => Ffn::Dense(self.load_mlp(m, spec)?),
            FfnSrc::Moe {
                router,
                experts,
                shared,
                ..
            } => Ffn::Moe {
                router: to_dense(read_linear(&self.files, router)?),
                experts: experts
                    .par_iter()
                    .map(|m| self.load_mlp(m, spec))
                    .collect::<Result<_>>()?,
                shared: self.load_mlp(shared, spec)?,
            },
        };
        Ok(LayerWeights {
            input_norm: read::read_vector(&self.files, &l.input_norm)?,
            post_attention_norm: read::read_vector(&self.files, &l.post_norm)?,
            q: q?,
            k: k?,
            v: v?,
            o: o?,
            ffn,
        })
    }
    /// All weights.
    pub fn load(&self, opts: &LoadOptions) -> Result<Weights> {
        let spec = opts.quantize.as_ref();
        let bar = progress_bar(opts.progress, self.src.layers.len() as u64 + 2, "loading");
        let embed = self.load_embed()?;
        bar.inc(1);
        let mut layers = Vec::with_capacity(self.src.layers.len());
        for i in 0..self.src.layers.len() {
            layers.push(self.load_layer(i, spec)?);
            bar.inc(1);
        }
        let weights = Weights {
            embed,
            layers,
            norm: self.load_final_norm()?,
            lm_head: self.load_lm_head(spec)?,
        };
        bar.inc(1);
        bar.finish_and_clear();
        Ok(weights)
    }

    fn load_lin(&self, lin: &Lin, spec: Option<&QuantizeSpec>) -> Result<Weight> {
        finish(read_linear(&self.files, lin)?, lin.role, spec)
    }

    fn load_mlp(&self, m: &source::MlpSrc, spec: Option<&QuantizeSpec>) -> Result<SwiGlu> {
        let [gate, up, down] = read::read_mlp(&self.files, m)?;
        Ok(SwiGlu {
            gate: finish(gate, m.gate.role, spec)?,
            up: finish(up, m.up.role, spec)?,
            down: finish(down, m.down.role, spec)?,
        })
    }

    pub(crate) fn files(&self) -> &Files {
        &self.files
    }
    pub(crate) fn sources(&self) -> &ModelSrc {
        &self.src
    }
}

/// Applies quantize-on-load: a weight `spec` selects is quantized unless already in its format.
pub(crate) fn finish(mut w: Weight, role: Role, spec: Option<&QuantizeSpec>) -> Result<Weight> {
    if let Some(s) = spec {
        crate::model::quantize::apply_spec(s, role, &mut w)?;
    }
    Ok(w)
}

fn to_dense(w: Weight) -> DenseWeight {
    match w {
        Weight::Dense(d) => d,
        other => DenseWeight {
            n: other.n(),
            k: other.k(),
            data: other.dequantize(),
        },
    }
}

/// A progress bar on stderr, or a hidden one.
pub(crate) fn progress_bar(show: bool, len: u64, what: &'static str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} (eta {eta})")
    {
        bar.set_style(style);
    }
    bar.set_message(what);
    bar
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
/// `experts.down_proj` when all are dense), quantized ones in this library's format. With tied
/// embeddings no lm_head is written.
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
    write_model::write_model(dir, config, weights, opts)
}
