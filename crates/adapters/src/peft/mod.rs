//! Saving and loading adapters in the layout of Hugging Face PEFT:
//! a directory with `adapter_model.safetensors` and `adapter_config.json`.
//!
//! | kind | tensors (per module, after `base_model.model.`) | config |
//! |---|---|---|
//! | LoRA | `<m>.lora_A.weight` `[r, in]`, `<m>.lora_B.weight` `[out, r]` | `peft_type: "LORA"`, `r`, `lora_alpha`, `lora_dropout`, `target_modules`, `use_rslora`, `rank_pattern`, `alpha_pattern`, `fan_in_fan_out` |
//! | SHiRA | `<m>.shira_weight` `[N]`, `<m>.shira_indices` `[2, N]` (rows; cols) | `peft_type: "SHIRA"`, `r`, `mask_type`, `target_modules` |
//! | FouRA | `<m>.foura_A.weight` `[r, in]`, `<m>.foura_B.weight` `[out, r]`, `<m>.foura_gate.{energy,entropy,bias}` `[r]`, `<m>.foura_mask` `[r]` | `peft_type: "FOURA"`, `r`, `foura_alpha`, `transform`, `gate`, `threshold`, `target_modules` |
//!
//! Each kind's row is its own file mapping (`lora/peft.rs`, `foura/peft.rs`,
//! `shira/peft.rs`, implementing the crate's sealed `PeftMapping`); this
//! module is the generic driver: it groups a file's tensors by module,
//! applies `rank_pattern` / `alpha_pattern` and `target_modules`, and hands
//! each module to its kind.
//!
//! The `base_model.model.` prefix is optional on load. PEFT does not store
//! the shape of a SHiRA layer; this crate writes it to the safetensors
//! metadata (`lastmile.shape.<m>` = `"out,in"`), and files without it need
//! the shapes from the caller.
//!
//! How the configuration's patterns, targets and unimplemented fields are
//! read (as PEFT reads them) is in the `config` submodule's docs: pattern
//! keys are regular expressions matched against the end of a module path,
//! and fields such as `use_dora: true` are refused with
//! [`AdapterError::Unsupported`].
//!
//! Loading is defensive: the safetensors parser is
//! [`lastmile_core::tensor_file`] (bounded, hostile-file safe), the JSON
//! config is refused above [`MAX_CONFIG_BYTES`], and every field, key, shape,
//! index and value is validated; anything inconsistent is an
//! [`AdapterError::InvalidFile`], never a panic.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use burn::tensor::Device;
use lastmile_core::tensor_file::{StoredTensor, TensorFile};
use serde_json::{Map, Value, json};

use crate::adapter::{Adapter, AdapterKind};
use crate::error::{AdapterError, Result};
use crate::foura::Foura;
use crate::lora::Lora;
use crate::shira::Shira;

/// File name of the tensors.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// File name of the configuration.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// Largest configuration file read: 1 MiB.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest tensor file read: 4 GiB.
pub const MAX_WEIGHTS_BYTES: u64 = 4 << 30;
/// Prefix PEFT puts in front of module paths.
pub const PEFT_PREFIX: &str = "base_model.model.";
/// Largest rank accepted from a file.
const MAX_RANK: u64 = 1 << 16;

/// `[out, in]` of each adapted module, for files that do not record it (SHiRA from PEFT).
pub type LayerShapes = BTreeMap<String, (usize, usize)>;

mod config;

mod mapping;

pub(crate) use config::Config;
use config::{parse_config, pattern_value};
pub(crate) use mapping::{ModuleTensors, PeftMapping, float_of, tensor_key, write_rank_alpha};

