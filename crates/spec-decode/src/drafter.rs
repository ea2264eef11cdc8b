//! Drafters: where the proposed tokens come from.

use burn::tensor::Tensor;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::numerics::{SamplingParams, argmax, entropy, sample_categorical, softmax};
use rand::Rng;

use crate::error::{Result, SpecDecodeError};
use crate::lm::LanguageModel;
use crate::policy::{DraftPolicy, DraftStepInfo};
use crate::verify::index_tensor;

/// One sequence's drafting request for this round.
#[derive(Debug)]
pub struct DraftRequest<'a> {
    /// The committed sequence so far (prompt and generated tokens).
    pub context: &'a [usize],
    /// Most tokens to propose (may be 0: propose nothing).
    pub limit: usize,
    /// The sequence's policy, consulted before each token after the first.
    pub policy: &'a mut dyn DraftPolicy,
}

/// Proposed tokens for one sequence.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Draft {
    /// The proposed tokens `x_1..x_g`.
    pub tokens: Vec<usize>,
    /// Row-major `[g, vocab]` draft distributions `q_1..q_g` (processed by
    /// the sampling parameters); `None` for deterministic drafters, whose `q`
    /// is one-hot at the proposed token, and in greedy mode.
    pub probs: Option<Vec<f32>>,
    /// Draft-model forward passes spent on this sequence.
    pub model_calls: usize,
}

/// A source of draft tokens.
///
/// Rows keep their index across calls (row `b` of every call is the same
/// sequence), so stateful drafters may cache per row; `None` requests are
/// finished sequences.
pub trait Drafter {
    /// The vocabulary size, if the drafter has one (checked against the target's).
    fn vocab_size(&self) -> Option<usize>;

    /// Longest context the drafter can read.
    fn max_context(&self) -> usize {
        usize::MAX
    }

    /// Whether proposals are deterministic given the context (`q` one-hot).
    fn is_deterministic(&self) -> bool;

    /// Forgets all state and prepares for `batch` new sequences.
    ///
    /// # Errors
    /// Implementation-defined.
    fn reset(&mut self, batch: usize) -> Result<()>;

    /// Proposes a draft for every `Some` request (an empty [`Draft`] for `None`).
    ///
    /// # Errors
    /// Implementation-defined (model failure, NaN logits, ...).
    fn propose<R: Rng + ?Sized>(
        &mut self,
        requests: &mut [Option<DraftRequest<'_>>],
        sampling: &SamplingParams,
        rng: &mut R,
    ) -> Result<Vec<Draft>>;
}

/// Length of the longest common prefix of `a` and `b`.
pub(crate) fn common_prefix(a: &[usize], b: &[usize]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Draws drafts from a smaller language model, one token per forward.
///
/// Its KV cache is reused across rounds: before drafting, each row is rolled
/// back to the longest prefix it shares with the committed sequence, and
/// only the missing tokens are fed.
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
/// use lastmile_spec_decode::{DraftRequest, Drafter, ModelDrafter, StaticLength};
/// use rand::{SeedableRng, rngs::StdRng};
/// let lm = Unigram { logits: vec![0.0, 5.0, 0.0], device: Device::flex() };
/// let mut drafter = ModelDrafter::new(&lm);
/// drafter.reset(1).unwrap();
/// let mut policy = StaticLength::new(3).unwrap();
/// let context = [0usize, 2];
/// let mut req = [Some(DraftRequest { context: &context, limit: 3, policy: &mut policy })];
/// let drafts = drafter.propose(&mut req, &SamplingParams::greedy(), &mut StdRng::seed_from_u64(0)).unwrap();
/// assert_eq!(drafts[0].tokens, vec![1, 1, 1]);
/// assert_eq!(drafts[0].model_calls, 3);
/// # }
/// ```
pub struct ModelDrafter<'m, M: LanguageModel> {
    model: &'m M,
    cache: Option<M::Cache>,
    fed: Vec<Vec<usize>>,
}

impl<M: LanguageModel> std::fmt::Debug for ModelDrafter<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelDrafter")
            .field("rows", &self.fed.len())
            .finish()
    }
}

impl<'m, M: LanguageModel> ModelDrafter<'m, M> {
    /// Drafts with `model`.
    pub fn new(model: &'m M) -> Self {
        Self {
            model,
            cache: None,
            fed: Vec::new(),
        }
    }
}

