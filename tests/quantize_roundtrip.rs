//! Checkpoint round trips: dense (bf16 / f32, single file / sharded, released multimodal naming with
//! fused Hugging Face experts), Meta's FP8 (compressed-tensors, per-expert), and `llama4 quantize`
//! output loading back bit-identical to quantize-on-load.
mod ckpt_common;

use std::path::Path;

use ckpt_common::{
    assert_same, bf16_bytes, random_weights, read_tensors, seed, small_config, write_tensors, Rng,
    Tensor,
};
use llama4_cuda::model::checkpoint::{
    load_model, write_checkpoint, write_checkpoint_with, LoadOptions, WriteOptions,
};
use llama4_cuda::model::config::Config;
use llama4_cuda::model::quantize::{
    quantize_checkpoint, QuantFormat, QuantizeOptions, QuantizeSpec,
};
use llama4_cuda::model::weights::{Ffn, Weights};
use llama4_cuda::quant::{Fp8Scaling, Fp8Weight, Int4Config, Int4Weight, ScaleDType, Weight};
use llama4_cuda::reference::moe::SwiGlu;
use llama4_cuda::Error;
use safetensors::Dtype;
use serde_json::json;

/// Groups of 128 along K with K = 136 (one full group and a short one) and K = 40 (one short group).
fn odd_config() -> Config {
    let mut c = small_config();
    c.hidden_size = 136;
    c.intermediate_size = 40;
    c.intermediate_size_mlp = 130;
    c
}

fn load(dir: &Path, spec: Option<QuantizeSpec>) -> (Config, Weights) {
    load_model(
        dir,
        &LoadOptions {
            quantize: spec,
            progress: false,
        },
    )
    .unwrap()
}

#[test]
fn dense_round_trip_bf16_and_f32() {
    for bf16 in [true, false] {
        for tie in [false, true] {
            let mut cfg = small_config();
            cfg.tie_word_embeddings = tie;
            let w = random_weights(&cfg, seed(), bf16);
            let dir = tempfile::tempdir().unwrap();
            write_checkpoint(dir.path(), &cfg, &w).unwrap();
            let want = if bf16 { Dtype::BF16 } else { Dtype::F32 };
            let tensors = read_tensors(&dir.path().join("model.safetensors"));
            assert!(tensors.iter().all(|t| t.dtype == want));
            assert_eq!(tensors.iter().any(|t| t.name == "lm_head.weight"), !tie);
            let (got_cfg, got) = load(dir.path(), None);
            assert_eq!(got_cfg, cfg);
            assert_same(&got, &w, &format!("bf16 {bf16}, tied {tie}"));
        }
    }
}

#[test]
fn sharded_round_trip() {
    let cfg = Config::tiny();
    let w = random_weights(&cfg, seed(), true);
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint_with(
        dir.path(),
        &cfg,
        &w,
        &WriteOptions {
            shard_bytes: 50_000,
            progress: false,
        },
    )
    .unwrap();
    let shards = std::fs::read_dir(dir.path()).unwrap().filter(|e| {
        let n = e
            .as_ref()
            .unwrap()
            .file_name()
            .to_string_lossy()
            .into_owned();
        n.starts_with("model-") && n.ends_with(".safetensors")
    });
    assert!(shards.count() > 2);
    assert!(!dir.path().join("model.safetensors").exists());
    assert_same(&load(dir.path(), None).1, &w, "sharded");
    // Rewriting as one file removes the stale shards.
    let w2 = random_weights(&cfg, seed() ^ 1, true);
    write_checkpoint(dir.path(), &cfg, &w2).unwrap();
    assert!(!dir.path().join("model.safetensors.index.json").exists());
    assert_same(&load(dir.path(), None).1, &w2, "rewritten");
}

fn dense_data(w: &Weight) -> &[f32] {
    match w {
        Weight::Dense(d) => &d.data,
        other => panic!("expected a dense weight, got {other:?}"),
    }
}

