//! SHiRA: sparse high-rank adapters (Bhardwaj et al., NeurIPS 2024,
//! arXiv 2406.13175).
//!
//! Only a fixed sparse subset `M` (typically 1–2 %) of the base weight is
//! trained: `W = W0 + S`, `S` zero outside `M` (§3 of the paper). The adapter
//! stores `S` as `(indices, values)` and only `values` is a parameter, so the
//! gradient reaching the model is `∇W` masked to `M` and every weight outside
//! `M` stays bit-identical whatever the optimiser does (weight decay
//! included): it never sees them. Switching an adapter into a deployed
//! weight is a scatter of `|M|` values (and a scatter of the saved originals
//! to switch back) — no dense fuse.

use std::sync::Arc;

use burn::module::{Module, Param};
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor};
use lastmile_core::convert::{int_tensor_from_indices, tensor_from_vec, tensor_to_vec};
use lastmile_core::validate::{check_finite, check_finite_slice};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::error::{AdapterError, Result};
use crate::lora::{flatten, unflatten};

/// How a deployed weight matrix is laid out in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
#[non_exhaustive]
pub enum WeightLayout {
    /// `[out, in]` row-major (PyTorch, PEFT, this crate's adapters).
    #[default]
    OutIn,
    /// `[in, out]` row-major (burn's `Linear::weight`).
    InOut,
}

impl WeightLayout {
    /// Flat position of entry `(row, col)` of an `[out, in]` matrix stored in this layout.
    ///
    /// ```
    /// use lastmile_adapters::WeightLayout;
    /// assert_eq!(WeightLayout::OutIn.flat(1, 2, 3, 4), 6);
    /// assert_eq!(WeightLayout::InOut.flat(1, 2, 3, 4), 7);
    /// ```
    pub fn flat(self, row: usize, col: usize, d_out: usize, d_in: usize) -> usize {
        match self {
            Self::OutIn => row * d_in + col,
            Self::InOut => col * d_out + row,
        }
    }

    /// The stored shape of an `[out, in]` matrix.
    ///
    /// ```
    /// assert_eq!(lastmile_adapters::WeightLayout::InOut.shape(3, 4), [4, 3]);
    /// ```
    pub fn shape(self, d_out: usize, d_in: usize) -> [usize; 2] {
        match self {
            Self::OutIn => [d_out, d_in],
            Self::InOut => [d_in, d_out],
        }
    }
}

/// How the sparse support `M` is chosen (§3.1 of the SHiRA paper).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
#[non_exhaustive]
pub enum ShiraMask {
    /// SHiRA-Struct: every `f`-th row and every `f`-th column plus the
    /// diagonal, with the smallest stride `f` that fits the budget.
    Struct,
    /// SHiRA-Rand: a uniformly random subset (seeded; PEFT's default).
    #[default]
    Random,
    /// SHiRA-WM: the top-K entries by `|W0|`.
    WeightMagnitude,
    /// SHiRA-Grad: the top-K entries by `|∇L|` on a calibration batch.
    Gradient,
    /// SHiRA-SNIP: the top-K entries by `|W0 ⊙ ∇L|`.
    Snip,
}

impl ShiraMask {
    /// Every mask kind, in the order the paper lists them.
    pub const ALL: [ShiraMask; 5] = [
        Self::Struct,
        Self::Random,
        Self::WeightMagnitude,
        Self::Gradient,
        Self::Snip,
    ];

    /// Short name (PEFT's `mask_type` for the random mask).
    ///
    /// ```
    /// assert_eq!(lastmile_adapters::ShiraMask::Random.name(), "random");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Self::Struct => "struct",
            Self::Random => "random",
            Self::WeightMagnitude => "weight_magnitude",
            Self::Gradient => "gradient",
            Self::Snip => "snip",
        }
    }

    /// Parses a [`ShiraMask::name`].
    ///
    /// ```
    /// use lastmile_adapters::ShiraMask;
    /// assert_eq!(ShiraMask::from_name("snip"), Some(ShiraMask::Snip));
    /// ```
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Whether this mask needs a calibration gradient.
    pub fn needs_gradient(self) -> bool {
        matches!(self, Self::Gradient | Self::Snip)
    }
}

