//! Per-feature standardisation `(x − mean) / std`, fitted on training rows.

use lastmile_core::validate::{check_at_least, check_matrix_len};

use crate::dataset::{Dataset, check_finite, check_rows};
use crate::error::{DatasetError, Result};

/// Per-feature mean and standard deviation, fitted on training data and
/// applied to any data with the same features.
///
/// The standard deviation is the population one (divide by `n`, as
/// scikit-learn's `StandardScaler`), accumulated in `f64`. A feature whose
/// standard deviation is zero (constant on the training rows, up to rounding)
/// is only centred: its scale is 1.
///
/// Fit on the training rows only, so that no information from calibration or
/// test rows leaks into the preprocessing.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    mean: Vec<f32>,
    scale: Vec<f32>,
}

impl Standardizer {
    /// Fits the per-feature mean and scale on every row of `dataset`.
    ///
    /// # Errors
    /// [`CoreError::Empty`](lastmile_core::CoreError::Empty) (through
    /// [`DatasetError::Core`]) if the dataset has no samples.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::{split_indices, SplitFractions, Standardizer};
    /// let ds = lastmile_datasets::wine()?;
    /// let split = split_indices(ds.n_samples(), SplitFractions::new(0.8, 0.0, 0.2), 1)?;
    /// let scaler = Standardizer::fit(&ds.subset(&split.train)?)?;
    /// let test = scaler.transformed(&ds.subset(&split.test)?)?;
    /// assert_eq!(test.n_features(), 13);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn fit(dataset: &Dataset) -> Result<Self> {
        Self::fit_rows(dataset.features(), dataset.n_features())
    }

    /// Fits on row-major `rows` of `n_features` values each.
    ///
    /// # Errors
    /// Through [`DatasetError::Core`]:
    /// * [`CoreError::OutOfRange`](lastmile_core::CoreError::OutOfRange) if `n_features == 0`.
    /// * [`CoreError::Empty`](lastmile_core::CoreError::Empty) if there are no rows.
    /// * [`CoreError::ShapeMismatch`](lastmile_core::CoreError::ShapeMismatch)
    ///   if `rows.len()` is not a multiple of `n_features`.
    ///
    /// And [`DatasetError::NonFinite`] if a value is NaN or infinite.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::Standardizer;
    /// let s = Standardizer::fit_rows(&[1.0, 5.0, 3.0, 5.0], 2)?;
    /// assert_eq!(s.mean(), &[2.0, 5.0]);
    /// assert_eq!(s.scale(), &[1.0, 1.0]); // std 1, and 1 for the constant feature
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn fit_rows(rows: &[f32], n_features: usize) -> Result<Self> {
        check_at_least("n_features", n_features, 1)?;
        check_matrix_len("rows to fit a Standardizer on", rows.len(), n_features)?;
        check_finite("rows", rows, n_features)?;
        let n = (rows.len() / n_features) as f64;
        let mut sum = vec![0.0f64; n_features];
        for row in rows.chunks_exact(n_features) {
            for (s, &x) in sum.iter_mut().zip(row) {
                *s += f64::from(x);
            }
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let mut squares = vec![0.0f64; n_features];
        for row in rows.chunks_exact(n_features) {
            for ((q, &x), m) in squares.iter_mut().zip(row).zip(&mean) {
                let d = f64::from(x) - m;
                *q += d * d;
            }
        }
        let scale = squares
            .iter()
            .zip(&mean)
            .map(|(q, m)| {
                let std = (q / n).sqrt();
                // Rounding leaves a tiny spread on constant columns: treat as zero.
                if std <= 16.0 * f64::EPSILON * m.abs().max(1.0) {
                    1.0
                } else {
                    std as f32
                }
            })
            .collect();
        Ok(Self {
            mean: mean.iter().map(|&m| m as f32).collect(),
            scale,
        })
    }

    /// Number of features the standardizer was fitted on.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::Standardizer;
    /// assert_eq!(Standardizer::fit(&lastmile_datasets::iris()?)?.n_features(), 4);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn n_features(&self) -> usize {
        self.mean.len()
    }

    /// The fitted per-feature means.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::Standardizer;
    /// let s = Standardizer::fit(&lastmile_datasets::iris()?)?;
    /// assert!((s.mean()[0] - 5.8433).abs() < 1e-3);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// The fitted per-feature scales: the standard deviation, or 1 where it is zero.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::Standardizer;
    /// let s = Standardizer::fit(&lastmile_datasets::iris()?)?;
    /// assert!((s.scale()[0] - 0.8253).abs() < 1e-3);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn scale(&self) -> &[f32] {
        &self.scale
    }

    /// Standardises the features of `dataset` in place.
    ///
    /// # Errors
    /// [`DatasetError::FeatureMismatch`] if the dataset has a different number of features.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::Standardizer;
    /// let mut ds = lastmile_datasets::iris()?;
    /// Standardizer::fit(&ds)?.transform(&mut ds)?;
    /// let mean0: f32 = (0..150).map(|i| ds.row(i)[0]).sum::<f32>() / 150.0;
    /// assert!(mean0.abs() < 1e-5);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn transform(&self, dataset: &mut Dataset) -> Result<()> {
        self.check_features(dataset.n_features())?;
        self.transform_rows(dataset.features_mut())
    }

    /// Returns a standardised copy of `dataset`.
    ///
    /// # Errors
    /// [`DatasetError::FeatureMismatch`] if the dataset has a different number of features.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::Standardizer;
    /// let ds = lastmile_datasets::iris()?;
    /// let scaled = Standardizer::fit(&ds)?.transformed(&ds)?;
    /// assert_eq!(scaled.labels(), ds.labels());
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn transformed(&self, dataset: &Dataset) -> Result<Dataset> {
        let mut out = dataset.clone();
        self.transform(&mut out)?;
        Ok(out)
    }

    /// Standardises row-major `rows` in place.
    ///
    /// # Errors
    /// [`CoreError::ShapeMismatch`](lastmile_core::CoreError::ShapeMismatch)
    /// (through [`DatasetError::Core`]) if `rows.len()` is not a multiple of
    /// [`Standardizer::n_features`]. No rows is fine.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::Standardizer;
    /// let s = Standardizer::fit_rows(&[0.0, 2.0], 1)?;
    /// let mut rows = [0.0, 1.0, 2.0];
    /// s.transform_rows(&mut rows)?;
    /// assert_eq!(rows, [-1.0, 0.0, 1.0]);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn transform_rows(&self, rows: &mut [f32]) -> Result<()> {
        check_rows("rows", rows.len(), self.n_features())?;
        for row in rows.chunks_exact_mut(self.n_features()) {
            for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *x = (*x - m) / s;
            }
        }
        Ok(())
    }

    /// Undoes [`Standardizer::transform_rows`] in place: `x·std + mean`.
    ///
    /// # Errors
    /// [`CoreError::ShapeMismatch`](lastmile_core::CoreError::ShapeMismatch)
    /// (through [`DatasetError::Core`]) if `rows.len()` is not a multiple of
    /// [`Standardizer::n_features`]. No rows is fine.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::Standardizer;
    /// let s = Standardizer::fit_rows(&[0.0, 2.0], 1)?;
    /// let mut rows = [-1.0, 1.0];
    /// s.inverse_transform_rows(&mut rows)?;
    /// assert_eq!(rows, [0.0, 2.0]);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn inverse_transform_rows(&self, rows: &mut [f32]) -> Result<()> {
        check_rows("rows", rows.len(), self.n_features())?;
        for row in rows.chunks_exact_mut(self.n_features()) {
            for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *x = *x * s + m;
            }
        }
        Ok(())
    }

    fn check_features(&self, found: usize) -> Result<()> {
        if found == self.n_features() {
            Ok(())
        } else {
            Err(DatasetError::FeatureMismatch {
                what: "dataset to standardise".to_owned(),
                found,
                expected: self.n_features(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use lastmile_core::CoreError;

    use super::*;
    use crate::Location;

    #[test]
    fn errors() {
        assert!(matches!(
            Standardizer::fit_rows(&[], 3),
            Err(DatasetError::Core(CoreError::Empty { .. }))
        ));
        assert!(matches!(
            Standardizer::fit_rows(&[1.0, 2.0, 3.0], 2),
            Err(DatasetError::Core(CoreError::ShapeMismatch { .. }))
        ));
        assert!(matches!(
            Standardizer::fit_rows(&[1.0, 2.0, 3.0, f32::NAN], 2),
            Err(DatasetError::NonFinite {
                location: Location::Sample(1),
                feature: 1,
                ..
            })
        ));
        assert!(matches!(
            Standardizer::fit_rows(&[1.0], 0),
            Err(DatasetError::Core(CoreError::OutOfRange { ref name, .. })) if name == "n_features"
        ));
        let s = Standardizer::fit_rows(&[1.0, 2.0, 3.0, 4.0], 2).expect("valid");
        let mut iris = crate::iris().expect("iris");
        assert!(matches!(
            s.transform(&mut iris),
            Err(DatasetError::FeatureMismatch {
                found: 4,
                expected: 2,
                ..
            })
        ));
        let mut odd = [1.0f32; 3];
        assert!(matches!(
            s.transform_rows(&mut odd),
            Err(DatasetError::Core(CoreError::ShapeMismatch { .. }))
        ));
        assert!(matches!(
            s.inverse_transform_rows(&mut odd),
            Err(DatasetError::Core(CoreError::ShapeMismatch { .. }))
        ));
        // no rows: nothing to do, and no error
        s.transform_rows(&mut []).expect("0 rows");
        s.inverse_transform_rows(&mut []).expect("0 rows");
    }

    #[test]
    fn constant_feature_is_centred_not_scaled() {
        let rows = [0.1f32, 1.0, 0.1, 2.0, 0.1, 3.0];
        let s = Standardizer::fit_rows(&rows, 2).expect("valid");
        assert_eq!(s.scale()[0], 1.0);
        let mut copy = rows;
        s.transform_rows(&mut copy).expect("shape");
        assert!(copy.iter().step_by(2).all(|x| x.abs() < 1e-7));
    }
}
