//! The incremental causal language-model interface: what a decoder, a
//! drafter, an evaluation loop or an expert cache needs from a model, and
//! nothing tied to any one method.
//!
//! A [`LanguageModel`] keeps a per-row cache (for a transformer: keys and
//! values of every layer). Callers only ever **append** tokens to a row and
//! **truncate** a row back to an earlier length; feeding `n` new tokens to a
//! row costs one forward pass whatever `n` is, and rows are ragged (each row
//! may receive a different number of tokens, possibly none).
//!
//! With the `testing` feature, the `conformance` module checks any implementation
//! against the properties the interface promises.
//!
//! # Examples
//! A unigram model that ignores its context (the simplest valid implementation):
//! ```
//! # #[cfg(feature = "flex")] {
//! use burn::tensor::{Device, Tensor, TensorData};
//! use lastmile_core::lm::{LanguageModel, LmResult};
//!
//! struct Unigram { logits: Vec<f32>, device: Device }
//! impl LanguageModel for Unigram {
//!     type Cache = Vec<usize>; // cached length per row
//!     fn vocab_size(&self) -> usize { self.logits.len() }
//!     fn device(&self) -> Device { self.device.clone() }
//!     fn new_cache(&self, batch: usize) -> LmResult<Vec<usize>> { Ok(vec![0; batch]) }
//!     fn cached_len(&self, cache: &Vec<usize>, row: usize) -> usize { cache[row] }
//!     fn truncate(&self, cache: &mut Vec<usize>, row: usize, len: usize) -> LmResult<()> {
//!         cache[row] = cache[row].min(len);
//!         Ok(())
//!     }
//!     fn forward(&self, cache: &mut Vec<usize>, tokens: &[Vec<usize>]) -> LmResult<Tensor<3>> {
//!         let n = tokens.iter().map(Vec::len).max().unwrap_or(0);
//!         for (len, t) in cache.iter_mut().zip(tokens) { *len += t.len(); }
//!         let data: Vec<f32> = (0..tokens.len() * n).flat_map(|_| self.logits.clone()).collect();
//!         Ok(Tensor::from_data(TensorData::new(data, [tokens.len(), n, self.logits.len()]), &self.device))
//!     }
//! }
//! let lm = Unigram { logits: vec![0.0, 1.0, 2.0], device: Device::flex() };
//! let mut cache = lm.new_cache(2)?;
//! let out = lm.forward(&mut cache, &[vec![1, 2], vec![0]])?;
//! assert_eq!(out.dims(), [2, 2, 3]);
//! assert_eq!(lm.cached_len(&cache, 1), 1);
//! # }
//! # Ok::<(), lastmile_core::lm::LmError>(())
//! ```

#[cfg(feature = "testing")]
pub mod conformance;
mod features;

pub use features::{FeatureDraftModel, HiddenFeatures};

use burn::tensor::{Device, Int, Tensor, TensorData};
use thiserror::Error;

use crate::error::CoreError;