/// How many entries the mask holds.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum ShiraBudget {
    /// A fraction of `out·in` in (0, 1].
    Density(f64),
    /// An exact count.
    Count(usize),
    /// PEFT's `ShiraConfig(r)`: `r·(out + in)` entries, the parameter count
    /// of a rank-`r` LoRA.
    LoraRank(usize),
}

/// Hyper-parameters of a SHiRA adapter.
///
/// ```
/// use lastmile_adapters::{ShiraBudget, ShiraConfig, ShiraMask};
/// let c = ShiraConfig::new(ShiraMask::Random, ShiraBudget::LoraRank(4));
/// assert_eq!(c.count(64, 32).unwrap(), 4 * (64 + 32));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ShiraConfig {
    /// Mask kind.
    pub mask: ShiraMask,
    /// Mask size.
    pub budget: ShiraBudget,
    /// Seed of the random mask.
    pub seed: u64,
}

impl ShiraConfig {
    /// A config with seed 0.
    pub fn new(mask: ShiraMask, budget: ShiraBudget) -> Self {
        Self {
            mask,
            budget,
            seed: 0,
        }
    }

    /// Sets the random mask's seed.
    ///
    /// ```
    /// use lastmile_adapters::{ShiraBudget, ShiraConfig, ShiraMask};
    /// assert_eq!(ShiraConfig::new(ShiraMask::Random, ShiraBudget::Count(3)).with_seed(7).seed, 7);
    /// ```
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The number of mask entries `K` for a `[d_out, d_in]` weight (for
    /// [`ShiraMask::Struct`] the mask holds at most `K`).
    ///
    /// # Errors
    /// [`AdapterError::InvalidConfig`] when the budget is 0 or exceeds `out·in`.
    pub fn count(&self, d_out: usize, d_in: usize) -> Result<usize> {
        let total = d_out.checked_mul(d_in).ok_or_else(|| {
            AdapterError::shape("weight", "a size that fits usize", &[d_out, d_in])
        })?;
        let k = match self.budget {
            ShiraBudget::Density(d) => {
                if !(d.is_finite() && d > 0.0 && d <= 1.0) {
                    return Err(AdapterError::config("density", d, "a value in (0, 1]"));
                }
                ((d * total as f64).round() as usize).max(1)
            }
            ShiraBudget::Count(k) => k,
            ShiraBudget::LoraRank(r) => r.saturating_mul(d_out.saturating_add(d_in)),
        };
        if k == 0 || k > total {
            return Err(AdapterError::config(
                "mask size",
                k,
                &format!("an integer in [1, out·in = {total}]"),
            ));
        }
        Ok(k)
    }

    /// The mask: sorted flat indices into the row-major `[out, in]` weight.
    ///
    /// `grad` is `∇L` with respect to `w0` on a calibration batch (see
    /// [`weight_gradient`]); it is required by [`ShiraMask::Gradient`] and
    /// [`ShiraMask::Snip`] and ignored otherwise. Ties in top-K scores go to
    /// the lower index, so masks are deterministic.
    ///
    /// # Errors
    /// Bad budget, missing or mis-shaped gradient, non-finite inputs.
    pub fn select(&self, w0: &Tensor<2>, grad: Option<&Tensor<2>>) -> Result<Vec<usize>> {
        let [d_out, d_in] = w0.dims();
        let k = self.count(d_out, d_in)?;
        let total = d_out * d_in;
        let scores = |w: bool, g: bool| -> Result<Vec<f32>> {
            let wv = if w {
                Some(tensor_to_vec(w0.clone())?)
            } else {
                None
            };
            let gv = if g {
                let g = grad.ok_or_else(|| {
                    AdapterError::config(
                        "gradient",
                        "missing",
                        "a calibration gradient of the weight's shape for Gradient/SNIP masks",
                    )
                })?;
                if g.dims() != [d_out, d_in] {
                    return Err(AdapterError::shape(
                        "calibration gradient",
                        format!("[{d_out}, {d_in}]"),
                        &g.dims(),
                    ));
                }
                Some(tensor_to_vec(g.clone())?)
            } else {
                None
            };
            let s: Vec<f32> = match (wv, gv) {
                (Some(w), Some(g)) => w.iter().zip(&g).map(|(a, b)| (a * b).abs()).collect(),
                (Some(w), None) => w.iter().map(|a| a.abs()).collect(),
                (None, Some(g)) => g.iter().map(|a| a.abs()).collect(),
                (None, None) => Vec::new(),
            };
            check_finite_slice("mask scores", &s)?;
            Ok(s)
        };
        let mut idx = match self.mask {
            ShiraMask::Struct => struct_mask(d_out, d_in, k)?,
            ShiraMask::Random => {
                let mut rng = StdRng::seed_from_u64(self.seed);
                rand::seq::index::sample(&mut rng, total, k).into_vec()
            }
            ShiraMask::WeightMagnitude => top_k(&scores(true, false)?, k),
            ShiraMask::Gradient => top_k(&scores(false, true)?, k),
            ShiraMask::Snip => top_k(&scores(true, true)?, k),
        };
        idx.sort_unstable();
        Ok(idx)
    }

    /// A zero-valued adapter (`W0 + S = W0`) on the mask [`ShiraConfig::select`] picks.
    ///
    /// # Errors
    /// As [`ShiraConfig::select`].
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::{Device, Distribution, Tensor};
    /// use lastmile_adapters::{ShiraBudget, ShiraConfig, ShiraMask};
    /// let device = Device::flex();
    /// let w0 = Tensor::<2>::random([8, 8], Distribution::Normal(0.0, 1.0), &device);
    /// let shira = ShiraConfig::new(ShiraMask::WeightMagnitude, ShiraBudget::Count(6)).init(&w0, None).unwrap();
    /// assert_eq!(shira.trainable_params(), 6);
    /// # }
    /// ```
    pub fn init(&self, w0: &Tensor<2>, grad: Option<&Tensor<2>>) -> Result<Shira> {
        let [d_out, d_in] = w0.dims();
        let idx = self.select(w0, grad)?;
        let values = Tensor::zeros([idx.len()], &w0.device());
        Ok(Shira::from_parts(idx, values, d_out, d_in)?.with_mask_kind(self.mask))
    }
}

/// Indices of the `k` largest scores (ties: lower index first).
fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let cmp = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx
}

