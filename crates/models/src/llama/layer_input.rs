//! What a pass's blocks read: the tokens' embeddings, or a feature-level
//! draft's fused input.

use burn::tensor::Tensor;

#[cfg(doc)]
use super::model::LlamaModel;
use super::storage::Matrix;

/// What the blocks of [`LlamaModel::forward_layers`] read.
#[expect(clippy::large_enum_variant, reason = "one value per forward pass")]
pub(crate) enum LayerInput<'a> {
    /// The tokens' embeddings.
    Embed,
    /// A feature-level draft's input (EAGLE, Li et al. 2024, §3.2): per
    /// position `fc · [e(x_j); f_{j-1}]`, the token's embedding beside
    /// the target's feature `[b, n, d]`, through the fusion map `fc`
    /// (`[d, 2d]`, out × in).
    Fused {
        /// The fusion map.
        fc: &'a Matrix,
        /// The features beside the embeddings.
        features: Tensor<3>,
    },
}
