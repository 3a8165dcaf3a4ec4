//! In-memory weights of a Llama 4 text model, in the library's layout (every linear `[out, in]`).
use crate::quant::{DenseWeight, Weight};
use crate::reference::moe::SwiGlu;

/// The feed-forward part of a layer.
#[derive(Clone, Debug, PartialEq)]
pub enum Ffn {
    /// Dense SwiGLU MLP (intermediate_size_mlp).
    Dense(SwiGlu),
    /// MoE: router `[experts, hidden]` (kept dense), routed experts, the shared expert.
    Moe {
        router: DenseWeight,
        experts: Vec<SwiGlu>,
        shared: SwiGlu,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct LayerWeights {
    pub input_norm: Vec<f32>,
    pub post_attention_norm: Vec<f32>,
    pub q: Weight,
    pub k: Weight,
    pub v: Weight,
    pub o: Weight,
    pub ffn: Ffn,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    /// `[vocab, hidden]`.
    pub embed: DenseWeight,
    pub layers: Vec<LayerWeights>,
    pub norm: Vec<f32>,
    /// `[vocab, hidden]`.
    pub lm_head: Weight,
}
