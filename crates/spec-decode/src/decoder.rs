//! The speculative decoding loop and the autoregressive baseline.

use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use lastmile_core::numerics::{SamplingParams, argmax, sample_categorical};

use rand::Rng;

use crate::drafter::{Draft, DraftRequest, Drafter, common_prefix};
use crate::error::{Result, SpecDecodeError};
use crate::lm::LanguageModel;
use crate::metrics::Metrics;
use crate::policy::{DraftPolicy, RoundOutcome};
use crate::verify::{ResidualRule, index_tensor, verify_unchecked};

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
    /// `max_new_tokens = 0`.
    pub fn new(sampling: SamplingParams, max_new_tokens: usize) -> Result<Self> {
        if max_new_tokens == 0 {
            return Err(SpecDecodeError::param(
                "max_new_tokens",
                0.0,
                "an integer >= 1",
            ));
        }
        Ok(Self {
            sampling,
            max_new_tokens,
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

fn validate_prompts(
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
struct Row {
    seq: Vec<usize>,
    prompt_len: usize,
    done: bool,
    policy: Box<dyn DraftPolicy>,
    target_fed: Vec<usize>,
}

impl Row {
    /// Appends `tokens`, applying the length limit and stop token.
    fn commit(&mut self, tokens: &[usize], config: &GenerationConfig) -> usize {
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

/// Brings a row's target cache to the committed prefix and returns the tokens
/// still to feed (at least the last committed token).
fn sync_row<M: LanguageModel>(
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

fn check_logits_shape(logits: &Tensor<3>, batch: usize, n: usize, vocab: usize) -> Result<usize> {
    let [b, m, v] = logits.dims();
    if b != batch || v != vocab || m < n {
        return Err(SpecDecodeError::BadLogits {
            expected: format!("[{batch}, >= {n}, {vocab}]"),
            found: vec![b, m, v],
        });
    }
    Ok(m)
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
/// ```
/// # #[cfg(feature = "flex")] {
/// # use burn::tensor::{Device, Tensor, TensorData};
/// # use lastmile_spec_decode::{LanguageModel, Result};
/// # struct Unigram { logits: Vec<f32>, device: Device }
/// # impl LanguageModel for Unigram {
/// #     type Cache = Vec<usize>;
/// #     fn vocab_size(&self) -> usize { self.logits.len() }
/// #     fn device(&self) -> Device { self.device.clone() }
/// #     fn new_cache(&self, batch: usize) -> Result<Vec<usize>> { Ok(vec![0; batch]) }
/// #     fn cached_len(&self, c: &Vec<usize>, row: usize) -> usize { c[row] }
/// #     fn truncate(&self, c: &mut Vec<usize>, row: usize, len: usize) -> Result<()> { c[row] = c[row].min(len); Ok(()) }
/// #     fn forward(&self, c: &mut Vec<usize>, tokens: &[Vec<usize>]) -> Result<Tensor<3>> {
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

    /// Generates continuations of a batch of prompts.
    ///
    /// # Errors
    /// [`SpecDecodeError::NoPrompts`], [`SpecDecodeError::EmptyPrompt`],
    /// [`SpecDecodeError::TokenOutOfRange`], [`SpecDecodeError::ContextOverflow`]
    /// for bad prompts; [`SpecDecodeError::Core`] for NaN logits; any model error.
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
            .map(|p| Row {
                seq: p.clone(),
                prompt_len: p.len(),
                done: false,
                policy: self.policy.clone(),
                target_fed: Vec::new(),
            })
            .collect();
        let mut metrics = Metrics::default();

        while rows.iter().any(|r| !r.done) {
            // 1. Draft. Never draft past the length limit or the context window.
            let mut requests: Vec<Option<DraftRequest<'_>>> = rows
                .iter_mut()
                .map(|row| {
                    if row.done {
                        return None;
                    }
                    let remaining = max_new - (row.seq.len() - row.prompt_len);
                    let room = context.saturating_sub(row.seq.len());
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
            for (row, d) in rows.iter().zip(drafts.iter_mut()) {
                if row.done {
                    d.tokens.clear();
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
            let logits = self.target.forward(&mut cache, &feed)?;
            let n = check_logits_shape(&logits, batch, n_max, vocab)?;
            let active: Vec<usize> = (0..batch).filter(|i| !rows[*i].done).collect();
            let g_max = active
                .iter()
                .map(|&i| drafts[i].tokens.len())
                .max()
                .unwrap_or(0);
            // Positions (pending last token, x_1..x_g) give p_1..p_{g+1}; pad by repeating the last.
            let mut pick = Vec::with_capacity(active.len() * (g_max + 1));
            for &i in &active {
                let len = feed[i].len();
                let g = drafts[i].tokens.len();
                for j in 0..=g_max {
                    pick.push(i * n + len - 1 - g + j.min(g));
                }
            }
            let selected = logits
                .reshape([batch * n, vocab])
                .select(0, index_tensor(&pick, &device)?);
            let p = sampling
                .probabilities(selected)?
                .reshape([active.len(), g_max + 1, vocab]);
            let q = if greedy || g_max == 0 || self.drafter.is_deterministic() {
                None
            } else {
                let mut host = vec![0.0f32; active.len() * g_max * vocab];
                for (a, &i) in active.iter().enumerate() {
                    let g = drafts[i].tokens.len();
                    let probs = drafts[i].probs.as_deref().unwrap_or(&[]);
                    if probs.len() != g * vocab {
                        return Err(SpecDecodeError::BadLogits {
                            expected: format!("{g} x {vocab} draft probabilities from the drafter"),
                            found: vec![probs.len()],
                        });
                    }
                    host[a * g_max * vocab..a * g_max * vocab + g * vocab].copy_from_slice(probs);
                }
                Some(Tensor::<3>::from_data(
                    TensorData::new(host, [active.len(), g_max, vocab]),
                    &device,
                ))
            };
            let active_drafts: Vec<Vec<usize>> =
                active.iter().map(|&i| drafts[i].tokens.clone()).collect();
            let verdicts = verify_unchecked(p, q, &active_drafts, greedy, self.rule, rng)?;

            // 3. Commit accepted drafts and the emitted token; feed back the policy.
            for (a, &i) in active.iter().enumerate() {
                let row = &mut rows[i];
                row.target_fed.extend_from_slice(&feed[i]);
                let v = verdicts[a];
                let g = active_drafts[a].len();
                let mut emitted = active_drafts[a][..v.accepted].to_vec();
                emitted.push(v.token);
                metrics.generated_tokens += row.commit(&emitted, config) as u64;
                metrics.record_round(g, v.accepted);
                metrics.target_calls += 1;
                metrics.draft_calls += drafts[i].model_calls as u64;
                row.policy.observe(RoundOutcome {
                    drafted: g,
                    accepted: v.accepted,
                });
            }
        }
        metrics.elapsed = start.elapsed();
        Ok(Generation {
            tokens: rows
                .into_iter()
                .map(|r| r.seq[r.prompt_len..].to_vec())
                .collect(),
            metrics,
        })
    }
}

/// Plain autoregressive decoding with the target alone: the baseline and
/// the reference for exactness tests.
///
/// One forward per token (the whole prompt in the first). Greedy picks the
/// first maximum; sampling draws from `config.sampling().probabilities(..)`
/// with one categorical draw per sequence per step.
///
/// # Errors
/// As [`SpeculativeDecoder::generate`].
///
/// ```
/// # #[cfg(feature = "flex")] {
/// # use burn::tensor::{Device, Tensor, TensorData};
/// # use lastmile_spec_decode::{LanguageModel, Result};
/// # struct Unigram { logits: Vec<f32>, device: Device }
/// # impl LanguageModel for Unigram {
/// #     type Cache = Vec<usize>;
/// #     fn vocab_size(&self) -> usize { self.logits.len() }
/// #     fn device(&self) -> Device { self.device.clone() }
/// #     fn new_cache(&self, batch: usize) -> Result<Vec<usize>> { Ok(vec![0; batch]) }
/// #     fn cached_len(&self, c: &Vec<usize>, row: usize) -> usize { c[row] }
/// #     fn truncate(&self, c: &mut Vec<usize>, row: usize, len: usize) -> Result<()> { c[row] = c[row].min(len); Ok(()) }
/// #     fn forward(&self, c: &mut Vec<usize>, tokens: &[Vec<usize>]) -> Result<Tensor<3>> {
/// #         let n = tokens.iter().map(Vec::len).max().unwrap_or(0);
/// #         for (l, t) in c.iter_mut().zip(tokens) { *l += t.len(); }
/// #         let data: Vec<f32> = (0..tokens.len() * n).flat_map(|_| self.logits.clone()).collect();
/// #         Ok(Tensor::from_data(TensorData::new(data, [tokens.len(), n, self.logits.len()]), &self.device))
/// #     }
/// # }
/// use lastmile_core::numerics::SamplingParams;
/// use lastmile_spec_decode::{GenerationConfig, generate_autoregressive};
/// use rand::{SeedableRng, rngs::StdRng};
/// let lm = Unigram { logits: vec![0.0, 2.0, 1.0], device: Device::flex() };
/// let config = GenerationConfig::new(SamplingParams::greedy(), 3).unwrap();
/// let out = generate_autoregressive(&lm, &[vec![0]], &config, &mut StdRng::seed_from_u64(0)).unwrap();
/// assert_eq!(out.tokens[0], vec![1, 1, 1]);
/// assert_eq!(out.metrics.target_calls_per_token(), 1.0);
/// # }
/// ```
pub fn generate_autoregressive<M: LanguageModel, R: Rng + ?Sized>(
    model: &M,
    prompts: &[Vec<usize>],
    config: &GenerationConfig,
    rng: &mut R,
) -> Result<Generation> {
    let start = Instant::now();
    let vocab = model.vocab_size();
    validate_prompts(prompts, vocab, config.max_new_tokens, model.max_context())?;
    let batch = prompts.len();
    let device = model.device();
    let mut cache = model.new_cache(batch)?;
    let mut rows: Vec<Row> = prompts
        .iter()
        .map(|p| Row {
            seq: p.clone(),
            prompt_len: p.len(),
            done: false,
            policy: Box::new(crate::policy::StaticLength { gamma: 1 }),
            target_fed: Vec::new(),
        })
        .collect();
    let mut metrics = Metrics::default();
    while rows.iter().any(|r| !r.done) {
        let mut feed = vec![Vec::new(); batch];
        for (i, row) in rows.iter_mut().enumerate() {
            if !row.done {
                feed[i] = sync_row(model, &mut cache, i, row)?;
            }
        }
        let n_max = feed.iter().map(Vec::len).max().unwrap_or(0);
        let logits = model.forward(&mut cache, &feed)?;
        let n = check_logits_shape(&logits, batch, n_max, vocab)?;
        let active: Vec<usize> = (0..batch).filter(|i| !rows[*i].done).collect();
        let pick: Vec<usize> = active.iter().map(|&i| i * n + feed[i].len() - 1).collect();
        let last = logits
            .reshape([batch * n, vocab])
            .select(0, index_tensor(&pick, &device)?);
        let probs = config.sampling.probabilities(last)?;
        let tokens = if config.sampling.is_greedy() {
            argmax(probs)?
        } else {
            sample_categorical(probs, rng)?
        };
        for (a, &i) in active.iter().enumerate() {
            let row = &mut rows[i];
            row.target_fed.extend_from_slice(&feed[i]);
            metrics.generated_tokens += row.commit(&[tokens[a]], config) as u64;
            metrics.target_calls += 1;
        }
    }
    metrics.elapsed = start.elapsed();
    Ok(Generation {
        tokens: rows
            .into_iter()
            .map(|r| r.seq[r.prompt_len..].to_vec())
            .collect(),
        metrics,
    })
}
