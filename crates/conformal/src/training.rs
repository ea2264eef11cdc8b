//! Conformal training: differentiable conformal prediction on burn's
//! autodiff backend, and the training objectives of Stutz et al. (ConfTr,
//! ICLR 2022) and Correia et al. (the three upper bounds on `H(Y|X)`,
//! NeurIPS 2024).
//!
//! Each batch is split into a calibration half and a prediction half. The
//! threshold is a differentiable quantile of the calibration scores (a
//! NeuralSort relaxation of sorting, Grover et al. ICLR 2019), set
//! membership is relaxed to `C_k = σ((q̂ − s_k)/T)`, and the objective is
//! computed on the prediction half, optionally plus a weighted cross-entropy
//! on the whole batch. Every function here is built from burn tensor ops, so
//! gradients flow through `loss.backward()` on an autodiff device.

use std::ops::Bound;

use burn::tensor::{Int, Tensor, TensorData, activation};
use lastmile_core::{
    CoreError,
    convert::indices_to_vec,
    validate::{
        check_at_least, check_interval, check_len, check_non_empty, check_open_unit, check_positive,
    },
};
use rand::{Rng, RngExt};

use crate::bounds::{MIN_EVENT_PROBABILITY, alpha_n, binary_entropy, check_bound_alpha};
use crate::error::Result;
use crate::input::check_labels;
use crate::scores::ScoreFunction;

/// Floor for set sizes and memberships inside logarithms.
const LOG_FLOOR: f64 = 1e-7;

fn scalar(t: Tensor<1>) -> Tensor<1> {
    t.reshape([1])
}

/// Differentiable ascending sort of a vector by the NeuralSort relaxation
/// (Grover et al. 2019, eq. 5): the relaxed permutation
/// `P̂[i,:] = softmax(((n+1−2i)·s − A_s·1)/τ)` with `A_s[j,k] = |s_j − s_k|`
/// sorts `s` descending as `P̂ s`; the ascending sort is `−P̂(−s)·(−s)`.
/// As `τ → 0` the result tends to the exact sort. `O(n²)` memory.
///
/// # Errors
/// [`CoreError::OutOfRange`] for `τ ≤ 0`; an empty-tensor error.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_conformal::training::soft_sort;
/// let d = Device::flex();
/// let s = soft_sort(Tensor::<1>::from_floats([0.3, 0.1, 0.2], &d), 1e-3).unwrap();
/// let v = s.into_data().try_to_vec::<f32>().unwrap();
/// assert!((v[0] - 0.1).abs() < 1e-3 && (v[2] - 0.3).abs() < 1e-3);
/// # }
/// ```
pub fn soft_sort(values: Tensor<1>, tau: f64) -> Result<Tensor<1>> {
    check_positive("sort temperature", tau)?;
    let [n] = check_non_empty("values", &values)?;
    let neg = values.neg();
    Ok(neural_sort_descending(neg, n, tau).neg())
}

fn neural_sort_descending(s: Tensor<1>, n: usize, tau: f64) -> Tensor<1> {
    let device = s.device();
    let col = s.clone().reshape([n, 1]);
    let row = s.reshape([1, n]);
    let diffs = (col.clone().expand([n, n]) - row.clone().expand([n, n])).abs();
    let b = diffs.sum_dim(0); // [1, n]: A_s·1 (A_s is symmetric)
    let coef: Vec<f32> = (1..=n).map(|i| (n as f32 + 1.0) - 2.0 * i as f32).collect();
    let coef = Tensor::<2>::from_data(TensorData::new(coef, [n, 1]), &device);
    let logits = coef.expand([n, n]) * row.expand([n, n]) - b.expand([n, n]);
    let p = activation::softmax(logits.div_scalar(tau as f32), 1);
    p.matmul(col).reshape([n])
}

