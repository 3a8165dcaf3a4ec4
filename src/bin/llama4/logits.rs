//! `llama4 logits`: the logits of every position of a token sequence, into a safetensors file.
use crate::generate::{with_model, Quantize};
use llama4_cuda::model::device_choice::DeviceKind;
use llama4_cuda::model::tokenizer::parse_token_ids;
use llama4_cuda::{Error, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Token ids, e.g. 200000,1234,567.
    #[arg(long)]
    pub tokens: String,
    /// Run the first N tokens as one prefill and the rest one decode step at a time (default: all in
    /// one prefill).
    #[arg(long)]
    pub prefill: Option<usize>,
    /// Output file: tensor `logits`, f32, [tokens, vocab].
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum)]
    pub quantize: Option<Quantize>,
    /// Where to run; without it, cuda when a GPU and the kernels are present, else cpu.
    #[arg(long, value_enum)]
    pub device: Option<DeviceKind>,
}

pub fn run(args: Args) -> Result<()> {
    let tokens = parse_token_ids(&args.tokens)?;
    let (logits, vocab) = with_model(Some(&args.model), args.quantize, args.device, |m| {
        Ok((m.logits(&tokens, args.prefill)?, m.vocab()))
    })?;
    let bytes: &[u8] = bytemuck::cast_slice(&logits);
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![tokens.len(), vocab],
        bytes,
    )
    .map_err(|e| Error::invalid("logits", format!("tensor view: {e}")))?;
    safetensors::serialize_to_file([("logits", view)], None, &args.out)
        .map_err(|e| Error::invalid("logits", format!("writing {}: {e}", args.out.display())))?;
    eprintln!(
        "wrote logits [{}, {vocab}] to {}",
        tokens.len(),
        args.out.display()
    );
    Ok(())
}
