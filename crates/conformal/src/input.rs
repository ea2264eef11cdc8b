//! Validated views of probability matrices and labels, and the conversions
//! from burn tensors at the API boundary.
//!
//! Calibration and prediction are bookkeeping over host memory (sums,
//! selections, comparisons), so they run on host slices; tensors are read
//! back once at the boundary. Every check is one of
//! [`lastmile_core::validate`]'s; the helpers here only combine them.

use burn::tensor::{Int, Tensor};
use lastmile_core::{
    CoreError,
    convert::{indices_to_vec, tensor_to_vec},
    numerics::softmax,
    validate::{check_indices, check_len, check_logits, check_matrix_len, check_non_empty},
};

use crate::error::Result;

/// Default tolerance on probability row sums (`|Σ_j p_j − 1| ≤ 1e-3`), as in
/// [`lastmile_core::numerics::PROBABILITY_SUM_TOLERANCE`].
pub const DEFAULT_SUM_TOLERANCE: f64 = lastmile_core::numerics::PROBABILITY_SUM_TOLERANCE;

/// A floating-point probability type accepted by the slice entry points
/// (`f32` or `f64`); arithmetic is done in `f64`.
pub trait Probability: Copy + Into<f64> + PartialOrd + Send + Sync + 'static {}
impl Probability for f32 {}
impl Probability for f64 {}

/// A borrowed, shape-checked `[rows, classes]` row-major matrix.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rows<'a, T> {
    pub data: &'a [T],
    pub classes: usize,
}

impl<'a, T: Probability> Rows<'a, T> {
    /// Checks a row-major `[rows, classes]` buffer: `classes ≥ 1`, at least
    /// one row, a length divisible by `classes` ([`check_matrix_len`]).
    pub fn new(what: &str, data: &'a [T], classes: usize) -> Result<Self> {
        check_matrix_len(what, data.len(), classes)?;
        Ok(Self { data, classes })
    }

    /// Test-time rows, which must have the class count seen at calibration.
    pub fn for_test(data: &'a [T], classes: usize, calibrated: usize) -> Result<Self> {
        if classes != calibrated {
            return Err(CoreError::shape(
                "test probabilities",
                format!("{calibrated} classes, as at calibration"),
                &[data.len() / classes.max(1), classes],
            )
            .into());
        }
        Self::new("test probabilities", data, classes)
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.classes
    }

    pub fn row(&self, i: usize) -> &'a [T] {
        &self.data[i * self.classes..(i + 1) * self.classes]
    }
}

/// Checks labels against the number of rows and classes: one label per row
/// ([`CoreError::LengthMismatch`]), each `< classes`
/// ([`CoreError::IndexOutOfRange`] naming `labels[i]`).
pub(crate) fn check_labels(labels: &[usize], rows: usize, classes: usize) -> Result<(), CoreError> {
    check_len("labels", labels.len(), rows)?;
    check_indices("labels", labels, classes)
}

pub(crate) use lastmile_core::validate::{check_each_in, check_not_empty};

/// Reads a `[batch, classes]` probability tensor back to the host.
///
/// Validation of the rows happens in the slice entry points (fused with the
/// work), so this only checks the shape.
///
/// # Errors
/// [`CoreError::ShapeMismatch`] for an empty tensor, [`CoreError::TensorData`]
/// if it cannot be read as `f32`.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// let t = Tensor::<2>::from_floats([[0.2, 0.8], [0.5, 0.5]], &Device::flex());
/// let (data, classes) = lastmile_conformal::probabilities_to_host(t).unwrap();
/// assert_eq!((data.len(), classes), (4, 2));
/// # }
/// ```
pub fn probabilities_to_host(probs: Tensor<2>) -> Result<(Vec<f32>, usize)> {
    let [_, classes] = check_non_empty("probabilities", &probs)?;
    Ok((tensor_to_vec(probs)?, classes))
}

/// Turns a `[batch, classes]` logit tensor into host probabilities
/// (`softmax` on the device, then one read-back).
///
/// # Errors
/// [`CoreError::NonFinite`] / [`CoreError::NotAProbability`] for NaN, `+∞`
/// or fully masked rows; [`CoreError::ShapeMismatch`] for an empty tensor.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// let t = Tensor::<2>::from_floats([[0.0, 0.0]], &Device::flex());
/// let (p, _) = lastmile_conformal::logits_to_host_probabilities(t).unwrap();
/// assert!((p[0] - 0.5).abs() < 1e-6);
/// # }
/// ```
pub fn logits_to_host_probabilities(logits: Tensor<2>) -> Result<(Vec<f32>, usize)> {
    check_logits("logits", &logits)?;
    probabilities_to_host(softmax(logits, 1.0)?)
}

/// Reads a label tensor back as `usize` indices.
///
/// # Errors
/// [`CoreError::TensorData`] for a negative label or unreadable data.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Int, Tensor};
/// let t = Tensor::<1, Int>::from_ints([2, 0], &Device::flex());
/// assert_eq!(lastmile_conformal::labels_to_host(t).unwrap(), vec![2, 0]);
/// # }
/// ```
pub fn labels_to_host(labels: Tensor<1, Int>) -> Result<Vec<usize>> {
    Ok(indices_to_vec(labels)?)
}
