//! Fixed-size samplers with exact first-order inclusion probabilities.
//!
//! Given `p ∈ [0, 1]^r` with `Σ p = n` (an integer), a design draws a set `S`
//! of exactly `n` indices with `P(i ∈ S) = p_i`. Entries with `p_i = 1` are
//! always taken and entries with `p_i = 0` never; values within `1e-12` of 0
//! or 1 are snapped to them (a marginal change below any measurable effect).
//! By (E1) in [`strategy`](crate::strategy) the expected reconstruction
//! error depends only on the marginals, so both designs below give the same
//! expected error; they differ in their joint inclusion probabilities.
//!
//! - [`Systematic`]: systematic sampling (Madow, 1949). O(r) to prepare and
//!   per draw.
//! - [`ConditionalPoisson`]: conditional Poisson sampling (Hájek, 1964), the
//!   maximum-entropy fixed-size design, as used by the paper. Working
//!   probabilities are fitted once (Chen, Dempster & Liu, 1994), samples are
//!   then drawn by the sequential (draw-by-draw) method. O(r·n) per fit
//!   iteration, O(r·n) memory, O(r) per draw.
//!
//! Randomness comes from a caller-supplied [`rand::Rng`], so seeded runs
//! are reproducible.
//!
//! ```
//! use lastmile_federated_sharding::sampler::{FixedSizeDesign, Sampler};
//! use rand::{SeedableRng, rngs::StdRng};
//! let p = [1.0, 0.5, 0.25, 0.25, 0.0];
//! let mut rng = StdRng::seed_from_u64(0);
//! for sampler in [Sampler::Systematic, Sampler::ConditionalPoisson] {
//!     let design = sampler.design(&p)?;
//!     let s = design.sample(&mut rng);
//!     assert_eq!(s.len(), 2);
//!     assert_eq!(s[0], 0); // p = 1: always taken
//!     assert!(!s.contains(&4)); // p = 0: never
//! }
//! # Ok::<(), lastmile_federated_sharding::ShardingError>(())
//! ```

use rand::{Rng, RngExt};

use crate::error::{Result, ShardingError};
use crate::strategy::check_probabilities;

/// Probabilities within this distance of 0 or 1 are treated as 0 or 1.
pub const SNAP: f64 = 1e-12;

/// A prepared fixed-size design: draws index sets of a fixed size with
/// given marginals.
pub trait FixedSizeDesign {
    /// The sample size `n = Σ p`.
    fn size(&self) -> usize;

    /// The marginals `p` the design was built for.
    fn probabilities(&self) -> &[f64];

    /// Draws one sample: `n` distinct indices, ascending.
    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<usize>;
}

/// Which fixed-size design to use.
///
/// ```
/// use lastmile_federated_sharding::sampler::Sampler;
/// assert_eq!(Sampler::from_tag(Sampler::ConditionalPoisson.tag()), Some(Sampler::ConditionalPoisson));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Sampler {
    /// [`Systematic`] sampling.
    Systematic,
    /// [`ConditionalPoisson`] sampling.
    ConditionalPoisson,
}

impl Sampler {
    /// Both samplers.
    pub const ALL: [Sampler; 2] = [Sampler::Systematic, Sampler::ConditionalPoisson];

    /// Prepares the design for marginals `p`.
    ///
    /// # Errors
    /// As [`Systematic::new`] and [`ConditionalPoisson::new`].
    pub fn design(self, p: &[f64]) -> Result<Design> {
        Ok(match self {
            Sampler::Systematic => Design::Systematic(Systematic::new(p)?),
            Sampler::ConditionalPoisson => Design::ConditionalPoisson(ConditionalPoisson::new(p)?),
        })
    }

    /// The byte that identifies the sampler in messages.
    pub fn tag(self) -> u8 {
        match self {
            Sampler::Systematic => 0,
            Sampler::ConditionalPoisson => 1,
        }
    }

    /// The sampler of a message byte, if known.
    pub fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.tag() == tag)
    }

    /// A short lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Sampler::Systematic => "systematic",
            Sampler::ConditionalPoisson => "conditional-poisson",
        }
    }
}

