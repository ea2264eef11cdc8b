//! Sampling strategies: which singular triplets a client gets, with what
//! probability, and with which multipliers.
//!
//! A sharded layer `W = Σ_i σ_i u_i v_iᵀ` is sent to a client as
//! `Ŵ = Σ_{i∈S} λ_i σ_i u_i v_iᵀ` for a random set `S` of `n` indices. The
//! rank-one atoms `u_i v_iᵀ` are orthonormal in the Frobenius inner product,
//! so with `z_i = 1[i ∈ S]`, `‖Ŵ − W‖² = Σ_i σ_i² (λ_i z_i − 1)²` and, for
//! **any** fixed-size design with marginals `p_i = P(i ∈ S)`,
//!
//! ```text
//! E‖Ŵ − W‖²_F = Σ_i σ_i² [(1 − λ_i p_i)² + λ_i² p_i (1 − p_i)]            (E1)
//! ```
//!
//! (squared bias plus variance per atom; joint inclusion probabilities never
//! enter). The server's average of `K` independent client estimates divides
//! the variance term by `K`:
//!
//! ```text
//! E‖(1/K) Σ_k Ŵ_k − W‖²_F = Σ_i σ_i² [(1 − λ_i p_i)² + λ_i² p_i (1 − p_i) / K]   (E2)
//! ```
//!
//! A strategy maps the spectrum `σ`, the keep budget `n` and the number of
//! clients per round `K` to `(p, λ)` ([`Allocation`]). The two optimal
//! strategies are those of Korzhenkov & Louizos, *On Sampling Strategies for
//! Spectral Model Sharding* (NeurIPS 2024, arXiv 2410.24106), "Unbiased" and
//! "Collective"; each formula below is re-derived in its item's docs from
//! (E1)/(E2) by the Lagrange/KKT conditions (see the crate README for how
//! this maps onto the paper and the spec).
//!
//! | strategy | `p_i` | `λ_i` |
//! |---|---|---|
//! | [`TopN`] | 1 for the `n` largest σ | 1 |
//! | [`Uniform`] | `n / r` | 1, or `r / n` when rescaled |
//! | [`PrismLike`] | `min(1, c·σ_i)` | 1 |
//! | [`Unbiased`] | `min(1, c·σ_i)` | `1 / p_i` |
//! | [`Collective`] | `clip((c·σ_i − 1)/(K − 1), 0, 1)` | `K / (1 + (K − 1) p_i)` |
//!
//! In every strategy `Σ p_i = n` exactly (up to rounding), entries with
//! `p_i = 0` get `λ_i = 0` (they are never selected), and zero singular
//! values never divide anything: when fewer than `n` singular values are
//! positive, all positive ones get `p = 1` and the rest of the budget is
//! spread evenly over the zero ones (whose atoms contribute nothing to `W`).

use std::fmt;

use lastmile_core::CoreError;
use lastmile_core::validate::{check_at_least, check_finite_slice};

use crate::error::{Result, ShardingError};

/// Tolerance on `Σ p = n` accepted by [`Allocation::new`] and the samplers
/// (absolute, scaled by `max(1, r)`).
pub const SUM_TOLERANCE: f64 = 1e-9;

/// The inclusion probabilities and multipliers a strategy assigns to one layer.
///
/// Invariants (checked by [`Allocation::new`], guaranteed by the built-in
/// strategies): same length `r ≥ 1`; every `p_i ∈ [0, 1]`; `Σ p_i` is the
/// integer budget `n ≥ 1`; every `λ_i` is finite and `≥ 0`, and `λ_i = 0`
/// where `p_i = 0`.
///
/// ```
/// use lastmile_federated_sharding::strategy::{SamplingStrategy, Unbiased};
/// let sigma = [4.0, 2.0, 1.0, 1.0];
/// let a = Unbiased.allocate(&sigma, 2, 1)?;
/// assert!((a.probabilities().iter().sum::<f64>() - 2.0).abs() < 1e-12);
/// assert_eq!(a.multipliers()[0], 1.0); // p = 1 for the largest
/// // E‖Ŵ − W‖² = Σ σ² (1/p − 1) for the unbiased strategy
/// let closed = lastmile_federated_sharding::strategy::unbiased_error(&sigma, a.probabilities())?;
/// assert!((a.expected_error(&sigma)? - closed).abs() < 1e-12);
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Allocation {
    probabilities: Vec<f64>,
    multipliers: Vec<f64>,
    budget: usize,
}

