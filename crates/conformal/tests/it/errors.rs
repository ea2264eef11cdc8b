//! Every bad input in the specification returns a typed error.
#![allow(clippy::unwrap_used)]

use lastmile_conformal::{
    AdaptiveConformal, ConformalError, ConformalRegressor, CvPlus, Mondrian, RegressionPredictions,
    ScoreFunction, SplitConformal, bounds, conformal_quantile, conformal_risk_control,
    training::{ConformalTraining, Objective},
};
use lastmile_core::CoreError;
use rand::{SeedableRng, rngs::StdRng};

fn rng() -> StdRng {
    StdRng::seed_from_u64(0)
}

const P: [f32; 4] = [0.6, 0.4, 0.3, 0.7];

/// The shared input error inside `r`; panics on success or another error.
fn core<T: std::fmt::Debug>(r: Result<T, ConformalError>) -> CoreError {
    match r {
        Err(ConformalError::Core(e)) => e,
        other => panic!("expected a CoreError, got {other:?}"),
    }
}

/// The parameter named by an `OutOfRange` error.
fn out_of_range_name<T: std::fmt::Debug>(r: Result<T, ConformalError>) -> String {
    match core(r) {
        CoreError::OutOfRange { name, .. } => name,
        other => panic!("expected OutOfRange, got {other:?}"),
    }
}

/// The `what` of an `IndexOutOfRange` / `LengthMismatch` error with its numbers.
fn what_of(e: CoreError) -> (String, usize, usize) {
    match e {
        CoreError::IndexOutOfRange { what, index, bound } => (what, index, bound),
        CoreError::LengthMismatch {
            what,
            expected,
            found,
        } => (what, found, expected),
        other => panic!("expected IndexOutOfRange or LengthMismatch, got {other:?}"),
    }
}

#[test]
fn alpha_outside_open_unit_interval() {
    for alpha in [0.0, 1.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
        for r in [
            SplitConformal::new(ScoreFunction::Lac, alpha).err(),
            Mondrian::class_conditional(ScoreFunction::Lac, alpha).err(),
            conformal_quantile(&[0.1, 0.2], alpha).err(),
            ConformalRegressor::calibrate(alpha, RegressionPredictions::Point(&[1.0]), &[1.0])
                .err(),
            AdaptiveConformal::new(alpha, 0.01).err(),
            conformal_risk_control(&[0.0], &[0.0], alpha, 1.0).err(),
            ConformalTraining::new(Objective::CrossEntropy, ScoreFunction::Lac, alpha).err(),
        ] {
            assert!(
                matches!(r, Some(ConformalError::Core(CoreError::OutOfRange { .. }))),
                "alpha={alpha}: {r:?}"
            );
        }
    }
    // the bounds need α ≤ 1/2
    let r = bounds::simple_fano_bound(&[1.0f32, 0.0], 2, &[0], 0.7, 10);
    assert!(matches!(
        r,
        Err(ConformalError::Core(CoreError::OutOfRange { .. }))
    ));
}

#[test]
fn empty_calibration_set() {
    let cp = SplitConformal::new(ScoreFunction::aps(), 0.1).unwrap();
    let r = cp.calibrate_slice::<f32, _>(&[], 2, &[], &mut rng());
    assert!(
        matches!(r, Err(ConformalError::Core(CoreError::Empty { .. }))),
        "{r:?}"
    );
    assert!(matches!(
        conformal_quantile(&[], 0.1),
        Err(ConformalError::Core(CoreError::Empty { .. }))
    ));
    assert!(matches!(
        ConformalRegressor::calibrate(0.1, RegressionPredictions::Point(&[]), &[]),
        Err(ConformalError::Core(CoreError::Empty { .. }))
    ));
}

