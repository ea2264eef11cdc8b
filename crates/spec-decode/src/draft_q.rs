//! The drafts' distributions `q` gathered for a verification: stacked on
//! the device for the tensor kernel, or copied into host memory for the
//! host rule.

use burn::tensor::{Device, Tensor};
use lastmile_core::CoreError;

use crate::drafter::Draft;
use crate::error::Result;

/// Stacks the active rows' draft distributions `[g, V]` into `[A, G, V]`
/// on the device, zero rows past each row's own `g`.
pub(crate) fn stack_draft_q(
    drafts: &[&Draft],
    g_max: usize,
    vocab: usize,
    device: &Device,
) -> Result<Tensor<3>> {
    let rows = drafts
        .iter()
        .enumerate()
        .map(|(a, d)| {
            let g = d.tokens.len();
            let Some(q) = draft_q(d, a, vocab)? else {
                return Ok(Tensor::<2>::zeros([g_max, vocab], device));
            };
            Ok(if g < g_max {
                Tensor::cat(
                    vec![q.clone(), Tensor::zeros([g_max - g, vocab], device)],
                    0,
                )
            } else {
                q.clone()
            })
        })
        .collect::<Result<Vec<Tensor<2>>>>()?;
    Ok(Tensor::stack(rows, 0))
}

/// [`stack_draft_q`] into host memory, `[active, g_max, vocab]` row-major,
/// each draft's `q` taken (a host device's tensors are host memory).
pub(crate) fn host_draft_q(
    drafts: &mut [Draft],
    active: &[usize],
    g_max: usize,
    vocab: usize,
) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(active.len() * g_max * vocab);
    for (a, &i) in active.iter().enumerate() {
        let g = drafts[i].tokens.len();
        if draft_q(&drafts[i], a, vocab)?.is_some()
            && let Some(q) = drafts[i].q.take()
        {
            // Host memory already: not a device read (uncounted).
            let data = q.into_data();
            let values = data
                .as_slice::<f32>()
                .map_err(|e| CoreError::TensorData(format!("draft distributions as f32: {e:?}")))?;
            out.extend_from_slice(values);
        } else {
            out.resize(out.len() + g * vocab, 0.0);
        }
        out.resize(out.len() + (g_max - g) * vocab, 0.0);
    }
    Ok(out)
}

/// The `q` of active row `a`'s draft, `[g, vocab]` for its `g` tokens;
/// `None` for an empty draft.
///
/// # Errors
/// [`CoreError::ShapeMismatch`] for a missing `q` or one of another shape.
fn draft_q(d: &Draft, a: usize, vocab: usize) -> Result<Option<&Tensor<2>>> {
    let g = d.tokens.len();
    match (&d.q, g) {
        (_, 0) => Ok(None),
        (Some(q), _) if q.dims() == [g, vocab] => Ok(Some(q)),
        (q, _) => Err(CoreError::shape(
            "draft distributions q from the drafter",
            format!(
                "[{g}, {vocab}] for the {g} tokens of active row {a} (a drafter that is not deterministic must give q)"
            ),
            &q.as_ref().map_or(Vec::new(), |q| q.dims().to_vec()),
        )
        .into()),
    }
}
