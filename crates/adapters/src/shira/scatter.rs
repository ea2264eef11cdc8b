//! Switching a SHiRA adapter into a deployed weight and back: scatters of
//! `|M|` values on the device or on a host slice.

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor};
use lastmile_core::convert::int_tensor_from_indices;

use super::Shira;
use crate::error::{AdapterError, Result};
use crate::layout::WeightLayout;

impl Shira {
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
