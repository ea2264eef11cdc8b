//! AdaEDL's entropy bound weighed by measured draft and verify costs: a
//! draft-length policy for devices where neither drafting nor verifying is
//! free (a CPU), designed in this project.

use std::ops::Bound::{Included, Unbounded};

use lastmile_core::validate::{check_at_least, check_interval};

use crate::calibration::{CalibratedBound, LEVELS};
use crate::error::Result;
use crate::pass_cost::PassCosts;
use crate::policy::{CostModel, DraftPolicy, DraftStepInfo, RoundOutcome};
use crate::round_timing::{InLoopCosts, RoundTiming};

/// Plain steps timed before the measured costs are trusted to run alone.
const SETTLING_STEPS: usize = 2;

/// Rounds from the settling plain steps to the next timed one; the gap
/// then doubles up to [`CostAwareConfig::retime_every`]. The settling
/// steps come right after the prompt's pass, which can leave the next
/// steps slower for a while (1.5–1.8× for about ten steps of SmolLM2-135M
/// on an Intel Xeon, `docs/benchmarks.md`, session 38): plain steps at
/// rounds 2, 3, 7, 15, 31, … replace them soon.
const FIRST_RETIME: usize = 4;

/// Settings of [`CostAwareAdaEdl`].
///
/// ```
/// use lastmile_spec_decode::{CostAwareAdaEdl, CostAwareConfig};
/// let config = CostAwareConfig { max_len: 4, ..CostAwareConfig::default() };
/// assert!(CostAwareAdaEdl::new(config, 0.2, 0.25).is_ok());
/// assert!(CostAwareAdaEdl::new(CostAwareConfig { probe_every: 0, ..config }, 0.2, 0.25).is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CostAwareConfig {
    /// Scale `γ` of the entropy in AdaEDL's lower bound `1 − sqrt(γ·H)`.
    pub gamma: f64,
    /// Weight `w` (in tokens) of the bound as the prior of its calibration
    /// ([`CalibratedBound`]).
    pub prior_weight: f64,
    /// Per-token decay of the calibration's counts.
    pub forget: f64,
    /// Acceptance assumed before any round was verified, by the gate and
    /// by the calibration.
    pub initial_acceptance: f64,
    /// Longest draft `L_max`.
    pub max_len: usize,
    /// While speculation does not pay, every `probe_every`-th round drafts
    /// anyway, so that the gate can follow a text that becomes predictable.
    pub probe_every: usize,
    /// Price decisions with the costs the decoder times in the loop
    /// ([`InLoopCosts`], fed by
    /// [`observe_timing`](DraftPolicy::observe_timing)) once a plain step
    /// has been timed; the costs given to the constructor are the prior
    /// until then, and for pass lengths never timed. Off by default: the
    /// decisions then depend on the machine's speed, so the same seed
    /// no longer gives the same tokens at T > 0 (the output distribution
    /// stays exact).
    pub measure_costs: bool,
    /// With `measure_costs`, a round that would draft runs as a plain step
    /// instead, to time the unit of every cost, in the two rounds after
    /// the prompt's, then after 4, 8, 16, … timed rounds without a plain
    /// step, at most `retime_every` (at 32 this gives up at most one
    /// round's gain in 32 once settled, four more in a generation's first
    /// ~60 rounds).
    pub retime_every: usize,
}

impl Default for CostAwareConfig {
    /// `γ = 0.2` (AdaEDL's), `w = 8`, `forget = 0.998` (about 500 tokens),
    /// initial acceptance 0.4, `L_max = 8`, a probe every 8 rounds, the
    /// given costs (not measured; a plain step every 32 rounds when
    /// measured). An
    /// initial 0.4 drafts one token a round until verified tokens show more
    /// (at `c + c_v ≈ 0.2`): an optimistic 0.7 drafted 2–3 tokens a round
    /// at first, which 40-token generations never recovered from.
    fn default() -> Self {
        Self {
            gamma: 0.2,
            prior_weight: 8.0,
            forget: 0.998,
            initial_acceptance: 0.4,
            max_len: 8,
            probe_every: 8,
            measure_costs: false,
            retime_every: 32,
        }
    }
}

