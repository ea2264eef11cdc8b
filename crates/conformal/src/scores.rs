//! Nonconformity score functions for classification (lower = more conforming).
//!
//! Ranks are 1-based in decreasing probability; ties are broken by class
//! index (the smaller index ranks higher), so every score is a deterministic
//! function of the row and of the row's uniform `U`.

use std::cmp::Ordering;
use std::ops::Bound;

use lastmile_core::validate::{check_interval, check_positive};

use crate::error::Result;
use crate::input::Probability;

/// A classification nonconformity score `s(x, y)`; lower means more conforming.
///
/// With `p` the model's probabilities for `x`, `r(y)` the 1-based rank of `y`
/// and `U ~ U(0, 1)` one uniform per example (`U = 1` when not randomised):
///
/// | score | `s(x, y)` | reference |
/// |---|---|---|
/// | [`Lac`](Self::Lac) (THR) | `1 − p_y` | Sadinle et al. 2019 |
/// | [`Aps`](Self::Aps) | `Σ_{j: r(j) < r(y)} p_j + U·p_y` | Romano et al. 2020, eq. 5 |
/// | [`Raps`](Self::Raps) | APS `+ λ·max(0, r(y) − k_reg)` | Angelopoulos et al. 2021, alg. 2 |
/// | [`Saps`](Self::Saps) | `U·p_max` if `r(y) = 1`, else `p_max + (r(y) − 2 + U)·λ` | Huang et al. 2024, eq. 5 |
///
/// APS, RAPS and SAPS are non-decreasing in the rank for a fixed `U`, so their
/// prediction sets are a prefix of the ranking (which is what makes
/// prediction cheap: only the top of each row is ever sorted).
///
/// # Examples
/// ```
/// use lastmile_conformal::ScoreFunction;
/// let p = [0.5f32, 0.3, 0.2];
/// assert!((ScoreFunction::Lac.score(&p, 1, 1.0) - 0.7).abs() < 1e-6);
/// // APS (not randomised): mass of labels ranked at or above y
/// assert!((ScoreFunction::aps().score(&p, 1, 1.0) - 0.8).abs() < 1e-6);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum ScoreFunction {
    /// Least ambiguous set-valued classifier / threshold: `1 − p_y`.
    Lac,
    /// Adaptive prediction sets.
    Aps {
        /// Draw `U ~ U(0,1)` per example (exact coverage); `false` uses `U = 1`.
        randomized: bool,
    },
    /// Regularised adaptive prediction sets.
    Raps {
        /// Penalty per rank beyond `k_reg` (≥ 0).
        lambda: f64,
        /// Number of ranks without penalty.
        k_reg: usize,
        /// Draw `U ~ U(0,1)` per example; `false` uses `U = 1`.
        randomized: bool,
    },
    /// Sorted adaptive prediction sets (uses only the top probability).
    Saps {
        /// Weight per rank below the top (> 0).
        lambda: f64,
        /// Draw `U ~ U(0,1)` per example; `false` uses `U = 1`.
        randomized: bool,
    },
}

impl ScoreFunction {
    /// Non-randomised APS.
    pub fn aps() -> Self {
        Self::Aps { randomized: false }
    }

    /// Non-randomised RAPS with penalty `lambda` after rank `k_reg`.
    pub fn raps(lambda: f64, k_reg: usize) -> Self {
        Self::Raps {
            lambda,
            k_reg,
            randomized: false,
        }
    }

    /// Non-randomised SAPS with rank weight `lambda`.
    pub fn saps(lambda: f64) -> Self {
        Self::Saps {
            lambda,
            randomized: false,
        }
    }

    /// The same score with randomisation switched on or off (LAC is never randomised).
    ///
    /// ```
    /// use lastmile_conformal::ScoreFunction;
    /// assert!(ScoreFunction::aps().randomized(true).is_randomized());
    /// ```
    pub fn randomized(self, on: bool) -> Self {
        match self {
            Self::Lac => Self::Lac,
            Self::Aps { .. } => Self::Aps { randomized: on },
            Self::Raps { lambda, k_reg, .. } => Self::Raps {
                lambda,
                k_reg,
                randomized: on,
            },
            Self::Saps { lambda, .. } => Self::Saps {
                lambda,
                randomized: on,
            },
        }
    }

