//! Timing a language model's steps, for the costs the speculative-decoding
//! policies weigh (in target steps).

use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::lm::LanguageModel;
use lastmile_spec_decode::{DraftPolicy, InLoopCosts, RoundTiming};

/// Seconds per cached forward of `k` new tokens after a `prefix`-token
/// context, rolled back after each repetition as a rejected verify pass is
/// (median of `reps`, the logits read back each time).
///
/// # Errors
/// A failing forward, or `prefix + k` past the model's context.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_examples::timing::step_time;
/// use lastmile_models::llama::{LlamaConfig, WeightStorage};
/// let model = LlamaConfig::tiny().init_random(1, WeightStorage::F32, &Device::flex())?;
/// assert!(step_time(&model, 8, 2, 3)? > 0.0);
/// assert!(step_time(&model, 0, 2, 3).is_err()); // an empty prefix
/// # }
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn step_time<M: LanguageModel>(model: &M, prefix: usize, k: usize, reps: usize) -> Result<f64> {
    ensure!(k >= 1, "k must be at least 1");
    let times = pass_times(model, prefix, k..=k, reps)?;
    times.first().copied().context("no pass timed")
}

/// Seconds per cached forward of `k` new tokens for each `k` in `lengths`,
/// as [`step_time`], the lengths taken in turn within each repetition so
/// that the machine's drift between minutes falls on all of them alike
/// (medians of `reps`). The verify pass's cost by its length, for
/// [`PassCosts::from_times`](lastmile_spec_decode::PassCosts::from_times).
///
/// # Errors
/// As [`step_time`]; an empty `lengths` or one starting at 0.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_examples::timing::pass_times;
/// use lastmile_models::llama::{LlamaConfig, WeightStorage};
/// let model = LlamaConfig::tiny().init_random(1, WeightStorage::F32, &Device::flex())?;
/// let times = pass_times(&model, 8, 1..=3, 3)?;
/// assert_eq!(times.len(), 3);
/// assert!(times.iter().all(|&t| t > 0.0));
/// assert!(pass_times(&model, 8, 0..=2, 3).is_err()); // a pass over no tokens
/// # }
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn pass_times<M: LanguageModel>(
    model: &M,
    prefix: usize,
    lengths: RangeInclusive<usize>,
    reps: usize,
) -> Result<Vec<f64>> {
    ensure!(
        prefix >= 1 && reps >= 1 && *lengths.start() >= 1 && !lengths.is_empty(),
        "prefix, reps and every pass length must be at least 1"
    );
    let vocab = model.vocab_size();
    let tokens = |n: usize, salt: usize| -> Vec<usize> {
        (0..n).map(|i| (i * 7919 + salt) % vocab).collect()
    };
    let mut cache = model.new_cache(1)?;
    tensor_to_vec(model.forward(&mut cache, &[tokens(prefix, 11)])?)?;
    let mut times = vec![Vec::with_capacity(reps); lengths.clone().count()];
    for r in 0..reps {
        for (k, slot) in lengths.clone().zip(&mut times) {
            let start = Instant::now();
            tensor_to_vec(model.forward(&mut cache, &[tokens(k, r)])?)?;
            slot.push(start.elapsed().as_secs_f64());
            model.truncate(&mut cache, 0, prefix)?;
        }
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect())
}

