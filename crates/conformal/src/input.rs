//! Validated views of probability matrices and labels, and the conversions
//! from burn tensors at the API boundary.
//!
//! Calibration and prediction are bookkeeping over host memory (sums,
//! selections, comparisons), so they run on host slices; tensors are read
//! back once at the boundary.

use burn::tensor::{Int, Tensor};
use lastmile_core::{
    CoreError,
    convert::{indices_to_vec, tensor_to_vec},
    numerics::softmax,
    validate::{check_logits, check_non_empty},
};

use crate::error::{Result, check_len};

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
    pub fn new(what: &str, data: &'a [T], classes: usize) -> Result<Self> {
        if classes == 0 {
            return Err(CoreError::shape(what, "n_classes >= 1", &[data.len(), 0]).into());
        }
        if data.is_empty() {
            return Err(CoreError::Empty {
                what: what.to_owned(),
                min: 1,
            }
            .into());
        }
        if !data.len().is_multiple_of(classes) {
            return Err(CoreError::shape(
                what,
                format!("a length divisible by n_classes = {classes}"),
                &[data.len()],
            )
            .into());
        }
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

/// Checks one probability row: finite, non-negative, summing to 1 within
/// `tolerance`. Returns the row sum.
#[inline]
pub(crate) fn check_row<T: Probability>(
    what: &str,
    row: &[T],
    index: usize,
    tolerance: f64,
) -> Result<()> {
    // Four partial sums break the add-latency chain; +inf makes a sum infinite.
    let mut acc = [0.0f64; 4];
    let mut bad = false;
    let chunks = row.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &p) in acc.iter_mut().zip(c) {
            let p: f64 = p.into();
            bad |= p.is_nan() || p < 0.0;
            *a += p;
        }
    }
    for &p in rest {
        let p: f64 = p.into();
        bad |= p.is_nan() || p < 0.0;
        acc[0] += p;
    }
    let sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    if bad || !sum.is_finite() || (sum - 1.0).abs() > tolerance {
        return Err(row_error(what, row, index, sum, tolerance));
    }
    Ok(())
}

#[cold]
fn row_error<T: Probability>(
    what: &str,
    row: &[T],
    index: usize,
    sum: f64,
    tolerance: f64,
) -> crate::ConformalError {
    let classes = row.len();
    if let Some(j) = row.iter().position(|&p| !p.into().is_finite()) {
        return CoreError::NonFinite {
            what: what.to_owned(),
            index: index * classes + j,
            value: row[j].into(),
        }
        .into();
    }
    let reason = match row.iter().position(|&p| p.into() < 0.0) {
        Some(j) => format!("entry {j} is negative ({})", row[j].into()),
        None => format!("sums to {sum}"),
    };
    CoreError::NotAProbability {
        what: what.to_owned(),
        row: index,
        reason,
        tolerance,
    }
    .into()
}

/// Checks labels against the number of rows and classes.
pub(crate) fn check_labels(labels: &[usize], rows: usize, classes: usize) -> Result<()> {
    check_len("labels", labels.len(), rows)?;
    match labels.iter().position(|&y| y >= classes) {
        None => Ok(()),
        Some(i) => Err(CoreError::IndexOutOfRange {
            what: format!("labels[{i}]"),
            index: labels[i],
            bound: classes,
        }
        .into()),
    }
}

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