#[test]
fn non_finite_or_negative_probabilities() {
    let cp = SplitConformal::new(ScoreFunction::aps(), 0.1).unwrap();
    for (bad, nonfinite) in [
        ([0.6f32, 0.4, f32::NAN, 0.7], true),
        ([0.6, 0.4, f32::INFINITY, 0.7], true),
        ([1.2, -0.2, 0.3, 0.7], false),
    ] {
        let r = cp.calibrate_slice(&bad, 2, &[0, 1], &mut rng());
        match r {
            Err(ConformalError::Core(CoreError::NonFinite { .. })) => assert!(nonfinite),
            Err(ConformalError::Core(CoreError::NotAProbability { .. })) => assert!(!nonfinite),
            other => panic!("unexpected {other:?}"),
        }
        let fitted = cp.calibrate_slice(&P, 2, &[0, 1], &mut rng()).unwrap();
        assert!(fitted.predict_slice(&bad, 2, &mut rng()).is_err());
    }
}

#[test]
fn rows_not_summing_to_one() {
    let cp = SplitConformal::new(ScoreFunction::Lac, 0.1).unwrap();
    let r = cp.calibrate_slice(&[0.5f32, 0.4, 0.3, 0.7], 2, &[0, 1], &mut rng());
    assert!(
        matches!(
            r,
            Err(ConformalError::Core(CoreError::NotAProbability {
                row: 0,
                ..
            }))
        ),
        "{r:?}"
    );
    // within the tolerance is fine; a custom tolerance tightens it
    assert!(
        cp.calibrate_slice(&[0.5f32, 0.4999, 0.3, 0.7], 2, &[0, 1], &mut rng())
            .is_ok()
    );
    let strict = cp.with_sum_tolerance(1e-6).unwrap();
    assert!(
        strict
            .calibrate_slice(&[0.5f32, 0.4999, 0.3, 0.7], 2, &[0, 1], &mut rng())
            .is_err()
    );
}

#[test]
fn labels_out_of_range() {
    let cp = SplitConformal::new(ScoreFunction::Lac, 0.1).unwrap();
    let r = cp.calibrate_slice(&P, 2, &[0, 2], &mut rng());
    assert!(matches!(
        r,
        Err(ConformalError::Core(CoreError::IndexOutOfRange {
            index: 2,
            bound: 2,
            ..
        }))
    ));
    let m = Mondrian::by_group(ScoreFunction::Lac, 0.1, 2).unwrap();
    let r = m.calibrate_slice(&P, 2, &[0, 1], Some(&[0, 5]), &mut rng());
    assert!(matches!(
        r,
        Err(ConformalError::Core(CoreError::IndexOutOfRange { .. }))
    ));
    let r = bounds::simple_fano_bound(&[1.0f32, 0.0], 2, &[3], 0.1, 10);
    assert!(matches!(
        r,
        Err(ConformalError::Core(CoreError::IndexOutOfRange { .. }))
    ));
}