    /// Whether the score uses a per-example uniform `U`.
    pub fn is_randomized(&self) -> bool {
        match self {
            Self::Lac => false,
            Self::Aps { randomized }
            | Self::Raps { randomized, .. }
            | Self::Saps { randomized, .. } => *randomized,
        }
    }

    /// A short name: `"lac"`, `"aps"`, `"raps"`, `"saps"`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Lac => "lac",
            Self::Aps { .. } => "aps",
            Self::Raps { .. } => "raps",
            Self::Saps { .. } => "saps",
        }
    }

    /// Checks the hyper-parameters (`λ ≥ 0` finite for RAPS, `λ > 0` for SAPS).
    ///
    /// # Errors
    /// [`CoreError::OutOfRange`](lastmile_core::CoreError::OutOfRange) naming
    /// the parameter.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Self::Lac | Self::Aps { .. } => {}
            Self::Raps { lambda, .. } => {
                check_interval(
                    "raps lambda",
                    lambda,
                    Bound::Included(0.0),
                    Bound::Unbounded,
                )?;
            }
            Self::Saps { lambda, .. } => {
                check_positive("saps lambda", lambda)?;
            }
        }
        Ok(())
    }

    /// The score of label `y` for one probability row, with uniform `u`
    /// (ignored unless randomised; pass `1.0` otherwise).
    ///
    /// `O(classes)`, no sorting: APS needs only the mass of labels ranked
    /// above `y`. The caller guarantees `y < row.len()`.
    pub fn score<T: Probability>(&self, row: &[T], y: usize, u: f64) -> f64 {
        let u = if self.is_randomized() { u } else { 1.0 };
        let py: f64 = row[y].into();
        match *self {
            Self::Lac => 1.0 - py,
            Self::Aps { .. } => above(row, y).0 + u * py,
            Self::Raps { lambda, k_reg, .. } => {
                let (mass, count) = above(row, y);
                mass + u * py + lambda * (count + 1).saturating_sub(k_reg) as f64
            }
            Self::Saps { lambda, .. } => {
                let (count, p_max) = rank_and_max(row, y);
                saps_score(count + 1, p_max, u, lambda)
            }
        }
    }

    /// Scores of every label of one row, written to `out` (`O(C log C)`).
    ///
    /// `order` is scratch space for the ranking.
    pub fn score_row<T: Probability>(
        &self,
        row: &[T],
        u: f64,
        out: &mut [f64],
        order: &mut Vec<u32>,
    ) {
        let u = if self.is_randomized() { u } else { 1.0 };
        if let Self::Lac = self {
            for (o, &p) in out.iter_mut().zip(row) {
                *o = 1.0 - p.into();
            }
            return;
        }
        rank_all(row, order);
        let p_max: f64 = row[order[0] as usize].into();
        let mut cum = 0.0f64;
        for (r0, &j) in order.iter().enumerate() {
            let p: f64 = row[j as usize].into();
            out[j as usize] = self.ranked_score(r0 + 1, cum, p, p_max, u);
            cum += p;
        }
    }

    /// Score at 1-based rank `rank`, given the mass `cum` of the labels ranked
    /// above, the label's probability `p`, the top probability and `u`.
    #[inline]
    pub(crate) fn ranked_score(&self, rank: usize, cum: f64, p: f64, p_max: f64, u: f64) -> f64 {
        match *self {
            Self::Lac => 1.0 - p,
            Self::Aps { .. } => cum + u * p,
            Self::Raps { lambda, k_reg, .. } => {
                cum + u * p + lambda * rank.saturating_sub(k_reg) as f64
            }
            Self::Saps { lambda, .. } => saps_score(rank, p_max, u, lambda),
        }
    }
}

#[inline]
fn saps_score(rank: usize, p_max: f64, u: f64, lambda: f64) -> f64 {
    if rank == 1 {
        u * p_max
    } else {
        p_max + (rank as f64 - 2.0 + u) * lambda
    }
}

/// Mass and number of the labels ranked above `y` (ties: smaller index first).
#[inline]
fn above<T: Probability>(row: &[T], y: usize) -> (f64, usize) {
    let py: f64 = row[y].into();
    let mut mass = 0.0f64;
    let mut count = 0usize;
    for (j, &p) in row.iter().enumerate() {
        let p: f64 = p.into();
        // branch-free: the comparison outcome is unpredictable
        let is_above = p > py || (p == py && j < y);
        mass += if is_above { p } else { 0.0 };
        count += usize::from(is_above);
    }
    (mass, count)
}

