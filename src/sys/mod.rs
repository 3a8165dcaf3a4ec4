//! Bindings to the C ABI (kernels/include/llama4_cuda.h) and the error-code boundary.
//!
//! `bindings.rs` is bindgen output, committed so that building needs no libclang; tests/bindings_fresh.rs
//! regenerates it and fails on any difference. Its `extern "C"` declarations create no link-time
//! reference unless called, and every caller is behind `cfg(llama4_kernels)` (set by build.rs only when
//! the kernel library was built and linked). bindgen's layout tests pin every params struct's size and
//! field offsets to what the C compiler sees.

#[allow(non_camel_case_types, non_upper_case_globals, non_snake_case, dead_code, clippy::all)]
#[rustfmt::skip]
mod bindings;

pub use bindings::*;

use crate::dtype::DType;
use crate::error::{Error, Result};

/// True when this binary contains the CUDA kernels (nvcc was found at build time).
pub const KERNELS_BUILT: bool = cfg!(llama4_kernels);

/// The ABI code of a storage dtype, or [`Error::DType`] naming `op` for a dtype the C ABI has no code for.
pub fn dtype_code(op: &'static str, dtype: DType) -> Result<l4c_dtype> {
    Ok(match dtype {
        DType::F32 => l4c_dtype::L4C_DTYPE_F32,
        DType::F16 => l4c_dtype::L4C_DTYPE_F16,
        DType::BF16 => l4c_dtype::L4C_DTYPE_BF16,
        DType::F8E4M3 => l4c_dtype::L4C_DTYPE_F8E4M3,
        DType::F8E5M2 => l4c_dtype::L4C_DTYPE_F8E5M2,
        other => {
            return Err(Error::DType {
                op,
                msg: format!("{other} has no C ABI dtype code"),
            })
        }
    })
}

/// Converts a launcher's status into the crate's result; `op` names the operation in the error.
///
/// The safe layer validates everything a launcher checks, so INVALID_ARGUMENT / UNSUPPORTED_DTYPE here
/// mean the two sides disagree; they still come back as typed errors, never a panic.
#[cfg(llama4_kernels)]
pub fn check(op: &'static str, status: l4c_status) -> Result<()> {
    if status == l4c_status::L4C_OK {
        return Ok(());
    }
    // SAFETY: l4c_status_string takes any value and returns a static NUL-terminated string.
    let text = unsafe { cstr(l4c_status_string(status)) };
    let msg = format!("kernel launcher rejected the call: {text}");
    Err(match status {
        l4c_status::L4C_ERR_INVALID_ARGUMENT | l4c_status::L4C_ERR_UNSUPPORTED => {
            Error::InvalidArgument { op, msg }
        }
        l4c_status::L4C_ERR_UNSUPPORTED_DTYPE => Error::DType { op, msg },
        _ => {
            let (mut name, mut message) = (std::ptr::null(), std::ptr::null());
            // SAFETY: both out-pointers are valid for writes; the library stores static strings in them.
            let code = unsafe { l4c_last_cuda_error(&mut name, &mut message) };
            // SAFETY: static NUL-terminated strings from the library (or null, handled by cstr).
            let (name, message) = unsafe { (cstr(name), cstr(message)) };
            let name = if code == 0 {
                format!("l4c_status {}", status.0)
            } else {
                name
            };
            Error::Cuda {
                op,
                name,
                message: format!("{text}: {message}"),
            }
        }
    })
}

/// Copies a C string; null becomes "".
///
/// # Safety
/// `p` is null or points to a NUL-terminated string.
#[cfg(llama4_kernels)]
unsafe fn cstr(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: the caller guarantees a NUL-terminated string.
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned()
    }
}

#[cfg(all(test, llama4_kernels))]
mod tests {
    use super::*;

    #[test]
    fn version_matches_header() {
        // SAFETY: no arguments, no CUDA call.
        assert_eq!(unsafe { l4c_version() }, L4C_VERSION);
    }

    #[test]
    fn statuses_map_to_typed_errors() {
        assert!(check("t", l4c_status::L4C_OK).is_ok());
        assert!(matches!(
            check("t", l4c_status::L4C_ERR_INVALID_ARGUMENT),
            Err(Error::InvalidArgument { op: "t", .. })
        ));
        assert!(matches!(
            check("t", l4c_status::L4C_ERR_UNSUPPORTED_DTYPE),
            Err(Error::DType { op: "t", .. })
        ));
        assert!(matches!(
            check("t", l4c_status::L4C_ERR_CUDA),
            Err(Error::Cuda { op: "t", .. })
        ));
        // A value the header does not define still gives an error, not UB or a panic.
        let e = check("t", l4c_status(12345)).unwrap_err().to_string();
        assert!(e.contains("unknown status"), "{e}");
    }

    #[test]
    fn null_params_are_rejected_without_a_gpu() {
        let stream = std::ptr::null_mut();
        // SAFETY: a null params pointer is part of the contract: the launcher must reject it.
        let s = unsafe { l4c_residual_add(std::ptr::null(), stream) };
        assert_eq!(s, l4c_status::L4C_ERR_INVALID_ARGUMENT);
    }
}