#[test]
fn mismatched_lengths_and_shapes() {
    let cp = SplitConformal::new(ScoreFunction::Lac, 0.1).unwrap();
    let e = core(cp.calibrate_slice(&P, 2, &[0], &mut rng()));
    assert!(matches!(e, CoreError::LengthMismatch { .. }));
    assert_eq!(what_of(e), ("labels".to_owned(), 1, 2));
    assert!(matches!(
        cp.calibrate_slice(&P, 3, &[0], &mut rng()),
        Err(ConformalError::Core(CoreError::ShapeMismatch { .. }))
    ));
    // no classes at all
    assert!(matches!(
        cp.calibrate_slice(&P, 0, &[0], &mut rng()),
        Err(ConformalError::Core(CoreError::ShapeMismatch { .. }))
    ));
    let fitted = cp.calibrate_slice(&P, 2, &[0, 1], &mut rng()).unwrap();
    // class count differs from calibration
    assert!(matches!(
        fitted.predict_slice(&[0.2f32, 0.3, 0.5], 3, &mut rng()),
        Err(ConformalError::Core(CoreError::ShapeMismatch { .. }))
    ));
    assert!(matches!(
        cp.calibrate_slice_with_uniforms(&P, 2, &[0, 1], &[0.5]),
        Err(ConformalError::Core(CoreError::LengthMismatch {
            expected: 2,
            found: 1,
            ..
        }))
    ));
    let r = cp.calibrate_slice_with_uniforms(&P, 2, &[0, 1], &[0.5, 1.5]);
    assert!(
        matches!(
            &r,
            Err(ConformalError::Core(CoreError::OutOfRange { name, value, .. }))
                if name == "uniforms[1]" && *value == 1.5
        ),
        "{r:?}"
    );
    assert!(matches!(
        ConformalRegressor::calibrate(0.1, RegressionPredictions::Point(&[1.0, 2.0]), &[1.0]),
        Err(ConformalError::Core(CoreError::LengthMismatch {
            expected: 2,
            found: 1,
            ..
        }))
    ));
    // predicting with another kind of model output
    let reg =
        ConformalRegressor::calibrate(0.1, RegressionPredictions::Point(&[1.0]), &[1.0]).unwrap();
    assert!(matches!(
        reg.predict(RegressionPredictions::Quantiles {
            lower: &[0.0],
            upper: &[1.0]
        }),
        Err(ConformalError::KindMismatch { .. })
    ));
    // Mondrian group ids missing / unexpected
    let m = Mondrian::by_group(ScoreFunction::Lac, 0.1, 2).unwrap();
    assert!(matches!(
        m.calibrate_slice(&P, 2, &[0, 1], None, &mut rng()),
        Err(ConformalError::KindMismatch { .. })
    ));
    let c = Mondrian::class_conditional(ScoreFunction::Lac, 0.1).unwrap();
    assert!(matches!(
        c.calibrate_slice(&P, 2, &[0, 1], Some(&[0, 0]), &mut rng()),
        Err(ConformalError::KindMismatch { .. })
    ));
}

#[test]
fn invalid_parameters_and_values() {
    assert_eq!(
        out_of_range_name(SplitConformal::new(ScoreFunction::raps(-1.0, 1), 0.1)),
        "raps lambda"
    );
    assert_eq!(
        out_of_range_name(SplitConformal::new(ScoreFunction::saps(0.0), 0.1)),
        "saps lambda"
    );
    assert_eq!(out_of_range_name(AdaptiveConformal::new(0.1, 0.0)), "gamma");
    assert_eq!(
        out_of_range_name(AdaptiveConformal::new(0.1, 0.01).unwrap().with_window(0)),
        "window"
    );
    assert_eq!(
        out_of_range_name(Mondrian::by_group(ScoreFunction::Lac, 0.1, 0)),
        "n_groups"
    );
    assert!(matches!(
        conformal_quantile(&[0.1, f64::NAN], 0.1),
        Err(ConformalError::Core(CoreError::NonFinite { index: 1, .. }))
    ));
    assert_eq!(
        out_of_range_name(ConformalRegressor::calibrate(
            0.1,
            RegressionPredictions::Normalized {
                mean: &[1.0, 2.0],
                scale: &[1.0, 0.0]
            },
            &[1.0, 2.0]
        )),
        "scale[1]"
    );
    assert!(matches!(
        ConformalRegressor::calibrate(0.1, RegressionPredictions::Point(&[f64::NAN]), &[1.0]),
        Err(ConformalError::Core(CoreError::NonFinite { index: 0, .. }))
    ));
    // risk control: loss above B, increasing loss, unsorted grid, infeasible level
    assert_eq!(
        out_of_range_name(conformal_risk_control(&[0.5, 2.0], &[0.0], 0.5, 1.0)),
        "losses[1]"
    );
    assert!(matches!(
        conformal_risk_control(&[0.0, 1.0], &[0.0, 1.0], 0.5, 1.0),
        Err(ConformalError::NotMonotone { .. })
    ));
    assert_eq!(
        out_of_range_name(conformal_risk_control(&[1.0, 0.0], &[1.0, 0.0], 0.5, 1.0)),
        "lambdas[1]"
    );
    assert!(matches!(
        conformal_risk_control(&[1.0, 1.0], &[0.0, 1.0], 0.1, 1.0),
        Err(ConformalError::Infeasible { .. })
    ));
    // risk control: no grid, no losses, losses not [n, m]
    assert!(matches!(
        conformal_risk_control(&[0.0], &[], 0.5, 1.0),
        Err(ConformalError::Core(CoreError::Empty { .. }))
    ));
    assert!(matches!(
        conformal_risk_control(&[], &[0.0], 0.5, 1.0),
        Err(ConformalError::Core(CoreError::Empty { .. }))
    ));
    assert!(matches!(
        conformal_risk_control(&[0.0, 0.0, 0.0], &[0.0, 1.0], 0.5, 1.0),
        Err(ConformalError::Core(CoreError::ShapeMismatch { .. }))
    ));
}

