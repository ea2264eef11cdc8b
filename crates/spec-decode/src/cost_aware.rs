//! AdaEDL's entropy bound weighed by measured draft and verify costs: a
//! draft-length policy for devices where neither drafting nor verifying is
//! free (a CPU), designed in this project.

use std::ops::Bound::{Excluded, Included, Unbounded};

use lastmile_core::validate::{check_at_least, check_in_range, check_interval, check_positive};

use crate::error::Result;
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
    /// EMA factor `β` of the per-token acceptance estimate `â`.
    pub beta: f64,
    /// Initial `â`, before any round was verified.
    pub initial_acceptance: f64,
    /// Longest draft `L_max`.
    pub max_len: usize,
    /// While speculation does not pay, every `probe_every`-th round drafts
    /// anyway, so that `â` can follow a text that becomes predictable.
    pub probe_every: usize,
}

impl Default for CostAwareConfig {
    /// `γ = 0.2` (AdaEDL's), `β = 0.9`, `â₀ = 0.7`, `L_max = 8`, a probe
    /// every 8 rounds. `β = 0.9` remembers about ten rounds: with `β = 0.5`
    /// three rejected rounds in a row (42 % likely at an acceptance of 0.25,
    /// where speculation still pays) closed the gate for 7 rounds.
    fn default() -> Self {
        Self {
            gamma: 0.2,
            beta: 0.9,
            initial_acceptance: 0.7,
            max_len: 8,
            probe_every: 8,
        }
    }
}

/// AdaEDL with costs: drafts a token when the tokens it is expected to add
/// pay for what it costs, judged from its entropy and the measured costs.
///
/// With `c` the cost of a draft step and `c_v` the marginal cost of one more
/// token in the target's verify pass (both in target steps, measured on the
/// device):
///
/// - **Per position** (AdaEDL's rule, Agrawal et al. 2024, with costs for
///   its fixed threshold λ). Token `i`'s acceptance is bounded below by
///   `b_i = max(0, 1 − sqrt(γ·H_i))` from the entropy `H_i` of its draft
///   distribution. After `j` drafted tokens, all `j` are accepted with
///   probability at least `P_j = b_1 ⋯ b_j`, and the round is expected to
///   yield `E_j = 1 + P_1 + … + P_j` tokens for a cost of
///   `C_j = 1 + j·(c + c_v)`. Token `j + 1` is drafted when its own yield
///   per cost is at least the round's so far:
///   `P_j · b_{j+1} / (c + c_v) ≥ E_j / C_j`. (Adding an item whose
///   marginal ratio is at least the current ratio never lowers the ratio.)
///   The first token is judged too (`min_len` 0): its draft step is spent,
///   its verification is not.
/// - **Per round** (Leviathan et al. 2023, Eq. 1, with the verify cost as in
///   [`CostModel`]). From an EMA `â` of the per-token acceptance rate,
///   speculation pays when some `g ≥ 1` gives
///   `E(â, g) / (1 + g·(c + c_v)) > 1`, one token per target step being what
///   plain decoding gives. When none does, the round drafts nothing and
///   costs no draft step (the draft model catches up on the skipped tokens
///   in one forward when drafting resumes), except every
///   [`probe_every`](CostAwareConfig::probe_every)-th such round, which
///   drafts to measure `â` again.
///
/// AdaEDL's fixed threshold λ (0.7) asks for the same acceptance bound
/// whatever drafting and verifying cost; this rule asks for less when they
/// are cheap and declines to speculate when no draft length pays. Like every
/// policy here it reads only the draft's distributions and past rounds'
/// counts, so speculative sampling stays exact.
///
/// ```
/// use lastmile_spec_decode::{CostAwareAdaEdl, CostAwareConfig, DraftPolicy, DraftStepInfo, RoundOutcome};
/// let mut p = CostAwareAdaEdl::new(CostAwareConfig::default(), 0.1, 0.1).unwrap();
/// assert_eq!(p.min_len(), 0);
/// // A confident first token (bound 0.9 ≥ c + c_v = 0.2) is drafted, an unsure one is not.
/// assert!(p.continue_drafting(0, &DraftStepInfo { entropy: 0.05, top_prob: 0.99 }));
/// let mut q = p.clone();
/// assert!(!q.continue_drafting(0, &DraftStepInfo { entropy: 4.0, top_prob: 0.05 }));
/// // Rounds that accept nothing close the gate: the next rounds draft nothing.
/// for _ in 0..20 {
///     p.round_limit();
///     p.observe(RoundOutcome { drafted: 4, accepted: 0 });
/// }
/// assert_eq!(p.round_limit(), 0);
/// ```
#[derive(Clone, Debug)]
pub struct CostAwareAdaEdl {
    config: CostAwareConfig,
    cost: f64,
    acceptance: f64,
    skipped: usize,
    /// `P_j` and `E_j` of the round in progress.
    all_accepted: f64,
    expected: f64,
}

impl CostAwareAdaEdl {
    /// The policy for draft step cost `draft_cost = c > 0` and marginal
    /// verify cost `verify_cost = c_v ≥ 0`, in target steps.
    ///
    /// # Errors
    /// `γ ≤ 0`, `β` outside `[0, 1)`, `â₀` outside `[0, 1]`, `L_max = 0`,
    /// `probe_every = 0`, `c ≤ 0` or `c_v < 0` (or any not finite).
    pub fn new(config: CostAwareConfig, draft_cost: f64, verify_cost: f64) -> Result<Self> {
        check_positive("gamma", config.gamma)?;
        check_interval("beta", config.beta, Included(0.0), Excluded(1.0))?;
        check_in_range("initial_acceptance", config.initial_acceptance, 0.0, 1.0)?;
        check_at_least("max_len", config.max_len, 1)?;
        check_at_least("probe_every", config.probe_every, 1)?;
        let c = check_positive("draft_cost", draft_cost)?;
        let c_v = check_interval("verify_cost", verify_cost, Included(0.0), Unbounded)?;
        Ok(Self {
            acceptance: config.initial_acceptance,
            config,
            cost: c + c_v,
            skipped: 0,
            all_accepted: 1.0,
            expected: 1.0,
        })
    }

