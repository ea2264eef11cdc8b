//! Exact speculative sampling: the accept / reject / resample step.
//!
//! Leviathan et al. 2023 (arXiv 2211.17192, Algorithm 1) and Chen et al.
//! 2023 (arXiv 2302.01318, Algorithm 2): draft token `x_i ~ q_i` is accepted
//! with probability `min(1, p_i(x_i) / q_i(x_i))`; at the first rejection the
//! round ends with a sample from the residual `norm(max(0, p_i − q_i))`; if all
//! `g` drafts are accepted a bonus token is drawn from `p_{g+1}`. The emitted
//! tokens then follow `p` exactly (Leviathan et al., Theorem 3.5 / Appendix A.1).
//!
//! The whole step runs on the device and reads back **one** small integer
//! tensor (acceptance flags, candidate tokens, validity flags): one device
//! synchronisation per verification, whatever the batch and draft lengths.
//! On a CPU device the same rule runs on host rows (the `verify_host` module),
//! with the same uniforms and the same verdicts.

use burn::tensor::{Device, Int, Tensor, TensorData};
use lastmile_core::CoreError;
use lastmile_core::convert::indices_to_vec;
use lastmile_core::numerics::{PROBABILITY_SUM_TOLERANCE, sample_categorical_on_device};
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
///   `argmax p_{n+1}` (burn's `argmax`, as target-only greedy decoding uses),
///   so the output equals target-only greedy decoding token for token.
///
/// `draft_probs = None` means a deterministic drafter: `q_i` is one-hot at
/// `x_i`, so `x_i` is accepted with probability `p_i(x_i)` and a rejection
/// resamples from `p_i` with `x_i` removed and renormalised — also exact.
///
/// `target_probs` must already carry the temperature / top-k / top-p
/// processing (see [`SamplingParams::probabilities`](lastmile_core::numerics::SamplingParams::probabilities)),
/// and so must `draft_probs`; the output then follows the processed target.
///
/// All positions are decided at once on the device: every acceptance test,
/// and for every row and position `i ≤ G` a candidate token (a residual
/// sample for `i < g`, a sample of `p_{g+1}` at `i = g`), each candidate with
/// its own uniform. The verdict takes the candidate at the first rejection
/// (or the bonus); since that candidate's uniform is independent of the
/// acceptance tests that chose the position, it is an exact sample of that
/// position's residual, as Leviathan et al. Algorithm 1 / Chen et al.
/// Algorithm 2 require. Randomness comes only from `rng`: `B·G` acceptance
/// uniforms (row-major, none when `G = 0`), then `B·(G + 1)` candidate
/// uniforms (row-major); greedy verification draws nothing.
///
/// Device synchronisations: 1 for the verification, after 1 for the check
/// of `target_probs` and 1 for the check of `draft_probs` (this function is
/// an entry point and validates its inputs; the decoder calls the same
/// kernel on probabilities it computed itself, without these checks).
///
/// # Shapes
/// - `target_probs`: `[B, G + 1, V]`, rows are distributions (position `i`
///   is the target's distribution for draft position `i`, position `g` the bonus).
/// - `draft_probs`: `[B, G, V]` (rows past a sequence's own `g` are ignored).
/// - `drafts`: `B` lists of at most `G` tokens `< V`.
///
/// # Errors
/// [`SpecDecodeError::Core`] for shape mismatches ([`CoreError::ShapeMismatch`],
/// [`CoreError::LengthMismatch`] for the number of drafts), non-finite values
/// ([`CoreError::NonFinite`]) or target rows that are not distributions
/// ([`CoreError::NotAProbability`]); [`SpecDecodeError::TokenOutOfRange`]
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
    check_draft_shape(draft_probs.as_ref(), [b, g1 - 1, v])?;
    check_drafts(drafts, b, g1 - 1, v)?;
    check_probabilities(
        "target_probs",
        &target_probs.clone().reshape([b * g1, v]),
        PROBABILITY_SUM_TOLERANCE,
    )?;
    if let Some(q) = &draft_probs
        && g1 > 1
    {
        check_finite("draft_probs", q)?;
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

/// [`verify_drafts`] without the edge checks of the probabilities, with a
/// selectable residual rule; a non-finite value (flagged by the kernel's one
/// read) is located by the checks afterwards, on the error path only.
pub(crate) fn verify_unchecked<R: Rng + ?Sized>(
    p: Tensor<3>,
    q: Option<Tensor<3>>,
    drafts: &[Vec<usize>],
    greedy: bool,
    rule: ResidualRule,
    rng: &mut R,
) -> Result<Vec<Verdict>> {
    match verify_kernel(p.clone(), q.clone(), drafts, greedy, rule, None, rng)? {
        Checked::Verdicts(verdicts) => Ok(verdicts),
        Checked::NonFiniteTarget => {
            let [b, g1, v] = p.dims();
            Err(located(
                "target_probs",
                check_probabilities(
                    "target_probs",
                    &p.reshape([b * g1, v]),
                    PROBABILITY_SUM_TOLERANCE,
                ),
            ))
        }
        Checked::NonFiniteDraft => Err(match q {
            Some(q) => located("draft_probs", check_finite("draft_probs", &q)),
            None => unlocated("draft_probs"),
        }),
    }
}

/// What the verification kernel found.
#[derive(Debug)]
pub(crate) enum Checked {
    /// One verdict per row.
    Verdicts(Vec<Verdict>),
    /// The target distributions hold a NaN or an infinity, or the caller's
    /// flag of the logits behind them was raised (NaN or `+inf` logits, or
    /// a row whose logits are all `-inf`).
    NonFiniteTarget,
    /// The draft distributions hold a NaN or an infinity.
    NonFiniteDraft,
}

/// The error a tensor check reports on the error path, or an internal
/// error if the check finds nothing where the device flagged a fault.
pub(crate) fn located(what: &str, check: lastmile_core::Result<()>) -> SpecDecodeError {
    match check {
        Err(e) => e.into(),
        Ok(()) => unlocated(what),
    }
}

/// Error path of a flagged `model`'s logits (`"target"` or `"draft"`) and
/// the probabilities computed from them: the logits' fault if they have one
/// (NaN, `+inf`, a fully masked row), else the probabilities' (an overflow
/// of `logits / T`).
#[cold]
pub(crate) fn locate_logits_fault<const D: usize>(
    model: &str,
    logits: &Tensor<2>,
    probs: Tensor<D>,
) -> SpecDecodeError {
    let what = format!("{model} logits");
    match lastmile_core::validate::check_logits(&what, logits) {
        Err(e) => e.into(),
        Ok(()) => {
            let what = format!("{model} probabilities");
            located(&what, check_finite(&what, &probs))
        }
    }
}

#[cold]
fn unlocated(what: &str) -> SpecDecodeError {
    CoreError::TensorData(format!(
        "{what}: the device flagged a non-finite value that a re-check could not locate"
    ))
    .into()
}

/// `[1]`: 1 if `t` holds a NaN or an infinity, else 0. No synchronisation.
pub(crate) fn non_finite_flag<const D: usize>(t: Tensor<D>) -> Tensor<1, Int> {
    t.is_finite().bool_not().any().int()
}

/// `[1]`: non-zero when `logits` `[rows, V]` fail
/// [`check_logits`](lastmile_core::validate::check_logits) (a NaN, a `+inf`,
/// or a row of only `-inf`), on the device, to be read back with other
/// values. Needed besides [`non_finite_flag`] of the probabilities: greedy
/// probabilities of a fully masked row are uniform, not NaN.
pub(crate) fn logits_fault(logits: &Tensor<2>) -> Tensor<1, Int> {
    let bad_value = logits
        .clone()
        .is_nan()
        .bool_or(logits.clone().equal_elem(f32::INFINITY))
        .any();
    let masked_row = logits
        .clone()
        .max_dim(1)
        .equal_elem(f32::NEG_INFINITY)
        .any();
    bad_value.int() + masked_row.int()
}

fn check_draft_shape(q: Option<&Tensor<3>>, expected: [usize; 3]) -> Result<()> {
    if let Some(q) = q
        && q.dims() != expected
    {
        let [b, g, v] = expected;
        return Err(CoreError::shape(
            "draft_probs",
            format!("[{b}, {g}, {v}] to match target_probs"),
            &q.dims(),
        )
        .into());
    }
    Ok(())
}

/// Host checks of the drafts (no synchronisation): one list per row, at
/// most `g` tokens each, every token `< v`.
pub(crate) fn check_drafts(drafts: &[Vec<usize>], b: usize, g: usize, v: usize) -> Result<()> {
    lastmile_core::validate::check_len("drafts (one list per batch row)", drafts.len(), b)?;
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
    Ok(())
}

/// The verification kernel: everything on the device, one read-back (on a
/// CPU device the same decisions on host rows, [`crate::verify_host`]).
///
/// `p` `[B, G + 1, V]` and `q` `[B, G, V]` are not validated (the decoder
/// builds them from logits it did not check); a NaN or infinity in either,
/// or a non-zero `target_fault` (`[1]`, e.g. [`logits_fault`] of the logits
/// behind `p`), is reported as [`Checked::NonFiniteTarget`] /
/// [`Checked::NonFiniteDraft`] from the same read. `q` rows past a row's own
/// draft length are ignored; in greedy mode `q` is not used. RNG
/// consumption as in [`verify_drafts`].
pub(crate) fn verify_kernel<R: Rng + ?Sized>(
    p: Tensor<3>,
    q: Option<Tensor<3>>,
    drafts: &[Vec<usize>],
    greedy: bool,
    rule: ResidualRule,
    target_fault: Option<Tensor<1, Int>>,
    rng: &mut R,
) -> Result<Checked> {
    let [b, g1, v] = p.dims();
    if b == 0 || g1 == 0 || v == 0 {
        return Err(CoreError::shape("p", "[batch > 0, G + 1 > 0, vocab > 0]", &[b, g1, v]).into());
    }
    let g = g1 - 1;
    check_drafts(drafts, b, g, v)?;
    let q = if greedy { None } else { q };
    check_draft_shape(q.as_ref(), [b, g, v])?;
    let host = crate::verify_host::verify_host(
        &p,
        q.as_ref(),
        drafts,
        greedy,
        rule,
        target_fault.as_ref(),
        rng,
    )?;
    if let Some(checked) = host {
        return Ok(checked);
    }
    let device = p.device();
    let p_fault = match target_fault {
        Some(f) => non_finite_flag(p.clone()) + f,
        None => non_finite_flag(p.clone()),
    };

    if greedy {
        // Layout of the read: [argmax p (B·(G+1)), target fault].
        let best = p.clone().reshape([b * g1, v]).argmax(1).reshape([b * g1]);
        let host = read_ints(vec![best, p_fault], b * g1 + 1)?;
        if host[b * g1] != 0 {
            return Ok(Checked::NonFiniteTarget);
        }
        return Ok(Checked::Verdicts(
            drafts
                .iter()
                .enumerate()
                .map(|(row, d)| {
                    let best_row = &host[row * g1..(row + 1) * g1];
                    let accepted = d.iter().zip(best_row).take_while(|(x, m)| x == m).count();
                    Verdict {
                        accepted,
                        token: best_row[accepted],
                    }
                })
                .collect(),
        ));
    }

    // Layout of the read: [accept flags (B·G), candidates (B·(G+1)),
    // target fault, q non-finite].
    let mut parts: Vec<Tensor<1, Int>> = Vec::with_capacity(4);
    // `q` with rows past each draft zeroed, and one zero row for the bonus
    // position: the residual at a position without a draft is then `p`.
    let mut q_full: Option<Tensor<3>> = None;
    let q_flag = q.as_ref().map(|q| non_finite_flag(q.clone()));
    if g > 0 {
        let mask = draft_mask(drafts, g, &device)?;
        let idx: Vec<i64> = drafts
            .iter()
            .flat_map(|d| (0..g).map(move |i| d.get(i).copied().unwrap_or(0) as i64))
            .collect();
        let idx = Tensor::<3, Int>::from_data(TensorData::new(idx, [b, g, 1]), &device);
        // 1. Every acceptance test at once: u·q(x) < p(x) (q(x) = 1 for one-hot q).
        let p_x = p.clone().slice([0..b, 0..g, 0..v]).gather(2, idx.clone());
        let u: Vec<f32> = (0..b * g).map(|_| rng.random::<f32>()).collect();
        let u = Tensor::<3>::from_data(TensorData::new(u, [b, g, 1]), &device);
        let lhs = match &q {
            Some(q) => u * q.clone().gather(2, idx),
            None => u,
        };
        parts.push(lhs.lower(p_x).int().reshape([b * g]));
        let q_drafted = match q {
            Some(q) => q * mask.unsqueeze_dim::<3>(2),
            None => one_hot(drafts, g, v, &device)?,
        };
        q_full = Some(Tensor::cat(
            vec![q_drafted, Tensor::zeros([b, 1, v], &device)],
            1,
        ));
    }
    // 2. A candidate for every position: the residual after a rejection
    // there, p itself at the bonus position (and past it, unused).
    let dist = match (rule, q_full) {
        (_, None) => p.clone(),
        (ResidualRule::Exact, Some(q_full)) => {
            let r = (p.clone() - q_full).clamp_min(0.0);
            // p ≤ q everywhere can only happen through rounding (both sum to 1):
            // fall back to p, which that rounding makes indistinguishable.
            let empty = r
                .clone()
                .sum_dim(2)
                .lower_equal_elem(0.0)
                .expand([b, g1, v]);
            r.mask_where(empty, p.clone())
        }
        #[cfg(test)]
        (ResidualRule::DraftDistribution, Some(q_full)) => {
            // q where a draft was rejected, p elsewhere.
            let drafted = Tensor::cat(
                vec![
                    draft_mask(drafts, g, &device)?,
                    Tensor::zeros([b, 1], &device),
                ],
                1,
            )
            .unsqueeze_dim::<3>(2);
            q_full + p.clone() * (drafted.neg() + 1.0)
        }
    };
    // The sampler normalises by the row total: no explicit division needed.
    parts.push(sample_categorical_on_device(
        dist.reshape([b * g1, v]),
        rng,
    )?);
    parts.push(p_fault);
    parts.push(q_flag.unwrap_or_else(|| Tensor::zeros([1], &device)));
    let n_flags = b * g;
    let host = read_ints(parts, n_flags + b * g1 + 2)?;
    if host[n_flags + b * g1] != 0 {
        return Ok(Checked::NonFiniteTarget);
    }
    if host[n_flags + b * g1 + 1] != 0 {
        return Ok(Checked::NonFiniteDraft);
    }
    let (flags, candidates) = host.split_at(n_flags);
    Ok(Checked::Verdicts(
        drafts
            .iter()
            .enumerate()
            .map(|(row, d)| {
                let accepted = flags[row * g..row * g + d.len()]
                    .iter()
                    .take_while(|f| **f == 1)
                    .count();
                Verdict {
                    accepted,
                    token: candidates[row * g1 + accepted],
                }
            })
            .collect(),
    ))
}

/// `[B, G]`: 1 at positions holding a draft token, 0 past a row's draft.
fn draft_mask(drafts: &[Vec<usize>], g: usize, device: &Device) -> Result<Tensor<2>> {
    let mask: Vec<f32> = drafts
        .iter()
        .flat_map(|d| (0..g).map(move |i| if i < d.len() { 1.0 } else { 0.0 }))
        .collect();
    Ok(lastmile_core::convert::tensor_from_vec(
        mask,
        [drafts.len(), g],
        device,
    )?)
}

/// `[B, G, V]`: one-hot at each draft token (a deterministic drafter's `q`),
/// zero rows past a row's draft.
fn one_hot(drafts: &[Vec<usize>], g: usize, v: usize, device: &Device) -> Result<Tensor<3>> {
    let mut data = vec![0.0f32; drafts.len() * g * v];
    for (row, d) in drafts.iter().enumerate() {
        for (i, &x) in d.iter().enumerate() {
            data[(row * g + i) * v + x] = 1.0;
        }
    }
    Ok(lastmile_core::convert::tensor_from_vec(
        data,
        [drafts.len(), g, v],
        device,
    )?)
}

/// Concatenates integer tensors and reads them back in one transfer.
pub(crate) fn read_ints(parts: Vec<Tensor<1, Int>>, expected: usize) -> Result<Vec<usize>> {
    let host = indices_to_vec(Tensor::cat(parts, 0))?;
    if host.len() != expected {
        return Err(CoreError::TensorData(format!(
            "read {} values back; expected {expected}",
            host.len()
        ))
        .into());
    }
    Ok(host)
}

pub(crate) fn index_tensor(indices: &[usize], device: &Device) -> Result<Tensor<1, Int>> {
    Ok(lastmile_core::convert::int_tensor_from_indices(
        indices,
        [indices.len()],
        device,
    )?)
}
