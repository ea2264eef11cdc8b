//! Conformal risk control (Angelopoulos, Bates, Fisch, Lei & Schuster, ICLR 2024).

use std::ops::Bound;

use lastmile_core::{
    CoreError,
    validate::{check_finite_slice, check_matrix_len, check_open_unit, check_positive},
};

use crate::error::{ConformalError, Result};
use crate::input::{check_each_in, check_not_empty};

/// The result of [`conformal_risk_control`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RiskControl {
    /// The chosen parameter `λ̂`.
    pub lambda: f64,
    /// Its index on the grid.
    pub index: usize,
    /// The calibration risk `R̂_n(λ̂)`.
    pub empirical_risk: f64,
}

/// Conformal risk control for a loss bounded by `B` and non-increasing in λ:
/// `λ̂ = inf{λ : n/(n+1)·R̂_n(λ) + B/(n+1) ≤ α}` (Angelopoulos et al. 2024,
/// eq. 4), which guarantees `E[L_{n+1}(λ̂)] ≤ α` on exchangeable data.
///
/// `losses` is row-major `[n, m]`: the loss of calibration point `i` at grid
/// value `lambdas[j]`; `lambdas` must be strictly increasing.
///
/// # Errors
/// [`CoreError::OutOfRange`] for `α ∉ (0, 1)`, `B ≤ 0`, a grid not strictly
/// increasing or a loss outside `[0, B]`; [`CoreError::NonFinite`] for a
/// NaN/∞ λ; [`CoreError::Empty`] for no λ or no loss;
/// [`CoreError::ShapeMismatch`] unless there are `m` losses per calibration
/// point; [`ConformalError::NotMonotone`] when a loss row increases with λ;
/// [`ConformalError::Infeasible`] when no grid value reaches α.
///
/// # Examples
/// ```
/// use lastmile_conformal::conformal_risk_control;
/// // 4 points, grid λ ∈ {0, 0.5, 1}, losses in [0, 1]
/// let losses = [1.0, 0.0, 0.0,  1.0, 1.0, 0.0,  0.0, 0.0, 0.0,  1.0, 0.0, 0.0];
/// let rc = conformal_risk_control(&losses, &[0.0, 0.5, 1.0], 0.4, 1.0)?;
/// // λ=0.5: 4/5·(1/4) + 1/5 = 0.4 ≤ 0.4
/// assert_eq!(rc.lambda, 0.5);
/// # Ok::<(), lastmile_conformal::ConformalError>(())
/// ```
pub fn conformal_risk_control(
    losses: &[f64],
    lambdas: &[f64],
    alpha: f64,
    bound: f64,
) -> Result<RiskControl> {
    check_open_unit("alpha", alpha)?;
    check_positive("loss bound B", bound)?;
    let m = lambdas.len();
    check_not_empty("lambda grid", m)?;
    check_finite_slice("lambdas", lambdas)?;
    if let Some(j) = lambdas.windows(2).position(|w| w[1] <= w[0]) {
        return Err(CoreError::out_of_range(
            &format!("lambdas[{}]", j + 1),
            lambdas[j + 1],
            "a strictly increasing grid",
        )
        .into());
    }
    let n = check_matrix_len(
        "calibration losses ([n, m] row-major: a row per calibration point, a column per λ)",
        losses.len(),
        m,
    )?;
    check_each_in(
        "losses",
        losses,
        Bound::Included(0.0),
        Bound::Included(bound),
    )?;
    let mut risk = vec![0.0f64; m];
    for (row_index, row) in losses.chunks(m).enumerate() {
        if let Some(j) = row.windows(2).position(|w| w[1] > w[0]) {
            return Err(ConformalError::NotMonotone {
                row: row_index,
                index: j,
                next: j + 1,
                from: row[j],
                to: row[j + 1],
            });
        }
        for (r, l) in risk.iter_mut().zip(row) {
            *r += l;
        }
    }
    let nf = n as f64;
    let mut best = f64::INFINITY;
    for (j, r) in risk.iter().enumerate() {
        let empirical = r / nf;
        let lhs = nf / (nf + 1.0) * empirical + bound / (nf + 1.0);
        if lhs <= alpha {
            return Ok(RiskControl {
                lambda: lambdas[j],
                index: j,
                empirical_risk: empirical,
            });
        }
        best = best.min(lhs);
    }
    Err(ConformalError::Infeasible { alpha, best })
}