/// Differentiable conformal quantile: the soft-sorted scores interpolated at
/// the 1-based position `(n+1)(1−α)` (clamped to `[1, n]`), mirroring the
/// exact rank `⌈(n+1)(1−α)⌉` of [`conformal_quantile`](crate::conformal_quantile).
///
/// # Shapes
/// `scores`: `[n]` → `[1]`.
///
/// # Errors
/// [`CoreError::OutOfRange`] for `α ∉ (0, 1)` or `τ ≤ 0`; an empty-tensor error.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_conformal::training::soft_quantile;
/// let d = Device::flex();
/// let s = Tensor::<1>::from_floats([0.1, 0.5, 0.3, 0.2], &d);
/// // position 5·0.5 = 2.5: halfway between the 2nd (0.2) and 3rd (0.3) smallest
/// let q = soft_quantile(s, 0.5, 1e-4).unwrap().into_scalar::<f32>();
/// assert!((q - 0.25).abs() < 1e-3);
/// # }
/// ```
pub fn soft_quantile(scores: Tensor<1>, alpha: f64, tau: f64) -> Result<Tensor<1>> {
    check_open_unit("alpha", alpha)?;
    let [n] = check_non_empty("scores", &scores)?;
    let sorted = soft_sort(scores, tau)?;
    let position = ((n as f64 + 1.0) * (1.0 - alpha)).clamp(1.0, n as f64) - 1.0;
    let lo = position.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    let w = (position - lo as f64) as f32;
    let a = sorted.clone().narrow(0, lo, 1);
    let b = sorted.narrow(0, hi, 1);
    Ok(a.mul_scalar(1.0 - w) + b.mul_scalar(w))
}

/// Nonconformity scores of every label as a differentiable function of the
/// probabilities (same formulas as [`ScoreFunction`]).
///
/// Ranks come from the detached probabilities (ties, a null set, are not
/// broken by index here); gradients flow through the probability values.
/// `uniforms` (`[batch, 1]`, the per-example `U`) is used by randomised
/// scores; `None` means `U = 1`.
///
/// # Shapes
/// `probs`: `[batch, classes]` → `[batch, classes]`.
///
/// # Errors
/// Invalid score parameters; an empty tensor; a `uniforms` shape other than `[batch, 1]`.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_conformal::{ScoreFunction, training::differentiable_scores};
/// let d = Device::flex();
/// let p = Tensor::<2>::from_floats([[0.5, 0.3, 0.2]], &d);
/// let s = differentiable_scores(p, ScoreFunction::aps(), None).unwrap();
/// let v = s.into_data().try_to_vec::<f32>().unwrap();
/// assert!((v[1] - 0.8).abs() < 1e-6 && (v[2] - 1.0).abs() < 1e-6);
/// # }
/// ```
pub fn differentiable_scores(
    probs: Tensor<2>,
    score: ScoreFunction,
    uniforms: Option<Tensor<2>>,
) -> Result<Tensor<2>> {
    score.validate()?;
    let [b, c] = check_non_empty("probabilities", &probs)?;
    if let Some(u) = &uniforms {
        let dims = u.dims();
        if dims != [b, 1] {
            return Err(CoreError::shape("uniforms", format!("[{b}, 1]"), &dims).into());
        }
    }
    if let ScoreFunction::Lac = score {
        return Ok(probs.neg().add_scalar(1.0));
    }
    let u = match (score.is_randomized(), uniforms) {
        (true, Some(u)) => u.expand([b, c]),
        _ => Tensor::<2>::ones([b, c], &probs.device()),
    };
    let fixed = probs.clone().detach();
    let p_y = fixed.clone().reshape([b, c, 1]).expand([b, c, c]);
    let p_j = fixed.reshape([b, 1, c]).expand([b, c, c]);
    let above_mask = p_j.greater(p_y).float(); // [b, y, j]: j ranked above y
    let rank = above_mask
        .clone()
        .sum_dim(2)
        .reshape([b, c])
        .add_scalar(1.0);
    let mass_above = (above_mask * probs.clone().reshape([b, 1, c]).expand([b, c, c]))
        .sum_dim(2)
        .reshape([b, c]);
    Ok(match score {
        ScoreFunction::Lac => probs.neg().add_scalar(1.0),
        ScoreFunction::Aps { .. } => mass_above + u * probs,
        ScoreFunction::Raps { lambda, k_reg, .. } => {
            let penalty = rank.sub_scalar(k_reg as f32).clamp_min(0.0);
            mass_above + u * probs + penalty.mul_scalar(lambda as f32)
        }
        ScoreFunction::Saps { lambda, .. } => {
            let p_max = probs.max_dim(1).expand([b, c]);
            let top = rank.clone().equal_elem(1.0);
            let rest = p_max.clone() + (rank.sub_scalar(2.0) + u.clone()).mul_scalar(lambda as f32);
            rest.mask_where(top, u * p_max)
        }
    })
}

