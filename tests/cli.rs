//! The built `llama4` binary: `generate` on the embedded default model, `generate` and `logits` on a
//! tiny checkpoint written to a temporary directory, and one clear error line (non-zero exit, no
//! panic) for each user mistake.
use llama4_cuda::model::checkpoint::{load_model, write_checkpoint, LoadOptions};
use llama4_cuda::model::synthetic::random_weights;
use llama4_cuda::model::tokenizer::word_level_tokenizer_json;
use llama4_cuda::model::{Config, CpuBackend, Model};
use std::path::Path;
use std::process::{Command, Output};

fn llama4(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llama4"))
        .args(args)
        .output()
        .expect("run llama4")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs, expects success, returns (stdout, stderr).
fn ok(args: &[&str]) -> (String, String) {
    let o = llama4(args);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "llama4 {args:?} failed:\n{out}\n{err}");
    (out, err)
}

/// Runs, expects a failure whose stderr is one `error:` line naming each of `words`, and no panic.
fn fails(args: &[&str], words: &[&str]) {
    let o = llama4(args);
    let args: Vec<&str> = args
        .iter()
        .map(|a| if a.len() > 40 { &a[..40] } else { a })
        .collect();
    let err = text(&o.stderr);
    assert!(!o.status.success(), "llama4 {args:?} succeeded");
    assert!(
        !err.contains("panicked"),
        "llama4 {args:?} panicked:\n{err}"
    );
    for w in words {
        assert!(
            err.to_lowercase().contains(&w.to_lowercase()),
            "llama4 {args:?}: `{w}` not in:\n{err}"
        );
    }
}

/// The words of the tiny checkpoint's tokenizer (ids 4.., after the 4 specials).
const WORDS: [&str; 6] = ["hello", "world", "user", "assistant", "\n\n", "llama"];

/// A tiny checkpoint (Config::tiny, random f32 weights, a word-level tokenizer.json).
fn tiny_checkpoint(dir: &Path) -> Config {
    let c = Config::tiny();
    write_checkpoint(dir, &c, &random_weights(&c, 77)).unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        word_level_tokenizer_json(&WORDS),
    )
    .unwrap();
    c
}

fn generated_line(out: &str) -> String {
    out.lines()
        .find(|l| l.starts_with("generated tokens:"))
        .expect("a generated-tokens line")
        .to_string()
}

#[test]
fn default_generate_runs_the_embedded_model_reproducibly() {
    let (out, err) = ok(&["generate"]);
    assert!(err.contains("embedded default model"), "{err}");
    assert!(out.contains("tokens/s"), "{out}");
    let ids: Vec<u32> = generated_line(&out)["generated tokens:".len()..]
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    assert!(!ids.is_empty() && ids.len() <= 32, "{out}");
    // The default seed is fixed; another seed gives other tokens.
    assert_eq!(generated_line(&ok(&["generate"]).0), generated_line(&out));
    let other = ok(&["generate", "--seed", "9", "--max-new-tokens", "32"]).0;
    assert_ne!(generated_line(&other), generated_line(&out));
    // Quantized experts run too.
    ok(&[
        "generate",
        "--quantize",
        "int4",
        "--max-new-tokens",
        "4",
        "--tokens",
        "1,2,3",
    ]);
    ok(&[
        "generate",
        "--quantize",
        "fp8",
        "--max-new-tokens",
        "4",
        "--temperature",
        "0",
    ]);
}

#[test]
fn logits_writes_every_position_for_each_prefill() {
    let dir = tempfile::tempdir().unwrap();
    let c = tiny_checkpoint(dir.path());
    let tokens = [5u32, 200, 17, 3, 255, 9, 9, 128, 64, 1, 2];
    let ids = tokens
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let (config, weights) = load_model(dir.path(), &LoadOptions::default()).unwrap();
    let want = Model::new(config, weights, CpuBackend)
        .unwrap()
        .logits(&tokens, None)
        .unwrap();
    let range =
        want.iter().fold(f32::MIN, |m, &x| m.max(x)) - want.iter().fold(f32::MAX, |m, &x| m.min(x));
    for prefill in [None, Some("1"), Some("4"), Some("10")] {
        let out = dir.path().join("logits.safetensors");
        let mut args = vec![
            "logits",
            "--model",
            dir.path().to_str().unwrap(),
            "--tokens",
            &ids,
        ];
        args.extend(["--out", out.to_str().unwrap()]);
        if let Some(p) = prefill {
            args.extend(["--prefill", p]);
        }
        ok(&args);
        let bytes = std::fs::read(&out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("logits").unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        assert_eq!(t.shape(), [tokens.len(), c.vocab_size]);
        let got: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        // Same f32 ops as the in-process prefill; a decode split only reorders sums (~1e-7 relative).
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            err <= 1e-5 * range,
            "prefill {prefill:?}: error {err} of range {range}"
        );
    }
}

