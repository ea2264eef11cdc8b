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
use crate::strategy::{check_probabilities, find_by_name};

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

    /// The sampler whose [`Sampler::name`] is `name` (`systematic`,
    /// `conditional-poisson`).
    ///
    /// # Errors
    /// [`ShardingError::Mismatch`] naming the known names for any other string.
    ///
    /// ```
    /// use lastmile_federated_sharding::Sampler;
    /// assert_eq!(Sampler::from_name("systematic")?, Sampler::Systematic);
    /// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
    /// ```
    pub fn from_name(name: &str) -> Result<Self> {
        find_by_name("sampler name", &Self::ALL, |s| s.name(), name)
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
/// probabilities are fitted so that `π(q̃) = p`, to max `|π − p| ≤ 1e-10`,
/// by the fixed-point iteration of Chen, Dempster & Liu (1994), taken in
/// log-odds (`logit q̃ ← logit q̃ + logit p − logit π(q̃)`) with step
/// halving if the error grows. That iteration is a diagonal approximation of
/// Newton's method and can stall (e.g. one slot, `p = [0.9989, 9.5e-4,
/// 1.2e-4]`); the fit then continues with damped Newton steps on the exact
/// Jacobian `∂π_i/∂θ_j = π_ij − π_i π_j` (Levenberg–Marquardt damping).
/// Designs of size 1 and `N − 1` (fractional units) start from their exact
/// solution.
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
/// Iteration cap of the fit's first phase (Chen–Dempster–Liu).
const CDL_MAX_ITERATIONS: usize = 200;
/// Iteration cap of the fit's second phase (damped Newton).
const NEWTON_MAX_ITERATIONS: usize = 50;

impl ConditionalPoisson {
    /// Fits the design for marginals `p`.
    ///
    /// # Errors
    /// As [`Systematic::new`]; [`ShardingError::NotConverged`] if the fit
    /// does not reach `1e-10` in 200 fixed-point plus 50 Newton iterations
    /// (not observed: on 300 seeded stress cases of every strategy, Newton
    /// alone needs at most 5).
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

/// Fits the working log-odds `θ` so that `π(θ) = q`; returns (θ, error,
/// iterations).
///
/// Start: `logit q`, or the exact solution when there is one — a size-1
/// design is multinomial (`π_i = w_i / Σ w`, so `θ = ln q`), and a size-`(N−1)`
/// design leaves out one unit with probability `∝ 1/w_i` (so `θ = −ln(1 − q)`).
///
/// Phase 1, the Chen–Dempster–Liu fixed point in log-odds with step
/// halving, converges in a few iterations in most cases. It is a diagonal
/// approximation of Newton's method and stalls when the design is far from
/// diagonal, e.g. a near-certain unit beside near-impossible ones
/// (`q = [0.9989, 9.5e-4, 1.2e-4]`, one slot). Phase 2 then runs
/// Levenberg–Marquardt-damped Newton steps on the exact Jacobian (see
/// [`newton_fit`]).
fn fit_working_log_odds(q: &[f64], m: usize) -> Result<(Vec<f64>, f64, usize)> {
    let target: Vec<f64> = q.iter().map(|&v| logit(v)).collect();
    if m == 0 || q.is_empty() {
        return Ok((target, 0.0, 0));
    }
    let n = q.len();
    let mut theta = if m == 1 {
        q.iter().map(|v| v.ln()).collect()
    } else if m + 1 == n {
        q.iter().map(|v| -(1.0 - v).ln()).collect()
    } else {
        target.clone()
    };
    let mut pi = cp_inclusion(&theta, m);
    let mut err = max_abs_diff(&pi, q);
    let mut iterations = 0;
    'cdl: while err > CP_TOLERANCE && iterations < CDL_MAX_ITERATIONS {
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
            if cand_err < err {
                theta = candidate;
                pi = cand_pi;
                err = cand_err;
                break;
            }
            scale *= 0.5;
            if scale < 1e-6 {
                // Stalled: no improving step along this direction.
                break 'cdl;
            }
        }
    }
    if err > CP_TOLERANCE {
        let used = newton_fit(q, m, &mut theta, &mut pi, &mut err)?;
        iterations += used;
        if err > CP_TOLERANCE {
            return Err(ShardingError::NotConverged {
                iterations,
                max_error: err,
                tolerance: CP_TOLERANCE,
            });
        }
    }
    Ok((theta, err, iterations))
}