/// SHiRA-Struct: rows and columns at stride `f` plus the diagonal, with the
/// smallest `f` whose mask fits in `k` entries.
fn struct_mask(d_out: usize, d_in: usize, k: usize) -> Result<Vec<usize>> {
    let count = |f: usize| {
        let rows = d_out.div_ceil(f);
        let cols = d_in.div_ceil(f);
        // upper bound: union of rows, columns and the diagonal
        rows * d_in + cols * d_out + d_out.min(d_in)
    };
    let max_f = d_out.max(d_in);
    let mut f = 1;
    while f < max_f && count(f) > k {
        f += 1;
    }
    let mut on = vec![false; d_out * d_in];
    let build = |f: usize, on: &mut Vec<bool>| {
        on.iter_mut().for_each(|b| *b = false);
        for r in (0..d_out).step_by(f) {
            on[r * d_in..(r + 1) * d_in]
                .iter_mut()
                .for_each(|b| *b = true);
        }
        for c in (0..d_in).step_by(f) {
            (0..d_out).for_each(|r| on[r * d_in + c] = true);
        }
        (0..d_out.min(d_in)).for_each(|i| on[i * d_in + i] = true);
        on.iter().filter(|b| **b).count()
    };
    // The bound over-counts overlaps: step back to smaller strides while the exact union fits.
    while f > 1 && build(f - 1, &mut on) <= k {
        f -= 1;
    }
    if build(f, &mut on) > k {
        return Err(AdapterError::config(
            "mask size",
            k,
            &format!(
                "at least {} entries for a structured mask (row 0, column 0 and the diagonal)",
                build(max_f, &mut on)
            ),
        ));
    }
    Ok(on
        .iter()
        .enumerate()
        .filter_map(|(i, b)| b.then_some(i))
        .collect())
}

