//! Spectral sharding of weight matrices and of burn modules.
//!
//! Once per round the server takes a thin SVD of every sharded weight
//! `W = U diag(σ) Vᵀ` ([`SpectralLayer`]). A client with keep budget `n` gets,
//! per layer, a [`LayerShard`]: the selected indices `S` and the factor pair
//!
//! ```text
//! A = U_S · diag(√(λ_S σ_S))    [out, n]
//! B = diag(√(λ_S σ_S)) · V_Sᵀ   [n, in]
//! ```
//!
//! so that its weight is `Ŵ = A·B = Σ_{i∈S} λ_i σ_i u_i v_iᵀ`; the client
//! trains `A` and `B` (2 small matrices instead of `W`). Splitting
//! `√(λσ)` evenly keeps both factors on the same scale.
//!
//! For a whole module, [`SpectralModel::from_module`] decomposes every
//! weight a [`Selector`] picks (with its storage [`Layout`]: `InOut` for
//! burn's `Linear`, `OutIn` for convolution kernels flattened to
//! `C_out × C_in·k·k`) and keeps the other parameters (biases, unsharded
//! layers) dense; [`SpectralModel::plan`] fixes the strategy, sampler and
//! budget for a round, and [`ShardPlan::draw`] produces one client's
//! [`ModelShard`]. [`ModelShard::apply_to`] writes the reconstruction back
//! into a module of the same architecture.
//!
//! ```
//! # #[cfg(feature = "flex")] {
//! use burn::module::Module;
//! use burn::nn::{Linear, LinearConfig};
//! use burn::tensor::Device;
//! use lastmile_core::module::{Layout, Selector};
//! use lastmile_federated_sharding::{Budget, Sampler, SpectralModel, Strategy};
//! use rand::{SeedableRng, rngs::StdRng};
//!
//! #[derive(Module, Debug)]
//! struct Mlp { fc1: Linear, fc2: Linear }
//!
//! let d = Device::flex();
//! let mlp = Mlp { fc1: LinearConfig::new(8, 16).init(&d), fc2: LinearConfig::new(16, 4).init(&d) };
//! let model = SpectralModel::from_module(&mlp, &Selector::new(["fc*.weight"])?, Layout::InOut)?;
//! assert_eq!(model.layers()[0].layer.rank(), 8);
//! let plan = model.plan(&Strategy::Unbiased, Sampler::ConditionalPoisson, Budget::KeepRatio(0.5), 4)?;
//! let shard = plan.draw(&mut StdRng::seed_from_u64(0))?;
//! assert_eq!(shard.layers()[0].shard.kept(), 4); // round(0.5 · 8)
//! let client_model = shard.apply_to(mlp)?;
//! assert_eq!(client_model.fc1.weight.dims(), [8, 16]);
//! # }
//! # Ok::<(), lastmile_federated_sharding::ShardingError>(())
//! ```

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use lastmile_core::CoreError;
use lastmile_core::convert::{tensor_from_vec, tensor_to_vec};
use lastmile_core::linalg::svd;
use lastmile_core::module::{
    Layout, ParamValue, Selector, collect_params, map_matrices, map_params,
};
use lastmile_core::validate::{check_finite_slice, check_interval, check_len, check_non_empty};
use rand::Rng;

use crate::error::{Result, ShardingError};
use crate::sampler::{Design, FixedSizeDesign, Sampler};
use crate::strategy::{Allocation, SamplingStrategy, check_budget};

/// How many triplets of each layer a client keeps.
///
/// ```
/// use lastmile_federated_sharding::Budget;
/// assert_eq!(Budget::KeepRatio(0.25).resolve(24)?, 6);
/// assert_eq!(Budget::KeepRatio(0.01).resolve(24)?, 1); // at least one
/// assert!(Budget::Rank(30).resolve(24).is_err());
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// A fraction of each layer's rank, `ratio ∈ (0, 1]`: see [`budget_for_ratio`].
    KeepRatio(f64),
    /// The same number of triplets in every layer (must not exceed any rank).
    Rank(usize),
}

