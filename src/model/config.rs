//! Llama 4 text configuration, read from either config.json shape (LLAMA4.md).
//!
//! Keys absent from the file take transformers' `Llama4TextConfig` defaults (the Scout values:
//! vocab 202048, hidden 5120, 48 layers, 40/8 heads, head_dim 128, intermediate 8192 / 16384, 16 experts,
//! top-1, interleave 1, rope_theta 500000, chunk 8192, qk norm on, temperature tuning on with floor 8192
//! and scale 0.1, eps 1e-5, max positions 131072, bos 1, eos 2, untied embeddings), and what is derived
//! is derived as transformers does: `moe_layers = range(step - 1, L, step)`, `no_rope_layers[i] =
//! (i + 1) % no_rope_layer_interval != 0` when missing or empty, `layer_types` from `no_rope_layers`.
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::reference::rope::Llama3Scaling;

mod derive;
mod json;
use derive::{read_layers, read_rope};
pub(crate) use json::{f32_value, Obj};

/// What one decoder layer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerKind {
    /// RoPE + chunked-local attention (`no_rope_layers[i] == 1`); false = NoPE global attention.
    pub rope: bool,
    /// MoE feed-forward; false = dense SwiGLU MLP.
    pub moe: bool,
}

/// The text model's configuration, with everything derived that the file may leave out.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// Each routed expert and the shared expert.
    pub intermediate_size: usize,
    /// Dense MLP layers.
    pub intermediate_size_mlp: usize,
    pub num_local_experts: usize,
    pub num_experts_per_tok: usize,
    pub rope_theta: f32,
    pub rope_scaling: Option<Llama3Scaling>,
    pub attention_chunk_size: usize,
    pub use_qk_norm: bool,
    pub attn_temperature_tuning: bool,
    pub floor_scale: f32,
    pub attn_scale: f32,
    pub rms_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// One entry per layer.
    pub layers: Vec<LayerKind>,
}

/// Sampling defaults from generation_config.json.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationConfig {
    pub bos_token_id: Option<u32>,
    /// Empty when the file names none.
    pub eos_token_ids: Vec<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub do_sample: Option<bool>,
}

/// Reads and parses a JSON file: a missing file or broken JSON is an [`Error::Checkpoint`] naming it.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::checkpoint(path, "file not found"));
        }
        Err(source) => {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_str(&text).map_err(|e| Error::checkpoint(path, format!("invalid JSON: {e}")))
}

impl Config {
    /// Reads `config.json` (either shape) and validates it.
    pub fn from_file(path: &Path) -> Result<Config> {
        Self::from_json(&read_json(path)?)
    }

