//! The finite-sample law of split-conformal coverage against simulation.
#![allow(clippy::unwrap_used)]

use lastmile_conformal::{CoverageDistribution, conformal_quantile};
use lastmile_core::stats::chi_square_gof;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Empirical coverage counts `j` of `m` test points, over `reps` simulated
/// calibration/test draws of i.i.d. uniform scores (no ties).
fn simulate(n: usize, m: usize, alpha: f64, reps: usize, seed: u64) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut counts = vec![0u64; m + 1];
    for _ in 0..reps {
        let cal: Vec<f64> = (0..n).map(|_| rng.random::<f64>()).collect();
        let q = conformal_quantile(&cal, alpha).unwrap();
        let covered = (0..m).filter(|_| rng.random::<f64>() <= q).count();
        counts[covered] += 1;
    }
    counts
}

#[test]
fn pmf_sums_to_one_and_mean_is_k_over_n_plus_one() {
    for (n, m, alpha) in [
        (19, 10, 0.1),
        (359, 360, 0.1),
        (1000, 1, 0.05),
        (50, 500, 0.3),
    ] {
        let law = CoverageDistribution::split(n, m, alpha).unwrap();
        let total: f64 = law.pmf().iter().sum();
        assert!(
            (total - 1.0).abs() < 1e-9,
            "n={n} m={m}: pmf sums to {total}"
        );
        let mean: f64 = law
            .pmf()
            .iter()
            .enumerate()
            .map(|(j, p)| p * j as f64 / m as f64)
            .sum();
        assert!(
            (mean - law.mean()).abs() < 1e-9,
            "n={n}: {mean} vs {}",
            law.mean()
        );
        assert!(law.mean() >= 1.0 - alpha - 1e-12);
        assert!(law.mean() < 1.0 - alpha + 1.0 / (n as f64 + 1.0));
    }
}

/// Chi-square goodness of fit of 20 000 simulated splits (n = 19, m = 10,
/// α = 0.1) against the Beta-binomial law; bins with expected count < 5 are
/// pooled. A correct law fails with probability 1e-4.
#[test]
fn simulated_coverage_follows_the_beta_binomial_law() {
    let (n, m, alpha, reps) = (19, 10, 0.1, 20_000);
    let law = CoverageDistribution::split(n, m, alpha).unwrap();
    let counts = simulate(n, m, alpha, reps, 7);
    // Pool the low-j bins (tiny probabilities) into the first kept bin.
    let first = law
        .pmf()
        .iter()
        .position(|p| p * reps as f64 >= 5.0)
        .unwrap();
    let mut observed = vec![counts[..=first].iter().sum::<u64>()];
    observed.extend(&counts[first + 1..]);
    let mut expected = vec![law.pmf()[..=first].iter().sum::<f64>()];
    expected.extend(&law.pmf()[first + 1..]);
    let t = chi_square_gof(&observed, &expected).unwrap();
    assert!(
        t.p_value > 1e-4,
        "p = {} (observed {observed:?})",
        t.p_value
    );
    // A wrong law (Binomial(m, 1−α), i.e. ignoring calibration noise) is rejected.
    let binom: Vec<f64> = (0..=m)
        .map(|j| {
            let c = (1..=j).fold(1.0, |c, i| c * (m - j + i) as f64 / i as f64);
            c * (1.0 - alpha).powi(j as i32) * alpha.powi((m - j) as i32)
        })
        .collect();
    let mut wrong = vec![binom[..=first].iter().sum::<f64>()];
    wrong.extend(&binom[first + 1..]);
    let t = chi_square_gof(&observed, &wrong).unwrap();
    assert!(
        t.p_value < 1e-6,
        "the binomial law was not rejected: p = {}",
        t.p_value
    );
}

#[test]
fn interval_holds_its_level() {
    let law = CoverageDistribution::split(359, 360, 0.1).unwrap();
    let (lo, hi) = law.interval(0.95).unwrap();
    let m = law.n_test() as f64;
    let inside: f64 = law
        .pmf()
        .iter()
        .enumerate()
        .filter(|(j, _)| (*j as f64 / m) >= lo && (*j as f64 / m) <= hi)
        .map(|(_, p)| p)
        .sum();
    assert!(inside >= 0.95, "interval [{lo}, {hi}] holds {inside}");
    assert!(lo < law.mean() && law.mean() < hi);
}

#[test]
fn rank_above_n_covers_everything() {
    // n = 5, α = 0.1: k = ⌈5.4⌉ = 6 > 5, every set is the full label set.
    let law = CoverageDistribution::split(5, 20, 0.1).unwrap();
    assert_eq!(law.mean(), 1.0);
    assert_eq!(law.pmf()[20], 1.0);
    assert_eq!(law.interval(0.9).unwrap(), (1.0, 1.0));
    assert_eq!(law.std(), 0.0);
}

#[test]
fn bad_inputs_are_typed_errors() {
    assert!(CoverageDistribution::split(0, 10, 0.1).is_err());
    assert!(CoverageDistribution::split(10, 0, 0.1).is_err());
    assert!(CoverageDistribution::split(10, 10, 0.0).is_err());
    assert!(CoverageDistribution::split(10, 10, 1.0).is_err());
    assert!(CoverageDistribution::split(usize::MAX, 10, 0.1).is_err());
    let law = CoverageDistribution::split(10, 10, 0.1).unwrap();
    assert!(law.interval(1.0).is_err());
    assert!(law.interval(f64::NAN).is_err());
}
