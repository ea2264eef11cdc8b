//! Many named adapters for one base model, switched with the cheapest exact
//! path for each kind.
//!
//! The set holds, for each target weight, the pristine base `W0` and the
//! deployed weight `W` (flattened, in the model's storage layout). Switching:
//!
//! - SHiRA: scatter the prepared `W0[M] + values` (`O(|M|)`, in place when
//!   `W` is uniquely owned; on a CPU device a plain loop over the sorted
//!   positions, [`lastmile_core::host::scatter_assign`]); switching back
//!   scatters the saved originals, so `W` returns to `W0` bit for bit.
//! - LoRA / FouRA (frozen or no gate): the fuse `W = W0 + Σ wᵢ ΔWᵢ`, one
//!   rank-r update per adapter ([`Adapter::add_scaled_delta`]: faer's GEMM
//!   into `W`'s buffer on a CPU device); switching back re-uses `W0`.

mod state;
mod switch;

use std::collections::BTreeMap;
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::Tensor;
use lastmile_core::host::is_host;
use lastmile_core::module::{ParamValue, Selector, collect_params};

use crate::adapter::Adapter;
use crate::combine::{CombineMethod, awom, awor, combine_adapters};
use crate::error::{AdapterError, Result};
use crate::layout::WeightLayout;

use state::{Entry, HostSwitch, Target, Undo};

/// Interference between two adapters on one target (SHiRA paper §4.3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interference {
    /// `‖S₁ᵀ S₂‖₂` (smaller: less interference).
    pub awom: f64,
    /// `1 − ‖S₁ᵀ S₂‖₀ / in²` (larger: more orthogonal).
    pub awor: f64,
}

/// Named adapters for one base model and the weights they are switched into.
#[derive(Default)]
pub(crate) struct AdapterSet {
    targets: BTreeMap<String, Target>,
    adapters: BTreeMap<String, BTreeMap<String, Entry>>,
    active: Vec<(String, f32)>,
    undo: BTreeMap<String, Undo>,
}