/// `∇L` with respect to `weight`, for gradient-based masks: `loss` maps a
/// differentiable copy of the weight to a scalar loss on a calibration batch.
///
/// # Errors
/// [`AdapterError::Unsupported`] unless `weight` lives on an autodiff device
/// (`device.autodiff()`), or if `loss` does not depend on the weight.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_adapters::shira::weight_gradient;
/// let device = Device::flex().autodiff();
/// let w = Tensor::<2>::from_floats([[1.0, 2.0]], &device);
/// let g = weight_gradient(w, |w| (w.clone() * w).sum()).unwrap();
/// assert_eq!(g.into_data().try_to_vec::<f32>().unwrap(), vec![2.0, 4.0]);
/// # }
/// ```
pub fn weight_gradient(
    weight: Tensor<2>,
    loss: impl FnOnce(Tensor<2>) -> Tensor<1>,
) -> Result<Tensor<2>> {
    if !weight.device().is_autodiff() {
        return Err(AdapterError::unsupported(
            "compute a calibration gradient for",
            "SHiRA",
            "the weight must live on an autodiff device (`device.autodiff()`)",
        ));
    }
    let w = weight.detach().require_grad();
    let l = loss(w.clone());
    let grads = l.backward();
    w.grad(&grads).ok_or_else(|| {
        AdapterError::unsupported(
            "compute a calibration gradient for",
            "SHiRA",
            "the loss does not depend on the weight",
        )
    })
}

/// A SHiRA adapter for one `[out, in]` weight: trainable `values` on a fixed
/// sorted set of flat indices.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_adapters::Shira;
/// let d = Device::flex();
/// let s = Shira::from_parts(vec![1, 4], Tensor::<1>::from_floats([2.0, -1.0], &d), 2, 3).unwrap();
/// let w = s.delta_weight().into_data().try_to_vec::<f32>().unwrap();
/// assert_eq!(w, vec![0.0, 2.0, 0.0, 0.0, -1.0, 0.0]);
/// # }
/// ```
#[derive(Module, Debug)]
pub struct Shira {
    /// The trainable values `S[M]` (PEFT's `shira_weight`), `[N]`.
    pub values: Param<Tensor<1>>,
    indices: Arc<Vec<usize>>,
    rows: Tensor<1, Int>,
    cols: Tensor<1, Int>,
    flat: Tensor<1, Int>,
    d_out: usize,
    d_in: usize,
    #[module(skip)]
    mask: Option<ShiraMask>,
}

impl Shira {
    /// An adapter from sorted, distinct flat indices into the row-major
    /// `[d_out, d_in]` weight and their values.
    ///
    /// # Errors
    /// [`AdapterError::Shape`] on a length mismatch, [`AdapterError::InvalidConfig`]
    /// for unsorted, repeated or out-of-range indices, non-finite values.
    pub fn from_parts(
        indices: Vec<usize>,
        values: Tensor<1>,
        d_out: usize,
        d_in: usize,
    ) -> Result<Self> {
        let total = d_out.checked_mul(d_in).filter(|t| *t > 0).ok_or_else(|| {
            AdapterError::shape("SHiRA weight", "[out, in] with out, in > 0", &[d_out, d_in])
        })?;
        let [n] = values.dims();
        if n != indices.len() || n == 0 {
            return Err(AdapterError::shape(
                "SHiRA values",
                format!("[{}] (one value per index, at least one)", indices.len()),
                &[n],
            ));
        }
        if let Some(w) = indices.windows(2).find(|w| w[0] >= w[1]) {
            return Err(AdapterError::config(
                "SHiRA indices",
                format!("{} then {}", w[0], w[1]),
                "strictly increasing flat indices",
            ));
        }
        if let Some(&last) = indices.last().filter(|&&i| i >= total) {
            return Err(AdapterError::config(
                "SHiRA index",
                last,
                &format!("an index < out·in = {total}"),
            ));
        }
        check_finite("SHiRA values", &values)?;
        let device = values.device();
        let rows: Vec<usize> = indices.iter().map(|i| i / d_in).collect();
        let cols: Vec<usize> = indices.iter().map(|i| i % d_in).collect();
        Ok(Self {
            rows: int_tensor_from_indices(&rows, [n], &device)?,
            cols: int_tensor_from_indices(&cols, [n], &device)?,
            flat: int_tensor_from_indices(&indices, [n], &device)?,
            values: Param::from_tensor(values),
            indices: Arc::new(indices),
            d_out,
            d_in,
            mask: None,
        })
    }

