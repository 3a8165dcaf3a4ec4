//! `llama4 bench-model`: the model on the GPU at the real shapes, with synthetic weights made on the
//! device: prefill tokens/s, decode tokens/s (CUDA-graph steps) per batch and context, memory used,
//! and the decode floor (bytes a step must read over the measured copy bandwidth).
use std::time::Instant;

use llama4_cuda::device::{time_stream, Device, DriverResultExt, EventTimer};
use llama4_cuda::kv_cache::KvDType;
use llama4_cuda::model::cuda::decode::BatchDecoder;
use llama4_cuda::model::cuda::CudaBackend;
use llama4_cuda::model::device_choice::{choose_device, DeviceKind, Probe};
use llama4_cuda::model::gpu_plan::{decode_bytes, plan_gpu, plan_kv, GpuPlanRequest};
use llama4_cuda::model::quantize::QuantizeSpec;
use llama4_cuda::model::sampling::SamplingParams;
use llama4_cuda::model::synthetic_gpu::synthetic_model;
use llama4_cuda::model::{Config, Model};
use llama4_cuda::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    Scout,
    Maverick,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Weights {
    /// Routed and shared experts int4 (g128, symmetric), the rest bf16 (Meta's recipe).
    Int4,
    /// Routed and shared experts fp8 e4m3 per channel, the rest bf16.
    Fp8,
    /// Everything bf16.
    Bf16,
}

/// How a timed decode step ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StepEnd {
    /// Sampling on the device with Llama 4's defaults (temperature 0.6, top-p 0.9): ids to ids.
    TopP,
    /// Greedy (argmax) on the device: ids to ids.
    Greedy,
    /// At the logits (no sampling in the step).
    Logits,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KvKind {
    Bf16,
    Fp8,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, value_enum, default_value = "scout")]
    pub preset: Preset,
    #[arg(long, value_enum, default_value = "int4")]
    pub quantize: Weights,
    /// Only the first N layers (Maverick does not fit one GPU: `--layers 2` is one dense + one MoE
    /// layer with 128 experts).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Decode batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    pub batch: Vec<usize>,
    /// Decode contexts (tokens already in each sequence's cache).
    #[arg(long, value_delimiter = ',', default_value = "1024,131072,1048576")]
    pub context: Vec<usize>,
    /// Prefill prompt lengths.
    #[arg(long, value_delimiter = ',', default_value = "1024,8192,32768")]
    pub prompt_tokens: Vec<usize>,
    /// Prefill piece (tokens per forward; pieces never cross an attention chunk).
    #[arg(long, default_value_t = 8192)]
    pub prefill_piece: usize,
    /// Timed decode steps per row.
    #[arg(long, default_value_t = 32)]
    pub steps: usize,
    #[arg(long, value_enum, default_value = "bf16")]
    pub kv_dtype: KvKind,
    /// How each timed decode step ends: the device sampler is part of the step by default.
    #[arg(long, value_enum, default_value = "top-p")]
    pub step_end: StepEnd,
    /// Pinned host memory the KV overflow tier may use, GiB (the 1M-token rows need it on 80 GB).
    #[arg(long, default_value_t = 0.0)]
    pub host_mem: f64,
    /// Seed of the synthetic weights.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// No device: print the memory plan and the decode floor of every row for a GPU of --gpu-mem
    /// GiB free and --bandwidth GB/s (computed, not measured).
    #[arg(long)]
    pub plan_only: bool,
    /// With --plan-only: free device memory, GiB.
    #[arg(long, default_value_t = 79.0, requires = "plan_only")]
    pub gpu_mem: f64,
    /// With --plan-only: device bandwidth for the floor, GB/s.
    #[arg(long, default_value_t = 3000.0, requires = "plan_only")]
    pub bandwidth: f64,
}

const GIB: f64 = (1u64 << 30) as f64;

/// The benchmarked configuration, checked before any device work.
pub fn bench_config(args: &Args) -> Result<(Config, Option<QuantizeSpec>)> {
    let mut c = match args.preset {
        Preset::Scout => Config::scout(),
        Preset::Maverick => Config::maverick(),
    };
    if let Some(n) = args.layers {
        if n == 0 || n > c.num_hidden_layers {
            return Err(Error::invalid(
                "--layers",
                format!("{n}: expected 1..={}", c.num_hidden_layers),
            ));
        }
        c.num_hidden_layers = n;
        c.layers.truncate(n);
    }
    for (name, v) in [
        ("--batch", &args.batch),
        ("--context", &args.context),
        ("--prompt-tokens", &args.prompt_tokens),
    ] {
        if v.is_empty() || v.contains(&0) {
            return Err(Error::invalid(name, "expected positive integers"));
        }
    }
    if args.steps < 2 || args.prefill_piece == 0 {
        return Err(Error::invalid(
            "bench-model",
            "--steps must be at least 2 and --prefill-piece at least 1",
        ));
    }
    for (name, v) in [
        ("--host-mem", args.host_mem),
        ("--gpu-mem", args.gpu_mem),
        ("--bandwidth", args.bandwidth),
    ] {
        if !(v.is_finite() && v >= 0.0) || (name == "--bandwidth" && v == 0.0) {
            return Err(Error::invalid(
                name,
                format!("{v}: expected a non-negative number"),
            ));
        }
    }
    c.validate_for_gpu()?;
    let spec = match args.quantize {
        Weights::Int4 => Some(QuantizeSpec::int4()),
        Weights::Fp8 => Some(QuantizeSpec::fp8()),
        Weights::Bf16 => None,
    };
    Ok((c, spec))
}

