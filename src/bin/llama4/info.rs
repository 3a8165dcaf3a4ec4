//! `llama4 info`: parameters, bytes per weight format, KV bytes per token and a memory plan.
use std::path::PathBuf;

use llama4_cuda::model::config::Config;
use llama4_cuda::model::plan::{self, ParamCounts};
use llama4_cuda::model::quantize::QuantizeSpec;
use llama4_cuda::quant::{Int4Config, ScaleDType};
use llama4_cuda::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (its config.json is read; weights are not).
    #[arg(long, conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// A released configuration instead of a checkpoint.
    #[arg(long, value_parser = ["scout", "maverick"])]
    preset: Option<String>,
    /// Context length (tokens of one sequence) to plan the KV cache for; default: the model's maximum.
    #[arg(long)]
    context: Option<u64>,
    /// GPU memory in GiB.
    #[arg(long, default_value_t = 80.0)]
    gpu_mem: f64,
    /// Plan with the experts quantized (Meta's recipe).
    #[arg(long, value_parser = ["int4", "fp8"])]
    quantize: Option<String>,
    /// KV cache element type.
    #[arg(long, default_value = "bf16", value_parser = ["bf16", "fp8"])]
    kv_dtype: String,
}

const GB: f64 = 1e9;
const GIB: f64 = (1u64 << 30) as f64;

pub fn run(args: Args) -> Result<()> {
    let (name, config) = match (&args.model, args.preset.as_deref()) {
        (Some(dir), _) => (
            dir.display().to_string(),
            Config::from_file(&dir.join("config.json"))?,
        ),
        (None, Some("maverick")) => ("Llama 4 Maverick (preset)".to_string(), Config::maverick()),
        (None, Some(_)) | (None, None) => ("Llama 4 Scout (preset)".to_string(), Config::scout()),
    };
    if !(args.gpu_mem.is_finite() && args.gpu_mem > 0.0) {
        return Err(Error::invalid(
            "info",
            format!(
                "--gpu-mem {}: expected a positive number of GiB",
                args.gpu_mem
            ),
        ));
    }
    let spec = args
        .quantize
        .as_deref()
        .map(QuantizeSpec::parse)
        .transpose()?;
    let context = args
        .context
        .unwrap_or(config.max_position_embeddings as u64);
    let gpu = (args.gpu_mem * GIB) as u64;
    let kv_elem = if args.kv_dtype == "fp8" { 1 } else { 2 };

    let p = ParamCounts::of(&config);
    let b = |x: u64| format!("{:.2} B", x as f64 / 1e9);
    println!("model: {name}");
    println!(
        "  {} layers ({} MoE, {} NoPE), hidden {}, heads {}/{} x {}, experts {} (top-{}), vocab {}",
        config.num_hidden_layers,
        config.num_moe_layers(),
        config.num_nope_layers(),
        config.hidden_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
        config.num_local_experts,
        config.num_experts_per_tok,
        config.vocab_size
    );
    println!(
        "parameters: total {}, active per token {}",
        b(p.total),
        b(p.active)
    );
    println!(
        "  embed {}, lm_head {}, attention {}, routed experts {}, shared experts {}, dense MLP {}, routers {}, norms {}",
        b(p.embed),
        b(p.lm_head),
        b(p.attention),
        b(p.routed_experts),
        b(p.shared_experts),
        b(p.dense_mlp),
        b(p.routers),
        b(p.norms)
    );
    println!("weight bytes:");
    let int4_f32 = QuantizeSpec::meta(llama4_cuda::model::quantize::QuantFormat::Int4(
        Int4Config {
            scale_dtype: ScaleDType::F32,
            ..Int4Config::default()
        },
    ));
    for (label, s) in [
        ("bf16", None),
        (
            "experts fp8 (per channel), rest bf16",
            Some(QuantizeSpec::fp8()),
        ),
        (
            "experts int4 g128 (bf16 scales), rest bf16",
            Some(QuantizeSpec::int4()),
        ),
        ("experts int4 g128 (f32 scales), rest bf16", Some(int4_f32)),
    ] {
        let x = plan::weight_bytes(&config, s.as_ref());
        println!(
            "  {label:<44} {:>9.1} GB ({:.1} GiB)",
            x as f64 / GB,
            x as f64 / GIB
        );
    }
    let per = plan::kv_bytes_per_token_layer(&config, kv_elem);
    println!(
        "KV cache ({}): {per} B per token per layer; {} B per token over the {} NoPE layers; \
         the {} chunked layers hold at most {} tokens ({:.2} GiB)",
        args.kv_dtype,
        per * config.num_nope_layers() as u64,
        config.num_nope_layers(),
        config.num_hidden_layers - config.num_nope_layers(),
        config.attention_chunk_size,
        (per * (config.num_hidden_layers - config.num_nope_layers()) as u64
            * config.attention_chunk_size as u64) as f64
            / GIB,
    );

    let m = plan::memory_plan(&config, spec.as_ref(), context, gpu, kv_elem);
    let weights_label = args
        .quantize
        .as_deref()
        .map_or("bf16".to_string(), |q| format!("experts {q}"));
    println!(
        "memory plan: {context} tokens, {:.1} GiB GPU, weights {weights_label}",
        args.gpu_mem
    );
    println!("  weights  {:>9.2} GiB", m.weight_bytes as f64 / GIB);
    println!("  KV       {:>9.2} GiB", m.kv_bytes as f64 / GIB);
    println!(
        "  headroom {:>9.2} GiB (2 GiB reserve + one chunk of prefill activations)",
        m.headroom_bytes as f64 / GIB
    );
    println!(
        "  total    {:>9.2} GiB: {}",
        m.total_bytes as f64 / GIB,
        if m.fits { "fits" } else { "does NOT fit" }
    );
    match m.max_context {
        None => println!("  KV room: unbounded (no NoPE layers)"),
        Some(0) if m.weight_bytes + m.headroom_bytes > gpu => {
            println!("  KV room: none, the weights and headroom alone exceed the GPU")
        }
        Some(t) => println!(
            "  KV room: {t} tokens of context fit{}",
            if t > config.max_position_embeddings as u64 {
                " (beyond max_position_embeddings)"
            } else {
                ""
            }
        ),
    }
    Ok(())
}
