//! A feature-level draft for SmolLM2-135M-Instruct (EAGLE, Li et al.
//! 2024): one Llama block (`--layers`) that reads the target's features
//! (the head's input) and the next token, predicts the target's next
//! feature, and applies the target's head over the `--vocab` tokens the
//! target is most likely to emit (default 8 192); trained with
//! `lastmile_models::llama::train_feature_draft` (EAGLE's feature and
//! token losses) on the Rust book shipped with `lastmile-datasets` and on
//! text the target writes itself (`--generated` passages continued by up
//! to `--gen-tokens` tokens at T = 0.7), weighted equally. `--token-weight`
//! is EAGLE's `w_cls` (0.1), the weight of the token loss; `--unroll S`
//! trains over runs of `S` drafting steps, each reading the features the
//! step before predicted (EAGLE-3's training-time test; 1 = EAGLE-1).
//! `--resume` continues training the draft saved for `--layers` and
//! `--vocab` (a fresh optimiser and schedule; give another `--seed`, the
//! seed of the training windows, to see other windows).
//!
//! ```text
//! scripts/fetch-smollm2.sh      # once: the 98 MB model file
//! cargo run --release -p lastmile-examples --example feature_draft_llm -- [--layers 1] [--vocab 8192]
//!     [--steps 600] [--batch 4] [--context 128] [--lr 0.001] [--generated 256] [--gen-tokens 96]
//!     [--token-weight 0.1] [--unroll 1] [--resume] [--seed 1]
//! ```
//!
//! It prints, on held-out windows of the book, how often the draft's greedy
//! token is the target's when it reads the target's true features (the
//! first token of every draft run reads them) and, for the second and third
//! tokens of a run, when it reads its own predictions, before and after training;
//! its step cost in target steps; and a short decoding comparison at T = 0
//! (autoregressive, static γ = 3 and AdaEDL with this draft). Saves the
//! draft to `<models>/smollm2-135m-instruct/feature-L<L>-v<V>.bpk` (read
//! by `spec_decode_llm --draft feature`), and writes
//! `feature_draft_llm.csv` (losses per step) and `feature_draft_llm.svg`.

use std::time::Instant;

