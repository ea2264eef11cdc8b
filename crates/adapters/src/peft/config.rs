//! `adapter_config.json`: parsing, and the conventions PEFT applies to it.
//!
//! - **Patterns.** `rank_pattern` and `alpha_pattern` keys match module
//!   paths as PEFT matches them: key `k` applies to module `m` when the
//!   regular expression `(.*\.)?(k)$` matches all of `m`, so `fc1` applies
//!   to `mlp.fc1` and `layers\.[01]\.q_proj` to `model.layers.0.q_proj`.
//!   PEFT takes the first matching key in file order; JSON objects are read
//!   here without their order, so two matching keys with different values
//!   are an error rather than a guess.
//! - **`target_modules`**: a list matches a module equal to an entry or
//!   ending in `.<entry>`; a string is a regular expression that must match
//!   the whole path (PEFT's `re.fullmatch`).
//! - **Fields not implemented** are refused with
//!   [`AdapterError::Unsupported`] instead of loading a different adapter:
//!   `use_dora: true` (DoRA's magnitude vector), `lora_bias: true`, `bias`
//!   other than `"none"` (trained biases), non-empty `modules_to_save`
//!   (whole replaced modules), `layer_replication`.
//! - **`fan_in_fan_out`** is honoured: PEFT stores `lora_A` as `[r, in]`
//!   and `lora_B` as `[out, r]` whatever the base layer's layout, and the
//!   flag only says that the base weight is stored `[in, out]` (GPT-2's
//!   `Conv1D`). `ΔW` is read in `[out, in]` either way, and deployment
//!   orients it by the target layer's layout.

use regex::Regex;
use serde_json::{Map, Value};

use super::{MAX_RANK, bad};
use crate::adapter::AdapterKind;
use crate::error::{AdapterError, Result};
use crate::foura::{FouraConfig, GateMode};
use crate::shira::ShiraMask;
use crate::transform::SpectralTransform;

/// Longest pattern or `target_modules` expression accepted from a file.
const MAX_PATTERN_LEN: usize = 1024;

/// A parsed configuration.
pub struct Config {
    pub(super) kind: AdapterKind,
    pub(super) r: usize,
    pub(super) alpha: f64,
    pub(super) rank_pattern: Vec<Pattern<usize>>,
    pub(super) alpha_pattern: Vec<Pattern<f64>>,
    pub(crate) use_rslora: bool,
    pub(crate) dropout: f64,
    pub(super) targets: Targets,
    pub(crate) foura: Option<FouraConfig>,
    pub(crate) mask: Option<ShiraMask>,
}

/// One `rank_pattern` / `alpha_pattern` entry.
pub(super) struct Pattern<T> {
    key: String,
    regex: Regex,
    value: T,
}

/// `target_modules`.
pub(super) enum Targets {
    /// Absent: every module in the file is taken.
    Any,
    /// Names: a module equal to one or ending in `.<name>`.
    Names(Vec<String>),
    /// A regular expression matching the whole path.
    Regex(String, Regex),
}

impl Targets {
    /// Typed error unless `module` is targeted.
    pub(super) fn check(&self, module: &str) -> Result<()> {
        let ok = match self {
            Targets::Any => true,
            Targets::Names(names) => names
                .iter()
                .any(|t| module == t || module.ends_with(&format!(".{t}"))),
            Targets::Regex(_, re) => re.is_match(module),
        };
        if ok {
            return Ok(());
        }
        let targets = match self {
            Targets::Any => String::new(),
            Targets::Names(n) => format!("{n:?}"),
            Targets::Regex(src, _) => format!("{src:?} (a regular expression)"),
        };
        Err(bad(
            "",
            format!("module `{module}` is not in target_modules {targets}"),
        ))
    }
}

