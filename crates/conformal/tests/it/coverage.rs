//! Coverage validity of split and Mondrian conformal classification over
//! many random calibration/test re-splits, on real data (digits, wine,
//! breast cancer) and synthetic data.
//!
//! For each (dataset, score, n_calib, α) the mean coverage over R = 100
//! re-splits is tested with two one-sided z-tests: "not significantly below
//! 1 − α" and "not significantly above 1 − α + 1/(n+1)" (the upper bound
//! holds for tie-free scores; ties are counted and shown to be absent).
//! Family-wise level 0.001 per test function, Bonferroni-corrected over all
//! its one-sided tests: each test rejects when z > Φ⁻¹(1 − 0.001/M).
#![allow(clippy::unwrap_used)]

use crate::common::*;
use lastmile_conformal::{Mondrian, PredictionSets, ScoreFunction, SplitConformal, coverage};
use rand::{SeedableRng, rngs::StdRng};

const RESPLITS: usize = 100;
const ALPHAS: [f64; 3] = [0.05, 0.1, 0.2];
const FAMILY_LEVEL: f64 = 0.001;

fn scores() -> [ScoreFunction; 4] {
    [
        ScoreFunction::Lac,
        ScoreFunction::Aps { randomized: true },
        ScoreFunction::raps(0.01, 1),
        ScoreFunction::Saps {
            lambda: 0.1,
            randomized: true,
        },
    ]
}

/// Number of tied pairs among the true-label scores of all pool points (for
/// the non-randomised scores, whose values are fixed per point).
fn tied_true_scores(score: ScoreFunction, probs: &[f32], k: usize, labels: &[usize]) -> usize {
    let mut s: Vec<f64> = labels
        .iter()
        .enumerate()
        .map(|(i, &y)| score.score(&probs[i * k..(i + 1) * k], y, 1.0))
        .collect();
    s.sort_by(f64::total_cmp);
    s.windows(2).filter(|w| w[0] == w[1]).count()
}

struct Outcome {
    label: String,
    mean: f64,
    se: f64,
    lower: f64,
    upper: f64,
}

fn split_coverage(
    name: &str,
    probs: &[f32],
    k: usize,
    labels: &[usize],
    n_cals: &[usize],
    seed: u64,
) -> Vec<Outcome> {
    let n = labels.len();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for score in scores() {
        // The upper bound 1 − α + 1/(n+1) needs tie-free scores. Randomised
        // scores and LAC on continuous probabilities have none; non-randomised
        // APS/RAPS tie for labels ranked last (score = Σp (+ penalty)), so for
        // those only the lower bound is tested.
        let ties = if score.is_randomized() {
            0
        } else {
            tied_true_scores(score, probs, k, labels)
        };
        for &n_cal in n_cals {
            for alpha in ALPHAS {
                let cp = SplitConformal::new(score, alpha).unwrap();
                let mut covs = Vec::with_capacity(RESPLITS);
                for _ in 0..RESPLITS {
                    let (cal, test) = resplit(n, n_cal, &mut rng);
                    let cal_p = gather_rows(probs, k, &cal);
                    let cal_y: Vec<usize> = cal.iter().map(|&i| labels[i]).collect();
                    let test_p = gather_rows(probs, k, &test);
                    let test_y: Vec<usize> = test.iter().map(|&i| labels[i]).collect();
                    let fitted = cp.calibrate_slice(&cal_p, k, &cal_y, &mut rng).unwrap();
                    let sets = fitted.predict_slice(&test_p, k, &mut rng).unwrap();
                    covs.push(coverage(&sets, &test_y).unwrap());
                }
                let (mean, se) = mean_se(&covs);
                out.push(Outcome {
                    label: format!(
                        "{name}/{}/n={n_cal}/alpha={alpha} ({ties} ties)",
                        score.name()
                    ),
                    mean,
                    se,
                    lower: 1.0 - alpha,
                    upper: if ties == 0 {
                        1.0 - alpha + 1.0 / (n_cal as f64 + 1.0)
                    } else {
                        f64::INFINITY
                    },
                });
            }
        }
    }
    out
}

