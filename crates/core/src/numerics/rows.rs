//! Softmax, entropy and categorical sampling rows in host memory, for tensors on a CPU device
//! ([`crate::host::is_host`]): one pass per row with the vectorising
//! [`crate::fastmath`] functions instead of a tensor operation per step with
//! a library call per element. For a 49 152-token vocabulary this is the
//! difference between a fraction of a millisecond and a few microseconds per
//! row, which matters once per draft token in speculative decoding.
//!
//! Same results as the tensor path up to the functions' rounding (2 ulp),
//! and `e^x` taken as exactly 0 below `x = −87.3` where the tensor path
//! gives a subnormal (below 1.2·10⁻³⁸). Rows holding NaN or `+inf` take the
//! standard library's functions, so that they propagate as on the tensor
//! path.

use burn::tensor::{DType, Int, Tensor, TensorData};
use rand::{Rng, RngExt};

use crate::error::{CoreError, Result};
use crate::fastmath::{exp, ln};
use crate::simd::{Simd, WithSimd};

/// Below this, `e^x` is taken as 0 (the smallest normal f32 is `e^−87.34`).
const EXP_FLOOR: f32 = -87.3;

/// Runs the operation `$op` (built from the passes `$p`) with AVX2 passes
/// inside pulp's V3 features where the CPU has them, else the portable
/// loops.
macro_rules! with_passes {
    ($p:ident => $op:expr) => {{
        #[cfg(target_arch = "x86_64")]
        if let Some($p) = pulp::x86::V3::try_new() {
            return pulp::Simd::vectorize($p, $op);
        }
        let $p = Portable;
        $op.with_simd(pulp::Scalar::new())
    }};
}

/// Whether `t` takes this path: f32 values on a host device.
pub(super) fn applies<const D: usize>(t: &Tensor<D>) -> bool {
    t.dtype() == DType::F32 && crate::host::is_host(&t.device())
}

fn not_f32(e: impl std::fmt::Debug) -> CoreError {
    CoreError::TensorData(format!("cannot read the tensor as f32 values: {e:?}"))
}

/// `f` on each row (`classes` long) of `t`'s values, in place (no copy for
/// a uniquely owned tensor).
fn map_rows(t: Tensor<2>, f: impl Fn(&mut [f32])) -> Result<Tensor<2>> {
    let [_, classes] = t.dims();
    let device = t.device();
    let mut data = t.into_data();
    let values = data.as_mut_slice::<f32>().map_err(not_f32)?;
    values.chunks_exact_mut(classes).for_each(f);
    Ok(Tensor::from_data(data, &device))
}

/// The maximum of a row of logits in host memory, ignoring NaN (as
/// `f32::max` does; `-inf` for an empty or all-NaN row), and whether every
/// value is finite or `-inf` (a masked entry): one pass in 8 lanes, which
/// vectorises where the standard library's `max` and a short-circuiting
/// `all` do not. The host-row kernels' first pass, for callers with rows
/// of their own.
///
/// ```
/// use lastmile_core::numerics::max_and_tame;
/// let row = [0.5, f32::NEG_INFINITY, 2.0, -1.0, 0.0, 1.0, 1.5, 0.25, 3.0];
/// assert_eq!(max_and_tame(&row), (3.0, true));
/// assert_eq!(max_and_tame(&[1.0, f32::NAN]), (1.0, false));
/// assert!(!max_and_tame(&[f32::INFINITY]).1);
/// ```
#[inline(always)]
pub fn max_and_tame(row: &[f32]) -> (f32, bool) {
    let (body, tail) = row.as_chunks::<8>();
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut wild = [false; 8];
    for chunk in body {
        for l in 0..8 {
            let v = chunk[l];
            wild[l] |= v.is_nan() | (v == f32::INFINITY);
            lanes[l] = if v > lanes[l] { v } else { lanes[l] };
        }
    }
    let mut max = lanes.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    let mut any_wild = wild.iter().any(|w| *w);
    for &v in tail {
        any_wild |= v.is_nan() | (v == f32::INFINITY);
        max = max.max(v);
    }
    (max, !any_wild)
}

