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
    let draft = distill_draft(draft, &target, &tokens, &cfg, |_, l| kl.push(l)).unwrap();
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
    let back = LlamaModule::load_draft(&target, 1, &path, &ad).unwrap();
    let rows = [vec![1, 2, 3, 4, 5]];
    assert_eq!(
        tensor_to_vec(back.forward(&rows).unwrap().inner()).unwrap(),
        tensor_to_vec(draft.forward(&rows).unwrap().inner()).unwrap()
    );
    // A skeleton of another depth does not take the file; garbage and
    // missing files are typed errors.
    assert!(matches!(
        LlamaModule::load_draft(&target, 2, &path, &ad),
        Err(LlamaError::Checkpoint { .. })
    ));
    // A truncated file: its tensor data is cut short (read eagerly, so this
    // is an error here, not a failure in a device's worker thread later).
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - bytes.len() / 3]).unwrap();
    assert!(matches!(
        LlamaModule::load_draft(&target, 1, &path, &ad),
        Err(LlamaError::Checkpoint { .. })
    ));
    std::fs::write(&path, b"not a checkpoint").unwrap();
    assert!(matches!(
        LlamaModule::load_draft(&target, 1, &path, &ad),
        Err(LlamaError::Checkpoint { .. })
    ));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        LlamaModule::load_draft(&target, 1, &path, &ad),
        Err(LlamaError::Checkpoint { .. })
    ));
    assert!(matches!(
        LlamaModule::draft_from(&target, 4, &ad),
        Err(LlamaError::Config { .. })
    ));
});
