//! Draft-length policies: how many tokens to draft each round.
//!
//! Every policy looks only at the draft's own distributions and at past
//! rounds' acceptance counts, never at the target's distribution for the
//! current round, so any of them keeps speculative sampling exact.

use std::fmt::Debug;
use std::ops::Bound::{Excluded, Included, Unbounded};

use lastmile_core::validate::{check_at_least, check_in_range, check_interval, check_positive};

use crate::error::{Result, SpecDecodeError};
use crate::round_timing::RoundTiming;

/// What the drafter knows about the next draft position before sampling it.
///
/// Computed from the drafter's processed distribution `q` when sampling, and
/// from the *untempered* softmax of the draft logits in greedy mode (where
/// `q` is one-hot and carries no confidence information). Prompt lookup,
/// whose proposals are deterministic, reports the distribution of a copy
/// model that grows surer with the length of its match
/// ([`PromptLookup`](crate::PromptLookup)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DraftStepInfo {
    /// Shannon entropy of the draft distribution, in nats.
    pub entropy: f64,
    /// Largest probability of the draft distribution.
    pub top_prob: f64,
}

/// Where a round's draft comes from, told to the policy before the round
/// ([`DraftPolicy::begin_round`]) by the drafter ([`Drafter::source`](crate::Drafter::source)).
///
/// A draft model pays a forward per token; prompt lookup copies tokens for
/// a scan of the context. [`PerSource`](crate::PerSource) judges each with
/// a policy of its own, priced at its own cost.
///
/// ```
/// use lastmile_spec_decode::{DraftSource, Drafter, PromptLookup};
/// assert_eq!(PromptLookup::new(1, 2, 4)?.source(&[1, 2]), DraftSource::Lookup);
/// # Ok::<(), lastmile_spec_decode::SpecDecodeError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DraftSource {
    /// A draft model (or any drafter that is not prompt lookup).
    #[default]
    Model,
    /// Prompt lookup: the tokens that followed an earlier occurrence of
    /// the context's last n-gram.
    Lookup,
}

/// Result of one verification round, reported back to the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundOutcome {
    /// Tokens drafted this round.
    pub drafted: usize,
    /// Leading draft tokens the target accepted.
    pub accepted: usize,
}

/// Decides the draft length, per sequence.
///
/// Per round the decoder tells the policy the round's
/// [source](DraftPolicy::begin_round), calls [`round_limit`](DraftPolicy::round_limit)
/// once, drafts [`min_len`](DraftPolicy::min_len) tokens (one by default)
/// unconditionally, then asks
/// [`continue_drafting`](DraftPolicy::continue_drafting) before each further
/// token (up to the limit), and finally reports the round through
/// [`observe`](DraftPolicy::observe). The decoder keeps one clone per sequence.
///
/// # Examples
/// ```
/// use lastmile_spec_decode::{DraftPolicy, RoundOutcome, StaticLength};
/// let mut p = StaticLength::new(4).unwrap();
/// assert_eq!(p.round_limit(), 4);
/// p.observe(RoundOutcome { drafted: 4, accepted: 1 });
/// assert_eq!(p.round_limit(), 4);
/// ```
pub trait DraftPolicy: Debug + Send {
    /// Short name for reports, e.g. `"static-4"`.
    fn name(&self) -> String;

    /// Which source will draft the round about to begin, told before
    /// [`round_limit`](DraftPolicy::round_limit). Ignored by default (a
    /// policy judges every token alike); [`PerSource`](crate::PerSource)
    /// hands the round to the policy for its source.
    ///
    /// ```
    /// use lastmile_spec_decode::{DraftPolicy, DraftSource, StaticLength};
    /// let mut p = StaticLength::new(3).unwrap();
    /// p.begin_round(DraftSource::Lookup);
    /// assert_eq!(p.round_limit(), 3);
    /// ```
    fn begin_round(&mut self, source: DraftSource) {
        let _ = source;
    }

