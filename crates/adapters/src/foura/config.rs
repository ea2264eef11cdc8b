//! FouRA's hyper-parameters: rank, `α`, transform and gate.

use burn::tensor::{Device, Distribution, Tensor};

use super::Foura;
use crate::error::{AdapterError, Result};
use crate::low_rank::{random_factor, scaling, validate_rank_alpha};
use crate::transform::SpectralTransform;

/// How FouRA's rank gate behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
#[non_exhaustive]
pub enum GateMode {
    /// Input-dependent hard gate, kept at inference (not mergeable).
    #[default]
    Adaptive,
    /// A fixed 0/1 mask learned in training (mergeable).
    Frozen,
    /// No gate: every rank component is always on (mergeable; with the
    /// identity transform this is exactly LoRA).
    Off,
}

impl GateMode {
    /// Short name used in files and reports.
    ///
    /// ```
    /// assert_eq!(lastmile_adapters::GateMode::Frozen.name(), "frozen");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Self::Adaptive => "adaptive",
            Self::Frozen => "frozen",
            Self::Off => "off",
        }
    }

    /// Parses a [`GateMode::name`].
    ///
    /// ```
    /// use lastmile_adapters::GateMode;
    /// assert_eq!(GateMode::from_name("off"), Some(GateMode::Off));
    /// ```
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "adaptive" => Some(Self::Adaptive),
            "frozen" => Some(Self::Frozen),
            "off" => Some(Self::Off),
            _ => None,
        }
    }
}

/// Hyper-parameters of a FouRA adapter.
///
/// One config serves layers of any shape (as PEFT's config serves a whole
/// model through `target_modules`): the layer's shape is given to
/// `init(d_in, d_out, &device)`, in burn's `LinearConfig::new(d_in, d_out)`
/// order, which validates every field against it before drawing anything.
///
/// ```
/// use lastmile_adapters::{FouraConfig, GateMode, SpectralTransform};
/// let c = FouraConfig::new(8, 16.0).with_transform(SpectralTransform::Rfft).with_gate(GateMode::Off);
/// assert_eq!(c.scaling(), 2.0);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct FouraConfig {
    /// Rank `r` (> 0).
    pub rank: usize,
    /// Scaling numerator `α`; the scale is `s = α / r`.
    pub alpha: f64,
    /// Transform along the feature axis.
    pub transform: SpectralTransform,
    /// Gate behaviour.
    pub gate: GateMode,
    /// Gate threshold `τ` in (0, 1).
    pub threshold: f64,
    /// Seed of the random factor `A` (`None`: the device's generator). An
    /// initialisation choice, not part of a trained adapter: files do not
    /// carry it.
    pub seed: Option<u64>,
}

impl FouraConfig {
    /// Rank `rank`, numerator `alpha`, DCT-II, adaptive gate with `τ = 0.5`.
    ///
    /// ```
    /// let c = lastmile_adapters::FouraConfig::new(4, 4.0);
    /// assert_eq!(c.threshold, 0.5);
    /// ```
    pub fn new(rank: usize, alpha: f64) -> Self {
        Self {
            rank,
            alpha,
            transform: SpectralTransform::Dct,
            gate: GateMode::Adaptive,
            threshold: 0.5,
            seed: None,
        }
    }

    /// Draws the random factor from `StdRng::seed_from_u64(seed)`: the same
    /// adapter on every backend and every run.
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::Device;
    /// use lastmile_adapters::FouraConfig;
    /// let d = Device::flex();
    /// let c = FouraConfig::new(2, 4.0).with_seed(7);
    /// let (x, y) = (c.init(5, 3, &d)?, c.init(5, 3, &d)?);
    /// assert_eq!(x.a.val().into_data(), y.a.val().into_data());
    /// # }
    /// # Ok::<(), lastmile_adapters::AdapterError>(())
    /// ```
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Sets the transform.
    ///
    /// ```
    /// use lastmile_adapters::{FouraConfig, SpectralTransform};
    /// let c = FouraConfig::new(4, 4.0).with_transform(SpectralTransform::Identity);
    /// assert_eq!(c.transform, SpectralTransform::Identity);
    /// ```
    pub fn with_transform(mut self, transform: SpectralTransform) -> Self {
        self.transform = transform;
        self
    }

