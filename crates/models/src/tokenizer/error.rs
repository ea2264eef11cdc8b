//! The error type of the tokenizer.

use lastmile_core::gguf::GgufError;
use thiserror::Error;

/// Errors returned while building a [`Tokenizer`](super::Tokenizer), decoding
/// ids or applying a chat template.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// A metadata key is missing or has the wrong type.
    #[error(transparent)]
    Gguf(#[from] GgufError),

    /// `tokenizer.ggml.model` names a tokenizer other than byte-level BPE
    /// or SentencePiece.
    #[error(
        "unsupported tokenizer model `{found}`: implemented are `gpt2` (byte-level BPE) and \
         `llama` (SentencePiece)"
    )]
    UnsupportedModel {
        /// The value of `tokenizer.ggml.model`.
        found: String,
    },

    /// `tokenizer.ggml.pre` names a pre-tokenisation rule that is not
    /// implemented (or is absent).
    #[error("unsupported pre-tokenizer `{found}`; implemented: {supported}")]
    UnsupportedPreTokenizer {
        /// The value of `tokenizer.ggml.pre` (empty when the key is absent).
        found: String,
        /// The names that are implemented.
        supported: String,
    },

    /// The vocabulary, its token types, merges or special token ids are
    /// inconsistent.
    #[error("invalid vocabulary: {0}")]
    InvalidVocab(String),

    /// A token id is not in the vocabulary.
    #[error("token id {id} is out of range for a vocabulary of {vocab_size} tokens")]
    TokenOutOfRange {
        /// The id given.
        id: usize,
        /// Number of tokens in the vocabulary.
        vocab_size: usize,
    },

    /// The metadata has no `tokenizer.chat_template`.
    #[error("the model has no chat template (metadata key `tokenizer.chat_template` is absent)")]
    MissingChatTemplate,

    /// The chat template is not one of the templates implemented here.
    #[error("unsupported chat template ({reason}); it begins {excerpt:?}")]
    UnsupportedChatTemplate {
        /// Why it was not recognised.
        reason: String,
        /// The first characters of the template.
        excerpt: String,
    },
}

/// Result alias of the tokenizer module.
pub type TokenizerResult<T> = std::result::Result<T, TokenizerError>;
