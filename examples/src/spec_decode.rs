//! Speculative decoding on real byte-level transformers: training and
//! checkpointing of the target/draft pair for the `spec_decode_text`
//! example (whose method sweep is [`crate::sweep`]), and the tour section. The transformers are
//! `LanguageModel`s themselves (`lastmile-models` implements lastmile-core's
//! interface), so the decoder takes them as they are.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::{Device, Int, Tensor, TensorData};
use lastmile_core::numerics::SamplingParams;
use lastmile_datasets::TextCorpus;
use lastmile_models::{
    KvCache, PackedTransformer, TrainConfig, Transformer, TransformerConfig, distill, evaluate,
    train,
};
use lastmile_spec_decode::{AdaEdl, AdaEdlConfig, GenerationConfig, StaticLength};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::drafts::TokenDraft;
use crate::plot::{BarPanel, LinePanel, write_svg};
use crate::report::{output_dir, progress_bar, table, write_csv};
use crate::sweep::{Method, sweep};

/// Context window of both models (bytes).
pub const CONTEXT: usize = 128;

/// The target: 4 blocks, width 256 (the smallest of the sizes asked for).
pub fn target_config() -> TransformerConfig {
    TransformerConfig::byte_level(256, 4, 4, CONTEXT)
}

/// The draft: 1 block, width 64.
pub fn draft_config() -> TransformerConfig {
    draft_config_with_width(64)
}

/// A 1-block draft of width `d_model` (2 heads).
pub fn draft_config_with_width(d_model: usize) -> TransformerConfig {
    TransformerConfig::byte_level(d_model, 1, 2, CONTEXT)
}

/// Where checkpoints live: `$LASTMILE_MODELS`, or `lastmile-models` in
/// cargo's target directory ([`crate::report::target_dir`]).
pub fn checkpoint_dir() -> PathBuf {
    std::env::var_os("LASTMILE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::report::target_dir().join("lastmile-models"))
}

fn checkpoint_path(dir: &Path, name: &str, c: &TransformerConfig, steps: usize) -> PathBuf {
    dir.join(format!(
        "{name}-l{}-d{}-h{}-ctx{}-steps{steps}.bpk",
        c.n_layers, c.d_model, c.n_heads, c.max_len
    ))
}

/// What a model is trained to do.
///
/// ```
/// use lastmile_examples::spec_decode::Objective;
/// assert!(matches!(Objective::NextByte, Objective::NextByte));
/// ```
#[derive(Clone, Copy, Debug)]
pub enum Objective<'a> {
    /// Next-byte cross-entropy on the text.
    NextByte,
    /// The forward KL to a teacher's next-byte distributions
    /// ([`lastmile_models::distill`]): a draft aligned with its target.
    Distill(&'a Transformer),
}

/// Loads the model from its checkpoint, or trains it (progress bar, loss
/// curve to CSV) and saves it. Returns the model and where it came from.
pub fn load_or_train(
    name: &str,
    config: TransformerConfig,
    train_cfg: &TrainConfig,
    objective: Objective<'_>,
    corpus: &[u8],
    device: &Device,
    retrain: bool,
) -> Result<(Transformer, String)> {
    let dir = checkpoint_dir();
    let path = checkpoint_path(&dir, name, &config, train_cfg.steps);
    if !retrain && path.exists() {
        let model = Transformer::load(config, &path, device)
            .with_context(|| format!("loading {}", path.display()))?;
        return Ok((model, format!("loaded {}", path.display())));
    }
    let ad = device.clone().autodiff();
    ad.seed(train_cfg.seed);
    let model = config.init(&ad)?;
    let bar = progress_bar(train_cfg.steps as u64, name);
    let mut losses = Vec::with_capacity(train_cfg.steps);
    let start = Instant::now();
    let on_step = |step: usize, loss: f32| {
        losses.push(loss);
        let recent = &losses[losses.len().saturating_sub(20)..];
        bar.set_message(format!(
            "loss {:.3}",
            recent.iter().sum::<f32>() / recent.len() as f32
        ));
        bar.set_position(step as u64 + 1);
    };
    let trained = match objective {
        Objective::NextByte => train(model, corpus, train_cfg, on_step)?,
        Objective::Distill(teacher) => distill(model, teacher, corpus, train_cfg, on_step)?,
    };
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    // Reload on the plain device through the checkpoint: exercises save/load too.
    trained.save(&path)?;
    let model = Transformer::load(config, &path, device)?;
    let csv = output_dir()?.join(format!("spec_decode_{name}_loss.csv"));
    let rows: Vec<Vec<String>> = losses
        .iter()
        .enumerate()
        .map(|(i, l)| vec![i.to_string(), format!("{l:.4}")])
        .collect();
    write_csv(&csv, &["step", "loss"], &rows)?;
    println!(
        "  {name}: trained {} steps in {secs:.0} s; loss curve (mean over each tenth):",
        train_cfg.steps
    );
    let tenth = (losses.len() / 10).max(1);
    let curve: Vec<String> = losses
        .chunks(tenth)
        .map(|c| format!("{:.2}", c.iter().sum::<f32>() / c.len() as f32))
        .collect();
    let svg = csv.with_extension("svg");
    let smooth: Vec<(f64, f64)> = losses
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let w = &losses[i.saturating_sub(19)..=i];
            (i as f64, f64::from(w.iter().sum::<f32>()) / w.len() as f64)
        })
        .collect();
    write_svg(
        &svg,
        &[LinePanel::new(
            format!("{name}: training loss"),
            "step",
            "next-byte loss (nats)",
        )
        .series("mean of the last 20 steps", smooth)
        .into()],
        1,
    )?;
    println!(
        "    {}  (CSV and plot: {}, {})",
        curve.join(" → "),
        csv.display(),
        svg.display()
    );
    Ok((model, format!("trained, saved to {}", path.display())))
}