impl std::fmt::Debug for AdapterSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterSet")
            .field("targets", &self.targets.keys().collect::<Vec<_>>())
            .field("adapters", &self.adapters.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

impl AdapterSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a base weight stored as `layout` (`[out, in]` for
    /// [`WeightLayout::OutIn`], `[in, out]` for [`WeightLayout::InOut`]).
    ///
    /// # Errors
    /// [`AdapterError::Duplicate`] for a known name, [`AdapterError::Shape`] for an empty weight.
    pub fn add_target(
        &mut self,
        name: &str,
        weight: Tensor<2>,
        layout: WeightLayout,
    ) -> Result<()> {
        if self.targets.contains_key(name) {
            return Err(AdapterError::Duplicate {
                what: "target",
                name: name.to_owned(),
            });
        }
        let dims = weight.dims();
        if dims.contains(&0) {
            return Err(AdapterError::shape(
                format!("target `{name}`"),
                "a non-empty matrix",
                &dims,
            ));
        }
        let (d_out, d_in) = match layout {
            WeightLayout::OutIn => (dims[0], dims[1]),
            WeightLayout::InOut => (dims[1], dims[0]),
        };
        let base = weight.inner().reshape([d_out * d_in]);
        // The deployed copy must own its buffer so that scatters can run in place.
        let current = base.clone().mul_scalar(1.0);
        self.targets.insert(
            name.to_owned(),
            Target {
                base,
                current,
                layout,
                d_out,
                d_in,
            },
        );
        Ok(())
    }

    /// Registers the `[in, out]` weights `<target>.weight` of a burn module
    /// (e.g. `burn::nn::Linear` layers named `fc1`, `fc2`).
    ///
    /// The **stored** value of each weight is its base `W0`
    /// ([`ParamValue::Stored`]): on a module with attached adapters (see
    /// [`crate::attach`]) that is the pristine weight, not `W0 + ΔW`.
    /// `targets` are module paths; `lastmile_core::module::Selector` patterns
    /// (`layers.*.proj`) also work and register every layer they match.
    ///
    /// # Errors
    /// [`AdapterError::NotFound`] if a target has no `weight` parameter,
    /// [`AdapterError::Shape`] if it is not 2-D, [`AdapterError::Core`]
    /// ([`lastmile_core::CoreError::Empty`]) for no targets.
    pub fn from_module<M: Module>(module: &M, targets: &[&str]) -> Result<Self> {
        let found = Selector::new(targets.iter().map(|t| format!("{t}.weight")))
            .and_then(|selector| collect_params(module, &selector, ParamValue::Stored))
            .map_err(|e| AdapterError::from(e).named("target"))?;
        let mut set = Self::new();
        for p in found {
            // Every selected path ends in `.weight` (the patterns' last segment).
            let name = p.path.strip_suffix(".weight").unwrap_or(&p.path);
            let [d_in, d_out] = p.shape[..] else {
                return Err(AdapterError::shape(
                    format!("parameter `{}`", p.path),
                    "a 2-D [in, out] weight",
                    &p.shape,
                ));
            };
            set.add_target(name, p.value.reshape([d_in, d_out]), WeightLayout::InOut)?;
        }
        Ok(set)
    }

    /// Registers a named adapter: one per target layer it adapts.
    ///
    /// # Errors
    /// Duplicate name, unknown target, or an adapter whose `[out, in]` does
    /// not fit its target.
    pub fn add_adapter(&mut self, name: &str, layers: BTreeMap<String, Adapter>) -> Result<()> {
        if self.adapters.contains_key(name) {
            return Err(AdapterError::Duplicate {
                what: "adapter",
                name: name.to_owned(),
            });
        }
        if layers.is_empty() {
            return Err(AdapterError::config(
                "adapter layers",
                "none",
                "at least one (target, adapter) pair",
            ));
        }
        let mut entries = BTreeMap::new();
        for (target, adapter) in layers {
            let t = self.target(&target)?;
            if adapter.d_out() != t.d_out || adapter.d_in() != t.d_in {
                return Err(AdapterError::shape(
                    format!("adapter `{name}` on `{target}`"),
                    format!("[out, in] = [{}, {}]", t.d_out, t.d_in),
                    &[adapter.d_out(), adapter.d_in()],
                ));
            }
            let adapter = adapter.valid();
            let (positions, prepared, host) = match &adapter {
                Adapter::Shira(s) => {
                    let device = t.base.device();
                    let pos = s.positions_tensor(t.layout, &device)?;
                    let originals = t.base.clone().select(0, pos.clone());
                    let switched = originals.clone() + s.values.val();
                    let host = if is_host(&device) {
                        Some(Arc::new(HostSwitch::new(
                            pos.clone(),
                            originals.clone(),
                            switched.clone(),
                        )?))
                    } else {
                        None
                    };
                    (Some(pos), Some((originals, switched)), host)
                }
                _ => (None, None, None),
            };
            entries.insert(
                target,
                Entry {
                    adapter,
                    positions,
                    prepared,
                    host,
                },
            );
        }
        self.adapters.insert(name.to_owned(), entries);
        Ok(())
    }

    /// Removes an adapter (deactivating everything first if it is active).
    ///
    /// # Errors
    /// [`AdapterError::NotFound`] for an unknown name.
    pub fn remove_adapter(&mut self, name: &str) -> Result<BTreeMap<String, Adapter>> {
        if !self.adapters.contains_key(name) {
            return Err(self.not_found(name));
        }
        if self.active.iter().any(|(n, _)| n == name) {
            self.deactivate()?;
        }
        let entries = self
            .adapters
            .remove(name)
            .ok_or_else(|| self.not_found(name))?;
        Ok(entries.into_iter().map(|(k, e)| (k, e.adapter)).collect())
    }

    /// Registered adapter names.
    pub fn adapter_names(&self) -> Vec<&str> {
        self.adapters.keys().map(String::as_str).collect()
    }

    /// Registered target names.
    pub fn target_names(&self) -> Vec<&str> {
        self.targets.keys().map(String::as_str).collect()
    }

    /// The adapters of one name, by target.
    ///
    /// # Errors
    /// [`AdapterError::NotFound`] for an unknown name.
    pub fn adapter(&self, name: &str) -> Result<BTreeMap<&str, &Adapter>> {
        let e = self
            .adapters
            .get(name)
            .ok_or_else(|| self.not_found(name))?;
        Ok(e.iter().map(|(k, e)| (k.as_str(), &e.adapter)).collect())
    }

    /// The currently active adapters and their weights.
    pub fn active(&self) -> &[(String, f32)] {
        &self.active
    }

    fn not_found(&self, name: &str) -> AdapterError {
        AdapterError::NotFound {
            what: "adapter",
            name: name.to_owned(),
            available: self.adapters.keys().cloned().collect(),
        }
    }

    fn target(&self, name: &str) -> Result<&Target> {
        self.targets
            .get(name)
            .ok_or_else(|| AdapterError::NotFound {
                what: "target",
                name: name.to_owned(),
                available: self.targets.keys().cloned().collect(),
            })
    }

    /// The deployed weight of `target` in its storage layout.
    ///
    /// # Errors
    /// [`AdapterError::NotFound`] for an unknown target.
    pub fn weight(&self, target: &str) -> Result<Tensor<2>> {
        let t = self.target(target)?;
        Ok(t.current.clone().reshape(t.layout.shape(t.d_out, t.d_in)))
    }

    /// The pristine base weight of `target` in its storage layout.
    ///
    /// # Errors
    /// [`AdapterError::NotFound`] for an unknown target.
    pub fn base_weight(&self, target: &str) -> Result<Tensor<2>> {
        let t = self.target(target)?;
        Ok(t.base.clone().reshape(t.layout.shape(t.d_out, t.d_in)))
    }

    /// Combines registered adapters into a new adapter per target
    /// (see [`combine_adapters`]); register it with [`AdapterSet::add_adapter`].
    ///
    /// # Errors
    /// As [`combine_adapters`]; unknown names.
    pub fn combine(
        &self,
        parts: &[(&str, f64)],
        method: CombineMethod,
    ) -> Result<BTreeMap<String, Adapter>> {
        let mut by_target: BTreeMap<&str, Vec<(&Adapter, f64)>> = BTreeMap::new();
        for (name, w) in parts {
            let entries = self
                .adapters
                .get(*name)
                .ok_or_else(|| self.not_found(name))?;
            for (t, e) in entries {
                by_target
                    .entry(t.as_str())
                    .or_default()
                    .push((&e.adapter, *w));
            }
        }
        by_target
            .into_iter()
            .map(|(t, list)| Ok((t.to_owned(), combine_adapters(&list, method)?)))
            .collect()
    }

    /// AWOM and AWOR between two adapters on every target they share.
    ///
    /// # Errors
    /// Unknown names; FouRA with an adaptive gate.
    pub fn interference(
        &self,
        first: &str,
        second: &str,
    ) -> Result<BTreeMap<String, Interference>> {
        let a = self
            .adapters
            .get(first)
            .ok_or_else(|| self.not_found(first))?;
        let b = self
            .adapters
            .get(second)
            .ok_or_else(|| self.not_found(second))?;
        let mut out = BTreeMap::new();
        for (t, ea) in a {
            if let Some(eb) = b.get(t) {
                let (s1, s2) = (ea.adapter.delta_weight()?, eb.adapter.delta_weight()?);
                out.insert(
                    t.clone(),
                    Interference {
                        awom: awom(&s1, &s2)?,
                        awor: awor(&s1, &s2)?,
                    },
                );
            }
        }
        Ok(out)
    }
}