impl Budget {
    /// The budget `n` for a layer of rank `rank`.
    ///
    /// # Errors
    /// As [`budget_for_ratio`]; for `Rank(n)`, [`CoreError::OutOfRange`]
    /// named `budget` unless `1 ≤ n ≤ rank`.
    pub fn resolve(self, rank: usize) -> Result<usize> {
        match self {
            Budget::KeepRatio(ratio) => budget_for_ratio(ratio, rank),
            Budget::Rank(n) => check_budget(n, rank),
        }
    }
}

/// Per-layer budget from a keep ratio: `n = max(1, round(ratio · rank))`,
/// rounding half away from zero (`f64::round`), so every layer keeps at
/// least one triplet and `ratio = 1` keeps all.
///
/// # Errors
/// [`CoreError::OutOfRange`] named `keep_ratio` unless `ratio ∈ (0, 1]`;
/// [`CoreError::OutOfRange`] named `budget` for `rank = 0`.
///
/// ```
/// use lastmile_federated_sharding::budget_for_ratio;
/// assert_eq!(budget_for_ratio(0.5, 9)?, 5); // round(4.5) = 5
/// assert_eq!(budget_for_ratio(1.0, 9)?, 9);
/// assert!(budget_for_ratio(0.0, 9).is_err());
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
pub fn budget_for_ratio(ratio: f64, rank: usize) -> Result<usize> {
    use std::ops::Bound::{Excluded, Included};
    check_interval("keep_ratio", ratio, Excluded(0.0), Included(1.0))?;
    let n = ((ratio * rank as f64).round() as usize).max(1);
    check_budget(n, rank)
}

/// The thin SVD `W = U diag(σ) Vᵀ` of one `[out, in]` weight, on the host.
///
/// `U` is `[out, r]` and `Vᵀ` is `[r, in]` (row-major `f32`), `σ` is `[r]`
/// non-increasing (`f64`), `r = min(out, in)`.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_federated_sharding::SpectralLayer;
/// let w = Tensor::<2>::from_floats([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]], &Device::flex());
/// let layer = SpectralLayer::decompose(w)?;
/// assert_eq!(layer.rank(), 2);
/// assert!((layer.sigma()[0] - 3.0).abs() < 1e-6);
/// let back = layer.reconstruct();
/// assert!((back[0] - 3.0).abs() < 1e-6);
/// # }
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct SpectralLayer {
    rows: usize,
    cols: usize,
    u: Vec<f32>,
    sigma: Vec<f64>,
    vt: Vec<f32>,
}

impl SpectralLayer {
    /// Decomposes an `[out, in]` matrix with
    /// [`lastmile_core::linalg::svd`] (faer on the host, exact thin SVD).
    /// Reads three tensors back to the host.
    ///
    /// # Errors
    /// [`CoreError::ShapeMismatch`] for an empty matrix,
    /// [`CoreError::NonFinite`] for NaN/inf weights,
    /// [`CoreError::LinearAlgebra`] if the SVD fails.
    pub fn decompose(matrix: Tensor<2>) -> Result<Self> {
        let [rows, cols] = check_non_empty("weight matrix", &matrix)?;
        let dec = svd(matrix)?;
        let rank = rows.min(cols);
        let u = tensor_to_vec(dec.u)?;
        let sigma: Vec<f64> = tensor_to_vec(dec.s)?.into_iter().map(f64::from).collect();
        let vt = tensor_to_vec(dec.vt)?;
        check_len("svd U", u.len(), rows * rank)?;
        check_len("svd S", sigma.len(), rank)?;
        check_len("svd Vt", vt.len(), rank * cols)?;
        Ok(Self {
            rows,
            cols,
            u,
            sigma,
            vt,
        })
    }

    /// Rows (`out`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (`in`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `r = min(out, in)`.
    pub fn rank(&self) -> usize {
        self.sigma.len()
    }

    /// Singular values, non-increasing.
    pub fn sigma(&self) -> &[f64] {
        &self.sigma
    }

    /// `U`, `[out, r]` row-major.
    pub fn u(&self) -> &[f32] {
        &self.u
    }

