//! Exactness of one verification step with synthetic `p` and `q` (every
//! backend), its negative control, and greedy verification.

use super::*;

fn normalise(w: &[f64]) -> Vec<f64> {
    let s: f64 = w.iter().sum();
    w.iter().map(|x| x / s).collect()
}

/// `(name, p, q)`; `q = None` is a deterministic drafter.
type UnitCase = (&'static str, Vec<f64>, Option<Vec<f64>>);

/// The cases over V = 12; the deterministic drafter's proposal is fixed at
/// token 2.
fn unit_cases() -> Vec<UnitCase> {
    let v = 12;
    let ramp: Vec<f64> = normalise(&(1..=v).map(|i| i as f64).collect::<Vec<_>>());
    let bumpy = normalise(&[5.0, 1.0, 3.0, 0.5, 2.0, 4.0, 1.0, 0.2, 2.5, 1.5, 3.0, 1.0]);
    let mut disjoint_p = vec![0.0; v];
    let mut disjoint_q = vec![0.0; v];
    for i in 0..6 {
        disjoint_p[i] = [0.3, 0.2, 0.2, 0.1, 0.1, 0.1][i];
        disjoint_q[i + 6] = 1.0 / 6.0;
    }
    let mut one_hot = vec![0.0; v];
    one_hot[4] = 1.0;
    // q = 0 on tokens where p > 0 (drafts never propose tokens 0..4).
    let mut holes = vec![0.0; v];
    for slot in holes.iter_mut().skip(4) {
        *slot = 1.0 / 8.0;
    }
    vec![
        ("p = q", bumpy.clone(), Some(bumpy.clone())),
        ("generic", ramp.clone(), Some(bumpy.clone())),
        ("disjoint supports", disjoint_p, Some(disjoint_q)),
        ("one-hot q (dense)", bumpy.clone(), Some(one_hot)),
        ("q = 0 where p > 0", ramp.clone(), Some(holes)),
        ("deterministic drafter", bumpy, None),
    ]
}

/// Emitted first-token counts of `n` independent verifications with one draft token.
fn unit_counts(
    device: &Device,
    p: &[f64],
    q: Option<&[f64]>,
    rule: ResidualRule,
    n: usize,
    seed: u64,
) -> Vec<u64> {
    let v = p.len();
    let mut rng = StdRng::seed_from_u64(seed);
    let p32: Vec<f32> = p.iter().map(|x| *x as f32).collect();
    // p for the draft position and (unused unless accepted) the bonus position.
    let p_rows: Vec<f32> = (0..n)
        .flat_map(|_| p32.iter().chain(&p32).copied())
        .collect();
    let p_t = Tensor::<3>::from_data(TensorData::new(p_rows, [n, 2, v]), device);
    let (q_t, drafts) = match q {
        Some(q) => {
            let q32: Vec<f32> = q.iter().map(|x| *x as f32).collect();
            let rows: Vec<f32> = (0..n).flat_map(|_| q32.iter().copied()).collect();
            let q2 = Tensor::<2>::from_data(TensorData::new(rows, [n, v]), device);
            let x = sample_categorical(q2.clone(), &mut rng).unwrap();
            (
                Some(q2.reshape([n, 1, v])),
                x.into_iter().map(|t| vec![t]).collect::<Vec<_>>(),
            )
        }
        None => (None, vec![vec![2]; n]),
    };
    let verdicts = verify_unchecked(p_t, q_t, &drafts, false, rule, &mut rng).unwrap();
    let mut counts = vec![0u64; v];
    for (d, verdict) in drafts.iter().zip(verdicts) {
        let first = if verdict.accepted == 1 {
            d[0]
        } else {
            verdict.token
        };
        counts[first] += 1;
    }
    counts
}

backend_test!(unit_step_is_exact, |device| {
    let cases = unit_cases();
    let level = ALPHA / cases.len() as f64;
    for (i, (name, p, q)) in cases.iter().enumerate() {
        let counts = unit_counts(
            device,
            p,
            q.as_deref(),
            ResidualRule::Exact,
            100_000,
            100 + i as u64,
        );
        let t = chi_square_gof(&counts, p).unwrap();
        assert!(
            t.p_value > level,
            "{name}: p-value {} (chi2 {}, dof {})",
            t.p_value,
            t.statistic,
            t.dof
        );
    }
});

backend_test!(unit_negative_control_is_rejected, |device| {
    // Resampling from q after a rejection is biased whenever p ≠ q: the same test must see it.
    let cases = unit_cases();
    let level = ALPHA / cases.len() as f64;
    for (i, (name, p, q)) in cases.iter().enumerate().filter(|(_, c)| c.0 != "p = q") {
        let counts = unit_counts(
            device,
            p,
            q.as_deref(),
            ResidualRule::DraftDistribution,
            100_000,
            100 + i as u64,
        );
        let t = chi_square_gof(&counts, p).unwrap();
        assert!(
            t.p_value < level,
            "{name}: biased sampler passed, p-value {}",
            t.p_value
        );
    }
});

backend_test!(greedy_verification_matches_argmax, |device| {
    let p = Tensor::<3>::from_floats(
        [[[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.2, 0.2, 0.6]]],
        device,
    );
    let mut rng = StdRng::seed_from_u64(0);
    let v = verify_unchecked(
        p.clone(),
        None,
        &[vec![1, 0]],
        true,
        ResidualRule::Exact,
        &mut rng,
    )
    .unwrap();
    assert_eq!(
        v[0],
        Verdict {
            accepted: 2,
            token: 2
        }
    );
    let v = verify_unchecked(p, None, &[vec![1, 2]], true, ResidualRule::Exact, &mut rng).unwrap();
    assert_eq!(
        v[0],
        Verdict {
            accepted: 1,
            token: 0
        }
    );
});
