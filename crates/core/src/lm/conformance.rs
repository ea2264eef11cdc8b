//! A conformance kit for [`LanguageModel`] implementations (`testing` feature).
//!
//! Each check runs the model two ways that the interface says must agree and
//! returns the largest absolute logit difference it saw, or
//! [`LmError::Conformance`] when that difference exceeds the tolerance (or a
//! cache length is wrong). Run them from an implementation's own tests:
//!
//! - [`chunked_forward`]: feeding a sequence in chunks equals feeding it at once;
//! - [`truncate_refeed`]: truncating a row and feeding new tokens equals
//!   never having fed the discarded ones;
//! - [`ragged_batch`]: a ragged batch equals each row run on its own;
//! - [`last_positions`]: [`LanguageModel::forward_last`] gives `forward`'s
//!   logits at each row's last positions and leaves the same cache;
//! - [`check_all`]: all four on random tokens.
//!
//! ```
//! # #[cfg(feature = "flex")] {
//! use burn::tensor::{Device, Tensor, TensorData};
//! use lastmile_core::lm::{LanguageModel, LmResult, conformance};
//!
//! /// Logits = one-hot of the previous token (a valid, if dull, model).
//! struct Echo { vocab: usize, device: Device }
//! impl LanguageModel for Echo {
//!     type Cache = Vec<usize>;
//!     fn vocab_size(&self) -> usize { self.vocab }
//!     fn device(&self) -> Device { self.device.clone() }
//!     fn new_cache(&self, batch: usize) -> LmResult<Vec<usize>> { Ok(vec![0; batch]) }
//!     fn cached_len(&self, c: &Vec<usize>, row: usize) -> usize { c[row] }
//!     fn truncate(&self, c: &mut Vec<usize>, row: usize, len: usize) -> LmResult<()> {
//!         c[row] = c[row].min(len);
//!         Ok(())
//!     }
//!     fn forward(&self, c: &mut Vec<usize>, tokens: &[Vec<usize>]) -> LmResult<Tensor<3>> {
//!         let n = tokens.iter().map(Vec::len).max().unwrap_or(0);
//!         let mut data = vec![0.0; tokens.len() * n * self.vocab];
//!         for (b, row) in tokens.iter().enumerate() {
//!             for (i, &t) in row.iter().enumerate() { data[(b * n + i) * self.vocab + t] = 1.0; }
//!             c[b] += row.len();
//!         }
//!         Ok(Tensor::from_data(TensorData::new(data, [tokens.len(), n, self.vocab]), &self.device))
//!     }
//! }
//! let max_diff = conformance::check_all(&Echo { vocab: 5, device: Device::flex() }, 7, 1e-6)?;
//! assert_eq!(max_diff, 0.0);
//! # }
//! # Ok::<(), lastmile_core::lm::LmError>(())
//! ```

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::{LanguageModel, LmError, LmResult, check_last_logits_shape, check_logits_shape};
use crate::convert::tensor_to_vec;

/// Runs `tokens` through a fresh single-row cache as the given `feeds`
/// (consecutive lists), and returns the logits of every fed position.
fn run_row<M: LanguageModel>(model: &M, feeds: &[&[usize]]) -> LmResult<Vec<Vec<f32>>> {
    let vocab = model.vocab_size();
    let mut cache = model.new_cache(1)?;
    let mut out = Vec::new();
    for feed in feeds {
        let logits = model.forward(&mut cache, &[feed.to_vec()])?;
        check_logits_shape(&logits, 1, feed.len(), vocab)?;
        // Batch 1: position i starts at i·vocab whatever the padded length.
        let host = tensor_to_vec(logits)?;
        out.extend((0..feed.len()).map(|i| host[i * vocab..(i + 1) * vocab].to_vec()));
    }
    Ok(out)
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(
            0.0,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        )
}

fn verdict(check: &'static str, diff: f32, tolerance: f32) -> LmResult<f32> {
    if diff <= tolerance {
        Ok(diff)
    } else {
        Err(LmError::Conformance {
            check,
            detail: format!("max |Δlogit| = {diff}, tolerance {tolerance}"),
        })
    }
}

