//! config.json in both shapes, derivations as transformers does them, refusals, presets, and the
//! parameter / byte / KV counts against LLAMA4.md's tables.
use llama4_cuda::model::config::{Config, GenerationConfig, LayerKind};
use llama4_cuda::model::plan::{self, ParamCounts};
use llama4_cuda::model::quantize::{QuantFormat, QuantizeSpec};
use llama4_cuda::quant::{Int4Config, ScaleDType};
use llama4_cuda::Error;
use proptest::prelude::*;
use serde_json::{json, Value};

/// The text part of the released Scout Instruct config.json, wrapped as released (no layer_types,
/// no moe_layers; `attn_temperature_tuning` written as 4, as in the release).
fn released_scout() -> Value {
    json!({
        "architectures": ["Llama4ForConditionalGeneration"],
        "model_type": "llama4",
        "tie_word_embeddings": false,
        "text_config": {
            "model_type": "llama4_text",
            "attention_bias": false,
            "attention_chunk_size": 8192,
            "attn_scale": 0.1,
            "attn_temperature_tuning": 4,
            "bos_token_id": 200000,
            "eos_token_id": [200001, 200007, 200008],
            "floor_scale": 8192,
            "head_dim": 128,
            "hidden_act": "silu",
            "hidden_size": 5120,
            "interleave_moe_layer_step": 1,
            "intermediate_size": 8192,
            "intermediate_size_mlp": 16384,
            "max_position_embeddings": 10485760,
            "num_attention_heads": 40,
            "num_experts_per_tok": 1,
            "num_hidden_layers": 48,
            "num_key_value_heads": 8,
            "num_local_experts": 16,
            "no_rope_layers": [],
            "rms_norm_eps": 1e-05,
            "rope_scaling": {"factor": 16.0, "high_freq_factor": 1.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "rope_theta": 500000.0,
            "use_qk_norm": true,
            "vocab_size": 202048
        },
        "vision_config": {"hidden_size": 1408}
    })
}

/// Maverick as a flat text-only export with transformers 5.x's `rope_parameters` and explicit lists.
fn flat_maverick() -> Value {
    let layer_types: Vec<&str> = (0..48)
        .map(|i| {
            if (i + 1) % 4 != 0 {
                "chunked_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    let no_rope: Vec<u8> = (0..48).map(|i| u8::from((i + 1) % 4 != 0)).collect();
    json!({
        "architectures": ["Llama4ForCausalLM"],
        "model_type": "llama4_text",
        "hidden_size": 5120, "num_hidden_layers": 48, "num_attention_heads": 40, "num_key_value_heads": 8,
        "head_dim": 128, "intermediate_size": 8192, "intermediate_size_mlp": 16384,
        "num_local_experts": 128, "num_experts_per_tok": 1, "interleave_moe_layer_step": 2,
        "moe_layers": (0..48).filter(|i| i % 2 == 1).collect::<Vec<_>>(),
        "layer_types": layer_types, "no_rope_layers": no_rope,
        "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
        "use_qk_norm": false, "attention_chunk_size": 8192, "attn_temperature_tuning": true,
        "floor_scale": 8192, "attn_scale": 0.1, "rms_norm_eps": 1e-5, "vocab_size": 202048,
        "max_position_embeddings": 1048576, "tie_word_embeddings": false,
        "bos_token_id": 200000, "eos_token_id": [200001, 200007, 200008]
    })
}

/// Asserts a Config error whose key contains `key` and whose message shows `value`.
fn assert_config_err(v: &Value, key: &str, value: &str) {
    match Config::from_json(v) {
        Err(e @ Error::Config { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(key) && msg.contains(value),
                "message `{msg}` should name `{key}` and `{value}`"
            );
        }
        other => panic!("expected Error::Config naming {key}, got {other:?}"),
    }
}

#[test]
fn released_wrapper_reads_as_scout() {
    assert_eq!(
        Config::from_json(&released_scout()).unwrap(),
        Config::scout()
    );
    // Absent no_rope_layers derives the same NoPE pattern as an empty list.
    let mut v = released_scout();
    v["text_config"]
        .as_object_mut()
        .unwrap()
        .remove("no_rope_layers");
    assert_eq!(Config::from_json(&v).unwrap(), Config::scout());
}

#[test]
fn flat_export_reads_as_maverick() {
    assert_eq!(
        Config::from_json(&flat_maverick()).unwrap(),
        Config::maverick()
    );
    // Without moe_layers, interleave_moe_layer_step 2 derives the same layers.
    let mut v = flat_maverick();
    v.as_object_mut().unwrap().remove("moe_layers");
    assert_eq!(Config::from_json(&v).unwrap(), Config::maverick());
}

#[test]
fn absent_keys_take_transformers_defaults() {
    let c = Config::from_json(&json!({})).unwrap();
    assert_eq!(
        (
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads
        ),
        (5120, 48, 40, 8)
    );
    assert_eq!(
        (
            c.head_dim,
            c.intermediate_size,
            c.intermediate_size_mlp,
            c.vocab_size
        ),
        (128, 8192, 16384, 202048)
    );
    assert_eq!(
        (
            c.num_local_experts,
            c.num_experts_per_tok,
            c.attention_chunk_size
        ),
        (16, 1, 8192)
    );
    assert_eq!(
        (
            c.max_position_embeddings,
            c.bos_token_id,
            c.eos_token_ids.clone()
        ),
        (131072, Some(1), vec![2])
    );
    assert_eq!(
        (c.rope_theta, c.rope_scaling, c.rms_norm_eps),
        (500000.0, None, 1e-5)
    );
    assert!(c.use_qk_norm && c.attn_temperature_tuning && !c.tie_word_embeddings);
    assert!(c.layers.iter().all(|l| l.moe));
    // head_dim: null means hidden / heads.
    let c = Config::from_json(&json!({"head_dim": null, "hidden_size": 640, "num_attention_heads": 10, "num_key_value_heads": 2})).unwrap();
    assert_eq!(c.head_dim, 64);
}

#[test]
fn eos_as_int_or_list() {
    let c = Config::from_json(&json!({"eos_token_id": 7, "bos_token_id": 3})).unwrap();
    assert_eq!((c.eos_token_ids, c.bos_token_id), (vec![7], Some(3)));
    let c = Config::from_json(&json!({"eos_token_id": [7, 9], "bos_token_id": null})).unwrap();
    assert_eq!((c.eos_token_ids, c.bos_token_id), (vec![7, 9], None));
    assert_config_err(&json!({"eos_token_id": "x"}), "eos_token_id", "x");
}

#[test]
fn generation_config_reads() {
    let g = GenerationConfig::from_json(
        &json!({"bos_token_id": 200000, "eos_token_id": [200001, 200008],
        "temperature": 0.6, "top_p": 0.9, "do_sample": true}),
    )
    .unwrap();
    assert_eq!(g.eos_token_ids, vec![200001, 200008]);
    assert_eq!(
        (g.temperature, g.top_p, g.top_k, g.do_sample),
        (Some(0.6), Some(0.9), None, Some(true))
    );
    let g = GenerationConfig::from_json(&json!({"eos_token_id": 5})).unwrap();
    assert_eq!((g.eos_token_ids, g.temperature), (vec![5], None));
}

#[test]
fn to_json_reads_back_equal() {
    for c in [Config::scout(), Config::maverick(), Config::tiny()] {
        assert_eq!(Config::from_json(&c.to_json()).unwrap(), c);
    }
}

#[test]
fn refuses_unknown_rope_types() {
    let mut v = released_scout();
    v["text_config"]["rope_scaling"]["rope_type"] = json!("yarn");
    assert_config_err(&v, "text_config.rope_scaling.rope_type", "yarn");
    let mut v = flat_maverick();
    v["rope_parameters"]["rope_type"] = json!("dynamic");
    assert_config_err(&v, "rope_parameters.rope_type", "dynamic");
    let mut v = released_scout();
    v["text_config"]["rope_scaling"]
        .as_object_mut()
        .unwrap()
        .remove("high_freq_factor");
    assert_config_err(&v, "rope_scaling.high_freq_factor", "missing");
}

#[test]
fn rope_parameters_per_layer_type() {
    let llama3 = json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 16.0, "low_freq_factor": 1.0,
        "high_freq_factor": 1.0, "original_max_position_embeddings": 8192});
    let mut v = released_scout();
    let tc = v["text_config"].as_object_mut().unwrap();
    tc.remove("rope_scaling");
    tc.insert(
        "rope_parameters".into(),
        json!({"chunked_attention": llama3.clone(), "full_attention": llama3.clone()}),
    );
    assert_eq!(Config::from_json(&v).unwrap(), Config::scout());
    v["text_config"]["rope_parameters"]["full_attention"]["factor"] = json!(8.0);
    assert_config_err(&v, "text_config.rope_parameters.full_attention", "8");
}

#[test]
fn refuses_inconsistent_sizes() {
    assert_config_err(
        &json!({"num_attention_heads": 40, "num_key_value_heads": 6}),
        "num_attention_heads",
        "40",
    );
    assert_config_err(
        &json!({"num_experts_per_tok": 17, "num_local_experts": 16}),
        "num_experts_per_tok",
        "17",
    );
    assert_config_err(&json!({"hidden_size": 0}), "hidden_size", "0");
    assert_config_err(&json!({"head_dim": 127}), "head_dim", "127");
    assert_config_err(
        &json!({"num_key_value_heads": 0}),
        "num_key_value_heads",
        "0",
    );
    assert_config_err(
        &json!({"interleave_moe_layer_step": 0}),
        "interleave_moe_layer_step",
        "0",
    );
    assert_config_err(
        &json!({"num_hidden_layers": 4, "moe_layers": [1, 4]}),
        "moe_layers",
        "4",
    );
    assert_config_err(
        &json!({"num_hidden_layers": 4, "no_rope_layers": [1, 1, 0]}),
        "no_rope_layers",
        "3",
    );
    assert_config_err(
        &json!({"num_hidden_layers": 2, "no_rope_layers": [1, 2]}),
        "no_rope_layers[1]",
        "2",
    );
    assert_config_err(
        &json!({"num_hidden_layers": 2, "no_rope_layers": [1, 1], "layer_types": ["chunked_attention", "full_attention"]}),
        "layer_types[1]",
        "full_attention",
    );
    assert_config_err(
        &json!({"layer_types": ["sliding_attention"], "num_hidden_layers": 1}),
        "layer_types[0]",
        "sliding_attention",
    );
    assert_config_err(&json!({"hidden_size": -3}), "hidden_size", "-3");
    assert_config_err(&json!({"rms_norm_eps": 0.0}), "rms_norm_eps", "0");
    assert_config_err(
        &json!({"text_config": {"model_type": "llama"}}),
        "text_config.model_type",
        "llama",
    );
    assert_config_err(&json!({"hidden_act": "gelu"}), "hidden_act", "gelu");
    assert_config_err(
        &json!({"attention_chunk_size": null}),
        "attention_chunk_size",
        "null",
    );
}

#[test]
fn gpu_limits() {
    Config::scout().validate_for_gpu().unwrap();
    Config::maverick().validate_for_gpu().unwrap();
    let e = Config::tiny().validate_for_gpu().unwrap_err();
    assert!(
        matches!(e, Error::Config { ref key, .. } if key == "head_dim"),
        "{e}"
    );
    let mut c = Config::scout();
    c.num_local_experts = 16;
    c.num_experts_per_tok = 9;
    let e = c.validate_for_gpu().unwrap_err();
    assert!(
        matches!(e, Error::Config { ref key, ref value, .. } if key == "num_experts_per_tok" && value == "9"),
        "{e}"
    );
    // The CPU path takes it.
    c.validate().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Derived layer kinds against LLAMA4.md's formulas, evaluated directly.
    #[test]
    fn derived_layer_kinds(layers in 1usize..64, step in 1usize..5, interval in 1usize..6) {
        let c = Config::from_json(&json!({
            "num_hidden_layers": layers, "interleave_moe_layer_step": step, "no_rope_layer_interval": interval,
        })).unwrap();
        for (i, kind) in c.layers.iter().enumerate() {
            prop_assert_eq!(*kind, LayerKind { rope: (i + 1) % interval != 0, moe: (i + 1) % step == 0 });
        }
        // Explicit moe_layers win over the step.
        let moe: Vec<usize> = (0..layers).filter(|i| i % 3 == 0).collect();
        let c = Config::from_json(&json!({"num_hidden_layers": layers, "moe_layers": moe, "interleave_moe_layer_step": step})).unwrap();
        for (i, kind) in c.layers.iter().enumerate() {
            prop_assert_eq!(kind.moe, i % 3 == 0);
        }
    }
}

/// `llama4 info`: the numbers, and one clear error line with a non-zero exit.
#[test]
fn info_command() {
    let bin = env!("CARGO_BIN_EXE_llama4");
    let out = std::process::Command::new(bin)
        .args([
            "info",
            "--preset",
            "scout",
            "--context",
            "1000000",
            "--quantize",
            "int4",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for part in [
        "total 107.77 B",
        "active per token 17.17 B",
        "215.5 GB",
        "4096 B per token per layer",
        "KV room",
    ] {
        assert!(text.contains(part), "`{part}` missing from:\n{text}");
    }
    let out = std::process::Command::new(bin)
        .args(["info", "--model", "/nonexistent/dir"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/dir/config.json"), "{err}");
}

/// LLAMA4.md's table: Scout 107.8 B total / 17.2 B active, Maverick 400.7 B / 17.2 B (rounded to 0.1 B).
#[test]
fn parameter_counts_match_the_table() {
    let round = |x: u64| (x as f64 / 1e8).round() / 10.0;
    let s = ParamCounts::of(&Config::scout());
    assert_eq!((round(s.total), round(s.active)), (107.8, 17.2));
    let m = ParamCounts::of(&Config::maverick());
    assert_eq!((round(m.total), round(m.active)), (400.7, 17.2));
    // Independent spelling of Scout's routed experts: 48 layers x 16 x 3 x 5120 x 8192.
    assert_eq!(s.routed_experts, 48 * 16 * 3 * 5120 * 8192);
    assert_eq!(m.dense_mlp, 24 * 3 * 5120 * 16384);
}

/// LLAMA4.md's bytes: bf16 215.5 / 801.4 GB, experts fp8 ~113 / ~412 GB, experts int4 ~64.7 / ~229 GB.
/// The int4 row matches with f32 group scales; Meta's bf16 scales give 63.1 / 223.2 GB.
#[test]
fn weight_bytes_match_the_table() {
    let gb = |c: &Config, s: Option<QuantizeSpec>| plan::weight_bytes(c, s.as_ref()) as f64 / 1e9;
    let int4_f32 = QuantizeSpec::meta(QuantFormat::Int4(Int4Config {
        scale_dtype: ScaleDType::F32,
        ..Default::default()
    }));
    let (s, m) = (Config::scout(), Config::maverick());
    // Table values are rounded to 0.1 GB or given with "~": 1 % tolerance.
    let near = |got: f64, want: f64| assert!((got / want - 1.0).abs() < 0.01, "{got} vs {want}");
    near(gb(&s, None), 215.5);
    near(gb(&m, None), 801.4);
    near(gb(&s, Some(QuantizeSpec::fp8())), 113.0);
    near(gb(&m, Some(QuantizeSpec::fp8())), 412.0);
    near(gb(&s, Some(int4_f32)), 64.7);
    near(gb(&m, Some(int4_f32)), 229.0);
    near(gb(&s, Some(QuantizeSpec::int4())), 63.1);
}

/// 4096 B per token per layer in bf16; 12 NoPE layers grow: 1M tokens = 48 GiB, plus 36 chunked layers
/// capped at 8192 tokens.
#[test]
fn kv_bytes_match_the_table() {
    let s = Config::scout();
    assert_eq!(plan::kv_bytes_per_token_layer(&s, 2), 4096);
    assert_eq!(plan::kv_bytes_per_token_layer(&s, 1), 2048);
    let m = 1u64 << 20;
    assert_eq!(plan::kv_bytes(&s, m, 2), 12 * 4096 * m + 36 * 4096 * 8192);
    assert_eq!(12 * 4096 * m, 48 << 30);
    // Below one chunk every layer holds every token.
    assert_eq!(plan::kv_bytes(&s, 100, 2), 48 * 4096 * 100);
}

#[test]
fn memory_plan_on_one_h100() {
    let s = Config::scout();
    let gpu = 80u64 << 30;
    let p = plan::memory_plan(&s, Some(&QuantizeSpec::int4()), 100_000, gpu, 2);
    assert!(p.fits, "{p:?}");
    assert_eq!(
        p.total_bytes,
        p.weight_bytes + p.kv_bytes + p.headroom_bytes
    );
    let t = p.max_context.unwrap();
    // The longest context fits exactly; one NoPE token more does not.
    let at = |ctx| {
        plan::weight_bytes(&s, Some(&QuantizeSpec::int4()))
            + plan::kv_bytes(&s, ctx, 2)
            + p.headroom_bytes
    };
    assert!(at(t) <= gpu && at(t + 1) > gpu, "{t}");
    // bf16 Scout does not fit one H100 at all.
    let p = plan::memory_plan(&s, None, 1000, gpu, 2);
    assert!(!p.fits);
    assert_eq!(p.max_context, Some(0));
}