    /// Most tokens to draft this round; 0 skips speculation for the round
    /// without a draft step (the target takes one plain step, and a model
    /// drafter catches up on the skipped tokens when drafting resumes).
    fn round_limit(&mut self) -> usize;

    /// Tokens drafted before the policy is consulted: 1 (the default), or 0
    /// to let [`continue_drafting`](DraftPolicy::continue_drafting) skip
    /// speculation for a round (the target then takes one plain step, as
    /// llama.cpp does when a draft is shorter than its `n_min`).
    fn min_len(&self) -> usize {
        1
    }

    /// Whether to draft token number `drafted + 1`, given the draft
    /// distribution for that position. Called only for `drafted ≥ min_len()`.
    fn continue_drafting(&mut self, drafted: usize, next: &DraftStepInfo) -> bool {
        let _ = (drafted, next);
        true
    }

    /// Whether, with `drafted` tokens drafted this round (`drafted ≥
    /// min_len()`), running the draft once more to see the next token's
    /// distribution is worth its cost. `true` by default: the limit and
    /// [`continue_drafting`](DraftPolicy::continue_drafting) decide.
    ///
    /// ```
    /// use lastmile_spec_decode::{DraftPolicy, StaticLength};
    /// assert!(StaticLength::new(4).unwrap().worth_a_step(3));
    /// ```
    fn worth_a_step(&self, drafted: usize) -> bool {
        let _ = drafted;
        true
    }

    /// The round's wall times, reported by the decoder after
    /// [`observe`](DraftPolicy::observe) (not for the prompt's round).
    /// Ignored by default; [`CostAwareAdaEdl`](crate::CostAwareAdaEdl)
    /// can price its decisions with them
    /// ([`CostAwareConfig::measure_costs`](crate::CostAwareConfig::measure_costs)).
    /// A policy that reads them makes decisions that depend on the
    /// machine's speed: speculative sampling stays exact, but the same
    /// seed no longer gives the same tokens at T > 0.
    ///
    /// ```
    /// use lastmile_spec_decode::{DraftPolicy, RoundTiming, StaticLength};
    /// let mut p = StaticLength::new(2).unwrap();
    /// p.observe_timing(&RoundTiming { draft_calls: 2, draft_seconds: 6e-4, pass_tokens: 3, verify_seconds: 4e-3 });
    /// assert_eq!(p.round_limit(), 2); // a static length ignores times
    /// ```
    fn observe_timing(&mut self, timing: &RoundTiming) {
        let _ = timing;
    }

    /// Feedback after the target verified the round.
    fn observe(&mut self, outcome: RoundOutcome) {
        let _ = outcome;
    }

    /// A boxed copy (the decoder clones the prototype once per sequence).
    fn clone_box(&self) -> Box<dyn DraftPolicy>;
}

impl Clone for Box<dyn DraftPolicy> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// A fixed draft length `γ` every round (Leviathan et al. 2023).
///
/// ```
/// use lastmile_spec_decode::{DraftPolicy, StaticLength};
/// assert_eq!(StaticLength::new(3).unwrap().name(), "static-3");
/// assert!(StaticLength::new(0).is_err());
/// ```
#[derive(Clone, Debug)]
pub struct StaticLength {
    pub(crate) gamma: usize,
}

impl StaticLength {
    /// Drafts exactly `gamma` tokens per round.
    ///
    /// # Errors
    /// `gamma = 0`.
    pub fn new(gamma: usize) -> Result<Self> {
        Ok(Self {
            gamma: check_at_least("gamma", gamma, 1)?,
        })
    }
}

impl DraftPolicy for StaticLength {
    fn name(&self) -> String {
        format!("static-{}", self.gamma)
    }
    fn round_limit(&mut self) -> usize {
        self.gamma
    }
    fn clone_box(&self) -> Box<dyn DraftPolicy> {
        Box::new(self.clone())
    }
}