/// Pairwise inclusion probabilities `π_ij` of the conditional Poisson design
/// with log-odds `theta`, `[N·N]` row-major (diagonal `π_i`).
///
/// Off the diagonal, the exchange identity: swapping `i` and `j` in a sample
/// scales its weight by `w_j / w_i`, so `w_j (π_i − π_ij) = w_i (π_j − π_ij)`
/// and `π_ij = (w_i π_j − w_j π_i) / (w_i − w_j)` (Chen, Dempster & Liu,
/// 1994). It cancels when `w_i ≈ w_j`: units whose log-odds lie within
/// `1e-6` of each other form a group, and one exact value per group,
/// `w_i w_j e_{m−2}(w_{−i,−j}) / e_m(w)` in log space, stands for all its
/// pairs (they differ by `O(1e-6)` relative, harmless in a Jacobian).
fn cp_pair_inclusion(theta: &[f64], m: usize, pi: &[f64]) -> Vec<f64> {
    let n = theta.len();
    let top = theta.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = theta.iter().map(|t| (t - top).exp()).collect();
    let log_total = suffix_log_esp(theta, m)[m];
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| theta[a].total_cmp(&theta[b]));
    let mut group = vec![0usize; n];
    let mut group_start = order.first().copied().unwrap_or(0);
    let mut g = 0;
    for (pos, &i) in order.iter().enumerate() {
        if pos > 0 && theta[i] - theta[group_start] > 1e-6 {
            g += 1;
            group_start = i;
        }
        group[i] = g;
    }
    let mut within: Vec<Option<f64>> = vec![None; g + 1];
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        out[i * n + i] = pi[i];
        for j in (i + 1)..n {
            let pij = if group[i] == group[j] {
                *within[group[i]].get_or_insert_with(|| {
                    if m < 2 {
                        0.0
                    } else {
                        let e = log_esp_without(theta, i, j, m - 2);
                        (theta[i] + theta[j] + e - log_total).exp()
                    }
                })
            } else {
                (w[i] * pi[j] - w[j] * pi[i]) / (w[i] - w[j])
            };
            let pij = pij.clamp(0.0, pi[i].min(pi[j]));
            out[i * n + j] = pij;
            out[j * n + i] = pij;
        }
    }
    out
}

/// `ln e_k` of every weight except units `a` and `b`.
fn log_esp_without(theta: &[f64], a: usize, b: usize, k: usize) -> f64 {
    let mut e = vec![f64::NEG_INFINITY; k + 1];
    e[0] = 0.0;
    for (i, &t) in theta.iter().enumerate() {
        if i == a || i == b {
            continue;
        }
        for j in (1..=k).rev() {
            e[j] = log_add(e[j], t + e[j - 1]);
        }
    }
    e[k]
}

