//! LoRA in PEFT's files: `<m>.lora_A.weight` `[r, in]` and
//! `<m>.lora_B.weight` `[out, r]`; config `peft_type: "LORA"`, `r`,
//! `lora_alpha`, `rank_pattern`, `alpha_pattern`, `use_rslora`,
//! `lora_dropout`, `fan_in_fan_out`.

use burn::tensor::Device;
use lastmile_core::tensor_file::TensorFile;
use serde_json::{Map, Value, json};

use super::Lora;
use crate::adapter::Adapter;
use crate::error::{AdapterError, Result};
use crate::peft::{Config, ModuleTensors, PeftMapping, tensor_key, write_rank_alpha};

const A: &str = "lora_A.weight";
const B: &str = "lora_B.weight";

impl PeftMapping for Lora {
    const PEFT_TYPE: &'static str = "LORA";
    const TENSORS: &'static [&'static str] = &[A, B];

    fn of(adapter: &Adapter) -> Option<&Self> {
        match adapter {
            Adapter::Lora(l) => Some(l),
            _ => None,
        }
    }

    fn write_tensors(&self, module: &str, file: &mut TensorFile) -> Result<()> {
        file.insert_float(&tensor_key(module, A), self.a.val())?;
        file.insert_float(&tensor_key(module, B), self.b.val())?;
        Ok(())
    }

    fn write_config(layers: &[(&str, &Self)], config: &mut Map<String, Value>) -> Result<()> {
        // PEFT has one scaling rule and one `lora_dropout` for every module.
        let first = layers.first().map(|(_, l)| *l);
        let rslora = first.is_some_and(Lora::use_rslora);
        let dropout = first.map_or(0.0, Lora::dropout_prob);
        if layers.iter().any(|(_, l)| l.use_rslora() != rslora) {
            return Err(AdapterError::unsupported(
                "save",
                "LoRA",
                "adapters mixing rsLoRA and classic scaling",
            ));
        }
        if layers.iter().any(|(_, l)| l.dropout_prob() != dropout) {
            return Err(AdapterError::unsupported(
                "save",
                "LoRA",
                "adapters with different dropout (PEFT stores one lora_dropout)",
            ));
        }
        let entries: Vec<(&str, usize, f64)> = layers
            .iter()
            .map(|(m, l)| (*m, l.rank(), l.alpha()))
            .collect();
        write_rank_alpha(&entries, "lora_alpha", config);
        config.insert("use_rslora".into(), json!(rslora));
        config.insert("lora_dropout".into(), json!(dropout));
        config.insert("fan_in_fan_out".into(), json!(false));
        config.insert("init_lora_weights".into(), json!(true));
        Ok(())
    }

    fn read(module: &ModuleTensors<'_>, config: &Config, device: &Device) -> Result<Self> {
        let (a, b) = module.low_rank_factors(A, B, device)?;
        Lora::from_factors(a, b, module.alpha, config.use_rslora)?.with_dropout(config.dropout)
    }
}
