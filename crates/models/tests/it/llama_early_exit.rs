#![allow(clippy::unwrap_used)]
//! The early-exit draft (`LlamaEarlyExit`): with every layer it is the
//! target; with the first `L` layers it is the `L`-layer model with the same
//! weights; it passes the `LanguageModel` conformance kit; bad calls are
//! typed errors.
//!
//! Exactness: both sides run the same kernels on the same shapes, so the
//! comparisons with the full model and with the `L`-layer model are
//! bitwise (`assert_eq!` on the logits). The conformance kit compares the
//! view with itself through different forward shapes, `TOL = 1e-4` as in
//! `tests/it/llama.rs`.

use lastmile_core::backend_test;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::lm::{LanguageModel, conformance};
use lastmile_models::llama::{LlamaConfig, LlamaEarlyExit, LlamaError, LlamaModel, WeightStorage};

const TOL: f32 = 1e-4;

fn config(layers: usize) -> LlamaConfig {
    LlamaConfig {
        n_layers: layers,
        ..LlamaConfig::tiny()
    }
}

/// Logits of a prompt fed whole, then two decode steps, then a ragged
/// batch pass (row 1 gets nothing), as one flat vector.
fn run<M: LanguageModel>(m: &M) -> Vec<f32> {
    let mut cache = m.new_cache(2).unwrap();
    let mut out = tensor_to_vec(
        m.forward(&mut cache, &[vec![3, 1, 4, 1, 5, 9], vec![2, 6]])
            .unwrap(),
    )
    .unwrap();
    for t in [5, 35] {
        out.extend(tensor_to_vec(m.forward(&mut cache, &[vec![t], vec![t + 1]]).unwrap()).unwrap());
    }
    m.truncate(&mut cache, 0, 4).unwrap();
    out.extend(tensor_to_vec(m.forward(&mut cache, &[vec![8, 9, 7], vec![]]).unwrap()).unwrap());
    out
}

backend_test!(all_layers_equal_the_full_model, |device| {
    let target = config(3)
        .init_random(21, WeightStorage::F32, device)
        .unwrap();
    let view = LlamaEarlyExit::new(&target, 3).unwrap();
    assert_eq!(view.matrix_bytes(), target.matrix_bytes());
    assert_eq!(run(&view), run(&target));
});

backend_test!(first_layers_equal_the_shallower_model, |device| {
    // `init_random` draws the embedding, then block by block, and the norm
    // gains are ones, the head tied: the first L blocks of a 3-block model
    // are an L-block model with the same seed.
    let target = config(3)
        .init_random(21, WeightStorage::F32, device)
        .unwrap();
    for l in 1..3 {
        let shallow: LlamaModel = config(l)
            .init_random(21, WeightStorage::F32, device)
            .unwrap();
        let view = LlamaEarlyExit::new(&target, l).unwrap();
        assert_eq!(view.layers(), l);
        assert_eq!(view.matrix_bytes(), shallow.matrix_bytes());
        let got = run(&view);
        assert_eq!(got, run(&shallow), "L = {l}");
        assert_ne!(
            got,
            run(&target),
            "L = {l} must differ from the 3-block target"
        );
    }
});

backend_test!(early_exit_conforms_to_language_model_interface, |device| {
    let target = config(3)
        .init_random(4, WeightStorage::F32, device)
        .unwrap();
    for l in 1..=3 {
        let view = LlamaEarlyExit::new(&target, l).unwrap();
        let mut worst = conformance::check_all(&view, 11, TOL).unwrap();
        worst = worst.max(conformance::check_all(&view, 12, TOL).unwrap());
        let seq: Vec<usize> = (0..30).map(|i| (i * 13 + 7) % 64).collect();
        worst =
            worst.max(conformance::chunked_forward(&view, &seq, &[1, 13, 2, 3, 11], TOL).unwrap());
        worst = worst.max(
            conformance::truncate_refeed(&view, &seq[..10], &seq[10..20], &seq[20..26], TOL)
                .unwrap(),
        );
        assert!(worst <= TOL, "L = {l}: worst |Δlogit| {worst:e}");
    }
});

backend_test!(bad_calls_are_typed_errors, |device| {
    let target = config(2)
        .init_random(1, WeightStorage::F32, device)
        .unwrap();
    for l in [0, 3] {
        assert!(matches!(
            LlamaEarlyExit::new(&target, l),
            Err(LlamaError::Config { .. })
        ));
    }
    let view = LlamaEarlyExit::new(&target, 1).unwrap();
    assert!(view.new_cache(0).is_err());
    // A cache made by the target has the wrong number of blocks.
    let mut full = target.new_cache(1).unwrap();
    assert!(matches!(
        view.forward_cached(&mut full, &[vec![1]]),
        Err(LlamaError::Config { .. })
    ));
    assert_eq!(full.len(0), 0);
    // And the view's cache does not fit the target.
    let mut short = view.new_cache(1).unwrap();
    assert!(target.forward_cached(&mut short, &[vec![1]]).is_err());
    // Token and context checks are the target's.
    assert!(view.forward_cached(&mut short, &[vec![64]]).is_err());
    assert!(view.forward_cached(&mut short, &[vec![1; 65]]).is_err());
    assert_eq!(short.len(0), 0);
});
