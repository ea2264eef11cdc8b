//! SHiRA in PEFT's files: `<m>.shira_weight` `[N]` and `<m>.shira_indices`
//! `[2, N]` (rows; cols); config `peft_type: "SHIRA"`, `r`, `mask_type`.
//! PEFT does not store a SHiRA layer's shape: it is written to the
//! safetensors metadata (`lastmile.shape.<m>` = `"out,in"`), and files
//! without it need the shapes from the caller.

use burn::tensor::Device;
use lastmile_core::tensor_file::{TensorFile, TensorValues};
use serde_json::{Map, Value, json};

use super::{Shira, ShiraMask};
use crate::adapter::Adapter;
use crate::error::Result;
use crate::peft::{Config, ModuleTensors, PeftMapping, bad, float_of, parse_shape, tensor_key};

const WEIGHT: &str = "shira_weight";
const INDICES: &str = "shira_indices";

fn shape_key(module: &str) -> String {
    format!("lastmile.shape.{module}")
}

impl PeftMapping for Shira {
    const PEFT_TYPE: &'static str = "SHIRA";
    const TENSORS: &'static [&'static str] = &[WEIGHT, INDICES];

    fn of(adapter: &Adapter) -> Option<&Self> {
        match adapter {
            Adapter::Shira(s) => Some(s),
            _ => None,
        }
    }

    fn write_tensors(&self, module: &str, file: &mut TensorFile) -> Result<()> {
        let (rows, cols) = self.coo();
        let n = self.nnz();
        let mut idx: Vec<i64> = Vec::with_capacity(2 * n);
        idx.extend(rows.iter().map(|&v| v as i64));
        idx.extend(cols.iter().map(|&v| v as i64));
        file.insert_float(&tensor_key(module, WEIGHT), self.values.val())?;
        file.insert_indices(&tensor_key(module, INDICES), vec![2, n], idx)?;
        file.set_metadata(
            &shape_key(module),
            &format!("{},{}", self.d_out(), self.d_in()),
        );
        Ok(())
    }

    fn write_config(layers: &[(&str, &Self)], config: &mut Map<String, Value>) -> Result<()> {
        // PEFT's `r` sizes the mask as a rank-r LoRA would: r·(out + in).
        let r = layers
            .last()
            .map_or(1, |(_, s)| (s.nnz() / (s.d_out() + s.d_in())).max(1));
        let mask = layers.iter().find_map(|(_, s)| s.mask_kind());
        config.insert("r".into(), json!(r));
        config.insert(
            "mask_type".into(),
            json!(mask.map_or("custom", ShiraMask::name)),
        );
        config.insert("random_seed".into(), Value::Null);
        Ok(())
    }

    fn read(module: &ModuleTensors<'_>, config: &Config, device: &Device) -> Result<Self> {
        let m = module.name;
        let (nw, tw) = module.get(WEIGHT)?;
        let (ni, ti) = module.get(INDICES)?;
        let n = match tw.shape.as_slice() {
            [n] if *n > 0 => *n,
            s => {
                return Err(bad(
                    "",
                    format!("`{nw}` must be [N] with N > 0, found {s:?}"),
                ));
            }
        };
        if ti.shape != [2, n] {
            return Err(bad(
                "",
                format!("`{ni}` must be [2, {n}], found {:?}", ti.shape),
            ));
        }
        let TensorValues::I64(idx) = &ti.values else {
            return Err(bad("", format!("`{ni}` must hold integers")));
        };
        let (d_out, d_in) = match module.shape {
            Some(s) => s,
            None => parse_shape(module.file.metadata(&shape_key(m))).ok_or_else(|| {
                bad(
                    "",
                    format!(
                        "module `{m}`: the file does not record its [out, in]; pass it in `shapes`"
                    ),
                )
            })?,
        };
        let to_index = |v: i64, bound: usize, what: &str| -> Result<usize> {
            usize::try_from(v)
                .ok()
                .filter(|&u| u < bound)
                .ok_or_else(|| {
                    bad(
                        "",
                        format!("module `{m}`: {what} index {v} outside [0, {bound})"),
                    )
                })
        };
        let rows = idx[..n]
            .iter()
            .map(|&v| to_index(v, d_out, "row"))
            .collect::<Result<Vec<_>>>()?;
        let cols = idx[n..]
            .iter()
            .map(|&v| to_index(v, d_in, "column"))
            .collect::<Result<Vec<_>>>()?;
        let values = float_of(tw, nw)?;
        let s = Shira::from_coo(&rows, &cols, values, d_out, d_in, device)
            .map_err(|e| bad("", format!("module `{m}`: {e}")))?;
        Ok(match config.mask {
            Some(k) => s.with_mask_kind(k),
            None => s,
        })
    }
}
