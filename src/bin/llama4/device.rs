//! `--device`: which backend runs the model, with one info line on stderr saying which and why.
use llama4_cuda::model::device_choice::{choose_device, DeviceKind, Probe};
use llama4_cuda::model::Config;
use llama4_cuda::Result;

/// The device for a model whose configuration `config` reads (only asked when CUDA is chosen; None
/// when it cannot be read: loading then reports why): `requested`, or the automatic choice. A
/// configuration the GPU kernels cannot run (e.g. the embedded model's head_dim 64) falls back to
/// the CPU when the choice was automatic, and is an error naming the value when `--device cuda` was
/// asked for.
pub fn select(
    requested: Option<DeviceKind>,
    config: impl FnOnce() -> Option<Config>,
) -> Result<DeviceKind> {
    let choice = choose_device(requested, &Probe::detect())?;
    if choice.kind == DeviceKind::Cuda {
        if let Some(Err(e)) = config().map(|c| c.validate_for_gpu()) {
            if requested.is_some() {
                return Err(e);
            }
            eprintln!("device: cpu (auto: a CUDA device is present, but {e})");
            return Ok(DeviceKind::Cpu);
        }
    }
    eprintln!("{}", choice.info);
    Ok(choice.kind)
}
