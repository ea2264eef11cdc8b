//! FouRA: Fourier low-rank adaptation (Borse et al., NeurIPS 2024,
//! arXiv 2406.08798).
//!
//! Eq. (3)–(5) of the paper, in PEFT shapes (`W0: [out, in]`):
//!
//! ```text
//! z  = A · F_in(x)                      A: [r, in]
//! y  = W0 x + F_out⁻¹( s · B · (G(z) ⊙ z) )   B: [out, r]
//! ```
//!
//! `F` is an orthonormal transform along the feature axis
//! ([`SpectralTransform`]: DCT-II by default, real DFT as an option). Because
//! `F` is linear and orthonormal, the transforms fold into the factors,
//! `A' = A·T_in` and `B' = T_outᵀ·B`, so the forward costs a LoRA forward
//! plus an `O(r·n²)` fold per call (not per sample) and stays differentiable
//! on every backend.
//!
//! # The adaptive rank gate (design choice)
//!
//! The paper gates rank components per input with an entropy-based learnable
//! function passed through a sigmoid and thresholded; its exact thresholds
//! are not public. This crate uses, for each input row with low-rank
//! activations `z ∈ ℝʳ`:
//!
//! - energy shares `p_i = z_i² / (Σ_j z_j² + ε)` and their normalised entropy
//!   `H = −Σ p_i ln p_i / ln r` (0 = one component carries everything,
//!   1 = energy spread evenly);
//! - a per-component score `σ(w_i · r·p_i + u_i · H + c_i)` with learnable
//!   `w, u, c ∈ ℝʳ` (3r parameters; the gate costs `O(r)` per row, far below
//!   the `O(r·(in+out))` of the projections);
//! - a hard mask `m_i = [score_i > τ]` with `τ = 0.5` by default. Training
//!   uses the straight-through estimator `m + (σ − stopgrad(σ))`: the forward
//!   value is exactly the hard mask, the backward pass sees the sigmoid's
//!   gradient. `c` starts at `+2` (`σ(2) ≈ 0.88 > τ`) with `w = u = 0`, so
//!   every component is on at initialisation and the gate learns to switch
//!   components off.
//!
//! [`GateMode::Frozen`] fixes the mask to the components that were on for at
//! least half of a calibration batch ([`Foura::freeze_gate`]); the adapter is
//! then the linear map `ΔW = s·T_outᵀ B diag(m) A T_in` and can be merged.

use burn::module::{Module, Param};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Distribution, Tensor};
use lastmile_core::validate::check_finite;

use crate::error::{AdapterError, Result};
use crate::lora::{Lora, flatten, scaling, unflatten, validate_rank_alpha};
use crate::transform::SpectralTransform;

mod folded;