#[test]
fn bounds_reject_bad_inputs() {
    // memberships outside [0, 1]
    assert_eq!(
        out_of_range_name(bounds::simple_fano_bound(&[1.0f32, 1.5], 2, &[0], 0.1, 10)),
        "sets[1]"
    );
    assert_eq!(
        out_of_range_name(bounds::simple_fano_bound(&[1.0f32, 0.0], 2, &[0], 0.1, 0)),
        "n_calibration"
    );
    // α above 1/2: the message says why
    let r = bounds::simple_fano_bound(&[1.0f32, 0.0], 2, &[0], 0.7, 10);
    assert!(
        matches!(
            &r,
            Err(ConformalError::Core(CoreError::OutOfRange { name, expected, .. }))
                if name == "alpha" && expected.contains("h_b")
        ),
        "{r:?}"
    );
    // one probability row per set, each a distribution
    let sets = [1.0f32, 0.0, 0.0, 1.0];
    assert!(matches!(
        bounds::dpi_bound(&[0.5f32, 0.5], &sets, 2, &[0, 1], 0.1, 10),
        Err(ConformalError::Core(CoreError::LengthMismatch {
            expected: 2,
            found: 1,
            ..
        }))
    ));
    assert!(matches!(
        bounds::model_fano_bound(&[0.5f32, 0.5, 0.5, 0.4], &sets, 2, &[0, 1], 0.1, 10),
        Err(ConformalError::Core(CoreError::NotAProbability {
            row: 1,
            ..
        }))
    ));
    // labels: one per set
    assert!(matches!(
        bounds::simple_fano_bound(&sets, 2, &[0], 0.1, 10),
        Err(ConformalError::Core(CoreError::LengthMismatch {
            expected: 2,
            found: 1,
            ..
        }))
    ));
}

#[test]
fn sets_and_metrics_reject_bad_inputs() {
    use lastmile_conformal::PredictionSets;
    let e = core(PredictionSets::from_sets(3, vec![vec![0], vec![1, 3]]));
    assert!(matches!(e, CoreError::IndexOutOfRange { .. }));
    assert_eq!(what_of(e), ("sets[1][1]".to_owned(), 3, 3));
    for (n_classes, mask) in [(2, &[true, false, true][..]), (0, &[][..])] {
        assert!(matches!(
            PredictionSets::from_mask(n_classes, mask),
            Err(ConformalError::Core(CoreError::ShapeMismatch { .. }))
        ));
    }
    assert_eq!(PredictionSets::from_mask(2, &[]).unwrap().len(), 0);
    let sets = PredictionSets::from_sets(3, vec![vec![0], vec![1, 2]]).unwrap();
    assert!(matches!(
        lastmile_conformal::coverage(&sets, &[0]),
        Err(ConformalError::Core(CoreError::LengthMismatch {
            expected: 2,
            found: 1,
            ..
        }))
    ));
    assert!(matches!(
        lastmile_conformal::coverage(&sets, &[0, 3]),
        Err(ConformalError::Core(CoreError::IndexOutOfRange {
            index: 3,
            ..
        }))
    ));
    let none = PredictionSets::from_sets(3, vec![]).unwrap();
    assert!(matches!(
        lastmile_conformal::coverage(&none, &[]),
        Err(ConformalError::Core(CoreError::Empty { .. }))
    ));
}