/// Number of labels ranked above `y`, and the top probability.
#[inline]
fn rank_and_max<T: Probability>(row: &[T], y: usize) -> (usize, f64) {
    let py: f64 = row[y].into();
    let mut count = 0usize;
    let mut p_max = f64::NEG_INFINITY;
    for (j, &p) in row.iter().enumerate() {
        let p: f64 = p.into();
        count += usize::from(p > py || (p == py && j < y));
        p_max = p_max.max(p);
    }
    (count, p_max)
}

/// Ranking order: decreasing probability, then increasing index.
#[inline]
pub(crate) fn rank_cmp<T: Probability>(row: &[T], a: u32, b: u32) -> Ordering {
    let pa: f64 = row[a as usize].into();
    let pb: f64 = row[b as usize].into();
    pb.total_cmp(&pa).then(a.cmp(&b))
}

/// Fills `order` with the full ranking of `row`.
pub(crate) fn rank_all<T: Probability>(row: &[T], order: &mut Vec<u32>) {
    order.clear();
    order.extend(0..row.len() as u32);
    order.sort_unstable_by(|&a, &b| rank_cmp(row, a, b));
}

/// Appends to `out` the prediction set `{y : s(x, y) ≤ q̂}` of a score that
/// is non-decreasing in the rank (APS, RAPS, SAPS), sorting only the top of
/// the row: the ranking is extended in growing chunks until a label's score
/// exceeds `q̂`.
pub(crate) fn prefix_set<T: Probability>(
    score: &ScoreFunction,
    row: &[T],
    u: f64,
    qhat: f64,
    out: &mut Vec<u32>,
    order: &mut Vec<u32>,
) {
    let classes = row.len();
    let u = if score.is_randomized() { u } else { 1.0 };
    // Fast path: a small sorted buffer of the top labels from one scan.
    const TOP: usize = 16;
    let mut top: [(f64, u32); TOP] = [(f64::NEG_INFINITY, u32::MAX); TOP];
    let m = TOP.min(classes);
    let mut filled = 0usize;
    for (j, &p) in row.iter().enumerate() {
        let p: f64 = p.into();
        if filled < m {
            // insertion into the sorted prefix top[..filled]
            let mut i = filled;
            while i > 0 && top[i - 1].0 < p {
                top[i] = top[i - 1];
                i -= 1;
            }
            top[i] = (p, j as u32);
            filled += 1;
        } else if p > top[m - 1].0 {
            let mut i = m - 1;
            while i > 0 && top[i - 1].0 < p {
                top[i] = top[i - 1];
                i -= 1;
            }
            top[i] = (p, j as u32);
        }
    }
    let p_max = top[0].0;
    let mut cum = 0.0f64;
    for (r0, &(p, j)) in top[..m].iter().enumerate() {
        if score.ranked_score(r0 + 1, cum, p, p_max, u) > qhat {
            return;
        }
        out.push(j);
        cum += p;
    }
    if m == classes {
        return;
    }
    // The set is larger than the buffer: rank the rest in growing chunks.
    // Entries tied with the buffer's last probability may sit on either side
    // of it, so the chunked ranking restarts from scratch (exact tie order).
    let start_len = out.len() - m;
    out.truncate(start_len);
    order.clear();
    order.extend(0..classes as u32);
    let mut start = 0usize;
    let mut chunk = 4 * TOP;
    cum = 0.0;
    while start < classes {
        let end = (start + chunk).min(classes);
        let rest = &mut order[start..];
        if end < classes {
            rest.select_nth_unstable_by(end - start - 1, |&a, &b| rank_cmp(row, a, b));
        }
        order[start..end].sort_unstable_by(|&a, &b| rank_cmp(row, a, b));
        for (r0, &j) in order[start..end].iter().enumerate() {
            let p: f64 = row[j as usize].into();
            if score.ranked_score(start + r0 + 1, cum, p, p_max, u) > qhat {
                return;
            }
            out.push(j);
            cum += p;
        }
        start = end;
        chunk *= 4;
    }
}