/// Soft set membership `C_k = σ((q̂ − s_k)/T)` (Stutz et al. 2022, eq. 4).
///
/// # Shapes
/// `scores`: `[batch, classes]`, `qhat`: `[1]` → `[batch, classes]`.
///
/// # Errors
/// [`CoreError::OutOfRange`] for `T ≤ 0`; shape errors.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_conformal::training::soft_sets;
/// let d = Device::flex();
/// let c = soft_sets(Tensor::<2>::from_floats([[0.2, 0.5]], &d), Tensor::<1>::from_floats([0.5], &d), 0.1).unwrap();
/// let v = c.into_data().try_to_vec::<f32>().unwrap();
/// assert!(v[0] > 0.95 && (v[1] - 0.5).abs() < 1e-6);
/// # }
/// ```
pub fn soft_sets(scores: Tensor<2>, qhat: Tensor<1>, temperature: f64) -> Result<Tensor<2>> {
    check_positive("set temperature", temperature)?;
    let dims = check_non_empty("scores", &scores)?;
    if qhat.dims() != [1] {
        return Err(CoreError::shape("qhat", "[1]", &qhat.dims()).into());
    }
    let q = qhat.reshape([1, 1]).expand(dims);
    Ok(activation::sigmoid(
        (q - scores).div_scalar(temperature as f32),
    ))
}

fn check_sets_labels(sets: &Tensor<2>, labels: &Tensor<1, Int>) -> Result<[usize; 2]> {
    let dims = check_non_empty("sets", sets)?;
    check_len("labels", labels.dims()[0], dims[0])?;
    Ok(dims)
}

fn label_column(t: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let b = labels.dims()[0];
    t.gather(1, labels.reshape([b, 1])).reshape([b])
}

/// Mean cross-entropy `−mean log softmax(logits)_y`.
///
/// # Errors
/// Shape errors.
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Result<Tensor<1>> {
    check_sets_labels(&logits, &labels)?;
    let log_p = activation::log_softmax(logits, 1);
    Ok(scalar(label_column(log_p, labels).mean().neg()))
}

/// The ConfTr objective (Stutz et al. 2022, eqs. 5–6, with the identity
/// loss matrix): `log(w_size·Ω + w_cov·L_cov + 1e-8)`, where
/// `Ω = mean max(Σ_k C_k − κ, 0)` is the size loss and
/// `L_cov = mean(1 − C_y)` the classification (coverage) loss.
///
/// # Shapes
/// `sets`: `[batch, classes]`, `labels`: `[batch]` → `[1]`.
///
/// # Errors
/// Shape errors; negative weights or target size.
pub fn conftr_loss(
    sets: Tensor<2>,
    labels: Tensor<1, Int>,
    target_size: f64,
    size_weight: f64,
    coverage_weight: f64,
) -> Result<Tensor<1>> {
    check_sets_labels(&sets, &labels)?;
    for (name, v) in [
        ("target_size", target_size),
        ("size_weight", size_weight),
        ("coverage_weight", coverage_weight),
    ] {
        check_interval(name, v, Bound::Included(0.0), Bound::Unbounded)?;
    }
    let size = sets
        .clone()
        .sum_dim(1)
        .sub_scalar(target_size as f32)
        .clamp_min(0.0);
    let size_loss = size.mean();
    let cov_loss = label_column(sets, labels).neg().add_scalar(1.0).mean();
    Ok(scalar(
        (size_loss.mul_scalar(size_weight as f32) + cov_loss.mul_scalar(coverage_weight as f32))
            .add_scalar(1e-8)
            .log(),
    ))
}