impl Allocation {
    /// An allocation from explicit `(p, λ)`, for strategies defined outside
    /// this crate.
    ///
    /// # Errors
    /// [`CoreError::Empty`] for no entry, [`CoreError::LengthMismatch`] when
    /// the lengths differ, [`CoreError::OutOfRange`] for `p_i ∉ [0, 1]`, a
    /// negative or non-finite `λ_i` or `λ_i ≠ 0` where `p_i = 0`,
    /// [`ShardingError::NotFixedSize`] when `Σ p` is not an integer `≥ 1`
    /// within [`SUM_TOLERANCE`]`·max(1, r)`.
    ///
    /// ```
    /// use lastmile_federated_sharding::strategy::Allocation;
    /// let a = Allocation::new(vec![1.0, 0.5, 0.5], vec![1.0, 2.0, 2.0])?;
    /// assert_eq!(a.budget(), 2);
    /// assert!(Allocation::new(vec![0.5, 0.6], vec![1.0, 1.0]).is_err());
    /// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
    /// ```
    pub fn new(probabilities: Vec<f64>, multipliers: Vec<f64>) -> Result<Self> {
        let budget = check_probabilities(&probabilities)?;
        lastmile_core::validate::check_len("multipliers", multipliers.len(), probabilities.len())?;
        for (i, (&l, &p)) in multipliers.iter().zip(&probabilities).enumerate() {
            if !l.is_finite() || l < 0.0 {
                return Err(CoreError::out_of_range(
                    &format!("multipliers[{i}]"),
                    l,
                    "a finite value >= 0",
                )
                .into());
            }
            if p == 0.0 && l != 0.0 {
                return Err(CoreError::out_of_range(
                    &format!("multipliers[{i}]"),
                    l,
                    "0 where the inclusion probability is 0",
                )
                .into());
            }
        }
        if budget == 0 {
            return Err(ShardingError::NotFixedSize {
                sum: 0.0,
                tolerance: SUM_TOLERANCE,
            });
        }
        Ok(Self {
            probabilities,
            multipliers,
            budget,
        })
    }

    /// Builds from `p` and `λ = f(p)` (0 where `p = 0`); strategies only.
    fn from_rule(probabilities: Vec<f64>, budget: usize, lambda: impl Fn(f64) -> f64) -> Self {
        let multipliers = probabilities
            .iter()
            .map(|&p| if p > 0.0 { lambda(p) } else { 0.0 })
            .collect();
        Self {
            probabilities,
            multipliers,
            budget,
        }
    }

    /// Inclusion probabilities `p_i = P(i ∈ S)`, one per singular value.
    pub fn probabilities(&self) -> &[f64] {
        &self.probabilities
    }

    /// Multipliers `λ_i` applied to selected atoms.
    pub fn multipliers(&self) -> &[f64] {
        &self.multipliers
    }

    /// The keep budget `n = Σ p_i`.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// The number of singular values `r`.
    pub fn rank(&self) -> usize {
        self.probabilities.len()
    }

    /// Whether the selection is deterministic (every `p_i` is 0 or 1).
    pub fn is_deterministic(&self) -> bool {
        self.probabilities.iter().all(|&p| p == 0.0 || p == 1.0)
    }

    /// `E‖Ŵ − W‖²_F` of one client's estimate, equation (E1) of the
    /// [module docs](self).
    ///
    /// # Errors
    /// [`CoreError::LengthMismatch`] when `sigma` has another length.
    pub fn expected_error(&self, sigma: &[f64]) -> Result<f64> {
        expected_error(sigma, &self.probabilities, &self.multipliers)
    }

    /// `E‖(1/K) Σ_k Ŵ_k − W‖²_F` for `K` independent client estimates,
    /// equation (E2) of the [module docs](self).
    ///
    /// # Errors
    /// [`CoreError::LengthMismatch`] when `sigma` has another length,
    /// [`CoreError::OutOfRange`] for `K = 0`.
    pub fn expected_error_averaged(&self, sigma: &[f64], clients: usize) -> Result<f64> {
        expected_error_averaged(sigma, &self.probabilities, &self.multipliers, clients)
    }
}

