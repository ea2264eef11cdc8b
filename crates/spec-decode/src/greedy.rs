//! Greedy (T = 0) decisions on rows of logits in host memory.
//!
//! At T = 0 a decoding step needs, per row of logits, only the first
//! maximum (the token) and, for a draft, the entropy and top probability of
//! its softmax (the policies' signals). On a CPU device those are two
//! passes over the row's values; the device path (softmax, argmax, the
//! fault flags, entropy and maximum as separate tensor operations) costs
//! about 0.6 ms for one 49 152-token row on the reference machine, a tenth
//! of a SmolLM2-135M decoding step, once per draft token and once per
//! verification (`docs/benchmarks.md`). Same decisions as the device path:
//! the first maximum, as the tensor `argmax`; a NaN, a `+inf` or a row of
//! only `-inf` is a fault (`logits_fault`), which callers then locate with
//! their device-path report.

use burn::tensor::{DType, Int, Tensor, TensorData};
use lastmile_core::CoreError;
use lastmile_core::fastmath::{exp, ln};
use lastmile_core::host::{is_host, with_host_ref};
use lastmile_core::numerics::max_and_tame;
use lastmile_core::simd::{Simd, WithSimd, vectorize};

use crate::error::Result;

/// One row's greedy decision and the signals of its softmax.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct GreedyRow {
    /// The first index of the row's maximum.
    pub(crate) token: usize,
    /// Entropy of `softmax(row)`, nats.
    pub(crate) entropy: f32,
    /// The largest probability of `softmax(row)`.
    pub(crate) top: f32,
}

impl GreedyRow {
    /// A decision without signals (a sampled token, or a verification's).
    pub(crate) fn token(token: usize) -> Self {
        Self {
            token,
            entropy: 0.0,
            top: 0.0,
        }
    }
}

/// What [`greedy_rows`] found.
#[derive(Debug)]
pub(crate) enum Greedy {
    /// The logits are not `f32` values on a host device: take the device path.
    NotHost,
    /// A row holds a NaN or `+inf`, or only `-inf`.
    Fault,
    /// One decision per row.
    Rows(Vec<GreedyRow>),
}

/// The greedy decisions of rows `pick` of `logits` `[rows, vocab]` on a
/// host device, with the softmax's entropy and top probability when
/// `signals` (a draft's policy reads them; a verification does not), and
/// the logits handed back for the caller's other paths.
///
/// The values are read in place: a CPU tensor that is not shared hands its
/// buffer over and takes it back without a copy, where selecting the rows
/// first and reading them copied each 49 152-token row three times
/// (measured: a fifth of the decoding loop's host work). The loops run
/// 8 wide where the CPU allows ([`lastmile_core::simd`]): a draft token's
/// signals are two passes over its row, exponentials included.
///
/// # Errors
/// [`CoreError::IndexOutOfRange`] for a picked row `≥ rows`;
/// [`CoreError::TensorData`] for values that cannot be read.
pub(crate) fn greedy_rows(
    logits: Tensor<2>,
    pick: &[usize],
    signals: bool,
) -> Result<(Greedy, Tensor<2>)> {
    let Some(vocab) = host_vocab(&logits, pick)? else {
        return Ok((Greedy::NotHost, logits));
    };
    // One read, counted as every read of the decoding loop is.
    let (logits, found) = with_host_ref(logits, |values| {
        vectorize(Decide {
            values,
            vocab,
            pick,
            signals,
        })
    })?;
    Ok((found, logits))
}

/// The row length of `logits` `[rows, vocab]` when they are `f32` values on
/// a host device, so that rows `pick` can be read in place; `None` on
/// other devices.
///
/// # Errors
/// [`CoreError::IndexOutOfRange`] for a picked row `≥ rows`.
pub(crate) fn host_vocab(logits: &Tensor<2>, pick: &[usize]) -> Result<Option<usize>> {
    if logits.dtype() != DType::F32 || !is_host(&logits.device()) {
        return Ok(None);
    }
    let [rows, vocab] = logits.dims();
    if let Some(&index) = pick.iter().find(|&&r| r >= rows) {
        return Err(CoreError::IndexOutOfRange {
            what: "picked row of logits".to_owned(),
            index,
            bound: rows,
        }
        .into());
    }
    Ok(Some(vocab))
}

/// [`greedy_rows`]'s loops as one operation for [`vectorize`].
struct Decide<'a> {
    values: &'a [f32],
    vocab: usize,
    pick: &'a [usize],
    signals: bool,
}

