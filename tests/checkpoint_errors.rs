//! One test per way a checkpoint can be broken: each asserts the error variant AND that the message
//! names the culprit (file, tensor or key).
mod ckpt_common;

use std::path::{Path, PathBuf};

use ckpt_common::{
    edit_json, random_weights, read_tensors, seed, small_config, write_tensors, Tensor,
};
use llama4_cuda::model::checkpoint::{
    load_model, write_checkpoint, write_checkpoint_with, LoadOptions, WriteOptions,
};
use llama4_cuda::Error;
use safetensors::Dtype;
use serde_json::json;

/// A valid tiny dense checkpoint in a fresh directory.
fn valid() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config();
    write_checkpoint(dir.path(), &cfg, &random_weights(&cfg, seed(), true)).unwrap();
    let file = dir.path().join("model.safetensors");
    (dir, file)
}

fn load_err(dir: &Path) -> Error {
    match load_model(dir, &LoadOptions::default()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e,
    }
}

/// Asserts the message contains every one of `parts`.
fn names(e: &Error, parts: &[&str]) {
    let msg = e.to_string();
    for p in parts {
        assert!(msg.contains(p), "`{msg}` should name `{p}`");
    }
}

/// Rewrites a safetensors file through `edit`.
fn rewrite(file: &Path, edit: impl FnOnce(&mut Vec<Tensor>)) {
    let mut t = read_tensors(file);
    edit(&mut t);
    write_tensors(file, &t);
}

#[test]
fn valid_checkpoint_loads() {
    let (dir, _) = valid();
    load_model(dir.path(), &LoadOptions::default()).unwrap();
}

#[test]
fn truncated_file() {
    let (dir, file) = valid();
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len - 100).unwrap();
    let e = load_err(dir.path());
    assert!(
        matches!(e, Error::Checkpoint { ref path, .. } if path == &file),
        "{e:?}"
    );
    names(&e, &["model.safetensors", "truncated"]);
    // Shorter than the 8-byte length prefix.
    std::fs::write(&file, [1u8, 2, 3]).unwrap();
    let e = load_err(dir.path());
    assert!(matches!(e, Error::Checkpoint { .. }), "{e:?}");
    names(&e, &["model.safetensors", "truncated: 3 bytes"]);
}

#[test]
fn bad_header() {
    let (dir, file) = valid();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[8..16].copy_from_slice(b"not json");
    std::fs::write(&file, bytes).unwrap();
    let e = load_err(dir.path());
    assert!(
        matches!(e, Error::Checkpoint { ref path, .. } if path == &file),
        "{e:?}"
    );
    names(&e, &["model.safetensors", "bad header"]);
}

#[test]
fn missing_config_json() {
    let (dir, _) = valid();
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let e = load_err(dir.path());
    assert!(matches!(e, Error::Checkpoint { .. }), "{e:?}");
    names(&e, &["config.json", "not found"]);
}

#[test]
fn broken_config_json() {
    let (dir, _) = valid();
    std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": 32,").unwrap();
    let e = load_err(dir.path());
    assert!(matches!(e, Error::Checkpoint { .. }), "{e:?}");
    names(&e, &["config.json", "invalid JSON", "line 1"]);
}

#[test]
fn config_disagrees_with_tensor_shape() {
    let (dir, _) = valid();
    edit_json(&dir.path().join("config.json"), |v| {
        v["intermediate_size"] = json!(20)
    });
    let e = load_err(dir.path());
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    names(
        &e,
        &[
            "model.layers.0.feed_forward.shared_expert.gate_proj.weight",
            "[16, 32]",
            "[20, 32]",
            "model.safetensors",
        ],
    );
}

#[test]
fn config_with_fewer_layers_than_the_tensors() {
    let (dir, _) = valid();
    edit_json(&dir.path().join("config.json"), |v| {
        v["num_hidden_layers"] = json!(3);
        for key in ["no_rope_layers", "layer_types"] {
            v[key].as_array_mut().unwrap().pop();
        }
        v["moe_layers"] = json!([0, 2]);
    });
    let e = load_err(dir.path());
    assert!(matches!(e, Error::Checkpoint { .. }), "{e:?}");
    names(&e, &["model.layers.3.", "not part of the model"]);
}

#[test]
fn missing_tensor() {
    let (dir, file) = valid();
    let gone = "model.layers.1.self_attn.v_proj.weight";
    rewrite(&file, |t| t.retain(|t| t.name != gone));
    let e = load_err(dir.path());
    assert!(
        matches!(e, Error::Checkpoint { ref path, .. } if path == &file),
        "{e:?}"
    );
    names(&e, &["missing tensor", gone]);
}