fn kv_dtype(args: &Args) -> KvDType {
    match args.kv_dtype {
        KvKind::Bf16 => KvDType::BF16,
        KvKind::Fp8 => KvDType::Fp8E4M3,
    }
}

/// `--plan-only`: every row's plan and floor, no device.
fn plan_only(args: &Args, config: &Config, spec: Option<&QuantizeSpec>) -> Result<()> {
    let kv = kv_dtype(args);
    let free = (args.gpu_mem * GIB) as u64;
    let req = |batch, context| GpuPlanRequest {
        batch,
        context,
        kv_dtype: kv,
        free_bytes: free,
        host_bytes: (args.host_mem * GIB) as u64,
    };
    let w = plan_gpu(config, spec, req(1, 1))?;
    println!(
        "# bench-model plan: {:?} {:?}, {} layers, KV {kv:?}, {:.1} GiB free, {:.0} GB/s (computed, not measured)",
        args.preset,
        args.quantize,
        config.layers.len(),
        args.gpu_mem,
        args.bandwidth
    );
    println!("weights: {:.2} GB", w.weight_bytes as f64 / 1e9);
    println!("\n| prefill tokens | device memory planned (GB) |\n|---|---|");
    for &p in &args.prompt_tokens {
        match plan_gpu(config, spec, req(1, p)) {
            Ok(pl) => println!("| {p} | {:.1} |", pl.device_bytes() as f64 / 1e9),
            Err(e) => println!("| {p} | does not fit: {e} |"),
        }
    }
    println!(
        "\n| batch | context | weights + KV read per step (GB) | floor ms | floor tokens/s | device / host KV (GB) |\n|---|---|---|---|---|---|"
    );
    for &c in &args.context {
        for &b in &args.batch {
            let bytes = decode_bytes(config, spec, b, c, kv);
            let floor = bytes.floor_secs(args.bandwidth * 1e9);
            let fit = match plan_gpu(config, spec, req(b, c + 2 * args.steps + 4)) {
                Ok(p) => format!(
                    "{:.1} / {:.1}",
                    (p.kv_chunked_bytes + p.kv_global_device_bytes) as f64 / 1e9,
                    p.kv_global_host_bytes as f64 / 1e9
                ),
                Err(e) => format!("does not fit: {e}"),
            };
            println!(
                "| {b} | {c} | {:.2} + {:.2} | {:.3} | {:.0} | {fit} |",
                bytes.weights() as f64 / 1e9,
                bytes.kv as f64 / 1e9,
                floor * 1e3,
                b as f64 / floor
            );
        }
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    let (config, spec) = bench_config(&args)?;
    if args.plan_only {
        return plan_only(&args, &config, spec.as_ref());
    }
    let choice = choose_device(Some(DeviceKind::Cuda), &Probe::detect())?;
    eprintln!("{}", choice.info);
    let dev = Device::first()?;
    let kv_dtype = kv_dtype(&args);
    let host_bytes = (args.host_mem * GIB) as u64;
    let (free0, total) = dev.memory()?;
    println!(
        "# bench-model: {:?} {:?}, {} layers, KV {:?}, on {} ({:.1} GiB free of {:.1})",
        args.preset,
        args.quantize,
        config.layers.len(),
        kv_dtype,
        dev.name()?,
        free0 as f64 / GIB,
        total as f64 / GIB
    );
    let bw = copy_bandwidth(&dev)?;
    println!(
        "device copy bandwidth: {:.0} GB/s (read + write of 1 GiB)",
        bw / 1e9
    );
    // The weights alone must fit, with one short sequence.
    let req = |batch, context, free| GpuPlanRequest {
        batch,
        context,
        kv_dtype,
        free_bytes: free,
        host_bytes,
    };
    plan_gpu(&config, spec.as_ref(), req(1, 1, free0 as u64))?;
    let t0 = Instant::now();
    let backend = CudaBackend::new(dev.clone());
    let model = synthetic_model(config.clone(), spec.as_ref(), backend, args.seed)?;
    dev.synchronize()?;
    let (free1, _) = dev.memory()?;
    println!(
        "weights: {:.2} GB planned, {:.2} GB used on the device, made in {:.1} s",
        plan_gpu(&config, spec.as_ref(), req(1, 1, u64::MAX))?.weight_bytes as f64 / 1e9,
        (free0 - free1) as f64 / 1e9,
        t0.elapsed().as_secs_f64()
    );
    println!(
        "\n| prefill tokens | seconds | tokens/s | device memory used (GB) |\n|---|---|---|---|"
    );
    for &p in &args.prompt_tokens {
        let row = prefill_row(&model, &dev, p, args.prefill_piece, kv_dtype, &req);
        match row {
            Ok((secs, used)) => println!(
                "| {p} | {secs:.3} | {:.0} | {:.1} |",
                p as f64 / secs,
                used as f64 / 1e9
            ),
            Err(e) => println!("| {p} | - | - | skipped: {e} |"),
        }
    }
    println!("\ndecode steps end: {:?} (--step-end)", args.step_end);
    println!(
        "\n| batch | context | step ms (graph) | step ms (eager) | tokens/s | weights + KV read per step (GB) | floor ms | of floor | device memory used (GB) |\n|---|---|---|---|---|---|---|---|---|"
    );
    for &c in &args.context {
        for &b in &args.batch {
            let bytes = decode_bytes(&config, spec.as_ref(), b, c, kv_dtype);
            let floor = bytes.floor_secs(bw);
            match decode_row(&model, &dev, b, c, args.steps, kv_dtype, args.step_end, &req) {
                Ok((graph, eager, used)) => println!(
                    "| {b} | {c} | {:.3} | {:.3} | {:.0} | {:.2} + {:.2} | {:.3} | {:.0}% | {:.1} |",
                    graph * 1e3,
                    eager * 1e3,
                    b as f64 / graph,
                    bytes.weights() as f64 / 1e9,
                    bytes.kv as f64 / 1e9,
                    floor * 1e3,
                    100.0 * floor / graph,
                    used as f64 / 1e9
                ),
                Err(e) => println!(
                    "| {b} | {c} | - | - | - | {:.2} + {:.2} | {:.3} | - | skipped: {e} |",
                    bytes.weights() as f64 / 1e9,
                    bytes.kv as f64 / 1e9,
                    floor * 1e3
                ),
            }
        }
    }
    Ok(())
}

type Req<'a> = dyn Fn(usize, usize, u64) -> GpuPlanRequest + 'a;

/// Seconds of one prefill of `p` tokens (a fresh sequence), and device bytes in use meanwhile.
fn prefill_row(
    model: &Model<CudaBackend>,
    dev: &Device,
    p: usize,
    piece: usize,
    kv: KvDType,
    req: &Req,
) -> Result<(f64, usize)> {
    let c = model.config();
    let (free, total) = dev.memory()?;
    let plan = plan_kv(c, req(1, p, free as u64))?;
    let mut d = BatchDecoder::new(model, 1, p, kv, Some(&plan))?;
    let tokens: Vec<u32> = (0..p as u64)
        .map(|i| ((i * 7919 + 13) % c.vocab_size as u64) as u32)
        .collect();
    // A short warm-up sequence would change this one's cache: warm up on the first piece of a
    // second decoder instead is not worth the memory; the first call's launch overheads are
    // microseconds against a prefill of >= 1K tokens.
    let timer = EventTimer::new(dev.stream())?;
    timer.start(dev.stream())?;
    d.prefill(0, &tokens, piece, false)?;
    let secs = timer.stop(dev.stream())?.as_secs_f64();
    let used = total - dev.memory()?.0;
    Ok((secs, used))
}

/// (graph step seconds, eager step seconds, device bytes in use) at `batch` x `context`.
#[allow(clippy::too_many_arguments)]
fn decode_row(
    model: &Model<CudaBackend>,
    dev: &Device,
    batch: usize,
    context: usize,
    steps: usize,
    kv: KvDType,
    end: StepEnd,
    req: &Req,
) -> Result<(f64, f64, usize)> {
    let c = model.config();
    let max = context + 2 * steps + 4;
    let (free, total) = dev.memory()?;
    let plan = plan_kv(c, req(batch, max, free as u64))?;
    let mut d = BatchDecoder::new(model, batch, max, kv, Some(&plan))?;
    d.fill_kv(context, 7)?;
    let ids: Vec<u32> = (0..batch as u32).map(|b| (b * 31 + 5) % 1000).collect();
    d.set_ids(&ids)?;
    match end {
        StepEnd::TopP => d.sample_on_device(SamplingParams::default(), 1)?,
        StepEnd::Greedy => d.sample_on_device(SamplingParams::greedy(), 1)?,
        StepEnd::Logits => {}
    }
    let st = dev.stream().clone();
    let eager = time_stream(&st, steps as u64, || d.step())?.as_secs_f64() / steps as f64;
    d.capture()?;
    let graph = time_stream(&st, steps as u64 - 1, || d.replay())?.as_secs_f64()
        / (steps as f64 - 1.0).max(1.0);
    let used = total - dev.memory()?.0;
    Ok((graph, eager, used))
}

/// Bytes per second of a 1 GiB device-to-device copy (each byte read once and written once).
fn copy_bandwidth(dev: &Device) -> Result<f64> {
    let n = 1usize << 30;
    let src = dev.zeros::<u8>(n)?;
    let mut dst = dev.zeros::<u8>(n)?;
    let st = dev.stream().clone();
    let iters = 20;
    let t = time_stream(&st, iters, || {
        st.memcpy_dtod(&src, &mut dst).op("copy_bandwidth")
    })?;
    Ok(2.0 * n as f64 * iters as f64 / t.as_secs_f64())
}
