//! Exact speculative sampling: the accept / reject / resample step.
//!
//! Leviathan et al. 2023 (arXiv 2211.17192, Algorithm 1) and Chen et al.
//! 2023 (arXiv 2302.01318, Algorithm 2): draft token `x_i ~ q_i` is accepted
//! with probability `min(1, p_i(x_i) / q_i(x_i))`; at the first rejection the
//! round ends with a sample from the residual `norm(max(0, p_i − q_i))`; if all
//! `g` drafts are accepted a bonus token is drawn from `p_{g+1}`. The emitted
//! tokens then follow `p` exactly (Leviathan et al., Theorem 3.5 / Appendix A.1).

use burn::tensor::{Int, Tensor, TensorData};
use lastmile_core::CoreError;
use lastmile_core::convert::tensor_from_vec;
use lastmile_core::numerics::{PROBABILITY_SUM_TOLERANCE, argmax, sample_categorical};
use lastmile_core::validate::{check_finite, check_probabilities};
use rand::{Rng, RngExt};

use crate::error::{Result, SpecDecodeError};

/// Outcome of verifying one sequence's draft.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Number of leading draft tokens accepted (`0..=g`).
    pub accepted: usize,
    /// The token emitted after the accepted drafts: a residual sample after a
    /// rejection, or the bonus token when every draft was accepted.
    pub token: usize,
}

/// How the token after a rejection is drawn. Only [`ResidualRule::Exact`] is
/// reachable from the public API; the other rule exists so that the exactness
/// tests can show they detect a broken sampler (negative control).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResidualRule {
    /// `norm(max(0, p − q))`, the exact rule.
    Exact,
    /// Resample from `q` instead: biased whenever `p ≠ q`.
    #[cfg(test)]
    DraftDistribution,
}

/// Verifies a batch of drafts against the target distributions.
///
/// For each row `b` with draft `x_1..x_g` (`g = drafts[b].len() ≤ G`):
/// - sampling (`greedy = false`): accepts `x_i` iff `u_i · q_i(x_i) < p_i(x_i)`
///   with `u_i ~ U[0, 1)`, i.e. with probability `min(1, p_i(x_i)/q_i(x_i))`;
///   at the first rejection emits a sample of `norm(max(0, p_i − q_i))`; after
///   `g` acceptances emits a sample of `p_{g+1}`.
/// - greedy (`greedy = true`): accepts while `x_i = argmax p_i` and emits
///   `argmax p_{n+1}` (first maximum on ties), so the output equals
///   target-only greedy decoding token for token.
///
/// `draft_probs = None` means a deterministic drafter: `q_i` is one-hot at
/// `x_i`, so `x_i` is accepted with probability `p_i(x_i)` and a rejection
/// resamples from `p_i` with `x_i` removed and renormalised — also exact.
///
/// `target_probs` must already carry the temperature / top-k / top-p
/// processing (see [`SamplingParams::probabilities`](lastmile_core::numerics::SamplingParams::probabilities)),
/// and so must `draft_probs`; the output then follows the processed target.
/// Randomness comes only from `rng`: `B·G` uniforms (row-major) then one
/// categorical draw per row.
///
/// # Shapes
/// - `target_probs`: `[B, G + 1, V]`, rows are distributions (position `i`
///   is the target's distribution for draft position `i`, position `g` the bonus).
/// - `draft_probs`: `[B, G, V]` (rows past a sequence's own `g` are ignored).
/// - `drafts`: `B` lists of at most `G` tokens `< V`.
///
/// # Errors
/// [`SpecDecodeError::Core`] for shape mismatches, non-finite values or
/// target rows that are not distributions; [`SpecDecodeError::TokenOutOfRange`]
/// for a draft token `≥ V`.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use rand::{SeedableRng, rngs::StdRng};
/// use lastmile_spec_decode::verify_drafts;
/// let d = Device::flex();
/// // target and draft agree on a point mass at token 1: the draft is always accepted
/// let p = Tensor::<3>::from_floats([[[0.0, 1.0], [0.5, 0.5]]], &d);
/// let q = Tensor::<3>::from_floats([[[0.0, 1.0]]], &d);
/// let v = verify_drafts(p, Some(q), &[vec![1]], false, &mut StdRng::seed_from_u64(0)).unwrap();
/// assert_eq!(v[0].accepted, 1);
/// # }
/// ```
pub fn verify_drafts<R: Rng + ?Sized>(
    target_probs: Tensor<3>,
    draft_probs: Option<Tensor<3>>,
    drafts: &[Vec<usize>],
    greedy: bool,
    rng: &mut R,
) -> Result<Vec<Verdict>> {
    let [b, g1, v] = target_probs.dims();
    if b == 0 || g1 == 0 || v == 0 {
        return Err(CoreError::shape(
            "target_probs",
            "[batch > 0, G + 1 > 0, vocab > 0]",
            &[b, g1, v],
        )
        .into());
    }
    check_probabilities(
        "target_probs",
        &target_probs.clone().reshape([b * g1, v]),
        PROBABILITY_SUM_TOLERANCE,
    )?;
    if let Some(q) = &draft_probs {
        let dims = q.dims();
        if dims != [b, g1 - 1, v] {
            return Err(CoreError::shape(
                "draft_probs",
                format!("[{b}, {}, {v}] to match target_probs", g1 - 1),
                &dims,
            )
            .into());
        }
        if g1 > 1 {
            check_finite("draft_probs", q)?;
        }
    }
    verify_unchecked(
        target_probs,
        draft_probs,
        drafts,
        greedy,
        ResidualRule::Exact,
        rng,
    )
}