/// LLAMA4.md's fused layout, spelled out: `gate_up[e, i, o] = gate_e[o, i]`,
/// `gate_up[e, i, inter + o] = up_e[o, i]`, `down[e, i, o] = down_e[o, i]`.
fn fused_by_hand(experts: &[SwiGlu], h: usize, inter: usize) -> (Vec<f32>, Vec<f32>) {
    let mut gu = vec![f32::NAN; experts.len() * h * 2 * inter];
    let mut dn = vec![f32::NAN; experts.len() * inter * h];
    for (e, m) in experts.iter().enumerate() {
        let (g, u, d) = (dense_data(&m.gate), dense_data(&m.up), dense_data(&m.down));
        for i in 0..h {
            for o in 0..inter {
                gu[(e * h + i) * 2 * inter + o] = g[o * h + i];
                gu[(e * h + i) * 2 * inter + inter + o] = u[o * h + i];
            }
        }
        for i in 0..inter {
            for o in 0..h {
                dn[(e * inter + i) * h + o] = d[o * inter + i];
            }
        }
    }
    (gu, dn)
}

/// A released-style checkpoint: `language_model.` prefix, wrapper config, vision tensors, fused
/// experts. The fused tensors are built here by hand, so the reader is checked against LLAMA4.md's
/// layout rather than against our own writer.
#[test]
fn released_naming_and_fused_experts() {
    let cfg = small_config();
    let w = random_weights(&cfg, seed(), true);
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &cfg, &w).unwrap();
    let file = dir.path().join("model.safetensors");
    let mut tensors = read_tensors(&file);
    for (l, layer) in w.layers.iter().enumerate() {
        if let Ffn::Moe { experts, .. } = &layer.ffn {
            let (gu, dn) = fused_by_hand(experts, cfg.hidden_size, cfg.intermediate_size);
            for t in tensors.iter_mut() {
                if t.name == format!("model.layers.{l}.feed_forward.experts.gate_up_proj") {
                    assert_eq!(
                        t.data,
                        bf16_bytes(&gu),
                        "writer disagrees with the hand-built layout"
                    );
                }
                if t.name == format!("model.layers.{l}.feed_forward.experts.down_proj") {
                    assert_eq!(
                        t.data,
                        bf16_bytes(&dn),
                        "writer disagrees with the hand-built layout"
                    );
                }
            }
        }
    }
    for t in tensors.iter_mut() {
        t.name = format!("language_model.{}", t.name);
    }
    let rng = &mut Rng(seed());
    for name in [
        "vision_model.patch_embedding.linear.weight",
        "multi_modal_projector.linear_1.weight",
    ] {
        tensors.push(Tensor {
            name: name.into(),
            dtype: Dtype::BF16,
            shape: vec![4, 8],
            data: bf16_bytes(&rng.nonzero_vec(32, true)),
        });
    }
    write_tensors(&file, &tensors);
    let config = json!({
        "architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4",
        "text_config": cfg.to_json(), "vision_config": {"hidden_size": 8}
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let (got_cfg, got) = load(dir.path(), None);
    assert_eq!(got_cfg, cfg);
    assert_same(&got, &w, "released naming");
}

/// fp8 e4m3fn decoded by hand: sign, 4 exponent bits (bias 7), 3 mantissa bits, subnormals below.
fn e4m3(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = ((code >> 3) & 0xf, code & 7);
    let mag = if e == 0 {
        m as f32 / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + m as f32 / 8.0) * 2f32.powi(e as i32 - 7)
    };
    sign * mag
}

/// Random fp8 weight (no NaN codes), per-channel bf16-exact scales.
fn random_fp8(rng: &mut Rng, n: usize, k: usize) -> Weight {
    let codes: Vec<u8> = (0..n * k)
        .map(|_| loop {
            let c = rng.next_u64() as u8;
            if c & 0x7f != 0x7f {
                break c;
            }
        })
        .collect();
    let scales = (0..n)
        .map(|_| half::bf16::from_f32(0.001 + 0.01 * rng.nonzero().abs()).to_f32())
        .collect();
    Weight::Fp8(Fp8Weight {
        n,
        k,
        codes,
        scaling: Fp8Scaling::PerChannel,
        scales,
    })
}