/// Hugging Face's "heuristic" schedule: `g ← g + 2` after a fully accepted
/// round, `g ← max(1, g − 1)` otherwise, capped at `max_len`.
///
/// ```
/// use lastmile_spec_decode::{DraftPolicy, HeuristicSchedule, RoundOutcome};
/// let mut p = HeuristicSchedule::new(5, 16).unwrap();
/// p.observe(RoundOutcome { drafted: 5, accepted: 5 });
/// assert_eq!(p.round_limit(), 7);
/// p.observe(RoundOutcome { drafted: 7, accepted: 2 });
/// assert_eq!(p.round_limit(), 6);
/// ```
#[derive(Clone, Debug)]
pub struct HeuristicSchedule {
    current: usize,
    max_len: usize,
}

impl HeuristicSchedule {
    /// Starts at `initial` tokens (HF uses 5), never exceeds `max_len`.
    ///
    /// # Errors
    /// `initial = 0`, `max_len = 0`.
    pub fn new(initial: usize, max_len: usize) -> Result<Self> {
        let max_len = check_at_least("max_len", max_len, 1)?;
        Ok(Self {
            current: check_at_least("initial", initial, 1)?.min(max_len),
            max_len,
        })
    }
}

impl DraftPolicy for HeuristicSchedule {
    fn name(&self) -> String {
        "heuristic".to_owned()
    }
    fn round_limit(&mut self) -> usize {
        self.current
    }
    fn observe(&mut self, outcome: RoundOutcome) {
        if outcome.drafted == 0 {
            return;
        }
        self.current = if outcome.accepted == outcome.drafted {
            (self.current + 2).min(self.max_len)
        } else {
            self.current.saturating_sub(1).max(1)
        };
    }
    fn clone_box(&self) -> Box<dyn DraftPolicy> {
        Box::new(self.clone())
    }
}

/// Stops drafting when the draft's top-token probability falls below `τ`
/// (llama.cpp `p_min` = 0.75 for greedy, HF `assistant_confidence_threshold`
/// = 0.4), with at most `max_len` tokens.
///
/// ```
/// use lastmile_spec_decode::{DraftPolicy, DraftStepInfo, MaxConfidence};
/// let mut p = MaxConfidence::new(0.5, 8).unwrap();
/// assert!(p.continue_drafting(1, &DraftStepInfo { entropy: 0.1, top_prob: 0.9 }));
/// assert!(!p.continue_drafting(1, &DraftStepInfo { entropy: 1.0, top_prob: 0.3 }));
/// ```
#[derive(Clone, Debug)]
pub struct MaxConfidence {
    threshold: f64,
    max_len: usize,
}

impl MaxConfidence {
    /// Threshold `τ ∈ [0, 1]`, cap `max_len ≥ 1`.
    ///
    /// # Errors
    /// `τ` outside `[0, 1]`, `max_len = 0`.
    pub fn new(threshold: f64, max_len: usize) -> Result<Self> {
        Ok(Self {
            threshold: check_in_range("threshold", threshold, 0.0, 1.0)?,
            max_len: check_at_least("max_len", max_len, 1)?,
        })
    }
}

impl DraftPolicy for MaxConfidence {
    fn name(&self) -> String {
        format!("max-conf-{}", self.threshold)
    }
    fn round_limit(&mut self) -> usize {
        self.max_len
    }
    fn continue_drafting(&mut self, _drafted: usize, next: &DraftStepInfo) -> bool {
        next.top_prob >= self.threshold
    }
    fn clone_box(&self) -> Box<dyn DraftPolicy> {
        Box::new(self.clone())
    }
}

