//! The model against Hugging Face transformers itself: every fixture of tests/fixtures/hf (tiny
//! random Llama 4 models, transformers 5.23 f32 logits, see its README) loaded with the checkpoint
//! loader, run as one prefill and as several prefill / decode splits through the KV cache.
use llama4_cuda::model::checkpoint::{load_model, LoadOptions};
use llama4_cuda::model::{CpuBackend, Model};
use std::path::{Path, PathBuf};

/// Tolerance: 1e-3 of the range of transformers' logits. Both sides compute in f32 from the same
/// bf16-exact weights (numerical noise ~1e-5 of the range, README "Checks"), while every semantic
/// mistake the fixture script tried moves the logits by >= 0.04 absolute (~2e-3 of the ~20 range).
const REL_TOL: f32 = 1e-3;

/// Prefill lengths: one token, just before / at / after an attention-chunk boundary (chunks of 8 and
/// 16) and a NoPE temperature step, and all but the last token of the 40-token fixtures.
const SPLITS: [usize; 7] = [1, 3, 7, 8, 9, 17, 39];

/// `SPLITS` that fit the fixture, then just before / at / after its first and second attention-chunk
/// boundaries and all but the last token (gpu_hd128: chunk 64, 150 tokens), each length once.
fn splits(n_tokens: usize, chunk: usize) -> Vec<usize> {
    let mut s: Vec<usize> = SPLITS.iter().copied().filter(|&p| p < n_tokens).collect();
    for p in [chunk - 1, chunk, chunk + 1, 2 * chunk + 1, n_tokens - 1] {
        if p >= 1 && p < n_tokens && !s.contains(&p) {
            s.push(p);
        }
    }
    s
}

fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 4,
        "expected the four fixtures in {}",
        root.display()
    );
    assert!(
        dirs.iter().any(|d| d.ends_with("gpu_hd128")),
        "the head_dim-128 fixture (the one the GPU kernels take) is missing"
    );
    dirs
}

fn load(dir: &Path) -> Model {
    let (config, weights) = load_model(dir, &LoadOptions::default()).unwrap();
    Model::new(config, weights, CpuBackend).unwrap()
}

fn tokens(dir: &Path) -> Vec<u32> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("tokens.json")).unwrap()).unwrap()
}

/// transformers' logits `[T, vocab]`, f32.
fn reference_logits(dir: &Path) -> Vec<f32> {
    let bytes = std::fs::read(dir.join("logits.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("logits").unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn logits_match_transformers_for_every_fixture_and_split() {
    let mut failures = Vec::new();
    for dir in fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let model = load(&dir);
        let tokens = tokens(&dir);
        let theirs = reference_logits(&dir);
        assert_eq!(
            theirs.len(),
            tokens.len() * model.config().vocab_size,
            "{name}: logits shape"
        );
        let (lo, hi) = theirs
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| {
                (l.min(x), h.max(x))
            });
        let range = hi - lo;
        let chunk = model.config().attention_chunk_size;
        for prefill in std::iter::once(tokens.len()).chain(splits(tokens.len(), chunk)) {
            let ours = model.logits(&tokens, Some(prefill)).unwrap();
            let err = max_abs_diff(&ours, &theirs);
            println!("{name:>14} prefill {prefill:>3}: max |ours - theirs| = {err:.3e}, range {range:.2}, ratio {:.2e}", err / range);
            if err > REL_TOL * range {
                failures.push(format!(
                    "{name} prefill {prefill}: {err:.3e} > {REL_TOL} x {range:.2}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
