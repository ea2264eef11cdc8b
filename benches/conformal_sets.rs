//! Split-conformal calibration + prediction for 10^5 rows × 1000 classes
//! (half calibration, half test) per score function.
//!
//! Besides the criterion measurements (lastmile with 1 and 2 threads, and a
//! naive full-sort implementation as the in-run baseline), the bench writes
//! the probability matrix, labels, uniforms, its own sets and single-run
//! timings to `target/conformal-bench/`, where `benches/conformal_mapie.py`
//! runs MAPIE on the same matrices, checks that the sets are identical and
//! prints the speed ratio.
//!
//! Run: `cargo bench -p lastmile-benches --bench conformal_sets -- --warm-up-time 1 --measurement-time 3`
//! then `python3 benches/conformal_mapie.py`.

use std::hint::black_box;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use lastmile_conformal::{PredictionSets, ScoreFunction, SplitConformal};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const ROWS: usize = 100_000;
const CLASSES: usize = 1000;
const ALPHA: f64 = 0.1;

struct Data {
    probs: Vec<f32>,
    labels: Vec<usize>,
    u_cal: Vec<f64>,
    u_test: Vec<f64>,
}

fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Smallest gap kept between neighbouring probabilities of a row, before the
/// f32 cast. MAPIE decides membership with a 1e-8 tolerance (it keeps every
/// label with `p ≥ p_last − 1e-8`), so two labels closer than that are a tie
/// for it but not for an exact comparison; rows without such near-ties make
/// both rules define the same sets.
const SPREAD: f64 = 5e-8;
/// Gap every row must still have after the f32 cast.
const MIN_GAP: f64 = 2e-8;

/// A 1000-class "classifier": standard normal logits plus a signal of random
/// strength in [3, 8] on the true label (an ImageNet-like regime: most rows
/// confident, some hard). Probabilities closer than [`SPREAD`] are pushed
/// apart (each row changes by at most ~10⁻⁵ in total, then is renormalised)
/// and a row is redrawn if its f32 probabilities still have a gap below
/// [`MIN_GAP`], so that the ranking — and hence the APS/RAPS sets — does not
/// depend on how a library breaks ties or near-ties.
fn generate() -> Data {
    let mut rng = StdRng::seed_from_u64(2024);
    let mut probs = Vec::with_capacity(ROWS * CLASSES);
    let mut labels = Vec::with_capacity(ROWS);
    let mut logits = vec![0.0f64; CLASSES];
    let mut exact = vec![0.0f64; CLASSES];
    let mut order: Vec<usize> = (0..CLASSES).collect();
    let mut row = vec![0.0f32; CLASSES];
    let mut sorted = vec![0.0f32; CLASSES];
    for _ in 0..ROWS {
        let y = rng.random_range(0..CLASSES);
        loop {
            let signal = 3.0 + 5.0 * rng.random::<f64>();
            for (j, l) in logits.iter_mut().enumerate() {
                *l = normal(&mut rng) + if j == y { signal } else { 0.0 };
            }
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            for (p, l) in exact.iter_mut().zip(&logits) {
                *p = (l - m).exp();
            }
            let z: f64 = exact.iter().sum();
            exact.iter_mut().for_each(|p| *p /= z);
            order.sort_unstable_by(|&a, &b| exact[a].total_cmp(&exact[b]));
            for i in 1..CLASSES {
                let floor = exact[order[i - 1]] + SPREAD;
                if exact[order[i]] < floor {
                    exact[order[i]] = floor;
                }
            }
            let z: f64 = exact.iter().sum();
            for (r, p) in row.iter_mut().zip(&exact) {
                *r = (p / z) as f32;
            }
            sorted.copy_from_slice(&row);
            sorted.sort_unstable_by(f32::total_cmp);
            if sorted
                .windows(2)
                .all(|w| f64::from(w[1]) - f64::from(w[0]) >= MIN_GAP)
            {
                break;
            }
        }
        probs.extend_from_slice(&row);
        labels.push(y);
    }
    let half = ROWS / 2;
    let u_cal = (0..half).map(|_| rng.random::<f64>()).collect();
    let u_test = (0..ROWS - half).map(|_| rng.random::<f64>()).collect();
    Data {
        probs,
        labels,
        u_cal,
        u_test,
    }
}

/// The cases: name, score, and whether empty sets get the top label.
fn scores() -> Vec<(&'static str, ScoreFunction, bool)> {
    vec![
        ("lac", ScoreFunction::Lac, false),
        ("aps", ScoreFunction::aps(), false),
        ("aps_non_empty", ScoreFunction::aps(), true),
        (
            "aps_randomized",
            ScoreFunction::Aps { randomized: true },
            false,
        ),
        ("raps", ScoreFunction::raps(0.01, 1), false),
        ("raps_non_empty", ScoreFunction::raps(0.01, 1), true),
        (
            "raps_randomized",
            ScoreFunction::raps(0.01, 1).randomized(true),
            false,
        ),
        ("saps", ScoreFunction::saps(0.05), false),
    ]
}

