//! Batched numerics on `[batch, classes]` tensors: softmax with temperature,
//! log-sum-exp, entropy, top-k / top-p filtering, argmax and seeded
//! categorical sampling.
//!
//! Conventions: the class axis is the last one; `-inf` logits mean "masked
//! out" and get probability exactly 0; temperature `0` is the limit
//! `T → 0⁺`, i.e. the uniform distribution over the row's maxima (a one-hot
//! vector when the maximum is unique).

mod rows;
#[cfg(target_arch = "x86_64")]
mod rows_x86;

pub use rows::{
    all_finite, entropy_row, max_and_tame, push_tempered_softmax, sample_row, softmax_row,
};

use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, RngExt};

use crate::error::{CoreError, Result};
use crate::validate::{check_in_range, check_logits, check_non_empty, check_probabilities};

fn check_temperature(temperature: f64) -> Result<f32> {
    if temperature.is_finite() && temperature >= 0.0 {
        Ok(temperature as f32)
    } else {
        Err(CoreError::out_of_range(
            "temperature",
            temperature,
            "a finite value >= 0 (0 means greedy)",
        ))
    }
}

/// Row maxima with `-inf` rows replaced by 0, so `x - max` never forms `-inf - -inf`.
fn safe_row_max(logits: &Tensor<2>) -> Tensor<2> {
    let max = logits.clone().max_dim(1);
    max.clone().mask_fill(max.is_inf(), 0.0)
}

/// Mask of the entries equal to their row's maximum.
fn argmax_mask(logits: &Tensor<2>) -> Tensor<2> {
    let max = logits.clone().max_dim(1);
    logits.clone().equal(max.expand(logits.dims())).float()
}

/// Softmax over the last axis of `logits / temperature`.
///
/// `p_i = exp((x_i − max x)/T) / Σ_j exp((x_j − max x)/T)`; subtracting the
/// row maximum first keeps it stable for any `T > 0`, however small.
/// `T = 0` returns the limit: uniform over the row's maxima.
///
/// # Shapes
/// `logits`: `[batch, classes]` → `[batch, classes]`.
///
/// # Errors
/// [`CoreError::OutOfRange`] for a negative or non-finite temperature,
/// [`CoreError::ShapeMismatch`] for an empty tensor. Values are not read back:
/// NaN propagates, and a row of only `-inf` yields NaN (see
/// [`check_logits`] to reject both up front).
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Tensor, Device};
/// use lastmile_core::numerics::softmax;
/// let d = Device::flex();
/// let p = softmax(Tensor::<2>::from_floats([[0.0, 0.0, f32::NEG_INFINITY]], &d), 1.0).unwrap();
/// let v = p.into_data().try_to_vec::<f32>().unwrap();
/// assert!((v[0] - 0.5).abs() < 1e-6 && v[2] == 0.0);
/// # }
/// ```
pub fn softmax(logits: Tensor<2>, temperature: f64) -> Result<Tensor<2>> {
    let t = check_temperature(temperature)?;
    check_non_empty("logits", &logits)?;
    if t == 0.0 {
        if rows::applies(&logits) {
            return rows::greedy(logits);
        }
        let mask = argmax_mask(&logits);
        let count = mask.clone().sum_dim(1);
        return Ok(mask / count);
    }
    if rows::applies(&logits) {
        return rows::softmax(logits, t);
    }
    let max = safe_row_max(&logits);
    let e = (logits - max).div_scalar(t).exp();
    let sum = e.clone().sum_dim(1);
    Ok(e / sum)
}

/// Log-softmax over the last axis of `logits / temperature`.
///
/// `log p_i = (x_i − m)/T − log Σ_j exp((x_j − m)/T)`. Masked (`-inf`) entries
/// give `-inf`. `T = 0` gives `−log(#maxima)` at the maxima and `-inf` elsewhere.
///
/// # Shapes
/// `[batch, classes]` → `[batch, classes]`.
///
/// # Errors
/// As [`softmax`].
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Tensor, Device};
/// use lastmile_core::numerics::log_softmax;
/// let d = Device::flex();
/// let lp = log_softmax(Tensor::<2>::from_floats([[1.0, 1.0]], &d), 2.0).unwrap();
/// let v = lp.into_data().try_to_vec::<f32>().unwrap();
/// assert!((v[0] + std::f32::consts::LN_2).abs() < 1e-6);
/// # }
/// ```
pub fn log_softmax(logits: Tensor<2>, temperature: f64) -> Result<Tensor<2>> {
    let t = check_temperature(temperature)?;
    check_non_empty("logits", &logits)?;
    if t == 0.0 {
        return Ok(softmax(logits, 0.0)?.log());
    }
    let max = safe_row_max(&logits);
    let shifted = (logits - max).div_scalar(t);
    let lse = shifted.clone().exp().sum_dim(1).log();
    Ok(shifted - lse)
}