/// Applies the Bonferroni-corrected one-sided tests to every outcome.
fn assert_valid(outcomes: &[Outcome], check_upper: bool) {
    let m = outcomes.len() * if check_upper { 2 } else { 1 };
    let z_crit = normal_quantile(1.0 - FAMILY_LEVEL / m as f64);
    for o in outcomes {
        let (z_below, z_above) = z_scores(o.mean, o.se, o.lower, o.upper);
        assert!(
            z_below < z_crit,
            "{}: mean coverage {:.4} (se {:.4}) significantly below {:.4} (z = {z_below:.2} > {z_crit:.2})",
            o.label,
            o.mean,
            o.se,
            o.lower
        );
        if check_upper {
            assert!(
                z_above < z_crit,
                "{}: mean coverage {:.4} (se {:.4}) significantly above {:.4} (z = {z_above:.2} > {z_crit:.2})",
                o.label,
                o.mean,
                o.se,
                o.upper
            );
        }
    }
}

fn dataset_probs(
    ds: &lastmile_datasets::Dataset,
    temperature: f64,
) -> (Vec<f32>, usize, Vec<usize>) {
    let labels = ds.labels().unwrap().to_vec();
    let k = ds.n_classes().unwrap();
    let probs = centroid_probabilities(ds.features(), ds.n_features(), &labels, k, temperature);
    (probs, k, labels)
}

#[test]
fn digits_split_coverage_is_valid() {
    let ds = lastmile_datasets::digits().unwrap();
    let (probs, k, labels) = dataset_probs(&ds, 0.05);
    let outcomes = split_coverage("digits", &probs, k, &labels, &[10, 20, 50, 100, 1000], 1);
    assert_valid(&outcomes, true);
}

#[test]
fn wine_and_breast_cancer_split_coverage_is_valid() {
    // 178 and 569 rows: n_calib = 1000 does not fit; the other sizes do.
    let mut outcomes = Vec::new();
    for (ds, seed) in [
        (lastmile_datasets::wine().unwrap(), 2),
        (lastmile_datasets::breast_cancer().unwrap(), 3),
    ] {
        let (probs, k, labels) = dataset_probs(&ds, 0.2);
        outcomes.extend(split_coverage(
            ds.name(),
            &probs,
            k,
            &labels,
            &[10, 20, 50, 100],
            seed,
        ));
    }
    assert_valid(&outcomes, true);
}

#[test]
fn synthetic_split_coverage_is_valid() {
    let mut rng = StdRng::seed_from_u64(4);
    let (_, probs, labels) = synthetic(3000, 6, &mut rng);
    let outcomes = split_coverage("synthetic", &probs, 6, &labels, &[10, 20, 50, 100, 1000], 5);
    assert_valid(&outcomes, true);
}

/// With continuous (randomised) scores the coverage is exactly
/// k/(n+1) = ⌈(n+1)(1−α)⌉/(n+1), which equals 1 − α when (n+1)(1−α) is an
/// integer: randomised APS hits 1 − α exactly, not just at least. Two-sided
/// z-test at level 0.001 per case (Bonferroni over 4 cases: |z| < 3.48).
#[test]
fn randomized_aps_coverage_is_exactly_one_minus_alpha() {
    let mut rng = StdRng::seed_from_u64(6);
    let (_, probs, labels) = synthetic(2000, 6, &mut rng);
    let z_crit = normal_quantile(1.0 - 0.001 / 8.0);
    for (n_cal, alpha) in [(99, 0.1), (99, 0.2), (19, 0.05), (49, 0.1)] {
        let cp = SplitConformal::new(ScoreFunction::Aps { randomized: true }, alpha).unwrap();
        let mut covs = Vec::new();
        for _ in 0..400 {
            let (cal, test) = resplit(labels.len(), n_cal, &mut rng);
            let cal_y: Vec<usize> = cal.iter().map(|&i| labels[i]).collect();
            let test_y: Vec<usize> = test.iter().map(|&i| labels[i]).collect();
            let fitted = cp
                .calibrate_slice(&gather_rows(&probs, 6, &cal), 6, &cal_y, &mut rng)
                .unwrap();
            let sets = fitted
                .predict_slice(&gather_rows(&probs, 6, &test), 6, &mut rng)
                .unwrap();
            covs.push(coverage(&sets, &test_y).unwrap());
        }
        let (mean, se) = mean_se(&covs);
        let z = (mean - (1.0 - alpha)).abs() / se;
        assert!(
            z < z_crit,
            "n={n_cal} alpha={alpha}: mean coverage {mean:.4} (se {se:.4}) differs from {}",
            1.0 - alpha
        );
    }
}

