//! Non-IID partition of a labelled dataset across federated clients with
//! Dirichlet(α) class proportions, and the Gamma/Dirichlet samplers it needs.

use std::f64::consts::PI;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngExt, SeedableRng};

use lastmile_core::validate::{check_at_least, check_indices, check_positive};

use crate::error::Result;
use crate::split::indices_by_class;

/// Partitions sample indices across `n_clients` clients with label skew
/// drawn from a symmetric Dirichlet(α) distribution.
///
/// For each class, proportions `p ~ Dirichlet(α, …, α)` over the clients are
/// drawn, the class's indices are shuffled, and client `k` receives the slice
/// between the rounded cumulative proportions `round(n_c·(p_1+…+p_{k-1}))` and
/// `round(n_c·(p_1+…+p_k))`. This is the standard label-skew benchmark of
/// federated learning (Hsu, Qi & Brown 2019, "Measuring the effects of
/// non-identical data distribution for federated visual classification",
/// arXiv:1909.06335). Small α (e.g. 0.1) gives clients dominated by few
/// classes; large α (e.g. 100) approaches an IID split.
///
/// Every index is assigned to exactly one client. Some clients can receive no
/// samples at all when α is small. Each client's indices are returned in
/// ascending order. The same `seed` always gives the same partition.
///
/// # Arguments
/// * `labels` - the class of each sample.
/// * `n_classes` - number of classes (every label must be smaller).
/// * `n_clients` - number of clients (`>= 1`).
/// * `alpha` - Dirichlet concentration (finite, `> 0`).
/// * `seed` - seed of the random generator.
///
/// # Returns
/// `n_clients` lists of sample indices.
///
/// # Errors
/// Through [`DatasetError::Core`](crate::DatasetError::Core):
/// * [`CoreError::OutOfRange`](lastmile_core::CoreError::OutOfRange) if
///   `n_clients == 0`, `n_classes == 0` or `alpha` is not a finite positive
///   number.
/// * [`CoreError::IndexOutOfRange`](lastmile_core::CoreError::IndexOutOfRange)
///   if a label is `>= n_classes`.
///
/// # Examples
/// ```
/// use lastmile_datasets::dirichlet_partition;
/// let ds = lastmile_datasets::digits()?;
/// let labels = ds.labels().expect("digits has labels");
/// let clients = dirichlet_partition(labels, 10, 8, 0.5, 42)?;
/// assert_eq!(clients.len(), 8);
/// assert_eq!(clients.iter().map(Vec::len).sum::<usize>(), ds.n_samples());
/// let first_client = ds.subset(&clients[0])?;
/// # Ok::<(), lastmile_datasets::DatasetError>(())
/// ```
pub fn dirichlet_partition(
    labels: &[usize],
    n_classes: usize,
    n_clients: usize,
    alpha: f64,
    seed: u64,
) -> Result<Vec<Vec<usize>>> {
    check_at_least("n_clients", n_clients, 1)?;
    check_at_least("n_classes", n_classes, 1)?;
    check_positive("alpha", alpha)?;
    check_indices("labels", labels, n_classes)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut clients = vec![Vec::new(); n_clients];
    for mut members in indices_by_class(labels, n_classes) {
        members.shuffle(&mut rng);
        let proportions = sample_dirichlet(&mut rng, alpha, n_clients);
        let n = members.len() as f64;
        let mut start = 0;
        let mut cumulative = 0.0;
        for (k, (client, p)) in clients.iter_mut().zip(&proportions).enumerate() {
            cumulative += p;
            let end = if k + 1 == n_clients {
                members.len()
            } else {
                ((cumulative * n).round() as usize).clamp(start, members.len())
            };
            client.extend_from_slice(&members[start..end]);
            start = end;
        }
    }
    for client in &mut clients {
        client.sort_unstable();
    }
    Ok(clients)
}

/// A uniform draw from the open interval (0, 1].
fn open_unit<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    1.0 - rng.random::<f64>()
}

/// A standard normal draw (Box–Muller transform).
fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let radius = (-2.0 * open_unit(rng).ln()).sqrt();
    radius * (2.0 * PI * rng.random::<f64>()).cos()
}

/// The natural logarithm of a Gamma(shape, 1) draw, `shape > 0`.
///
/// Marsaglia & Tsang (2000), "A simple method for generating gamma
/// variables", ACM TOMS 26(3): for `shape >= 1`, with `d = shape − 1/3` and
/// `c = 1/√(9d)`, draw `x ~ N(0,1)`, `v = (1 + c·x)³` and accept `d·v` when
/// `v > 0` and `ln u < x²/2 + d − d·v + d·ln v` for `u ~ U(0,1)`.
/// For `shape < 1` it uses `Gamma(a) = Gamma(a + 1) · U^(1/a)` (their §6),
/// in log space so that very small shapes do not underflow to 0.
pub(crate) fn ln_gamma_sample<R: Rng + ?Sized>(rng: &mut R, shape: f64) -> f64 {
    if shape < 1.0 {
        return ln_gamma_sample(rng, shape + 1.0) + open_unit(rng).ln() / shape;
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = standard_normal(rng);
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u = open_unit(rng);
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d.ln() + v.ln();
        }
    }
}