fn log_clamped<const D: usize>(t: Tensor<D>, floor: f64) -> Tensor<D> {
    t.clamp_min(floor as f32).log()
}

/// Differentiable DPI bound (see [`bounds::dpi_bound`](crate::bounds::dpi_bound)):
/// `CE + h_b(α) + (1−α) log Q̂(E=1) + α_n log Q̂(E=0)` from log-probabilities and
/// (soft) sets.
///
/// # Shapes
/// `log_probs`, `sets`: `[batch, classes]`; `labels`: `[batch]` → `[1]`.
///
/// # Errors
/// `α ∉ (0, 0.5]`, `n_calibration = 0`, shape errors.
pub fn dpi_loss(
    log_probs: Tensor<2>,
    sets: Tensor<2>,
    labels: Tensor<1, Int>,
    alpha: f64,
    n_calibration: usize,
) -> Result<Tensor<1>> {
    let t = DpiTerms::new(log_probs, sets, labels, alpha, n_calibration)?;
    let q1 = t
        .in_set
        .clone()
        .mean()
        .clamp(MIN_EVENT_PROBABILITY as f32, 1.0);
    let q0 = q1.clone().neg().add_scalar(1.0);
    Ok(t.bound(q1, q0, alpha, n_calibration))
}

/// What both DPI losses share: validated inputs, the cross-entropy
/// `E[−log Q(Y|X)]` and the per-example in-set mass `Σ_y c(x,y) Q(y|x)`.
struct DpiTerms {
    ce: Tensor<1>,
    in_set: Tensor<1>,
    dims: [usize; 2],
}

impl DpiTerms {
    fn new(
        log_probs: Tensor<2>,
        sets: Tensor<2>,
        labels: Tensor<1, Int>,
        alpha: f64,
        n_calibration: usize,
    ) -> Result<Self> {
        check_bound_alpha(alpha)?;
        check_at_least("n_calibration", n_calibration, 1)?;
        let dims = check_sets_labels(&sets, &labels)?;
        let ce = label_column(log_probs.clone(), labels).mean().neg();
        let in_set = (sets * log_probs.exp()).sum_dim(1).reshape([dims[0]]);
        Ok(Self { ce, in_set, dims })
    }

    /// `CE + h_b(α) + (1−α) log Q̂(E=1) + α_n log Q̂(E=0)` for the given
    /// estimates of `Q̂(E=1)` and `Q̂(E=0)`.
    fn bound(self, q1: Tensor<1>, q0: Tensor<1>, alpha: f64, n_calibration: usize) -> Tensor<1> {
        let bound = self.ce
            + log_clamped(q1, MIN_EVENT_PROBABILITY).mul_scalar((1.0 - alpha) as f32)
            + log_clamped(q0, MIN_EVENT_PROBABILITY)
                .mul_scalar(alpha_n(alpha, n_calibration) as f32);
        scalar(bound.add_scalar(binary_entropy(alpha) as f32))
    }
}

