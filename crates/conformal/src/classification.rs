//! Split conformal classification: calibrate a threshold on held-out data,
//! then predict sets `{y : s(x, y) ≤ q̂}` with `P(Y ∈ C(X)) ≥ 1 − α`.

use std::ops::Bound;

use burn::tensor::{Int, Tensor};
// Named in the `# Errors` sections.
#[cfg(doc)]
use lastmile_core::CoreError;
use lastmile_core::validate::{check_in_range, check_len, check_open_unit, check_probability_row};
use rand::{Rng, RngExt};

use crate::error::Result;
use crate::input::{
    DEFAULT_SUM_TOLERANCE, Probability, Rows, check_each_in, check_labels, labels_to_host,
    logits_to_host_probabilities, probabilities_to_host,
};
use crate::parallel::map_ranges;
use crate::quantile::{CalibrationScores, conformal_quantile};
use crate::scores::{ScoreFunction, prefix_set};
use crate::sets::PredictionSets;

/// Split (inductive) conformal classification: a score function, a
/// miscoverage level α and the execution settings.
///
/// Calibration computes the nonconformity scores `s_i = s(x_i, y_i)` of `n`
/// held-out examples and the threshold `q̂` = the `⌈(n+1)(1−α)⌉`-th smallest
/// (`+∞` if that exceeds `n`); prediction returns `{y : s(x, y) ≤ q̂}`. On
/// exchangeable data, `1 − α ≤ P(Y ∈ C(X)) < 1 − α + 1/(n+1)` (the upper
/// bound for continuous scores) — Vovk et al. 2005; Lei et al. 2018, thm 2.
///
/// # Examples
/// ```
/// use lastmile_conformal::{ScoreFunction, SplitConformal};
/// use rand::{SeedableRng, rngs::StdRng};
/// let mut rng = StdRng::seed_from_u64(0);
/// // 4 calibration rows over 3 classes
/// let cal = [0.7f32, 0.2, 0.1, 0.1, 0.8, 0.1, 0.3, 0.3, 0.4, 0.6, 0.3, 0.1];
/// let labels = [0, 1, 2, 1];
/// let cp = SplitConformal::new(ScoreFunction::Lac, 0.2)?;
/// let fitted = cp.calibrate_slice(&cal, 3, &labels, &mut rng)?;
/// // LAC scores 0.3, 0.2, 0.6, 0.7; k = ⌈5·0.8⌉ = 4 → q̂ = 0.7
/// assert!((fitted.threshold() - 0.7).abs() < 1e-6);
/// let sets = fitted.predict_slice(&[0.5f32, 0.4, 0.1], 3, &mut rng)?;
/// assert_eq!(sets.size(0), 2); // {0, 1}: 1 − p ≤ 0.7 ⟺ p ≥ 0.3
/// # Ok::<(), lastmile_conformal::ConformalError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SplitConformal {
    score: ScoreFunction,
    alpha: f64,
    threads: usize,
    sum_tolerance: f64,
    non_empty: bool,
}

impl SplitConformal {
    /// Split conformal prediction with `score` at miscoverage `alpha`.
    ///
    /// # Errors
    /// [`CoreError::OutOfRange`] unless `0 < α < 1`, or for invalid score
    /// parameters (see [`ScoreFunction::validate`]).
    pub fn new(score: ScoreFunction, alpha: f64) -> Result<Self> {
        check_open_unit("alpha", alpha)?;
        score.validate()?;
        Ok(Self {
            score,
            alpha,
            threads: 1,
            sum_tolerance: DEFAULT_SUM_TOLERANCE,
            non_empty: false,
        })
    }

