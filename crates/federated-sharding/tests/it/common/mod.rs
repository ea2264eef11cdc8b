//! Helpers shared by the integration tests: seeded host matrices and the
//! reference quantities the Monte Carlo tests compare against.
#![allow(dead_code, clippy::unwrap_used)]

use burn::tensor::{Device, Tensor};
use lastmile_core::convert::{tensor_from_vec, tensor_to_vec};
use lastmile_core::linalg::qr;
use rand::{Rng, RngExt, SeedableRng, rngs::StdRng};

/// Standard normal draw (Box–Muller).
pub fn normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// `rows × cols` matrix of i.i.d. N(0, 1/cols) entries (a freshly
/// initialised layer), row-major.
pub fn gaussian(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let scale = 1.0 / (cols as f64).sqrt();
    (0..rows * cols)
        .map(|_| (normal(&mut rng) * scale) as f32)
        .collect()
}

/// `Q` with orthonormal columns, `[rows, k]`, from the QR of a Gaussian matrix.
fn orthonormal(rows: usize, k: usize, seed: u64, device: &Device) -> Vec<f32> {
    let g = tensor_from_vec(gaussian(rows, k, seed), [rows, k], device).unwrap();
    tensor_to_vec(qr(g).unwrap().q).unwrap()
}

/// A "trained-like" matrix `U diag(σ) Vᵀ` with a decaying spectrum
/// `σ_i = 3 · 0.8^i`, row-major.
pub fn decaying(rows: usize, cols: usize, seed: u64, device: &Device) -> Vec<f32> {
    let k = rows.min(cols);
    let u = orthonormal(rows, k, seed, device);
    let v = orthonormal(cols, k, seed + 1, device);
    let sigma: Vec<f64> = (0..k).map(|i| 3.0 * 0.8f64.powi(i as i32)).collect();
    let mut out = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let mut acc = 0.0f64;
            for i in 0..k {
                acc += f64::from(u[r * k + i]) * sigma[i] * f64::from(v[c * k + i]);
            }
            out[r * cols + c] = acc as f32;
        }
    }
    out
}

pub fn tensor(data: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    tensor_from_vec(data, [rows, cols], device).unwrap()
}

/// `‖a − b‖²` in f64.
pub fn dist_sq(a: &[f32], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - y).powi(2))
        .sum()
}

/// Mean and standard error of a sample.
pub fn mean_se(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// Relative Frobenius error of `a` against `b`.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    lastmile_core::testing::relative_error(a, b)
}
