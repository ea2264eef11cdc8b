//! AdaEDL's entropy bound turned into an acceptance estimate, calibrated
//! online from the rounds a policy has seen verified.

use std::ops::Bound::{Excluded, Included};

use lastmile_core::validate::{check_in_range, check_interval, check_positive};

use crate::error::Result;

/// Levels (bins) of the bound in `[0, 1]`, each 0.1 wide.
///
/// ```
/// use lastmile_spec_decode::{CalibratedBound, LEVELS};
/// let c = CalibratedBound::new(0.2, 8.0, 0.998, 0.4).unwrap();
/// assert_eq!(c.level(0.0), LEVELS - 1); // bound 1: the top level
/// ```
pub const LEVELS: usize = 10;

/// The acceptance probability of a draft token as a function of AdaEDL's
/// entropy bound, learned from verified tokens.
///
/// AdaEDL (Agrawal et al. 2024, Eq. 5) bounds a draft token's acceptance
/// from below by `b = max(0, 1 − sqrt(γ·H)) `, `H` being the entropy of its
/// draft distribution. A bound is what a stopping rule with a fixed
/// threshold needs; weighing a token against what it costs needs its
/// expected acceptance, and for a draft whose entropy is high everywhere
/// the bound can sit far below it (the SmolLM2 feature draft: bound 0.1 at
/// `H = 4` nats, 38 % of such tokens accepted). This estimator keeps, per
/// bin of `b` (ten of width 0.1), decayed counts of verified tokens `n_k`
/// and of accepted ones `s_k`, and estimates a token in bin `k` by
/// shrinking its bin's rate towards the rate of all bins (empirical Bayes):
///
/// `p̄ = (Σ s + w·a₀) / (Σ n + w)`, `â_k = (s_k + w·p̄) / (n_k + w)`,
///
/// with prior weight `w` (in tokens) and initial acceptance `a₀`. A bin
/// with few tokens follows the draft's overall rate, one with many its own;
/// the bound orders the tokens, the counts say what each level means.
/// Counts decay by `forget` per recorded token, so the estimate follows a
/// text whose predictability changes.
///
/// A token is recorded only under the condition the policy cares about:
/// every token before it in its round was accepted (a round's outcome says
/// nothing about tokens after its first rejection).
///
/// ```
/// use lastmile_spec_decode::CalibratedBound;
/// let mut c = CalibratedBound::new(0.2, 2.0, 0.998, 0.7).unwrap();
/// assert_eq!(c.estimate(1.0), 0.7); // no evidence yet: a₀ at every entropy
/// for _ in 0..50 {
///     c.record(0.05, true); // confident tokens are accepted,
///     c.record(4.0, false); // unsure ones rejected
/// }
/// assert!(c.estimate(0.05) > 0.9 && c.estimate(4.0) < 0.1);
/// // A level never seen follows the overall rate (about one half).
/// assert!((c.estimate(1.0) - 0.5).abs() < 0.1);
/// ```
#[derive(Clone, Debug)]
pub struct CalibratedBound {
    gamma: f64,
    prior_weight: f64,
    forget: f64,
    initial: f64,
    accepted: [f64; LEVELS],
    trials: [f64; LEVELS],
}

impl CalibratedBound {
    /// An estimator for AdaEDL's scale `γ > 0`, prior weight `w > 0` (in
    /// tokens), per-token decay `forget ∈ (0, 1]` (1 never forgets) and
    /// initial acceptance `a₀ ∈ [0, 1]`.
    ///
    /// # Errors
    /// Any argument out of range or not finite.
    pub fn new(gamma: f64, prior_weight: f64, forget: f64, initial: f64) -> Result<Self> {
        Ok(Self {
            gamma: check_positive("gamma", gamma)?,
            prior_weight: check_positive("prior_weight", prior_weight)?,
            forget: check_interval("forget", forget, Excluded(0.0), Included(1.0))?,
            initial: check_in_range("initial_acceptance", initial, 0.0, 1.0)?,
            accepted: [0.0; LEVELS],
            trials: [0.0; LEVELS],
        })
    }

    /// AdaEDL's lower bound `max(0, 1 − sqrt(γ·H))` for entropy `H` (nats).
    ///
    /// ```
    /// let c = lastmile_spec_decode::CalibratedBound::new(0.2, 8.0, 0.998, 0.4).unwrap();
    /// assert!((c.bound(1.25) - 0.5).abs() < 1e-12);
    /// assert_eq!(c.bound(10.0), 0.0);
    /// ```
    pub fn bound(&self, entropy: f64) -> f64 {
        (1.0 - (self.gamma * entropy.max(0.0)).sqrt()).max(0.0)
    }

    /// The estimated acceptance probability `â` of a token whose draft
    /// distribution has entropy `H`, given that the tokens before it in its
    /// round are accepted.
    pub fn estimate(&self, entropy: f64) -> f64 {
        self.estimate_at(self.level(entropy))
    }