/// Meta's FP8 layout written by hand: `language_model.` names, per-expert `experts.{e}.*_proj.weight`
/// f8_e4m3 `[out, in]` with bf16 `weight_scale` `[out, 1]`; attention, routers and lm_head bf16 as the
/// `ignore` list says. Returns the directory and the weights it holds.
fn meta_fp8_checkpoint(cfg: &Config) -> (tempfile::TempDir, Weights) {
    let mut w = random_weights(cfg, seed(), true);
    let rng = &mut Rng(seed() ^ 0x5eed);
    let mut fp8 = |m: &mut SwiGlu| {
        for x in [&mut m.gate, &mut m.up, &mut m.down] {
            *x = random_fp8(rng, x.n(), x.k());
        }
    };
    for layer in w.layers.iter_mut() {
        match &mut layer.ffn {
            Ffn::Moe {
                experts, shared, ..
            } => {
                experts.iter_mut().for_each(&mut fp8);
                fp8(shared);
            }
            Ffn::Dense(m) => fp8(m),
        }
    }
    let mut tensors = Vec::new();
    let mut add = |base: String, x: &Weight| match x {
        Weight::Dense(d) => tensors.push(Tensor {
            name: format!("language_model.{base}.weight"),
            dtype: Dtype::BF16,
            shape: vec![d.n, d.k],
            data: bf16_bytes(&d.data),
        }),
        Weight::Fp8(q) => {
            tensors.push(Tensor {
                name: format!("language_model.{base}.weight"),
                dtype: Dtype::F8_E4M3,
                shape: vec![q.n, q.k],
                data: q.codes.clone(),
            });
            tensors.push(Tensor {
                name: format!("language_model.{base}.weight_scale"),
                dtype: Dtype::BF16,
                shape: vec![q.n, 1],
                data: bf16_bytes(&q.scales),
            });
        }
        Weight::Int4(_) => unreachable!(),
    };
    add("model.embed_tokens".into(), &Weight::Dense(w.embed.clone()));
    add("lm_head".into(), &w.lm_head);
    for (l, layer) in w.layers.iter().enumerate() {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        for (name, x) in [
            ("q_proj", &layer.q),
            ("k_proj", &layer.k),
            ("v_proj", &layer.v),
            ("o_proj", &layer.o),
        ] {
            add(p(&format!("self_attn.{name}")), x);
        }
        let mlp = |add: &mut dyn FnMut(String, &Weight), prefix: String, m: &SwiGlu| {
            add(format!("{prefix}.gate_proj"), &m.gate);
            add(format!("{prefix}.up_proj"), &m.up);
            add(format!("{prefix}.down_proj"), &m.down);
        };
        match &layer.ffn {
            Ffn::Moe {
                router,
                experts,
                shared,
            } => {
                add(p("feed_forward.router"), &Weight::Dense(router.clone()));
                for (e, m) in experts.iter().enumerate() {
                    mlp(&mut add, p(&format!("feed_forward.experts.{e}")), m);
                }
                mlp(&mut add, p("feed_forward.shared_expert"), shared);
            }
            Ffn::Dense(m) => mlp(&mut add, p("feed_forward"), m),
        }
    }
    let mut norms = vec![("model.norm.weight".to_string(), w.norm.clone())];
    for (l, layer) in w.layers.iter().enumerate() {
        norms.push((
            format!("model.layers.{l}.input_layernorm.weight"),
            layer.input_norm.clone(),
        ));
        norms.push((
            format!("model.layers.{l}.post_attention_layernorm.weight"),
            layer.post_attention_norm.clone(),
        ));
    }
    for (name, v) in norms {
        tensors.push(Tensor {
            name: format!("language_model.{name}"),
            dtype: Dtype::BF16,
            shape: vec![v.len()],
            data: bf16_bytes(&v),
        });
    }
    let dir = tempfile::tempdir().unwrap();
    write_tensors(&dir.path().join("model.safetensors"), &tensors);
    let config = json!({
        "architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4",
        "text_config": cfg.to_json(),
        "quantization_config": {
            "quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": true, "dynamic": false},
                "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "symmetric": true, "dynamic": true}
            }},
            "ignore": ["re:.*self_attn.*", "re:.*router", "re:vision_model.*", "re:multi_modal_projector.*", "language_model.lm_head"]
        }
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    (dir, w)
}

