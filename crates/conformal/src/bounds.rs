//! Information-theoretic upper bounds on the intrinsic uncertainty `H(Y|X)`
//! from conformal prediction quantities (Correia, Massoli, Louizos &
//! Behboodi, "An Information Theoretic Perspective on Conformal Prediction",
//! NeurIPS 2024, §3).
//!
//! Notation: `Q` the model, `C(x)` a conformal set built from `n`
//! calibration points at level α, `E = 1{Y ∈ C(X)}`. Split conformal gives
//! `1 − α ≤ P(E = 1) ≤ 1 − α + 1/(n+1)`, so `P(E = 0) ∈ [α_n, α]` with
//! `α_n = max(α − 1/(n+1), 0)`. All bounds are in nats, computed in `f64`
//! over a sample of labelled test points. Sets may be hard (0/1) or soft
//! (membership in `[0, 1]`); conditional expectations given `E` weight each
//! example by its membership `c(x, y)` or `1 − c(x, y)`, which reduces to
//! averaging over covered / uncovered examples for hard sets.
//!
//! The bounds need `α ≤ 1/2` (they use `h_b(P(E=1)) ≤ h_b(α)` for
//! `P(E=1) ≥ 1 − α ≥ 1/2`).

use std::ops::Bound;

use lastmile_core::{
    CoreError,
    validate::{check_at_least, check_interval, check_len, check_probability_row},
};

use crate::error::Result;
use crate::input::{DEFAULT_SUM_TOLERANCE, Probability, Rows, check_each_in, check_labels};

/// Binary entropy `h_b(p) = −p log p − (1−p) log(1−p)` in nats (`h_b(0) = h_b(1) = 0`).
///
/// ```
/// let h = lastmile_conformal::bounds::binary_entropy(0.5);
/// assert!((h - std::f64::consts::LN_2).abs() < 1e-12);
/// ```
pub fn binary_entropy(p: f64) -> f64 {
    let xlogx = |x: f64| if x <= 0.0 { 0.0 } else { x * x.ln() };
    -xlogx(p) - xlogx(1.0 - p)
}

/// Smallest value `Q̂(E = e)` enters a logarithm with (guards `log 0` when a
/// finite sample puts all model mass inside or outside the sets).
pub const MIN_EVENT_PROBABILITY: f64 = 1e-12;

/// Checks α ∈ (0, 1/2], the range the bounds hold on; the error says why.
pub(crate) fn check_bound_alpha(alpha: f64) -> Result<()> {
    check_interval("alpha", alpha, Bound::Excluded(0.0), Bound::Included(0.5)).map_err(
        |e| match e {
            CoreError::OutOfRange {
                name,
                value,
                expected,
            } => CoreError::OutOfRange {
                name,
                value,
                expected: format!("{expected} (the bounds use h_b(P(E=1)) <= h_b(alpha))"),
            },
            other => other,
        },
    )?;
    Ok(())
}

/// `α_n = max(α − 1/(n+1), 0)`: the smallest `P(E = 0)` split conformal allows.
pub fn alpha_n(alpha: f64, n_calibration: usize) -> f64 {
    (alpha - 1.0 / (n_calibration as f64 + 1.0)).max(0.0)
}

/// Checks what every bound takes: α, `n`, `[m, classes]` sets with
/// memberships in `[0, 1]` and `m` labels `< classes`.
fn check_sets<'a, S: Probability>(
    sets: &'a [S],
    classes: usize,
    labels: &[usize],
    alpha: f64,
    n_calibration: usize,
) -> Result<Rows<'a, S>> {
    check_bound_alpha(alpha)?;
    check_at_least("n_calibration", n_calibration, 1)?;
    let sets = Rows::new("sets", sets, classes)?;
    check_labels(labels, sets.len(), classes)?;
    check_each_in(
        "sets",
        sets.data,
        Bound::Included(0.0),
        Bound::Included(1.0),
    )?;
    Ok(sets)
}

