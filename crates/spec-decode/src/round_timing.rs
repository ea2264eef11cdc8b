//! What decoding rounds cost inside the loop, timed by the decoder: the
//! costs a cost-aware policy weighs, measured where they are paid.

use std::time::Instant;

use lastmile_core::validate::check_in_range;

use crate::decoder::Row;
use crate::drafter::Draft;
use crate::error::Result;
use crate::pass_cost::PassCosts;

/// Longest pass [`InLoopCosts`] times (its table holds one mean per length).
pub const MAX_TIMED_PASS: usize = 1024;

/// One round's wall times, as [`SpeculativeDecoder`](crate::SpeculativeDecoder)
/// measured them and reports them to every active sequence's policy
/// ([`DraftPolicy::observe_timing`](crate::DraftPolicy::observe_timing)).
/// With a batch, the times are the batch's round. The prompt's round is
/// not reported (its pass is the prompt's).
///
/// ```
/// use lastmile_spec_decode::RoundTiming;
/// let plain = RoundTiming { draft_calls: 0, draft_seconds: 0.0, pass_tokens: 1, verify_seconds: 3.1e-3 };
/// assert!(plain.is_plain_step());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoundTiming {
    /// Draft-model forwards this sequence ran in the round (a drafter
    /// catching up on skipped tokens counts its one forward).
    pub draft_calls: usize,
    /// Seconds spent drafting: the drafter's forwards and its host work.
    pub draft_seconds: f64,
    /// Tokens in the target's pass (for one sequence, its pending token and
    /// the drafted ones).
    pub pass_tokens: usize,
    /// Seconds from the end of drafting to the end of the round: the
    /// target's pass, verification and commit.
    pub verify_seconds: f64,
}

impl RoundTiming {
    /// A round that ran no draft and passed one token: a plain decoding
    /// step, the unit of every cost.
    ///
    /// ```
    /// use lastmile_spec_decode::RoundTiming;
    /// let declined = RoundTiming { draft_calls: 1, draft_seconds: 3e-4, pass_tokens: 1, verify_seconds: 3.1e-3 };
    /// assert!(!declined.is_plain_step()); // the draft ran, its token declined
    /// ```
    pub fn is_plain_step(&self) -> bool {
        self.draft_calls == 0 && self.pass_tokens == 1
    }
}

/// A decayed mean that follows a machine whose speed drifts: each new
/// sample weighs `1 − forget` of the whole once enough have been seen, and
/// a sample over [`OUTLIER`] times the mean (the round was preempted) is
/// clipped to that.
#[derive(Clone, Copy, Debug, Default)]
struct Decayed {
    weight: f64,
    sum: f64,
}

/// Samples beyond this multiple of the mean are clipped to it.
const OUTLIER: f64 = 3.0;
/// Weight of the past per new sample (about the last ten samples count).
const FORGET: f64 = 0.9;
/// Samples needed before outliers are clipped.
const SETTLED: f64 = 3.0;

impl Decayed {
    fn record(&mut self, value: f64, weight: f64) {
        let value = match self.mean() {
            Some(m) if self.weight >= SETTLED => value.min(OUTLIER * m * weight),
            _ => value,
        };
        self.weight = FORGET * self.weight + weight;
        self.sum = FORGET * self.sum + value;
    }

    fn mean(&self) -> Option<f64> {
        (self.weight > 0.0).then(|| self.sum / self.weight)
    }
}

/// Plain steps whose times make the unit ([`InLoopCosts`]).
const UNIT_SAMPLES: usize = 3;