#[test]
fn meta_fp8_checkpoint_loads() {
    let cfg = small_config();
    let (dir, want) = meta_fp8_checkpoint(&cfg);
    let (got_cfg, got) = load(dir.path(), None);
    assert_eq!(got_cfg, cfg);
    assert_same(&got, &want, "meta fp8");
    // The fp8 experts compute with decode(code) * scale(row), decoded here by hand (exact).
    let Ffn::Moe { experts, .. } = &got.layers[0].ffn else {
        panic!("layer 0 is MoE")
    };
    let Weight::Fp8(q) = &experts[1].down else {
        panic!("fp8 expert")
    };
    let deq = experts[1].down.dequantize();
    for (i, (&code, &x)) in q.codes.iter().zip(&deq).enumerate() {
        assert_eq!(
            x,
            e4m3(code) * q.scales[i / q.k],
            "element {i}, code {code:#04x}"
        );
    }
}

/// Every quantized weight of `got` equals quantizing the dense original directly.
fn check_quantized(orig: &Weights, got: &Weights, format: QuantFormat) {
    let q = |w: &Weight| match format {
        QuantFormat::Int4(c) => {
            Weight::Int4(Int4Weight::quantize(dense_data(w), w.n(), w.k(), c).unwrap())
        }
        QuantFormat::Fp8 => Weight::Fp8(
            Fp8Weight::quantize(dense_data(w), w.n(), w.k(), Fp8Scaling::PerChannel).unwrap(),
        ),
    };
    for (a, b) in orig.layers.iter().zip(&got.layers) {
        assert!(
            (&a.q, &a.k, &a.v, &a.o) == (&b.q, &b.k, &b.v, &b.o),
            "attention stays dense"
        );
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
                assert!(r1 == r2, "router stays dense");
                for (m1, m2) in e1.iter().zip(e2).chain([(s1, s2)]) {
                    let want = (q(&m1.gate), q(&m1.up), q(&m1.down));
                    assert!(
                        want == (m2.gate.clone(), m2.up.clone(), m2.down.clone()),
                        "expert != quantize(original)"
                    );
                }
            }
            (Ffn::Dense(m1), Ffn::Dense(m2)) => {
                assert!(m1 == m2, "dense MLP stays dense in Meta's recipe")
            }
            _ => panic!("layer kinds differ"),
        }
    }
    assert!(
        (&orig.embed, &orig.norm, &orig.lm_head) == (&got.embed, &got.norm, &got.lm_head),
        "embed/norm/lm_head kept"
    );
}

#[test]
fn quantized_checkpoint_loads_as_quantize_on_load() {
    let asym = QuantFormat::Int4(Int4Config {
        group_size: 32,
        symmetric: false,
        scale_dtype: ScaleDType::F32,
    });
    let cases = [
        (QuantizeSpec::int4(), u64::MAX),
        (QuantizeSpec::fp8(), u64::MAX),
        (QuantizeSpec::int4(), 40_000),
        (
            QuantizeSpec {
                attention: true,
                dense_mlp: true,
                lm_head: true,
                ..QuantizeSpec::meta(asym)
            },
            60_000,
        ),
    ];
    for (spec, shard_bytes) in cases {
        let cfg = odd_config();
        let orig = random_weights(&cfg, seed(), true);
        let src = tempfile::tempdir().unwrap();
        write_checkpoint(src.path(), &cfg, &orig).unwrap();
        let (_, on_load) = load(src.path(), Some(spec));
        if spec == QuantizeSpec::meta(spec.format) {
            check_quantized(&orig, &on_load, spec.format);
        }
        let dst = tempfile::tempdir().unwrap();
        let opts = QuantizeOptions {
            spec,
            shard_bytes,
            progress: false,
        };
        quantize_checkpoint(src.path(), dst.path(), &opts).unwrap();
        assert_eq!(
            dst.path().join("model.safetensors.index.json").exists(),
            shard_bytes != u64::MAX
        );
        let (got_cfg, from_file) = load(dst.path(), None);
        assert_eq!(got_cfg, cfg);
        assert_same(
            &from_file,
            &on_load,
            &format!("quantized checkpoint vs quantize-on-load ({spec:?})"),
        );
        // Asking for the same quantization again keeps the stored weights as they are.
        assert_same(&load(dst.path(), Some(spec)).1, &on_load, "re-quantize");
        // And writing quantized weights directly gives the same checkpoint contents back.
        let again = tempfile::tempdir().unwrap();
        write_checkpoint(again.path(), &cfg, &on_load).unwrap();
        assert_same(
            &load(again.path(), None).1,
            &on_load,
            "write_checkpoint of quantized weights",
        );
    }
}

