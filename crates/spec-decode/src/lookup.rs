//! Prompt lookup: a model-free drafter that copies the continuation of an
//! earlier occurrence of the context's last n-gram.

use lastmile_core::numerics::SamplingParams;
use lastmile_core::validate::check_at_least;
use rand::Rng;

use crate::drafter::{Draft, DraftRequest, Drafter};
use crate::error::Result;
use crate::policy::{DraftSource, DraftStepInfo};

/// Prompt lookup (n-gram) drafting: no model at all.
///
/// Finds the most recent earlier occurrence of the context's last `n` tokens
/// (trying `n = max_ngram` down to `min_ngram`) and proposes the tokens that
/// followed it (Saxena 2023, "Prompt Lookup Decoding"; HF
/// `prompt_lookup_num_tokens`). Proposals are deterministic, so `q` is one-hot.
///
/// **Confidence.** A one-token match recurs almost anywhere, a 20-token one
/// means the text is copying itself. Each proposed token reaches the
/// policy ([`DraftStepInfo`]) with the distribution of a copy model: with
/// `m` the tokens matched before it (the match, extended back past the
/// n-gram as far as the two spans agree, up to [`MAX_MATCH`](Self::MAX_MATCH), plus the
/// tokens copied before it in this proposal), the copied token has
/// probability `p = (m + 1) / (m + 2)` (Laplace's rule of succession, each
/// matched token one success of copying) and the rest `1 − p` is spread
/// evenly over the context's other distinct tokens (the only ones a copy
/// model can name). These numbers only order the proposals: calibrating
/// policies ([`CostAwareAdaEdl`](crate::CostAwareAdaEdl)) learn what each
/// level means for the text at hand, and verification treats the proposal
/// as the deterministic draft it is, so sampling stays exact.
///
/// ```
/// use lastmile_spec_decode::PromptLookup;
/// let pl = PromptLookup::new(1, 3, 4).unwrap();
/// // "... 1 2 3 4 ... 1 2" -> propose "3 4 9"
/// assert_eq!(pl.lookup(&[1, 2, 3, 4, 9, 1, 2], 10), vec![3, 4, 9, 1]);
/// assert!(pl.lookup(&[5, 6, 7], 10).is_empty());
/// // Four tokens matched ("0 1 2" and the "5" before them agree): surer
/// // than one, and surer as the copy goes on.
/// let (_, long) = pl.lookup_with_info(&[5, 0, 1, 2, 3, 4, 5, 0, 1, 2], 2);
/// let (_, short) = pl.lookup_with_info(&[7, 2, 3, 4, 5, 6, 2], 2);
/// assert!((long[0].top_prob - 5.0 / 6.0).abs() < 1e-12);
/// assert!((short[0].top_prob - 2.0 / 3.0).abs() < 1e-12);
/// assert!(long[0].entropy < short[0].entropy && long[1].entropy < long[0].entropy);
/// ```
#[derive(Clone, Debug)]
pub struct PromptLookup {
    min_ngram: usize,
    max_ngram: usize,
    max_tokens: usize,
}

impl PromptLookup {
    /// The most matched tokens the confidence counts: past a few dozen the
    /// text is plainly copying, and extending the match further back would
    /// cost a scan for nothing.
    pub const MAX_MATCH: usize = 64;

    /// Matches n-grams of `min_ngram..=max_ngram` tokens and proposes up to
    /// `max_tokens` tokens (HF defaults: n = 2, 10 tokens).
    ///
    /// # Errors
    /// [`SpecDecodeError::Core`](crate::SpecDecodeError::Core) ([`CoreError::OutOfRange`](lastmile_core::CoreError::OutOfRange)) for
    /// `min_ngram = 0`, `max_ngram < min_ngram` or `max_tokens = 0`.
    pub fn new(min_ngram: usize, max_ngram: usize, max_tokens: usize) -> Result<Self> {
        Ok(Self {
            min_ngram: check_at_least("min_ngram", min_ngram, 1)?,
            max_ngram: check_at_least("max_ngram", max_ngram, min_ngram)?,
            max_tokens: check_at_least("max_tokens", max_tokens, 1)?,
        })
    }

    /// The continuation proposed for `context`, at most `limit` (and
    /// `max_tokens`) tokens; empty when no n-gram recurs.
    pub fn lookup(&self, context: &[usize], limit: usize) -> Vec<usize> {
        self.find(context, limit)
            .map(|(from, to, _)| context[from..to].to_vec())
            .unwrap_or_default()
    }

    /// [`lookup`](Self::lookup) with each proposed token's confidence
    /// (see the type's docs).
    pub fn lookup_with_info(
        &self,
        context: &[usize],
        limit: usize,
    ) -> (Vec<usize>, Vec<DraftStepInfo>) {
        let Some((from, to, matched)) = self.find(context, limit) else {
            return (Vec::new(), Vec::new());
        };
        // `find` matched an n-gram, so the context has at least one token.
        let others = distinct(context).saturating_sub(1);
        let info = (0..to - from)
            .map(|i| copy_confidence((matched + i).min(Self::MAX_MATCH), others))
            .collect();
        (context[from..to].to_vec(), info)
    }

