//! The error type of `lastmile-adapters`.

use lastmile_core::CoreError;
use thiserror::Error;

/// Errors returned by `lastmile-adapters`.
///
/// Messages say what was wrong and what was expected, so a caller can fix the
/// input (or the file) without reading the source.
///
/// Layer and parameter names are looked up with `lastmile_core::module`'s
/// walker; a name that matches nothing (core's `CoreError::NoMatch`) is always
/// reported as [`AdapterError::NotFound`], with the module's parameter paths
/// as `available`, never as [`AdapterError::Core`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AdapterError {
    /// A shared-layer error: shapes, non-finite values, tensor files, I/O.
    #[error(transparent)]
    Core(#[from] CoreError),

    /// A configuration field held an invalid value.
    #[error("invalid adapter configuration: `{field}` = {value}; expected {expected}")]
    InvalidConfig {
        /// The offending field, e.g. `"rank"`.
        field: String,
        /// The supplied value, rendered as text.
        value: String,
        /// What a valid value looks like.
        expected: String,
    },

    /// A tensor or adapter did not fit the layer or weight it was paired with.
    #[error("shape mismatch for {what}: expected {expected}, found {found:?}")]
    Shape {
        /// The object being checked.
        what: String,
        /// The expected shape.
        expected: String,
        /// The shape that was supplied.
        found: Vec<usize>,
    },

    /// A named adapter or target layer was not registered, or a module has
    /// no parameter of the requested name.
    #[error("{what} `{name}` not found; available: {available:?}")]
    NotFound {
        /// `"adapter"`, `"adapter parameter"` or `"target"`.
        what: &'static str,
        /// The requested name (a parameter path such as `fc1.weight`, or the
        /// pattern that matched nothing).
        name: String,
        /// The registered names, or the module's parameter paths.
        available: Vec<String>,
    },

    /// A name was registered twice.
    #[error("{what} `{name}` is already registered; expected a new name")]
    Duplicate {
        /// `"adapter"` or `"target"`.
        what: &'static str,
        /// The name.
        name: String,
    },

    /// The operation is not defined for this adapter kind or state
    /// (e.g. merging a FouRA adapter whose gate is input-dependent).
    #[error("cannot {op} a {kind} adapter: {reason}")]
    Unsupported {
        /// The operation, e.g. `"merge"`.
        op: &'static str,
        /// The adapter kind, e.g. `"FouRA (adaptive gate)"`.
        kind: String,
        /// Why, and what to do instead.
        reason: String,
    },

    /// An [`crate::AdaptedModel`] operation was called in a state it is not
    /// defined for (e.g. switching adapters while others are being trained).
    #[error("cannot {op}: {state}; expected {expected}")]
    State {
        /// The operation, e.g. `"switch"`.
        op: &'static str,
        /// The state the handle was in.
        state: String,
        /// What to do first.
        expected: String,
    },

    /// An adapter file or its JSON configuration was malformed, hostile or
    /// inconsistent with the tensors it came with.
    #[error("invalid adapter file {path}: {reason}")]
    InvalidFile {
        /// The file (or directory) being read.
        path: String,
        /// What was wrong.
        reason: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = AdapterError> = std::result::Result<T, E>;

impl AdapterError {
    pub(crate) fn config(field: &str, value: impl ToString, expected: &str) -> Self {
        Self::InvalidConfig {
            field: field.to_owned(),
            value: value.to_string(),
            expected: expected.to_owned(),
        }
    }

    pub(crate) fn shape(
        what: impl Into<String>,
        expected: impl Into<String>,
        found: &[usize],
    ) -> Self {
        Self::Shape {
            what: what.into(),
            expected: expected.into(),
            found: found.to_vec(),
        }
    }

    /// Turns the core walker's "matches nothing" into [`AdapterError::NotFound`]
    /// for `what` (the crate's one convention); any other error is unchanged.
    pub(crate) fn named(self, what: &'static str) -> Self {
        match self {
            Self::Core(CoreError::NoMatch { pattern, available }) => Self::NotFound {
                what,
                name: pattern,
                available,
            },
            other => other,
        }
    }

    pub(crate) fn unsupported(
        op: &'static str,
        kind: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::Unsupported {
            op,
            kind: kind.into(),
            reason: reason.into(),
        }
    }
}
