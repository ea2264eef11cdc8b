//! Thin SVD and QR of `f32` matrices, returned as burn tensors.
//!
//! The decompositions run on the host with [faer](https://docs.rs/faer),
//! whatever the tensor's device: on the sizes lastmile uses (256² to 4096²)
//! faer's blocked bidiagonalisation with divide-and-conquer is two to three
//! orders of magnitude faster than burn 0.22's one-sided Jacobi `linalg::svd`
//! (see `docs/benchmarks.md`), and as exact. The copy to and from the device
//! is O(mn), negligible beside the O(mn·min(m, n)) factorisation.

use burn::tensor::{Device, Tensor};
use faer::Mat;

use crate::convert::{tensor_from_vec, tensor_to_vec};
use crate::error::{CoreError, Result};
use crate::validate::{check_finite_slice, check_non_empty};

/// A thin singular value decomposition `A = U · diag(S) · Vᵀ`.
///
/// For `A` of shape `[m, n]` and `k = min(m, n)`: `u` is `[m, k]` with
/// orthonormal columns, `s` is `[k]` sorted in non-increasing order (all
/// `≥ 0`), and `vt` is `[k, n]` with orthonormal rows.
#[derive(Debug, Clone)]
pub struct Svd {
    /// Left singular vectors, `[m, k]`.
    pub u: Tensor<2>,
    /// Singular values, `[k]`, non-increasing.
    pub s: Tensor<1>,
    /// Right singular vectors (transposed), `[k, n]`.
    pub vt: Tensor<2>,
}

impl Svd {
    /// `U · diag(S) · Vᵀ`, optionally keeping only the leading `rank` triplets.
    ///
    /// # Errors
    /// [`CoreError::OutOfRange`] if `rank` is 0 or exceeds `min(m, n)`.
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::{Device, Tensor};
    /// use lastmile_core::linalg::svd;
    /// let a = Tensor::<2>::from_floats([[3.0, 0.0], [0.0, 1.0]], &Device::flex());
    /// let rank1 = svd(a).unwrap().reconstruct(Some(1)).unwrap();
    /// let v = rank1.into_data().try_to_vec::<f32>().unwrap();
    /// assert!((v[0] - 3.0).abs() < 1e-5 && v[3].abs() < 1e-5);
    /// # }
    /// ```
    pub fn reconstruct(&self, rank: Option<usize>) -> Result<Tensor<2>> {
        let [m, k] = self.u.dims();
        let n = self.vt.dims()[1];
        let r = rank.unwrap_or(k);
        if r == 0 || r > k {
            return Err(CoreError::out_of_range(
                "rank",
                r as f64,
                &format!("an integer in [1, {k}]"),
            ));
        }
        let u = self.u.clone().slice([0..m, 0..r]);
        let s = self.s.clone().slice(0..r).unsqueeze_dim::<2>(0);
        let vt = self.vt.clone().slice([0..r, 0..n]);
        Ok((u * s).matmul(vt))
    }
}

/// A thin QR decomposition `A = Q · R`.
///
/// For `A` of shape `[m, n]` and `k = min(m, n)`: `q` is `[m, k]` with
/// orthonormal columns and `r` is `[k, n]` upper triangular.
#[derive(Debug, Clone)]
pub struct Qr {
    /// Orthonormal factor, `[m, k]`.
    pub q: Tensor<2>,
    /// Upper-triangular factor, `[k, n]`.
    pub r: Tensor<2>,
}

fn to_faer(matrix: Tensor<2>, routine: &str) -> Result<(Mat<f32>, Device)> {
    let [m, n] = check_non_empty("matrix", &matrix)?;
    let device = matrix.device();
    let data = tensor_to_vec(matrix)?;
    check_finite_slice(routine, &data)?;
    Ok((Mat::from_fn(m, n, |i, j| data[i * n + j]), device))
}

fn from_faer(mat: faer::MatRef<'_, f32>, device: &Device) -> Result<Tensor<2>> {
    let (m, n) = (mat.nrows(), mat.ncols());
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            out.push(mat[(i, j)]);
        }
    }
    tensor_from_vec(out, [m, n], device)
}

/// Thin SVD of a `[m, n]` matrix.
///
/// Rank-deficient and ill-conditioned inputs are fine: their trailing
/// singular values are (numerically) zero and the corresponding vectors
/// still complete an orthonormal set.
///
/// # Errors
/// [`CoreError::ShapeMismatch`] for an empty matrix, [`CoreError::NonFinite`]
/// for NaN/inf entries, [`CoreError::LinearAlgebra`] if the iteration fails
/// to converge.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_core::linalg::svd;
/// let a = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], &Device::flex());
/// let d = svd(a.clone()).unwrap();
/// assert_eq!(d.u.dims(), [3, 2]);
/// let err = (d.reconstruct(None).unwrap() - a).abs().max().into_scalar::<f32>();
/// assert!(err < 1e-5);
/// # }
/// ```
pub fn svd(matrix: Tensor<2>) -> Result<Svd> {
    let (a, device) = to_faer(matrix, "svd input")?;
    let dec = a.thin_svd().map_err(|e| CoreError::LinearAlgebra {
        routine: "svd".to_owned(),
        reason: format!("{e:?}"),
    })?;
    let s_diag = dec.S().column_vector();
    let k = s_diag.nrows();
    // faer returns non-increasing values; sort defensively so callers can rely on it.
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| s_diag[b].total_cmp(&s_diag[a]));
    let (u_src, v_src) = (dec.U(), dec.V());
    let u = Mat::from_fn(u_src.nrows(), k, |i, j| u_src[(i, order[j])]);
    let vt = Mat::from_fn(k, v_src.nrows(), |i, j| v_src[(j, order[i])]);
    let s: Vec<f32> = order.iter().map(|&i| s_diag[i].max(0.0)).collect();
    Ok(Svd {
        u: from_faer(u.as_ref(), &device)?,
        s: tensor_from_vec(s, [k], &device)?,
        vt: from_faer(vt.as_ref(), &device)?,
    })
}

/// Thin QR of a `[m, n]` matrix (Householder).
///
/// # Errors
/// [`CoreError::ShapeMismatch`] for an empty matrix, [`CoreError::NonFinite`]
/// for NaN/inf entries.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_core::linalg::qr;
/// let a = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], &Device::flex());
/// let d = qr(a.clone()).unwrap();
/// let err = (d.q.matmul(d.r) - a).abs().max().into_scalar::<f32>();
/// assert!(err < 1e-5);
/// # }
/// ```
pub fn qr(matrix: Tensor<2>) -> Result<Qr> {
    let (a, device) = to_faer(matrix, "qr input")?;
    let dec = a.qr();
    let q = dec.compute_thin_Q();
    let r = dec.thin_R();
    Ok(Qr {
        q: from_faer(q.as_ref(), &device)?,
        r: from_faer(r, &device)?,
    })
}
