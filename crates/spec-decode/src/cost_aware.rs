//! AdaEDL's entropy bound weighed by measured draft and verify costs: a
//! draft-length policy for devices where neither drafting nor verifying is
//! free (a CPU), designed in this project.

use lastmile_core::validate::{check_at_least, check_positive};

use crate::calibration::{CalibratedBound, LEVELS};
use crate::error::Result;
use crate::pass_cost::PassCosts;
use crate::policy::{CostModel, DraftPolicy, DraftStepInfo, RoundOutcome};

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
}

impl Default for CostAwareConfig {
    /// `γ = 0.2` (AdaEDL's), `w = 8`, `forget = 0.998` (about 500 tokens),
    /// initial acceptance 0.4, `L_max = 8`, a probe every 8 rounds. An
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
///   `P_j · a_{j+1} / (c + c_v(j)) ≥ E_j / C_j`. (Adding an item whose
///   marginal ratio is at least the current ratio never lowers the ratio.)
///   The first token is judged too (`min_len` 0).
/// - **Per round** (the gate). A round that runs the draft pays `c` for
///   its first token's distribution, then drafts the token if its level's
///   estimate `â_k` passes the rule above (at `j = 0`:
///   `â_k ≥ t = (c + c_v(0)) / (1 + c)`), gaining `â_k − c_v(0)` tokens over a
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
///   `j + 1`, which gains `P_j·â_k − c_v(j)` if its level is `k`. Taking the
///   levels of recent first tokens as its odds, the step is run when
///   `Σ_k π_k·max(0, P_j·â_k − c_v(j)) > c`. Without this a round whose first
///   token is drafted always paid one more draft step just to decline the
///   second.
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
/// let mut p = CostAwareAdaEdl::new(CostAwareConfig::default(), 0.1, 0.1).unwrap();
/// assert_eq!(p.min_len(), 0);
/// let sure = DraftStepInfo { entropy: 0.05, top_prob: 0.99 };
/// let unsure = DraftStepInfo { entropy: 4.0, top_prob: 0.05 };
/// // Rounds in which confident first tokens are accepted and unsure ones
/// // rejected teach it to decline unsure first tokens (â < c + c_v = 0.2).
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
    /// The policy for draft step cost `draft_cost = c > 0` and marginal
    /// verify cost `verify_cost = c_v ≥ 0` for every draft token, in
    /// target steps.
    ///
    /// # Errors
    /// `γ ≤ 0`, `w ≤ 0`, `forget` outside `(0, 1]`, initial acceptance outside `[0, 1]`, `L_max = 0`, `probe_every = 0`,
    /// `c ≤ 0` or `c_v < 0` (or any not finite).
    pub fn new(config: CostAwareConfig, draft_cost: f64, verify_cost: f64) -> Result<Self> {
        Self::with_pass_costs(config, draft_cost, PassCosts::linear(verify_cost)?)
    }

    /// The policy for draft step cost `draft_cost = c > 0` and the verify
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
        let c = check_positive("draft_cost", draft_cost)?;
        Ok(Self {
            config,
            draft_cost: c,
            verify,
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
        let threshold = (c + c_v) / (1.0 + c);
        let gain: f64 = (0..LEVELS)
            .map(|k| (self.first_levels[k], self.calibration.estimate_at(k)))
            .filter(|&(_, a)| a >= threshold)
            .map(|(m, a)| m * (a - c_v))
            .sum();
        gain / seen > c
    }
}

impl DraftPolicy for CostAwareAdaEdl {
    fn name(&self) -> String {
        "cost-aware-adaedl".to_owned()
    }

