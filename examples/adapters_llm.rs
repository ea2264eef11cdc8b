//! Adapters on a real model: LoRA and SHiRA fine-tuned on SmolLM2-135M's
//! attention and MLP projections (the Rust book shipped with the project,
//! 2 minutes each by default), saved in Hugging Face PEFT's layout, then
//! reloaded in a fresh process that must reproduce the logits bit for bit.
//! Writes `adapters_llm.csv` (training loss per step) and
//! `adapters_llm.svg` to the output directory, the adapters to
//! `<output>/adapters_llm/{lora,shira}/`.
//!
//! ```text
//! scripts/fetch-smollm2.sh      # once: the 98 MB model file
//! cargo run --release -p lastmile-examples --example adapters_llm -- [--seconds 120]
//! ```
//!
//! `--seconds S`: training budget per adapter (default 120). `--check DIR`
//! is the fresh-process half, which the run starts by itself.

use anyhow::{Result, bail};
use lastmile_examples::adapters_llm::{
    Settings, check, check_in_fresh_process, render, run, write_outputs,
};
use lastmile_examples::report::{Flags, output_dir};

fn main() -> Result<()> {
    let device = lastmile_core::default_device()?;
    let mut settings = Settings::default();
    let mut flags = Flags::from_env();
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--seconds" => settings.seconds_per_adapter = flags.value("--seconds")?,
            "--check" => {
                let dir: String = flags.value("--check")?;
                for line in check(dir.as_ref(), &device)? {
                    println!("{line}");
                }
                return Ok(());
            }
            other => bail!("unknown argument {other}; expected --seconds S"),
        }
    }
    let out = output_dir()?;
    let dir = out.join("adapters_llm");
    println!(
        "Fine-tuning LoRA (r = 8) and SHiRA (weight-magnitude mask, as many values) on the 210 \
         attention and MLP projections of SmolLM2-135M-Instruct, {:.0} s each …",
        settings.seconds_per_adapter
    );
    let report = run(&settings, &device, &dir)?;
    println!("{}", render(&report));
    let (csv, svg) = (out.join("adapters_llm.csv"), out.join("adapters_llm.svg"));
    write_outputs(&report, &csv, &svg)?;
    println!("Saved in PEFT's layout under {}.", dir.display());
    println!("Reloading both in a fresh process …");
    print!("{}", check_in_fresh_process(&dir)?);
    println!("Wrote {} and {}.", csv.display(), svg.display());
    Ok(())
}
