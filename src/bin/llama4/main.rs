//! The `llama4` command line. Each subcommand lives in its own file beside this one.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod bench_model;
mod device;
mod generate;
mod info;
mod logits;
mod quantize;

#[derive(Parser)]
#[command(
    name = "llama4",
    version,
    about = "Run Llama 4 Scout and Maverick (llama4-cuda)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text (the embedded default model when no --model is given).
    Generate(generate::Args),
    /// Write the logits of every position to a safetensors file.
    Logits(logits::Args),
    /// Print parameters, bytes per weight format, KV bytes and a memory plan.
    Info(info::Args),
    /// Quantize a checkpoint (experts int4 or fp8) into a new safetensors checkpoint.
    Quantize(quantize::Args),
    /// Measure the model on the GPU at the real shapes with synthetic weights made on the device.
    BenchModel(bench_model::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Logits(a) => logits::run(a),
        Command::Info(a) => info::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::BenchModel(a) => bench_model::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