    /// `Vᵀ`, `[r, in]` row-major.
    pub fn vt(&self) -> &[f32] {
        &self.vt
    }

    /// `Σ σ_i² = ‖W‖²_F`.
    pub fn frobenius_sq(&self) -> f64 {
        self.sigma.iter().map(|s| s * s).sum()
    }

    /// `U diag(σ) Vᵀ`, `[out, in]` row-major (accumulated in `f64`).
    pub fn reconstruct(&self) -> Vec<f32> {
        let all: Vec<usize> = (0..self.rank()).collect();
        let ones = vec![1.0; self.rank()];
        self.weighted_sum(&all, &ones)
    }

    /// `Σ_{i∈indices} c_i σ_i u_i v_iᵀ`, `[out, in]` row-major.
    fn weighted_sum(&self, indices: &[usize], coef: &[f64]) -> Vec<f32> {
        let r = self.rank();
        let mut out = vec![0.0f64; self.rows * self.cols];
        for (&i, &c) in indices.iter().zip(coef) {
            let s = c * self.sigma[i];
            if s == 0.0 {
                continue;
            }
            let v = &self.vt[i * self.cols..(i + 1) * self.cols];
            for row in 0..self.rows {
                let a = s * f64::from(self.u[row * r + i]);
                let dst = &mut out[row * self.cols..(row + 1) * self.cols];
                for (d, &vv) in dst.iter_mut().zip(v) {
                    *d += a * f64::from(vv);
                }
            }
        }
        out.into_iter().map(|x| x as f32).collect()
    }

    /// The shard for selected `indices` (ascending, distinct, `< r`) with the
    /// multipliers of `allocation`.
    ///
    /// # Errors
    /// [`CoreError::LengthMismatch`] when the allocation has another rank,
    /// as [`SpectralLayer::shard_with`] otherwise.
    pub fn shard(&self, indices: &[usize], allocation: &Allocation) -> Result<LayerShard> {
        check_len("allocation", allocation.rank(), self.rank())?;
        let lambda: Vec<f64> = indices
            .iter()
            .map(|&i| allocation.multipliers().get(i).copied().unwrap_or(f64::NAN))
            .collect();
        self.shard_with(indices, &lambda)
    }

    /// The shard for selected `indices` with explicit multipliers (one per
    /// selected index): `A = U_S diag(√(λσ))`, `B = diag(√(λσ)) V_Sᵀ`.
    ///
    /// # Errors
    /// [`CoreError::Empty`] for no index, [`CoreError::IndexOutOfRange`] for
    /// an index `≥ r`, [`CoreError::OutOfRange`] for indices not strictly
    /// ascending or a multiplier that is not finite and `> 0`,
    /// [`CoreError::LengthMismatch`] when the lengths differ.
    pub fn shard_with(&self, indices: &[usize], multipliers: &[f64]) -> Result<LayerShard> {
        check_indices_sorted(indices, self.rank())?;
        check_len("multipliers", multipliers.len(), indices.len())?;
        check_multipliers(multipliers.iter().copied())?;
        let (r, n) = (self.rank(), indices.len());
        let scale: Vec<f64> = indices
            .iter()
            .zip(multipliers)
            .map(|(&i, &l)| (l * self.sigma[i]).sqrt())
            .collect();
        let mut a = Vec::with_capacity(self.rows * n);
        for row in 0..self.rows {
            for (&i, &s) in indices.iter().zip(&scale) {
                a.push((f64::from(self.u[row * r + i]) * s) as f32);
            }
        }
        let mut b = Vec::with_capacity(n * self.cols);
        for (&i, &s) in indices.iter().zip(&scale) {
            b.extend(
                self.vt[i * self.cols..(i + 1) * self.cols]
                    .iter()
                    .map(|&v| (f64::from(v) * s) as f32),
            );
        }
        Ok(LayerShard {
            rows: self.rows,
            cols: self.cols,
            indices: indices.to_vec(),
            multipliers: multipliers.iter().map(|&l| l as f32).collect(),
            a,
            b,
        })
    }