    /// Uses up to `threads` OS threads (scoped, per call) over rows.
    /// Results do not depend on the thread count. `0` is treated as 1.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Never predict an empty set: when no label has `s(x, y) ≤ q̂`, keep the
    /// most probable one (the lowest index among equals). Off by default.
    ///
    /// An empty set is an honest answer ("no label conforms") and the set
    /// `{y : s ≤ q̂}` is what the guarantee is about; adding a label can only
    /// raise coverage, so `P(Y ∈ C(X)) ≥ 1 − α` still holds, but the upper
    /// bound `1 − α + 1/(n+1)` no longer does. This is the convention of
    /// MAPIE's `include_last_label=False` for APS/RAPS (non-randomised scores
    /// with confident rows, e.g. `p_max > q̂`, give empty sets otherwise).
    ///
    /// ```
    /// use lastmile_conformal::{ScoreFunction, SplitConformal};
    /// let cp = SplitConformal::new(ScoreFunction::aps(), 0.5)?;
    /// // APS scores (mass up to and including y): 0.9, 0.1 + 0.9 = 1.0, 0.9
    /// let cal = [0.9f32, 0.1, 0.1, 0.9, 0.1, 0.9];
    /// let fitted = cp.calibrate_slice_with_uniforms(&cal, 2, &[0, 0, 1], &[1.0; 3])?;
    /// assert!((fitted.threshold() - 0.9).abs() < 1e-6);
    /// let confident = [0.95f32, 0.05];
    /// assert_eq!(fitted.predict_slice_with_uniforms(&confident, 2, &[1.0])?.size(0), 0);
    /// let fitted = cp
    ///     .with_non_empty_sets(true)
    ///     .calibrate_slice_with_uniforms(&cal, 2, &[0, 0, 1], &[1.0; 3])?;
    /// assert_eq!(fitted.predict_slice_with_uniforms(&confident, 2, &[1.0])?.set(0), &[0]);
    /// # Ok::<(), lastmile_conformal::ConformalError>(())
    /// ```
    pub fn with_non_empty_sets(mut self, on: bool) -> Self {
        self.non_empty = on;
        self
    }

    /// Whether empty sets are replaced by the most probable label.
    pub fn non_empty_sets(&self) -> bool {
        self.non_empty
    }

    /// Sets the tolerance on probability row sums (default `1e-3`).
    ///
    /// # Errors
    /// [`CoreError::OutOfRange`] unless `0 ≤ tolerance ≤ 1`.
    pub fn with_sum_tolerance(mut self, tolerance: f64) -> Result<Self> {
        self.sum_tolerance = check_in_range("probability sum tolerance", tolerance, 0.0, 1.0)?;
        Ok(self)
    }

    /// The score function.
    pub fn score_function(&self) -> ScoreFunction {
        self.score
    }

    /// The miscoverage level α.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Calibrates on a `[n, classes]` probability tensor and its labels.
    /// Randomised scores draw one `U ~ U(0,1)` per row from `rng`.
    ///
    /// # Errors
    /// See [`calibrate_slice`](Self::calibrate_slice).
    pub fn calibrate<R: Rng + ?Sized>(
        &self,
        probs: Tensor<2>,
        labels: Tensor<1, Int>,
        rng: &mut R,
    ) -> Result<CalibratedClassifier> {
        let (data, classes) = probabilities_to_host(probs)?;
        self.calibrate_slice(&data, classes, &labels_to_host(labels)?, rng)
    }

    /// Calibrates on a `[n, classes]` logit tensor (softmax is applied first).
    ///
    /// # Errors
    /// As [`calibrate_slice`](Self::calibrate_slice), plus the logit checks of
    /// [`logits_to_host_probabilities`].
    pub fn calibrate_logits<R: Rng + ?Sized>(
        &self,
        logits: Tensor<2>,
        labels: Tensor<1, Int>,
        rng: &mut R,
    ) -> Result<CalibratedClassifier> {
        let (data, classes) = logits_to_host_probabilities(logits)?;
        self.calibrate_slice(&data, classes, &labels_to_host(labels)?, rng)
    }

