//! The verification kernel ([`crate::verify`]) on host rows, for CPU
//! devices: the same rule, the same uniforms and the same verdicts, in one
//! pass over the few rows a verdict needs.
//!
//! The tensor kernel decides every position at once (every acceptance test,
//! a candidate from every position's residual) in ~25 operations over
//! `[B, G + 1, V]`, each a pass with its own allocation on a CPU backend:
//! with SmolLM2's 49 152-token vocabulary a sampling round spent about a
//! millisecond there, a fifth of a decoding step. Here the acceptance
//! tests read one value each, and only the candidate the verdict takes is
//! computed: the residual at the first rejection (or the bonus row), sampled
//! with [`sample_row`], the tensor sampler's rule. Randomness is drawn
//! exactly as the tensor kernel draws it (`B·G` acceptance uniforms, then
//! `B·(G + 1)` candidate uniforms, whatever is used), so both paths give
//! the same verdicts from the same generator (tested).

use burn::tensor::{DType, Int, Tensor};
use lastmile_core::CoreError;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::host::is_host;
use lastmile_core::numerics::{all_finite, max_and_tame, sample_row};
use rand::{Rng, RngExt};

use crate::error::Result;
use crate::verify::{Checked, ResidualRule, Verdict};

/// The verification on host rows, or `None` when `p` (or `q`) is not `f32`
/// on a host device (the caller then runs the tensor kernel). Inputs as the
/// tensor kernel's, already shape-checked: `p` `[B, G + 1, V]`, `q`
/// `[B, G, V]` (ignored when `greedy`), `drafts` `B` lists of at most `G`
/// tokens `< V`.
///
/// # Errors
/// [`CoreError::TensorData`] for values that cannot be read.
pub(crate) fn verify_host<R: Rng + ?Sized>(
    p: &Tensor<3>,
    q: Option<&Tensor<3>>,
    drafts: &[Vec<usize>],
    greedy: bool,
    rule: ResidualRule,
    target_fault: Option<&Tensor<1, Int>>,
    rng: &mut R,
) -> Result<Option<Checked>> {
    let host = |t: &Tensor<3>| t.dtype() == DType::F32 && is_host(&t.device());
    let q = if greedy { None } else { q };
    if !host(p) || q.is_some_and(|q| !host(q)) {
        return Ok(None);
    }
    let [b, g1, v] = p.dims();
    // The verification's one read; `q` and the fault flag are host memory
    // too, read in the same way without a device synchronisation.
    let pv = tensor_to_vec(p.clone())?;
    let qv = match q {
        Some(q) => Some(values(q.clone())?),
        None => None,
    };
    let target_bad = match target_fault {
        Some(f) => f
            .clone()
            .into_data()
            .try_to_vec_as::<i64>()
            .map_err(|e| CoreError::TensorData(format!("fault flag: {e:?}")))?
            .iter()
            .any(|x| *x != 0),
        None => false,
    };
    let rows = HostRows {
        p: &pv,
        q: qv.as_deref(),
        dims: [b, g1, v],
    };
    Ok(Some(verify_rows(
        rows, drafts, greedy, rule, target_bad, rng,
    )))
}

/// The rows a host verification reads: `p` `[B, G + 1, V]` and `q`
/// `[B, G, V]` (`None` for a deterministic drafter or greedy decoding),
/// row-major.
pub(crate) struct HostRows<'a> {
    pub(crate) p: &'a [f32],
    pub(crate) q: Option<&'a [f32]>,
    pub(crate) dims: [usize; 3],
}

