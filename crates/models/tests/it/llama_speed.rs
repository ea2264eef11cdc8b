//! Speed of the Llama model on SmolLM2-135M-Instruct: decode tokens/s at
//! batch 1 and the cost of one forward over k = 1, 2, 4, 8, 16 tokens
//! relative to k = 1 (the verify cost of speculative decoding). Prints
//! figures and asserts nothing about speed; `#[ignore]`d because it only
//! means something in a release build:
//!
//! ```text
//! CARGO_TARGET_DIR=/work/bench-target cargo test --release -p lastmile-models \
//!     --test it llama_speed:: -- --ignored --nocapture
//! ```
//!
//! Compare with `python3 benches/llama_cpp_reference.py bench` (llama.cpp on
//! the same file). Skips with a message when the model file is missing
//! (`scripts/fetch-smollm2.sh`).
#![cfg(feature = "flex")]
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::Device;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::model_files::{SMOLLM2_135M_INSTRUCT, models_dir};
use lastmile_models::llama::{LlamaModel, WeightStorage};

/// The model file, where `scripts/fetch-smollm2.sh` puts it.
fn model_path() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    models_dir(&workspace).join(SMOLLM2_135M_INSTRUCT)
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore = "speed figures: run in release with --ignored --nocapture"]
fn llama_decode_and_verify_speed() {
    let path = model_path();
    if !path.is_file() {
        eprintln!(
            "SKIPPED: {} is missing; run scripts/fetch-smollm2.sh",
            path.display()
        );
        return;
    }
    let device = Device::flex();
    let model = LlamaModel::open(&path, WeightStorage::F32, &device).unwrap();
    let vocab = model.config().vocab_size;
    // "The quick brown fox jumps over the lazy dog. " × 4 in SmolLM2's tokens is 44 ids;
    // any fixed ids do for timing.
    let prompt: Vec<usize> = (0..44).map(|i| (i * 7919 + 13) % vocab).collect();
    eprintln!(
        "{:?} storage, {} MB of matrices per forward",
        model.storage(),
        model.matrix_bytes() / 1_000_000
    );

    // Decode: best of 3 runs of 128 steps, greedy on the host (as the llama.cpp script does).
    let steps = 128;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let mut cache = model.new_cache(1).unwrap();
        let logits = tensor_to_vec(
            model
                .forward_cached(&mut cache, std::slice::from_ref(&prompt))
                .unwrap(),
        )
        .unwrap();
        let mut next = argmax(&logits[(prompt.len() - 1) * vocab..]);
        let t = Instant::now();
        for _ in 0..steps {
            let row =
                tensor_to_vec(model.forward_cached(&mut cache, &[vec![next]]).unwrap()).unwrap();
            next = argmax(&row);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    eprintln!(
        "decode: {:.1} tokens/s (best of 3 runs of {steps})",
        steps as f64 / best
    );

    // One pass over k tokens after the prompt, relative to k = 1.
    let mut cache = model.new_cache(1).unwrap();
    model
        .forward_cached(&mut cache, std::slice::from_ref(&prompt))
        .unwrap();
    let mut times = Vec::new();
    for k in [1usize, 2, 4, 8, 16] {
        let feed: Vec<usize> = prompt[..k].to_vec();
        let samples: Vec<f64> = (0..20)
            .map(|_| {
                let t = Instant::now();
                let out = tensor_to_vec(
                    model
                        .forward_cached(&mut cache, std::slice::from_ref(&feed))
                        .unwrap(),
                )
                .unwrap();
                let dt = t.elapsed().as_secs_f64();
                assert_eq!(out.len(), k * vocab);
                cache.truncate(0, prompt.len()).unwrap();
                dt
            })
            .collect();
        times.push((k, median(samples)));
    }
    let base = times[0].1;
    for (k, t) in &times {
        eprintln!(
            "pass over k = {k:2} tokens: {:.2} ms ({:.2}x k = 1)",
            t * 1e3,
            t / base
        );
    }
}