#[test]
fn meta_fp8_requantized_to_int4() {
    let cfg = small_config();
    let (src, fp8) = meta_fp8_checkpoint(&cfg);
    let spec = QuantizeSpec::int4();
    let (_, on_load) = load(src.path(), Some(spec));
    // Selected fp8 weights are dequantized and quantized to int4; the fp8 dense MLP is not selected.
    let Ffn::Moe { experts, .. } = &fp8.layers[0].ffn else {
        panic!("layer 0 is MoE")
    };
    let Ffn::Moe { experts: got, .. } = &on_load.layers[0].ffn else {
        panic!("layer 0 is MoE")
    };
    let w = &experts[0].gate;
    let want = Int4Weight::quantize(&w.dequantize(), w.n(), w.k(), Int4Config::default()).unwrap();
    assert!(
        got[0].gate == Weight::Int4(want),
        "expert 0 gate: fp8 -> int4 differs from quantizing the fp8 values"
    );
    assert!(
        on_load.layers[1].ffn == fp8.layers[1].ffn,
        "the fp8 dense MLP is kept"
    );
    let dst = tempfile::tempdir().unwrap();
    quantize_checkpoint(src.path(), dst.path(), &QuantizeOptions::new(spec)).unwrap();
    assert_same(
        &load(dst.path(), None).1,
        &on_load,
        "fp8 -> int4 checkpoint",
    );
}

#[test]
fn quantize_refuses_a_non_empty_output() {
    let cfg = small_config();
    let src = tempfile::tempdir().unwrap();
    write_checkpoint(src.path(), &cfg, &random_weights(&cfg, seed(), true)).unwrap();
    let e = quantize_checkpoint(
        src.path(),
        src.path(),
        &QuantizeOptions::new(QuantizeSpec::int4()),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("source"),
        "{e}"
    );
    let dst = tempfile::tempdir().unwrap();
    std::fs::write(dst.path().join("x"), "x").unwrap();
    let e = quantize_checkpoint(
        src.path(),
        dst.path(),
        &QuantizeOptions::new(QuantizeSpec::int4()),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("not empty"),
        "{e}"
    );
}

/// `llama4 quantize` on the command line: the output loads as quantize-on-load; bad input is one
/// error line and a non-zero exit.
#[test]
fn quantize_command() {
    let cfg = small_config();
    let src = tempfile::tempdir().unwrap();
    write_checkpoint(src.path(), &cfg, &random_weights(&cfg, seed(), true)).unwrap();
    std::fs::write(
        src.path().join("generation_config.json"),
        r#"{"eos_token_id": [2, 3], "temperature": 0.6}"#,
    )
    .unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let dst = out_dir.path().join("q");
    let bin = env!("CARGO_BIN_EXE_llama4");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let (s, d) = (src.path().to_str().unwrap(), dst.to_str().unwrap());
    let out = run(&["quantize", "--model", s, "--out", d, "--format", "int4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, on_load) = load(src.path(), Some(QuantizeSpec::int4()));
    let ck = llama4_cuda::model::checkpoint::Checkpoint::open(&dst).unwrap();
    assert_eq!(ck.generation_config().unwrap().eos_token_ids, vec![2, 3]);
    assert_same(
        &ck.load(&LoadOptions::default()).unwrap(),
        &on_load,
        "llama4 quantize",
    );
    // A second run into the now non-empty directory, and a missing source, fail with one line.
    for args in [
        vec!["quantize", "--model", s, "--out", d, "--format", "fp8"],
        vec![
            "quantize", "--model", "/no/such", "--out", d, "--format", "fp8",
        ],
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("not empty") || err.contains("/no/such"),
            "{err}"
        );
    }
}