    /// An adapter from COO coordinates `(rows[i], cols[i])` (PEFT's
    /// `shira_indices` rows) in any order; entries are sorted, duplicates rejected.
    ///
    /// # Errors
    /// As [`Shira::from_parts`].
    pub fn from_coo(
        rows: &[usize],
        cols: &[usize],
        values: &[f32],
        d_out: usize,
        d_in: usize,
        device: &Device,
    ) -> Result<Self> {
        if rows.len() != cols.len() || rows.len() != values.len() {
            return Err(AdapterError::shape(
                "SHiRA COO",
                format!("rows, cols and values of equal length ({})", values.len()),
                &[rows.len(), cols.len()],
            ));
        }
        let mut entries = Vec::with_capacity(rows.len());
        for ((&r, &c), &v) in rows.iter().zip(cols).zip(values) {
            if r >= d_out || c >= d_in {
                return Err(AdapterError::config(
                    "SHiRA index",
                    format!("({r}, {c})"),
                    &format!("a position inside [{d_out}, {d_in}]"),
                ));
            }
            entries.push((r * d_in + c, v));
        }
        entries.sort_unstable_by_key(|e| e.0);
        let (idx, vals): (Vec<usize>, Vec<f32>) = entries.into_iter().unzip();
        let n = vals.len();
        Self::from_parts(idx, tensor_from_vec(vals, [n], device)?, d_out, d_in)
    }

    /// The mask kind that chose the support, when known.
    pub fn mask_kind(&self) -> Option<ShiraMask> {
        self.mask
    }

    /// Records the mask kind that chose the support (written to files).
    pub fn with_mask_kind(mut self, mask: ShiraMask) -> Self {
        self.mask = Some(mask);
        self
    }

    /// Sorted flat indices into the row-major `[out, in]` weight.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    /// Row and column of every entry (PEFT's 2×N `shira_indices`).
    pub fn coo(&self) -> (Vec<usize>, Vec<usize>) {
        self.indices
            .iter()
            .map(|i| (i / self.d_in, i % self.d_in))
            .unzip()
    }

    /// Number of entries `N = |M|`.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// `|M| / (out·in)`.
    pub fn density(&self) -> f64 {
        self.nnz() as f64 / (self.d_out * self.d_in) as f64
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// The dense `S`, `[out, in]`.
    pub fn delta_weight(&self) -> Tensor<2> {
        let device = self.values.device();
        Tensor::<1>::zeros([self.d_out * self.d_in], &device)
            .select_assign(
                0,
                self.flat.clone(),
                self.values.val(),
                IndexingUpdateOp::Add,
            )
            .reshape([self.d_out, self.d_in])
    }

    /// The sparse contribution `S x` for `x: [..., in]`, in `O(batch·N)`:
    /// gather the masked columns of `x`, scale, and index-add into the rows.
    pub fn forward_delta<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let (x2, lead) = flatten(x);
        let [n, _] = x2.dims();
        let contrib = x2.select(1, self.cols.clone()) * self.values.val().unsqueeze_dim::<2>(0);
        let out = Tensor::<2>::zeros([n, self.d_out], &contrib.device()).select_assign(
            1,
            self.rows.clone(),
            contrib,
            IndexingUpdateOp::Add,
        );
        unflatten(out, &lead)
    }

    /// Trainable values: exactly `N`.
    pub fn trainable_params(&self) -> usize {
        self.nnz()
    }

    /// The values on the host.
    ///
    /// # Errors
    /// [`AdapterError::Core`] if the device cannot be read.
    pub fn values_vec(&self) -> Result<Vec<f32>> {
        Ok(tensor_to_vec(self.values.val())?)
    }

    fn positions(&self, layout: WeightLayout) -> Vec<usize> {
        self.indices
            .iter()
            .map(|&i| layout.flat(i / self.d_in, i % self.d_in, self.d_out, self.d_in))
            .collect()
    }

