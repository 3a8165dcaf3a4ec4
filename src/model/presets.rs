//! The released configurations (LLAMA4.md) and a tiny one for tests.
use crate::model::config::{Config, LayerKind};
use crate::reference::rope::Llama3Scaling;

impl Config {
    /// Llama 4 Scout 17B-16E Instruct: 16 experts, every layer MoE, qk norm, llama3 rope scaling
    /// (factor 16, low 1, high 1, original 8192), 10M-token context.
    pub fn scout() -> Config {
        Config {
            rope_scaling: Some(Llama3Scaling {
                factor: 16.0,
                low_freq_factor: 1.0,
                high_freq_factor: 1.0,
                original_max_position_embeddings: 8192.0,
            }),
            max_position_embeddings: 10_485_760,
            ..released(16, 1, true)
        }
    }

    /// Llama 4 Maverick 17B-128E Instruct: 128 experts on odd layers, dense MLP on even layers,
    /// no qk norm, no rope scaling, 1M-token context.
    pub fn maverick() -> Config {
        Config {
            rope_scaling: None,
            max_position_embeddings: 1_048_576,
            ..released(128, 2, false)
        }
    }

    /// A tiny random-test configuration with every layer kind: 4 layers (RoPE+MoE, RoPE+dense,
    /// RoPE+MoE, NoPE+dense), hidden 64, 4 heads over 2 KV heads of 16, 4 experts top-1,
    /// intermediate 32 / 48, vocab 256, chunk 8, llama3 scaling, qk norm, temperature tuning (floor 4).
    pub fn tiny() -> Config {
        let layers = (0..4)
            .map(|i| LayerKind {
                rope: (i + 1) % 4 != 0,
                moe: i % 2 == 0,
            })
            .collect();
        Config {
            vocab_size: 256,
            hidden_size: 64,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            intermediate_size: 32,
            intermediate_size_mlp: 48,
            num_local_experts: 4,
            num_experts_per_tok: 1,
            rope_theta: 10000.0,
            rope_scaling: Some(Llama3Scaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64.0,
            }),
            attention_chunk_size: 8,
            use_qk_norm: true,
            attn_temperature_tuning: true,
            floor_scale: 4.0,
            attn_scale: 0.1,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 4096,
            tie_word_embeddings: false,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            layers,
        }
    }
}

/// The numbers Scout and Maverick share; `step` = interleave_moe_layer_step.
fn released(experts: usize, step: usize, use_qk_norm: bool) -> Config {
    let layers = (0..48)
        .map(|i| LayerKind {
            rope: (i + 1) % 4 != 0,
            moe: (i + 1) % step == 0,
        })
        .collect();
    Config {
        vocab_size: 202_048,
        hidden_size: 5120,
        num_hidden_layers: 48,
        num_attention_heads: 40,
        num_key_value_heads: 8,
        head_dim: 128,
        intermediate_size: 8192,
        intermediate_size_mlp: 16384,
        num_local_experts: experts,
        num_experts_per_tok: 1,
        rope_theta: 500_000.0,
        rope_scaling: None,
        attention_chunk_size: 8192,
        use_qk_norm,
        attn_temperature_tuning: true,
        floor_scale: 8192.0,
        attn_scale: 0.1,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 1_048_576,
        tie_word_embeddings: false,
        bos_token_id: Some(200_000),
        eos_token_ids: vec![200_001, 200_007, 200_008],
        layers,
    }
}
