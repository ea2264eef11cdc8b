//! The error type of `lastmile-conformal`.

use lastmile_core::CoreError;
use thiserror::Error;

/// Errors returned by `lastmile-conformal`.
///
/// Input errors shared with the rest of lastmile (α outside (0, 1), NaN,
/// rows that are not distributions, labels out of range, empty inputs) come
/// through [`ConformalError::Core`]; the variants below are specific to
/// conformal prediction. Every message says what was expected.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConformalError {
    /// A shared input check failed (shape, range, finiteness, probability rows, ...).
    #[error(transparent)]
    Core(#[from] CoreError),

    /// Two inputs that must have matching lengths did not.
    #[error("length mismatch: {what} has {found} entries; expected {expected}")]
    LengthMismatch {
        /// The argument being checked.
        what: String,
        /// The expected length.
        expected: usize,
        /// The supplied length.
        found: usize,
    },

    /// Predictions of a different kind than the calibration used (e.g.
    /// point predictions given to a CQR calibrator).
    #[error("prediction kind mismatch: calibrated with {calibrated}, predicting with {given}")]
    KindMismatch {
        /// The kind used at calibration.
        calibrated: &'static str,
        /// The kind supplied now.
        given: &'static str,
    },

    /// A loss matrix for conformal risk control was not non-increasing in λ.
    #[error(
        "loss of calibration point {row} increases from λ index {index} to {next} ({from} -> {to}); \
         conformal risk control expects losses non-increasing in λ"
    )]
    NotMonotone {
        /// Calibration point.
        row: usize,
        /// Grid index where the increase starts.
        index: usize,
        /// The next grid index.
        next: usize,
        /// Loss at `index`.
        from: f64,
        /// Loss at `next`.
        to: f64,
    },

    /// No λ on the grid reaches the requested risk level.
    #[error(
        "no λ on the grid satisfies n/(n+1)·R̂(λ) + B/(n+1) ≤ α = {alpha} (smallest value reached: {best}); \
         extend the grid or use more calibration points"
    )]
    Infeasible {
        /// The requested risk level.
        alpha: f64,
        /// The smallest left-hand side over the grid.
        best: f64,
    },
}

/// Result alias used throughout `lastmile-conformal`.
pub type Result<T, E = ConformalError> = std::result::Result<T, E>;

pub(crate) fn check_len(what: &str, found: usize, expected: usize) -> Result<()> {
    if found == expected {
        Ok(())
    } else {
        Err(ConformalError::LengthMismatch {
            what: what.to_owned(),
            expected,
            found,
        })
    }
}
