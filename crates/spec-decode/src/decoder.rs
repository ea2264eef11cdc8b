//! The speculative decoding loop and the autoregressive baseline.

use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use lastmile_core::lm::{LanguageModel, check_last_logits_shape};
use lastmile_core::numerics::SamplingParams;
use lastmile_core::validate::{check_at_least, check_finite, check_len};
use rand::Rng;

use crate::draft_q::{host_draft_q, stack_draft_q};
use crate::drafter::{Draft, DraftRequest, Drafter, common_prefix};
use crate::error::{Result, SpecDecodeError};
use crate::greedy::{Greedy, greedy_rows, host_logits_fault};
use crate::metrics::Metrics;
use crate::policy::{DraftPolicy, RoundOutcome};
use crate::round_timing::RoundClock;
use crate::sampled::{Tempered, tempered_rows};
use crate::verify::{
    Checked, ResidualRule, check_drafts, index_tensor, locate_logits_fault, located, logits_fault,
    verify_kernel,
};
use crate::verify_host::{HostRows, verify_rows};

/// What to generate: sampling parameters, length, optional stop token.
///
/// ```
/// use lastmile_core::numerics::SamplingParams;
/// use lastmile_spec_decode::GenerationConfig;
/// let c = GenerationConfig::new(SamplingParams::new(0.7).unwrap(), 32).unwrap().with_stop_token(Some(0));
/// assert_eq!(c.max_new_tokens(), 32);
/// assert!(GenerationConfig::new(SamplingParams::greedy(), 0).is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GenerationConfig {
    sampling: SamplingParams,
    max_new_tokens: usize,
    stop_token: Option<usize>,
}

impl GenerationConfig {
    /// Generates up to `max_new_tokens` per sequence with `sampling`.
    ///
    /// # Errors
    /// [`SpecDecodeError::Core`] ([`CoreError::OutOfRange`](lastmile_core::CoreError::OutOfRange)) for `max_new_tokens = 0`.
    pub fn new(sampling: SamplingParams, max_new_tokens: usize) -> Result<Self> {
        Ok(Self {
            sampling,
            max_new_tokens: check_at_least("max_new_tokens", max_new_tokens, 1)?,
            stop_token: None,
        })
    }

    /// Ends a sequence right after it emits `token`.
    pub fn with_stop_token(mut self, token: Option<usize>) -> Self {
        self.stop_token = token;
        self
    }

    /// The sampling parameters.
    pub fn sampling(&self) -> &SamplingParams {
        &self.sampling
    }

    /// The length limit.
    pub fn max_new_tokens(&self) -> usize {
        self.max_new_tokens
    }

    /// The stop token, if any.
    pub fn stop_token(&self) -> Option<usize> {
        self.stop_token
    }
}

/// Generated tokens (without the prompts) and the run's metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// New tokens of each sequence, in prompt order.
    pub tokens: Vec<Vec<usize>>,
    /// Counters of the run.
    pub metrics: Metrics,
}

pub(crate) fn validate_prompts(
    prompts: &[Vec<usize>],
    vocab: usize,
    max_new: usize,
    context: usize,
) -> Result<()> {
    if prompts.is_empty() {
        return Err(SpecDecodeError::NoPrompts);
    }
    for (row, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(SpecDecodeError::EmptyPrompt { row });
        }
        if let Some((position, &token)) = p.iter().enumerate().find(|(_, t)| **t >= vocab) {
            return Err(SpecDecodeError::TokenOutOfRange {
                what: format!("prompt {row}"),
                position,
                token,
                vocab,
            });
        }
        // The last emitted token is never fed, so prompt + max_new - 1 positions suffice.
        let needed = p.len() + max_new - 1;
        if needed > context {
            return Err(SpecDecodeError::ContextOverflow {
                row,
                needed,
                max: context,
            });
        }
    }
    Ok(())
}

/// Per-sequence bookkeeping.
pub(crate) struct Row {
    pub(crate) seq: Vec<usize>,
    pub(crate) prompt_len: usize,
    pub(crate) done: bool,
    pub(crate) policy: Box<dyn DraftPolicy>,
    pub(crate) target_fed: Vec<usize>,
}

