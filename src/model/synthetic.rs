//! The embedded default model: a small Scout-shaped configuration (every layer MoE, qk norm, llama3
//! RoPE scaling, a NoPE layer every 4th layer, chunked attention, temperature tuning) with
//! deterministic random weights made in memory from a seed. No download, runs in seconds on a CPU.
//! [`random_weights`] also gives any other configuration random weights (the tests' tiny models).
use super::backend::CpuBackend;
use super::config::{Config, LayerKind};
use super::forward::Model;
use super::sampling::Rng;
use super::weights::{Ffn, LayerWeights, Weights};
use crate::error::Result;
use crate::quant::{DenseWeight, Weight};
use crate::reference::moe::SwiGlu;
use crate::reference::rope::Llama3Scaling;

/// The seed of the embedded model's weights.
pub const SEED: u64 = 4;

/// The prompt `llama4 generate` uses with the embedded model when given none.
pub const DEFAULT_PROMPT: [u32; 8] = [1, 1543, 311, 1024, 97, 1999, 42, 650];

/// Scout's layer pattern for `layers` layers: NoPE on every 4th layer, every layer MoE when
/// `moe_step == 1` (Maverick: `moe_step == 2`, MoE on odd layers).
pub fn layer_kinds(layers: usize, moe_step: usize) -> Vec<LayerKind> {
    (0..layers)
        .map(|i| LayerKind {
            rope: (i + 1) % 4 != 0,
            moe: (i + 1) % moe_step == 0,
        })
        .collect()
}

/// The embedded model's configuration: Scout's structure at 8 layers and 256 hidden. The attention
/// chunk (32) and floor_scale (16) are small so that a short generation crosses chunk boundaries and
/// temperature thresholds.
pub fn config() -> Config {
    Config {
        vocab_size: 2048,
        hidden_size: 256,
        num_hidden_layers: 8,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 64,
        intermediate_size: 512,
        intermediate_size_mlp: 1024,
        num_local_experts: 4,
        num_experts_per_tok: 1,
        rope_theta: 500_000.0,
        rope_scaling: Some(Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        }),
        attention_chunk_size: 32,
        use_qk_norm: true,
        attn_temperature_tuning: true,
        floor_scale: 16.0,
        attn_scale: 0.1,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 4096,
        tie_word_embeddings: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        layers: layer_kinds(8, 1),
    }
}

/// The embedded default model on the CPU.
pub fn default_model() -> Result<Model<CpuBackend>> {
    let c = config();
    let w = random_weights(&c, SEED);
    Model::new(c, w, CpuBackend)
}

/// Deterministic random weights for any configuration: linears uniform with std `1/sqrt(in)` (so
/// activations keep their scale), norm weights near 1, embeddings uniform in [-1, 1).
pub fn random_weights(c: &Config, seed: u64) -> Weights {
    let mut rng = Rng::new(seed);
    let h = c.hidden_size;
    let (qd, kvd) = (
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
    );
    let layers = c
        .layers
        .iter()
        .map(|kind| {
            let ffn = if kind.moe {
                Ffn::Moe {
                    router: dense(&mut rng, c.num_local_experts, h),
                    experts: (0..c.num_local_experts)
                        .map(|_| mlp(&mut rng, h, c.intermediate_size))
                        .collect(),
                    shared: mlp(&mut rng, h, c.intermediate_size),
                }
            } else {
                Ffn::Dense(mlp(&mut rng, h, c.intermediate_size_mlp))
            };
            LayerWeights {
                input_norm: norm(&mut rng, h),
                post_attention_norm: norm(&mut rng, h),
                q: Weight::Dense(dense(&mut rng, qd, h)),
                k: Weight::Dense(dense(&mut rng, kvd, h)),
                v: Weight::Dense(dense(&mut rng, kvd, h)),
                o: Weight::Dense(dense(&mut rng, h, qd)),
                ffn,
            }
        })
        .collect();
    let embed = DenseWeight {
        n: c.vocab_size,
        k: h,
        data: (0..c.vocab_size * h).map(|_| rng.uniform(1.0)).collect(),
    };
    Weights {
        embed,
        layers,
        norm: norm(&mut rng, h),
        lm_head: Weight::Dense(dense(&mut rng, c.vocab_size, h)),
    }
}

/// Quantizes in-memory weights as `spec` selects (what quantize-on-load does to a checkpoint): the
/// one implementation, [`crate::model::quantize::quantize_weights`].
pub use super::quantize::quantize_weights as quantize;

fn dense(rng: &mut Rng, n: usize, k: usize) -> DenseWeight {
    let a = (3.0 / k as f32).sqrt();
    DenseWeight {
        n,
        k,
        data: (0..n * k).map(|_| rng.uniform(a)).collect(),
    }
}

fn mlp(rng: &mut Rng, hidden: usize, inter: usize) -> SwiGlu {
    SwiGlu {
        gate: Weight::Dense(dense(rng, inter, hidden)),
        up: Weight::Dense(dense(rng, inter, hidden)),
        down: Weight::Dense(dense(rng, hidden, inter)),
    }
}

fn norm(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| 1.0 + rng.uniform(0.2)).collect()
}
