//! FouRA's adaptive rank gate: sigmoid scores from each rank component's
//! energy share and the activations' entropy, thresholded to a 0/1 mask
//! with straight-through gradients.

use burn::module::{Module, Param};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};

/// FouRA's learnable rank gate (see the module docs for the design).
#[derive(Module, Debug)]
pub struct RankGate {
    /// Weight `w` on the scaled energy share `r·p_i`, `[r]`.
    pub energy: Param<Tensor<1>>,
    /// Weight `u` on the normalised entropy `H`, `[r]`.
    pub entropy: Param<Tensor<1>>,
    /// Bias `c`, `[r]`.
    pub bias: Param<Tensor<1>>,
}

/// Bias the gate starts with: `σ(2) ≈ 0.88`, above the default τ = 0.5.
const GATE_BIAS_INIT: f64 = 2.0;
const ENERGY_EPS: f64 = 1e-12;

impl RankGate {
    pub(super) fn new(rank: usize, device: &Device) -> Self {
        Self {
            energy: Param::from_tensor(Tensor::zeros([rank], device)),
            entropy: Param::from_tensor(Tensor::zeros([rank], device)),
            bias: Param::from_tensor(Tensor::full([rank], GATE_BIAS_INIT, device)),
        }
    }

    /// Sigmoid scores `[N, r]` for low-rank activations `z: [N, r]`.
    pub fn scores(&self, z: Tensor<2>) -> Tensor<2> {
        let [_, r] = z.dims();
        let (energy_share, entropy) = gate_features(z, r);
        let logits = energy_share * self.energy.val().unsqueeze_dim::<2>(0)
            + entropy * self.entropy.val().unsqueeze_dim::<2>(0)
            + self.bias.val().unsqueeze_dim::<2>(0);
        sigmoid(logits)
    }

    /// The hard 0/1 mask `[N, r]` with straight-through gradients.
    pub fn mask(&self, z: Tensor<2>, threshold: f64) -> Tensor<2> {
        let soft = self.scores(z);
        let hard = soft.clone().detach().greater_elem(threshold).float();
        // Forward value: exactly `hard` (σ − σ is exactly 0); backward: dσ.
        hard + (soft.clone() - soft.detach())
    }
}

/// The gate's inputs for activations `z: [N, r]`: the scaled energy shares
/// `r·p_i` (`[N, r]`, `p_i = z_i² / Σ z²`) and the normalised entropy
/// `H = −Σ p log p / log r` (`[N, 1]`).
pub(super) fn gate_features(z: Tensor<2>, r: usize) -> (Tensor<2>, Tensor<2>) {
    let e = z.clone() * z;
    let total = e.clone().sum_dim(1).add_scalar(ENERGY_EPS);
    let p = e / total;
    let log_r = if r > 1 { (r as f64).ln() } else { 1.0 };
    let h = (p.clone() * p.clone().add_scalar(ENERGY_EPS).log())
        .sum_dim(1)
        .div_scalar(-log_r);
    (p.mul_scalar(r as f64), h)
}
