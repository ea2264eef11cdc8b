//! Llama 3.1's per-pair RoPE frequency factors (`rope_freqs.weight`) and
//! linear RoPE scaling against llama.cpp, on tiny random models written by
//! the `gguf` package.
//!
//! `fixtures/tiny_llama3_rope.gguf` (113 kB: 2 blocks, width 32, 4 query /
//! 2 key-value heads, factors `[1, 2, 8, 32]`, F32) and
//! `fixtures/tiny_llama3_rope.json` (llama.cpp's logits at all 64
//! positions of a seeded token sequence, F32 weights, f32 cache) were
//! written by `fixtures/make_rope_freqs_fixture.py` with gguf 0.19.0 and
//! llama-cpp-python 0.3.36. Without the factors llama.cpp's logits move
//! by up to 29 (median 9.8 per position), so agreement to 1e-3 shows they
//! are applied as llama.cpp applies them.
//!
//! `fixtures/tiny_llama_rope_linear.{gguf,json}` (the same script) is the
//! same shape with another seed, no factors and linear scaling by 4
//! (`llama.rope.scaling.type = linear`, `llama.rope.scaling.factor = 4`).
#![allow(clippy::unwrap_used)]

use burn::tensor::Device;
use lastmile_core::backend_test;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::gguf::GgufFile;
use lastmile_models::llama::{LlamaModel, WeightStorage};
use serde::Deserialize;

const MODEL: &[u8] = include_bytes!("../fixtures/tiny_llama3_rope.gguf");
const FIXTURE: &str = include_str!("../fixtures/tiny_llama3_rope.json");
const LINEAR_MODEL: &[u8] = include_bytes!("../fixtures/tiny_llama_rope_linear.gguf");
const LINEAR_FIXTURE: &str = include_str!("../fixtures/tiny_llama_rope_linear.json");
/// Largest |Δlogit| accepted (logits span −22..20; f32 sums in another order).
const TOL: f32 = 1e-3;

#[derive(Deserialize)]
struct Fixture {
    rope_freqs: Vec<f32>,
    rope_scaling_linear: f32,
    tokens: Vec<usize>,
    logits: Vec<Vec<f32>>,
}

/// Logits at every position, the sequence in one pass and again as a
/// prefix pass followed by one-token steps, against llama.cpp's.
fn agrees(storage: WeightStorage, device: &Device) {
    agrees_on(MODEL, FIXTURE, storage, device);
    agrees_on(LINEAR_MODEL, LINEAR_FIXTURE, storage, device);
}

fn agrees_on(model: &[u8], fixture: &str, storage: WeightStorage, device: &Device) {
    let fixture: Fixture = serde_json::from_str(fixture).unwrap();
    let file = GgufFile::from_vec(model.to_vec()).unwrap();
    let model = LlamaModel::from_gguf(&file, storage, device).unwrap();
    assert_eq!(model.config().rope_freq_factors, fixture.rope_freqs);
    assert_eq!(
        model.config().rope_freq_scale,
        1.0 / fixture.rope_scaling_linear
    );
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
    let vocab = model.config().vocab_size;
    for (what, ours) in [("one pass", &whole), ("stepwise", &stepped)] {
        assert_eq!(ours.len(), n * vocab);
        let worst = ours
            .chunks_exact(vocab)
            .zip(&fixture.logits)
            .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
            .fold(0.0f32, f32::max);
        let scale = model.config().rope_freq_scale;
        eprintln!(
            "{storage:?}, scale {scale}, {what}: max |Δlogit| vs llama.cpp {worst:.2e} over {n} positions"
        );
        assert!(
            worst <= TOL,
            "{storage:?}, {what}: |Δlogit| {worst} > {TOL}"
        );
    }
}

backend_test!(rope_freq_factors_match_llama_cpp, |device| {
    agrees(WeightStorage::F32, device);
});

/// The host pass (CPU storages) applies them too.
#[test]
fn rope_freq_factors_match_llama_cpp_on_the_host_pass() {
    agrees(WeightStorage::Blocks, &Device::flex());
}

/// Factors of the wrong length or sign are typed errors, not wrong angles.
#[test]
fn bad_rope_freq_factors_are_refused() {
    let file = GgufFile::from_vec(MODEL.to_vec()).unwrap();
    let mut config = lastmile_models::llama::LlamaConfig::from_gguf(&file).unwrap();
    config.rope_freq_factors.push(1.0);
    assert!(config.check().is_err());
    config.rope_freq_factors = vec![1.0, -2.0, 8.0, 32.0];
    assert!(config.check().is_err());
    config.rope_freq_factors.clear();
    assert!(config.check().is_ok());
}
