//! Input validation shared by every lastmile crate.
//!
//! Host-side checks on scalars and slices are free; tensor checks reduce on the
//! device and read back a handful of numbers (one synchronisation), so they
//! are cheap next to the work they guard.

use burn::tensor::{Bool, Tensor};

use crate::error::{CoreError, Result};

/// Checks that `value` lies in the open interval (0, 1), as a miscoverage
/// level α must.
///
/// ```
/// use lastmile_core::validate::check_open_unit;
/// assert!(check_open_unit("alpha", 0.1).is_ok());
/// assert!(check_open_unit("alpha", 1.0).is_err());
/// assert!(check_open_unit("alpha", f64::NAN).is_err());
/// ```
pub fn check_open_unit(name: &str, value: f64) -> Result<f64> {
    if value.is_finite() && value > 0.0 && value < 1.0 {
        Ok(value)
    } else {
        Err(CoreError::out_of_range(
            name,
            value,
            "a value in the open interval (0, 1)",
        ))
    }
}

/// Checks that `value` is finite and in the closed interval `[lo, hi]`.
///
/// ```
/// use lastmile_core::validate::check_in_range;
/// assert!(check_in_range("top_p", 1.0, 0.0, 1.0).is_ok());
/// assert!(check_in_range("top_p", 1.5, 0.0, 1.0).is_err());
/// ```
pub fn check_in_range(name: &str, value: f64, lo: f64, hi: f64) -> Result<f64> {
    if value.is_finite() && value >= lo && value <= hi {
        Ok(value)
    } else {
        Err(CoreError::out_of_range(
            name,
            value,
            &format!("a finite value in [{lo}, {hi}]"),
        ))
    }
}

/// Checks that `value` is finite and strictly positive.
///
/// ```
/// use lastmile_core::validate::check_positive;
/// assert!(check_positive("lr", 1e-3).is_ok());
/// assert!(check_positive("lr", 0.0).is_err());
/// ```
pub fn check_positive(name: &str, value: f64) -> Result<f64> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(CoreError::out_of_range(name, value, "a finite value > 0"))
    }
}

/// Checks that every element of `values` is finite.
///
/// ```
/// use lastmile_core::validate::check_finite_slice;
/// assert!(check_finite_slice("x", &[1.0f32, 2.0]).is_ok());
/// assert!(check_finite_slice("x", &[1.0f32, f32::NAN]).is_err());
/// ```
pub fn check_finite_slice<T: Copy + Into<f64>>(what: &str, values: &[T]) -> Result<()> {
    match values.iter().position(|v| !(*v).into().is_finite()) {
        None => Ok(()),
        Some(index) => Err(CoreError::NonFinite {
            what: what.to_owned(),
            index,
            value: values[index].into(),
        }),
    }
}

/// Checks that a tensor has no zero-length dimension and returns its dims.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Tensor, Device};
/// use lastmile_core::validate::check_non_empty;
/// let t = Tensor::<2>::zeros([2, 3], &Device::flex());
/// assert_eq!(check_non_empty("x", &t).unwrap(), [2, 3]);
/// # }
/// ```
pub fn check_non_empty<const D: usize>(what: &str, tensor: &Tensor<D>) -> Result<[usize; D]> {
    let dims = tensor.dims();
    if dims.contains(&0) {
        return Err(CoreError::shape(what, "every dimension > 0", &dims));
    }
    Ok(dims)
}

/// Index of the first `true` in a boolean tensor (flattened), if any.
fn first_true<const D: usize>(mask: Tensor<D, Bool>) -> Result<Option<usize>> {
    let any = mask.clone().any().into_data();
    let any = any
        .iter::<bool>()
        .next()
        .ok_or_else(|| CoreError::TensorData("empty reduction".to_owned()))?;
    if !any {
        return Ok(None);
    }
    // Only on the error path: find where.
    let data = mask.into_data();
    Ok(data.iter::<bool>().position(|b| b))
}