/// A prepared design of either kind (what [`Sampler::design`] returns).
#[derive(Clone, Debug)]
pub enum Design {
    /// A systematic design.
    Systematic(Systematic),
    /// A conditional Poisson design.
    ConditionalPoisson(ConditionalPoisson),
}

impl FixedSizeDesign for Design {
    fn size(&self) -> usize {
        match self {
            Design::Systematic(d) => d.size(),
            Design::ConditionalPoisson(d) => d.size(),
        }
    }

    fn probabilities(&self) -> &[f64] {
        match self {
            Design::Systematic(d) => d.probabilities(),
            Design::ConditionalPoisson(d) => d.probabilities(),
        }
    }

    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<usize> {
        match self {
            Design::Systematic(d) => d.sample(rng),
            Design::ConditionalPoisson(d) => d.sample(rng),
        }
    }
}

/// Marginals split into certain (`p = 1`), impossible (`p = 0`) and
/// fractional entries.
#[derive(Clone, Debug)]
struct Split {
    p: Vec<f64>,
    size: usize,
    certain: Vec<usize>,
    /// Indices of fractional entries, ascending.
    fractional: Vec<usize>,
    /// Their probabilities.
    q: Vec<f64>,
    /// How many fractional entries each sample takes.
    slots: usize,
}

impl Split {
    fn new(p: &[f64]) -> Result<Self> {
        let size = check_probabilities(p)?;
        let mut certain = Vec::new();
        let mut fractional = Vec::new();
        let mut q = Vec::new();
        for (i, &v) in p.iter().enumerate() {
            if v >= 1.0 - SNAP {
                certain.push(i);
            } else if v > SNAP {
                fractional.push(i);
                q.push(v);
            }
        }
        if certain.len() > size {
            return Err(ShardingError::NotFixedSize {
                sum: p.iter().sum(),
                tolerance: crate::strategy::SUM_TOLERANCE,
            });
        }
        let slots = size - certain.len();
        if slots > fractional.len() {
            return Err(ShardingError::NotFixedSize {
                sum: p.iter().sum(),
                tolerance: crate::strategy::SUM_TOLERANCE,
            });
        }
        Ok(Self {
            p: p.to_vec(),
            size,
            certain,
            fractional,
            q,
            slots,
        })
    }

    /// Certain indices merged with chosen fractional positions, ascending.
    fn merge(&self, chosen: impl Iterator<Item = usize>) -> Vec<usize> {
        let mut out: Vec<usize> = self.certain.clone();
        out.extend(chosen.map(|j| self.fractional[j]));
        out.sort_unstable();
        out
    }
}

/// Systematic sampling (Madow, 1949).
///
/// The fractional probabilities are laid end to end on `[0, m)` (`m` the
/// number of fractional slots), a single `u ~ U[0, 1)` is drawn, and the
/// entries whose intervals contain `u, u + 1, …, u + m − 1` are taken.
/// Since every interval is shorter than 1, each holds at most one point, and
/// it holds one with probability equal to its length: the marginals are
/// exact, the size is always `n`, and a draw is O(r). Units keep their given
/// order (σ-descending in this crate), so many pairs have joint inclusion
/// probability 0; that does not affect the reconstruction error (E1).
///
/// ```
/// use lastmile_federated_sharding::sampler::{FixedSizeDesign, Systematic};
/// use rand::{SeedableRng, rngs::StdRng};
/// let d = Systematic::new(&[0.5, 0.5, 0.5, 0.5])?;
/// let s = d.sample(&mut StdRng::seed_from_u64(1));
/// assert_eq!(s.len(), 2);
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Systematic {
    split: Split,
    /// Upper ends of the fractional intervals, scaled so the last is `m`.
    upper: Vec<f64>,
}