/// Errors of a [`LanguageModel`] call.
///
/// The common failures have their own variants so that callers (decoders,
/// evaluation loops) can react to them whatever the model; anything specific
/// to one implementation travels in [`LmError::Model`] with its own type.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LmError {
    /// A lower-level check failed (shapes, NaN, ...).
    #[error(transparent)]
    Core(#[from] CoreError),

    /// A token id was outside the vocabulary.
    #[error(
        "row {row}: token {token} at position {position} is out of range; expected an id < {vocab}"
    )]
    TokenOutOfRange {
        /// Batch row.
        row: usize,
        /// Position of the token in the list fed to that row.
        position: usize,
        /// The offending id.
        token: usize,
        /// The vocabulary size.
        vocab: usize,
    },

    /// A row would outgrow the model's context window.
    #[error("row {row} would hold {needed} positions; the model's context holds {max}")]
    ContextOverflow {
        /// Batch row.
        row: usize,
        /// Positions the row would need.
        needed: usize,
        /// The model's context size.
        max: usize,
    },

    /// The request and the cache disagree on the batch, or a row index is out of range.
    #[error("batch mismatch: {what} is {found}; expected {expected}")]
    Batch {
        /// What was counted (e.g. `"token lists"`, `"row index"`).
        what: String,
        /// What the cache holds.
        expected: String,
        /// What was given.
        found: usize,
    },

    /// A model returned logits of the wrong shape.
    #[error("model returned logits of shape {found:?}; expected {expected}")]
    BadLogits {
        /// What was expected.
        expected: String,
        /// What was returned.
        found: Vec<usize>,
    },

    /// An implementation broke a property of the interface (found by [`conformance`](self)).
    #[error("conformance check `{check}` failed: {detail}")]
    Conformance {
        /// The check's name.
        check: &'static str,
        /// What differed, by how much, and the tolerance.
        detail: String,
    },

    /// A failure specific to one implementation (I/O, its own configuration, ...).
    #[error("language model: {0}")]
    Model(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Result alias of [`LanguageModel`] calls.
pub type LmResult<T> = std::result::Result<T, LmError>;

/// A causal language model with an incremental (KV) cache over a batch of
/// sequences. See the [module docs](self) for the contract.
pub trait LanguageModel {
    /// Per-batch incremental state (for a transformer: keys and values of every layer).
    type Cache;

    /// Number of token ids.
    fn vocab_size(&self) -> usize;

    /// The device the model computes on.
    fn device(&self) -> Device;

    /// Longest sequence (prompt plus generated tokens) the model can attend over.
    fn max_context(&self) -> usize {
        usize::MAX
    }

    /// An empty cache for `batch` sequences.
    ///
    /// # Errors
    /// Implementation-defined (e.g. [`LmError::Batch`] for `batch = 0`).
    fn new_cache(&self, batch: usize) -> LmResult<Self::Cache>;

    /// Number of tokens currently cached for `row`.
    fn cached_len(&self, cache: &Self::Cache, row: usize) -> usize;

    /// Forgets every cached position of `row` at or after `len` (no-op if the
    /// row is already shorter).
    ///
    /// # Errors
    /// [`LmError::Batch`] for a row out of range.
    fn truncate(&self, cache: &mut Self::Cache, row: usize, len: usize) -> LmResult<()>;

    /// Appends `tokens[row]` to each row and returns next-token logits at
    /// every new position, in **one** forward pass.
    ///
    /// # Shapes
    /// `tokens`: one (possibly empty) list per cached row. Returns
    /// `[batch, n_max, vocab]` where `n_max` is the longest list; entry
    /// `[b, i]` are the logits for the token that follows `tokens[b][i]`.
    /// Entries past a row's own length are padding and are never read.
    ///
    /// # Errors
    /// [`LmError::TokenOutOfRange`], [`LmError::ContextOverflow`],
    /// [`LmError::Batch`], or an implementation's own [`LmError::Model`].
    fn forward(&self, cache: &mut Self::Cache, tokens: &[Vec<usize>]) -> LmResult<Tensor<3>>;

    /// [`forward`](Self::forward), returning the logits at the last `keep`
    /// new positions of each row only: a prompt's pass needs the logits
    /// after its last token, not after every one, and a model may skip its
    /// output head for the others (llama.cpp's per-token `logits` flags).
    /// The cache is updated as by `forward`. The default runs `forward` and
    /// gathers the rows ([`last_slots`]).
    ///
    /// # Shapes
    /// Returns `[batch, keep, vocab]`: entry `[b, j]` are the logits after
    /// `tokens[b][len_b − keep + j]`; entries where that index is negative
    /// (a row of fewer than `keep` tokens) are padding and are never read.
    ///
    /// # Errors
    /// As [`forward`](Self::forward); [`LmError::Batch`] for `keep = 0`.
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// # use burn::tensor::{Device, Tensor, TensorData};
    /// # use lastmile_core::lm::{LanguageModel, LmResult};
    /// # struct Position { device: Device }
    /// # impl LanguageModel for Position {
    /// #     type Cache = Vec<usize>;
    /// #     fn vocab_size(&self) -> usize { 1 }
    /// #     fn device(&self) -> Device { self.device.clone() }
    /// #     fn new_cache(&self, batch: usize) -> LmResult<Vec<usize>> { Ok(vec![0; batch]) }
    /// #     fn cached_len(&self, c: &Vec<usize>, row: usize) -> usize { c[row] }
    /// #     fn truncate(&self, c: &mut Vec<usize>, row: usize, len: usize) -> LmResult<()> { c[row] = c[row].min(len); Ok(()) }
    /// #     fn forward(&self, c: &mut Vec<usize>, tokens: &[Vec<usize>]) -> LmResult<Tensor<3>> {
    /// #         // The logit is the position the token was fed at.
    /// #         let n = tokens.iter().map(Vec::len).max().unwrap_or(0);
    /// #         let data: Vec<f32> = tokens.iter().zip(c.iter_mut()).flat_map(|(t, len)| {
    /// #             let start = *len;
    /// #             *len += t.len();
    /// #             (0..n).map(move |i| (start + i) as f32)
    /// #         }).collect();
    /// #         Ok(Tensor::from_data(TensorData::new(data, [tokens.len(), n, 1]), &self.device))
    /// #     }
    /// # }
    /// use lastmile_core::convert::tensor_to_vec;
    /// let lm = Position { device: Device::flex() };
    /// let mut cache = lm.new_cache(2)?;
    /// let last = lm.forward_last(&mut cache, &[vec![7, 8, 9], vec![4]], 2)?;
    /// assert_eq!(last.dims(), [2, 2, 1]);
    /// // Row 0: after its tokens at positions 1 and 2; row 1: padding, then position 0.
    /// assert_eq!(tensor_to_vec(last)?[..3], [1.0, 2.0, 0.0]);
    /// assert_eq!((lm.cached_len(&cache, 0), lm.cached_len(&cache, 1)), (3, 1));
    /// assert!(lm.forward_last(&mut cache, &[vec![1], vec![]], 0).is_err());
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn forward_last(
        &self,
        cache: &mut Self::Cache,
        tokens: &[Vec<usize>],
        keep: usize,
    ) -> LmResult<Tensor<3>> {
        check_keep(keep)?;
        let logits = self.forward(cache, tokens)?;
        let n = tokens.iter().map(Vec::len).max().unwrap_or(0);
        let vocab = self.vocab_size();
        let padded = check_logits_shape(&logits, tokens.len(), n, vocab)?;
        let batch = tokens.len();
        if padded == 0 {
            return Ok(Tensor::zeros([batch, keep, vocab], &logits.device()));
        }
        let slots: Vec<i64> = last_slots(tokens, padded, keep)
            .into_iter()
            .map(|s| s as i64)
            .collect();
        let index =
            Tensor::<1, Int>::from_data(TensorData::new(slots, [batch * keep]), &logits.device());
        Ok(logits
            .reshape([batch * padded, vocab])
            .select(0, index)
            .reshape([batch, keep, vocab]))
    }
}

/// [`LmError::Batch`] unless `keep ≥ 1` (positions [`LanguageModel::forward_last`] keeps).
///
/// ```
/// use lastmile_core::lm::check_keep;
/// assert!(check_keep(1).is_ok());
/// assert!(check_keep(0).is_err());
/// ```
///
/// # Errors
/// [`LmError::Batch`] for `keep = 0`.
pub fn check_keep(keep: usize) -> LmResult<()> {
    if keep == 0 {
        return Err(LmError::Batch {
            what: "positions of logits kept".to_owned(),
            expected: "at least 1".to_owned(),
            found: 0,
        });
    }
    Ok(())
}

/// The rows of a `[batch · padded, …]` layout of a pass over `tokens`
/// (each row's new positions at `0..len`, padded to `padded`) that hold
/// each row's last `keep` positions, in [`LanguageModel::forward_last`]'s
/// order; a row of fewer than `keep` tokens repeats its position 0 in
/// front (padding).
///
/// ```
/// use lastmile_core::lm::last_slots;
/// assert_eq!(last_slots(&[vec![1, 2, 3], vec![4], vec![]], 3, 2), [1, 2, 3, 3, 6, 6]);
/// ```
pub fn last_slots(tokens: &[Vec<usize>], padded: usize, keep: usize) -> Vec<usize> {
    let last = padded.saturating_sub(1);
    tokens
        .iter()
        .enumerate()
        .flat_map(|(row, t)| {
            (0..keep).map(move |j| row * padded + (t.len() + j).saturating_sub(keep).min(last))
        })
        .collect()
}

/// Checks that [`LanguageModel::forward_last`]'s logits are `[batch, keep, vocab]`.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_core::lm::check_last_logits_shape;
/// let logits = Tensor::<3>::zeros([2, 1, 10], &Device::flex());
/// assert!(check_last_logits_shape(&logits, 2, 1, 10).is_ok());
/// assert!(check_last_logits_shape(&logits, 2, 3, 10).is_err()); // not padded: exactly `keep`
/// # }
/// ```
///
/// # Errors
/// [`LmError::BadLogits`].
pub fn check_last_logits_shape(
    logits: &Tensor<3>,
    batch: usize,
    keep: usize,
    vocab: usize,
) -> LmResult<()> {
    let found = logits.dims();
    if found != [batch, keep, vocab] {
        return Err(LmError::BadLogits {
            expected: format!("[{batch}, {keep}, {vocab}]"),
            found: found.to_vec(),
        });
    }
    Ok(())
}

/// Checks that a model's logits have the shape [`LanguageModel::forward`]
/// promises for a request of `batch` rows whose longest list has `n` tokens,
/// and returns the padded length the model chose (`≥ n`). Shape only: no
/// device synchronisation.
///
/// # Errors
/// [`LmError::BadLogits`].
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_core::lm::check_logits_shape;
/// let logits = Tensor::<3>::zeros([2, 4, 10], &Device::flex());
/// assert_eq!(check_logits_shape(&logits, 2, 3, 10).unwrap(), 4);
/// assert!(check_logits_shape(&logits, 2, 5, 10).is_err());
/// # }
/// ```
pub fn check_logits_shape(
    logits: &Tensor<3>,
    batch: usize,
    n: usize,
    vocab: usize,
) -> LmResult<usize> {
    let [b, m, v] = logits.dims();
    if b != batch || v != vocab || m < n {
        return Err(LmError::BadLogits {
            expected: format!("[{batch}, >= {n}, {vocab}]"),
            found: vec![b, m, v],
        });
    }
    Ok(m)
}