/// Log-sum-exp over the last axis: `m + log Σ_j exp(x_j − m)`.
///
/// A row of only `-inf` gives `-inf` (the log of an empty sum).
///
/// # Shapes
/// `[batch, classes]` → `[batch, 1]`.
///
/// # Errors
/// [`CoreError::ShapeMismatch`] for an empty tensor.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Tensor, Device};
/// use lastmile_core::numerics::log_sum_exp;
/// let d = Device::flex();
/// let v = log_sum_exp(Tensor::<2>::from_floats([[1000.0, 1000.0]], &d)).unwrap();
/// let v = v.into_data().try_to_vec::<f32>().unwrap();
/// assert!((v[0] - (1000.0 + std::f32::consts::LN_2)).abs() < 1e-3);
/// # }
/// ```
pub fn log_sum_exp(logits: Tensor<2>) -> Result<Tensor<2>> {
    check_non_empty("logits", &logits)?;
    let max = safe_row_max(&logits);
    Ok((logits - max.clone()).exp().sum_dim(1).log() + max)
}

/// Shannon entropy in nats of each row of a probability tensor:
/// `H = −Σ_i p_i log p_i`, with `0 log 0 = 0`.
///
/// # Shapes
/// `[batch, classes]` → `[batch]`.
///
/// # Errors
/// [`CoreError::ShapeMismatch`] for an empty tensor.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Tensor, Device};
/// use lastmile_core::numerics::entropy;
/// let d = Device::flex();
/// let h = entropy(Tensor::<2>::from_floats([[0.5, 0.5, 0.0]], &d)).unwrap();
/// let h = h.into_data().try_to_vec::<f32>().unwrap();
/// assert!((h[0] - std::f32::consts::LN_2).abs() < 1e-6);
/// # }
/// ```
pub fn entropy(probs: Tensor<2>) -> Result<Tensor<1>> {
    check_non_empty("probs", &probs)?;
    if rows::applies(&probs) {
        return rows::entropy(probs);
    }
    let zero = probs.clone().lower_equal_elem(0.0);
    let terms = (probs.clone() * probs.log()).mask_fill(zero, 0.0);
    Ok(terms.sum_dim(1).neg().squeeze_dim::<1>(1))
}

/// Entropy in nats of `softmax(logits / temperature)`, computed from
/// log-probabilities so that confident rows do not lose precision.
///
/// # Shapes
/// `[batch, classes]` → `[batch]`.
///
/// # Errors
/// As [`softmax`].
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Tensor, Device};
/// use lastmile_core::numerics::entropy_from_logits;
/// let d = Device::flex();
/// let h = entropy_from_logits(Tensor::<2>::from_floats([[3.0, 3.0, 3.0, 3.0]], &d), 1.0).unwrap();
/// let h = h.into_data().try_to_vec::<f32>().unwrap();
/// assert!((h[0] - 4f32.ln()).abs() < 1e-6);
/// # }
/// ```
pub fn entropy_from_logits(logits: Tensor<2>, temperature: f64) -> Result<Tensor<1>> {
    let log_p = log_softmax(logits, temperature)?;
    let p = log_p.clone().exp();
    let zero = p.clone().lower_equal_elem(0.0);
    let terms = (p * log_p).mask_fill(zero, 0.0);
    Ok(terms.sum_dim(1).neg().squeeze_dim::<1>(1))
}