/// Cholesky solve of the symmetric `[n, n]` system `a x = b`; `None` when
/// `a` is not numerically positive definite.
fn cholesky_solve(a: &[f64], b: &[f64]) -> Option<Vec<f64>> {
    let n = b.len();
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s = a[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
            if i == j {
                if !(s > 0.0 && s.is_finite()) {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    let mut y = vec![0.0; n];
    for i in 0..n {
        y[i] = (b[i] - (0..i).map(|k| l[i * n + k] * y[k]).sum::<f64>()) / l[i * n + i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        x[i] = (y[i] - ((i + 1)..n).map(|k| l[k * n + i] * x[k]).sum::<f64>()) / l[i * n + i];
    }
    Some(x)
}

/// Phase 2 of the fit: Newton's method on `π(θ) = q` with the exact
/// Jacobian, damped à la Levenberg–Marquardt. Updates `theta`, `pi`, `err`
/// in place and returns the iterations used.
///
/// The design is an exponential family on the `m`-subsets with natural
/// parameter `θ`, so `∂π_i/∂θ_j = π_ij − π_i π_j`: the covariance `H` of the
/// inclusion indicators, positive semi-definite with null space `span(1)`
/// (adding a constant to every `θ` leaves the design unchanged). In the
/// coordinates scaled by `d_i = √(q_i(1 − q_i))` the step solves
/// `(D⁻¹HD⁻¹ + uuᵀ + μI) y = D⁻¹(q − π)`, `Δθ = D⁻¹y`, with `u = D1/‖D1‖`
/// closing the null space. `μ` shrinks 10× after a step that lowers
/// `max|π − q|` and grows 10× otherwise; large `μ` gives a short step along
/// `(q − π)/(q(1 − q))`, the Chen–Dempster–Liu direction.
fn newton_fit(
    q: &[f64],
    m: usize,
    theta: &mut Vec<f64>,
    pi: &mut Vec<f64>,
    err: &mut f64,
) -> Result<usize> {
    let n = q.len();
    let d: Vec<f64> = q.iter().map(|&v| (v * (1.0 - v)).sqrt()).collect();
    let norm = d.iter().map(|x| x * x).sum::<f64>().sqrt();
    let u: Vec<f64> = d.iter().map(|x| x / norm).collect();
    let mut mu = 1e-3;
    let mut iterations = 0;
    while *err > CP_TOLERANCE && iterations < NEWTON_MAX_ITERATIONS {
        iterations += 1;
        let pairs = cp_pair_inclusion(theta, m, pi);
        let r: Vec<f64> = (0..n).map(|i| (q[i] - pi[i]) / d[i]).collect();
        loop {
            let mut a = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..n {
                    let h = pairs[i * n + j] - pi[i] * pi[j];
                    a[i * n + j] = h / (d[i] * d[j]) + u[i] * u[j];
                }
                a[i * n + i] += mu;
            }
            if let Some(y) = cholesky_solve(&a, &r) {
                let candidate: Vec<f64> = (0..n).map(|i| theta[i] + y[i] / d[i]).collect();
                let cand_pi = cp_inclusion(&candidate, m);
                let cand_err = max_abs_diff(&cand_pi, q);
                if cand_err < *err {
                    *theta = candidate;
                    *pi = cand_pi;
                    *err = cand_err;
                    mu = (mu / 10.0).max(1e-12);
                    break;
                }
            }
            mu *= 10.0;
            if mu > 1e12 {
                return Ok(iterations);
            }
        }
    }
    Ok(iterations)
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

    /// Brute-force pairwise inclusion probabilities.
    fn brute_pairs(w: &[f64], m: usize) -> Vec<f64> {
        let n = w.len();
        let mut out = vec![0.0; n * n];
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
            for i in (0..n).filter(|i| mask & (1 << i) != 0) {
                for j in (0..n).filter(|j| mask & (1 << j) != 0) {
                    out[i * n + j] += weight;
                }
            }
        }
        out.iter().map(|p| p / total).collect()
    }

    #[test]
    fn pair_inclusion_matches_brute_force_with_ties() {
        // units 1, 2 and 4 tie exactly; 5 is within the 1e-6 grouping of 0
        let w = [3.0, 0.7, 0.7, 1.5, 0.7, 3.0 * (1.0 + 1e-7)];
        let theta: Vec<f64> = w.iter().map(|v: &f64| v.ln()).collect();
        for m in 1..w.len() {
            let pi = cp_inclusion(&theta, m);
            let got = cp_pair_inclusion(&theta, m, &pi);
            let want = brute_pairs(&w, m);
            let worst = max_abs_diff(&got, &want);
            assert!(worst < 1e-6, "m={m}: max |Δπ_ij| = {worst}");
        }
    }

    #[test]
    fn fit_converges_where_the_fixed_point_stalls() {
        // marginals met in the simulation that stalled the fixed point alone
        let cases: [&[f64]; 3] = [
            &[
                0.9989258839117624,
                0.0009507992944196589,
                0.00012331679381790187,
            ],
            &[
                0.5627489875034666,
                0.4366261091635978,
                0.0006248876305406055,
                1.5702395030391626e-8,
            ],
            &[
                0.9936570775263168,
                0.30924999346355647,
                1.709331536044002e-05,
                0.6970758356947659,
            ],
        ];
        for p in cases {
            let d = ConditionalPoisson::new(p).unwrap();
            assert!(d.max_marginal_error() <= CP_TOLERANCE, "{p:?}");
            let theta = d.theta.clone();
            let pi = cp_inclusion(&theta, d.split.slots);
            assert!(max_abs_diff(&pi, &d.split.q) <= CP_TOLERANCE);
        }
    }

    #[test]
    fn fit_converges_on_every_strategy_stress_case() {
        use crate::strategy::{SamplingStrategy, Strategy};
        use rand::{RngExt, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(11);
        let mut worst_iterations = 0;
        for _ in 0..300 {
            let r = rng.random_range(3..=40usize);
            let decay: f64 = [0.2, 0.5, 0.8, 0.95, 0.99][rng.random_range(0..5usize)];
            let mut sigma: Vec<f64> = (0..r)
                .map(|i| decay.powi(i as i32) * (1.0 + 0.1 * rng.random::<f64>()))
                .collect();
            sigma.sort_by(|a, b| b.total_cmp(a));
            let n = rng.random_range(1..r);
            let k = [2, 3, 10, 50][rng.random_range(0..4usize)];
            for s in [
                Strategy::PrismLike,
                Strategy::Unbiased,
                Strategy::Collective,
            ] {
                let a = s.allocate(&sigma, n, k).unwrap();
                let d = ConditionalPoisson::new(a.probabilities())
                    .unwrap_or_else(|e| panic!("{s} r={r} n={n} K={k}: {e}"));
                assert!(d.max_marginal_error() <= CP_TOLERANCE);
                worst_iterations = worst_iterations.max(d.iterations());
            }
        }
        assert!(worst_iterations < CDL_MAX_ITERATIONS + NEWTON_MAX_ITERATIONS);
    }
}
