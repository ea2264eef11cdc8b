//! A distilled draft for SmolLM2-135M-Instruct: the target's first `L`
//! blocks (default 2) with its embedding and final norm, and a head over
//! the `V` tokens the target is most likely to emit (default 8 192 of
//! 49 152; `--vocab 0` keeps the whole tied head), the blocks, norm and
//! head trained to match the full model's next-token distribution
//! (`lastmile_models::llama::distill_draft`: forward KL at every position,
//! to the target's distribution restricted to the head's tokens) on two
//! texts, weighted equally: the Rust book shipped with `lastmile-datasets`,
//! and text the target writes itself (`--generated` 256 training passages,
//! half as chat instructions, each continued by up to `--gen-tokens` 96
//! tokens at T = 0.7; `--generated 0` trains on the book alone).
//!
//! ```text
//! scripts/fetch-smollm2.sh      # once: the 98 MB model file
//! cargo run --release -p lastmile-examples --example distill_llm -- [--layers 2] [--vocab 8192] [--steps 600]
//!     [--generated 256] [--gen-tokens 96]
//! ```
//!
//! It prints, on held-out windows, the draft's KL to the target and how
//! often its greedy token is the target's, before (the early-exit view of
//! the same blocks and the full head) and after distillation, and how often
//! the target's greedy token is in the head's list; then decodes corpus
//! prompts at T = 0 with AdaEDL using each as the draft, both stored as
//! `WeightStorage::fastest_on` the device (tokens/s, speed-up over
//! autoregressive decoding, mean tokens per round). Saves the draft to
//! `<models>/smollm2-135m-instruct/draft-L<L>-v<V>.bpk` (read by
//! `spec_decode_llm --draft`), and writes `distill_llm.csv` (KL per step)
//! and `distill_llm.svg`.

use std::time::Instant;

use anyhow::{Result, bail};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::lm::LanguageModel;
use lastmile_core::numerics::{SamplingParams, argmax};
use lastmile_examples::draft_text::{book_tokens, sample_windows, target_texts};
use lastmile_examples::drafts::TokenDraft;
use lastmile_examples::drafts::draft_file_name;
use lastmile_examples::llm::{Llm, MODEL_DIR, models_dir};
use lastmile_examples::plot::{LinePanel, write_svg};
use lastmile_examples::report::{Flags, output_dir, progress_bar, table, write_csv};
use lastmile_examples::sweep::{Method, sweep};
use lastmile_examples::timing::{draft_step_time, step_time};
use lastmile_models::TrainConfig;
use lastmile_models::llama::{
    LlamaEarlyExit, LlamaModel, LlamaModule, WeightStorage, distill_draft, likely_tokens,
};
use lastmile_spec_decode::{AdaEdl, AdaEdlConfig, GenerationConfig};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// KL to the target and top-1 agreement of `draft` on `windows`. For a
/// head over the tokens `head` only, the KL is to the target's
/// distribution restricted to them (the full one would count each missing
/// token at [`lastmile_models::llama::OUTSIDE_HEAD_LOGIT`]); agreement is over the full vocabulary.
fn agreement<D: LanguageModel>(
    target: &LlamaModel,
    draft: &D,
    head: Option<&[usize]>,
    windows: &[Vec<usize>],
) -> Result<(f64, f64)> {
    let (mut kl, mut same, mut total) = (0.0, 0usize, 0usize);
    for w in windows {
        let mut ct = target.new_cache(1)?;
        let mut cd = draft.new_cache(1)?;
        let lt = target.forward_cached(&mut ct, std::slice::from_ref(w))?;
        let ld = draft.forward(&mut cd, std::slice::from_ref(w))?;
        let [_, n, v] = lt.dims();
        let (p, q) = (
            argmax(lt.clone().reshape([n, v]))?,
            argmax(ld.clone().reshape([n, v]))?,
        );
        same += p.iter().zip(&q).filter(|(a, b)| a == b).count();
        total += n;
        let (lt, ld) = match head {
            Some(ids) => {
                let idx: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
                let idx =
                    Tensor::<1, Int>::from_data(TensorData::new(idx, [ids.len()]), &lt.device());
                (lt.select(2, idx.clone()), ld.select(2, idx))
            }
            None => (lt, ld),
        };
        let lp = log_softmax(lt, 2);
        let lq = log_softmax(ld, 2);
        let k: Tensor<1> = (lp.clone().exp() * (lp.clone() - lq.clone()))
            .sum_dim(2)
            .mean()
            .reshape([1]);
        kl += f64::from(tensor_to_vec(k)?[0]);
    }
    Ok((kl / windows.len() as f64, same as f64 / total as f64))
}