/// Seconds per one-token step of `draft` as it runs in a speculative
/// round: right after a one-token step of `target` (untimed), whose pass
/// has just streamed the target's weights through the caches and evicted
/// the draft's (median of `reps`; both rolled back after each repetition).
/// In a hot loop ([`step_time`]) a small draft's weights stay in the cache
/// and its step looks several times cheaper than in decoding.
///
/// # Errors
/// As [`step_time`], for either model.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_examples::timing::draft_step_time;
/// use lastmile_models::llama::{LlamaConfig, WeightStorage};
/// let d = Device::flex();
/// let target = LlamaConfig::tiny().init_random(1, WeightStorage::F32, &d)?;
/// let draft = LlamaConfig { n_layers: 1, ..LlamaConfig::tiny() }.init_random(2, WeightStorage::F32, &d)?;
/// assert!(draft_step_time(&draft, &target, 8, 3)? > 0.0);
/// assert!(draft_step_time(&draft, &target, 8, 0).is_err()); // no repetitions
/// # }
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn draft_step_time<D: LanguageModel, T: LanguageModel>(
    draft: &D,
    target: &T,
    prefix: usize,
    reps: usize,
) -> Result<f64> {
    ensure!(
        prefix >= 1 && reps >= 1,
        "prefix and reps must be at least 1"
    );
    let vocab = draft.vocab_size().min(target.vocab_size());
    let context: Vec<usize> = (0..prefix).map(|i| (i * 7919 + 11) % vocab).collect();
    let (mut dc, mut tc) = (draft.new_cache(1)?, target.new_cache(1)?);
    tensor_to_vec(draft.forward(&mut dc, std::slice::from_ref(&context))?)?;
    tensor_to_vec(target.forward(&mut tc, std::slice::from_ref(&context))?)?;
    let mut times = Vec::with_capacity(reps);
    for r in 0..reps {
        tensor_to_vec(target.forward(&mut tc, &[vec![r % vocab]])?)?;
        target.truncate(&mut tc, 0, prefix)?;
        let start = Instant::now();
        tensor_to_vec(draft.forward(&mut dc, &[vec![r % vocab]])?)?;
        times.push(start.elapsed().as_secs_f64());
        draft.truncate(&mut dc, 0, prefix)?;
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// A draft-length policy that cycles through the draft lengths `0..=max`
/// (0: a plain step), one per round, and collects the times the decoder
/// reports into a shared [`InLoopCosts`]: every pass length timed in the
/// decoding loop, beside the draft's steps.
///
/// ```
/// use lastmile_examples::timing::LengthCycle;
/// use lastmile_spec_decode::{DraftPolicy, RoundTiming};
/// let mut p = LengthCycle::new(2)?;
/// assert_eq!((0..4).map(|_| p.round_limit()).collect::<Vec<_>>(), [0, 1, 2, 0]);
/// p.observe_timing(&RoundTiming { draft_calls: 0, draft_seconds: 0.0, pass_tokens: 1, verify_seconds: 2e-3 });
/// assert!(p.costs().has_unit());
/// assert!(LengthCycle::new(usize::MAX).is_err());
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LengthCycle {
    max: usize,
    next: usize,
    costs: Arc<Mutex<InLoopCosts>>,
}

impl LengthCycle {
    /// Lengths `0..=max`, passes over up to `max + 1` tokens timed.
    ///
    /// # Errors
    /// `max + 1` over [`MAX_TIMED_PASS`](lastmile_spec_decode::round_timing::MAX_TIMED_PASS).
    pub fn new(max: usize) -> Result<Self> {
        Ok(Self {
            max,
            next: 0,
            costs: Arc::new(Mutex::new(InLoopCosts::new(max.saturating_add(1))?)),
        })
    }

    /// The times collected so far (by every clone).
    pub fn costs(&self) -> InLoopCosts {
        match self.costs.lock() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl DraftPolicy for LengthCycle {
    fn name(&self) -> String {
        format!("cycle-0..={}", self.max)
    }
    fn round_limit(&mut self) -> usize {
        let limit = self.next;
        self.next = (self.next + 1) % (self.max + 1);
        limit
    }
    fn observe_timing(&mut self, timing: &RoundTiming) {
        match self.costs.lock() {
            Ok(mut c) => c.record(timing),
            Err(poisoned) => poisoned.into_inner().record(timing),
        }
    }
    fn clone_box(&self) -> Box<dyn DraftPolicy> {
        Box::new(self.clone())
    }
}
