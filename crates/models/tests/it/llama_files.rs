//! Llama GGUF files with bad metadata or tensors (typed errors, never a
//! panic or a silently wrong model), and how the RoPE scaling keys are
//! read, on files written by the GGUF writer of `llama.rs`.
#![allow(clippy::unwrap_used)]

use burn::tensor::Device;
use lastmile_core::backend_test;
use lastmile_core::gguf::GgufFile;
use lastmile_models::llama::{
    LlamaConfig, LlamaError, LlamaModel, RopeScaling, Scales, WeightStorage,
};

use crate::llama::{Checkpoint, Value, base_meta, checkpoint, small_config, tensors, write_gguf};

fn from_meta(
    meta: Vec<(&'static str, Value)>,
    ck: &Checkpoint,
    device: &Device,
) -> Result<LlamaModel, LlamaError> {
    let file = GgufFile::from_vec(write_gguf(&meta, &tensors(ck))).unwrap();
    LlamaModel::from_gguf(&file, WeightStorage::F32, device)
}

fn with(c: &LlamaConfig, key: &'static str, value: Option<Value>) -> Vec<(&'static str, Value)> {
    let mut meta: Vec<_> = base_meta(c)
        .into_iter()
        .filter(|(k, _)| *k != key)
        .collect();
    if let Some(v) = value {
        meta.push((key, v));
    }
    meta
}

backend_test!(bad_files_are_typed_errors, |device| {
    let c = small_config(true);
    let ck = checkpoint(&c, 2);
    assert!(matches!(
        from_meta(with(&c, "general.architecture", Some(Value::Str("gpt2".into()))), &ck, device),
        Err(LlamaError::Architecture { found }) if found == "gpt2"
    ));
    // Missing or mistyped required keys are the reader's errors; values
    // out of range name the configuration field they break.
    let (u, s) = (
        |n| Some(Value::U32(n)),
        |t: &str| Some(Value::Str(t.into())),
    );
    let cases = [
        ("llama.block_count", None, None),
        ("llama.block_count", s("2"), None),
        ("llama.attention.head_count_kv", u(3), Some("n_kv_heads")),
        ("llama.attention.head_count", u(5), Some("d_model")),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Some(Value::F32(-1.0)),
            Some("rms_eps"),
        ),
        (
            "llama.rope.dimension_count",
            u(4),
            Some("rope.dimension_count"),
        ),
        (
            "llama.rope.scaling.type",
            s("longrope"),
            Some("rope.scaling.type"),
        ),
        ("llama.context_length", u(0), Some("max_context")),
    ];
    for (key, value, field) in cases {
        let got = from_meta(with(&c, key, value), &ck, device);
        let as_expected = match field {
            None => matches!(got, Err(LlamaError::Gguf(_))),
            Some(want) => matches!(got, Err(LlamaError::Config { field, .. }) if field == want),
        };
        assert!(as_expected, "{key}: {got:?}");
    }
    // A tensor whose shape disagrees with the metadata.
    assert!(matches!(
        from_meta(with(&c, "llama.feed_forward_length", Some(Value::U32(41))), &ck, device),
        Err(LlamaError::TensorShape { name, expected, found })
            if name == "blk.0.ffn_gate.weight" && expected == [41, 32] && found == [40, 32]
    ));
    // A missing tensor.
    let mut t = tensors(&ck);
    t.retain(|(n, _, _)| n != "blk.1.ffn_up.weight");
    let file = GgufFile::from_vec(write_gguf(&base_meta(&c), &t)).unwrap();
    assert!(matches!(
        LlamaModel::from_gguf(&file, WeightStorage::F32, device),
        Err(LlamaError::Gguf(_))
    ));
    // Absent optional keys take llama.cpp's defaults.
    let mut meta = with(&c, "llama.attention.head_count_kv", None);
    meta.retain(|(k, _)| *k != "llama.rope.freq_base");
    let file = GgufFile::from_vec(write_gguf(
        &meta,
        &tensors(&checkpoint(
            &LlamaConfig {
                n_kv_heads: 4,
                ..c.clone()
            },
            2,
        )),
    ))
    .unwrap();
    let config = LlamaConfig::from_gguf(&file).unwrap();
    assert_eq!((config.n_kv_heads, config.rope_base), (4, 10_000.0));
    // Biases: Qwen2's query/key/value ones must fit their projection; any
    // other (a fused query/key/value one too) is refused rather than left
    // out, as are LongRoPE's factors (Phi-3's 128K files).
    let d = c.d_model;
    let kv = c.n_kv_heads * c.head_dim();
    for (name, len, want) in [
        ("blk.0.attn_q.bias", d + 1, "shape"),
        ("blk.1.attn_output.bias", d, "refused"),
        ("blk.0.attn_qkv.bias", d + 2 * kv, "refused"),
        ("output.bias", c.vocab_size, "refused"),
        ("rope_factors_long.weight", c.head_dim() / 2, "refused"),
        // Qwen3's per-head norms belong to `qwen3` files only.
        ("blk.0.attn_q_norm.weight", c.head_dim(), "refused"),
    ] {
        let mut t = tensors(&ck);
        t.push((name.to_owned(), vec![len], vec![0.0; len]));
        let file = GgufFile::from_vec(write_gguf(&base_meta(&c), &t)).unwrap();
        let got = LlamaModel::from_gguf(&file, WeightStorage::F32, device);
        match want {
            "shape" => assert!(
                matches!(&got, Err(LlamaError::TensorShape { name: n, .. }) if n == name),
                "{name}: {got:?}"
            ),
            _ => assert!(
                matches!(&got, Err(LlamaError::Config { field: "tensor", value, .. }) if value == name),
                "{name}: {got:?}"
            ),
        }
    }
});

