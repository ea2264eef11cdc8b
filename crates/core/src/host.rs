//! In-place work on the memory of CPU tensors, for jobs burn 0.22 has no
//! fast kernel for.
//!
//! On a CPU backend (flex, ndarray) a tensor's buffer is host memory, and
//! flex hands a uniquely owned buffer over (`into_data`) and takes it back
//! (`from_data`) without a copy. [`with_host_mut`] uses that to run a closure
//! on the values in place; [`scatter_assign`] and [`add_matmul`] build on it:
//!
//! - a scatter of prepared values (an adapter switch writes ~10⁵ scattered
//!   entries of a 4096² weight: a plain loop over sorted positions runs at
//!   memory speed, where burn's `select_assign` goes through generic
//!   indexing);
//! - the rank-r update `C + α·A·B` (a LoRA fuse) through faer's GEMM
//!   accumulating into `C`'s own buffer: burn-flex's `[n, 16] × [16, n]`
//!   product is several times slower than a BLAS-grade kernel, and the
//!   separate add costs another pass over `C` (`docs/benchmarks.md`).
//!
//! On any other device (wgpu, or an autodiff device, whose graph a host
//! round trip would cut) [`add_matmul`] uses burn's ops instead, so callers
//! need no backend test; [`with_host_mut`] and [`scatter_assign`] stay
//! correct there but copy to the host and back ([`is_host`] tells which).

use burn::tensor::{DType, Device, Tensor};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

use crate::convert::{count_host_read, tensor_to_vec};
use crate::device::Backend;
use crate::error::{CoreError, Result};

/// Inner dimension from which [`add_matmul`] uses every core.
const PARALLEL_MIN_K: usize = 64;

/// Whether `device`'s tensors live in host memory and carry no autodiff
/// graph, so that [`with_host_mut`] works in place.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_core::host::is_host;
/// assert!(is_host(&Device::flex()));
/// assert!(!is_host(&Device::flex().autodiff()));
/// # }
/// ```
pub fn is_host(device: &Device) -> bool {
    !device.is_autodiff() && Backend::of(device).is_some_and(Backend::is_cpu)
}

/// Runs `f` on the row-major `f32` values of `tensor` and returns the
/// tensor with what `f` wrote, on the same device.
///
/// In place (no copy) for a uniquely owned, contiguous tensor on a host
/// device ([`is_host`]); otherwise the values are copied out and back, which
/// is correct on every device. Counted as one host read
/// ([`crate::convert::host_reads`]).
///
/// # Errors
/// [`CoreError::TensorData`] for a tensor that is not `f32`; whatever `f`
/// returns (the tensor is then dropped).
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_core::host::with_host_mut;
/// let t = Tensor::<1>::from_floats([1.0, 2.0, 3.0], &Device::flex());
/// let t = with_host_mut(t, |v| {
///     v[1] = 20.0;
///     Ok(())
/// })?;
/// assert_eq!(t.into_data().try_to_vec::<f32>().unwrap(), vec![1.0, 20.0, 3.0]);
/// # }
/// # Ok::<(), lastmile_core::CoreError>(())
/// ```
pub fn with_host_mut<const D: usize>(
    tensor: Tensor<D>,
    f: impl FnOnce(&mut [f32]) -> Result<()>,
) -> Result<Tensor<D>> {
    if tensor.dtype() != DType::F32 {
        return Err(CoreError::TensorData(format!(
            "expected an f32 tensor, found {:?}",
            tensor.dtype()
        )));
    }
    let device = tensor.device();
    count_host_read();
    let mut data = tensor.into_data();
    let values = data
        .as_mut_slice::<f32>()
        .map_err(|e| CoreError::TensorData(format!("cannot write float tensor as f32: {e:?}")))?;
    f(values)?;
    Ok(Tensor::from_data(data, &device))
}

/// Runs `f` on the row-major `f32` values of `tensor` and hands the tensor
/// back with `f`'s result, for reading host memory without a copy: on a
/// host device ([`is_host`]) a uniquely owned tensor's buffer is lent to
/// `f` and returned as it was; otherwise the values are copied out. Counted
/// as one host read.
///
/// # Errors
/// [`CoreError::TensorData`] for a tensor that is not `f32`.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_core::host::with_host_ref;
/// let t = Tensor::<1>::from_floats([1.0, 2.0, 3.0], &Device::flex());
/// let (t, sum) = with_host_ref(t, |v| v.iter().sum::<f32>())?;
/// assert_eq!((t.dims(), sum), ([3], 6.0));
/// # }
/// # Ok::<(), lastmile_core::CoreError>(())
/// ```
pub fn with_host_ref<const D: usize, R>(
    tensor: Tensor<D>,
    f: impl FnOnce(&[f32]) -> R,
) -> Result<(Tensor<D>, R)> {
    if tensor.dtype() != DType::F32 {
        return Err(CoreError::TensorData(format!(
            "expected an f32 tensor, found {:?}",
            tensor.dtype()
        )));
    }
    let device = tensor.device();
    count_host_read();
    let data = tensor.into_data();
    let values = data
        .as_slice::<f32>()
        .map_err(|e| CoreError::TensorData(format!("cannot read float tensor as f32: {e:?}")))?;
    let out = f(values);
    Ok((Tensor::from_data(data, &device), out))
}