/// AdaEDL with costs: drafts a token when the tokens it is expected to add
/// pay for what it costs, judged from its entropy, calibrated on the rounds
/// verified so far, and the measured costs.
///
/// With `c` the cost of a draft step and `c_v` the marginal cost of one more
/// token in the target's verify pass (both in target steps, measured on the
/// device; `c_v` may depend on the token's place in the pass,
/// [`CostAwareAdaEdl::with_pass_costs`]: `c_v(j)` for draft token `j + 1`,
/// and a pass verifying `j` tokens costs `v(j + 1) = 1 + c_v(0) + … +
/// c_v(j − 1)`):
///
/// - **Per position** (AdaEDL's rule, Agrawal et al. 2024, with costs for
///   its fixed threshold λ). Token `i`'s acceptance is estimated from its
///   entropy bound `b_i = max(0, 1 − sqrt(γ·H_i))` (Eq. 5) by
///   [`CalibratedBound`]: `a_i = â(b_i)`, the rate at which verified tokens
///   of its bound's level were accepted (shrunk towards all levels' rate).
///   After `j` drafted tokens, all `j` are accepted
///   with probability `P_j = a_1 ⋯ a_j`, and the round is expected to yield
///   `E_j = 1 + P_1 + … + P_j` tokens for the cost spent so far,
///   `C_j = s·c + v(j + 1)` (`s` draft steps, including the one that
///   produced token `j + 1`'s distribution). Token `j + 1` is drafted when
///   its own yield per cost is at least the round's so far:
///   `P_j · a_{j+1} / c_v(j) ≥ E_j / C_j` (adding an item whose marginal
///   ratio is at least the current ratio never lowers the ratio), or when
///   a run of it and up to `L_max − j − 1` more tokens at its estimate
///   would be (a run of `m` costs `(m − 1)·c` for the draft steps that show
///   its other tokens and `v(j + m + 1) − v(j + 1)` in the pass): a CPU's
///   pass costs are not convex in their length, and a token that does not
///   pay alone may open a cheap run. The draft step that showed token
///   `j + 1` is spent whatever is decided, and the step after it is
///   weighed on its own (below), so neither is charged to the token. The
///   first token is judged too (`min_len` 0).
/// - **Per round** (the gate). A round that runs the draft pays `c` for
///   its first token's distribution, then drafts the token if its level's
///   estimate `â_k` passes the rule above (at `j = 0`:
///   `â_k ≥ t = c_v(0) / (1 + c)`), gaining `â_k − c_v(0)` tokens over a
///   plain step. From the levels `π_k` of recent first tokens (decayed
///   counts), drafting pays when `Σ_{k: â_k ≥ t} π_k·(â_k − c_v(0)) > c`.
///   Before any first token was seen it uses Leviathan et al.'s rule
///   (2023, Eq. 1, with the verify cost as in [`CostModel`]) at the
///   calibration's overall rate `p̄`: some `g ≥ 1` gives
///   `E(p̄, g) / (g·c + v(g + 1)) > 1`. When drafting does not pay the
///   round drafts nothing and costs no draft step (the draft model
///   catches up on the skipped tokens in one forward when drafting
///   resumes), except every [`probe_every`](CostAwareConfig::probe_every)-th
///   such round, which drafts at least one token to measure again.
///
/// - **Per draft step** ([`worth_a_step`](DraftPolicy::worth_a_step)).
///   After `j ≥ 1` drafted tokens, another draft step (`c`) shows token
///   `j + 1`, which gains `P_j·â_k` tokens for `c_v(j)` if its level is
///   `k`, and may open a run as in the per-position rule. Priced at the
///   round's yield so far, `R = E_j / C_j` tokens a step (the rate the
///   per-position rule keeps from falling), a run of `m` tokens at that
///   estimate nets
///   `g_k = max_m P_j·(â_k + … + â_k^m) − R·((m − 1)·c + v(j + m + 1) − v(j + 1))`,
///   `1 ≤ m ≤ L_max − j`. Taking the levels of recent first tokens as its
///   odds, the step is run when `Σ_k π_k·max(0, g_k) > R·c`. Without this a
///   round whose first token is drafted always paid one more draft step
///   just to decline the second; with `m = 1` alone it would stop in front
///   of a run that the per-position rule takes (with convex pass costs
///   `m = 1` decides).
///
/// AdaEDL's fixed threshold λ (0.7) asks for the same acceptance bound
/// whatever drafting and verifying cost, and reads the bound as if it were
/// the acceptance rate; this rule asks for less when they are cheap, learns
/// what acceptance a bound means for this draft and text, and declines to
/// speculate when drafting does not pay. Like every policy here it reads
/// only the draft's distributions and past rounds' counts, so speculative
/// sampling stays exact.
///
/// ```
/// use lastmile_spec_decode::{CostAwareAdaEdl, CostAwareConfig, DraftPolicy, DraftStepInfo, RoundOutcome};
/// let mut p = CostAwareAdaEdl::new(CostAwareConfig::default(), 0.1, 0.3).unwrap();
/// assert_eq!(p.min_len(), 0);
/// let sure = DraftStepInfo { entropy: 0.05, top_prob: 0.99 };
/// let unsure = DraftStepInfo { entropy: 4.0, top_prob: 0.05 };
/// // Rounds in which confident first tokens are accepted and unsure ones
/// // rejected teach it to decline unsure first tokens (â < c_v / (1 + c) = 0.27).
/// for i in 0..40 {
///     p.round_limit();
///     let accepted = i % 2 == 0;
///     assert!(p.continue_drafting(0, if accepted { &sure } else { &unsure }) || i > 0);
///     p.observe(RoundOutcome { drafted: 1, accepted: usize::from(accepted) });
/// }
/// p.round_limit();
/// assert!(!p.clone().continue_drafting(0, &unsure));
/// assert!(p.continue_drafting(0, &sure));
/// ```
#[derive(Clone, Debug)]
pub struct CostAwareAdaEdl {
    config: CostAwareConfig,
    draft_cost: f64,
    verify: PassCosts,
    /// The costs given: the prior of the measured ones.
    prior: (f64, PassCosts),
    /// With `measure_costs`: the loop's times, the rounds begun, the plain
    /// steps timed and the rounds timed since the last.
    measured: Option<InLoopCosts>,
    rounds: usize,
    plain: usize,
    since_plain: usize,
    calibration: CalibratedBound,
    /// Decayed counts of the levels of first draft tokens, declined or not.
    first_levels: [f64; LEVELS],
    skipped: usize,
    /// Whether the round in progress is a probe of a closed gate.
    probing: bool,
    /// The round in progress: draft steps, the drafted tokens' entropies,
    /// `P_j` and `E_j`.
    steps: usize,
    entropies: Vec<f64>,
    all_accepted: f64,
    expected: f64,
}