impl Row {
    /// A row starting at `prompt`, its draft lengths decided by `policy`.
    pub(crate) fn new(prompt: &[usize], policy: Box<dyn DraftPolicy>) -> Self {
        Self {
            seq: prompt.to_vec(),
            prompt_len: prompt.len(),
            done: false,
            policy,
            target_fed: Vec::new(),
        }
    }

    /// Appends `tokens`, applying the length limit and stop token.
    pub(crate) fn commit(&mut self, tokens: &[usize], config: &GenerationConfig) -> usize {
        let mut kept = 0;
        for &t in tokens {
            if self.done {
                break;
            }
            self.seq.push(t);
            kept += 1;
            if self.seq.len() - self.prompt_len >= config.max_new_tokens
                || config.stop_token == Some(t)
            {
                self.done = true;
            }
        }
        kept
    }
}

/// The generation of a finished decode: each row's new tokens, and the
/// metrics with the time since `start`.
pub(crate) fn finish(rows: Vec<Row>, mut metrics: Metrics, start: Instant) -> Generation {
    metrics.elapsed = start.elapsed();
    Generation {
        tokens: rows
            .into_iter()
            .map(|r| r.seq[r.prompt_len..].to_vec())
            .collect(),
        metrics,
    }
}

/// Brings a row's target cache to the committed prefix and returns the tokens
/// still to feed (at least the last committed token).
pub(crate) fn sync_row<M: LanguageModel>(
    model: &M,
    cache: &mut M::Cache,
    index: usize,
    row: &mut Row,
) -> Result<Vec<usize>> {
    let keep = common_prefix(&row.target_fed, &row.seq).min(row.seq.len() - 1);
    model.truncate(cache, index, keep)?;
    row.target_fed.truncate(keep);
    Ok(row.seq[keep..].to_vec())
}

/// Speculative decoding of a target model with a drafter and a draft-length policy.
///
/// Each round, every unfinished sequence drafts up to the policy's limit,
/// then **one** batched target forward over all sequences scores every draft
/// position plus the bonus position, and [`verify_drafts`](crate::verify_drafts)'s
/// rule accepts a prefix and emits one more token. Caches are rolled back to
/// the committed prefix at the start of the next round. The output follows
/// the target's processed distribution exactly (greedy: equals target-only
/// greedy decoding).
///
/// The device/host boundary is crossed one way: the draft distributions
/// stay on the device (the drafter's `q` rows are stacked there, zero-padded
/// to the round's longest draft), and each round costs one device
/// synchronisation per draft step of a [`ModelDrafter`](crate::ModelDrafter)
/// (none for [`PromptLookup`](crate::PromptLookup)) plus **one** for the
/// verification, whatever the batch size and draft lengths. Randomness
/// comes only from the caller's `rng`: per round, the drafter's uniforms
/// (one per active row per draft step when sampling), then the
/// verification's (see [`verify_drafts`](crate::verify_drafts)).
///
/// ```
/// # #[cfg(feature = "flex")] {
/// # use burn::tensor::{Device, Tensor, TensorData};
/// # use lastmile_spec_decode::{LanguageModel, LmResult};
/// # struct Unigram { logits: Vec<f32>, device: Device }
/// # impl LanguageModel for Unigram {
/// #     type Cache = Vec<usize>;
/// #     fn vocab_size(&self) -> usize { self.logits.len() }
/// #     fn device(&self) -> Device { self.device.clone() }
/// #     fn new_cache(&self, batch: usize) -> LmResult<Vec<usize>> { Ok(vec![0; batch]) }
/// #     fn cached_len(&self, c: &Vec<usize>, row: usize) -> usize { c[row] }
/// #     fn truncate(&self, c: &mut Vec<usize>, row: usize, len: usize) -> LmResult<()> { c[row] = c[row].min(len); Ok(()) }
/// #     fn forward(&self, c: &mut Vec<usize>, tokens: &[Vec<usize>]) -> LmResult<Tensor<3>> {
/// #         let n = tokens.iter().map(Vec::len).max().unwrap_or(0);
/// #         for (l, t) in c.iter_mut().zip(tokens) { *l += t.len(); }
/// #         let data: Vec<f32> = (0..tokens.len() * n).flat_map(|_| self.logits.clone()).collect();
/// #         Ok(Tensor::from_data(TensorData::new(data, [tokens.len(), n, self.logits.len()]), &self.device))
/// #     }
/// # }
/// use lastmile_core::numerics::SamplingParams;
/// use lastmile_spec_decode::{AdaEdl, AdaEdlConfig, GenerationConfig, ModelDrafter, SpeculativeDecoder};
/// use rand::{SeedableRng, rngs::StdRng};
/// let d = Device::flex();
/// let target = Unigram { logits: vec![0.0, 2.0, 1.0], device: d.clone() };
/// let draft = Unigram { logits: vec![0.0, 1.5, 1.0], device: d };
/// let policy = AdaEdl::new(AdaEdlConfig::default()).unwrap();
/// let mut decoder = SpeculativeDecoder::new(&target, ModelDrafter::new(&draft), Box::new(policy)).unwrap();
/// let config = GenerationConfig::new(SamplingParams::new(1.0).unwrap(), 16).unwrap();
/// let out = decoder.generate(&[vec![0], vec![1, 2]], &config, &mut StdRng::seed_from_u64(1)).unwrap();
/// assert_eq!(out.tokens[1].len(), 16);
/// assert!(out.metrics.target_calls_per_token() <= 1.0);
/// # }
/// ```
pub struct SpeculativeDecoder<'t, T: LanguageModel, D: Drafter> {
    target: &'t T,
    drafter: D,
    policy: Box<dyn DraftPolicy>,
    rule: ResidualRule,
}