    /// Parses either config.json shape: the released multimodal wrapper (`text_config` nested) or the
    /// flat text-only export. Validates the result ([`Config::validate`]).
    pub fn from_json(v: &Value) -> Result<Config> {
        let top = v
            .as_object()
            .ok_or_else(|| Error::config("config.json", v, "expected a JSON object"))?;
        let top = Obj { map: top, path: "" };
        let tc = match top.obj_opt("text_config")? {
            Some(m) => Obj {
                map: m,
                path: "text_config",
            },
            None => top,
        };
        if let Some(mt) = tc.str_opt("model_type")? {
            if !matches!(mt, "llama4" | "llama4_text") {
                return Err(Error::config(
                    tc.name("model_type"),
                    mt,
                    "not a Llama 4 model",
                ));
            }
        }
        if let Some(act) = tc.str_opt("hidden_act")? {
            if act != "silu" {
                return Err(Error::config(
                    tc.name("hidden_act"),
                    act,
                    "only silu is supported",
                ));
            }
        }
        if tc.bool_or("attention_bias", false)? {
            return Err(Error::config(
                tc.name("attention_bias"),
                true,
                "attention biases are not supported",
            ));
        }

        let num_hidden_layers = tc.usize_or("num_hidden_layers", 48)?;
        let hidden_size = tc.usize_or("hidden_size", 5120)?;
        let num_attention_heads = tc.usize_or("num_attention_heads", 40)?;
        let head_dim = match tc.map.get("head_dim") {
            Some(Value::Null) => hidden_size.checked_div(num_attention_heads).unwrap_or(0),
            _ => tc.usize_or("head_dim", 128)?,
        };
        let (rope_theta, rope_scaling) = read_rope(&tc)?;
        let attention_chunk_size = match tc.map.get("attention_chunk_size") {
            Some(Value::Null) => {
                return Err(Error::config(
                    tc.name("attention_chunk_size"),
                    "null",
                    "chunked layers need a chunk size",
                ))
            }
            _ => tc.usize_or("attention_chunk_size", 8192)?,
        };
        // bos / eos / tying may sit in text_config or at the top of the wrapper.
        let either_ids = |key: &str| -> Result<Option<Vec<u32>>> {
            match tc.token_ids_opt(key)? {
                Some(ids) => Ok(Some(ids)),
                None => top.token_ids_opt(key),
            }
        };
        let bos_token_id = match either_ids("bos_token_id")? {
            Some(ids) if ids.len() == 1 => Some(ids[0]),
            Some(ids) => {
                return Err(Error::config(
                    tc.name("bos_token_id"),
                    format!("{ids:?}"),
                    "expected one token id",
                ))
            }
            None if tc.map.contains_key("bos_token_id") || top.map.contains_key("bos_token_id") => {
                None
            }
            None => Some(1),
        };
        let eos_token_ids = match either_ids("eos_token_id")? {
            Some(ids) => ids,
            None if tc.map.contains_key("eos_token_id") || top.map.contains_key("eos_token_id") => {
                Vec::new()
            }
            None => vec![2],
        };
        let tie_word_embeddings = match tc.get("tie_word_embeddings") {
            Some(_) => tc.bool_or("tie_word_embeddings", false)?,
            None => top.bool_or("tie_word_embeddings", false)?,
        };

        let cfg = Config {
            vocab_size: tc.usize_or("vocab_size", 202048)?,
            hidden_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: tc.usize_or("num_key_value_heads", 8)?,
            head_dim,
            intermediate_size: tc.usize_or("intermediate_size", 8192)?,
            intermediate_size_mlp: tc.usize_or("intermediate_size_mlp", 16384)?,
            num_local_experts: tc.usize_or("num_local_experts", 16)?,
            num_experts_per_tok: tc.usize_or("num_experts_per_tok", 1)?,
            rope_theta,
            rope_scaling,
            attention_chunk_size,
            use_qk_norm: tc.bool_or("use_qk_norm", true)?,
            attn_temperature_tuning: tc.bool_or("attn_temperature_tuning", true)?,
            floor_scale: tc.f32_or("floor_scale", 8192.0)?,
            attn_scale: tc.f32_or("attn_scale", 0.1)?,
            rms_norm_eps: tc.f32_or("rms_norm_eps", 1e-5)?,
            max_position_embeddings: tc.usize_or("max_position_embeddings", 4096 * 32)?,
            tie_word_embeddings,
            bos_token_id,
            eos_token_ids,
            layers: read_layers(&tc, num_hidden_layers)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The flat text-only config.json shape (`Llama4ForCausalLM`, explicit `layer_types`, `moe_layers`,
    /// `no_rope_layers` and `rope_parameters`); [`Config::from_json`] reads it back to an equal Config.
    pub fn to_json(&self) -> Value {
        let mut rope = Map::new();
        rope.insert("rope_theta".into(), f32_value(self.rope_theta));
        match &self.rope_scaling {
            None => {
                rope.insert("rope_type".into(), json!("default"));
            }
            Some(s) => {
                rope.insert("rope_type".into(), json!("llama3"));
                rope.insert("factor".into(), f32_value(s.factor));
                rope.insert("low_freq_factor".into(), f32_value(s.low_freq_factor));
                rope.insert("high_freq_factor".into(), f32_value(s.high_freq_factor));
                rope.insert(
                    "original_max_position_embeddings".into(),
                    f32_value(s.original_max_position_embeddings),
                );
            }
        }
        let moe_layers: Vec<usize> = (0..self.layers.len())
            .filter(|&i| self.layers[i].moe)
            .collect();
        json!({
            "architectures": ["Llama4ForCausalLM"],
            "model_type": "llama4_text",
            "hidden_act": "silu",
            "attention_bias": false,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "intermediate_size_mlp": self.intermediate_size_mlp,
            "num_local_experts": self.num_local_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "rope_theta": f32_value(self.rope_theta),
            "rope_parameters": Value::Object(rope),
            "attention_chunk_size": self.attention_chunk_size,
            "use_qk_norm": self.use_qk_norm,
            "attn_temperature_tuning": self.attn_temperature_tuning,
            "floor_scale": f32_value(self.floor_scale),
            "attn_scale": f32_value(self.attn_scale),
            "rms_norm_eps": f32_value(self.rms_norm_eps),
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids,
            "no_rope_layers": self.layers.iter().map(|l| u8::from(l.rope)).collect::<Vec<_>>(),
            "layer_types": self.layers.iter()
                .map(|l| if l.rope { "chunked_attention" } else { "full_attention" }).collect::<Vec<_>>(),
            "moe_layers": moe_layers,
        })
    }

    /// Refuses a configuration no implementation can run: zero sizes, heads not a multiple of KV
    /// heads, an odd head_dim (RoPE rotates pairs), top-k above the experts, layer lists of the wrong
    /// length, non-positive eps / theta / scaling values. Errors name the key and the value.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("attention_chunk_size", self.attention_chunk_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(Error::config(key, v, "must be positive"));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(Error::config(
                "num_attention_heads",
                self.num_attention_heads,
                format!(
                    "not a multiple of num_key_value_heads = {}",
                    self.num_key_value_heads
                ),
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(Error::config(
                "head_dim",
                self.head_dim,
                "must be even (RoPE rotates pairs)",
            ));
        }
        if self.layers.len() != self.num_hidden_layers {
            return Err(Error::config(
                "layers",
                self.layers.len(),
                format!(
                    "one kind per layer expected, num_hidden_layers = {}",
                    self.num_hidden_layers
                ),
            ));
        }
        if self.layers.iter().any(|l| l.moe) {
            for (key, v) in [
                ("num_local_experts", self.num_local_experts),
                ("num_experts_per_tok", self.num_experts_per_tok),
                ("intermediate_size", self.intermediate_size),
            ] {
                if v == 0 {
                    return Err(Error::config(
                        key,
                        v,
                        "must be positive when there are MoE layers",
                    ));
                }
            }
            if self.num_experts_per_tok > self.num_local_experts {
                return Err(Error::config(
                    "num_experts_per_tok",
                    self.num_experts_per_tok,
                    format!("exceeds num_local_experts = {}", self.num_local_experts),
                ));
            }
        }
        if self.layers.iter().any(|l| !l.moe) && self.intermediate_size_mlp == 0 {
            return Err(Error::config(
                "intermediate_size_mlp",
                0,
                "must be positive when there are dense layers",
            ));
        }
        let mut floats = vec![
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
        ];
        if self.attn_temperature_tuning {
            floats.push(("floor_scale", self.floor_scale));
        }
        if let Some(s) = &self.rope_scaling {
            floats.extend([
                ("rope_scaling.factor", s.factor),
                ("rope_scaling.low_freq_factor", s.low_freq_factor),
                ("rope_scaling.high_freq_factor", s.high_freq_factor),
                (
                    "rope_scaling.original_max_position_embeddings",
                    s.original_max_position_embeddings,
                ),
            ]);
        }
        for (key, v) in floats {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::config(key, v, "must be a positive finite number"));
            }
        }
        if !self.attn_scale.is_finite() {
            return Err(Error::config(
                "attn_scale",
                self.attn_scale,
                "must be finite",
            ));
        }
        Ok(())
    }

    /// The GPU kernels' limits on top of [`Config::validate`]: head_dim 128 and top-k at most 8.
    /// The CPU path takes any consistent shape.
    pub fn validate_for_gpu(&self) -> Result<()> {
        self.validate()?;
        if self.head_dim != 128 {
            return Err(Error::config(
                "head_dim",
                self.head_dim,
                "the GPU kernels support head_dim 128 only",
            ));
        }
        if self.num_experts_per_tok > 8 {
            return Err(Error::config(
                "num_experts_per_tok",
                self.num_experts_per_tok,
                "the GPU kernels support top-k up to 8",
            ));
        }
        Ok(())
    }

    /// Number of MoE layers.
    pub fn num_moe_layers(&self) -> usize {
        self.layers.iter().filter(|l| l.moe).count()
    }

    /// Number of NoPE (global attention) layers.
    pub fn num_nope_layers(&self) -> usize {
        self.layers.iter().filter(|l| !l.rope).count()
    }
}