#[test]
fn generate_on_a_checkpoint_with_a_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    tiny_checkpoint(dir.path());
    let d = dir.path().to_str().unwrap();
    let (out, err) = ok(&[
        "generate",
        "--model",
        d,
        "--prompt",
        "hello llama",
        "--max-new-tokens",
        "5",
    ]);
    assert!(!err.contains("embedded"), "{err}");
    assert!(out.lines().any(|l| l.starts_with("text:")), "{out}");
    // The chat template: 12 prompt tokens (bos, header, user, header end, blank, 2 words, eot, ...).
    assert!(out.contains("prompt tokens: 12"), "{out}");
    let (out, _) = ok(&[
        "generate",
        "--model",
        d,
        "--prompt",
        "hello llama",
        "--raw",
        "--max-new-tokens",
        "2",
    ]);
    assert!(out.contains("prompt tokens: 2"), "{out}");
}

/// Sampling settings: the command line wins, else generation_config.json, else 0.6 / 0.9. Seen
/// through the tokens: temperature 0 and a tiny top_p are both greedy, which the defaults are not.
#[test]
fn generation_config_sets_the_sampling_defaults() {
    let dir = tempfile::tempdir().unwrap();
    tiny_checkpoint(dir.path());
    let d = dir.path().to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            d,
            "--tokens",
            "1,5,9",
            "--max-new-tokens",
            "12",
        ];
        args.extend_from_slice(extra);
        generated_line(&ok(&args).0)
    };
    let gen_config = |json: &str| {
        std::fs::write(dir.path().join("generation_config.json"), json).unwrap();
    };
    let _ = std::fs::remove_file(dir.path().join("generation_config.json"));
    let defaults = run(&[]);
    let greedy = run(&["--temperature", "0"]);
    assert_eq!(run(&["--temperature", "0.6", "--top-p", "0.9"]), defaults);
    assert_ne!(
        greedy, defaults,
        "the test needs sampling to differ from greedy"
    );
    // generation_config's temperature 0: greedy unless the command line says otherwise.
    gen_config(r#"{"eos_token_id": 2, "temperature": 0.0}"#);
    assert_eq!(run(&[]), greedy);
    assert_eq!(run(&["--temperature", "0.6"]), defaults);
    // Its top_p: a nucleus of one token is greedy; --top-p overrides it.
    gen_config(r#"{"eos_token_id": 2, "temperature": 0.6, "top_p": 1e-6}"#);
    assert_eq!(run(&[]), greedy);
    assert_eq!(run(&["--top-p", "0.9"]), defaults);
    // A bad value from the file is the same clear error as from the command line.
    gen_config(r#"{"eos_token_id": 2, "top_p": 2.0}"#);
    fails(&["generate", "--model", d, "--tokens", "1,5,9"], &["top_p"]);
}

#[test]
fn user_errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    tiny_checkpoint(dir.path());
    let d = dir.path().to_str().unwrap();
    let out = dir.path().join("o.safetensors");
    let o = out.to_str().unwrap();
    // A token id outside the vocabulary (256).
    fails(
        &["logits", "--model", d, "--tokens", "1,256", "--out", o],
        &["error:", "256", "vocabulary"],
    );
    fails(
        &["generate", "--tokens", "4000000000"],
        &["error:", "4000000000", "vocabulary"],
    );
    fails(&["generate", "--tokens", "1,x"], &["error:", "`x`"]);
    // --prompt with no tokenizer (the embedded model has none).
    fails(&["generate", "--prompt", "hi"], &["error:", "tokenizer"]);
    // Longer than max_position_embeddings (4096 for the embedded model), prompt alone or with the
    // new tokens.
    let long = vec!["7"; 4097].join(",");
    fails(
        &["generate", "--tokens", &long],
        &["error:", "context too long", "4097", "4096"],
    );
    let near = vec!["7"; 4090].join(",");
    fails(
        &["generate", "--tokens", &near, "--max-new-tokens", "10"],
        &["context too long", "4100"],
    );
    // A missing model directory.
    fails(
        &["generate", "--model", "/nonexistent/llama4"],
        &["error:", "/nonexistent/llama4", "no such directory"],
    );
    fails(
        &[
            "logits",
            "--model",
            "/nonexistent/llama4",
            "--tokens",
            "1",
            "--out",
            o,
        ],
        &["no such directory"],
    );
    // A prefill outside 1..=tokens.
    fails(
        &[
            "logits",
            "--model",
            d,
            "--tokens",
            "1,2",
            "--prefill",
            "3",
            "--out",
            o,
        ],
        &["prefill 3"],
    );
    fails(
        &[
            "logits",
            "--model",
            d,
            "--tokens",
            "1,2",
            "--prefill",
            "0",
            "--out",
            o,
        ],
        &["prefill 0"],
    );
    // Bad sampling parameters.
    fails(&["generate", "--top-p", "0"], &["top_p"]);
    fails(&["generate", "--temperature=-1"], &["temperature"]);
    // No prompt for a real checkpoint.
    fails(&["generate", "--model", d], &["--prompt"]);
    assert!(!out.exists(), "a failed run wrote its output");
}

#[test]
fn generate_help_says_how_device_sampling_draws() {
    // --seed's help: the GPU path draws its own numbers (same distribution, different tokens).
    let (out, _) = ok(&["generate", "--help"]);
    let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("drawn on the GPU"), "{out}");
    assert!(flat.contains("different draws"), "{out}");
}