impl CostAwareAdaEdl {
    /// The policy for draft step cost `draft_cost = c ≥ 0` and marginal
    /// verify cost `verify_cost = c_v ≥ 0` for every draft token, in
    /// target steps. `c = 0` suits a drafter without a model, such as
    /// [`PromptLookup`](crate::PromptLookup), whose proposals cost a scan of
    /// the context (microseconds against a step's milliseconds): the rule
    /// then weighs the expected tokens against the verify pass alone.
    ///
    /// # Errors
    /// `γ ≤ 0`, `w ≤ 0`, `forget` outside `(0, 1]`, initial acceptance outside `[0, 1]`, `L_max = 0`, `probe_every = 0`,
    /// `retime_every = 0`, `c < 0` or `c_v < 0` (or any not finite); with
    /// `measure_costs`, `L_max + 1` over
    /// [`MAX_TIMED_PASS`](crate::round_timing::MAX_TIMED_PASS).
    pub fn new(config: CostAwareConfig, draft_cost: f64, verify_cost: f64) -> Result<Self> {
        Self::with_pass_costs(config, draft_cost, PassCosts::linear(verify_cost)?)
    }

    /// The policy for draft step cost `draft_cost = c ≥ 0` and the verify
    /// pass's cost by its length, `verify` (measured: a CPU's pass is not
    /// linear in its tokens, [`PassCosts`]).
    ///
    /// ```
    /// use lastmile_spec_decode::{CostAwareAdaEdl, CostAwareConfig, DraftPolicy, DraftStepInfo, PassCosts};
    /// // Passes over up to 4 tokens cost one step, the 5th token a whole step.
    /// let costs = PassCosts::from_times(&[1.0, 1.0, 1.0, 1.0, 2.0])?;
    /// let config = CostAwareConfig { initial_acceptance: 0.9, ..CostAwareConfig::default() };
    /// let mut p = CostAwareAdaEdl::with_pass_costs(config, 0.05, costs)?;
    /// p.round_limit();
    /// let sure = DraftStepInfo { entropy: 0.01, top_prob: 0.99 };
    /// let drafted = (0..8).take_while(|&j| p.worth_a_step(j) && p.continue_drafting(j, &sure)).count();
    /// assert_eq!(drafted, 3); // the 4th would double the pass
    /// # Ok::<(), lastmile_spec_decode::SpecDecodeError>(())
    /// ```
    ///
    /// # Errors
    /// As [`CostAwareAdaEdl::new`].
    pub fn with_pass_costs(
        config: CostAwareConfig,
        draft_cost: f64,
        verify: PassCosts,
    ) -> Result<Self> {
        let calibration = CalibratedBound::new(
            config.gamma,
            config.prior_weight,
            config.forget,
            config.initial_acceptance,
        )?;
        check_at_least("max_len", config.max_len, 1)?;
        check_at_least("probe_every", config.probe_every, 1)?;
        check_at_least("retime_every", config.retime_every, 1)?;
        let c = check_interval("draft_cost", draft_cost, Included(0.0), Unbounded)?;
        Ok(Self {
            config,
            draft_cost: c,
            prior: (c, verify.clone()),
            verify,
            // Passes verify up to L_max drafts and the pending token.
            measured: if config.measure_costs {
                Some(InLoopCosts::new(config.max_len.saturating_add(1))?)
            } else {
                None
            },
            rounds: 0,
            plain: 0,
            since_plain: 0,
            calibration,
            first_levels: [0.0; LEVELS],
            skipped: 0,
            probing: false,
            steps: 0,
            entropies: Vec::with_capacity(config.max_len),
            all_accepted: 1.0,
            expected: 1.0,
        })
    }