impl<M: LanguageModel> Drafter for ModelDrafter<'_, M> {
    fn vocab_size(&self) -> Option<usize> {
        Some(self.model.vocab_size())
    }

    fn max_context(&self) -> usize {
        self.model.max_context()
    }

    fn is_deterministic(&self) -> bool {
        false
    }

    fn reset(&mut self, batch: usize) -> Result<()> {
        self.cache = Some(self.model.new_cache(batch)?);
        self.fed = vec![Vec::new(); batch];
        Ok(())
    }

    fn propose<R: Rng + ?Sized>(
        &mut self,
        requests: &mut [Option<DraftRequest<'_>>],
        sampling: &SamplingParams,
        rng: &mut R,
    ) -> Result<Vec<Draft>> {
        let batch = requests.len();
        let Some(cache) = self.cache.as_mut() else {
            return Err(SpecDecodeError::Model(
                "ModelDrafter::propose called before reset".into(),
            ));
        };
        if self.fed.len() != batch {
            return Err(SpecDecodeError::BadLogits {
                expected: format!(
                    "{} draft requests, as many as rows given to reset",
                    self.fed.len()
                ),
                found: vec![batch],
            });
        }
        let vocab = self.model.vocab_size();
        let greedy = sampling.is_greedy();
        let mut drafts = vec![Draft::default(); batch];
        let mut feed: Vec<Vec<usize>> = vec![Vec::new(); batch];
        // Roll each row back to what it shares with the committed context, keeping
        // at least the last context token to feed (its logits give q_1).
        for (row, req) in requests.iter().enumerate() {
            let Some(req) = req else { continue };
            if req.limit == 0 || req.context.is_empty() {
                continue;
            }
            let keep = common_prefix(&self.fed[row], req.context).min(req.context.len() - 1);
            self.model.truncate(cache, row, keep)?;
            self.fed[row].truncate(keep);
            feed[row] = req.context[keep..].to_vec();
            if !greedy {
                drafts[row].probs = Some(Vec::new());
            }
        }
        loop {
            let active: Vec<usize> = (0..batch).filter(|r| !feed[*r].is_empty()).collect();
            if active.is_empty() {
                break;
            }
            let logits = self.model.forward(cache, &feed)?;
            let [lb, n, lv] = logits.dims();
            if lb != batch || lv != vocab || n < feed.iter().map(Vec::len).max().unwrap_or(0) {
                return Err(SpecDecodeError::BadLogits {
                    expected: format!("[{batch}, >= longest fed row, {vocab}]"),
                    found: vec![lb, n, lv],
                });
            }
            let last: Vec<usize> = active.iter().map(|&r| r * n + feed[r].len() - 1).collect();
            for &r in &active {
                self.fed[r].extend_from_slice(&feed[r]);
                drafts[r].model_calls += 1;
            }
            let rows: Tensor<2> = logits
                .reshape([batch * n, vocab])
                .select(0, index_tensor(&last, &self.model.device())?);
            let q = sampling.probabilities(rows.clone())?;
            // Confidence signal: q itself, or the untempered softmax in greedy mode.
            let conf = if greedy {
                softmax(rows.clone(), 1.0)?
            } else {
                q.clone()
            };
            // Rows past their policy's unconditional prefix need the signal.
            let consult = |r: usize, drafts: &[Draft]| {
                requests[r]
                    .as_ref()
                    .is_some_and(|req| drafts[r].tokens.len() >= req.policy.min_len())
            };
            let needs_info = active.iter().any(|&r| consult(r, &drafts));
            let info: Vec<DraftStepInfo> = if needs_info {
                let h = tensor_to_vec(entropy(conf.clone())?)?;
                let top = tensor_to_vec(conf.max_dim(1))?;
                h.iter()
                    .zip(&top)
                    .map(|(h, t)| DraftStepInfo {
                        entropy: f64::from(*h),
                        top_prob: f64::from(*t),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            // Ask the policies first, so that rows that stop cost no sampling.
            let keep: Vec<usize> = (0..active.len())
                .filter(|&i| {
                    let r = active[i];
                    let drafted = drafts[r].tokens.len();
                    match requests[r].as_mut() {
                        Some(req) => {
                            drafted < req.policy.min_len()
                                || req.policy.continue_drafting(drafted, &info[i])
                        }
                        None => false,
                    }
                })
                .collect();
            for &r in &active {
                feed[r].clear();
            }
            if keep.is_empty() {
                break;
            }
            let (rows, q) = if keep.len() == active.len() {
                (rows, q)
            } else {
                let idx = index_tensor(&keep, &self.model.device())?;
                (rows.select(0, idx.clone()), q.select(0, idx))
            };
            let (tokens, q_host) = if greedy {
                (argmax(rows)?, Vec::new())
            } else {
                (sample_categorical(q.clone(), rng)?, tensor_to_vec(q)?)
            };
            for (k, &i) in keep.iter().enumerate() {
                let r = active[i];
                let d = &mut drafts[r];
                d.tokens.push(tokens[k]);
                if let Some(p) = d.probs.as_mut() {
                    p.extend_from_slice(&q_host[k * vocab..(k + 1) * vocab]);
                }
                let limit = requests[r].as_ref().map_or(0, |req| req.limit);
                if d.tokens.len() < limit {
                    feed[r].push(tokens[k]);
                }
            }
        }
        Ok(drafts)
    }
}

/// Prompt lookup (n-gram) drafting: no model at all.
///
/// Finds the most recent earlier occurrence of the context's last `n` tokens
/// (trying `n = max_ngram` down to `min_ngram`) and proposes the tokens that
/// followed it (Saxena 2023, "Prompt Lookup Decoding"; HF
/// `prompt_lookup_num_tokens`). Proposals are deterministic, so `q` is one-hot.
///
/// ```
/// use lastmile_spec_decode::PromptLookup;
/// let pl = PromptLookup::new(1, 3, 4).unwrap();
/// // "... 1 2 3 4 ... 1 2" -> propose "3 4 9"
/// assert_eq!(pl.lookup(&[1, 2, 3, 4, 9, 1, 2], 10), vec![3, 4, 9, 1]);
/// assert!(pl.lookup(&[5, 6, 7], 10).is_empty());
/// ```
#[derive(Clone, Debug)]
pub struct PromptLookup {
    min_ngram: usize,
    max_ngram: usize,
    max_tokens: usize,
}

impl PromptLookup {
    /// Matches n-grams of `min_ngram..=max_ngram` tokens and proposes up to
    /// `max_tokens` tokens (HF defaults: n = 2, 10 tokens).
    ///
    /// # Errors
    /// `min_ngram = 0`, `max_ngram < min_ngram`, `max_tokens = 0`.
    pub fn new(min_ngram: usize, max_ngram: usize, max_tokens: usize) -> Result<Self> {
        if min_ngram == 0 || max_ngram < min_ngram {
            return Err(SpecDecodeError::param(
                "max_ngram",
                max_ngram as f64,
                "1 <= min_ngram <= max_ngram",
            ));
        }
        if max_tokens == 0 {
            return Err(SpecDecodeError::param("max_tokens", 0.0, "an integer >= 1"));
        }
        Ok(Self {
            min_ngram,
            max_ngram,
            max_tokens,
        })
    }

    /// The continuation proposed for `context`, at most `limit` (and
    /// `max_tokens`) tokens; empty when no n-gram recurs.
    pub fn lookup(&self, context: &[usize], limit: usize) -> Vec<usize> {
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
                let to = (from + limit).min(len);
                return context[from..to].to_vec();
            }
        }
        Vec::new()
    }
}

impl Drafter for PromptLookup {
    fn vocab_size(&self) -> Option<usize> {
        None
    }

    fn is_deterministic(&self) -> bool {
        true
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
        let point_mass = DraftStepInfo {
            entropy: 0.0,
            top_prob: 1.0,
        };
        Ok(requests
            .iter_mut()
            .map(|req| {
                let Some(req) = req else {
                    return Draft::default();
                };
                let mut tokens = self.lookup(req.context, req.limit);
                let keep = (req.policy.min_len()..tokens.len())
                    .find(|&i| !req.policy.continue_drafting(i, &point_mass))
                    .unwrap_or(tokens.len());
                tokens.truncate(keep);
                Draft {
                    tokens,
                    probs: None,
                    model_calls: 0,
                }
            })
            .collect())
    }
}
