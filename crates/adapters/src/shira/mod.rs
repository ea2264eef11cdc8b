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

mod config;
mod mask;
mod peft;
mod scatter;

use std::sync::Arc;

use burn::module::{Module, Param};
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor};
use lastmile_core::convert::{int_tensor_from_indices, tensor_from_vec, tensor_to_vec};
use lastmile_core::validate::check_finite;

use crate::error::{AdapterError, Result};
use crate::low_rank::{flatten, unflatten};
pub use config::{ShiraBudget, ShiraConfig};
pub use mask::{ShiraMask, weight_gradient};
pub use scatter::restore_into;

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
}