/// A sampling strategy: maps a spectrum, a keep budget and the number of
/// clients per round to an [`Allocation`].
///
/// `sigma` must be non-empty, finite, `≥ 0` and non-increasing (as an SVD
/// returns it); `1 ≤ budget ≤ sigma.len()`; `clients_per_round ≥ 1` (only
/// [`Collective`] uses it).
///
/// ```
/// use lastmile_federated_sharding::strategy::{Collective, SamplingStrategy, TopN};
/// let sigma = [3.0, 2.0, 1.0];
/// // one client per round: the collective strategy is the top-n truncation
/// assert_eq!(Collective.allocate(&sigma, 2, 1)?, TopN.allocate(&sigma, 2, 1)?);
/// assert_eq!(Collective.name(), "collective");
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
pub trait SamplingStrategy: fmt::Debug {
    /// A short lower-case name for reports (`"unbiased"`, ...).
    fn name(&self) -> &'static str;

    /// The allocation for `sigma` (non-increasing), a budget of `budget`
    /// triplets and `clients_per_round` clients per round.
    ///
    /// # Errors
    /// [`CoreError::Empty`] for an empty `sigma`, [`CoreError::NonFinite`]
    /// for NaN/inf, [`CoreError::OutOfRange`] for a negative or increasing
    /// singular value, a budget outside `[1, r]` (named `budget`) or
    /// `clients_per_round = 0` (named `clients_per_round`).
    fn allocate(
        &self,
        sigma: &[f64],
        budget: usize,
        clients_per_round: usize,
    ) -> Result<Allocation>;
}

/// Deterministic truncation to the `n` largest singular values, `λ = 1`
/// (FedHM-like). Ties at the boundary go to the lower index.
///
/// Its error is `Σ_{i>n} σ_i²`, the Eckart–Young optimum for a single
/// deterministic estimate.
///
/// ```
/// use lastmile_federated_sharding::strategy::{SamplingStrategy, TopN};
/// let a = TopN.allocate(&[3.0, 2.0, 1.0], 2, 5)?;
/// assert_eq!(a.probabilities(), [1.0, 1.0, 0.0]);
/// assert!(a.is_deterministic());
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TopN;

impl SamplingStrategy for TopN {
    fn name(&self) -> &'static str {
        "top-n"
    }

    fn allocate(&self, sigma: &[f64], budget: usize, clients: usize) -> Result<Allocation> {
        check_inputs(sigma, budget, clients)?;
        Ok(top_n(sigma.len(), budget))
    }
}

/// `n` of the `r` triplets uniformly at random: `p = n / r`; `λ = 1`, or
/// `λ = r / n` (Horvitz–Thompson, unbiased) when `rescale` is set.
///
/// ```
/// use lastmile_federated_sharding::strategy::{SamplingStrategy, Uniform};
/// let a = Uniform { rescale: true }.allocate(&[3.0, 2.0, 1.0, 0.5], 2, 1)?;
/// assert_eq!(a.probabilities(), [0.5; 4]);
/// assert_eq!(a.multipliers(), [2.0; 4]);
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Uniform {
    /// Multiply selected atoms by `r / n` (unbiased) instead of 1.
    pub rescale: bool,
}

impl SamplingStrategy for Uniform {
    fn name(&self) -> &'static str {
        if self.rescale {
            "uniform-rescaled"
        } else {
            "uniform"
        }
    }

    fn allocate(&self, sigma: &[f64], budget: usize, clients: usize) -> Result<Allocation> {
        check_inputs(sigma, budget, clients)?;
        let r = sigma.len();
        let p = budget as f64 / r as f64;
        let lambda = if self.rescale {
            r as f64 / budget as f64
        } else {
            1.0
        };
        Ok(Allocation::from_rule(vec![p; r], budget, |_| lambda))
    }
}

