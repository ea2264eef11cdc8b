//! The `qwen2` architecture (Qwen2, Qwen2.5) against llama.cpp, on a tiny
//! random model written by the `gguf` package.
//!
//! `fixtures/tiny_qwen2.gguf` (186 kB: 2 blocks, width 48, 4 query / 2
//! key-value heads of width 12, biases on the query, key and value
//! projections, RoPE base 10⁶, F32) and `fixtures/tiny_qwen2.json`
//! (llama.cpp's logits at all 64 positions of a seeded token sequence,
//! F32 weights, f32 cache) were written by `fixtures/make_qwen2_fixture.py`
//! with gguf 0.19.0 and llama-cpp-python 0.3.36. We agree to ~1e-4; with
//! the loader broken on purpose when the test was written, the host pass
//! was off by 28.8 without the biases and by 38.5 rotating without
//! reordering the rows (NORM pairs instead of NEOX's).
#![allow(clippy::unwrap_used)]

use burn::tensor::Device;
use lastmile_core::backend_test;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::gguf::GgufFile;
use lastmile_models::llama::{LlamaModel, LlamaModule, WeightStorage};
use serde::Deserialize;

const MODEL: &[u8] = include_bytes!("../fixtures/tiny_qwen2.gguf");
const FIXTURE: &str = include_str!("../fixtures/tiny_qwen2.json");
/// Largest |Δlogit| accepted (logits span −27..26; f32 sums in another order).
const TOL: f32 = 1e-3;

#[derive(Deserialize)]
struct Fixture {
    rope_base: f32,
    tokens: Vec<usize>,
    logits: Vec<Vec<f32>>,
}

fn fixture() -> Fixture {
    serde_json::from_str(FIXTURE).unwrap()
}

fn model(storage: WeightStorage, device: &Device) -> LlamaModel {
    let file = GgufFile::from_vec(MODEL.to_vec()).unwrap();
    LlamaModel::from_gguf(&file, storage, device).unwrap()
}

/// The largest |Δlogit| of `ours` (`[n · vocab]`) against llama.cpp's.
fn worst(ours: &[f32], fixture: &Fixture, vocab: usize) -> f32 {
    assert_eq!(ours.len(), fixture.tokens.len() * vocab);
    ours.chunks_exact(vocab)
        .zip(&fixture.logits)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0.0f32, f32::max)
}

/// Logits at every position, the sequence in one pass and again as a
/// prefix pass followed by one-token steps, against llama.cpp's.
fn agrees(storage: WeightStorage, device: &Device) {
    let fixture = fixture();
    let model = model(storage, device);
    assert_eq!(model.config().rope_base, fixture.rope_base);
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
        let worst = worst(ours, &fixture, vocab);
        eprintln!("{storage:?}, {what}: max |Δlogit| vs llama.cpp {worst:.2e} over {n} positions");
        assert!(
            worst <= TOL,
            "{storage:?}, {what}: |Δlogit| {worst} > {TOL}"
        );
    }
}

backend_test!(qwen2_matches_llama_cpp, |device| {
    agrees(WeightStorage::F32, device);
});

/// The host pass (CPU storages) adds the biases too.
#[test]
fn qwen2_matches_llama_cpp_on_the_host_pass() {
    agrees(WeightStorage::Blocks, &Device::flex());
}

/// The trainable module keeps the biases (as its `Linear` layers' own)
/// and gives them back to the inference model.
#[test]
fn qwen2_biases_survive_the_trainable_module() {
    let device = Device::flex();
    let fixture = fixture();
    let module = LlamaModule::from_model(&model(WeightStorage::F32, &device), &device).unwrap();
    let vocab = module.config().vocab_size;
    let logits = tensor_to_vec(
        module
            .forward(std::slice::from_ref(&fixture.tokens))
            .unwrap(),
    )
    .unwrap();
    assert!(worst(&logits, &fixture, vocab) <= TOL, "module");
    let back = module.to_model(WeightStorage::F32, &device).unwrap();
    let mut cache = back.new_cache(1).unwrap();
    let logits = tensor_to_vec(
        back.forward_cached(&mut cache, std::slice::from_ref(&fixture.tokens))
            .unwrap(),
    )
    .unwrap();
    assert!(
        worst(&logits, &fixture, vocab) <= TOL,
        "module back to the model"
    );
}
