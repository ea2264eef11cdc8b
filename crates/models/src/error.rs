//! The error type of `lastmile-models`.

use lastmile_core::CoreError;
use lastmile_core::lm::LmError;
use thiserror::Error;

/// Errors returned by the models.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A lower-level check failed.
    #[error(transparent)]
    Core(#[from] CoreError),

    /// A configuration value was invalid.
    #[error("invalid model configuration: {0}")]
    Config(String),

    /// A failure every language model shares (token out of range, context
    /// overflow, batch mismatch), as [`LmError`] names it.
    #[error(transparent)]
    Lm(#[from] LmError),

    /// A checkpoint could not be written or read back.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// File path.
        path: String,
        /// What went wrong.
        reason: String,
    },

    /// Training data was unusable.
    #[error("training data: {0}")]
    Data(String),
}

/// Result alias of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
