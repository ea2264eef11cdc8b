//! The Llama model on random weights: the `LanguageModel` interface
//! (the conformance kit, typed errors for bad calls, seeding) and each
//! weight storage against F32.
//!
//! The conformance kit compares the model with itself through different
//! forward shapes: `TOL = 1e-4` as in `tests/it/lm.rs`.

use lastmile_core::backend_test;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::lm::{LanguageModel, LmError, conformance};
use lastmile_models::llama::{LlamaConfig, LlamaError, LlamaModel, Scales, WeightStorage};

const TOL: f32 = 1e-4;

backend_test!(conforms_to_language_model_interface, |device| {
    // Llama's shape; Qwen3's: heads wider than the width over them (4 × 16
    // at width 32) and each head's queries and keys normalised.
    let qwen3 = LlamaConfig {
        head_width: Some(16),
        head_norms: true,
        ..LlamaConfig::tiny()
    };
    // SmolLM3's: a block without rotary positions (here every second).
    let nope = LlamaConfig {
        nope_every: Some(2),
        ..LlamaConfig::tiny()
    };
    // Granite's: every multiplier away from 1.
    let granite = LlamaConfig {
        scales: Scales {
            embedding: 4.0,
            residual: 0.5,
            attention: Some(0.125),
            logit: 3.0,
        },
        ..LlamaConfig::tiny()
    };
    for config in [LlamaConfig::tiny(), qwen3, nope, granite] {
        conforms(&config.init_random(3, WeightStorage::F32, device).unwrap());
        // The panel kernel (CPU devices only) under the same shape checks.
        if lastmile_core::Backend::of(device).is_some_and(lastmile_core::Backend::is_cpu) {
            conforms(
                &config
                    .init_random(3, WeightStorage::Blocks, device)
                    .unwrap(),
            );
        }
    }
});

fn conforms(model: &LlamaModel) {
    let mut worst = conformance::check_all(model, 11, TOL).unwrap();
    worst = worst.max(conformance::check_all(model, 12, TOL).unwrap());
    let seq: Vec<usize> = (0..40).map(|i| (i * 13 + 7) % 64).collect();
    worst = worst.max(conformance::chunked_forward(model, &seq, &[1, 13, 2, 3, 21], TOL).unwrap());
    worst = worst.max(
        conformance::truncate_refeed(model, &seq[..10], &seq[10..25], &seq[25..31], TOL).unwrap(),
    );
    let first = vec![
        seq[..5].to_vec(),
        vec![],
        seq[5..6].to_vec(),
        seq[6..20].to_vec(),
    ];
    let second = vec![
        seq[20..21].to_vec(),
        seq[21..30].to_vec(),
        vec![],
        seq[30..33].to_vec(),
    ];
    worst = worst.max(conformance::ragged_batch(model, &first, &second, TOL).unwrap());
    assert!(worst <= TOL, "worst |Δlogit| {worst:e}");
}

backend_test!(random_init_is_seeded, |device| {
    let logits = |seed| {
        let m = LlamaConfig::tiny()
            .init_random(seed, WeightStorage::F32, device)
            .unwrap();
        let mut c = m.new_cache(1).unwrap();
        tensor_to_vec(m.forward_cached(&mut c, &[vec![1, 2, 3]]).unwrap()).unwrap()
    };
    assert_eq!(logits(9), logits(9));
    assert_ne!(logits(9), logits(10));
});

backend_test!(bad_calls_are_typed_errors, |device| {
    let m = LlamaConfig::tiny()
        .init_random(1, WeightStorage::F32, device)
        .unwrap();
    assert!(matches!(
        LanguageModel::new_cache(&m, 0),
        Err(LmError::Batch { found: 0, .. })
    ));
    let mut cache = m.new_cache(2).unwrap();
    assert!(matches!(
        LanguageModel::forward(&m, &mut cache, &[vec![1]]),
        Err(LmError::Batch { found: 1, .. })
    ));
    assert!(matches!(
        LanguageModel::forward(&m, &mut cache, &[vec![1], vec![2, 64]]),
        Err(LmError::TokenOutOfRange {
            row: 1,
            position: 1,
            token: 64,
            vocab: 64
        })
    ));
    assert!(matches!(
        LanguageModel::forward(&m, &mut cache, &[vec![1; 65], vec![]]),
        Err(LmError::ContextOverflow {
            row: 0,
            needed: 65,
            max: 64
        })
    ));
    // Nothing was cached by the failed calls; the full context is usable.
    assert_eq!((cache.len(0), cache.len(1)), (0, 0));
    let out = LanguageModel::forward(&m, &mut cache, &[vec![1; 64], vec![2]]).unwrap();
    assert_eq!(out.dims(), [2, 64, 64]);
    assert!(matches!(
        LanguageModel::truncate(&m, &mut cache, 2, 0),
        Err(LmError::Batch { found: 2, .. })
    ));
});

