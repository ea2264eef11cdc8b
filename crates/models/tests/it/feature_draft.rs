//! The feature-level draft (`LlamaFeatureDraft`, EAGLE): the model's
//! features are the head's input; the trainable module and the inference
//! draft compute the same thing; a pass over several tokens equals passes
//! over their parts; save and load round trip; typed errors.
//!
//! Tolerance: as `llama_module.rs` (the same block code, plain versus
//! panel products): `TOL = 1e-4` on logits of magnitude ~1.

use burn::tensor::{Device, Distribution, Tensor};
use lastmile_core::backend_test;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::lm::{HiddenFeatures, LanguageModel};
use lastmile_models::llama::{
    LlamaConfig, LlamaError, LlamaFeatureDraftModule, LlamaModel, WeightStorage,
};

const TOL: f32 = 1e-4;

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn target(device: &Device) -> LlamaModel {
    LlamaConfig {
        n_layers: 3,
        ..LlamaConfig::tiny()
    }
    .init_random(21, WeightStorage::F32, device)
    .unwrap()
}

/// A 1-block draft over the head `ids`, its fusion map moved away from the
/// pass-through start so that it matters.
fn perturbed_draft(model: &LlamaModel, ids: &[usize], device: &Device) -> LlamaFeatureDraftModule {
    let mut module = LlamaFeatureDraftModule::new(model, 1, Some(ids), device).unwrap();
    module.fc.weight = module.fc.weight.map(|w| {
        let dims = w.dims();
        w + Tensor::random(dims, Distribution::Uniform(-0.2, 0.2), device)
    });
    module
}

backend_test!(features_are_the_heads_input, |device| {
    let model = target(device);
    let rows = vec![vec![3, 1, 4, 1, 5], vec![9, 2, 6, 5, 3]];
    let mut cache = model.new_cache(2).unwrap();
    let plain = tensor_to_vec(model.forward_cached(&mut cache, &rows).unwrap()).unwrap();
    let mut cache = model.new_cache(2).unwrap();
    let (logits, features) = HiddenFeatures::forward_features(&model, &mut cache, &rows).unwrap();
    assert_eq!(tensor_to_vec(logits).unwrap(), plain);
    assert_eq!(features.dims(), [2, 5, model.feature_dim()]);
    // Tied head: logits = features · embeddingᵀ.
    let module = lastmile_models::llama::LlamaModule::from_model(&model, device).unwrap();
    let embed = module.embed.val();
    let again = features.reshape([10, 32]).matmul(embed.transpose());
    let diff = max_abs_diff(&tensor_to_vec(again).unwrap(), &plain);
    assert!(diff < TOL, "max |Δ| {diff}");
});

backend_test!(module_and_inference_draft_agree_in_any_chunking, |device| {
    let model = target(device);
    let ids: Vec<usize> = (0..64).step_by(3).collect();
    let module = perturbed_draft(&model, &ids, device);
    let draft = module.to_draft(WeightStorage::F32, device).unwrap();
    let tokens = vec![vec![7, 8, 9, 10, 11, 12]];
    let features = Tensor::<3>::random([1, 6, 32], Distribution::Normal(0.0, 1.0), device);
    let (ml, mf) = module.forward(&tokens, features.clone()).unwrap();
    // The module's logits are over the head's tokens; the draft's over the vocabulary.
    let mut cache = draft.new_cache(1).unwrap();
    let (dl, df) = draft
        .forward_conditioned(&mut cache, &tokens, features.clone())
        .unwrap();
    let head = draft.head_tokens().unwrap().to_vec();
    let dl = tensor_to_vec(dl).unwrap();
    let picked: Vec<f32> = (0..6)
        .flat_map(|i| head.iter().map(move |&t| (i, t)))
        .map(|(i, t)| dl[i * 64 + t])
        .collect();
    let diff = max_abs_diff(&tensor_to_vec(ml).unwrap(), &picked);
    assert!(diff < TOL, "logits: max |Δ| {diff}");
    let (mf, df) = (tensor_to_vec(mf).unwrap(), tensor_to_vec(df).unwrap());
    assert!(max_abs_diff(&mf, &df) < TOL);
    // Tokens outside the head are never proposed.
    assert!(dl[1] <= lastmile_models::llama::OUTSIDE_HEAD_LOGIT);
    // Two passes (4 tokens, then 2) give the same outputs as one.
    let mut cache = draft.new_cache(1).unwrap();
    let (a, _) = draft
        .forward_conditioned(
            &mut cache,
            &[tokens[0][..4].to_vec()],
            features.clone().slice([0..1, 0..4, 0..32]),
        )
        .unwrap();
    let (b, fb) = draft
        .forward_conditioned(
            &mut cache,
            &[tokens[0][4..].to_vec()],
            features.slice([0..1, 4..6, 0..32]),
        )
        .unwrap();
    let chunked: Vec<f32> = [tensor_to_vec(a).unwrap(), tensor_to_vec(b).unwrap()].concat();
    assert!(max_abs_diff(&chunked, &dl) < TOL);
    assert!(max_abs_diff(&tensor_to_vec(fb).unwrap(), &df[4 * 32..]) < TOL);
    assert_eq!(draft.cached_len(&cache, 0), 6);
});