#[test]
fn tensor_entry_points_reject_bad_tensors() {
    lastmile_core::testing::run_on(lastmile_core::Backend::Flex, |device| {
        use burn::tensor::{Int, Tensor};
        let cp = SplitConformal::new(ScoreFunction::Lac, 0.1).unwrap();
        let labels = Tensor::<1, Int>::from_ints([0, 1], device);
        let nan = Tensor::<2>::from_floats([[f32::NAN, 0.0], [0.0, 1.0]], device);
        assert!(
            cp.calibrate_logits(nan.clone(), labels.clone(), &mut rng())
                .is_err()
        );
        assert!(cp.calibrate(nan, labels.clone(), &mut rng()).is_err());
        let empty = Tensor::<2>::zeros([0, 2], device);
        assert!(matches!(
            cp.calibrate(empty, Tensor::<1, Int>::zeros([0], device), &mut rng()),
            Err(ConformalError::Core(CoreError::ShapeMismatch { .. }))
        ));
        let ad = device.clone().autodiff();
        let cfg = ConformalTraining::new(Objective::Dpi, ScoreFunction::Lac, 0.1).unwrap();
        let tiny = Tensor::<2>::from_floats([[0.0, 1.0], [1.0, 0.0]], &ad);
        // a batch of 2 cannot be split into two halves of ≥ 2 rows
        assert!(
            cfg.loss(
                tiny.clone(),
                Tensor::<1, Int>::from_ints([0, 1], &ad),
                &mut rng()
            )
            .is_err()
        );
        // labels out of range
        assert!(
            cfg.loss(tiny, Tensor::<1, Int>::from_ints([0, 7], &ad), &mut rng())
                .is_err()
        );
    });
}

#[test]
fn cv_plus_rejects_bad_inputs() {
    let (p, y, f) = ([1.0, 2.0, 3.0], [1.5, 2.0, 2.5], [0, 1, 1]);
    for alpha in [0.0, 1.0, f64::NAN] {
        assert!(matches!(
            CvPlus::calibrate(alpha, &p, &y, &f, 2),
            Err(ConformalError::Core(CoreError::OutOfRange { .. }))
        ));
    }
    assert!(matches!(
        CvPlus::calibrate(0.1, &[], &[], &[], 2),
        Err(ConformalError::Core(CoreError::Empty { .. }))
    ));
    assert!(matches!(
        CvPlus::calibrate(0.1, &p, &y[..2], &f, 2),
        Err(ConformalError::Core(CoreError::LengthMismatch {
            expected: 3,
            found: 2,
            ..
        }))
    ));
    assert!(matches!(
        CvPlus::calibrate(0.1, &p, &y, &f[..2], 2),
        Err(ConformalError::Core(CoreError::LengthMismatch {
            expected: 3,
            found: 2,
            ..
        }))
    ));
    assert!(matches!(
        CvPlus::calibrate(0.1, &[1.0, f64::NAN, 3.0], &y, &f, 2),
        Err(ConformalError::Core(CoreError::NonFinite { .. }))
    ));
    assert!(matches!(
        CvPlus::calibrate(0.1, &p, &[1.0, 2.0, f64::INFINITY], &f, 2),
        Err(ConformalError::Core(CoreError::NonFinite { .. }))
    ));
    // fold index out of range, and no folds at all
    let e = core(CvPlus::calibrate(0.1, &p, &y, &[0, 2, 1], 2));
    assert!(matches!(e, CoreError::IndexOutOfRange { .. }));
    assert_eq!(what_of(e), ("folds[1]".to_owned(), 2, 2));
    assert!(matches!(
        CvPlus::calibrate(0.1, &p, &y, &f, 0),
        Err(ConformalError::Core(CoreError::OutOfRange { .. }))
    ));
    let cv = CvPlus::calibrate(0.5, &p, &y, &f, 2).unwrap();
    // predictions must be [m, K]
    assert!(matches!(
        cv.predict(&[1.0, 2.0, 3.0]),
        Err(ConformalError::Core(CoreError::ShapeMismatch { .. }))
    ));
    assert!(matches!(
        cv.predict(&[1.0, f64::NAN]),
        Err(ConformalError::Core(CoreError::NonFinite { .. }))
    ));
    assert_eq!(cv.predict(&[]).unwrap().len(), 0);
}
