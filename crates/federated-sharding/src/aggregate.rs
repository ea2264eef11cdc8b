//! Server aggregation (FedAvg on reconstructions, factor-wise averaging) and
//! the client-side FedProx term.
//!
//! - [`fedavg`]: the server average. Each client's update is turned back
//!   into dense weights (`Ŵ_k = A_k B_k` per sharded layer, or
//!   `W + ΔW_k` for a dense delta) and the server takes
//!   `W ← Σ_k (N_k / N) Ŵ_k` with `N_k` the client's number of samples
//!   (McMahan et al., 2017); dense parameters (biases, unsharded layers) are
//!   averaged the same way. This is the aggregation of the paper and the
//!   spec: with equal `N_k`, it is the average `(1/K) Σ_k Ŵ_k` whose error the
//!   Collective strategy minimises.
//! - [`factorwise`]: the factor-wise alternative the spec mentions without
//!   defining it. The version here is the simplest well-defined one: for
//!   each triplet index `i`, the clients holding `i` contribute their
//!   trained column `a_i` of `A` and row `b_i` of `B`, each divided by
//!   `√λ_i` to undo the multiplier; these are averaged (weighted by `N_k`)
//!   into `ā_i`, `b̄_i`, and `W ← Σ_{i held} ā_i b̄_iᵀ + Σ_{i not held} σ_i u_i v_iᵀ`
//!   (triplets no client held keep their current value). With untrained
//!   factors it returns `W` exactly (a fixed point); with training it is
//!   not the same as averaging products `a_i b_iᵀ`, which is what
//!   [`fedavg`] does.
//! - FedProx (Li et al., 2020) changes only the client objective, adding
//!   `μ/2 ‖w − w_global‖²`: [`proximal_term`], [`proximal_gradient`] and the
//!   tensor form [`proximal_penalty`] for a burn loss. The server side is
//!   [`fedavg`].
//!
//! ```
//! use lastmile_federated_sharding::aggregate::weighted_average;
//! let avg = weighted_average(&[(1, &[0.0, 4.0][..]), (3, &[4.0, 0.0][..])])?;
//! assert_eq!(avg, [3.0, 1.0]);
//! # Ok::<(), lastmile_federated_sharding::ShardingError>(())
//! ```

use burn::tensor::Tensor;
use lastmile_core::CoreError;
use lastmile_core::validate::{check_interval, check_len};

use crate::error::{Result, ShardingError};
use crate::message::{LayerUpdate, UpdateMessage};
use crate::shard::{DenseParam, ModelWeights, NamedMatrix, SpectralModel};

/// `Σ_k w_k x_k / Σ_k w_k` of equal-length vectors, accumulated in `f64`
/// (FedAvg with `w_k` the clients' sample counts).
///
/// # Errors
/// [`CoreError::Empty`] for no item, [`CoreError::LengthMismatch`] for
/// vectors of different lengths, [`CoreError::OutOfRange`] named
/// `total weight` when every weight is 0.
pub fn weighted_average(items: &[(u64, &[f32])]) -> Result<Vec<f32>> {
    let Some((_, first)) = items.first() else {
        return Err(CoreError::Empty {
            what: "client updates".to_owned(),
            min: 1,
        }
        .into());
    };
    let len = first.len();
    let total = check_total(items.iter().map(|(w, _)| *w))?;
    let mut acc = vec![0.0f64; len];
    for (k, (w, x)) in items.iter().enumerate() {
        check_len(&format!("update {k}"), x.len(), len)?;
        let w = *w as f64 / total;
        for (a, &v) in acc.iter_mut().zip(x.iter()) {
            *a += w * f64::from(v);
        }
    }
    Ok(acc.into_iter().map(|v| v as f32).collect())
}

fn check_total(weights: impl Iterator<Item = u64>) -> Result<f64> {
    let total: f64 = weights.map(|w| w as f64).sum();
    if total <= 0.0 {
        return Err(CoreError::out_of_range(
            "total weight",
            total,
            "a positive sum of client sample counts",
        )
        .into());
    }
    Ok(total)
}

