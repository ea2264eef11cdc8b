//! Weighted combination of adapters and the interference metrics of the
//! SHiRA paper (§4.3).

use burn::tensor::Tensor;
use lastmile_core::convert::{tensor_from_vec, tensor_to_vec};
use lastmile_core::linalg::svd;

use crate::adapter::Adapter;
use crate::error::{AdapterError, Result};
use crate::lora::Lora;
use crate::shira::Shira;

/// How low-rank adapters are combined into one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CombineMethod {
    /// Exact: concatenate the ranks, `B = [w₁s₁B₁ … wₖsₖBₖ]`, `A = [A₁; …; Aₖ]`,
    /// scale 1 — rank `Σ rᵢ`.
    Concat,
    /// Re-factor `Σ wᵢ sᵢ Bᵢ Aᵢ` to the given rank by truncated SVD (exact when
    /// the rank is at least the rank of the sum).
    Svd {
        /// Rank of the result.
        rank: usize,
    },
}

fn check_weights<T>(parts: &[(T, f64)]) -> Result<()> {
    if parts.is_empty() {
        return Err(AdapterError::config(
            "adapters to combine",
            "none",
            "at least one (adapter, weight) pair",
        ));
    }
    if let Some((_, w)) = parts.iter().find(|(_, w)| !w.is_finite()) {
        return Err(AdapterError::config(
            "combination weight",
            w,
            "a finite value",
        ));
    }
    Ok(())
}

fn check_same_shape(shapes: impl Iterator<Item = (usize, usize)>) -> Result<(usize, usize)> {
    let mut first = None;
    for s in shapes {
        match first {
            None => first = Some(s),
            Some(f) if f != s => {
                return Err(AdapterError::shape(
                    "combined adapter",
                    format!("[out, in] = [{}, {}] like the first", f.0, f.1),
                    &[s.0, s.1],
                ));
            }
            _ => {}
        }
    }
    first.ok_or_else(|| AdapterError::config("adapters to combine", "none", "at least one"))
}

/// `Σ wᵢ ΔWᵢ` for LoRA adapters as one LoRA adapter.
///
/// # Errors
/// Empty input, non-finite weights, mismatched shapes, an SVD rank out of range.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_adapters::{Lora, combine::{CombineMethod, combine_lora}};
/// let d = Device::flex();
/// let l1 = Lora::from_factors(Tensor::from_floats([[1.0, 0.0]], &d), Tensor::from_floats([[1.0], [0.0]], &d), 1.0, false).unwrap();
/// let l2 = Lora::from_factors(Tensor::from_floats([[0.0, 1.0]], &d), Tensor::from_floats([[0.0], [1.0]], &d), 1.0, false).unwrap();
/// let both = combine_lora(&[(&l1, 2.0), (&l2, 3.0)], CombineMethod::Concat).unwrap();
/// assert_eq!(both.rank(), 2);
/// let w = both.delta_weight().into_data().try_to_vec::<f32>().unwrap();
/// assert_eq!(w, vec![2.0, 0.0, 0.0, 3.0]);
/// # }
/// ```
pub fn combine_lora(parts: &[(&Lora, f64)], method: CombineMethod) -> Result<Lora> {
    check_weights(parts)?;
    let (d_out, d_in) = check_same_shape(parts.iter().map(|(l, _)| (l.d_out(), l.d_in())))?;
    match method {
        CombineMethod::Concat => {
            let a = Tensor::cat(parts.iter().map(|(l, _)| l.a.val().detach()).collect(), 0);
            let b = Tensor::cat(
                parts
                    .iter()
                    .map(|(l, w)| l.b.val().detach().mul_scalar(w * l.scaling()))
                    .collect(),
                1,
            );
            let r = a.dims()[0];
            if r > d_out.min(d_in) {
                return Err(AdapterError::config(
                    "combined rank",
                    r,
                    &format!(
                        "at most min(out, in) = {}; use CombineMethod::Svd",
                        d_out.min(d_in)
                    ),
                ));
            }
            Lora::from_factors(a, b, r as f64, false)
        }
        CombineMethod::Svd { rank } => {
            if rank == 0 || rank > d_out.min(d_in) {
                return Err(AdapterError::config(
                    "svd rank",
                    rank,
                    &format!("an integer in [1, {}]", d_out.min(d_in)),
                ));
            }
            let sum = parts
                .iter()
                .map(|(l, w)| l.delta_weight().detach().mul_scalar(*w))
                .reduce(|x, y| x + y)
                .ok_or_else(|| {
                    AdapterError::config("adapters to combine", "none", "at least one")
                })?;
            let dec = svd(sum)?;
            let root = dec.s.slice(0..rank).sqrt();
            let a = dec.vt.slice([0..rank, 0..d_in]) * root.clone().unsqueeze_dim::<2>(1);
            let b = dec.u.slice([0..d_out, 0..rank]) * root.unsqueeze_dim::<2>(0);
            Lora::from_factors(a, b, rank as f64, false)
        }
    }
}

