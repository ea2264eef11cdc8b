//! LoRA: low-rank adaptation of a frozen linear map (Hu et al. 2021,
//! arXiv 2106.09685), with rsLoRA scaling (Kalajdzievski 2023,
//! arXiv 2312.03732) and PiSSA initialisation (Meng et al. 2024,
//! arXiv 2404.02948).
//!
//! Shapes follow PEFT / PyTorch: the adapted weight is `W0: [out, in]`,
//! `A: [r, in]`, `B: [out, r]`, and (eq. 3 of the LoRA paper)
//! `y = W0 x + s · B A x` with `s = α / r` (rsLoRA: `s = α / √r`).

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Device, Distribution, Tensor};
use lastmile_core::linalg::svd;
use lastmile_core::validate::check_finite;

use crate::error::{AdapterError, Result};

/// How the LoRA factors are initialised. In every case the adapted map
/// equals the base map at initialisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LoraInit {
    /// PEFT's default: `A ~ U(−1/√in, 1/√in)` (Kaiming-uniform with
    /// `a = √5`), `B = 0`.
    #[default]
    KaimingUniform,
    /// PEFT's `"gaussian"`: `A ~ N(0, 1/r)`, `B = 0`.
    Gaussian,
    /// PiSSA: `A`, `B` from the top-`r` singular triplets of `W0`, and `W0`
    /// replaced by the residual `W0 − s·BA` (see [`LoraConfig::init_pissa`]).
    Pissa,
}

/// Hyper-parameters of a LoRA adapter.
///
/// # Examples
/// ```
/// use lastmile_adapters::LoraConfig;
/// let config = LoraConfig::new(8, 16.0).with_rslora(true);
/// assert!((config.scaling() - 16.0 / 8f64.sqrt()).abs() < 1e-12);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank `r` of the update (> 0).
    pub rank: usize,
    /// Scaling numerator `α` (finite, > 0).
    pub alpha: f64,
    /// rsLoRA: scale by `α/√r` instead of `α/r`.
    pub use_rslora: bool,
    /// Dropout probability on the adapter's input, in `[0, 1)`.
    pub dropout: f64,
    /// Initialisation scheme.
    pub init: LoraInit,
}

impl LoraConfig {
    /// A config with rank `rank`, scale numerator `alpha`, no dropout,
    /// Kaiming-uniform init and the classic `α/r` scaling.
    ///
    /// ```
    /// let c = lastmile_adapters::LoraConfig::new(4, 8.0);
    /// assert_eq!(c.scaling(), 2.0);
    /// ```
    pub fn new(rank: usize, alpha: f64) -> Self {
        Self {
            rank,
            alpha,
            use_rslora: false,
            dropout: 0.0,
            init: LoraInit::KaimingUniform,
        }
    }

    /// Sets rsLoRA scaling.
    ///
    /// ```
    /// let c = lastmile_adapters::LoraConfig::new(4, 8.0).with_rslora(true);
    /// assert_eq!(c.scaling(), 4.0);
    /// ```
    pub fn with_rslora(mut self, use_rslora: bool) -> Self {
        self.use_rslora = use_rslora;
        self
    }

    /// Sets the dropout probability on the adapter input.
    ///
    /// ```
    /// let c = lastmile_adapters::LoraConfig::new(4, 8.0).with_dropout(0.1);
    /// assert_eq!(c.dropout, 0.1);
    /// ```
    pub fn with_dropout(mut self, dropout: f64) -> Self {
        self.dropout = dropout;
        self
    }

    /// Sets the initialisation scheme.
    ///
    /// ```
    /// use lastmile_adapters::{LoraConfig, LoraInit};
    /// let c = LoraConfig::new(4, 8.0).with_init(LoraInit::Gaussian);
    /// assert_eq!(c.init, LoraInit::Gaussian);
    /// ```
    pub fn with_init(mut self, init: LoraInit) -> Self {
        self.init = init;
        self
    }

    /// The scale `s` applied to `BA`: `α/r`, or `α/√r` with rsLoRA.
    ///
    /// ```
    /// assert_eq!(lastmile_adapters::LoraConfig::new(2, 4.0).scaling(), 2.0);
    /// ```
    pub fn scaling(&self) -> f64 {
        scaling(self.alpha, self.rank, self.use_rslora)
    }

