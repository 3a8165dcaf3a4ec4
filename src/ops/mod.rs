//! Safe GPU entry points: validate shapes, dtypes and lengths on the host, then launch the kernel on
//! the caller's cudarc stream and buffers (no copies). Argument order follows the CPU reference
//! (`crate::reference`), with the stream first and outputs last.
//!
//! Without the kernels in the binary (no nvcc at build time) every entry point still validates its
//! arguments, then returns [`Error::KernelsNotBuilt`].

pub mod attn_decode;
pub mod attn_prefill;
pub mod elementwise;
pub mod gemm;
pub mod moe;
pub mod moe_gate;
pub mod norm_rope;
pub mod sample;
pub mod synthetic;

pub use elementwise::{
    cast, embedding, embedding_host_ids, residual_add, silu_mul, silu_mul_fused,
};
pub use moe_gate::{moe_gate, MoeGateBuffers};
pub use sample::{sample, LogitsShape, SampleState};

use cudarc::driver::CudaStream;

use crate::device::DeviceElem;
use crate::error::{Error, Result};
use crate::sys::{self, l4c_dtype, l4c_stream_t};

/// The ABI code of a float storage type (f32, f16, bf16), or [`Error::DType`].
pub(crate) fn float_dtype<T: DeviceElem>(op: &'static str, what: &str) -> Result<l4c_dtype> {
    use crate::dtype::DType;
    match T::DTYPE {
        DType::F32 | DType::F16 | DType::BF16 => sys::dtype_code(op, T::DTYPE),
        other => Err(Error::DType {
            op,
            msg: format!("{what} is {other}; expected f32, f16 or bf16"),
        }),
    }
}

/// A length or size as the ABI's int64, or [`Error::InvalidArgument`] when it does not fit.
pub(crate) fn to_i64(op: &'static str, what: &str, n: usize) -> Result<i64> {
    i64::try_from(n).map_err(|_| {
        Error::invalid(
            op,
            format!("{what} = {n} exceeds the int64 range of the C ABI"),
        )
    })
}

/// The raw pointer of an optional guarded device pointer (`device_ptr`'s pair), null when absent.
#[cfg(llama4_kernels)]
pub(crate) fn or_null<T, G>(p: &Option<(cudarc::driver::sys::CUdeviceptr, G)>) -> *const T {
    p.as_ref()
        .map_or(std::ptr::null(), |p| p.0 as usize as *const T)
}

/// [`or_null`] for a mutable pointer.
#[cfg(llama4_kernels)]
pub(crate) fn or_null_mut<T, G>(p: &Option<(cudarc::driver::sys::CUdeviceptr, G)>) -> *mut T {
    p.as_ref()
        .map_or(std::ptr::null_mut(), |p| p.0 as usize as *mut T)
}

/// Runs `f` with the raw stream after binding the stream's context to this thread (the CUDA runtime
/// inside the kernel library then uses that context), and converts its status.
#[cfg(llama4_kernels)]
pub(crate) fn launch(
    op: &'static str,
    stream: &CudaStream,
    f: impl FnOnce(l4c_stream_t) -> sys::l4c_status,
) -> Result<()> {
    use crate::device::DriverResultExt;
    stream.context().bind_to_thread().op(op)?;
    // cudarc's CUstream and l4c_stream_t are both `struct CUstream_st *` (bindgen gives each its own
    // opaque struct type); the pointer is passed through unchanged.
    sys::check(op, f(stream.cu_stream().cast()))
}

/// Without the kernels: nothing to launch.
#[cfg(not(llama4_kernels))]
pub(crate) fn launch(
    op: &'static str,
    _stream: &CudaStream,
    _f: impl FnOnce(l4c_stream_t) -> sys::l4c_status,
) -> Result<()> {
    Err(Error::KernelsNotBuilt(op))
}
