//! A distilled draft for SmolLM2-135M-Instruct: the target's first `L`
//! blocks (default 2) with its embedding, tied head and final norm, the
//! blocks and norm trained to match the full model's next-token
//! distribution (`lastmile_models::llama::distill_draft`: forward KL at
//! every position) on the Rust book shipped with `lastmile-datasets`.
//!
//! ```text
//! scripts/fetch-smollm2.sh      # once: the 98 MB model file
//! cargo run --release -p lastmile-examples --example distill_llm -- [--layers 2] [--steps 150]
//! ```
//!
//! It prints, on held-out windows, the draft's KL to the target and how
//! often its greedy token is the target's, before (the early-exit view of
//! the same blocks) and after distillation; then decodes corpus prompts at
//! T = 0 with AdaEDL using each as the draft (tokens/s, speed-up over
//! autoregressive decoding, mean tokens per round). Saves the draft to
//! `<models>/smollm2-135m-instruct/draft-L<L>.bpk`, and writes
//! `distill_llm.csv` (KL per step) and `distill_llm.svg`.

use std::time::Instant;

use anyhow::{Result, bail};
use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::numerics::{SamplingParams, argmax};
use lastmile_datasets::TextCorpus;
use lastmile_examples::llm::{Llm, MODEL_DIR, corpus_prompts, models_dir};
use lastmile_examples::plot::{LinePanel, write_svg};
use lastmile_examples::report::{Flags, output_dir, progress_bar, table, write_csv};
use lastmile_examples::spec_decode::{Method, sweep};
use lastmile_models::TrainConfig;
use lastmile_models::llama::{
    LlamaEarlyExit, LlamaModel, LlamaModule, WeightStorage, distill_draft,
};
use lastmile_spec_decode::{AdaEdl, AdaEdlConfig, GenerationConfig};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// KL to the target and top-1 agreement of `draft` on `windows`.
fn agreement(
    target: &LlamaModel,
    draft: &LlamaModel,
    windows: &[Vec<usize>],
) -> Result<(f64, f64)> {
    let (mut kl, mut same, mut total) = (0.0, 0usize, 0usize);
    for w in windows {
        let mut ct = target.new_cache(1)?;
        let mut cd = draft.new_cache(1)?;
        let lp = log_softmax(target.forward_cached(&mut ct, std::slice::from_ref(w))?, 2);
        let lq = log_softmax(draft.forward_cached(&mut cd, std::slice::from_ref(w))?, 2);
        let k: Tensor<1> = (lp.clone().exp() * (lp.clone() - lq.clone()))
            .sum_dim(2)
            .mean()
            .reshape([1]);
        kl += f64::from(tensor_to_vec(k)?[0]);
        let [_, n, v] = lp.dims();
        let (p, q) = (argmax(lp.reshape([n, v]))?, argmax(lq.reshape([n, v]))?);
        same += p.iter().zip(&q).filter(|(a, b)| a == b).count();
        total += n;
    }
    Ok((kl / windows.len() as f64, same as f64 / total as f64))
}

