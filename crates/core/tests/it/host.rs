//! The host kernels: `add_matmul` against a naive f64 reference on every
//! backend (faer on CPU devices, burn's ops elsewhere and under autodiff),
//! scatters, and their typed errors.

use burn::tensor::{Device, Tensor};
use lastmile_core::CoreError;
use lastmile_core::backend_test;
use lastmile_core::convert::{tensor_from_vec, tensor_to_vec};
use lastmile_core::host::{add_matmul, is_host, scatter_assign, with_host_mut};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

/// `C + α·A·B` in f64, row-major.
fn naive(
    c: &[f32],
    a: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    alpha: f64,
) -> Vec<f64> {
    (0..m * n)
        .map(|ij| {
            let (i, j) = (ij / n, ij % n);
            let dot: f64 = (0..k)
                .map(|l| f64::from(a[i * k + l]) * f64::from(b[l * n + j]))
                .sum();
            f64::from(c[ij]) + alpha * dot
        })
        .collect()
}

fn check_add_matmul(device: &Device, (m, k, n): (usize, usize, usize), shared: bool) {
    let (c, a, b) = (random(m * n, 1), random(m * k, 2), random(k * n, 3));
    let ct = tensor_from_vec(c.clone(), [m, n], device).unwrap();
    let keep = ct.clone();
    let out = add_matmul(
        if shared { ct } else { keep.clone() * 1.0 },
        tensor_from_vec(a.clone(), [m, k], device).unwrap(),
        tensor_from_vec(b.clone(), [k, n], device).unwrap(),
        -0.75,
    )
    .unwrap();
    let got = tensor_to_vec(out).unwrap();
    let want = naive(&c, &a, &b, (m, k, n), -0.75);
    // f32 accumulation over k terms of magnitude ≤ 1: error ≤ k·2⁻²³ relative.
    let tol = 1e-6 * (k as f64 + 1.0) * 8.0;
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (f64::from(*g) - w).abs() <= tol * (1.0 + w.abs()),
            "{g} vs {w}"
        );
    }
    // A shared C is left as it was.
    assert_eq!(tensor_to_vec(keep).unwrap(), c);
}

backend_test!(add_matmul_matches_a_naive_reference, |device| {
    for dims in [(1, 1, 1), (7, 3, 5), (64, 16, 96), (33, 1, 17)] {
        check_add_matmul(device, dims, true);
        check_add_matmul(device, dims, false);
    }
    // Under autodiff the graph must survive: the burn path runs.
    let ad = device.clone().autodiff();
    assert!(!is_host(&ad));
    check_add_matmul(&ad, (8, 4, 6), false);
});

backend_test!(add_matmul_refuses_shapes_that_do_not_chain, |device| {
    let c = Tensor::<2>::zeros([3, 4], device);
    let err = add_matmul(
        c.clone(),
        Tensor::zeros([3, 2], device),
        Tensor::zeros([3, 4], device),
        1.0,
    );
    assert!(matches!(err, Err(CoreError::ShapeMismatch { .. })));
    let err = add_matmul(
        c,
        Tensor::zeros([3, 2], device),
        Tensor::zeros([2, 4], device),
        f32::NAN,
    );
    assert!(matches!(err, Err(CoreError::NonFinite { .. })));
});

backend_test!(scatter_writes_the_positions_and_checks_them, |device| {
    let t = Tensor::<1>::zeros([6], device);
    let t = scatter_assign(t, &[5, 0, 2, 0], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    // Later entries win for repeated positions.
    assert_eq!(
        tensor_to_vec(t.clone()).unwrap(),
        vec![4.0, 0.0, 3.0, 0.0, 0.0, 1.0]
    );
    assert!(matches!(
        scatter_assign(t.clone(), &[6], &[1.0]),
        Err(CoreError::IndexOutOfRange {
            index: 6,
            bound: 6,
            ..
        })
    ));
    assert!(matches!(
        scatter_assign(t, &[1, 2], &[1.0]),
        Err(CoreError::LengthMismatch {
            expected: 2,
            found: 1,
            ..
        })
    ));
});

backend_test!(
    with_host_mut_returns_the_values_written_on_the_same_device,
    |device| {
        let t = Tensor::<2>::ones([2, 3], device);
        let t = with_host_mut(t, |v| {
            v.iter_mut().enumerate().for_each(|(i, x)| *x += i as f32);
            Ok(())
        })
        .unwrap();
        assert_eq!(t.device(), *device);
        assert_eq!(t.dims(), [2, 3]);
        assert_eq!(
            tensor_to_vec(t).unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        // An error from the closure is returned as is.
        let err = with_host_mut(Tensor::<1>::ones([2], device), |_| {
            Err(CoreError::Empty {
                what: "closure".to_owned(),
                min: 1,
            })
        });
        assert!(matches!(err, Err(CoreError::Empty { .. })));
    }
);
