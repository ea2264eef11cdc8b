//! Helpers shared by the integration tests: simple models, synthetic data and
//! the one-sided z-tests used for coverage.
#![allow(dead_code, clippy::unwrap_used)]

use lastmile_core::stats::normal_cdf;
use rand::{Rng, RngExt, seq::SliceRandom};

/// Standard normal draw (Box–Muller).
pub fn normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Inverse of the standard normal CDF by bisection on `normal_cdf`.
pub fn normal_quantile(p: f64) -> f64 {
    let (mut lo, mut hi) = (-40.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if normal_cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Softmax of f64 logits into a probability row.
pub fn softmax(logits: &[f64]) -> Vec<f64> {
    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Nearest-centroid "Gaussian" classifier fitted on all rows: standardised
/// features, `p(c|x) ∝ exp(−‖x − μ_c‖² / (2·temperature·d))`. A fixed model
/// makes the scores of all points fixed numbers, so any random
/// calibration/test split is exchangeable and the coverage guarantee applies.
pub fn centroid_probabilities(
    features: &[f32],
    d: usize,
    labels: &[usize],
    k: usize,
    temperature: f64,
) -> Vec<f32> {
    let n = labels.len();
    let mut mean = vec![0.0f64; d];
    let mut sq = vec![0.0f64; d];
    for row in features.chunks(d) {
        for j in 0..d {
            mean[j] += row[j] as f64;
            sq[j] += (row[j] as f64).powi(2);
        }
    }
    let scale: Vec<f64> = (0..d)
        .map(|j| {
            let m = mean[j] / n as f64;
            let v = sq[j] / n as f64 - m * m;
            if v > 1e-12 { v.sqrt() } else { 1.0 }
        })
        .collect();
    let mean: Vec<f64> = mean.iter().map(|m| m / n as f64).collect();
    let z: Vec<f64> = features
        .chunks(d)
        .flat_map(|row| {
            (0..d)
                .map(|j| (row[j] as f64 - mean[j]) / scale[j])
                .collect::<Vec<_>>()
        })
        .collect();
    let mut centroids = vec![0.0f64; k * d];
    let mut counts = vec![0usize; k];
    for (i, &y) in labels.iter().enumerate() {
        counts[y] += 1;
        for j in 0..d {
            centroids[y * d + j] += z[i * d + j];
        }
    }
    for c in 0..k {
        for j in 0..d {
            centroids[c * d + j] /= counts[c].max(1) as f64;
        }
    }
    let mut out = Vec::with_capacity(n * k);
    for i in 0..n {
        let logits: Vec<f64> = (0..k)
            .map(|c| {
                let dist: f64 = (0..d)
                    .map(|j| (z[i * d + j] - centroids[c * d + j]).powi(2))
                    .sum();
                -dist / (2.0 * temperature * d as f64)
            })
            .collect();
        out.extend(softmax(&logits).into_iter().map(|p| p as f32));
    }
    out
}

/// Synthetic classification data with known `P(Y|X)`: `n` rows over `k`
/// classes; returns (true probabilities, model probabilities, labels).
/// Labels are drawn from the true probabilities; the model is a tempered,
/// noisy version of the truth (so it is imperfect but informative).
pub fn synthetic<R: Rng + ?Sized>(
    n: usize,
    k: usize,
    rng: &mut R,
) -> (Vec<f64>, Vec<f32>, Vec<usize>) {
    let mut truth = Vec::with_capacity(n * k);
    let mut model = Vec::with_capacity(n * k);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let logits: Vec<f64> = (0..k).map(|_| 1.5 * normal(rng)).collect();
        let p = softmax(&logits);
        let u: f64 = rng.random();
        let mut acc = 0.0;
        let mut y = k - 1;
        for (j, &pj) in p.iter().enumerate() {
            acc += pj;
            if u < acc {
                y = j;
                break;
            }
        }
        let noisy: Vec<f64> = logits.iter().map(|l| 0.8 * l + 0.5 * normal(rng)).collect();
        model.extend(softmax(&noisy).into_iter().map(|v| v as f32));
        truth.extend(p);
        labels.push(y);
    }
    (truth, model, labels)
}

/// A random split of `0..n` into (calibration of size `n_cal`, test = rest).
pub fn resplit<R: Rng + ?Sized>(n: usize, n_cal: usize, rng: &mut R) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(rng);
    let test = idx.split_off(n_cal);
    (idx, test)
}

/// Gathers rows of a row-major matrix.
pub fn gather_rows<T: Copy>(data: &[T], width: usize, rows: &[usize]) -> Vec<T> {
    rows.iter()
        .flat_map(|&r| data[r * width..(r + 1) * width].iter().copied())
        .collect()
}

/// Mean and standard error of the mean.
pub fn mean_se(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// One-sided z statistics of a mean against the conformal interval
/// `[lower, upper]`; returns `(z_below, z_above)`, where large positive values
/// are evidence of under-coverage (`z_below`) or over-coverage (`z_above`).
/// A zero standard error (e.g. `q̂ = +∞` on every split) compares exactly.
pub fn z_scores(mean: f64, se: f64, lower: f64, upper: f64) -> (f64, f64) {
    if se == 0.0 {
        let below = if mean < lower - 1e-12 {
            f64::INFINITY
        } else {
            0.0
        };
        let above = if mean > upper + 1e-12 {
            f64::INFINITY
        } else {
            0.0
        };
        return (below, above);
    }
    ((lower - mean) / se, (mean - upper) / se)
}