    /// The atom `σ_i u_i v_iᵀ`'s factors `(√σ_i u_i, √σ_i v_i)`, used by
    /// factor-wise aggregation for atoms no client held.
    pub(crate) fn atom_factors(&self, i: usize) -> (Vec<f64>, Vec<f64>) {
        let r = self.rank();
        let s = self.sigma[i].sqrt();
        let a = (0..self.rows)
            .map(|row| f64::from(self.u[row * r + i]) * s)
            .collect();
        let b = self.vt[i * self.cols..(i + 1) * self.cols]
            .iter()
            .map(|&v| f64::from(v) * s)
            .collect();
        (a, b)
    }
}

pub(crate) fn check_indices_sorted(indices: &[usize], rank: usize) -> Result<()> {
    if indices.is_empty() {
        return Err(CoreError::Empty {
            what: "selected indices".to_owned(),
            min: 1,
        }
        .into());
    }
    lastmile_core::validate::check_indices("selected indices", indices, rank)?;
    for (k, w) in indices.windows(2).enumerate() {
        if w[1] <= w[0] {
            return Err(CoreError::out_of_range(
                &format!("selected indices[{}]", k + 1),
                w[1] as f64,
                &format!("an index > {} (strictly ascending)", w[0]),
            )
            .into());
        }
    }
    Ok(())
}

pub(crate) fn check_multipliers(values: impl Iterator<Item = f64>) -> Result<()> {
    for (k, l) in values.enumerate() {
        if !(l.is_finite() && l > 0.0) {
            return Err(CoreError::out_of_range(
                &format!("multipliers[{k}]"),
                l,
                "a finite value > 0 for a selected triplet",
            )
            .into());
        }
    }
    Ok(())
}

/// One client's part of one layer: selected indices, their multipliers and
/// the factor pair `A [out, n]`, `B [n, in]` with `Ŵ = A·B`.
///
/// ```
/// use lastmile_federated_sharding::LayerShard;
/// // rows = 2, cols = 3, one triplet
/// let s = LayerShard::new(2, 3, vec![0], vec![1.0], vec![1.0, 2.0], vec![1.0, 0.0, -1.0])?;
/// assert_eq!(s.reconstruct_host(), [1.0, 0.0, -1.0, 2.0, 0.0, -2.0]);
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LayerShard {
    rows: usize,
    cols: usize,
    indices: Vec<usize>,
    multipliers: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
}

impl LayerShard {
    /// A shard from its parts.
    ///
    /// # Errors
    /// [`CoreError::OutOfRange`] for `rows` or `cols` of 0,
    /// [`CoreError::Empty`] for no index, [`CoreError::IndexOutOfRange`] for
    /// an index `≥ min(rows, cols)`, [`CoreError::OutOfRange`] for indices
    /// not strictly ascending or a multiplier that is not finite and `> 0`,
    /// [`CoreError::LengthMismatch`] for lengths other than `n`, `n`,
    /// `rows·n`, `n·cols`, [`CoreError::NonFinite`] for NaN/inf factors.
    pub fn new(
        rows: usize,
        cols: usize,
        indices: Vec<usize>,
        multipliers: Vec<f32>,
        a: Vec<f32>,
        b: Vec<f32>,
    ) -> Result<Self> {
        lastmile_core::validate::check_at_least("rows", rows, 1)?;
        lastmile_core::validate::check_at_least("cols", cols, 1)?;
        check_indices_sorted(&indices, rows.min(cols))?;
        let n = indices.len();
        check_len("multipliers", multipliers.len(), n)?;
        check_multipliers(multipliers.iter().map(|&l| f64::from(l)))?;
        check_len("factor A", a.len(), rows * n)?;
        check_len("factor B", b.len(), n * cols)?;
        check_finite_slice("factor A", &a)?;
        check_finite_slice("factor B", &b)?;
        Ok(Self {
            rows,
            cols,
            indices,
            multipliers,
            a,
            b,
        })
    }

    /// Rows (`out`) of the layer.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (`in`) of the layer.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Number of kept triplets `n`.
    pub fn kept(&self) -> usize {
        self.indices.len()
    }