/// Row softmax of `logits / t` (`t > 0`), as `numerics::softmax`.
pub(super) fn softmax(logits: Tensor<2>, t: f32) -> Result<Tensor<2>> {
    map_rows(logits, |row| softmax_row(row, t))
}

/// `softmax(row / t)` in place, for `t > 0`: [`crate::numerics::softmax`]'s
/// host kernel (the same bits), for callers with rows of their own. Three
/// passes (maximum, `exp` and sum, division) compiled for AVX2 + FMA where
/// the CPU has them ([`crate::simd`]). A row holding NaN or `+inf` takes
/// the standard library's `exp`, so that they propagate as on the tensor
/// path.
///
/// ```
/// use lastmile_core::numerics::softmax_row;
/// let mut row = [0.0, 2.0f32.ln(), f32::NEG_INFINITY];
/// softmax_row(&mut row, 1.0);
/// assert!((row[0] - 1.0 / 3.0).abs() < 1e-6 && (row[1] - 2.0 / 3.0).abs() < 1e-6);
/// assert_eq!(row[2], 0.0);
/// ```
pub fn softmax_row(row: &mut [f32], t: f32) {
    with_passes!(p => SoftmaxRow(p, row, t))
}

/// [`softmax_row`] as a SIMD operation: a closure's body is not reliably
/// inlined into the wider function (measured: it ran outside, 4 wide).
struct SoftmaxRow<'a, P>(P, &'a mut [f32], f32);

impl<P: Passes> WithSimd for SoftmaxRow<'_, P> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let SoftmaxRow(passes, row, t) = self;
        let (max, tame) = passes.max_and_tame(row);
        let max = if max.is_infinite() { 0.0 } else { max };
        let sum = if !tame {
            for v in row.iter_mut() {
                *v = ((*v - max) / t).exp();
            }
            lane_sum(row, |v| v)
        } else if t == 1.0 {
            // x / 1 is x: the same bits without a division per value.
            exp_and_sum(row, max, None)
        } else {
            exp_and_sum(row, max, Some(t))
        };
        for v in row.iter_mut() {
            *v /= sum;
        }
    }
}

/// `v ← e^{(v − max)/t}` (`t = None`: no division; 0 below fastmath's
/// floor) for every value, and their sum in [`lane_sum`]'s order (the same
/// bits as summing after), in one pass. `exp` is computed for every value
/// and then selected: a branch would keep the loop scalar.
#[inline(always)]
fn exp_and_sum(row: &mut [f32], max: f32, t: Option<f32>) -> f32 {
    let term = |v: f32| {
        let d = v - max;
        let x = t.map_or(d, |t| d / t);
        let e = exp(x);
        if x < EXP_FLOOR { 0.0 } else { e }
    };
    let (body, tail) = row.as_chunks_mut::<8>();
    let mut lanes = [0.0f32; 8];
    for chunk in body {
        for l in 0..8 {
            chunk[l] = term(chunk[l]);
            lanes[l] += chunk[l];
        }
    }
    for v in tail.iter_mut() {
        *v = term(*v);
    }
    lanes.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// The scans the row kernels start with: the portable loops, or the same
/// comparisons in AVX2 registers (`rows_x86`), the same results.
trait Passes: Copy {
    fn max_and_tame(self, row: &[f32]) -> (f32, bool);
    fn all_finite(self, values: &[f32]) -> bool;
}

/// The portable loops (8 lanes in arrays).
#[derive(Clone, Copy)]
struct Portable;

impl Passes for Portable {
    #[inline(always)]
    fn max_and_tame(self, row: &[f32]) -> (f32, bool) {
        max_and_tame(row)
    }
    #[inline(always)]
    fn all_finite(self, values: &[f32]) -> bool {
        finite_lanes(values)
    }
}

#[cfg(target_arch = "x86_64")]
impl Passes for pulp::x86::V3 {
    #[inline(always)]
    fn max_and_tame(self, row: &[f32]) -> (f32, bool) {
        super::rows_x86::max_and_tame(self, row)
    }
    #[inline(always)]
    fn all_finite(self, values: &[f32]) -> bool {
        super::rows_x86::all_finite(self, values)
    }
}

/// `SamplingParams::new(t).probabilities_unchecked` of one row of logits
/// in host memory, appended to `out`: the division by `t` first, then
/// [`softmax_row`] at temperature 1, as the tensor path computes them (the
/// same bits). Returns `false` (the appended values unspecified) when the
/// tempered row is not a distribution's logits: a NaN, a `+inf` (also from
/// `x / t` overflowing) or only `-inf`, where the tensor path's result
/// holds NaN.
///
/// ```
/// use lastmile_core::numerics::push_tempered_softmax;
/// let mut p = Vec::new();
/// assert!(push_tempered_softmax(&[0.0, 2.0f32.ln()], 0.5, &mut p));
/// assert!((p[0] - 0.2).abs() < 1e-6 && (p[1] - 0.8).abs() < 1e-6);
/// assert!(!push_tempered_softmax(&[3.0e38, 0.0], 0.5, &mut p));
/// assert_eq!(p.len(), 4);
/// ```
pub fn push_tempered_softmax(logits: &[f32], t: f32, out: &mut Vec<f32>) -> bool {
    let from = out.len();
    let (max, tame) = tempered(logits, t, out);
    if !tame || max == f32::NEG_INFINITY {
        return false;
    }
    softmax_row(&mut out[from..], 1.0);
    true
}

/// Appends `logits / t` to `out` and returns their [`max_and_tame`].
fn tempered(logits: &[f32], t: f32, out: &mut Vec<f32>) -> (f32, bool) {
    with_passes!(p => Tempered(p, logits, t, out))
}

/// [`tempered`] as a SIMD operation.
struct Tempered<'a, P>(P, &'a [f32], f32, &'a mut Vec<f32>);

impl<P: Passes> WithSimd for Tempered<'_, P> {
    type Output = (f32, bool);

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) -> (f32, bool) {
        let Tempered(passes, logits, t, out) = self;
        let from = out.len();
        out.extend(logits.iter().map(|x| x / t));
        passes.max_and_tame(&out[from..])
    }
}

