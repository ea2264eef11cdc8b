//! A feature-level draft (EAGLE: Li et al. 2024, "EAGLE: Speculative
//! Sampling Requires Rethinking Feature Uncertainty", §3): a small network
//! that reads the target's **features** (the head's input, see
//! [`LlamaModel::forward_features`]) rather than tokens alone.
//!
//! At the position of token `x_j` the draft reads the token's embedding
//! `e_j` (the target's, frozen) and the target's feature `f_{j-1}` of the
//! position before (zeros at position 0), fuses them with one linear map,
//! `g_j = W [e_j ; f_{j-1}]` (`2d → d`), runs `g` through Llama blocks
//! with their own KV cache, and predicts the target's feature there,
//! `f̂_j`; the next token's logits are the target's head applied to `f̂_j`.
//! Feeding the token as well as the feature is EAGLE's answer to feature
//! uncertainty (§3.1: the feature alone does not say which token was
//! sampled). While drafting a run of tokens, the draft feeds its own `f̂`
//! where the target's feature is not known yet.
//!
//! One difference from EAGLE-1: the blocks' output passes through an
//! RMSNorm (starting as the target's final norm) before it is compared with
//! the target's feature, so that `f̂` is normalised like `f` (which is the
//! output of the target's final norm); and the fusion map has no bias, as
//! every other projection of a Llama model.

use burn::tensor::{Device, Tensor};
use lastmile_core::CoreError;
use lastmile_core::lm::{FeatureDraftModel, HiddenFeatures, LanguageModel, LmError, LmResult};

use super::cache::LlamaCache;
use super::config::LlamaConfig;
use super::error::{LlamaError, LlamaResult};
use super::layer_input::LayerInput;
use super::model::LlamaModel;
use super::storage::Matrix;

/// The inference form of a feature-level draft (EAGLE-1: the fusion map
/// over token embedding and target feature, then): a [`LlamaModel`] whose blocks read the
/// fused rows. Made by
/// [`LlamaFeatureDraftModule::to_draft`](super::LlamaFeatureDraftModule::to_draft);
/// it implements [`FeatureDraftModel`], and [`LanguageModel`] as the draft
/// conditioned on zero features.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_core::lm::FeatureDraftModel;
/// use lastmile_models::llama::{LlamaConfig, LlamaFeatureDraftModule, WeightStorage};
/// let d = Device::flex();
/// let target = LlamaConfig::tiny().init_random(1, WeightStorage::F32, &d)?;
/// let draft = LlamaFeatureDraftModule::new(&target, 1, None, &d)?.to_draft(WeightStorage::F32, &d)?;
/// let mut cache = draft.new_cache(1)?;
/// let width = target.config().d_model;
/// let features = Tensor::<3>::zeros([1, 2, width], &d);
/// let (logits, predicted) = draft.forward_conditioned(&mut cache, &[vec![3, 4]], features)?;
/// assert_eq!((logits.dims(), predicted.dims()), ([1, 2, 64], [1, 2, width]));
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct LlamaFeatureDraft {
    /// The fusion map `W`, `[d, 2d]` (out × in).
    pub(super) fc: Matrix,
    /// The blocks, the norm of their output, the head; its embedding is
    /// the target's.
    pub(super) model: LlamaModel,
}

impl LlamaFeatureDraft {
    /// The configuration of the draft's network (its `n_layers` blocks).
    pub fn config(&self) -> &LlamaConfig {
        self.model.config()
    }

    /// The token ids of the head's rows when it covers part of the
    /// vocabulary (as [`LlamaModel::head_tokens`]).
    pub fn head_tokens(&self) -> Option<&[usize]> {
        self.model.head_tokens()
    }

    /// Bytes of matrices one forward reads: the fusion map, the blocks and
    /// the head.
    pub fn matrix_bytes(&self) -> usize {
        self.fc.bytes() + self.model.matrix_bytes()
    }

    /// An empty cache for `batch` sequences (the draft's own blocks).
    ///
    /// # Errors
    /// As [`LlamaModel::new_cache`].
    pub fn new_cache(&self, batch: usize) -> LlamaResult<LlamaCache> {
        self.model.new_cache(batch)
    }