    /// Selected triplet indices, ascending.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    /// Multipliers `λ_i` of the selected triplets.
    pub fn multipliers(&self) -> &[f32] {
        &self.multipliers
    }

    /// `A`, `[out, n]` row-major.
    pub fn a(&self) -> &[f32] {
        &self.a
    }

    /// `B`, `[n, in]` row-major.
    pub fn b(&self) -> &[f32] {
        &self.b
    }

    /// Number of values in the two factors, `n·(out + in)`.
    pub fn factor_len(&self) -> usize {
        self.a.len() + self.b.len()
    }

    /// `Ŵ = A·B`, `[out, in]` row-major, accumulated in `f64`.
    pub fn reconstruct_host(&self) -> Vec<f32> {
        let n = self.kept();
        let mut out = vec![0.0f64; self.rows * self.cols];
        for row in 0..self.rows {
            let dst = &mut out[row * self.cols..(row + 1) * self.cols];
            for s in 0..n {
                let a = f64::from(self.a[row * n + s]);
                for (d, &bv) in dst
                    .iter_mut()
                    .zip(&self.b[s * self.cols..(s + 1) * self.cols])
                {
                    *d += a * f64::from(bv);
                }
            }
        }
        out.into_iter().map(|x| x as f32).collect()
    }

    /// `Ŵ = A·B` as a tensor on `device` (a matmul there).
    ///
    /// # Errors
    /// Only if the factor buffers cannot form tensors (never for a valid shard).
    pub fn reconstruct(&self, device: &Device) -> Result<Tensor<2>> {
        let (a, b) = self.factor_tensors(device)?;
        Ok(a.matmul(b))
    }

    /// The factors as tensors `A [out, n]`, `B [n, in]` on `device`, for
    /// local training.
    ///
    /// # Errors
    /// Only if the buffers cannot form tensors (never for a valid shard).
    pub fn factor_tensors(&self, device: &Device) -> Result<(Tensor<2>, Tensor<2>)> {
        let n = self.kept();
        Ok((
            tensor_from_vec(self.a.clone(), [self.rows, n], device)?,
            tensor_from_vec(self.b.clone(), [n, self.cols], device)?,
        ))
    }

    /// The same shard with trained factors (2 host reads).
    ///
    /// # Errors
    /// [`CoreError::ShapeMismatch`] unless `a` is `[out, n]` and `b` is
    /// `[n, in]`; [`CoreError::NonFinite`] for NaN/inf values.
    pub fn with_trained_factors(&self, a: Tensor<2>, b: Tensor<2>) -> Result<Self> {
        let n = self.kept();
        if a.dims() != [self.rows, n] {
            return Err(
                CoreError::shape("factor A", format!("[{}, {n}]", self.rows), &a.dims()).into(),
            );
        }
        if b.dims() != [n, self.cols] {
            return Err(
                CoreError::shape("factor B", format!("[{n}, {}]", self.cols), &b.dims()).into(),
            );
        }
        let a = tensor_to_vec(a)?;
        let b = tensor_to_vec(b)?;
        Self::new(
            self.rows,
            self.cols,
            self.indices.clone(),
            self.multipliers.clone(),
            a,
            b,
        )
    }
}

/// A parameter kept dense (bias, unsharded layer), by module path.
///
/// ```
/// use lastmile_federated_sharding::DenseParam;
/// let p = DenseParam::new("fc1.bias", vec![3], vec![0.0, 1.0, 2.0])?;
/// assert_eq!(p.values.len(), 3);
/// assert!(DenseParam::new("fc1.bias", vec![2], vec![0.0]).is_err());
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct DenseParam {
    /// Dotted module path, e.g. `fc1.bias`.
    pub path: String,
    /// Shape as stored in the module.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

impl DenseParam {
    /// A dense parameter, checked.
    ///
    /// # Errors
    /// [`CoreError::LengthMismatch`] when `values` does not hold
    /// `Π shape` elements, [`CoreError::NonFinite`] for NaN/inf values.
    pub fn new(path: impl Into<String>, shape: Vec<usize>, values: Vec<f32>) -> Result<Self> {
        let p = Self {
            path: path.into(),
            shape,
            values,
        };
        p.check()?;
        Ok(p)
    }

    pub(crate) fn check(&self) -> Result<()> {
        let numel = self
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| {
                CoreError::shape(
                    &self.path,
                    "a shape whose element count fits in usize",
                    &self.shape,
                )
            })?;
        check_len(&self.path, self.values.len(), numel)?;
        check_finite_slice(&self.path, &self.values)?;
        Ok(())
    }
}