/// FedAvg of clients' dense reconstructions, weighted by their sample counts.
///
/// Every update must hold every sharded layer of `model` (as factors or a
/// dense delta, matched by path and shape) and every dense parameter.
///
/// # Errors
/// [`CoreError::Empty`] for no update, [`CoreError::OutOfRange`] when all
/// sample counts are 0, [`ShardingError::Mismatch`] for a missing, extra or
/// differently-shaped layer or parameter.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_federated_sharding::{NamedLayer, SpectralLayer, SpectralModel, aggregate::fedavg};
/// use lastmile_federated_sharding::message::{LayerUpdate, UpdateMessage};
/// use lastmile_core::module::Layout;
///
/// let w = Tensor::<2>::from_floats([[2.0, 0.0], [0.0, 1.0]], &Device::flex());
/// let layer = SpectralLayer::decompose(w)?;
/// let model = SpectralModel::from_parts(
///     vec![NamedLayer { path: "w".into(), layout: Layout::OutIn, layer: layer.clone() }],
///     vec![],
/// )?;
/// // two clients, each holding one triplet with λ = 1
/// let update = |i: usize, samples| -> Result<UpdateMessage, lastmile_federated_sharding::ShardingError> {
///     Ok(UpdateMessage {
///         round: 0, client_id: i as u64, num_samples: samples,
///         layers: vec![LayerUpdate::Factors { path: "w".into(), shard: layer.shard_with(&[i], &[1.0])? }],
///         dense: vec![],
///     })
/// };
/// let avg = fedavg(&model, &[update(0, 1)?, update(1, 1)?])?;
/// let v = &avg.matrices[0].values; // (diag(2, 0) + diag(0, 1)) / 2
/// assert!((v[0] - 1.0).abs() < 1e-6 && (v[3] - 0.5).abs() < 1e-6);
/// # }
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
pub fn fedavg(model: &SpectralModel, updates: &[UpdateMessage]) -> Result<ModelWeights> {
    if updates.is_empty() {
        return Err(CoreError::Empty {
            what: "client updates".to_owned(),
            min: 1,
        }
        .into());
    }
    let total = check_total(updates.iter().map(|u| u.num_samples))?;
    for u in updates {
        check_covers(model, u)?;
    }
    let mut matrices = Vec::with_capacity(model.layers().len());
    for named in model.layers() {
        let (rows, cols) = (named.layer.rows(), named.layer.cols());
        let mut acc = vec![0.0f64; rows * cols];
        let mut current: Option<Vec<f32>> = None;
        for u in updates {
            let w = u.num_samples as f64 / total;
            let dense = match find_layer(u, &named.path)? {
                LayerUpdate::Factors { shard, .. } => shard.reconstruct_host(),
                LayerUpdate::DenseDelta { delta, .. } => {
                    let base = current.get_or_insert_with(|| named.layer.reconstruct());
                    base.iter().zip(delta).map(|(b, d)| b + d).collect()
                }
            };
            for (a, &v) in acc.iter_mut().zip(&dense) {
                *a += w * f64::from(v);
            }
        }
        matrices.push(NamedMatrix {
            path: named.path.clone(),
            layout: named.layout,
            rows,
            cols,
            values: acc.into_iter().map(|v| v as f32).collect(),
        });
    }
    Ok(ModelWeights {
        matrices,
        dense: average_dense(model, updates)?,
    })
}

