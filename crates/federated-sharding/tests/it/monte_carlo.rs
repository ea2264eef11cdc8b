//! Monte Carlo checks of the estimators (10^4 seeded draws each, host f64
//! arithmetic on a 32×24 layer, 6 of 24 triplets kept):
//!
//! - the Unbiased estimator's running mean converges to `W`, with
//!   `‖mean_T − W‖` tracking the predicted `√(V/T)`, `V = Σ σ²(1/p − 1)`;
//! - the empirical `E‖Ŵ − W‖²/‖W‖²` matches the closed forms (E1) / (E2)
//!   within 3 standard errors, for one estimate and for the average of `K`
//!   independent estimates;
//! - `K = 1` Collective is Top-n.
#![allow(clippy::unwrap_used)]

use crate::common::{dist_sq, gaussian, mean_se, tensor};
use lastmile_federated_sharding::strategy::{
    collective_error, expected_error, expected_error_averaged, unbiased_error,
};
use lastmile_federated_sharding::{
    Allocation, FixedSizeDesign, Sampler, SamplingStrategy, SpectralLayer, Strategy,
};
use rand::{SeedableRng, rngs::StdRng};

const ROWS: usize = 32;
const COLS: usize = 24;
const KEEP: usize = 6;
const DRAWS: usize = 10_000;

struct Setup {
    layer: SpectralLayer,
    /// `U diag(σ) Vᵀ` in f64: the matrix the estimators target.
    w: Vec<f64>,
    norm_sq: f64,
}

fn setup(seed: u64) -> Setup {
    let device = lastmile_core::default_device().unwrap();
    let layer =
        SpectralLayer::decompose(tensor(gaussian(ROWS, COLS, seed), ROWS, COLS, &device)).unwrap();
    let w: Vec<f64> = layer.reconstruct().into_iter().map(f64::from).collect();
    let norm_sq = layer.frobenius_sq();
    Setup { layer, w, norm_sq }
}

/// One draw's reconstruction, f64.
fn draw(
    s: &Setup,
    alloc: &Allocation,
    design: &impl FixedSizeDesign,
    rng: &mut StdRng,
) -> Vec<f32> {
    let idx = design.sample(rng);
    assert_eq!(idx.len(), alloc.budget());
    s.layer.shard(&idx, alloc).unwrap().reconstruct_host()
}

/// Relative errors `‖Ŵ_t − W‖²/‖W‖²` of `DRAWS` estimates, each the average
/// of `k` independent draws.
fn relative_errors(
    s: &Setup,
    alloc: &Allocation,
    sampler: Sampler,
    k: usize,
    seed: u64,
) -> Vec<f64> {
    let design = sampler.design(alloc.probabilities()).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    (0..DRAWS)
        .map(|_| {
            let mut avg = vec![0.0f64; ROWS * COLS];
            for _ in 0..k {
                for (a, v) in avg.iter_mut().zip(draw(s, alloc, &design, &mut rng)) {
                    *a += f64::from(v) / k as f64;
                }
            }
            let d: f64 = avg.iter().zip(&s.w).map(|(a, b)| (a - b).powi(2)).sum();
            d / s.norm_sq
        })
        .collect()
}

fn assert_within_3se(label: &str, errs: &[f64], closed: f64) {
    let (mean, se) = mean_se(errs);
    eprintln!("{label}: empirical {mean:.6} ± {se:.6} (SE), closed form {closed:.6}");
    assert!(se > 0.0, "{label}: no variability");
    assert!(
        (mean - closed).abs() <= 3.0 * se,
        "{label}: empirical {mean} vs closed form {closed}: |diff| = {} > 3 SE = {}",
        (mean - closed).abs(),
        3.0 * se
    );
}

/// `‖mean_T − W‖/‖W‖` at T = 10^2, 10^3, 10^4 against `√(V/T)/‖W‖`.
///
/// Tolerances: each ratio observed/predicted in [0.5, 1.6] (the squared
/// error of the mean is a weighted sum of about as many squared Gaussians as
/// there are fractional triplets, ~18 here, so its square root varies by
/// roughly ±20 %; the band is about ±3 of those), and the log-log slope from
/// T = 10^2 to 10^4 in [−0.7, −0.3] around the theoretical −1/2.
#[test]
fn unbiased_mean_converges_like_inverse_sqrt_t() {
    let s = setup(11);
    let alloc = Strategy::Unbiased
        .allocate(s.layer.sigma(), KEEP, 1)
        .unwrap();
    let v = unbiased_error(s.layer.sigma(), alloc.probabilities()).unwrap();
    for (sampler, seed) in [(Sampler::ConditionalPoisson, 1), (Sampler::Systematic, 2)] {
        let design = sampler.design(alloc.probabilities()).unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sum = vec![0.0f64; ROWS * COLS];
        let mut errors = Vec::new();
        for t in 1..=DRAWS {
            for (a, v) in sum.iter_mut().zip(draw(&s, &alloc, &design, &mut rng)) {
                *a += f64::from(v);
            }
            if [100, 1_000, 10_000].contains(&t) {
                let mean: Vec<f32> = sum.iter().map(|x| (x / t as f64) as f32).collect();
                let err = (dist_sq(&mean, &s.w) / s.norm_sq).sqrt();
                let predicted = (v / t as f64 / s.norm_sq).sqrt();
                eprintln!(
                    "{}: T = {t:>5}: ‖mean − W‖/‖W‖ = {err:.5}, predicted √(V/T)/‖W‖ = {predicted:.5}, ratio {:.3}",
                    sampler.name(),
                    err / predicted
                );
                assert!(
                    (0.5..=1.6).contains(&(err / predicted)),
                    "{}: T = {t}: error {err} vs predicted {predicted}",
                    sampler.name()
                );
                errors.push(err);
            }
        }
        let slope = (errors[2] / errors[0]).ln() / 100f64.ln();
        eprintln!("{}: log-log slope {slope:.3} (theory −0.5)", sampler.name());
        assert!((-0.7..=-0.3).contains(&slope), "slope {slope}");
    }
}

