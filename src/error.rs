//! The crate's one error type. Every fallible public function returns [`Result`].

use std::path::PathBuf;

/// Everything that can go wrong, each variant naming the thing at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor or argument had the wrong shape for the op.
    #[error("{op}: shape mismatch: {msg}")]
    Shape { op: &'static str, msg: String },
    /// A tensor had a dtype the op does not take.
    #[error("{op}: unsupported dtype: {msg}")]
    DType { op: &'static str, msg: String },
    /// An argument out of its valid range (a token id outside the vocabulary, k > experts, ...).
    #[error("{op}: invalid argument: {msg}")]
    InvalidArgument { op: &'static str, msg: String },
    /// A configuration value this build cannot run.
    #[error("config: `{key}` = {value}: {msg}")]
    Config {
        key: String,
        value: String,
        msg: String,
    },
    /// A checkpoint file or tensor is missing, truncated or malformed.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The tokenizer could not be loaded or could not encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The KV cache has no free chunk left; nothing stored was touched.
    #[error("KV cache full: need {needed} more chunk(s), {free} free of {total}")]
    CacheFull {
        needed: usize,
        free: usize,
        total: usize,
    },
    /// A prompt or generation longer than the configured context.
    #[error("context too long: {needed} tokens, the limit is {limit}")]
    ContextTooLong { needed: usize, limit: usize },
    /// No usable CUDA driver or device on this machine.
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    /// This binary was built without the CUDA kernels (no nvcc at build time).
    #[error("the CUDA kernels were not built into this binary ({0}); run tools/cuda-toolchain.sh and rebuild")]
    KernelsNotBuilt(&'static str),
    /// The GPU ran out of memory.
    #[error("{op}: out of GPU memory: needed {needed} bytes, {free} free")]
    OutOfMemory {
        op: &'static str,
        needed: usize,
        free: usize,
    },
    /// A CUDA call or kernel launch failed.
    #[error("{op}: CUDA error {name}: {message}")]
    Cuda {
        op: &'static str,
        name: String,
        message: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::Shape`].
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            msg: msg.into(),
        }
    }
    /// Shorthand for [`Error::Checkpoint`].
    pub fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }
    /// Shorthand for [`Error::Config`].
    pub fn config(key: impl Into<String>, value: impl ToString, msg: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            value: value.to_string(),
            msg: msg.into(),
        }
    }
}

/// Fails with [`Error::Shape`] unless `got == want`.
pub fn check_len(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!("{what} has {got} elements, expected {want}"),
        ))
    }
}