/// Differentiable DPI bound with the finite-sample correction used for
/// training by Correia et al.: `Q̂(E=1)` and `Q̂(E=0)` are batch means, so
/// each is replaced by the empirical-Bernstein upper confidence value
/// (Maurer & Pontil 2009, Thm. 4) `mean + √(2 V ln(2/α)/m) + 7 ln(2/α)/(3(m−1))`,
/// `V` the sample variance of the per-example `Σ_y c(x,y) Q(y|x)` over the
/// `m` rows; each side holds with probability `≥ 1 − α`. Since the
/// logarithms increase, this keeps the bound an upper bound with high
/// probability, and it keeps both logarithms bounded away from `−∞`, so the
/// objective cannot be driven down by pushing `Q̂(E=e)` to 0. The
/// correction is treated as a constant in the gradient (it only widens).
/// Coefficients are those of [`dpi_loss`].
///
/// # Shapes
/// `log_probs`, `sets`: `[batch, classes]`; `labels`: `[batch]` → `[1]`.
///
/// # Errors
/// As [`dpi_loss`], and a batch of fewer than 2 rows.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Int, Tensor};
/// use lastmile_conformal::training::{dpi_loss, dpi_loss_bernstein};
/// let d = Device::flex();
/// let lp = Tensor::<2>::from_floats([[0.9f32, 0.1], [0.2, 0.8], [0.6, 0.4]], &d).log();
/// let c = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], &d);
/// let y = Tensor::<1, Int>::from_ints([0, 1, 0], &d);
/// let plain = dpi_loss(lp.clone(), c.clone(), y.clone(), 0.1, 100).unwrap().into_scalar::<f32>();
/// let corrected = dpi_loss_bernstein(lp, c, y, 0.1, 100).unwrap().into_scalar::<f32>();
/// assert!(corrected > plain); // larger Q̂(E=e) inside the logs
/// # }
/// ```
pub fn dpi_loss_bernstein(
    log_probs: Tensor<2>,
    sets: Tensor<2>,
    labels: Tensor<1, Int>,
    alpha: f64,
    n_calibration: usize,
) -> Result<Tensor<1>> {
    let t = DpiTerms::new(log_probs, sets, labels, alpha, n_calibration)?;
    let [m, k] = t.dims;
    if m < 2 {
        return Err(CoreError::shape("sets", "[batch >= 2, classes]", &[m, k]).into());
    }
    let l = (2.0 / alpha).ln();
    let delta = t
        .in_set
        .clone()
        .detach()
        .var(0)
        .mul_scalar((2.0 * l / m as f64) as f32)
        .sqrt()
        .add_scalar((7.0 * l / (3.0 * (m as f64 - 1.0))) as f32);
    let q1 = t.in_set.clone().mean();
    let q0 = q1.clone().neg().add_scalar(1.0);
    Ok(t.bound(q1 + delta.clone(), q0 + delta, alpha, n_calibration))
}

/// `Σ w f / Σ w` (0 when every weight is 0).
fn weighted_mean(w: Tensor<1>, f: Tensor<1>) -> Tensor<1> {
    let den = w.clone().sum();
    (w * f).sum() / den.clamp_min(1e-12)
}

/// Differentiable model-based Fano bound (see
/// [`bounds::model_fano_bound`](crate::bounds::model_fano_bound)); memberships
/// are clamped to `[1e-7, 1 − 1e-7]` inside logarithms.
///
/// # Shapes
/// `log_probs`, `sets`: `[batch, classes]`; `labels`: `[batch]` → `[1]`.
///
/// # Errors
/// As [`dpi_loss`].
pub fn model_fano_loss(
    log_probs: Tensor<2>,
    sets: Tensor<2>,
    labels: Tensor<1, Int>,
    alpha: f64,
    n_calibration: usize,
) -> Result<Tensor<1>> {
    check_bound_alpha(alpha)?;
    check_at_least("n_calibration", n_calibration, 1)?;
    check_sets_labels(&sets, &labels)?;
    let c = sets.clamp(LOG_FLOOR as f32, (1.0 - LOG_FLOOR) as f32);
    let not_c = c.clone().neg().add_scalar(1.0);
    let in_scores = log_probs.clone() + c.clone().log();
    let out_scores = log_probs + not_c.clone().log();
    let nll_in = label_column(activation::log_softmax(in_scores, 1), labels.clone()).neg();
    let nll_out = label_column(activation::log_softmax(out_scores, 1), labels.clone()).neg();
    let w_in = label_column(c, labels.clone());
    let w_out = label_column(not_c, labels);
    let e_in = weighted_mean(w_in, nll_in);
    let e_out = weighted_mean(w_out, nll_out);
    let coef_in = 1.0 - alpha + 1.0 / (n_calibration as f64 + 1.0);
    Ok(scalar(
        (e_out.mul_scalar(alpha as f32) + e_in.mul_scalar(coef_in as f32))
            .add_scalar(binary_entropy(alpha) as f32),
    ))
}

