#![allow(clippy::unwrap_used)]
//! `LlamaModule`, the trainable burn-module form of the Llama model: the same
//! logits as `LlamaModel` (both panel and plain matrix layouts, tied and
//! untied heads), an exact round trip back to the inference model,
//! gradients on the projections, typed errors for bad token rows.
//!
//! Tolerance: both run the same block code, but the module multiplies by
//! `Wᵀ` as one plain product where the inference model uses panels, so
//! summation order differs: `TOL = 1e-4` on logits of magnitude ~1 (as in
//! `tests/it/llama.rs`). The round trip moves the same f32 values into the
//! same layouts, so it is compared bit for bit.

use burn::optim::GradientsParams;
use lastmile_core::backend_test;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::lm::LmError;
use lastmile_models::llama::{LlamaConfig, LlamaError, LlamaModule, WeightStorage};

const TOL: f32 = 1e-4;

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

backend_test!(
    module_matches_the_inference_model_and_round_trips,
    |device| {
        let rows = vec![vec![3, 1, 4, 1, 5, 9, 2], vec![6, 5, 3, 5, 8, 9, 7]];
        for tied in [true, false] {
            let config = LlamaConfig {
                tied_embeddings: tied,
                ..LlamaConfig::tiny()
            };
            let model = config.init_random(11, WeightStorage::F32, device).unwrap();
            let module = LlamaModule::from_model(&model, device).unwrap();
            assert_eq!(module.head.is_some(), !tied);
            let ours = tensor_to_vec(module.forward(&rows).unwrap()).unwrap();
            let mut cache = model.new_cache(2).unwrap();
            let want = tensor_to_vec(model.forward_cached(&mut cache, &rows).unwrap()).unwrap();
            let diff = max_abs_diff(&ours, &want);
            assert!(diff < TOL, "tied {tied}: max |Δ| {diff}");
            // Back to the inference model: the same weights, the same logits.
            let back = module.to_model(WeightStorage::F32, device).unwrap();
            let mut cache = back.new_cache(2).unwrap();
            let again = tensor_to_vec(back.forward_cached(&mut cache, &rows).unwrap()).unwrap();
            assert_eq!(again, want, "tied {tied}");
            assert_eq!(back.config(), model.config());
        }
    }
);

backend_test!(gradients_reach_the_projections, |device| {
    let ad = device.clone().autodiff();
    let model = LlamaConfig::tiny()
        .init_random(5, WeightStorage::F32, device)
        .unwrap();
    let module = LlamaModule::from_model(&model, &ad).unwrap();
    let logits = module.forward(&[vec![1, 2, 3, 4, 5]]).unwrap();
    let grads = logits.powi_scalar(2).mean().backward();
    for (name, g) in [
        ("q", module.blocks[0].q.weight.grad(&grads)),
        ("down", module.blocks[1].down.weight.grad(&grads)),
        ("embed", module.embed.grad(&grads)),
    ] {
        let g = tensor_to_vec(
            g.unwrap_or_else(|| panic!("{name}: no gradient"))
                .reshape([-1]),
        )
        .unwrap();
        assert!(g.iter().any(|v| *v != 0.0), "{name}: zero gradient");
    }
    let gp = GradientsParams::from_grads(grads, &module);
    assert!(!gp.is_empty());
});

backend_test!(bad_token_rows_are_typed_errors, |device| {
    let model = LlamaConfig::tiny()
        .init_random(5, WeightStorage::F32, device)
        .unwrap();
    let module = LlamaModule::from_model(&model, device).unwrap();
    for rows in [vec![], vec![vec![]], vec![vec![1, 2], vec![3]]] {
        assert!(
            matches!(
                module.forward(&rows),
                Err(LlamaError::Lm(LmError::Batch { .. }))
            ),
            "{rows:?}"
        );
    }
    assert!(matches!(
        module.forward(&[vec![1, 64]]),
        Err(LlamaError::Lm(LmError::TokenOutOfRange {
            position: 1,
            token: 64,
            ..
        }))
    ));
    assert!(matches!(
        module.forward(&[vec![1; 65]]),
        Err(LlamaError::Lm(LmError::ContextOverflow {
            needed: 65,
            max: 64,
            ..
        }))
    ));
});