/// Smoothed conformal p-values give sets `{y : p > α}` with coverage exactly
/// `1 − α` for every n (here n = 30, where ⌈31·0.9⌉/31 ≠ 0.9); the
/// unsmoothed p-values reproduce the threshold sets exactly.
#[test]
fn smoothed_p_values_are_exact_and_unsmoothed_match_sets() {
    let mut rng = StdRng::seed_from_u64(7);
    let (_, probs, labels) = synthetic(1500, 5, &mut rng);
    let alpha = 0.1;
    let cp = SplitConformal::new(ScoreFunction::Lac, alpha).unwrap();
    let mut covs = Vec::new();
    for _ in 0..400 {
        let (cal, test) = resplit(labels.len(), 30, &mut rng);
        let cal_y: Vec<usize> = cal.iter().map(|&i| labels[i]).collect();
        let test_p = gather_rows(&probs, 5, &test);
        let fitted = cp
            .calibrate_slice(&gather_rows(&probs, 5, &cal), 5, &cal_y, &mut rng)
            .unwrap();
        let p = fitted.p_values_slice(&test_p, 5, true, &mut rng).unwrap();
        let hits = test
            .iter()
            .enumerate()
            .filter(|&(t, &i)| p[t * 5 + labels[i]] > alpha)
            .count();
        covs.push(hits as f64 / test.len() as f64);
        // θ = 1: {y : p > α} is exactly the split-conformal set
        let p1 = fitted.p_values_slice(&test_p, 5, false, &mut rng).unwrap();
        let mask: Vec<bool> = p1.iter().map(|&v| v > alpha).collect();
        let from_p = PredictionSets::from_mask(5, &mask).unwrap();
        let sets = fitted.predict_slice(&test_p, 5, &mut rng).unwrap();
        assert_eq!(from_p.to_mask(), sets.to_mask());
    }
    let (mean, se) = mean_se(&covs);
    let z = (mean - 0.9).abs() / se;
    assert!(z < 3.29, "smoothed p-value coverage {mean:.4} (se {se:.4})");
    // and it is strictly below the conservative level ⌈31·0.9⌉/31 = 28/31 = 0.903
    assert!(mean < 28.0 / 31.0);
}

/// Class-conditional (Mondrian) calibration covers every class: per-class
/// mean coverage over 100 re-splits not significantly below 1 − α
/// (Bonferroni over 10 classes × 3 α × 2 scores, family level 0.001).
#[test]
fn mondrian_class_conditional_coverage_per_class() {
    let ds = lastmile_datasets::digits().unwrap();
    let (probs, k, labels) = dataset_probs(&ds, 0.05);
    let mut rng = StdRng::seed_from_u64(8);
    let m = (k * ALPHAS.len() * 2) as f64;
    let z_crit = normal_quantile(1.0 - FAMILY_LEVEL / m);
    for score in [ScoreFunction::Lac, ScoreFunction::Aps { randomized: true }] {
        for alpha in ALPHAS {
            let cp = Mondrian::class_conditional(score, alpha).unwrap();
            let mut per_class: Vec<Vec<f64>> = vec![Vec::new(); k];
            for _ in 0..RESPLITS {
                let (cal, test) = resplit(labels.len(), 1000, &mut rng);
                let cal_y: Vec<usize> = cal.iter().map(|&i| labels[i]).collect();
                let test_y: Vec<usize> = test.iter().map(|&i| labels[i]).collect();
                let fitted = cp
                    .calibrate_slice(&gather_rows(&probs, k, &cal), k, &cal_y, None, &mut rng)
                    .unwrap();
                let sets = fitted
                    .predict_slice(&gather_rows(&probs, k, &test), k, None, &mut rng)
                    .unwrap();
                let cc = lastmile_conformal::class_coverage(&sets, &test_y).unwrap();
                for (c, v) in cc.into_iter().enumerate() {
                    if let Some(v) = v {
                        per_class[c].push(v);
                    }
                }
            }
            for (c, covs) in per_class.iter().enumerate() {
                let (mean, se) = mean_se(covs);
                let (z_below, _) = z_scores(mean, se, 1.0 - alpha, 1.0);
                assert!(
                    z_below < z_crit,
                    "{} alpha={alpha} class {c}: coverage {mean:.4} (se {se:.4}) below {}",
                    score.name(),
                    1.0 - alpha
                );
            }
        }
    }
}

