//! One type over every adapter kind, and a wrapper that adapts a
//! `burn::nn::Linear`.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;
use lastmile_core::host::add_matmul;

use crate::error::{AdapterError, Result};
use crate::foura::{Foura, GateMode};
use crate::layout::WeightLayout;
use crate::lora::Lora;
use crate::peft::PeftMapping;
use crate::shira::Shira;

/// The family an adapter belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum AdapterKind {
    /// Low-rank ([`Lora`]).
    Lora,
    /// Low-rank in the frequency domain with a rank gate ([`Foura`]).
    Foura,
    /// Sparse high-rank ([`Shira`]).
    Shira,
}

impl AdapterKind {
    /// Display name (`"LoRA"`, `"FouRA"`, `"SHiRA"`).
    ///
    /// ```
    /// assert_eq!(lastmile_adapters::AdapterKind::Shira.name(), "SHiRA");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Self::Lora => "LoRA",
            Self::Foura => "FouRA",
            Self::Shira => "SHiRA",
        }
    }
}

/// What every adapter kind is: an update `ΔW` of one `[out, in]` linear
/// map, applied unmerged by [`LinearAdapter::forward_delta`] or merged as
/// `W0 + ΔW`, with its own mapping to PEFT's files (the crate's PEFT reader
/// and writer are a generic driver over it, so the trait is sealed).
///
/// Implemented by [`Lora`], [`Foura`] and [`Shira`]; [`Adapter`] holds any
/// of them.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_adapters::{LinearAdapter, LoraConfig, Shira};
///
/// fn describe<A: LinearAdapter>(a: &A) -> String {
///     format!("{:?} [{} → {}], {} trainable", A::KIND, a.d_in(), a.d_out(), a.trainable_params())
/// }
/// let d = Device::flex();
/// let lora = LoraConfig::new(2, 4.0).init(5, 3, &d)?;
/// let shira = Shira::from_parts(vec![0, 7], Tensor::from_floats([1.0, 2.0], &d), 3, 5)?;
/// assert_eq!(describe(&lora), "Lora [5 → 3], 16 trainable");
/// assert_eq!(describe(&shira), "Shira [5 → 3], 2 trainable");
/// # }
/// # Ok::<(), lastmile_adapters::AdapterError>(())
/// ```
pub trait LinearAdapter: Module + Into<Adapter> + PeftMapping {
    /// The kind.
    const KIND: AdapterKind;
    /// Input width.
    fn d_in(&self) -> usize;
    /// Output width.
    fn d_out(&self) -> usize;
    /// `ΔW`, `[out, in]`.
    ///
    /// # Errors
    /// [`AdapterError::Unsupported`] where `ΔW` depends on the input
    /// (FouRA with an adaptive gate).
    fn delta_weight(&self) -> Result<Tensor<2>>;
    /// The contribution to `y` for `x: [..., in]` (the unmerged path).
    fn forward_delta<const D: usize>(&self, x: Tensor<D>) -> Tensor<D>;
    /// Number of trainable values.
    fn trainable_params(&self) -> usize;
}

impl LinearAdapter for Lora {
    const KIND: AdapterKind = AdapterKind::Lora;
    fn d_in(&self) -> usize {
        Lora::d_in(self)
    }
    fn d_out(&self) -> usize {
        Lora::d_out(self)
    }
    fn delta_weight(&self) -> Result<Tensor<2>> {
        Ok(Lora::delta_weight(self))
    }
    fn forward_delta<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        Lora::forward_delta(self, x)
    }
    fn trainable_params(&self) -> usize {
        Lora::trainable_params(self)
    }
}

impl LinearAdapter for Foura {
    const KIND: AdapterKind = AdapterKind::Foura;
    fn d_in(&self) -> usize {
        Foura::d_in(self)
    }
    fn d_out(&self) -> usize {
        Foura::d_out(self)
    }
    fn delta_weight(&self) -> Result<Tensor<2>> {
        Foura::delta_weight(self)
    }
    fn forward_delta<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        Foura::forward_delta(self, x)
    }
    fn trainable_params(&self) -> usize {
        Foura::trainable_params(self)
    }
}

