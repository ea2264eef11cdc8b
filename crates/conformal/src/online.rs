//! Adaptive conformal inference (Gibbs & Candès, NeurIPS 2021) for online
//! data whose distribution may drift.

use std::collections::VecDeque;

use lastmile_core::{
    CoreError,
    validate::{check_at_least, check_open_unit, check_positive},
};

use crate::error::Result;

/// Adaptive conformal inference: after each step `t` the working level moves
/// as `α_{t+1} = α_t + γ(α − err_t)` (Gibbs & Candès 2021, eq. 2), where
/// `err_t = 1` when the new score exceeded the threshold `q̂_t` computed at
/// level `α_t` from past scores.
///
/// Whatever the data, the long-run miscoverage satisfies
/// `|1/T Σ err_t − α| ≤ (max(α_1, 1 − α_1) + γ) / (γT)` (their prop. 4.1).
/// `α_t ≤ 0` gives `q̂ = +∞` (always covered); `α_t ≥ 1` gives `q̂ = −∞`
/// (empty set).
///
/// # Examples
/// ```
/// use lastmile_conformal::AdaptiveConformal;
/// let mut aci = AdaptiveConformal::new(0.1, 0.01)?;
/// for t in 0..200 {
///     let score = ((t * 37) % 101) as f64 / 100.0; // any stream of scores
///     aci.update(score)?;
/// }
/// assert!((aci.miscoverage_rate() - 0.1).abs() <= (0.9 + 0.01) / (0.01 * 200.0));
/// # Ok::<(), lastmile_conformal::ConformalError>(())
/// ```
#[derive(Clone, Debug)]
pub struct AdaptiveConformal {
    alpha: f64,
    gamma: f64,
    alpha_t: f64,
    window: Option<usize>,
    sorted: Vec<f64>,
    history: VecDeque<f64>,
    steps: usize,
    errors: usize,
}

impl AdaptiveConformal {
    /// Target miscoverage `alpha` and step size `gamma`, starting at `α_1 = α`,
    /// using every past score.
    ///
    /// # Errors
    /// [`CoreError::OutOfRange`] unless `0 < α < 1` and `γ > 0`.
    pub fn new(alpha: f64, gamma: f64) -> Result<Self> {
        check_open_unit("alpha", alpha)?;
        check_positive("gamma", gamma)?;
        Ok(Self {
            alpha,
            gamma,
            alpha_t: alpha,
            window: None,
            sorted: Vec::new(),
            history: VecDeque::new(),
            steps: 0,
            errors: 0,
        })
    }

    /// Uses only the last `window` scores for the threshold.
    ///
    /// # Errors
    /// [`CoreError::OutOfRange`] for `window = 0`.
    pub fn with_window(mut self, window: usize) -> Result<Self> {
        self.window = Some(check_at_least("window", window, 1)?);
        Ok(self)
    }

    /// The current working level `α_t`.
    pub fn current_alpha(&self) -> f64 {
        self.alpha_t
    }

    /// The threshold `q̂_t`: the `⌈(n+1)(1−α_t)⌉`-th smallest past score
    /// (`+∞` with no history, for `α_t ≤ 0`, or when the rank exceeds `n`;
    /// `−∞` for `α_t ≥ 1`).
    pub fn threshold(&self) -> f64 {
        let n = self.sorted.len();
        if n == 0 || self.alpha_t <= 0.0 {
            return f64::INFINITY;
        }
        if self.alpha_t >= 1.0 {
            return f64::NEG_INFINITY;
        }
        match crate::quantile::conformal_rank(n, self.alpha_t) {
            Ok(Some(k)) => self.sorted[k - 1],
            _ => f64::INFINITY,
        }
    }

    /// Observes the score of the new example (computed with its true
    /// label/target), records whether it was covered by the current
    /// threshold, updates `α_t` and the score history. Returns `covered`.
    ///
    /// # Errors
    /// [`CoreError::NonFinite`] for a NaN score.
    pub fn update(&mut self, score: f64) -> Result<bool> {
        if score.is_nan() {
            return Err(CoreError::NonFinite {
                what: "online score".to_owned(),
                index: self.steps,
                value: score,
            }
            .into());
        }
        let covered = score <= self.threshold();
        let err = if covered { 0.0 } else { 1.0 };
        self.errors += usize::from(!covered);
        self.steps += 1;
        self.alpha_t += self.gamma * (self.alpha - err);
        let at = self.sorted.partition_point(|&x| x < score);
        self.sorted.insert(at, score);
        self.history.push_back(score);
        if let Some(w) = self.window
            && self.history.len() > w
            && let Some(old) = self.history.pop_front()
        {
            let at = self.sorted.partition_point(|&x| x < old);
            self.sorted.remove(at);
        }
        Ok(covered)
    }

    /// Number of steps observed.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Fraction of steps whose score exceeded the threshold (0 before any step).
    pub fn miscoverage_rate(&self) -> f64 {
        if self.steps == 0 {
            0.0
        } else {
            self.errors as f64 / self.steps as f64
        }
    }
}
