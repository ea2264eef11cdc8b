//! The language-model interface the decoder drives.

use burn::tensor::Tensor;

use crate::error::Result;

/// A causal language model with an incremental (KV) cache over a batch of
/// sequences.
///
/// The decoder only ever *appends* tokens to a row's cache and *truncates* a
/// row back to an earlier length (rollback of rejected draft tokens). Feeding
/// `n` new tokens to a row must cost one forward pass whatever `n` is: that is
/// what makes verifying `g` draft tokens cost one target call.
///
/// Rows are ragged: each row may receive a different number of new tokens
/// (possibly none) in one call; the row's cache grows by exactly that number.
///
/// # Examples
/// A unigram model that ignores its context (the simplest valid implementation):
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor, TensorData};
/// use lastmile_spec_decode::{LanguageModel, Result};
///
/// struct Unigram { logits: Vec<f32>, device: Device }
/// impl LanguageModel for Unigram {
///     type Cache = Vec<usize>; // cached length per row
///     fn vocab_size(&self) -> usize { self.logits.len() }
///     fn device(&self) -> Device { self.device.clone() }
///     fn new_cache(&self, batch: usize) -> Result<Vec<usize>> { Ok(vec![0; batch]) }
///     fn cached_len(&self, cache: &Vec<usize>, row: usize) -> usize { cache[row] }
///     fn truncate(&self, cache: &mut Vec<usize>, row: usize, len: usize) -> Result<()> {
///         cache[row] = cache[row].min(len);
///         Ok(())
///     }
///     fn forward(&self, cache: &mut Vec<usize>, tokens: &[Vec<usize>]) -> Result<Tensor<3>> {
///         let n = tokens.iter().map(Vec::len).max().unwrap_or(0);
///         for (len, t) in cache.iter_mut().zip(tokens) { *len += t.len(); }
///         let data: Vec<f32> = (0..tokens.len() * n).flat_map(|_| self.logits.clone()).collect();
///         Ok(Tensor::from_data(TensorData::new(data, [tokens.len(), n, self.logits.len()]), &self.device))
///     }
/// }
/// let lm = Unigram { logits: vec![0.0, 1.0, 2.0], device: Device::flex() };
/// let mut cache = lm.new_cache(2).unwrap();
/// let out = lm.forward(&mut cache, &[vec![1, 2], vec![0]]).unwrap();
/// assert_eq!(out.dims(), [2, 2, 3]);
/// assert_eq!(lm.cached_len(&cache, 1), 1);
/// # }
/// ```
pub trait LanguageModel {
    /// Per-batch incremental state (for a transformer: keys and values of every layer).
    type Cache;

    /// Number of token ids.
    fn vocab_size(&self) -> usize;

    /// The device the model computes on.
    fn device(&self) -> burn::tensor::Device;

    /// Longest sequence (prompt plus generated tokens) the model can attend over.
    fn max_context(&self) -> usize {
        usize::MAX
    }

    /// An empty cache for `batch` sequences.
    ///
    /// # Errors
    /// Implementation-defined (e.g. `batch = 0`).
    fn new_cache(&self, batch: usize) -> Result<Self::Cache>;

    /// Number of tokens currently cached for `row`.
    fn cached_len(&self, cache: &Self::Cache, row: usize) -> usize;

    /// Forgets every cached position of `row` at or after `len` (no-op if the
    /// row is already shorter).
    ///
    /// # Errors
    /// Implementation-defined (e.g. `row` out of range).
    fn truncate(&self, cache: &mut Self::Cache, row: usize, len: usize) -> Result<()>;

    /// Appends `tokens[row]` to each row and returns next-token logits at
    /// every new position.
    ///
    /// # Shapes
    /// `tokens`: one (possibly empty) list per cached row. Returns
    /// `[batch, n_max, vocab]` where `n_max` is the longest list; entry
    /// `[b, i]` are the logits for the token that follows `tokens[b][i]`.
    /// Entries past a row's own length are padding and are never read.
    ///
    /// # Errors
    /// Implementation-defined (token out of range, context overflow, ...).
    fn forward(&self, cache: &mut Self::Cache, tokens: &[Vec<usize>]) -> Result<Tensor<3>>;
}