impl LinearAdapter for Shira {
    const KIND: AdapterKind = AdapterKind::Shira;
    fn d_in(&self) -> usize {
        Shira::d_in(self)
    }
    fn d_out(&self) -> usize {
        Shira::d_out(self)
    }
    fn delta_weight(&self) -> Result<Tensor<2>> {
        Ok(Shira::delta_weight(self))
    }
    fn forward_delta<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        Shira::forward_delta(self, x)
    }
    fn trainable_params(&self) -> usize {
        Shira::trainable_params(self)
    }
}

/// An adapter of any kind for one `[out, in]` linear map.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_adapters::{Adapter, LoraConfig};
/// let device = Device::flex();
/// let adapter = Adapter::Lora(LoraConfig::new(2, 2.0).init(4, 3, &device).unwrap());
/// assert_eq!(adapter.trainable_params(), 2 * (3 + 4));
/// assert_eq!(adapter.delta_weight().unwrap().dims(), [3, 4]);
/// # }
/// ```
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Adapter {
    /// A LoRA adapter.
    Lora(Lora),
    /// A FouRA adapter.
    Foura(Foura),
    /// A SHiRA adapter.
    Shira(Shira),
}

impl From<Lora> for Adapter {
    fn from(a: Lora) -> Self {
        Self::Lora(a)
    }
}

impl From<Foura> for Adapter {
    fn from(a: Foura) -> Self {
        Self::Foura(a)
    }
}

impl From<Shira> for Adapter {
    fn from(a: Shira) -> Self {
        Self::Shira(a)
    }
}

impl Adapter {
    /// The adapter's family.
    pub fn kind(&self) -> AdapterKind {
        match self {
            Self::Lora(_) => AdapterKind::Lora,
            Self::Foura(_) => AdapterKind::Foura,
            Self::Shira(_) => AdapterKind::Shira,
        }
    }

    /// A short description, e.g. `"LoRA r=8"`, `"SHiRA 1.00%"`.
    pub fn describe(&self) -> String {
        match self {
            Self::Lora(a) => format!("LoRA r={}", a.rank()),
            Self::Foura(a) => format!(
                "FouRA r={} {} gate={}",
                a.rank(),
                a.transform().name(),
                a.gate_mode().name()
            ),
            Self::Shira(a) => format!("SHiRA {:.2}%", 100.0 * a.density()),
        }
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        match self {
            Self::Lora(a) => a.d_in(),
            Self::Foura(a) => a.d_in(),
            Self::Shira(a) => a.d_in(),
        }
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        match self {
            Self::Lora(a) => a.d_out(),
            Self::Foura(a) => a.d_out(),
            Self::Shira(a) => a.d_out(),
        }
    }

    /// Whether `ΔW` is a fixed matrix (false only for FouRA with an adaptive gate).
    pub fn is_mergeable(&self) -> bool {
        !matches!(self, Self::Foura(f) if f.gate_mode() == GateMode::Adaptive)
    }

    /// `ΔW`, `[out, in]`.
    ///
    /// # Errors
    /// [`AdapterError::Unsupported`] for FouRA with an adaptive gate.
    pub fn delta_weight(&self) -> Result<Tensor<2>> {
        match self {
            Self::Lora(a) => Ok(a.delta_weight()),
            Self::Foura(a) => a.delta_weight(),
            Self::Shira(a) => Ok(a.delta_weight()),
        }
    }

    /// `ΔW` in the storage layout of a deployed weight.
    ///
    /// # Errors
    /// As [`Adapter::delta_weight`].
    pub fn delta_in_layout(&self, layout: WeightLayout) -> Result<Tensor<2>> {
        Ok(orient(self.delta_weight()?, layout))
    }

