//! cudarc's DriverError to the crate's [`Error`], keeping the driver's own name and message.

use cudarc::driver::{sys::CUresult, DriverError};

use crate::error::{Error, Result};

/// Converts a driver error raised by `op`: out of memory becomes [`Error::OutOfMemory`] (sizes unknown
/// here: 0; [`super::Device::alloc_error`] fills them in), everything else [`Error::Cuda`].
pub fn driver_error(op: &'static str, e: DriverError) -> Error {
    if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        return Error::OutOfMemory {
            op,
            needed: 0,
            free: 0,
        };
    }
    let name = e.error_name().map_or_else(
        |_| format!("{:?}", e.0),
        |s| s.to_string_lossy().into_owned(),
    );
    let message = e
        .error_string()
        .map_or_else(|_| String::new(), |s| s.to_string_lossy().into_owned());
    Error::Cuda { op, name, message }
}

/// `.op("name")` on a cudarc result: converts its error with [`driver_error`].
pub trait DriverResultExt<T> {
    /// Converts the error, naming `op`.
    fn op(self, op: &'static str) -> Result<T>;
}

impl<T> DriverResultExt<T> for std::result::Result<T, DriverError> {
    fn op(self, op: &'static str) -> Result<T> {
        self.map_err(|e| driver_error(op, e))
    }
}
