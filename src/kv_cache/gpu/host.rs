//! The overflow tier: one mapped, portable pinned host allocation that kernels read by address.
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys::{self, CUresult};
use cudarc::driver::CudaContext;

use crate::device::{driver_error, DriverResultExt};
use crate::error::{Error, Result};

/// Pinned host memory allocated with `cuMemHostAlloc(DEVICEMAP | PORTABLE)`; freed on drop.
pub(super) struct HostArena {
    ctx: Arc<CudaContext>,
    host: *mut c_void,
    dev: u64,
    bytes: usize,
}

// SAFETY: the arena is a plain block of pinned memory; the owner (GpuKvLayer) serialises writes
// through `&mut self`, and the pointer is never handed out as a Rust reference.
unsafe impl Send for HostArena {}
// SAFETY: as above; shared access only reads the pointer values.
unsafe impl Sync for HostArena {}

impl HostArena {
    /// `bytes` (> 0) of mapped pinned memory in `ctx`. Failure is [`Error::OutOfMemory`] with the
    /// host's available memory as `free`.
    pub(super) fn new(ctx: &Arc<CudaContext>, op: &'static str, bytes: usize) -> Result<Self> {
        ctx.bind_to_thread().op(op)?;
        let mut host: *mut c_void = std::ptr::null_mut();
        let flags = sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE;
        // SAFETY: `host` is a valid out-pointer; the context is bound to this thread.
        let r = unsafe { sys::cuMemHostAlloc(&mut host, bytes, flags) };
        if r != CUresult::CUDA_SUCCESS || host.is_null() {
            return Err(match r {
                CUresult::CUDA_ERROR_OUT_OF_MEMORY | CUresult::CUDA_SUCCESS => Error::OutOfMemory {
                    op,
                    needed: bytes,
                    free: host_available(),
                },
                e => driver_error(op, cudarc::driver::DriverError(e)),
            });
        }
        let mut dev: sys::CUdeviceptr = 0;
        // SAFETY: `host` came from cuMemHostAlloc with DEVICEMAP in this context; `dev` is a valid out-pointer.
        let r = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, host, 0) };
        if r != CUresult::CUDA_SUCCESS {
            // SAFETY: `host` was allocated above and is not used after this.
            unsafe { sys::cuMemFreeHost(host) };
            return Err(driver_error(op, cudarc::driver::DriverError(r)));
        }
        Ok(HostArena {
            ctx: ctx.clone(),
            host,
            dev,
            bytes,
        })
    }

    /// The device address of byte 0 (what the page tables hold).
    pub(super) fn device_ptr(&self) -> u64 {
        self.dev
    }

    /// Copies `out.len()` bytes from offset `off`. The caller has synchronised every stream that writes
    /// the arena.
    pub(super) fn read(&self, off: usize, out: &mut [u8]) -> Result<()> {
        if off.checked_add(out.len()).map_or(true, |e| e > self.bytes) {
            return Err(Error::invalid(
                "HostArena::read",
                format!(
                    "bytes {off}..+{} outside the arena of {}",
                    out.len(),
                    self.bytes
                ),
            ));
        }
        // SAFETY: the range is inside the allocation (checked above) and no kernel writes it now
        // (the caller synchronised); `out` does not overlap pinned memory.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self.host as *const u8).add(off),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        Ok(())
    }
}

impl Drop for HostArena {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: `host` came from cuMemHostAlloc and is freed exactly once; the owner's streams no
        // longer use it (GpuKvLayer synchronises before dropping its arenas).
        unsafe { sys::cuMemFreeHost(self.host) };
    }
}

/// MemAvailable from /proc/meminfo in bytes (0 when unknown).
fn host_available() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
