//! FouRA for inference: the spectral transforms folded into the factors
//! once, instead of on every call.
//!
//! FouRA's update is `ΔW = s·T_outᵀ·B·diag(G(z))·A·T_in` (Borse et al. 2024,
//! Eq. 4–5: the low-rank adapter acts between a forward and an inverse
//! transform of the feature axis, and the gate `G` switches rank components
//! on or off from the activations `z = A·T_in·x`). Training must re-fold
//! `A·T_in` and `T_outᵀ·B` on every step, because `A` and `B` change; at
//! inference they are constants, so [`FoldedFoura`] computes them once and
//! the forward costs what LoRA's does (two thin products) plus the gate's
//! `O(N·r)` elementwise work.

use burn::tensor::Tensor;
use burn::tensor::activation::sigmoid;

use super::{Foura, GateMode};
use crate::low_rank::{flatten, unflatten};

/// A [`Foura`] adapter with its transforms folded into the factors, for
/// inference ([`Foura::fold`]). Its forward equals [`Foura::forward_delta`]
/// to f32 rounding, for every gate mode; it holds no gradients.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Distribution, Tensor};
/// use lastmile_adapters::FouraConfig;
/// let d = Device::flex();
/// let mut foura = FouraConfig::new(4, 8.0).init(32, 16, &d)?;
/// foura.b = foura.b.map(|b| b.random_like(Distribution::Normal(0.0, 0.1)));
/// let folded = foura.fold();
/// let x = Tensor::<2>::random([3, 32], Distribution::Normal(0.0, 1.0), &d);
/// let gap = (folded.forward_delta(x.clone()) - foura.forward_delta(x)).abs().max();
/// assert!(gap.into_scalar::<f32>() < 1e-4);
/// # }
/// # Ok::<(), lastmile_adapters::AdapterError>(())
/// ```
#[derive(Clone, Debug)]
pub struct FoldedFoura {
    /// `A·T_in`, `[r, in]`.
    a: Tensor<2>,
    /// `s·T_outᵀ·B`, `[out, r]` (the scale folded in too).
    b: Tensor<2>,
    mode: GateMode,
    /// The frozen mask `[1, r]` ([`GateMode::Frozen`]).
    frozen_mask: Tensor<2>,
    /// Gate weights `[1, r]` each: energy, entropy, bias.
    energy: Tensor<2>,
    entropy: Tensor<2>,
    bias: Tensor<2>,
    threshold: f64,
}

impl Foura {
    /// Folds the transforms (and the scale `s`) into the factors once, for
    /// inference. Re-fold after training changes `A`, `B` or the gate.
    pub fn fold(&self) -> FoldedFoura {
        let (a, b) = self.effective_factors();
        let row = |t: Tensor<1>| t.detach().unsqueeze_dim::<2>(0);
        FoldedFoura {
            a: a.detach(),
            b: b.detach().mul_scalar(self.scaling()),
            mode: self.gate_mode(),
            frozen_mask: row(self.frozen_mask()),
            energy: row(self.gate.energy.val()),
            entropy: row(self.gate.entropy.val()),
            bias: row(self.gate.bias.val()),
            threshold: self.threshold(),
        }
    }
}

impl FoldedFoura {
    /// The adapter's contribution for `x: [..., in]` (as
    /// [`Foura::forward_delta`]).
    pub fn forward_delta<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let (x2, lead) = flatten(x);
        let z = x2.matmul(self.a.clone().transpose());
        let z = match self.mode {
            GateMode::Off => z,
            GateMode::Frozen => z * self.frozen_mask.clone(),
            GateMode::Adaptive => {
                let keep = self.scores(z.clone()).greater_elem(self.threshold).float();
                z * keep
            }
        };
        unflatten(z.matmul(self.b.clone().transpose()), &lead)
    }

    /// The gate's scores, as [`super::RankGate::scores`] computes them.
    fn scores(&self, z: Tensor<2>) -> Tensor<2> {
        let [_, r] = z.dims();
        let (energy_share, entropy) = super::gate::gate_features(z, r);
        sigmoid(
            energy_share * self.energy.clone() + entropy * self.entropy.clone() + self.bias.clone(),
        )
    }
}
