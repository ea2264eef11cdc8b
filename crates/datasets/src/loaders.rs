//! Loaders for the datasets embedded in the crate (see `data/README.md` for
//! provenance and licences).
//!
//! The files are compiled into the library with `include_bytes!`, so the
//! loaders work from any working directory and need no files at run time.
//! Each call parses (and, for `.gz` files, decompresses) the data afresh:
//! a few milliseconds at most.

use crate::dataset::Dataset;
use crate::error::Result;
use crate::sklearn::{gunzip, parse_digits_csv, parse_sklearn_csv, parse_whitespace_regression};

const DIGITS_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");
const WINE_CSV: &[u8] = include_bytes!("../data/wine_data.csv");
const BREAST_CANCER_CSV: &[u8] = include_bytes!("../data/breast_cancer.csv");
const IRIS_CSV: &[u8] = include_bytes!("../data/iris.csv");
const DIABETES_DATA_GZ: &[u8] = include_bytes!("../data/diabetes_data_raw.csv.gz");
const DIABETES_TARGET_GZ: &[u8] = include_bytes!("../data/diabetes_target.csv.gz");

/// The UCI optical handwritten digits (test set) as shipped with
/// scikit-learn: 1797 samples × 64 features (8×8 images, pixels 0..16),
/// 10 classes `"0"`..`"9"`.
///
/// # Errors
/// Only if the embedded data were corrupt (a [`crate::DatasetError`] from
/// [`gunzip`] or [`parse_digits_csv`]); the crate's tests load every dataset.
///
/// # Examples
/// ```
/// let ds = lastmile_datasets::digits()?;
/// assert_eq!((ds.n_samples(), ds.n_features(), ds.n_classes()), (1797, 64, Some(10)));
/// # Ok::<(), lastmile_datasets::DatasetError>(())
/// ```
pub fn digits() -> Result<Dataset> {
    parse_digits_csv(&gunzip("digits.csv.gz", DIGITS_GZ)?)
}

/// The UCI wine recognition data: 178 samples × 13 features, 3 classes
/// (`class_0`, `class_1`, `class_2`).
///
/// # Errors
/// Only if the embedded data were corrupt (see [`parse_sklearn_csv`]).
///
/// # Examples
/// ```
/// let ds = lastmile_datasets::wine()?;
/// assert_eq!((ds.n_samples(), ds.n_features(), ds.n_classes()), (178, 13, Some(3)));
/// # Ok::<(), lastmile_datasets::DatasetError>(())
/// ```
pub fn wine() -> Result<Dataset> {
    Ok(parse_sklearn_csv(WINE_CSV)?.with_name("wine"))
}

/// The UCI breast cancer Wisconsin (diagnostic) data: 569 samples ×
/// 30 features, 2 classes (`malignant` = 0, `benign` = 1).
///
/// # Errors
/// Only if the embedded data were corrupt (see [`parse_sklearn_csv`]).
///
/// # Examples
/// ```
/// let ds = lastmile_datasets::breast_cancer()?;
/// assert_eq!((ds.n_samples(), ds.n_features(), ds.n_classes()), (569, 30, Some(2)));
/// # Ok::<(), lastmile_datasets::DatasetError>(())
/// ```
pub fn breast_cancer() -> Result<Dataset> {
    Ok(parse_sklearn_csv(BREAST_CANCER_CSV)?.with_name("breast_cancer"))
}

/// Fisher's iris data: 150 samples × 4 features (sepal length, sepal width,
/// petal length, petal width, in cm), 3 classes (`setosa`, `versicolor`,
/// `virginica`), 50 each.
///
/// # Errors
/// Only if the embedded data were corrupt (see [`parse_sklearn_csv`]).
///
/// # Examples
/// ```
/// let ds = lastmile_datasets::iris()?;
/// assert_eq!((ds.n_samples(), ds.n_features(), ds.n_classes()), (150, 4, Some(3)));
/// # Ok::<(), lastmile_datasets::DatasetError>(())
/// ```
pub fn iris() -> Result<Dataset> {
    Ok(parse_sklearn_csv(IRIS_CSV)?.with_name("iris"))
}

/// The diabetes regression data of Efron et al. (2004), *raw* (unscaled):
/// 442 samples × 10 features (age, sex, bmi, bp, s1..s6); the target is a
/// measure of disease progression one year after baseline (25..346).
///
/// Unlike `sklearn.datasets.load_diabetes()`, the features are not centred
/// or scaled: use [`crate::Standardizer`] on the training rows.
///
/// # Errors
/// Only if the embedded data were corrupt (see [`parse_whitespace_regression`]).
///
/// # Examples
/// ```
/// let ds = lastmile_datasets::diabetes()?;
/// assert_eq!((ds.n_samples(), ds.n_features(), ds.n_classes()), (442, 10, None));
/// # Ok::<(), lastmile_datasets::DatasetError>(())
/// ```
pub fn diabetes() -> Result<Dataset> {
    let features = gunzip("diabetes_data_raw.csv.gz", DIABETES_DATA_GZ)?;
    let targets = gunzip("diabetes_target.csv.gz", DIABETES_TARGET_GZ)?;
    Ok(parse_whitespace_regression(&features, &targets)?.with_name("diabetes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::DatasetError;

    #[test]
    fn truncated_gzip_is_a_decompression_error() {
        for cut in [DIGITS_GZ.len() / 2, DIGITS_GZ.len() - 4, 5] {
            let err = gunzip("digits", &DIGITS_GZ[..cut]).expect_err("truncated stream");
            assert!(matches!(err, DatasetError::Decompression { .. }), "{err}");
        }
        let mut corrupt = DIGITS_GZ.to_vec();
        corrupt[100] ^= 0xff;
        assert!(gunzip("digits", &corrupt).is_err());
    }
}