/// Keeps the `k` largest logits of each row and sets the rest to `-inf`.
///
/// Entries tied with the k-th largest value are all kept, so the result is
/// the same on every backend whatever its sort order for ties. `k ≥ classes`
/// returns the input unchanged.
///
/// # Errors
/// [`CoreError::OutOfRange`] for `k = 0`; [`CoreError::ShapeMismatch`] for an
/// empty tensor.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Tensor, Device};
/// use lastmile_core::numerics::top_k_filter;
/// let d = Device::flex();
/// let f = top_k_filter(Tensor::<2>::from_floats([[1.0, 3.0, 2.0]], &d), 2).unwrap();
/// let v = f.into_data().try_to_vec::<f32>().unwrap();
/// assert_eq!(v, vec![f32::NEG_INFINITY, 3.0, 2.0]);
/// # }
/// ```
pub fn top_k_filter(logits: Tensor<2>, k: usize) -> Result<Tensor<2>> {
    let [batch, classes] = check_non_empty("logits", &logits)?;
    if k == 0 {
        return Err(CoreError::out_of_range("k", 0.0, "an integer >= 1"));
    }
    if k >= classes {
        return Ok(logits);
    }
    let kth = logits.clone().topk(k, 1).slice([0..batch, k - 1..k]);
    let below = logits.clone().lower(kth.expand([batch, classes]));
    Ok(logits.mask_fill(below, f32::NEG_INFINITY))
}

/// Nucleus (top-p) filtering: keeps, in each row, the smallest set of
/// most-probable classes whose probability mass reaches `p`, and sets the
/// other logits to `-inf` (Holtzman et al., 2020).
///
/// The kept set is `{i : x_i ≥ τ}` where `τ` is the smallest logit of the
/// minimal nucleus; classes tied with `τ` are all kept. The most probable
/// class is always kept. `p = 1` returns the input unchanged.
///
/// Probabilities are `softmax(logits)`: apply the temperature to the logits
/// first (see [`SamplingParams`]).
///
/// # Errors
/// [`CoreError::OutOfRange`] unless `0 < p ≤ 1`; [`CoreError::ShapeMismatch`]
/// for an empty tensor.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Tensor, Device};
/// use lastmile_core::numerics::top_p_filter;
/// let d = Device::flex();
/// // probabilities 0.5, 0.3, 0.2: the nucleus for p = 0.7 is the first two
/// let logits = Tensor::<2>::from_floats([[0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()]], &d);
/// let v = top_p_filter(logits, 0.7).unwrap().into_data().try_to_vec::<f32>().unwrap();
/// assert!(v[0].is_finite() && v[1].is_finite() && v[2] == f32::NEG_INFINITY);
/// # }
/// ```
pub fn top_p_filter(logits: Tensor<2>, p: f64) -> Result<Tensor<2>> {
    let [batch, classes] = check_non_empty("logits", &logits)?;
    if !(p.is_finite() && p > 0.0 && p <= 1.0) {
        return Err(CoreError::out_of_range("top_p", p, "a value in (0, 1]"));
    }
    if p >= 1.0 {
        return Ok(logits);
    }
    let sorted = logits.clone().sort_descending(1);
    let probs = softmax(sorted.clone(), 1.0)?;
    // Mass strictly before each position; position j is in the nucleus iff that mass < p.
    let before = probs.clone().cumsum(1) - probs;
    let kept = before
        .lower_elem(p as f32)
        .int()
        .sum_dim(1)
        .clamp(1, classes as i64);
    let tau = sorted.gather(1, kept - 1);
    let below = logits.clone().lower(tau.expand([batch, classes]));
    Ok(logits.mask_fill(below, f32::NEG_INFINITY))
}

/// Index of the largest entry of each row (the first one on ties).
///
/// Device synchronisations: 1 (the indices).
///
/// # Errors
/// [`CoreError::ShapeMismatch`] for an empty tensor; [`CoreError::TensorData`]
/// if the indices cannot be read back.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Tensor, Device};
/// use lastmile_core::numerics::argmax;
/// let d = Device::flex();
/// let t = Tensor::<2>::from_floats([[0.1, 0.7, 0.2], [5.0, 1.0, 1.0]], &d);
/// assert_eq!(argmax(t).unwrap(), vec![1, 0]);
/// # }
/// ```
pub fn argmax(values: Tensor<2>) -> Result<Vec<usize>> {
    check_non_empty("values", &values)?;
    crate::convert::indices_to_vec(values.argmax(1))
}

/// Tolerance on row sums accepted by [`sample_categorical`].
pub const PROBABILITY_SUM_TOLERANCE: f64 = 1e-3;