#[test]
fn missing_fused_experts() {
    let (dir, file) = valid();
    rewrite(&file, |t| {
        t.retain(|t| !t.name.starts_with("model.layers.2.feed_forward.experts."))
    });
    let e = load_err(dir.path());
    assert!(matches!(e, Error::Checkpoint { .. }), "{e:?}");
    names(
        &e,
        &[
            "missing tensor",
            "model.layers.2.feed_forward.experts.gate_up_proj",
        ],
    );
}

#[test]
fn unsupported_dtype() {
    let (dir, file) = valid();
    let name = "model.layers.0.input_layernorm.weight";
    rewrite(&file, |ts| {
        let t = ts.iter_mut().find(|t| t.name == name).unwrap();
        t.data = (0..32i32).flat_map(|i| i.to_le_bytes()).collect();
        t.dtype = Dtype::I32;
    });
    let e = load_err(dir.path());
    assert!(matches!(e, Error::DType { .. }), "{e:?}");
    names(&e, &[name, "I32", "model.safetensors"]);
    // A linear weight in f64.
    let (dir, file) = valid();
    let name = "model.layers.3.self_attn.q_proj.weight";
    rewrite(&file, |ts| {
        let t = ts.iter_mut().find(|t| t.name == name).unwrap();
        t.data = vec![0x3f; t.data.len() * 4];
        t.dtype = Dtype::F64;
    });
    let e = load_err(dir.path());
    assert!(matches!(e, Error::DType { .. }), "{e:?}");
    names(&e, &[name, "F64"]);
}

/// A valid sharded checkpoint and the shard each of two tensors sits in (they differ).
fn sharded() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config();
    let opts = WriteOptions {
        shard_bytes: 16_000,
        progress: false,
    };
    write_checkpoint_with(dir.path(), &cfg, &random_weights(&cfg, seed(), true), &opts).unwrap();
    load_model(dir.path(), &LoadOptions::default()).unwrap();
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let shard = |name: &str| index["weight_map"][name].as_str().unwrap().to_string();
    let (first, last) = (
        shard("model.embed_tokens.weight"),
        shard("model.norm.weight"),
    );
    assert_ne!(first, last, "the test model should span several shards");
    (dir, first, last)
}

#[test]
fn missing_shard() {
    let (dir, _, last) = sharded();
    let shard = dir.path().join(&last);
    std::fs::remove_file(&shard).unwrap();
    let e = load_err(dir.path());
    assert!(
        matches!(e, Error::Checkpoint { ref path, .. } if path == &shard),
        "{e:?}"
    );
    names(
        &e,
        &[&last, "shard missing", "model.safetensors.index.json"],
    );
}

#[test]
fn index_names_the_wrong_shard() {
    let (dir, first, _) = sharded();
    let name = "model.norm.weight";
    edit_json(&dir.path().join("model.safetensors.index.json"), |v| {
        v["weight_map"][name] = json!(first)
    });
    let e = load_err(dir.path());
    assert!(matches!(e, Error::Checkpoint { .. }), "{e:?}");
    names(&e, &[name, &first, "not in this shard"]);
}

#[test]
fn no_weights_at_all() {
    let (dir, file) = valid();
    std::fs::remove_file(file).unwrap();
    let e = load_err(dir.path());
    assert!(matches!(e, Error::Checkpoint { .. }), "{e:?}");
    names(&e, &["no model.safetensors"]);
}

#[test]
fn unknown_rope_type_in_checkpoint_config() {
    let (dir, _) = valid();
    edit_json(&dir.path().join("config.json"), |v| {
        v["rope_parameters"]["rope_type"] = json!("longrope")
    });
    let e = load_err(dir.path());
    assert!(matches!(e, Error::Config { .. }), "{e:?}");
    names(&e, &["rope_parameters.rope_type", "longrope"]);
}

#[test]
fn fp8_ignore_list_disagrees_with_stored_dtype() {
    let (dir, _) = valid();
    // Says every Linear is fp8 except the routers; the attention is stored bf16.
    edit_json(&dir.path().join("config.json"), |v| {
        v["quantization_config"] = json!({
            "quant_method": "compressed-tensors", "format": "float-quantized",
            "config_groups": {"group_0": {"targets": ["Linear"],
                "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": true}}},
            "ignore": ["re:.*router", "lm_head"]
        });
    });
    let e = load_err(dir.path());
    assert!(matches!(e, Error::Config { .. }), "{e:?}");
    names(&e, &["model.layers.0.self_attn.q_proj", "BF16", "fp8"]);
}