/// AdaEDL hyper-parameters (Agrawal, Jeon, Lee 2024, arXiv 2410.18351).
///
/// ```
/// let c = lastmile_spec_decode::AdaEdlConfig::default();
/// assert_eq!((c.gamma, c.lambda0, c.max_len), (0.2, 0.7, 8));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaEdlConfig {
    /// Scale `γ` of the entropy in the lower bound `1 − sqrt(γ·H)`.
    pub gamma: f64,
    /// Initial stopping threshold `λ₀`. Drafting goes on while
    /// `H ≤ (1 − λ)²/γ` (0.45 nats with the defaults). Each round moves `λ`
    /// by at most `(1 − β₂)·ε` (0.001 with the defaults), so over a
    /// generation of a few dozen rounds the threshold is essentially `λ₀`:
    /// lower it where verifying extra tokens is cheap (an accelerator), keep
    /// it high where it is not (a CPU; see `docs/benchmarks.md`).
    pub lambda0: f64,
    /// EMA factor `β₁` of the acceptance rate.
    pub beta1: f64,
    /// EMA factor `β₂` of the threshold.
    pub beta2: f64,
    /// Step `ε` of the threshold update.
    pub epsilon: f64,
    /// Target acceptance rate `α`.
    pub alpha: f64,
    /// Longest draft `L_max`.
    pub max_len: usize,
    /// Tokens drafted before the stopping rule applies: 1 as in the published
    /// re-implementations, or 0 to let the rule skip speculation for a round
    /// when even the first draft token's bound is below `λ` (worth it where
    /// verifying is expensive, as on a CPU).
    pub min_len: usize,
}

impl Default for AdaEdlConfig {
    /// The defaults of the published re-implementations: `γ = 0.2, λ₀ = 0.7,
    /// β₁ = 0.5, β₂ = 0.9, ε = 0.01, α = 0.9`, with `L_max = 8`, `min_len = 1`.
    fn default() -> Self {
        Self {
            gamma: 0.2,
            lambda0: 0.7,
            beta1: 0.5,
            beta2: 0.9,
            epsilon: 0.01,
            alpha: 0.9,
            max_len: 8,
            min_len: 1,
        }
    }
}

/// AdaEDL: entropy-based early draft stopping with an adaptive threshold.
///
/// Before drafting the next token, with `H` the entropy (nats) of the draft
/// distribution, `1 − sqrt(γ·H)` lower-bounds the probability that the token
/// is accepted; drafting stops when that bound is below `λ`. After each round
/// with `n_acc` of `n_drafted` accepted:
///
/// ```text
/// AR ← β₁·AR + (1 − β₁)·n_acc / n_drafted
/// λ' = λ + ε   if AR < α
///      λ − ε   else if n_acc ≠ L_max
///      λ       otherwise
/// λ  ← β₂·λ + (1 − β₂)·λ'
/// ```
///
/// At least `min_len` tokens (default 1) are drafted, at most `L_max`.
///
/// The bound, the stopping rule and the update above are those of the
/// published re-implementations (their defaults agree); they are consistent
/// with the paper's abstract, but have not been checked line by line against
/// its Algorithm 1. The threshold update is the adaptive draft-exiting
/// controller of self-speculative decoding (Zhang et al. 2024, "Draft &
/// Verify", same defaults β₁ = 0.5, β₂ = 0.9, ε = 0.01, α = 0.9, L_max = 8),
/// whose public code orders the cases differently: it keeps λ whenever the
/// round drafted `L_max` tokens, and otherwise applies `+ε` if `AR ≤ α`,
/// `−ε` if not. The two rules differ only in rounds that reach the cap or
/// have `AR = α` exactly. The stop is decided on the distribution of the token
/// about to be drafted, so a declined position costs one draft forward but no
/// verification.
///
/// ```
/// use lastmile_spec_decode::{AdaEdl, AdaEdlConfig, DraftPolicy, DraftStepInfo, RoundOutcome};
/// let mut p = AdaEdl::new(AdaEdlConfig::default()).unwrap();
/// // bound 1 - sqrt(0.2 * 0.05) = 0.9 > 0.7: keep drafting
/// assert!(p.continue_drafting(1, &DraftStepInfo { entropy: 0.05, top_prob: 0.99 }));
/// // bound 1 - sqrt(0.2 * 2.0) = 0.37 < 0.7: stop
/// assert!(!p.continue_drafting(1, &DraftStepInfo { entropy: 2.0, top_prob: 0.3 }));
/// p.observe(RoundOutcome { drafted: 4, accepted: 0 });
/// assert!(p.lambda() > 0.7); // low acceptance raises the threshold
/// ```
#[derive(Clone, Debug)]
pub struct AdaEdl {
    config: AdaEdlConfig,
    lambda: f64,
    acceptance: f64,
}