/// PriSM-like: inclusion probabilities proportional to `σ`, capped at 1 by
/// water-filling (`p_i = min(1, c·σ_i)`, `Σ p = n`), no rescaling (`λ = 1`).
///
/// PriSM (Niu et al., 2022) draws triplets one by one with probability
/// `∝ σ` without replacement, whose marginals are only roughly `∝ σ`; this
/// variant uses the exact marginals of [`Unbiased`] without its `1/p`
/// multipliers, which isolates the effect of the rescaling.
///
/// ```
/// use lastmile_federated_sharding::strategy::{PrismLike, SamplingStrategy};
/// let a = PrismLike.allocate(&[3.0, 1.0, 1.0, 1.0], 2, 1)?;
/// assert_eq!(a.probabilities()[0], 1.0); // capped
/// assert!((a.probabilities()[1] - 1.0 / 3.0).abs() < 1e-12);
/// assert_eq!(a.multipliers(), [1.0; 4]);
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrismLike;

impl SamplingStrategy for PrismLike {
    fn name(&self) -> &'static str {
        "prism-like"
    }

    fn allocate(&self, sigma: &[f64], budget: usize, clients: usize) -> Result<Allocation> {
        check_inputs(sigma, budget, clients)?;
        let p = proportional_probabilities(sigma, budget);
        Ok(Allocation::from_rule(p, budget, |_| 1.0))
    }
}

/// The Unbiased strategy (Korzhenkov & Louizos 2024, "Unbiased" strategy):
/// `λ_i = 1 / p_i`, so `E[Ŵ] = W` (Horvitz–Thompson), with the marginals
/// that minimise the resulting error.
///
/// With `λ = 1/p`, (E1) becomes `Σ σ_i² (1/p_i − 1)`. Minimising it subject
/// to `Σ p_i = n`, `0 < p_i ≤ 1`: the Lagrangian stationarity condition
/// `σ_i² / p_i² = μ` gives `p_i ∝ σ_i` for the uncapped entries, and the
/// KKT conditions of the box constraint cap the largest at 1:
///
/// ```text
/// p_i = min(1, c·σ_i),   c such that Σ_i p_i = n   (water-filling)
/// ```
///
/// `c` is found exactly: with `σ` sorted, the capped set is a prefix `[0, t)`
/// and `c = (n − t) / Σ_{i≥t} σ_i` for the smallest `t` with `c·σ_t ≤ 1`.
///
/// ```
/// use lastmile_federated_sharding::strategy::{SamplingStrategy, Unbiased};
/// let a = Unbiased.allocate(&[3.0, 1.0, 1.0, 1.0], 2, 1)?;
/// assert!((a.multipliers()[1] - 3.0).abs() < 1e-12); // 1 / p with p = 1/3
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unbiased;

impl SamplingStrategy for Unbiased {
    fn name(&self) -> &'static str {
        "unbiased"
    }

    fn allocate(&self, sigma: &[f64], budget: usize, clients: usize) -> Result<Allocation> {
        check_inputs(sigma, budget, clients)?;
        let p = proportional_probabilities(sigma, budget);
        Ok(Allocation::from_rule(p, budget, |p| 1.0 / p))
    }
}

/// The Collective strategy (Korzhenkov & Louizos 2024, "Collective"
/// strategy): minimises the error of the server's average of `K`
/// independent client estimates, (E2).
///
/// For fixed `p_i`, (E2) is a quadratic in `λ_i` minimised at
/// `λ_i = K / (1 + (K − 1) p_i)`, where the per-atom error becomes
/// `σ_i² (1 − p_i) / (1 + (K − 1) p_i)`. That is convex and decreasing in
/// `p_i` with derivative `−K σ_i² / (1 + (K − 1) p_i)²`; the stationarity
/// condition with multiplier `μ` for `Σ p = n` gives `1 + (K − 1) p_i = c·σ_i`
/// and the KKT conditions of the box `[0, 1]` clip it:
///
/// ```text
/// p_i = clip((c·σ_i − 1) / (K − 1), 0, 1),   c such that Σ_i p_i = n
/// λ_i = K / (1 + (K − 1) p_i)
/// E‖W̄ − W‖² = Σ_i σ_i² (1 − p_i) / (1 + (K − 1) p_i)
/// ```
///
/// `Σ p(c)` is piecewise linear in `c` with breakpoints `1/σ_i` and
/// `K/σ_i`; `c` is found exactly by bisection over the sorted breakpoints
/// and linear interpolation on the bracketing piece. `K = 1` makes the error
/// `Σ σ_i² (1 − p_i)`, linear in `p`, minimised by [`TopN`] (returned as
/// is); as `K → ∞`, `p_i → min(1, c·σ_i)` and `λ_i → 1/p_i`: [`Unbiased`].
///
/// ```
/// use lastmile_federated_sharding::strategy::{Collective, SamplingStrategy};
/// let a = Collective.allocate(&[3.0, 2.0, 1.0, 0.5], 2, 4)?;
/// assert!((a.probabilities().iter().sum::<f64>() - 2.0).abs() < 1e-12);
/// let p = a.probabilities()[1];
/// assert!((a.multipliers()[1] - 4.0 / (1.0 + 3.0 * p)).abs() < 1e-12);
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collective;