    /// The acceptance estimates learned so far.
    pub fn calibration(&self) -> &CalibratedBound {
        &self.calibration
    }

    /// The costs the policy weighs now, in plain steps: the draft step's
    /// `c` and the pass by its length (the given ones, or the measured
    /// ones with [`CostAwareConfig::measure_costs`]).
    ///
    /// ```
    /// use lastmile_spec_decode::{CostAwareAdaEdl, CostAwareConfig, DraftPolicy, RoundTiming};
    /// let config = CostAwareConfig { measure_costs: true, ..CostAwareConfig::default() };
    /// let mut p = CostAwareAdaEdl::new(config, 0.1, 0.05)?;
    /// assert_eq!(p.costs().0, 0.1); // the given cost until a plain step is timed
    /// p.observe_timing(&RoundTiming { draft_calls: 0, draft_seconds: 0.0, pass_tokens: 1, verify_seconds: 4e-3 });
    /// p.observe_timing(&RoundTiming { draft_calls: 1, draft_seconds: 1e-3, pass_tokens: 2, verify_seconds: 5e-3 });
    /// let (c, pass) = p.costs();
    /// assert!((c - 0.25).abs() < 1e-9 && (pass.verify(1) - 1.25).abs() < 1e-9);
    /// # Ok::<(), lastmile_spec_decode::SpecDecodeError>(())
    /// ```
    pub fn costs(&self) -> (f64, &PassCosts) {
        (self.draft_cost, &self.verify)
    }

