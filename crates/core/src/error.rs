//! The error type shared by every lastmile crate's core operations.

use thiserror::Error;

/// Errors returned by `lastmile-core`.
///
/// Every message states what was expected and what was found, so that a
/// caller can fix the input without reading the source.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CoreError {
    /// A helper thread of a [`crate::panel::Team`] panicked in a product,
    /// so the product's results are incomplete (the panic itself then
    /// reaches the caller of [`crate::panel::Team::run`]).
    #[error("a helper thread panicked in {0}; expected every task to finish")]
    WorkerPanicked(String),

    /// A tensor or buffer had the wrong shape.
    #[error("shape mismatch for {what}: expected {expected}, found {found:?}")]
    ShapeMismatch {
        /// The argument or object being checked.
        what: String,
        /// A description of the expected shape (e.g. `"[rows, cols] with rows > 0"`).
        expected: String,
        /// The shape that was supplied.
        found: Vec<usize>,
    },

    /// A value that must be finite was NaN or infinite.
    #[error(
        "{what} contains a non-finite value ({value}) at flat index {index}; expected finite values"
    )]
    NonFinite {
        /// The argument being checked.
        what: String,
        /// Flat (row-major) index of the first offending element.
        index: usize,
        /// The offending value.
        value: f64,
    },

    /// A row that should be a probability distribution was not one.
    #[error(
        "{what}: row {row} is not a probability distribution ({reason}); expected non-negative entries summing to 1 within {tolerance}"
    )]
    NotAProbability {
        /// The argument being checked.
        what: String,
        /// Index of the first offending row.
        row: usize,
        /// What was wrong with it (e.g. `"sums to 0.93"`).
        reason: String,
        /// The tolerance used for the sum.
        tolerance: f64,
    },

    /// A scalar parameter lay outside its valid range.
    #[error("parameter `{name}` = {value} is out of range; expected {expected}")]
    OutOfRange {
        /// The parameter's name.
        name: String,
        /// The supplied value.
        value: f64,
        /// The valid range, e.g. `"a value in (0, 1)"`.
        expected: String,
    },

    /// An input that must be non-empty was empty.
    #[error("{what} is empty; expected at least {min} element(s)")]
    Empty {
        /// The argument being checked.
        what: String,
        /// The minimum number of elements required.
        min: usize,
    },

    /// An index (label, class, position) was outside its valid range.
    #[error("{what}: index {index} is out of range; expected an index < {bound}")]
    IndexOutOfRange {
        /// The argument being checked.
        what: String,
        /// The offending index.
        index: usize,
        /// The exclusive upper bound.
        bound: usize,
    },

    /// The requested compute backend is not available in this build or on this machine.
    #[error("backend `{backend}` is unavailable: {reason}")]
    BackendUnavailable {
        /// The backend's name.
        backend: String,
        /// Why it cannot be used (feature not compiled in, no adapter found, ...).
        reason: String,
    },

    /// A tensor could not be read back from the device, or had an unexpected dtype.
    #[error("tensor data error: {0}")]
    TensorData(String),

    /// A linear-algebra routine failed (e.g. did not converge).
    #[error("linear algebra failure in {routine}: {reason}")]
    LinearAlgebra {
        /// The routine, e.g. `"svd"`.
        routine: String,
        /// What went wrong.
        reason: String,
    },

    /// A tensor file was malformed, truncated, hostile or did not hold what was asked for.
    #[error("invalid tensor file: {0}")]
    InvalidFile(String),

    /// A named tensor was missing from a file or collection.
    #[error("tensor `{name}` not found; available: {available:?}")]
    MissingTensor {
        /// The requested name.
        name: String,
        /// The names that are present.
        available: Vec<String>,
    },

    /// Two lengths that must agree did not.
    #[error("{what} has length {found}; expected {expected}")]
    LengthMismatch {
        /// The argument being checked.
        what: String,
        /// The length required.
        expected: usize,
        /// The length supplied.
        found: usize,
    },

    /// A parameter selector (exact name or pattern) matched no parameter of a module.
    #[error("`{pattern}` matches no parameter of the module; available: {available:?}")]
    NoMatch {
        /// The name or pattern that matched nothing.
        pattern: String,
        /// The parameter paths that exist.
        available: Vec<String>,
    },

    /// A GGUF file was malformed or hostile, or did not hold what was asked for.
    #[error("GGUF: {0}")]
    Gguf(#[from] crate::gguf::GgufError),

    /// An I/O error while reading or writing a file.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file path.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias used throughout `lastmile-core`.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

impl CoreError {
    /// Shorthand for [`CoreError::OutOfRange`].
    pub fn out_of_range(name: &str, value: f64, expected: &str) -> Self {
        Self::OutOfRange {
            name: name.to_owned(),
            value,
            expected: expected.to_owned(),
        }
    }

    /// Shorthand for [`CoreError::ShapeMismatch`].
    pub fn shape(what: &str, expected: impl Into<String>, found: &[usize]) -> Self {
        Self::ShapeMismatch {
            what: what.to_owned(),
            expected: expected.into(),
            found: found.to_vec(),
        }
    }
}
