//! Shared by the checkpoint tests: a seeded generator and random tiny models.
#![allow(dead_code)]

use llama4_cuda::model::config::Config;
use llama4_cuda::model::weights::{Ffn, LayerWeights, Weights};
use llama4_cuda::quant::{DenseWeight, Weight};
use llama4_cuda::reference::moe::SwiGlu;

/// splitmix64: small, seeded, good enough for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1), never exactly 0.
    pub fn f32(&mut self) -> f32 {
        let x = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        if x == 0.0 {
            0.5
        } else {
            x
        }
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// `len` values; rounded to bf16 when `bf16` (so a bf16 checkpoint holds them exactly).
    pub fn vec(&mut self, len: usize, bf16: bool) -> Vec<f32> {
        (0..len)
            .map(|_| {
                let x = self.f32();
                if bf16 {
                    half::bf16::from_f32(x).to_f32()
                } else {
                    x
                }
            })
            .collect()
    }
}

pub fn dense(rng: &mut Rng, n: usize, k: usize, bf16: bool) -> DenseWeight {
    DenseWeight { n, k, data: rng.vec(n * k, bf16) }
}

fn lin(rng: &mut Rng, n: usize, k: usize, bf16: bool) -> Weight {
    Weight::Dense(dense(rng, n, k, bf16))
}

fn mlp(rng: &mut Rng, inter: usize, h: usize, bf16: bool) -> SwiGlu {
    SwiGlu { gate: lin(rng, inter, h, bf16), up: lin(rng, inter, h, bf16), down: lin(rng, h, inter, bf16) }
}

fn norm(rng: &mut Rng, h: usize, bf16: bool) -> Vec<f32> {
    rng.vec(h, bf16).into_iter().map(|x| 1.0 + 0.25 * x).collect()
}

/// A dense random model of `cfg`'s shapes (values exactly bf16 when `bf16`).
pub fn random_weights(cfg: &Config, seed: u64, bf16: bool) -> Weights {
    let rng = &mut Rng(seed);
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    let (qd, kvd) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
    let layers = cfg
        .layers
        .iter()
        .map(|kind| LayerWeights {
            input_norm: norm(rng, h, bf16),
            post_attention_norm: norm(rng, h, bf16),
            q: lin(rng, qd, h, bf16),
            k: lin(rng, kvd, h, bf16),
            v: lin(rng, kvd, h, bf16),
            o: lin(rng, h, qd, bf16),
            ffn: if kind.moe {
                Ffn::Moe {
                    router: dense(rng, cfg.num_local_experts, h, bf16),
                    experts: (0..cfg.num_local_experts).map(|_| mlp(rng, cfg.intermediate_size, h, bf16)).collect(),
                    shared: mlp(rng, cfg.intermediate_size, h, bf16),
                }
            } else {
                Ffn::Dense(mlp(rng, cfg.intermediate_size_mlp, h, bf16))
            },
        })
        .collect();
    let embed = dense(rng, cfg.vocab_size, h, bf16);
    let lm_head = if cfg.tie_word_embeddings { Weight::Dense(embed.clone()) } else { lin(rng, cfg.vocab_size, h, bf16) };
    Weights { embed, layers, norm: norm(rng, h, bf16), lm_head }
}

/// A smaller tiny config than `Config::tiny()` where tests build many checkpoints: hidden 32,
/// intermediate 16 / 24, vocab 64, 3 experts.
pub fn small_config() -> Config {
    let mut c = Config::tiny();
    c.hidden_size = 32;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 8;
    c.intermediate_size = 16;
    c.intermediate_size_mlp = 24;
    c.num_local_experts = 3;
    c.vocab_size = 64;
    c
}
