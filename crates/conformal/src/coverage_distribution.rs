//! The exact finite-sample distribution of split-conformal coverage.
//!
//! The guarantee `P(Y ∈ C(X)) ≥ 1 − α` is *marginal*: an expectation over the
//! calibration set as well as the test point. One calibration set gives a
//! coverage that fluctuates around it. With `n` exchangeable calibration
//! scores without ties and the conformal rank `k = ⌈(n+1)(1−α)⌉`, the
//! coverage conditional on the calibration set is
//! `Beta(k, n + 1 − k)`-distributed (Vovk 2012, "Conditional validity of
//! inductive conformal predictors", Prop. 2a; Angelopoulos & Bates 2023,
//! "Conformal prediction: a gentle introduction", Sec. 3.2), so its mean is
//! `k / (n+1) ∈ [1−α, 1−α + 1/(n+1))`. The fraction covered among `m` test
//! points is then Beta-binomial: `P(j of m covered) = C(m, j)·B(j + k,
//! m − j + n + 1 − k) / B(k, n + 1 − k)`. This module evaluates that law,
//! so that a report can say whether an observed coverage is within what
//! the guarantee predicts.

use lastmile_core::CoreError;
use lastmile_core::validate::{check_at_least, check_open_unit};

use crate::error::Result;
use crate::quantile::conformal_rank;

/// Largest `n + m` accepted: the law needs `O(n + m)` memory.
pub const MAX_POINTS: usize = 10_000_000;

/// The distribution of the empirical coverage of split conformal prediction
/// with `n` calibration and `m` test points.
///
/// # Examples
/// ```
/// use lastmile_conformal::CoverageDistribution;
/// // 359 calibration and 360 test points at α = 0.1
/// let law = CoverageDistribution::split(359, 360, 0.1)?;
/// assert!((law.mean() - 0.9).abs() < 1e-12); // k = 324 = 0.9 · 360
/// let (lo, hi) = law.interval(0.95)?;
/// assert!(lo < 0.87 && hi > 0.93); // one split's coverage varies by ±3 points or more
/// # Ok::<(), lastmile_conformal::ConformalError>(())
/// ```
#[derive(Clone, Debug)]
pub struct CoverageDistribution {
    n_calibration: usize,
    rank: Option<usize>,
    /// `pmf[j] = P(j of the m test points are covered)`.
    pmf: Vec<f64>,
}

impl CoverageDistribution {
    /// The law for `n_calibration` calibration points, `n_test` test points
    /// and miscoverage `alpha`, assuming exchangeable scores without ties
    /// (ties, e.g. from a deterministic score on discrete data, only raise
    /// coverage; randomised scores such as randomised APS have no ties).
    ///
    /// # Errors
    /// [`CoreError::OutOfRange`] unless `0 < α < 1`, both counts are at
    /// least 1 and `n + m ≤` [`MAX_POINTS`].
    pub fn split(n_calibration: usize, n_test: usize, alpha: f64) -> Result<Self> {
        check_open_unit("alpha", alpha)?;
        check_at_least("calibration points", n_calibration, 1)?;
        check_at_least("test points", n_test, 1)?;
        if n_calibration.saturating_add(n_test) > MAX_POINTS {
            return Err(CoreError::OutOfRange {
                name: "calibration + test points".into(),
                value: n_calibration.saturating_add(n_test) as f64,
                expected: format!("at most {MAX_POINTS}"),
            }
            .into());
        }
        let rank = conformal_rank(n_calibration, alpha)?;
        let m = n_test;
        let pmf = match rank {
            // k > n: the threshold is +∞ and every set holds every label.
            None => (0..=m).map(|j| f64::from(u8::from(j == m))).collect(),
            Some(k) => {
                let (a, b) = (k, n_calibration + 1 - k);
                // ln Γ(x) for integers x = 1..=n+m+1: ln Γ(x) = ln (x−1)!.
                let mut ln_fact = Vec::with_capacity(m + n_calibration + 2);
                ln_fact.push(0.0f64);
                for i in 1..=m + n_calibration + 1 {
                    let prev = ln_fact[i - 1];
                    ln_fact.push(prev + (i as f64).ln());
                }
                let ln_gamma = |x: usize| ln_fact[x - 1];
                let ln_beta = |x: usize, y: usize| ln_gamma(x) + ln_gamma(y) - ln_gamma(x + y);
                let ln_choose = |j: usize| ln_fact[m] - ln_fact[j] - ln_fact[m - j];
                let base = ln_beta(a, b);
                (0..=m)
                    .map(|j| (ln_choose(j) + ln_beta(j + a, m - j + b) - base).exp())
                    .collect()
            }
        };
        Ok(Self {
            n_calibration,
            rank,
            pmf,
        })
    }

    /// Number of test points `m`.
    pub fn n_test(&self) -> usize {
        self.pmf.len() - 1
    }

    /// `P(j of m covered)` for `j = 0..=m`.
    pub fn pmf(&self) -> &[f64] {
        &self.pmf
    }

    /// The expected coverage `k / (n+1)` (1 when `k > n`): the marginal
    /// guarantee, `1 − α ≤ mean < 1 − α + 1/(n+1)`.
    pub fn mean(&self) -> f64 {
        self.rank
            .map_or(1.0, |k| k as f64 / (self.n_calibration as f64 + 1.0))
    }

    /// Standard deviation of the empirical coverage `j / m`.
    pub fn std(&self) -> f64 {
        let m = self.n_test() as f64;
        let mean = self.mean();
        let var: f64 = self
            .pmf
            .iter()
            .enumerate()
            .map(|(j, p)| p * (j as f64 / m - mean).powi(2))
            .sum();
        var.sqrt()
    }

    /// A central interval `[lo, hi]` of the empirical coverage holding at
    /// least `level` of the probability: `lo` is the largest `j/m` with
    /// `P(J < j) ≤ (1−level)/2`, `hi` the smallest with `P(J > j) ≤ (1−level)/2`.
    ///
    /// # Errors
    /// [`CoreError::OutOfRange`] unless `0 < level < 1`.
    pub fn interval(&self, level: f64) -> Result<(f64, f64)> {
        check_open_unit("level", level)?;
        let tail = (1.0 - level) / 2.0;
        let m = self.n_test();
        let mut below = 0.0;
        let mut lo = 0;
        for (j, p) in self.pmf.iter().enumerate() {
            if below + p > tail {
                lo = j;
                break;
            }
            below += p;
        }
        let mut above = 0.0;
        let mut hi = m;
        for (j, p) in self.pmf.iter().enumerate().rev() {
            if above + p > tail {
                hi = j;
                break;
            }
            above += p;
        }
        Ok((lo as f64 / m as f64, hi as f64 / m as f64))
    }
}