/// The configuration read from a file of `small_config(true)` with the
/// metadata `extra` added.
fn config_with(extra: Vec<(&'static str, Value)>) -> Result<LlamaConfig, LlamaError> {
    config_as("llama", &extra)
}

/// A head width set by the file (`attention.key_length`, Qwen3's) is read;
/// a value width other than the key width is refused. An attention scale
/// is read (llama.cpp's `llama` graph reads it too), 0 meaning 1/√d_head;
/// one that is not finite and positive is refused.
#[test]
fn head_width_and_attention_scale_are_read_and_unsupported_widths_refused() {
    let c = small_config(true);
    let read = config_with;
    let dh = c.head_dim() as u32;
    let same = read(vec![
        ("llama.attention.key_length", Value::U32(dh)),
        ("llama.attention.value_length", Value::U32(dh)),
    ])
    .unwrap();
    assert_eq!(
        (same.head_width, same.head_dim()),
        (Some(c.head_dim()), c.head_dim())
    );
    let got = read(vec![
        ("llama.attention.key_length", Value::U32(dh)),
        ("llama.attention.value_length", Value::U32(2 * dh)),
    ]);
    assert!(
        matches!(
            &got,
            Err(LlamaError::Config {
                field: "attention.value_length",
                ..
            })
        ),
        "{got:?}"
    );
    let default = 1.0 / (c.head_dim() as f32).sqrt();
    let scale = |s: f32| read(vec![("llama.attention.scale", Value::F32(s))]);
    assert_eq!(scale(0.0).unwrap().attention_scale(), default);
    assert_eq!(
        scale(0.5 * default).unwrap().attention_scale(),
        0.5 * default
    );
    for bad in [-0.5, f32::NAN, f32::INFINITY] {
        let got = scale(bad);
        assert!(
            matches!(
                &got,
                Err(LlamaError::Config {
                    field: "attention scale",
                    ..
                })
            ),
            "{bad}: {got:?}"
        );
    }
}

/// `small_config(true)`'s file under architecture `arch` (its `llama.`
/// keys renamed) with the metadata `extra` added, and its configuration.
fn config_as(arch: &str, extra: &[(&str, Value)]) -> Result<LlamaConfig, LlamaError> {
    let c = small_config(true);
    let mut meta: Vec<(String, Value)> = base_meta(&c)
        .into_iter()
        .map(|(k, v)| match k {
            "general.architecture" => (k.to_owned(), Value::Str(arch.to_owned())),
            _ => (k.replacen("llama", arch, 1), v),
        })
        .collect();
    meta.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    let meta: Vec<(&str, Value)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let file = GgufFile::from_vec(write_gguf(&meta, &tensors(&checkpoint(&c, 2)))).unwrap();
    LlamaConfig::from_gguf(&file)
}

/// Granite's multipliers come from a `granite` file, its logit scale
/// required as llama.cpp requires it and an embedding or residual scale of
/// 0 meaning none; `granite.rope.scaling.finetuned = false` turns the rotary
/// positions off in every block; a `llama` file's Granite keys are ignored,
/// as llama.cpp's `llama` graph ignores them.
#[test]
fn granite_scales_are_read_from_granite_files_only() {
    let scales = [
        ("granite.embedding_scale", Value::F32(12.0)),
        ("granite.residual_scale", Value::F32(0.22)),
        ("granite.attention.scale", Value::F32(0.0078125)),
        ("granite.logit_scale", Value::F32(16.0)),
    ];
    let c = config_as("granite", &scales).unwrap();
    let want = Scales {
        embedding: 12.0,
        residual: 0.22,
        attention: Some(0.0078125),
        logit: 16.0,
    };
    assert_eq!((c.scales, c.nope_every), (want, None));
    let got = config_as("granite", &scales[..3]);
    assert!(matches!(got, Err(LlamaError::Gguf(_))), "{got:?}");
    let none = [
        ("granite.embedding_scale", Value::F32(0.0)),
        ("granite.residual_scale", Value::F32(0.0)),
        ("granite.logit_scale", Value::F32(2.0)),
        ("granite.rope.scaling.finetuned", Value::Bool(false)),
    ];
    let c = config_as("granite", &none).unwrap();
    assert_eq!(
        c.scales,
        Scales {
            logit: 2.0,
            ..Scales::default()
        }
    );
    assert!((0..c.n_layers).all(|l| !c.rotates(l)));
    let llama = [
        ("llama.embedding_scale", Value::F32(12.0)),
        ("llama.logit_scale", Value::F32(16.0)),
    ];
    assert_eq!(
        config_as("llama", &llama).unwrap().scales,
        Scales::default()
    );
    let got = config_as("granite", &[("granite.logit_scale", Value::F32(0.0))]);
    assert!(
        matches!(
            got,
            Err(LlamaError::Config {
                field: "logit scale",
                ..
            })
        ),
        "{got:?}"
    );
}

/// RoPE scaling as llama.cpp reads it: linear by `rope.scaling.factor`
/// (or the older `rope.scale_linear`) when the type is `linear` or absent
/// (llama.cpp's default); YaRN with its original context (else the
/// context length); nothing for `none` whatever the factor; LongRoPE and
/// an attention factor other than 1 refused.
#[test]
fn rope_scaling_is_read_as_llama_cpp_reads_it() {
    let c = small_config(true);
    let read = |extra| config_with(extra).map(|c| c.rope_scaling);
    let ok = |extra| read(extra).ok();
    let kind = |k: &str| ("llama.rope.scaling.type", Value::Str(k.into()));
    let factor = |f| ("llama.rope.scaling.factor", Value::F32(f));
    let linear = |factor| Some(RopeScaling::Linear { factor });
    assert_eq!(ok(vec![]), Some(RopeScaling::None));
    assert_eq!(ok(vec![kind("linear")]), Some(RopeScaling::None));
    assert_eq!(ok(vec![factor(4.0)]), linear(4.0));
    assert_eq!(ok(vec![kind("linear"), factor(2.0)]), linear(2.0));
    let old_key = ("llama.rope.scale_linear", Value::F32(8.0));
    assert_eq!(ok(vec![old_key]), linear(8.0));
    assert_eq!(ok(vec![kind("none"), factor(4.0)]), Some(RopeScaling::None));
    let yarn = |original_context| {
        Some(RopeScaling::Yarn {
            factor: 4.0,
            original_context,
        })
    };
    assert_eq!(ok(vec![kind("yarn"), factor(4.0)]), yarn(c.max_context));
    let original = ("llama.rope.scaling.original_context_length", Value::U32(16));
    assert_eq!(ok(vec![kind("yarn"), factor(4.0), original]), yarn(16));
    let refused = |extra| matches!(read(extra), Err(LlamaError::Config { field, .. }) if field.starts_with("rope.scaling"));
    assert!(refused(vec![kind("longrope"), factor(4.0)]));
    let attn = ("llama.rope.scaling.attn_factor", Value::F32(1.2));
    assert!(refused(vec![kind("yarn"), factor(4.0), attn]));
}
