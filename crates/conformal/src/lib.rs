//! # lastmile-conformal
//!
//! Conformal prediction for burn models: wrap any classifier or regressor and
//! get prediction **sets** (or intervals) that contain the truth with
//! probability at least `1 − α` on exchangeable data, for every sample size.
//!
//! - [`SplitConformal`]: split conformal classification with the scores
//!   [`ScoreFunction::Lac`] (THR), [`Aps`](ScoreFunction::Aps),
//!   [`Raps`](ScoreFunction::Raps) and [`Saps`](ScoreFunction::Saps),
//!   randomised (seeded RNG or caller-supplied uniforms) or not, and exact
//!   smoothed p-values.
//! - [`Mondrian`]: class- or group-conditional calibration.
//! - [`ConformalRegressor`]: absolute residual, normalised residual and CQR
//!   intervals; [`CvPlus`] for jackknife+ / CV+ (every training point
//!   calibrates); [`AdaptiveConformal`] for online data under drift;
//!   [`conformal_risk_control`] for bounded monotone losses.
//! - [`bounds`]: the three upper bounds on `H(Y|X)` of Correia et al.
//!   (NeurIPS 2024): DPI, model-based Fano and simple Fano.
//! - [`training`]: conformal training on burn's autodiff backend —
//!   differentiable quantile (NeuralSort), soft sets, ConfTr and the three
//!   bounds as losses, combinable with cross-entropy.
//! - [`metrics`](coverage): coverage (overall, per class, per set size),
//!   inefficiency, interval width; [`CoverageDistribution`], the exact
//!   finite-sample law of split-conformal coverage (how far one calibration
//!   split may land from `1 − α`).
//!
//! ## Conventions
//! One convention everywhere: **nonconformity** scores, lower = more
//! conforming. The threshold is the `k`-th smallest of `n` calibration scores
//! with `k = ⌈(n+1)(1−α)⌉`, and `+∞` (all labels) when `k > n`; sets are
//! `{y : s(x, y) ≤ q̂}`. No interpolated quantiles: they are not
//! finite-sample valid.
//!
//! Calibration and prediction are bookkeeping (sums, selections,
//! comparisons) done in `f64` on host slices; tensor entry points read the
//! tensor back once. The training losses are burn tensor programs and run
//! on any backend, including autodiff devices. No dependency beyond
//! `lastmile-core`, burn, `rand` (seeded randomised scores) and `thiserror`;
//! parallelism uses scoped std threads, opt-in per call via
//! [`SplitConformal::with_threads`].
//!
//! ## Example
//! ```
//! # #[cfg(feature = "flex")] {
//! use burn::tensor::{Int, Tensor};
//! use lastmile_conformal::{ScoreFunction, SplitConformal, coverage};
//! use rand::{SeedableRng, rngs::StdRng};
//!
//! let device = lastmile_core::default_device()?;
//! let mut rng = StdRng::seed_from_u64(7);
//! // calibration: softmax outputs of some model and the true labels
//! let cal = Tensor::<2>::from_floats(
//!     [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4]],
//!     &device,
//! );
//! let labels = Tensor::<1, Int>::from_ints([0, 1, 2, 1, 0], &device);
//! let fitted = SplitConformal::new(ScoreFunction::aps(), 0.2)?.calibrate(cal, labels, &mut rng)?;
//! let test = Tensor::<2>::from_floats([[0.6, 0.3, 0.1]], &device);
//! let sets = fitted.predict(test, &mut rng)?;
//! assert!(sets.size(0) >= 1);
//! assert_eq!(coverage(&sets, &[0])?, 1.0);
//! # }
//! # Ok::<(), lastmile_conformal::ConformalError>(())
//! ```

pub mod bounds;
mod classification;
mod coverage_distribution;
mod cv_plus;
mod error;
mod input;
mod metrics;
mod mondrian;
mod online;
mod parallel;
mod quantile;
mod regression;
mod risk;
mod scores;
mod sets;
pub mod training;

pub use classification::{CalibratedClassifier, SplitConformal};
pub use coverage_distribution::{CoverageDistribution, MAX_POINTS};
pub use cv_plus::CvPlus;
pub use error::{ConformalError, Result};
pub use input::{
    DEFAULT_SUM_TOLERANCE, Probability, labels_to_host, logits_to_host_probabilities,
    probabilities_to_host,
};
pub use metrics::{SizeStratum, class_coverage, coverage, size_stratified_coverage};
pub use mondrian::{CalibratedMondrian, Mondrian, Taxonomy};
pub use online::AdaptiveConformal;
pub use quantile::{CalibrationScores, conformal_quantile, conformal_rank};
pub use regression::{ConformalRegressor, Intervals, RegressionPredictions};
pub use risk::{RiskControl, conformal_risk_control};
pub use scores::ScoreFunction;
pub use sets::PredictionSets;