impl GenerationConfig {
    /// Parses generation_config.json (eos may be an id or a list).
    pub fn from_json(v: &Value) -> Result<Self> {
        let map = v
            .as_object()
            .ok_or_else(|| Error::config("generation_config", v, "expected a JSON object"))?;
        let o = Obj {
            map,
            path: "generation_config",
        };
        let bos = o.token_ids_opt("bos_token_id")?;
        let float = |key: &str| -> Result<Option<f32>> {
            o.get(key).map(|_| o.f32_or(key, 0.0)).transpose()
        };
        Ok(GenerationConfig {
            bos_token_id: bos.and_then(|ids| ids.first().copied()),
            eos_token_ids: o.token_ids_opt("eos_token_id")?.unwrap_or_default(),
            temperature: float("temperature")?,
            top_p: float("top_p")?,
            top_k: o.get("top_k").map(|_| o.usize_or("top_k", 0)).transpose()?,
            do_sample: o
                .get("do_sample")
                .map(|_| o.bool_or("do_sample", false))
                .transpose()?,
        })
    }

    /// Reads `dir/generation_config.json`; `None` when the file does not exist.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("generation_config.json");
        if !path.exists() {
            return Ok(None);
        }
        Self::from_json(&read_json(&path)?).map(Some)
    }
}