/// The verification of `drafts` on host rows (checked as [`verify_host`]'s
/// inputs): the tensor kernel's verdicts from the same draws, or its
/// report of non-finite values (also when `target_bad`, a fault the caller
/// found in the logits behind `p`).
pub(crate) fn verify_rows<R: Rng + ?Sized>(
    rows: HostRows<'_>,
    drafts: &[Vec<usize>],
    greedy: bool,
    rule: ResidualRule,
    target_bad: bool,
    rng: &mut R,
) -> Checked {
    let HostRows {
        p: pv,
        q: qv,
        dims: [b, g1, v],
    } = rows;
    let g = g1 - 1;
    let p_bad = target_bad || !all_finite(pv);

    if greedy {
        if p_bad {
            return Checked::NonFiniteTarget;
        }
        // The first maximum of each p row, as the tensor `argmax`.
        let best = |at: usize| {
            let r = row_of(pv, at, v);
            let (max, _) = max_and_tame(r);
            r.iter().position(|x| *x == max).unwrap_or(0)
        };
        let verdicts = verdicts(
            drafts,
            |r, j, x| x == best(r * g1 + j),
            |r, accepted, _| best(r * g1 + accepted),
        );
        return Checked::Verdicts(verdicts);
    }

    // The tensor kernel's draws, in its order, whatever is used.
    let accept_u: Vec<f32> = if g > 0 {
        (0..b * g).map(|_| rng.random::<f32>()).collect()
    } else {
        Vec::new()
    };
    let candidate_u: Vec<f32> = (0..b * g1).map(|_| 1.0 - rng.random::<f32>()).collect();
    if p_bad {
        return Checked::NonFiniteTarget;
    }
    if qv.is_some_and(|q| !all_finite(q)) {
        return Checked::NonFiniteDraft;
    }
    let mut dist = vec![0.0f32; v];
    let verdicts = verdicts(
        drafts,
        // Acceptance: u·q(x) < p(x) (q(x) = 1 for a deterministic drafter).
        |r, j, x| {
            let u = accept_u[r * g + j];
            let lhs = match qv {
                Some(q) => u * row_of(q, r * g + j, v)[x],
                None => u,
            };
            lhs < row_of(pv, r * g1 + j, v)[x]
        },
        // The candidate there: the residual after a rejection, p at the bonus.
        |r, accepted, d| {
            let pj = row_of(pv, r * g1 + accepted, v);
            let drafted = (accepted < d.len()).then(|| match qv {
                Some(q) => Drafted::Dist(row_of(q, r * g + accepted, v)),
                None => Drafted::Token(d[accepted]),
            });
            candidate(pj, drafted, rule, &mut dist);
            sample_row(&dist, candidate_u[r * g1 + accepted])
        },
    );
    Checked::Verdicts(verdicts)
}

/// One verdict per row: the drafts accepted while `accept(row, position,
/// token)` holds, then `token(row, accepted, drafts)`.
fn verdicts(
    drafts: &[Vec<usize>],
    accept: impl Fn(usize, usize, usize) -> bool,
    mut token: impl FnMut(usize, usize, &[usize]) -> usize,
) -> Vec<Verdict> {
    drafts
        .iter()
        .enumerate()
        .map(|(r, d)| {
            let accepted = d
                .iter()
                .enumerate()
                .take_while(|(j, x)| accept(r, *j, **x))
                .count();
            Verdict {
                accepted,
                token: token(r, accepted, d),
            }
        })
        .collect()
}

/// The draft's distribution at a rejected position.
enum Drafted<'a> {
    /// `q` of a sampling drafter.
    Dist(&'a [f32]),
    /// A deterministic drafter's token (one-hot `q`).
    Token(usize),
}

/// The distribution the candidate is drawn from, into `out`: after a
/// rejection the residual `max(0, p − q)` (`p` itself if that is all zeros,
/// which only rounding can cause), at the bonus position `p`; as the tensor
/// kernel computes them, element by element.
fn candidate(p: &[f32], drafted: Option<Drafted<'_>>, rule: ResidualRule, out: &mut [f32]) {
    let q_at = |i: usize| match &drafted {
        Some(Drafted::Dist(q)) => q[i],
        Some(Drafted::Token(t)) => f32::from(u8::from(i == *t)),
        None => 0.0,
    };
    match rule {
        ResidualRule::Exact => {
            for (i, (o, pi)) in out.iter_mut().zip(p).enumerate() {
                *o = (pi - q_at(i)).max(0.0);
            }
            if out.iter().all(|x| *x <= 0.0) {
                out.copy_from_slice(p);
            }
        }
        #[cfg(test)]
        ResidualRule::DraftDistribution => {
            for (i, (o, pi)) in out.iter_mut().zip(p).enumerate() {
                *o = if drafted.is_some() { q_at(i) } else { *pi };
            }
        }
    }
}

/// Row `at` of `v` values.
fn row_of(values: &[f32], at: usize, v: usize) -> &[f32] {
    &values[at * v..(at + 1) * v]
}