    fn round_limit(&mut self) -> usize {
        self.steps = 0;
        self.entropies.clear();
        self.all_accepted = 1.0;
        self.expected = 1.0;
        self.probing = false;
        if self.speculation_pays() {
            self.skipped = 0;
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
        let marginal = self.all_accepted * self.calibration.estimate(next.entropy);
        let spent = self.steps as f64 * self.draft_cost + self.verify.verify(drafted);
        // A probe drafts at least one token: it is there to measure.
        let probe = self.probing && drafted == 0;
        let cost = self.draft_cost + self.verify.marginal(drafted);
        if !probe && marginal * spent < self.expected * cost {
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
        let c_v = self.verify.marginal(drafted);
        let gain: f64 = (0..LEVELS)
            .map(|k| {
                let a = self.calibration.estimate_at(k);
                self.first_levels[k] * (self.all_accepted * a - c_v).max(0.0)
            })
            .sum();
        gain / seen > self.draft_cost
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

    fn clone_box(&self) -> Box<dyn DraftPolicy> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(entropy: f64) -> DraftStepInfo {
        DraftStepInfo {
            entropy,
            top_prob: 0.5,
        }
    }

    /// The policy at costs `c` and `c_v`, assuming acceptance 0.7 before
    /// evidence (the default 0.4 drafts a single token at most costs).
    fn policy(c: f64, c_v: f64) -> CostAwareAdaEdl {
        let config = CostAwareConfig {
            initial_acceptance: 0.7,
            ..CostAwareConfig::default()
        };
        CostAwareAdaEdl::new(config, c, c_v).unwrap_or_else(|e| panic!("{e}"))
    }

    /// One round drafting from `entropies` until the policy stops, of which
    /// the first `accepted` drafted tokens are accepted; returns the length.
    fn round(p: &mut CostAwareAdaEdl, entropies: &[f64], accepted: usize) -> usize {
        let limit = p.round_limit().min(entropies.len());
        let drafted = (0..limit)
            .take_while(|&j| p.worth_a_step(j) && p.continue_drafting(j, &info(entropies[j])))
            .count();
        p.observe(RoundOutcome {
            drafted,
            accepted: accepted.min(drafted),
        });
        drafted
    }

    #[test]
    fn costlier_verification_drafts_shorter() {
        // No evidence yet: acceptance 0.7 assumed at every position.
        let lengths: Vec<usize> = [0.02, 0.1, 0.3, 0.45]
            .iter()
            .map(|&c_v| round(&mut policy(0.05, c_v), &[0.2; 8], 0))
            .collect();
        assert!(lengths.windows(2).all(|w| w[0] >= w[1]), "{lengths:?}");
        assert!(lengths[0] > lengths[3], "{lengths:?}");
        assert!(lengths[3] >= 1, "{lengths:?}");
    }

    #[test]
    fn first_tokens_of_a_rejected_level_are_declined() {
        // Confident tokens accepted, unsure ones rejected: the unsure level's
        // estimate falls below c + c_v and its first tokens are declined,
        // while confident ones are still drafted.
        let mut p = policy(0.1, 0.15);
        for _ in 0..30 {
            round(&mut p, &[0.05], 1);
            round(&mut p, &[4.0], 0);
        }
        assert!(p.speculation_pays());
        assert_eq!(round(&mut p.clone(), &[4.0; 8], 0), 0);
        assert!(round(&mut p, &[0.05; 8], 0) >= 1);
        // Declined since its estimate fell below (c + c_v) / (1 + c).
        assert!(p.calibration().estimate(4.0) * 1.1 < 0.25);
        assert!(p.calibration().estimate(0.05) > 0.8);
    }

    #[test]
    fn stop_rule_keeps_the_round_yield_from_falling() {
        // Along any entropy path, a token is drafted exactly when it keeps
        // E/C from falling, C = s·c + v(j + 1) counting every draft step
        // run: with one marginal verify cost, and with a measured pass that
        // is flat for a few tokens and then dear.
        let c = 0.1;
        let flat_then_dear = [1.0, 1.0, 1.02, 1.02, 1.5, 1.9, 2.3, 2.7, 3.1];
        for costs in [
            PassCosts::linear(0.15).unwrap_or_else(|e| panic!("{e}")),
            PassCosts::from_times(&flat_then_dear).unwrap_or_else(|e| panic!("{e}")),
        ] {
            let config = CostAwareConfig {
                initial_acceptance: 0.7,
                ..CostAwareConfig::default()
            };
            let mut p = CostAwareAdaEdl::with_pass_costs(config, c, costs.clone())
                .unwrap_or_else(|e| panic!("{e}"));
            for _ in 0..20 {
                // Acceptance falls with entropy: 0.9 below 0.2 nats, 0.2 above.
                round(&mut p, &[0.01], 1);
                round(&mut p, &[0.02, 1.0], 1);
                round(&mut p, &[0.05, 0.01, 0.03, 0.02, 0.01, 0.4], 4);
                round(&mut p, &[1.0], 0);
            }
            p.round_limit();
            let (mut all, mut expected) = (1.0f64, 1.0f64);
            let mut drafted = 0;
            for (j, h) in [0.01, 0.1, 0.05, 0.4, 0.3, 1.0].into_iter().enumerate() {
                let before = expected / ((j + 1) as f64 * c + costs.verify(j));
                let next = all * p.calibration().estimate(h);
                // Drafting token j + 1 also runs the draft step that shows token j + 2.
                let after = (expected + next) / ((j + 2) as f64 * c + costs.verify(j + 1));
                let drafts = p.continue_drafting(j, &info(h));
                assert_eq!(
                    drafts,
                    after >= before - 1e-12,
                    "{costs:?}, token {}: {before} -> {after}",
                    j + 1
                );
                if !drafts {
                    break;
                }
                drafted += 1;
                all = next;
                expected += next;
            }
            assert!((1..6).contains(&drafted), "{costs:?}: {drafted}");
        }
    }

    #[test]
    fn calibration_lengthens_drafts_of_an_accepted_level() {
        // Entropy 2 (bound 0.37) at c = 0.1, c_v = 0.2: at the assumed
        // acceptance 0.7 the policy drafts two tokens. Rounds in which such
        // tokens are always accepted teach it to draft more.
        let mut p = policy(0.1, 0.2);
        let lengths: Vec<usize> = (0..30).map(|_| round(&mut p, &[2.0; 8], 8)).collect();
        assert_eq!(lengths[0], 2);
        assert_eq!(lengths[29], 8, "{lengths:?}");
        assert!(p.calibration().estimate(2.0) > 0.9);
    }

    #[test]
    fn a_second_draft_step_is_run_only_when_it_may_pay() {
        // First tokens accepted 38 % of the time at every level: after one
        // drafted token (P_1 = 0.38) a second gains at most
        // 0.38² − c_v = 0.02 < c, so no draft step is spent on it.
        let mut p = policy(0.12, 0.12);
        for i in 0..100 {
            round(&mut p, &[3.0], usize::from(i % 50 < 19));
        }
        p.round_limit();
        assert!(p.continue_drafting(0, &info(3.0)));
        assert!(!p.worth_a_step(1));
        // A confident first token (P_1 = 0.95 after such tokens were
        // accepted) makes the next step worth running.
        for _ in 0..40 {
            round(&mut p, &[0.01], 1);
        }
        p.round_limit();
        assert!(p.continue_drafting(0, &info(0.01)));
        assert!(p.worth_a_step(1));
    }

    #[test]
    fn rejected_rounds_close_the_gate() {
        // Confident tokens (bound 0.86) that the target rejects: the gate
        // closes within a few rounds (no draft step), and the probes every
        // 8th round each draft one token.
        let mut p = policy(0.1, 0.1);
        let lengths: Vec<usize> = (0..80).map(|_| round(&mut p, &[0.1; 8], 0)).collect();
        assert!(lengths[0] > 1, "{lengths:?}");
        assert!(!p.speculation_pays());
        let late = &lengths[8..];
        assert!(late.iter().all(|&g| g <= 1), "{lengths:?}");
        assert!(
            late.iter().filter(|&&g| g == 1).count() <= late.len() / 8 + 1,
            "{lengths:?}"
        );
        // Below c + c_v: the estimate stops an open gate's first token too.
        let before = p.calibration().estimate(0.1);
        assert!(before * 1.1 < 0.2, "{before}");
        let limits: Vec<usize> = (0..8).map(|_| p.round_limit()).collect();
        assert_eq!(limits.iter().filter(|&&l| l > 0).count(), 1, "{limits:?}");
    }

    #[test]
    fn gate_reopens_when_probes_are_accepted() {
        let mut p = policy(0.2, 0.25);
        for _ in 0..30 {
            round(&mut p, &[0.1; 8], 0);
        }
        assert!(!p.speculation_pays());
        // Only probes draft; fully accepted probes reopen the gate.
        let mut probes = 0;
        for _ in 0..200 {
            if p.speculation_pays() {
                break;
            }
            if round(&mut p, &[0.1; 8], 8) > 0 {
                probes += 1;
            }
        }
        assert!(
            p.speculation_pays(),
            "closed after {probes} accepted probes"
        );
        assert!(probes <= 12, "{probes} probes to reopen");
        assert_eq!(p.round_limit(), 8);
    }

    #[test]
    fn bad_settings_are_errors() {
        let c = CostAwareConfig::default();
        assert!(CostAwareAdaEdl::new(c, 0.0, 0.1).is_err());
        assert!(CostAwareAdaEdl::new(c, 0.1, -0.1).is_err());
        assert!(CostAwareAdaEdl::new(c, f64::NAN, 0.1).is_err());
        let bad = [
            CostAwareConfig { gamma: 0.0, ..c },
            CostAwareConfig {
                prior_weight: 0.0,
                ..c
            },
            CostAwareConfig { forget: 0.0, ..c },
            CostAwareConfig {
                initial_acceptance: 1.5,
                ..c
            },
            CostAwareConfig { max_len: 0, ..c },
            CostAwareConfig {
                probe_every: 0,
                ..c
            },
        ];
        for b in bad {
            assert!(CostAwareAdaEdl::new(b, 0.1, 0.1).is_err(), "{b:?}");
        }
    }
}
