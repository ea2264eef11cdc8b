//! Mondrian (class- or group-conditional) conformal classification.
//!
//! The calibration set is partitioned into categories (the true class, or a
//! group known for every example such as a device or a site) and each
//! category gets its own threshold `q̂_c` from its own scores. Then
//! `P(Y ∈ C(X) | category = c) ≥ 1 − α` for every `c` (Vovk et al. 2005, §4.5;
//! Vovk 2012 "Conditional validity of inductive conformal predictors").
//! A category with fewer than `⌈1/α⌉ − 1` calibration points gets `q̂ = +∞`.

use burn::tensor::{Int, Tensor};
// Named in the `# Errors` sections.
#[cfg(doc)]
use lastmile_core::CoreError;
use lastmile_core::validate::{
    check_at_least, check_indices, check_len, check_open_unit, check_probability_row,
};
use rand::Rng;

use crate::classification::{check_uniforms, draw_uniforms};
use crate::error::{ConformalError, Result};
use crate::input::{
    DEFAULT_SUM_TOLERANCE, Probability, Rows, check_labels, labels_to_host, probabilities_to_host,
};
use crate::quantile::conformal_quantile;
use crate::scores::ScoreFunction;
use crate::sets::PredictionSets;

/// How calibration examples are partitioned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Taxonomy {
    /// One threshold per class: label `y` enters the set iff `s(x, y) ≤ q̂_y`.
    ClassConditional,
    /// One threshold per group `g(x) ∈ {0, …, n_groups − 1}`, known for
    /// calibration and test examples.
    Groups {
        /// Number of groups.
        n_groups: usize,
    },
}

impl Taxonomy {
    fn name(&self) -> &'static str {
        match self {
            Self::ClassConditional => "class-conditional",
            Self::Groups { .. } => "groups",
        }
    }
}

/// Mondrian conformal classification.
///
/// # Examples
/// ```
/// use lastmile_conformal::{Mondrian, ScoreFunction};
/// use rand::{SeedableRng, rngs::StdRng};
/// let mut rng = StdRng::seed_from_u64(0);
/// let cal = [0.9f32, 0.1, 0.8, 0.2, 0.3, 0.7, 0.4, 0.6];
/// let fitted = Mondrian::class_conditional(ScoreFunction::Lac, 0.4)?
///     .calibrate_slice(&cal, 2, &[0, 0, 1, 1], None, &mut rng)?;
/// // class 0: scores 0.1, 0.2 → k = ⌈3·0.6⌉ = 2 → q̂₀ = 0.2
/// assert!((fitted.thresholds()[0] - 0.2).abs() < 1e-6);
/// # Ok::<(), lastmile_conformal::ConformalError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mondrian {
    score: ScoreFunction,
    alpha: f64,
    taxonomy: Taxonomy,
    sum_tolerance: f64,
}

impl Mondrian {
    /// Class-conditional conformal prediction.
    ///
    /// # Errors
    /// [`CoreError::OutOfRange`] for α ∉ (0, 1) or bad score parameters.
    pub fn class_conditional(score: ScoreFunction, alpha: f64) -> Result<Self> {
        Self::new(score, alpha, Taxonomy::ClassConditional)
    }

    /// Group-conditional conformal prediction over `n_groups` groups.
    ///
    /// # Errors
    /// As [`class_conditional`](Self::class_conditional), and `n_groups = 0`.
    pub fn by_group(score: ScoreFunction, alpha: f64, n_groups: usize) -> Result<Self> {
        check_at_least("n_groups", n_groups, 1)?;
        Self::new(score, alpha, Taxonomy::Groups { n_groups })
    }

    fn new(score: ScoreFunction, alpha: f64, taxonomy: Taxonomy) -> Result<Self> {
        check_open_unit("alpha", alpha)?;
        score.validate()?;
        Ok(Self {
            score,
            alpha,
            taxonomy,
            sum_tolerance: DEFAULT_SUM_TOLERANCE,
        })
    }

    /// Calibrates on a probability tensor, labels and (for
    /// [`Taxonomy::Groups`]) group ids.
    ///
    /// # Errors
    /// See [`calibrate_slice`](Self::calibrate_slice).
    pub fn calibrate<R: Rng + ?Sized>(
        &self,
        probs: Tensor<2>,
        labels: Tensor<1, Int>,
        groups: Option<Tensor<1, Int>>,
        rng: &mut R,
    ) -> Result<CalibratedMondrian> {
        let (data, classes) = probabilities_to_host(probs)?;
        let groups = groups.map(labels_to_host).transpose()?;
        self.calibrate_slice(
            &data,
            classes,
            &labels_to_host(labels)?,
            groups.as_deref(),
            rng,
        )
    }

