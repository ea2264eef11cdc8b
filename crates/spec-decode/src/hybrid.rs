//! Prompt lookup first, a draft model elsewhere.
//!
//! Long outputs repeat their prompt and themselves (code, quotations, lists,
//! greedy loops); there an n-gram match ([`PromptLookup`]) proposes several
//! tokens for no model call, while a draft model pays a forward per token.
//! Where nothing recurs, lookup has nothing to say and the draft model
//! drafts. [`HybridDrafter`] makes that choice per sequence and per round.

use burn::tensor::Device;
use lastmile_core::convert::tensor_from_vec;
use lastmile_core::numerics::SamplingParams;
use rand::Rng;

use crate::drafter::{Draft, DraftRequest, Drafter};
use crate::error::{Result, SpecDecodeError};
use crate::lookup::PromptLookup;
use crate::policy::{DraftSource, DraftStepInfo};

/// Drafts by [`PromptLookup`] where the committed sequence's last n-gram
/// occurred before, and by another [`Drafter`] (a draft model) everywhere
/// else, per sequence and round.
///
/// Both sources answer to the sequence's [`DraftPolicy`](crate::DraftPolicy):
/// looked-up tokens reach it with the copy model's confidence, exactly as
/// from [`PromptLookup`] alone, and model tokens with the draft's, so a
/// policy that reads confidence (AdaEDL, max-confidence, cost-aware
/// AdaEDL) judges each by its own. When sampling, a looked-up draft carries its one-hot `q`
/// (made on `device`), so verification stays exact whichever source drafted;
/// the draft model is not run for a looked-up row and catches up on the
/// committed tokens in the next round it drafts.
///
/// Choose the lookup's `min_ngram` with care: a one-token match recurs
/// almost everywhere and would take most rounds from the draft model.
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
/// use lastmile_spec_decode::{DraftRequest, Drafter, HybridDrafter, ModelDrafter, PromptLookup, StaticLength};
/// use rand::{SeedableRng, rngs::StdRng};
/// let device = Device::flex();
/// let lm = Unigram { logits: vec![0.0, 5.0, 0.0, 0.0], device: device.clone() };
/// let lookup = PromptLookup::new(2, 3, 8)?;
/// let mut drafter = HybridDrafter::new(lookup, ModelDrafter::new(&lm), &device)?;
/// drafter.reset(2)?;
/// let (mut a, mut b) = (StaticLength::new(2)?, StaticLength::new(2)?);
/// let repeats = [2usize, 3, 0, 2, 3]; // "2 3" occurred before: propose "0 2"
/// let fresh = [2usize, 3, 0];
/// let mut requests = [
///     Some(DraftRequest { context: &repeats, limit: 2, policy: &mut a }),
///     Some(DraftRequest { context: &fresh, limit: 2, policy: &mut b }),
/// ];
/// let drafts = drafter.propose(&mut requests, &SamplingParams::greedy(), &mut StdRng::seed_from_u64(0))?;
/// assert_eq!((drafts[0].tokens.clone(), drafts[0].model_calls), (vec![0, 2], 0));
/// assert_eq!((drafts[1].tokens.clone(), drafts[1].model_calls), (vec![1, 1], 2));
/// assert_eq!(drafter.looked_up_rounds(), 1);
/// # }
/// # Ok::<(), lastmile_spec_decode::SpecDecodeError>(())
/// ```
#[derive(Debug)]
pub struct HybridDrafter<D: Drafter> {
    lookup: PromptLookup,
    drafter: D,
    device: Device,
    looked_up: u64,
    drafted: u64,
}