    /// Whether running the draft is expected to beat plain decoding, by the
    /// levels of recent first tokens and their estimates.
    ///
    /// ```
    /// use lastmile_spec_decode::{CostAwareAdaEdl, CostAwareConfig};
    /// let cheap = CostAwareAdaEdl::new(CostAwareConfig::default(), 0.05, 0.05).unwrap();
    /// assert!(cheap.speculation_pays()); // 1.4 tokens for 1.1 steps, before evidence
    /// let dear = CostAwareAdaEdl::new(CostAwareConfig::default(), 0.3, 0.3).unwrap();
    /// assert!(!dear.speculation_pays()); // 1.4 tokens for 1.6 steps
    /// ```
    pub fn speculation_pays(&self) -> bool {
        let (c, c_v) = (self.draft_cost, self.verify.marginal(0));
        let seen: f64 = self.first_levels.iter().sum();
        if seen <= 0.0 {
            let a = self.calibration.pooled();
            return (1..=self.config.max_len).any(|g| {
                CostModel::expected_tokens(a, g) / (g as f64 * c + self.verify.verify(g)) > 1.0
            });
        }
        let threshold = c_v / (1.0 + c);
        let gain: f64 = (0..LEVELS)
            .map(|k| (self.first_levels[k], self.calibration.estimate_at(k)))
            .filter(|&(_, a)| a >= threshold)
            .map(|(m, a)| m * (a - c_v))
            .sum();
        gain / seen > c
    }
}

impl CostAwareAdaEdl {
    /// Timed rounds allowed since the last plain step before the next
    /// round runs as one, with `measure_costs` ([`FIRST_RETIME`]).
    fn retime_gap(&self) -> usize {
        let doublings = self.plain.saturating_sub(SETTLING_STEPS).min(16) as u32;
        (FIRST_RETIME << doublings).min(self.config.retime_every)
    }

    /// Whether drafting token `drafted + 1` (estimate `a`), and possibly up
    /// to `L_max − drafted − 1` more at the same estimate, keeps the round's
    /// `E/C` (`spent` so far) from falling: some `k ≥ 1` with
    /// `P_j·(a + … + a^k) / ((k − 1)·c + v(j + k + 1) − v(j + 1)) ≥ E_j / C_j`
    /// (token `j + 1` is shown already; the `k − 1` steps show the others).
    /// At `k = 1` this is the per-position rule; longer runs matter where
    /// the pass's cost is not convex in its length (a CPU's register
    /// blocks: 7 tokens cost as much as 6, `docs/benchmarks.md`), where a
    /// token that does not pay alone opens a run that does. With convex
    /// costs no longer run passes where `k = 1` fails (each further token
    /// gains less and costs more).
    fn run_pays(&self, drafted: usize, a: f64, spent: f64) -> bool {
        let (mut all, mut gain) = (self.all_accepted, 0.0);
        let base = self.verify.verify(drafted);
        (1..=self.config.max_len.saturating_sub(drafted).max(1)).any(|k| {
            all *= a;
            gain += all;
            let cost = (k - 1) as f64 * self.draft_cost + self.verify.verify(drafted + k) - base;
            gain * spent >= self.expected * cost
        })
    }