use anyhow::{Result, bail};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::numerics::{SamplingParams, argmax};
use lastmile_examples::draft_text::{book_tokens, sample_windows, target_texts};
use lastmile_examples::drafts::FeatureDraft;
use lastmile_examples::drafts::feature_draft_file_name;
use lastmile_examples::llm::{Llm, MODEL_DIR, corpus_prompts, models_dir};
use lastmile_examples::plot::{LinePanel, write_svg};
use lastmile_examples::report::{Flags, output_dir, progress_bar, table, write_csv};
use lastmile_examples::sweep::{Method, sweep};
use lastmile_examples::timing::{draft_step_time, step_time};
use lastmile_models::TrainConfig;
use lastmile_models::llama::{
    FeatureLoss, FeatureLossConfig, LlamaFeatureDraft, LlamaFeatureDraftModule, LlamaModel,
    WeightStorage, likely_tokens, train_feature_draft,
};
use lastmile_spec_decode::{AdaEdl, AdaEdlConfig, FeatureTap, GenerationConfig, StaticLength};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Held-out KL to the target (restricted to the head's tokens) and top-1
/// agreement over the full vocabulary of `draft` reading the target's true
/// features on `windows`.
fn agreement(
    target: &LlamaModel,
    draft: &LlamaFeatureDraft,
    windows: &[Vec<usize>],
) -> Result<(f64, f64)> {
    let (mut kl, mut same, mut total) = (0.0, 0usize, 0usize);
    for w in windows {
        let rows = std::slice::from_ref(w);
        let mut ct = target.new_cache(1)?;
        let (lt, f) = target.forward_features(&mut ct, rows)?;
        let [_, n, d] = f.dims();
        let before = Tensor::cat(
            vec![
                Tensor::zeros([1, 1, d], &f.device()),
                f.slice([0..1, 0..n - 1, 0..d]),
            ],
            1,
        );
        let mut cd = draft.new_cache(1)?;
        let (ld, _) = draft.forward_conditioned(&mut cd, rows, before)?;
        let v = lt.dims()[2];
        let (p, q) = (
            argmax(lt.clone().reshape([n, v]))?,
            argmax(ld.clone().reshape([n, v]))?,
        );
        same += p.iter().zip(&q).filter(|(a, b)| a == b).count();
        total += n;
        let (lt, ld) = match draft.head_tokens() {
            Some(ids) => {
                let idx: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
                let idx =
                    Tensor::<1, Int>::from_data(TensorData::new(idx, [ids.len()]), &lt.device());
                (lt.select(2, idx.clone()), ld.select(2, idx))
            }
            None => (lt, ld),
        };
        let (lp, lq) = (log_softmax(lt, 2), log_softmax(ld, 2));
        let k: Tensor<1> = (lp.clone().exp() * (lp - lq))
            .sum_dim(2)
            .mean()
            .reshape([1]);
        kl += f64::from(tensor_to_vec(k)?[0]);
    }
    Ok((kl / windows.len() as f64, same as f64 / total as f64))
}

/// For draft tokens 1..=`steps` of a run: how often the draft's greedy
/// token is the target's, the run reading the window's own tokens (token 1
/// reads the target's feature, later ones the draft's own predictions),
/// from [`LlamaFeatureDraftModule::forward_unrolled`] on `windows`
/// (positions with the whole run inside the window). The module computes
/// in f32.
fn agreement_by_token(
    target: &LlamaModel,
    draft: &LlamaFeatureDraftModule,
    windows: &[Vec<usize>],
    steps: usize,
) -> Result<Vec<f64>> {
    let ids = draft.lm.head_tokens()?;
    let (mut same, mut total) = (vec![0usize; steps], vec![0usize; steps]);
    for w in windows {
        let rows = std::slice::from_ref(w);
        let mut ct = target.new_cache(1)?;
        let (lt, f) = target.forward_features(&mut ct, rows)?;
        let [_, n, d] = f.dims();
        let v = lt.dims()[2];
        let want = argmax(lt.reshape([n, v]))?;
        let device = draft.lm.embed.val().device();
        let f = Tensor::<3>::from_data(f.into_data(), &device);
        let before = Tensor::cat(
            vec![
                Tensor::zeros([1, 1, d], &device),
                f.slice([0..1, 0..n - 1, 0..d]),
            ],
            1,
        );
        for (s, (logits, _)) in draft
            .forward_unrolled(rows, before, steps)?
            .into_iter()
            .enumerate()
        {
            let rows_out = logits.dims()[2];
            let got = argmax(logits.reshape([n, rows_out]))?;
            for p in s..n {
                let token = ids.as_ref().map_or(got[p], |ids| ids[got[p]]);
                same[s] += usize::from(token == want[p]);
                total[s] += 1;
            }
        }
    }
    Ok(same
        .iter()
        .zip(&total)
        .map(|(&s, &t)| s as f64 / t.max(1) as f64)
        .collect())
}

/// Draft tokens per run whose agreement is reported.
const RUN: usize = 3;

fn main() -> Result<()> {
    let (mut layers, mut steps, mut vocab) = (1usize, 600usize, 8192usize);
    let (mut batch, mut context, mut lr) = (4usize, 128usize, 1e-3f64);
    let (mut generated, mut gen_tokens) = (256usize, 96usize);
    let mut loss_config = FeatureLossConfig::default();
    let (mut resume, mut seed) = (false, 1u64);
    let mut flags = Flags::from_env();
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--layers" => layers = flags.value("--layers")?,
            "--steps" => steps = flags.value("--steps")?,
            "--vocab" => vocab = flags.value("--vocab")?,
            "--batch" => batch = flags.value("--batch")?,
            "--context" => context = flags.value("--context")?,
            "--lr" => lr = flags.value("--lr")?,
            "--generated" => generated = flags.value("--generated")?,
            "--gen-tokens" => gen_tokens = flags.value("--gen-tokens")?,
            "--token-weight" => loss_config.token_weight = flags.value("--token-weight")?,
            "--unroll" => loss_config.unroll = flags.value("--unroll")?,
            "--resume" => resume = true,
            "--seed" => seed = flags.value("--seed")?,
            other => bail!(
                "unknown argument {other}; expected --layers L, --steps N, --vocab V, --batch B, \
                 --context N, --lr X, --generated N, --gen-tokens N, --token-weight W, --unroll S, \
                 --resume, --seed N"
            ),
        }
    }
    let device = lastmile_core::default_device()?;
    let llm = Llm::load(&device)?;
    let target = &llm.model;
    let storage = WeightStorage::fastest_on(&device);
    let (train, valid) = book_tokens(&llm)?;
    let mut rng = StdRng::seed_from_u64(7);
    let held = sample_windows(&mut rng, &valid, 8, 64);
    let path = models_dir()
        .join(MODEL_DIR)
        .join(feature_draft_file_name(layers, vocab));
    // A resumed draft brings its head's tokens from its file.
    let head_tokens = if vocab == 0 || resume {
        None
    } else {
        let start = Instant::now();
        let ids = likely_tokens(target, &sample_windows(&mut rng, &train, 128, 64), vocab)?;
        println!(
            "Head vocabulary: the {vocab} tokens with the most target probability over 128 training \
             windows of 64 tokens ({:.0} s).",
            start.elapsed().as_secs_f64()
        );
        Some(ids)
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
    if generated_text.len() > context {
        texts.push(&generated_text);
    }
    let ad = device.clone().autodiff();
    let draft = if resume {
        println!("Resuming from {}.", path.display());
        LlamaFeatureDraftModule::load(target, layers, (vocab > 0).then_some(vocab), &path, &ad)?
    } else {
        LlamaFeatureDraftModule::new(target, layers, head_tokens.as_deref(), &ad)?
    };
    let (kl0, agree0) = agreement(target, &draft.to_draft(storage, &device)?, &held)?;
    let by0 = agreement_by_token(target, &draft, &held, RUN)?;
    println!(
        "Training a {layers}-block feature draft: {steps} steps of {batch} windows × {context} tokens \
         (lr {lr}, token-loss weight {}, unrolled over {} drafting step(s)) …",
        loss_config.token_weight, loss_config.unroll
    );
    let config = TrainConfig {
        lr,
        seed,
        ..TrainConfig::new(steps, batch, context)
    };
    let bar = progress_bar(steps as u64, "train");
    let mut losses = Vec::with_capacity(steps);
    let start = Instant::now();
    let draft = train_feature_draft(draft, target, &texts, &config, &loss_config, |step, l| {
        losses.push(l);
        bar.inc(1);
        bar.set_message(format!("feature {:.3}, token KL {:.3}", l.feature, l.token));
        if (step + 1) % 100 == 0 {
            let last = &losses[losses.len() - 100..];
            let mean = |f: fn(&FeatureLoss) -> f32| last.iter().map(f).sum::<f32>() / 100.0;
            let unrolled = match l.unrolled_token {
                Some(_) => format!(
                    ", token KL reading its own features {:.3} nats",
                    mean(|l| l.unrolled_token.unwrap_or(f32::NAN))
                ),
                None => String::new(),
            };
            bar.suspend(|| {
                println!(
                    "step {}: mean of the last 100 steps: feature smooth-L1 {:.4}, token KL {:.3} nats{unrolled}",
                    step + 1,
                    mean(|l| l.feature),
                    mean(|l| l.token)
                )
            });
        }
    })?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    draft.save(&path)?;
    let fast = draft.to_draft(storage, &device)?;
    let (kl1, agree1) = agreement(target, &fast, &held)?;
    let by1 = agreement_by_token(target, &draft, &held, RUN)?;
    let t1 = step_time(target, 128, 1, 15)?;
    let c = draft_step_time(&fast, target, 128, 15)? / t1;
    println!(
        "{}KL: to the target's next-token distribution restricted to the head's tokens; agreement: \
         the draft's greedy token is the target's, reading the target's features (8 held-out book \
         windows of 64 tokens). Tokens 2 and 3 of a draft run read the draft's own \
         predicted features (and the window's tokens; f32 module). One draft step costs {c:.3} target steps ({storage:?} storage).",
        table(
            &[
                "feature draft",
                "held-out KL (nats)",
                "greedy token = target's",
                "token 2 of a run",
                "token 3",
            ],
            &[
                vec![
                    if resume {
                        "before (the saved draft)".to_owned()
                    } else {
                        "untrained (the target's last block again)".to_owned()
                    },
                    format!("{kl0:.3}"),
                    format!("{:.1}%", 100.0 * agree0),
                    format!("{:.1}%", 100.0 * by0[1]),
                    format!("{:.1}%", 100.0 * by0[2]),
                ],
                vec![
                    format!(
                        "trained, {steps} steps, unrolled {} ({seconds:.0} s)",
                        loss_config.unroll
                    ),
                    format!("{kl1:.3}"),
                    format!("{:.1}%", 100.0 * agree1),
                    format!("{:.1}%", 100.0 * by1[1]),
                    format!("{:.1}%", 100.0 * by1[2]),
                ],
            ]
        )
    );
    println!("Saved the draft to {}.", path.display());

    // Speculative decoding with it (T = 0: outputs identical to greedy decoding).
    let prompts: Vec<Vec<usize>> = corpus_prompts(2, 300, 3)?
        .iter()
        .map(|p| llm.text_prompt(p))
        .collect();
    let generation = GenerationConfig::new(SamplingParams::new(0.0)?, 40)?;
    let methods = [
        Method::Autoregressive,
        Method::Draft(Box::new(StaticLength::new(3)?)),
        Method::Draft(Box::new(AdaEdl::new(AdaEdlConfig::default())?)),
    ];
    let tap = FeatureTap::new(target);
    let source = FeatureDraft {
        tap: &tap,
        draft: &fast,
    };
    let results = sweep(&methods, &tap, &source, &prompts, &generation, 1, || {})?;
    let ar = results[0].1.tokens_per_second();
    let rows: Vec<Vec<String>> = methods
        .iter()
        .zip(&results)
        .map(|(method, (_, m))| {
            vec![
                method.name(),
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
        "{}tokens/round: 1 + accepted draft tokens per target pass (1 = every draft rejected).",
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
    let rows: Vec<Vec<String>> = losses
        .iter()
        .enumerate()
        .map(|(i, l)| {
            vec![
                (i + 1).to_string(),
                format!("{:.5}", l.feature),
                format!("{:.5}", l.token),
                l.unrolled_token
                    .map_or_else(String::new, |t| format!("{t:.5}")),
            ]
        })
        .collect();
    write_csv(
        &out.join("feature_draft_llm.csv"),
        &["step", "feature_smooth_l1", "token_kl", "unrolled_token_kl"],
        &rows,
    )?;
    let mut panel = LinePanel::new(
        format!("Training a {layers}-block feature draft of SmolLM2"),
        "step",
        "token KL(target ‖ draft), nats",
    )
    .series(
        "training windows, reading the target's features",
        losses
            .iter()
            .enumerate()
            .map(|(i, l)| ((i + 1) as f64, f64::from(l.token)))
            .collect(),
    );
    if loss_config.unroll > 1 {
        panel = panel.series(
            "training windows, reading its own features (unrolled steps)",
            losses
                .iter()
                .enumerate()
                .filter_map(|(i, l)| Some(((i + 1) as f64, f64::from(l.unrolled_token?))))
                .collect(),
        );
    }
    let panel = panel
        .hline("held-out, untrained", kl0)
        .hline("held-out, trained", kl1);
    write_svg(&out.join("feature_draft_llm.svg"), &[panel.into()], 1)?;
    println!(
        "Wrote {} and {}.",
        out.join("feature_draft_llm.csv").display(),
        out.join("feature_draft_llm.svg").display()
    );
    Ok(())
}