    /// Sets the gate mode.
    ///
    /// ```
    /// use lastmile_adapters::{FouraConfig, GateMode};
    /// assert_eq!(FouraConfig::new(4, 4.0).with_gate(GateMode::Off).gate, GateMode::Off);
    /// ```
    pub fn with_gate(mut self, gate: GateMode) -> Self {
        self.gate = gate;
        self
    }

    /// Sets the gate threshold `τ`.
    ///
    /// ```
    /// assert_eq!(lastmile_adapters::FouraConfig::new(4, 4.0).with_threshold(0.3).threshold, 0.3);
    /// ```
    pub fn with_threshold(mut self, threshold: f64) -> Self {
        self.threshold = threshold;
        self
    }

    /// The scale `s = α / r`.
    ///
    /// ```
    /// assert_eq!(lastmile_adapters::FouraConfig::new(4, 2.0).scaling(), 0.5);
    /// ```
    pub fn scaling(&self) -> f64 {
        scaling(self.alpha, self.rank, false)
    }

    /// Checks the hyper-parameters against a layer of `d_in` inputs and
    /// `d_out` outputs (burn's `LinearConfig::new(d_in, d_out)` order).
    ///
    /// # Errors
    /// [`AdapterError::InvalidConfig`] for a bad rank, `alpha` or threshold,
    /// or a feature width above [`crate::transform::MAX_TRANSFORM_SIZE`].
    ///
    /// ```
    /// let c = lastmile_adapters::FouraConfig::new(4, 4.0).with_threshold(1.5);
    /// assert!(c.validate(8, 8).is_err());
    /// ```
    pub fn validate(&self, d_in: usize, d_out: usize) -> Result<()> {
        validate_rank_alpha(self.rank, self.alpha, d_out, d_in)?;
        if !(self.threshold.is_finite() && self.threshold > 0.0 && self.threshold < 1.0) {
            return Err(AdapterError::config(
                "threshold",
                self.threshold,
                "a value in (0, 1)",
            ));
        }
        let max = crate::transform::MAX_TRANSFORM_SIZE;
        if self.transform != SpectralTransform::Identity && d_in.max(d_out) > max {
            return Err(AdapterError::config(
                "layer width",
                d_in.max(d_out),
                &format!("at most {max} for a spectral transform"),
            ));
        }
        Ok(())
    }

    /// A fresh adapter for a layer of `d_in` inputs and `d_out` outputs
    /// (burn's order; the adapter itself is `[out, in]`, as PEFT stores it): `A` Kaiming-uniform
    /// (as LoRA), `B = 0`, gate open everywhere.
    ///
    /// # Errors
    /// As [`FouraConfig::validate`].
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::{Device, Tensor};
    /// use lastmile_adapters::FouraConfig;
    /// let device = Device::flex();
    /// let foura = FouraConfig::new(2, 2.0).init(6, 4, &device).unwrap();
    /// let y = foura.forward_delta(Tensor::<2>::ones([3, 6], &device));
    /// assert_eq!(y.dims(), [3, 4]);
    /// assert_eq!(y.abs().sum().into_scalar::<f32>(), 0.0);
    /// # }
    /// ```
    pub fn init(&self, d_in: usize, d_out: usize, device: &Device) -> Result<Foura> {
        self.validate(d_in, d_out)?;
        let bound = 1.0 / (d_in as f64).sqrt();
        let a = random_factor(
            [self.rank, d_in],
            Distribution::Uniform(-bound, bound),
            self.seed,
            device,
        );
        let b = Tensor::zeros([d_out, self.rank], device);
        Foura::build(a, b, self, device)
    }
}