    /// Calibrates on row-major host probabilities (`n · classes` values).
    ///
    /// # Errors
    /// [`CoreError::Empty`] for no rows; [`CoreError::ShapeMismatch`] when the
    /// length is not a multiple of `classes` (or `classes = 0`);
    /// [`CoreError::LengthMismatch`] when `labels` has not one entry per row;
    /// [`CoreError::IndexOutOfRange`] for a label `≥ classes`;
    /// [`CoreError::NonFinite`] / [`CoreError::NotAProbability`] for NaN, ±∞,
    /// negative entries or rows not summing to 1.
    pub fn calibrate_slice<T: Probability, R: Rng + ?Sized>(
        &self,
        probs: &[T],
        classes: usize,
        labels: &[usize],
        rng: &mut R,
    ) -> Result<CalibratedClassifier> {
        let rows = Rows::new("calibration probabilities", probs, classes)?;
        let uniforms = draw_uniforms(&self.score, rows.len(), rng);
        self.calibrate_rows(rows, labels, uniforms.as_deref())
    }

    /// As [`calibrate_slice`](Self::calibrate_slice) with the caller's
    /// uniforms (one per row, in `[0, 1]`), e.g. to share them with another
    /// implementation. Ignored for non-randomised scores.
    ///
    /// # Errors
    /// As [`calibrate_slice`](Self::calibrate_slice), plus a length or range
    /// error for `uniforms`.
    pub fn calibrate_slice_with_uniforms<T: Probability>(
        &self,
        probs: &[T],
        classes: usize,
        labels: &[usize],
        uniforms: &[f64],
    ) -> Result<CalibratedClassifier> {
        let rows = Rows::new("calibration probabilities", probs, classes)?;
        check_uniforms(uniforms, rows.len())?;
        self.calibrate_rows(rows, labels, Some(uniforms))
    }

    fn calibrate_rows<T: Probability>(
        &self,
        rows: Rows<'_, T>,
        labels: &[usize],
        uniforms: Option<&[f64]>,
    ) -> Result<CalibratedClassifier> {
        check_labels(labels, rows.len(), rows.classes)?;
        let score = self.score;
        let tol = self.sum_tolerance;
        let parts = map_ranges(rows.len(), self.threads, |range| {
            let mut out = Vec::with_capacity(range.len());
            for i in range {
                let row = rows.row(i);
                check_probability_row("calibration probabilities", row, i, tol)?;
                let u = uniforms.map_or(1.0, |u| u[i]);
                out.push(score.score(row, labels[i], u));
            }
            Ok(out)
        })?;
        let scores: Vec<f64> = parts.into_iter().flatten().collect();
        let qhat = conformal_quantile(&scores, self.alpha)?;
        Ok(CalibratedClassifier {
            config: *self,
            classes: rows.classes,
            qhat,
            scores,
        })
    }
}

/// Draws one uniform per row when the score is randomised.
/// Index of the largest probability (the first among equals).
fn most_probable<T: Probability>(row: &[T]) -> u32 {
    let mut best = 0;
    for (j, &p) in row.iter().enumerate() {
        if p.into() > row[best].into() {
            best = j;
        }
    }
    best as u32
}

pub(crate) fn draw_uniforms<R: Rng + ?Sized>(
    score: &ScoreFunction,
    rows: usize,
    rng: &mut R,
) -> Option<Vec<f64>> {
    score
        .is_randomized()
        .then(|| (0..rows).map(|_| rng.random::<f64>()).collect())
}

pub(crate) fn check_uniforms(uniforms: &[f64], rows: usize) -> Result<()> {
    check_len("uniforms", uniforms.len(), rows)?;
    Ok(check_each_in(
        "uniforms",
        uniforms,
        Bound::Included(0.0),
        Bound::Included(1.0),
    )?)
}

/// A calibrated split-conformal classifier: the threshold `q̂` and the
/// calibration scores.
#[derive(Clone, Debug, PartialEq)]
pub struct CalibratedClassifier {
    config: SplitConformal,
    classes: usize,
    qhat: f64,
    scores: Vec<f64>,
}