impl WithSimd for Decide<'_> {
    type Output = Greedy;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) -> Greedy {
        let mut found = Vec::with_capacity(self.pick.len());
        for &r in self.pick {
            let Some(row) = self.values.get(r * self.vocab..(r + 1) * self.vocab) else {
                return Greedy::Fault;
            };
            let Some((token, max)) = first_max(row) else {
                return Greedy::Fault;
            };
            let (entropy, top) = if self.signals {
                softmax_signals(row, max)
            } else {
                (0.0, 0.0)
            };
            found.push(GreedyRow {
                token,
                entropy,
                top,
            });
        }
        Greedy::Rows(found)
    }
}

/// [`crate::verify::logits_fault`] of `logits` `[rows, vocab]` on a host
/// device (a NaN, a `+inf`, or a row of only `-inf`) as a `[1]` flag
/// tensor, from one pass over host memory instead of seven tensor
/// operations; `None` on other devices.
///
/// # Errors
/// [`lastmile_core::CoreError::TensorData`] for values that cannot be read.
pub(crate) fn host_logits_fault(logits: &Tensor<2>) -> Result<Option<Tensor<1, Int>>> {
    if logits.dtype() != DType::F32 || !is_host(&logits.device()) {
        return Ok(None);
    }
    let [_, vocab] = logits.dims();
    // Host memory: no device synchronisation (the caller's one read follows).
    let values = logits
        .clone()
        .into_data()
        .try_to_vec_as::<f32>()
        .map_err(|e| CoreError::TensorData(format!("logits as f32: {e:?}")))?;
    let bad = values
        .chunks_exact(vocab.max(1))
        .any(|row| first_max(row).is_none());
    let flag = TensorData::new(vec![i64::from(bad)], [1]);
    Ok(Some(Tensor::from_data(flag, &logits.device())))
}

/// The first index of the row's maximum and the maximum; `None` for a row
/// holding a NaN or `+inf`, or only `-inf` (or empty).
#[inline(always)]
fn first_max(row: &[f32]) -> Option<(usize, f32)> {
    let (max, tame) = max_and_tame(row);
    if !tame || max == f32::NEG_INFINITY {
        return None;
    }
    row.iter().position(|&v| v == max).map(|i| (i, max))
}

