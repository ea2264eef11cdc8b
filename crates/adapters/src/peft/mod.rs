//! Saving and loading adapters in the layout of Hugging Face PEFT:
//! a directory with `adapter_model.safetensors` and `adapter_config.json`.
//!
//! | kind | tensors (per module, after `base_model.model.`) | config |
//! |---|---|---|
//! | LoRA | `<m>.lora_A.weight` `[r, in]`, `<m>.lora_B.weight` `[out, r]` | `peft_type: "LORA"`, `r`, `lora_alpha`, `lora_dropout`, `target_modules`, `use_rslora`, `rank_pattern`, `alpha_pattern`, `fan_in_fan_out` |
//! | SHiRA | `<m>.shira_weight` `[N]`, `<m>.shira_indices` `[2, N]` (rows; cols) | `peft_type: "SHIRA"`, `r`, `mask_type`, `target_modules` |
//! | FouRA | `<m>.foura_A.weight` `[r, in]`, `<m>.foura_B.weight` `[out, r]`, `<m>.foura_gate.{energy,entropy,bias}` `[r]`, `<m>.foura_mask` `[r]` | `peft_type: "FOURA"`, `r`, `foura_alpha`, `transform`, `gate`, `threshold`, `target_modules` |
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

use burn::tensor::{Device, Tensor};
use lastmile_core::convert::tensor_from_vec;
use lastmile_core::tensor_file::{StoredTensor, TensorFile, TensorValues};
use serde_json::{Map, Value, json};

use crate::adapter::{Adapter, AdapterKind};
use crate::error::{AdapterError, Result};
use crate::foura::{Foura, FouraConfig};
use crate::lora::Lora;
use crate::shira::{Shira, ShiraMask};

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

use config::{parse_config, pattern_value};