/// Draws one class per row from a batch of categorical distributions.
///
/// Inverse-CDF sampling on the device: with `u ~ U(0, 1]` drawn from `rng`
/// (one per row, in row order), the sample is `#{j : F_j < u · F_last}`
/// where `F` is the row's cumulative sum. Classes with probability 0 are
/// never drawn. The uniforms come from the caller's RNG, so the same seed
/// gives the same samples on every backend.
///
/// # Shapes
/// `probs`: `[batch, classes]`, rows summing to 1 within
/// [`PROBABILITY_SUM_TOLERANCE`].
///
/// Device synchronisations: 2 (the rows' check, the indices).
///
/// # Errors
/// [`CoreError::NotAProbability`] or [`CoreError::NonFinite`] for rows that are
/// not distributions; [`CoreError::ShapeMismatch`] for an empty tensor.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Tensor, Device};
/// use rand::{SeedableRng, rngs::StdRng};
/// use lastmile_core::numerics::sample_categorical;
/// let d = Device::flex();
/// let p = Tensor::<2>::from_floats([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]], &d);
/// let mut rng = StdRng::seed_from_u64(7);
/// let s = sample_categorical(p, &mut rng).unwrap();
/// assert_eq!(s[0], 1);
/// assert!(s[1] == 0 || s[1] == 2);
/// # }
/// ```
pub fn sample_categorical<R: Rng + ?Sized>(probs: Tensor<2>, rng: &mut R) -> Result<Vec<usize>> {
    check_probabilities("probs", &probs, PROBABILITY_SUM_TOLERANCE)?;
    sample_categorical_unchecked(probs, rng)
}

/// [`sample_categorical`] without validating the rows: the kernel for inner
/// loops whose distributions come from
/// [`SamplingParams::probabilities_unchecked`] on logits checked once.
///
/// Device synchronisations: 1 (the sampled indices). A row that is not a
/// distribution gives an unspecified class in range, never a panic.
///
/// # Errors
/// [`CoreError::ShapeMismatch`] for an empty tensor; [`CoreError::TensorData`]
/// if the indices cannot be read back.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Tensor, Device};
/// use rand::{SeedableRng, rngs::StdRng};
/// use lastmile_core::numerics::sample_categorical_unchecked;
/// let p = Tensor::<2>::from_floats([[0.0, 1.0]], &Device::flex());
/// assert_eq!(sample_categorical_unchecked(p, &mut StdRng::seed_from_u64(1)).unwrap(), vec![1]);
/// # }
/// ```
pub fn sample_categorical_unchecked<R: Rng + ?Sized>(
    probs: Tensor<2>,
    rng: &mut R,
) -> Result<Vec<usize>> {
    crate::convert::indices_to_vec(sample_categorical_on_device(probs, rng)?)
}

/// The sampling kernel of [`sample_categorical`], leaving the indices on the
/// device: no synchronisation, so a caller can read them back together with
/// other values in one transfer. Consumes one uniform per row from `rng`.
///
/// # Shapes
/// `probs`: `[batch, classes]` → `[batch]`.
///
/// # Errors
/// [`CoreError::ShapeMismatch`] for an empty tensor.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Tensor, Device};
/// use rand::{SeedableRng, rngs::StdRng};
/// use lastmile_core::{convert::indices_to_vec, numerics::sample_categorical_on_device};
/// let p = Tensor::<2>::from_floats([[0.0, 0.0, 1.0]], &Device::flex());
/// let idx = sample_categorical_on_device(p, &mut StdRng::seed_from_u64(1)).unwrap();
/// assert_eq!(indices_to_vec(idx).unwrap(), vec![2]);
/// # }
/// ```
pub fn sample_categorical_on_device<R: Rng + ?Sized>(
    probs: Tensor<2>,
    rng: &mut R,
) -> Result<Tensor<1, Int>> {
    let [batch, classes] = check_non_empty("probs", &probs)?;
    if rows::applies(&probs) {
        return rows::sample(probs, rng);
    }
    let device = probs.device();
    // 1 - U[0,1) lies in (0, 1]: u = 0 could select a leading zero-probability class.
    let uniforms: Vec<f32> = (0..batch).map(|_| 1.0 - rng.random::<f32>()).collect();
    let u = Tensor::<2>::from_data(TensorData::new(uniforms, [batch, 1]), &device);
    let cdf = probs.cumsum(1);
    let total = cdf.clone().slice([0..batch, classes - 1..classes]);
    let target = (u * total).expand([batch, classes]);
    Ok(cdf
        .lower(target)
        .int()
        .sum_dim(1)
        .clamp(0, classes as i64 - 1)
        .reshape([batch]))
}