/// The values of a host tensor (no device synchronisation on a host device).
fn values(t: Tensor<3>) -> Result<Vec<f32>> {
    Ok(t.into_data()
        .try_to_vec_as::<f32>()
        .map_err(|e| CoreError::TensorData(format!("draft distributions as f32: {e:?}")))?)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};
    use lastmile_core::backend_test;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use crate::verify::{Checked, ResidualRule, Verdict, verify_kernel};

    /// Rows of random distributions with zeros (sparse supports make
    /// residuals that are all zero, and acceptance of certain tokens).
    fn probs(rng: &mut StdRng, rows: usize, v: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(rows * v);
        for _ in 0..rows {
            let row: Vec<f32> = (0..v)
                .map(|_| {
                    let x: f32 = rng.random();
                    if x < 0.3 { 0.0 } else { x * x }
                })
                .collect();
            let sum: f32 = row.iter().sum::<f32>().max(f32::MIN_POSITIVE);
            out.extend(row.iter().map(|x| x / sum));
        }
        out
    }

    fn verdicts(
        device: &Device,
        p: &[f32],
        q: Option<&[f32]>,
        shape: [usize; 3],
        drafts: &[Vec<usize>],
        (greedy, rule): (bool, ResidualRule),
        seed: u64,
    ) -> Vec<Verdict> {
        let [b, g1, v] = shape;
        let p = Tensor::<3>::from_data(TensorData::new(p.to_vec(), [b, g1, v]), device);
        let q =
            q.map(|q| Tensor::<3>::from_data(TensorData::new(q.to_vec(), [b, g1 - 1, v]), device));
        let mut rng = StdRng::seed_from_u64(seed);
        match verify_kernel(p, q, drafts, greedy, rule, None, &mut rng) {
            Ok(Checked::Verdicts(v)) => v,
            Ok(other) => panic!("finite inputs: {other:?}"),
            Err(e) => panic!("{e}"),
        }
    }

    backend_test!(host_verdicts_equal_the_tensor_kernels, |device| {
        let tensor_path = device.clone().autodiff();
        let (b, g, v) = (3, 4, 40);
        let mut compared = 0;
        for seed in 0..40u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let p = probs(&mut rng, b * (g + 1), v);
            let q = probs(&mut rng, b * g, v);
            // Ragged drafts: the full G, one token, none; drawn from q's support.
            let drafts: Vec<Vec<usize>> = [g, 1, 0]
                .iter()
                .map(|&n| (0..n).map(|_| rng.random_range(0..v)).collect())
                .collect();
            let rules = [ResidualRule::Exact, ResidualRule::DraftDistribution];
            for (rule, q, greedy) in [
                (rules[0], Some(&q[..]), false),
                (rules[0], None, false),
                (rules[1], Some(&q[..]), false),
                (rules[0], None, true),
            ] {
                let args =
                    |d: &Device| verdicts(d, &p, q, [b, g + 1, v], &drafts, (greedy, rule), seed);
                assert_eq!(
                    args(device),
                    args(&tensor_path),
                    "seed {seed}, {rule:?}, greedy {greedy}"
                );
                compared += 1;
            }
        }
        assert_eq!(compared, 160);
    });

    backend_test!(host_verification_reports_non_finite_inputs, |device| {
        let (b, g, v) = (1, 2, 8);
        let mut rng = StdRng::seed_from_u64(3);
        let mut p = probs(&mut rng, b * (g + 1), v);
        let q = probs(&mut rng, b * g, v);
        let drafts = vec![vec![1, 2]];
        let run = |p: &[f32], q: &[f32]| {
            let pt = Tensor::<3>::from_data(TensorData::new(p.to_vec(), [b, g + 1, v]), device);
            let qt = Tensor::<3>::from_data(TensorData::new(q.to_vec(), [b, g, v]), device);
            let mut rng = StdRng::seed_from_u64(0);
            verify_kernel(
                pt,
                Some(qt),
                &drafts,
                false,
                ResidualRule::Exact,
                None,
                &mut rng,
            )
        };
        let mut bad_q = q.clone();
        bad_q[3] = f32::NAN;
        assert!(matches!(run(&p, &bad_q), Ok(Checked::NonFiniteDraft)));
        p[5] = f32::INFINITY;
        assert!(matches!(run(&p, &q), Ok(Checked::NonFiniteTarget)));
    });
}
