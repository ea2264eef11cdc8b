//! Tensor ⇄ host `Vec` conversions with checked shapes.
//!
//! burn's integer dtype differs by backend (I32 on flex and wgpu, I64 on
//! ndarray); these helpers read indices whatever the dtype.
//!
//! Every device → host read of lastmile-core goes through this module (or
//! [`crate::host`]'s in-place kernels) and is counted per thread ([`host_reads`]).

use std::cell::Cell;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::error::{CoreError, Result};

/// Builds a float tensor from row-major `data` and a `shape`.
///
/// # Errors
/// [`CoreError::ShapeMismatch`] when `data.len()` is not the product of `shape`.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_core::convert::{tensor_from_vec, tensor_to_vec};
/// let d = Device::flex();
/// let t = tensor_from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3], &d).unwrap();
/// assert_eq!(t.dims(), [2, 3]);
/// assert_eq!(tensor_to_vec(t).unwrap()[5], 6.0);
/// assert!(tensor_from_vec(vec![1.0; 5], [2, 3], &d).is_err());
/// # }
/// ```
pub fn tensor_from_vec<const D: usize>(
    data: Vec<f32>,
    shape: [usize; D],
    device: &Device,
) -> Result<Tensor<D>> {
    let expected = checked_numel(&shape)?;
    if data.len() != expected {
        return Err(CoreError::ShapeMismatch {
            what: "tensor data".to_owned(),
            expected: format!("{expected} values for shape {shape:?}"),
            found: vec![data.len()],
        });
    }
    Ok(Tensor::from_data(TensorData::new(data, shape), device))
}

/// Builds an integer tensor from indices and a `shape`.
///
/// # Errors
/// [`CoreError::ShapeMismatch`] when the length does not match `shape`;
/// [`CoreError::OutOfRange`] for an index that does not fit in `i64`.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_core::convert::{int_tensor_from_indices, indices_to_vec};
/// let d = Device::flex();
/// let t = int_tensor_from_indices(&[3, 1, 2], [3], &d).unwrap();
/// assert_eq!(indices_to_vec(t).unwrap(), vec![3, 1, 2]);
/// # }
/// ```
pub fn int_tensor_from_indices<const D: usize>(
    indices: &[usize],
    shape: [usize; D],
    device: &Device,
) -> Result<Tensor<D, Int>> {
    let expected = checked_numel(&shape)?;
    if indices.len() != expected {
        return Err(CoreError::ShapeMismatch {
            what: "index data".to_owned(),
            expected: format!("{expected} indices for shape {shape:?}"),
            found: vec![indices.len()],
        });
    }
    let values = indices
        .iter()
        .map(|&i| {
            i64::try_from(i)
                .map_err(|_| CoreError::out_of_range("index", i as f64, "an index < 2^63"))
        })
        .collect::<Result<Vec<i64>>>()?;
    Ok(Tensor::from_data(TensorData::new(values, shape), device))
}

/// Reads a float tensor back to the host as row-major `f32`.
///
/// # Errors
/// [`CoreError::TensorData`] if the backend cannot convert its data to `f32`.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// let t = Tensor::<1>::from_floats([1.5, 2.5], &Device::flex());
/// assert_eq!(lastmile_core::convert::tensor_to_vec(t).unwrap(), vec![1.5, 2.5]);
/// # }
/// ```
pub fn tensor_to_vec<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>> {
    count_host_read();
    tensor
        .into_data()
        .try_to_vec_as::<f32>()
        .map_err(|e| CoreError::TensorData(format!("cannot read float tensor as f32: {e:?}")))
}

/// Reads an integer tensor back as `usize` indices.
///
/// # Errors
/// [`CoreError::TensorData`] if the data cannot be read, or an entry is negative.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Int, Tensor};
/// let t = Tensor::<1, Int>::from_ints([4, 0, 2], &Device::flex());
/// assert_eq!(lastmile_core::convert::indices_to_vec(t).unwrap(), vec![4, 0, 2]);
/// # }
/// ```
pub fn indices_to_vec<const D: usize>(tensor: Tensor<D, Int>) -> Result<Vec<usize>> {
    count_host_read();
    let values = tensor
        .into_data()
        .try_to_vec_as::<i64>()
        .map_err(|e| CoreError::TensorData(format!("cannot read int tensor as i64: {e:?}")))?;
    values
        .into_iter()
        .map(|v| {
            usize::try_from(v).map_err(|_| {
                CoreError::TensorData(format!("expected a non-negative index, found {v}"))
            })
        })
        .collect()
}

/// Reads a boolean tensor back to the host (one device synchronisation).
///
/// # Errors
/// [`CoreError::TensorData`] if the data cannot be read as booleans.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// let t = Tensor::<1>::from_floats([1.0, -1.0], &Device::flex()).greater_elem(0.0);
/// assert_eq!(lastmile_core::convert::bools_to_vec(t).unwrap(), vec![true, false]);
/// # }
/// ```
pub fn bools_to_vec<const D: usize>(tensor: Tensor<D, Bool>) -> Result<Vec<bool>> {
    count_host_read();
    let data = tensor.into_data();
    let n = data.num_elements();
    let values: Vec<bool> = data.iter::<bool>().collect();
    if values.len() != n {
        return Err(CoreError::TensorData(format!(
            "read {} booleans from a tensor of {n} elements",
            values.len()
        )));
    }
    Ok(values)
}

thread_local! {
    static HOST_READS: Cell<u64> = const { Cell::new(0) };
}

pub(crate) fn count_host_read() {
    HOST_READS.with(|c| c.set(c.get() + 1));
}

/// How many device → host reads lastmile-core has made on this thread.
///
/// Every read-back in lastmile-core goes through [`tensor_to_vec`],
/// [`indices_to_vec`], [`bools_to_vec`] or [`crate::host::with_host_mut`],
/// and each is one device
/// synchronisation on an asynchronous backend (wgpu). The counter lets tests
/// check the synchronisation counts the docs state, and lets a user measure
/// where a loop waits on the device.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_core::convert::{host_reads, tensor_to_vec};
/// let before = host_reads();
/// tensor_to_vec(Tensor::<1>::ones([3], &Device::flex())).unwrap();
/// assert_eq!(host_reads() - before, 1);
/// # }
/// ```
pub fn host_reads() -> u64 {
    HOST_READS.with(Cell::get)
}

/// Product of `shape`, or an error if it overflows `usize`.
pub(crate) fn checked_numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            CoreError::shape("tensor", "a shape whose element count fits in usize", shape)
        })
}