    /// The level (`0..LEVELS`) of AdaEDL's bound for entropy `H`:
    /// `⌊10·b⌋`, the top one closed.
    ///
    /// ```
    /// let c = lastmile_spec_decode::CalibratedBound::new(0.2, 8.0, 0.998, 0.4).unwrap();
    /// assert_eq!(c.level(1.25), 5); // bound 0.5
    /// assert_eq!(c.level(10.0), 0); // bound 0
    /// ```
    pub fn level(&self, entropy: f64) -> usize {
        // The bound is in [0, 1]; the float-to-int cast saturates.
        ((self.bound(entropy) * LEVELS as f64) as usize).min(LEVELS - 1)
    }

    /// The estimated acceptance `â_k` of level `k` (`p̄` past the last).
    ///
    /// ```
    /// let mut c = lastmile_spec_decode::CalibratedBound::new(0.2, 8.0, 1.0, 0.4).unwrap();
    /// c.record(1.25, true); // level 5
    /// assert_eq!(c.estimate_at(5), c.estimate(1.25));
    /// assert!(c.estimate_at(5) > c.estimate_at(0)); // level 0 only follows p̄
    /// ```
    pub fn estimate_at(&self, level: usize) -> f64 {
        let (s, n) = match (self.accepted.get(level), self.trials.get(level)) {
            (Some(&s), Some(&n)) => (s, n),
            _ => (0.0, 0.0),
        };
        (s + self.prior_weight * self.pooled()) / (n + self.prior_weight)
    }

    /// The rate of all levels, `p̄`: the acceptance of a recorded token
    /// whatever its entropy.
    ///
    /// ```
    /// let mut c = lastmile_spec_decode::CalibratedBound::new(0.2, 8.0, 1.0, 0.4).unwrap();
    /// assert_eq!(c.pooled(), 0.4);
    /// for _ in 0..8 {
    ///     c.record(3.0, true);
    /// }
    /// assert!((c.pooled() - 0.7).abs() < 1e-12); // (8 + 8·0.4) / (8 + 8)
    /// ```
    pub fn pooled(&self) -> f64 {
        (self.accepted.iter().sum::<f64>() + self.prior_weight * self.initial)
            / (self.trials.iter().sum::<f64>() + self.prior_weight)
    }

    /// Records one verified token: its draft entropy and whether the target
    /// accepted it.
    ///
    /// ```
    /// let mut c = lastmile_spec_decode::CalibratedBound::new(0.2, 8.0, 1.0, 0.4).unwrap();
    /// c.record(2.0, false);
    /// assert!(c.estimate(2.0) < 0.4);
    /// ```
    pub fn record(&mut self, entropy: f64, accepted: bool) {
        for (s, n) in self.accepted.iter_mut().zip(&mut self.trials) {
            *s *= self.forget;
            *n *= self.forget;
        }
        let k = self.level(entropy);
        self.trials[k] += 1.0;
        if accepted {
            self.accepted[k] += 1.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    #[test]
    fn converges_to_each_bins_rate() {
        // Tokens of two kinds whose true acceptance is not the bound:
        // H = 0.05 (bound 0.90, accepted 60 %) and H = 3 (bound 0.23,
        // accepted 40 %). After 4 000 tokens each estimate is within 0.05
        // of its rate (the binomial sd of ~500 effective tokens is 0.022).
        let mut c = CalibratedBound::new(0.2, 2.0, 0.999, 0.7).expect("valid settings");
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..4000 {
            let (h, rate) = if rng.random::<bool>() {
                (0.05, 0.6)
            } else {
                (3.0, 0.4)
            };
            c.record(h, rng.random::<f64>() < rate);
        }
        assert!(
            (c.estimate(0.05) - 0.6).abs() < 0.05,
            "{}",
            c.estimate(0.05)
        );
        assert!((c.estimate(3.0) - 0.4).abs() < 0.05, "{}", c.estimate(3.0));
    }

    #[test]
    fn forgetting_follows_a_change() {
        let mut c = CalibratedBound::new(0.2, 2.0, 0.98, 0.7).expect("valid settings");
        for _ in 0..500 {
            c.record(0.5, true);
        }
        assert!(c.estimate(0.5) > 0.95);
        // 200 rejections: the accepted counts have decayed by 0.98^200.
        for _ in 0..200 {
            c.record(0.5, false);
        }
        assert!(c.estimate(0.5) < 0.05, "{}", c.estimate(0.5));
    }

    #[test]
    fn bad_settings_are_errors() {
        assert!(CalibratedBound::new(0.0, 2.0, 0.99, 0.7).is_err());
        assert!(CalibratedBound::new(0.2, 0.0, 0.99, 0.7).is_err());
        assert!(CalibratedBound::new(0.2, 2.0, 0.0, 0.7).is_err());
        assert!(CalibratedBound::new(0.2, 2.0, 1.5, 0.7).is_err());
        assert!(CalibratedBound::new(0.2, 2.0, 0.99, -0.1).is_err());
        assert!(CalibratedBound::new(0.2, f64::NAN, 0.99, 0.7).is_err());
        assert!(CalibratedBound::new(0.2, 2.0, 1.0, 0.0).is_ok());
    }
}