/// Held-out prompts: `n` windows of `len` bytes from the validation text, as tokens.
pub fn held_out_prompts(validation: &[u8], n: usize, len: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let start = rand::RngExt::random_range(&mut rng, 0..validation.len() - len);
            validation[start..start + len]
                .iter()
                .map(|b| usize::from(*b))
                .collect()
        })
        .collect()
}

/// Seconds per cached forward of `k` new tokens after a `prefix`-token
/// prompt, rolled back after each repetition as a verify pass is (median of
/// `reps`); through the panels (`packed`) or the plain weights.
pub fn step_time(
    model: &PackedTransformer,
    packed: bool,
    prefix: usize,
    k: usize,
    reps: usize,
) -> Result<f64> {
    let forward = |cache: &mut KvCache, tokens: &[Vec<usize>]| {
        if packed {
            model.forward_cached(cache, tokens)
        } else {
            model.model().forward_cached(cache, tokens)
        }
    };
    let mut cache = model.new_cache(1);
    let _ = lastmile_core::convert::tensor_to_vec(forward(&mut cache, &[vec![32; prefix]])?)?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        let out = forward(&mut cache, &[vec![101; k]])?;
        let _ = lastmile_core::convert::tensor_to_vec(out)?;
        times.push(start.elapsed().as_secs_f64());
        cache.truncate(0, prefix)?;
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Training data as bytes.
pub fn corpus_bytes(corpus: &TextCorpus) -> (Vec<u8>, Vec<u8>) {
    let to_bytes = |t: &[u32]| t.iter().map(|x| *x as u8).collect::<Vec<u8>>();
    (to_bytes(corpus.train()), to_bytes(corpus.validation()))
}

/// Tour section: speculative decoding with the trained pair if its
/// checkpoints exist (run `spec_decode_text` once), else with a pair
/// trained here for a few seconds. Checks greedy exactness and compares
/// AR, static γ = 4 and AdaEDL.
pub fn tour_section(device: &Device) -> Result<()> {
    println!("== spec-decode: exact speculative decoding with AdaEDL ==");
    let corpus = TextCorpus::rust_book(0.05)?;
    let (train_bytes, validation) = corpus_bytes(&corpus);
    // The example's training settings name the checkpoints (the draft gets twice the steps).
    let (target_steps, draft_steps) = train_configs(default_steps());
    let dir = checkpoint_dir();
    let have_full = checkpoint_path(&dir, "target", &target_config(), target_steps.steps).exists()
        && checkpoint_path(&dir, "draft", &draft_config(), draft_steps.steps).exists();
    let load = |name: &str, config: TransformerConfig, steps: &TrainConfig| {
        load_or_train(
            name,
            config,
            steps,
            Objective::NextByte,
            &train_bytes,
            device,
            false,
        )
        .map(|(model, _)| model)
    };
    let (target, draft) = if have_full {
        let t = load("target", target_config(), &target_steps)?;
        let d = load("draft", draft_config(), &draft_steps)?;
        println!("  models: trained pair from {}", dir.display());
        (t, d)
    } else {
        // A small pair that trains in seconds; the example trains the real one.
        let quick = TrainConfig::new(150, 8, 64);
        let t = load(
            "tour-target",
            TransformerConfig::byte_level(64, 2, 2, CONTEXT),
            &quick,
        )?;
        let d = load(
            "tour-draft",
            TransformerConfig::byte_level(32, 1, 2, CONTEXT),
            &quick,
        )?;
        println!("  models: quick tour pair (run the spec_decode_text example for the full one)");
        (t, d)
    };
    let (target, draft) = (
        PackedTransformer::new(target)?,
        PackedTransformer::new(draft)?,
    );
    let prompts = held_out_prompts(&validation, 4, 48, 7);
    let mut rows = Vec::new();
    let temperatures = [0.0, 1.0];
    let mut speedups: Vec<(String, Vec<f64>)> = Vec::new();
    for (ti, temperature) in temperatures.into_iter().enumerate() {
        let config = GenerationConfig::new(SamplingParams::new(temperature)?, 48)?;
        let methods = [
            Method::Autoregressive,
            Method::Draft(Box::new(StaticLength::new(4)?)),
            Method::Draft(Box::new(AdaEdl::new(AdaEdlConfig::default())?)),
        ];
        let results = sweep(
            &methods,
            &target,
            &TokenDraft(&draft),
            &prompts,
            &config,
            1,
            || {},
        )?;
        let (ar_out, ar) = &results[0];
        for (method, (out, m)) in methods.iter().zip(&results) {
            if temperature == 0.0 {
                anyhow::ensure!(
                    out == ar_out,
                    "greedy output of {} differs from the target's",
                    method.name()
                );
            }
            let speedup = m.tokens_per_second() / ar.tokens_per_second();
            let drafts = !matches!(method, Method::Autoregressive);
            rows.push(vec![
                format!("{temperature}"),
                method.name(),
                format!("{:.0}", m.tokens_per_second()),
                format!("{speedup:.2}x"),
                if drafts {
                    format!("{:.2}", m.mean_acceptance_length())
                } else {
                    "-".to_owned()
                },
                format!("{:.2}", m.target_calls_per_token()),
            ]);
            match speedups.iter_mut().find(|(n, _)| *n == method.name()) {
                Some((_, v)) => v[ti] = speedup,
                None => {
                    let mut v = vec![f64::NAN; temperatures.len()];
                    v[ti] = speedup;
                    speedups.push((method.name(), v));
                }
            }
        }
    }
    print!(
        "{}",
        table(
            &[
                "temp",
                "method",
                "tok/s",
                "speed-up",
                "accepted/round",
                "target calls/tok"
            ],
            &rows
        )
    );
    println!(
        "  temp: sampling temperature (0 = greedy). speed-up: tokens/s over target-only decoding at the same temp."
    );
    println!(
        "  accepted/round: draft tokens the target accepts per verification (- : no draft). target calls/tok: \
         target forward passes per token."
    );
    println!(
        "  Speed-ups under 1x are expected with these byte-level models: their weights fit in the CPU cache, so \
         a call's fixed cost"
    );
    println!(
        "  dominates, a draft step costs a sizeable share of a target step, and fewer target calls do not turn \
         into time. Speculation"
    );
    println!(
        "  pays when a target step is bound by reading large weights (docs/benchmarks.md, speculative decoding)."
    );
    println!("  greedy (T = 0) outputs identical to target-only decoding: yes");
    let sample: Vec<u8> = prompts[0].iter().map(|t| *t as u8).collect();
    println!("  prompt: {:?}", String::from_utf8_lossy(&sample));
    let svg = output_dir()?.join("tour_spec_decode.svg");
    let mut panel = BarPanel::new(
        "tour: speculative decoding speed-up over target-only decoding",
        "speed-up (x)",
        temperatures.iter().map(|t| format!("temperature {t}")),
    )
    .hline("1x: target-only", 1.0);
    for (name, v) in speedups.into_iter().filter(|(n, _)| n != "autoregressive") {
        panel = panel.series(name, v);
    }
    write_svg(&svg, &[panel.into()], 1)?;
    println!("  plot: {}", svg.display());
    Ok(())
}

/// Training steps of the target: `$LASTMILE_SD_STEPS` or 1000.
pub fn default_steps() -> usize {
    std::env::var("LASTMILE_SD_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}

/// Training settings of the target and the draft for `steps` target steps:
/// windows of 8 × 128 bytes; the draft is ~35x cheaper per step and gets
/// twice the steps.
pub fn train_configs(steps: usize) -> (TrainConfig, TrainConfig) {
    let mut target = TrainConfig::new(steps, 8, CONTEXT);
    target.lr = 2e-3;
    let mut draft = TrainConfig::new(2 * steps, 8, CONTEXT);
    draft.seed = 1;
    (target, draft)
}

/// Distillation settings of the draft for `steps` target steps: half the
/// steps (each also runs the target forward), windows of 8 × 128 bytes.
///
/// ```
/// let c = lastmile_examples::spec_decode::distill_config(6000);
/// assert_eq!((c.steps, c.batch, c.context), (3000, 8, 128));
/// ```
pub fn distill_config(steps: usize) -> TrainConfig {
    let mut c = TrainConfig::new((steps / 2).max(1), 8, CONTEXT);
    c.seed = 1;
    c
}

/// One bin of [`acceptance_by_entropy`].
#[derive(Clone, Copy, Debug, Default)]
pub struct EntropyBin {
    /// Share of the positions whose draft entropy falls in the bin.
    pub share: f64,
    /// Mean acceptance probability `1 − TV(p, q)` of a drafted token there.
    pub acceptance: f64,
    /// AdaEDL's lower bound `1 − sqrt(0.2·H)` at the bin's centre.
    pub bound: f64,
}

/// How well the draft's entropy predicts acceptance on held-out text: for
/// `windows` windows of `CONTEXT` bytes and every position after the 16th,
/// the draft entropy `H(q)` and the acceptance probability of a drafted
/// token, `1 − TV(p, q)` (Leviathan et al. 2023, Eq. 3), both at
/// `temperature`, binned by `H` in steps of 0.25 nats (the last bin holds
/// everything ≥ 2.75). AdaEDL can only beat a fixed draft length when
/// acceptance varies with `H`.
///
/// # Errors
/// When the models' vocabularies differ, `validation` is shorter than
/// `CONTEXT` bytes, `temperature` is invalid, or a forward fails.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_examples::spec_decode::{CONTEXT, acceptance_by_entropy};
/// use lastmile_models::TransformerConfig;
/// let d = Device::flex();
/// let target = TransformerConfig::byte_level(16, 1, 2, CONTEXT).init(&d)?;
/// let draft = TransformerConfig::byte_level(16, 1, 2, CONTEXT).init(&d)?;
/// let text = b"fn main() { println!(\"hello\"); } ".repeat(8);
/// let bins = acceptance_by_entropy(&target, &draft, &text, 2, 1.0)?;
/// let share: f64 = bins.iter().map(|b| b.share).sum();
/// assert!((share - 1.0).abs() < 1e-9);
/// assert!(acceptance_by_entropy(&target, &draft, b"short", 2, 1.0).is_err());
/// # }
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn acceptance_by_entropy(
    target: &Transformer,
    draft: &Transformer,
    validation: &[u8],
    windows: usize,
    temperature: f64,
) -> Result<Vec<EntropyBin>> {
    let device = target.device();
    let sampling = SamplingParams::new(temperature)?;
    let (vocab, skip) = (target.vocab(), 16);
    anyhow::ensure!(
        draft.vocab() == vocab,
        "draft vocab {} != target vocab {vocab}; expected the same vocabulary",
        draft.vocab()
    );
    anyhow::ensure!(
        validation.len() >= CONTEXT,
        "{} validation bytes; expected at least CONTEXT = {CONTEXT}",
        validation.len()
    );
    let stride = (validation.len() - CONTEXT) / windows.max(1);
    let mut sums = [(0usize, 0.0f64); 12];
    let mut total = 0usize;
    for w in 0..windows.max(1) {
        let bytes = &validation[w * stride..w * stride + CONTEXT];
        let ids: Vec<i64> = bytes.iter().map(|b| i64::from(*b)).collect();
        let x = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, CONTEXT]), &device);
        let probs = |m: &Transformer| -> Result<Vec<f32>> {
            let logits = m.forward(x.clone())?.reshape([CONTEXT, vocab]);
            Ok(lastmile_core::convert::tensor_to_vec(
                sampling.probabilities(logits)?,
            )?)
        };
        let (p, q) = (probs(target)?, probs(draft)?);
        for pos in skip..CONTEXT {
            let (p, q) = (
                &p[pos * vocab..(pos + 1) * vocab],
                &q[pos * vocab..(pos + 1) * vocab],
            );
            let tv: f64 = p
                .iter()
                .zip(q)
                .map(|(a, b)| f64::from((a - b).abs()))
                .sum::<f64>()
                / 2.0;
            let h: f64 = q
                .iter()
                .filter(|v| **v > 0.0)
                .map(|v| -f64::from(*v) * f64::from(v.ln()))
                .sum();
            let bin = ((h / 0.25) as usize).min(sums.len() - 1);
            sums[bin].0 += 1;
            sums[bin].1 += 1.0 - tv;
            total += 1;
        }
    }
    Ok(sums
        .iter()
        .enumerate()
        .map(|(i, (n, acc))| EntropyBin {
            share: *n as f64 / total.max(1) as f64,
            acceptance: if *n > 0 { acc / *n as f64 } else { f64::NAN },
            bound: 1.0 - (0.2 * (i as f64 * 0.25 + 0.125)).sqrt(),
        })
        .collect())
}

/// Held-out loss (nats/byte) of a model on the validation text.
pub fn held_out_loss(model: &Transformer, validation: &[u8]) -> Result<f32> {
    Ok(evaluate(model, validation, CONTEXT, 32, 99)?)
}
