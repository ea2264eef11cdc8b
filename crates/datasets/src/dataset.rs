//! The in-memory [`Dataset`] (row-major features plus typed targets) and its
//! conversion to burn tensors.

use burn::prelude::{Device, Int, Tensor, TensorData};
use lastmile_core::{
    CoreError,
    validate::{check_at_least, check_finite_slice, check_indices, check_len, check_matrix_len},
};

use crate::error::{DatasetError, Location, Result};

/// The targets of a dataset: class labels or real values.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// Classification: one label per sample, each `< n_classes`.
    Classes {
        /// One class index per sample.
        labels: Vec<usize>,
        /// Number of classes.
        n_classes: usize,
        /// A name per class (`class_names.len() == n_classes`).
        class_names: Vec<String>,
    },
    /// Regression: one real value per sample.
    Values(Vec<f32>),
}

impl Targets {
    /// Class labels with the names `"0"`, `"1"`, ... for the `n_classes` classes.
    ///
    /// Labels are checked when the targets are put into a [`Dataset`].
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::Targets;
    /// let t = Targets::classes(vec![0, 1, 1], 2);
    /// assert_eq!(t.len(), 3);
    /// ```
    pub fn classes(labels: Vec<usize>, n_classes: usize) -> Self {
        Self::Classes {
            labels,
            n_classes,
            class_names: (0..n_classes).map(|c| c.to_string()).collect(),
        }
    }

    /// Number of samples the targets describe.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::Targets;
    /// assert_eq!(Targets::Values(vec![1.0, 2.5]).len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        match self {
            Self::Classes { labels, .. } => labels.len(),
            Self::Values(values) => values.len(),
        }
    }

    /// Whether there are no targets.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::Targets;
    /// assert!(Targets::Values(vec![]).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `"class labels"` or `"real values"`, as used in error messages.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::Targets;
    /// assert_eq!(Targets::Values(vec![]).kind(), "real values");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Classes { .. } => CLASSES,
            Self::Values(_) => VALUES,
        }
    }

    fn select(&self, indices: &[usize]) -> Self {
        match self {
            Self::Classes {
                labels,
                n_classes,
                class_names,
            } => Self::Classes {
                labels: indices.iter().map(|&i| labels[i]).collect(),
                n_classes: *n_classes,
                class_names: class_names.clone(),
            },
            Self::Values(values) => Self::Values(indices.iter().map(|&i| values[i]).collect()),
        }
    }
}

const CLASSES: &str = "class labels";
const VALUES: &str = "real values";

/// A tabular dataset: `n_samples × n_features` row-major `f32` features and
/// one target per sample.
///
/// The fields are private so that the invariants checked by [`Dataset::new`]
/// (consistent lengths, finite features and values, labels `< n_classes`)
/// always hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    name: String,
    features: Vec<f32>,
    n_samples: usize,
    n_features: usize,
    targets: Targets,
}

