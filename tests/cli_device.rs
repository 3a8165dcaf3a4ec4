//! `--device` and `bench-model` on the command line: the automatic choice prints one line saying
//! which device and why, and every mistake (an impossible `--device cuda`, bad bench arguments) is
//! one `error:` line with a non-zero exit, never a panic. Runs on any machine: where CUDA is
//! missing the expected error is the missing piece; where it is present, the embedded model's
//! head_dim 64, which the GPU kernels do not take.
use llama4_cuda::model::device_choice::Probe;
use std::process::{Command, Output};

fn llama4(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llama4"))
        .args(args)
        .output()
        .expect("run llama4")
}

/// Expects failure with one `error:` line containing every word of `words`, and no panic.
fn fails(args: &[&str], words: &[&str]) {
    let o = llama4(args);
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(!o.status.success(), "llama4 {args:?} succeeded");
    assert!(
        !err.contains("panicked"),
        "llama4 {args:?} panicked:\n{err}"
    );
    assert!(
        err.contains("error"),
        "llama4 {args:?}: no error line:\n{err}"
    );
    for w in words {
        assert!(
            err.contains(&w.to_lowercase()),
            "llama4 {args:?}: `{w}` not in:\n{err}"
        );
    }
}

/// The words of the error an explicit `--device cuda` gives on this machine.
fn cuda_missing_words() -> Vec<&'static str> {
    match Probe::detect() {
        Probe { driver: false, .. } => vec!["no cuda device", "libcuda"],
        Probe { devices: 0, .. } => vec!["no cuda device"],
        Probe { kernels: false, .. } => vec!["kernels were not built"],
        _ => vec![],
    }
}

#[test]
fn device_cuda_without_a_gpu_is_a_typed_error() {
    let words = cuda_missing_words();
    if words.is_empty() {
        // CUDA is here: the embedded model (head_dim 64) is refused by the GPU check instead.
        fails(&["generate", "--device", "cuda"], &["head_dim"]);
        return;
    }
    fails(
        &["generate", "--device", "cuda", "--max-new-tokens", "2"],
        &words,
    );
    fails(
        &[
            "logits",
            "--model",
            "/nonexistent",
            "--tokens",
            "1",
            "--out",
            "/tmp/x",
            "--device",
            "cuda",
        ],
        &words,
    );
    fails(&["bench-model"], &words);
    fails(
        &["bench-model", "--preset", "maverick", "--layers", "2"],
        &words,
    );
}

#[test]
fn automatic_choice_prints_one_line_and_runs() {
    let o = llama4(&["generate", "--max-new-tokens", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // The embedded model always runs on the CPU (no GPU here, or head_dim 64 there).
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("device:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("device: cpu (auto:"), "{err}");
    let o = llama4(&["generate", "--max-new-tokens", "2", "--device", "cpu"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("device: cpu (--device cpu)"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("(cpu)"));
}

#[test]
fn bad_arguments_are_one_clear_line() {
    fails(&["generate", "--device", "tpu"], &["tpu", "cpu", "cuda"]);
    // bench-model checks its arguments before it looks for a device.
    fails(&["bench-model", "--layers", "0"], &["--layers", "1..=48"]);
    fails(&["bench-model", "--layers", "49"], &["--layers", "49"]);
    fails(&["bench-model", "--batch", "1,0"], &["--batch", "positive"]);
    fails(&["bench-model", "--context", "0"], &["--context"]);
    fails(&["bench-model", "--steps", "1"], &["--steps"]);
    fails(&["bench-model", "--host-mem=-1"], &["--host-mem"]);
    fails(&["bench-model", "--host-mem", "nan"], &["--host-mem"]);
    fails(
        &["bench-model", "--quantize", "int3"],
        &["int3", "int4", "fp8", "bf16"],
    );
    fails(
        &["bench-model", "--preset", "llama"],
        &["llama", "scout", "maverick"],
    );
}

#[test]
fn bench_model_plan_only_runs_without_a_device() {
    let o = llama4(&[
        "bench-model",
        "--plan-only",
        "--context",
        "1024,1048576",
        "--batch",
        "1,64",
        "--prompt-tokens",
        "1024",
    ]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("weights: 63.13 GB"), "{out}");
    // Batch 1 at 1K fits; batch 64 at 1M does not, and the row says why with the numbers.
    let row = |b: &str, c: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("| {b} | {c} |")))
            .unwrap_or_else(|| panic!("no row {b} x {c} in\n{out}"))
            .to_string()
    };
    assert!(!row("1", "1024").contains("does not fit"), "{out}");
    let r = row("64", "1048576");
    assert!(
        r.contains("does not fit") && r.contains("needed") && r.contains("free"),
        "{r}"
    );
    // 1M at batch 1 fits once the host tier may take 48 GiB.
    let o = llama4(&[
        "bench-model",
        "--plan-only",
        "--context",
        "1048576",
        "--batch",
        "1",
        "--host-mem",
        "48",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && !out.contains("does not fit"), "{out}");
    // The plan's own options need --plan-only.
    fails(&["bench-model", "--gpu-mem", "40"], &["--plan-only"]);
    fails(
        &["bench-model", "--plan-only", "--bandwidth", "0"],
        &["--bandwidth"],
    );
}