/// Entropy and top probability of `softmax(row)` for a row whose maximum
/// is the finite `max`: with `e_i = exp(x_i − max)`, `S = Σ e_i` and
/// `A = Σ e_i (x_i − max)`, `H = −Σ p_i ln p_i = ln S − A / S` and the top
/// probability is `1 / S` (the maximum's `e` is 1).
#[inline(always)]
fn softmax_signals(row: &[f32], max: f32) -> (f32, f32) {
    // exp underflows to 0 below −87.3 (fastmath's floor); such terms add
    // nothing to either sum, as in the device path's softmax. Computed for
    // every value and then selected, with no branch, the loop vectorises
    // (measured: a branch kept it scalar, most of the decoding loop's host
    // time with a draft).
    let term = |v: f32| {
        let x = v - max;
        let (e, under) = (exp(x), x < -87.3);
        (if under { 0.0 } else { e }, if under { 0.0 } else { x })
    };
    let (body, tail) = row.as_chunks::<8>();
    let mut s = [0.0f32; 8];
    let mut a = [0.0f32; 8];
    for chunk in body {
        for l in 0..8 {
            let (e, x) = term(chunk[l]);
            s[l] += e;
            a[l] += e * x;
        }
    }
    let mut sum: f32 = s.iter().sum();
    let mut weighted: f32 = a.iter().sum();
    for &v in tail {
        let (e, x) = term(v);
        sum += e;
        weighted += e * x;
    }
    ((ln(sum) - weighted / sum).max(0.0), 1.0 / sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use burn::tensor::Int;
    use lastmile_core::backend_test;
    use lastmile_core::numerics::{entropy, softmax};

    fn rows(values: Vec<f32>, vocab: usize, device: &Device) -> Tensor<2> {
        let n = values.len() / vocab;
        Tensor::from_data(TensorData::new(values, [n, vocab]), device)
    }

    /// Varied rows over 1 003 tokens (not a multiple of the 8 lanes):
    /// random logits, a tie for the maximum, masked entries, a confident row.
    fn sample_rows() -> (Vec<f32>, usize) {
        let vocab = 1003;
        let mut v: Vec<f32> = (0..4 * vocab)
            .map(|i| ((i * 7919 + 17) % 1009) as f32 / 97.0 - 5.0)
            .collect();
        v[vocab + 10] = 20.0;
        v[vocab + 700] = 20.0;
        for x in &mut v[2 * vocab..2 * vocab + 500] {
            *x = f32::NEG_INFINITY;
        }
        v[3 * vocab + 3] = 200.0;
        (v, vocab)
    }

    fn floats(t: Tensor<1>) -> Vec<f32> {
        lastmile_core::convert::tensor_to_vec(t).unwrap_or_else(|e| panic!("{e}"))
    }

    backend_test!(greedy_rows_match_the_tensor_ops, |device| {
        let (v, vocab) = sample_rows();
        let t = rows(v, vocab, device);
        // Every row, in order; then picked rows (repeated, out of order).
        let (found, t) = greedy_rows(t, &[0, 1, 2, 3], true).unwrap();
        let (picked, t) = greedy_rows(t, &[3, 1, 1], true).unwrap();
        let got = match (found, picked) {
            (Greedy::Rows(rows), Greedy::Rows(picked)) => {
                assert_eq!(picked, vec![rows[3], rows[1], rows[1]]);
                rows
            }
            (Greedy::NotHost, Greedy::NotHost) => {
                assert!(!is_host(device), "host f32 rows take the host path");
                return;
            }
            other => panic!("finite rows: {other:?}"),
        };
        assert!(
            greedy_rows(t.clone(), &[4], true).is_err(),
            "a picked row out of range"
        );
        let argmax = lastmile_core::numerics::argmax(t.clone()).unwrap();
        let p = softmax(t, 1.0).unwrap();
        let h = floats(entropy(p.clone()).unwrap());
        let top = floats(p.max_dim(1).reshape([4]));
        assert_eq!(got.len(), 4);
        for (r, g) in got.iter().enumerate() {
            assert_eq!(g.token, argmax[r], "row {r}: the first maximum");
            // Two formulas for H: within float rounding of 1 000 terms.
            let tol = 1e-4 * (1.0 + h[r]);
            assert!(
                (g.entropy - h[r]).abs() <= tol,
                "row {r}: {} vs {}",
                g.entropy,
                h[r]
            );
            assert!(
                (g.top - top[r]).abs() <= 1e-5,
                "row {r}: {} vs {}",
                g.top,
                top[r]
            );
        }
        assert_eq!(got[1].token, 10, "ties: the first maximum");
        assert!(got[3].entropy < 1e-6 && (got[3].top - 1.0).abs() < 1e-6);
    });

    backend_test!(faults_are_reported, |device| {
        let (v, vocab) = sample_rows();
        let host = is_host(device);
        let fault = |values: Vec<f32>| {
            let all: Vec<usize> = (0..values.len() / vocab).collect();
            match greedy_rows(rows(values, vocab, device), &all, true)
                .unwrap()
                .0
            {
                Greedy::Fault => true,
                Greedy::NotHost => !host,
                Greedy::Rows(_) => false,
            }
        };
        for bad in [f32::NAN, f32::INFINITY] {
            let mut w = v.clone();
            w[vocab + 5] = bad;
            assert!(fault(w), "{bad}");
        }
        assert!(fault(vec![f32::NEG_INFINITY; vocab]), "a fully masked row");
        // The flag tensor agrees with the tensor ops' flag.
        let mut w = v.clone();
        for (case, bad) in [(0, None), (1, Some(f32::NAN)), (2, Some(f32::INFINITY))] {
            if let Some(x) = bad {
                w[2 * vocab + 600] = x;
            }
            let t = rows(w.clone(), vocab, device);
            let read = |f: Tensor<1, Int>| f.into_data().try_to_vec_as::<i64>().unwrap()[0] != 0;
            if let Some(flag) = host_logits_fault(&t).unwrap() {
                let expected = read(crate::verify::logits_fault(&t));
                assert_eq!(read(flag), expected, "case {case}");
                assert_eq!(expected, bad.is_some(), "case {case}");
            }
        }
        assert!(!fault(v.clone()) || !host);
        // An autodiff device keeps its graph: the caller's tensor path.
        let t = rows(v, vocab, &device.clone().autodiff());
        assert!(matches!(
            greedy_rows(t, &[0], true).unwrap().0,
            Greedy::NotHost
        ));
    });
}