    /// The best net gain of a run of `m ≥ 1` tokens at estimate `a` after
    /// `drafted` tokens, its cost priced at `rate` tokens a step and the
    /// draft step that shows its first token not counted: `max_m
    /// P_j·(a + … + a^m) − rate·((m − 1)·c + v(j + m + 1) − v(j + 1))`,
    /// `m ≤ L_max − j`.
    fn best_run_gain(&self, drafted: usize, a: f64, rate: f64) -> f64 {
        let (mut all, mut gain) = (self.all_accepted, 0.0);
        let base = self.verify.verify(drafted);
        (1..=self.config.max_len.saturating_sub(drafted).max(1))
            .map(|m| {
                all *= a;
                gain += all;
                let cost =
                    (m - 1) as f64 * self.draft_cost + self.verify.verify(drafted + m) - base;
                gain - rate * cost
            })
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

impl DraftPolicy for CostAwareAdaEdl {
    fn name(&self) -> String {
        if self.config.measure_costs {
            "cost-aware-adaedl-timed".to_owned()
        } else {
            "cost-aware-adaedl".to_owned()
        }
    }

    fn round_limit(&mut self) -> usize {
        self.steps = 0;
        self.entropies.clear();
        self.all_accepted = 1.0;
        self.expected = 1.0;
        self.probing = false;
        self.rounds += 1;
        if self.speculation_pays() {
            self.skipped = 0;
            // Measuring: time plain steps (the costs' unit) after the
            // prompt's round (the first), then now and then.
            let due = self.plain < SETTLING_STEPS || self.since_plain >= self.retime_gap();
            if self.measured.is_some() && self.rounds > 1 && due {
                return 0;
            }
            return self.config.max_len;
        }
        self.skipped += 1;
        self.probing = self.skipped.is_multiple_of(self.config.probe_every);
        if self.probing { self.config.max_len } else { 0 }
    }

    fn min_len(&self) -> usize {
        0
    }

    fn continue_drafting(&mut self, drafted: usize, next: &DraftStepInfo) -> bool {
        self.steps += 1;
        if drafted == 0 {
            for m in &mut self.first_levels {
                *m *= self.config.forget;
            }
            self.first_levels[self.calibration.level(next.entropy)] += 1.0;
        }
        let a = self.calibration.estimate(next.entropy);
        let marginal = self.all_accepted * a;
        let spent = self.steps as f64 * self.draft_cost + self.verify.verify(drafted);
        // A probe drafts at least one token: it is there to measure.
        let probe = self.probing && drafted == 0;
        if !probe && !self.run_pays(drafted, a, spent) {
            return false;
        }
        self.entropies.push(next.entropy);
        self.all_accepted = marginal;
        self.expected += marginal;
        true
    }

    fn worth_a_step(&self, drafted: usize) -> bool {
        let seen: f64 = self.first_levels.iter().sum();
        if drafted == 0 || seen <= 0.0 {
            return true;
        }
        // The round's yield so far, E_j / C_j: what a step must beat.
        let spent = self.steps as f64 * self.draft_cost + self.verify.verify(drafted);
        let rate = if spent > 0.0 {
            self.expected / spent
        } else {
            1.0
        };
        let gain: f64 = (0..LEVELS)
            .map(|k| {
                let a = self.calibration.estimate_at(k);
                self.first_levels[k] * self.best_run_gain(drafted, a, rate).max(0.0)
            })
            .sum();
        gain / seen > rate * self.draft_cost
    }

    fn observe(&mut self, outcome: RoundOutcome) {
        if self.steps == 0 {
            return; // the gate was closed: a plain target step
        }
        // Tokens up to the first rejection were verified with all before them accepted.
        let drafted = outcome.drafted.min(self.entropies.len());
        for (i, &h) in self.entropies[..drafted].iter().enumerate() {
            self.calibration.record(h, i < outcome.accepted);
            if i >= outcome.accepted {
                break;
            }
        }
        self.steps = 0;
    }

    fn observe_timing(&mut self, timing: &RoundTiming) {
        let Some(measured) = self.measured.as_mut() else {
            return;
        };
        measured.record(timing);
        if timing.is_plain_step() {
            self.plain += 1;
            self.since_plain = 0;
        } else {
            self.since_plain += 1;
        }
        // Times from the decoder are finite and positive; should the table
        // fail to build, the costs in use stay.
        if let Ok(Some((c, verify))) = measured.costs(self.prior.0, &self.prior.1) {
            self.draft_cost = c;
            self.verify = verify;
        }
    }

    fn clone_box(&self) -> Box<dyn DraftPolicy> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests;