/// Factor-wise aggregation: per triplet index, average the clients'
/// trained factor columns/rows (multiplier removed); triplets nobody held
/// keep their current value. See the [module docs](self) for the exact
/// rule and why it is the variant chosen.
///
/// Every update must hold every sharded layer as factors (a dense delta
/// has no triplets to average) and every dense parameter; dense parameters
/// are averaged as in [`fedavg`].
///
/// # Errors
/// As [`fedavg`]; [`ShardingError::Mismatch`] for a dense-delta layer
/// update.
pub fn factorwise(model: &SpectralModel, updates: &[UpdateMessage]) -> Result<ModelWeights> {
    if updates.is_empty() {
        return Err(CoreError::Empty {
            what: "client updates".to_owned(),
            min: 1,
        }
        .into());
    }
    check_total(updates.iter().map(|u| u.num_samples))?;
    for u in updates {
        check_covers(model, u)?;
    }
    let mut matrices = Vec::with_capacity(model.layers().len());
    for named in model.layers() {
        let layer = &named.layer;
        let (rows, cols, r) = (layer.rows(), layer.cols(), layer.rank());
        let mut weight = vec![0.0f64; r];
        let mut a_sum = vec![0.0f64; r * rows]; // column i at [i * rows ..]
        let mut b_sum = vec![0.0f64; r * cols];
        for u in updates {
            let shard = match find_layer(u, &named.path)? {
                LayerUpdate::Factors { shard, .. } => shard,
                LayerUpdate::DenseDelta { .. } => {
                    return Err(ShardingError::mismatch(
                        format!("update form of {} from client {}", named.path, u.client_id),
                        "trained factors (factor-wise aggregation)",
                        "a dense delta",
                    ));
                }
            };
            let w = u.num_samples as f64;
            let n = shard.kept();
            for (s, (&i, &lambda)) in shard.indices().iter().zip(shard.multipliers()).enumerate() {
                let undo = 1.0 / f64::from(lambda).sqrt();
                weight[i] += w;
                for row in 0..rows {
                    a_sum[i * rows + row] += w * undo * f64::from(shard.a()[row * n + s]);
                }
                for (c, &bv) in shard.b()[s * cols..(s + 1) * cols].iter().enumerate() {
                    b_sum[i * cols + c] += w * undo * f64::from(bv);
                }
            }
        }
        let mut acc = vec![0.0f64; rows * cols];
        for i in 0..r {
            let (a, b): (Vec<f64>, Vec<f64>) = if weight[i] > 0.0 {
                (
                    a_sum[i * rows..(i + 1) * rows]
                        .iter()
                        .map(|v| v / weight[i])
                        .collect(),
                    b_sum[i * cols..(i + 1) * cols]
                        .iter()
                        .map(|v| v / weight[i])
                        .collect(),
                )
            } else {
                layer.atom_factors(i)
            };
            for (row, &av) in a.iter().enumerate() {
                for (d, &bv) in acc[row * cols..(row + 1) * cols].iter_mut().zip(&b) {
                    *d += av * bv;
                }
            }
        }
        matrices.push(NamedMatrix {
            path: named.path.clone(),
            layout: named.layout,
            rows,
            cols,
            values: acc.into_iter().map(|v| v as f32).collect(),
        });
    }
    Ok(ModelWeights {
        matrices,
        dense: average_dense(model, updates)?,
    })
}

fn find_layer<'u>(u: &'u UpdateMessage, path: &str) -> Result<&'u LayerUpdate> {
    u.layers.iter().find(|l| l.path() == path).ok_or_else(|| {
        ShardingError::mismatch(
            format!("layers of client {}", u.client_id),
            format!("an update for {path}"),
            "none",
        )
    })
}

/// Every update holds exactly the model's layers (right shapes) and dense
/// parameters (right shapes).
fn check_covers(model: &SpectralModel, u: &UpdateMessage) -> Result<()> {
    let who = format!("client {}", u.client_id);
    if u.layers.len() != model.layers().len() {
        return Err(ShardingError::mismatch(
            format!("layer count of {who}"),
            model.layers().len(),
            u.layers.len(),
        ));
    }
    for l in &u.layers {
        let named = model.layer(l.path()).ok_or_else(|| {
            ShardingError::mismatch(
                format!("layer of {who}"),
                "a sharded layer of the model",
                l.path(),
            )
        })?;
        let (rows, cols) = l.shape();
        if (rows, cols) != (named.layer.rows(), named.layer.cols()) {
            return Err(ShardingError::mismatch(
                format!("shape of {} from {who}", l.path()),
                format!("[{}, {}]", named.layer.rows(), named.layer.cols()),
                format!("[{rows}, {cols}]"),
            ));
        }
        l.check()?;
    }
    if u.dense.len() != model.dense().len() {
        return Err(ShardingError::mismatch(
            format!("dense parameter count of {who}"),
            model.dense().len(),
            u.dense.len(),
        ));
    }
    for d in model.dense() {
        let found = u.dense.iter().find(|x| x.path == d.path).ok_or_else(|| {
            ShardingError::mismatch(format!("dense parameters of {who}"), &d.path, "missing")
        })?;
        if found.shape != d.shape {
            return Err(ShardingError::mismatch(
                format!("shape of {} from {who}", d.path),
                format!("{:?}", d.shape),
                format!("{:?}", found.shape),
            ));
        }
        found.check()?;
    }
    Ok(())
}

