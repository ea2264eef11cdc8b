//! lastmile-core's [`LanguageModel`] interface on [`LlamaModel`] and its
//! early-exit view [`LlamaEarlyExit`].

use burn::tensor::{Device, Tensor};
use lastmile_core::lm::{LanguageModel, LmResult};

use super::cache::LlamaCache;
use super::early_exit::LlamaEarlyExit;
use super::model::LlamaModel;

/// The interface over a cached forward: the full model and its early-exit
/// view share the cache type and differ only in how they reach the model.
macro_rules! llama_language_model {
    ($(#[$doc:meta])* $ty:ty, |$s:ident| $model:expr) => {
        $(#[$doc])*
        impl LanguageModel for $ty {
            type Cache = LlamaCache;

            fn vocab_size(&self) -> usize {
                let $s = self;
                $model.config().vocab_size
            }

            fn device(&self) -> Device {
                let $s = self;
                LlamaModel::device($model)
            }

            fn max_context(&self) -> usize {
                let $s = self;
                $model.config().max_context
            }

            fn new_cache(&self, batch: usize) -> LmResult<LlamaCache> {
                Ok(<$ty>::new_cache(self, batch)?)
            }

            fn cached_len(&self, cache: &LlamaCache, row: usize) -> usize {
                cache.len(row)
            }

            fn truncate(&self, cache: &mut LlamaCache, row: usize, len: usize) -> LmResult<()> {
                Ok(cache.truncate(row, len)?)
            }

            fn forward(&self, cache: &mut LlamaCache, tokens: &[Vec<usize>]) -> LmResult<Tensor<3>> {
                Ok(<$ty>::forward_cached(self, cache, tokens)?)
            }

            fn forward_last(
                &self,
                cache: &mut LlamaCache,
                tokens: &[Vec<usize>],
                keep: usize,
            ) -> LmResult<Tensor<3>> {
                Ok(<$ty>::forward_last(self, cache, tokens, keep)?)
            }
        }
    };
}

llama_language_model! {
/// [`LlamaModel::forward_cached`] behind the shared interface; the cache is
/// a [`LlamaCache`] and the context is the configuration's `max_context`.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_core::lm::LanguageModel;
/// use lastmile_models::llama::{LlamaConfig, WeightStorage};
/// let m = LlamaConfig::tiny().init_random(3, WeightStorage::F32, &Device::flex())?;
/// let mut cache = LanguageModel::new_cache(&m, 2)?;
/// let logits = LanguageModel::forward(&m, &mut cache, &[vec![5, 6, 7], vec![8]])?;
/// assert_eq!(logits.dims(), [2, 3, 64]);
/// m.truncate(&mut cache, 0, 1)?;
/// assert_eq!((m.cached_len(&cache, 0), m.max_context()), (1, 64));
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
    LlamaModel, |m| m
}

llama_language_model! {
/// [`LlamaEarlyExit::forward_cached`] behind the shared interface: a draft
/// for speculative decoding with the target's vocabulary and context.
    LlamaEarlyExit<'_>, |m| m.model()
}
