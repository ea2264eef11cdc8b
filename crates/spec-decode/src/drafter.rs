//! Drafters: where the proposed tokens come from.

use burn::tensor::{Tensor, TensorData};
use lastmile_core::CoreError;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::lm::{LmError, check_last_logits_shape};
use lastmile_core::numerics::{
    SamplingParams, entropy, entropy_row, max_and_tame, sample_categorical_on_device, softmax,
};
use rand::Rng;

use crate::error::Result;
use crate::greedy::{Greedy, greedy_rows, host_logits_fault};
use crate::policy::{DraftPolicy, DraftSource, DraftStepInfo};
use crate::sampled::{Tempered, draw, tempered_rows};
use crate::verify::{index_tensor, locate_logits_fault, logits_fault, non_finite_flag};
use lastmile_core::lm::LanguageModel;

/// One sequence's drafting request for this round.
///
/// The decoder fills it once per round (with the policy's
/// [`round_limit`](DraftPolicy::round_limit), capped by the length and
/// context budgets); every drafter then decides each further token with
/// [`wants_more`](DraftRequest::wants_more), the one place where the limit,
/// the policy's [`min_len`](DraftPolicy::min_len) and its
/// [`continue_drafting`](DraftPolicy::continue_drafting) are combined.
#[derive(Debug)]
pub struct DraftRequest<'a> {
    /// The committed sequence so far (prompt and generated tokens).
    pub context: &'a [usize],
    /// Most tokens to propose (may be 0: propose nothing).
    pub limit: usize,
    /// The sequence's policy, consulted before each token past its `min_len`.
    pub policy: &'a mut dyn DraftPolicy,
}

impl DraftRequest<'_> {
    /// Whether to prepare token number `drafted + 1` at all (e.g. run one
    /// more draft forward): the limit leaves room for it, and past the
    /// policy's [`min_len`](DraftPolicy::min_len) the policy finds the step
    /// [worth its cost](DraftPolicy::worth_a_step).
    ///
    /// ```
    /// use lastmile_spec_decode::{DraftRequest, StaticLength};
    /// let mut policy = StaticLength::new(4).unwrap();
    /// let req = DraftRequest { context: &[1, 2], limit: 2, policy: &mut policy };
    /// assert!(req.has_room(1));
    /// assert!(!req.has_room(2));
    /// ```
    pub fn has_room(&self, drafted: usize) -> bool {
        drafted < self.limit
            && (drafted < self.policy.min_len() || self.policy.worth_a_step(drafted))
    }

    /// Whether to draft token number `drafted + 1`, whose draft distribution
    /// is summarised by `next`: there is [room](Self::has_room) for it, and
    /// either `drafted` is below the policy's [`min_len`](DraftPolicy::min_len)
    /// or the policy's [`continue_drafting`](DraftPolicy::continue_drafting)
    /// says yes (consulted only then, so stateful policies see exactly the
    /// positions they decide). A drafter stops at the first `false`.
    ///
    /// ```
    /// use lastmile_spec_decode::{DraftRequest, DraftStepInfo, MaxConfidence};
    /// let mut policy = MaxConfidence::new(0.5, 8).unwrap();
    /// let mut req = DraftRequest { context: &[1, 2], limit: 3, policy: &mut policy };
    /// let unsure = DraftStepInfo { entropy: 2.0, top_prob: 0.2 };
    /// assert!(req.wants_more(0, &unsure)); // below min_len = 1: unconditional
    /// assert!(!req.wants_more(1, &unsure)); // the policy stops
    /// let sure = DraftStepInfo { entropy: 0.1, top_prob: 0.9 };
    /// assert!(req.wants_more(2, &sure));
    /// assert!(!req.wants_more(3, &sure)); // the limit
    /// ```
    pub fn wants_more(&mut self, drafted: usize, next: &DraftStepInfo) -> bool {
        self.has_room(drafted)
            && (drafted < self.policy.min_len() || self.policy.continue_drafting(drafted, next))
    }
}

/// Proposed tokens for one sequence.
#[derive(Clone, Debug, Default)]
pub struct Draft {
    /// The proposed tokens `x_1..x_g`.
    pub tokens: Vec<usize>,
    /// The draft distributions `q_1..q_g` (processed by the sampling
    /// parameters), `[g, vocab]`, left on the device: the decoder stacks them
    /// for verification without reading them back. `None` for deterministic
    /// drafters (whose `q` is one-hot at the proposed token), in greedy mode,
    /// and for an empty draft.
    pub q: Option<Tensor<2>>,
    /// Draft-model forward passes spent on this sequence.
    pub model_calls: usize,
}

/// A source of draft tokens.
///
/// Rows keep their index across calls (row `b` of every call is the same
/// sequence), so stateful drafters may cache per row; `None` requests are
/// finished sequences. A drafter decides each token with
/// [`DraftRequest::wants_more`].
pub trait Drafter {
    /// The vocabulary size, if the drafter has one (checked against the target's).
    fn vocab_size(&self) -> Option<usize>;

