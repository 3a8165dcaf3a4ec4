//! Llama 4 text configuration, read from either config.json shape (LLAMA4.md). OWNER: checkpoint helper.
use crate::reference::rope::Llama3Scaling;

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
