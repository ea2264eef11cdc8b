//! The error type of `lastmile-spec-decode`.

use lastmile_core::CoreError;
use lastmile_core::lm::LmError;
use thiserror::Error;

/// Errors returned by speculative decoding.
///
/// Numeric checks shared with the rest of lastmile (temperature, top-p, NaN
/// logits, probability rows, parameter ranges) surface as
/// [`SpecDecodeError::Core`]; failures of a model (token out of range, context
/// overflow, logits of the wrong shape, the model's own errors) and misuse of
/// a drafter's batch surface as [`SpecDecodeError::Lm`]. The remaining
/// variants reject the prompts and the drafter before any model runs.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SpecDecodeError {
    /// A lower-level check failed (NaN logits, negative temperature, bad shapes, ...).
    #[error(transparent)]
    Core(#[from] CoreError),

    /// A language model (target or draft) failed, or returned logits of the wrong shape.
    #[error(transparent)]
    Lm(#[from] LmError),

    /// No sequences were given.
    #[error("no prompts were given; expected at least one sequence")]
    NoPrompts,

    /// A prompt had no tokens, so there is nothing to condition on.
    #[error("prompt {row} is empty; expected at least one token")]
    EmptyPrompt {
        /// Index of the offending sequence.
        row: usize,
    },

    /// A prompt or draft token id was outside the vocabulary.
    #[error(
        "{what}: token {token} at position {position} is out of range; expected an id < {vocab}"
    )]
    TokenOutOfRange {
        /// Where the token was found.
        what: String,
        /// Position of the token within its sequence.
        position: usize,
        /// The offending id.
        token: usize,
        /// The vocabulary size.
        vocab: usize,
    },

    /// The draft model and the target model use different vocabularies.
    #[error(
        "vocabulary mismatch: target has {target} tokens, drafter has {draft}; expected the same vocabulary"
    )]
    VocabMismatch {
        /// Target vocabulary size.
        target: usize,
        /// Drafter vocabulary size.
        draft: usize,
    },

    /// A drafter that samples states no vocabulary size where one is needed
    /// (a [`HybridDrafter`](crate::HybridDrafter) makes one-hot
    /// distributions over it).
    #[error(
        "the draft model samples but states no vocabulary size; expected a drafter whose vocab_size() is Some"
    )]
    MissingDraftVocab,

    /// A prompt plus its generation budget would outgrow the models' context window.
    #[error(
        "sequence {row} needs {needed} positions but the model's context holds {max}; shorten the prompt or max_new_tokens"
    )]
    ContextOverflow {
        /// Index of the offending sequence.
        row: usize,
        /// Positions needed.
        needed: usize,
        /// Context size of the model.
        max: usize,
    },
}

/// Result alias of this crate.
pub type Result<T, E = SpecDecodeError> = std::result::Result<T, E>;

impl SpecDecodeError {
    /// Shorthand for an out-of-range parameter, reported through [`CoreError::OutOfRange`].
    pub(crate) fn param(name: &str, value: f64, expected: &str) -> Self {
        Self::Core(CoreError::out_of_range(name, value, expected))
    }
}
