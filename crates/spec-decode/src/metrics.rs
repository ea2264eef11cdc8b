//! Acceptance and cost metrics, with vLLM's definitions.

use std::time::Duration;

/// Counters of one generation run (summed over its sequences).
///
/// Model calls are counted per sequence: one batched forward over `B`
/// sequences adds `B` calls, so "calls per token" reads the same at any batch
/// size.
///
/// ```
/// use lastmile_spec_decode::Metrics;
/// let mut m = Metrics::default();
/// m.record_round(4, 2);
/// m.record_round(4, 4);
/// assert_eq!(m.acceptance_rate(), 0.75);
/// assert_eq!(m.mean_acceptance_length(), 4.0);
/// assert_eq!(m.per_position_acceptance()[2], 0.5);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    /// Tokens emitted (and kept) across all sequences.
    pub generated_tokens: u64,
    /// Verification rounds across all sequences.
    pub rounds: u64,
    /// Draft tokens proposed.
    pub drafted: u64,
    /// Draft tokens accepted.
    pub accepted: u64,
    /// `drafted_at[i]`: rounds that drafted a token at position `i` (0-based).
    pub drafted_at: Vec<u64>,
    /// `accepted_at[i]`: rounds whose draft position `i` was accepted.
    pub accepted_at: Vec<u64>,
    /// Target forward passes (per sequence).
    pub target_calls: u64,
    /// Draft forward passes (per sequence).
    pub draft_calls: u64,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// Wall-clock time of the first round, which reads the prompt (the
    /// prompt pass costs the same with or without drafts).
    pub prefill: Duration,
    /// Tokens emitted by the first round.
    pub prefill_tokens: u64,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

impl Metrics {
    /// Records one verification round with `drafted` proposals, `accepted` of them accepted.
    pub fn record_round(&mut self, drafted: usize, accepted: usize) {
        self.rounds += 1;
        self.drafted += drafted as u64;
        self.accepted += accepted as u64;
        if self.drafted_at.len() < drafted {
            self.drafted_at.resize(drafted, 0);
            self.accepted_at.resize(drafted, 0);
        }
        for slot in &mut self.drafted_at[..drafted] {
            *slot += 1;
        }
        for slot in &mut self.accepted_at[..accepted.min(drafted)] {
            *slot += 1;
        }
    }

    /// Accepted / drafted (0 with no drafts).
    pub fn acceptance_rate(&self) -> f64 {
        ratio(self.accepted, self.drafted)
    }

    /// `1 + accepted / rounds`: tokens emitted per target call (0 with no rounds).
    pub fn mean_acceptance_length(&self) -> f64 {
        if self.rounds == 0 {
            0.0
        } else {
            1.0 + ratio(self.accepted, self.rounds)
        }
    }

    /// Acceptance rate at each draft position: `accepted_at[i] / drafted_at[i]`.
    pub fn per_position_acceptance(&self) -> Vec<f64> {
        self.accepted_at
            .iter()
            .zip(&self.drafted_at)
            .map(|(a, d)| ratio(*a, *d))
            .collect()
    }

    /// Target forward passes per generated token.
    pub fn target_calls_per_token(&self) -> f64 {
        ratio(self.target_calls, self.generated_tokens)
    }

    /// Draft forward passes per generated token.
    pub fn draft_calls_per_token(&self) -> f64 {
        ratio(self.draft_calls, self.generated_tokens)
    }

    /// Mean tokens drafted per round.
    pub fn mean_draft_length(&self) -> f64 {
        ratio(self.drafted, self.rounds)
    }

    /// Generated tokens per second of wall-clock time.
    pub fn tokens_per_second(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.generated_tokens as f64 / s
        } else {
            0.0
        }
    }

    /// Generated tokens per second after the first round (the prompt
    /// pass): the decoding rate that speculation changes, without the fixed
    /// cost of reading the prompt (0 when nothing followed the first round).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lastmile_spec_decode::Metrics;
    /// let mut m = Metrics::default();
    /// m.generated_tokens = 41;
    /// m.elapsed = Duration::from_millis(500);
    /// m.prefill = Duration::from_millis(100);
    /// m.prefill_tokens = 1;
    /// assert_eq!(m.decode_tokens_per_second(), 100.0);
    /// assert_eq!(m.tokens_per_second(), 82.0);
    /// ```
    pub fn decode_tokens_per_second(&self) -> f64 {
        let s = self.elapsed.saturating_sub(self.prefill).as_secs_f64();
        let tokens = self.generated_tokens.saturating_sub(self.prefill_tokens);
        if s > 0.0 { tokens as f64 / s } else { 0.0 }
    }

    /// Records the end of the first round, `since` the run's start.
    pub(crate) fn end_prefill(&mut self, since: std::time::Instant) {
        self.prefill = since.elapsed();
        self.prefill_tokens = self.generated_tokens;
    }

    /// Adds another run's counters to these.
    pub fn merge(&mut self, other: &Metrics) {
        self.generated_tokens += other.generated_tokens;
        self.rounds += other.rounds;
        self.drafted += other.drafted;
        self.accepted += other.accepted;
        let n = self.drafted_at.len().max(other.drafted_at.len());
        self.drafted_at.resize(n, 0);
        self.accepted_at.resize(n, 0);
        for (i, (d, a)) in other.drafted_at.iter().zip(&other.accepted_at).enumerate() {
            self.drafted_at[i] += d;
            self.accepted_at[i] += a;
        }
        self.target_calls += other.target_calls;
        self.draft_calls += other.draft_calls;
        self.elapsed += other.elapsed;
        self.prefill += other.prefill;
        self.prefill_tokens += other.prefill_tokens;
    }
}