/// How often the target's greedy token on `windows` is one of `ids`.
fn in_head(target: &LlamaModel, ids: &[usize], windows: &[Vec<usize>]) -> Result<f64> {
    let (mut hit, mut total) = (0usize, 0usize);
    for w in windows {
        let mut cache = target.new_cache(1)?;
        let logits = target.forward_cached(&mut cache, std::slice::from_ref(w))?;
        let [_, n, v] = logits.dims();
        for t in argmax(logits.reshape([n, v]))? {
            hit += usize::from(ids.binary_search(&t).is_ok());
            total += 1;
        }
    }
    Ok(hit as f64 / total as f64)
}

fn main() -> Result<()> {
    let (mut layers, mut steps, mut vocab) = (2usize, 600usize, 8192usize);
    let (mut generated, mut gen_tokens) = (256usize, 96usize);
    let mut flags = Flags::from_env();
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--layers" => layers = flags.value("--layers")?,
            "--steps" => steps = flags.value("--steps")?,
            "--vocab" => vocab = flags.value("--vocab")?,
            "--generated" => generated = flags.value("--generated")?,
            "--gen-tokens" => gen_tokens = flags.value("--gen-tokens")?,
            other => bail!(
                "unknown argument {other}; expected --layers L, --steps N, --vocab V, \
                 --generated N, --gen-tokens N"
            ),
        }
    }
    let device = lastmile_core::default_device()?;
    let llm = Llm::load(&device)?;
    let target = &llm.model;
    let storage = WeightStorage::fastest_on(&device);
    let (train, valid) = book_tokens(&llm)?;
    let mut rng = StdRng::seed_from_u64(7);
    let mut windows = |tokens: &[usize], count: usize| sample_windows(&mut rng, tokens, count, 64);
    let held = windows(&valid, 8);

    let early = LlamaEarlyExit::new(target, layers)?;
    let (kl0, agree0) = agreement(target, &early, None, &held)?;
    let head_tokens = if vocab == 0 {
        None
    } else {
        let start = Instant::now();
        let ids = likely_tokens(target, &windows(&train, 128), vocab)?;
        println!(
            "Head vocabulary: the {vocab} tokens with the most target probability over 128 training \
             windows of 64 tokens ({:.0} s).",
            start.elapsed().as_secs_f64()
        );
        Some(ids)
    };
    let coverage = match &head_tokens {
        Some(ids) => in_head(target, ids, &held)?,
        None => 1.0,
    };
    let start = Instant::now();
    let generated_text: Vec<usize> =
        target_texts(&llm, &train, generated, gen_tokens, 11)?.concat();
    if generated > 0 {
        println!(
            "Target-generated text: {generated} passages of the training split, half as chat \
             instructions, continued by the target at T = 0.7 ({} tokens with the prompts, {:.0} s).",
            generated_text.len(),
            start.elapsed().as_secs_f64()
        );
    }
    let mut texts: Vec<&[usize]> = vec![&train];
    if generated_text.len() > 64 {
        texts.push(&generated_text);
    }
    println!(
        "Distilling a {layers}-block draft of SmolLM2-135M-Instruct ({} training tokens of the Rust book{}), \
         {steps} steps of 4 windows × 64 tokens …",
        train.len(),
        if texts.len() > 1 {
            " and as many windows of the target's text"
        } else {
            ""
        }
    );
    let config = TrainConfig {
        lr: 1e-3,
        seed: 1,
        ..TrainConfig::new(steps, 4, 64)
    };
    let ad = device.clone().autodiff();
    let draft = match &head_tokens {
        Some(ids) => LlamaModule::draft_with_vocab(target, layers, ids, &ad)?,
        None => LlamaModule::draft_from(target, layers, &ad)?,
    };
    let bar = progress_bar(steps as u64, "distil");
    let mut kls = Vec::with_capacity(steps);
    let start = Instant::now();
    let draft = distill_draft(draft, target, &texts, &config, |_, kl| {
        kls.push(kl);
        bar.inc(1);
        bar.set_message(format!("KL {kl:.3}"));
    })?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let path = models_dir()
        .join(MODEL_DIR)
        .join(draft_file_name(layers, vocab));
    draft.save(&path)?;
    let distilled = draft.to_model(storage.for_draft(), &device)?;
    let (kl1, agree1) = agreement(target, &distilled, head_tokens.as_deref(), &held)?;
    let t1 = step_time(target, 128, 1, 15)?;
    let cost = |m: &dyn Fn() -> Result<f64>| -> Result<String> { Ok(format!("{:.3}", m()? / t1)) };
    let head_name = match vocab {
        0 => "full tied head".to_owned(),
        v => format!(
            "head over {v} tokens (the target's greedy token is among them {:.1}% of the time)",
            100.0 * coverage
        ),
    };
    println!(
        "{}KL: to the target's distribution (for a head over part of the vocabulary, restricted to \
         its tokens); step cost: one draft step in target steps, the target in {storage:?} storage, \
         the draft in {:?}.",
        table(
            &[
                "draft",
                "held-out KL to the target (nats)",
                "greedy token = target's",
                "step cost"
            ],
            &[
                vec![
                    format!("early exit, {layers} blocks, full head"),
                    format!("{kl0:.3}"),
                    format!("{:.1}%", 100.0 * agree0),
                    cost(&|| draft_step_time(&early, target, 128, 15))?,
                ],
                vec![
                    format!("distilled, {steps} steps ({seconds:.0} s), {head_name}"),
                    format!("{kl1:.3}"),
                    format!("{:.1}%", 100.0 * agree1),
                    cost(&|| draft_step_time(&distilled, target, 128, 15))?,
                ],
            ]
        ),
        storage.for_draft()
    );
    println!("Saved the draft to {}.", path.display());

    // Speculative decoding with each draft (AdaEDL, T = 0: outputs identical to greedy decoding).
    let prompts: Vec<Vec<usize>> = lastmile_examples::llm::corpus_prompts(2, 300, 3)?
        .iter()
        .map(|p| llm.text_prompt(p))
        .collect();
    let generation = GenerationConfig::new(SamplingParams::new(0.0)?, 40)?;
    let methods = [
        Method::Autoregressive,
        Method::Draft(Box::new(AdaEdl::new(AdaEdlConfig::default())?)),
    ];
    let with_exit = sweep(
        &methods,
        target,
        &TokenDraft(&early),
        &prompts,
        &generation,
        1,
        || {},
    )?;
    let with_distilled = sweep(
        &methods,
        target,
        &TokenDraft(&distilled),
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
    // (The training and held-out KL of a restricted head are both to the
    // restricted distribution; the early exit's is to the full one.)
    write_svg(&out.join("distill_llm.svg"), &[panel.into()], 1)?;
    println!(
        "Wrote {} and {}.",
        out.join("distill_llm.csv").display(),
        out.join("distill_llm.svg").display()
    );
    Ok(())
}
