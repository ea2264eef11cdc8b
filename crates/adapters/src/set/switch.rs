//! Switching adapters into the deployed weights and back: the exact path
//! for each kind (module docs of [`super`]).

use std::sync::Arc;

use burn::tensor::{IndexingUpdateOp, Tensor};
use lastmile_core::host::scatter_assign;

use super::AdapterSet;
use super::state::{Entry, Undo};
use crate::adapter::Adapter;
use crate::error::{AdapterError, Result};
use crate::shira::restore_into;

impl AdapterSet {
    /// Deactivates the current adapters and activates `W = W0 + Σ wᵢ ΔWᵢ`.
    /// Targets where every adapter is SHiRA are switched by scatter;
    /// others are fused densely.
    ///
    /// # Errors
    /// Unknown names, non-finite weights, FouRA with an adaptive gate (not a
    /// fixed matrix). On error every target is back at `W0` and nothing is active.
    pub fn activate_weighted(&mut self, parts: &[(&str, f32)]) -> Result<()> {
        for (name, w) in parts {
            let bad = if !self.adapters.contains_key(*name) {
                Some(self.not_found(name))
            } else if !w.is_finite() {
                Some(AdapterError::config("adapter weight", w, "a finite value"))
            } else {
                None
            };
            if let Some(e) = bad {
                self.deactivate()?;
                return Err(e);
            }
        }
        self.deactivate()?;
        self.active = parts.iter().map(|(n, w)| ((*n).to_owned(), *w)).collect();
        let names: Vec<String> = self.targets.keys().cloned().collect();
        for target in names {
            if let Err(e) = self.activate_target(&target, parts) {
                self.deactivate()?;
                return Err(e);
            }
        }
        Ok(())
    }

    fn activate_target(&mut self, target: &str, parts: &[(&str, f32)]) -> Result<()> {
        let entries: Vec<(&Entry, f32)> = parts
            .iter()
            .filter_map(|(n, w)| {
                self.adapters
                    .get(*n)
                    .and_then(|m| m.get(target))
                    .map(|e| (e, *w))
            })
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        let t = self
            .targets
            .get_mut(target)
            .ok_or_else(|| AdapterError::NotFound {
                what: "target",
                name: target.to_owned(),
                available: Vec::new(),
            })?;
        if let [(e, w)] = entries.as_slice()
            && *w == 1.0
            && let Some(host) = &e.host
        {
            // The cheapest exact path on a CPU device: one in-place loop over
            // the sorted positions. (Merging it with the previous switch's
            // undo into one sweep was measured slower: the merge's branches
            // cost more than the page walks it saves.)
            let placeholder = Tensor::empty([0], &t.base.device());
            let current = std::mem::replace(&mut t.current, placeholder);
            match scatter_assign(current, &host.positions, &host.switched) {
                Ok(next) => t.current = next,
                Err(err) => {
                    t.current = t.base.clone();
                    return Err(err.into());
                }
            }
            self.undo
                .insert(target.to_owned(), Undo::Host(Arc::clone(host)));
        } else if let [(e, w)] = entries.as_slice()
            && *w == 1.0
            && let (Some(pos), Some((originals, switched))) = (&e.positions, &e.prepared)
        {
            // The cheapest exact path: one scatter of prepared values (in place on CPU).
            let placeholder = Tensor::empty([0], &t.base.device());
            let current = std::mem::replace(&mut t.current, placeholder);
            t.current =
                current.select_assign(0, pos.clone(), switched.clone(), IndexingUpdateOp::Assign);
            self.undo.insert(
                target.to_owned(),
                Undo::Scatter(vec![(pos.clone(), originals.clone())]),
            );
        } else if entries.iter().all(|(e, _)| e.positions.is_some()) {
            let mut saved = Vec::with_capacity(entries.len());
            for (e, w) in entries {
                let (Adapter::Shira(s), Some(pos)) = (&e.adapter, &e.positions) else {
                    continue;
                };
                // Move the deployed weight out so the scatter owns it (in place on CPU).
                let placeholder = Tensor::empty([0], &t.base.device());
                let current = std::mem::replace(&mut t.current, placeholder);
                match s.scatter_into(current, pos.clone(), w) {
                    Ok((next, orig)) => {
                        t.current = next;
                        saved.push((pos.clone(), orig));
                    }
                    Err(err) => {
                        t.current = t.base.clone().mul_scalar(1.0);
                        return Err(err);
                    }
                }
            }
            self.undo.insert(target.to_owned(), Undo::Scatter(saved));
        } else {
            // The deployed weight holds W0 (every activation deactivates
            // first): fuse into it, in place on a host device, where it owns
            // its buffer (`Target::restore_base`).
            let placeholder = Tensor::empty([0], &t.base.device());
            let current = std::mem::replace(&mut t.current, placeholder);
            let mut w = current.reshape(t.layout.shape(t.d_out, t.d_in));
            // Recorded first: on error, deactivation restores W0.
            self.undo.insert(target.to_owned(), Undo::Dense);
            for (e, weight) in entries {
                match e.adapter.add_scaled_delta(w, t.layout, weight) {
                    Ok(next) => w = next,
                    Err(err) => {
                        t.current = t.base.clone().mul_scalar(1.0);
                        return Err(err);
                    }
                }
            }
            t.current = w.reshape([t.d_out * t.d_in]);
        }
        Ok(())
    }

    /// Restores every target to `W0` (bit-identical).
    ///
    /// # Errors
    /// Only on internal shape inconsistencies.
    pub fn deactivate(&mut self) -> Result<()> {
        let undo = std::mem::take(&mut self.undo);
        for (target, u) in undo {
            let Some(t) = self.targets.get_mut(&target) else {
                continue;
            };
            match u {
                Undo::Host(host) => {
                    let placeholder = Tensor::empty([0], &t.base.device());
                    let current = std::mem::replace(&mut t.current, placeholder);
                    match scatter_assign(current, &host.positions, &host.originals) {
                        Ok(next) => t.current = next,
                        Err(err) => {
                            t.current = t.base.clone();
                            return Err(err.into());
                        }
                    }
                }
                Undo::Scatter(saved) => {
                    for (pos, orig) in saved.into_iter().rev() {
                        let placeholder = Tensor::empty([0], &t.base.device());
                        let current = std::mem::replace(&mut t.current, placeholder);
                        t.current = restore_into(current, pos, orig)?;
                    }
                }
                Undo::Dense => t.restore_base()?,
            }
        }
        self.active.clear();
        Ok(())
    }
}
