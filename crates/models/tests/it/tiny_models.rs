//! Tiny random models against llama.cpp: Llama 3.1's per-pair RoPE
//! frequency factors, linear and YaRN RoPE scaling, and Qwen2's, Phi-3's,
//! Qwen3's, SmolLM3's and Granite's architectures.
//!
//! `fixtures/make_tiny_models_fixture.py` wrote each model with the `gguf`
//! package (0.19.0) and llama.cpp's logits for it (llama-cpp-python 0.3.36:
//! F32 weights, f32 cache, all 64 positions of a seeded token sequence):
//!
//! - `tiny_llama3_rope` (113 kB: 2 blocks, width 32, 4 query / 2 key-value
//!   heads, factors `[1, 2, 8, 32]`): without the factors llama.cpp's
//!   logits move by up to 29 (median 9.8 per position);
//! - `tiny_llama_rope_linear` (the same shape, no factors, linear scaling
//!   by 4): ignoring the scale, 38.6 off;
//! - `tiny_llama_rope_yarn` (YaRN by 4 from an original context of 32):
//!   30.2 off as plain linear scaling (no ramp), 13.7 without the
//!   magnitude `1 + 0.1 ln 4`;
//! - `tiny_qwen2` (186 kB: width 48, heads of width 12, q/k/v biases, NEOX
//!   rotation, RoPE base 10⁶): with the loader broken on purpose when the
//!   test was written, 28.8 off without the biases and 38.5 rotating
//!   without reordering the rows (NORM pairs instead of NEOX's);
//! - `tiny_phi3` (145 kB: width 32, fused `attn_qkv` and `ffn_up`, NEOX
//!   rotation, an untied `output.weight`, a sliding window of 16 that
//!   llama.cpp ignores for `phi3`): with the loader broken on purpose when
//!   the test was written, 9.0 off with the gate and up halves swapped, 10.5
//!   with the key and value rows swapped, 10.0 rotating without reordering;
//! - `tiny_qwen3` (138 kB: width 32, 4 query heads of width 16 — the query
//!   projection 64 rows, the output projection 64 inputs —, per-head query
//!   and key RMSNorm gains, NEOX rotation, RoPE base 10⁶): with the loader
//!   broken on purpose when the test was written, 18.6 off without
//!   the query norm, 23.9 without the key norm, 9.2 with the
//!   gains not reordered for NEOX;
//! - `tiny_smollm3` (188 kB: 4 blocks of width 32, block 3 without rotary
//!   positions): with the loader broken on purpose when the test was
//!   written, 9.8 off rotating every block, 25.2 with the step
//!   counted from block 0;
//! - `tiny_granite` (113 kB: Llama's shape with Granite's multipliers:
//!   embeddings × 4, residual branches × 0.5, scores × 1/8 instead of
//!   1/√8, logits ÷ 3): with the model broken on purpose when the test was
//!   written, 12.5 off without the embedding scale, 4.7 without the residual
//!   scale, 2.4 scoring by 1/√8 and 26.3 without the logit scale (logits
//!   span −8.0…13.2).
//!
//! Agreement to 1e-3 therefore shows each is applied as llama.cpp applies it.
#![allow(clippy::unwrap_used)]

use burn::tensor::Device;
use lastmile_core::backend_test;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::gguf::GgufFile;
use lastmile_models::llama::{LlamaConfig, LlamaModel, LlamaModule, RopeScaling, WeightStorage};
use serde::Deserialize;

/// The models and their fixtures, by name.
const MODELS: [(&str, &[u8], &str); 8] = [
    (
        "rope_freqs",
        include_bytes!("../fixtures/tiny_llama3_rope.gguf"),
        include_str!("../fixtures/tiny_llama3_rope.json"),
    ),
    (
        "rope_linear",
        include_bytes!("../fixtures/tiny_llama_rope_linear.gguf"),
        include_str!("../fixtures/tiny_llama_rope_linear.json"),
    ),
    (
        "rope_yarn",
        include_bytes!("../fixtures/tiny_llama_rope_yarn.gguf"),
        include_str!("../fixtures/tiny_llama_rope_yarn.json"),
    ),
    (
        "qwen2",
        include_bytes!("../fixtures/tiny_qwen2.gguf"),
        include_str!("../fixtures/tiny_qwen2.json"),
    ),
    (
        "phi3",
        include_bytes!("../fixtures/tiny_phi3.gguf"),
        include_str!("../fixtures/tiny_phi3.json"),
    ),
    (
        "qwen3",
        include_bytes!("../fixtures/tiny_qwen3.gguf"),
        include_str!("../fixtures/tiny_qwen3.json"),
    ),
    (
        "smollm3",
        include_bytes!("../fixtures/tiny_smollm3.gguf"),
        include_str!("../fixtures/tiny_smollm3.json"),
    ),
    (
        "granite",
        include_bytes!("../fixtures/tiny_granite.gguf"),
        include_str!("../fixtures/tiny_granite.json"),
    ),
];
/// Largest |Δlogit| accepted (logits span about −30..26; f32 sums in another order).
const TOL: f32 = 1e-3;

#[derive(Deserialize)]
struct Fixture {
    rope_base: f32,
    rope_freqs: Vec<f32>,
    rope_scaling_factor: f32,
    tokens: Vec<usize>,
    logits: Vec<Vec<f32>>,
}

