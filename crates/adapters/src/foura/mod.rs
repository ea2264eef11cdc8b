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

mod config;
mod folded;
mod gate;
mod peft;

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use lastmile_core::validate::check_finite;

use crate::error::{AdapterError, Result};
use crate::lora::Lora;
use crate::low_rank::{flatten, scaling, unflatten};
use crate::transform::SpectralTransform;
pub use config::{FouraConfig, GateMode};
pub use folded::FoldedFoura;
pub use gate::RankGate;

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
        config.validate(d_in, d_out)?;
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
            seed: None,
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
