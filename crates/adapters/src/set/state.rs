//! What an [`super::AdapterSet`] keeps per target and per adapter: the base
//! and deployed weights, the prepared SHiRA switches, and how to undo the
//! current switch.

use std::sync::Arc;

use burn::tensor::{Int, Tensor};
use lastmile_core::convert::{indices_to_vec, tensor_to_vec};
use lastmile_core::host::{is_host, with_host_mut, with_host_ref};

use crate::adapter::Adapter;
use crate::error::Result;
use crate::layout::WeightLayout;

pub(super) struct Target {
    pub(super) base: Tensor<1>,
    pub(super) current: Tensor<1>,
    pub(super) layout: WeightLayout,
    pub(super) d_out: usize,
    pub(super) d_in: usize,
}

impl Target {
    /// Writes `W0` into the deployed weight. On a host device the deployed
    /// buffer stays its own and is overwritten in place (one copy into pages
    /// already mapped: a fresh 64 MiB buffer costs ~4× that in page faults),
    /// so that the next switch updates it in place too. Elsewhere the
    /// deployed weight shares `W0`'s buffer until the next switch.
    pub(super) fn restore_base(&mut self) -> Result<()> {
        let device = self.base.device();
        if !is_host(&device) {
            self.current = self.base.clone();
            return Ok(());
        }
        let base = std::mem::replace(&mut self.base, Tensor::empty([0], &device));
        let current = std::mem::replace(&mut self.current, Tensor::empty([0], &device));
        let (base, restored) = with_host_ref(base, |w0| {
            with_host_mut(current, |dst| {
                dst.copy_from_slice(w0);
                Ok(())
            })
        })?;
        self.base = base;
        self.current = match restored {
            Ok(current) => current,
            Err(e) => {
                self.current = self.base.clone();
                return Err(e.into());
            }
        };
        Ok(())
    }
}

pub(super) struct Entry {
    pub(super) adapter: Adapter,
    /// Flat positions in the deployed layout (SHiRA only), computed once.
    pub(super) positions: Option<Tensor<1, Int>>,
    /// SHiRA only: `(W0[M], W0[M] + values)`, so that switching this adapter
    /// in alone is one scatter and switching it out another (no gather, no add).
    pub(super) prepared: Option<(Tensor<1>, Tensor<1>)>,
    /// SHiRA on a host device: the same, on the host, sorted by position.
    pub(super) host: Option<Arc<HostSwitch>>,
}

/// A SHiRA switch prepared on the host: positions in ascending order (the
/// scatter then walks the weight front to back) with the values to write.
pub(super) struct HostSwitch {
    pub(super) positions: Vec<usize>,
    pub(super) originals: Vec<f32>,
    pub(super) switched: Vec<f32>,
}

impl HostSwitch {
    pub(super) fn new(
        positions: Tensor<1, Int>,
        originals: Tensor<1>,
        switched: Tensor<1>,
    ) -> Result<Self> {
        let positions = indices_to_vec(positions)?;
        let (originals, switched) = (tensor_to_vec(originals)?, tensor_to_vec(switched)?);
        let mut order: Vec<usize> = (0..positions.len()).collect();
        order.sort_unstable_by_key(|&i| positions[i]);
        Ok(Self {
            positions: order.iter().map(|&i| positions[i]).collect(),
            originals: order.iter().map(|&i| originals[i]).collect(),
            switched: order.iter().map(|&i| switched[i]).collect(),
        })
    }
}

pub(super) enum Undo {
    /// Saved originals, in the order they were scattered.
    Scatter(Vec<(Tensor<1, Int>, Tensor<1>)>),
    /// One prepared host switch: scatter its originals back.
    Host(Arc<HostSwitch>),
    /// The weight was fused densely: restore from `W0`.
    Dense,
}
