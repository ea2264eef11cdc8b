//! Input validation shared by every lastmile crate, in two tiers.
//!
//! - **Host checks** (scalars, lengths, slices, indices): no device
//!   synchronisation. Call them at every public entry point.
//! - **Tensor checks** ([`check_finite`], [`check_logits`],
//!   [`check_probabilities`]): reduce on the device and read back **one**
//!   small tensor when the input is valid; only the error path reads more, to
//!   say where the fault is. Each function states its count, and the tests
//!   check it with [`host_reads`](crate::convert::host_reads).
//!
//! The kernels behind the public API come in a checked form (validates, then
//! computes) and an `_unchecked` form (computes only, no read-back) for inner
//! loops that validated once at their edge, e.g.
//! [`SamplingParams::probabilities`](crate::numerics::SamplingParams::probabilities)
//! and [`SamplingParams::probabilities_unchecked`](crate::numerics::SamplingParams::probabilities_unchecked).

use std::ops::Bound;

use burn::tensor::{Bool, Tensor};

use crate::convert::{bools_to_vec, tensor_to_vec};
use crate::error::{CoreError, Result};

// ---------------------------------------------------------------- host tier

/// Checks that `value` lies in the open interval (0, 1), as a miscoverage
/// level α must. Host only (no device synchronisation).
///
/// ```
/// use lastmile_core::validate::check_open_unit;
/// assert!(check_open_unit("alpha", 0.1).is_ok());
/// assert!(check_open_unit("alpha", 1.0).is_err());
/// assert!(check_open_unit("alpha", f64::NAN).is_err());
/// ```
pub fn check_open_unit(name: &str, value: f64) -> Result<f64> {
    check_interval(name, value, Bound::Excluded(0.0), Bound::Excluded(1.0))
}

/// Checks that `value` is finite and in the closed interval `[lo, hi]`.
/// Host only.
///
/// ```
/// use lastmile_core::validate::check_in_range;
/// assert!(check_in_range("top_p", 1.0, 0.0, 1.0).is_ok());
/// assert!(check_in_range("top_p", 1.5, 0.0, 1.0).is_err());
/// ```
pub fn check_in_range(name: &str, value: f64, lo: f64, hi: f64) -> Result<f64> {
    check_interval(name, value, Bound::Included(lo), Bound::Included(hi))
}

/// Checks that `value` is finite and lies between `lo` and `hi`, each bound
/// open, closed or absent. Host only.
///
/// ```
/// use std::ops::Bound::{Excluded, Included, Unbounded};
/// use lastmile_core::validate::check_interval;
/// assert!(check_interval("beta", 0.0, Included(0.0), Excluded(1.0)).is_ok());
/// assert!(check_interval("beta", 1.0, Included(0.0), Excluded(1.0)).is_err());
/// assert!(check_interval("eps", 7.0, Included(0.0), Unbounded).is_ok());
/// ```
pub fn check_interval(name: &str, value: f64, lo: Bound<f64>, hi: Bound<f64>) -> Result<f64> {
    let lo_ok = match lo {
        Bound::Included(l) => value >= l,
        Bound::Excluded(l) => value > l,
        Bound::Unbounded => true,
    };
    let hi_ok = match hi {
        Bound::Included(h) => value <= h,
        Bound::Excluded(h) => value < h,
        Bound::Unbounded => true,
    };
    if value.is_finite() && lo_ok && hi_ok {
        return Ok(value);
    }
    let open = match lo {
        Bound::Included(l) => format!("[{l}"),
        Bound::Excluded(l) => format!("({l}"),
        Bound::Unbounded => "(-inf".to_owned(),
    };
    let close = match hi {
        Bound::Included(h) => format!("{h}]"),
        Bound::Excluded(h) => format!("{h})"),
        Bound::Unbounded => "inf)".to_owned(),
    };
    Err(CoreError::out_of_range(
        name,
        value,
        &format!("a finite value in {open}, {close}"),
    ))
}

/// Checks that `value` is finite and strictly positive. Host only.
///
/// ```
/// use lastmile_core::validate::check_positive;
/// assert!(check_positive("lr", 1e-3).is_ok());
/// assert!(check_positive("lr", 0.0).is_err());
/// ```
pub fn check_positive(name: &str, value: f64) -> Result<f64> {
    check_interval(name, value, Bound::Excluded(0.0), Bound::Unbounded)
}

/// Checks that an integer parameter is at least `min`. Host only.
///
/// ```
/// use lastmile_core::validate::check_at_least;
/// assert_eq!(check_at_least("gamma", 3, 1).unwrap(), 3);
/// assert!(check_at_least("gamma", 0, 1).is_err());
/// ```
pub fn check_at_least(name: &str, value: usize, min: usize) -> Result<usize> {
    if value >= min {
        Ok(value)
    } else {
        Err(CoreError::out_of_range(
            name,
            value as f64,
            &format!("an integer >= {min}"),
        ))
    }
}

