//! `llama4 quantize`.
use llama4_cuda::Result;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    Err(llama4_cuda::Error::invalid(
        "quantize",
        "not implemented yet",
    ))
}