#[test]
fn unsupported_quantization_method() {
    let (dir, _) = valid();
    edit_json(&dir.path().join("config.json"), |v| {
        v["quantization_config"] = json!({"quant_method": "gptq", "bits": 4})
    });
    let e = load_err(dir.path());
    assert!(matches!(e, Error::Config { .. }), "{e:?}");
    names(&e, &["quantization_config.quant_method", "gptq"]);
}

#[test]
fn int4_tensor_without_int4_parameters() {
    let (dir, file) = valid();
    let base = "model.layers.1.feed_forward.gate_proj";
    rewrite(&file, |ts| {
        let t = ts
            .iter_mut()
            .find(|t| t.name == format!("{base}.weight"))
            .unwrap();
        let (n, k) = (t.shape[0], t.shape[1]);
        *t = Tensor {
            name: format!("{base}.qweight"),
            dtype: Dtype::U8,
            shape: vec![n, k / 2],
            data: vec![0x21; n * k / 2],
        };
        ts.push(Tensor {
            name: format!("{base}.scales"),
            dtype: Dtype::BF16,
            shape: vec![n, 1],
            data: ckpt_common::bf16_bytes(&vec![0.01; n]),
        });
    });
    let e = load_err(dir.path());
    assert!(matches!(e, Error::Config { .. }), "{e:?}");
    names(
        &e,
        &["quantization_config.int4", &format!("{base}.qweight")],
    );
}

/// A tiny checkpoint quantized by `llama4 quantize`'s library entry.
fn quantized(
    spec: llama4_cuda::model::quantize::QuantizeSpec,
) -> (tempfile::TempDir, tempfile::TempDir) {
    use llama4_cuda::model::quantize::{quantize_checkpoint, QuantizeOptions};
    let (src, _) = valid();
    let dst = tempfile::tempdir().unwrap();
    quantize_checkpoint(src.path(), dst.path(), &QuantizeOptions::new(spec)).unwrap();
    load_model(dst.path(), &LoadOptions::default()).unwrap();
    (src, dst)
}

#[test]
fn fp8_nan_code_in_a_stored_weight() {
    let (_src, dst) = quantized(llama4_cuda::model::quantize::QuantizeSpec::fp8());
    let file = dst.path().join("model.safetensors");
    let name = "model.layers.2.feed_forward.experts.1.up_proj.weight";
    rewrite(&file, |ts| {
        let t = ts.iter_mut().find(|t| t.name == name).unwrap();
        assert_eq!(t.dtype, Dtype::F8_E4M3);
        t.data[5] = 0xff;
    });
    let e = load_err(dst.path());
    assert!(matches!(e, Error::Checkpoint { .. }), "{e:?}");
    names(&e, &[name, "NaN", "model.safetensors"]);
}

#[test]
fn int4_zero_point_out_of_range() {
    use llama4_cuda::model::quantize::{QuantFormat, QuantizeSpec};
    use llama4_cuda::quant::{Int4Config, ScaleDType};
    let asym = Int4Config {
        group_size: 32,
        symmetric: false,
        scale_dtype: ScaleDType::BF16,
    };
    let (_src, dst) = quantized(QuantizeSpec::meta(QuantFormat::Int4(asym)));
    let file = dst.path().join("model.safetensors");
    let name = "model.layers.0.feed_forward.shared_expert.down_proj.zeros";
    rewrite(&file, |ts| {
        ts.iter_mut().find(|t| t.name == name).unwrap().data[0] = 16
    });
    let e = load_err(dst.path());
    assert!(matches!(e, Error::Checkpoint { .. }), "{e:?}");
    names(
        &e,
        &[
            "model.layers.0.feed_forward.shared_expert.down_proj.qweight",
            "zero",
        ],
    );
}

#[test]
fn int4_group_size_not_supported() {
    let (_src, dst) = quantized(llama4_cuda::model::quantize::QuantizeSpec::int4());
    edit_json(&dst.path().join("config.json"), |v| {
        v["quantization_config"]["int4"]["group_size"] = json!(100)
    });
    let e = load_err(dst.path());
    assert!(matches!(e, Error::Config { .. }), "{e:?}");
    names(&e, &["quantization_config.int4.group_size", "100"]);
}
