//! The finite-sample conformal quantile and conformal p-values.
//!
//! With `n` calibration scores (lower = more conforming) and miscoverage α,
//! split conformal prediction thresholds at the `k`-th smallest score,
//! `k = ⌈(n+1)(1−α)⌉` (Vovk et al. 2005; Angelopoulos & Bates 2023, eq. 1).
//! When `k > n` the threshold is `+∞` and every label is in the set. This is
//! the rule that makes `P(Y ∈ C(X)) ≥ 1 − α` hold for every `n`; interpolated
//! ("midpoint", "linear") quantiles do not.

use lastmile_core::{CoreError, validate::check_open_unit};

use crate::error::Result;
use crate::input::check_not_empty;

/// Relative tolerance on `(n+1)(1−α)` being an integer: `α = 0.1, n = 9`
/// must give `k = 9`, not `10`, although `10·(1 − 0.1)` may round up.
const INTEGER_TOLERANCE: f64 = 1e-12;

/// The conformal rank `k = ⌈(n+1)(1−α)⌉`, or `None` when `k > n` (the
/// threshold is then `+∞`).
///
/// `(n+1)(1−α)` within a relative `1e-12` of an integer counts as that
/// integer, so that decimal levels such as `α = 0.1` give the exact answer
/// despite binary rounding.
///
/// # Errors
/// [`CoreError::OutOfRange`] unless `0 < α < 1`; [`CoreError::Empty`] for `n = 0`.
///
/// # Examples
/// ```
/// use lastmile_conformal::conformal_rank;
/// assert_eq!(conformal_rank(9, 0.1).unwrap(), Some(9));    // 10·0.9 = 9 exactly
/// assert_eq!(conformal_rank(100, 0.1).unwrap(), Some(91)); // ⌈90.9⌉
/// assert_eq!(conformal_rank(10, 0.05).unwrap(), None);     // ⌈10.45⌉ = 11 > 10
/// ```
pub fn conformal_rank(n: usize, alpha: f64) -> Result<Option<usize>> {
    check_open_unit("alpha", alpha)?;
    check_not_empty("calibration scores", n)?;
    let x = (n as f64 + 1.0) * (1.0 - alpha);
    let nearest = x.round();
    let k = if (x - nearest).abs() <= INTEGER_TOLERANCE * x.max(1.0) {
        nearest
    } else {
        x.ceil()
    };
    // alpha < 1 makes x > 0, so k >= 1.
    let k = k.max(1.0) as usize;
    Ok((k <= n).then_some(k))
}

/// The split-conformal threshold `q̂`: the `k`-th smallest of `scores` with
/// `k = ⌈(n+1)(1−α)⌉` (see [`conformal_rank`]), or `+∞` when `k > n`.
///
/// Runs in `O(n)` (selection, no full sort).
///
/// # Errors
/// [`CoreError::OutOfRange`] unless `0 < α < 1`; [`CoreError::Empty`] for no
/// scores; [`CoreError::NonFinite`] for a NaN score (`±∞` scores are allowed).
///
/// # Examples
/// ```
/// use lastmile_conformal::conformal_quantile;
/// let scores = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6];
/// // n = 9, α = 0.2: k = ⌈10·0.8⌉ = 8, the 8th smallest is 0.8
/// assert_eq!(conformal_quantile(&scores, 0.2).unwrap(), 0.8);
/// assert_eq!(conformal_quantile(&scores, 0.05).unwrap(), f64::INFINITY);
/// ```
pub fn conformal_quantile(scores: &[f64], alpha: f64) -> Result<f64> {
    check_not_nan("calibration scores", scores)?;
    let Some(k) = conformal_rank(scores.len(), alpha)? else {
        return Ok(f64::INFINITY);
    };
    let mut work = scores.to_vec();
    let (_, kth, _) = work.select_nth_unstable_by(k - 1, f64::total_cmp);
    Ok(*kth)
}

pub(crate) fn check_not_nan(what: &str, values: &[f64]) -> Result<()> {
    match values.iter().position(|v| v.is_nan()) {
        None => Ok(()),
        Some(index) => Err(CoreError::NonFinite {
            what: what.to_owned(),
            index,
            value: f64::NAN,
        }
        .into()),
    }
}

/// Sorted calibration scores: thresholds for any α and conformal p-values.
///
/// # Examples
/// ```
/// use lastmile_conformal::CalibrationScores;
/// let cal = CalibrationScores::new(vec![0.3, 0.1, 0.2, 0.4]).unwrap();
/// assert_eq!(cal.quantile(0.2).unwrap(), 0.4); // k = ⌈5·0.8⌉ = 4
/// // p-value of a new score 0.25: (#{s_i > 0.25} + 1) / (n + 1) = 3/5
/// assert!((cal.p_value(0.25, 1.0) - 0.6).abs() < 1e-12);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct CalibrationScores {
    sorted: Vec<f64>,
}

impl CalibrationScores {
    /// Sorts the scores (`O(n log n)`).
    ///
    /// # Errors
    /// [`CoreError::Empty`] for no scores, [`CoreError::NonFinite`] for NaN.
    pub fn new(mut scores: Vec<f64>) -> Result<Self> {
        check_not_empty("calibration scores", scores.len())?;
        check_not_nan("calibration scores", &scores)?;
        scores.sort_unstable_by(f64::total_cmp);
        Ok(Self { sorted: scores })
    }

    /// Number of calibration scores `n`.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Always `false`: construction rejects empty score sets.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The scores in ascending order.
    pub fn sorted(&self) -> &[f64] {
        &self.sorted
    }

    /// The threshold `q̂` at miscoverage `alpha` (see [`conformal_quantile`]).
    ///
    /// # Errors
    /// [`CoreError::OutOfRange`] unless `0 < α < 1`.
    pub fn quantile(&self, alpha: f64) -> Result<f64> {
        Ok(match conformal_rank(self.sorted.len(), alpha)? {
            Some(k) => self.sorted[k - 1],
            None => f64::INFINITY,
        })
    }

    /// The (smoothed) conformal p-value of a test score `s`:
    /// `p = (#{s_i > s} + θ·(#{s_i = s} + 1)) / (n + 1)`.
    ///
    /// `θ = 1` gives the conservative p-value (`P(p ≤ α) ≤ α`); `θ ~ U(0,1)`
    /// drawn independently gives the exact smoothed p-value (`P(p ≤ α) = α`,
    /// Vovk et al. 2005, §2.4). `θ` is clamped to `[0, 1]`.
    pub fn p_value(&self, s: f64, theta: f64) -> f64 {
        let theta = theta.clamp(0.0, 1.0);
        let n = self.sorted.len();
        let below = self.sorted.partition_point(|&x| x < s);
        let below_or_equal = self.sorted.partition_point(|&x| x <= s);
        let greater = n - below_or_equal;
        let equal = below_or_equal - below;
        (greater as f64 + theta * (equal as f64 + 1.0)) / (n as f64 + 1.0)
    }
}
