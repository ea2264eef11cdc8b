//! Feature-level drafting (EAGLE: Li et al. 2024, §3): a draft that reads
//! the target's features ([`HiddenFeatures`]) as well as the tokens.
//!
//! The target is wrapped in a [`FeatureTap`], which is the model the
//! decoder verifies with and records the features of every position the
//! target has computed; a [`FeatureDrafter`] reads them. At the start of a
//! round the committed sequence is `x_0 .. x_{L-1}` and the target has
//! computed positions `0 .. L-2` (the last token is fed with the next
//! verification), so the draft can read the true `f_{j-1}` for every
//! committed token `x_j`; past `x_{L-1}` it reads its own predictions `f̂`.
//! Positions it fed with its own predictions are fed again, with the
//! target's features, once those are known. (The tap may also hold
//! features of rejected tokens past `L-2`, until the decoder rolls the
//! target's cache back at the next verification; they are never read.)

use std::cell::RefCell;

use burn::tensor::{Device, Tensor, TensorData};
use lastmile_core::CoreError;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::lm::{FeatureDraftModel, HiddenFeatures, LanguageModel, LmError, LmResult};
use lastmile_core::numerics::SamplingParams;
use rand::Rng;

use crate::drafter::{
    Draft, DraftRequest, Drafter, check_rows, common_prefix, draft_step, stack_q,
};
use crate::error::Result;
use crate::verify::index_tensor;

/// A target model that records its features: a [`LanguageModel`] (the
/// target the decoder verifies with) whose every forward also keeps, per
/// row, the feature of each cached position, forgotten again by
/// [`truncate`](LanguageModel::truncate). It records one cache: the one
/// last made by [`new_cache`](LanguageModel::new_cache).
///
/// ```
/// # #[cfg(feature = "flex")] {
/// # use burn::tensor::{Device, Tensor, TensorData};
/// # use lastmile_core::lm::{HiddenFeatures, LmResult};
/// # struct Echo { device: Device } // features: [token, position]
/// # impl LanguageModel for Echo {
/// #     type Cache = Vec<usize>;
/// #     fn vocab_size(&self) -> usize { 4 }
/// #     fn device(&self) -> Device { self.device.clone() }
/// #     fn new_cache(&self, batch: usize) -> LmResult<Vec<usize>> { Ok(vec![0; batch]) }
/// #     fn cached_len(&self, c: &Vec<usize>, row: usize) -> usize { c[row] }
/// #     fn truncate(&self, c: &mut Vec<usize>, row: usize, len: usize) -> LmResult<()> { c[row] = c[row].min(len); Ok(()) }
/// #     fn forward(&self, c: &mut Vec<usize>, t: &[Vec<usize>]) -> LmResult<Tensor<3>> { Ok(self.forward_features(c, t)?.0) }
/// # }
/// # impl HiddenFeatures for Echo {
/// #     fn feature_dim(&self) -> usize { 2 }
/// #     fn forward_features(&self, c: &mut Vec<usize>, t: &[Vec<usize>]) -> LmResult<(Tensor<3>, Tensor<3>)> {
/// #         let n = t.iter().map(Vec::len).max().unwrap_or(0).max(1);
/// #         let mut f = Vec::new();
/// #         for (row, toks) in t.iter().enumerate() {
/// #             for i in 0..n { f.extend([toks.get(i).copied().unwrap_or(0) as f32, (c[row] + i) as f32]); }
/// #             c[row] += toks.len();
/// #         }
/// #         let b = t.len();
/// #         Ok((Tensor::zeros([b, n, 4], &self.device), Tensor::from_data(TensorData::new(f, [b, n, 2]), &self.device)))
/// #     }
/// # }
/// use lastmile_spec_decode::{FeatureTap, LanguageModel};
/// let target = Echo { device: Device::flex() };
/// let tap = FeatureTap::new(&target);
/// let mut cache = tap.new_cache(1)?;
/// tap.forward(&mut cache, &[vec![3, 1, 2]])?;
/// tap.truncate(&mut cache, 0, 2)?;
/// assert_eq!(tap.features(0, 0..2), Some(vec![3.0, 0.0, 1.0, 1.0]));
/// assert_eq!(tap.features(0, 1..3), None); // position 2 was forgotten
/// # }
/// # Ok::<(), lastmile_spec_decode::LmError>(())
/// ```
pub struct FeatureTap<'m, M: HiddenFeatures> {
    model: &'m M,
    log: RefCell<Vec<Vec<f32>>>,
}

impl<M: HiddenFeatures> std::fmt::Debug for FeatureTap<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureTap")
            .field("rows", &self.log.borrow().len())
            .finish()
    }
}

impl<'m, M: HiddenFeatures> FeatureTap<'m, M> {
    /// Records the features of `model`.
    pub fn new(model: &'m M) -> Self {
        Self {
            model,
            log: RefCell::new(Vec::new()),
        }
    }

