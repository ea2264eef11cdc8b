//! # lastmile-spec-decode
//!
//! Exact speculative decoding for language models written with burn, with
//! pluggable draft-length policies including **AdaEDL** (Agrawal, Jeon, Lee
//! 2024, arXiv 2410.18351): stop drafting as soon as the draft's entropy says
//! the next token is unlikely to be accepted.
//!
//! - [`LanguageModel`]: the model interface (logits for new tokens given a KV
//!   cache, rollback, ragged batches), defined in `lastmile-core`
//!   ([`lastmile_core::lm`]) and re-exported here with [`LmError`] and
//!   [`LmResult`], so one import path serves. `lastmile-models` implements it
//!   for its transformers.
//! - [`verify_drafts`]: exact speculative sampling (Leviathan et al. 2023;
//!   Chen et al. 2023) — accept `min(1, p/q)`, resample `norm(max(0, p − q))`,
//!   bonus token — plus greedy verification and one-hot (deterministic) drafts.
//! - [`DraftPolicy`]: [`StaticLength`], [`HeuristicSchedule`] (HF),
//!   [`MaxConfidence`] (llama.cpp / HF), [`AdaEdl`], [`CostModel`], and
//!   [`CostAwareAdaEdl`] (AdaEDL's bound weighed by the draft and verify
//!   costs, given or timed by the decoder in the loop: [`RoundTiming`],
//!   [`InLoopCosts`]); [`PerSource`] runs a policy per [`DraftSource`]
//!   (the draft model's rounds and prompt lookup's, each at its own cost).
//! - [`Drafter`]: [`ModelDrafter`] (a small model), [`FeatureDrafter`] (a draft that
//!   reads the target's features through a [`FeatureTap`], EAGLE) and
//!   [`PromptLookup`] (n-gram, its proposals weighted by the length of
//!   their match), and [`HybridDrafter`] (lookup where an n-gram recurs, a
//!   draft model elsewhere).
//! - [`SpeculativeDecoder`] and the [`generate_autoregressive`] baseline,
//!   both reporting [`Metrics`] (vLLM definitions).
//!
//! Device synchronisations: a round reads back **one** small tensor per
//! draft step (the proposals with the policy signals) and **one** per
//! verification (acceptance flags with the emitted tokens), whatever the
//! batch size and draft length; the draft distributions never leave the
//! device. [`lastmile_core::convert::host_reads`] counts them. On a CPU
//! device, whose tensors are host memory, the same decisions run on host
//! rows (the same verdicts and draws from the same generator, greedy or
//! tempered; top-k and top-p keep the tensor path) instead of as tensor
//! operations over vocabulary-wide rows.
//!
//! Dependencies: `lastmile-core` (the model interface, sampling numerics,
//! validation) and burn only; `rand` for the caller-supplied RNG,
//! `thiserror` for the error type.
//!
//! ```
//! # #[cfg(feature = "flex")] {
//! use burn::tensor::{Device, Tensor, TensorData};
//! use lastmile_core::numerics::SamplingParams;
//! use lastmile_spec_decode::*;
//! use rand::{SeedableRng, rngs::StdRng};
//!
//! /// A bigram model: logits depend on the last token only.
//! struct Bigram { table: Vec<f32>, vocab: usize, device: Device }
//! impl LanguageModel for Bigram {
//!     type Cache = Vec<Vec<usize>>;
//!     fn vocab_size(&self) -> usize { self.vocab }
//!     fn device(&self) -> Device { self.device.clone() }
//!     fn new_cache(&self, batch: usize) -> LmResult<Self::Cache> { Ok(vec![Vec::new(); batch]) }
//!     fn cached_len(&self, c: &Self::Cache, row: usize) -> usize { c[row].len() }
//!     fn truncate(&self, c: &mut Self::Cache, row: usize, len: usize) -> LmResult<()> {
//!         c[row].truncate(len);
//!         Ok(())
//!     }
//!     fn forward(&self, c: &mut Self::Cache, tokens: &[Vec<usize>]) -> LmResult<Tensor<3>> {
//!         let n = tokens.iter().map(Vec::len).max().unwrap_or(0);
//!         let mut data = vec![0.0; tokens.len() * n * self.vocab];
//!         for (b, row) in tokens.iter().enumerate() {
//!             for (i, &t) in row.iter().enumerate() {
//!                 let at = (b * n + i) * self.vocab;
//!                 data[at..at + self.vocab].copy_from_slice(&self.table[t * self.vocab..(t + 1) * self.vocab]);
//!             }
//!             c[b].extend_from_slice(row);
//!         }
//!         Ok(Tensor::from_data(TensorData::new(data, [tokens.len(), n, self.vocab]), &self.device))
//!     }
//! }
//!
//! let d = Device::flex();
//! let target = Bigram { table: vec![0.0, 2.0, 1.0, 1.0, 0.0, 2.0, 2.0, 1.0, 0.0], vocab: 3, device: d.clone() };
//! let draft = Bigram { table: vec![0.0, 1.5, 1.0, 1.0, 0.0, 1.5, 1.5, 1.0, 0.0], vocab: 3, device: d };
//! let policy = AdaEdl::new(AdaEdlConfig::default())?;
//! let mut decoder = SpeculativeDecoder::new(&target, ModelDrafter::new(&draft), Box::new(policy))?;
//!
//! // Greedy speculative decoding reproduces target-only greedy decoding.
//! let config = GenerationConfig::new(SamplingParams::greedy(), 12)?;
//! let mut rng = StdRng::seed_from_u64(0);
//! let fast = decoder.generate(&[vec![0, 1]], &config, &mut rng)?;
//! let slow = generate_autoregressive(&target, &[vec![0, 1]], &config, &mut rng)?;
//! assert_eq!(fast.tokens, slow.tokens);
//! assert!(fast.metrics.mean_acceptance_length() >= 1.0);
//! # }
//! # Ok::<(), lastmile_spec_decode::SpecDecodeError>(())
//! ```

mod autoregressive;
pub mod calibration;
pub mod cost_aware;
pub mod decoder;
mod draft_q;
pub mod drafter;
pub mod error;
pub mod feature_drafter;
mod greedy;
pub mod hybrid;
pub mod lookup;
pub mod metrics;
pub mod pass_cost;
pub mod per_source;
pub mod policy;
pub mod round_timing;
mod sampled;
pub mod verify;
mod verify_host;

pub use autoregressive::generate_autoregressive;
pub use calibration::{CalibratedBound, LEVELS};
pub use cost_aware::{CostAwareAdaEdl, CostAwareConfig};
pub use decoder::{Generation, GenerationConfig, SpeculativeDecoder};
pub use drafter::{Draft, DraftRequest, Drafter, ModelDrafter};
pub use error::{Result, SpecDecodeError};
pub use feature_drafter::{FeatureDrafter, FeatureTap};
pub use hybrid::HybridDrafter;
pub use lastmile_core::lm::{LanguageModel, LmError, LmResult};
pub use lookup::PromptLookup;
pub use metrics::Metrics;
pub use pass_cost::PassCosts;
pub use per_source::PerSource;
pub use policy::{
    AdaEdl, AdaEdlConfig, CostModel, DraftPolicy, DraftSource, DraftStepInfo, HeuristicSchedule,
    MaxConfidence, RoundOutcome, StaticLength,
};
pub use round_timing::{InLoopCosts, RoundTiming};
pub use verify::{Verdict, verify_drafts};

#[cfg(test)]
mod exactness_tests;
#[cfg(test)]
mod sync_tests;
#[cfg(test)]
mod timing_tests;
