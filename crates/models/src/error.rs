//! The error type of `lastmile-models`.

use lastmile_core::CoreError;
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

    /// A token id was outside the vocabulary.
    #[error(
        "token {token} (row {row}, position {position}) is out of range; expected an id < {vocab}"
    )]
    TokenOutOfRange {
        /// Batch row.
        row: usize,
        /// Position of the token in the list fed to that row.
        position: usize,
        /// The offending id.
        token: usize,
        /// Vocabulary size.
        vocab: usize,
    },

    /// A row would exceed the model's context window.
    #[error("row {row} would hold {needed} positions; the model's context is {max}")]
    ContextOverflow {
        /// Batch row.
        row: usize,
        /// Positions needed.
        needed: usize,
        /// Context size.
        max: usize,
    },

    /// The cache and the request disagree on the batch (or a row index is out of range).
    #[error("batch mismatch: {what} is {found}; expected {expected}")]
    Batch {
        /// What was counted (e.g. `"token lists"`, `"row index"`).
        what: String,
        /// What the cache holds.
        expected: String,
        /// What was given.
        found: usize,
    },

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
