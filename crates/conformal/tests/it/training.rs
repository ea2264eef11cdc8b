//! Conformal training: the relaxations converge to the exact quantities,
//! the tensor losses equal the host bounds, and gradients are finite and
//! match central finite differences.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use burn::tensor::{Device, Int, Tensor, TensorData};
use lastmile_conformal::{
    ScoreFunction,
    bounds::{dpi_bound, model_fano_bound, simple_fano_bound},
    training::{
        ConformalTraining, Objective, TrainingScore, differentiable_scores, dpi_loss,
        dpi_loss_bernstein, model_fano_loss, simple_fano_loss, soft_quantile, soft_sort,
    },
};
use lastmile_core::backend_test;
use rand::{SeedableRng, rngs::StdRng};

fn floats<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn tensor2(data: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

fn labels_tensor(labels: &[usize], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = labels.iter().map(|&y| y as i64).collect();
    Tensor::from_data(TensorData::new(v, [labels.len()]), device)
}

backend_test!(soft_sort_and_quantile_converge_to_exact, |device| {
    let mut rng = StdRng::seed_from_u64(41);
    // well-separated values: gaps ≥ 0.01
    let mut v: Vec<f32> = (0..30)
        .map(|i| i as f32 * 0.01 + 0.003 * (i % 3) as f32)
        .collect();
    use rand::seq::SliceRandom;
    v.shuffle(&mut rng);
    let mut sorted = v.clone();
    sorted.sort_by(f32::total_cmp);
    let t = Tensor::<1>::from_data(TensorData::new(v.clone(), [30]), device);
    let soft = floats(soft_sort(t.clone(), 1e-4).unwrap());
    for (a, b) in soft.iter().zip(&sorted) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    // quantile at position (n+1)(1−α) = 31·0.9 = 27.9 (1-based)
    let q = floats(soft_quantile(t, 0.1, 1e-4).unwrap())[0];
    let expected = 0.1 * sorted[26] + 0.9 * sorted[27];
    assert!((q - expected).abs() < 1e-4, "{q} vs {expected}");
});

backend_test!(differentiable_scores_match_host_scores, |device| {
    let mut rng = StdRng::seed_from_u64(42);
    let (b, k) = (12, 6);
    let (_, probs, _) = synthetic(b, k, &mut rng);
    let t = tensor2(probs.clone(), [b, k], device);
    for score in [
        ScoreFunction::Lac,
        ScoreFunction::aps(),
        ScoreFunction::raps(0.05, 2),
        ScoreFunction::saps(0.1),
    ] {
        let s = floats(differentiable_scores(t.clone(), score, None).unwrap());
        for (i, row) in probs.chunks(k).enumerate() {
            for y in 0..k {
                let host = score.score(row, y, 1.0);
                assert!(
                    (s[i * k + y] as f64 - host).abs() < 1e-5,
                    "{score:?} {i} {y}"
                );
            }
        }
    }
});

backend_test!(tensor_bounds_equal_host_bounds, |device| {
    let mut rng = StdRng::seed_from_u64(43);
    let (b, k) = (40, 5);
    let (_, probs, labels) = synthetic(b, k, &mut rng);
    // soft sets in (0, 1), away from the clamps
    let sets: Vec<f32> = (0..b * k)
        .map(|i| 0.05 + 0.9 * ((i * 7919 % 101) as f32 / 100.0))
        .collect();
    let p = tensor2(probs.clone(), [b, k], device);
    let c = tensor2(sets.clone(), [b, k], device);
    let y = labels_tensor(&labels, device);
    let (alpha, n) = (0.1, 50);
    let pairs = [
        (
            floats(dpi_loss(p.clone().log(), c.clone(), y.clone(), alpha, n).unwrap())[0],
            dpi_bound(&probs, &sets, k, &labels, alpha, n).unwrap(),
        ),
        (
            floats(model_fano_loss(p.log(), c.clone(), y.clone(), alpha, n).unwrap())[0],
            model_fano_bound(&probs, &sets, k, &labels, alpha, n).unwrap(),
        ),
        (
            floats(simple_fano_loss(c, y, alpha, n).unwrap())[0],
            simple_fano_bound(&sets, k, &labels, alpha, n).unwrap(),
        ),
    ];
    for (tensor, host) in pairs {
        assert!(
            (tensor as f64 - host).abs() < 1e-4 * host.abs().max(1.0),
            "tensor {tensor} vs host {host}"
        );
    }
});

fn objectives() -> Vec<Objective> {
    vec![
        Objective::CrossEntropy,
        Objective::ConfTr {
            target_size: 1.0,
            size_weight: 1.0,
            coverage_weight: 0.5,
        },
        Objective::Dpi,
        Objective::ModelFano,
        Objective::SimpleFano,
    ]
}

// Central finite differences of every loss w.r.t. the logits, against
// autodiff. Temperatures are moderate (T = τ = 0.5) and logits well
// separated so that a step of 1e-2 crosses no rank change or hinge kink.
// Tolerance: |g − fd| ≤ 2e-3 + 5%·|g| (f32 losses, step 1e-2).
backend_test!(training_gradients_match_finite_differences, |device| {
    let ad = device.clone().autodiff();
    let (b, k) = (10, 4);
    let mut rng = StdRng::seed_from_u64(44);
    let logits: Vec<f32> = (0..b)
        .flat_map(|i| {
            let mut row: Vec<f32> = (0..k).map(|j| 0.9 * j as f32 - 1.2).collect();
            row.rotate_left(i % k);
            row.iter_mut()
                .for_each(|v| *v += 0.05 * normal(&mut rng) as f32);
            row
        })
        .collect();
    let labels: Vec<usize> = (0..b).map(|i| (i * 3) % k).collect();
    // (the DPI concentration correction is a detached constant, so it is
    // switched off here: finite differences would see it move)
    for score in [
        TrainingScore::Probability(ScoreFunction::Lac),
        TrainingScore::Probability(ScoreFunction::aps()),
        TrainingScore::LogProbability,
    ] {
        for objective in objectives() {
            let cfg = ConformalTraining::new(objective, ScoreFunction::Lac, 0.1)
                .unwrap()
                .with_training_score(score)
                .unwrap()
                .with_dpi_concentration(false)
                .with_temperature(0.5)
                .unwrap()
                .with_sort_temperature(0.5)
                .unwrap()
                .with_ce_weight(0.3)
                .unwrap();
            let eval = |x: Vec<f32>| -> f64 {
                let t = tensor2(x, [b, k], &ad);
                let l = cfg
                    .loss(
                        t,
                        labels_tensor(&labels, &ad),
                        &mut StdRng::seed_from_u64(0),
                    )
                    .unwrap();
                floats(l)[0] as f64
            };
            let x = tensor2(logits.clone(), [b, k], &ad).require_grad();
            let loss = cfg
                .loss(
                    x.clone(),
                    labels_tensor(&labels, &ad),
                    &mut StdRng::seed_from_u64(0),
                )
                .unwrap();
            let grads = loss.backward();
            let g = floats(x.grad(&grads).unwrap());
            assert!(
                g.iter().all(|v| v.is_finite()),
                "{objective:?}: non-finite gradient"
            );
            assert!(
                g.iter().any(|v| v.abs() > 1e-6),
                "{objective:?}: zero gradient"
            );
            let h = 1e-2f32;
            for idx in (0..b * k).step_by(3) {
                let mut plus = logits.clone();
                plus[idx] += h;
                let mut minus = logits.clone();
                minus[idx] -= h;
                let fd = (eval(plus) - eval(minus)) / (2.0 * h as f64);
                let gi = g[idx] as f64;
                assert!(
                    (gi - fd).abs() <= 2e-3 + 0.05 * gi.abs(),
                    "{score:?} {objective:?} d/dx[{idx}]: autodiff {gi:.5} vs finite difference {fd:.5}"
                );
            }
        }
    }
});

backend_test!(randomized_training_loss_is_seeded, |device| {
    let ad = device.clone().autodiff();
    let mut rng = StdRng::seed_from_u64(45);
    let (b, k) = (16, 5);
    let logits: Vec<f32> = (0..b * k).map(|_| normal(&mut rng) as f32).collect();
    let labels: Vec<usize> = (0..b).map(|i| i % k).collect();
    let cfg = ConformalTraining::new(
        Objective::ModelFano,
        ScoreFunction::Aps { randomized: true },
        0.1,
    )
    .unwrap();
    let run = |seed| {
        floats(
            cfg.loss(
                tensor2(logits.clone(), [b, k], &ad),
                labels_tensor(&labels, &ad),
                &mut StdRng::seed_from_u64(seed),
            )
            .unwrap(),
        )[0]
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
});

// The corrected DPI loss against a naive f64 evaluation of its formula, and
// never below the plain loss (the correction only enlarges Q̂(E=e)).
backend_test!(bernstein_dpi_loss_matches_naive_formula, |device| {
    let mut rng = StdRng::seed_from_u64(46);
    let (b, k) = (30, 4);
    let (_, probs, labels) = synthetic(b, k, &mut rng);
    let sets: Vec<f32> = (0..b * k)
        .map(|i| 0.05 + 0.9 * ((i * 7919 % 101) as f32 / 100.0))
        .collect();
    for (alpha, n) in [(0.1, 50usize), (0.01, 50), (0.05, 1000)] {
        let p = tensor2(probs.clone(), [b, k], device);
        let c = tensor2(sets.clone(), [b, k], device);
        let y = labels_tensor(&labels, device);
        let got =
            floats(dpi_loss_bernstein(p.clone().log(), c.clone(), y.clone(), alpha, n).unwrap())[0]
                as f64;
        let plain = floats(dpi_loss(p.log(), c, y, alpha, n).unwrap())[0] as f64;
        let per: Vec<f64> = (0..b)
            .map(|i| {
                (0..k)
                    .map(|j| probs[i * k + j] as f64 * sets[i * k + j] as f64)
                    .sum()
            })
            .collect();
        let m = b as f64;
        let mean = per.iter().sum::<f64>() / m;
        let var = per.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (m - 1.0);
        let l = (2.0 / alpha).ln();
        let delta = (2.0 * var * l / m).sqrt() + 7.0 * l / (3.0 * (m - 1.0));
        let ce = -labels
            .iter()
            .enumerate()
            .map(|(i, &y)| (probs[i * k + y] as f64).ln())
            .sum::<f64>()
            / m;
        let alpha_n = (alpha - 1.0 / (n as f64 + 1.0)).max(0.0);
        let expected = ce
            + lastmile_conformal::bounds::binary_entropy(alpha)
            + (1.0 - alpha) * (mean + delta).ln()
            + alpha_n * (1.0 - mean + delta).ln();
        assert!(
            (got - expected).abs() < 1e-4,
            "α {alpha} n {n}: {got} vs {expected}"
        );
        assert!(
            got >= plain - 1e-6,
            "α {alpha} n {n}: corrected {got} < plain {plain}"
        );
    }
    let one = tensor2(vec![0.5, 0.5], [1, 2], device);
    assert!(
        dpi_loss_bernstein(one.clone().log(), one, labels_tensor(&[0], device), 0.1, 10).is_err()
    );
});

// Thresholding on log-probabilities: calibration at −log p of the label, so
// a confident model gets small sets; the loss is finite and differentiable.
backend_test!(log_probability_training_score_trains, |device| {
    let ad = device.clone().autodiff();
    let (b, k) = (40, 5);
    let labels: Vec<usize> = (0..b).map(|i| i % k).collect();
    let logits: Vec<f32> = (0..b)
        .flat_map(|i| (0..k).map(move |j| if j == i % k { 4.0 } else { 0.0 }))
        .collect();
    for objective in objectives() {
        let cfg = ConformalTraining::new(objective, ScoreFunction::Lac, 0.1)
            .unwrap()
            .with_training_score(TrainingScore::LogProbability)
            .unwrap();
        let x = tensor2(logits.clone(), [b, k], &ad).require_grad();
        let loss = cfg
            .loss(
                x.clone(),
                labels_tensor(&labels, &ad),
                &mut StdRng::seed_from_u64(0),
            )
            .unwrap();
        assert!(floats(loss.clone())[0].is_finite(), "{objective:?}");
        let g = floats(x.grad(&loss.backward()).unwrap());
        assert!(g.iter().all(|v| v.is_finite()), "{objective:?}");
    }
    // soft sets at a tiny temperature equal the hard sets {y : −log p_y ≤ q̂}
    let p: Vec<f32> = vec![0.7, 0.2, 0.1];
    let s = Tensor::<2>::from_data(TensorData::new(p.clone(), [1, 3]), device)
        .log()
        .neg();
    let c = floats(
        lastmile_conformal::training::soft_sets(
            s,
            Tensor::<1>::from_floats([-(0.15f32.ln())], device),
            1e-3,
        )
        .unwrap(),
    );
    assert_eq!(
        c.iter().map(|v| v.round() as i32).collect::<Vec<_>>(),
        vec![1, 1, 0]
    );
});
