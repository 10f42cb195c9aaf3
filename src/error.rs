//! The engine's error type: every failure names what was wrong and where.

use std::path::PathBuf;

/// Errors from reading model files and computing with them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The GGUF file is malformed; the message says what and where.
    #[error("{path}: invalid GGUF: {msg}")]
    Gguf {
        /// The file being parsed.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The model is well-formed GGUF but cannot be run (missing key or tensor, bad shape,
    /// unsupported architecture or tensor type).
    #[error("model: {0}")]
    Model(String),
    /// A caller passed an invalid argument (token id out of range, empty input, ...).
    #[error("{0}")]
    Invalid(String),
    /// The GPU backend failed: no adapter, a device request refused, a buffer over the
    /// device's limits, a lost device.
    #[error("gpu: {0}")]
    Gpu(String),
}

/// Result alias for engine operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn model(msg: impl Into<String>) -> Self {
        Error::Model(msg.into())
    }
}