impl Dataset {
    /// Builds a dataset from row-major features and targets, checking them.
    ///
    /// # Arguments
    /// * `name` - a short name, e.g. `"iris"`.
    /// * `features` - `n_samples * n_features` values, row-major.
    /// * `n_features` - number of features per sample (`> 0`).
    /// * `targets` - one target per sample.
    ///
    /// # Errors
    /// * [`CoreError::OutOfRange`] if `n_features == 0` or a classification
    ///   target has `n_classes == 0`.
    /// * [`CoreError::ShapeMismatch`] if `features.len()` is not a multiple
    ///   of `n_features`.
    /// * [`CoreError::LengthMismatch`] if there is not one target per sample
    ///   or not one class name per class.
    /// * [`DatasetError::NonFinite`] if a feature or target value is NaN or
    ///   infinite (naming the sample and the feature).
    /// * [`CoreError::IndexOutOfRange`] if a label is `>= n_classes` (naming
    ///   it as `labels[i]`).
    ///
    /// All but `NonFinite` come through [`DatasetError::Core`].
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::{Dataset, Targets};
    /// let ds = Dataset::new("toy", vec![0.0, 1.0, 2.0, 3.0], 2, Targets::classes(vec![0, 1], 2))?;
    /// assert_eq!((ds.n_samples(), ds.n_features()), (2, 2));
    /// assert_eq!(ds.row(1), &[2.0, 3.0]);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn new(
        name: impl Into<String>,
        features: Vec<f32>,
        n_features: usize,
        targets: Targets,
    ) -> Result<Self> {
        check_at_least("n_features", n_features, 1)?;
        let n_samples = check_rows("features", features.len(), n_features)?;
        check_len("targets (one per sample)", targets.len(), n_samples)?;
        check_finite("features", &features, n_features)?;
        match &targets {
            Targets::Classes {
                labels,
                n_classes,
                class_names,
            } => {
                check_at_least("n_classes", *n_classes, 1)?;
                check_len("class_names (one per class)", class_names.len(), *n_classes)?;
                check_indices("labels", labels, *n_classes)?;
            }
            Targets::Values(values) => check_finite("target values", values, 1)?,
        }
        Ok(Self {
            name: name.into(),
            features,
            n_samples,
            n_features,
            targets,
        })
    }

    /// Returns the dataset with another name.
    ///
    /// # Examples
    /// ```
    /// let ds = lastmile_datasets::iris()?.with_name("flowers");
    /// assert_eq!(ds.name(), "flowers");
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The dataset's name.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(lastmile_datasets::wine()?.name(), "wine");
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// All features, row-major (`n_samples * n_features` values).
    ///
    /// # Examples
    /// ```
    /// let ds = lastmile_datasets::iris()?;
    /// assert_eq!(&ds.features()[..4], &[5.1, 3.5, 1.4, 0.2]);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn features(&self) -> &[f32] {
        &self.features
    }

    /// Consumes the dataset and returns its row-major features.
    ///
    /// # Examples
    /// ```
    /// let features = lastmile_datasets::iris()?.into_features();
    /// assert_eq!(features.len(), 150 * 4);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn into_features(self) -> Vec<f32> {
        self.features
    }

    /// Mutable row-major features, for in-place preprocessing inside the crate.
    pub(crate) fn features_mut(&mut self) -> &mut [f32] {
        &mut self.features
    }

    /// Number of samples (rows).
    ///
    /// # Examples
    /// ```
    /// assert_eq!(lastmile_datasets::iris()?.n_samples(), 150);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn n_samples(&self) -> usize {
        self.n_samples
    }

    /// Number of features (columns).
    ///
    /// # Examples
    /// ```
    /// assert_eq!(lastmile_datasets::iris()?.n_features(), 4);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Whether the dataset has no samples.
    ///
    /// # Examples
    /// ```
    /// let ds = lastmile_datasets::iris()?;
    /// assert!(ds.subset(&[])?.is_empty());
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.n_samples == 0
    }

    /// The features of sample `index`.
    ///
    /// # Panics
    /// If `index >= n_samples`.
    ///
    /// # Examples
    /// ```
    /// let ds = lastmile_datasets::iris()?;
    /// assert_eq!(ds.row(149), &[5.9, 3.0, 5.1, 1.8]);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn row(&self, index: usize) -> &[f32] {
        &self.features[index * self.n_features..(index + 1) * self.n_features]
    }

    /// The targets.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::Targets;
    /// let ds = lastmile_datasets::diabetes()?;
    /// assert!(matches!(ds.targets(), Targets::Values(_)));
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// The class labels, or `None` for a regression dataset.
    ///
    /// # Examples
    /// ```
    /// let ds = lastmile_datasets::iris()?;
    /// assert_eq!(ds.labels().map(|l| l[0]), Some(0));
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn labels(&self) -> Option<&[usize]> {
        match &self.targets {
            Targets::Classes { labels, .. } => Some(labels),
            Targets::Values(_) => None,
        }
    }

    /// The number of classes, or `None` for a regression dataset.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(lastmile_datasets::digits()?.n_classes(), Some(10));
    /// assert_eq!(lastmile_datasets::diabetes()?.n_classes(), None);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn n_classes(&self) -> Option<usize> {
        match &self.targets {
            Targets::Classes { n_classes, .. } => Some(*n_classes),
            Targets::Values(_) => None,
        }
    }

    /// The class names, or `None` for a regression dataset.
    ///
    /// # Examples
    /// ```
    /// let ds = lastmile_datasets::breast_cancer()?;
    /// assert_eq!(ds.class_names(), Some(&["malignant".to_string(), "benign".to_string()][..]));
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn class_names(&self) -> Option<&[String]> {
        match &self.targets {
            Targets::Classes { class_names, .. } => Some(class_names),
            Targets::Values(_) => None,
        }
    }

    /// The regression targets, or `None` for a classification dataset.
    ///
    /// # Examples
    /// ```
    /// let ds = lastmile_datasets::diabetes()?;
    /// assert_eq!(ds.values().map(|v| v[0]), Some(151.0));
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn values(&self) -> Option<&[f32]> {
        match &self.targets {
            Targets::Classes { .. } => None,
            Targets::Values(values) => Some(values),
        }
    }

    /// Number of samples per class, or `None` for a regression dataset.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(lastmile_datasets::iris()?.class_counts(), Some(vec![50, 50, 50]));
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn class_counts(&self) -> Option<Vec<usize>> {
        match &self.targets {
            Targets::Classes {
                labels, n_classes, ..
            } => {
                let mut counts = vec![0; *n_classes];
                for &label in labels {
                    counts[label] += 1;
                }
                Some(counts)
            }
            Targets::Values(_) => None,
        }
    }

    /// A new dataset holding the samples at `indices`, in that order
    /// (indices may repeat).
    ///
    /// # Errors
    /// [`CoreError::IndexOutOfRange`] (through [`DatasetError::Core`]) if an
    /// index is `>= n_samples`, naming it as `indices[i]`.
    ///
    /// # Examples
    /// ```
    /// let ds = lastmile_datasets::iris()?;
    /// let sub = ds.subset(&[149, 0])?;
    /// assert_eq!(sub.n_samples(), 2);
    /// assert_eq!(sub.row(1), ds.row(0));
    /// assert_eq!(sub.labels(), Some(&[2, 0][..]));
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn subset(&self, indices: &[usize]) -> Result<Self> {
        check_indices("indices", indices, self.n_samples)?;
        let mut features = Vec::with_capacity(indices.len() * self.n_features);
        for &i in indices {
            features.extend_from_slice(self.row(i));
        }
        Ok(Self {
            name: self.name.clone(),
            features,
            n_samples: indices.len(),
            n_features: self.n_features,
            targets: self.targets.select(indices),
        })
    }

    /// The features as a `[n_samples, n_features]` float tensor on `device`.
    ///
    /// # Shapes
    /// Returns `[n_samples, n_features]`.
    ///
    /// # Examples
    /// ```
    /// use burn::prelude::Device;
    /// let ds = lastmile_datasets::iris()?;
    /// let x = ds.features_tensor(&Device::flex());
    /// assert_eq!(x.dims(), [150, 4]);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn features_tensor(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(self.features.clone(), [self.n_samples, self.n_features]),
            device,
        )
    }

    /// The class labels as a `[n_samples]` integer tensor on `device`.
    ///
    /// The integer dtype is the backend's (I32 on flex and wgpu, I64 on
    /// ndarray); read it back with `try_to_vec_as::<i64>()`.
    ///
    /// # Errors
    /// [`DatasetError::TargetKind`] for a regression dataset.
    ///
    /// # Examples
    /// ```
    /// use burn::prelude::Device;
    /// let ds = lastmile_datasets::iris()?;
    /// let y = ds.labels_tensor(&Device::flex())?;
    /// assert_eq!(y.dims(), [150]);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn labels_tensor(&self, device: &Device) -> Result<Tensor<1, Int>> {
        let labels = self.labels().ok_or(DatasetError::TargetKind {
            found: VALUES,
            expected: CLASSES,
        })?;
        let labels: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
        Ok(Tensor::from_data(
            TensorData::new(labels, [self.n_samples]),
            device,
        ))
    }

    /// The regression targets as a `[n_samples]` float tensor on `device`.
    ///
    /// # Errors
    /// [`DatasetError::TargetKind`] for a classification dataset.
    ///
    /// # Examples
    /// ```
    /// use burn::prelude::Device;
    /// let ds = lastmile_datasets::diabetes()?;
    /// let y = ds.targets_tensor(&Device::flex())?;
    /// assert_eq!(y.dims(), [442]);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn targets_tensor(&self, device: &Device) -> Result<Tensor<1>> {
        let values = self.values().ok_or(DatasetError::TargetKind {
            found: CLASSES,
            expected: VALUES,
        })?;
        Ok(Tensor::from_data(
            TensorData::new(values.to_vec(), [self.n_samples]),
            device,
        ))
    }
}

