//! The error type of `lastmile-federated-sharding`.

use lastmile_core::CoreError;
use thiserror::Error;

/// Errors returned by `lastmile-federated-sharding`.
///
/// Input errors shared with the rest of lastmile come through
/// [`ShardingError::Core`]: a keep budget of 0 or above the rank and
/// `K = 0` clients per round are [`CoreError::OutOfRange`] (named `budget`,
/// `clients_per_round`, `keep_ratio`, ...), NaN weights are
/// [`CoreError::NonFinite`], mismatched shapes and lengths are
/// [`CoreError::ShapeMismatch`] / [`CoreError::LengthMismatch`]. The variants
/// below are specific to sampling, aggregation and the wire format. Every
/// message says what was expected and what was found.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ShardingError {
    /// A shared input check failed (range, finiteness, shape, length, ...).
    #[error(transparent)]
    Core(#[from] CoreError),

    /// Inclusion probabilities handed to a fixed-size sampler do not sum to
    /// an integer, so no fixed-size design has them as marginals.
    #[error(
        "inclusion probabilities sum to {sum}; a fixed-size sample needs an integer sum (within {tolerance})"
    )]
    NotFixedSize {
        /// The sum found.
        sum: f64,
        /// The tolerance allowed around the nearest integer.
        tolerance: f64,
    },

    /// The conditional Poisson working probabilities did not reach the
    /// requested marginals.
    #[error(
        "conditional Poisson fit did not converge in {iterations} iterations: max |pi - p| = {max_error}; expected <= {tolerance}"
    )]
    NotConverged {
        /// Iterations run.
        iterations: usize,
        /// Largest marginal error reached.
        max_error: f64,
        /// The target accuracy.
        tolerance: f64,
    },

    /// Two objects that must describe the same layer, model or round do not.
    #[error("{what} mismatch: expected {expected}, found {found}")]
    Mismatch {
        /// What is compared (layer name, layer shape, round, ...).
        what: String,
        /// The value required.
        expected: String,
        /// The value supplied.
        found: String,
    },

    /// A message ended before a field it declares.
    #[error("message truncated while reading {what}: needed {needed} byte(s), {available} left")]
    Truncated {
        /// The field being read.
        what: String,
        /// Bytes needed.
        needed: usize,
        /// Bytes left in the input.
        available: usize,
    },

    /// A message did not start with the format's magic bytes.
    #[error("not a lastmile sharding message: magic bytes {found:?}, expected {expected:?}")]
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
        /// The magic bytes of the format.
        expected: [u8; 4],
    },

    /// A message of a format version this build cannot read.
    #[error("unsupported message format version {found}; this build reads version {supported}")]
    UnsupportedVersion {
        /// The version in the header.
        found: u16,
        /// The version this build reads and writes.
        supported: u16,
    },

    /// A message of another kind than the one asked for, or an unknown kind.
    #[error("message kind {found} where {expected} was expected")]
    WrongKind {
        /// The kind byte found.
        found: u8,
        /// The kind expected (e.g. `"1 (shard)"`).
        expected: String,
    },

    /// The checksum in the trailer does not match the bytes received.
    #[error("checksum mismatch: trailer says {expected:#018x}, bytes hash to {computed:#018x}")]
    ChecksumMismatch {
        /// The checksum stored in the message.
        expected: u64,
        /// The checksum of the bytes received.
        computed: u64,
    },

    /// A declared length or count exceeds what the input can hold or the
    /// format allows; nothing was allocated for it.
    #[error("{what} declares {declared}, above the limit of {limit}")]
    LengthLimit {
        /// The field.
        what: String,
        /// The declared value.
        declared: u64,
        /// The largest value allowed here.
        limit: u64,
    },

    /// Bytes left over after a complete message.
    #[error("{count} trailing byte(s) after the end of the message")]
    TrailingBytes {
        /// How many bytes were left.
        count: usize,
    },

    /// A field of a message holds a value the format does not allow.
    #[error("invalid {what} in message: {reason}")]
    InvalidField {
        /// The field.
        what: String,
        /// What is wrong with it and what was expected.
        reason: String,
    },
}

/// Result alias used throughout `lastmile-federated-sharding`.
pub type Result<T, E = ShardingError> = std::result::Result<T, E>;

impl ShardingError {
    pub(crate) fn mismatch(
        what: impl Into<String>,
        expected: impl ToString,
        found: impl ToString,
    ) -> Self {
        Self::Mismatch {
            what: what.into(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
}
