//! `llama4 quantize`: a checkpoint into a quantized checkpoint (docs/FORMATS.md).
use std::path::PathBuf;

use llama4_cuda::model::quantize::{quantize_checkpoint, QuantizeOptions, QuantizeSpec};
use llama4_cuda::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Source checkpoint directory.
    #[arg(long)]
    model: PathBuf,
    /// Output directory (created; must be empty).
    #[arg(long)]
    out: PathBuf,
    /// Target format of the routed and shared experts (Meta's recipe).
    #[arg(long, value_parser = ["int4", "fp8"])]
    format: String,
    /// Largest output shard in GiB.
    #[arg(long, default_value_t = 4.0)]
    shard_gib: f64,
}

pub fn run(args: Args) -> Result<()> {
    if !(args.shard_gib.is_finite() && args.shard_gib > 0.0) {
        return Err(Error::invalid(
            "quantize",
            format!("--shard-gib {}: expected a positive number", args.shard_gib),
        ));
    }
    let mut opts = QuantizeOptions::new(QuantizeSpec::parse(&args.format)?);
    opts.shard_bytes = (args.shard_gib * (1u64 << 30) as f64) as u64;
    opts.progress = true;
    let bytes = quantize_checkpoint(&args.model, &args.out, &opts)?;
    println!(
        "wrote {} ({:.2} GB of tensors, {})",
        args.out.display(),
        bytes as f64 / 1e9,
        args.format
    );
    Ok(())
}