/// Checks the model's probability rows: as many as the sets, each a distribution.
fn check_probs<'a, T: Probability>(
    probs: &'a [T],
    classes: usize,
    rows: usize,
) -> Result<Rows<'a, T>> {
    let probs = Rows::new("probabilities", probs, classes)?;
    check_len("probability rows", probs.len(), rows)?;
    for i in 0..probs.len() {
        check_probability_row("probabilities", probs.row(i), i, DEFAULT_SUM_TOLERANCE)?;
    }
    Ok(probs)
}

/// Weighted mean `Σ w_i f_i / Σ w_i` skipping zero weights (0 when all are 0).
fn weighted_mean(pairs: impl Iterator<Item = (f64, f64)>) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (w, f) in pairs {
        if w > 0.0 {
            num += w * f;
            den += w;
        }
    }
    if den > 0.0 { num / den } else { 0.0 }
}

/// The DPI bound (Correia et al. 2024, §3, "DPI bound"):
/// `H(Y|X) ≤ E[−log Q(Y|X)] + h_b(α) + (1−α)·log Q̂(E=1) + α_n·log Q̂(E=0)`,
/// with `Q̂(E=1) = mean_x Σ_y c(x, y) Q(y|x)` and `α_n = max(α − 1/(n+1), 0)`.
///
/// It follows from `KL(P‖Q) ≥ d_KL(P(E) ‖ Q(E))` (data processing) with
/// `H(Y|X) = E[−log Q] − KL(P‖Q)`, bounding each term of `−d_KL` over
/// `P(E=0) ∈ [α_n, α]`. (The reference implementation uses `α + 1/(n+1)`
/// for the last coefficient; since `log Q̂(E=0) ≤ 0` the smallest admissible
/// `P(E=0)`, `α_n`, is the one that keeps the bound valid.)
///
/// # Arguments
/// `probs`, `sets`: row-major `[m, classes]`; `labels`: `m` test labels;
/// `n_calibration`: points used to build the sets.
///
/// # Errors
/// `α ∉ (0, 0.5]`, `n_calibration = 0`, invalid probability rows, set
/// values outside `[0, 1]`, shape, length and label errors.
///
/// # Examples
/// ```
/// use lastmile_conformal::bounds::dpi_bound;
/// let probs = [0.8f32, 0.2, 0.3, 0.7];
/// let sets = [1.0f32, 0.0, 0.0, 1.0];
/// let b = dpi_bound(&probs, &sets, 2, &[0, 1], 0.1, 100).unwrap();
/// assert!(b.is_finite());
/// ```
pub fn dpi_bound<T: Probability, S: Probability>(
    probs: &[T],
    sets: &[S],
    classes: usize,
    labels: &[usize],
    alpha: f64,
    n_calibration: usize,
) -> Result<f64> {
    let sets = check_sets(sets, classes, labels, alpha, n_calibration)?;
    let p = check_probs(probs, classes, sets.len())?;
    let m = labels.len() as f64;
    let mut ce = 0.0;
    let mut q1 = 0.0;
    for (i, &y) in labels.iter().enumerate() {
        let row = p.row(i);
        let py: f64 = row[y].into();
        ce -= py.ln();
        q1 += row
            .iter()
            .zip(sets.row(i))
            .map(|(&q, &s)| q.into() * s.into())
            .sum::<f64>();
    }
    ce /= m;
    let q1 = (q1 / m).clamp(MIN_EVENT_PROBABILITY, 1.0);
    let q0 = (1.0 - q1).max(MIN_EVENT_PROBABILITY);
    Ok(ce
        + binary_entropy(alpha)
        + (1.0 - alpha) * q1.ln()
        + alpha_n(alpha, n_calibration) * q0.ln())
}