    /// Longest context the drafter can read.
    fn max_context(&self) -> usize {
        usize::MAX
    }

    /// Whether proposals are deterministic given the context (`q` one-hot).
    fn is_deterministic(&self) -> bool;

    /// Which source would draft the next round of a sequence whose
    /// committed tokens are `context`, told to its policy before the round
    /// ([`DraftPolicy::begin_round`]). [`DraftSource::Model`] by default;
    /// [`PromptLookup`](crate::PromptLookup) says
    /// [`Lookup`](DraftSource::Lookup), and
    /// [`HybridDrafter`](crate::HybridDrafter) says which of its two will
    /// draft.
    fn source(&self, context: &[usize]) -> DraftSource {
        let _ = context;
        DraftSource::Model
    }

    /// Forgets all state and prepares for `batch` new sequences.
    ///
    /// # Errors
    /// Implementation-defined.
    fn reset(&mut self, batch: usize) -> Result<()>;

    /// Proposes a draft for every `Some` request (an empty [`Draft`] for
    /// `None`), one [`Draft`] per request, at most `limit` tokens each; a
    /// drafter that is not [deterministic](Drafter::is_deterministic) must
    /// give `q` (`[g, vocab]`) for every non-empty draft when sampling.
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
        check_rows(self.fed.len(), batch)?;
        let mut drafts = vec![Draft::default(); batch];
        let Some(cache) = self.cache.as_mut() else {
            return Ok(drafts); // never reset and no requests: nothing to do
        };
        let vocab = self.model.vocab_size();
        if vocab > MAX_EXACT_TOKEN {
            return Err(CoreError::out_of_range(
                "draft vocabulary size",
                vocab as f64,
                "at most 2^24 tokens (sampled ids are read back as f32 with the policy signals)",
            )
            .into());
        }
        let mut feed: Vec<Vec<usize>> = vec![Vec::new(); batch];
        // Roll each row back to what it shares with the committed context, keeping
        // at least the last context token to feed (its logits give q_1).
        for (row, req) in requests.iter().enumerate() {
            let Some(req) = req else { continue };
            if !req.has_room(0) || req.context.is_empty() {
                continue;
            }
            let keep = common_prefix(&self.fed[row], req.context).min(req.context.len() - 1);
            self.model.truncate(cache, row, keep)?;
            self.fed[row].truncate(keep);
            feed[row] = req.context[keep..].to_vec();
        }
        // Per row, the q rows of its drafted tokens (device slices, stacked at the end).
        let mut q_rows: Vec<Vec<Tensor<2>>> = vec![Vec::new(); batch];
        loop {
            let active: Vec<usize> = (0..batch).filter(|r| !feed[*r].is_empty()).collect();
            if active.is_empty() {
                break;
            }
            // Each row's last position only: catching up on a prompt runs
            // the draft's head on its last token alone.
            let logits = self.model.forward_last(cache, &feed, 1)?;
            check_last_logits_shape(&logits, batch, 1, vocab)?;
            let last = active.clone();
            for &r in &active {
                self.fed[r].append(&mut feed[r]);
                drafts[r].model_calls += 1;
            }
            let step = draft_step(logits.reshape([batch, vocab]), &last, sampling, vocab, rng)?;
            // The policies decide on the signals only; a row that stops
            // discards its sample (below).
            for (k, &r) in active.iter().enumerate() {
                let Some(req) = requests[r].as_mut() else {
                    continue;
                };
                let d = &mut drafts[r];
                if !req.wants_more(d.tokens.len(), &step.info[k]) {
                    continue;
                }
                d.tokens.push(step.tokens[k]);
                if let Some(q) = &step.q {
                    q_rows[r].push(q.clone().slice([k..k + 1, 0..vocab]));
                }
                if req.has_room(d.tokens.len()) {
                    feed[r].push(step.tokens[k]);
                }
            }
        }
        stack_q(&mut drafts, q_rows);
        Ok(drafts)
    }
}

/// Checks that a drafter reset for `rows` rows is asked for as many.
pub(crate) fn check_rows(rows: usize, batch: usize) -> Result<()> {
    if rows != batch {
        return Err(LmError::Batch {
            what: "draft requests".to_owned(),
            expected: format!(
                "{rows} (the rows given to Drafter::reset, which must be called first)"
            ),
            found: batch,
        }
        .into());
    }
    Ok(())
}

/// Stacks each draft's `q` rows (device slices) into its `q`.
pub(crate) fn stack_q(drafts: &mut [Draft], q_rows: Vec<Vec<Tensor<2>>>) {
    for (d, rows) in drafts.iter_mut().zip(q_rows) {
        if !rows.is_empty() {
            d.q = Some(Tensor::cat(rows, 0));
        }
    }
}

/// Largest vocabulary whose ids survive the trip through `f32` exactly.
const MAX_EXACT_TOKEN: usize = 1 << 24;