    /// The wrapped model.
    pub fn model(&self) -> &'m M {
        self.model
    }

    /// The recorded features of `row` at `positions`, row-major
    /// (`positions.len() · feature_dim` values); `None` when the row or a
    /// position is not recorded.
    pub fn features(&self, row: usize, positions: std::ops::Range<usize>) -> Option<Vec<f32>> {
        let d = self.model.feature_dim();
        let log = self.log.borrow();
        log.get(row)?
            .get(positions.start * d..positions.end * d)
            .map(<[f32]>::to_vec)
    }

    /// Number of positions recorded for `row`.
    pub fn recorded(&self, row: usize) -> usize {
        let d = self.model.feature_dim().max(1);
        self.log.borrow().get(row).map_or(0, |r| r.len() / d)
    }
}

impl<M: HiddenFeatures> LanguageModel for FeatureTap<'_, M> {
    type Cache = M::Cache;

    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }

    fn device(&self) -> Device {
        self.model.device()
    }

    fn max_context(&self) -> usize {
        self.model.max_context()
    }

    fn new_cache(&self, batch: usize) -> LmResult<M::Cache> {
        let cache = self.model.new_cache(batch)?;
        *self.log.borrow_mut() = vec![Vec::new(); batch];
        Ok(cache)
    }

    fn cached_len(&self, cache: &M::Cache, row: usize) -> usize {
        self.model.cached_len(cache, row)
    }

    fn truncate(&self, cache: &mut M::Cache, row: usize, len: usize) -> LmResult<()> {
        self.model.truncate(cache, row, len)?;
        let d = self.model.feature_dim();
        if let Some(r) = self.log.borrow_mut().get_mut(row) {
            r.truncate(len * d);
        }
        Ok(())
    }

    fn forward(&self, cache: &mut M::Cache, tokens: &[Vec<usize>]) -> LmResult<Tensor<3>> {
        let before: Vec<usize> = (0..tokens.len())
            .map(|r| self.model.cached_len(cache, r))
            .collect();
        let (logits, features) = self.model.forward_features(cache, tokens)?;
        let [b, n, d] = features.dims();
        let mut log = self.log.borrow_mut();
        if b != tokens.len() || d != self.model.feature_dim() || log.len() != b {
            return Err(LmError::Batch {
                what: "feature rows".to_owned(),
                expected: format!(
                    "{} rows of {} (the cache last made by FeatureTap::new_cache)",
                    log.len(),
                    self.model.feature_dim()
                ),
                found: b,
            });
        }
        let host = tensor_to_vec(features)?;
        for (row, t) in tokens.iter().enumerate() {
            // A record out of step with the cache (e.g. another cache) is dropped, not misread.
            log[row].truncate(before[row] * d);
            if log[row].len() == before[row] * d {
                log[row].extend_from_slice(&host[row * n * d..(row * n + t.len()) * d]);
            }
        }
        Ok(logits)
    }
}

/// Draws drafts from a feature-level draft model ([`FeatureDraftModel`],
/// e.g. lastmile-models' `LlamaFeatureDraft`) that reads the features a
/// [`FeatureTap`] records; see the [module docs](self). The decoder must
/// verify with that same tap.
///
/// Each round costs as many draft forwards as a [`crate::ModelDrafter`]
/// would: one that feeds what changed since the last round (with the
/// target's features) and gives the first proposal, then one per further
/// token. A sequence's first round proposes nothing when the target has
/// not read its prompt yet (there are no features to read); after that,
/// missing features are an error (a decoder verifying with another model
/// than the tap).
pub struct FeatureDrafter<'a, 'm, T: HiddenFeatures, D: FeatureDraftModel> {
    tap: &'a FeatureTap<'m, T>,
    draft: &'a D,
    cache: Option<D::Cache>,
    /// Tokens in the draft's cache, per row.
    fed: Vec<Vec<usize>>,
    /// Leading positions of `fed` conditioned on the target's features.
    exact: Vec<usize>,
    /// Whether the row has drafted since the reset.
    started: Vec<bool>,
}

impl<T: HiddenFeatures, D: FeatureDraftModel> std::fmt::Debug for FeatureDrafter<'_, '_, T, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureDrafter")
            .field("rows", &self.fed.len())
            .finish()
    }
}

impl<'a, 'm, T: HiddenFeatures, D: FeatureDraftModel> FeatureDrafter<'a, 'm, T, D> {
    /// Drafts with `draft`, reading the features `tap` records.
    ///
    /// # Errors
    /// [`SpecDecodeError::Core`](crate::SpecDecodeError::Core) when the
    /// draft's feature width differs from the target's.
    pub fn new(tap: &'a FeatureTap<'m, T>, draft: &'a D) -> Result<Self> {
        let (dt, dd) = (tap.model().feature_dim(), draft.feature_dim());
        if dt != dd {
            return Err(CoreError::shape(
                "draft feature width",
                format!("the target's {dt}"),
                &[dd],
            )
            .into());
        }
        Ok(Self {
            tap,
            draft,
            cache: None,
            fed: Vec::new(),
            exact: Vec::new(),
            started: Vec::new(),
        })
    }