/// The median of the last [`UNIT_SAMPLES`] plain steps' times: the unit
/// of every cost. Plain steps are timed only now and then, so the unit
/// must follow the latest of them: a decayed mean like the passes' kept
/// the first plain steps of a generation, timed right after the prompt's
/// pass, when a step of SmolLM2-135M on an Intel Xeon ran 1.5–1.8× slower
/// for about ten steps (`docs/benchmarks.md`, session 38), for all of a
/// 128-token generation, and every cost looked ~25 % cheaper than it was.
/// The median also ignores one preempted step.
#[derive(Clone, Copy, Debug, Default)]
struct RecentMedian {
    last: [f64; UNIT_SAMPLES],
    seen: usize,
}

impl RecentMedian {
    fn record(&mut self, value: f64) {
        self.last[self.seen % UNIT_SAMPLES] = value;
        self.seen += 1;
    }

    fn median(&self) -> Option<f64> {
        let mut v = self.last;
        let v = &mut v[..self.seen.min(UNIT_SAMPLES)];
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => None,
            2 => Some(0.5 * (v[0] + v[1])),
            n => Some(v[n / 2]),
        }
    }
}

/// The draft step cost `c` and the verify pass's costs `v(k)` measured in
/// the decoding loop, in plain decoding steps timed in the same loop.
///
/// Costs measured outside the loop (passes timed back to back, a draft
/// step timed after a target step) miss what a round adds: its host work
/// (at T > 0, tempering and sampling rows of the whole vocabulary), the
/// caches the other model left cold, the decoder's bookkeeping. On 2 cores
/// of an Intel Xeon a 2-token pass timed back to back cost 1.06 steps and
/// 1.12–1.15 steps inside rounds (`docs/benchmarks.md`, session 22). This
/// estimator keeps decayed means of the seconds a draft call and a pass of
/// each length took in rounds the decoder timed ([`RoundTiming`]), and
/// prices them in the mean time of a plain step; lengths never timed keep
/// the prior's cost, scaled as the longest timed length below them.
///
/// ```
/// use lastmile_spec_decode::{InLoopCosts, PassCosts, RoundTiming};
/// let prior = PassCosts::linear(0.05)?;
/// let mut m = InLoopCosts::new(4)?;
/// assert!(m.costs(0.1, &prior)?.is_none()); // no plain step timed yet
/// for _ in 0..5 {
///     m.record(&RoundTiming { draft_calls: 0, draft_seconds: 0.0, pass_tokens: 1, verify_seconds: 4e-3 });
///     m.record(&RoundTiming { draft_calls: 1, draft_seconds: 8e-4, pass_tokens: 2, verify_seconds: 4.8e-3 });
/// }
/// let (c, v) = m.costs(0.1, &prior)?.unwrap();
/// assert!((c - 0.2).abs() < 1e-9); // a draft call: 0.8 of 4 ms
/// assert!((v.verify(1) - 1.2).abs() < 1e-9); // the 2-token pass, timed
/// // 3 tokens were never timed: the prior's 1.1, scaled by 1.2 / 1.05.
/// assert!((v.verify(2) - 1.1 * 1.2 / 1.05).abs() < 1e-9);
/// # Ok::<(), lastmile_spec_decode::SpecDecodeError>(())
/// ```
#[derive(Clone, Debug)]
pub struct InLoopCosts {
    draft: Decayed,
    /// The unit: plain steps.
    unit: RecentMedian,
    /// `pass[k − 2]`: passes over `k ≥ 2` tokens.
    pass: Vec<Decayed>,
}

impl InLoopCosts {
    /// An estimator for passes over up to `max_pass` tokens (longer passes
    /// are not timed).
    ///
    /// ```
    /// use lastmile_spec_decode::InLoopCosts;
    /// assert!(InLoopCosts::new(9).is_ok());
    /// assert!(InLoopCosts::new(0).is_err()); // no pass to time
    /// assert!(InLoopCosts::new(1 << 20).is_err()); // over MAX_TIMED_PASS
    /// ```
    ///
    /// # Errors
    /// `max_pass` outside `1..=`[`MAX_TIMED_PASS`].
    pub fn new(max_pass: usize) -> Result<Self> {
        check_in_range("max_pass", max_pass as f64, 1.0, MAX_TIMED_PASS as f64)?;
        Ok(Self {
            draft: Decayed::default(),
            unit: RecentMedian::default(),
            pass: vec![Decayed::default(); max_pass - 1],
        })
    }

