//! LoRA's hyper-parameters and initialisations (Kaiming-uniform, gaussian,
//! PiSSA).

use burn::tensor::{Device, Distribution, Tensor};
use lastmile_core::linalg::svd;
use lastmile_core::validate::check_finite;

use super::Lora;
use crate::error::{AdapterError, Result};
use crate::low_rank::{random_factor, scaling, validate_rank_alpha};

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
/// One config serves layers of any shape (as PEFT's config serves a whole
/// model through `target_modules`): the layer's shape is given to
/// `init(d_in, d_out, &device)`, in burn's `LinearConfig::new(d_in, d_out)`
/// order, which validates every field against it before drawing anything.
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
    /// Seed of the random factor `A` (`None`: the device's generator, as
    /// burn's own layers draw). An initialisation choice, not part of a
    /// trained adapter: PEFT files do not carry it.
    pub seed: Option<u64>,
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
            seed: None,
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

    /// Draws the random factor `A` from `StdRng::seed_from_u64(seed)`: the
    /// same adapter on every backend and every run, whatever else used the
    /// device's generator.
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::Device;
    /// use lastmile_adapters::LoraConfig;
    /// let d = Device::flex();
    /// let c = LoraConfig::new(2, 4.0).with_seed(7);
    /// let (x, y) = (c.init(5, 3, &d)?, c.init(5, 3, &d)?);
    /// assert_eq!(x.a.val().into_data(), y.a.val().into_data());
    /// # }
    /// # Ok::<(), lastmile_adapters::AdapterError>(())
    /// ```
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
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

    /// Checks the hyper-parameters against a layer of `d_in` inputs and
    /// `d_out` outputs (burn's `LinearConfig::new(d_in, d_out)` order).
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
    pub fn validate(&self, d_in: usize, d_out: usize) -> Result<()> {
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

    /// A fresh adapter for a layer of `d_in` inputs and `d_out` outputs
    /// (burn's order; the adapter itself is `[out, in]`, as PEFT stores it), drawn from the device's
    /// random generator, or from [`LoraConfig::with_seed`]'s seed when set.
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
    /// let lora = LoraConfig::new(2, 4.0).init(5, 3, &device).unwrap();
    /// assert_eq!(lora.a.val().dims(), [2, 5]);
    /// // B = 0: the adapter adds nothing yet.
    /// let delta = lora.forward_delta(Tensor::<2>::ones([1, 5], &device));
    /// assert_eq!(delta.abs().sum().into_scalar::<f32>(), 0.0);
    /// # }
    /// ```
    pub fn init(&self, d_in: usize, d_out: usize, device: &Device) -> Result<Lora> {
        self.validate(d_in, d_out)?;
        let r = self.rank;
        let a = match self.init {
            LoraInit::KaimingUniform => {
                let bound = 1.0 / (d_in as f64).sqrt();
                random_factor(
                    [r, d_in],
                    Distribution::Uniform(-bound, bound),
                    self.seed,
                    device,
                )
            }
            LoraInit::Gaussian => random_factor(
                [r, d_in],
                Distribution::Normal(0.0, 1.0 / r as f64),
                self.seed,
                device,
            ),
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
        self.validate(d_in, d_out)?;
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