/// The `T → 0` limit of the row softmax, as `numerics::softmax`: uniform
/// over each row's maxima; a row holding NaN becomes NaN.
pub(super) fn greedy(logits: Tensor<2>) -> Result<Tensor<2>> {
    map_rows(logits, |row| {
        if row.iter().any(|v| v.is_nan()) {
            row.fill(f32::NAN);
            return;
        }
        let max = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
        let count = row.iter().filter(|v| **v == max).count() as f32;
        for v in row.iter_mut() {
            *v = if *v == max { 1.0 / count } else { 0.0 };
        }
    })
}

/// Row entropies `−Σ p ln p` (`0 ln 0 = 0`) of `probs`, as `numerics::entropy`.
pub(super) fn entropy(probs: Tensor<2>) -> Result<Tensor<1>> {
    let [batch, classes] = probs.dims();
    let device = probs.device();
    let data = probs.into_data();
    let values = data.as_slice::<f32>().map_err(not_f32)?;
    let h: Vec<f32> = values.chunks_exact(classes).map(entropy_row).collect();
    Ok(Tensor::from_data(TensorData::new(h, [batch]), &device))
}

/// The entropy `−Σ p ln p` (`0 ln 0 = 0`) of one row of probabilities in
/// host memory: [`crate::numerics::entropy`]'s host kernel (the same
/// bits), vectorised ([`crate::simd`]); a row holding NaN or an infinity
/// takes the standard library's `ln`.
///
/// ```
/// use lastmile_core::numerics::entropy_row;
/// assert!((entropy_row(&[0.5, 0.5, 0.0]) - 2.0f32.ln()).abs() < 1e-6);
/// ```
pub fn entropy_row(row: &[f32]) -> f32 {
    with_passes!(p => EntropyRow(p, row))
}

/// [`entropy_row`] as a SIMD operation (see [`SoftmaxRow`]).
struct EntropyRow<'a, P>(P, &'a [f32]);

impl<P: Passes> WithSimd for EntropyRow<'_, P> {
    type Output = f32;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) -> f32 {
        let EntropyRow(passes, row) = self;
        if passes.all_finite(row) {
            // p·ln p for every value, then selected (ln 0 = −inf): no branch.
            -lane_sum(row, |p| {
                let t = p * ln(p);
                if p > 0.0 { t } else { 0.0 }
            })
        } else {
            -row.iter()
                .map(|&p| if p > 0.0 { p * p.ln() } else { 0.0 })
                .sum::<f32>()
        }
    }
}