/// Model `name`'s file and fixture.
fn open(name: &str) -> (GgufFile, Fixture) {
    let (_, model, fixture) = MODELS.iter().find(|m| m.0 == name).unwrap();
    let file = GgufFile::from_vec(model.to_vec()).unwrap();
    (file, serde_json::from_str(fixture).unwrap())
}

/// The largest |Δlogit| of `ours` (`[n · vocab]`) against llama.cpp's.
fn worst(ours: &[f32], fixture: &Fixture, vocab: usize) -> f32 {
    assert_eq!(ours.len(), fixture.tokens.len() * vocab);
    ours.chunks_exact(vocab)
        .zip(&fixture.logits)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0.0f32, f32::max)
}

/// Model `name`'s logits at every position, the sequence in one pass and
/// again as a prefix pass followed by one-token steps, against llama.cpp's.
fn agrees(name: &str, storage: WeightStorage, device: &Device) {
    let (file, fixture) = open(name);
    let model = LlamaModel::from_gguf(&file, storage, device).unwrap();
    let config = model.config();
    assert_eq!(config.rope_base, fixture.rope_base);
    assert_eq!(config.rope_freq_factors, fixture.rope_freqs);
    assert_eq!(config.rope_scaling.factor(), fixture.rope_scaling_factor);
    let n = fixture.tokens.len();
    let mut cache = model.new_cache(1).unwrap();
    let whole = tensor_to_vec(
        model
            .forward_cached(&mut cache, std::slice::from_ref(&fixture.tokens))
            .unwrap(),
    )
    .unwrap();
    let mut cache = model.new_cache(1).unwrap();
    let split = 40;
    let mut stepped = tensor_to_vec(
        model
            .forward_cached(&mut cache, &[fixture.tokens[..split].to_vec()])
            .unwrap(),
    )
    .unwrap();
    for &t in &fixture.tokens[split..] {
        stepped
            .extend(tensor_to_vec(model.forward_cached(&mut cache, &[vec![t]]).unwrap()).unwrap());
    }
    let vocab = config.vocab_size;
    for (what, ours) in [("one pass", &whole), ("stepwise", &stepped)] {
        let worst = worst(ours, &fixture, vocab);
        eprintln!(
            "{name}, {storage:?}, {what}: max |Δlogit| vs llama.cpp {worst:.2e} over {n} positions"
        );
        assert!(
            worst <= TOL,
            "{name}, {storage:?}, {what}: |Δlogit| {worst} > {TOL}"
        );
    }
}

backend_test!(tiny_models_match_llama_cpp, |device| {
    for (name, ..) in MODELS {
        agrees(name, WeightStorage::F32, device);
    }
});

/// The host pass (CPU storages) applies the factors, the scale and the
/// biases too.
#[test]
fn tiny_models_match_llama_cpp_on_the_host_pass() {
    for (name, ..) in MODELS {
        agrees(name, WeightStorage::Blocks, &Device::flex());
    }
}

/// The trainable module keeps Qwen2's biases (as its `Linear` layers'
/// own), Qwen3's per-head norms (`q_norm`, `k_norm`) and Granite's
/// multipliers (in its configuration), and gives them back to the
/// inference model.
#[test]
fn biases_head_norms_and_scales_survive_the_trainable_module() {
    for name in ["qwen2", "qwen3", "granite"] {
        module_round_trip(name);
    }
}

fn module_round_trip(name: &str) {
    let device = Device::flex();
    let (file, fixture) = open(name);
    let model = LlamaModel::from_gguf(&file, WeightStorage::F32, &device).unwrap();
    let module = LlamaModule::from_model(&model, &device).unwrap();
    let vocab = module.config().vocab_size;
    let logits = tensor_to_vec(
        module
            .forward(std::slice::from_ref(&fixture.tokens))
            .unwrap(),
    )
    .unwrap();
    assert!(worst(&logits, &fixture, vocab) <= TOL, "{name}: module");
    let back = module.to_model(WeightStorage::F32, &device).unwrap();
    let mut cache = back.new_cache(1).unwrap();
    let logits = tensor_to_vec(
        back.forward_cached(&mut cache, std::slice::from_ref(&fixture.tokens))
            .unwrap(),
    )
    .unwrap();
    assert!(
        worst(&logits, &fixture, vocab) <= TOL,
        "{name}: module back to the model"
    );
}

/// Factors of the wrong length or sign are typed errors, not wrong angles.
#[test]
fn bad_rope_freq_factors_are_refused() {
    let (file, _) = open("rope_freqs");
    let mut config = LlamaConfig::from_gguf(&file).unwrap();
    config.rope_freq_factors.push(1.0);
    assert!(config.check().is_err());
    config.rope_freq_factors = vec![1.0, -2.0, 8.0, 32.0];
    assert!(config.check().is_err());
    config.rope_freq_factors.clear();
    assert!(config.check().is_ok());
    config.rope_scaling = RopeScaling::Linear { factor: 0.0 };
    assert!(config.check().is_err());
    config.rope_scaling = RopeScaling::Yarn {
        factor: 4.0,
        original_context: 0,
    };
    assert!(config.check().is_err());
}