/// The number of rows of a row-major buffer of `n_features` columns, by
/// core's [`check_matrix_len`]; unlike there, an empty buffer is a valid
/// matrix of 0 rows (subsets and split parts may be empty).
///
/// # Errors
/// [`CoreError::ShapeMismatch`] if `n_features == 0` or `len` is not a
/// multiple of it.
pub(crate) fn check_rows(what: &str, len: usize, n_features: usize) -> Result<usize> {
    if len == 0 && n_features > 0 {
        return Ok(0);
    }
    Ok(check_matrix_len(what, len, n_features)?)
}

/// Core's [`check_finite_slice`] on a row-major buffer, with the flat index
/// of the first NaN/±∞ turned into a sample and a feature.
pub(crate) fn check_finite(what: &str, values: &[f32], n_features: usize) -> Result<()> {
    match check_finite_slice(what, values) {
        Ok(()) => Ok(()),
        Err(CoreError::NonFinite { what, index, value }) => {
            let n_features = n_features.max(1);
            Err(DatasetError::NonFinite {
                what,
                location: Location::Sample(index / n_features),
                feature: index % n_features,
                value,
            })
        }
        Err(other) => Err(other.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(r: Result<Dataset>) -> CoreError {
        match r {
            Err(DatasetError::Core(e)) => e,
            other => panic!("expected a CoreError, got {other:?}"),
        }
    }

    #[test]
    fn new_rejects_each_bad_input_with_its_error() {
        let classes = |labels: Vec<usize>| Targets::classes(labels, 2);
        let e = core(Dataset::new("t", vec![1.0; 4], 0, classes(vec![0])));
        assert!(matches!(e, CoreError::OutOfRange { ref name, .. } if name == "n_features"));
        let e = core(Dataset::new("t", vec![1.0; 5], 2, classes(vec![0, 1])));
        assert!(matches!(e, CoreError::ShapeMismatch { ref found, .. } if found == &[5]));
        let e = core(Dataset::new("t", vec![1.0; 4], 2, classes(vec![0])));
        assert!(matches!(
            e,
            CoreError::LengthMismatch {
                expected: 2,
                found: 1,
                ..
            }
        ));
        let e = core(Dataset::new("t", vec![1.0; 4], 2, classes(vec![0, 2])));
        assert!(matches!(
            e,
            CoreError::IndexOutOfRange { ref what, index: 2, bound: 2 } if what == "labels[1]"
        ));
        let no_classes = Targets::classes(vec![0, 0], 0);
        let e = core(Dataset::new("t", vec![1.0; 4], 2, no_classes));
        assert!(matches!(e, CoreError::OutOfRange { ref name, .. } if name == "n_classes"));
        let one_name = Targets::Classes {
            labels: vec![0, 1],
            n_classes: 2,
            class_names: vec!["a".to_owned()],
        };
        let e = core(Dataset::new("t", vec![1.0; 4], 2, one_name));
        assert!(matches!(
            e,
            CoreError::LengthMismatch {
                expected: 2,
                found: 1,
                ..
            }
        ));
    }

    #[test]
    fn non_finite_values_name_sample_and_feature() {
        let mut features = vec![0.0f32; 12];
        features[7] = f32::NAN;
        let r = Dataset::new("t", features, 3, Targets::Values(vec![0.0; 4]));
        assert!(
            matches!(
                r,
                Err(DatasetError::NonFinite {
                    location: Location::Sample(2),
                    feature: 1,
                    ..
                })
            ),
            "{r:?}"
        );
        let r = Dataset::new(
            "t",
            vec![0.0; 2],
            1,
            Targets::Values(vec![0.0, f32::INFINITY]),
        );
        assert!(
            matches!(
                r,
                Err(DatasetError::NonFinite {
                    location: Location::Sample(1),
                    feature: 0,
                    value: f64::INFINITY,
                    ..
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn empty_datasets_are_valid() {
        let ds = Dataset::new("t", vec![], 3, Targets::Values(vec![])).expect("0 rows");
        assert!(ds.is_empty());
        assert_eq!(check_rows("rows", 0, 3).expect("0 rows"), 0);
        assert!(matches!(
            check_rows("rows", 0, 0),
            Err(DatasetError::Core(CoreError::ShapeMismatch { .. }))
        ));
    }
}