/// Whether every value in host memory is finite: one pass in 8 lanes,
/// compiled for AVX2 where the CPU has it ([`crate::simd`]).
///
/// ```
/// use lastmile_core::numerics::all_finite;
/// assert!(all_finite(&[0.0, -1.0e30, 3.0]));
/// assert!(!all_finite(&[0.0, f32::NEG_INFINITY]));
/// ```
pub fn all_finite(values: &[f32]) -> bool {
    with_passes!(p => Finite(p, values))
}

/// [`all_finite`] as a SIMD operation (see [`SoftmaxRow`]).
struct Finite<'a, P>(P, &'a [f32]);

impl<P: Passes> WithSimd for Finite<'_, P> {
    type Output = bool;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) -> bool {
        self.0.all_finite(self.1)
    }
}

/// [`all_finite`]'s loop, for callers already inside a SIMD operation.
#[inline(always)]
fn finite_lanes(values: &[f32]) -> bool {
    let (body, tail) = values.as_chunks::<8>();
    let mut bad = [false; 8];
    for chunk in body {
        for l in 0..8 {
            bad[l] |= !chunk[l].is_finite();
        }
    }
    !bad.iter().any(|b| *b) && tail.iter().all(|x| x.is_finite())
}

/// `numerics::sample_categorical_on_device` on host rows: the same
/// uniform per row (`1 − U[0, 1)`, in row order) and the same rule, the
/// number of classes whose running sum is below `u` times the row's total,
/// clamped to the last class. The running sums are taken in f32 in index
/// order, as the tensor path's `cumsum`, so the same classes are picked
/// (tested against it); one sequential pass instead of five tensor
/// operations over the row.
pub(super) fn sample<R: Rng + ?Sized>(probs: Tensor<2>, rng: &mut R) -> Result<Tensor<1, Int>> {
    let [batch, classes] = probs.dims();
    let device = probs.device();
    let data = probs.into_data();
    let values = data.as_slice::<f32>().map_err(not_f32)?;
    let picks: Vec<i64> = values
        .chunks_exact(classes)
        .map(|row| sample_row(row, 1.0 - rng.random::<f32>()) as i64)
        .collect();
    Ok(Tensor::from_data(TensorData::new(picks, [batch]), &device))
}

/// The class [`crate::numerics::sample_categorical_on_device`] picks from
/// one row of (possibly unnormalised) probabilities in host memory for its
/// uniform `u ∈ (0, 1]`: the number of classes whose running sum, in f32 in
/// index order as the tensor `cumsum`, is below `u` times the row's total,
/// clamped to the last class (0 for an empty row). For callers that sample
/// host rows of their own with the same rule.
///
/// ```
/// use lastmile_core::numerics::sample_row;
/// let row = [0.0, 2.0, 0.0, 2.0]; // unnormalised: half on class 1, half on 3
/// assert_eq!(sample_row(&row, 0.25), 1);
/// assert_eq!(sample_row(&row, 0.75), 3);
/// assert_eq!(sample_row(&row, 1.0), 3);
/// ```
pub fn sample_row(row: &[f32], u: f32) -> usize {
    // One pass of running sums (f32, index order: a chain no reordering may
    // break), keeping the sum before each span. Without negative values or
    // NaN the running sums never decrease, so the classes below `target`
    // are every class before the span where the sums reach it, then a walk
    // in that span from its kept sum: the same sums, a pass fewer.
    const SPAN: usize = 64;
    let mut starts = Vec::with_capacity(row.len().div_ceil(SPAN));
    let mut running = 0.0f32;
    let mut rising = true;
    for span in row.chunks(SPAN) {
        starts.push(running);
        for &p in span {
            running += p;
            rising &= p >= 0.0;
        }
    }
    let target = u * running;
    let last = row.len().saturating_sub(1);
    if !rising {
        let mut running = 0.0f32;
        let mut below = 0usize;
        for p in row {
            running += p;
            below += usize::from(running < target);
        }
        return below.min(last);
    }
    // The span holding the first running sum ≥ target: the last one that
    // starts below it.
    let Some(s) = starts.iter().rposition(|&start| start < target) else {
        return 0;
    };
    let mut running = starts[s];
    let mut below = s * SPAN;
    for &p in &row[s * SPAN..((s + 1) * SPAN).min(row.len())] {
        running += p;
        if running >= target {
            break;
        }
        below += 1;
    }
    below.min(last)
}

