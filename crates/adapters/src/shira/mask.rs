//! How SHiRA chooses its sparse support `M` (§3.1 of the paper): the mask
//! kinds and the helpers that pick entries by score or by structure.

use burn::tensor::Tensor;

use crate::error::{AdapterError, Result};

/// How the sparse support `M` is chosen (§3.1 of the SHiRA paper).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
#[non_exhaustive]
pub enum ShiraMask {
    /// SHiRA-Struct: every `f`-th row and every `f`-th column plus the
    /// diagonal, with the smallest stride `f` that fits the budget.
    Struct,
    /// SHiRA-Rand: a uniformly random subset (seeded; PEFT's default).
    #[default]
    Random,
    /// SHiRA-WM: the top-K entries by `|W0|`.
    WeightMagnitude,
    /// SHiRA-Grad: the top-K entries by `|∇L|` on a calibration batch.
    Gradient,
    /// SHiRA-SNIP: the top-K entries by `|W0 ⊙ ∇L|`.
    Snip,
}

impl ShiraMask {
    /// Every mask kind, in the order the paper lists them.
    pub const ALL: [ShiraMask; 5] = [
        Self::Struct,
        Self::Random,
        Self::WeightMagnitude,
        Self::Gradient,
        Self::Snip,
    ];

    /// Short name (PEFT's `mask_type` for the random mask).
    ///
    /// ```
    /// assert_eq!(lastmile_adapters::ShiraMask::Random.name(), "random");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Self::Struct => "struct",
            Self::Random => "random",
            Self::WeightMagnitude => "weight_magnitude",
            Self::Gradient => "gradient",
            Self::Snip => "snip",
        }
    }

    /// Parses a [`ShiraMask::name`].
    ///
    /// ```
    /// use lastmile_adapters::ShiraMask;
    /// assert_eq!(ShiraMask::from_name("snip"), Some(ShiraMask::Snip));
    /// ```
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Whether this mask needs a calibration gradient.
    pub fn needs_gradient(self) -> bool {
        matches!(self, Self::Gradient | Self::Snip)
    }
}

/// Indices of the `k` largest scores (ties: lower index first).
pub(super) fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let cmp = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx
}

/// SHiRA-Struct: rows and columns at stride `f` plus the diagonal, with the
/// smallest `f` whose mask fits in `k` entries.
pub(super) fn struct_mask(d_out: usize, d_in: usize, k: usize) -> Result<Vec<usize>> {
    let count = |f: usize| {
        let rows = d_out.div_ceil(f);
        let cols = d_in.div_ceil(f);
        // upper bound: union of rows, columns and the diagonal
        rows * d_in + cols * d_out + d_out.min(d_in)
    };
    let max_f = d_out.max(d_in);
    let mut f = 1;
    while f < max_f && count(f) > k {
        f += 1;
    }
    let mut on = vec![false; d_out * d_in];
    let build = |f: usize, on: &mut Vec<bool>| {
        on.iter_mut().for_each(|b| *b = false);
        for r in (0..d_out).step_by(f) {
            on[r * d_in..(r + 1) * d_in]
                .iter_mut()
                .for_each(|b| *b = true);
        }
        for c in (0..d_in).step_by(f) {
            (0..d_out).for_each(|r| on[r * d_in + c] = true);
        }
        (0..d_out.min(d_in)).for_each(|i| on[i * d_in + i] = true);
        on.iter().filter(|b| **b).count()
    };
    // The bound over-counts overlaps: step back to smaller strides while the exact union fits.
    while f > 1 && build(f - 1, &mut on) <= k {
        f -= 1;
    }
    if build(f, &mut on) > k {
        return Err(AdapterError::config(
            "mask size",
            k,
            &format!(
                "at least {} entries for a structured mask (row 0, column 0 and the diagonal)",
                build(max_f, &mut on)
            ),
        ));
    }
    Ok(on
        .iter()
        .enumerate()
        .filter_map(|(i, b)| b.then_some(i))
        .collect())
}

/// `∇L` with respect to `weight`, for gradient-based masks: `loss` maps a
/// differentiable copy of the weight to a scalar loss on a calibration batch.
///
/// # Errors
/// [`AdapterError::Unsupported`] unless `weight` lives on an autodiff device
/// (`device.autodiff()`), or if `loss` does not depend on the weight.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_adapters::shira::weight_gradient;
/// let device = Device::flex().autodiff();
/// let w = Tensor::<2>::from_floats([[1.0, 2.0]], &device);
/// let g = weight_gradient(w, |w| (w.clone() * w).sum()).unwrap();
/// assert_eq!(g.into_data().try_to_vec::<f32>().unwrap(), vec![2.0, 4.0]);
/// # }
/// ```
pub fn weight_gradient(
    weight: Tensor<2>,
    loss: impl FnOnce(Tensor<2>) -> Tensor<1>,
) -> Result<Tensor<2>> {
    if !weight.device().is_autodiff() {
        return Err(AdapterError::unsupported(
            "compute a calibration gradient for",
            "SHiRA",
            "the weight must live on an autodiff device (`device.autodiff()`)",
        ));
    }
    let w = weight.detach().require_grad();
    let l = loss(w.clone());
    let grads = l.backward();
    w.grad(&grads).ok_or_else(|| {
        AdapterError::unsupported(
            "compute a calibration gradient for",
            "SHiRA",
            "the loss does not depend on the weight",
        )
    })
}
