//! Integration tests: transform.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use lastmile_adapters::{AdapterError, SpectralTransform};

const SIZES: [usize; 8] = [1, 2, 3, 7, 8, 31, 64, 100];
const KINDS: [SpectralTransform; 3] = [
    SpectralTransform::Identity,
    SpectralTransform::Dct,
    SpectralTransform::Rfft,
];

/// Naive DFT-based reference for the packed real DFT and the DCT-II sum.
fn naive(kind: SpectralTransform, x: &[f32]) -> Vec<f64> {
    use std::f64::consts::PI;
    let n = x.len();
    let nf = n as f64;
    let xs: Vec<f64> = x.iter().map(|v| f64::from(*v)).collect();
    match kind {
        SpectralTransform::Dct => (0..n)
            .map(|k| {
                let c = if k == 0 {
                    (1.0 / nf).sqrt()
                } else {
                    (2.0 / nf).sqrt()
                };
                c * (0..n)
                    .map(|j| xs[j] * (PI * (j as f64 + 0.5) * k as f64 / nf).cos())
                    .sum::<f64>()
            })
            .collect(),
        SpectralTransform::Rfft => {
            let re = |k: usize| {
                (0..n)
                    .map(|j| xs[j] * (2.0 * PI * (j * k) as f64 / nf).cos())
                    .sum::<f64>()
            };
            let im = |k: usize| {
                -(0..n)
                    .map(|j| xs[j] * (2.0 * PI * (j * k) as f64 / nf).sin())
                    .sum::<f64>()
            };
            let mut out = vec![re(0) / nf.sqrt()];
            for k in 1..n.div_ceil(2) {
                out.push(2f64.sqrt() * re(k) / nf.sqrt());
                out.push(2f64.sqrt() * im(k) / nf.sqrt());
            }
            if n.is_multiple_of(2) && n > 1 {
                out.push(re(n / 2) / nf.sqrt());
            }
            out
        }
        _ => xs,
    }
}

fn signal(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (i as f32 * 0.37 + seed as f32).sin() * 2.0 + (i % 5) as f32 * 0.1)
        .collect()
}

#[test]
fn matrices_are_orthonormal_and_match_naive_reference() {
    for kind in KINDS {
        for n in SIZES {
            let t = kind.matrix(n).unwrap();
            let ttt = matmul(&t, &transpose(&t, n, n), n, n, n);
            for i in 0..n {
                for j in 0..n {
                    let e = if i == j { 1.0 } else { 0.0 };
                    assert!(
                        (ttt[i * n + j] - e).abs() < 1e-5,
                        "{kind:?} n={n} ({i},{j}) = {}",
                        ttt[i * n + j]
                    );
                }
            }
            let x = signal(n, 1);
            let tx = matmul(&t, &x, n, n, 1);
            let reference = naive(kind, &x);
            for (a, b) in tx.iter().zip(&reference) {
                assert!(
                    (a - b).abs() < 1e-5 * (1.0 + b.abs()),
                    "{kind:?} n={n}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn fft_plans_match_matrix_and_round_trip() {
    for kind in KINDS {
        for n in SIZES {
            let mut plan = kind.plan(n).unwrap();
            let batch = 3;
            let x: Vec<f32> = (0..batch).flat_map(|b| signal(n, b as u32)).collect();
            let mut y = x.clone();
            plan.forward(&mut y).unwrap();
            for b in 0..batch {
                let reference = naive(kind, &x[b * n..(b + 1) * n]);
                for (a, r) in y[b * n..(b + 1) * n].iter().zip(&reference) {
                    assert!(
                        (f64::from(*a) - r).abs() < 2e-5 * (1.0 + r.abs()),
                        "{kind:?} n={n}: {a} vs {r}"
                    );
                }
            }
            plan.inverse(&mut y).unwrap();
            let err = max_abs_diff(&x, &y);
            assert!(err < 1e-5, "{kind:?} n={n}: round trip error {err}");
        }
    }
}

#[test]
fn bad_sizes_are_errors() {
    assert_err!(
        SpectralTransform::Dct.matrix(0),
        AdapterError::InvalidConfig { .. }
    );
    assert_err!(
        SpectralTransform::Dct.plan(1 << 20),
        AdapterError::InvalidConfig { .. }
    );
    let mut plan = SpectralTransform::Rfft.plan(4).unwrap();
    assert_err!(plan.forward(&mut [0.0; 7]), AdapterError::Shape { .. });
}
