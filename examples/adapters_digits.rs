//! Adapters on digits: LoRA, FouRA and SHiRA (every mask kind) adapting a
//! pretrained MLP to mirrored digits, then two adapters (mirrored,
//! transposed) fused into one weight set — the multi-adapter setting of the
//! SHiRA paper. Writes `adapters_digits.csv` and `adapters_digits.svg`
//! (accuracy per kind, own adapter vs fused) to the output directory.
//!
//! Run: `cargo run --release -p lastmile-examples --example adapters_digits`

use anyhow::Result;
use lastmile_adapters::ShiraMask;
use lastmile_examples::adapters::{Settings, plot, render, run};
use lastmile_examples::report::{output_dir, write_csv};

fn main() -> Result<()> {
    let device = lastmile_core::default_device()?.autodiff();
    let settings = Settings {
        base_epochs: 40,
        adapter_epochs: 30,
        rank: 2,
        masks: ShiraMask::ALL.to_vec(),
        seed: 1,
    };
    let (base_acc, base_mirrored, reports) = run(&settings, &device)?;
    println!("{}", render(base_acc, base_mirrored, &reports));
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            let (cm, ct) = r.combined.unwrap_or((f64::NAN, f64::NAN));
            vec![
                r.kind.clone(),
                format!("{:.5}", r.trainable_fraction),
                format!("{:.3}", r.seconds),
                format!("{:.4}", r.accuracy),
                format!("{:.4}", r.accuracy_second.unwrap_or(f64::NAN)),
                format!("{cm:.4}"),
                format!("{ct:.4}"),
                format!("{:.4}", r.awor.unwrap_or(f64::NAN)),
            ]
        })
        .collect();
    let path = output_dir()?.join("adapters_digits.csv");
    write_csv(
        &path,
        &[
            "adapter",
            "trainable_fraction",
            "train_seconds",
            "acc_mirrored",
            "acc_transposed",
            "combined_mirrored",
            "combined_transposed",
            "awor_l1",
        ],
        &rows,
    )?;
    let svg = path.with_extension("svg");
    plot(&reports, &svg)?;
    println!("wrote {} and {}", path.display(), svg.display());
    Ok(())
}