    /// Checks the hyper-parameters against a `[d_out, d_in]` weight.
    ///
    /// # Errors
    /// [`AdapterError::InvalidConfig`] for `rank == 0`, a rank above
    /// `min(d_out, d_in)` (an update of that rank cannot exist), a non-finite or
    /// non-positive `alpha`, or a dropout outside `[0, 1)`.
    ///
    /// ```
    /// let c = lastmile_adapters::LoraConfig::new(4, 8.0);
    /// assert!(c.validate(16, 16).is_ok());
    /// assert!(c.validate(16, 2).is_err());
    /// ```
    pub fn validate(&self, d_out: usize, d_in: usize) -> Result<()> {
        validate_rank_alpha(self.rank, self.alpha, d_out, d_in)?;
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return Err(AdapterError::config(
                "dropout",
                self.dropout,
                "a probability in [0, 1)",
            ));
        }
        Ok(())
    }

    /// A fresh adapter for a `[d_out, d_in]` weight, drawn from the device's
    /// random generator (seed it with `device.seed(..)` for reproducibility).
    ///
    /// # Errors
    /// As [`LoraConfig::validate`]; [`AdapterError::Unsupported`] for
    /// [`LoraInit::Pissa`], which needs the weight: use [`LoraConfig::init_pissa`].
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::{Device, Tensor};
    /// use lastmile_adapters::LoraConfig;
    /// let device = Device::flex();
    /// let lora = LoraConfig::new(2, 4.0).init(3, 5, &device).unwrap();
    /// assert_eq!(lora.a.val().dims(), [2, 5]);
    /// // B = 0: the adapter adds nothing yet.
    /// let delta = lora.forward_delta(Tensor::<2>::ones([1, 5], &device));
    /// assert_eq!(delta.abs().sum().into_scalar::<f32>(), 0.0);
    /// # }
    /// ```
    pub fn init(&self, d_out: usize, d_in: usize, device: &Device) -> Result<Lora> {
        self.validate(d_out, d_in)?;
        let r = self.rank;
        let a = match self.init {
            LoraInit::KaimingUniform => {
                let bound = 1.0 / (d_in as f64).sqrt();
                Tensor::random([r, d_in], Distribution::Uniform(-bound, bound), device)
            }
            LoraInit::Gaussian => {
                Tensor::random([r, d_in], Distribution::Normal(0.0, 1.0 / r as f64), device)
            }
            LoraInit::Pissa => {
                return Err(AdapterError::unsupported(
                    "initialise",
                    "LoRA (PiSSA)",
                    "PiSSA factors come from the base weight's SVD: call `init_pissa(w0)`",
                ));
            }
        };
        let b = Tensor::zeros([d_out, r], device);
        Lora::build(a, b, self.alpha, self.use_rslora, self.dropout)
    }

    /// PiSSA initialisation: with `W0 = U Σ Vᵀ`, `A = √(Σ_r/s) V_rᵀ`,
    /// `B = U_r √(Σ_r/s)` so that `s·BA` is the best rank-`r` approximation of
    /// `W0`; returns the adapter and the residual `W0 − s·BA` that replaces
    /// the base weight (so `residual + s·BA = W0` at init).
    ///
    /// # Errors
    /// As [`LoraConfig::validate`], plus non-finite weights.
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::{Device, Distribution, Tensor};
    /// use lastmile_adapters::{LoraConfig, LoraInit};
    /// let device = Device::flex();
    /// let w0 = Tensor::<2>::random([6, 4], Distribution::Normal(0.0, 1.0), &device);
    /// let (lora, residual) = LoraConfig::new(2, 2.0).with_init(LoraInit::Pissa).init_pissa(w0.clone()).unwrap();
    /// let err = (residual + lora.delta_weight() - w0).abs().max().into_scalar::<f32>();
    /// assert!(err < 1e-5);
    /// # }
    /// ```
    pub fn init_pissa(&self, w0: Tensor<2>) -> Result<(Lora, Tensor<2>)> {
        let [d_out, d_in] = w0.dims();
        self.validate(d_out, d_in)?;
        check_finite("base weight", &w0)?;
        let r = self.rank;
        let s = self.scaling();
        let dec = svd(w0.clone())?;
        let root = dec.s.slice(0..r).div_scalar(s).sqrt();
        let a = dec.vt.slice([0..r, 0..d_in]) * root.clone().unsqueeze_dim::<2>(1);
        let b = dec.u.slice([0..d_out, 0..r]) * root.unsqueeze_dim::<2>(0);
        let lora = Lora::build(a, b, self.alpha, self.use_rslora, self.dropout)?;
        let residual = w0 - lora.delta_weight();
        Ok((lora, residual))
    }
}

pub(crate) fn scaling(alpha: f64, rank: usize, use_rslora: bool) -> f64 {
    if use_rslora {
        alpha / (rank as f64).sqrt()
    } else {
        alpha / rank as f64
    }
}

pub(crate) fn validate_rank_alpha(
    rank: usize,
    alpha: f64,
    d_out: usize,
    d_in: usize,
) -> Result<()> {
    if d_out == 0 || d_in == 0 {
        return Err(AdapterError::shape(
            "base weight",
            "[out, in] with out, in > 0",
            &[d_out, d_in],
        ));
    }
    if rank == 0 || rank > d_out.min(d_in) {
        return Err(AdapterError::config(
            "rank",
            rank,
            &format!("an integer in [1, min(out, in)] = [1, {}]", d_out.min(d_in)),
        ));
    }
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(AdapterError::config("alpha", alpha, "a finite value > 0"));
    }
    Ok(())
}

/// `s · (x Aᵀ) Bᵀ` on the last axis of `x` — the shared low-rank path of LoRA
/// and FouRA (which passes its transform-folded factors).
pub(crate) fn low_rank_apply<const D: usize>(
    x: Tensor<D>,
    a: Tensor<2>,
    b: Tensor<2>,
    s: f64,
) -> Tensor<D> {
    let (x2, lead) = flatten(x);
    let out = x2.matmul(a.transpose()).matmul(b.transpose()).mul_scalar(s);
    unflatten(out, &lead)
}

/// `[..., n] → ([N, n], leading dims)`.
pub(crate) fn flatten<const D: usize>(x: Tensor<D>) -> (Tensor<2>, Vec<usize>) {
    let dims = x.dims();
    let n = dims[D - 1];
    let lead: Vec<usize> = dims[..D - 1].to_vec();
    let rows = lead.iter().product::<usize>();
    (x.reshape([rows, n]), lead)
}

/// Inverse of [`flatten`] for an output with a new last dimension.
pub(crate) fn unflatten<const D: usize>(y: Tensor<2>, lead: &[usize]) -> Tensor<D> {
    let [_, m] = y.dims();
    let mut shape = [0usize; D];
    shape[..D - 1].copy_from_slice(lead);
    shape[D - 1] = m;
    y.reshape(shape)
}

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