/// `Σ f(v)` over `row` in 8 running lanes (a loop that vectorises), the
/// lanes then summed in order, then the tail.
#[inline(always)]
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let (body, tail) = row.as_chunks::<8>();
    let mut lanes = [0.0f32; 8];
    for chunk in body {
        for l in 0..8 {
            lanes[l] += f(chunk[l]);
        }
    }
    lanes.iter().sum::<f32>() + tail.iter().map(|v| f(*v)).sum::<f32>()
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::sample_row;
    #[cfg(target_arch = "x86_64")]
    use super::{Passes, Portable};

    /// The AVX2 scans give the portable loops' results (the maxima's
    /// bits, the flags, finiteness) over rows with masked entries, ±0,
    /// large magnitudes, odd tails, NaN and infinities.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_passes_give_the_portable_bits() {
        let Some(simd) = pulp::x86::V3::try_new() else {
            eprintln!("no AVX2 on this CPU: only the portable passes run here");
            return;
        };
        let mut rng = StdRng::seed_from_u64(11);
        let mut checked = 0;
        for len in [0, 5, 8, 13, 64, 1001, 49_152] {
            for kind in 0..5 {
                let row: Vec<f32> = (0..len)
                    .map(|i| match (kind, i % 7) {
                        (1, 0) => f32::NEG_INFINITY,
                        (2, 3) => -200.0,
                        (3, 1) => {
                            if i % 2 == 0 {
                                0.0
                            } else {
                                -0.0
                            }
                        }
                        (4, 5) if i == 5 => f32::NAN,
                        (4, 6) if i == 6 => f32::INFINITY,
                        _ => rng.random_range(-60.0f32..60.0) * if kind == 2 { 3.0 } else { 1.0 },
                    })
                    .collect();
                let (m, tame) = Portable.max_and_tame(&row);
                let (mv, tame_v) = simd.max_and_tame(&row);
                assert_eq!(
                    (m.to_bits(), tame),
                    (mv.to_bits(), tame_v),
                    "max, len {len} kind {kind}"
                );
                assert_eq!(
                    Portable.all_finite(&row),
                    simd.all_finite(&row),
                    "finite, len {len}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 35);
    }

    /// The rule in its plain form: the total, then the count of running
    /// sums below `u` times it.
    fn naive(row: &[f32], u: f32) -> usize {
        let target = u * row.iter().fold(0.0f32, |c, p| c + p);
        let mut running = 0.0f32;
        let below = row
            .iter()
            .filter(|&&p| {
                running += p;
                running < target
            })
            .count();
        below.min(row.len().saturating_sub(1))
    }

    #[test]
    fn one_pass_sampling_counts_as_the_plain_rule() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut checked = 0;
        for len in [0, 1, 63, 64, 65, 1000, 49_152] {
            for kind in 0..4 {
                let row: Vec<f32> = (0..len)
                    .map(|i| match kind {
                        // Sparse: runs of zeros, so sums stay level across spans.
                        0 => {
                            if rng.random::<f32>() < 0.9 {
                                0.0
                            } else {
                                rng.random()
                            }
                        }
                        1 => rng.random::<f32>().powi(8),
                        // Mass only at the ends.
                        2 => f32::from(u8::from(i == 0 || i + 1 == len)),
                        // A negative value: the plain count's fallback.
                        _ => rng.random::<f32>() - 0.1,
                    })
                    .collect();
                for k in 0..200 {
                    let u = match k {
                        0 => 1.0,
                        1 => f32::MIN_POSITIVE,
                        _ => 1.0 - rng.random::<f32>(),
                    };
                    assert_eq!(
                        sample_row(&row, u),
                        naive(&row, u),
                        "len {len}, kind {kind}, u {u}"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 7 * 4 * 200);
        let nan = [0.5, f32::NAN, 0.5];
        assert_eq!(sample_row(&nan, 0.5), naive(&nan, 0.5));
    }
}
