//! Numerics checked against naive f64 references on every enabled backend.
#![allow(clippy::unwrap_used)]

use burn::tensor::{Device, Tensor, TensorData};
use lastmile_core::backend_test;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::numerics::*;
use lastmile_core::stats::chi_square_gof;
use lastmile_core::testing::assert_close;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const NEG: f32 = f32::NEG_INFINITY;

fn t2(rows: &[Vec<f32>], device: &Device) -> Tensor<2> {
    let cols = rows[0].len();
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), cols]), device)
}

/// Naive reference: softmax of x/T in f64, T = 0 as the limit (uniform over maxima).
fn ref_softmax(row: &[f32], t: f64) -> Vec<f64> {
    let max = row.iter().copied().fold(NEG, f32::max) as f64;
    if t == 0.0 {
        let count = row.iter().filter(|&&x| x as f64 == max).count() as f64;
        return row
            .iter()
            .map(|&x| if x as f64 == max { 1.0 / count } else { 0.0 })
            .collect();
    }
    let e: Vec<f64> = row.iter().map(|&x| ((x as f64 - max) / t).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Naive reference in the log domain: (x − m)/T − log Σ exp((x − m)/T).
fn ref_log_softmax(row: &[f32], t: f64) -> Vec<f64> {
    if t == 0.0 {
        return ref_softmax(row, 0.0).iter().map(|p| p.ln()).collect();
    }
    let max = row.iter().copied().fold(NEG, f32::max) as f64;
    let lse = row
        .iter()
        .map(|&x| ((x as f64 - max) / t).exp())
        .sum::<f64>()
        .ln();
    row.iter().map(|&x| (x as f64 - max) / t - lse).collect()
}

fn random_rows(seed: u64, rows: usize, cols: usize, scale: f32) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..rows)
        .map(|_| {
            (0..cols)
                .map(|_| (rng.random::<f32>() - 0.5) * 2.0 * scale)
                .collect()
        })
        .collect()
}

fn edge_rows() -> Vec<Vec<f32>> {
    vec![
        vec![1.0, 2.0, 3.0, 4.0, 5.0],
        vec![0.0, 0.0, 0.0, 0.0, 0.0],      // all equal
        vec![NEG, 1.0, NEG, 2.0, NEG],      // masked entries
        vec![80.0, -80.0, 79.0, 0.0, 1e-3], // large spread
        vec![3.0, 3.0, 1.0, 3.0, -2.0],     // tied maxima
    ]
}

backend_test!(softmax_matches_reference_at_every_temperature, |device| {
    let mut rows = edge_rows();
    rows.extend(random_rows(1, 6, 5, 10.0));
    for t in [0.0, 1e-4, 0.1, 0.7, 1.0, 2.5] {
        let p = tensor_to_vec(softmax(t2(&rows, device), t).unwrap()).unwrap();
        let expected: Vec<f64> = rows.iter().flat_map(|r| ref_softmax(r, t)).collect();
        assert_close(&p, &expected, 1e-5, 1e-6);
        let lp = tensor_to_vec(log_softmax(t2(&rows, device), t).unwrap()).unwrap();
        let expected_log: Vec<f64> = rows.iter().flat_map(|r| ref_log_softmax(r, t)).collect();
        assert_close(&lp, &expected_log, 1e-4, 1e-5);
    }
});

backend_test!(single_class_is_certain, |device| {
    let p = tensor_to_vec(softmax(t2(&[vec![-7.0], vec![3.0]], device), 0.5).unwrap()).unwrap();
    assert_eq!(p, vec![1.0, 1.0]);
    let h = tensor_to_vec(entropy_from_logits(t2(&[vec![-7.0]], device), 1.0).unwrap()).unwrap();
    assert_eq!(h, vec![0.0]);
});

backend_test!(log_sum_exp_and_entropy_match_reference, |device| {
    let mut rows = edge_rows();
    rows.extend(random_rows(2, 4, 5, 30.0));
    let lse = tensor_to_vec(log_sum_exp(t2(&rows, device)).unwrap()).unwrap();
    let expected: Vec<f64> = rows
        .iter()
        .map(|r| {
            let m = r.iter().copied().fold(NEG, f32::max) as f64;
            m + r.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
        })
        .collect();
    assert_close(&lse, &expected, 1e-6, 1e-5);

    for t in [0.0, 0.5, 1.0, 3.0] {
        let h = tensor_to_vec(entropy_from_logits(t2(&rows, device), t).unwrap()).unwrap();
        let probs = softmax(t2(&rows, device), t).unwrap();
        let h2 = tensor_to_vec(entropy(probs).unwrap()).unwrap();
        let expected: Vec<f64> = rows
            .iter()
            .map(|r| {
                ref_softmax(r, t)
                    .iter()
                    .filter(|&&p| p > 0.0)
                    .map(|&p| -p * p.ln())
                    .sum()
            })
            .collect();
        assert_close(&h, &expected, 1e-4, 1e-5);
        assert_close(&h2, &expected, 1e-4, 1e-5);
    }
    // an all -inf row has an empty sum
    let lse = tensor_to_vec(log_sum_exp(t2(&[vec![NEG, NEG]], device)).unwrap()).unwrap();
    assert_eq!(lse, vec![NEG]);
});