/// Temperature, top-k and top-p settings applied to logits before sampling,
/// in the order used by common decoding libraries: temperature, then top-k,
/// then top-p, then softmax.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Tensor, Device};
/// use lastmile_core::numerics::SamplingParams;
/// let d = Device::flex();
/// let params = SamplingParams::new(0.7).unwrap().with_top_k(2).unwrap();
/// let p = params.probabilities(Tensor::<2>::from_floats([[1.0, 2.0, 3.0]], &d)).unwrap();
/// let v = p.into_data().try_to_vec::<f32>().unwrap();
/// assert_eq!(v[0], 0.0);
/// assert!((v[1] + v[2] - 1.0).abs() < 1e-6);
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
}

impl SamplingParams {
    /// Plain sampling at `temperature` (`0` = greedy).
    ///
    /// # Errors
    /// [`CoreError::OutOfRange`] for a negative or non-finite temperature.
    pub fn new(temperature: f64) -> Result<Self> {
        check_temperature(temperature)?;
        Ok(Self {
            temperature,
            top_k: None,
            top_p: None,
        })
    }

    /// Greedy decoding: all mass on the row maximum (uniform over ties).
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
        }
    }

    /// Adds top-k filtering.
    ///
    /// # Errors
    /// [`CoreError::OutOfRange`] for `k = 0`.
    pub fn with_top_k(mut self, k: usize) -> Result<Self> {
        if k == 0 {
            return Err(CoreError::out_of_range("top_k", 0.0, "an integer >= 1"));
        }
        self.top_k = Some(k);
        Ok(self)
    }

    /// Adds nucleus (top-p) filtering.
    ///
    /// # Errors
    /// [`CoreError::OutOfRange`] unless `0 < p ≤ 1`.
    pub fn with_top_p(mut self, p: f64) -> Result<Self> {
        check_in_range("top_p", p, f64::MIN_POSITIVE, 1.0)?;
        self.top_p = Some(p);
        Ok(self)
    }

    /// The temperature.
    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// The top-k setting, if any.
    pub fn top_k(&self) -> Option<usize> {
        self.top_k
    }

    /// The top-p setting, if any.
    pub fn top_p(&self) -> Option<f64> {
        self.top_p
    }

    /// Whether this is greedy decoding (`temperature = 0`).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// The distribution to sample from: `softmax(filter(logits / T))`.
    ///
    /// Device synchronisations: 1 (the [`check_logits`] of the input).
    ///
    /// # Shapes
    /// `[batch, classes]` → `[batch, classes]`.
    ///
    /// # Errors
    /// [`CoreError::NonFinite`] / [`CoreError::NotAProbability`] for NaN, `+inf`
    /// or fully masked rows (see [`check_logits`]).
    pub fn probabilities(&self, logits: Tensor<2>) -> Result<Tensor<2>> {
        check_logits("logits", &logits)?;
        self.probabilities_unchecked(logits)
    }

    /// [`probabilities`](Self::probabilities) without reading the logits
    /// back: no device synchronisation (NaN propagates, a fully masked row
    /// gives NaN). For inner loops whose logits were checked at the edge,
    /// or whose result is checked later in one combined read-back.
    ///
    /// # Errors
    /// [`CoreError::ShapeMismatch`] for an empty tensor.
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::{Tensor, Device};
    /// use lastmile_core::{convert::host_reads, numerics::SamplingParams};
    /// let before = host_reads();
    /// let p = SamplingParams::new(1.0).unwrap()
    ///     .probabilities_unchecked(Tensor::<2>::from_floats([[0.0, 0.0]], &Device::flex()))
    ///     .unwrap();
    /// assert_eq!(host_reads(), before);
    /// assert_eq!(p.dims(), [1, 2]);
    /// # }
    /// ```
    pub fn probabilities_unchecked(&self, logits: Tensor<2>) -> Result<Tensor<2>> {
        if self.is_greedy() {
            return softmax(logits, 0.0);
        }
        let mut scaled = logits.div_scalar(self.temperature as f32);
        if let Some(k) = self.top_k {
            scaled = top_k_filter(scaled, k)?;
        }
        if let Some(p) = self.top_p {
            scaled = top_p_filter(scaled, p)?;
        }
        softmax(scaled, 1.0)
    }
}

impl Default for SamplingParams {
    /// Temperature 1, no filtering.
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: None,
        }
    }
}