/// A sharded layer of a model: its path, layout and decomposition.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedLayer {
    /// Dotted module path of the weight, e.g. `fc1.weight`.
    pub path: String,
    /// How the module stores it.
    pub layout: Layout,
    /// Its SVD.
    pub layer: SpectralLayer,
}

/// The server's per-round view of a module: the SVD of every sharded weight
/// and the dense values of every other parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct SpectralModel {
    layers: Vec<NamedLayer>,
    dense: Vec<DenseParam>,
}

impl SpectralModel {
    /// Decomposes every weight `selector` picks, stored as `layout`; every
    /// other float parameter is kept dense. Reads the stored values
    /// ([`ParamValue::Stored`]).
    ///
    /// # Errors
    /// [`CoreError::NoMatch`] for a pattern matching nothing,
    /// [`CoreError::ShapeMismatch`] for a selected parameter the layout
    /// cannot hold, [`CoreError::NonFinite`] for NaN/inf weights.
    pub fn from_module<M: Module>(module: &M, selector: &Selector, layout: Layout) -> Result<Self> {
        Self::from_module_groups(module, &[(selector.clone(), layout)])
    }

    /// As [`SpectralModel::from_module`] with several `(selector, layout)`
    /// groups, e.g. linear weights (`InOut`) and convolution kernels
    /// (`OutIn`). A parameter picked by two groups is an error.
    ///
    /// # Errors
    /// As [`SpectralModel::from_module`]; [`ShardingError::Mismatch`] for a
    /// parameter selected twice.
    pub fn from_module_groups<M: Module>(
        module: &M,
        groups: &[(Selector, Layout)],
    ) -> Result<Self> {
        let mut layers: Vec<NamedLayer> = Vec::new();
        for (selector, layout) in groups {
            for p in collect_params(module, selector, ParamValue::Stored)? {
                if layers.iter().any(|l| l.path == p.path) {
                    return Err(ShardingError::mismatch(
                        format!("selection of {}", p.path),
                        "one (selector, layout) group per parameter",
                        "two groups",
                    ));
                }
                let layer = SpectralLayer::decompose(p.matrix(*layout)?)?;
                layers.push(NamedLayer {
                    path: p.path,
                    layout: *layout,
                    layer,
                });
            }
        }
        let mut dense = Vec::new();
        for p in collect_params(module, &Selector::all(), ParamValue::Stored)? {
            if layers.iter().any(|l| l.path == p.path) {
                continue;
            }
            let values = tensor_to_vec(p.value)?;
            dense.push(DenseParam::new(p.path, p.shape, values)?);
        }
        Ok(Self { layers, dense })
    }

    /// A model from parts (e.g. a server that holds weights outside burn).
    ///
    /// # Errors
    /// [`ShardingError::Mismatch`] for a path used twice; as
    /// [`DenseParam::new`] for an invalid dense parameter.
    pub fn from_parts(layers: Vec<NamedLayer>, dense: Vec<DenseParam>) -> Result<Self> {
        check_unique(
            layers
                .iter()
                .map(|l| l.path.as_str())
                .chain(dense.iter().map(|d| d.path.as_str())),
        )?;
        for d in &dense {
            d.check()?;
        }
        Ok(Self { layers, dense })
    }

    /// The sharded layers, in module order.
    pub fn layers(&self) -> &[NamedLayer] {
        &self.layers
    }

    /// The dense parameters, in module order.
    pub fn dense(&self) -> &[DenseParam] {
        &self.dense
    }

    /// The layer at `path`, if sharded.
    pub fn layer(&self, path: &str) -> Option<&NamedLayer> {
        self.layers.iter().find(|l| l.path == path)
    }