backend_test!(distilled_draft_learns_and_round_trips, |device| {
    use lastmile_models::TrainConfig;
    use lastmile_models::llama::distill_draft;
    let ad = device.clone().autodiff();
    let config = LlamaConfig {
        n_layers: 3,
        ..LlamaConfig::tiny()
    };
    let target = config.init_random(2, WeightStorage::F32, device).unwrap();
    // A text with structure the target's distribution reflects.
    let tokens: Vec<usize> = (0..600).map(|i| (i * 7 + i / 5) % 64).collect();
    let draft = LlamaModule::draft_from(&target, 1, &ad).unwrap();
    assert_eq!(draft.blocks.len(), 1);
    assert_eq!(draft.config().n_layers, 1);
    let cfg = TrainConfig {
        lr: 1e-2,
        seed: 3,
        ..TrainConfig::new(40, 4, 16)
    };
    let mut kl = Vec::new();
    let embed_before = tensor_to_vec(draft.embed.val().inner().reshape([-1])).unwrap();
    let draft = distill_draft(draft, &target, &[&tokens], &cfg, |_, l| kl.push(l)).unwrap();
    assert_eq!(kl.len(), 40);
    // KL is non-negative and falls (mean of the last 5 steps below half the first 5).
    assert!(kl.iter().all(|v| *v >= -1e-5), "{kl:?}");
    let (first, last) = (
        kl[..5].iter().sum::<f32>() / 5.0,
        kl[35..].iter().sum::<f32>() / 5.0,
    );
    assert!(last < 0.5 * first, "KL {first} → {last}");
    // The embedding (and tied head) stayed frozen.
    assert_eq!(
        tensor_to_vec(draft.embed.val().inner().reshape([-1])).unwrap(),
        embed_before
    );
    // Save → load gives the same logits, bit for bit.
    let path = std::env::temp_dir().join(format!(
        "lastmile_llama_draft_{}_{:?}.bpk",
        std::process::id(),
        lastmile_core::Backend::of(device)
    ));
    draft.save(&path).unwrap();
    let back = LlamaModule::load_draft(&target, 1, None, &path, &ad).unwrap();
    let rows = [vec![1, 2, 3, 4, 5]];
    assert_eq!(
        tensor_to_vec(back.forward(&rows).unwrap().inner()).unwrap(),
        tensor_to_vec(draft.forward(&rows).unwrap().inner()).unwrap()
    );
    // A skeleton of another depth does not take the file; garbage and
    // missing files are typed errors.
    assert!(matches!(
        LlamaModule::load_draft(&target, 2, None, &path, &ad),
        Err(LlamaError::Checkpoint { .. })
    ));
    // A truncated file: its tensor data is cut short (read eagerly, so this
    // is an error here, not a failure in a device's worker thread later).
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - bytes.len() / 3]).unwrap();
    assert!(matches!(
        LlamaModule::load_draft(&target, 1, None, &path, &ad),
        Err(LlamaError::Checkpoint { .. })
    ));
    std::fs::write(&path, b"not a checkpoint").unwrap();
    assert!(matches!(
        LlamaModule::load_draft(&target, 1, None, &path, &ad),
        Err(LlamaError::Checkpoint { .. })
    ));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        LlamaModule::load_draft(&target, 1, None, &path, &ad),
        Err(LlamaError::Checkpoint { .. })
    ));
    assert!(matches!(
        LlamaModule::draft_from(&target, 4, &ad),
        Err(LlamaError::Config { .. })
    ));
    // No text, or a text shorter than a window, is refused before training.
    for texts in [&[][..], &[&tokens[..10]][..]] {
        let fresh = LlamaModule::draft_from(&target, 1, &ad).unwrap();
        assert!(matches!(
            distill_draft(fresh, &target, texts, &cfg, |_, _| {}),
            Err(LlamaError::Config { .. })
        ));
    }
});