impl<D: Drafter> HybridDrafter<D> {
    /// Looks up with `lookup`, drafts with `drafter` where it finds nothing;
    /// one-hot draft distributions of looked-up tokens are made on `device`
    /// (the target's).
    ///
    /// ```
    /// use burn::tensor::Device;
    /// use lastmile_core::numerics::SamplingParams;
    /// use lastmile_spec_decode::{DraftRequest, Drafter, HybridDrafter, PromptLookup, StaticLength};
    /// use rand::{SeedableRng, rngs::StdRng};
    /// // Trigram lookup first; a single-token lookup stands in for the draft model.
    /// let fallback = PromptLookup::new(1, 1, 4)?;
    /// let mut d = HybridDrafter::new(PromptLookup::new(3, 3, 4)?, fallback, &Device::default())?;
    /// d.reset(1)?;
    /// let mut policy = StaticLength::new(2)?;
    /// let context = [5usize, 1, 2, 7, 1]; // no trigram recurs, the token 1 does
    /// let mut req = [Some(DraftRequest { context: &context, limit: 2, policy: &mut policy })];
    /// let drafts = d.propose(&mut req, &SamplingParams::greedy(), &mut StdRng::seed_from_u64(0))?;
    /// assert_eq!(drafts[0].tokens, vec![2, 7]);
    /// assert_eq!((d.looked_up_rounds(), d.model_rounds()), (0, 1));
    /// assert_eq!(d.drafter().lookup(&context, 1), vec![2]);
    /// # Ok::<(), lastmile_spec_decode::SpecDecodeError>(())
    /// ```
    ///
    /// # Errors
    /// [`SpecDecodeError::MissingDraftVocab`] when `drafter` samples (is not
    /// deterministic) but does not state its vocabulary, which the one-hot
    /// distributions need.
    pub fn new(lookup: PromptLookup, drafter: D, device: &Device) -> Result<Self> {
        if !drafter.is_deterministic() && drafter.vocab_size().is_none() {
            return Err(SpecDecodeError::MissingDraftVocab);
        }
        Ok(Self {
            lookup,
            drafter,
            device: device.clone(),
            looked_up: 0,
            drafted: 0,
        })
    }

    /// The wrapped draft model's drafter.
    pub fn drafter(&self) -> &D {
        &self.drafter
    }

    /// Sequence-rounds since the last [`reset`](Drafter::reset) whose
    /// draft came from prompt lookup.
    pub fn looked_up_rounds(&self) -> u64 {
        self.looked_up
    }

    /// Sequence-rounds since the last [`reset`](Drafter::reset) handed to
    /// the draft model.
    pub fn model_rounds(&self) -> u64 {
        self.drafted
    }
}

impl<D: Drafter> Drafter for HybridDrafter<D> {
    fn vocab_size(&self) -> Option<usize> {
        self.drafter.vocab_size()
    }

    fn max_context(&self) -> usize {
        self.drafter.max_context()
    }

    fn is_deterministic(&self) -> bool {
        self.drafter.is_deterministic()
    }

    /// [`Lookup`](DraftSource::Lookup) where the context's last n-gram
    /// occurred before (the round will be looked up), else the draft model's.
    fn source(&self, context: &[usize]) -> DraftSource {
        if self.lookup.has_match(context) {
            DraftSource::Lookup
        } else {
            self.drafter.source(context)
        }
    }

    fn reset(&mut self, batch: usize) -> Result<()> {
        self.looked_up = 0;
        self.drafted = 0;
        self.drafter.reset(batch)
    }