    /// Fixes a round's sampling for one client budget: per layer, the
    /// budget, the strategy's allocation and the sampler's prepared design.
    /// Draw one shard per client with [`ShardPlan::draw`].
    ///
    /// # Errors
    /// As [`Budget::resolve`] and [`SamplingStrategy::allocate`] per layer
    /// (budget out of range, `clients_per_round = 0`), and as
    /// [`Sampler::design`].
    pub fn plan<S: SamplingStrategy + ?Sized>(
        &self,
        strategy: &S,
        sampler: Sampler,
        budget: Budget,
        clients_per_round: usize,
    ) -> Result<ShardPlan<'_>> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let n = budget.resolve(l.layer.rank())?;
            let allocation = strategy.allocate(l.layer.sigma(), n, clients_per_round)?;
            let design = sampler.design(allocation.probabilities())?;
            layers.push(LayerPlan { allocation, design });
        }
        Ok(ShardPlan {
            model: self,
            layers,
        })
    }
}

pub(crate) fn check_unique<'a>(paths: impl Iterator<Item = &'a str>) -> Result<()> {
    let mut seen: Vec<&str> = Vec::new();
    for p in paths {
        if seen.contains(&p) {
            return Err(ShardingError::mismatch(
                format!("parameter path {p}"),
                "each path once",
                "a repeated path",
            ));
        }
        seen.push(p);
    }
    Ok(())
}

/// One layer's round plan: allocation and prepared design.
#[derive(Clone, Debug)]
pub struct LayerPlan {
    /// The strategy's `(p, λ)`.
    pub allocation: Allocation,
    /// The prepared sampler.
    pub design: Design,
}

/// A round's sampling plan for one client budget (see [`SpectralModel::plan`]).
#[derive(Clone, Debug)]
pub struct ShardPlan<'a> {
    model: &'a SpectralModel,
    layers: Vec<LayerPlan>,
}

impl ShardPlan<'_> {
    /// Per-layer plans, in the model's layer order.
    pub fn layers(&self) -> &[LayerPlan] {
        &self.layers
    }

    /// Draws one client's shard: an independent sample per layer.
    ///
    /// # Errors
    /// None for a plan built by [`SpectralModel::plan`]; the checks of
    /// [`SpectralLayer::shard`] are kept as a guard.
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R) -> Result<ModelShard> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for (named, plan) in self.model.layers.iter().zip(&self.layers) {
            let indices = plan.design.sample(rng);
            layers.push(NamedShard {
                path: named.path.clone(),
                layout: named.layout,
                shard: named.layer.shard(&indices, &plan.allocation)?,
            });
        }
        Ok(ModelShard {
            layers,
            dense: self.model.dense.clone(),
        })
    }
}

/// A sharded layer of a client's model.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedShard {
    /// Dotted module path of the weight.
    pub path: String,
    /// How the module stores it.
    pub layout: Layout,
    /// The factors.
    pub shard: LayerShard,
}

/// One client's sub-model: a [`LayerShard`] per sharded weight plus the
/// dense values of every other parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelShard {
    layers: Vec<NamedShard>,
    dense: Vec<DenseParam>,
}

impl ModelShard {
    /// A shard from parts.
    ///
    /// # Errors
    /// [`ShardingError::Mismatch`] for a path used twice; as
    /// [`DenseParam::new`] for an invalid dense parameter.
    pub fn new(layers: Vec<NamedShard>, dense: Vec<DenseParam>) -> Result<Self> {
        check_unique(
            layers
                .iter()
                .map(|l| l.path.as_str())
                .chain(dense.iter().map(|d| d.path.as_str())),
        )?;
        for d in &dense {
            d.check()?;
        }
        Ok(Self { layers, dense })
    }

    /// The sharded layers.
    pub fn layers(&self) -> &[NamedShard] {
        &self.layers
    }

    /// The dense parameters.
    pub fn dense(&self) -> &[DenseParam] {
        &self.dense
    }