/// Differentiable simple Fano bound (see
/// [`bounds::simple_fano_bound`](crate::bounds::simple_fano_bound)); sizes
/// are floored at `1e-7` inside logarithms.
///
/// # Shapes
/// `sets`: `[batch, classes]`; `labels`: `[batch]` → `[1]`.
///
/// # Errors
/// As [`dpi_loss`].
pub fn simple_fano_loss(
    sets: Tensor<2>,
    labels: Tensor<1, Int>,
    alpha: f64,
    n_calibration: usize,
) -> Result<Tensor<1>> {
    check_bound_alpha(alpha)?;
    check_at_least("n_calibration", n_calibration, 1)?;
    let [b, k] = check_sets_labels(&sets, &labels)?;
    let size = sets.clone().sum_dim(1).reshape([b]);
    let w_in = label_column(sets, labels);
    let w_out = w_in.clone().neg().add_scalar(1.0);
    let log_in = log_clamped(size.clone(), LOG_FLOOR);
    let log_out = log_clamped(size.neg().add_scalar(k as f32), LOG_FLOOR);
    let e_in = weighted_mean(w_in, log_in);
    let e_out = weighted_mean(w_out, log_out);
    let coef_in = 1.0 - alpha + 1.0 / (n_calibration as f64 + 1.0);
    Ok(scalar(
        (e_out.mul_scalar(alpha as f32) + e_in.mul_scalar(coef_in as f32))
            .add_scalar(binary_entropy(alpha) as f32),
    ))
}

/// The nonconformity score conformal training calibrates and thresholds.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum TrainingScore {
    /// A probability-based score (see [`differentiable_scores`]).
    Probability(ScoreFunction),
    /// Thresholding on log-probabilities, `s = −log Q(y|x)`. Correia et al.
    /// train every objective with this score (their reference
    /// configuration), whatever score is used at test time: on the log
    /// scale, labels with small probability still get set-membership
    /// gradients, where `1 − p` saturates near 1.
    LogProbability,
}

/// A conformal training objective.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Objective {
    /// Plain cross-entropy (the baseline).
    CrossEntropy,
    /// ConfTr (Stutz et al. 2022): see [`conftr_loss`].
    ConfTr {
        /// Target size `κ` below which sets are not penalised.
        target_size: f64,
        /// Weight of the size loss.
        size_weight: f64,
        /// Weight of the coverage loss.
        coverage_weight: f64,
    },
    /// The DPI bound: see [`dpi_loss`] ([`dpi_loss_bernstein`] when the
    /// concentration correction is on, the default).
    Dpi,
    /// The model-based Fano bound: see [`model_fano_loss`].
    ModelFano,
    /// The simple Fano bound: see [`simple_fano_loss`].
    SimpleFano,
}

impl Objective {
    /// ConfTr with `κ = 1`, size weight 1, coverage weight 0 (as in
    /// Stutz et al.'s main experiments, where cross-entropy is added).
    pub fn conftr() -> Self {
        Self::ConfTr {
            target_size: 1.0,
            size_weight: 1.0,
            coverage_weight: 0.0,
        }
    }

    /// A short name (`"ce"`, `"conftr"`, `"dpi"`, `"model_fano"`, `"simple_fano"`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::CrossEntropy => "ce",
            Self::ConfTr { .. } => "conftr",
            Self::Dpi => "dpi",
            Self::ModelFano => "model_fano",
            Self::SimpleFano => "simple_fano",
        }
    }
}