/// A draw from the symmetric Dirichlet(α, …, α) over `k` categories:
/// normalised independent Gamma(α, 1) variates (computed from their
/// logarithms to stay exact for tiny α).
pub(crate) fn sample_dirichlet<R: Rng + ?Sized>(rng: &mut R, alpha: f64, k: usize) -> Vec<f64> {
    let logs: Vec<f64> = (0..k).map(|_| ln_gamma_sample(rng, alpha)).collect();
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logs.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    weights.iter().map(|w| w / total).collect()
}

#[cfg(test)]
mod tests {
    use lastmile_core::CoreError;

    use super::*;
    use crate::DatasetError;

    fn mean_var(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var)
    }

    #[test]
    fn gamma_moments_match_shape() {
        // Gamma(a, 1) has mean a and variance a.
        let mut rng = StdRng::seed_from_u64(7);
        for shape in [0.1, 0.5, 1.0, 2.5, 10.0] {
            let xs: Vec<f64> = (0..100_000)
                .map(|_| ln_gamma_sample(&mut rng, shape).exp())
                .collect();
            let (mean, var) = mean_var(&xs);
            // Standard errors: sqrt(a / n) for the mean and, from the fourth
            // central moment 3a² + 6a, sqrt((2a² + 6a) / n) for the variance.
            let n = xs.len() as f64;
            let se_mean = (shape / n).sqrt();
            let se_var = ((2.0 * shape * shape + 6.0 * shape) / n).sqrt();
            assert!(
                (mean - shape).abs() < 5.0 * se_mean,
                "a={shape} mean={mean}"
            );
            assert!((var - shape).abs() < 5.0 * se_var, "a={shape} var={var}");
        }
    }

    #[test]
    fn normal_moments() {
        let mut rng = StdRng::seed_from_u64(3);
        let xs: Vec<f64> = (0..100_000).map(|_| standard_normal(&mut rng)).collect();
        let (mean, var) = mean_var(&xs);
        assert!(
            mean.abs() < 0.015 && (var - 1.0).abs() < 0.02,
            "{mean} {var}"
        );
    }

    #[test]
    fn dirichlet_is_a_distribution_with_right_mean() {
        let mut rng = StdRng::seed_from_u64(11);
        let k = 4;
        let mut first = Vec::new();
        for alpha in [0.001, 0.3, 5.0] {
            for _ in 0..20_000 {
                let p = sample_dirichlet(&mut rng, alpha, k);
                assert!(p.iter().all(|x| x.is_finite() && *x >= 0.0));
                assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
                first.push(p[0]);
            }
            // Each component has mean 1/k and variance (1/k)(1 − 1/k)/(kα + 1).
            let (mean, var) = mean_var(&first);
            let expected_var = 0.25 * 0.75 / (k as f64 * alpha + 1.0);
            assert!((mean - 0.25).abs() < 0.015, "alpha={alpha} mean={mean}");
            assert!(
                (var - expected_var).abs() < 0.08 * expected_var,
                "alpha={alpha} var={var} expected {expected_var}"
            );
            first.clear();
        }
    }

    /// The parameter named by the `OutOfRange` error of `r`.
    fn out_of_range_name(r: Result<Vec<Vec<usize>>>) -> String {
        match r {
            Err(DatasetError::Core(CoreError::OutOfRange { name, .. })) => name,
            other => panic!("expected OutOfRange, got {other:?}"),
        }
    }

    #[test]
    fn parameter_errors() {
        let labels = [0, 1, 2];
        for (n_clients, alpha, name) in [
            (0, 1.0, "n_clients"),
            (2, 0.0, "alpha"),
            (2, -1.0, "alpha"),
            (2, f64::NAN, "alpha"),
            (2, f64::INFINITY, "alpha"),
        ] {
            let r = dirichlet_partition(&labels, 3, n_clients, alpha, 0);
            assert_eq!(
                out_of_range_name(r),
                name,
                "n_clients={n_clients} alpha={alpha}"
            );
        }
        let r = dirichlet_partition(&labels, 0, 2, 1.0, 0);
        assert_eq!(out_of_range_name(r), "n_classes");
        let err = dirichlet_partition(&labels, 2, 2, 1.0, 0).expect_err("label 2 of 2 classes");
        assert!(matches!(
            err,
            DatasetError::Core(CoreError::IndexOutOfRange {
                index: 2,
                bound: 2,
                ..
            })
        ));
        assert_eq!(
            err.to_string(),
            "labels[2]: index 2 is out of range; expected an index < 2"
        );
    }

    #[test]
    fn single_client_gets_everything() {
        let labels = [0, 1, 1, 0, 2];
        let clients = dirichlet_partition(&labels, 3, 1, 0.1, 5).expect("valid");
        assert_eq!(clients, vec![vec![0, 1, 2, 3, 4]]);
    }
}
