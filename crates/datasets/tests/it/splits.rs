//! Splits are disjoint, cover their indices, are reproducible per seed and
//! (stratified) keep class proportions.

use lastmile_core::CoreError;
use lastmile_datasets::{
    DatasetError, Split, SplitFractions, digits, split_counts, split_indices, stratified_split,
    wine,
};

fn assert_partition_of(split: &Split, n: usize) {
    let mut seen = vec![0usize; n];
    for &i in split
        .train
        .iter()
        .chain(&split.calibration)
        .chain(&split.test)
    {
        seen[i] += 1;
    }
    assert!(seen.iter().all(|&c| c == 1), "every index exactly once");
}

#[test]
fn random_split_is_a_reproducible_partition() {
    let fractions = SplitFractions::new(0.6, 0.2, 0.2);
    for n in [0, 1, 2, 7, 150, 1797] {
        let split = split_indices(n, fractions, 5).expect("valid");
        assert_partition_of(&split, n);
        assert_eq!(split, split_indices(n, fractions, 5).expect("valid"));
    }
    let a = split_indices(1797, fractions, 1).expect("valid");
    let b = split_indices(1797, fractions, 2).expect("valid");
    assert_ne!(a.train, b.train);
    assert_eq!(
        (a.train.len(), a.calibration.len(), a.test.len()),
        (1078, 360, 359)
    );
}

#[test]
fn count_split_takes_exact_sizes() {
    let split = split_counts(100, [50, 20, 10], 3).expect("valid");
    assert_eq!(
        (split.train.len(), split.calibration.len(), split.test.len()),
        (50, 20, 10)
    );
    let mut all: Vec<usize> = split
        .train
        .iter()
        .chain(&split.calibration)
        .chain(&split.test)
        .copied()
        .collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 80);
    assert!(all.iter().all(|&i| i < 100));
    let full = split_counts(30, [10, 10, 10], 3).expect("valid");
    assert_partition_of(&full, 30);
    assert!(matches!(
        split_counts(10, [5, 5, 1], 0),
        Err(DatasetError::InvalidSplit { .. })
    ));
}

#[test]
fn stratified_split_keeps_class_proportions_within_one() {
    let fractions = [
        SplitFractions::new(0.6, 0.2, 0.2),
        SplitFractions::new(0.5, 0.3, 0.2),
        SplitFractions::new(0.8, 0.0, 0.2),
    ];
    for ds in [wine().expect("wine"), digits().expect("digits")] {
        let labels = ds.labels().expect("classification");
        let n_classes = ds.n_classes().expect("classification");
        let totals = ds.class_counts().expect("classification");
        for f in fractions {
            let split = stratified_split(labels, n_classes, f, 11).expect("valid");
            assert_partition_of(&split, ds.n_samples());
            for (part, frac) in [
                (&split.train, f.train),
                (&split.calibration, f.calibration),
                (&split.test, f.test),
            ] {
                let counts = ds
                    .subset(part)
                    .expect("valid")
                    .class_counts()
                    .expect("labels");
                for (c, (&got, &total)) in counts.iter().zip(&totals).enumerate() {
                    let exact = total as f64 * frac;
                    assert!(
                        (got as f64 - exact).abs() < 1.0,
                        "{} class {c}: {got} vs {exact}",
                        ds.name()
                    );
                }
            }
            assert_eq!(
                split,
                stratified_split(labels, n_classes, f, 11).expect("valid")
            );
            assert_ne!(
                split,
                stratified_split(labels, n_classes, f, 12).expect("valid")
            );
        }
    }
}

#[test]
fn stratified_split_rejects_bad_labels() {
    let f = SplitFractions::new(0.6, 0.2, 0.2);
    let r = stratified_split(&[0, 1, 3], 3, f, 0);
    assert!(
        matches!(
            &r,
            Err(DatasetError::Core(CoreError::IndexOutOfRange { what, index: 3, bound: 3 }))
                if what == "labels[2]"
        ),
        "{r:?}"
    );
    let r = stratified_split(&[0], 0, f, 0);
    assert!(
        matches!(
            &r,
            Err(DatasetError::Core(CoreError::OutOfRange { name, .. })) if name == "n_classes"
        ),
        "{r:?}"
    );
    // invalid fractions are reported with all three parts
    let r = stratified_split(&[0], 1, SplitFractions::new(0.6, 0.6, -0.2), 0);
    assert!(
        matches!(&r, Err(DatasetError::InvalidSplit { found, .. }) if found.contains("test -0.2")),
        "{r:?}"
    );
}