/// [`verify_drafts`] without the probability checks (the decoder builds its
/// inputs from validated logits), with a selectable residual rule.
pub(crate) fn verify_unchecked<R: Rng + ?Sized>(
    p: Tensor<3>,
    q: Option<Tensor<3>>,
    drafts: &[Vec<usize>],
    greedy: bool,
    rule: ResidualRule,
    rng: &mut R,
) -> Result<Vec<Verdict>> {
    let [b, g1, v] = p.dims();
    let g = g1 - 1;
    if drafts.len() != b {
        return Err(CoreError::shape(
            "drafts",
            format!("{b} rows, one per batch row"),
            &[drafts.len()],
        )
        .into());
    }
    for (row, d) in drafts.iter().enumerate() {
        if d.len() > g {
            return Err(CoreError::shape(
                "drafts",
                format!("at most G = {g} tokens per row (row {row})"),
                &[d.len()],
            )
            .into());
        }
        if let Some((position, &token)) = d.iter().enumerate().find(|(_, t)| **t >= v) {
            return Err(SpecDecodeError::TokenOutOfRange {
                what: format!("draft of row {row}"),
                position,
                token,
                vocab: v,
            });
        }
    }
    let device = p.device();
    let p_flat = p.reshape([b * g1, v]);

    if greedy {
        let best = argmax(p_flat)?;
        return Ok(drafts
            .iter()
            .enumerate()
            .map(|(row, d)| {
                let best_row = &best[row * g1..(row + 1) * g1];
                let accepted = d.iter().zip(best_row).take_while(|(x, m)| x == m).count();
                Verdict {
                    accepted,
                    token: best_row[accepted],
                }
            })
            .collect());
    }

    // 1. Accept/reject every drafted position at once: u·q(x) < p(x).
    let accepted: Vec<usize> = if g == 0 {
        vec![0; b]
    } else {
        let idx: Vec<i64> = drafts
            .iter()
            .flat_map(|d| (0..g).map(move |i| d.get(i).copied().unwrap_or(0) as i64))
            .collect();
        let idx = Tensor::<3, Int>::from_data(TensorData::new(idx, [b, g, 1]), &device);
        let p_x = p_flat
            .clone()
            .reshape([b, g1, v])
            .slice([0..b, 0..g, 0..v])
            .gather(2, idx.clone());
        let u: Vec<f32> = (0..b * g).map(|_| rng.random::<f32>()).collect();
        let u = Tensor::<3>::from_data(TensorData::new(u, [b, g, 1]), &device);
        let lhs = match &q {
            Some(q) => u * q.clone().gather(2, idx),
            None => u,
        };
        let flags = lhs.lower(p_x).into_data();
        let flags: Vec<bool> = flags.iter::<bool>().collect();
        drafts
            .iter()
            .enumerate()
            .map(|(row, d)| {
                flags[row * g..row * g + d.len()]
                    .iter()
                    .take_while(|f| **f)
                    .count()
            })
            .collect()
    };

    // 2. The distribution of the emitted token: residual after a rejection, p after a full acceptance.
    let p_rows: Vec<usize> = accepted
        .iter()
        .enumerate()
        .map(|(row, n)| row * g1 + n)
        .collect();
    let p_sel = p_flat.select(0, index_tensor(&p_rows, &device)?);
    let rejected: Vec<bool> = drafts
        .iter()
        .zip(&accepted)
        .map(|(d, n)| *n < d.len())
        .collect();
    let q_sel = match &q {
        Some(q) if g > 0 => {
            let q_rows: Vec<usize> = accepted
                .iter()
                .enumerate()
                .map(|(row, n)| row * g + (*n).min(g - 1))
                .collect();
            let mask: Vec<f32> = rejected
                .iter()
                .map(|r| if *r { 1.0 } else { 0.0 })
                .collect();
            let mask = tensor_from_vec(mask, [b, 1], &device)?;
            q.clone()
                .reshape([b * g, v])
                .select(0, index_tensor(&q_rows, &device)?)
                * mask
        }
        _ => {
            // One-hot q at the rejected token (zero row when nothing was rejected).
            let mut one_hot = vec![0.0f32; b * v];
            for (row, (d, n)) in drafts.iter().zip(&accepted).enumerate() {
                if *n < d.len() {
                    one_hot[row * v + d[*n]] = 1.0;
                }
            }
            tensor_from_vec(one_hot, [b, v], &device)?
        }
    };
    let residual = match rule {
        ResidualRule::Exact => {
            let r = (p_sel.clone() - q_sel).clamp_min(0.0);
            // p ≤ q everywhere can only happen through rounding (both sum to 1):
            // fall back to p, which that rounding makes indistinguishable.
            let empty = r.clone().sum_dim(1).lower_equal_elem(0.0).expand([b, v]);
            r.mask_where(empty, p_sel)
        }
        #[cfg(test)]
        ResidualRule::DraftDistribution => {
            let use_q: Vec<bool> = rejected.clone();
            let mask = Tensor::<2>::from_data(
                TensorData::new(
                    use_q
                        .iter()
                        .map(|r| if *r { 1.0f32 } else { 0.0 })
                        .collect::<Vec<_>>(),
                    [b, 1],
                ),
                &device,
            );
            q_sel * mask.clone() + p_sel * (mask.neg() + 1.0)
        }
    };
    let residual = residual.clone() / residual.sum_dim(1);
    let tokens = sample_categorical(residual, rng)?;
    Ok(accepted
        .into_iter()
        .zip(tokens)
        .map(|(accepted, token)| Verdict { accepted, token })
        .collect())
}

pub(crate) fn index_tensor(
    indices: &[usize],
    device: &burn::tensor::Device,
) -> Result<Tensor<1, Int>> {
    Ok(lastmile_core::convert::int_tensor_from_indices(
        indices,
        [indices.len()],
        device,
    )?)
}