    /// `W + c·ΔW` for a weight `W` stored as `layout`: the fuse of every
    /// [`crate::AdaptedModel`] switch (`c = 1`, or a part's weight).
    ///
    /// The low-rank kinds never materialise `ΔW`: `W + c·s·B·A` (or its
    /// transpose) is one rank-r update, which on a CPU device runs as faer's
    /// GEMM accumulating into `W`'s own buffer
    /// ([`lastmile_core::host::add_matmul`]; in place when `W` is uniquely
    /// owned). SHiRA adds its sparse `ΔW` densely.
    ///
    /// # Errors
    /// [`AdapterError::Shape`] when `weight` is not `[out, in]` in `layout`,
    /// [`AdapterError::InvalidConfig`] for a non-finite `c`;
    /// [`AdapterError::Unsupported`] for FouRA with an adaptive gate.
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::{Device, Distribution, Tensor};
    /// use lastmile_adapters::{Adapter, LoraConfig, WeightLayout};
    /// let d = Device::flex();
    /// let mut lora = LoraConfig::new(2, 4.0).init(5, 3, &d)?;
    /// lora.b = lora.b.map(|b| b.random_like(Distribution::Normal(0.0, 1.0)));
    /// let adapter = Adapter::from(lora);
    /// let w = Tensor::<2>::zeros([5, 3], &d); // burn's [in, out]
    /// let fused = adapter.add_scaled_delta(w, WeightLayout::InOut, 2.0)?;
    /// let want = adapter.delta_weight()?.transpose().mul_scalar(2.0);
    /// assert!((fused - want).abs().max().into_scalar::<f32>() < 1e-5);
    /// # }
    /// # Ok::<(), lastmile_adapters::AdapterError>(())
    /// ```
    pub fn add_scaled_delta(
        &self,
        weight: Tensor<2>,
        layout: WeightLayout,
        c: f32,
    ) -> Result<Tensor<2>> {
        let want = layout.shape(self.d_out(), self.d_in());
        if weight.dims() != want {
            return Err(AdapterError::shape(
                "weight to fuse into",
                format!(
                    "{want:?} ([out, in] = [{}, {}] as {layout:?})",
                    self.d_out(),
                    self.d_in()
                ),
                &weight.dims(),
            ));
        }
        if !c.is_finite() {
            return Err(AdapterError::config(
                "fuse coefficient",
                c,
                "a finite value",
            ));
        }
        let (a, b, s) = match self {
            Self::Lora(l) => (l.a.val(), l.b.val(), l.scaling()),
            Self::Foura(f) => {
                let (a, b) = f.mergeable_factors()?;
                (a, b, f.scaling())
            }
            Self::Shira(sh) => {
                return Ok(weight + orient(sh.delta_weight(), layout).mul_scalar(c));
            }
        };
        let alpha = (f64::from(c) * s) as f32;
        let (a, b) = (a.detach(), b.detach());
        Ok(match layout {
            // W[out, in] + α·B·A
            WeightLayout::OutIn => add_matmul(weight, b, a, alpha)?,
            // W[in, out] + α·Aᵀ·Bᵀ
            WeightLayout::InOut => add_matmul(weight, a.transpose(), b.transpose(), alpha)?,
        })
    }

    /// `ΔW` in `layout` for an adapter whose `ΔW` is a fixed matrix.
    ///
    /// Infallible by contract: the only error of [`Adapter::delta_in_layout`]
    /// is FouRA's adaptive gate, and callers hold an adapter for which
    /// [`Adapter::is_mergeable`] was checked and which cannot change since
    /// (the gate mode is a module constant; `WeightAdapter` (the training reparameterisation)
    /// checks it in `new` and keeps its adapter private).
    pub(crate) fn fixed_delta_in_layout(&self, layout: WeightLayout) -> Tensor<2> {
        let d = match self {
            Self::Lora(a) => a.delta_weight(),
            Self::Foura(a) => a.fixed_gate_delta_weight(),
            Self::Shira(a) => a.delta_weight(),
        };
        orient(d, layout)
    }

