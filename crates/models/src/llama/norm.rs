//! RMSNorm (Zhang & Sennrich 2019, eq. 4): `y = x / sqrt(mean(x²) + ε) ⊙ g`.

use std::sync::OnceLock;

use burn::tensor::Tensor;

/// Root-mean-square normalisation over the last dimension with a learned gain `g`.
#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    /// `g`, `[1, 1, d]`.
    gain: Tensor<3>,
    eps: f32,
    /// `g` in host memory, copied on the host pass's first use (it reads
    /// `g` at every step; the tensor path never needs the copy).
    pub(crate) host_gain: OnceLock<Vec<f32>>,
}

impl RmsNorm {
    /// From the gain vector (length `d`, already on the device) and `ε`.
    pub(crate) fn new(gain: Tensor<1>, eps: f32) -> Self {
        let d = gain.dims()[0];
        Self {
            gain: gain.reshape([1, 1, d]),
            eps,
            host_gain: OnceLock::new(),
        }
    }

    /// The gain `g`, `[d]`.
    pub(crate) fn gain(&self) -> Tensor<1> {
        let d = self.gain.dims()[2];
        self.gain.clone().reshape([d])
    }

    /// Normalises `x` `[b, n, d]` row by row.
    pub(crate) fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let mean_sq = (x.clone() * x.clone()).mean_dim(2);
        x * mean_sq.add_scalar(self.eps).sqrt().recip() * self.gain.clone()
    }
}