/// Checks that a collection of `len` elements is not empty. Host only.
///
/// ```
/// use lastmile_core::validate::check_not_empty;
/// assert!(check_not_empty("scores", 3).is_ok());
/// assert!(check_not_empty("scores", 0).is_err());
/// ```
pub fn check_not_empty(what: &str, len: usize) -> Result<()> {
    if len == 0 {
        return Err(CoreError::Empty {
            what: what.to_owned(),
            min: 1,
        });
    }
    Ok(())
}

/// Checks every element with [`check_interval`] (finite, between `lo` and
/// `hi`); the error names the first offending element as `what[i]`. Host
/// only; the happy path formats nothing.
///
/// ```
/// use std::ops::Bound::{Included, Unbounded};
/// use lastmile_core::validate::check_each_in;
/// assert!(check_each_in("losses", &[0.0f32, 0.5, 1.0], Included(0.0), Included(1.0)).is_ok());
/// assert!(check_each_in("scale", &[1.0f64, -2.0], Included(0.0), Unbounded).is_err());
/// ```
pub fn check_each_in<T: Copy + Into<f64>>(
    what: &str,
    values: &[T],
    lo: Bound<f64>,
    hi: Bound<f64>,
) -> Result<()> {
    match values
        .iter()
        .position(|&v| check_interval(what, v.into(), lo, hi).is_err())
    {
        None => Ok(()),
        Some(i) => check_interval(&format!("{what}[{i}]"), values[i].into(), lo, hi).map(drop),
    }
}

/// Checks that a length equals the one required. Host only.
///
/// ```
/// use lastmile_core::validate::check_len;
/// assert!(check_len("labels", 4, 4).is_ok());
/// assert!(check_len("labels", 3, 4).is_err());
/// ```
pub fn check_len(what: &str, found: usize, expected: usize) -> Result<()> {
    if found == expected {
        Ok(())
    } else {
        Err(CoreError::LengthMismatch {
            what: what.to_owned(),
            expected,
            found,
        })
    }
}

/// Checks a row-major buffer of `cols` columns: `cols ≥ 1`, at least one
/// row, and a length divisible by `cols`. Returns the number of rows. Host only.
///
/// ```
/// use lastmile_core::validate::check_matrix_len;
/// assert_eq!(check_matrix_len("features", 6, 3).unwrap(), 2);
/// assert!(check_matrix_len("features", 7, 3).is_err());
/// assert!(check_matrix_len("features", 0, 3).is_err());
/// ```
pub fn check_matrix_len(what: &str, len: usize, cols: usize) -> Result<usize> {
    if cols == 0 {
        return Err(CoreError::shape(what, "at least 1 column", &[len, 0]));
    }
    if len == 0 {
        return Err(CoreError::Empty {
            what: what.to_owned(),
            min: 1,
        });
    }
    if !len.is_multiple_of(cols) {
        return Err(CoreError::shape(
            what,
            format!("a length divisible by the column count {cols}"),
            &[len],
        ));
    }
    Ok(len / cols)
}

/// Checks that every index is `< bound` (labels, token ids, classes). Host only.
///
/// # Errors
/// [`CoreError::IndexOutOfRange`] naming the first offending position.
///
/// ```
/// use lastmile_core::validate::check_indices;
/// assert!(check_indices("labels", &[0, 2, 1], 3).is_ok());
/// assert!(check_indices("labels", &[0, 3], 3).is_err());
/// ```
pub fn check_indices(what: &str, indices: &[usize], bound: usize) -> Result<()> {
    match indices.iter().position(|&i| i >= bound) {
        None => Ok(()),
        Some(i) => Err(CoreError::IndexOutOfRange {
            what: format!("{what}[{i}]"),
            index: indices[i],
            bound,
        }),
    }
}

/// Checks that every element of `values` is finite. Host only.
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

/// Checks one host probability row: finite, non-negative, summing to 1
/// within `tolerance`. `row` is the row's index, used in the error. Host only.
///
/// ```
/// use lastmile_core::validate::check_probability_row;
/// assert!(check_probability_row("p", &[0.25f32, 0.75], 0, 1e-6).is_ok());
/// assert!(check_probability_row("p", &[0.5f64, 0.4], 3, 1e-6).is_err());
/// ```
#[inline]
pub fn check_probability_row<T: Copy + Into<f64>>(
    what: &str,
    values: &[T],
    row: usize,
    tolerance: f64,
) -> Result<()> {
    // Four partial sums break the add-latency chain; +inf makes a sum infinite.
    let mut acc = [0.0f64; 4];
    let mut bad = false;
    let chunks = values.chunks_exact(4);
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
        return Err(probability_row_error(what, values, row, sum, tolerance));
    }
    Ok(())
}

