//! `llama4 generate`: sample a continuation of a prompt (the embedded default model without --model).
use llama4_cuda::model::checkpoint::{load_model, LoadOptions};
use llama4_cuda::model::config::GenerationConfig;
use llama4_cuda::model::cuda::generate::generate_on_device;
use llama4_cuda::model::cuda::CudaBackend;
use llama4_cuda::model::device_choice::DeviceKind;
use llama4_cuda::model::generate::{generate, stop_tokens, GenerateOptions, Generation};
use llama4_cuda::model::quantize::QuantizeSpec;
use llama4_cuda::model::sampling::{SamplingParams, DEFAULT_SEED};
use llama4_cuda::model::tokenizer::{parse_token_ids, Tokenizer};
use llama4_cuda::model::{synthetic, Backend, Config, CpuBackend, Model};
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
    /// Sampling seed: the same seed repeats the same tokens on the same device kind. On cuda, tokens
    /// after the first are drawn on the GPU (same distribution as the CPU sampler, different draws).
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    #[arg(long, value_enum)]
    pub quantize: Option<Quantize>,
    /// Where to run; without it, cuda when a GPU and the kernels are present, else cpu. cuda decodes
    /// with a replayed CUDA graph and samples on the GPU (see --seed).
    #[arg(long, value_enum)]
    pub device: Option<DeviceKind>,
}

/// A model ready to run, with what came with it.
pub struct Loaded<B: Backend> {
    pub model: Model<B>,
    pub tokenizer: Option<Tokenizer>,
    pub stop_tokens: Vec<u32>,
}

/// The configuration `load` will use: the checkpoint's config.json or the embedded model's.
pub fn config_of(dir: Option<&Path>) -> Result<Config> {
    match dir {
        None => Ok(synthetic::config()),
        Some(d) if !d.is_dir() => Err(Error::invalid(
            "--model",
            format!("{}: no such directory", d.display()),
        )),
        Some(d) => Config::from_file(&d.join("config.json")),
    }
}

/// Runs `f` on the model loaded on the device `--device` (or the automatic choice) selects.
pub fn with_model<T>(
    dir: Option<&Path>,
    quantize: Option<Quantize>,
    device: Option<DeviceKind>,
    f: impl FnOnce(&dyn Run) -> Result<T>,
) -> Result<T> {
    match crate::device::select(device, || config_of(dir).ok())? {
        DeviceKind::Cpu => f(&load(dir, quantize, CpuBackend)?),
        DeviceKind::Cuda => f(&GraphRun(load(dir, quantize, CudaBackend::first()?)?)),
    }
}

/// What the subcommands do with a loaded model, whatever its backend.
pub trait Run {
    /// Generates after `prompt`, calling `on_token` with each new token as soon as it is known.
    fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(u32),
    ) -> Result<Generation>;
    fn logits(&self, tokens: &[u32], prefill: Option<usize>) -> Result<Vec<f32>>;
    fn vocab(&self) -> usize;
    fn tokenizer(&self) -> Option<&Tokenizer>;
    fn stop_tokens(&self) -> &[u32];
    fn backend_name(&self) -> String;
}

impl<B: Backend> Run for Loaded<B> {
    fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(u32),
    ) -> Result<Generation> {
        generate(&self.model, prompt, opts, on_token)
    }
    fn logits(&self, tokens: &[u32], prefill: Option<usize>) -> Result<Vec<f32>> {
        self.model.logits(tokens, prefill)
    }
    fn vocab(&self) -> usize {
        self.model.config().vocab_size
    }
    fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }
    fn stop_tokens(&self) -> &[u32] {
        &self.stop_tokens
    }
    fn backend_name(&self) -> String {
        self.model.backend().name()
    }
}

/// A model on the GPU: generation runs through `BatchDecoder` (graph replay, device sampling); the
/// rest as any backend.
pub struct GraphRun(pub Loaded<CudaBackend>);

impl Run for GraphRun {
    fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(u32),
    ) -> Result<Generation> {
        generate_on_device(&self.0.model, prompt, opts, on_token)
    }
    fn logits(&self, tokens: &[u32], prefill: Option<usize>) -> Result<Vec<f32>> {
        self.0.logits(tokens, prefill)
    }
    fn vocab(&self) -> usize {
        self.0.vocab()
    }
    fn tokenizer(&self) -> Option<&Tokenizer> {
        self.0.tokenizer()
    }
    fn stop_tokens(&self) -> &[u32] {
        self.0.stop_tokens()
    }
    fn backend_name(&self) -> String {
        format!("{}, graph replay, device sampling", self.0.backend_name())
    }
}

/// Loads `--model DIR`, or the embedded default model (saying so on stderr) when `dir` is `None`,
/// onto `backend`.
pub fn load<B: Backend>(
    dir: Option<&Path>,
    quantize: Option<Quantize>,
    backend: B,
) -> Result<Loaded<B>> {
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
        let model = Model::new(synthetic::config(), weights, backend)?;
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
    let model = Model::new(config, weights, backend)?;
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
fn prompt_ids(args: &Args, loaded: &dyn Run) -> Result<Vec<u32>> {
    if let Some(t) = &args.tokens {
        return parse_token_ids(t);
    }
    if let Some(text) = &args.prompt {
        let tok = loaded.tokenizer().ok_or_else(|| {
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
    with_model(
        args.model.as_deref(),
        args.quantize,
        args.device,
        |loaded| generate_with(&args, loaded),
    )
}

fn generate_with(args: &Args, loaded: &dyn Run) -> Result<()> {
    let prompt = prompt_ids(args, loaded)?;
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
        stop_tokens: loaded.stop_tokens().to_vec(),
    };
    println!("prompt tokens: {}", prompt.len());
    // Each token is printed as soon as it is known; the finished line reads as before.
    let mut first = true;
    let mut print = |id: u32| {
        use std::io::Write;
        let sep = if std::mem::take(&mut first) {
            "generated tokens: "
        } else {
            ","
        };
        print!("{sep}{id}");
        let _ = std::io::stdout().flush();
    };
    let g = loaded.generate(&prompt, &opts, &mut print);
    if !first {
        println!();
    }
    let g = g?;
    if g.tokens.is_empty() {
        println!("generated tokens: ");
    }
    if let Some(tok) = loaded.tokenizer() {
        println!("text: {}", tok.decode(&g.tokens)?);
    }
    println!(
        "prefill: {} tokens at {:.1} tokens/s; decode: {} tokens at {:.1} tokens/s ({})",
        g.prompt_tokens,
        g.prefill_tokens_per_sec(),
        g.tokens.len().saturating_sub(1),
        g.decode_tokens_per_sec(),
        loaded.backend_name()
    );
    Ok(())
}