/// `t[positions[i]] = values[i]` for every `i`, in place on a host device
/// (see [`with_host_mut`]). Later entries win for repeated positions.
///
/// # Errors
/// [`CoreError::LengthMismatch`] when `positions` and `values` differ in
/// length, [`CoreError::IndexOutOfRange`] for a position `≥ t.len()` (the
/// tensor is then dropped: validate positions once, up front, where a
/// partial write matters), [`CoreError::TensorData`] for a non-`f32` tensor.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_core::host::scatter_assign;
/// let t = Tensor::<1>::zeros([5], &Device::flex());
/// let t = scatter_assign(t, &[4, 1], &[7.0, 8.0])?;
/// assert_eq!(t.into_data().try_to_vec::<f32>().unwrap(), vec![0.0, 8.0, 0.0, 0.0, 7.0]);
/// # }
/// # Ok::<(), lastmile_core::CoreError>(())
/// ```
pub fn scatter_assign(tensor: Tensor<1>, positions: &[usize], values: &[f32]) -> Result<Tensor<1>> {
    if positions.len() != values.len() {
        return Err(CoreError::LengthMismatch {
            what: "scatter positions and values".to_owned(),
            expected: positions.len(),
            found: values.len(),
        });
    }
    with_host_mut(tensor, |w| {
        let bound = w.len();
        for (&p, &v) in positions.iter().zip(values) {
            *w.get_mut(p).ok_or_else(|| CoreError::IndexOutOfRange {
                what: "scatter position".to_owned(),
                index: p,
                bound,
            })? = v;
        }
        Ok(())
    })
}

/// `C + α·A·B` for `C: [m, n]`, `A: [m, k]`, `B: [k, n]`.
///
/// On a host device with `f32` tensors, faer's GEMM accumulates into `C`'s
/// own buffer (no copy when `C` is uniquely owned; one copy, which becomes
/// the result, when it is shared); on every core of rayon's pool from
/// `k ≥ 64`, sequentially below, where the update is bound by memory.
/// Elsewhere: burn's `c + a.matmul(b) · α`. Both agree to f32 rounding.
///
/// # Errors
/// [`CoreError::ShapeMismatch`] when the shapes do not chain; a non-finite
/// `alpha` ([`CoreError::NonFinite`]).
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_core::host::add_matmul;
/// let d = Device::flex();
/// let c = Tensor::<2>::ones([2, 2], &d);
/// let a = Tensor::<2>::from_floats([[1.0], [2.0]], &d);
/// let b = Tensor::<2>::from_floats([[3.0, 4.0]], &d);
/// let out = add_matmul(c, a, b, 0.5)?; // 1 + 0.5·[[3, 4], [6, 8]]
/// assert_eq!(out.into_data().try_to_vec::<f32>().unwrap(), vec![2.5, 3.0, 4.0, 5.0]);
/// # }
/// # Ok::<(), lastmile_core::CoreError>(())
/// ```
pub fn add_matmul(c: Tensor<2>, a: Tensor<2>, b: Tensor<2>, alpha: f32) -> Result<Tensor<2>> {
    let [m, n] = c.dims();
    let [am, k] = a.dims();
    let [bk, bn] = b.dims();
    if am != m || bk != k || bn != n {
        return Err(CoreError::ShapeMismatch {
            what: "add_matmul operands".to_owned(),
            expected: format!("A: [{m}, k], B: [k, {n}] for C: [{m}, {n}]"),
            found: vec![am, k, bk, bn],
        });
    }
    if !alpha.is_finite() {
        return Err(CoreError::NonFinite {
            what: "add_matmul alpha".to_owned(),
            index: 0,
            value: f64::from(alpha),
        });
    }
    let host = is_host(&c.device())
        && [c.dtype(), a.dtype(), b.dtype()]
            .iter()
            .all(|d| *d == DType::F32);
    if !host || m * n * k == 0 {
        return Ok(c + a.matmul(b).mul_scalar(alpha));
    }
    // The factors are small (rank k): plain copies.
    let a = tensor_to_vec(a)?;
    let b = tensor_to_vec(b)?;
    // A thin update (small k) streams C once and is bound by memory: on the
    // 2-core reference machine a second thread made the rank-16 update at
    // 4096² slower (13 ms against 9 ms sequential, docs/benchmarks.md).
    let par = if k < PARALLEL_MIN_K {
        Par::Seq
    } else {
        Par::rayon(0)
    };
    // One elementwise pass gives `C` a buffer of its own: in place when it
    // is uniquely owned, else one allocating copy. Handing a shared buffer
    // to the host instead costs two copies (burn's `into_data` copies a
    // shared buffer and then re-aligns it), ~2× the time at 4096².
    let c = c.mul_scalar(1.0);
    with_host_mut(c, |dst| {
        let lhs = MatRef::from_row_major_slice(&a, m, k);
        let rhs = MatRef::from_row_major_slice(&b, k, n);
        let out = MatMut::from_row_major_slice_mut(dst, m, n);
        matmul(out, Accum::Add, lhs, rhs, alpha, par);
        Ok(())
    })
}