fn run(data: &Data, score: ScoreFunction, non_empty: bool, threads: usize) -> PredictionSets {
    let half = ROWS / 2;
    let (cal, test) = data.probs.split_at(half * CLASSES);
    let cp = SplitConformal::new(score, ALPHA)
        .expect("valid settings")
        .with_threads(threads)
        .with_non_empty_sets(non_empty);
    cp.calibrate_slice_with_uniforms(cal, CLASSES, &data.labels[..half], &data.u_cal)
        .expect("valid calibration data")
        .predict_slice_with_uniforms(test, CLASSES, &data.u_test)
        .expect("valid test data")
}

/// The textbook implementation: sort every row, cumulate, compare — what
/// array libraries do. Non-randomised APS.
fn naive_aps(data: &Data) -> usize {
    let half = ROWS / 2;
    let mut order: Vec<usize> = (0..CLASSES).collect();
    let mut cal_scores = Vec::with_capacity(half);
    for (i, row) in data.probs[..half * CLASSES].chunks(CLASSES).enumerate() {
        order.sort_unstable_by(|&a, &b| row[b].total_cmp(&row[a]));
        let mut cum = 0.0f64;
        for &j in &order {
            cum += row[j] as f64;
            if j == data.labels[i] {
                break;
            }
        }
        cal_scores.push(cum);
    }
    let k = ((half as f64 + 1.0) * (1.0 - ALPHA)).ceil() as usize;
    cal_scores.sort_unstable_by(f64::total_cmp);
    let q = cal_scores[k - 1];
    let mut total = 0usize;
    for row in data.probs[half * CLASSES..].chunks(CLASSES) {
        order.sort_unstable_by(|&a, &b| row[b].total_cmp(&row[a]));
        let mut cum = 0.0f64;
        for &j in &order {
            cum += row[j] as f64;
            if cum > q {
                break;
            }
            total += 1;
        }
    }
    total
}

fn out_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("conformal-bench");
    std::fs::create_dir_all(&dir).expect("create target/conformal-bench");
    dir
}

fn write_bytes(path: PathBuf, bytes: &[u8]) {
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn le_f64(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn le_u32(v: impl Iterator<Item = u32>) -> Vec<u8> {
    v.flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes the shared inputs, lastmile's sets and best-of-3 wall times.
fn export(data: &Data) {
    let dir = out_dir();
    write_bytes(dir.join("probs.f32"), &le_f32(&data.probs));
    write_bytes(
        dir.join("labels.u32"),
        &le_u32(data.labels.iter().map(|&y| y as u32)),
    );
    write_bytes(dir.join("u_cal.f64"), &le_f64(&data.u_cal));
    write_bytes(dir.join("u_test.f64"), &le_f64(&data.u_test));
    let mut times = std::fs::File::create(dir.join("lastmile_times.txt")).expect("times file");
    writeln!(times, "rows {ROWS} classes {CLASSES} alpha {ALPHA}").expect("write");
    for (name, score, non_empty) in scores() {
        for threads in [1, 2] {
            let mut best = f64::INFINITY;
            let mut sets = None;
            for _ in 0..3 {
                let start = Instant::now();
                let s = run(data, score, non_empty, threads);
                best = best.min(start.elapsed().as_secs_f64());
                sets = Some(s);
            }
            writeln!(times, "{name} threads={threads} {best:.6}").expect("write");
            if threads == 1
                && let Some(sets) = sets
            {
                let sizes = le_u32(sets.sizes().into_iter().map(|s| s as u32));
                let labels = le_u32((0..sets.len()).flat_map(|i| sets.set(i).to_vec()));
                write_bytes(dir.join(format!("sets_{name}_sizes.u32")), &sizes);
                write_bytes(dir.join(format!("sets_{name}_labels.u32")), &labels);
                eprintln!(
                    "{name}: {best:.4}s (1 thread), mean set size {:.3}",
                    sets.mean_size()
                );
            }
        }
    }
    let start = Instant::now();
    black_box(naive_aps(data));
    writeln!(
        times,
        "naive_full_sort_aps threads=1 {:.6}",
        start.elapsed().as_secs_f64()
    )
    .expect("write");
    eprintln!("wrote {}", dir.display());
}

fn bench(c: &mut Criterion) {
    let data = generate();
    export(&data);
    let mut group = c.benchmark_group("conformal_1e5x1000");
    group.sample_size(10);
    for (name, score, non_empty) in scores() {
        for threads in [1, 2] {
            group.bench_function(format!("lastmile/{name}/threads={threads}"), |b| {
                b.iter(|| black_box(run(&data, score, non_empty, threads)))
            });
        }
    }
    group.bench_function("naive_full_sort/aps/threads=1", |b| {
        b.iter(|| black_box(naive_aps(&data)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
