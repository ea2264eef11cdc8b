//! Softmax and entropy rows in host memory, for tensors on a CPU device
//! ([`crate::host::is_host`]): one pass per row with the vectorising
//! [`crate::fastmath`] functions instead of a tensor operation per step with
//! a library call per element. For a 49 152-token vocabulary this is the
//! difference between a fraction of a millisecond and a few microseconds per
//! row, which matters once per draft token in speculative decoding.
//!
//! Same results as the tensor path up to the functions' rounding (2 ulp),
//! and `e^x` taken as exactly 0 below `x = −87.3` where the tensor path
//! gives a subnormal (below 1.2·10⁻³⁸). Rows holding NaN or `+inf` take the
//! standard library's functions, so that they propagate as on the tensor
//! path.

use burn::tensor::{DType, Tensor, TensorData};

use crate::error::{CoreError, Result};
use crate::fastmath::{exp, ln};

/// Below this, `e^x` is taken as 0 (the smallest normal f32 is `e^−87.34`).
const EXP_FLOOR: f32 = -87.3;

/// Whether `t` takes this path: f32 values on a host device.
pub(super) fn applies<const D: usize>(t: &Tensor<D>) -> bool {
    t.dtype() == DType::F32 && crate::host::is_host(&t.device())
}

fn not_f32(e: impl std::fmt::Debug) -> CoreError {
    CoreError::TensorData(format!("cannot read the tensor as f32 values: {e:?}"))
}

/// `f` on each row (`classes` long) of `t`'s values, in place (no copy for
/// a uniquely owned tensor).
fn map_rows(t: Tensor<2>, f: impl Fn(&mut [f32])) -> Result<Tensor<2>> {
    let [_, classes] = t.dims();
    let device = t.device();
    let mut data = t.into_data();
    let values = data.as_mut_slice::<f32>().map_err(not_f32)?;
    values.chunks_exact_mut(classes).for_each(f);
    Ok(Tensor::from_data(data, &device))
}

/// Whether every value of `row` is finite or `-inf` (a masked entry).
fn tame(row: &[f32]) -> bool {
    row.iter().all(|v| v.is_finite() || *v == f32::NEG_INFINITY)
}

/// Row softmax of `logits / t` (`t > 0`), as `numerics::softmax`.
pub(super) fn softmax(logits: Tensor<2>, t: f32) -> Result<Tensor<2>> {
    map_rows(logits, |row| {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
        let max = if max.is_infinite() { 0.0 } else { max };
        if tame(row) {
            for v in row.iter_mut() {
                let x = (*v - max) / t;
                *v = if x < EXP_FLOOR { 0.0 } else { exp(x) };
            }
        } else {
            for v in row.iter_mut() {
                *v = ((*v - max) / t).exp();
            }
        }
        let sum = lane_sum(row, |v| v);
        for v in row.iter_mut() {
            *v /= sum;
        }
    })
}

/// The `T → 0` limit of the row softmax, as `numerics::softmax`: uniform
/// over each row's maxima; a row holding NaN becomes NaN.
pub(super) fn greedy(logits: Tensor<2>) -> Result<Tensor<2>> {
    map_rows(logits, |row| {
        if row.iter().any(|v| v.is_nan()) {
            row.fill(f32::NAN);
            return;
        }
        let max = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
        let count = row.iter().filter(|v| **v == max).count() as f32;
        for v in row.iter_mut() {
            *v = if *v == max { 1.0 / count } else { 0.0 };
        }
    })
}

/// Row entropies `−Σ p ln p` (`0 ln 0 = 0`) of `probs`, as `numerics::entropy`.
pub(super) fn entropy(probs: Tensor<2>) -> Result<Tensor<1>> {
    let [batch, classes] = probs.dims();
    let device = probs.device();
    let data = probs.into_data();
    let values = data.as_slice::<f32>().map_err(not_f32)?;
    let h: Vec<f32> = values
        .chunks_exact(classes)
        .map(|row| {
            if row.iter().all(|p| p.is_finite()) {
                -lane_sum(row, |p| if p > 0.0 { p * ln(p) } else { 0.0 })
            } else {
                -row.iter()
                    .map(|&p| if p > 0.0 { p * p.ln() } else { 0.0 })
                    .sum::<f32>()
            }
        })
        .collect();
    Ok(Tensor::from_data(TensorData::new(h, [batch]), &device))
}

/// `Σ f(v)` over `row` in 8 running lanes (a loop that vectorises), the
/// lanes then summed in order, then the tail.
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let (body, tail) = row.as_chunks::<8>();
    let mut lanes = [0.0f32; 8];
    for chunk in body {
        for l in 0..8 {
            lanes[l] += f(chunk[l]);
        }
    }
    lanes.iter().sum::<f32>() + tail.iter().map(|v| f(*v)).sum::<f32>()
}