impl Systematic {
    /// Prepares the design for marginals `p`.
    ///
    /// # Errors
    /// [`CoreError::Empty`](lastmile_core::CoreError::Empty) for no entry,
    /// [`CoreError::OutOfRange`](lastmile_core::CoreError::OutOfRange) for
    /// an entry outside `[0, 1]` (NaN included),
    /// [`ShardingError::NotFixedSize`] when `Σ p` is not an integer.
    pub fn new(p: &[f64]) -> Result<Self> {
        let split = Split::new(p)?;
        let mut upper = Vec::with_capacity(split.q.len());
        let mut acc = 0.0;
        for &q in &split.q {
            acc += q;
            upper.push(acc);
        }
        // Rescale so the intervals tile [0, m) exactly despite rounding.
        if let Some(&last) = upper.last()
            && last > 0.0
        {
            let scale = split.slots as f64 / last;
            for u in &mut upper {
                *u *= scale;
            }
            if let Some(l) = upper.last_mut() {
                *l = split.slots as f64;
            }
        }
        Ok(Self { split, upper })
    }
}

impl FixedSizeDesign for Systematic {
    fn size(&self) -> usize {
        self.split.size
    }

    fn probabilities(&self) -> &[f64] {
        &self.split.p
    }

    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<usize> {
        let m = self.split.slots;
        let mut chosen: Vec<usize> = Vec::with_capacity(m);
        if m > 0 {
            let u: f64 = rng.random::<f64>();
            let last = self.upper.len() - 1;
            let mut j = 0usize;
            for k in 0..m {
                let x = u + k as f64;
                while j < last && self.upper[j] <= x {
                    j += 1;
                }
                // Intervals are shorter than 1, so a repeat can only come from
                // rounding; move to the next unit to keep the size exact.
                if chosen.last() == Some(&j) {
                    j = (j + 1).min(last);
                }
                chosen.push(j);
            }
        }
        self.split.merge(chosen.into_iter())
    }
}

/// Conditional Poisson sampling (Hájek, 1964): independent Bernoulli draws
/// with working probabilities `q̃`, conditioned on the sample size.
///
/// `P(S) ∝ Π_{i∈S} w_i` over sets of size `m` (the fractional slots), with
/// odds `w_i = q̃_i / (1 − q̃_i)`. Its inclusion probabilities are
/// `π_i(m) = w_i e_{m−1}(w_{−i}) / e_m(w)` (elementary symmetric
/// polynomials), computed as `e_{m−1}(w_{−i}) = Σ_a e_a(w_{<i}) e_{m−1−a}(w_{>i})`
/// from tables of `ln e_j` over prefixes and suffixes: O(r·m), every term
/// positive. (The shorter recursion over sizes,
/// `π_i(j) ∝ w_i (1 − π_i(j−1))`, subtracts nearly equal numbers and was
/// found to break down at r = 512, n = 128.) The working
/// probabilities are fitted so that `π(q̃) = p` by the fixed-point iteration
/// of Chen, Dempster & Liu (1994), taken in log-odds
/// (`logit q̃ ← logit q̃ + logit p − logit π(q̃)`) with step halving if the
/// error grows, to max `|π − p| ≤ 1e-10`.
///
/// Samples are drawn by the sequential method: unit `k` is taken with
/// probability `w_k e_{j−1}(w_{k+1..}) / e_j(w_{k..})` given `j` slots left,
/// from a table of `ln e_j` over suffixes (O(r·m) memory, built once).
///
/// ```
/// use lastmile_federated_sharding::sampler::{ConditionalPoisson, FixedSizeDesign};
/// use rand::{SeedableRng, rngs::StdRng};
/// let d = ConditionalPoisson::new(&[0.9, 0.6, 0.3, 0.2])?;
/// assert!(d.max_marginal_error() <= 1e-10);
/// assert_eq!(d.sample(&mut StdRng::seed_from_u64(2)).len(), 2);
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ConditionalPoisson {
    split: Split,
    /// Log-odds of the fitted working probabilities (fractional entries).
    theta: Vec<f64>,
    /// `ln e_j(w_k, …, w_{N−1})` at `[k · (m + 1) + j]`, `k ∈ 0..=N`.
    log_esp: Vec<f64>,
    max_error: f64,
    iterations: usize,
}

/// Target accuracy of the conditional Poisson fit.
const CP_TOLERANCE: f64 = 1e-10;
/// Iteration cap of the conditional Poisson fit.
const CP_MAX_ITERATIONS: usize = 1000;