#[cold]
fn probability_row_error<T: Copy + Into<f64>>(
    what: &str,
    values: &[T],
    row: usize,
    sum: f64,
    tolerance: f64,
) -> CoreError {
    let classes = values.len();
    if let Some(j) = values.iter().position(|&p| !p.into().is_finite()) {
        return CoreError::NonFinite {
            what: what.to_owned(),
            index: row * classes + j,
            value: values[j].into(),
        };
    }
    let reason = match values.iter().position(|&p| p.into() < 0.0) {
        Some(j) => format!("entry {j} is negative ({})", values[j].into()),
        None => format!("sums to {sum}"),
    };
    CoreError::NotAProbability {
        what: what.to_owned(),
        row,
        reason,
        tolerance,
    }
}

/// Checks that a tensor has no zero-length dimension and returns its dims.
/// Shape only (no device synchronisation).
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

// -------------------------------------------------------------- tensor tier

/// Error path only: the flat index of the first `true` of a mask.
#[cold]
fn first_true<const D: usize>(mask: Tensor<D, Bool>) -> Result<usize> {
    bools_to_vec(mask)?
        .iter()
        .position(|b| *b)
        .ok_or_else(|| CoreError::TensorData("a flagged fault could not be located".to_owned()))
}

/// Error path only: the value at a flat index.
#[cold]
fn value_at<const D: usize>(tensor: &Tensor<D>, index: usize) -> Result<f64> {
    tensor_to_vec(tensor.clone())?
        .get(index)
        .map(|v| f64::from(*v))
        .ok_or_else(|| CoreError::TensorData(format!("index {index} out of bounds")))
}

/// Reads several boolean reductions back in one transfer.
fn any_of(flags: Vec<Tensor<1, Bool>>) -> Result<Vec<bool>> {
    let n = flags.len();
    let flags = bools_to_vec(Tensor::cat(flags, 0))?;
    if flags.len() != n {
        return Err(CoreError::TensorData(format!(
            "expected {n} flags, read {}",
            flags.len()
        )));
    }
    Ok(flags)
}

/// Checks that every element of a float tensor is finite.
///
/// Device synchronisations: 1 when valid (3 on the error path, to locate it).
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
    if !any_of(vec![bad.clone().any()])?[0] {
        return Ok(());
    }
    let index = first_true(bad)?;
    Err(CoreError::NonFinite {
        what: what.to_owned(),
        index,
        value: value_at(tensor, index)?,
    })
}

/// Checks that a `[batch, classes]` tensor holds logits: no NaN, no `+inf`,
/// and at least one finite entry per row (`-inf` entries mean "masked out").
///
/// Device synchronisations: 1 when valid (3 on the error path).
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
    let masked_rows = logits
        .clone()
        .max_dim(1)
        .equal_elem(f32::NEG_INFINITY)
        .reshape([-1]);
    let flags = any_of(vec![
        nan_or_pos_inf.clone().any(),
        masked_rows.clone().any(),
    ])?;
    if flags[0] {
        let index = first_true(nan_or_pos_inf)?;
        return Err(CoreError::NonFinite {
            what: what.to_owned(),
            index,
            value: value_at(logits, index)?,
        });
    }
    if flags[1] {
        return Err(CoreError::NotAProbability {
            what: what.to_owned(),
            row: first_true(masked_rows)?,
            reason: "every logit is -inf, so no class has positive probability".to_owned(),
            tolerance: 0.0,
        });
    }
    Ok(())
}

/// Checks that a `[batch, classes]` tensor holds probability rows: finite,
/// non-negative, each row summing to 1 within `tolerance`.
///
/// Device synchronisations: 1 when valid (2–3 on the error path).
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
    let non_finite = probs.clone().is_finite().bool_not();
    let negative = probs.clone().lower_elem(0.0);
    let off_sum = probs
        .clone()
        .sum_dim(1)
        .sub_scalar(1.0)
        .abs()
        .greater_elem(tolerance as f32)
        .reshape([-1]);
    let flags = any_of(vec![
        non_finite.clone().any(),
        negative.clone().any(),
        off_sum.clone().any(),
    ])?;
    if flags[0] {
        let index = first_true(non_finite)?;
        return Err(CoreError::NonFinite {
            what: what.to_owned(),
            index,
            value: value_at(probs, index)?,
        });
    }
    let [_, classes] = probs.dims();
    if flags[1] {
        let index = first_true(negative)?;
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
    if flags[2] {
        let row = first_true(off_sum)?;
        let sum = tensor_to_vec(probs.clone().sum_dim(1))?
            .get(row)
            .map_or(f64::NAN, |s| f64::from(*s));
        return Err(CoreError::NotAProbability {
            what: what.to_owned(),
            row,
            reason: format!("sums to {sum}"),
            tolerance,
        });
    }
    Ok(())
}
