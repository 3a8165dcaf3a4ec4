//! Shared by the checkpoint tests: random tiny models and safetensors helpers (the generator is
//! tests/common/rng.rs).
#![allow(dead_code)]

use llama4_cuda::model::config::Config;
use llama4_cuda::model::weights::{Ffn, LayerWeights, Weights};
use llama4_cuda::quant::{DenseWeight, Weight};
use llama4_cuda::reference::moe::SwiGlu;

#[path = "../common/rng.rs"]
mod rng;
pub use rng::Rng;

pub fn dense(rng: &mut Rng, n: usize, k: usize, bf16: bool) -> DenseWeight {
    DenseWeight {
        n,
        k,
        data: rng.nonzero_vec(n * k, bf16),
    }
}

fn lin(rng: &mut Rng, n: usize, k: usize, bf16: bool) -> Weight {
    Weight::Dense(dense(rng, n, k, bf16))
}

fn mlp(rng: &mut Rng, inter: usize, h: usize, bf16: bool) -> SwiGlu {
    SwiGlu {
        gate: lin(rng, inter, h, bf16),
        up: lin(rng, inter, h, bf16),
        down: lin(rng, h, inter, bf16),
    }
}

fn norm(rng: &mut Rng, h: usize, bf16: bool) -> Vec<f32> {
    let round = |x: f32| {
        if bf16 {
            half::bf16::from_f32(x).to_f32()
        } else {
            x
        }
    };
    rng.nonzero_vec(h, false)
        .into_iter()
        .map(|x| round(1.0 + 0.25 * x))
        .collect()
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
                    experts: (0..cfg.num_local_experts)
                        .map(|_| mlp(rng, cfg.intermediate_size, h, bf16))
                        .collect(),
                    shared: mlp(rng, cfg.intermediate_size, h, bf16),
                }
            } else {
                Ffn::Dense(mlp(rng, cfg.intermediate_size_mlp, h, bf16))
            },
        })
        .collect();
    let embed = dense(rng, cfg.vocab_size, h, bf16);
    let lm_head = if cfg.tie_word_embeddings {
        Weight::Dense(embed.clone())
    } else {
        lin(rng, cfg.vocab_size, h, bf16)
    };
    Weights {
        embed,
        layers,
        norm: norm(rng, h, bf16),
        lm_head,
    }
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

/// A fresh seed per run (printed, so a failure can be replayed with `L4C_TEST_SEED`).
pub fn seed() -> u64 {
    rng::fresh_seed()
}

/// One owned tensor of a safetensors file.
pub struct Tensor {
    pub name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Every tensor of a safetensors file.
pub fn read_tensors(path: &std::path::Path) -> Vec<Tensor> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<Tensor> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| Tensor {
            name,
            dtype: t.dtype(),
            shape: t.shape().to_vec(),
            data: t.data().to_vec(),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Writes tensors as a safetensors file.
pub fn write_tensors(path: &std::path::Path, tensors: &[Tensor]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// f32 values as bf16 bytes.
pub fn bf16_bytes(x: &[f32]) -> Vec<u8> {
    x.iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
        .collect()
}

/// Edits a JSON file in place.
pub fn edit_json(path: &std::path::Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Asserts two models are equal, naming the first weight that differs (not printing megabytes).
pub fn assert_same(got: &Weights, want: &Weights, what: &str) {
    let first = || -> Option<String> {
        if got.embed != want.embed {
            return Some("embed".into());
        }
        if got.norm != want.norm {
            return Some("norm".into());
        }
        if got.lm_head != want.lm_head {
            return Some("lm_head".into());
        }
        if got.layers.len() != want.layers.len() {
            return Some(format!(
                "{} layers vs {}",
                got.layers.len(),
                want.layers.len()
            ));
        }
        for (l, (a, b)) in got.layers.iter().zip(&want.layers).enumerate() {
            let pairs = [
                ("q", &a.q, &b.q),
                ("k", &a.k, &b.k),
                ("v", &a.v, &b.v),
                ("o", &a.o, &b.o),
            ];
            for (name, x, y) in pairs {
                if x != y {
                    return Some(format!("layer {l} {name}: {}", kind(x, y)));
                }
            }
            if a.input_norm != b.input_norm || a.post_attention_norm != b.post_attention_norm {
                return Some(format!("layer {l} norms"));
            }
            match (&a.ffn, &b.ffn) {
                (
                    Ffn::Moe {
                        router: r1,
                        experts: e1,
                        shared: s1,
                    },
                    Ffn::Moe {
                        router: r2,
                        experts: e2,
                        shared: s2,
                    },
                ) => {
                    if r1 != r2 {
                        return Some(format!("layer {l} router"));
                    }
                    let mlps = e1
                        .iter()
                        .zip(e2)
                        .enumerate()
                        .map(|(e, p)| (format!("expert {e}"), p));
                    for (name, (m1, m2)) in mlps.chain([("shared".to_string(), (s1, s2))]) {
                        for (part, x, y) in [
                            ("gate", &m1.gate, &m2.gate),
                            ("up", &m1.up, &m2.up),
                            ("down", &m1.down, &m2.down),
                        ] {
                            if x != y {
                                return Some(format!("layer {l} {name} {part}: {}", kind(x, y)));
                            }
                        }
                    }
                }
                (Ffn::Dense(m1), Ffn::Dense(m2)) => {
                    if m1 != m2 {
                        return Some(format!("layer {l} dense MLP"));
                    }
                }
                _ => return Some(format!("layer {l} ffn kind")),
            }
        }
        None
    };
    if let Some(diff) = first() {
        panic!("{what}: weights differ at {diff}");
    }
    // Whatever the walk above may miss (a field added later).
    assert!(got == want, "{what}: weights differ");
}

fn kind(a: &Weight, b: &Weight) -> String {
    let k = |w: &Weight| match w {
        Weight::Dense(_) => "dense",
        Weight::Int4(_) => "int4",
        Weight::Fp8(_) => "fp8",
    };
    format!("{} vs {}", k(a), k(b))
}
