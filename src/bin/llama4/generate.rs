//! `llama4 generate`: sample a continuation of a prompt (the embedded default model without --model).
use llama4_cuda::model::checkpoint::{load_model, LoadOptions};
use llama4_cuda::model::config::GenerationConfig;
use llama4_cuda::model::generate::{generate, stop_tokens, GenerateOptions};
use llama4_cuda::model::quantize::QuantizeSpec;
use llama4_cuda::model::sampling::{SamplingParams, DEFAULT_SEED};
use llama4_cuda::model::tokenizer::{parse_token_ids, Tokenizer};
use llama4_cuda::model::{synthetic, Backend, CpuBackend, Model};
use llama4_cuda::{Error, Result};
use std::path::{Path, PathBuf};

/// Expert quantization applied when loading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Quantize {
    /// Routed and shared experts int4, groups of 128, symmetric (Meta's w4a16 recipe).
    Int4,
    /// Routed and shared experts fp8 e4m3, per output channel.
    Fp8,
}

impl Quantize {
    /// Meta's recipe in this format.
    pub fn spec(self) -> QuantizeSpec {
        match self {
            Quantize::Int4 => QuantizeSpec::int4(),
            Quantize::Fp8 => QuantizeSpec::fp8(),
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (config.json, safetensors, optional tokenizer.json); without it the embedded
    /// default model (small, random weights) runs.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Prompt text, wrapped in the Llama 4 chat template (needs the checkpoint's tokenizer.json).
    #[arg(long, conflicts_with = "tokens")]
    pub prompt: Option<String>,
    /// Encode --prompt as plain text instead of a chat turn.
    #[arg(long, requires = "prompt")]
    pub raw: bool,
    /// Prompt token ids, e.g. 200000,1234,567.
    #[arg(long)]
    pub tokens: Option<String>,
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// 0 = greedy [default: generation_config.json's, else 0.6].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus mass in (0, 1] [default: generation_config.json's, else 0.9].
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    #[arg(long, value_enum)]
    pub quantize: Option<Quantize>,
}

/// A model ready to run, with what came with it.
pub struct Loaded {
    pub model: Model<CpuBackend>,
    pub tokenizer: Option<Tokenizer>,
    pub stop_tokens: Vec<u32>,
}

/// Loads `--model DIR`, or the embedded default model (saying so on stderr) when `dir` is `None`.
pub fn load(dir: Option<&Path>, quantize: Option<Quantize>) -> Result<Loaded> {
    let Some(dir) = dir else {
        eprintln!(
            "no --model given: running the embedded default model (Scout-shaped, {} layers, random weights, \
             seed {}; no tokenizer)",
            synthetic::config().num_hidden_layers,
            synthetic::SEED
        );
        let mut weights = synthetic::random_weights(&synthetic::config(), synthetic::SEED);
        if let Some(q) = quantize {
            weights = synthetic::quantize(weights, &q.spec())?;
        }
        let model = Model::new(synthetic::config(), weights, CpuBackend)?;
        let stop_tokens = stop_tokens(&model.config().eos_token_ids, None);
        return Ok(Loaded {
            model,
            tokenizer: None,
            stop_tokens,
        });
    };
    if !dir.is_dir() {
        return Err(Error::invalid(
            "--model",
            format!("{}: no such directory", dir.display()),
        ));
    }
    let opts = LoadOptions {
        quantize: quantize.map(Quantize::spec),
        progress: false,
    };
    let (config, weights) = load_model(dir, &opts)?;
    let model = Model::new(config, weights, CpuBackend)?;
    let stop_tokens = stop_tokens(
        &model.config().eos_token_ids,
        GenerationConfig::load(dir)?.as_ref(),
    );
    Ok(Loaded {
        model,
        tokenizer: Tokenizer::from_dir(dir)?,
        stop_tokens,
    })
}

/// The prompt's token ids: --tokens, --prompt through the tokenizer, or the embedded model's default.
fn prompt_ids(args: &Args, loaded: &Loaded) -> Result<Vec<u32>> {
    if let Some(t) = &args.tokens {
        return parse_token_ids(t);
    }
    if let Some(text) = &args.prompt {
        let tok = loaded.tokenizer.as_ref().ok_or_else(|| {
            Error::invalid(
                "--prompt",
                "this model has no tokenizer.json: give token ids with --tokens instead",
            )
        })?;
        let ids = if args.raw {
            tok.encode(text, true)?
        } else {
            tok.encode_chat(text)?
        };
        if ids.is_empty() {
            return Err(Error::invalid(
                "--prompt",
                "the prompt encodes to no tokens",
            ));
        }
        return Ok(ids);
    }
    if args.model.is_none() {
        return Ok(synthetic::DEFAULT_PROMPT.to_vec());
    }
    Err(Error::invalid(
        "generate",
        "give a prompt with --prompt TEXT or --tokens IDS",
    ))
}

pub fn run(args: Args) -> Result<()> {
    let loaded = load(args.model.as_deref(), args.quantize)?;
    let prompt = prompt_ids(&args, &loaded)?;
    let generation = args
        .model
        .as_deref()
        .map(GenerationConfig::load)
        .transpose()?
        .flatten();
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingParams::resolve(
            args.temperature,
            args.top_p,
            args.seed,
            generation.as_ref(),
        ),
        stop_tokens: loaded.stop_tokens.clone(),
    };
    let g = generate(&loaded.model, &prompt, &opts, |_| {})?;
    let ids: Vec<String> = g.tokens.iter().map(u32::to_string).collect();
    println!("prompt tokens: {}", prompt.len());
    println!("generated tokens: {}", ids.join(","));
    if let Some(tok) = &loaded.tokenizer {
        println!("text: {}", tok.decode(&g.tokens)?);
    }
    println!(
        "prefill: {} tokens at {:.1} tokens/s; decode: {} tokens at {:.1} tokens/s ({})",
        g.prompt_tokens,
        g.prefill_tokens_per_sec(),
        g.tokens.len().saturating_sub(1),
        g.decode_tokens_per_sec(),
        loaded.model.backend().name()
    );
    Ok(())
}
