//! Jackknife+ and CV+ regression intervals (Barber, Candès, Ramdas &
//! Tibshirani, "Predictive inference with the jackknife+", Ann. Statist.
//! 2021): every training point calibrates, at the price of fitting one model
//! per fold instead of holding data out.
//!
//! With `K` folds, `μ̂₋ₖ` the model fitted without fold `k`, `k(i)` the fold
//! of training point `i` and `Rᵢ = |yᵢ − μ̂₋ₖ₍ᵢ₎(xᵢ)|` its out-of-fold
//! residual, the CV+ interval at `x` is (eq. 11; jackknife+ is `K = n`,
//! eq. 3)
//!
//! ```text
//! [ q̂⁻_α{ μ̂₋ₖ₍ᵢ₎(x) − Rᵢ },  q̂⁺_α{ μ̂₋ₖ₍ᵢ₎(x) + Rᵢ } ]
//! ```
//!
//! where `q̂⁺_α` is the `⌈(1−α)(n+1)⌉`-th smallest of the `n` values (`+∞`
//! when that exceeds `n`) and `q̂⁻_α` the `⌊α(n+1)⌋`-th smallest (`−∞` when
//! that is 0). Coverage is at least `1 − 2α` for jackknife+ (thm 1) and
//! `1 − 2α − O(√(1/n))` for CV+ (thm 4) on exchangeable data; in practice it
//! is close to `1 − α`.

// Named in the `# Errors` sections.
#[cfg(doc)]
use lastmile_core::CoreError;
use lastmile_core::validate::{
    check_at_least, check_finite_slice, check_indices, check_len, check_matrix_len, check_open_unit,
};

use crate::error::Result;
use crate::input::check_not_empty;
use crate::quantile::{check_not_nan, conformal_rank};
use crate::regression::Intervals;

/// A calibrated CV+ (or jackknife+) regressor: out-of-fold residuals and the
/// fold of each training point.
///
/// # Examples
/// Jackknife+ for the mean of a sample (`μ̂₋ᵢ` = mean without point `i`):
/// ```
/// use lastmile_conformal::CvPlus;
/// let y = [1.0, 2.0, 4.0, 3.0, 5.0, 2.5, 3.5, 4.5, 1.5];
/// let n = y.len() as f64;
/// let total: f64 = y.iter().sum();
/// let loo: Vec<f64> = y.iter().map(|v| (total - v) / (n - 1.0)).collect();
/// let jk = CvPlus::jackknife_plus(0.2, &loo, &y)?;
/// // a new point: each leave-one-out model predicts its own mean
/// let iv = jk.predict(&loo)?;
/// assert!(iv.lower[0] < 3.0 && 3.0 < iv.upper[0]);
/// # Ok::<(), lastmile_conformal::ConformalError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct CvPlus {
    alpha: f64,
    n_folds: usize,
    residuals: Vec<f64>,
    folds: Vec<usize>,
    /// `⌈(1−α)(n+1)⌉`, or `None` when it exceeds `n` (infinite intervals).
    rank: Option<usize>,
}

impl CvPlus {
    /// Calibrates CV+ from out-of-fold predictions `μ̂₋ₖ₍ᵢ₎(xᵢ)`, targets
    /// `yᵢ` and the fold `k(i) ∈ [0, n_folds)` of each training point.
    ///
    /// # Errors
    /// [`CoreError::OutOfRange`] for α ∉ (0, 1) or `n_folds = 0`;
    /// [`CoreError::IndexOutOfRange`] for a fold index `≥ n_folds`;
    /// [`CoreError::Empty`] for no training points;
    /// [`CoreError::LengthMismatch`] when `y` or `folds` has not one entry per
    /// point; [`CoreError::NonFinite`] for NaN/∞ predictions or targets.
    pub fn calibrate(
        alpha: f64,
        out_of_fold: &[f64],
        y: &[f64],
        folds: &[usize],
        n_folds: usize,
    ) -> Result<Self> {
        check_open_unit("alpha", alpha)?;
        let n = out_of_fold.len();
        check_not_empty("out-of-fold predictions", n)?;
        check_len("targets", y.len(), n)?;
        check_len("fold indices", folds.len(), n)?;
        check_finite_slice("out-of-fold predictions", out_of_fold)?;
        check_finite_slice("targets", y)?;
        check_at_least("n_folds", n_folds, 1)?;
        check_indices("folds", folds, n_folds)?;
        let residuals = out_of_fold
            .iter()
            .zip(y)
            .map(|(p, t)| (t - p).abs())
            .collect();
        Ok(Self {
            alpha,
            n_folds,
            residuals,
            folds: folds.to_vec(),
            rank: conformal_rank(n, alpha)?,
        })
    }

