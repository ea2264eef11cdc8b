//! FouRA in PEFT-style files: `<m>.foura_A.weight` `[r, in]`,
//! `<m>.foura_B.weight` `[out, r]`, `<m>.foura_gate.{energy,entropy,bias}`
//! `[r]` and `<m>.foura_mask` `[r]`; config `peft_type: "FOURA"`, `r`,
//! `foura_alpha`, `rank_pattern`, `alpha_pattern`, `transform`, `gate`,
//! `threshold`.

use burn::tensor::{Device, Tensor};
use lastmile_core::tensor_file::TensorFile;
use serde_json::{Map, Value, json};

use super::{Foura, FouraConfig};
use crate::adapter::Adapter;
use crate::error::{AdapterError, Result};
use crate::peft::{Config, ModuleTensors, PeftMapping, bad, tensor_key, write_rank_alpha};

const A: &str = "foura_A.weight";
const B: &str = "foura_B.weight";
const ENERGY: &str = "foura_gate.energy";
const ENTROPY: &str = "foura_gate.entropy";
const BIAS: &str = "foura_gate.bias";
const MASK: &str = "foura_mask";

impl PeftMapping for Foura {
    const PEFT_TYPE: &'static str = "FOURA";
    const TENSORS: &'static [&'static str] = &[A, B, ENERGY, ENTROPY, BIAS, MASK];

    fn of(adapter: &Adapter) -> Option<&Self> {
        match adapter {
            Adapter::Foura(f) => Some(f),
            _ => None,
        }
    }

    fn write_tensors(&self, module: &str, file: &mut TensorFile) -> Result<()> {
        file.insert_float(&tensor_key(module, A), self.a.val())?;
        file.insert_float(&tensor_key(module, B), self.b.val())?;
        file.insert_float(&tensor_key(module, ENERGY), self.gate.energy.val())?;
        file.insert_float(&tensor_key(module, ENTROPY), self.gate.entropy.val())?;
        file.insert_float(&tensor_key(module, BIAS), self.gate.bias.val())?;
        file.insert_float(&tensor_key(module, MASK), self.frozen_mask())?;
        Ok(())
    }

    fn write_config(layers: &[(&str, &Self)], config: &mut Map<String, Value>) -> Result<()> {
        // One config describes every module: transform, gate and threshold
        // must agree.
        let configs: Vec<FouraConfig> = layers.iter().map(|(_, f)| f.config()).collect();
        if let Some(first) = configs.first() {
            if configs.iter().any(|c| {
                c.transform != first.transform
                    || c.gate != first.gate
                    || c.threshold != first.threshold
            }) {
                return Err(AdapterError::unsupported(
                    "save",
                    "FouRA",
                    "modules with different transform, gate or threshold",
                ));
            }
            config.insert("transform".into(), json!(first.transform.name()));
            config.insert("gate".into(), json!(first.gate.name()));
            config.insert("threshold".into(), json!(first.threshold));
        }
        let entries: Vec<(&str, usize, f64)> = layers
            .iter()
            .map(|(m, f)| (*m, f.rank(), f.alpha()))
            .collect();
        write_rank_alpha(&entries, "foura_alpha", config);
        Ok(())
    }

    fn read(module: &ModuleTensors<'_>, config: &Config, device: &Device) -> Result<Self> {
        let (m, r) = (module.name, module.rank);
        let fc = config.foura.as_ref().ok_or_else(|| {
            bad(
                "",
                "a FOURA config without its transform, gate and threshold",
            )
        })?;
        let fc = FouraConfig {
            rank: r,
            alpha: module.alpha,
            ..fc.clone()
        };
        let (a, b) = module.low_rank_factors(A, B, device)?;
        let mut f = Foura::from_factors(a, b, &fc)?;
        let vector = |s: &str| -> Result<Tensor<1>> { module.float(s, [r], device) };
        let (energy, entropy, bias) = (vector(ENERGY)?, vector(ENTROPY)?, vector(BIAS)?);
        f.gate.energy = f.gate.energy.map(|_| energy);
        f.gate.entropy = f.gate.entropy.map(|_| entropy);
        f.gate.bias = f.gate.bias.map(|_| bias);
        let mode = f.gate_mode();
        Ok(f.with_frozen_mask(vector(MASK)?)
            .map_err(|e| bad("", format!("module `{m}`: {e}")))?
            .with_gate_mode(mode))
    }
}