/// Checks that every element of a float tensor is finite (one device sync).
///
/// # Errors
/// [`CoreError::NonFinite`] naming the first offending flat index.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Tensor, Device};
/// use lastmile_core::validate::check_finite;
/// let d = Device::flex();
/// assert!(check_finite("x", &Tensor::<1>::from_floats([1.0, 2.0], &d)).is_ok());
/// assert!(check_finite("x", &Tensor::<1>::from_floats([1.0, f32::INFINITY], &d)).is_err());
/// # }
/// ```
pub fn check_finite<const D: usize>(what: &str, tensor: &Tensor<D>) -> Result<()> {
    let bad = tensor.clone().is_finite().bool_not();
    match first_true(bad)? {
        None => Ok(()),
        Some(index) => Err(CoreError::NonFinite {
            what: what.to_owned(),
            index,
            value: value_at(tensor, index)?,
        }),
    }
}

fn value_at<const D: usize>(tensor: &Tensor<D>, index: usize) -> Result<f64> {
    let data = tensor.clone().into_data();
    data.iter::<f64>()
        .nth(index)
        .ok_or_else(|| CoreError::TensorData(format!("index {index} out of bounds")))
}

/// Checks that a `[batch, classes]` tensor holds logits: no NaN, no `+inf`,
/// and at least one finite entry per row (`-inf` entries mean "masked out").
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Tensor, Device};
/// use lastmile_core::validate::check_logits;
/// let d = Device::flex();
/// let ok = Tensor::<2>::from_floats([[0.0, f32::NEG_INFINITY]], &d);
/// assert!(check_logits("logits", &ok).is_ok());
/// let all_masked = Tensor::<2>::from_floats([[f32::NEG_INFINITY, f32::NEG_INFINITY]], &d);
/// assert!(check_logits("logits", &all_masked).is_err());
/// # }
/// ```
pub fn check_logits(what: &str, logits: &Tensor<2>) -> Result<()> {
    check_non_empty(what, logits)?;
    let nan_or_pos_inf = logits
        .clone()
        .is_nan()
        .bool_or(logits.clone().equal_elem(f32::INFINITY));
    if let Some(index) = first_true(nan_or_pos_inf)? {
        return Err(CoreError::NonFinite {
            what: what.to_owned(),
            index,
            value: value_at(logits, index)?,
        });
    }
    let row_max = logits.clone().max_dim(1);
    if let Some(row) = first_true(row_max.equal_elem(f32::NEG_INFINITY))? {
        return Err(CoreError::NotAProbability {
            what: what.to_owned(),
            row,
            reason: "every logit is -inf, so no class has positive probability".to_owned(),
            tolerance: 0.0,
        });
    }
    Ok(())
}

/// Checks that a `[batch, classes]` tensor holds probability rows: finite,
/// non-negative, each row summing to 1 within `tolerance`.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Tensor, Device};
/// use lastmile_core::validate::check_probabilities;
/// let d = Device::flex();
/// let p = Tensor::<2>::from_floats([[0.25, 0.75], [1.0, 0.0]], &d);
/// assert!(check_probabilities("p", &p, 1e-4).is_ok());
/// let bad = Tensor::<2>::from_floats([[0.5, 0.4]], &d);
/// assert!(check_probabilities("p", &bad, 1e-4).is_err());
/// # }
/// ```
pub fn check_probabilities(what: &str, probs: &Tensor<2>, tolerance: f64) -> Result<()> {
    check_non_empty(what, probs)?;
    check_finite(what, probs)?;
    let [_, classes] = probs.dims();
    if let Some(index) = first_true(probs.clone().lower_elem(0.0))? {
        return Err(CoreError::NotAProbability {
            what: what.to_owned(),
            row: index / classes,
            reason: format!(
                "entry {} is negative ({})",
                index % classes,
                value_at(probs, index)?
            ),
            tolerance,
        });
    }
    let sums = probs.clone().sum_dim(1).into_data();
    for (row, sum) in sums.iter::<f64>().enumerate() {
        if (sum - 1.0).abs() > tolerance {
            return Err(CoreError::NotAProbability {
                what: what.to_owned(),
                row,
                reason: format!("sums to {sum}"),
                tolerance,
            });
        }
    }
    Ok(())
}
