//! The lastmile tour: the main job, run on the default CPU backend.
//!
//! ```text
//! cargo run --example tour
//! ```
//!
//! (the workspace's dev profile optimises dependencies, so the tour needs no
//! `--release` and `cargo test --workspace` reuses its build).
//!
//! Sections: (1) core — load the digits data set, train a small MLP with burn
//! autodiff, report test accuracy, time per epoch and the backend; then one
//! section per method crate: conformal prediction sets on digits, LoRA / FouRA
//! / SHiRA adapters, exact speculative decoding with AdaEDL, a real
//! pretrained model (SmolLM2-135M from GGUF, when fetched with
//! `scripts/fetch-smollm2.sh`): chat generation and early-exit speculative
//! decoding, spectral model
//! sharding in a few federated rounds, and MoE expert caching (a replay of
//! routing traces against the eviction policies). `LASTMILE_BACKEND=ndarray|wgpu`
//! switches backend (when compiled in); `LASTMILE_OUT` sets where CSV and SVG
//! files go (default: `lastmile-out` in cargo's target directory). Every
//! section prints what its numbers mean and writes a plot.

use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::Device;
use lastmile_core::{Backend, default_device};
use lastmile_datasets::{SplitFractions, Standardizer, digits, stratified_split};
use lastmile_examples::mlp::{Labelled, Mlp, TrainConfig, accuracy, train_classifier};
use lastmile_examples::plot::{LinePanel, write_svg};
use lastmile_examples::report::{output_dir, table, write_csv};

fn main() -> Result<()> {
    let start = Instant::now();
    let device = default_device().context("choosing the default device")?;
    let backend = Backend::of(&device).map_or("unknown".to_owned(), |b| b.to_string());
    println!(
        "lastmile tour — backend: {backend} (compiled: {:?})",
        Backend::compiled()
    );
    println!();
    core_section(&device)?;
    lastmile_examples::conformal::tour_section(&device)?;
    println!();
    lastmile_examples::adapters::tour_section(&device)?;
    println!();
    lastmile_examples::spec_decode::tour_section(&device)?;
    println!();
    lastmile_examples::llm::tour_section(&device)?;
    println!();
    lastmile_examples::federated::tour_section(&device)?;
    println!();
    lastmile_examples::moe::tour_section(&device)?;
    println!();
    println!("tour finished in {:.1} s", start.elapsed().as_secs_f64());
    println!(
        "CSV files and SVG plots of every section: {} (open the .svg files in a browser)",
        output_dir()?.display()
    );
    Ok(())
}

/// Digits (1797 8×8 images, 10 classes) → 64-128-10 MLP trained with Adam.
fn core_section(device: &Device) -> Result<()> {
    println!("== 1. core: an MLP on the digits data set ==");
    let data = digits()?;
    let labels = data.labels().context("digits has labels")?.to_vec();
    let split = stratified_split(&labels, 10, SplitFractions::new(0.7, 0.0, 0.3), 0)?;
    let train = data.subset(&split.train)?;
    let test = data.subset(&split.test)?;
    let scaler = Standardizer::fit(&train)?;
    let to_labelled = |d: &lastmile_datasets::Dataset| -> Result<Labelled> {
        let d = scaler.transformed(d)?;
        Ok(Labelled {
            x: d.features().to_vec(),
            y: d.labels().context("labels")?.to_vec(),
            dim: d.n_features(),
        })
    };
    let (train, test) = (to_labelled(&train)?, to_labelled(&test)?);
    println!(
        "   {} training and {} test images, {} features",
        train.len(),
        test.len(),
        train.dim
    );

    let ad = device.clone().autodiff();
    ad.seed(0);
    let model = Mlp::new(&[64, 128, 10], &ad)?;
    let params = model.parameter_count();
    let config = TrainConfig {
        epochs: 20,
        batch_size: 64,
        learning_rate: 1e-3,
        seed: 0,
    };
    let (model, stats) = train_classifier(model, &train, &config, &ad)?;
    let model = model.valid();
    let acc_train = accuracy(&model, &train, device)?;
    let acc_test = accuracy(&model, &test, device)?;
    let mean_epoch = stats.iter().map(|s| s.time.as_secs_f64()).sum::<f64>() / stats.len() as f64;

    let rows: Vec<Vec<String>> = stats
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 5 == 4 || *i == 0)
        .map(|(i, s)| {
            vec![
                (i + 1).to_string(),
                format!("{:.4}", s.loss),
                format!("{:.1}", s.time.as_secs_f64() * 1e3),
            ]
        })
        .collect();
    print!("{}", table(&["epoch", "train loss", "ms"], &rows));
    println!(
        "   parameters {params}, mean epoch {:.1} ms, train accuracy {:.3}, test accuracy {:.3}",
        mean_epoch * 1e3,
        acc_train,
        acc_test
    );
    let csv = output_dir()?.join("tour_core_loss.csv");
    let all: Vec<Vec<String>> = stats
        .iter()
        .enumerate()
        .map(|(i, s)| {
            vec![
                (i + 1).to_string(),
                format!("{:.6}", s.loss),
                format!("{:.3}", s.time.as_secs_f64() * 1e3),
            ]
        })
        .collect();
    write_csv(&csv, &["epoch", "train_loss", "epoch_ms"], &all)?;
    let svg = csv.with_extension("svg");
    let curve = stats
        .iter()
        .enumerate()
        .map(|(i, s)| ((i + 1) as f64, s.loss))
        .collect();
    write_svg(
        &svg,
        &[
            LinePanel::new("tour: MLP on digits", "epoch", "mean cross-entropy")
                .series("train loss", curve)
                .into(),
        ],
        1,
    )?;
    println!("   loss curve: {} and {}", csv.display(), svg.display());
    println!();
    Ok(())
}