    fn propose<R: Rng + ?Sized>(
        &mut self,
        requests: &mut [Option<DraftRequest<'_>>],
        sampling: &SamplingParams,
        rng: &mut R,
    ) -> Result<Vec<Draft>> {
        // Rows whose n-gram recurs are taken out of the model's requests.
        type Found<'r> = (Vec<usize>, Vec<DraftStepInfo>, DraftRequest<'r>);
        let mut looked_up: Vec<Option<Found<'_>>> = Vec::new();
        for req in requests.iter_mut() {
            let found = req
                .as_ref()
                .map(|r| self.lookup.lookup_with_info(r.context, r.limit))
                .filter(|(t, _)| !t.is_empty());
            looked_up.push(found.and_then(|(t, info)| req.take().map(|r| (t, info, r))));
        }
        self.looked_up += looked_up.iter().flatten().count() as u64;
        self.drafted += requests.iter().flatten().count() as u64;
        let mut drafts = self.drafter.propose(requests, sampling, rng)?;
        let one_hot = !sampling.is_greedy() && !self.drafter.is_deterministic();
        let vocab = self.drafter.vocab_size().unwrap_or(0);
        for ((slot, found), draft) in requests.iter_mut().zip(looked_up).zip(drafts.iter_mut()) {
            let Some((tokens, info, mut req)) = found else {
                continue;
            };
            let tokens = self.lookup.policy_prefix(tokens, &info, &mut req);
            let q = if one_hot && !tokens.is_empty() {
                let mut data = vec![0.0f32; tokens.len() * vocab];
                for (i, &x) in tokens.iter().enumerate() {
                    // Looked-up ids come from the validated context: below
                    // the vocabulary, which the decoder checked is shared.
                    if let Some(v) = data.get_mut(i * vocab + x) {
                        *v = 1.0;
                    }
                }
                Some(tensor_from_vec(data, [tokens.len(), vocab], &self.device)?)
            } else {
                None
            };
            *draft = Draft {
                tokens,
                q,
                model_calls: 0,
            };
            *slot = Some(req);
        }
        Ok(drafts)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use burn::tensor::Device;
    use lastmile_core::backend_test;
    use lastmile_core::convert::tensor_to_vec;
    use lastmile_core::numerics::SamplingParams;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use crate::exactness_tests::NGramLm;
    use crate::*;

    /// A sampling drafter that does not know its vocabulary.
    #[derive(Debug)]
    struct Vague;

    impl Drafter for Vague {
        fn vocab_size(&self) -> Option<usize> {
            None
        }
        fn is_deterministic(&self) -> bool {
            false
        }
        fn reset(&mut self, _batch: usize) -> Result<()> {
            Ok(())
        }
        fn propose<R: rand::Rng + ?Sized>(
            &mut self,
            requests: &mut [Option<DraftRequest<'_>>],
            _sampling: &SamplingParams,
            _rng: &mut R,
        ) -> Result<Vec<Draft>> {
            Ok(vec![Draft::default(); requests.len()])
        }
    }

    #[test]
    fn a_sampling_drafter_must_state_its_vocabulary() {
        let lookup = PromptLookup::new(2, 3, 4).unwrap();
        let err = HybridDrafter::new(lookup, Vague, &Device::default()).unwrap_err();
        assert!(matches!(err, SpecDecodeError::MissingDraftVocab), "{err}");
    }

    backend_test!(looked_up_rows_carry_one_hot_q_when_sampling, |device| {
        let draft = NGramLm::draft(device);
        let lookup = PromptLookup::new(2, 3, 8).unwrap();
        let mut drafter = HybridDrafter::new(lookup, ModelDrafter::new(&draft), device).unwrap();
        drafter.reset(3).unwrap();
        let (mut a, mut c) = (StaticLength::new(3).unwrap(), StaticLength::new(3).unwrap());
        let repeats = [1usize, 4, 2, 0, 1, 4];
        let fresh = [3usize, 2, 0];
        let mut requests = [
            Some(DraftRequest {
                context: &repeats,
                limit: 3,
                policy: &mut a,
            }),
            None,
            Some(DraftRequest {
                context: &fresh,
                limit: 3,
                policy: &mut c,
            }),
        ];
        let sampling = SamplingParams::new(1.0).unwrap();
        let drafts = drafter
            .propose(&mut requests, &sampling, &mut StdRng::seed_from_u64(1))
            .unwrap();
        // Row 0: "1 4" recurs, so lookup proposes what followed it.
        assert_eq!(drafts[0].tokens, vec![2, 0, 1]);
        assert_eq!(drafts[0].model_calls, 0);
        let q = tensor_to_vec(drafts[0].q.clone().unwrap()).unwrap();
        let mut expected = vec![0.0f32; 15];
        for (i, &x) in [2usize, 0, 1].iter().enumerate() {
            expected[i * 5 + x] = 1.0;
        }
        assert_eq!(q, expected);
        // Row 1 is finished; row 2 has no recurring bigram: the model drafts.
        assert!(drafts[1].tokens.is_empty() && drafts[1].q.is_none());
        assert_eq!(drafts[2].tokens.len(), 3);
        assert_eq!(drafts[2].model_calls, 3);
        assert_eq!(drafts[2].q.as_ref().map(|q| q.dims()), Some([3, 5]));
        // The requests are handed back to the caller as they came.
        assert!(requests[0].is_some() && requests[1].is_none() && requests[2].is_some());
        assert_eq!((drafter.looked_up_rounds(), drafter.model_rounds()), (1, 1));
        // Greedy drafts of looked-up rows carry no q.
        drafter.reset(1).unwrap();
        let mut p = StaticLength::new(2).unwrap();
        let mut requests = [Some(DraftRequest {
            context: &repeats,
            limit: 2,
            policy: &mut p,
        })];
        let drafts = drafter
            .propose(
                &mut requests,
                &SamplingParams::greedy(),
                &mut StdRng::seed_from_u64(1),
            )
            .unwrap();
        assert_eq!(drafts[0].tokens, vec![2, 0]);
        assert!(drafts[0].q.is_none());
    });
}