backend_test!(vocabulary_restricted_draft, |device| {
    use burn::module::Param;
    use burn::tensor::{Tensor, TensorData};
    use lastmile_models::TrainConfig;
    use lastmile_models::llama::{OUTSIDE_HEAD_LOGIT, distill_draft, likely_tokens};
    let ad = device.clone().autodiff();
    let config = LlamaConfig {
        n_layers: 3,
        ..LlamaConfig::tiny()
    };
    let target = config.init_random(4, WeightStorage::F32, device).unwrap();
    let ids = [1usize, 4, 9, 16, 25, 36, 49, 63];
    let full = LlamaModule::draft_from(&target, 1, &ad).unwrap();
    let draft = LlamaModule::draft_with_vocab(&target, 1, &ids, &ad).unwrap();
    assert_eq!(draft.head_tokens().unwrap(), Some(ids.to_vec()));
    // Before training: the full early-exit head's logits at the listed
    // tokens, the floor everywhere else.
    let rows = vec![vec![3, 1, 4, 1, 5, 9]];
    let want = tensor_to_vec(full.forward(&rows).unwrap().inner()).unwrap();
    let got = tensor_to_vec(draft.forward(&rows).unwrap().inner()).unwrap();
    for (w, g) in want.chunks(64).zip(got.chunks(64)) {
        for t in 0..64 {
            if ids.contains(&t) {
                assert!((w[t] - g[t]).abs() < TOL, "token {t}: {} vs {}", w[t], g[t]);
            } else {
                assert_eq!(g[t], OUTSIDE_HEAD_LOGIT, "token {t}");
            }
        }
    }
    // The inference model reports the same, with every storage the device holds.
    for storage in [WeightStorage::F32, WeightStorage::Blocks] {
        if storage.check_device(device).is_err() {
            continue;
        }
        let m = draft.to_model(storage, device).unwrap();
        assert_eq!(m.head_tokens(), Some(&ids[..]));
        let mut cache = m.new_cache(1).unwrap();
        let ours = tensor_to_vec(m.forward_cached(&mut cache, &rows).unwrap()).unwrap();
        let diff = max_abs_diff(&ours, &got);
        assert!(diff < TOL, "{storage:?}: max |Δ| {diff}");
    }
    // Distillation to the restricted distribution lowers its KL.
    let tokens: Vec<usize> = (0..600).map(|i| (i * 7 + i / 5) % 64).collect();
    let cfg = TrainConfig {
        lr: 1e-2,
        seed: 3,
        ..TrainConfig::new(40, 4, 16)
    };
    let mut kl = Vec::new();
    let draft = distill_draft(draft, &target, &[&tokens], &cfg, |_, l| kl.push(l)).unwrap();
    let (first, last) = (
        kl[..5].iter().sum::<f32>() / 5.0,
        kl[35..].iter().sum::<f32>() / 5.0,
    );
    assert!(
        kl.iter().all(|v| *v >= -1e-5) && last < 0.5 * first,
        "KL {kl:?}"
    );
    // Save → load (with the head's row count) gives the same logits and ids.
    let path = std::env::temp_dir().join(format!(
        "lastmile_llama_vocab_draft_{}_{:?}.bpk",
        std::process::id(),
        lastmile_core::Backend::of(device)
    ));
    draft.save(&path).unwrap();
    let back = LlamaModule::load_draft(&target, 1, Some(ids.len()), &path, &ad).unwrap();
    assert_eq!(back.head_tokens().unwrap(), Some(ids.to_vec()));
    assert_eq!(
        tensor_to_vec(back.forward(&rows).unwrap().inner()).unwrap(),
        tensor_to_vec(draft.forward(&rows).unwrap().inner()).unwrap()
    );
    for wrong in [None, Some(7), Some(0)] {
        assert!(
            LlamaModule::load_draft(&target, 1, wrong, &path, &ad).is_err(),
            "{wrong:?}"
        );
    }
    // Token ids that are not a strictly increasing list are refused on load.
    let mut bad = draft;
    let reversed: Vec<f32> = ids.iter().rev().map(|&t| t as f32).collect();
    bad.head_vocab = Some(Param::from_tensor(Tensor::<1>::from_data(
        TensorData::new(reversed, [ids.len()]),
        &ad,
    )));
    bad.save(&path).unwrap();
    assert!(matches!(
        LlamaModule::load_draft(&target, 1, Some(ids.len()), &path, &ad),
        Err(LlamaError::Checkpoint { .. })
    ));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        LlamaModule::draft_with_vocab(&target, 1, &[5, 5], &ad),
        Err(LlamaError::Config { .. })
    ));
    assert!(LlamaModule::draft_with_vocab(&target, 1, &[64], &ad).is_err());
    // The most likely tokens: as many as asked, sorted, distinct.
    let likely = likely_tokens(&target, &[tokens[..20].to_vec()], 10).unwrap();
    assert_eq!(likely.len(), 10);
    assert!(likely.windows(2).all(|w| w[0] < w[1]));
    assert!(likely_tokens(&target, &[tokens[..20].to_vec()], 0).is_err());
    assert!(likely_tokens(&target, &[], 10).is_err());
});

