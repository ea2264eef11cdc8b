//! Fixed-size samplers: exact sizes, marginals, the conditional Poisson
//! design itself, and input errors.
#![allow(clippy::unwrap_used)]

use lastmile_core::CoreError;
use lastmile_core::stats::chi_square_gof;
use lastmile_federated_sharding::strategy::SamplingStrategy;
use lastmile_federated_sharding::{
    ConditionalPoisson, FixedSizeDesign, Sampler, ShardingError, Strategy, Systematic,
};
use rand::{SeedableRng, rngs::StdRng};

const DRAWS: usize = 20_000;

/// Marginal vectors with certain, fractional and impossible entries.
fn cases() -> Vec<Vec<f64>> {
    let decaying: Vec<f64> = (0..24).map(|i| 3.0 * 0.8f64.powi(i)).collect();
    let mut with_zeros = decaying.clone();
    for s in &mut with_zeros[18..] {
        *s = 0.0;
    }
    let flat = vec![1.0; 12];
    vec![
        vec![1.0, 0.9, 0.55, 0.3, 0.15, 0.1, 0.0, 0.0],
        Strategy::Unbiased
            .allocate(&decaying, 6, 1)
            .unwrap()
            .probabilities()
            .to_vec(),
        Strategy::Collective
            .allocate(&decaying, 6, 4)
            .unwrap()
            .probabilities()
            .to_vec(),
        Strategy::Unbiased
            .allocate(&with_zeros, 12, 1)
            .unwrap()
            .probabilities()
            .to_vec(),
        Strategy::Unbiased
            .allocate(&with_zeros, 20, 1)
            .unwrap()
            .probabilities()
            .to_vec(),
        Strategy::Uniform
            .allocate(&flat, 5, 1)
            .unwrap()
            .probabilities()
            .to_vec(),
    ]
}

/// Every sample has exactly `n` distinct ascending indices, takes every
/// `p = 1` entry and no `p = 0` entry; the inclusion frequencies over 2·10^4
/// draws match `p` within 4 binomial standard deviations `4·√(p(1−p)/T)`
/// per entry (≈ 6·10⁻⁵ two-sided per entry, so ≈ 0.5 % over the ≈ 80
/// fractional entries tested per sampler).
#[test]
fn sizes_and_marginals_are_exact() {
    for sampler in Sampler::ALL {
        for (c, p) in cases().into_iter().enumerate() {
            let n = p.iter().sum::<f64>().round() as usize;
            let design = sampler.design(&p).unwrap();
            assert_eq!(design.size(), n);
            assert_eq!(design.probabilities(), p.as_slice());
            let mut rng = StdRng::seed_from_u64(100 + c as u64);
            let mut counts = vec![0u64; p.len()];
            for _ in 0..DRAWS {
                let s = design.sample(&mut rng);
                assert_eq!(s.len(), n, "{} case {c}", sampler.name());
                assert!(s.windows(2).all(|w| w[0] < w[1]), "not ascending: {s:?}");
                for &i in &s {
                    counts[i] += 1;
                }
            }
            for (i, (&k, &pi)) in counts.iter().zip(&p).enumerate() {
                let freq = k as f64 / DRAWS as f64;
                if pi >= 1.0 - 1e-12 || pi <= 1e-12 {
                    assert_eq!(freq, pi.round(), "{} case {c} entry {i}", sampler.name());
                    continue;
                }
                let tol = 4.0 * (pi * (1.0 - pi) / DRAWS as f64).sqrt();
                assert!(
                    (freq - pi).abs() <= tol,
                    "{} case {c} entry {i}: frequency {freq} vs p = {pi} (tolerance {tol})",
                    sampler.name()
                );
            }
        }
    }
}

/// All subsets of size `m` with their probabilities under `P(S) ∝ Π w_i`.
fn cp_subsets(w: &[f64], m: usize) -> (Vec<u32>, Vec<f64>) {
    let mut masks = Vec::new();
    let mut probs = Vec::new();
    for mask in 0u32..(1 << w.len()) {
        if mask.count_ones() as usize == m {
            masks.push(mask);
            probs.push(
                (0..w.len())
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| w[i])
                    .product(),
            );
        }
    }
    let total: f64 = probs.iter().sum();
    (masks, probs.into_iter().map(|p| p / total).collect())
}