    /// Number of values the client holds: factors plus dense parameters.
    pub fn num_values(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.shard.factor_len())
            .sum::<usize>()
            + self.dense.iter().map(|d| d.values.len()).sum::<usize>()
    }

    /// The dense weights this shard stands for (`Ŵ = A·B` per layer, dense
    /// parameters as they are).
    pub fn reconstruct(&self) -> ModelWeights {
        ModelWeights {
            matrices: self
                .layers
                .iter()
                .map(|l| NamedMatrix {
                    path: l.path.clone(),
                    layout: l.layout,
                    rows: l.shard.rows(),
                    cols: l.shard.cols(),
                    values: l.shard.reconstruct_host(),
                })
                .collect(),
            dense: self.dense.clone(),
        }
    }

    /// Writes the reconstruction into `module` (same architecture): each
    /// sharded weight becomes `A·B` (in its stored layout), each dense
    /// parameter takes its value.
    ///
    /// # Errors
    /// As [`ModelWeights::apply_to`].
    pub fn apply_to<M: Module>(&self, module: M) -> Result<M> {
        self.reconstruct().apply_to(module)
    }
}

/// A dense `[out, in]` weight by path.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedMatrix {
    /// Dotted module path.
    pub path: String,
    /// How the module stores it.
    pub layout: Layout,
    /// Rows (`out`).
    pub rows: usize,
    /// Columns (`in`).
    pub cols: usize,
    /// `[out, in]` row-major values.
    pub values: Vec<f32>,
}

/// Dense weights of a model by path: sharded layers as `[out, in]`
/// matrices, other parameters as stored. What reconstruction and
/// aggregation produce.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelWeights {
    /// The (formerly) sharded weights.
    pub matrices: Vec<NamedMatrix>,
    /// The other parameters.
    pub dense: Vec<DenseParam>,
}

impl ModelWeights {
    /// Writes every weight into `module` (same architecture): matrices in
    /// their stored layout via [`map_matrices`], dense parameters via
    /// [`map_params`]. Tensors are created on each parameter's device.
    ///
    /// # Errors
    /// [`CoreError::NoMatch`] for a path the module does not have,
    /// [`CoreError::ShapeMismatch`] / [`CoreError::LengthMismatch`] for
    /// values of the wrong size.
    pub fn apply_to<M: Module>(&self, module: M) -> Result<M> {
        let mut module = module;
        for layout in [Layout::InOut, Layout::OutIn] {
            let group: Vec<&NamedMatrix> = self
                .matrices
                .iter()
                .filter(|m| m.layout == layout)
                .collect();
            if group.is_empty() {
                continue;
            }
            let selector = Selector::new(group.iter().map(|m| m.path.as_str()))?;
            module = map_matrices(module, &selector, layout, |path, w: Tensor<2>| {
                let m = group.iter().find(|m| m.path == path).ok_or_else(|| {
                    ShardingError::mismatch("matrix path", "a selected path", path)
                })?;
                if w.dims() != [m.rows, m.cols] {
                    return Err(CoreError::shape(
                        path,
                        format!("[{}, {}] as in the weights", m.rows, m.cols),
                        &w.dims(),
                    )
                    .into());
                }
                Ok::<_, ShardingError>(tensor_from_vec(
                    m.values.clone(),
                    [m.rows, m.cols],
                    &w.device(),
                )?)
            })?;
        }
        if !self.dense.is_empty() {
            let selector = Selector::new(self.dense.iter().map(|d| d.path.as_str()))?;
            module = map_params(module, &selector, |p| {
                let d = self
                    .dense
                    .iter()
                    .find(|d| d.path == p.path)
                    .ok_or_else(|| {
                        ShardingError::mismatch("dense path", "a selected path", &p.path)
                    })?;
                if d.shape != p.shape {
                    return Err(CoreError::shape(
                        &p.path,
                        format!("{:?} as in the weights", d.shape),
                        &p.shape,
                    )
                    .into());
                }
                let n = d.values.len();
                Ok::<_, ShardingError>(tensor_from_vec(d.values.clone(), [n], &p.value.device())?)
            })?;
        }
        Ok(module)
    }
}