    /// Calibrates on row-major host probabilities.
    ///
    /// # Errors
    /// The input errors of
    /// [`SplitConformal::calibrate_slice`](crate::SplitConformal::calibrate_slice);
    /// [`ConformalError::KindMismatch`] when `groups` is given for
    /// class-conditional calibration or missing for groups; length and index
    /// errors for `groups`.
    pub fn calibrate_slice<T: Probability, R: Rng + ?Sized>(
        &self,
        probs: &[T],
        classes: usize,
        labels: &[usize],
        groups: Option<&[usize]>,
        rng: &mut R,
    ) -> Result<CalibratedMondrian> {
        let rows = Rows::new("calibration probabilities", probs, classes)?;
        check_labels(labels, rows.len(), classes)?;
        let categories = self.categories(groups, rows.len(), classes)?;
        let uniforms = draw_uniforms(&self.score, rows.len(), rng);
        let n_categories = self.n_categories(classes);
        let mut per_category: Vec<Vec<f64>> = vec![Vec::new(); n_categories];
        for i in 0..rows.len() {
            let row = rows.row(i);
            check_probability_row("calibration probabilities", row, i, self.sum_tolerance)?;
            let u = uniforms.as_ref().map_or(1.0, |u| u[i]);
            let c = categories.map_or(labels[i], |g| g[i]);
            per_category[c].push(self.score.score(row, labels[i], u));
        }
        let counts: Vec<usize> = per_category.iter().map(Vec::len).collect();
        let thresholds = per_category
            .iter()
            .map(|s| {
                if s.is_empty() {
                    Ok(f64::INFINITY)
                } else {
                    conformal_quantile(s, self.alpha)
                }
            })
            .collect::<Result<Vec<f64>>>()?;
        Ok(CalibratedMondrian {
            config: *self,
            classes,
            thresholds,
            counts,
        })
    }

    fn n_categories(&self, classes: usize) -> usize {
        match self.taxonomy {
            Taxonomy::ClassConditional => classes,
            Taxonomy::Groups { n_groups } => n_groups,
        }
    }

    fn categories<'g>(
        &self,
        groups: Option<&'g [usize]>,
        rows: usize,
        _classes: usize,
    ) -> Result<Option<&'g [usize]>> {
        match (self.taxonomy, groups) {
            (Taxonomy::ClassConditional, None) => Ok(None),
            (Taxonomy::Groups { n_groups }, Some(g)) => {
                check_len("groups", g.len(), rows)?;
                check_indices("groups", g, n_groups)?;
                Ok(Some(g))
            }
            (t, g) => Err(ConformalError::KindMismatch {
                calibrated: t.name(),
                given: if g.is_some() {
                    "group ids"
                } else {
                    "no group ids"
                },
            }),
        }
    }
}

/// A calibrated Mondrian classifier: one threshold per category.
#[derive(Clone, Debug, PartialEq)]
pub struct CalibratedMondrian {
    config: Mondrian,
    classes: usize,
    thresholds: Vec<f64>,
    counts: Vec<usize>,
}

impl CalibratedMondrian {
    /// Threshold `q̂_c` of every category (`+∞` for categories with too few points).
    pub fn thresholds(&self) -> &[f64] {
        &self.thresholds
    }

    /// Number of calibration points per category.
    pub fn counts(&self) -> &[usize] {
        &self.counts
    }

    /// Prediction sets for row-major probabilities (`groups` required for
    /// [`Taxonomy::Groups`], absent otherwise).
    ///
    /// # Errors
    /// Shape, probability and group errors as in calibration.
    pub fn predict_slice<T: Probability, R: Rng + ?Sized>(
        &self,
        probs: &[T],
        classes: usize,
        groups: Option<&[usize]>,
        rng: &mut R,
    ) -> Result<PredictionSets> {
        let rows = self.test_rows(probs, classes)?;
        let uniforms = draw_uniforms(&self.config.score, rows.len(), rng);
        self.predict_rows(rows, groups, uniforms.as_deref())
    }

    /// As [`predict_slice`](Self::predict_slice) with the caller's uniforms.
    ///
    /// # Errors
    /// As [`predict_slice`](Self::predict_slice), plus uniform length/range errors.
    pub fn predict_slice_with_uniforms<T: Probability>(
        &self,
        probs: &[T],
        classes: usize,
        groups: Option<&[usize]>,
        uniforms: &[f64],
    ) -> Result<PredictionSets> {
        let rows = self.test_rows(probs, classes)?;
        check_uniforms(uniforms, rows.len())?;
        self.predict_rows(rows, groups, Some(uniforms))
    }

    fn test_rows<'a, T: Probability>(&self, probs: &'a [T], classes: usize) -> Result<Rows<'a, T>> {
        Rows::for_test(probs, classes, self.classes)
    }

    fn predict_rows<T: Probability>(
        &self,
        rows: Rows<'_, T>,
        groups: Option<&[usize]>,
        uniforms: Option<&[f64]>,
    ) -> Result<PredictionSets> {
        let categories = self.config.categories(groups, rows.len(), rows.classes)?;
        let mut offsets = vec![0usize];
        let mut labels = Vec::new();
        let mut scores = vec![0.0; rows.classes];
        let mut order = Vec::new();
        for i in 0..rows.len() {
            let row = rows.row(i);
            check_probability_row("test probabilities", row, i, self.config.sum_tolerance)?;
            let u = uniforms.map_or(1.0, |u| u[i]);
            self.config.score.score_row(row, u, &mut scores, &mut order);
            for (y, &s) in scores.iter().enumerate() {
                let q = match categories {
                    None => self.thresholds[y],
                    Some(g) => self.thresholds[g[i]],
                };
                if s <= q {
                    labels.push(y as u32);
                }
            }
            offsets.push(labels.len());
        }
        Ok(PredictionSets::from_parts(rows.classes, offsets, labels))
    }
}