/// The fitted working probabilities reproduce `p` exactly (by enumeration of
/// all subsets), and the sequential method draws subsets with the conditional
/// Poisson probabilities `P(S) ∝ Π_{i∈S} w_i` (chi-square goodness of fit over
/// the 15 subsets, 2·10^4 draws, p-value > 10⁻³).
#[test]
fn conditional_poisson_is_the_conditional_poisson_design() {
    let p = [0.9, 0.7, 0.5, 0.4, 0.3, 0.2];
    let d = ConditionalPoisson::new(&p).unwrap();
    assert!(d.max_marginal_error() <= 1e-10);
    let q = d.working_probabilities();
    let w: Vec<f64> = q.iter().map(|q| q / (1.0 - q)).collect();
    let (masks, probs) = cp_subsets(&w, 3);
    for (i, &pi) in p.iter().enumerate() {
        let marginal: f64 = masks
            .iter()
            .zip(&probs)
            .filter(|(m, _)| *m & (1 << i) != 0)
            .map(|(_, p)| p)
            .sum();
        assert!(
            (marginal - pi).abs() < 1e-9,
            "entry {i}: {marginal} vs {pi}"
        );
    }
    let mut rng = StdRng::seed_from_u64(9);
    let mut counts = vec![0u64; masks.len()];
    for _ in 0..DRAWS {
        let mask = d.sample(&mut rng).iter().fold(0u32, |m, &i| m | (1 << i));
        let k = masks.iter().position(|&m| m == mask).unwrap();
        counts[k] += 1;
    }
    let test = chi_square_gof(&counts, &probs).unwrap();
    assert!(test.p_value > 1e-3, "chi-square p-value {}", test.p_value);
}

/// Large designs fit quickly and stay exact (r = 512, n = 128).
#[test]
fn conditional_poisson_fits_large_designs() {
    let sigma: Vec<f64> = (0..512).map(|i| 1.0 / (1.0 + i as f64).powf(0.7)).collect();
    let alloc = Strategy::Unbiased.allocate(&sigma, 128, 1).unwrap();
    let d = ConditionalPoisson::new(alloc.probabilities()).unwrap();
    assert!(d.max_marginal_error() <= 1e-10);
    eprintln!("r = 512, n = 128: {} fit iterations", d.iterations());
    assert!(d.iterations() < 200, "{} iterations", d.iterations());
    let s = d.sample(&mut StdRng::seed_from_u64(0));
    assert_eq!(s.len(), 128);
}

#[test]
fn same_seed_same_sample() {
    let p = cases().remove(1);
    for sampler in Sampler::ALL {
        let d = sampler.design(&p).unwrap();
        let a = d.sample(&mut StdRng::seed_from_u64(3));
        let b = d.sample(&mut StdRng::seed_from_u64(3));
        assert_eq!(a, b);
    }
}

#[test]
fn bad_marginals_are_typed_errors() {
    for sampler in Sampler::ALL {
        let r = sampler.design(&[0.5, 1.5]);
        assert!(
            matches!(&r, Err(ShardingError::Core(CoreError::OutOfRange { name, .. })) if name == "p[1]"),
            "{r:?}"
        );
        let r = sampler.design(&[0.5, f64::NAN, 0.5]);
        assert!(
            matches!(&r, Err(ShardingError::Core(CoreError::OutOfRange { name, .. })) if name == "p[1]"),
            "{r:?}"
        );
        let r = sampler.design(&[-0.1, 0.6, 0.5]);
        assert!(
            matches!(r, Err(ShardingError::Core(CoreError::OutOfRange { .. }))),
            "{r:?}"
        );
        let r = sampler.design(&[0.5, 0.6]);
        assert!(
            matches!(r, Err(ShardingError::NotFixedSize { .. })),
            "{r:?}"
        );
        let r = sampler.design(&[]);
        assert!(
            matches!(r, Err(ShardingError::Core(CoreError::Empty { .. }))),
            "{r:?}"
        );
    }
    assert!(matches!(
        Systematic::new(&[0.3, 0.3]),
        Err(ShardingError::NotFixedSize { .. })
    ));
}