    /// Takes one round's times. Rounds with non-finite or negative times
    /// are ignored, and so is the pass of a round that ran the draft but
    /// passed one token (not a plain step).
    pub fn record(&mut self, timing: &RoundTiming) {
        let RoundTiming {
            draft_calls,
            draft_seconds,
            pass_tokens,
            verify_seconds,
        } = *timing;
        let finite = |t: f64| t.is_finite() && t >= 0.0;
        if !finite(draft_seconds) || !finite(verify_seconds) {
            return;
        }
        if draft_calls > 0 {
            self.draft.record(draft_seconds, draft_calls as f64);
        }
        // The unit is a plain step: a one-token pass after a draft call
        // (its first token declined) is not one.
        if pass_tokens == 1 && draft_calls > 0 {
            return;
        }
        if pass_tokens == 1 {
            self.unit.record(verify_seconds);
        } else if let Some(p) = pass_tokens
            .checked_sub(2)
            .and_then(|k| self.pass.get_mut(k))
        {
            p.record(verify_seconds, 1.0);
        }
    }

    /// Whether a plain step has been timed (the unit of every cost).
    ///
    /// ```
    /// use lastmile_spec_decode::{InLoopCosts, RoundTiming};
    /// let mut m = InLoopCosts::new(2)?;
    /// m.record(&RoundTiming { draft_calls: 1, draft_seconds: 1e-4, pass_tokens: 2, verify_seconds: 1e-3 });
    /// assert!(!m.has_unit());
    /// m.record(&RoundTiming { draft_calls: 0, draft_seconds: 0.0, pass_tokens: 1, verify_seconds: 9e-4 });
    /// assert!(m.has_unit());
    /// # Ok::<(), lastmile_spec_decode::SpecDecodeError>(())
    /// ```
    pub fn has_unit(&self) -> bool {
        self.unit.median().is_some_and(|t| t > 0.0)
    }

    /// The measured draft step cost `c` (the prior `prior_draft` until a
    /// draft call was timed) and pass costs (the prior `prior_verify`, scaled,
    /// for lengths never timed), in plain steps; `None` until a plain step
    /// was timed.
    ///
    /// # Errors
    /// Only if the table cannot be built (never for times this estimator
    /// took: they are finite and the unit positive).
    pub fn costs(
        &self,
        prior_draft: f64,
        prior_verify: &PassCosts,
    ) -> Result<Option<(f64, PassCosts)>> {
        let Some(unit) = self.unit.median().filter(|&t| t > 0.0) else {
            return Ok(None);
        };
        let draft = self.draft.mean().map_or(prior_draft, |t| t / unit);
        let mut scale = 1.0;
        let mut times = Vec::with_capacity(self.pass.len() + 1);
        times.push(1.0);
        for (k, p) in self.pass.iter().enumerate() {
            let prior = prior_verify.verify(k + 1);
            match p.mean() {
                Some(t) if t > 0.0 => {
                    scale = t / (unit * prior);
                    times.push(t / unit);
                }
                _ => times.push(prior * scale),
            }
        }
        if times.len() < 2 {
            times.push(prior_verify.verify(1) * scale);
        }
        Ok(Some((
            draft.max(f64::MIN_POSITIVE),
            PassCosts::from_times(&times)?,
        )))
    }
}

/// When a decoding round started and when its drafting ended.
pub(crate) struct RoundClock {
    pub(crate) start: Instant,
    pub(crate) drafted: Instant,
}

