//! The error type of `lastmile-datasets`.

use std::fmt;

use lastmile_core::CoreError;
use thiserror::Error;

/// Where in the input a problem was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A 1-based line number in a text file (the header, if any, is line 1).
    Line(usize),
    /// A 0-based sample (row) index in an in-memory collection.
    Sample(usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Line(line) => write!(f, "line {line}"),
            Self::Sample(index) => write!(f, "sample {index}"),
        }
    }
}

/// Errors returned by the loaders, parsers, splits and batchers of this crate.
///
/// Generic input checks are those of [`lastmile_core::validate`] and come
/// through [`DatasetError::Core`]: a parameter out of range
/// ([`CoreError::OutOfRange`], e.g. `n_features = 0` or a Dirichlet α ≤ 0),
/// an empty input ([`CoreError::Empty`]), a buffer that is not row-major
/// `[n_samples, n_features]` ([`CoreError::ShapeMismatch`]), lengths that
/// disagree ([`CoreError::LengthMismatch`], e.g. not one target per sample)
/// and an in-memory label or sample index out of range
/// ([`CoreError::IndexOutOfRange`], naming the position, e.g. `labels[12]`).
/// The variants below carry what is specific to datasets: file positions,
/// and the sample and feature of a non-finite value. Every message states
/// what was expected and what was found.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DatasetError {
    /// A shared input check of [`lastmile_core::validate`] failed.
    #[error(transparent)]
    Core(#[from] CoreError),

    /// A field of a text file could not be read as the expected value.
    #[error("line {line}, column {column}: found {found:?}, expected {expected}")]
    Malformed {
        /// 1-based line number (the header, if any, is line 1).
        line: usize,
        /// 1-based column (field) number.
        column: usize,
        /// The offending text (or a description of it, e.g. `"invalid UTF-8"`).
        found: String,
        /// What the field should hold, e.g. `"a finite number"`.
        expected: String,
    },

    /// A row of a text file had the wrong number of fields.
    #[error("line {line}: found {found} column(s), expected {expected}")]
    ColumnCount {
        /// 1-based line number.
        line: usize,
        /// Number of fields on the line.
        found: usize,
        /// Number of fields every data line must have.
        expected: usize,
    },

    /// The header line of a file was missing or did not have the expected form.
    #[error("bad header: found {found:?}, expected {expected}")]
    BadHeader {
        /// The header line as found.
        found: String,
        /// The expected form of the header.
        expected: String,
    },

    /// The number of rows differs from the number declared or required.
    #[error("{what}: found {found} row(s), expected {expected}")]
    RowCount {
        /// What was being counted, e.g. `"data rows (header declares 150)"`.
        what: String,
        /// Number of rows present.
        found: usize,
        /// Number of rows required.
        expected: usize,
    },

    /// A class label read from a file was not smaller than the number of
    /// classes (labels given in memory fail with [`CoreError::IndexOutOfRange`]).
    #[error("{location}: label {label} is out of range; expected a class index < {n_classes}")]
    LabelOutOfRange {
        /// Where the label was found.
        location: Location,
        /// The offending label.
        label: usize,
        /// The number of classes.
        n_classes: usize,
    },

    /// A value that must be finite was NaN or infinite: the checks of
    /// [`lastmile_core::validate`] with the flat index turned into a sample
    /// and a feature.
    #[error("{what}: {location}, feature {feature} is {value}; expected a finite value")]
    NonFinite {
        /// The argument being checked.
        what: String,
        /// The sample holding the value.
        location: Location,
        /// 0-based feature index.
        feature: usize,
        /// The offending value.
        value: f64,
    },

    /// A gzip stream could not be decompressed (truncated or corrupt).
    #[error("cannot decompress {what}: {source}; expected a complete gzip stream")]
    Decompression {
        /// The stream being decompressed.
        what: String,
        /// The error reported by the decoder.
        #[source]
        source: std::io::Error,
    },

    /// Train/calibration/test fractions or counts were invalid.
    #[error("invalid split: found {found}, expected {expected}")]
    InvalidSplit {
        /// The supplied fractions or counts.
        found: String,
        /// What a valid split looks like.
        expected: String,
    },

    /// Data had a different number of features than expected.
    #[error("{what}: found {found} feature(s), expected {expected}")]
    FeatureMismatch {
        /// The input being checked.
        what: String,
        /// Number of features supplied.
        found: usize,
        /// Number of features required.
        expected: usize,
    },

    /// A sequence was shorter than the operation needs (e.g. fewer tokens
    /// than one window and its shifted target).
    #[error("{what}: found length {found}, expected {expected}")]
    LengthMismatch {
        /// The buffer being checked.
        what: String,
        /// Its length.
        found: usize,
        /// A description of the length it must have.
        expected: String,
    },

    /// An operation needs a different kind of target (class labels vs real values).
    #[error("wrong target kind: found {found}, expected {expected}")]
    TargetKind {
        /// The kind the dataset holds.
        found: &'static str,
        /// The kind the operation needs.
        expected: &'static str,
    },

    /// A token id was outside the vocabulary.
    #[error(
        "token {token} at position {position} is out of range; expected a token < {vocab_size}"
    )]
    InvalidToken {
        /// 0-based position in the token sequence.
        position: usize,
        /// The offending token id.
        token: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
}

/// Result alias used throughout `lastmile-datasets`.
pub type Result<T, E = DatasetError> = std::result::Result<T, E>;

impl DatasetError {
    /// An empty input: [`CoreError::Empty`] through [`DatasetError::Core`].
    pub(crate) fn empty(what: &str, min: usize) -> Self {
        Self::Core(CoreError::Empty {
            what: what.to_owned(),
            min,
        })
    }
}