    /// Jackknife+: CV+ with one fold per training point (`K = n`,
    /// `k(i) = i`); `leave_one_out[i] = μ̂₋ᵢ(xᵢ)`.
    ///
    /// # Errors
    /// As [`calibrate`](Self::calibrate).
    pub fn jackknife_plus(alpha: f64, leave_one_out: &[f64], y: &[f64]) -> Result<Self> {
        let n = leave_one_out.len();
        let folds: Vec<usize> = (0..n).collect();
        Self::calibrate(alpha, leave_one_out, y, &folds, n)
    }

    /// The miscoverage level α.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Number of folds `K` (the number of columns [`predict`](Self::predict) expects).
    pub fn n_folds(&self) -> usize {
        self.n_folds
    }

    /// The out-of-fold residuals `Rᵢ`.
    pub fn residuals(&self) -> &[f64] {
        &self.residuals
    }

    /// Intervals for `m` test points from the predictions of every fold
    /// model: row-major `[m, K]`, entry `(j, k)` = `μ̂₋ₖ(x_j)`.
    ///
    /// Each interval takes two `O(n)` selections. No predictions (`m = 0`)
    /// give no intervals.
    ///
    /// # Errors
    /// [`CoreError::ShapeMismatch`] unless the length is a multiple of `K`;
    /// [`CoreError::NonFinite`] for NaN/∞ predictions.
    pub fn predict(&self, fold_predictions: &[f64]) -> Result<Intervals> {
        let k = self.n_folds;
        let m = if fold_predictions.is_empty() {
            0
        } else {
            check_matrix_len("fold predictions", fold_predictions.len(), k)?
        };
        check_finite_slice("fold predictions", fold_predictions)?;
        let n = self.residuals.len();
        let mut lower = Vec::with_capacity(m);
        let mut upper = Vec::with_capacity(m);
        let mut work = vec![0.0; n];
        for row in fold_predictions.chunks(k) {
            let Some(rank) = self.rank else {
                lower.push(f64::NEG_INFINITY);
                upper.push(f64::INFINITY);
                continue;
            };
            // q̂⁺: rank-th smallest of μ̂₋ₖ₍ᵢ₎(x) + Rᵢ.
            for (w, (r, &f)) in work.iter_mut().zip(self.residuals.iter().zip(&self.folds)) {
                *w = row[f] + r;
            }
            upper.push(kth_smallest(&mut work, rank)?);
            // q̂⁻: the ⌊α(n+1)⌋ = (n + 1 − rank)-th smallest of μ̂₋ₖ₍ᵢ₎(x) − Rᵢ,
            // i.e. the rank-th largest: the rank-th smallest of the negation.
            for (w, (r, &f)) in work.iter_mut().zip(self.residuals.iter().zip(&self.folds)) {
                *w = r - row[f];
            }
            lower.push(-kth_smallest(&mut work, rank)?);
        }
        Ok(Intervals { lower, upper })
    }
}

fn kth_smallest(values: &mut [f64], k: usize) -> Result<f64> {
    check_not_nan("interval end points", values)?;
    let (_, kth, _) = values.select_nth_unstable_by(k - 1, f64::total_cmp);
    Ok(*kth)
}
