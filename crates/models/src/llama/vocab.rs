//! Output heads over part of the vocabulary: a draft model's head may hold
//! the rows of a chosen list of tokens only (e.g. the 8 192 tokens its
//! target is most likely to emit), which makes its step far cheaper than
//! one through the full `vocab × d` head. Its logits are still reported over
//! the whole vocabulary, every token outside the list at
//! [`OUTSIDE_HEAD_LOGIT`], so the model is an ordinary
//! [`LanguageModel`](lastmile_core::lm::LanguageModel) whose distribution
//! gives those tokens probability zero.

use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use super::error::{LlamaError, LlamaResult};

/// The logit of a token outside a vocabulary-restricted head: far enough
/// below any real logit that its softmax probability is exactly 0 in f32
/// (at every temperature ≥ 0.01), yet finite, so entropies and logit
/// checks stay well defined.
///
/// ```
/// use lastmile_models::llama::OUTSIDE_HEAD_LOGIT;
/// assert_eq!((OUTSIDE_HEAD_LOGIT - 100.0).exp(), 0.0);
/// ```
pub const OUTSIDE_HEAD_LOGIT: f32 = -1.0e4;

/// Checks a head's token list: non-empty, strictly increasing, each `< vocab`.
pub(crate) fn check(ids: &[usize], vocab: usize) -> LlamaResult<()> {
    let ordered = ids.windows(2).all(|w| w[0] < w[1]);
    if ids.is_empty() || !ordered || ids.last().is_some_and(|&t| t >= vocab) {
        return Err(LlamaError::Config {
            field: "head tokens",
            value: format!(
                "{} ids{}",
                ids.len(),
                ids.last().map_or(String::new(), |t| format!(", last {t}"))
            ),
            expected: format!("a non-empty, strictly increasing list of ids below {vocab}"),
        });
    }
    Ok(())
}

/// Host logits `[rows, ids.len()]` spread to `[rows, vocab]`.
pub(crate) fn expand_host(logits: &[f32], ids: &[usize], vocab: usize) -> Vec<f32> {
    let rows = logits.len() / ids.len();
    let mut out = vec![OUTSIDE_HEAD_LOGIT; rows * vocab];
    for (row, src) in out
        .chunks_exact_mut(vocab)
        .zip(logits.chunks_exact(ids.len()))
    {
        for (&t, &v) in ids.iter().zip(src) {
            row[t] = v;
        }
    }
    out
}

/// Logits `[b, n, ids.len()]` spread to `[b, n, vocab]` on their device.
pub(crate) fn expand(logits: Tensor<3>, ids: &[usize], vocab: usize) -> Tensor<3> {
    let [b, n, k] = logits.dims();
    let device = logits.device();
    let index: Vec<i64> = (0..b * n)
        .flat_map(|_| ids.iter().map(|&t| t as i64))
        .collect();
    let index = Tensor::<2, Int>::from_data(TensorData::new(index, [b * n, k]), &device);
    // An added scatter into zeros (every backend has `Add`; the ids are
    // distinct, so each sum is one value, exact), then the floor outside.
    let mut floor = vec![OUTSIDE_HEAD_LOGIT; vocab];
    for &t in ids {
        floor[t] = 0.0;
    }
    let floor = Tensor::<2>::from_data(TensorData::new(floor, [1, vocab]), &device);
    Tensor::<2>::zeros([b * n, vocab], &device)
        .scatter(1, index, logits.reshape([b * n, k]), IndexingUpdateOp::Add)
        .add(floor)
        .reshape([b, n, vocab])
}
