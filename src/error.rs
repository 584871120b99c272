//! One error type for the whole engine: every failure a user can cause or meet
//! (bad files, bad shapes, a missing adapter, a lost device) ends up here with a
//! message that names the thing at fault.

use std::fmt;

/// Engine error. The `Display` text is the one line the CLI prints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable GPU adapter; the message says what to install or which names exist.
    #[error("{0}")]
    NoAdapter(String),
    /// The adapter lacks a limit or feature the requested work needs.
    #[error("adapter too limited: {0}")]
    AdapterLimits(String),
    /// The device was lost (driver reset, removal) or reported an error.
    #[error("GPU device error: {0}")]
    Device(String),
    /// A GPU allocation failed.
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),
    /// Shapes, dtypes or arguments that do not fit an operation.
    #[error("{0}")]
    Shape(String),
    /// A file could not be read or has the wrong content.
    #[error("{path}: {msg}")]
    File {
        /// The file's path as given.
        path: String,
        /// What is wrong with it.
        msg: String,
    },
    /// Invalid user input (arguments, prompts, options).
    #[error("{0}")]
    Input(String),
    /// The model's numbers overflowed at run time (NaN or Inf where an answer was due).
    #[error("{0}")]
    NonFinite(String),
    /// A hub id, the Hugging Face cache or a download: what failed and how to fix it.
    #[error("{0}")]
    Hub(String),
}

impl Error {
    /// A shape/argument error built from anything printable.
    pub fn shape(msg: impl fmt::Display) -> Self {
        Error::Shape(msg.to_string())
    }
    /// An input error built from anything printable.
    pub fn input(msg: impl fmt::Display) -> Self {
        Error::Input(msg.to_string())
    }
    /// Generation step `step` (1 = the first generated token) met NaN or Inf logits.
    pub fn non_finite(step: usize) -> Self {
        Error::NonFinite(format!(
            "step {step}: the model produced non-finite logits (NaN/Inf); the weights or inputs overflow"
        ))
    }
    /// A problem with the file at `path`.
    pub fn file(path: impl AsRef<std::path::Path>, msg: impl fmt::Display) -> Self {
        Error::File {
            path: path.as_ref().display().to_string(),
            msg: msg.to_string(),
        }
    }
}

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