/// The model-based Fano bound (Correia et al. 2024, §3, "model-based Fano bound"):
/// `H(Y|X) ≤ h_b(α) + α·E[−log Q(Y|X, Y∉C) | E=0] + (1−α+1/(n+1))·E[−log Q(Y|X, Y∈C) | E=1]`,
/// where `Q(·|x, Y∈C) ∝ Q(·|x)·c(x, ·)` (and `∝ Q·(1 − c)` outside).
///
/// # Errors
/// As [`dpi_bound`].
///
/// # Examples
/// ```
/// use lastmile_conformal::bounds::model_fano_bound;
/// let probs = [0.8f32, 0.2, 0.3, 0.7];
/// let sets = [1.0f32, 0.0, 1.0, 1.0];
/// let b = model_fano_bound(&probs, &sets, 2, &[0, 1], 0.1, 100).unwrap();
/// // first example: Q(0 | in C) = 1; second: Q(1 | in C) = 0.7
/// let expected = lastmile_conformal::bounds::binary_entropy(0.1)
///     + (0.9 + 1.0 / 101.0) * (-(0.7f64).ln() / 2.0);
/// assert!((b - expected).abs() < 1e-6);
/// ```
pub fn model_fano_bound<T: Probability, S: Probability>(
    probs: &[T],
    sets: &[S],
    classes: usize,
    labels: &[usize],
    alpha: f64,
    n_calibration: usize,
) -> Result<f64> {
    let sets = check_sets(sets, classes, labels, alpha, n_calibration)?;
    let p = check_probs(probs, classes, sets.len())?;
    let mut inside = Vec::with_capacity(labels.len());
    let mut outside = Vec::with_capacity(labels.len());
    for (i, &y) in labels.iter().enumerate() {
        let row = p.row(i);
        let set = sets.row(i);
        let (mut z_in, mut z_out) = (0.0f64, 0.0f64);
        for (&q, &s) in row.iter().zip(set) {
            let (q, s): (f64, f64) = (q.into(), s.into());
            z_in += q * s;
            z_out += q * (1.0 - s);
        }
        let py: f64 = row[y].into();
        let cy: f64 = set[y].into();
        let nll_in = -(py * cy / z_in).ln();
        let nll_out = -(py * (1.0 - cy) / z_out).ln();
        inside.push((cy, nll_in));
        outside.push((1.0 - cy, nll_out));
    }
    let e_in = weighted_mean(inside.into_iter());
    let e_out = weighted_mean(outside.into_iter());
    Ok(binary_entropy(alpha)
        + alpha * e_out
        + (1.0 - alpha + 1.0 / (n_calibration as f64 + 1.0)) * e_in)
}

/// The simple Fano bound (Correia et al. 2024, §3, "simple Fano bound"; the model-based
/// bound with `Q` uniform):
/// `H(Y|X) ≤ h_b(α) + α·E[log(|𝒴| − |C(X)|) | E=0] + (1−α+1/(n+1))·E[log|C(X)| | E=1]`.
///
/// # Errors
/// As [`dpi_bound`] (without the probability checks).
///
/// # Examples
/// ```
/// use lastmile_conformal::bounds::{binary_entropy, simple_fano_bound};
/// // two covered examples with sets of size 2 out of 4 classes
/// let sets = [1.0f32, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0];
/// let b = simple_fano_bound(&sets, 4, &[0, 2], 0.1, 9).unwrap();
/// let expected = binary_entropy(0.1) + (0.9 + 0.1) * 2f64.ln();
/// assert!((b - expected).abs() < 1e-12);
/// ```
pub fn simple_fano_bound<S: Probability>(
    sets: &[S],
    classes: usize,
    labels: &[usize],
    alpha: f64,
    n_calibration: usize,
) -> Result<f64> {
    let sets = check_sets(sets, classes, labels, alpha, n_calibration)?;
    let k = classes as f64;
    let mut inside = Vec::with_capacity(labels.len());
    let mut outside = Vec::with_capacity(labels.len());
    for (i, &y) in labels.iter().enumerate() {
        let set = sets.row(i);
        let size: f64 = set.iter().map(|&s| s.into()).sum();
        let cy: f64 = set[y].into();
        inside.push((cy, size.ln()));
        outside.push((1.0 - cy, (k - size).ln()));
    }
    let e_in = weighted_mean(inside.into_iter());
    let e_out = weighted_mean(outside.into_iter());
    Ok(binary_entropy(alpha)
        + alpha * e_out
        + (1.0 - alpha + 1.0 / (n_calibration as f64 + 1.0)) * e_in)
}