fn bad(path: &str, reason: impl Into<String>) -> AdapterError {
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

/// The tensors and config JSON for `layers` (module path → adapter), all of
/// one kind.
///
/// # Errors
/// Mixed kinds, an empty map, FouRA adapters of differing transform, gate or threshold.
pub fn to_peft(layers: &BTreeMap<String, Adapter>) -> Result<(TensorFile, String)> {
    let kind = kind_of(layers)?;
    let mut file = TensorFile::new();
    let targets: Vec<&String> = layers.keys().collect();
    let mut config = Map::new();
    config.insert("target_modules".into(), json!(targets));
    config.insert("bias".into(), json!("none"));
    config.insert("task_type".into(), Value::Null);
    config.insert("inference_mode".into(), json!(true));
    let key = |m: &str, suffix: &str| format!("{PEFT_PREFIX}{m}.{suffix}");
    match kind {
        AdapterKind::Lora | AdapterKind::Foura => {
            let mut ranks = BTreeMap::new();
            let mut alphas = BTreeMap::new();
            let mut foura_cfg: Option<FouraConfig> = None;
            let mut rslora = None;
            let mut dropout: Option<f64> = None;
            for (m, a) in layers {
                match a {
                    Adapter::Lora(l) => {
                        file.insert_float(&key(m, "lora_A.weight"), l.a.val())?;
                        file.insert_float(&key(m, "lora_B.weight"), l.b.val())?;
                        ranks.insert(m.clone(), l.rank());
                        alphas.insert(m.clone(), l.alpha());
                        if *rslora.get_or_insert(l.use_rslora()) != l.use_rslora() {
                            return Err(AdapterError::unsupported(
                                "save",
                                "LoRA",
                                "adapters mixing rsLoRA and classic scaling",
                            ));
                        }
                        // PEFT has one `lora_dropout` for every module.
                        if *dropout.get_or_insert(l.dropout_prob()) != l.dropout_prob() {
                            return Err(AdapterError::unsupported(
                                "save",
                                "LoRA",
                                "adapters with different dropout (PEFT stores one lora_dropout)",
                            ));
                        }
                    }
                    Adapter::Foura(f) => {
                        let c = f.config();
                        if let Some(prev) = &foura_cfg
                            && (prev.transform != c.transform
                                || prev.gate != c.gate
                                || prev.threshold != c.threshold)
                        {
                            return Err(AdapterError::unsupported(
                                "save",
                                "FouRA",
                                "modules with different transform, gate or threshold",
                            ));
                        }
                        foura_cfg = Some(c);
                        file.insert_float(&key(m, "foura_A.weight"), f.a.val())?;
                        file.insert_float(&key(m, "foura_B.weight"), f.b.val())?;
                        file.insert_float(&key(m, "foura_gate.energy"), f.gate.energy.val())?;
                        file.insert_float(&key(m, "foura_gate.entropy"), f.gate.entropy.val())?;
                        file.insert_float(&key(m, "foura_gate.bias"), f.gate.bias.val())?;
                        file.insert_float(&key(m, "foura_mask"), f.frozen_mask())?;
                        ranks.insert(m.clone(), f.rank());
                        alphas.insert(m.clone(), f.alpha());
                    }
                    Adapter::Shira(_) => {}
                }
            }
            let rank_list: Vec<usize> = ranks.values().copied().collect();
            let alpha_list: Vec<f64> = alphas.values().copied().collect();
            let r = mode(&rank_list).unwrap_or(1);
            let alpha = mode(&alpha_list).unwrap_or(1.0);
            // Pattern keys are regular expressions to PEFT: escape the
            // module paths so that each matches its own module literally.
            let rank_pattern: Map<String, Value> = ranks
                .iter()
                .filter(|(_, v)| **v != r)
                .map(|(k, v)| (regex::escape(k), json!(v)))
                .collect();
            let alpha_pattern: Map<String, Value> = alphas
                .iter()
                .filter(|(_, v)| **v != alpha)
                .map(|(k, v)| (regex::escape(k), json!(v)))
                .collect();
            config.insert("r".into(), json!(r));
            config.insert("rank_pattern".into(), Value::Object(rank_pattern));
            config.insert("alpha_pattern".into(), Value::Object(alpha_pattern));
            if let Some(c) = foura_cfg {
                config.insert("peft_type".into(), json!("FOURA"));
                config.insert("foura_alpha".into(), json!(alpha));
                config.insert("transform".into(), json!(c.transform.name()));
                config.insert("gate".into(), json!(c.gate.name()));
                config.insert("threshold".into(), json!(c.threshold));
            } else {
                config.insert("peft_type".into(), json!("LORA"));
                config.insert("lora_alpha".into(), json!(alpha));
                config.insert("use_rslora".into(), json!(rslora.unwrap_or(false)));
                config.insert("lora_dropout".into(), json!(dropout.unwrap_or(0.0)));
                config.insert("fan_in_fan_out".into(), json!(false));
                config.insert("init_lora_weights".into(), json!(true));
            }
        }
        AdapterKind::Shira => {
            let mut mask = None;
            let mut r = 1;
            for (m, a) in layers {
                if let Adapter::Shira(s) = a {
                    let (rows, cols) = s.coo();
                    let n = s.nnz();
                    let mut idx: Vec<i64> = Vec::with_capacity(2 * n);
                    idx.extend(rows.iter().map(|&v| v as i64));
                    idx.extend(cols.iter().map(|&v| v as i64));
                    file.insert_float(&key(m, "shira_weight"), s.values.val())?;
                    file.insert_indices(&key(m, "shira_indices"), vec![2, n], idx)?;
                    file.set_metadata(
                        &format!("lastmile.shape.{m}"),
                        &format!("{},{}", s.d_out(), s.d_in()),
                    );
                    mask = mask.or(s.mask_kind());
                    r = (n / (s.d_out() + s.d_in())).max(1);
                }
            }
            config.insert("peft_type".into(), json!("SHIRA"));
            config.insert("r".into(), json!(r));
            config.insert(
                "mask_type".into(),
                json!(mask.map_or("custom", ShiraMask::name)),
            );
            config.insert("random_seed".into(), Value::Null);
        }
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
/// let lora = LoraConfig::new(2, 4.0).init(3, 5, &device).unwrap();
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

fn float_of<'a>(t: &'a StoredTensor, key: &str) -> Result<&'a [f32]> {
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

fn float_tensor<const D: usize>(
    t: &StoredTensor,
    key: &str,
    shape: [usize; D],
    device: &Device,
) -> Result<Tensor<D>> {
    if t.shape != shape {
        return Err(bad(
            "",
            format!("tensor `{key}` has shape {:?}, expected {shape:?}", t.shape),
        ));
    }
    Ok(tensor_from_vec(float_of(t, key)?.to_vec(), shape, device)?)
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
    let suffixes: &[&str] = match cfg.kind {
        AdapterKind::Lora => &["lora_A.weight", "lora_B.weight"],
        AdapterKind::Shira => &["shira_weight", "shira_indices"],
        AdapterKind::Foura => &[
            "foura_A.weight",
            "foura_B.weight",
            "foura_gate.energy",
            "foura_gate.entropy",
            "foura_gate.bias",
            "foura_mask",
        ],
    };
    let mut modules: BTreeMap<String, BTreeMap<&str, (&str, &StoredTensor)>> = BTreeMap::new();
    for name in file.names() {
        let (m, s) = split_key(name, suffixes)
            .ok_or_else(|| bad("", format!("unexpected tensor `{name}` for a {} adapter; expected keys ending in {suffixes:?}", cfg.kind.name())))?;
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
    for (m, parts) in &modules {
        cfg.targets.check(m)?;
        let get = |s: &str| {
            parts
                .get(s)
                .copied()
                .ok_or_else(|| bad("", format!("module `{m}` lacks `{s}`")))
        };
        let r = pattern_value("rank_pattern", &cfg.rank_pattern, m)?.unwrap_or(cfg.r);
        let alpha = pattern_value("alpha_pattern", &cfg.alpha_pattern, m)?.unwrap_or(cfg.alpha);
        let expected_shape = shapes.get(m).copied();
        let check_shape = |d_out: usize, d_in: usize| -> Result<()> {
            match expected_shape {
                Some(s) if s != (d_out, d_in) => Err(bad(
                    "",
                    format!("module `{m}` is [{d_out}, {d_in}], expected {s:?}"),
                )),
                _ => Ok(()),
            }
        };
        let adapter = match cfg.kind {
            AdapterKind::Lora | AdapterKind::Foura => {
                let (ka, kb) = if cfg.kind == AdapterKind::Lora {
                    ("lora_A.weight", "lora_B.weight")
                } else {
                    ("foura_A.weight", "foura_B.weight")
                };
                let (na, ta) = get(ka)?;
                let (nb, tb) = get(kb)?;
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
                check_shape(d_out, d_in)?;
                let a = float_tensor(ta, na, [r, d_in], device)?;
                let b = float_tensor(tb, nb, [d_out, r], device)?;
                match (&cfg.foura, cfg.kind) {
                    (Some(fc), AdapterKind::Foura) => {
                        let fc = FouraConfig {
                            rank: r,
                            alpha,
                            ..fc.clone()
                        };
                        let mut f = Foura::from_factors(a, b, &fc)?;
                        let vec = |s: &str| -> Result<Tensor<1>> {
                            let (n, t) = get(s)?;
                            float_tensor(t, n, [r], device)
                        };
                        let energy = vec("foura_gate.energy")?;
                        let entropy = vec("foura_gate.entropy")?;
                        let bias = vec("foura_gate.bias")?;
                        f.gate.energy = f.gate.energy.map(|_| energy);
                        f.gate.entropy = f.gate.entropy.map(|_| entropy);
                        f.gate.bias = f.gate.bias.map(|_| bias);
                        let mask = vec("foura_mask")?;
                        let mode = f.gate_mode();
                        f = f
                            .with_frozen_mask(mask)
                            .map_err(|e| bad("", format!("module `{m}`: {e}")))?
                            .with_gate_mode(mode);
                        Adapter::Foura(f)
                    }
                    _ => Adapter::Lora(
                        Lora::from_factors(a, b, alpha, cfg.use_rslora)?
                            .with_dropout(cfg.dropout)?,
                    ),
                }
            }
            AdapterKind::Shira => {
                let (nw, tw) = get("shira_weight")?;
                let (ni, ti) = get("shira_indices")?;
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
                let (d_out, d_in) = match expected_shape {
                    Some(s) => s,
                    None => parse_shape(file.metadata(&format!("lastmile.shape.{m}")))
                        .ok_or_else(|| bad("", format!("module `{m}`: the file does not record its [out, in]; pass it in `shapes`")))?,
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
                Adapter::Shira(match cfg.mask {
                    Some(k) => s.with_mask_kind(k),
                    None => s,
                })
            }
        };
        out.insert(m.clone(), adapter);
    }
    Ok(out)
}

fn parse_shape(text: Option<&str>) -> Option<(usize, usize)> {
    let (a, b) = text?.split_once(',')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a > 0 && b > 0 && usize::checked_mul(a, b).is_some()).then_some((a, b))
}