pub(crate) fn bad(path: &str, reason: impl Into<String>) -> AdapterError {
    AdapterError::InvalidFile {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn kind_of(layers: &BTreeMap<String, Adapter>) -> Result<AdapterKind> {
    let mut kinds = layers.values().map(Adapter::kind);
    let first = kinds.next().ok_or_else(|| {
        AdapterError::config("adapter layers", "none", "at least one module to save")
    })?;
    if kinds.any(|k| k != first) {
        return Err(AdapterError::unsupported(
            "save",
            "mixed-kind",
            "a PEFT adapter holds one kind; save each kind separately",
        ));
    }
    Ok(first)
}

/// The most common value (ties: the smallest), PEFT's global `r` / alpha.
fn mode<T: Copy + PartialEq + PartialOrd>(values: &[T]) -> Option<T> {
    let mut best: Option<(T, usize)> = None;
    for &v in values {
        let c = values.iter().filter(|&&x| x == v).count();
        best = match best {
            Some((b, bc)) if bc > c || (bc == c && b <= v) => Some((b, bc)),
            _ => Some((v, c)),
        };
    }
    best.map(|b| b.0)
}

fn write_kind<K: PeftMapping>(
    layers: &BTreeMap<String, Adapter>,
    file: &mut TensorFile,
    config: &mut Map<String, Value>,
) -> Result<()> {
    let typed: Vec<(&str, &K)> = layers
        .iter()
        .filter_map(|(m, a)| K::of(a).map(|k| (m.as_str(), k)))
        .collect();
    for (m, k) in &typed {
        k.write_tensors(m, file)?;
    }
    config.insert("peft_type".into(), json!(K::PEFT_TYPE));
    K::write_config(&typed, config)
}

/// The tensors and config JSON for `layers` (module path → adapter), all of
/// one kind.
///
/// # Errors
/// Mixed kinds, an empty map, FouRA adapters of differing transform, gate or
/// threshold, LoRA adapters of differing dropout or scaling rule.
pub fn to_peft(layers: &BTreeMap<String, Adapter>) -> Result<(TensorFile, String)> {
    let kind = kind_of(layers)?;
    let mut file = TensorFile::new();
    let targets: Vec<&String> = layers.keys().collect();
    let mut config = Map::new();
    config.insert("target_modules".into(), json!(targets));
    config.insert("bias".into(), json!("none"));
    config.insert("task_type".into(), Value::Null);
    config.insert("inference_mode".into(), json!(true));
    match kind {
        AdapterKind::Lora => write_kind::<Lora>(layers, &mut file, &mut config)?,
        AdapterKind::Foura => write_kind::<Foura>(layers, &mut file, &mut config)?,
        AdapterKind::Shira => write_kind::<Shira>(layers, &mut file, &mut config)?,
    }
    file.set_metadata("format", "pt");
    let text = serde_json::to_string_pretty(&Value::Object(config))
        .map_err(|e| AdapterError::config("adapter config", e, "JSON-serialisable values"))?;
    Ok((file, text))
}

/// Writes `layers` to `dir` (created if needed) in the PEFT layout.
///
/// # Errors
/// As [`to_peft`]; I/O failures.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use std::collections::BTreeMap;
/// use burn::tensor::Device;
/// use lastmile_adapters::{LoraConfig, peft};
/// let device = Device::flex();
/// let lora = LoraConfig::new(2, 4.0).init(5, 3, &device).unwrap();
/// let dir = std::env::temp_dir().join("lastmile_peft_doc");
/// peft::save(&dir, &BTreeMap::from([("fc1".to_string(), lora.into())])).unwrap();
/// let back = peft::load(&dir, &device, &Default::default()).unwrap();
/// assert_eq!(back["fc1"].trainable_params(), 2 * (3 + 5));
/// # }
/// ```
pub fn save(dir: impl AsRef<Path>, layers: &BTreeMap<String, Adapter>) -> Result<()> {
    let dir = dir.as_ref();
    let (file, config) = to_peft(layers)?;
    let io = |source, path: &Path| lastmile_core::CoreError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(e, dir))?;
    file.save(dir.join(WEIGHTS_FILE))?;
    let cfg_path = dir.join(CONFIG_FILE);
    std::fs::write(&cfg_path, config).map_err(|e| io(e, &cfg_path))?;
    Ok(())
}

/// Reads an adapter saved in the PEFT layout from `dir`.
///
/// `shapes` gives `[out, in]` per module for SHiRA files that do not record
/// it (pass an empty map otherwise; shapes given are checked against LoRA
/// and FouRA tensors too).
///
/// # Errors
/// [`AdapterError::InvalidFile`] for anything malformed or inconsistent;
/// I/O failures.
pub fn load(
    dir: impl AsRef<Path>,
    device: &Device,
    shapes: &LayerShapes,
) -> Result<BTreeMap<String, Adapter>> {
    let dir = dir.as_ref();
    let cfg_path = dir.join(CONFIG_FILE);
    let cfg_name = cfg_path.display().to_string();
    let io = |source| lastmile_core::CoreError::Io {
        path: cfg_name.clone(),
        source,
    };
    let f = std::fs::File::open(&cfg_path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    if len > MAX_CONFIG_BYTES {
        return Err(bad(
            &cfg_name,
            format!("{len} bytes, over the {MAX_CONFIG_BYTES}-byte limit for a config"),
        ));
    }
    let mut text = String::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| bad(&cfg_name, format!("not readable as UTF-8 text: {e}")))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(bad(&cfg_name, "grew past the size limit while being read"));
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    let file =
        TensorFile::load_with_limit(&weights_path, MAX_WEIGHTS_BYTES).map_err(|e| match e {
            lastmile_core::CoreError::InvalidFile(r) => bad(&weights_path.display().to_string(), r),
            other => other.into(),
        })?;
    from_peft(&file, &text, device, shapes).map_err(|e| match e {
        AdapterError::InvalidFile { path, reason } if path.is_empty() => {
            bad(&dir.display().to_string(), reason)
        }
        other => other,
    })
}

fn split_key<'a>(key: &'a str, suffixes: &[&'a str]) -> Option<(&'a str, &'a str)> {
    let key = key.strip_prefix(PEFT_PREFIX).unwrap_or(key);
    suffixes.iter().find_map(|s| {
        key.strip_suffix(s)
            .and_then(|m| m.strip_suffix('.'))
            .filter(|m| !m.is_empty())
            .map(|m| (m, *s))
    })
}

fn read_kind<K: PeftMapping>(
    file: &TensorFile,
    cfg: &Config,
    device: &Device,
    shapes: &LayerShapes,
) -> Result<BTreeMap<String, K>> {
    let suffixes = K::TENSORS;
    let mut modules: BTreeMap<String, BTreeMap<&str, (&str, &StoredTensor)>> = BTreeMap::new();
    for name in file.names() {
        let (m, s) = split_key(name, suffixes).ok_or_else(|| {
            bad(
                "",
                format!(
                    "unexpected tensor `{name}` for a {} adapter; expected keys ending in {suffixes:?}",
                    cfg.kind.name()
                ),
            )
        })?;
        let t = file
            .get(name)
            .ok_or_else(|| bad("", format!("tensor `{name}` vanished")))?;
        if modules
            .entry(m.to_owned())
            .or_default()
            .insert(s, (name, t))
            .is_some()
        {
            return Err(bad(
                "",
                format!("module `{m}` has `{s}` twice (with and without the PEFT prefix)"),
            ));
        }
    }
    if modules.is_empty() {
        return Err(bad("", "the tensor file holds no adapter tensors"));
    }
    let mut out = BTreeMap::new();
    for (m, parts) in modules {
        cfg.targets.check(&m)?;
        let module = ModuleTensors {
            name: &m,
            rank: pattern_value("rank_pattern", &cfg.rank_pattern, &m)?.unwrap_or(cfg.r),
            alpha: pattern_value("alpha_pattern", &cfg.alpha_pattern, &m)?.unwrap_or(cfg.alpha),
            shape: shapes.get(&m).copied(),
            file,
            parts,
        };
        let adapter = K::read(&module, cfg, device)?;
        out.insert(m, adapter);
    }
    Ok(out)
}

fn into_adapters<K: Into<Adapter>>(typed: BTreeMap<String, K>) -> BTreeMap<String, Adapter> {
    typed.into_iter().map(|(m, k)| (m, k.into())).collect()
}

/// Parses tensors plus config text (the in-memory form of [`load`]).
///
/// # Errors
/// [`AdapterError::InvalidFile`] (with an empty path) for anything
/// malformed or inconsistent.
pub fn from_peft(
    file: &TensorFile,
    config: &str,
    device: &Device,
    shapes: &LayerShapes,
) -> Result<BTreeMap<String, Adapter>> {
    let cfg = parse_config(config)?;
    Ok(match cfg.kind {
        AdapterKind::Lora => into_adapters(read_kind::<Lora>(file, &cfg, device, shapes)?),
        AdapterKind::Foura => into_adapters(read_kind::<Foura>(file, &cfg, device, shapes)?),
        AdapterKind::Shira => into_adapters(read_kind::<Shira>(file, &cfg, device, shapes)?),
    })
}

/// `"out,in"` as written to the safetensors metadata for SHiRA layers.
pub(crate) fn parse_shape(text: Option<&str>) -> Option<(usize, usize)> {
    let (a, b) = text?.split_once(',')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a > 0 && b > 0 && usize::checked_mul(a, b).is_some()).then_some((a, b))
}
