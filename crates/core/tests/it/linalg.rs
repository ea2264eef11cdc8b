//! SVD and QR: reconstruction, orthogonality, ordering, rank deficiency.
#![allow(clippy::unwrap_used)]

use burn::tensor::{Device, Tensor, TensorData};
use lastmile_core::backend_test;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::linalg::{qr, svd};
use lastmile_core::testing::relative_error;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn random_matrix(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..rows * cols)
        .map(|_| rng.random::<f32>() * 2.0 - 1.0)
        .collect()
}

/// A = Q1 diag(s) Q2ᵀ with singular values spanning `cond` orders of magnitude,
/// built in f64 from Gram–Schmidt on random vectors (naive reference).
fn ill_conditioned(n: usize, decades: f64, seed: u64) -> (Vec<f32>, Vec<f64>) {
    fn orthonormal(n: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut basis: Vec<Vec<f64>> = Vec::new();
        while basis.len() < n {
            let mut v: Vec<f64> = (0..n).map(|_| rng.random::<f64>() - 0.5).collect();
            for b in &basis {
                let d: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
                v.iter_mut().zip(b).for_each(|(x, y)| *x -= d * y);
            }
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm > 1e-8 {
                basis.push(v.iter().map(|x| x / norm).collect());
            }
        }
        basis
    }
    let (q1, q2) = (orthonormal(n, seed), orthonormal(n, seed + 1));
    let s: Vec<f64> = (0..n)
        .map(|i| 10f64.powf(-decades * i as f64 / (n - 1) as f64))
        .collect();
    let mut a = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            a[i * n + j] = (0..n).map(|k| q1[k][i] * s[k] * q2[k][j]).sum::<f64>() as f32;
        }
    }
    (a, s)
}

fn tensor(data: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(data, [rows, cols]), device)
}

fn orthonormality_error(m: Tensor<2>, columns: bool) -> f32 {
    let gram = if columns {
        m.clone().transpose().matmul(m)
    } else {
        m.clone().matmul(m.transpose())
    };
    let k = gram.dims()[0];
    let eye = Tensor::<2>::eye(k, &gram.device());
    (gram - eye).abs().max().into_scalar::<f32>()
}

fn check_svd(a: &[f32], rows: usize, cols: usize, device: &Device) {
    let d = svd(tensor(a.to_vec(), rows, cols, device)).unwrap();
    let k = rows.min(cols);
    assert_eq!(d.u.dims(), [rows, k]);
    assert_eq!(d.s.dims(), [k]);
    assert_eq!(d.vt.dims(), [k, cols]);
    let recon = tensor_to_vec(d.reconstruct(None).unwrap()).unwrap();
    let err = relative_error(&recon, a);
    assert!(
        err <= 1e-4,
        "{rows}x{cols}: relative reconstruction error {err}"
    );
    let s = tensor_to_vec(d.s.clone()).unwrap();
    assert!(
        s.windows(2).all(|w| w[0] >= w[1]),
        "singular values not sorted: {s:?}"
    );
    assert!(s.iter().all(|&x| x >= 0.0));
    assert!(orthonormality_error(d.u, true) < 1e-4);
    assert!(orthonormality_error(d.vt, false) < 1e-4);
}

backend_test!(svd_reconstructs_random_matrices, |device| {
    for (r, c, seed) in [
        (1, 1, 1),
        (5, 3, 2),
        (3, 5, 3),
        (64, 64, 4),
        (100, 37, 5),
        (37, 100, 6),
    ] {
        check_svd(&random_matrix(r, c, seed), r, c, device);
    }
});

backend_test!(svd_handles_ill_conditioned_and_rank_deficient, |device| {
    let n = 48;
    let (a, s_true) = ill_conditioned(n, 6.0, 7);
    check_svd(&a, n, n, device);
    // leading singular values agree with the construction
    let s = tensor_to_vec(svd(tensor(a, n, n, device)).unwrap().s).unwrap();
    for i in 0..8 {
        assert!(
            (s[i] as f64 - s_true[i]).abs() < 1e-4 * s_true[0],
            "σ{i}: {} vs {}",
            s[i],
            s_true[i]
        );
    }
    // rank 3: outer products of random vectors
    let (m, n, r) = (40, 30, 3);
    let u = random_matrix(m, r, 8);
    let v = random_matrix(r, n, 9);
    let mut a = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            a[i * n + j] = (0..r).map(|k| u[i * r + k] * v[k * n + j]).sum();
        }
    }
    check_svd(&a, m, n, device);
    let s = tensor_to_vec(svd(tensor(a.clone(), m, n, device)).unwrap().s).unwrap();
    assert!(
        s[r - 1] > 1e-2 && s[r] < 1e-4 * s[0],
        "rank not revealed: {s:?}"
    );
    // zero matrix
    check_svd(&[0.0; 12], 3, 4, device);
});

backend_test!(qr_reconstructs_and_is_triangular, |device| {
    for (r, c, seed) in [(6, 4, 1), (4, 6, 2), (50, 50, 3)] {
        let a = random_matrix(r, c, seed);
        let d = qr(tensor(a.clone(), r, c, device)).unwrap();
        let k = r.min(c);
        assert_eq!(d.q.dims(), [r, k]);
        assert_eq!(d.r.dims(), [k, c]);
        assert!(orthonormality_error(d.q.clone(), true) < 1e-4);
        let rr = tensor_to_vec(d.r.clone()).unwrap();
        for i in 0..k {
            for j in 0..i.min(c) {
                assert!(rr[i * c + j].abs() < 1e-6, "R[{i},{j}] = {}", rr[i * c + j]);
            }
        }
        let recon = tensor_to_vec(d.q.matmul(d.r)).unwrap();
        assert!(relative_error(&recon, &a) < 1e-5);
    }
});

backend_test!(linalg_rejects_bad_input, |device| {
    assert!(svd(tensor(vec![1.0, f32::NAN, 0.0, 1.0], 2, 2, device)).is_err());
    assert!(qr(tensor(vec![1.0, f32::INFINITY], 1, 2, device)).is_err());
    assert!(svd(Tensor::<2>::zeros([0, 3], device)).is_err());
    let d = svd(tensor(random_matrix(3, 3, 1), 3, 3, device)).unwrap();
    assert!(d.reconstruct(Some(0)).is_err());
    assert!(d.reconstruct(Some(4)).is_err());
});
