//! numpy ↔ Rust conversions.

use lastmile_federated_sharding::simulation::ClientData;
use numpy::ndarray::{Array, IxDyn};
use numpy::{IntoPyArray, PyArrayDyn, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::py_err;

/// A C-contiguous array's values, read in place. (`as_slice` also accepts
/// a Fortran-ordered array, whose rows would then be read as columns.)
fn contiguous<'a, T: numpy::Element, D: numpy::ndarray::Dimension>(
    what: &str,
    array: &'a numpy::PyReadonlyArray<'_, T, D>,
) -> PyResult<&'a [T]> {
    let slice = if array.is_c_contiguous() {
        array.as_slice().ok()
    } else {
        None
    };
    slice.ok_or_else(|| {
        py_err(format!(
            "{what}: an array that is not C-contiguous; expected a C-ordered one (np.ascontiguousarray)"
        ))
    })
}

/// Features `x` (`float32 [n, d]`) and labels `y` (`int64 [n]`) as the
/// trainer's data: features copied once, labels checked `≥ 0`.
pub(crate) fn client_data(
    x: &PyReadonlyArray2<'_, f32>,
    y: &PyReadonlyArray1<'_, i64>,
) -> PyResult<ClientData> {
    let features = contiguous("features x", x)?.to_vec();
    let labels = contiguous("labels y", y)?
        .iter()
        .map(|&l| {
            usize::try_from(l)
                .map_err(|_| py_err(format!("labels y: found {l}; expected a class index ≥ 0")))
        })
        .collect::<PyResult<Vec<usize>>>()?;
    let rows = x.shape()[0];
    if rows != labels.len() {
        return Err(py_err(format!(
            "labels y: found {} label(s); expected one per row of x ({rows})",
            labels.len()
        )));
    }
    Ok(ClientData { features, labels })
}

/// `values` (row-major) as a numpy array of `shape`, without a copy.
pub(crate) fn to_numpy<'py, T: numpy::Element>(
    py: Python<'py>,
    shape: &[usize],
    values: Vec<T>,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    Ok(Array::from_shape_vec(IxDyn(shape), values)
        .map_err(py_err)?
        .into_pyarray(py))
}

/// Features and labels as numpy arrays (`float32 [n, d]`, `int64 [n]`).
pub(crate) type NumpyData<'py> = (Bound<'py, PyArrayDyn<f32>>, Bound<'py, PyArrayDyn<i64>>);

/// `features` (`n` rows) and `labels` as [`NumpyData`], without copying
/// the features.
pub(crate) fn data_to_numpy<'py>(
    py: Python<'py>,
    features: Vec<f32>,
    labels: &[usize],
) -> PyResult<NumpyData<'py>> {
    let n = labels.len();
    let d = features.len().checked_div(n).unwrap_or(0);
    let labels = labels.iter().map(|&l| l as i64).collect();
    Ok((
        to_numpy(py, &[n, d], features)?,
        to_numpy(py, &[n], labels)?,
    ))
}
