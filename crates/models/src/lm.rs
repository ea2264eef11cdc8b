//! The shared language-model interface ([`LanguageModel`]) for the models of
//! this crate, so that decoders, drafters and evaluation loops take a
//! [`Transformer`] or a [`PackedTransformer`] as they are.

use burn::tensor::{Device, Tensor};
use lastmile_core::lm::{LanguageModel, LmError, LmResult};

use crate::cache::KvCache;
use crate::error::ModelError;
use crate::packed::PackedTransformer;
use crate::transformer::Transformer;

/// The failures every language model shares keep their [`LmError`] variant
/// (token out of range, context overflow, batch mismatch, lower-level
/// checks); the rest (configuration, checkpoints, data) travel as
/// [`LmError::Model`] holding the [`ModelError`].
///
/// ```
/// use lastmile_core::lm::LmError;
/// use lastmile_models::ModelError;
/// let e = LmError::from(ModelError::Lm(LmError::ContextOverflow { row: 1, needed: 9, max: 8 }));
/// assert!(matches!(e, LmError::ContextOverflow { row: 1, needed: 9, max: 8 }));
/// let e = LmError::from(ModelError::Config("n_heads = 0".into()));
/// assert!(matches!(e, LmError::Model(_)));
/// ```
impl From<ModelError> for LmError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Lm(e) => e,
            ModelError::Core(e) => LmError::Core(e),
            other => LmError::Model(Box::new(other)),
        }
    }
}

/// A cache needs at least one row: an empty batch is a caller's mistake.
fn check_batch(batch: usize) -> LmResult<()> {
    if batch == 0 {
        return Err(LmError::Batch {
            what: "batch size".to_owned(),
            expected: "at least 1 row".to_owned(),
            found: 0,
        });
    }
    Ok(())
}

/// The interface over a model's cached forward: both transformers share the
/// cache type and differ only in how they reach the underlying [`Transformer`].
macro_rules! language_model {
    ($(#[$doc:meta])* $ty:ty, |$s:ident| $base:expr) => {
        $(#[$doc])*
        impl LanguageModel for $ty {
            type Cache = KvCache;

            fn vocab_size(&self) -> usize {
                let $s = self;
                $base.vocab()
            }

            fn device(&self) -> Device {
                let $s = self;
                $base.device()
            }

            fn max_context(&self) -> usize {
                let $s = self;
                $base.max_len()
            }

            fn new_cache(&self, batch: usize) -> LmResult<KvCache> {
                check_batch(batch)?;
                Ok(<$ty>::new_cache(self, batch))
            }

            fn cached_len(&self, cache: &KvCache, row: usize) -> usize {
                cache.len(row)
            }

            fn truncate(&self, cache: &mut KvCache, row: usize, len: usize) -> LmResult<()> {
                Ok(cache.truncate(row, len)?)
            }

            fn forward(&self, cache: &mut KvCache, tokens: &[Vec<usize>]) -> LmResult<Tensor<3>> {
                Ok(self.forward_cached(cache, tokens)?)
            }
        }
    };
}

language_model! {
/// [`Transformer::forward_cached`] behind the shared interface; the cache
/// is a [`KvCache`] and the context is [`Transformer::max_len`].
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_core::lm::LanguageModel;
/// use lastmile_models::TransformerConfig;
///
/// /// Any model of the interface: feed a prompt, roll back two positions.
/// fn prefill<M: LanguageModel>(m: &M, prompt: Vec<usize>) -> lastmile_core::lm::LmResult<usize> {
///     let mut cache = m.new_cache(1)?;
///     m.forward(&mut cache, &[prompt])?;
///     let len = m.cached_len(&cache, 0);
///     m.truncate(&mut cache, 0, len - 2)?;
///     Ok(m.cached_len(&cache, 0))
/// }
/// let model = TransformerConfig::byte_level(32, 1, 2, 16).init(&Device::flex())?;
/// assert_eq!(prefill(&model, vec![104, 105, 33])?, 1);
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
    Transformer, |m| m
}

language_model! {
/// [`PackedTransformer::forward_cached`] (panels for 2 to
/// [`PANEL_MAX_ROWS`](crate::PANEL_MAX_ROWS) tokens) behind the shared
/// interface; equal to the underlying [`Transformer`]'s up to float rounding.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_core::lm::LanguageModel;
/// use lastmile_models::{PackedTransformer, TransformerConfig};
/// let packed = PackedTransformer::new(TransformerConfig::byte_level(32, 1, 2, 16).init(&Device::flex())?)?;
/// let mut cache = LanguageModel::new_cache(&packed, 2)?;
/// let logits = LanguageModel::forward(&packed, &mut cache, &[vec![1, 2, 3], vec![4]])?;
/// assert_eq!(logits.dims(), [2, 3, 256]);
/// assert_eq!((packed.cached_len(&cache, 0), packed.max_context()), (3, 16));
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
    PackedTransformer, |m| m.model()
}