impl<T: LanguageModel, D: Drafter> std::fmt::Debug for SpeculativeDecoder<'_, T, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeculativeDecoder")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<'t, T: LanguageModel, D: Drafter> SpeculativeDecoder<'t, T, D> {
    /// A decoder verifying `drafter`'s proposals with `target`; `policy` is
    /// the prototype cloned for every sequence.
    ///
    /// # Errors
    /// [`SpecDecodeError::VocabMismatch`] when the drafter's vocabulary differs.
    pub fn new(target: &'t T, drafter: D, policy: Box<dyn DraftPolicy>) -> Result<Self> {
        if let Some(v) = drafter.vocab_size()
            && v != target.vocab_size()
        {
            return Err(SpecDecodeError::VocabMismatch {
                target: target.vocab_size(),
                draft: v,
            });
        }
        Ok(Self {
            target,
            drafter,
            policy,
            rule: ResidualRule::Exact,
        })
    }

    /// Replaces the residual rule (negative-control tests only).
    #[cfg(test)]
    pub(crate) fn set_rule(&mut self, rule: ResidualRule) {
        self.rule = rule;
    }

    /// The policy prototype.
    pub fn policy(&self) -> &dyn DraftPolicy {
        self.policy.as_ref()
    }

    /// The drafter (e.g. to read a [`HybridDrafter`](crate::HybridDrafter)'s
    /// counts after [`generate`](Self::generate)).
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// # use burn::tensor::{Device, Tensor, TensorData};
    /// # use lastmile_spec_decode::{LanguageModel, LmResult};
    /// # struct Unigram { device: Device }
    /// # impl LanguageModel for Unigram {
    /// #     type Cache = Vec<usize>;
    /// #     fn vocab_size(&self) -> usize { 3 }
    /// #     fn device(&self) -> Device { self.device.clone() }
    /// #     fn new_cache(&self, batch: usize) -> LmResult<Vec<usize>> { Ok(vec![0; batch]) }
    /// #     fn cached_len(&self, c: &Vec<usize>, row: usize) -> usize { c[row] }
    /// #     fn truncate(&self, c: &mut Vec<usize>, row: usize, len: usize) -> LmResult<()> { c[row] = c[row].min(len); Ok(()) }
    /// #     fn forward(&self, c: &mut Vec<usize>, tokens: &[Vec<usize>]) -> LmResult<Tensor<3>> {
    /// #         let n = tokens.iter().map(Vec::len).max().unwrap_or(0);
    /// #         for (l, t) in c.iter_mut().zip(tokens) { *l += t.len(); }
    /// #         let data: Vec<f32> = (0..tokens.len() * n).flat_map(|_| [0.0, 5.0, 0.0]).collect();
    /// #         Ok(Tensor::from_data(TensorData::new(data, [tokens.len(), n, 3]), &self.device))
    /// #     }
    /// # }
    /// use lastmile_spec_decode::{PromptLookup, SpeculativeDecoder, StaticLength};
    /// let target = Unigram { device: Device::flex() };
    /// let lookup = PromptLookup::new(1, 2, 4)?;
    /// let decoder = SpeculativeDecoder::new(&target, lookup, Box::new(StaticLength::new(4)?))?;
    /// assert_eq!(decoder.drafter().lookup(&[1, 1], 4), vec![1]);
    /// # }
    /// # Ok::<(), lastmile_spec_decode::SpecDecodeError>(())
    /// ```
    pub fn drafter(&self) -> &D {
        &self.drafter
    }

    /// Generates continuations of a batch of prompts.
    ///
    /// # Errors
    /// [`SpecDecodeError::NoPrompts`], [`SpecDecodeError::EmptyPrompt`],
    /// [`SpecDecodeError::TokenOutOfRange`], [`SpecDecodeError::ContextOverflow`]
    /// for bad prompts; [`SpecDecodeError::Core`] for NaN / `+inf` logits
    /// ([`CoreError::NonFinite`](lastmile_core::CoreError::NonFinite)) or fully masked rows
    /// ([`CoreError::NotAProbability`](lastmile_core::CoreError::NotAProbability)) of either model, and for a drafter
    /// that breaks its contract (wrong number of drafts, missing or mis-shaped
    /// `q`); [`SpecDecodeError::Lm`] for any model failure.
    pub fn generate<R: Rng + ?Sized>(
        &mut self,
        prompts: &[Vec<usize>],
        config: &GenerationConfig,
        rng: &mut R,
    ) -> Result<Generation> {
        let start = Instant::now();
        let vocab = self.target.vocab_size();
        let max_new = config.max_new_tokens;
        let context = self.target.max_context().min(self.drafter.max_context());
        validate_prompts(prompts, vocab, max_new, context)?;
        let batch = prompts.len();
        let sampling = config.sampling;
        let greedy = sampling.is_greedy();
        let device = self.target.device();
        let mut cache = self.target.new_cache(batch)?;
        self.drafter.reset(batch)?;
        let mut rows: Vec<Row> = prompts
            .iter()
            .map(|p| Row::new(p, self.policy.clone()))
            .collect();
        let mut metrics = Metrics::default();
        let mut first_round = true;
        while rows.iter().any(|r| !r.done) {
            let round_start = Instant::now();
            // 1. Draft. Never draft past the length limit or the context window.
            let mut requests: Vec<Option<DraftRequest<'_>>> = rows
                .iter_mut()
                .map(|row| {
                    if row.done {
                        return None;
                    }
                    let remaining = max_new - (row.seq.len() - row.prompt_len);
                    let room = context.saturating_sub(row.seq.len());
                    row.policy.begin_round(self.drafter.source(&row.seq));
                    let limit = row.policy.round_limit().min(remaining - 1).min(room);
                    Some(DraftRequest {
                        context: &row.seq,
                        limit,
                        policy: row.policy.as_mut(),
                    })
                })
                .collect();
            let mut drafts: Vec<Draft> = self.drafter.propose(&mut requests, &sampling, rng)?;
            drop(requests);
            let clock = RoundClock {
                start: round_start,
                drafted: Instant::now(),
            };
            check_len("drafts returned by the drafter", drafts.len(), batch)?;
            for (row, d) in rows.iter().zip(drafts.iter_mut()) {
                if row.done {
                    d.tokens.clear();
                    d.q = None;
                }
            }

            // 2. One target forward over pending + drafted tokens of every row.
            let mut feed: Vec<Vec<usize>> = vec![Vec::new(); batch];
            for (i, row) in rows.iter_mut().enumerate() {
                if row.done {
                    continue;
                }
                let mut f = sync_row(self.target, &mut cache, i, row)?;
                f.extend_from_slice(&drafts[i].tokens);
                feed[i] = f;
            }
            let n_max = feed.iter().map(Vec::len).max().unwrap_or(0);
            let active: Vec<usize> = (0..batch).filter(|i| !rows[*i].done).collect();
            let g_max = active
                .iter()
                .map(|&i| drafts[i].tokens.len())
                .max()
                .unwrap_or(0);
            // Only the positions verified are read (the pending token's and
            // the drafts'): the prompt's pass runs the head on its last
            // token alone.
            let keep = g_max + 1;
            let logits = self.target.forward_last(&mut cache, &feed, keep)?;
            check_last_logits_shape(&logits, batch, keep, vocab)?;
            // Positions (pending last token, x_1..x_g) give p_1..p_{g+1},
            // the last g + 1 of row i's `keep`; pad by repeating the last.
            let mut pick = Vec::with_capacity(active.len() * keep);
            for &i in &active {
                let g = drafts[i].tokens.len();
                for j in 0..=g_max {
                    pick.push(i * keep + g_max - g + j.min(g));
                }
            }
            let logits = logits.reshape([batch * keep, vocab]);
            // 3. Verify. Greedy rows in host memory: one read in place,
            // decided on the host (crate::greedy), the kernel's decisions.
            let (host_best, logits) = if greedy {
                greedy_rows(logits, &pick, false)?
            } else {
                (Greedy::NotHost, logits)
            };
            let selected = |logits: Tensor<2>| -> Result<Tensor<2>> {
                Ok(logits.select(0, index_tensor(&pick, &device)?))
            };
            let host_best = match host_best {
                Greedy::Rows(found) => Some(found),
                Greedy::Fault => {
                    let selected = selected(logits)?;
                    let p = sampling.probabilities_unchecked(selected.clone())?;
                    return Err(locate_logits_fault("target", &selected, p));
                }
                Greedy::NotHost => None,
            };
            if let Some(best) = host_best {
                let g1 = g_max + 1;
                for (a, &i) in active.iter().enumerate() {
                    let row = &mut rows[i];
                    row.target_fed.extend_from_slice(&feed[i]);
                    let drafted = std::mem::take(&mut drafts[i].tokens);
                    let best_row = &best[a * g1..(a + 1) * g1];
                    let accepted = drafted
                        .iter()
                        .zip(best_row)
                        .take_while(|(x, m)| **x == m.token)
                        .count();
                    let mut emitted = drafted[..accepted].to_vec();
                    emitted.push(best_row[accepted].token);
                    record(&mut metrics, row, &emitted, drafted.len(), config);
                    metrics.draft_calls += drafts[i].model_calls as u64;
                }
                if std::mem::take(&mut first_round) {
                    metrics.end_prefill(start);
                } else {
                    clock.report(&mut rows, &active, &drafts, n_max);
                }
                continue;
            }
            // Sampled rows in host memory: tempered in place and verified on
            // the host (crate::sampled, crate::verify_host), the tensor
            // path's values and draws.
            let (tempered, logits) = if greedy {
                (Tempered::NotHost, logits)
            } else {
                tempered_rows(logits, &pick, &sampling)?
            };
            let (active_drafts, verdicts) = match tempered {
                Tempered::Rows(pv) => {
                    let a = active.len();
                    let qv = if g_max == 0 || self.drafter.is_deterministic() {
                        None
                    } else {
                        Some(host_draft_q(&mut drafts, &active, g_max, vocab)?)
                    };
                    let tokens: Vec<Vec<usize>> = active
                        .iter()
                        .map(|&i| std::mem::take(&mut drafts[i].tokens))
                        .collect();
                    check_drafts(&tokens, a, g_max, vocab)?;
                    let host = HostRows {
                        p: &pv,
                        q: qv.as_deref(),
                        dims: [a, g_max + 1, vocab],
                    };
                    match verify_rows(host, &tokens, false, self.rule, false, rng) {
                        Checked::Verdicts(v) => (tokens, v),
                        // The tempered rows were checked; kept for the report.
                        Checked::NonFiniteTarget => {
                            return Err(located("target distributions", Ok(())));
                        }
                        Checked::NonFiniteDraft => {
                            let q = qv.unwrap_or_default();
                            let q = Tensor::<3>::from_data(
                                TensorData::new(q, [a, g_max, vocab]),
                                &device,
                            );
                            let check = check_finite("draft distributions", &q);
                            return Err(located("draft distributions", check));
                        }
                    }
                }
                Tempered::Fault => {
                    let selected = selected(logits)?;
                    let p = sampling.probabilities_unchecked(selected.clone())?;
                    return Err(locate_logits_fault("target", &selected, p));
                }
                Tempered::NotHost => {
                    // On the device; the kernel's one read also flags NaN.
                    let selected = selected(logits)?;
                    let fault = match host_logits_fault(&selected)? {
                        Some(flag) => flag,
                        None => logits_fault(&selected),
                    };
                    let p = sampling
                        .probabilities_unchecked(selected.clone())?
                        .reshape([active.len(), g_max + 1, vocab]);
                    let q = if greedy || g_max == 0 || self.drafter.is_deterministic() {
                        None
                    } else {
                        let active_drafts: Vec<&Draft> =
                            active.iter().map(|&i| &drafts[i]).collect();
                        Some(stack_draft_q(&active_drafts, g_max, vocab, &device)?)
                    };
                    let active_drafts: Vec<Vec<usize>> = active
                        .iter()
                        .map(|&i| std::mem::take(&mut drafts[i].tokens))
                        .collect();
                    let verdicts = match verify_kernel(
                        p.clone(),
                        q.clone(),
                        &active_drafts,
                        greedy,
                        self.rule,
                        Some(fault),
                        rng,
                    )? {
                        Checked::Verdicts(v) => v,
                        // Error paths: locate the fault (further reads).
                        Checked::NonFiniteTarget => {
                            return Err(locate_logits_fault("target", &selected, p));
                        }
                        Checked::NonFiniteDraft => {
                            let check = match &q {
                                Some(q) => check_finite("draft distributions", q),
                                None => Ok(()),
                            };
                            return Err(located("draft distributions", check));
                        }
                    };
                    (active_drafts, verdicts)
                }
            };

            // 4. Commit accepted drafts and the emitted token; feed back the policy.
            for (a, &i) in active.iter().enumerate() {
                let row = &mut rows[i];
                row.target_fed.extend_from_slice(&feed[i]);
                let v = verdicts[a];
                let g = active_drafts[a].len();
                let mut emitted = active_drafts[a][..v.accepted].to_vec();
                emitted.push(v.token);
                record(&mut metrics, row, &emitted, g, config);
                metrics.draft_calls += drafts[i].model_calls as u64;
            }
            if std::mem::take(&mut first_round) {
                metrics.end_prefill(start);
            } else {
                clock.report(&mut rows, &active, &drafts, n_max);
            }
        }
        Ok(finish(rows, metrics, start))
    }
}

/// Commits a round's `emitted` tokens (accepted drafts, then the target's
/// token) to `row`, counts the round and tells the row's policy.
fn record(
    metrics: &mut Metrics,
    row: &mut Row,
    emitted: &[usize],
    drafted: usize,
    config: &GenerationConfig,
) {
    let accepted = emitted.len() - 1;
    metrics.generated_tokens += row.commit(emitted, config) as u64;
    metrics.record_round(drafted, accepted);
    metrics.target_calls += 1;
    row.policy.observe(RoundOutcome { drafted, accepted });
}
