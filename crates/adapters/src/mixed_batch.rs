//! One forward over a batch whose rows use different adapters of the same
//! layer — what a server answering many users' fine-tunes at once needs
//! (PEFT's mixed-adapter batches; the grouped "gather, multiply, scatter"
//! of S-LoRA / Punica, Sheng et al. 2023, §4).
//!
//! Rows are grouped by adapter: each group is gathered
//! (`select`), passed through its adapter's unmerged
//! [`forward_delta`](Adapter::forward_delta), and added back in place
//! (`select_assign`), so every row costs exactly what it would alone and
//! the base layer runs once for the whole batch.

use burn::tensor::{IndexingUpdateOp, Tensor};
use lastmile_core::convert::int_tensor_from_indices;

use crate::adapter::Adapter;
use crate::error::{AdapterError, Result};

/// `Σ` over rows of row `i`'s adapter output: row `i` of the result is
/// `adapters[k].forward_delta(x_i)` when `rows[i] = Some(k)` and zero when
/// `rows[i] = None` (the base model alone). Add it to the base layer's
/// output for the adapted layer's output.
///
/// `x` is `[n, in]`; every adapter must be for the same `[out, in]` layer.
/// Dropout, if any, applies per row as in each adapter's own forward.
///
/// # Errors
/// [`AdapterError::InvalidConfig`] for no adapter, or `rows` of another
/// length than `n`, or an index `≥ adapters.len()`;
/// [`AdapterError::Shape`] for an adapter whose `[out, in]` differs from
/// the first one's or whose `in` differs from `x`'s.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Distribution, Tensor};
/// use lastmile_adapters::{Adapter, LoraConfig, mixed_batch::forward_delta_mixed};
///
/// let d = Device::flex();
/// let lora = |seed| -> Adapter {
///     let mut l = LoraConfig::new(2, 4.0).init(5, 3, &d).unwrap();
///     l.b = l.b.map(|b| b.random_like(Distribution::Normal(0.0, 1.0)).mul_scalar(seed));
///     l.into()
/// };
/// let (a, b) = (lora(1.0), lora(2.0));
/// let x = Tensor::<2>::random([3, 5], Distribution::Normal(0.0, 1.0), &d);
/// // row 0 uses a, row 1 the base model only, row 2 uses b
/// let y = forward_delta_mixed(&[&a, &b], x.clone(), &[Some(0), None, Some(1)])?;
/// assert_eq!(y.dims(), [3, 3]);
/// let row2 = b.forward_delta(x.slice([2..3, 0..5]));
/// assert!((y.slice([2..3, 0..3]) - row2).abs().max().into_scalar::<f32>() < 1e-5);
/// # }
/// # Ok::<(), lastmile_adapters::AdapterError>(())
/// ```
pub fn forward_delta_mixed(
    adapters: &[&Adapter],
    x: Tensor<2>,
    rows: &[Option<usize>],
) -> Result<Tensor<2>> {
    let [n, d_in] = x.dims();
    let Some(first) = adapters.first() else {
        return Err(AdapterError::config(
            "adapters",
            "none",
            "at least one adapter",
        ));
    };
    let d_out = first.d_out();
    for (k, a) in adapters.iter().enumerate() {
        if (a.d_out(), a.d_in()) != (d_out, d_in) {
            return Err(AdapterError::shape(
                format!("adapter {k} of a mixed batch"),
                format!("[out, in] = [{d_out}, {d_in}] (the first adapter's out, x's in)"),
                &[a.d_out(), a.d_in()],
            ));
        }
    }
    if rows.len() != n {
        return Err(AdapterError::config(
            "rows",
            format!("{} entries", rows.len()),
            &format!("one adapter choice per row of x ({n})"),
        ));
    }
    if let Some(bad) = rows.iter().flatten().find(|&&k| k >= adapters.len()) {
        return Err(AdapterError::config(
            "rows",
            format!("adapter index {bad}"),
            &format!(
                "an index < {} (the number of adapters) or None",
                adapters.len()
            ),
        ));
    }
    let device = x.device();
    let mut out = Tensor::<2>::zeros([n, d_out], &device);
    for (k, adapter) in adapters.iter().enumerate() {
        let group: Vec<usize> = (0..n).filter(|&i| rows[i] == Some(k)).collect();
        if group.is_empty() {
            continue;
        }
        let idx = int_tensor_from_indices(&group, [group.len()], &device)?;
        let delta = adapter.forward_delta(x.clone().select(0, idx.clone()));
        out = out.select_assign(0, idx, delta, IndexingUpdateOp::Add);
    }
    Ok(out)
}