/// E1 for one client's estimate: Unbiased (`Σσ²(1/p − 1)`), Collective at
/// K = 4, PriSM-like and both Uniform variants, with both samplers.
#[test]
fn single_estimate_error_matches_closed_forms() {
    let s = setup(12);
    let sigma = s.layer.sigma();
    for (sampler, seed) in [(Sampler::ConditionalPoisson, 10), (Sampler::Systematic, 20)] {
        for (i, strategy) in [
            Strategy::Unbiased,
            Strategy::Collective,
            Strategy::PrismLike,
            Strategy::Uniform,
            Strategy::UniformRescaled,
        ]
        .into_iter()
        .enumerate()
        {
            let alloc = strategy.allocate(sigma, KEEP, 4).unwrap();
            let closed = expected_error(sigma, alloc.probabilities(), alloc.multipliers()).unwrap();
            if strategy == Strategy::Unbiased {
                let specific = unbiased_error(sigma, alloc.probabilities()).unwrap();
                assert!((closed - specific).abs() <= 1e-12 * closed);
            }
            let errs = relative_errors(&s, &alloc, sampler, 1, seed + i as u64);
            assert_within_3se(
                &format!("{} / {} (K = 1 estimate)", sampler.name(), strategy),
                &errs,
                closed / s.norm_sq,
            );
        }
    }
}

/// E2: the server's average of K = 4 independent client estimates, for the
/// Collective strategy (`Σσ²(1 − p)/(1 + (K − 1)p)`) and the Unbiased one
/// (`Σσ²(1/p − 1)/K`), with both samplers.
#[test]
fn k_average_error_matches_closed_forms() {
    const K: usize = 4;
    let s = setup(13);
    let sigma = s.layer.sigma();
    for (sampler, seed) in [(Sampler::ConditionalPoisson, 30), (Sampler::Systematic, 40)] {
        let alloc = Strategy::Collective.allocate(sigma, KEEP, K).unwrap();
        let closed = collective_error(sigma, alloc.probabilities(), K).unwrap();
        let general =
            expected_error_averaged(sigma, alloc.probabilities(), alloc.multipliers(), K).unwrap();
        assert!(
            (closed - general).abs() <= 1e-9 * closed,
            "{closed} vs {general}"
        );
        let errs = relative_errors(&s, &alloc, sampler, K, seed);
        assert_within_3se(
            &format!("{} / collective (average of K = {K})", sampler.name()),
            &errs,
            closed / s.norm_sq,
        );

        let alloc = Strategy::Unbiased.allocate(sigma, KEEP, K).unwrap();
        let closed = unbiased_error(sigma, alloc.probabilities()).unwrap() / K as f64;
        let errs = relative_errors(&s, &alloc, sampler, K, seed + 1);
        assert_within_3se(
            &format!("{} / unbiased (average of K = {K})", sampler.name()),
            &errs,
            closed / s.norm_sq,
        );
    }
}

/// The Collective strategy beats Unbiased for the K-average and Top-n for
/// K ≥ 2 (it minimises E2), and with K = 1 it is Top-n exactly.
#[test]
fn collective_is_optimal_for_the_average_and_top_n_for_one_client() {
    let s = setup(14);
    let sigma = s.layer.sigma();
    let top = Strategy::TopN.allocate(sigma, KEEP, 1).unwrap();
    let top_err: f64 = sigma[KEEP..].iter().map(|x| x * x).sum();
    assert_eq!(Strategy::Collective.allocate(sigma, KEEP, 1).unwrap(), top);
    assert!(top.is_deterministic());
    for k in [2, 4, 10, 100] {
        let c = Strategy::Collective.allocate(sigma, KEEP, k).unwrap();
        let u = Strategy::Unbiased.allocate(sigma, KEEP, k).unwrap();
        let ce = c.expected_error_averaged(sigma, k).unwrap();
        assert!(ce <= u.expected_error_averaged(sigma, k).unwrap() + 1e-12);
        assert!(ce <= top.expected_error_averaged(sigma, k).unwrap() + 1e-12);
    }
    // K = 1: every draw of either sampler is the top-n set, error Σ_{i>n} σ²
    for sampler in Sampler::ALL {
        let design = sampler.design(top.probabilities()).unwrap();
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..100 {
            let idx = design.sample(&mut rng);
            assert_eq!(idx, (0..KEEP).collect::<Vec<_>>());
            let rec = s.layer.shard(&idx, &top).unwrap().reconstruct_host();
            let err = dist_sq(&rec, &s.w);
            assert!(
                (err - top_err).abs() <= 1e-5 * s.norm_sq,
                "{err} vs {top_err}"
            );
        }
    }
}