impl RoundClock {
    /// Reports the round, ending now, to the policies of the `active` rows
    /// (their draft calls, the batch's times and its pass over `pass_tokens`).
    pub(crate) fn report(
        &self,
        rows: &mut [Row],
        active: &[usize],
        drafts: &[Draft],
        pass_tokens: usize,
    ) {
        let draft_seconds = (self.drafted - self.start).as_secs_f64();
        let verify_seconds = self.drafted.elapsed().as_secs_f64();
        for &i in active {
            rows[i].policy.observe_timing(&RoundTiming {
                draft_calls: drafts[i].model_calls,
                draft_seconds,
                pass_tokens,
                verify_seconds,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(draft_calls: usize, draft: f64, pass_tokens: usize, verify: f64) -> RoundTiming {
        RoundTiming {
            draft_calls,
            draft_seconds: draft,
            pass_tokens,
            verify_seconds: verify,
        }
    }

    #[test]
    fn costs_follow_a_machine_that_slows_down() {
        // Steps of 3 ms, then the machine slows to 6 ms with every cost
        // doubling: the ratios, hence the costs in steps, stay put (to
        // 0.3 %: 60 rounds after the change the passes' decayed means
        // still hold 0.2 % of the old times, the unit none).
        let prior = PassCosts::linear(0.05).unwrap_or_else(|e| panic!("{e}"));
        let mut m = InLoopCosts::new(3).unwrap_or_else(|e| panic!("{e}"));
        for ms in [3e-3, 6e-3] {
            for _ in 0..60 {
                m.record(&timing(0, 0.0, 1, ms));
                m.record(&timing(2, 0.3 * ms, 2, 1.1 * ms));
                m.record(&timing(1, 0.15 * ms, 3, 1.3 * ms));
            }
            let (c, v) = m
                .costs(0.5, &prior)
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("a plain step was timed"));
            assert!((c - 0.15).abs() < 3e-3, "{c}");
            assert!((v.verify(1) - 1.1).abs() < 3e-3, "{v:?}");
            assert!((v.verify(2) - 1.3).abs() < 3e-3, "{v:?}");
            // Past the table the last marginal (0.2) repeats.
            assert!((v.verify(4) - 1.7).abs() < 3e-3, "{v:?}");
        }
    }

    #[test]
    fn a_preempted_round_is_clipped_and_bad_times_ignored() {
        let prior = PassCosts::linear(0.05).unwrap_or_else(|e| panic!("{e}"));
        let mut m = InLoopCosts::new(2).unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..20 {
            m.record(&timing(0, 0.0, 1, 1e-3));
            m.record(&timing(1, 1e-4, 2, 1.1e-3));
        }
        // A pass stalled for 100 steps counts as at most 3× its mean, and
        // NaN, negative or over-long times change nothing.
        m.record(&timing(0, 0.0, 1, 0.1));
        m.record(&timing(1, f64::NAN, 2, 1e-3));
        m.record(&timing(1, 1e-4, 2, -1.0));
        m.record(&timing(1, 1e-4, 9, 1.0));
        let (c, v) = m
            .costs(0.5, &prior)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("a plain step was timed"));
        // The unit is the median of the last three plain steps: the stall
        // does not move it.
        assert!((v.verify(1) - 1.1).abs() < 1e-9, "{v:?}");
        assert!((c - 0.1).abs() < 1e-9, "{c}");
        // Two slow plain steps in a row do: the unit follows the machine.
        m.record(&timing(0, 0.0, 1, 2e-3));
        let (c, _) = m
            .costs(0.5, &prior)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("a plain step was timed"));
        assert!((c - 0.05).abs() < 1e-9, "{c}");
        // Without a plain step there is no unit.
        let mut n = InLoopCosts::new(2).unwrap_or_else(|e| panic!("{e}"));
        n.record(&timing(1, 1e-4, 2, 1.1e-3));
        assert!(!n.has_unit());
        assert!(
            n.costs(0.5, &prior)
                .unwrap_or_else(|e| panic!("{e}"))
                .is_none()
        );
    }
}