pub use folded::FoldedFoura;

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
        }
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

    /// Checks the hyper-parameters against a `[d_out, d_in]` weight.
    ///
    /// # Errors
    /// [`AdapterError::InvalidConfig`] for a bad rank, `alpha` or threshold,
    /// or a feature width above [`crate::transform::MAX_TRANSFORM_SIZE`].
    ///
    /// ```
    /// let c = lastmile_adapters::FouraConfig::new(4, 4.0).with_threshold(1.5);
    /// assert!(c.validate(8, 8).is_err());
    /// ```
    pub fn validate(&self, d_out: usize, d_in: usize) -> Result<()> {
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

    /// A fresh adapter for a `[d_out, d_in]` weight: `A` Kaiming-uniform
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
    /// let foura = FouraConfig::new(2, 2.0).init(4, 6, &device).unwrap();
    /// let y = foura.forward_delta(Tensor::<2>::ones([3, 6], &device));
    /// assert_eq!(y.dims(), [3, 4]);
    /// assert_eq!(y.abs().sum().into_scalar::<f32>(), 0.0);
    /// # }
    /// ```
    pub fn init(&self, d_out: usize, d_in: usize, device: &Device) -> Result<Foura> {
        self.validate(d_out, d_in)?;
        let bound = 1.0 / (d_in as f64).sqrt();
        let a = Tensor::random(
            [self.rank, d_in],
            Distribution::Uniform(-bound, bound),
            device,
        );
        let b = Tensor::zeros([d_out, self.rank], device);
        Foura::build(a, b, self, device)
    }
}

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
    fn new(rank: usize, device: &Device) -> Self {
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
fn gate_features(z: Tensor<2>, r: usize) -> (Tensor<2>, Tensor<2>) {
    let e = z.clone() * z;
    let total = e.clone().sum_dim(1).add_scalar(ENERGY_EPS);
    let p = e / total;
    let log_r = if r > 1 { (r as f64).ln() } else { 1.0 };
    let h = (p.clone() * p.clone().add_scalar(ENERGY_EPS).log())
        .sum_dim(1)
        .div_scalar(-log_r);
    (p.mul_scalar(r as f64), h)
}

/// A FouRA adapter for one `[out, in]` linear map.
#[derive(Module, Debug)]
pub struct Foura {
    /// Down-projection in the frequency domain of the input, `[r, in]`.
    pub a: Param<Tensor<2>>,
    /// Up-projection into the frequency domain of the output, `[out, r]`.
    pub b: Param<Tensor<2>>,
    /// The adaptive rank gate.
    pub gate: RankGate,
    t_in: Option<Tensor<2>>,
    t_out: Option<Tensor<2>>,
    frozen_mask: Tensor<1>,
    #[module(skip)]
    transform: SpectralTransform,
    #[module(skip)]
    mode: GateMode,
    alpha: f64,
    threshold: f64,
}

impl Foura {
    fn build(a: Tensor<2>, b: Tensor<2>, config: &FouraConfig, device: &Device) -> Result<Self> {
        let [r, d_in] = a.dims();
        let [d_out, _] = b.dims();
        let matrix = |n: usize| -> Result<Option<Tensor<2>>> {
            Ok(match config.transform {
                SpectralTransform::Identity => None,
                t => Some(t.matrix_tensor(n, device)?),
            })
        };
        Ok(Self {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            gate: RankGate::new(r, device),
            t_in: matrix(d_in)?,
            t_out: matrix(d_out)?,
            frozen_mask: Tensor::ones([r], device),
            transform: config.transform,
            mode: config.gate,
            alpha: config.alpha,
            threshold: config.threshold,
        })
    }

    /// An adapter from given frequency-domain factors `A: [r, in]`,
    /// `B: [out, r]`; the gate starts open (for [`GateMode::Frozen`]: all ones).
    ///
    /// # Errors
    /// Shape disagreement, invalid config, non-finite factors.
    pub fn from_factors(a: Tensor<2>, b: Tensor<2>, config: &FouraConfig) -> Result<Self> {
        let [r, d_in] = a.dims();
        let [d_out, rb] = b.dims();
        if rb != r || r != config.rank {
            return Err(AdapterError::shape(
                "FouRA B",
                format!(
                    "[out, r] with r = {} (config) = rows of A ({r})",
                    config.rank
                ),
                &[d_out, rb],
            ));
        }
        config.validate(d_out, d_in)?;
        check_finite("FouRA A", &a)?;
        check_finite("FouRA B", &b)?;
        let device = a.device();
        Self::build(a, b, config, &device)
    }

    /// Rank `r`.
    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.a.dims()[1]
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.b.dims()[0]
    }

    /// The scale `s = α / r`.
    pub fn scaling(&self) -> f64 {
        scaling(self.alpha, self.rank(), false)
    }

    /// The configuration this adapter runs with.
    pub fn config(&self) -> FouraConfig {
        FouraConfig {
            rank: self.rank(),
            alpha: self.alpha,
            transform: self.transform,
            gate: self.mode,
            threshold: self.threshold,
        }
    }

    /// The gate mode.
    pub fn gate_mode(&self) -> GateMode {
        self.mode
    }

    /// The fixed mask used by [`GateMode::Frozen`], `[r]`.
    pub fn frozen_mask(&self) -> Tensor<1> {
        self.frozen_mask.clone()
    }

    /// Sets the gate mode (switching to [`GateMode::Frozen`] uses the current
    /// frozen mask: all ones until [`Foura::freeze_gate`] or
    /// [`Foura::with_frozen_mask`] sets one).
    pub fn with_gate_mode(mut self, mode: GateMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the frozen mask and switches to [`GateMode::Frozen`].
    ///
    /// # Errors
    /// [`AdapterError::Shape`] unless `mask` is `[r]` of zeros and ones.
    pub fn with_frozen_mask(mut self, mask: Tensor<1>) -> Result<Self> {
        let [r] = mask.dims();
        if r != self.rank() {
            return Err(AdapterError::shape(
                "frozen mask",
                format!("[{}]", self.rank()),
                &[r],
            ));
        }
        let binary = mask
            .clone()
            .equal_elem(0.0)
            .bool_or(mask.clone().equal_elem(1.0))
            .all();
        if !binary.into_scalar::<bool>() {
            return Err(AdapterError::config(
                "frozen mask",
                "non-binary values",
                "entries in {0, 1}",
            ));
        }
        self.frozen_mask = mask.to_device(&self.a.device());
        self.mode = GateMode::Frozen;
        Ok(self)
    }

    /// Freezes the gate: the mask keeps the rank components that the adaptive
    /// gate switches on for at least half of the rows of `calibration: [N, in]`.
    ///
    /// # Errors
    /// [`AdapterError::Shape`] if `calibration` is not `[N, in]` with `N > 0`.
    pub fn freeze_gate(self, calibration: Tensor<2>) -> Result<Self> {
        let [n, d] = calibration.dims();
        if n == 0 || d != self.d_in() {
            return Err(AdapterError::shape(
                "calibration batch",
                format!("[N > 0, {}]", self.d_in()),
                &[n, d],
            ));
        }
        let (a, _) = self.effective_factors();
        let z = calibration.matmul(a.transpose()).detach();
        let on = self
            .gate
            .mask(z, self.threshold)
            .detach()
            .mean_dim(0)
            .squeeze_dim::<1>(0);
        let mask = on.greater_equal_elem(0.5).float();
        self.with_frozen_mask(mask)
    }

    /// The transform-folded factors `(A·T_in, T_outᵀ·B)`.
    pub fn effective_factors(&self) -> (Tensor<2>, Tensor<2>) {
        let a = match &self.t_in {
            None => self.a.val(),
            Some(t) => self.a.val().matmul(t.clone()),
        };
        let b = match &self.t_out {
            None => self.b.val(),
            Some(t) => t.clone().transpose().matmul(self.b.val()),
        };
        (a, b)
    }

    /// The adapter's contribution `F_out⁻¹(s · B (G(z) ⊙ z))`, `z = A F_in(x)`,
    /// for `x: [..., in]`.
    pub fn forward_delta<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let (x2, lead) = flatten(x);
        let (a, b) = self.effective_factors();
        let z = x2.matmul(a.transpose());
        let z = match self.mode {
            GateMode::Off => z,
            GateMode::Frozen => z * self.frozen_mask.clone().unsqueeze_dim::<2>(0),
            GateMode::Adaptive => {
                let m = self.gate.mask(z.clone(), self.threshold);
                z * m
            }
        };
        unflatten(z.matmul(b.transpose()).mul_scalar(self.scaling()), &lead)
    }

    /// The fraction of rank components the adaptive gate keeps on `x: [N, in]`
    /// (1.0 for [`GateMode::Off`]; the frozen mask's mean for [`GateMode::Frozen`]).
    pub fn active_rank_fraction(&self, x: Tensor<2>) -> f32 {
        match self.mode {
            GateMode::Off => 1.0,
            GateMode::Frozen => self.frozen_mask.clone().mean().into_scalar::<f32>(),
            GateMode::Adaptive => {
                let (a, _) = self.effective_factors();
                let z = x.matmul(a.transpose());
                self.gate
                    .mask(z, self.threshold)
                    .mean()
                    .into_scalar::<f32>()
            }
        }
    }

    /// `ΔW = s · T_outᵀ B diag(m) A T_in`, `[out, in]`.
    ///
    /// # Errors
    /// [`AdapterError::Unsupported`] for [`GateMode::Adaptive`]: an
    /// input-dependent gate is not a fixed linear map (freeze it first).
    pub fn delta_weight(&self) -> Result<Tensor<2>> {
        self.check_fixed_gate()?;
        Ok(self.fixed_gate_delta_weight())
    }

    fn check_fixed_gate(&self) -> Result<()> {
        if self.mode == GateMode::Adaptive {
            return Err(AdapterError::unsupported(
                "merge",
                "FouRA (adaptive gate)",
                "the gate depends on the input; call `freeze_gate` or set GateMode::Off first",
            ));
        }
        Ok(())
    }

    pub(crate) fn mergeable_factors(&self) -> Result<(Tensor<2>, Tensor<2>)> {
        self.check_fixed_gate()?;
        Ok(self.fixed_gate_factors())
    }

    /// `ΔW` of a gate that is not [`GateMode::Adaptive`] (the caller has
    /// checked, e.g. through [`crate::Adapter::is_mergeable`]); equal to
    /// [`Foura::delta_weight`] whenever that succeeds.
    pub(crate) fn fixed_gate_delta_weight(&self) -> Tensor<2> {
        let (a, b) = self.fixed_gate_factors();
        b.matmul(a).mul_scalar(self.scaling())
    }

    /// The factors `(A·T_in, T_outᵀ·B·diag(m))` of `ΔW = s·T_outᵀ B diag(m) A T_in`
    /// (module docs) with the fixed mask `m`: all ones for [`GateMode::Off`],
    /// the frozen mask for [`GateMode::Frozen`].
    fn fixed_gate_factors(&self) -> (Tensor<2>, Tensor<2>) {
        let (a, b) = self.effective_factors();
        match self.mode {
            GateMode::Off => (a, b),
            // `Adaptive` never reaches here (every caller excludes it); it is
            // listed with `Frozen` only to keep the match exhaustive.
            GateMode::Frozen | GateMode::Adaptive => {
                (a, b * self.frozen_mask.clone().unsqueeze_dim::<2>(0))
            }
        }
    }

    /// The equivalent LoRA adapter (same `α` and rank, factors `A·T_in` and
    /// `T_outᵀ·B·diag(m)`): exact for a frozen or disabled gate.
    ///
    /// # Errors
    /// As [`Foura::delta_weight`].
    pub fn to_lora(&self) -> Result<Lora> {
        let (a, b) = self.mergeable_factors()?;
        Lora::from_factors(a.detach(), b.detach(), self.alpha, false)
    }

    /// Trainable values: `r·(in + out)`, plus the gate's `3r` when adaptive.
    pub fn trainable_params(&self) -> usize {
        let r = self.rank();
        r * (self.d_in() + self.d_out())
            + if self.mode == GateMode::Adaptive {
                3 * r
            } else {
                0
            }
    }

    /// The transform.
    pub fn transform(&self) -> SpectralTransform {
        self.transform
    }

    /// Scaling numerator `α`.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Gate threshold `τ`.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }
}
