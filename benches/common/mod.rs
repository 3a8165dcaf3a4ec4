//! Shared by the GPU benches (`mod common;`): the device (or the skip line), CUDA-event timing
//! through [`time_stream`], the measured copy bandwidth, the datasheet tensor peaks, and the
//! GB/s / TFLOP/s / fraction-of-floor table.
#![allow(dead_code)] // each bench uses a part

use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::CudaStream;
use llama4_cuda::device::{driver_error, time_stream, Device};
use llama4_cuda::ops::gemm::DeviceInfo;

/// The first CUDA device, or None after printing `<bench>: skipped: ...` (no kernels in this build,
/// or no device).
pub fn device(bench: &str) -> Option<Device> {
    if !llama4_cuda::sys::KERNELS_BUILT {
        println!("{bench}: skipped: no CUDA kernels in this build (run tools/cuda-toolchain.sh)");
        return None;
    }
    match Device::first() {
        Ok(d) => Some(d),
        Err(e) => {
            println!("{bench}: skipped: no CUDA device ({e})");
            None
        }
    }
}

/// GPU time of `iters` calls of `f(i)` (CUDA events, after one untimed warm-up call with i = 0).
pub fn time(s: &Arc<CudaStream>, iters: u64, mut f: impl FnMut(u64)) -> Duration {
    let mut i = 0;
    time_stream(s, iters, || {
        f(i);
        i += 1;
        Ok(())
    })
    .expect("timing")
}

/// Measured device-to-device copy bandwidth, bytes read + written per second (1 GiB, 10 copies).
pub fn copy_bandwidth(s: &Arc<CudaStream>) -> f64 {
    let n = 1usize << 30;
    let src = s.alloc_zeros::<u8>(n).expect("alloc");
    let mut dst = s.alloc_zeros::<u8>(n).expect("alloc");
    let t = time_stream(s, 10, || {
        s.memcpy_dtod(&src, &mut dst)
            .map_err(|e| driver_error("copy", e))
    })
    .expect("copy");
    2.0 * n as f64 * 10.0 / t.as_secs_f64()
}

/// Prints the device line: compute capability, SM count and the copy bandwidth `bw` (bytes/s).
pub fn print_device(dev: &DeviceInfo, bw: f64) {
    println!(
        "device sm_{}{} ({} SMs): copy bandwidth {:.0} GB/s",
        dev.cc.0,
        dev.cc.1,
        dev.sm_count,
        bw / 1e9
    );
}

/// Datasheet dense tensor peaks (bf16, fp8) in FLOP/s for compute capability `cc`: H100 SXM 989 /
/// 1979 TFLOP/s, else A100's 312 (no fp8). Stated, not measured.
pub fn tensor_peaks(cc: (u32, u32)) -> (f64, f64) {
    if cc.0 >= 9 {
        (989e12, 1979e12)
    } else {
        (312e12, 312e12)
    }
}

/// A comma-separated list from the environment (`L4C_...=a,b,c`), to narrow a bench's grid.
pub fn env_list(var: &str) -> Option<Vec<String>> {
    std::env::var(var)
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
}

/// [`env_list`] parsed as numbers (unparsable entries dropped), or `default` when unset.
pub fn env_usizes(var: &str, default: &[usize]) -> Vec<usize> {
    env_list(var).map_or(default.to_vec(), |v| {
        v.iter().filter_map(|s| s.parse().ok()).collect()
    })
}

/// xorshift64 (`seed` must be nonzero): bench data needs speed, not test-grade randomness.
pub fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// [`xorshift`] as a value uniform in [-1, 1).
pub fn xorshift_unit(seed: &mut u64) -> f32 {
    ((xorshift(seed) >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// One measured case of a table.
pub struct Row {
    pub name: String,
    pub secs: f64,
    pub bytes: f64,
    pub flops: f64,
    /// The tensor peak the case runs at (FLOP/s).
    pub peak: f64,
}

/// Prints the rows: time, GB/s, TFLOP/s and the fraction of the floor
/// max(bytes / copy bandwidth `bw`, flops / peak); `name_width` columns for the names.
pub fn print_rows(rows: &[Row], bw: f64, name_width: usize) {
    println!(
        "\n{:<name_width$} {:>9} {:>8} {:>8} {:>6}",
        "case [plan]", "us", "GB/s", "TFLOP/s", "floor"
    );
    for r in rows {
        let floor = (r.bytes / bw).max(r.flops / r.peak);
        println!(
            "{:<name_width$} {:>9.2} {:>8.0} {:>8.1} {:>5.0}%",
            r.name,
            r.secs * 1e6,
            r.bytes / r.secs / 1e9,
            r.flops / r.secs / 1e12,
            100.0 * floor / r.secs
        );
    }
}