/// Conformal training settings: objective, score, α, temperatures, the
/// weight of the added cross-entropy and the calibration fraction of a batch.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Int, Tensor};
/// use lastmile_conformal::{ScoreFunction, training::{ConformalTraining, Objective}};
/// use rand::{SeedableRng, rngs::StdRng};
/// let d = Device::flex().autodiff();
/// let logits = Tensor::<2>::from_floats(
///     [[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 2.0], [1.0, 0.0, 0.0],
///      [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.5, 0.2, 0.0], [0.0, 0.3, 1.2]], &d).require_grad();
/// let labels = Tensor::<1, Int>::from_ints([0, 1, 2, 0, 1, 2, 0, 2], &d);
/// let cfg = ConformalTraining::new(Objective::SimpleFano, ScoreFunction::Lac, 0.1).unwrap();
/// let loss = cfg.loss(logits.clone(), labels, &mut StdRng::seed_from_u64(0)).unwrap();
/// let grads = loss.backward();
/// assert!(logits.grad(&grads).is_some());
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConformalTraining {
    objective: Objective,
    score: TrainingScore,
    alpha: f64,
    temperature: f64,
    sort_temperature: f64,
    ce_weight: f64,
    calibration_fraction: f64,
    dpi_concentration: bool,
}

impl ConformalTraining {
    /// Defaults: set temperature `T = 0.1`, sort temperature `0.1`,
    /// cross-entropy weight `1` (0 has no effect for [`Objective::CrossEntropy`],
    /// which always uses weight 1), calibration fraction `0.5`, DPI
    /// concentration correction on.
    ///
    /// # Errors
    /// `α ∉ (0, 1)` (`(0, 0.5]` for the bound objectives); invalid score parameters.
    pub fn new(objective: Objective, score: ScoreFunction, alpha: f64) -> Result<Self> {
        check_open_unit("alpha", alpha)?;
        if matches!(
            objective,
            Objective::Dpi | Objective::ModelFano | Objective::SimpleFano
        ) {
            check_bound_alpha(alpha)?;
        }
        score.validate()?;
        Ok(Self {
            objective,
            score: TrainingScore::Probability(score),
            alpha,
            temperature: 0.1,
            sort_temperature: 0.1,
            ce_weight: 1.0,
            calibration_fraction: 0.5,
            dpi_concentration: true,
        })
    }

    /// Sets the training score (default: the [`ScoreFunction`] given to
    /// [`new`](Self::new)).
    ///
    /// # Errors
    /// Invalid score parameters.
    pub fn with_training_score(mut self, score: TrainingScore) -> Result<Self> {
        if let TrainingScore::Probability(f) = score {
            f.validate()?;
        }
        self.score = score;
        Ok(self)
    }

    /// Whether [`Objective::Dpi`] uses the empirical-Bernstein corrected
    /// estimate [`dpi_loss_bernstein`] (default, as Correia et al. train)
    /// or the plain batch means of [`dpi_loss`].
    pub fn with_dpi_concentration(mut self, on: bool) -> Self {
        self.dpi_concentration = on;
        self
    }

    /// Sets the membership temperature `T > 0`.
    ///
    /// # Errors
    /// [`CoreError::OutOfRange`] for `T ≤ 0`.
    pub fn with_temperature(mut self, t: f64) -> Result<Self> {
        self.temperature = check_positive("set temperature", t)?;
        Ok(self)
    }

    /// Sets the soft-sort temperature `τ > 0`.
    ///
    /// # Errors
    /// [`CoreError::OutOfRange`] for `τ ≤ 0`.
    pub fn with_sort_temperature(mut self, tau: f64) -> Result<Self> {
        self.sort_temperature = check_positive("sort temperature", tau)?;
        Ok(self)
    }