/// `BlocksQ4` rounds float weights to Q4_1 blocks instead: fewer bytes
/// than `BlocksQ8`'s Q8_0, logits further from the f32 model's (each
/// weight within 1/30 of its block's range instead of 1/254 of its largest
/// value): measured 0.84 with logits up to 19.7 (4.3 %; Q8_0: 0.10);
/// tolerance 10 % of the largest logit.
#[test]
fn float_weights_round_to_q4_blocks() {
    let device = burn::tensor::Device::flex();
    let rows = vec![vec![3, 1, 4, 1, 5, 9, 2, 6]];
    let config = LlamaConfig {
        d_ff: 64,
        ..LlamaConfig::tiny()
    };
    let init = |storage| config.init_random(9, storage, &device).unwrap();
    let (f32_model, q8, q4) = (
        init(WeightStorage::F32),
        init(WeightStorage::BlocksQ8),
        init(WeightStorage::BlocksQ4),
    );
    assert!(q4.matrix_bytes() * 3 < q8.matrix_bytes() * 2);
    let logits = |m: &lastmile_models::llama::LlamaModel| {
        let mut cache = m.new_cache(1).unwrap();
        tensor_to_vec(m.forward_cached(&mut cache, &rows).unwrap()).unwrap()
    };
    let exact = logits(&f32_model);
    let scale = exact.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let (d8, d4) = (
        max_abs_diff(&logits(&q8), &exact),
        max_abs_diff(&logits(&q4), &exact),
    );
    eprintln!("max |Δlogit| to f32: Q8_0 {d8}, Q4_1 {d4}, largest logit {scale}");
    assert!(
        d4 > d8 && d4 < 0.1 * scale,
        "Q8_0 {d8}, Q4_1 {d4}, largest logit {scale}"
    );
}

/// `BlocksQ8` rounds float weights (here random ones) to Q8_0 blocks: a
/// quarter of the bytes of f32, and logits within the two roundings
/// (weights and activations, each ≤ 1/254 of a block's largest value) of
/// the f32 model's: measured 0.10 with logits up to 19.7 (0.5 %);
/// tolerance 2 % of the largest logit.
#[test]
fn float_weights_round_to_q8_blocks() {
    let device = burn::tensor::Device::flex();
    let rows = vec![vec![3, 1, 4, 1, 5, 9, 2, 6]];
    let config = LlamaConfig {
        d_ff: 64,
        ..LlamaConfig::tiny()
    };
    let f32_model = config.init_random(9, WeightStorage::F32, &device).unwrap();
    let q8 = config
        .init_random(9, WeightStorage::BlocksQ8, &device)
        .unwrap();
    assert!(q8.matrix_bytes() * 3 < f32_model.matrix_bytes());
    let logits = |m: &lastmile_models::llama::LlamaModel| {
        let mut cache = m.new_cache(1).unwrap();
        tensor_to_vec(m.forward_cached(&mut cache, &rows).unwrap()).unwrap()
    };
    let exact = logits(&f32_model);
    let scale = exact.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(&logits(&q8), &exact);
    assert!(
        diff > 0.0 && diff < 0.02 * scale,
        "max |Δ| {diff}, largest logit {scale}"
    );
}
