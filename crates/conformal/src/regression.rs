//! Split conformal regression: absolute residual, normalised residual and
//! conformalised quantile regression (CQR).

use std::ops::Bound;

// Named in the `# Errors` sections.
#[cfg(doc)]
use lastmile_core::CoreError;
use lastmile_core::validate::{check_finite_slice, check_len, check_open_unit};

use crate::error::{ConformalError, Result};
use crate::input::{check_each_in, check_not_empty};
use crate::quantile::conformal_quantile;

/// Model outputs a conformal regressor calibrates and predicts from.
///
/// | kind | score `s(x, y)` | interval |
/// |---|---|---|
/// | [`Point`](Self::Point) | `|y − ŷ|` | `ŷ ± q̂` (Lei et al. 2018) |
/// | [`Normalized`](Self::Normalized) | `|y − ŷ| / σ(x)` | `ŷ ± q̂·σ(x)` (Papadopoulos et al. 2008) |
/// | [`Quantiles`](Self::Quantiles) | `max(q_lo − y, y − q_hi)` | `[q_lo − q̂, q_hi + q̂]` (Romano et al. 2019, eq. 6) |
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum RegressionPredictions<'a> {
    /// Point predictions `ŷ`.
    Point(&'a [f64]),
    /// Point predictions and a positive scale `σ(x)` (e.g. a predicted
    /// residual size or standard deviation).
    Normalized {
        /// Point predictions `ŷ`.
        mean: &'a [f64],
        /// Scale `σ(x) > 0`.
        scale: &'a [f64],
    },
    /// Predicted lower and upper quantiles (e.g. at α/2 and 1 − α/2).
    Quantiles {
        /// Lower quantile `q_lo(x)`.
        lower: &'a [f64],
        /// Upper quantile `q_hi(x)`.
        upper: &'a [f64],
    },
}

impl RegressionPredictions<'_> {
    fn name(&self) -> &'static str {
        match self {
            Self::Point(_) => "point predictions",
            Self::Normalized { .. } => "normalized predictions",
            Self::Quantiles { .. } => "quantile predictions",
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Point(m) => m.len(),
            Self::Normalized { mean, .. } => mean.len(),
            Self::Quantiles { lower, .. } => lower.len(),
        }
    }

    fn validate(&self) -> Result<usize> {
        let n = self.len();
        check_not_empty(self.name(), n)?;
        let finite = |what: &str, v: &[f64]| -> Result<()> {
            check_len(what, v.len(), n)?;
            Ok(check_finite_slice(what, v)?)
        };
        match self {
            Self::Point(m) => finite("predictions", m)?,
            Self::Normalized { mean, scale } => {
                finite("mean predictions", mean)?;
                finite("scale predictions", scale)?;
                check_each_in("scale", scale, Bound::Excluded(0.0), Bound::Unbounded)?;
            }
            Self::Quantiles { lower, upper } => {
                finite("lower quantiles", lower)?;
                finite("upper quantiles", upper)?;
            }
        }
        Ok(n)
    }

    fn score(&self, i: usize, y: f64) -> f64 {
        match self {
            Self::Point(m) => (y - m[i]).abs(),
            Self::Normalized { mean, scale } => (y - mean[i]).abs() / scale[i],
            Self::Quantiles { lower, upper } => (lower[i] - y).max(y - upper[i]),
        }
    }

    fn interval(&self, i: usize, q: f64) -> (f64, f64) {
        match self {
            Self::Point(m) => (m[i] - q, m[i] + q),
            Self::Normalized { mean, scale } => (mean[i] - q * scale[i], mean[i] + q * scale[i]),
            Self::Quantiles { lower, upper } => (lower[i] - q, upper[i] + q),
        }
    }
}

