//! How [`crate::AdaptedModel`] attaches adapters for training: burn's
//! parameter reparameterisation, without changing the module's code.
//!
//! Each selected `<name>.weight` parameter gets a [`WeightAdapter`] and its
//! effective value becomes `W0 + ΔW` (in burn's `[in, out]` layout), so
//! `Linear::forward` picks the adapter up. Every other float parameter of
//! the module (biases, norms, unselected layers) is frozen: only adapter
//! parameters receive gradients.
//!
//! This path materialises `W0 + ΔW` on each forward (as burn's own LoRA
//! does). When the unmerged low-rank or sparse forward, adapter dropout or an
//! input-dependent FouRA gate is wanted, build the model with
//! [`crate::AdaptedLinear`] instead.

use std::collections::{BTreeMap, BTreeSet};

use burn::module::{Module, Param, Reparameterization, Reparameterizer};
use burn::tensor::Tensor;
use lastmile_core::module::{
    NamedParam, ParamValue, Selector, collect_params, list_params, map_params,
};

use crate::adapter::Adapter;
use crate::error::{AdapterError, Result};
use crate::foura::FouraConfig;
use crate::layout::WeightLayout;
use crate::lora::{LoraConfig, LoraInit};
use crate::shira::ShiraConfig;

/// The reparameterization attached to an adapted weight parameter.
///
/// Its adapter's parameters are named `<param>.adapter.inner.<…>` (e.g.
/// `fc1.weight.adapter.inner.a`); the adapter is private so that it stays the
/// mergeable one [`WeightAdapter::new`] checked.
#[derive(Module, Debug)]
pub(crate) struct WeightAdapter {
    inner: Adapter,
    #[module(skip)]
    layout: WeightLayout,
}

impl WeightAdapter {
    /// Wraps `adapter` for a parameter stored as `layout`.
    ///
    /// # Errors
    /// [`AdapterError::Unsupported`] for FouRA with an adaptive gate, which is
    /// not a fixed weight update.
    pub fn new(adapter: Adapter, layout: WeightLayout) -> Result<Self> {
        if !adapter.is_mergeable() {
            return Err(AdapterError::unsupported(
                "attach as a weight reparameterization",
                "FouRA (adaptive gate)",
                "an input-dependent gate is not a weight update: use AdaptedLinear, or GateMode::Frozen/Off",
            ));
        }
        Ok(Self {
            inner: adapter,
            layout,
        })
    }
}

impl Reparameterization for WeightAdapter {
    const NAME: &'static str = "adapter";

    /// `W0 + ΔW`, with `ΔW` in the parameter's storage layout.
    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        // Cannot fail: `new` admits only mergeable adapters, and `inner` is
        // private and its gate mode a module constant, so it stays mergeable.
        let delta = self.inner.fixed_delta_in_layout(self.layout);
        let shape = base.shape();
        base + delta.reshape(shape)
    }
}

/// What to attach to each selected layer.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum AdapterSpec {
    /// LoRA (Kaiming-uniform or gaussian init; PiSSA needs to rewrite the
    /// base weight: use [`LoraConfig::init_pissa`] with [`crate::AdaptedLinear`]).
    Lora(LoraConfig),
    /// FouRA with a frozen or disabled gate.
    Foura(FouraConfig),
    /// SHiRA with a mask that needs no gradient (use
    /// [`crate::AdaptedModel::attach_with`] and
    /// [`crate::shira::weight_gradient`] for Gradient/SNIP masks).
    Shira(ShiraConfig),
}

impl AdapterSpec {
    /// The spec for layer `name`: a LoRA or FouRA seed becomes
    /// `seed ^ hash(name)`, so that layers of one shape do not start from
    /// the same factors (SHiRA masks keep their config's seed).
    pub(crate) fn for_layer(&self, name: &str) -> Self {
        let mix = |seed: Option<u64>| seed.map(|s| s ^ name_hash(name));
        match self {
            Self::Lora(c) => Self::Lora(LoraConfig {
                seed: mix(c.seed),
                ..c.clone()
            }),
            Self::Foura(c) => Self::Foura(FouraConfig {
                seed: mix(c.seed),
                ..c.clone()
            }),
            Self::Shira(c) => Self::Shira(c.clone()),
        }
    }

    /// Builds the adapter for a base weight `w0: [out, in]`; `grad` (same
    /// shape) feeds gradient-based SHiRA masks.
    ///
    /// # Errors
    /// Invalid configuration, PiSSA (see the variant docs), a missing gradient.
    pub fn build(&self, w0: &Tensor<2>, grad: Option<&Tensor<2>>) -> Result<Adapter> {
        let [d_out, d_in] = w0.dims();
        let device = w0.device();
        Ok(match self {
            Self::Lora(c) if c.init == LoraInit::Pissa => {
                return Err(AdapterError::unsupported(
                    "attach",
                    "LoRA (PiSSA)",
                    "PiSSA replaces the base weight by its residual: use `init_pissa` with AdaptedLinear",
                ));
            }
            Self::Lora(c) => Adapter::Lora(c.init(d_in, d_out, &device)?),
            Self::Foura(c) => Adapter::Foura(c.init(d_in, d_out, &device)?),
            Self::Shira(c) => Adapter::Shira(c.init(w0, grad)?),
        })
    }
}