impl CalibratedClassifier {
    /// The threshold `q̂` (`+∞` when `⌈(n+1)(1−α)⌉ > n`).
    pub fn threshold(&self) -> f64 {
        self.qhat
    }

    /// Number of calibration examples `n`.
    pub fn n_calibration(&self) -> usize {
        self.scores.len()
    }

    /// Number of classes seen at calibration.
    pub fn n_classes(&self) -> usize {
        self.classes
    }

    /// The calibration scores, in calibration order.
    pub fn scores(&self) -> &[f64] {
        &self.scores
    }

    /// The configuration used.
    pub fn config(&self) -> &SplitConformal {
        &self.config
    }

    /// Prediction sets for a `[m, classes]` probability tensor.
    ///
    /// # Errors
    /// See [`predict_slice`](Self::predict_slice).
    pub fn predict<R: Rng + ?Sized>(
        &self,
        probs: Tensor<2>,
        rng: &mut R,
    ) -> Result<PredictionSets> {
        let (data, classes) = probabilities_to_host(probs)?;
        self.predict_slice(&data, classes, rng)
    }

    /// Prediction sets for a `[m, classes]` logit tensor.
    ///
    /// # Errors
    /// As [`predict_slice`](Self::predict_slice), plus logit checks.
    pub fn predict_logits<R: Rng + ?Sized>(
        &self,
        logits: Tensor<2>,
        rng: &mut R,
    ) -> Result<PredictionSets> {
        let (data, classes) = logits_to_host_probabilities(logits)?;
        self.predict_slice(&data, classes, rng)
    }

    /// Prediction sets `{y : s(x, y) ≤ q̂}` for row-major host probabilities.
    ///
    /// LAC scans each row once; APS, RAPS and SAPS sort only the top of each
    /// row (their scores grow with the rank).
    ///
    /// # Errors
    /// [`CoreError::ShapeMismatch`] when `classes` differs from calibration or
    /// the length is not a multiple of it; [`CoreError::Empty`] for no rows;
    /// [`CoreError::NonFinite`] / [`CoreError::NotAProbability`] for invalid rows.
    pub fn predict_slice<T: Probability, R: Rng + ?Sized>(
        &self,
        probs: &[T],
        classes: usize,
        rng: &mut R,
    ) -> Result<PredictionSets> {
        let rows = self.test_rows(probs, classes)?;
        let uniforms = draw_uniforms(&self.config.score, rows.len(), rng);
        self.predict_rows(rows, uniforms.as_deref())
    }

    /// As [`predict_slice`](Self::predict_slice) with the caller's uniforms
    /// (one per row, in `[0, 1]`; ignored for non-randomised scores).
    ///
    /// # Errors
    /// As [`predict_slice`](Self::predict_slice), plus length/range errors for `uniforms`.
    pub fn predict_slice_with_uniforms<T: Probability>(
        &self,
        probs: &[T],
        classes: usize,
        uniforms: &[f64],
    ) -> Result<PredictionSets> {
        let rows = self.test_rows(probs, classes)?;
        check_uniforms(uniforms, rows.len())?;
        self.predict_rows(rows, Some(uniforms))
    }

