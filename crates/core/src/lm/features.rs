//! Feature-level interfaces: a model that also returns its hidden features,
//! and a draft model that reads a target's features (feature-level drafting,
//! EAGLE: Li et al. 2024, "EAGLE: Speculative Sampling Requires Rethinking
//! Feature Uncertainty", §3).

use burn::tensor::Tensor;

use super::{LanguageModel, LmResult};

/// A [`LanguageModel`] whose forward can also return its **features**: the
/// vector its output head reads at each position (for a transformer, the
/// last block's output after the final normalisation), so that
/// `logits = head(feature)`.
pub trait HiddenFeatures: LanguageModel {
    /// Width of a feature vector.
    fn feature_dim(&self) -> usize;

    /// [`LanguageModel::forward`], also returning the features at every new
    /// position: `(logits [b, n, vocab], features [b, n, feature_dim])`,
    /// with the same padding rule.
    ///
    /// # Errors
    /// As [`LanguageModel::forward`].
    fn forward_features(
        &self,
        cache: &mut Self::Cache,
        tokens: &[Vec<usize>],
    ) -> LmResult<(Tensor<3>, Tensor<3>)>;
}

/// A draft model conditioned on a target's features: at the position of
/// token `x_j` it reads `x_j` and the target's feature `f_{j-1}` of the
/// position before (zeros at position 0), and predicts both the next
/// token's logits and the feature `f̂_j` the target would compute there.
/// While drafting, it feeds its own `f̂_j` where the target's feature is
/// not known yet (EAGLE's feature-level autoregression).
///
/// Its [`LanguageModel::forward`] is the model conditioned on zero
/// features (so that it is still a language model in its own right).
pub trait FeatureDraftModel: LanguageModel {
    /// Width of the features it reads and predicts.
    fn feature_dim(&self) -> usize;

    /// Appends `tokens[b]` to row `b`, conditioned on `features[b, i]` for
    /// token `i` (`[b, n, feature_dim]`, `n` the longest list; padding
    /// entries are ignored), in one forward pass. Returns
    /// `(logits [b, n', vocab], predicted features [b, n', feature_dim])`
    /// with `n' ≥ n` as [`LanguageModel::forward`].
    ///
    /// # Errors
    /// As [`LanguageModel::forward`]; a shape error for `features` of the
    /// wrong shape.
    fn forward_conditioned(
        &self,
        cache: &mut Self::Cache,
        tokens: &[Vec<usize>],
        features: Tensor<3>,
    ) -> LmResult<(Tensor<3>, Tensor<3>)>;
}