impl SamplingStrategy for Collective {
    fn name(&self) -> &'static str {
        "collective"
    }

    fn allocate(&self, sigma: &[f64], budget: usize, clients: usize) -> Result<Allocation> {
        check_inputs(sigma, budget, clients)?;
        if clients == 1 {
            return Ok(top_n(sigma.len(), budget));
        }
        let k = clients as f64;
        let p = collective_probabilities(sigma, budget, k);
        Ok(Allocation::from_rule(p, budget, |p| {
            k / (1.0 + (k - 1.0) * p)
        }))
    }
}

/// Every built-in strategy, as a value (what messages and configs record).
///
/// ```
/// use lastmile_federated_sharding::strategy::{SamplingStrategy, Strategy};
/// for s in Strategy::ALL {
///     let a = s.allocate(&[2.0, 1.0, 0.5], 2, 3)?;
///     assert_eq!(a.budget(), 2);
///     assert_eq!(Strategy::from_tag(s.tag()), Some(s));
/// }
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Strategy {
    /// [`TopN`].
    TopN,
    /// [`Uniform`] without rescaling.
    Uniform,
    /// [`Uniform`] with `λ = r / n`.
    UniformRescaled,
    /// [`PrismLike`].
    PrismLike,
    /// [`Unbiased`].
    Unbiased,
    /// [`Collective`].
    Collective,
}

impl Strategy {
    /// The strategy whose [`SamplingStrategy::name`] is `name`
    /// (`top-n`, `uniform`, `uniform-rescaled`, `prism-like`, `unbiased`,
    /// `collective`).
    ///
    /// # Errors
    /// [`ShardingError::Mismatch`] naming the known names for any other string.
    ///
    /// ```
    /// use lastmile_federated_sharding::Strategy;
    /// assert_eq!(Strategy::from_name("collective")?, Strategy::Collective);
    /// assert!(Strategy::from_name("best").is_err());
    /// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
    /// ```
    pub fn from_name(name: &str) -> Result<Self> {
        find_by_name("strategy name", &Self::ALL, |s| s.name(), name)
    }

    /// Every built-in strategy.
    pub const ALL: [Strategy; 6] = [
        Strategy::TopN,
        Strategy::Uniform,
        Strategy::UniformRescaled,
        Strategy::PrismLike,
        Strategy::Unbiased,
        Strategy::Collective,
    ];

    /// The byte that identifies the strategy in messages.
    pub fn tag(self) -> u8 {
        match self {
            Strategy::TopN => 0,
            Strategy::Uniform => 1,
            Strategy::UniformRescaled => 2,
            Strategy::PrismLike => 3,
            Strategy::Unbiased => 4,
            Strategy::Collective => 5,
        }
    }

    /// The strategy of a message byte, if known.
    pub fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.tag() == tag)
    }
}