/// The value the patterns give `module`: `None` when no key matches, the
/// common value when every matching key agrees, an error otherwise.
pub(super) fn pattern_value<T: Copy + PartialEq + std::fmt::Display>(
    what: &str,
    patterns: &[Pattern<T>],
    module: &str,
) -> Result<Option<T>> {
    let hits: Vec<&Pattern<T>> = patterns
        .iter()
        .filter(|p| p.regex.is_match(module))
        .collect();
    match hits.as_slice() {
        [] => Ok(None),
        [first, rest @ ..] => {
            if let Some(other) = rest.iter().find(|p| p.value != first.value) {
                return Err(bad(
                    "",
                    format!(
                        "module `{module}` matches `{what}` keys {:?} (= {}) and {:?} (= {}); \
                         expected the keys that match one module to agree",
                        first.key, first.value, other.key, other.value
                    ),
                ));
            }
            Ok(Some(first.value))
        }
    }
}

/// `^(?:<expr>)$`, or an error naming the field.
fn anchored(field: &str, expr: &str, suffix_match: bool) -> Result<Regex> {
    if expr.len() > MAX_PATTERN_LEN {
        return Err(bad(
            "",
            format!(
                "`{field}` has a key of {} bytes; expected at most {MAX_PATTERN_LEN}",
                expr.len()
            ),
        ));
    }
    let source = if suffix_match {
        format!(r"^(?:.*\.)?(?:{expr})$")
    } else {
        format!("^(?:{expr})$")
    };
    Regex::new(&source).map_err(|e| {
        bad(
            "",
            format!("`{field}` key {expr:?} is not a regular expression: {e}"),
        )
    })
}

fn parse_rank(v: &Value, what: &str) -> Result<usize> {
    match v.as_u64() {
        Some(r) if r > 0 && r <= MAX_RANK => Ok(r as usize),
        _ => Err(bad(
            "",
            format!("`{what}` = {v}; expected an integer in [1, {MAX_RANK}]"),
        )),
    }
}

fn parse_alpha(v: &Value, what: &str) -> Result<f64> {
    match v.as_f64() {
        Some(a) if a.is_finite() && a > 0.0 => Ok(a),
        _ => Err(bad(
            "",
            format!("`{what}` = {v}; expected a finite number > 0"),
        )),
    }
}

fn flag(obj: &Map<String, Value>, key: &str) -> Result<bool> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad(
            "",
            format!("`{key}` = {other}; expected true or false"),
        )),
    }
}

fn unsupported(field: &str, reason: &str) -> AdapterError {
    AdapterError::Unsupported {
        op: "load",
        kind: format!("PEFT file with {field}"),
        reason: reason.to_owned(),
    }
}

/// Refuses the PEFT fields that would make the file mean another adapter.
fn refuse_unimplemented(obj: &Map<String, Value>) -> Result<()> {
    if flag(obj, "use_dora")? {
        return Err(unsupported(
            "use_dora: true",
            "DoRA's learned magnitude vector is not implemented; expected use_dora false",
        ));
    }
    if flag(obj, "lora_bias")? {
        return Err(unsupported(
            "lora_bias: true",
            "a bias on lora_B is not implemented; expected lora_bias false",
        ));
    }
    match obj.get("bias") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "none" => {}
        Some(other) => {
            return Err(unsupported(
                &format!("bias: {other}"),
                "trained biases are not part of these adapters; expected bias \"none\"",
            ));
        }
    }
    match obj.get("modules_to_save") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(other) => {
            return Err(unsupported(
                &format!("modules_to_save: {other}"),
                "fully trained replacement modules are not adapters; expected none",
            ));
        }
    }
    match obj.get("layer_replication") {
        None | Some(Value::Null) => Ok(()),
        Some(other) => Err(unsupported(
            &format!("layer_replication: {other}"),
            "layer replication is not implemented; expected null",
        )),
    }
}