impl ConditionalPoisson {
    /// Fits the design for marginals `p`.
    ///
    /// # Errors
    /// As [`Systematic::new`]; [`ShardingError::NotConverged`] if the fit
    /// does not reach `1e-10` in 1000 iterations (not observed in practice:
    /// the iteration converges geometrically).
    pub fn new(p: &[f64]) -> Result<Self> {
        let split = Split::new(p)?;
        let m = split.slots;
        let (theta, max_error, iterations) = fit_working_log_odds(&split.q, m)?;
        let log_esp = suffix_log_esp(&theta, m);
        Ok(Self {
            split,
            theta,
            log_esp,
            max_error,
            iterations,
        })
    }

    /// Max `|π_i − p_i|` of the fitted design over the fractional entries.
    pub fn max_marginal_error(&self) -> f64 {
        self.max_error
    }

    /// Fit iterations used.
    pub fn iterations(&self) -> usize {
        self.iterations
    }

    /// The fitted working probabilities `q̃` (1 for certain entries, 0 for
    /// impossible ones).
    pub fn working_probabilities(&self) -> Vec<f64> {
        let mut out: Vec<f64> = self
            .split
            .p
            .iter()
            .map(|&v| if v >= 1.0 - SNAP { 1.0 } else { 0.0 })
            .collect();
        for (&i, &t) in self.split.fractional.iter().zip(&self.theta) {
            out[i] = 1.0 / (1.0 + (-t).exp());
        }
        out
    }
}

impl FixedSizeDesign for ConditionalPoisson {
    fn size(&self) -> usize {
        self.split.size
    }

    fn probabilities(&self) -> &[f64] {
        &self.split.p
    }

    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<usize> {
        let n_units = self.theta.len();
        let m = self.split.slots;
        let row = m + 1;
        let mut left = m;
        let mut chosen = Vec::with_capacity(m);
        for k in 0..n_units {
            if left == 0 {
                break;
            }
            let take = if n_units - k == left {
                // Every remaining unit is needed.
                true
            } else {
                let num = self.theta[k] + self.log_esp[(k + 1) * row + left - 1];
                let den = self.log_esp[k * row + left];
                rng.random::<f64>() < (num - den).exp()
            };
            if take {
                chosen.push(k);
                left -= 1;
            }
        }
        self.split.merge(chosen.into_iter())
    }
}

/// `ln(e^a + e^b)` with `−∞` as the additive identity.
fn log_add(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    hi + (lo - hi).exp().ln_1p()
}

/// Table of `ln e_j(w_k..w_{N−1})`, `k ∈ 0..=N`, `j ∈ 0..=m`.
fn suffix_log_esp(theta: &[f64], m: usize) -> Vec<f64> {
    let n = theta.len();
    let row = m + 1;
    let mut t = vec![f64::NEG_INFINITY; (n + 1) * row];
    t[n * row] = 0.0;
    for k in (0..n).rev() {
        t[k * row] = 0.0;
        for j in 1..=m {
            let without = t[(k + 1) * row + j];
            let with = theta[k] + t[(k + 1) * row + j - 1];
            t[k * row + j] = log_add(without, with);
        }
    }
    t
}

/// Table of `ln e_j(w_0..w_{k−1})` over prefixes, `k ∈ 0..=N`, `j ∈ 0..=m`.
fn prefix_log_esp(theta: &[f64], m: usize) -> Vec<f64> {
    let n = theta.len();
    let row = m + 1;
    let mut t = vec![f64::NEG_INFINITY; (n + 1) * row];
    t[0] = 0.0;
    for k in 0..n {
        t[(k + 1) * row] = 0.0;
        for j in 1..=m {
            let without = t[k * row + j];
            let with = theta[k] + t[k * row + j - 1];
            t[(k + 1) * row + j] = log_add(without, with);
        }
    }
    t
}