/// A calibrated split-conformal regressor.
///
/// # Examples
/// ```
/// use lastmile_conformal::{ConformalRegressor, RegressionPredictions};
/// let y = [1.0, 2.0, 3.0, 4.0];
/// let yhat = [1.5, 1.0, 3.2, 4.0];
/// let reg = ConformalRegressor::calibrate(0.2, RegressionPredictions::Point(&yhat), &y)?;
/// // residuals 0.5, 1.0, 0.2, 0.0; k = ⌈5·0.8⌉ = 4 → q̂ = 1.0
/// assert_eq!(reg.threshold(), 1.0);
/// let iv = reg.predict(RegressionPredictions::Point(&[10.0]))?;
/// assert_eq!((iv.lower[0], iv.upper[0]), (9.0, 11.0));
/// # Ok::<(), lastmile_conformal::ConformalError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ConformalRegressor {
    alpha: f64,
    kind: &'static str,
    qhat: f64,
    scores: Vec<f64>,
}

impl ConformalRegressor {
    /// Calibrates on held-out model outputs and targets.
    ///
    /// # Errors
    /// [`CoreError::OutOfRange`] for α ∉ (0, 1) or a scale ≤ 0;
    /// [`CoreError::Empty`] for no predictions; [`CoreError::LengthMismatch`]
    /// when the inputs have different lengths; [`CoreError::NonFinite`] for
    /// NaN/∞ inputs.
    pub fn calibrate(
        alpha: f64,
        predictions: RegressionPredictions<'_>,
        y: &[f64],
    ) -> Result<Self> {
        check_open_unit("alpha", alpha)?;
        let n = predictions.validate()?;
        check_len("targets", y.len(), n)?;
        check_finite_slice("targets", y)?;
        let scores: Vec<f64> = (0..n).map(|i| predictions.score(i, y[i])).collect();
        let qhat = conformal_quantile(&scores, alpha)?;
        Ok(Self {
            alpha,
            kind: predictions.name(),
            qhat,
            scores,
        })
    }

    /// The threshold `q̂` (`+∞` when `⌈(n+1)(1−α)⌉ > n`: infinite intervals).
    pub fn threshold(&self) -> f64 {
        self.qhat
    }

    /// The miscoverage level.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// The calibration scores.
    pub fn scores(&self) -> &[f64] {
        &self.scores
    }

    /// Prediction intervals for new model outputs of the same kind.
    ///
    /// # Errors
    /// [`ConformalError::KindMismatch`] for another kind of outputs; the
    /// validation errors of [`calibrate`](Self::calibrate).
    pub fn predict(&self, predictions: RegressionPredictions<'_>) -> Result<Intervals> {
        if predictions.name() != self.kind {
            return Err(ConformalError::KindMismatch {
                calibrated: self.kind,
                given: predictions.name(),
            });
        }
        let n = predictions.validate()?;
        let (lower, upper) = (0..n).map(|i| predictions.interval(i, self.qhat)).unzip();
        Ok(Intervals { lower, upper })
    }
}

/// Prediction intervals `[lower_i, upper_i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Intervals {
    /// Lower ends.
    pub lower: Vec<f64>,
    /// Upper ends.
    pub upper: Vec<f64>,
}

impl Intervals {
    /// Number of intervals.
    pub fn len(&self) -> usize {
        self.lower.len()
    }

    /// Whether there are no intervals.
    pub fn is_empty(&self) -> bool {
        self.lower.is_empty()
    }

    /// Whether interval `i` contains `y` (closed interval).
    pub fn contains(&self, i: usize, y: f64) -> bool {
        self.lower[i] <= y && y <= self.upper[i]
    }

    /// Mean width `mean(upper − lower)` (may be `+∞`; 0 for no intervals).
    pub fn mean_width(&self) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        let sum: f64 = self.lower.iter().zip(&self.upper).map(|(l, u)| u - l).sum();
        sum / self.len() as f64
    }

    /// Fraction of targets inside their interval.
    ///
    /// # Errors
    /// [`CoreError::LengthMismatch`] when `y` has another length;
    /// [`CoreError::Empty`] for no intervals.
    pub fn coverage(&self, y: &[f64]) -> Result<f64> {
        check_len("targets", y.len(), self.len())?;
        check_not_empty("intervals", self.len())?;
        let hits = (0..self.len()).filter(|&i| self.contains(i, y[i])).count();
        Ok(hits as f64 / self.len() as f64)
    }
}