backend_test!(top_k_keeps_k_largest_and_ties, |device| {
    let rows = vec![vec![1.0, 5.0, 3.0, 4.0, 2.0], vec![2.0, 2.0, 2.0, 1.0, 0.0]];
    let out = tensor_to_vec(top_k_filter(t2(&rows, device), 2).unwrap()).unwrap();
    assert_eq!(&out[..5], &[NEG, 5.0, NEG, 4.0, NEG]);
    // three-way tie at the 2nd largest value: all kept
    assert_eq!(&out[5..], &[2.0, 2.0, 2.0, NEG, NEG]);
    let same = tensor_to_vec(top_k_filter(t2(&rows, device), 9).unwrap()).unwrap();
    assert_eq!(same[0], 1.0);
    assert!(top_k_filter(t2(&rows, device), 0).is_err());
});

backend_test!(top_p_keeps_minimal_nucleus, |device| {
    let probs = [0.05f32, 0.4, 0.25, 0.2, 0.1];
    let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    for (p, kept) in [
        (0.3, vec![1]),
        (0.39, vec![1]),
        (0.41, vec![1, 2]),
        (0.7, vec![1, 2, 3]),
        (0.86, vec![1, 2, 3, 4]),
        (0.999, vec![0, 1, 2, 3, 4]),
    ] {
        let out =
            tensor_to_vec(top_p_filter(t2(std::slice::from_ref(&logits), device), p).unwrap())
                .unwrap();
        let got: Vec<usize> = (0..5).filter(|&i| out[i].is_finite()).collect();
        assert_eq!(got, kept, "p = {p}");
    }
    assert!(top_p_filter(t2(std::slice::from_ref(&logits), device), 0.0).is_err());
    assert!(top_p_filter(t2(&[logits], device), 1.5).is_err());
});

backend_test!(argmax_picks_first_maximum, |device| {
    let rows = vec![vec![0.0, 2.0, 2.0], vec![NEG, NEG, -1.0]];
    assert_eq!(argmax(t2(&rows, device)).unwrap(), vec![1, 2]);
});

backend_test!(sampling_frequencies_pass_chi_square, |device| {
    // 4000 rows of the same distribution, with a zero-probability class in the middle
    // and at both ends: chi-square against the true probabilities.
    let dist = [0.0f32, 0.1, 0.25, 0.0, 0.4, 0.15, 0.1, 0.0];
    let n = 4000;
    let rows = vec![dist.to_vec(); n];
    let mut rng = StdRng::seed_from_u64(2024);
    let mut counts = [0u64; 8];
    for _ in 0..5 {
        for s in sample_categorical(t2(&rows, device), &mut rng).unwrap() {
            counts[s] += 1;
        }
    }
    let expected: Vec<f64> = dist.iter().map(|&p| p as f64).collect();
    let test = chi_square_gof(&counts, &expected).unwrap();
    assert_eq!(
        counts[0] + counts[3] + counts[7],
        0,
        "zero-probability class drawn"
    );
    assert!(
        test.p_value > 1e-3,
        "chi-square rejected exact sampler: {test:?}"
    );
});

backend_test!(sampling_negative_control_is_rejected, |device| {
    // Sample from one distribution and test against a slightly different one:
    // the same test must reject, or it cannot detect a biased sampler.
    let rows = vec![vec![0.3f32, 0.3, 0.4]; 20000];
    let mut rng = StdRng::seed_from_u64(5);
    let mut counts = [0u64; 3];
    for s in sample_categorical(t2(&rows, device), &mut rng).unwrap() {
        counts[s] += 1;
    }
    let test = chi_square_gof(&counts, &[0.33, 0.3, 0.37]).unwrap();
    assert!(test.p_value < 1e-3, "biased sampler not detected: {test:?}");
});

