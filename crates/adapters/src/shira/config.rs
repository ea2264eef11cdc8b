//! SHiRA's hyper-parameters: the mask kind, the budget, and `init`.

use burn::tensor::Tensor;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::validate::check_finite_slice;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::Shira;
use super::mask::{ShiraMask, struct_mask, top_k};
use crate::error::{AdapterError, Result};

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
    /// [`weight_gradient`](super::weight_gradient)); it is required by [`ShiraMask::Gradient`] and
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
