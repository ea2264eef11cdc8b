//! The three information-theoretic bounds are upper bounds on H(Y|X).
//!
//! Synthetic data with a closed-form conditional entropy: X is uniform over
//! 40 prototypes, each with a known P(Y|x) over 8 classes, so
//! H(Y|X) = mean_x H(P(·|x)) exactly. Sets are split-conformal sets from
//! n = 1000 calibration points; the bounds are evaluated on m = 50 000
//! labelled test points. Tolerance: the bounds are empirical averages over
//! m points (standard deviation of the per-point terms ≤ ~1.5 nats), so a
//! bound may sit at most ~4 standard errors ≈ 0.03 nats below its
//! expectation; the test requires bound ≥ H(Y|X) − 0.03.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use lastmile_conformal::{
    ScoreFunction, SplitConformal,
    bounds::{binary_entropy, dpi_bound, model_fano_bound, simple_fano_bound},
};
use rand::{RngExt, SeedableRng, rngs::StdRng};

const K: usize = 8;
const PROTOTYPES: usize = 40;
const TOL: f64 = 0.03;

struct World {
    truth: Vec<Vec<f64>>,
    entropy: f64,
}

fn world(rng: &mut StdRng) -> World {
    let truth: Vec<Vec<f64>> = (0..PROTOTYPES)
        .map(|i| {
            let spread = 0.5 + 2.5 * (i as f64 / PROTOTYPES as f64);
            softmax(&(0..K).map(|_| spread * normal(rng)).collect::<Vec<_>>())
        })
        .collect();
    let entropy = truth
        .iter()
        .map(|p| {
            -p.iter()
                .filter(|&&v| v > 0.0)
                .map(|v| v * v.ln())
                .sum::<f64>()
        })
        .sum::<f64>()
        / PROTOTYPES as f64;
    World { truth, entropy }
}

fn sample(w: &World, n: usize, rng: &mut StdRng) -> (Vec<usize>, Vec<usize>) {
    let mut xs = Vec::with_capacity(n);
    let mut ys = Vec::with_capacity(n);
    for _ in 0..n {
        let x = rng.random_range(0..PROTOTYPES);
        let u: f64 = rng.random();
        let mut acc = 0.0;
        let mut y = K - 1;
        for (j, &p) in w.truth[x].iter().enumerate() {
            acc += p;
            if u < acc {
                y = j;
                break;
            }
        }
        xs.push(x);
        ys.push(y);
    }
    (xs, ys)
}

/// Model probabilities per prototype: the truth at a temperature (1 = exact),
/// or with extra noise.
fn model(w: &World, temperature: f64, noise: f64, rng: &mut StdRng) -> Vec<Vec<f32>> {
    w.truth
        .iter()
        .map(|p| {
            let logits: Vec<f64> = p
                .iter()
                .map(|v| v.ln() / temperature + noise * normal(rng))
                .collect();
            softmax(&logits).into_iter().map(|v| v as f32).collect()
        })
        .collect()
}

#[test]
fn every_bound_upper_bounds_the_conditional_entropy() {
    let mut rng = StdRng::seed_from_u64(31);
    let w = world(&mut rng);
    assert!(w.entropy > 0.5, "H(Y|X) = {}", w.entropy);
    let (cal_x, cal_y) = sample(&w, 1000, &mut rng);
    let (test_x, test_y) = sample(&w, 50_000, &mut rng);
    for (name, temperature, noise) in [
        ("exact", 1.0, 0.0),
        ("overconfident", 0.5, 0.0),
        ("underconfident", 2.0, 0.0),
        ("noisy", 1.0, 0.7),
    ] {
        let q = model(&w, temperature, noise, &mut rng);
        let rows = |xs: &[usize]| -> Vec<f32> { xs.iter().flat_map(|&x| q[x].clone()).collect() };
        let (cal_p, test_p) = (rows(&cal_x), rows(&test_x));
        // Randomised scores: the bounds use 1 − α ≤ P(E=1) ≤ 1 − α + 1/(n+1),
        // whose upper half needs tie-free scores (40 prototypes make plain
        // LAC scores heavily tied).
        for score in [
            ScoreFunction::Aps { randomized: true },
            ScoreFunction::Saps {
                lambda: 0.05,
                randomized: true,
            },
        ] {
            for alpha in [0.05, 0.1, 0.2] {
                let fitted = SplitConformal::new(score, alpha)
                    .unwrap()
                    .calibrate_slice(&cal_p, K, &cal_y, &mut rng)
                    .unwrap();
                let sets = fitted.predict_slice(&test_p, K, &mut rng).unwrap();
                let mask: Vec<f32> = sets
                    .to_mask()
                    .into_iter()
                    .map(|b| if b { 1.0 } else { 0.0 })
                    .collect();
                let n = 1000;
                let dpi = dpi_bound(&test_p, &mask, K, &test_y, alpha, n).unwrap();
                let mf = model_fano_bound(&test_p, &mask, K, &test_y, alpha, n).unwrap();
                let sf = simple_fano_bound(&mask, K, &test_y, alpha, n).unwrap();
                for (bound, value) in [("dpi", dpi), ("model_fano", mf), ("simple_fano", sf)] {
                    assert!(
                        value >= w.entropy - TOL,
                        "{name}/{}/alpha={alpha}: {bound} = {value:.4} < H(Y|X) = {:.4}",
                        score.name(),
                        w.entropy
                    );
                }
            }
        }
    }
}

#[test]
fn bounds_are_tight_for_trivial_cases() {
    // A deterministic label (H = 0) predicted perfectly with singleton sets:
    // the Fano bounds reduce to h_b(α) (log 1 = 0 inside, no misses).
    let probs = [1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0];
    let sets = [1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0];
    let labels = [0, 1];
    let alpha = 0.1;
    let sf = simple_fano_bound(&sets, 3, &labels, alpha, 99).unwrap();
    assert!((sf - binary_entropy(alpha)).abs() < 1e-12);
    let mf = model_fano_bound(&probs, &sets, 3, &labels, alpha, 99).unwrap();
    assert!((mf - binary_entropy(alpha)).abs() < 1e-12);
    // DPI: CE = 0 and Q̂(E=0) = 0 (floored at 1e-12). Its α_n·log Q̂(E=0)
    // term relies on P(E=0) ≥ α_n, which tie-free scores guarantee and this
    // degenerate, fully tied example does not: the value drops below h_b(α).
    let dpi = dpi_bound(&probs, &sets, 3, &labels, alpha, 99).unwrap();
    let expected = binary_entropy(alpha) + (alpha - 0.01) * 1e-12f64.ln();
    assert!((dpi - expected).abs() < 1e-9);
}