    /// Flat positions of the mask in a weight stored with `layout`, as an
    /// index tensor on `device` (computed once per deployment and reused by
    /// [`Shira::scatter_into`]).
    ///
    /// # Errors
    /// [`AdapterError::Core`] if an index does not fit the device's int type.
    pub fn positions_tensor(
        &self,
        layout: WeightLayout,
        device: &Device,
    ) -> Result<Tensor<1, Int>> {
        Ok(int_tensor_from_indices(
            &self.positions(layout),
            [self.nnz()],
            device,
        )?)
    }

    /// Switches the adapter into a flattened deployed weight on the device:
    /// `W[M] ← W[M] + α·values`, returning the new weight and the saved
    /// originals `W[M]` for [`restore_into`]. With a uniquely owned `weight`
    /// the CPU backends update it in place, touching only `|M|` entries.
    ///
    /// # Errors
    /// [`AdapterError::Shape`] if `weight` does not have `out·in` entries or
    /// `positions` does not have `N`.
    pub fn scatter_into(
        &self,
        weight: Tensor<1>,
        positions: Tensor<1, Int>,
        alpha: f32,
    ) -> Result<(Tensor<1>, Tensor<1>)> {
        self.check_flat(weight.dims()[0], positions.dims()[0])?;
        let saved = weight.clone().select(0, positions.clone());
        let vals = self.values.val().detach();
        let vals = if alpha == 1.0 {
            vals
        } else {
            vals.mul_scalar(alpha)
        };
        let weight =
            weight.select_assign(0, positions, saved.clone() + vals, IndexingUpdateOp::Assign);
        Ok((weight, saved))
    }

    /// Host version of [`Shira::scatter_into`] on a row-major slice laid
    /// out as `layout`; returns the saved originals.
    ///
    /// # Errors
    /// [`AdapterError::Shape`] if `weight.len() != out·in`.
    pub fn scatter_host(
        &self,
        weight: &mut [f32],
        layout: WeightLayout,
        alpha: f32,
    ) -> Result<Vec<f32>> {
        self.check_flat(weight.len(), self.nnz())?;
        let values = self.values_vec()?;
        let mut saved = Vec::with_capacity(values.len());
        for (&i, &v) in self.indices.iter().zip(&values) {
            let p = layout.flat(i / self.d_in, i % self.d_in, self.d_out, self.d_in);
            saved.push(weight[p]);
            weight[p] += alpha * v;
        }
        Ok(saved)
    }

    /// Undoes [`Shira::scatter_host`]: writes the saved originals back, so
    /// the weight is bit-identical to what it was.
    ///
    /// # Errors
    /// [`AdapterError::Shape`] on a length mismatch.
    pub fn restore_host(
        &self,
        weight: &mut [f32],
        layout: WeightLayout,
        saved: &[f32],
    ) -> Result<()> {
        self.check_flat(weight.len(), saved.len())?;
        for (&i, &v) in self.indices.iter().zip(saved) {
            weight[layout.flat(i / self.d_in, i % self.d_in, self.d_out, self.d_in)] = v;
        }
        Ok(())
    }

    fn check_flat(&self, weight_len: usize, n: usize) -> Result<()> {
        if weight_len != self.d_out * self.d_in || n != self.nnz() {
            return Err(AdapterError::shape(
                "deployed weight / positions",
                format!(
                    "{} weight entries and {} positions",
                    self.d_out * self.d_in,
                    self.nnz()
                ),
                &[weight_len, n],
            ));
        }
        Ok(())
    }
}

/// Undoes [`Shira::scatter_into`]: writes `saved` back at `positions`.
///
/// # Errors
/// [`AdapterError::Shape`] if `saved` and `positions` differ in length.
pub fn restore_into(
    weight: Tensor<1>,
    positions: Tensor<1, Int>,
    saved: Tensor<1>,
) -> Result<Tensor<1>> {
    if positions.dims() != saved.dims() {
        return Err(AdapterError::shape(
            "saved originals",
            format!("{:?} (one per position)", positions.dims()),
            &saved.dims(),
        ));
    }
    Ok(weight.select_assign(0, positions, saved, IndexingUpdateOp::Assign))
}