backend_test!(same_seed_same_samples, |device| {
    let rows = random_rows(3, 64, 10, 3.0);
    let probs = || softmax(t2(&rows, device), 1.0).unwrap();
    let a = sample_categorical(probs(), &mut StdRng::seed_from_u64(9)).unwrap();
    let b = sample_categorical(probs(), &mut StdRng::seed_from_u64(9)).unwrap();
    assert_eq!(a, b);
    // and the same as a host-side inverse-CDF reference with the same uniforms
    let mut rng = StdRng::seed_from_u64(9);
    let host: Vec<usize> = rows
        .iter()
        .map(|r| {
            let p = ref_softmax(r, 1.0);
            let u = 1.0 - rng.random::<f32>() as f64;
            let mut c = 0.0;
            p.iter()
                .position(|&pi| {
                    c += pi;
                    c >= u
                })
                .unwrap_or(p.len() - 1)
        })
        .collect();
    assert_eq!(a, host);
});

backend_test!(host_sampling_picks_the_tensor_paths_classes, |device| {
    // On a CPU device the sampler runs on host rows; an autodiff device
    // takes the tensor path. Same seeds, same classes, over rows with
    // zero-probability classes and 1 000 classes (rounding of the sums).
    let mut rows = random_rows(5, 300, 1000, 6.0);
    for r in rows.iter_mut().step_by(3) {
        r[..400].fill(NEG);
    }
    let values = tensor_to_vec(softmax(t2(&rows, device), 1.0).unwrap()).unwrap();
    let probs =
        |d: &Device| Tensor::<2>::from_data(TensorData::new(values.clone(), [rows.len(), 1000]), d);
    let draw = |p: Tensor<2>| {
        let picks = sample_categorical_on_device(p, &mut StdRng::seed_from_u64(21)).unwrap();
        lastmile_core::convert::indices_to_vec(picks).unwrap()
    };
    let here = draw(probs(device));
    let tensor_path = draw(probs(&device.clone().autodiff()));
    assert_eq!(here, tensor_path);
});

backend_test!(bad_inputs_are_errors, |device| {
    let ok = t2(&[vec![0.5, 0.5]], device);
    assert!(softmax(ok.clone(), -1.0).is_err());
    assert!(softmax(ok.clone(), f64::NAN).is_err());
    assert!(
        sample_categorical(t2(&[vec![0.5, 0.4]], device), &mut StdRng::seed_from_u64(0)).is_err()
    );
    assert!(
        sample_categorical(
            t2(&[vec![1.5, -0.5]], device),
            &mut StdRng::seed_from_u64(0)
        )
        .is_err()
    );
    assert!(
        sample_categorical(
            t2(&[vec![f32::NAN, 1.0]], device),
            &mut StdRng::seed_from_u64(0)
        )
        .is_err()
    );
    let params = SamplingParams::new(1.0).unwrap();
    assert!(params.probabilities(t2(&[vec![NEG, NEG]], device)).is_err());
    assert!(
        params
            .probabilities(t2(&[vec![f32::INFINITY, 0.0]], device))
            .is_err()
    );
    assert!(SamplingParams::new(1.0).unwrap().with_top_p(0.0).is_err());
    assert!(SamplingParams::new(1.0).unwrap().with_top_k(0).is_err());
    let empty = Tensor::<2>::zeros([0, 3], device);
    assert!(softmax(empty, 1.0).is_err());
});

backend_test!(sampling_params_pipeline_matches_reference, |device| {
    let rows = random_rows(11, 8, 12, 4.0);
    let params = SamplingParams::new(0.7)
        .unwrap()
        .with_top_k(6)
        .unwrap()
        .with_top_p(0.8)
        .unwrap();
    let p = tensor_to_vec(params.probabilities(t2(&rows, device)).unwrap()).unwrap();
    // reference: scale, keep top 6, then minimal nucleus of mass 0.8, renormalise
    let expected: Vec<f64> = rows
        .iter()
        .flat_map(|r| {
            let scaled: Vec<f64> = r.iter().map(|&x| x as f64 / 0.7).collect();
            let mut order: Vec<usize> = (0..r.len()).collect();
            order.sort_by(|&a, &b| scaled[b].total_cmp(&scaled[a]));
            let top: Vec<usize> = order[..6].to_vec();
            let m = scaled[top[0]];
            let z: f64 = top.iter().map(|&i| (scaled[i] - m).exp()).sum();
            let mut keep = vec![];
            let mut mass = 0.0;
            for &i in &top {
                if mass >= 0.8 {
                    break;
                }
                keep.push(i);
                mass += (scaled[i] - m).exp() / z;
            }
            let z2: f64 = keep.iter().map(|&i| (scaled[i] - m).exp()).sum();
            (0..r.len())
                .map(|i| {
                    if keep.contains(&i) {
                        (scaled[i] - m).exp() / z2
                    } else {
                        0.0
                    }
                })
                .collect::<Vec<f64>>()
        })
        .collect();
    assert_close(&p, &expected, 1e-4, 1e-6);
});

