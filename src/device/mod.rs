//! GPU discovery, context, streams, events and typed device buffers (cudarc).
//!
//! "No GPU here" is a value: [`Device::open`] probes for the driver library before any other cudarc
//! call (cudarc panics when libcuda is missing) and returns [`Error::NoDevice`] instead. Ops take
//! cudarc buffers and a [`CudaStream`], so a cudarc-based runtime can call them on its own memory.

mod error;
mod tensor;
mod timing;

use std::sync::Arc;

pub use cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut,
};
pub use error::{driver_error, DriverResultExt};
pub use tensor::{DeviceElem, DeviceTensor};
pub use timing::{time_stream, EventTimer};

use crate::error::{Error, Result};

/// Whether the CUDA driver library (libcuda) can be loaded. Never panics.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library by its usual names; no CUDA call is made.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Number of CUDA devices; 0 when there is no driver or it reports none (never an error).
pub fn device_count() -> usize {
    if !driver_present() {
        return 0;
    }
    if cudarc::driver::result::init().is_err() {
        return 0;
    }
    CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
}

/// One GPU: its (primary) context and a stream the crate's own work runs on.
#[derive(Clone, Debug)]
pub struct Device {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
}

impl Device {
    /// Opens device `ordinal`; [`Error::NoDevice`] when there is no driver, no such device, or the
    /// driver fails to initialise.
    pub fn open(ordinal: usize) -> Result<Self> {
        if !driver_present() {
            return Err(Error::NoDevice(
                "the CUDA driver library (libcuda.so) is not installed".into(),
            ));
        }
        let count = device_count();
        if ordinal >= count {
            return Err(Error::NoDevice(format!(
                "device {ordinal} requested, {count} present"
            )));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::NoDevice(format!("device {ordinal}: {}", describe(e))))?;
        let stream = ctx.new_stream().op("Device::open")?;
        Ok(Device { ctx, stream })
    }

    /// The first device.
    pub fn first() -> Result<Self> {
        Self::open(0)
    }

    /// The cudarc context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// This device's own stream (a non-default stream created at open).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// A new stream on this device.
    pub fn new_stream(&self) -> Result<Arc<CudaStream>> {
        self.ctx.new_stream().op("Device::new_stream")
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> Result<String> {
        self.ctx.name().op("Device::name")
    }

    /// Compute capability (major, minor), e.g. (9, 0).
    pub fn compute_capability(&self) -> Result<(u32, u32)> {
        let (major, minor) = self
            .ctx
            .compute_capability()
            .op("Device::compute_capability")?;
        Ok((major.max(0) as u32, minor.max(0) as u32))
    }

    /// (free, total) device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().op("Device::memory")
    }

    /// Waits for all work on this device's stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().op("Device::synchronize")
    }

    /// Copies `host` to a new device buffer on this device's stream.
    pub fn upload<T: DeviceElem>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.stream.clone_htod(host).op("Device::upload")
    }

    /// Copies a device buffer back to the host (synchronises the stream).
    pub fn download<T: DeviceElem>(&self, buf: &impl DevicePtr<T>) -> Result<Vec<T>> {
        self.stream.clone_dtoh(buf).op("Device::download")
    }

    /// A device buffer of `len` elements, each set to `value` (uploaded from the host: for tests,
    /// e.g. NaN poison before a launch, and small buffers).
    pub fn filled<T: DeviceElem>(&self, len: usize, value: T) -> Result<CudaSlice<T>> {
        self.upload(&vec![value; len])
    }

    /// A zeroed device buffer of `len` elements; out of memory is [`Error::OutOfMemory`].
    pub fn zeros<T: DeviceElem>(&self, len: usize) -> Result<CudaSlice<T>> {
        let bytes = len.saturating_mul(std::mem::size_of::<T>());
        self.stream
            .alloc_zeros(len)
            .map_err(|e| self.alloc_error("Device::zeros", bytes, e))
    }

    /// Maps an allocation failure of `needed` bytes to [`Error::OutOfMemory`] (with the free memory
    /// now), any other failure to [`Error::Cuda`].
    pub fn alloc_error(
        &self,
        op: &'static str,
        needed: usize,
        e: cudarc::driver::DriverError,
    ) -> Error {
        match driver_error(op, e) {
            Error::OutOfMemory { op, .. } => {
                let free = self.ctx.mem_get_info().map_or(0, |(free, _)| free);
                Error::OutOfMemory { op, needed, free }
            }
            other => other,
        }
    }
}

/// "NAME: description" of a driver error.
fn describe(e: cudarc::driver::DriverError) -> String {
    match driver_error("", e) {
        Error::Cuda { name, message, .. } => format!("{name}: {message}"),
        other => other.to_string(),
    }
}

/// For GPU tests: the first device when there is one and the kernels were built; otherwise prints one
/// "skipped: ..." line naming `test` and the reason, and returns None.
pub fn device_for_test(test: &str) -> Option<Device> {
    match Device::first() {
        Ok(_) if !crate::sys::KERNELS_BUILT => {
            println!(
                "skipped: no CUDA kernels in this build (run tools/cuda-toolchain.sh): {test}"
            );
            None
        }
        Ok(dev) => Some(dev),
        Err(Error::NoDevice(why)) => {
            println!("skipped: no CUDA device ({why}): {test}");
            None
        }
        Err(e) => {
            println!("skipped: no CUDA device ({e}): {test}");
            None
        }
    }
}
