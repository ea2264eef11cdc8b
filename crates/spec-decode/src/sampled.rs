//! Sampled (T > 0) decisions on rows of logits in host memory.
//!
//! Sampling at a temperature needs, per row of logits, its tempered
//! distribution (a draft keeps it as `q`; a verification reads it at the
//! drafted tokens and draws the candidate from it or its residual) and a
//! categorical draw. On a CPU device the tensor path copied each
//! 49 152-token row several times and ran its fault flags, entropy and
//! maximum as separate tensor operations: measured on SmolLM2-135M, a
//! speculative round spent ~1.2 ms outside the models at T = 0.7 (a third
//! of a decoding step) and a plain decoding step ~0.4 ms
//! (`docs/benchmarks.md`). Here the picked rows are read in place and
//! tempered into one buffer by [`push_tempered_softmax`]: the tensor
//! path's values bit for bit, and its draws (one uniform per row, in row
//! order, [`sample_row`]'s rule), so both paths decode the same tokens from
//! the same generator (tested). Only the temperature is applied here:
//! top-k and top-p take the tensor path.

use burn::tensor::Tensor;
use lastmile_core::host::with_host_ref;
use lastmile_core::numerics::{SamplingParams, push_tempered_softmax, sample_row};
use rand::{Rng, RngExt};

use crate::error::Result;
use crate::greedy::host_vocab;

/// What [`tempered_rows`] found.
#[derive(Debug)]
pub(crate) enum Tempered {
    /// Not `f32` values on a host device, greedy, or a top-k / top-p
    /// filter: take the tensor path.
    NotHost,
    /// A tempered row holds a NaN or `+inf`, or only `-inf` (the tensor
    /// path's distribution would hold NaN).
    Fault,
    /// The distributions of the picked rows, one after another.
    Rows(Vec<f32>),
}

/// `sampling.probabilities_unchecked` of rows `pick` of `logits`
/// `[rows, vocab]` on a host device, read in place, with the logits handed
/// back for the caller's other paths.
///
/// # Errors
/// [`CoreError::IndexOutOfRange`](lastmile_core::CoreError::IndexOutOfRange) for a picked row `≥ rows`;
/// [`CoreError::TensorData`](lastmile_core::CoreError::TensorData) for values that cannot be read.
pub(crate) fn tempered_rows(
    logits: Tensor<2>,
    pick: &[usize],
    sampling: &SamplingParams,
) -> Result<(Tempered, Tensor<2>)> {
    let filtered = sampling.top_k().is_some() || sampling.top_p().is_some();
    let vocab = match host_vocab(&logits, pick)? {
        Some(vocab) if !sampling.is_greedy() && !filtered => vocab,
        _ => return Ok((Tempered::NotHost, logits)),
    };
    // The tensor path divides by the temperature in f32.
    let t = sampling.temperature() as f32;
    let (logits, found) = with_host_ref(logits, |values| {
        let mut out = Vec::with_capacity(pick.len() * vocab);
        for &r in pick {
            if !push_tempered_softmax(&values[r * vocab..(r + 1) * vocab], t, &mut out) {
                return Tempered::Fault;
            }
        }
        Tempered::Rows(out)
    })?;
    Ok((found, logits))
}

/// One draw from each `vocab`-long row of `probs`, as
/// `sample_categorical_on_device` draws: a uniform `1 − U[0, 1)` per row,
/// in row order.
pub(crate) fn draw<R: Rng + ?Sized>(probs: &[f32], vocab: usize, rng: &mut R) -> Vec<usize> {
    probs
        .chunks_exact(vocab.max(1))
        .map(|row| sample_row(row, 1.0 - rng.random::<f32>()))
        .collect()
}