fn main() -> Result<()> {
    let (mut layers, mut steps) = (2usize, 150usize);
    let mut flags = Flags::from_env();
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--layers" => layers = flags.value("--layers")?,
            "--steps" => steps = flags.value("--steps")?,
            other => bail!("unknown argument {other}; expected --layers L, --steps N"),
        }
    }
    let device = lastmile_core::default_device()?;
    let llm = Llm::load(&device)?;
    let target = &llm.model;
    let corpus = TextCorpus::rust_book(0.05)?;
    let text = |bytes: &[u32]| {
        String::from_utf8_lossy(&bytes.iter().map(|t| *t as u8).collect::<Vec<_>>()).into_owned()
    };
    let train = llm.tokenizer.encode(&text(corpus.train()), false, false);
    let valid = llm
        .tokenizer
        .encode(&text(corpus.validation()), false, false);
    let mut rng = StdRng::seed_from_u64(7);
    let held: Vec<Vec<usize>> = (0..8)
        .map(|_| {
            let s = rng.random_range(0..valid.len() - 64);
            valid[s..s + 64].to_vec()
        })
        .collect();

    let early =
        LlamaModule::draft_from(target, layers, &device)?.to_model(WeightStorage::F32, &device)?;
    let (kl0, agree0) = agreement(target, &early, &held)?;
    println!(
        "Distilling a {layers}-block draft of SmolLM2-135M-Instruct ({} training tokens of the Rust book), \
         {steps} steps of 4 windows × 64 tokens …",
        train.len()
    );
    let config = TrainConfig {
        lr: 1e-3,
        seed: 1,
        ..TrainConfig::new(steps, 4, 64)
    };
    let draft = LlamaModule::draft_from(target, layers, &device.clone().autodiff())?;
    let bar = progress_bar(steps as u64, "distil");
    let mut kls = Vec::with_capacity(steps);
    let start = Instant::now();
    let draft = distill_draft(draft, target, &train, &config, |_, kl| {
        kls.push(kl);
        bar.inc(1);
        bar.set_message(format!("KL {kl:.3}"));
    })?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let path = models_dir()
        .join(MODEL_DIR)
        .join(format!("draft-L{layers}.bpk"));
    draft.save(&path)?;
    let distilled = draft.to_model(WeightStorage::F32, &device)?;
    let (kl1, agree1) = agreement(target, &distilled, &held)?;
    println!(
        "{}",
        table(
            &[
                "draft",
                "held-out KL to the target (nats)",
                "greedy token = target's"
            ],
            &[
                vec![
                    format!("early exit, {layers} blocks"),
                    format!("{kl0:.3}"),
                    format!("{:.1}%", 100.0 * agree0)
                ],
                vec![
                    format!("distilled, {steps} steps ({seconds:.0} s)"),
                    format!("{kl1:.3}"),
                    format!("{:.1}%", 100.0 * agree1)
                ],
            ]
        )
    );
    println!("Saved the draft to {}.", path.display());

    // Speculative decoding with each draft (AdaEDL, T = 0: outputs identical to greedy decoding).
    let prompts: Vec<Vec<usize>> = corpus_prompts(2, 300, 3)?
        .iter()
        .map(|p| llm.text_prompt(p))
        .collect();
    let generation = GenerationConfig::new(SamplingParams::new(0.0)?, 40)?;
    let methods = [
        Method::Autoregressive,
        Method::Draft(Box::new(AdaEdl::new(AdaEdlConfig::default())?)),
    ];
    let exit_view = LlamaEarlyExit::new(target, layers)?;
    let with_exit = sweep(
        &methods,
        target,
        &exit_view,
        &prompts,
        &generation,
        1,
        || {},
    )?;
    let with_distilled = sweep(
        &methods,
        target,
        &distilled,
        &prompts,
        &generation,
        1,
        || {},
    )?;
    let ar = with_exit[0].1.tokens_per_second();
    let rows: Vec<Vec<String>> = [
        ("autoregressive".to_owned(), &with_exit[0].1),
        (format!("AdaEDL, early exit L={layers}"), &with_exit[1].1),
        (
            format!("AdaEDL, distilled L={layers}"),
            &with_distilled[1].1,
        ),
    ]
    .iter()
    .map(|(name, m)| {
        vec![
            name.clone(),
            format!("{:.1}", m.tokens_per_second()),
            format!("{:.2}x", m.tokens_per_second() / ar),
            if m.draft_calls > 0 {
                format!("{:.2}", m.mean_acceptance_length())
            } else {
                "-".into()
            },
        ]
    })
    .collect();
    println!(
        "{}tokens/round: 1 + accepted draft tokens per target pass (1 = every draft rejected).\n\
         A speed-up below 1 means drafting and verifying cost more than the tokens they saved \
         (docs/benchmarks.md, Real models, explains this machine's verify cost).",
        table(
            &[
                "T = 0, 2 corpus prompts, 40 tokens",
                "tok/s",
                "speed-up",
                "tokens/round"
            ],
            &rows
        )
    );

    let out = output_dir()?;
    let rows: Vec<Vec<String>> = kls
        .iter()
        .enumerate()
        .map(|(i, k)| vec![(i + 1).to_string(), format!("{k:.5}")])
        .collect();
    write_csv(&out.join("distill_llm.csv"), &["step", "kl"], &rows)?;
    let panel = LinePanel::new(
        format!("Distilling a {layers}-block SmolLM2 draft"),
        "step",
        "KL(target ‖ draft), nats per token",
    )
    .series(
        "training windows",
        kls.iter()
            .enumerate()
            .map(|(i, k)| ((i + 1) as f64, f64::from(*k)))
            .collect(),
    )
    .hline("held-out, early exit", kl0)
    .hline("held-out, distilled", kl1);
    write_svg(&out.join("distill_llm.svg"), &[panel.into()], 1)?;
    println!(
        "Wrote {} and {}.",
        out.join("distill_llm.csv").display(),
        out.join("distill_llm.svg").display()
    );
    Ok(())
}