backend_test!(feature_draft_saves_loads_and_rejects_bad_input, |device| {
    let model = target(device);
    let ids: Vec<usize> = (10..30).collect();
    let module = LlamaFeatureDraftModule::new(&model, 2, Some(&ids), device).unwrap();
    let path = std::env::temp_dir().join(format!(
        "lastmile-feature-draft-{}-{:?}.bpk",
        std::process::id(),
        std::thread::current().id()
    ));
    module.save(&path).unwrap();
    let back = LlamaFeatureDraftModule::load(&model, 2, Some(ids.len()), &path, device).unwrap();
    let tokens = vec![vec![1, 2, 3]];
    let f = Tensor::<3>::random([1, 3, 32], Distribution::Normal(0.0, 1.0), device);
    let want = tensor_to_vec(module.forward(&tokens, f.clone()).unwrap().0).unwrap();
    let got = tensor_to_vec(back.forward(&tokens, f).unwrap().0).unwrap();
    assert_eq!(got, want);
    assert_eq!(back.lm.head_tokens().unwrap(), Some(ids.clone()));
    // A skeleton of another shape does not load.
    assert!(matches!(
        LlamaFeatureDraftModule::load(&model, 1, Some(ids.len()), &path, device),
        Err(LlamaError::Checkpoint { .. })
    ));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        LlamaFeatureDraftModule::load(&model, 2, None, &path, device),
        Err(LlamaError::Checkpoint { .. })
    ));
    // Bad sizes and shapes are typed errors.
    assert!(matches!(
        LlamaFeatureDraftModule::new(&model, 4, None, device),
        Err(LlamaError::Config { .. })
    ));
    let draft = module.to_draft(WeightStorage::F32, device).unwrap();
    let mut cache = draft.new_cache(1).unwrap();
    let wrong = Tensor::<3>::zeros([1, 2, 32], device);
    assert!(matches!(
        draft.forward_conditioned(&mut cache, &tokens, wrong.clone()),
        Err(LlamaError::Core(_))
    ));
    assert!(matches!(
        module.forward(&tokens, wrong),
        Err(LlamaError::Core(_))
    ));
    assert!(
        draft
            .forward_conditioned(&mut cache, &[vec![64]], Tensor::zeros([1, 1, 32], device))
            .is_err()
    );
    assert_eq!(draft.cached_len(&cache, 0), 0, "nothing cached on error");
    // Its language-model form is the draft conditioned on zero features.
    let zeros = Tensor::<3>::zeros([1, 3, 32], device);
    let mut c1 = draft.new_cache(1).unwrap();
    let mut c2 = draft.new_cache(1).unwrap();
    let a = tensor_to_vec(LanguageModel::forward(&draft, &mut c1, &tokens).unwrap()).unwrap();
    let b = tensor_to_vec(
        draft
            .forward_conditioned(&mut c2, &tokens, zeros)
            .unwrap()
            .0,
    )
    .unwrap();
    assert_eq!(a, b);
});

// The unrolled training forward (EAGLE-3's training-time test) computes,
// at every step, what drafting computes: a run that starts at position
// `c` (the cache holding positions `..= c` read with the target's
// features) and feeds the draft's own predicted features afterwards.
backend_test!(unrolled_forward_is_what_drafting_computes, |device| {
    let model = target(device);
    let mut module = LlamaFeatureDraftModule::new(&model, 2, None, device).unwrap();
    module.fc.weight = module.fc.weight.map(|w| {
        let dims = w.dims();
        w + Tensor::random(dims, Distribution::Uniform(-0.2, 0.2), device)
    });
    let draft = module.to_draft(WeightStorage::F32, device).unwrap();
    let tokens = vec![vec![7, 3, 9, 1, 12, 30, 2]];
    let n = tokens[0].len();
    let features = Tensor::<3>::random([1, n, 32], Distribution::Normal(0.0, 1.0), device);
    let steps = module
        .forward_unrolled(&tokens, features.clone(), 3)
        .unwrap();
    let step_logits: Vec<Vec<f32>> = steps
        .iter()
        .map(|(l, _)| tensor_to_vec(l.clone()).unwrap())
        .collect();
    let plain = tensor_to_vec(module.forward(&tokens, features.clone()).unwrap().0).unwrap();
    assert!(max_abs_diff(&step_logits[0], &plain) < TOL);
    let mut compared = 0;
    for c in 0..n {
        let mut cache = draft.new_cache(1).unwrap();
        let (l, f) = draft
            .forward_conditioned(
                &mut cache,
                &[tokens[0][..=c].to_vec()],
                features.clone().slice([0..1, 0..c + 1, 0..32]),
            )
            .unwrap();
        let l = tensor_to_vec(l).unwrap();
        assert!(max_abs_diff(&l[c * 64..], &step_logits[0][c * 64..(c + 1) * 64]) < TOL);
        let mut own = f.slice([0..1, c..c + 1, 0..32]);
        for (s, want) in step_logits.iter().enumerate().skip(1) {
            let p = c + s;
            if p >= n {
                break;
            }
            let (l, f) = draft
                .forward_conditioned(&mut cache, &[vec![tokens[0][p]]], own)
                .unwrap();
            let diff = max_abs_diff(&tensor_to_vec(l).unwrap(), &want[p * 64..(p + 1) * 64]);
            assert!(diff < TOL, "run from {c}, step {s}: max |Δ| {diff}");
            own = f;
            compared += 1;
        }
    }
    assert_eq!(compared, (n - 1) + (n - 2));
    // Another number of steps is a typed error.
    for bad in [0, lastmile_models::llama::MAX_UNROLL + 1] {
        assert!(matches!(
            module.forward_unrolled(&tokens, features.clone(), bad),
            Err(LlamaError::Config { .. })
        ));
    }
});

