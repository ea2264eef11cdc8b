//! The error type of the Llama-family model.

use lastmile_core::CoreError;
use lastmile_core::gguf::GgufError;
use lastmile_core::lm::LmError;
use thiserror::Error;

/// Errors of [`crate::llama`]: a GGUF file that does not describe a model
/// this module can run, an invalid configuration, or a bad call.
///
/// Converts into [`LmError`]: the failures every language model shares
/// (token out of range, context overflow, batch mismatch) keep their
/// [`LmError`] variant, the rest travel as [`LmError::Model`].
///
/// ```
/// use lastmile_core::lm::LmError;
/// use lastmile_models::llama::LlamaError;
/// let e = LlamaError::Config { field: "n_heads", value: "0".into(), expected: "at least 1".into() };
/// assert!(matches!(LmError::from(e), LmError::Model(_)));
/// ```
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LlamaError {
    /// The GGUF file could not be read, or lacks a key or tensor.
    #[error(transparent)]
    Gguf(#[from] GgufError),

    /// A lower-level check failed.
    #[error(transparent)]
    Core(#[from] CoreError),

    /// The file's `general.architecture` is not one this module implements.
    #[error("unsupported architecture `{found}`; expected `llama` or `qwen2`")]
    Architecture {
        /// The architecture the file names.
        found: String,
    },

    /// A configuration value is invalid (zero, inconsistent with another, too large).
    #[error("invalid Llama configuration: {field} = {value}; expected {expected}")]
    Config {
        /// The field (or metadata key).
        field: &'static str,
        /// The value found.
        value: String,
        /// What a valid value is.
        expected: String,
    },

    /// The device cannot compute in the element type of the chosen storage.
    #[error(
        "weight storage {storage} is not supported on {device}; expected a storage whose element type the device computes in (F32 always is), and a CPU device (flex, ndarray) for Blocks"
    )]
    Storage {
        /// The storage asked for.
        storage: String,
        /// The device.
        device: String,
    },

    /// A weight tensor in the file has a shape the configuration does not predict.
    #[error("tensor `{name}` has shape {found:?}; the configuration expects {expected:?}")]
    TensorShape {
        /// The tensor's name.
        name: String,
        /// The expected shape (outermost first).
        expected: Vec<usize>,
        /// The stored shape (outermost first).
        found: Vec<usize>,
    },

    /// A draft checkpoint could not be written or read back.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },

    /// A failure every language model shares (token out of range, context
    /// overflow, batch mismatch), as [`LmError`] names it.
    #[error(transparent)]
    Lm(#[from] LmError),
}

/// Result alias of [`crate::llama`].
pub type LlamaResult<T> = std::result::Result<T, LlamaError>;

impl From<LlamaError> for LmError {
    fn from(e: LlamaError) -> Self {
        match e {
            LlamaError::Lm(e) => e,
            LlamaError::Core(e) => LmError::Core(e),
            other => LmError::Model(Box::new(other)),
        }
    }
}