    /// Whether the context's last n-gram occurred before with a token after
    /// it: whether [`lookup`](Self::lookup) proposes anything.
    pub(crate) fn has_match(&self, context: &[usize]) -> bool {
        self.find(context, 1).is_some()
    }

    /// The proposal's span `from..to` in `context` and the number of
    /// tokens matched before it (at least the n-gram, at most
    /// [`MAX_MATCH`](Self::MAX_MATCH)).
    fn find(&self, context: &[usize], limit: usize) -> Option<(usize, usize, usize)> {
        let limit = limit.min(self.max_tokens);
        let len = context.len();
        for n in (self.min_ngram..=self.max_ngram).rev() {
            if n >= len {
                continue;
            }
            let pattern = &context[len - n..];
            // Most recent earlier match with at least one following token.
            if let Some(start) = (0..len - n).rev().find(|&s| &context[s..s + n] == pattern) {
                let from = start + n;
                // Extend the match back while the two spans agree; the
                // earlier span ends first (`from < len`).
                let mut matched = n;
                while matched < Self::MAX_MATCH
                    && matched < from
                    && context[from - matched - 1] == context[len - matched - 1]
                {
                    matched += 1;
                }
                return (limit > 0).then_some((from, (from + limit).min(len), matched));
            }
        }
        None
    }

    /// The prefix of the looked-up `tokens` (with their confidences `info`)
    /// that `req`'s policy drafts.
    pub(crate) fn policy_prefix(
        &self,
        mut tokens: Vec<usize>,
        info: &[DraftStepInfo],
        req: &mut DraftRequest<'_>,
    ) -> Vec<usize> {
        let keep = info
            .iter()
            .take(tokens.len())
            .enumerate()
            .position(|(i, next)| !req.wants_more(i, next))
            .unwrap_or(tokens.len());
        tokens.truncate(keep);
        tokens
    }
}

/// Distinct tokens in `context`: a bitset over the ids when they are below
/// 2^20 (a vocabulary's range; 128 KiB at most), a hash set otherwise (ids
/// from a caller that did not validate them), so a long context costs a
/// pass of bit operations per round rather than one hash per token.
fn distinct(context: &[usize]) -> usize {
    const BITSET_IDS: usize = 1 << 20;
    match context.iter().max() {
        Some(&max) if max < BITSET_IDS => {
            let mut bits = vec![0u64; max / 64 + 1];
            for &t in context {
                bits[t / 64] |= 1 << (t % 64);
            }
            bits.iter().map(|w| w.count_ones() as usize).sum()
        }
        _ => {
            let mut seen = std::collections::HashSet::with_capacity(context.len());
            context.iter().filter(|&&t| seen.insert(t)).count()
        }
    }
}

/// The copy model's distribution for a token after `matched` matched ones,
/// its rest spread over `others` other tokens: entropy and top probability.
fn copy_confidence(matched: usize, others: usize) -> DraftStepInfo {
    let p = (matched as f64 + 1.0) / (matched as f64 + 2.0);
    if others == 0 {
        // A context of one distinct token: the copy model can name no other.
        return DraftStepInfo {
            entropy: 0.0,
            top_prob: 1.0,
        };
    }
    let rest = 1.0 - p;
    DraftStepInfo {
        entropy: -p * p.ln() - rest * (rest / others as f64).ln(),
        top_prob: p,
    }
}

impl Drafter for PromptLookup {
    fn vocab_size(&self) -> Option<usize> {
        None
    }

    fn is_deterministic(&self) -> bool {
        true
    }

    fn source(&self, _context: &[usize]) -> DraftSource {
        DraftSource::Lookup
    }

    fn reset(&mut self, _batch: usize) -> Result<()> {
        Ok(())
    }

    fn propose<R: Rng + ?Sized>(
        &mut self,
        requests: &mut [Option<DraftRequest<'_>>],
        _sampling: &SamplingParams,
        _rng: &mut R,
    ) -> Result<Vec<Draft>> {
        Ok(requests
            .iter_mut()
            .map(|req| {
                let Some(req) = req else {
                    return Draft::default();
                };
                let (tokens, info) = self.lookup_with_info(req.context, req.limit);
                Draft {
                    tokens: self.policy_prefix(tokens, &info, req),
                    q: None,
                    model_calls: 0,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::distinct;

    #[test]
    fn distinct_counts_match_a_sorted_dedup() {
        // Ids in a vocabulary's range (the bitset) and beyond it (the hash
        // set), against sorting and removing repeats.
        let mut rng = StdRng::seed_from_u64(9);
        for &top in &[2usize, 50, 49_152, 1 << 20, usize::MAX] {
            for len in [1usize, 2, 17, 300] {
                let context: Vec<usize> = (0..len)
                    .map(|_| rng.random_range(0..=top.min(usize::MAX - 1)))
                    .collect();
                let mut naive = context.clone();
                naive.sort_unstable();
                naive.dedup();
                assert_eq!(distinct(&context), naive.len(), "top {top}, len {len}");
            }
        }
        assert_eq!(distinct(&[]), 0);
    }
}
