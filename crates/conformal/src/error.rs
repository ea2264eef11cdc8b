//! The error type of `lastmile-conformal`.

use lastmile_core::CoreError;
use thiserror::Error;

/// Errors returned by `lastmile-conformal`.
///
/// Input errors shared with the rest of lastmile come through
/// [`ConformalError::Core`], raised by the checks of
/// [`lastmile_core::validate`]: α outside (0, 1) and other parameters out of
/// range ([`CoreError::OutOfRange`]), NaN or ±∞ ([`CoreError::NonFinite`]),
/// rows that are not distributions ([`CoreError::NotAProbability`]), labels,
/// groups or folds out of range ([`CoreError::IndexOutOfRange`]), inputs
/// whose lengths disagree ([`CoreError::LengthMismatch`]), buffers that are
/// not `[rows, classes]` ([`CoreError::ShapeMismatch`]) and empty inputs
/// ([`CoreError::Empty`]). The variants below are specific to conformal
/// prediction. Every message says what was expected and what was found.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConformalError {
    /// A shared input check failed (shape, range, finiteness, probability rows, ...).
    #[error(transparent)]
    Core(#[from] CoreError),

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
