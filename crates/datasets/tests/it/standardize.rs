//! Standardisation against a naive f64 reference.

use lastmile_datasets::{Dataset, SplitFractions, Standardizer, diabetes, split_indices, wine};

/// Per-feature mean and population standard deviation, computed naively in f64.
fn reference(ds: &Dataset) -> (Vec<f64>, Vec<f64>) {
    let (n, d) = (ds.n_samples(), ds.n_features());
    let mut mean = vec![0.0; d];
    for i in 0..n {
        for (m, &x) in mean.iter_mut().zip(ds.row(i)) {
            *m += f64::from(x) / n as f64;
        }
    }
    let mut var = vec![0.0; d];
    for i in 0..n {
        for ((v, &x), m) in var.iter_mut().zip(ds.row(i)).zip(&mean) {
            *v += (f64::from(x) - m).powi(2) / n as f64;
        }
    }
    (mean, var.iter().map(|v| v.sqrt()).collect())
}

#[test]
fn fit_matches_reference_on_training_rows_only() {
    for ds in [wine().expect("wine"), diabetes().expect("diabetes")] {
        let split =
            split_indices(ds.n_samples(), SplitFractions::new(0.6, 0.2, 0.2), 3).expect("valid");
        let train = ds.subset(&split.train).expect("valid");
        let scaler = Standardizer::fit(&train).expect("non-empty");
        let (mean, std) = reference(&train);
        for j in 0..ds.n_features() {
            let tol = 1e-5 * mean[j].abs().max(1.0);
            assert!(
                (f64::from(scaler.mean()[j]) - mean[j]).abs() < tol,
                "mean {j}"
            );
            assert!(
                (f64::from(scaler.scale()[j]) - std[j]).abs() < 1e-5 * std[j],
                "std {j}"
            );
        }
        // Fitting on all rows gives different statistics: only training rows are used.
        let all = Standardizer::fit(&ds).expect("non-empty");
        assert_ne!(all.mean(), scaler.mean());

        let scaled = scaler.transformed(&train).expect("same features");
        let (m, s) = reference(&scaled);
        assert!(
            m.iter().all(|m| m.abs() < 1e-5),
            "{} means {m:?}",
            ds.name()
        );
        assert!(
            s.iter().all(|s| (s - 1.0).abs() < 1e-5),
            "{} stds {s:?}",
            ds.name()
        );

        let mut test = ds.subset(&split.test).expect("valid");
        let original = test.features().to_vec();
        scaler.transform(&mut test).expect("same features");
        let mut back = test.features().to_vec();
        scaler.inverse_transform_rows(&mut back).expect("shape");
        for (a, b) in back.iter().zip(&original) {
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
}
