//! LoRA: low-rank adaptation of a frozen linear map (Hu et al. 2021,
//! arXiv 2106.09685), with rsLoRA scaling (Kalajdzievski 2023,
//! arXiv 2312.03732) and PiSSA initialisation (Meng et al. 2024,
//! arXiv 2404.02948).
//!
//! Shapes follow PEFT / PyTorch: the adapted weight is `W0: [out, in]`,
//! `A: [r, in]`, `B: [out, r]`, and (eq. 3 of the LoRA paper)
//! `y = W0 x + s · B A x` with `s = α / r` (rsLoRA: `s = α / √r`).

mod config;
mod peft;

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::Tensor;
use lastmile_core::validate::check_finite;

use crate::error::{AdapterError, Result};
use crate::low_rank::{low_rank_apply, scaling, validate_rank_alpha};
pub use config::{LoraConfig, LoraInit};

/// A LoRA adapter for one `[out, in]` linear map: trainable `A: [r, in]`
/// and `B: [out, r]`.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_adapters::Lora;
/// let d = Device::flex();
/// let a = Tensor::<2>::from_floats([[1.0, 0.0, 2.0]], &d);
/// let b = Tensor::<2>::from_floats([[1.0], [3.0]], &d);
/// let lora = Lora::from_factors(a, b, 2.0, false).unwrap(); // s = 2/1
/// let w = lora.delta_weight().into_data().try_to_vec::<f32>().unwrap();
/// assert_eq!(w, vec![2.0, 0.0, 4.0, 6.0, 0.0, 12.0]);
/// # }
/// ```
#[derive(Module, Debug)]
pub struct Lora {
    /// Down-projection `A: [r, in]` (PEFT's `lora_A.weight`).
    pub a: Param<Tensor<2>>,
    /// Up-projection `B: [out, r]` (PEFT's `lora_B.weight`).
    pub b: Param<Tensor<2>>,
    /// Dropout on the adapter input (identity outside training).
    pub dropout: Dropout,
    alpha: f64,
    use_rslora: bool,
}

impl Lora {
    fn build(
        a: Tensor<2>,
        b: Tensor<2>,
        alpha: f64,
        use_rslora: bool,
        dropout: f64,
    ) -> Result<Self> {
        Ok(Self {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            dropout: DropoutConfig::new(dropout).init(),
            alpha,
            use_rslora,
        })
    }

    /// An adapter from given factors `A: [r, in]`, `B: [out, r]` (trainable).
    ///
    /// # Errors
    /// [`AdapterError::Shape`] if the ranks disagree, invalid `alpha`, or
    /// non-finite factors.
    pub fn from_factors(a: Tensor<2>, b: Tensor<2>, alpha: f64, use_rslora: bool) -> Result<Self> {
        let [r, d_in] = a.dims();
        let [d_out, rb] = b.dims();
        if rb != r {
            return Err(AdapterError::shape(
                "lora B",
                format!("[out, r] with r = {r} (rows of A)"),
                &[d_out, rb],
            ));
        }
        validate_rank_alpha(r, alpha, d_out, d_in)?;
        check_finite("lora A", &a)?;
        check_finite("lora B", &b)?;
        Self::build(a, b, alpha, use_rslora, 0.0)
    }

    /// The same adapter with dropout probability `p` on its input.
    ///
    /// # Errors
    /// [`AdapterError::InvalidConfig`] for `p` outside `[0, 1)`.
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::Device;
    /// let lora = lastmile_adapters::LoraConfig::new(2, 4.0).init(3, 5, &Device::flex())?;
    /// assert_eq!(lora.with_dropout(0.1)?.dropout_prob(), 0.1);
    /// # }
    /// # Ok::<(), lastmile_adapters::AdapterError>(())
    /// ```
    pub fn with_dropout(mut self, p: f64) -> Result<Self> {
        if !(p.is_finite() && (0.0..1.0).contains(&p)) {
            return Err(AdapterError::config(
                "dropout",
                p,
                "a probability in [0, 1)",
            ));
        }
        self.dropout = DropoutConfig::new(p).init();
        Ok(self)
    }

    /// The dropout probability on the adapter input.
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::Device;
    /// let lora = lastmile_adapters::LoraConfig::new(2, 4.0).with_dropout(0.05).init(3, 5, &Device::flex())?;
    /// assert_eq!(lora.dropout_prob(), 0.05);
    /// # }
    /// # Ok::<(), lastmile_adapters::AdapterError>(())
    /// ```
    pub fn dropout_prob(&self) -> f64 {
        self.dropout.prob
    }

    /// Rank `r`.
    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// Input width `in`.
    pub fn d_in(&self) -> usize {
        self.a.dims()[1]
    }

    /// Output width `out`.
    pub fn d_out(&self) -> usize {
        self.b.dims()[0]
    }

    /// Scaling numerator `α`.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Whether rsLoRA scaling is used.
    pub fn use_rslora(&self) -> bool {
        self.use_rslora
    }

    /// The scale `s` (`α/r` or `α/√r`).
    pub fn scaling(&self) -> f64 {
        scaling(self.alpha, self.rank(), self.use_rslora)
    }

    /// `ΔW = s · B A`, shape `[out, in]`.
    pub fn delta_weight(&self) -> Tensor<2> {
        self.b.val().matmul(self.a.val()).mul_scalar(self.scaling())
    }

    /// The adapter's contribution `s · B A dropout(x)` for `x: [..., in]`
    /// (the unmerged path: two thin matmuls, never the dense `ΔW`).
    pub fn forward_delta<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let x = self.dropout.forward(x);
        low_rank_apply(x, self.a.val(), self.b.val(), self.scaling())
    }

    /// Number of trainable values, `r · (in + out)`.
    pub fn trainable_params(&self) -> usize {
        self.rank() * (self.d_in() + self.d_out())
    }
}