impl SamplingStrategy for Strategy {
    fn name(&self) -> &'static str {
        match self {
            Strategy::TopN => TopN.name(),
            Strategy::Uniform => Uniform { rescale: false }.name(),
            Strategy::UniformRescaled => Uniform { rescale: true }.name(),
            Strategy::PrismLike => PrismLike.name(),
            Strategy::Unbiased => Unbiased.name(),
            Strategy::Collective => Collective.name(),
        }
    }

    fn allocate(&self, sigma: &[f64], budget: usize, clients: usize) -> Result<Allocation> {
        match self {
            Strategy::TopN => TopN.allocate(sigma, budget, clients),
            Strategy::Uniform => Uniform { rescale: false }.allocate(sigma, budget, clients),
            Strategy::UniformRescaled => Uniform { rescale: true }.allocate(sigma, budget, clients),
            Strategy::PrismLike => PrismLike.allocate(sigma, budget, clients),
            Strategy::Unbiased => Unbiased.allocate(sigma, budget, clients),
            Strategy::Collective => Collective.allocate(sigma, budget, clients),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ------------------------------------------------------------ closed forms

/// Equation (E1): `Σ σ_i² [(1 − λ_i p_i)² + λ_i² p_i (1 − p_i)]`, the
/// expected squared Frobenius error of one estimate for any fixed-size
/// design with marginals `p` and multipliers `λ`.
///
/// # Errors
/// [`CoreError::LengthMismatch`] when the lengths differ.
///
/// ```
/// use lastmile_federated_sharding::strategy::expected_error;
/// // keep the first of two atoms deterministically: error σ_2²
/// assert_eq!(expected_error(&[2.0, 1.0], &[1.0, 0.0], &[1.0, 0.0])?, 1.0);
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
pub fn expected_error(sigma: &[f64], p: &[f64], lambda: &[f64]) -> Result<f64> {
    expected_error_averaged(sigma, p, lambda, 1)
}

/// Equation (E2): `Σ σ_i² [(1 − λ_i p_i)² + λ_i² p_i (1 − p_i) / K]`, the
/// expected squared Frobenius error of the average of `K` independent
/// estimates.
///
/// # Errors
/// [`CoreError::LengthMismatch`] when the lengths differ,
/// [`CoreError::OutOfRange`] for `K = 0`.
///
/// ```
/// use lastmile_federated_sharding::strategy::expected_error_averaged;
/// // unbiased coin flip on one atom: variance σ²(1/p − 1)/K = 1/4 for K = 4
/// assert_eq!(expected_error_averaged(&[1.0], &[0.5], &[2.0], 4)?, 0.25);
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
pub fn expected_error_averaged(
    sigma: &[f64],
    p: &[f64],
    lambda: &[f64],
    clients: usize,
) -> Result<f64> {
    lastmile_core::validate::check_len("inclusion probabilities", p.len(), sigma.len())?;
    lastmile_core::validate::check_len("multipliers", lambda.len(), sigma.len())?;
    let k = check_at_least("clients_per_round", clients, 1)? as f64;
    Ok(sigma
        .iter()
        .zip(p)
        .zip(lambda)
        .map(|((&s, &p), &l)| s * s * ((1.0 - l * p).powi(2) + l * l * p * (1.0 - p) / k))
        .sum())
}

/// The Unbiased strategy's error `Σ σ_i² (1/p_i − 1)` (E1 with `λ = 1/p`).
///
/// Terms with `σ_i = 0` are 0 whatever `p_i`; a term with `σ_i > 0` and
/// `p_i = 0` is `+∞` (no unbiased estimate can omit it).
///
/// # Errors
/// [`CoreError::LengthMismatch`] when the lengths differ.
///
/// ```
/// use lastmile_federated_sharding::strategy::unbiased_error;
/// assert_eq!(unbiased_error(&[2.0, 1.0], &[1.0, 0.5])?, 1.0);
/// assert_eq!(unbiased_error(&[2.0, 0.0], &[1.0, 0.0])?, 0.0);
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
pub fn unbiased_error(sigma: &[f64], p: &[f64]) -> Result<f64> {
    lastmile_core::validate::check_len("inclusion probabilities", p.len(), sigma.len())?;
    Ok(sigma
        .iter()
        .zip(p)
        .map(|(&s, &p)| {
            if s == 0.0 {
                0.0
            } else if p == 0.0 {
                f64::INFINITY
            } else {
                s * s * (1.0 / p - 1.0)
            }
        })
        .sum())
}

/// The Collective strategy's error `Σ σ_i² (1 − p_i) / (1 + (K − 1) p_i)`:
/// (E2) at the optimal multipliers `λ_i = K / (1 + (K − 1) p_i)`.
///
/// # Errors
/// [`CoreError::LengthMismatch`] when the lengths differ,
/// [`CoreError::OutOfRange`] for `K = 0`.
///
/// ```
/// use lastmile_federated_sharding::strategy::collective_error;
/// assert_eq!(collective_error(&[1.0], &[0.5], 3)?, 0.25);
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
pub fn collective_error(sigma: &[f64], p: &[f64], clients: usize) -> Result<f64> {
    lastmile_core::validate::check_len("inclusion probabilities", p.len(), sigma.len())?;
    let k = check_at_least("clients_per_round", clients, 1)? as f64;
    Ok(sigma
        .iter()
        .zip(p)
        .map(|(&s, &p)| s * s * (1.0 - p) / (1.0 + (k - 1.0) * p))
        .sum())
}

// -------------------------------------------------------------- internals

/// Validates a spectrum, a budget and a client count.
pub(crate) fn check_inputs(sigma: &[f64], budget: usize, clients: usize) -> Result<()> {
    check_sigma(sigma)?;
    check_budget(budget, sigma.len())?;
    check_at_least("clients_per_round", clients, 1)?;
    Ok(())
}

pub(crate) fn check_sigma(sigma: &[f64]) -> Result<()> {
    if sigma.is_empty() {
        return Err(CoreError::Empty {
            what: "singular values".to_owned(),
            min: 1,
        }
        .into());
    }
    check_finite_slice("singular values", sigma)?;
    for (i, &s) in sigma.iter().enumerate() {
        if s < 0.0 {
            return Err(CoreError::out_of_range(&format!("sigma[{i}]"), s, "a value >= 0").into());
        }
        if i > 0 && s > sigma[i - 1] {
            return Err(CoreError::out_of_range(
                &format!("sigma[{i}]"),
                s,
                &format!(
                    "a value <= sigma[{}] = {} (non-increasing)",
                    i - 1,
                    sigma[i - 1]
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// `1 ≤ budget ≤ rank`, as [`CoreError::OutOfRange`] named `budget`.
pub(crate) fn check_budget(budget: usize, rank: usize) -> Result<usize> {
    if budget == 0 || budget > rank {
        return Err(CoreError::out_of_range(
            "budget",
            budget as f64,
            &format!("an integer in [1, {rank}] (the layer's rank)"),
        )
        .into());
    }
    Ok(budget)
}

/// Validates inclusion probabilities and returns their integer sum.
pub(crate) fn check_probabilities(p: &[f64]) -> Result<usize> {
    if p.is_empty() {
        return Err(CoreError::Empty {
            what: "inclusion probabilities".to_owned(),
            min: 1,
        }
        .into());
    }
    for (i, &v) in p.iter().enumerate() {
        if !(0.0..=1.0).contains(&v) {
            return Err(
                CoreError::out_of_range(&format!("p[{i}]"), v, "a probability in [0, 1]").into(),
            );
        }
    }
    let sum: f64 = p.iter().sum();
    let n = sum.round();
    let tolerance = SUM_TOLERANCE * (p.len() as f64).max(1.0);
    if (sum - n).abs() > tolerance {
        return Err(ShardingError::NotFixedSize { sum, tolerance });
    }
    Ok(n as usize)
}

fn top_n(rank: usize, budget: usize) -> Allocation {
    let p = (0..rank)
        .map(|i| if i < budget { 1.0 } else { 0.0 })
        .collect();
    Allocation::from_rule(p, budget, |_| 1.0)
}

/// Number of strictly positive singular values (a prefix, as σ is sorted).
fn positive_count(sigma: &[f64]) -> usize {
    sigma.iter().take_while(|&&s| s > 0.0).count()
}

/// When at most `budget` singular values are positive: all of them with
/// probability 1, the rest of the budget spread evenly over the zeros.
fn saturated(sigma: &[f64], budget: usize) -> Option<Vec<f64>> {
    let positive = positive_count(sigma);
    if positive > budget {
        return None;
    }
    let zeros = sigma.len() - positive;
    let fill = if zeros == 0 {
        0.0
    } else {
        (budget - positive) as f64 / zeros as f64
    };
    Some(
        (0..sigma.len())
            .map(|i| if i < positive { 1.0 } else { fill })
            .collect(),
    )
}

/// `p_i = min(1, c·σ_i)` with `Σ p = budget` (σ non-increasing).
fn proportional_probabilities(sigma: &[f64], budget: usize) -> Vec<f64> {
    if let Some(p) = saturated(sigma, budget) {
        return p;
    }
    // suffix[t] = Σ_{i ≥ t} σ_i
    let mut suffix = vec![0.0; sigma.len() + 1];
    for i in (0..sigma.len()).rev() {
        suffix[i] = suffix[i + 1] + sigma[i];
    }
    // More than `budget` positive values, so suffix[t] > 0 for t < budget,
    // and t = budget − 1 always satisfies c·σ_t ≤ 1.
    let mut capped = budget - 1;
    for t in 0..budget {
        let c = (budget - t) as f64 / suffix[t];
        if c * sigma[t] <= 1.0 {
            capped = t;
            break;
        }
    }
    let c = (budget - capped) as f64 / suffix[capped];
    sigma
        .iter()
        .enumerate()
        .map(|(i, &s)| if i < capped { 1.0 } else { (c * s).min(1.0) })
        .collect()
}

/// `p_i = clip((c·σ_i − 1)/(K − 1), 0, 1)` with `Σ p = budget`, `K ≥ 2`.
fn collective_probabilities(sigma: &[f64], budget: usize, k: f64) -> Vec<f64> {
    if let Some(p) = saturated(sigma, budget) {
        return p;
    }
    let positive = &sigma[..positive_count(sigma)];
    let p_at = |c: f64, s: f64| ((c * s - 1.0) / (k - 1.0)).clamp(0.0, 1.0);
    let total = |c: f64| positive.iter().map(|&s| p_at(c, s)).sum::<f64>();
    // Σ p(c) is continuous, non-decreasing and linear between breakpoints.
    let mut breaks: Vec<f64> = positive.iter().flat_map(|&s| [1.0 / s, k / s]).collect();
    breaks.sort_by(f64::total_cmp);
    breaks.dedup();
    let target = budget as f64;
    // total(first) = 0 < target ≤ positive.len() = total(last): find the last
    // breakpoint with total ≤ target.
    let (mut lo, mut hi) = (0usize, breaks.len() - 1);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if total(breaks[mid]) <= target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (c0, c1) = (breaks[lo], breaks[hi]);
    let (g0, g1) = (total(c0), total(c1));
    let c = if g1 > g0 {
        c0 + (target - g0) * (c1 - c0) / (g1 - g0)
    } else {
        c1
    };
    let mut p: Vec<f64> = sigma.iter().map(|&s| p_at(c, s)).collect();
    // Zero singular values map to p = 0 above; keep that explicit.
    for (pi, &s) in p.iter_mut().zip(sigma) {
        if s == 0.0 {
            *pi = 0.0;
        }
    }
    p
}

/// The entry of `all` whose `name_of` is `wanted`, or a
/// [`ShardingError::Mismatch`] about `what` listing the known names.
pub(crate) fn find_by_name<T: Copy>(
    what: &str,
    all: &[T],
    name_of: impl Fn(&T) -> &'static str,
    wanted: &str,
) -> Result<T> {
    all.iter()
        .find(|t| name_of(t) == wanted)
        .copied()
        .ok_or_else(|| {
            let known: Vec<&str> = all.iter().map(&name_of).collect();
            ShardingError::mismatch(what, format!("one of {known:?}"), wanted)
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn proportional_matches_bisection() {
        let sigma = [10.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.1];
        for n in 1..=sigma.len() {
            let p = proportional_probabilities(&sigma, n);
            assert!((p.iter().sum::<f64>() - n as f64).abs() < 1e-12, "n={n}");
            // every uncapped entry has the same ratio p/σ
            let ratios: Vec<f64> = p
                .iter()
                .zip(&sigma)
                .filter(|(p, _)| **p < 1.0)
                .map(|(p, s)| p / s)
                .collect();
            for w in ratios.windows(2) {
                assert!((w[0] - w[1]).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn collective_satisfies_kkt() {
        let sigma = [10.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.1];
        for k in [2.0, 3.0, 10.0] {
            for n in 1..=sigma.len() {
                let p = collective_probabilities(&sigma, n, k);
                assert!((p.iter().sum::<f64>() - n as f64).abs() < 1e-12);
                // interior entries share the same c = (1 + (K−1)p)/σ
                let cs: Vec<f64> = p
                    .iter()
                    .zip(&sigma)
                    .filter(|(p, _)| **p > 0.0 && **p < 1.0)
                    .map(|(p, s)| (1.0 + (k - 1.0) * p) / s)
                    .collect();
                for w in cs.windows(2) {
                    assert!((w[0] - w[1]).abs() < 1e-9 * w[0], "{cs:?}");
                }
            }
        }
    }
}
