//! The validation tiers: what each check accepts and rejects, and the device
//! synchronisation counts the docs state (counted with `host_reads`).
#![allow(clippy::unwrap_used)]

use std::ops::Bound::{Excluded, Included, Unbounded};

use burn::tensor::Tensor;
use lastmile_core::CoreError;
use lastmile_core::backend_test;
use lastmile_core::convert::host_reads;
use lastmile_core::numerics::{
    SamplingParams, argmax, sample_categorical, sample_categorical_unchecked,
};
use lastmile_core::validate::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Runs `f` and returns how many device → host reads it made.
fn reads<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = host_reads();
    let out = f();
    (out, host_reads() - before)
}

#[test]
fn host_checks_accept_and_reject() {
    assert!(check_interval("x", 0.5, Excluded(0.0), Excluded(1.0)).is_ok());
    assert!(check_interval("x", 0.0, Excluded(0.0), Unbounded).is_err());
    assert!(check_interval("x", f64::INFINITY, Unbounded, Unbounded).is_err());
    assert!(check_interval("x", 1.0, Included(0.0), Included(1.0)).is_ok());
    assert!(matches!(
        check_at_least("k", 0, 1),
        Err(CoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        check_len("y", 2, 3),
        Err(CoreError::LengthMismatch {
            expected: 3,
            found: 2,
            ..
        })
    ));
    assert!(matches!(
        check_matrix_len("x", 5, 2),
        Err(CoreError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        check_matrix_len("x", 0, 2),
        Err(CoreError::Empty { .. })
    ));
    assert!(matches!(
        check_indices("labels", &[0, 1, 9], 3),
        Err(CoreError::IndexOutOfRange {
            index: 9,
            bound: 3,
            ..
        })
    ));
    assert!(matches!(
        check_probability_row("p", &[0.5f32, f32::NAN], 2, 1e-3),
        Err(CoreError::NonFinite { index: 5, .. })
    ));
    assert!(matches!(
        check_probability_row("p", &[1.5f64, -0.5], 0, 1e-3),
        Err(CoreError::NotAProbability { .. })
    ));
}

backend_test!(tensor_checks_cost_one_read_when_valid, |device| {
    let logits = Tensor::<2>::from_floats([[0.0, f32::NEG_INFINITY, 1.0], [2.0, 1.0, 0.0]], device);
    let (r, n) = reads(|| check_logits("logits", &logits));
    r.unwrap();
    assert_eq!(n, 1);
    let (r, n) = reads(|| check_finite("x", &Tensor::<2>::ones([2, 3], device)));
    r.unwrap();
    assert_eq!(n, 1);
    let p = Tensor::<2>::from_floats([[0.25, 0.75], [1.0, 0.0]], device);
    let (r, n) = reads(|| check_probabilities("p", &p, 1e-4));
    r.unwrap();
    assert_eq!(n, 1);
});

backend_test!(tensor_checks_locate_faults, |device| {
    let nan = Tensor::<2>::from_floats([[0.0, 1.0], [f32::NAN, 0.0]], device);
    assert!(matches!(
        check_logits("l", &nan),
        Err(CoreError::NonFinite { index: 2, .. })
    ));
    let masked =
        Tensor::<2>::from_floats([[0.0, 1.0], [f32::NEG_INFINITY, f32::NEG_INFINITY]], device);
    assert!(matches!(
        check_logits("l", &masked),
        Err(CoreError::NotAProbability { row: 1, .. })
    ));
    let neg = Tensor::<2>::from_floats([[0.5, 0.5], [1.2, -0.2]], device);
    assert!(matches!(
        check_probabilities("p", &neg, 1e-4),
        Err(CoreError::NotAProbability { row: 1, .. })
    ));
    let off = Tensor::<2>::from_floats([[0.5, 0.5], [0.5, 0.4]], device);
    match check_probabilities("p", &off, 1e-4) {
        Err(CoreError::NotAProbability { row: 1, reason, .. }) => {
            let sum: f64 = reason.trim_start_matches("sums to ").parse().unwrap();
            assert!((sum - 0.9).abs() < 1e-6, "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let inf = Tensor::<1>::from_floats([1.0, 2.0, f32::INFINITY], device);
    assert!(matches!(
        check_finite("x", &inf),
        Err(CoreError::NonFinite { index: 2, .. })
    ));
});

backend_test!(kernels_state_their_synchronisations, |device| {
    let logits = Tensor::<2>::from_floats([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]], device);
    let params = SamplingParams::new(0.8).unwrap().with_top_p(0.9).unwrap();
    let (p, n) = reads(|| params.probabilities_unchecked(logits.clone()));
    let p = p.unwrap();
    assert_eq!(n, 0);
    let (_, n) = reads(|| params.probabilities(logits.clone()).unwrap());
    assert_eq!(n, 1);
    let mut rng = StdRng::seed_from_u64(0);
    let (_, n) = reads(|| sample_categorical(p.clone(), &mut rng).unwrap());
    assert_eq!(n, 2);
    let (_, n) = reads(|| sample_categorical_unchecked(p.clone(), &mut rng).unwrap());
    assert_eq!(n, 1);
    let (_, n) = reads(|| argmax(logits.clone()).unwrap());
    assert_eq!(n, 1);
});
