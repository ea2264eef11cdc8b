//! Conformal training on digits (Correia et al., NeurIPS 2024; Stutz et al.,
//! ICLR 2022): train the same MLP with cross-entropy, ConfTr and each of the
//! three upper bounds on H(Y|X) as objective, then report coverage and mean
//! set size of split-conformal THR and APS sets at α = 0.01 and 0.1, mean ±
//! std over 10 random calibration/test re-splits. Writes
//! `target/lastmile-out/conformal_digits.csv`.
//!
//! Run: `cargo run --release -p lastmile-examples --example conformal_digits`

use anyhow::Result;
use lastmile_conformal::training::Objective;
use lastmile_examples::conformal::{
    TrainSettings, digits_data, evaluate, probabilities, rows, train,
};
use lastmile_examples::report::{output_dir, table, write_csv};

fn main() -> Result<()> {
    let device = lastmile_core::default_device()?;
    let (train_set, eval_set) = digits_data(0.6, 0)?;
    println!(
        "digits: {} training rows, {} evaluation rows (re-split 10× into calibration/test halves)",
        train_set.len(),
        eval_set.len()
    );
    let settings = TrainSettings {
        epochs: 60,
        batch_size: 200,
        learning_rate: 3e-3,
        hidden: 64,
        seed: 1,
    };
    let objectives = [
        Objective::CrossEntropy,
        Objective::conftr(),
        Objective::Dpi,
        Objective::ModelFano,
        Objective::SimpleFano,
    ];
    let mut table_rows = Vec::new();
    let mut csv_rows = Vec::new();
    for objective in objectives {
        let start = std::time::Instant::now();
        let model = train(objective, &train_set, &settings, &device, true)?;
        let probs = probabilities(&model, &eval_set, &device)?;
        let acc = eval_set
            .y
            .iter()
            .enumerate()
            .filter(|&(i, &y)| {
                let row = &probs[i * 10..(i + 1) * 10];
                (0..10).all(|j| row[j] <= row[y])
            })
            .count() as f64
            / eval_set.len() as f64;
        println!(
            "{:>12}: trained in {:.1}s, accuracy {:.4}",
            objective.name(),
            start.elapsed().as_secs_f64(),
            acc
        );
        let evals = evaluate(&probs, &eval_set.y, &[0.01, 0.1], 10, 7)?;
        table_rows.extend(rows(objective.name(), &evals));
        for e in &evals {
            csv_rows.push(vec![
                objective.name().to_owned(),
                e.score.to_owned(),
                e.alpha.to_string(),
                format!("{:.6}", e.coverage.0),
                format!("{:.6}", e.coverage.1),
                format!("{:.6}", e.size.0),
                format!("{:.6}", e.size.1),
                format!("{acc:.6}"),
            ]);
        }
    }
    println!();
    print!(
        "{}",
        table(
            &["objective", "score", "alpha", "coverage", "mean set size"],
            &table_rows
        )
    );
    let path = output_dir()?.join("conformal_digits.csv");
    write_csv(
        &path,
        &[
            "objective",
            "score",
            "alpha",
            "coverage_mean",
            "coverage_std",
            "size_mean",
            "size_std",
            "accuracy",
        ],
        &csv_rows,
    )?;
    println!("wrote {}", path.display());
    Ok(())
}