fn average_dense(model: &SpectralModel, updates: &[UpdateMessage]) -> Result<Vec<DenseParam>> {
    model
        .dense()
        .iter()
        .map(|d| {
            let items = updates
                .iter()
                .map(|u| {
                    let found = u.dense.iter().find(|x| x.path == d.path).ok_or_else(|| {
                        ShardingError::mismatch(
                            format!("dense parameters of client {}", u.client_id),
                            &d.path,
                            "missing",
                        )
                    })?;
                    Ok((u.num_samples, found.values.as_slice()))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(DenseParam {
                path: d.path.clone(),
                shape: d.shape.clone(),
                values: weighted_average(&items)?,
            })
        })
        .collect()
}

fn check_mu(mu: f64) -> Result<f64> {
    Ok(check_interval(
        "mu",
        mu,
        std::ops::Bound::Included(0.0),
        std::ops::Bound::Unbounded,
    )?)
}

/// The FedProx term `μ/2 ‖w − w_global‖²` (Li et al., 2020, eq. 2) that a
/// client adds to its loss.
///
/// # Errors
/// [`CoreError::LengthMismatch`] for different lengths,
/// [`CoreError::OutOfRange`] for `μ < 0` or non-finite.
///
/// ```
/// use lastmile_federated_sharding::aggregate::proximal_term;
/// assert_eq!(proximal_term(&[1.0, 2.0], &[0.0, 0.0], 0.5)?, 1.25);
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
pub fn proximal_term(w: &[f32], w_global: &[f32], mu: f64) -> Result<f64> {
    let mu = check_mu(mu)?;
    check_len("global weights", w_global.len(), w.len())?;
    let sq: f64 = w
        .iter()
        .zip(w_global)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum();
    Ok(0.5 * mu * sq)
}

/// The gradient of [`proximal_term`] with respect to `w`: `μ (w − w_global)`.
///
/// # Errors
/// As [`proximal_term`].
///
/// ```
/// use lastmile_federated_sharding::aggregate::proximal_gradient;
/// assert_eq!(proximal_gradient(&[1.0, 2.0], &[0.0, 1.0], 0.5)?, [0.5, 0.5]);
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
pub fn proximal_gradient(w: &[f32], w_global: &[f32], mu: f64) -> Result<Vec<f32>> {
    let mu = check_mu(mu)?;
    check_len("global weights", w_global.len(), w.len())?;
    Ok(w.iter()
        .zip(w_global)
        .map(|(&a, &b)| (mu * (f64::from(a) - f64::from(b))) as f32)
        .collect())
}

/// [`proximal_term`] as a burn tensor program (`[1]`), differentiable on an
/// autodiff device: add it to the client's loss.
///
/// # Errors
/// [`CoreError::ShapeMismatch`] for different lengths,
/// [`CoreError::OutOfRange`] for `μ < 0` or non-finite.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_federated_sharding::aggregate::proximal_penalty;
/// let d = Device::flex();
/// let w = Tensor::<1>::from_floats([1.0, 2.0], &d);
/// let g = Tensor::<1>::zeros([2], &d);
/// let v = proximal_penalty(w, g, 0.5)?.into_scalar::<f32>();
/// assert!((v - 1.25).abs() < 1e-6);
/// # }
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
pub fn proximal_penalty(w: Tensor<1>, w_global: Tensor<1>, mu: f64) -> Result<Tensor<1>> {
    let mu = check_mu(mu)?;
    if w.dims() != w_global.dims() {
        return Err(CoreError::shape(
            "global weights",
            format!("{:?}", w.dims()),
            &w_global.dims(),
        )
        .into());
    }
    Ok((w - w_global).powi_scalar(2).sum().mul_scalar(0.5 * mu))
}