/// `Σ wᵢ Sᵢ` for SHiRA adapters: one adapter on the union of the masks
/// (values of shared entries add). Exact.
///
/// # Errors
/// Empty input, non-finite weights, mismatched shapes.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_adapters::{Shira, combine::combine_shira};
/// let d = Device::flex();
/// let s1 = Shira::from_parts(vec![0, 3], Tensor::from_floats([1.0, 1.0], &d), 2, 2).unwrap();
/// let s2 = Shira::from_parts(vec![3], Tensor::from_floats([2.0], &d), 2, 2).unwrap();
/// let s = combine_shira(&[(&s1, 1.0), (&s2, 0.5)]).unwrap();
/// assert_eq!(s.indices(), &[0, 3]);
/// assert_eq!(s.values_vec().unwrap(), vec![1.0, 2.0]);
/// # }
/// ```
pub fn combine_shira(parts: &[(&Shira, f64)]) -> Result<Shira> {
    check_weights(parts)?;
    let (d_out, d_in) = check_same_shape(parts.iter().map(|(s, _)| (s.d_out(), s.d_in())))?;
    let mut entries: Vec<(usize, f64)> = Vec::new();
    for (s, w) in parts {
        let vals = s.values_vec()?;
        entries.extend(
            s.indices()
                .iter()
                .zip(vals)
                .map(|(&i, v)| (i, w * f64::from(v))),
        );
    }
    entries.sort_by_key(|e| e.0);
    let mut idx: Vec<usize> = Vec::with_capacity(entries.len());
    let mut vals: Vec<f32> = Vec::with_capacity(entries.len());
    let mut acc: Vec<f64> = Vec::with_capacity(entries.len());
    for (i, v) in entries {
        if idx.last() == Some(&i) {
            if let Some(last) = acc.last_mut() {
                *last += v;
            }
        } else {
            idx.push(i);
            acc.push(v);
        }
    }
    vals.extend(acc.iter().map(|&v| v as f32));
    let device = parts[0].0.values.device();
    let n = vals.len();
    Shira::from_parts(idx, tensor_from_vec(vals, [n], &device)?, d_out, d_in)
}

/// `Σ wᵢ ΔWᵢ` for adapters of one family as one adapter: LoRA and mergeable
/// FouRA (converted with [`crate::Foura::to_lora`]) combine into a LoRA;
/// SHiRA into a SHiRA on the union of masks.
///
/// # Errors
/// [`AdapterError::Unsupported`] for a mix of sparse and low-rank adapters
/// (their sum is neither; switch them in together with [`crate::AdaptedModel::switch_weighted`], which fuses densely) or an
/// adaptive-gate FouRA; otherwise as [`combine_lora`] / [`combine_shira`].
pub fn combine_adapters(parts: &[(&Adapter, f64)], method: CombineMethod) -> Result<Adapter> {
    check_weights(parts)?;
    if parts.iter().all(|(a, _)| matches!(a, Adapter::Shira(_))) {
        let shiras: Vec<(&Shira, f64)> = parts
            .iter()
            .filter_map(|(a, w)| match a {
                Adapter::Shira(s) => Some((s, *w)),
                _ => None,
            })
            .collect();
        return Ok(Adapter::Shira(combine_shira(&shiras)?));
    }
    let mut loras: Vec<(Lora, f64)> = Vec::with_capacity(parts.len());
    for (a, w) in parts {
        match a {
            Adapter::Lora(l) => loras.push((l.clone(), *w)),
            Adapter::Foura(f) => loras.push((f.to_lora()?, *w)),
            Adapter::Shira(_) => {
                return Err(AdapterError::unsupported(
                    "combine",
                    "mixed SHiRA + low-rank",
                    "a sparse plus a low-rank update is neither; switch them in together (AdaptedModel::switch_weighted) to fuse densely",
                ));
            }
        }
    }
    let refs: Vec<(&Lora, f64)> = loras.iter().map(|(l, w)| (l, *w)).collect();
    Ok(Adapter::Lora(combine_lora(&refs, method)?))
}

fn check_pair(s1: &Tensor<2>, s2: &Tensor<2>) -> Result<()> {
    if s1.dims() != s2.dims() {
        return Err(AdapterError::shape(
            "second update",
            format!("{:?} like the first", s1.dims()),
            &s2.dims(),
        ));
    }
    Ok(())
}

/// AWOM, adapter weight orthogonality magnitude: `‖S₁ᵀ S₂‖₂` (spectral
/// norm) of two `[out, in]` updates. Smaller means less interference.
///
/// # Errors
/// Mismatched shapes, non-finite values.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// let d = Device::flex();
/// let s1 = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 0.0]], &d);
/// let s2 = Tensor::<2>::from_floats([[0.0, 0.0], [0.0, 1.0]], &d);
/// assert_eq!(lastmile_adapters::combine::awom(&s1, &s2).unwrap(), 0.0);
/// # }
/// ```
pub fn awom(s1: &Tensor<2>, s2: &Tensor<2>) -> Result<f64> {
    check_pair(s1, s2)?;
    let p = s1.clone().transpose().matmul(s2.clone());
    let dec = svd(p)?;
    Ok(f64::from(tensor_to_vec(dec.s.slice(0..1))?[0]))
}

/// AWOR, adapter weight orthogonality ratio: `1 − ‖S₁ᵀ S₂‖₀ / in²`, the
/// fraction of exactly-zero entries of `S₁ᵀ S₂`. Larger means more
/// orthogonal (sparse adapters on disjoint supports reach 1; dense LoRA
/// products are ≈ 0).
///
/// # Errors
/// Mismatched shapes.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// let d = Device::flex();
/// let s1 = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 0.0]], &d);
/// let s2 = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 1.0]], &d);
/// assert_eq!(lastmile_adapters::combine::awor(&s1, &s2).unwrap(), 0.75);
/// # }
/// ```
pub fn awor(s1: &Tensor<2>, s2: &Tensor<2>) -> Result<f64> {
    check_pair(s1, s2)?;
    let p = s1.clone().transpose().matmul(s2.clone());
    let [m, _] = p.dims();
    let nonzero = p.not_equal_elem(0.0).int().sum().into_scalar::<i64>();
    Ok(1.0 - nonzero as f64 / (m * m) as f64)
}