backend_test!(half_storage_tracks_f32_within_its_precision, |device| {
    let tokens = vec![vec![1usize, 5, 9, 2, 33, 17, 4, 60]];
    let logits = |storage| {
        let m = LlamaConfig::tiny().init_random(4, storage, device).unwrap();
        let mut c = m.new_cache(1).unwrap();
        let out = tensor_to_vec(m.forward_cached(&mut c, &tokens).unwrap()).unwrap();
        (out, m.matrix_bytes())
    };
    let (reference, bytes_f32) = logits(WeightStorage::F32);
    let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    // f16 keeps 11 significant bits, bf16 8. Measured on flex: 0.04 % and
    // 0.3 % of the largest logit. Tolerances 1 % and 3 % leave room for a
    // backend that also accumulates in half precision, and are far below
    // what a wrong product gives (errors of the order of the logits).
    for (storage, tol) in [(WeightStorage::F16, 0.01), (WeightStorage::Bf16, 0.03)] {
        if !device.supports_dtype(storage.dtype()) {
            let err = LlamaConfig::tiny()
                .init_random(4, storage, device)
                .unwrap_err();
            assert!(matches!(err, LlamaError::Storage { .. }), "{err}");
            eprintln!("{storage:?} not supported on {device:?}: typed error checked");
            continue;
        }
        let (out, bytes) = logits(storage);
        assert_eq!(2 * bytes, bytes_f32);
        let diff = out
            .iter()
            .zip(&reference)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!("{storage:?}: max |Δlogit| {diff:e} (largest logit {scale:e})");
        assert!(diff <= tol * scale, "{storage:?}: {diff} > {tol} × {scale}");
        assert!(diff > 0.0, "{storage:?} should round something");
    }
});

backend_test!(block_storage_computes_what_f32_computes, |device| {
    let tokens = vec![vec![1usize, 5, 9, 2, 33, 17, 4, 60], vec![3, 8]];
    let cpu = lastmile_core::Backend::of(device).is_some_and(lastmile_core::Backend::is_cpu);
    let blocks = LlamaConfig::tiny().init_random(4, WeightStorage::Blocks, device);
    if !cpu {
        // The panel kernel reads host memory: a typed error elsewhere, for
        // every host storage.
        assert!(
            matches!(blocks, Err(LlamaError::Storage { .. })),
            "{blocks:?}"
        );
        for storage in [WeightStorage::BlocksQ8, WeightStorage::BlocksQ4] {
            let m = LlamaConfig::tiny().init_random(4, storage, device);
            assert!(matches!(m, Err(LlamaError::Storage { .. })), "{m:?}");
        }
        eprintln!("Blocks, BlocksQ8, BlocksQ4 not supported on {device:?}: typed errors checked");
        return;
    }
    let run = |m: &LlamaModel| {
        let mut c = m.new_cache(2).unwrap();
        let mut out = tensor_to_vec(m.forward_cached(&mut c, &tokens).unwrap()).unwrap();
        // A decoding step after the ragged prompt pass.
        out.extend(tensor_to_vec(m.forward_cached(&mut c, &[vec![7], vec![11]]).unwrap()).unwrap());
        out
    };
    let f32_model = LlamaConfig::tiny()
        .init_random(4, WeightStorage::F32, device)
        .unwrap();
    let reference = run(&f32_model);
    let out = run(&blocks.unwrap());
    // The same weights, summed in another order: f32 rounding only.
    let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = out
        .iter()
        .zip(&reference)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("Blocks (f32 panels of random weights): max |Δlogit| {diff:e} (largest {scale:e})");
    assert!(diff <= 1e-5 * scale.max(1.0), "{diff} vs {scale}");
});