    /// The per-token acceptance estimate `â`.
    pub fn acceptance(&self) -> f64 {
        self.acceptance
    }

    /// Whether some draft length is expected to beat plain decoding at `â`.
    ///
    /// ```
    /// use lastmile_spec_decode::{CostAwareAdaEdl, CostAwareConfig};
    /// let cheap = CostAwareAdaEdl::new(CostAwareConfig::default(), 0.05, 0.05).unwrap();
    /// assert!(cheap.speculation_pays()); // â = 0.7 pays when a round costs little
    /// let dear = CostAwareAdaEdl::new(CostAwareConfig::default(), 0.5, 0.5).unwrap();
    /// assert!(!dear.speculation_pays()); // at c + c_v = 1 no length pays at â = 0.7
    /// assert_eq!(dear.acceptance(), 0.7);
    /// ```
    pub fn speculation_pays(&self) -> bool {
        (1..=self.config.max_len).any(|g| {
            CostModel::expected_tokens(self.acceptance, g) / (1.0 + g as f64 * self.cost) > 1.0
        })
    }
}

impl DraftPolicy for CostAwareAdaEdl {
    fn name(&self) -> String {
        "cost-aware-adaedl".to_owned()
    }

    fn round_limit(&mut self) -> usize {
        self.all_accepted = 1.0;
        self.expected = 1.0;
        if self.speculation_pays() {
            self.skipped = 0;
            return self.config.max_len;
        }
        self.skipped += 1;
        if self.skipped.is_multiple_of(self.config.probe_every) {
            self.config.max_len
        } else {
            0
        }
    }

    fn min_len(&self) -> usize {
        0
    }

    fn continue_drafting(&mut self, drafted: usize, next: &DraftStepInfo) -> bool {
        let bound = (1.0 - (self.config.gamma * next.entropy.max(0.0)).sqrt()).max(0.0);
        let marginal = self.all_accepted * bound;
        let round_cost = 1.0 + drafted as f64 * self.cost;
        if marginal * round_cost < self.expected * self.cost {
            return false;
        }
        self.all_accepted = marginal;
        self.expected += marginal;
        true
    }

    fn observe(&mut self, outcome: RoundOutcome) {
        if outcome.drafted == 0 {
            return;
        }
        // As CostModel: n of g accepted were n + 1 trials (n if all were).
        let trials = outcome.accepted + usize::from(outcome.accepted < outcome.drafted);
        let rate = outcome.accepted as f64 / trials as f64;
        self.acceptance = self.config.beta * self.acceptance + (1.0 - self.config.beta) * rate;
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

    fn policy(c: f64, c_v: f64) -> CostAwareAdaEdl {
        CostAwareAdaEdl::new(CostAwareConfig::default(), c, c_v).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Drafts with entropy `h` at every position until the policy stops.
    fn length(p: &mut CostAwareAdaEdl, h: f64) -> usize {
        let limit = p.round_limit();
        (0..limit)
            .take_while(|&j| p.continue_drafting(j, &info(h)))
            .count()
    }

    #[test]
    fn costlier_verification_drafts_shorter() {
        // Entropy 0.2: bound 0.8 at every position.
        let lengths: Vec<usize> = [0.02, 0.1, 0.3, 0.6]
            .iter()
            .map(|&c_v| length(&mut policy(0.05, c_v), 0.2))
            .collect();
        assert!(lengths.windows(2).all(|w| w[0] >= w[1]), "{lengths:?}");
        assert!(lengths[0] > lengths[3], "{lengths:?}");
        // A bound below c + c_v declines even the first token.
        assert_eq!(length(&mut policy(0.3, 0.4), 2.0), 0);
    }

    #[test]
    fn stop_rule_keeps_the_round_yield_from_falling() {
        // Along any entropy path, each drafted token keeps E/C non-decreasing.
        let mut p = policy(0.1, 0.15);
        p.round_limit();
        let cost = 0.25;
        let (mut all, mut expected) = (1.0f64, 1.0f64);
        for (j, h) in [0.01, 0.1, 0.05, 0.4, 0.3, 1.0].into_iter().enumerate() {
            if !p.continue_drafting(j, &info(h)) {
                break;
            }
            let before = expected / (1.0 + j as f64 * cost);
            all *= 1.0 - (0.2 * h).sqrt();
            expected += all;
            assert!(expected / (1.0 + (j + 1) as f64 * cost) >= before - 1e-12);
        }
    }

    #[test]
    fn gate_closes_on_rejections_probes_and_reopens() {
        let mut p = policy(0.2, 0.25);
        assert!(p.speculation_pays());
        for _ in 0..8 {
            p.observe(RoundOutcome {
                drafted: 3,
                accepted: 0,
            });
        }
        assert!(!p.speculation_pays());
        // Seven rounds without drafting, then a probe.
        let limits: Vec<usize> = (0..8).map(|_| p.round_limit()).collect();
        assert_eq!(limits, [0, 0, 0, 0, 0, 0, 0, 8]);
        // Probes that are fully accepted reopen the gate (three at β = 0.9).
        for _ in 0..3 {
            p.observe(RoundOutcome {
                drafted: 8,
                accepted: 8,
            });
        }
        assert!(p.speculation_pays());
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
            CostAwareConfig { beta: 1.0, ..c },
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