fn expect_len(check: &'static str, found: usize, expected: usize) -> LmResult<()> {
    if found == expected {
        Ok(())
    } else {
        Err(LmError::Conformance {
            check,
            detail: format!("cached_len is {found}; expected {expected}"),
        })
    }
}

/// Feeding `tokens` in chunks of the given sizes equals feeding them in one
/// call. `chunks` must sum to `tokens.len()`.
///
/// # Errors
/// [`LmError::Conformance`] when logits differ by more than `tolerance` or
/// `cached_len` is wrong; any error of the model.
pub fn chunked_forward<M: LanguageModel>(
    model: &M,
    tokens: &[usize],
    chunks: &[usize],
    tolerance: f32,
) -> LmResult<f32> {
    if chunks.iter().sum::<usize>() != tokens.len() || chunks.contains(&0) {
        return Err(LmError::Conformance {
            check: "chunked_forward",
            detail: format!(
                "chunk sizes {chunks:?} must be positive and sum to {}",
                tokens.len()
            ),
        });
    }
    let whole = run_row(model, &[tokens])?;
    let mut feeds = Vec::with_capacity(chunks.len());
    let mut at = 0;
    for &c in chunks {
        feeds.push(&tokens[at..at + c]);
        at += c;
    }
    let chunked = run_row(model, &feeds)?;
    verdict("chunked_forward", max_abs_diff(&whole, &chunked), tolerance)
}

/// Feeding `prefix`, then `detour`, truncating back to `prefix.len()` and
/// feeding `tail` gives the logits of feeding `prefix ++ tail` directly.
///
/// # Errors
/// As [`chunked_forward`].
pub fn truncate_refeed<M: LanguageModel>(
    model: &M,
    prefix: &[usize],
    detour: &[usize],
    tail: &[usize],
    tolerance: f32,
) -> LmResult<f32> {
    const CHECK: &str = "truncate_refeed";
    let vocab = model.vocab_size();
    let mut cache = model.new_cache(1)?;
    model.forward(&mut cache, &[prefix.to_vec()])?;
    model.forward(&mut cache, &[detour.to_vec()])?;
    expect_len(
        CHECK,
        model.cached_len(&cache, 0),
        prefix.len() + detour.len(),
    )?;
    model.truncate(&mut cache, 0, prefix.len())?;
    expect_len(CHECK, model.cached_len(&cache, 0), prefix.len())?;
    let logits = model.forward(&mut cache, &[tail.to_vec()])?;
    check_logits_shape(&logits, 1, tail.len(), vocab)?;
    let host = tensor_to_vec(logits)?;
    let after: Vec<Vec<f32>> = (0..tail.len())
        .map(|i| host[i * vocab..(i + 1) * vocab].to_vec())
        .collect();
    let direct = run_row(model, &[prefix, tail])?;
    verdict(
        CHECK,
        max_abs_diff(&after, &direct[prefix.len()..]),
        tolerance,
    )
}

/// A batch's two steps: as many lists each, at least one.
fn two_steps(check: &'static str, first: &[Vec<usize>], second: &[Vec<usize>]) -> LmResult<()> {
    if first.len() != second.len() || first.is_empty() {
        return Err(LmError::Conformance {
            check,
            detail: format!(
                "{} first and {} second lists; expected the same non-zero count",
                first.len(),
                second.len()
            ),
        });
    }
    Ok(())
}

/// A ragged batch fed in two steps (`first[b]`, then `second[b]`, either
/// possibly empty) equals each row fed alone in one call.
///
/// # Errors
/// As [`chunked_forward`]; also when `first` and `second` differ in length.
pub fn ragged_batch<M: LanguageModel>(
    model: &M,
    first: &[Vec<usize>],
    second: &[Vec<usize>],
    tolerance: f32,
) -> LmResult<f32> {
    const CHECK: &str = "ragged_batch";
    two_steps(CHECK, first, second)?;
    let vocab = model.vocab_size();
    let batch = first.len();
    let mut cache = model.new_cache(batch)?;
    let mut batched: Vec<Vec<Vec<f32>>> = vec![Vec::new(); batch];
    for step in [first, second] {
        let n = step.iter().map(Vec::len).max().unwrap_or(0);
        let logits = model.forward(&mut cache, step)?;
        let m = check_logits_shape(&logits, batch, n, vocab)?;
        let host = tensor_to_vec(logits)?;
        for (b, row) in step.iter().enumerate() {
            for i in 0..row.len() {
                let at = (b * m + i) * vocab;
                batched[b].push(host[at..at + vocab].to_vec());
            }
        }
    }
    let mut worst = 0.0f32;
    for b in 0..batch {
        let whole: Vec<usize> = first[b].iter().chain(&second[b]).copied().collect();
        expect_len(CHECK, model.cached_len(&cache, b), whole.len())?;
        if whole.is_empty() {
            continue;
        }
        let alone = run_row(model, &[&whole])?;
        worst = worst.max(max_abs_diff(&batched[b], &alone));
    }
    verdict(CHECK, worst, tolerance)
}