    fn test_rows<'a, T: Probability>(&self, probs: &'a [T], classes: usize) -> Result<Rows<'a, T>> {
        Rows::for_test(probs, classes, self.classes)
    }

    fn predict_rows<T: Probability>(
        &self,
        rows: Rows<'_, T>,
        uniforms: Option<&[f64]>,
    ) -> Result<PredictionSets> {
        let score = self.config.score;
        let qhat = self.qhat;
        let tol = self.config.sum_tolerance;
        let non_empty = self.config.non_empty;
        let classes = rows.classes;
        let parts = map_ranges(rows.len(), self.config.threads, |range| {
            let mut offsets = Vec::with_capacity(range.len() + 1);
            offsets.push(0);
            let mut labels: Vec<u32> = Vec::new();
            let mut order = Vec::new();
            for i in range {
                let row = rows.row(i);
                check_probability_row("test probabilities", row, i, tol)?;
                if qhat == f64::INFINITY {
                    labels.extend(0..classes as u32);
                } else if let ScoreFunction::Lac = score {
                    // 1 − p ≤ q̂, computed exactly as the calibration scores are.
                    for (j, &p) in row.iter().enumerate() {
                        if 1.0 - p.into() <= qhat {
                            labels.push(j as u32);
                        }
                    }
                } else {
                    let u = uniforms.map_or(1.0, |u| u[i]);
                    prefix_set(&score, row, u, qhat, &mut labels, &mut order);
                }
                if non_empty && labels.len() == offsets[offsets.len() - 1] {
                    labels.push(most_probable(row));
                }
                offsets.push(labels.len());
            }
            Ok((offsets, labels))
        })?;
        Ok(PredictionSets::concat(classes, parts))
    }

    /// Conformal p-values `p(x, y)` of every label, row-major `[m, classes]`:
    /// `p = (#{s_i > s} + θ(#{s_i = s} + 1)) / (n + 1)` with `s = s(x, y)`.
    ///
    /// With `smoothed = false`, `θ = 1` and `{y : p(x, y) > α}` is exactly
    /// the split-conformal set; with `smoothed = true`, one `θ ~ U(0,1)` per
    /// row makes the p-value of the true label exactly uniform, so the set
    /// `{y : p > α}` has coverage exactly `1 − α` (Vovk et al. 2005, §2.4).
    /// Randomised scores draw their `U` per row first, then the `θ`s.
    ///
    /// # Errors
    /// As [`predict_slice`](Self::predict_slice).
    ///
    /// # Examples
    /// ```
    /// use lastmile_conformal::{ScoreFunction, SplitConformal};
    /// use rand::{SeedableRng, rngs::StdRng};
    /// let mut rng = StdRng::seed_from_u64(1);
    /// let cal = [0.9f32, 0.1, 0.6, 0.4, 0.2, 0.8];
    /// let fitted = SplitConformal::new(ScoreFunction::Lac, 0.3)?
    ///     .calibrate_slice(&cal, 2, &[0, 0, 1], &mut rng)?;
    /// let p = fitted.p_values_slice(&[0.7f32, 0.3], 2, false, &mut rng)?;
    /// // scores 0.1, 0.4, 0.2; label 0 has s = 0.3: (#{> 0.3} + 1)/4 = 2/4
    /// assert!((p[0] - 0.5).abs() < 1e-6);
    /// # Ok::<(), lastmile_conformal::ConformalError>(())
    /// ```
    pub fn p_values_slice<T: Probability, R: Rng + ?Sized>(
        &self,
        probs: &[T],
        classes: usize,
        smoothed: bool,
        rng: &mut R,
    ) -> Result<Vec<f64>> {
        let rows = self.test_rows(probs, classes)?;
        let score = self.config.score;
        let uniforms = draw_uniforms(&score, rows.len(), rng);
        let thetas: Option<Vec<f64>> =
            smoothed.then(|| (0..rows.len()).map(|_| rng.random::<f64>()).collect());
        let cal = CalibrationScores::new(self.scores.clone())?;
        let mut out = vec![0.0; rows.len() * classes];
        let mut order = Vec::new();
        for i in 0..rows.len() {
            let row = rows.row(i);
            check_probability_row("test probabilities", row, i, self.config.sum_tolerance)?;
            let u = uniforms.as_ref().map_or(1.0, |u| u[i]);
            let theta = thetas.as_ref().map_or(1.0, |t| t[i]);
            let dst = &mut out[i * classes..(i + 1) * classes];
            score.score_row(row, u, dst, &mut order);
            for v in dst.iter_mut() {
                *v = cal.p_value(*v, theta);
            }
        }
        Ok(out)
    }
}