/// Group-conditional calibration with groups defined from x (the model's
/// confidence bucket): coverage within each group is valid, while plain
/// split conformal under-covers the low-confidence group.
#[test]
fn mondrian_group_conditional_coverage() {
    let mut rng = StdRng::seed_from_u64(9);
    let (_, probs, labels) = synthetic(3000, 6, &mut rng);
    let groups: Vec<usize> = probs
        .chunks(6)
        .map(|r| usize::from(r.iter().cloned().fold(0.0f32, f32::max) > 0.6))
        .collect();
    let alpha = 0.1;
    let cp = Mondrian::by_group(ScoreFunction::Lac, alpha, 2).unwrap();
    let split = SplitConformal::new(ScoreFunction::Lac, alpha).unwrap();
    let mut per_group = [Vec::new(), Vec::new()];
    let mut split_per_group = [Vec::new(), Vec::new()];
    for _ in 0..RESPLITS {
        let (cal, test) = resplit(labels.len(), 1000, &mut rng);
        let cal_y: Vec<usize> = cal.iter().map(|&i| labels[i]).collect();
        let cal_g: Vec<usize> = cal.iter().map(|&i| groups[i]).collect();
        let test_g: Vec<usize> = test.iter().map(|&i| groups[i]).collect();
        let cal_p = gather_rows(&probs, 6, &cal);
        let test_p = gather_rows(&probs, 6, &test);
        let fitted = cp
            .calibrate_slice(&cal_p, 6, &cal_y, Some(&cal_g), &mut rng)
            .unwrap();
        let sets = fitted
            .predict_slice(&test_p, 6, Some(&test_g), &mut rng)
            .unwrap();
        let plain = split
            .calibrate_slice(&cal_p, 6, &cal_y, &mut rng)
            .unwrap()
            .predict_slice(&test_p, 6, &mut rng)
            .unwrap();
        for g in 0..2 {
            let (mut hit, mut tot, mut plain_hit) = (0, 0, 0);
            for (t, &i) in test.iter().enumerate() {
                if groups[i] == g {
                    tot += 1;
                    hit += usize::from(sets.contains(t, labels[i]));
                    plain_hit += usize::from(plain.contains(t, labels[i]));
                }
            }
            per_group[g].push(hit as f64 / tot as f64);
            split_per_group[g].push(plain_hit as f64 / tot as f64);
        }
    }
    let z_crit = normal_quantile(1.0 - FAMILY_LEVEL / 2.0);
    for (g, covs) in per_group.iter().enumerate() {
        let (mean, se) = mean_se(covs);
        let (z_below, _) = z_scores(mean, se, 1.0 - alpha, 1.0);
        assert!(
            z_below < z_crit,
            "group {g}: coverage {mean:.4} (se {se:.4})"
        );
    }
    // Plain split conformal is only marginally valid: it under-covers one
    // of the groups by more than 2 points, which Mondrian fixes.
    let worst_plain = split_per_group
        .iter()
        .map(|c| mean_se(c).0)
        .fold(f64::INFINITY, f64::min);
    assert!(
        worst_plain < 1.0 - alpha - 0.02,
        "plain split coverage in the worst group is {worst_plain:.3}"
    );
}