/// Parses and validates `adapter_config.json`.
pub(super) fn parse_config(text: &str) -> Result<Config> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| bad("", format!("config is not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("", "config must be a JSON object"))?;
    let peft_type = obj
        .get("peft_type")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("", "config lacks a string `peft_type`"))?;
    let kind = match peft_type {
        "LORA" => AdapterKind::Lora,
        "SHIRA" => AdapterKind::Shira,
        "FOURA" => AdapterKind::Foura,
        other => {
            return Err(bad(
                "",
                format!("`peft_type` = {other:?}; expected \"LORA\", \"SHIRA\" or \"FOURA\""),
            ));
        }
    };
    refuse_unimplemented(obj)?;
    // Honoured by orientation: see the module docs.
    flag(obj, "fan_in_fan_out")?;
    let r = parse_rank(obj.get("r").unwrap_or(&Value::Null), "r")?;
    let alpha_key = if kind == AdapterKind::Foura {
        "foura_alpha"
    } else {
        "lora_alpha"
    };
    let alpha = match obj.get(alpha_key) {
        Some(a) => parse_alpha(a, alpha_key)?,
        // SHiRA has no scaling.
        None if kind == AdapterKind::Shira => 1.0,
        None => return Err(bad("", format!("config lacks `{alpha_key}`"))),
    };
    let pattern = |key: &str| -> Result<Map<String, Value>> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m.clone()),
            Some(other) => Err(bad(
                "",
                format!("`{key}` = {other}; expected an object of module → value"),
            )),
        }
    };
    let rank_pattern = pattern("rank_pattern")?
        .iter()
        .map(|(k, v)| {
            Ok(Pattern {
                key: k.clone(),
                regex: anchored("rank_pattern", k, true)?,
                value: parse_rank(v, &format!("rank_pattern.{k}"))?,
            })
        })
        .collect::<Result<_>>()?;
    let alpha_pattern = pattern("alpha_pattern")?
        .iter()
        .map(|(k, v)| {
            Ok(Pattern {
                key: k.clone(),
                regex: anchored("alpha_pattern", k, true)?,
                value: parse_alpha(v, &format!("alpha_pattern.{k}"))?,
            })
        })
        .collect::<Result<_>>()?;
    let use_rslora = flag(obj, "use_rslora")?;
    let dropout = match obj.get("lora_dropout") {
        None | Some(Value::Null) => 0.0,
        Some(v) => match v.as_f64() {
            Some(p) if (0.0..1.0).contains(&p) => p,
            _ => {
                return Err(bad(
                    "",
                    format!("`lora_dropout` = {v}; expected a number in [0, 1)"),
                ));
            }
        },
    };
    let targets = match obj.get("target_modules") {
        Some(Value::Array(list)) => Targets::Names(
            list.iter()
                .map(|t| {
                    t.as_str().map(str::to_owned).ok_or_else(|| {
                        bad("", format!("`target_modules` entry {t} is not a string"))
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        ),
        Some(Value::String(expr)) => {
            Targets::Regex(expr.clone(), anchored("target_modules", expr, false)?)
        }
        None | Some(Value::Null) => Targets::Any,
        Some(other) => {
            return Err(bad(
                "",
                format!("`target_modules` = {other}; expected a list of names or a string"),
            ));
        }
    };
    let foura = if kind == AdapterKind::Foura {
        let s = |k: &str| {
            obj.get(k)
                .and_then(Value::as_str)
                .ok_or_else(|| bad("", format!("FouRA config lacks a string `{k}`")))
        };
        let transform = SpectralTransform::from_name(s("transform")?)
            .ok_or_else(|| bad("", "`transform` must be \"identity\", \"dct\" or \"rfft\""))?;
        let gate = GateMode::from_name(s("gate")?)
            .ok_or_else(|| bad("", "`gate` must be \"adaptive\", \"frozen\" or \"off\""))?;
        let threshold = obj
            .get("threshold")
            .and_then(Value::as_f64)
            .filter(|t| t.is_finite() && *t > 0.0 && *t < 1.0)
            .ok_or_else(|| bad("", "`threshold` must be a number in (0, 1)"))?;
        Some(FouraConfig {
            rank: r,
            alpha,
            transform,
            gate,
            threshold,
            seed: None,
        })
    } else {
        None
    };
    let mask = obj
        .get("mask_type")
        .and_then(Value::as_str)
        .and_then(ShiraMask::from_name);
    Ok(Config {
        kind,
        r,
        alpha,
        rank_pattern,
        alpha_pattern,
        use_rslora,
        dropout,
        targets,
        foura,
        mask,
    })
}
