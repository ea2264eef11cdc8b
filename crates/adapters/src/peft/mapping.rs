//! The contract between the PEFT driver and each adapter kind's file
//! mapping (`lora/peft.rs`, `foura/peft.rs`, `shira/peft.rs`), and what
//! those mappings share.
//!
//! The trait is public but unreachable from outside the crate (this module
//! is private): it seals [`crate::LinearAdapter`], whose kinds all come
//! with a file mapping.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor};
use lastmile_core::convert::tensor_from_vec;
use lastmile_core::tensor_file::{StoredTensor, TensorFile, TensorValues};
use serde_json::{Map, Value, json};

use super::config::Config;
use super::{PEFT_PREFIX, bad, mode};
use crate::adapter::Adapter;
use crate::error::Result;

/// The full key of a module's tensor: `base_model.model.<module>.<suffix>`.
pub(crate) fn tensor_key(module: &str, suffix: &str) -> String {
    format!("{PEFT_PREFIX}{module}.{suffix}")
}

/// Writes `r`, `rank_pattern`, `<alpha_key>` and `alpha_pattern` as PEFT
/// does: the most common rank and α globally, the others as patterns (module
/// paths escaped, since pattern keys are regular expressions to PEFT).
pub(crate) fn write_rank_alpha(
    entries: &[(&str, usize, f64)],
    alpha_key: &str,
    config: &mut Map<String, Value>,
) {
    let ranks: Vec<usize> = entries.iter().map(|e| e.1).collect();
    let alphas: Vec<f64> = entries.iter().map(|e| e.2).collect();
    let r = mode(&ranks).unwrap_or(1);
    let alpha = mode(&alphas).unwrap_or(1.0);
    let rank_pattern: Map<String, Value> = entries
        .iter()
        .filter(|e| e.1 != r)
        .map(|e| (regex::escape(e.0), json!(e.1)))
        .collect();
    let alpha_pattern: Map<String, Value> = entries
        .iter()
        .filter(|e| e.2 != alpha)
        .map(|e| (regex::escape(e.0), json!(e.2)))
        .collect();
    config.insert("r".into(), json!(r));
    config.insert("rank_pattern".into(), Value::Object(rank_pattern));
    config.insert(alpha_key.into(), json!(alpha));
    config.insert("alpha_pattern".into(), Value::Object(alpha_pattern));
}

/// How one adapter kind maps onto PEFT's two files: its `peft_type`, the
/// tensors of one module, the kind-wide config fields, and the way back.
/// Each kind implements it in its own folder (`lora/peft.rs`, …); this
/// module's [`to_peft`](super::to_peft) and [`from_peft`](super::from_peft)
/// are the generic driver.
pub trait PeftMapping: Sized {
    /// PEFT's `peft_type`.
    const PEFT_TYPE: &'static str;
    /// The tensor names of one module, after `<module>.`.
    const TENSORS: &'static [&'static str];
    /// The adapter of this kind inside `adapter`, if it is one.
    fn of(adapter: &Adapter) -> Option<&Self>;
    /// Puts this module's tensors into `file`.
    fn write_tensors(&self, module: &str, file: &mut TensorFile) -> Result<()>;
    /// Adds the kind's config fields for `layers` (module path, adapter);
    /// refuses layers that one PEFT config cannot describe together.
    fn write_config(layers: &[(&str, &Self)], config: &mut Map<String, Value>) -> Result<()>;
    /// Builds one module's adapter from its tensors.
    fn read(module: &ModuleTensors<'_>, config: &Config, device: &Device) -> Result<Self>;
}

/// The values of a stored F32 tensor, refused if any is not finite.
pub(crate) fn float_of<'a>(t: &'a StoredTensor, key: &str) -> Result<&'a [f32]> {
    match &t.values {
        TensorValues::F32(v) => {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(bad(
                    "",
                    format!("tensor `{key}` has a non-finite value at {i}"),
                ));
            }
            Ok(v)
        }
        _ => Err(bad("", format!("tensor `{key}` must be F32"))),
    }
}

/// One module's tensors in a PEFT file, as a kind's [`PeftMapping::read`]
/// sees them: its rank and α after `rank_pattern` / `alpha_pattern`, and
/// checked accessors that turn every inconsistency into
/// [`AdapterError::InvalidFile`](crate::error::AdapterError::InvalidFile).
pub struct ModuleTensors<'a> {
    pub(crate) name: &'a str,
    pub(crate) rank: usize,
    pub(crate) alpha: f64,
    /// `[out, in]` given by the caller, if any.
    pub(crate) shape: Option<(usize, usize)>,
    pub(crate) file: &'a TensorFile,
    pub(crate) parts: BTreeMap<&'a str, (&'a str, &'a StoredTensor)>,
}

impl<'a> ModuleTensors<'a> {
    /// The full key and the tensor stored under `suffix`.
    pub(crate) fn get(&self, suffix: &str) -> Result<(&'a str, &'a StoredTensor)> {
        self.parts
            .get(suffix)
            .copied()
            .ok_or_else(|| bad("", format!("module `{}` lacks `{suffix}`", self.name)))
    }

    /// The F32 tensor under `suffix`, which must have `shape`.
    pub(crate) fn float<const D: usize>(
        &self,
        suffix: &str,
        shape: [usize; D],
        device: &Device,
    ) -> Result<Tensor<D>> {
        let (key, t) = self.get(suffix)?;
        if t.shape != shape {
            return Err(bad(
                "",
                format!("tensor `{key}` has shape {:?}, expected {shape:?}", t.shape),
            ));
        }
        Ok(tensor_from_vec(float_of(t, key)?.to_vec(), shape, device)?)
    }

    /// An error unless `[out, in]` agrees with the shape the caller gave.
    pub(crate) fn check_shape(&self, d_out: usize, d_in: usize) -> Result<()> {
        match self.shape {
            Some(s) if s != (d_out, d_in) => Err(bad(
                "",
                format!(
                    "module `{}` is [{d_out}, {d_in}], expected {s:?}",
                    self.name
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The low-rank pair `A: [r, in]`, `B: [out, r]` stored under `a` and
    /// `b` (LoRA's and FouRA's layout), checked against the module's rank.
    pub(crate) fn low_rank_factors(
        &self,
        a: &str,
        b: &str,
        device: &Device,
    ) -> Result<(Tensor<2>, Tensor<2>)> {
        let (m, r) = (self.name, self.rank);
        let (na, ta) = self.get(a)?;
        let (nb, tb) = self.get(b)?;
        let (&[ra, d_in], &[d_out, rb]) = (ta.shape.as_slice(), tb.shape.as_slice()) else {
            return Err(bad(
                "",
                format!(
                    "`{na}` and `{nb}` must be 2-D, found {:?} and {:?}",
                    ta.shape, tb.shape
                ),
            ));
        };
        if ra != r || rb != r {
            return Err(bad(
                "",
                format!(
                    "module `{m}`: A is {:?}, B is {:?}; expected rank {r} ([r, in] and [out, r])",
                    ta.shape, tb.shape
                ),
            ));
        }
        if d_in == 0 || d_out == 0 || r > d_in.min(d_out) {
            return Err(bad(
                "",
                format!("module `{m}`: rank {r} does not fit [{d_out}, {d_in}]"),
            ));
        }
        self.check_shape(d_out, d_in)?;
        Ok((
            self.float(a, [r, d_in], device)?,
            self.float(b, [d_out, r], device)?,
        ))
    }
}
