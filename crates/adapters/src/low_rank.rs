//! The low-rank arithmetic LoRA and FouRA share: the scale `s`, the rank
//! and `α` checks, and `s·(x Aᵀ) Bᵀ` on the last axis of any-rank input.

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::error::{AdapterError, Result};

pub(crate) fn scaling(alpha: f64, rank: usize, use_rslora: bool) -> f64 {
    if use_rslora {
        alpha / (rank as f64).sqrt()
    } else {
        alpha / rank as f64
    }
}

pub(crate) fn validate_rank_alpha(
    rank: usize,
    alpha: f64,
    d_out: usize,
    d_in: usize,
) -> Result<()> {
    if d_out == 0 || d_in == 0 {
        return Err(AdapterError::shape(
            "base weight",
            "[out, in] with out, in > 0",
            &[d_out, d_in],
        ));
    }
    if rank == 0 || rank > d_out.min(d_in) {
        return Err(AdapterError::config(
            "rank",
            rank,
            &format!("an integer in [1, min(out, in)] = [1, {}]", d_out.min(d_in)),
        ));
    }
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(AdapterError::config("alpha", alpha, "a finite value > 0"));
    }
    Ok(())
}

/// `s · (x Aᵀ) Bᵀ` on the last axis of `x` — the shared low-rank path of LoRA
/// and FouRA (which passes its transform-folded factors).
pub(crate) fn low_rank_apply<const D: usize>(
    x: Tensor<D>,
    a: Tensor<2>,
    b: Tensor<2>,
    s: f64,
) -> Tensor<D> {
    let (x2, lead) = flatten(x);
    let out = x2.matmul(a.transpose()).matmul(b.transpose()).mul_scalar(s);
    unflatten(out, &lead)
}

/// A `[rows, cols]` factor of draws from `dist`: from
/// `StdRng::seed_from_u64(seed)` when a seed is given (the same values on
/// every backend and every run), else from the device's generator (burn's
/// default, seeded by `device.seed(..)`).
pub(crate) fn random_factor(
    shape: [usize; 2],
    dist: Distribution,
    seed: Option<u64>,
    device: &Device,
) -> Tensor<2> {
    match seed {
        None => Tensor::random(shape, dist, device),
        Some(seed) => Tensor::from_data(
            TensorData::random::<f32, _, _>(shape, dist, &mut StdRng::seed_from_u64(seed)),
            device,
        ),
    }
}

/// `[..., n] → ([N, n], leading dims)`.
pub(crate) fn flatten<const D: usize>(x: Tensor<D>) -> (Tensor<2>, Vec<usize>) {
    let dims = x.dims();
    let n = dims[D - 1];
    let lead: Vec<usize> = dims[..D - 1].to_vec();
    let rows = lead.iter().product::<usize>();
    (x.reshape([rows, n]), lead)
}

/// Inverse of [`flatten`] for an output with a new last dimension.
pub(crate) fn unflatten<const D: usize>(y: Tensor<2>, lead: &[usize]) -> Tensor<D> {
    let [_, m] = y.dims();
    let mut shape = [0usize; D];
    shape[..D - 1].copy_from_slice(lead);
    shape[D - 1] = m;
    y.reshape(shape)
}