    /// Appends `tokens[b]` to row `b`, token `i` conditioned on
    /// `features[b, i]` (the target's feature of the position before it,
    /// or the draft's own prediction), in one pass. `features` is
    /// `[b, n, d]` with `n` the longest list (at least 1); returns the
    /// logits `[b, n, vocab]` and the predicted features `[b, n, d]`.
    ///
    /// # Errors
    /// As [`LlamaModel::forward_cached`]; [`LlamaError::Core`] for
    /// `features` of another shape.
    pub fn forward_conditioned(
        &self,
        cache: &mut LlamaCache,
        tokens: &[Vec<usize>],
        features: Tensor<3>,
    ) -> LlamaResult<(Tensor<3>, Tensor<3>)> {
        let config = self.model.config();
        let (vocab, d) = (config.vocab_size, config.d_model);
        let b = cache.batch();
        if tokens.len() != b {
            return Err(LlamaError::Lm(LmError::Batch {
                what: "token lists".to_owned(),
                expected: format!("{b} (the cache's rows)"),
                found: tokens.len(),
            }));
        }
        for (row, t) in tokens.iter().enumerate() {
            if let Some((position, &token)) = t.iter().enumerate().find(|(_, t)| **t >= vocab) {
                return Err(LlamaError::Lm(LmError::TokenOutOfRange {
                    row,
                    position,
                    token,
                    vocab,
                }));
            }
        }
        let n = tokens.iter().map(Vec::len).max().unwrap_or(0).max(1);
        if features.dims() != [b, n, d] {
            return Err(LlamaError::Core(CoreError::ShapeMismatch {
                what: "draft features".to_owned(),
                expected: format!("[{b}, {n}, {d}] (rows, longest token list, d_model)"),
                found: features.dims().to_vec(),
            }));
        }
        let input = LayerInput::Fused {
            fc: &self.fc,
            features,
        };
        self.model
            .forward_layers(cache, tokens, config.n_layers, input, None)
    }

    /// The draft conditioned on zero features: its [`LanguageModel`] form.
    ///
    /// # Errors
    /// As [`LlamaFeatureDraft::forward_conditioned`].
    pub fn forward_cached(
        &self,
        cache: &mut LlamaCache,
        tokens: &[Vec<usize>],
    ) -> LlamaResult<Tensor<3>> {
        let n = tokens.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let d = self.model.config().d_model;
        let zeros = Tensor::<3>::zeros([tokens.len(), n, d], &self.model.device());
        Ok(self.forward_conditioned(cache, tokens, zeros)?.0)
    }
}

impl LanguageModel for LlamaFeatureDraft {
    type Cache = LlamaCache;

    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    fn device(&self) -> Device {
        self.model.device()
    }

    fn max_context(&self) -> usize {
        self.model.config().max_context
    }

    fn new_cache(&self, batch: usize) -> LmResult<LlamaCache> {
        Ok(LlamaFeatureDraft::new_cache(self, batch)?)
    }

    fn cached_len(&self, cache: &LlamaCache, row: usize) -> usize {
        cache.len(row)
    }

    fn truncate(&self, cache: &mut LlamaCache, row: usize, len: usize) -> LmResult<()> {
        Ok(cache.truncate(row, len)?)
    }

    fn forward(&self, cache: &mut LlamaCache, tokens: &[Vec<usize>]) -> LmResult<Tensor<3>> {
        Ok(self.forward_cached(cache, tokens)?)
    }
}

impl FeatureDraftModel for LlamaFeatureDraft {
    fn feature_dim(&self) -> usize {
        self.model.config().d_model
    }

    fn forward_conditioned(
        &self,
        cache: &mut LlamaCache,
        tokens: &[Vec<usize>],
        features: Tensor<3>,
    ) -> LmResult<(Tensor<3>, Tensor<3>)> {
        Ok(LlamaFeatureDraft::forward_conditioned(
            self, cache, tokens, features,
        )?)
    }
}

/// [`LlamaModel::forward_features`] behind the shared interface.
impl HiddenFeatures for LlamaModel {
    fn feature_dim(&self) -> usize {
        self.config().d_model
    }

    fn forward_features(
        &self,
        cache: &mut LlamaCache,
        tokens: &[Vec<usize>],
    ) -> LmResult<(Tensor<3>, Tensor<3>)> {
        Ok(LlamaModel::forward_features(self, cache, tokens)?)
    }
}