impl AdaEdl {
    /// A policy with the given hyper-parameters; the acceptance EMA starts at `α`.
    ///
    /// # Errors
    /// `γ ≤ 0`, `λ₀`, `β₁`, `β₂`, `α` outside `[0, 1]`, `ε < 0`, `L_max = 0`,
    /// `min_len` not 0 or 1.
    pub fn new(config: AdaEdlConfig) -> Result<Self> {
        check_positive("gamma", config.gamma)?;
        check_in_range("lambda0", config.lambda0, 0.0, 1.0)?;
        check_in_range("beta1", config.beta1, 0.0, 1.0)?;
        check_in_range("beta2", config.beta2, 0.0, 1.0)?;
        check_in_range("alpha", config.alpha, 0.0, 1.0)?;
        check_interval("epsilon", config.epsilon, Included(0.0), Unbounded)?;
        check_at_least("max_len", config.max_len, 1)?;
        if config.min_len > 1 {
            return Err(SpecDecodeError::param(
                "min_len",
                config.min_len as f64,
                "0 or 1",
            ));
        }
        Ok(Self {
            lambda: config.lambda0,
            acceptance: config.alpha,
            config,
        })
    }

    /// The current stopping threshold `λ`.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }

    /// The acceptance-rate EMA `AR`.
    pub fn acceptance_ema(&self) -> f64 {
        self.acceptance
    }

    /// The entropy lower bound `1 − sqrt(γ·H)` on the acceptance probability.
    pub fn acceptance_lower_bound(&self, entropy: f64) -> f64 {
        1.0 - (self.config.gamma * entropy.max(0.0)).sqrt()
    }
}

impl DraftPolicy for AdaEdl {
    fn name(&self) -> String {
        if self.config.min_len == 0 {
            "adaedl-min0".to_owned()
        } else {
            "adaedl".to_owned()
        }
    }
    fn round_limit(&mut self) -> usize {
        self.config.max_len
    }
    fn min_len(&self) -> usize {
        self.config.min_len
    }
    fn continue_drafting(&mut self, _drafted: usize, next: &DraftStepInfo) -> bool {
        self.acceptance_lower_bound(next.entropy) >= self.lambda
    }
    fn observe(&mut self, outcome: RoundOutcome) {
        if outcome.drafted == 0 {
            return;
        }
        let c = &self.config;
        let rate = outcome.accepted as f64 / outcome.drafted as f64;
        self.acceptance = c.beta1 * self.acceptance + (1.0 - c.beta1) * rate;
        let proposed = if self.acceptance < c.alpha {
            self.lambda + c.epsilon
        } else if outcome.accepted != c.max_len {
            self.lambda - c.epsilon
        } else {
            self.lambda
        };
        self.lambda = c.beta2 * self.lambda + (1.0 - c.beta2) * proposed;
    }
    fn clone_box(&self) -> Box<dyn DraftPolicy> {
        Box::new(self.clone())
    }
}

/// Chooses `g` each round to maximise the expected tokens per unit cost,
/// `E(â, g) / (g·c + 1)` with `E(â, g) = (1 − â^{g+1}) / (1 − â)` (Leviathan
/// et al. 2023, Eq. 1 and Theorem 3.8), from an EMA `â` of the per-token
/// acceptance probability and the draft/target cost ratio `c`.
///
/// Leviathan et al. assume that scoring `g + 1` tokens costs the target as
/// much as scoring one. On a CPU it does not; [`CostModel::with_verify_cost`]
/// adds a measured marginal cost `c_v` per extra verified token, giving the
/// denominator `g·c + 1 + g·c_v`.
///
/// Under the i.i.d. model a round with `n` of `g` accepted made `n + 1`
/// acceptance trials (`n` if all were accepted) with `n` successes; the EMA
/// tracks `successes / trials`.
///
/// ```
/// use lastmile_spec_decode::{CostModel, DraftPolicy, RoundOutcome};
/// let mut p = CostModel::new(0.1, 0.8, 0.5, 8).unwrap();
/// let g_high = p.round_limit();
/// for _ in 0..20 { p.observe(RoundOutcome { drafted: 4, accepted: 0 }); }
/// assert!(p.round_limit() < g_high);
/// ```
#[derive(Clone, Debug)]
pub struct CostModel {
    cost_ratio: f64,
    verify_cost: f64,
    acceptance: f64,
    beta: f64,
    max_len: usize,
}