/// On a CPU device softmax and entropy run as host loops
/// (`numerics::rows`); an autodiff device takes the tensor operations. The
/// two agree to a few ulp (tolerance 1e-6 relative, measured ≤ 3e-7), give
/// exactly 0 to masked entries, and propagate NaN and `+inf` alike.
#[cfg(feature = "flex")]
#[test]
fn host_rows_match_the_tensor_path() {
    let host = Device::flex();
    let graph = Device::flex().autodiff();
    let mut rng = StdRng::seed_from_u64(5);
    let mut rows: Vec<Vec<f32>> = (0..4)
        .map(|_| {
            (0..49_152)
                .map(|_| rng.random_range(-30.0f32..30.0))
                .collect()
        })
        .collect();
    rows[1][7] = NEG;
    rows[2].iter_mut().skip(100).for_each(|v| *v = -1.0e4); // a restricted head's floor
    let odd = vec![
        vec![1.0, f32::NAN, 0.0],
        vec![1.0, f32::INFINITY, 0.0],
        vec![NEG; 3],
    ];
    // T = 0: uniform over the maxima (ties and an all-masked row included), identical.
    let greedy = vec![
        vec![1.0, 3.0, 3.0, -2.0],
        vec![NEG; 4],
        vec![0.5, f32::INFINITY, 0.0, 1.0],
    ];
    let a = tensor_to_vec(softmax(t2(&greedy, &host), 0.0).unwrap()).unwrap();
    let b = tensor_to_vec(softmax(t2(&greedy, &graph), 0.0).unwrap().inner()).unwrap();
    assert_eq!(a, b);
    assert_eq!(a[..4], [0.0, 0.5, 0.5, 0.0]);
    let big = tensor_to_vec(softmax(t2(&rows, &host), 0.0).unwrap()).unwrap();
    let want = tensor_to_vec(softmax(t2(&rows, &graph), 0.0).unwrap().inner()).unwrap();
    assert_eq!(big, want);
    let nan = tensor_to_vec(softmax(t2(&[vec![1.0, f32::NAN]], &host), 0.0).unwrap()).unwrap();
    assert!(nan.iter().all(|v| v.is_nan()));
    for t in [0.5, 1.0, 2.0] {
        let a = tensor_to_vec(softmax(t2(&rows, &host), t).unwrap()).unwrap();
        let b = tensor_to_vec(softmax(t2(&rows, &graph), t).unwrap().inner()).unwrap();
        for (r, row) in rows.iter().enumerate() {
            let max = row.iter().copied().fold(NEG, f32::max);
            let want = ref_softmax(row, t);
            for (i, w) in want.iter().enumerate() {
                // The f32 sum of 49 152 terms (5e-6), plus the rounding of (x − max)/T
                // (relative ε·|x − max|/T in the result); below 1e-37 the
                // host loops give 0 where f64 gives a subnormal.
                let z = f64::from((row[i] - max).abs()) / t;
                let tol = (5e-6 + 2.0 * f64::from(f32::EPSILON) * z) * w + 1.2e-38;
                let (x, y) = (f64::from(a[r * 49_152 + i]), f64::from(b[r * 49_152 + i]));
                if *w == 0.0 {
                    assert_eq!((x, y), (0.0, 0.0), "T {t}: masked entry");
                    continue;
                }
                assert!((x - w).abs() <= tol, "T {t}: host {x} vs {w}");
                assert!((y - w).abs() <= 10.0 * tol, "T {t}: tensor {y} vs {w}");
            }
        }
        assert_eq!(a[49_152 + 7], 0.0);
        let ha = tensor_to_vec(entropy(softmax(t2(&rows, &host), t).unwrap()).unwrap()).unwrap();
        let hb = entropy(softmax(t2(&rows, &graph), t).unwrap()).unwrap();
        let hb = tensor_to_vec(hb.inner()).unwrap();
        for (x, y) in ha.iter().zip(&hb) {
            assert!(
                (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                "T {t}: entropy {x} vs {y}"
            );
        }
        let a = tensor_to_vec(softmax(t2(&odd, &host), t).unwrap()).unwrap();
        let b = tensor_to_vec(softmax(t2(&odd, &graph), t).unwrap().inner()).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!(
                x.is_nan() == y.is_nan() && (x.is_nan() || x == y),
                "T {t}: {a:?} vs {b:?}"
            );
        }
    }
}