/// What one draft step brings back from the device.
pub(crate) struct DraftStep {
    /// A proposal per active row.
    pub(crate) tokens: Vec<usize>,
    /// The policy signals per active row.
    pub(crate) info: Vec<DraftStepInfo>,
    /// The processed draft distributions `[active, vocab]` (sampling only).
    pub(crate) q: Option<Tensor<2>>,
}

/// One draft step for the active rows' last logits, rows `last` of
/// `logits` `[rows, vocab]` (`A` of them), with **one** read-back: the
/// proposals, the policy signals (entropy and top probability) and a
/// validity flag travel together as `f32`.
///
/// Sampling draws a token for every active row (one uniform each, in row
/// order) before the policies decide: a row whose policy then stops discards
/// its sample. That keeps drafting exact: the decision depends on `q` only,
/// never on the sample, so a kept token is still a draw from `q`, and the
/// verifier receives exactly the `q` it was drawn from. Greedy drafting
/// takes the argmax of the logits and computes the signals from the
/// untempered softmax (greedy `q` is one-hot and says nothing). On a CPU
/// device both read the logits once, in place, and decide on the host
/// ([`crate::greedy`], [`crate::sampled`]: the same decisions and draws).
pub(crate) fn draft_step<R: Rng + ?Sized>(
    logits: Tensor<2>,
    last: &[usize],
    sampling: &SamplingParams,
    vocab: usize,
    rng: &mut R,
) -> Result<DraftStep> {
    let a = last.len();
    let device = logits.device();
    let (host, logits) = if sampling.is_greedy() {
        greedy_rows(logits, last, true)?
    } else {
        (Greedy::NotHost, logits)
    };
    if let Greedy::Rows(found) = host {
        return Ok(DraftStep {
            tokens: found.iter().map(|g| g.token).collect(),
            info: found
                .iter()
                .map(|g| DraftStepInfo {
                    entropy: f64::from(g.entropy),
                    top_prob: f64::from(g.top),
                })
                .collect(),
            q: None,
        });
    }
    let (tempered, logits) = match host {
        Greedy::NotHost => tempered_rows(logits, last, sampling)?,
        _ => (Tempered::NotHost, logits),
    };
    if let Tempered::Rows(q) = tempered {
        let v = logits.dims()[1];
        let tokens = draw(&q, v, rng);
        let info = q
            .chunks_exact(v.max(1))
            .map(|row| DraftStepInfo {
                entropy: f64::from(entropy_row(row)),
                top_prob: f64::from(max_and_tame(row).0),
            })
            .collect();
        let q = Tensor::from_data(TensorData::new(q, [a, v]), &device);
        return Ok(DraftStep {
            tokens,
            info,
            q: Some(q),
        });
    }
    let rows = logits.select(0, index_tensor(last, &device)?);
    if let Tempered::Fault = tempered {
        let q = sampling.probabilities_unchecked(rows.clone())?;
        return Err(locate_logits_fault("draft", &rows, q));
    }
    if let Greedy::Fault = host {
        let conf = softmax(rows.clone(), 1.0)?;
        return Err(locate_logits_fault("draft", &rows, conf));
    }
    let (q, conf, tokens) = if sampling.is_greedy() {
        let conf = softmax(rows.clone(), 1.0)?;
        (None, conf, rows.clone().argmax(1).reshape([a]))
    } else {
        let q = sampling.probabilities_unchecked(rows.clone())?;
        let tokens = sample_categorical_on_device(q.clone(), rng)?;
        (Some(q.clone()), q, tokens)
    };
    // NaN / +inf logits, fully masked rows, or an overflow of logits / T.
    let logits_bad = match host_logits_fault(&rows)? {
        Some(flag) => flag,
        None => logits_fault(&rows),
    };
    let bad = (logits_bad + non_finite_flag(conf.clone())).float();
    let h = entropy(conf.clone())?;
    let top = conf.clone().max_dim(1).reshape([a]);
    let host = tensor_to_vec(Tensor::cat(vec![tokens.float(), h, top, bad], 0))?;
    if host.len() != 3 * a + 1 {
        return Err(CoreError::TensorData(format!(
            "read {} values of a draft step; expected {}",
            host.len(),
            3 * a + 1
        ))
        .into());
    }
    if host[3 * a] != 0.0 {
        return Err(locate_logits_fault("draft", &rows, conf));
    }
    let tokens = host[..a]
        .iter()
        .map(|&t| {
            let id = t as usize;
            if t >= 0.0 && id as f32 == t && id < vocab {
                Ok(id)
            } else {
                Err(CoreError::TensorData(format!(
                    "draft step read token {t}; expected an id < {vocab}"
                )))
            }
        })
        .collect::<std::result::Result<Vec<usize>, CoreError>>()?;
    let info = (0..a)
        .map(|k| DraftStepInfo {
            entropy: f64::from(host[a + k]),
            top_prob: f64::from(host[2 * a + k]),
        })
        .collect();
    Ok(DraftStep { tokens, info, q })
}
