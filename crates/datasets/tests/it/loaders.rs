//! Every embedded dataset loads with the documented shape, classes and values.

use lastmile_datasets::{Dataset, Targets, breast_cancer, diabetes, digits, iris, wine};

fn check_classification(
    ds: &Dataset,
    name: &str,
    shape: (usize, usize),
    class_counts: &[usize],
    class_names: &[&str],
) {
    assert_eq!(ds.name(), name);
    assert_eq!((ds.n_samples(), ds.n_features()), shape, "{name}");
    assert_eq!(ds.features().len(), shape.0 * shape.1);
    assert_eq!(ds.n_classes(), Some(class_counts.len()));
    let counts = ds.class_counts().expect("classification");
    assert_eq!(counts, class_counts, "{name}");
    assert_eq!(counts.iter().sum::<usize>(), ds.n_samples());
    let names: Vec<&str> = ds
        .class_names()
        .expect("classification")
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(names, class_names);
    assert!(ds.values().is_none());
}

#[test]
fn iris_shape_and_values() {
    let ds = iris().expect("embedded iris");
    check_classification(
        &ds,
        "iris",
        (150, 4),
        &[50, 50, 50],
        &["setosa", "versicolor", "virginica"],
    );
    assert_eq!(ds.row(0), &[5.1, 3.5, 1.4, 0.2]);
    assert_eq!(ds.row(149), &[5.9, 3.0, 5.1, 1.8]);
    let labels = ds.labels().expect("classification");
    assert_eq!((labels[0], labels[50], labels[149]), (0, 1, 2));
}

#[test]
fn wine_shape_and_values() {
    let ds = wine().expect("embedded wine");
    check_classification(
        &ds,
        "wine",
        (178, 13),
        &[59, 71, 48],
        &["class_0", "class_1", "class_2"],
    );
    assert_eq!(
        ds.row(0),
        &[
            14.23, 1.71, 2.43, 15.6, 127.0, 2.8, 3.06, 0.28, 2.29, 5.64, 1.04, 3.92, 1065.0
        ]
    );
    assert_eq!(
        ds.row(177),
        &[
            14.13, 4.1, 2.74, 24.5, 96.0, 2.05, 0.76, 0.56, 1.35, 9.2, 0.61, 1.6, 560.0
        ]
    );
    assert_eq!(ds.labels().map(|l| l[177]), Some(2));
}

#[test]
fn breast_cancer_shape_and_values() {
    let ds = breast_cancer().expect("embedded breast cancer");
    check_classification(
        &ds,
        "breast_cancer",
        (569, 30),
        &[212, 357],
        &["malignant", "benign"],
    );
    assert_eq!(&ds.row(0)[..4], &[17.99, 10.38, 122.8, 1001.0]);
    assert_eq!(ds.row(0)[29], 0.1189);
    assert_eq!(&ds.row(568)[..4], &[7.76, 24.54, 47.92, 181.0]);
    assert_eq!(ds.labels().map(|l| (l[0], l[568])), Some((0, 1)));
}

#[test]
fn digits_shape_and_values() {
    let ds = digits().expect("embedded digits");
    let names: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    check_classification(
        &ds,
        "digits",
        (1797, 64),
        &[178, 182, 177, 183, 181, 182, 181, 179, 174, 180],
        &names,
    );
    assert_eq!(
        &ds.row(0)[..16],
        &[
            0.0, 0.0, 5.0, 13.0, 9.0, 1.0, 0.0, 0.0, 0.0, 0.0, 13.0, 15.0, 10.0, 15.0, 5.0, 0.0
        ]
    );
    assert_eq!(
        &ds.row(1796)[..8],
        &[0.0, 0.0, 10.0, 14.0, 8.0, 1.0, 0.0, 0.0]
    );
    assert!(
        ds.features()
            .iter()
            .all(|&p| (0.0..=16.0).contains(&p) && p.fract() == 0.0)
    );
    let labels = ds.labels().expect("classification");
    assert_eq!((labels[0], labels[1], labels[1796]), (0, 1, 8));
}

#[test]
fn diabetes_shape_and_values() {
    let ds = diabetes().expect("embedded diabetes");
    assert_eq!(ds.name(), "diabetes");
    assert_eq!((ds.n_samples(), ds.n_features()), (442, 10));
    assert_eq!(ds.n_classes(), None);
    assert!(ds.labels().is_none() && ds.class_counts().is_none());
    assert_eq!(
        ds.row(0),
        &[59.0, 2.0, 32.1, 101.0, 157.0, 93.2, 38.0, 4.0, 4.8598, 87.0]
    );
    assert_eq!(
        ds.row(441),
        &[36.0, 1.0, 19.6, 71.0, 250.0, 133.2, 97.0, 3.0, 4.5951, 92.0]
    );
    let Targets::Values(y) = ds.targets() else {
        panic!("diabetes is a regression set");
    };
    assert_eq!((y[0], y[1], y[2], y[441]), (151.0, 75.0, 141.0, 57.0));
    assert_eq!(y.iter().map(|&v| f64::from(v)).sum::<f64>(), 67243.0);
    let (min, max) = y
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert_eq!((min, max), (25.0, 346.0));
}