    /// Sets the weight of the cross-entropy added to the objective (`≥ 0`).
    ///
    /// # Errors
    /// [`CoreError::OutOfRange`] for a negative or non-finite weight.
    pub fn with_ce_weight(mut self, w: f64) -> Result<Self> {
        self.ce_weight = check_interval("ce_weight", w, Bound::Included(0.0), Bound::Unbounded)?;
        Ok(self)
    }

    /// Sets the fraction of each batch used for calibration (in `(0, 1)`).
    ///
    /// # Errors
    /// [`CoreError::OutOfRange`] outside `(0, 1)`.
    pub fn with_calibration_fraction(mut self, f: f64) -> Result<Self> {
        self.calibration_fraction = check_open_unit("calibration_fraction", f)?;
        Ok(self)
    }

    /// The objective.
    pub fn objective(&self) -> Objective {
        self.objective
    }

    /// The training loss of one batch (a `[1]` tensor to call `backward` on).
    ///
    /// The first `⌊fraction·batch⌋` rows calibrate, the rest are predicted.
    /// Randomised scores draw one `U` per row from `rng`.
    ///
    /// # Errors
    /// Shape errors, labels out of range (one read-back of the labels), or a
    /// batch too small to give both halves at least two rows.
    pub fn loss<R: Rng + ?Sized>(
        &self,
        logits: Tensor<2>,
        labels: Tensor<1, Int>,
        rng: &mut R,
    ) -> Result<Tensor<1>> {
        let [b, k] = check_sets_labels(&logits, &labels)?;
        let host_labels = indices_to_vec(labels.clone())?;
        check_labels(&host_labels, b, k)?;
        let ce = cross_entropy(logits.clone(), labels.clone())?;
        if let Objective::CrossEntropy = self.objective {
            return Ok(ce);
        }
        let n_cal = (self.calibration_fraction * b as f64).floor() as usize;
        if n_cal < 2 || b - n_cal < 2 {
            return Err(CoreError::shape(
                "batch",
                "enough rows for >= 2 calibration and >= 2 prediction examples",
                &[b, k],
            )
            .into());
        }
        let device = logits.device();
        let log_probs = activation::log_softmax(logits, 1);
        let scores = match self.score {
            TrainingScore::LogProbability => log_probs.clone().neg(),
            TrainingScore::Probability(score) => {
                let uniforms = score.is_randomized().then(|| {
                    let u: Vec<f32> = (0..b).map(|_| rng.random::<f32>()).collect();
                    Tensor::<2>::from_data(TensorData::new(u, [b, 1]), &device)
                });
                differentiable_scores(log_probs.clone().exp(), score, uniforms)?
            }
        };
        let cal_scores = label_column(
            scores.clone().slice([0..n_cal, 0..k]),
            labels.clone().narrow(0, 0, n_cal),
        );
        let qhat = soft_quantile(cal_scores, self.alpha, self.sort_temperature)?;
        let test_scores = scores.slice([n_cal..b, 0..k]);
        let test_labels = labels.narrow(0, n_cal, b - n_cal);
        let test_log_probs = log_probs.slice([n_cal..b, 0..k]);
        let sets = soft_sets(test_scores, qhat, self.temperature)?;
        let objective = match self.objective {
            Objective::CrossEntropy => return Ok(ce),
            Objective::ConfTr {
                target_size,
                size_weight,
                coverage_weight,
            } => conftr_loss(sets, test_labels, target_size, size_weight, coverage_weight)?,
            Objective::Dpi if self.dpi_concentration => {
                dpi_loss_bernstein(test_log_probs, sets, test_labels, self.alpha, n_cal)?
            }
            Objective::Dpi => dpi_loss(test_log_probs, sets, test_labels, self.alpha, n_cal)?,
            Objective::ModelFano => {
                model_fano_loss(test_log_probs, sets, test_labels, self.alpha, n_cal)?
            }
            Objective::SimpleFano => simple_fano_loss(sets, test_labels, self.alpha, n_cal)?,
        };
        Ok(objective + ce.mul_scalar(self.ce_weight as f32))
    }
}