    /// The features before `tokens` fed at `start..` of `row`: the
    /// target's `f_{j-1}` (zeros before position 0).
    fn target_features(&self, row: usize, start: usize, len: usize) -> LmResult<Vec<f32>> {
        let d = self.draft.feature_dim();
        let mut out = Vec::with_capacity(len * d);
        let from = start.saturating_sub(1);
        if start == 0 {
            out.resize(d, 0.0);
        }
        let to = start + len - 1;
        match self.tap.features(row, from..to) {
            Some(f) => out.extend(f),
            None => {
                return Err(LmError::Batch {
                    what: format!("recorded target positions of row {row}"),
                    expected: format!(
                        "at least {to} (the decoder must verify with the drafter's FeatureTap)"
                    ),
                    found: self.tap.recorded(row),
                });
            }
        }
        Ok(out)
    }
}

impl<T: HiddenFeatures, D: FeatureDraftModel> Drafter for FeatureDrafter<'_, '_, T, D> {
    fn vocab_size(&self) -> Option<usize> {
        Some(self.draft.vocab_size())
    }

    fn max_context(&self) -> usize {
        self.draft.max_context()
    }

    fn is_deterministic(&self) -> bool {
        false
    }

    fn reset(&mut self, batch: usize) -> Result<()> {
        self.cache = Some(self.draft.new_cache(batch)?);
        self.fed = vec![Vec::new(); batch];
        self.exact = vec![0; batch];
        self.started = vec![false; batch];
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
        let Some(mut cache) = self.cache.take() else {
            return Ok(drafts);
        };
        let result = self.run(&mut cache, requests, &mut drafts, sampling, rng);
        self.cache = Some(cache);
        result.map(|()| drafts)
    }
}

impl<T: HiddenFeatures, D: FeatureDraftModel> FeatureDrafter<'_, '_, T, D> {
    fn run<R: Rng + ?Sized>(
        &mut self,
        cache: &mut D::Cache,
        requests: &mut [Option<DraftRequest<'_>>],
        drafts: &mut [Draft],
        sampling: &SamplingParams,
        rng: &mut R,
    ) -> Result<()> {
        let batch = requests.len();
        let (vocab, d) = (self.draft.vocab_size(), self.draft.feature_dim());
        let device = self.draft.device();
        let mut feed: Vec<Vec<usize>> = vec![Vec::new(); batch];
        // Per row, the features before each token of `feed`, row-major.
        let mut before: Vec<Vec<f32>> = vec![Vec::new(); batch];
        for (row, req) in requests.iter().enumerate() {
            let Some(req) = req else { continue };
            if !req.has_room(0) || req.context.is_empty() {
                continue;
            }
            let len = req.context.len();
            if !std::mem::replace(&mut self.started[row], true) && self.tap.recorded(row) + 1 < len
            {
                // The first round of a sequence whose prompt the target has
                // not read yet (the decoder reads it with the first
                // verification): nothing to condition on, so no draft.
                continue;
            }
            let keep = common_prefix(&self.fed[row], req.context)
                .min(self.exact[row])
                .min(len - 1);
            self.draft.truncate(cache, row, keep)?;
            self.fed[row].truncate(keep);
            feed[row] = req.context[keep..].to_vec();
            before[row] = self.target_features(row, keep, len - keep)?;
            self.exact[row] = len;
        }
        let mut q_rows: Vec<Vec<Tensor<2>>> = vec![Vec::new(); batch];
        loop {
            let active: Vec<usize> = (0..batch).filter(|r| !feed[*r].is_empty()).collect();
            if active.is_empty() {
                stack_q(drafts, q_rows);
                return Ok(());
            }
            let n = feed.iter().map(Vec::len).max().unwrap_or(0).max(1);
            let mut f = vec![0.0f32; batch * n * d];
            for &r in &active {
                f[r * n * d..r * n * d + before[r].len()].copy_from_slice(&before[r]);
            }
            let f = Tensor::<3>::from_data(TensorData::new(f, [batch, n, d]), &device);
            let (logits, predicted) = self.draft.forward_conditioned(cache, &feed, f)?;
            let m = lastmile_core::lm::check_logits_shape(&logits, batch, n, vocab)?;
            let last: Vec<usize> = active.iter().map(|&r| r * m + feed[r].len() - 1).collect();
            let index = index_tensor(&last, &device)?;
            let next = tensor_to_vec(predicted.reshape([batch * m, d]).select(0, index.clone()))?;
            for &r in &active {
                self.fed[r].append(&mut feed[r]);
                drafts[r].model_calls += 1;
            }
            let step = draft_step(
                logits.reshape([batch * m, vocab]),
                &last,
                sampling,
                vocab,
                rng,
            )?;
            for (k, &r) in active.iter().enumerate() {
                let Some(req) = requests[r].as_mut() else {
                    continue;
                };
                let dr = &mut drafts[r];
                if !req.wants_more(dr.tokens.len(), &step.info[k]) {
                    continue;
                }
                dr.tokens.push(step.tokens[k]);
                if let Some(q) = &step.q {
                    q_rows[r].push(q.clone().slice([k..k + 1, 0..vocab]));
                }
                if req.has_room(dr.tokens.len()) {
                    feed[r].push(step.tokens[k]);
                    before[r] = next[k * d..(k + 1) * d].to_vec();
                }
            }
        }
    }
}