/// A ragged batch fed in two steps with
/// [`forward_last`](LanguageModel::forward_last) keeping `keep` positions
/// gives [`forward`](LanguageModel::forward)'s logits at each row's last
/// `keep` new positions (those a row has), and the same cached lengths.
///
/// # Errors
/// As [`ragged_batch`]; [`LmError::BadLogits`] for logits not `[batch,
/// keep, vocab]`.
pub fn last_positions<M: LanguageModel>(
    model: &M,
    first: &[Vec<usize>],
    second: &[Vec<usize>],
    keep: usize,
    tolerance: f32,
) -> LmResult<f32> {
    const CHECK: &str = "last_positions";
    two_steps(CHECK, first, second)?;
    let vocab = model.vocab_size();
    let batch = first.len();
    let (mut full, mut last) = (model.new_cache(batch)?, model.new_cache(batch)?);
    let mut worst = 0.0f32;
    for step in [first, second] {
        let n = step.iter().map(Vec::len).max().unwrap_or(0);
        let logits = model.forward(&mut full, step)?;
        let m = check_logits_shape(&logits, batch, n, vocab)?;
        let all = tensor_to_vec(logits)?;
        let kept = model.forward_last(&mut last, step, keep)?;
        check_last_logits_shape(&kept, batch, keep, vocab)?;
        let kept = tensor_to_vec(kept)?;
        for (b, row) in step.iter().enumerate() {
            expect_len(
                CHECK,
                model.cached_len(&last, b),
                model.cached_len(&full, b),
            )?;
            for j in keep.saturating_sub(row.len())..keep {
                let i = row.len() + j - keep;
                let (at, to) = ((b * m + i) * vocab, (b * keep + j) * vocab);
                let diff = max_abs_diff(
                    &[all[at..at + vocab].to_vec()],
                    &[kept[to..to + vocab].to_vec()],
                );
                worst = worst.max(diff);
            }
        }
    }
    verdict(CHECK, worst, tolerance)
}

/// Runs every check on random tokens (seeded), with sequences of at most
/// 24 tokens (or the model's context). Returns the largest difference seen.
///
/// # Errors
/// The first failing check, or any error of the model.
pub fn check_all<M: LanguageModel>(model: &M, seed: u64, tolerance: f32) -> LmResult<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let vocab = model.vocab_size();
    let len = model.max_context().clamp(1, 24);
    let mut tokens =
        |n: usize| -> Vec<usize> { (0..n).map(|_| rng.random_range(0..vocab)).collect() };
    let mut worst = 0.0f32;
    let seq = tokens(len);
    let chunks = [len / 3, 1, len - len / 3 - 1];
    let chunks: Vec<usize> = chunks.into_iter().filter(|&c| c > 0).collect();
    worst = worst.max(chunked_forward(model, &seq, &chunks, tolerance)?);
    if len >= 3 {
        let p = len / 2;
        let d = (len - p).min(3);
        let t = len - p;
        worst = worst.max(truncate_refeed(
            model,
            &seq[..p],
            &tokens(d),
            &tokens(t),
            tolerance,
        )?);
    }
    let first = vec![tokens(len / 2), tokens(1.max(len / 4)), tokens(len - 1)];
    let second = vec![tokens(len - len / 2), Vec::new(), tokens(1)];
    worst = worst.max(ragged_batch(model, &first, &second, tolerance)?);
    for keep in [1, 3] {
        worst = worst.max(last_positions(model, &first, &second, keep, tolerance)?);
    }
    Ok(worst)
}