impl CostModel {
    /// Cost ratio `c > 0` (draft step time / target step time), initial
    /// acceptance `â₀ ∈ [0, 1]`, EMA factor `β ∈ [0, 1)`, cap `max_len ≥ 1`.
    ///
    /// # Errors
    /// Any argument out of range.
    pub fn new(
        cost_ratio: f64,
        initial_acceptance: f64,
        beta: f64,
        max_len: usize,
    ) -> Result<Self> {
        Ok(Self {
            cost_ratio: check_positive("cost_ratio", cost_ratio)?,
            verify_cost: 0.0,
            acceptance: check_in_range("initial_acceptance", initial_acceptance, 0.0, 1.0)?,
            beta: check_interval("beta", beta, Included(0.0), Excluded(1.0))?,
            max_len: check_at_least("max_len", max_len, 1)?,
        })
    }

    /// Expected tokens per round `E(a, g) = (1 − a^{g+1}) / (1 − a)` (`g + 1` at `a = 1`).
    ///
    /// ```
    /// assert!((lastmile_spec_decode::CostModel::expected_tokens(0.5, 2) - 1.75).abs() < 1e-12);
    /// ```
    pub fn expected_tokens(a: f64, g: usize) -> f64 {
        if a >= 1.0 {
            (g + 1) as f64
        } else {
            (1.0 - a.powi(g as i32 + 1)) / (1.0 - a)
        }
    }

    /// Sets the marginal cost `c_v ≥ 0` of each extra token in the target's
    /// verification pass, relative to a one-token target step.
    ///
    /// # Errors
    /// `c_v` negative or not finite.
    ///
    /// ```
    /// use lastmile_spec_decode::{CostModel, DraftPolicy};
    /// let mut free = CostModel::new(0.05, 0.8, 0.5, 8).unwrap();
    /// let mut costly = CostModel::new(0.05, 0.8, 0.5, 8).unwrap().with_verify_cost(0.5).unwrap();
    /// assert!(costly.round_limit() < free.round_limit());
    /// ```
    pub fn with_verify_cost(mut self, verify_cost: f64) -> Result<Self> {
        self.verify_cost = check_interval("verify_cost", verify_cost, Included(0.0), Unbounded)?;
        Ok(self)
    }

    /// The current acceptance estimate `â`.
    pub fn acceptance(&self) -> f64 {
        self.acceptance
    }
}

impl DraftPolicy for CostModel {
    fn name(&self) -> String {
        "cost-model".to_owned()
    }
    fn round_limit(&mut self) -> usize {
        let score = |g: usize| {
            Self::expected_tokens(self.acceptance, g)
                / (g as f64 * (self.cost_ratio + self.verify_cost) + 1.0)
        };
        (1..=self.max_len)
            .fold((1, f64::NEG_INFINITY), |best, g| {
                let s = score(g);
                if s > best.1 { (g, s) } else { best }
            })
            .0
    }
    fn observe(&mut self, outcome: RoundOutcome) {
        if outcome.drafted == 0 {
            return;
        }
        let trials = outcome.accepted + usize::from(outcome.accepted < outcome.drafted);
        let rate = outcome.accepted as f64 / trials as f64;
        self.acceptance = self.beta * self.acceptance + (1.0 - self.beta) * rate;
    }
    fn clone_box(&self) -> Box<dyn DraftPolicy> {
        Box::new(self.clone())
    }
}
