//! A self-speculative draft: the target's first layers, its final norm and
//! its head, as a language model of its own.

use burn::tensor::Tensor;

use super::cache::LlamaCache;
use super::error::{LlamaError, LlamaResult};
use super::layer_input::LayerInput;
use super::model::LlamaModel;

/// The first `layers` blocks of a [`LlamaModel`] followed by its final
/// RMSNorm and its (tied) output head: an early-exit draft for
/// self-speculative decoding (Zhang et al. 2024, *Draft & Verify*, which
/// skips layers of the target to draft; Elhoushi et al. 2024, *LayerSkip*,
/// §4, which exits after the first `E` layers and reuses the shared head).
///
/// A view, not a copy: it borrows the target's weights, so it costs no
/// memory beyond its own KV cache (a [`LlamaCache`] of `layers` blocks).
/// One forward reads the matrices of `layers` blocks plus the head
/// ([`matrix_bytes`](Self::matrix_bytes)), so its cost relative to the
/// target is about `(layers · block + head) / (n_layers · block + head)`.
/// The model was not trained to exit early (LayerSkip's layer dropout and
/// early-exit loss), so acceptance of its drafts grows with `layers`.
/// With `layers = n_layers` it computes exactly the target.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_core::lm::LanguageModel;
/// use lastmile_models::llama::{LlamaConfig, LlamaEarlyExit, WeightStorage};
///
/// let target = LlamaConfig::tiny().init_random(5, WeightStorage::F32, &Device::flex())?;
/// let draft = LlamaEarlyExit::new(&target, 1)?;
/// assert!(draft.matrix_bytes() < target.matrix_bytes());
/// let mut cache = LanguageModel::new_cache(&draft, 1)?;
/// let logits = LanguageModel::forward(&draft, &mut cache, &[vec![1, 2, 3]])?;
/// assert_eq!(logits.dims(), [1, 3, 64]);
/// assert!(LlamaEarlyExit::new(&target, 3).is_err()); // the target has 2 blocks
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct LlamaEarlyExit<'m> {
    model: &'m LlamaModel,
    layers: usize,
}

impl<'m> LlamaEarlyExit<'m> {
    /// The first `layers` blocks of `model`, then its final norm and head.
    ///
    /// # Errors
    /// [`LlamaError::Config`] unless `1 ≤ layers ≤ n_layers`.
    pub fn new(model: &'m LlamaModel, layers: usize) -> LlamaResult<Self> {
        let n = model.config().n_layers;
        if layers == 0 || layers > n {
            return Err(LlamaError::Config {
                field: "early-exit layers",
                value: layers.to_string(),
                expected: format!("1..={n} (the target's blocks)"),
            });
        }
        Ok(Self { model, layers })
    }

    /// Blocks run before the exit.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// The full model this view reads.
    pub fn model(&self) -> &'m LlamaModel {
        self.model
    }

    /// Bytes of weight matrices one forward reads: the first `layers`
    /// blocks' projections and the output head.
    pub fn matrix_bytes(&self) -> usize {
        self.model.matrix_bytes_layers(self.layers)
    }

    /// An empty cache of `layers` blocks for `batch` sequences.
    ///
    /// # Errors
    /// As [`LlamaModel::new_cache`].
    pub fn new_cache(&self, batch: usize) -> LlamaResult<LlamaCache> {
        let full = self.model.new_cache(batch)?;
        Ok(LlamaCache::new(full.batch(), self.layers))
    }

    /// As [`LlamaModel::forward_cached`], through the first `layers` blocks.
    ///
    /// # Shapes
    /// `tokens`: one list per cache row. Returns `[b, max(1, n_max), vocab]`.
    ///
    /// # Errors
    /// As [`LlamaModel::forward_cached`]; [`LlamaError::Config`] for a
    /// cache with another number of blocks (e.g. one made by the target).
    pub fn forward_cached(
        &self,
        cache: &mut LlamaCache,
        tokens: &[Vec<usize>],
    ) -> LlamaResult<Tensor<3>> {
        Ok(self
            .model
            .forward_layers(cache, tokens, self.layers, LayerInput::Embed, None)?
            .0)
    }

    /// [`LlamaModel::forward_last`] for the early exit: logits at each
    /// row's last `keep` new positions, the head run on those alone.
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::Device;
    /// use lastmile_core::convert::tensor_to_vec;
    /// use lastmile_models::llama::{LlamaConfig, LlamaEarlyExit, WeightStorage};
    /// let m = LlamaConfig::tiny().init_random(1, WeightStorage::F32, &Device::flex())?;
    /// let exit = LlamaEarlyExit::new(&m, 1)?;
    /// let (mut all, mut last) = (exit.new_cache(1)?, exit.new_cache(1)?);
    /// let every = tensor_to_vec(exit.forward_cached(&mut all, &[vec![4, 5]])?)?;
    /// let tail = tensor_to_vec(exit.forward_last(&mut last, &[vec![4, 5]], 1)?)?;
    /// assert_eq!(tail, every[64..]);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`LlamaModel::forward_last`].
    pub fn forward_last(
        &self,
        cache: &mut LlamaCache,
        tokens: &[Vec<usize>],
        keep: usize,
    ) -> LlamaResult<Tensor<3>> {
        self.model.last_logits(cache, tokens, self.layers, keep)
    }
}