/// Inclusion probabilities of the conditional Poisson design of size `m`
/// with log-odds `theta`: `π_i = w_i e_{m−1}(w_{−i}) / e_m(w)`, with
/// `e_{m−1}(w_{−i}) = Σ_a e_a(w_{<i}) e_{m−1−a}(w_{>i})` from prefix and
/// suffix tables in log space (O(N·m), every term positive, so no
/// cancellation).
fn cp_inclusion(theta: &[f64], m: usize) -> Vec<f64> {
    let n = theta.len();
    let row = m + 1;
    let prefix = prefix_log_esp(theta, m);
    let suffix = suffix_log_esp(theta, m);
    let log_total = suffix[m];
    let mut terms = Vec::with_capacity(m);
    (0..n)
        .map(|i| {
            terms.clear();
            for a in 0..m {
                let x = prefix[i * row + a] + suffix[(i + 1) * row + (m - 1 - a)];
                if x > f64::NEG_INFINITY {
                    terms.push(x);
                }
            }
            let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if top == f64::NEG_INFINITY {
                return 0.0;
            }
            let sum: f64 = terms.iter().map(|x| (x - top).exp()).sum();
            (theta[i] + top + sum.ln() - log_total).exp().min(1.0)
        })
        .collect()
}

fn logit(x: f64) -> f64 {
    let x = x.clamp(f64::MIN_POSITIVE, 1.0 - f64::EPSILON);
    (x / (1.0 - x)).ln()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Chen–Dempster–Liu fixed point in log-odds; returns (θ, error, iterations).
fn fit_working_log_odds(q: &[f64], m: usize) -> Result<(Vec<f64>, f64, usize)> {
    let target: Vec<f64> = q.iter().map(|&v| logit(v)).collect();
    let mut theta = target.clone();
    if m == 0 || q.is_empty() {
        return Ok((theta, 0.0, 0));
    }
    let mut pi = cp_inclusion(&theta, m);
    let mut err = max_abs_diff(&pi, q);
    let mut iterations = 0;
    while err > CP_TOLERANCE {
        if iterations == CP_MAX_ITERATIONS {
            return Err(ShardingError::NotConverged {
                iterations,
                max_error: err,
                tolerance: CP_TOLERANCE,
            });
        }
        iterations += 1;
        let step: Vec<f64> = target
            .iter()
            .zip(&pi)
            .map(|(&t, &p)| t - logit(p))
            .collect();
        let mut scale = 1.0;
        loop {
            let candidate: Vec<f64> = theta
                .iter()
                .zip(&step)
                .map(|(&t, &s)| t + scale * s)
                .collect();
            let cand_pi = cp_inclusion(&candidate, m);
            let cand_err = max_abs_diff(&cand_pi, q);
            if cand_err < err || scale < 1e-6 {
                theta = candidate;
                pi = cand_pi;
                err = cand_err;
                break;
            }
            scale *= 0.5;
        }
    }
    Ok((theta, err, iterations))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Brute force over all subsets of size m.
    fn brute_inclusion(w: &[f64], m: usize) -> Vec<f64> {
        let n = w.len();
        let mut pi = vec![0.0; n];
        let mut total = 0.0;
        for mask in 0u32..(1 << n) {
            if mask.count_ones() as usize != m {
                continue;
            }
            let weight: f64 = (0..n)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| w[i])
                .product();
            total += weight;
            for (i, p) in pi.iter_mut().enumerate() {
                if mask & (1 << i) != 0 {
                    *p += weight;
                }
            }
        }
        pi.iter().map(|p| p / total).collect()
    }

    #[test]
    fn inclusion_matches_brute_force() {
        let w = [3.0, 0.2, 1.5, 0.7, 0.05, 2.2];
        let theta: Vec<f64> = w.iter().map(|v: &f64| v.ln()).collect();
        for m in 1..w.len() {
            let a = cp_inclusion(&theta, m);
            let b = brute_inclusion(&w, m);
            assert!(max_abs_diff(&a, &b) < 1e-12, "m={m}: {a:?} vs {b:?}");
        }
    }

    #[test]
    fn log_table_matches_direct_sums() {
        let w = [3.0, 0.2, 1.5, 0.7];
        let theta: Vec<f64> = w.iter().map(|v: &f64| v.ln()).collect();
        let t = suffix_log_esp(&theta, 2);
        // e_2 of all four
        let e2: f64 = (0..4)
            .flat_map(|i| ((i + 1)..4).map(move |j| (i, j)))
            .map(|(i, j)| w[i] * w[j])
            .sum();
        assert!((t[2].exp() - e2).abs() < 1e-12);
    }
}