// Training unrolled lowers the loss of the steps that read the draft's
// own features, and reports it.
backend_test!(unrolled_training_lowers_the_later_steps_loss, |device| {
    use lastmile_models::TrainConfig;
    use lastmile_models::llama::{FeatureLossConfig, train_feature_draft};
    let model = target(device);
    let ad = device.clone().autodiff();
    let draft = LlamaFeatureDraftModule::new(&model, 1, None, &ad).unwrap();
    let text: Vec<usize> = (0..400).map(|i| (i * 7 + i / 5) % 64).collect();
    let config = TrainConfig {
        lr: 1e-2,
        ..TrainConfig::new(30, 4, 16)
    };
    let loss = FeatureLossConfig {
        unroll: 3,
        ..FeatureLossConfig::default()
    };
    let mut later = Vec::new();
    train_feature_draft(draft, &model, &[&text], &config, &loss, |_, l| {
        later.push(l.unrolled_token.unwrap())
    })
    .unwrap();
    let (first, last) = (
        later[..5].iter().sum::<f32>(),
        later[25..].iter().sum::<f32>(),
    );
    assert!(
        last < 0.8 * first,
        "unrolled token KL {first} → {last} (sums of 5 steps)"
    );
    let bad = FeatureLossConfig {
        unroll: 0,
        ..FeatureLossConfig::default()
    };
    let draft = LlamaFeatureDraftModule::new(&model, 1, None, &ad).unwrap();
    assert!(matches!(
        train_feature_draft(draft, &model, &[&text], &config, &bad, |_, _| {}),
        Err(LlamaError::Config { .. })
    ));
});

backend_test!(
    host_draft_computes_what_the_tensor_draft_computes,
    |device| {
        // Blocks storage of trained (here: random) weights keeps f32 panels, so
        // the host pass (fusion map on the pass's team) and the tensor pass
        // differ by summation order only.
        if !lastmile_core::Backend::of(device).is_some_and(lastmile_core::Backend::is_cpu) {
            eprintln!("the host pass needs a CPU device; {device:?} skipped");
            return;
        }
        let model = target(device);
        let ids: Vec<usize> = (0..64).step_by(2).collect();
        let module = perturbed_draft(&model, &ids, device);
        let tokens = vec![vec![7, 8, 9, 10, 11], vec![3, 4]];
        let features = Tensor::<3>::random([2, 5, 32], Distribution::Normal(0.0, 1.0), device);
        let run = |storage: WeightStorage| {
            let draft = module.to_draft(storage, device).unwrap();
            let mut cache = draft.new_cache(2).unwrap();
            let (l, f) = draft
                .forward_conditioned(&mut cache, &tokens, features.clone())
                .unwrap();
            // Then a step of one token a row, as drafting makes.
            let step = features.clone().slice([0..2, 0..1, 0..32]);
            let (l2, f2) = draft
                .forward_conditioned(&mut cache, &[vec![12], vec![5]], step)
                .unwrap();
            let values = |t: Tensor<3>| tensor_to_vec(t).unwrap();
            [values(l), values(f), values(l2), values(f2)].concat()
        };
        let (tensor_pass, host_pass) = (run(WeightStorage::F32), run(WeightStorage::Blocks));
        // Only the head's tokens: the floor outside it is the same constant.
        let scale = tensor_pass
            .iter()
            .filter(|v| **v > lastmile_models::llama::OUTSIDE_HEAD_LOGIT)
            .fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = max_abs_diff(&tensor_pass, &host_pass);
        assert!(
            diff <= 1e-5 * scale.max(1.0),
            "max |Δ| {diff} (largest {scale})"
        );
    }
);