/// A record of what [`attach_with`] attached, used to
/// read the trained adapters back out of the module.
#[derive(Debug, Clone)]
pub(crate) struct Attached {
    templates: BTreeMap<String, Adapter>,
}

impl Attached {
    /// Reads the current (e.g. trained) adapters out of `module`, by layer name.
    ///
    /// The stored values of the parameters under
    /// `<target>.weight.adapter.inner.` are loaded into a copy of the adapter
    /// attached to `<target>`.
    ///
    /// # Errors
    /// [`AdapterError::NotFound`] if a layer has lost its adapter (e.g. the
    /// module was materialised) or an adapter parameter is missing;
    /// [`AdapterError::Core`] if a parameter's element count changed.
    pub fn extract<M: Module>(&self, module: &M) -> Result<BTreeMap<String, Adapter>> {
        if self.templates.is_empty() {
            return Ok(BTreeMap::new());
        }
        let prefix = |target: &str| format!("{target}.weight.{}.inner.", WeightAdapter::NAME);
        let found = Selector::new(self.templates.keys().map(|t| format!("{}**", prefix(t))))
            .and_then(|selector| collect_params(module, &selector, ParamValue::Stored))
            .map_err(|e| AdapterError::from(e).named("adapter"))?;
        let available: Vec<String> = found.iter().map(|p| p.path.clone()).collect();
        let mut out = BTreeMap::new();
        for (target, template) in &self.templates {
            let prefix = prefix(target);
            let values: BTreeMap<&str, &Tensor<1>> = found
                .iter()
                .filter_map(|p| p.path.strip_prefix(&prefix).map(|rel| (rel, &p.value)))
                .collect();
            let adapter = map_params(template.clone(), &Selector::all(), |p: &NamedParam| {
                values
                    .get(p.path.as_str())
                    .map(|v| (*v).clone())
                    .ok_or_else(|| AdapterError::NotFound {
                        what: "adapter parameter",
                        name: format!("{prefix}{}", p.path),
                        available: available.clone(),
                    })
            })?;
            out.insert(target.clone(), adapter);
        }
        Ok(out)
    }
}

struct Attacher<F> {
    targets: BTreeSet<String>,
    factory: F,
    templates: BTreeMap<String, Adapter>,
    error: Option<AdapterError>,
}

// On `&mut` so that the state is still ours after `apply_reparameterization`
// (which takes the reparameterizer by value).
impl<F: FnMut(&str, Tensor<2>) -> Result<Adapter>> Reparameterizer for &mut Attacher<F> {
    type Reparam = WeightAdapter;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<WeightAdapter>) {
        let param = param.set_require_grad(false);
        let Some(target) = path
            .strip_suffix(".weight")
            .filter(|t| self.targets.contains(*t))
        else {
            return (param, None);
        };
        if D != 2 || self.error.is_some() {
            return (param, None);
        }
        let w = param.base();
        let dims = w.dims();
        // burn's Linear stores [in, out]; adapters work on [out, in].
        let w_oi = w.reshape([dims[0], dims[1]]).transpose().detach();
        let built = (self.factory)(target, w_oi).and_then(|adapter| {
            if adapter.d_in() != dims[0] || adapter.d_out() != dims[1] {
                return Err(AdapterError::shape(
                    format!("adapter for `{target}`"),
                    format!("[out, in] = [{}, {}]", dims[1], dims[0]),
                    &[adapter.d_out(), adapter.d_in()],
                ));
            }
            WeightAdapter::new(adapter, WeightLayout::InOut)
        });
        match built {
            Ok(wa) => {
                self.templates.insert(target.to_owned(), wa.inner.clone());
                (param, Some(wa))
            }
            Err(e) => {
                self.error = Some(e);
                (param, None)
            }
        }
    }
}

/// Attaches an adapter built by `factory(layer_name, W0: [out, in])` to the
/// `weight` of every layer in `targets` (module paths such as `"fc1"` or
/// `"encoder.layers.0.proj"`), and freezes every other parameter.
///
/// # Errors
/// The first factory error, or [`AdapterError::NotFound`] for a target
/// without a 2-D `weight` parameter.
pub(crate) fn attach_with<M, F>(module: M, targets: &[&str], factory: F) -> Result<(M, Attached)>
where
    M: Module,
    F: FnMut(&str, Tensor<2>) -> Result<Adapter>,
{
    let mut attacher = Attacher {
        targets: targets.iter().map(|t| (*t).to_owned()).collect(),
        factory,
        templates: BTreeMap::new(),
        error: None,
    };
    let module = module.apply_reparameterization(&mut attacher);
    if let Some(e) = attacher.error {
        return Err(e);
    }
    if let Some(missing) = targets
        .iter()
        .find(|t| !attacher.templates.contains_key(**t))
    {
        return Err(AdapterError::NotFound {
            what: "target",
            name: format!("{missing}.weight (a 2-D parameter)"),
            available: list_params(&module)
                .into_iter()
                .filter(|(path, shape)| shape.len() == 2 && path.ends_with(".weight"))
                .map(|(path, _)| path)
                .collect(),
        });
    }
    Ok((
        module,
        Attached {
            templates: attacher.templates,
        },
    ))
}

/// FNV-1a of a layer name, to derive one seed per layer from a config's seed.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