    /// The adapter's contribution to `y` for `x: [..., in]` (unmerged path).
    pub fn forward_delta<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::Lora(a) => a.forward_delta(x),
            Self::Foura(a) => a.forward_delta(x),
            Self::Shira(a) => a.forward_delta(x),
        }
    }

    /// Number of trainable values.
    pub fn trainable_params(&self) -> usize {
        match self {
            Self::Lora(a) => a.trainable_params(),
            Self::Foura(a) => a.trainable_params(),
            Self::Shira(a) => a.trainable_params(),
        }
    }
}

/// `ΔW: [out, in]` in the storage layout of a deployed weight.
fn orient(delta: Tensor<2>, layout: WeightLayout) -> Tensor<2> {
    match layout {
        WeightLayout::OutIn => delta,
        WeightLayout::InOut => delta.transpose(),
    }
}

/// A frozen `burn::nn::Linear` plus an adapter, computing the **unmerged**
/// forward `base(x) + adapter(x)`: the layer to write into a model's own
/// code when training needs what a weight reparameterisation cannot
/// express — adapter dropout, FouRA's input-dependent gate, PiSSA's
/// residual base. Only the adapter's parameters require gradients.
///
/// Deploying is [`crate::AdaptedModel`]'s job: register the trained
/// `adapter` (for FouRA's adaptive gate, after
/// [`crate::Foura::freeze_gate`]) with the handle over the model built from
/// plain `Linear` layers, and switch it in there.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::nn::LinearConfig;
/// use burn::tensor::{Device, Distribution, Tensor};
/// use lastmile_adapters::{AdaptedLinear, LoraConfig};
/// let device = Device::flex();
/// let base = LinearConfig::new(6, 4).init(&device);
/// let lora = LoraConfig::new(2, 4.0).with_dropout(0.1).init(6, 4, &device).unwrap();
/// let layer = AdaptedLinear::new(base.clone(), lora.into()).unwrap();
/// let x = Tensor::<2>::random([3, 6], Distribution::Normal(0.0, 1.0), &device);
/// // B = 0 at init: exactly the base output
/// let diff = (layer.forward(x.clone()) - base.forward(x)).abs().max().into_scalar::<f32>();
/// assert_eq!(diff, 0.0);
/// # }
/// ```
#[derive(Module, Debug)]
pub struct AdaptedLinear {
    /// The frozen base layer (`weight: [in, out]`, burn's layout).
    pub base: Linear,
    /// The adapter.
    pub adapter: Adapter,
}

impl AdaptedLinear {
    /// Wraps `base`, freezing its parameters.
    ///
    /// # Errors
    /// [`AdapterError::Shape`] if the adapter's `[out, in]` does not match the layer.
    pub fn new(base: Linear, adapter: Adapter) -> Result<Self> {
        let [d_in, d_out] = base.weight.dims();
        if adapter.d_in() != d_in || adapter.d_out() != d_out {
            return Err(AdapterError::shape(
                "adapter for Linear",
                format!("[out, in] = [{d_out}, {d_in}]"),
                &[adapter.d_out(), adapter.d_in()],
            ));
        }
        Ok(Self {
            base: base.no_grad(),
            adapter,
        })
    }

    /// `base(x) + adapter(x)`; `x: [..., in]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.base.forward(x.clone()) + self.adapter.forward_delta(x)
    }

    /// `ΔW`, `[out, in]`.
    ///
    /// # Errors
    /// As [`Adapter::delta_weight`].
    pub fn delta_weight(&self) -> Result<Tensor<2>> {
        self.adapter.delta_weight()
    }

    /// Trainable values of the adapter.
    pub fn trainable_params(&self) -> usize {
        self.adapter.trainable_params()
    }

    /// Values of the base layer (weight and bias).
    pub fn base_params(&self) -> usize {
        self.base.num_params()
    }
}
