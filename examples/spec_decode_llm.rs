//! Speculative decoding of a real model: SmolLM2-135M-Instruct (GGUF, its
//! weights stored as `WeightStorage::fastest_on` the device: the file's
//! blocks in lastmile's panel kernel on a CPU) as the target; as the draft,
//! a feature-level draft (EAGLE; the `feature_draft_llm` example), a
//! distilled draft (the `distill_llm` example), the target's own first
//! blocks (early exit), or prompt lookup.
//!
//! ```text
//! scripts/fetch-smollm2.sh            # once: the 98 MB model file
//! CARGO_TARGET_DIR=/work/bench-target cargo build --release -p lastmile-examples --example spec_decode_llm
//! /work/bench-target/release/examples/spec_decode_llm [--prompts N] [--chat N] [--max-tokens N]
//!     [--prompt-chars N] [--draft auto|exit|distilled|feature] [--layers L] [--vocab V]
//! ```
//!
//! 1. Measures the target's passes over 1..=9 tokens, in turn (medians of
//!    15), hence the verify pass's cost by its length (`PassCosts`, in
//!    target steps; a CPU's is not linear in the tokens) and the mean
//!    marginal cost `c_v` of verifying 8 tokens.
//! 2. The draft model. `--draft distilled` loads the draft the
//!    `distill_llm` example saved for `--layers L` (default 2) blocks and a
//!    head over `--vocab V` tokens (default 8192; 0: the full head) and
//!    measures its step cost `c` (in target steps, each draft step timed
//!    right after a target step, as in a round, where the target's pass has
//!    evicted the draft's weights from the cache). `--draft exit` picks
//!    the early-exit depth: for L ∈ {4, 8, …, 24} it measures `c` and
//!    decodes the first prompt of each kind with AdaEDL at T = 0; the L
//!    with the highest tokens/s is used below (`--layers L` skips this).
//!    `--draft feature` loads the feature-level draft `feature_draft_llm`
//!    saved (`--layers`, default 1, and `--vocab`), verified through a
//!    `FeatureTap` that hands it the target's features. The default,
//!    `auto`, is the feature draft when its file exists, else the
//!    distilled draft when its file exists.
//! 3. Sweeps autoregressive decoding, static γ ∈ 1..8, the HF heuristic,
//!    max-confidence, AdaEDL (`min_len` 1 and 0), the cost-model
//!    controller (given the measured `c` and `c_v`), cost-aware AdaEDL (given `c` and the
//!    pass costs by length), prompt lookup, and
//!    the hybrid (lookup where a bigram or trigram recurs, the draft elsewhere) under
//!    max-confidence and cost-aware AdaEDL, at
//!    T ∈ {0, 0.7, 1.0}, on `--prompts` windows of the shipped corpus
//!    (default 1, about `--prompt-chars` 300 characters each) and
//!    `--chat` chat messages (default 1, at most 4), `--max-tokens` new
//!    tokens each (default 40), stopping at `<|im_end|>`. Same prompts and seeds for
//!    every method; greedy outputs are asserted identical to autoregressive
//!    decoding. Prints tokens/s (the prompt pass included), speed-up, the
//!    modelled speed-up (the run's counts priced at the measured `c` and
//!    pass costs: the decisions without the timing noise), mean
//!    tokens per round (1 + accepted drafts) and target calls per token; writes
//!    `spec_decode_llm.csv`, `spec_decode_llm.svg` (speed-ups) and, for the
//!    early exit, `spec_decode_llm_depth.svg` (acceptance and speed-up by
//!    draft depth) to the output folder
//!    (`$LASTMILE_OUT`, default `<target dir>/lastmile-out`).
//!
//! The default run takes a few minutes on 2 cores.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use lastmile_core::default_device;
use lastmile_core::lm::LanguageModel;
use lastmile_core::numerics::SamplingParams;
use lastmile_examples::drafts::{DraftSource, FeatureDraft, TokenDraft};
use lastmile_examples::drafts::{draft_file_name, feature_draft_file_name};
use lastmile_examples::llm::{CHAT_PROMPTS, Llm, MODEL_DIR, corpus_prompts, models_dir};
use lastmile_examples::plot::{BarPanel, LinePanel, write_svg, write_svg_sized};
use lastmile_examples::report::{Flags, output_dir, progress_bar, table, write_csv};
use lastmile_examples::sweep::{Method, methods, modelled_speedup, run_method, sweep};
use lastmile_examples::timing::{draft_step_time, pass_times};
use lastmile_models::llama::{LlamaEarlyExit, LlamaFeatureDraftModule, LlamaModule};
use lastmile_spec_decode::{
    AdaEdl, AdaEdlConfig, FeatureTap, GenerationConfig, Metrics, PassCosts,
};

/// Which draft model the sweep uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DraftKind {
    /// The feature-level draft when its file is present, else the
    /// distilled draft when its file is present, else the early exit.
    Auto,
    /// The target's first blocks and its head (`LlamaEarlyExit`).
    Exit,
    /// A draft saved by the `distill_llm` example.
    Distilled,
    /// A feature-level draft saved by the `feature_draft_llm` example.
    Feature,
}

struct Args {
    prompts: usize,
    chat: usize,
    max_tokens: usize,
    prompt_chars: usize,
    layers: Option<usize>,
    draft: DraftKind,
    vocab: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        prompts: 1,
        chat: 1,
        max_tokens: 40,
        prompt_chars: 300,
        layers: None,
        draft: DraftKind::Auto,
        vocab: 8192,
    };
    let mut flags = Flags::from_env();
    while let Some(a) = flags.next_flag() {
        let mut value = |name: &str| flags.value::<usize>(name);
        match a.as_str() {
            "--prompts" => args.prompts = value("--prompts")?,
            "--chat" => args.chat = value("--chat")?,
            "--max-tokens" => args.max_tokens = value("--max-tokens")?,
            "--prompt-chars" => args.prompt_chars = value("--prompt-chars")?,
            "--layers" => args.layers = Some(value("--layers")?),
            "--vocab" => args.vocab = value("--vocab")?,
            "--draft" => {
                args.draft = match flags.value::<String>("--draft")?.as_str() {
                    "auto" => DraftKind::Auto,
                    "exit" => DraftKind::Exit,
                    "distilled" => DraftKind::Distilled,
                    "feature" => DraftKind::Feature,
                    other => bail!("--draft {other}: expected auto, exit, distilled or feature"),
                }
            }
            other => bail!(
                "unknown argument {other}; expected --prompts N, --chat N, --max-tokens N, \
                 --prompt-chars N, --layers L, --draft auto|exit|distilled|feature, --vocab V"
            ),
        }
    }
    ensure!(
        args.prompts + args.chat >= 1,
        "no prompts; give --prompts N or --chat N with N ≥ 1"
    );
    ensure!(
        args.chat <= CHAT_PROMPTS.len(),
        "--chat {} exceeds the {} chat prompts shipped",
        args.chat,
        CHAT_PROMPTS.len()
    );
    ensure!(args.max_tokens >= 1, "--max-tokens must be at least 1");
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let device = default_device()?;
    let llm = Llm::load(&device)?;
    let target = &llm.model;
    let n_layers = target.config().n_layers;
    println!(
        "target: SmolLM2-135M-Instruct, {n_layers} blocks, weights stored as {:?} ({} MB of matrices per forward), \
         loaded in {:.1} s",
        target.storage(),
        target.matrix_bytes() / 1_000_000,
        llm.load_secs
    );

    // Prompts: windows of the shipped corpus, then chat messages.
    let mut prompts = Vec::new();
    let mut kinds = Vec::new();
    for text in corpus_prompts(args.prompts, args.prompt_chars, 7)? {
        prompts.push(llm.text_prompt(&text));
        kinds.push("corpus");
    }
    for message in &CHAT_PROMPTS[..args.chat] {
        prompts.push(llm.chat_prompt(message)?);
        kinds.push("chat");
    }
    println!(
        "prompts: {} corpus windows and {} chat messages, {} tokens in total; {} new tokens each",
        args.prompts,
        args.chat,
        prompts.iter().map(Vec::len).sum::<usize>(),
        args.max_tokens
    );

    // 1. Costs of the target.
    let prefix = 128;
    let times = pass_times(target, prefix, 1..=9, 15)?;
    let t1 = times[0];
    let verify = PassCosts::from_times(&times)?;
    let by_length: Vec<String> = (1..times.len())
        .map(|j| format!("{}: {:.2}", j + 1, verify.verify(j)))
        .collect();
    println!(
        "target step {:.1} ms ({:.1} tok/s); passes over k tokens, in steps (a longer pass counted at \
         least as dear as a shorter): {}; c_v = {:.3} step per extra token over 8",
        t1 * 1e3,
        1.0 / t1,
        by_length.join(", "),
        verify.mean_marginal(8)
    );

    // 2. The draft: a distilled one, or the early exit at the best depth.
    let stop = llm.stop_token();
    let ctx = SweepCtx {
        prompts: &prompts,
        kinds: &kinds,
        stop,
        max_tokens: args.max_tokens,
        verify: &verify,
    };
    let feature_layers = args.layers.unwrap_or(1);
    let feature_path = models_dir()
        .join(MODEL_DIR)
        .join(feature_draft_file_name(feature_layers, args.vocab));
    let use_feature = match args.draft {
        DraftKind::Feature => true,
        DraftKind::Auto => feature_path.exists(),
        _ => false,
    };
    if use_feature {
        ensure!(
            feature_path.exists(),
            "no feature draft at {}; make one with `cargo run --release -p lastmile-examples \
             --example feature_draft_llm -- --layers {feature_layers} --vocab {}`",
            feature_path.display(),
            args.vocab
        );
        let head_rows = (args.vocab > 0).then_some(args.vocab);
        let draft = LlamaFeatureDraftModule::load(
            target,
            feature_layers,
            head_rows,
            &feature_path,
            &device,
        )?
        .to_draft(target.storage(), &device)?;
        let c = draft_step_time(&draft, target, prefix, 15)? / t1;
        let label = format!("feature L={feature_layers} V={}", args.vocab);
        println!(
            "draft: {label} ({}), one draft step c = {c:.3} target steps",
            feature_path.display()
        );
        let tap = FeatureTap::new(target);
        let source = FeatureDraft {
            tap: &tap,
            draft: &draft,
        };
        let (csv_path, svg_path) = sweep_report(&ctx, &tap, &source, &label, c)?;
        println!("CSV: {}\nplot: {}", csv_path.display(), svg_path.display());
        return Ok(());
    }
    let distilled_layers = args.layers.unwrap_or(2);
    let distilled_path = models_dir()
        .join(MODEL_DIR)
        .join(draft_file_name(distilled_layers, args.vocab));
    let use_distilled = match args.draft {
        DraftKind::Distilled => true,
        DraftKind::Exit | DraftKind::Feature => false,
        DraftKind::Auto => distilled_path.exists(),
    };
    if use_distilled {
        ensure!(
            distilled_path.exists(),
            "no distilled draft at {}; make one with `cargo run --release -p lastmile-examples \
             --example distill_llm -- --layers {distilled_layers} --vocab {}`",
            distilled_path.display(),
            args.vocab
        );
        let head_rows = (args.vocab > 0).then_some(args.vocab);
        let draft = LlamaModule::load_draft(
            target,
            distilled_layers,
            head_rows,
            &distilled_path,
            &device,
        )?
        .to_model(target.storage(), &device)?;
        let c = draft_step_time(&draft, target, prefix, 15)? / t1;
        let label = match args.vocab {
            0 => format!("distilled L={distilled_layers}"),
            v => format!("distilled L={distilled_layers} V={v}"),
        };
        println!(
            "draft: {label} ({}), one draft step c = {c:.3} target steps",
            distilled_path.display()
        );
        let (csv_path, svg_path) = sweep_report(&ctx, target, &TokenDraft(&draft), &label, c)?;
        println!("CSV: {}\nplot: {}", csv_path.display(), svg_path.display());
        return Ok(());
    }
    if args.draft == DraftKind::Auto {
        println!(
            "no distilled draft at {} (the distill_llm example makes one); using the early exit",
            distilled_path.display()
        );
    }
    let probe = GenerationConfig::new(SamplingParams::greedy(), 24)?.with_stop_token(stop);
    let probe_prompts: Vec<&Vec<usize>> = [0, args.prompts]
        .iter()
        .filter_map(|&i| prompts.get(i))
        .collect();
    let candidates: Vec<usize> = match args.layers {
        Some(l) => vec![l],
        None => [4, 8, 12, 16, 20, 24]
            .into_iter()
            .filter(|l| *l < n_layers)
            .collect(),
    };
    let adaedl = Method::Draft(Box::new(AdaEdl::new(AdaEdlConfig::default())?));
    let mut depth_rows = Vec::new();
    let mut depth_points: Vec<(f64, f64, f64)> = Vec::new(); // (L, accept rate, speed-up)
    let mut best: Option<(usize, f64, f64)> = None; // (L, tok/s, c)
    let ar_probe = {
        let mut m = Metrics::default();
        for p in &probe_prompts {
            run_method(
                &Method::Autoregressive,
                target,
                &TokenDraft(target),
                p,
                &probe,
                0,
            )?; // warm-up
            m.merge(
                &run_method(
                    &Method::Autoregressive,
                    target,
                    &TokenDraft(target),
                    p,
                    &probe,
                    0,
                )?
                .metrics,
            );
        }
        m.tokens_per_second()
    };
    for &l in &candidates {
        let draft = LlamaEarlyExit::new(target, l)?;
        let c = draft_step_time(&draft, target, prefix, 15)? / t1;
        let mut m = Metrics::default();
        for p in &probe_prompts {
            m.merge(&run_method(&adaedl, target, &TokenDraft(&draft), p, &probe, 0)?.metrics);
        }
        let tps = m.tokens_per_second();
        depth_rows.push(vec![
            l.to_string(),
            format!("{c:.3}"),
            format!("{:.2}", m.mean_acceptance_length()),
            format!("{:.2}", m.acceptance_rate()),
            format!("{tps:.1}"),
            format!("{:.2}x", tps / ar_probe),
        ]);
        depth_points.push((l as f64, m.acceptance_rate(), tps / ar_probe));
        if best.is_none_or(|(_, b, _)| tps > b) {
            best = Some((l, tps, c));
        }
    }
    let (layers, _, cost_ratio) = best.context("no early-exit depth to try")?;
    println!(
        "early-exit depth (AdaEDL, T = 0, {} probe prompts, 24 tokens; autoregressive {ar_probe:.1} tok/s):",
        probe_prompts.len()
    );
    print!(
        "{}",
        table(
            &[
                "L",
                "draft cost c",
                "tokens/round",
                "accept rate",
                "tok/s",
                "speed-up"
            ],
            &depth_rows
        )
    );
    println!(
        "chosen: L = {layers} (highest tokens/s), draft step c = {cost_ratio:.3} target steps"
    );
    let draft = LlamaEarlyExit::new(target, layers)?;
    let label = format!("exit L={layers}");

    // 3. The sweep.
    let (csv_path, svg_path) = sweep_report(&ctx, target, &TokenDraft(&draft), &label, cost_ratio)?;
    if depth_points.is_empty() {
        println!("CSV: {}\nplot: {}", csv_path.display(), svg_path.display());
        return Ok(());
    }
    let depth_svg = output_dir()?.join("spec_decode_llm_depth.svg");
    let depth_panel = LinePanel::new(
        "early-exit draft depth (AdaEDL, T = 0)",
        format!("draft depth L (blocks of {n_layers})"),
        "rate / speed-up",
    )
    .series(
        "accept rate",
        depth_points.iter().map(|p| (p.0, p.1)).collect(),
    )
    .series(
        "speed-up over AR (x)",
        depth_points.iter().map(|p| (p.0, p.2)).collect(),
    )
    .hline("1x", 1.0);
    write_svg(&depth_svg, &[depth_panel.into()], 1)?;
    println!(
        "CSV: {}\nplots: {}, {}",
        csv_path.display(),
        svg_path.display(),
        depth_svg.display()
    );
    Ok(())
}

/// What the sweep needs of `main`'s set-up.
struct SweepCtx<'a> {
    prompts: &'a [Vec<usize>],
    kinds: &'a [&'static str],
    stop: Option<usize>,
    max_tokens: usize,
    /// The verify pass's cost by its length.
    verify: &'a PassCosts,
}

/// Step 3: sweeps every method with `draft` (called `label`, one step
/// costing `cost_ratio` target steps) at each temperature; prints the table
/// and summary, writes the CSV and the speed-up plot (their paths returned).
fn sweep_report<T: LanguageModel, S: DraftSource<T>>(
    ctx: &SweepCtx<'_>,
    target: &T,
    draft: &S,
    label: &str,
    cost_ratio: f64,
) -> Result<(PathBuf, PathBuf)> {
    let temperatures = [0.0, 0.7, 1.0];
    let mut rows = Vec::new();
    let mut csv = Vec::new();
    // Per method: end-to-end, decode-only and modelled speed-ups per temperature.
    let mut speedups: Vec<(String, [Vec<f64>; 3])> = Vec::new();
    let n_methods = methods(0.0, cost_ratio, ctx.verify)?.len();
    let bar = progress_bar(
        (temperatures.len() * n_methods * ctx.prompts.len()) as u64,
        "sweep",
    );
    let start = Instant::now();
    for (ti, &temperature) in temperatures.iter().enumerate() {
        let config = GenerationConfig::new(SamplingParams::new(temperature)?, ctx.max_tokens)?
            .with_stop_token(ctx.stop);
        let list = methods(temperature, cost_ratio, ctx.verify)?;
        let results = sweep(&list, target, draft, ctx.prompts, &config, 1, || bar.inc(1))?;
        let (ar_out, ar) = &results[0];
        for (method, (out, m)) in list.iter().zip(&results) {
            if temperature == 0.0 {
                ensure!(
                    out == ar_out,
                    "greedy output of {} differs from autoregressive decoding",
                    method.name()
                );
            }
            let name = match method {
                Method::Draft(_) | Method::Hybrid(..) => format!("{} ({label})", method.name()),
                _ => method.name(),
            };
            let speedup = m.tokens_per_second() / ar.tokens_per_second();
            let decode_speedup = m.decode_tokens_per_second() / ar.decode_tokens_per_second();
            // The same decisions priced by the cost model: no timing noise.
            let model = |m| modelled_speedup(m, cost_ratio, ctx.verify).unwrap_or(f64::NAN);
            let modelled = model(m) / model(ar);
            let drafts = !matches!(method, Method::Autoregressive);
            let acc = if drafts {
                format!("{:.2}", m.mean_acceptance_length())
            } else {
                "-".to_owned()
            };
            rows.push(vec![
                format!("{temperature}"),
                name.clone(),
                format!("{:.1}", m.tokens_per_second()),
                format!("{speedup:.2}x"),
                format!("{:.1}", m.decode_tokens_per_second()),
                format!("{decode_speedup:.2}x"),
                format!("{modelled:.2}x"),
                acc.clone(),
                format!("{:.2}", m.mean_draft_length()),
                format!("{:.2}", m.target_calls_per_token()),
            ]);
            csv.push(vec![
                format!("{temperature}"),
                name.clone(),
                m.generated_tokens.to_string(),
                format!("{:.3}", m.elapsed.as_secs_f64()),
                format!("{:.2}", m.tokens_per_second()),
                format!("{speedup:.3}"),
                format!("{:.2}", m.decode_tokens_per_second()),
                format!("{decode_speedup:.3}"),
                format!("{modelled:.3}"),
                if drafts {
                    format!("{:.3}", m.mean_acceptance_length())
                } else {
                    String::new()
                },
                format!("{:.3}", m.target_calls_per_token()),
            ]);
            let slot = match speedups.iter().position(|(n, _)| *n == name) {
                Some(i) => i,
                None => {
                    let nan = vec![f64::NAN; temperatures.len()];
                    speedups.push((name, [nan.clone(), nan.clone(), nan]));
                    speedups.len() - 1
                }
            };
            for (v, x) in speedups[slot]
                .1
                .iter_mut()
                .zip([speedup, decode_speedup, modelled])
            {
                v[ti] = x;
            }
        }
    }
    bar.finish_and_clear();
    println!(
        "sweep ({:.0} s; {} prompts x {} methods x {} temperatures, after one untimed warm-up run per method):",
        start.elapsed().as_secs_f64(),
        ctx.prompts.len(),
        n_methods,
        temperatures.len()
    );
    print!(
        "{}",
        table(
            &[
                "T",
                "method",
                "tok/s",
                "speed-up",
                "decode tok/s",
                "decode speed-up",
                "modelled",
                "tokens/round",
                "drafted/round",
                "target calls/tok"
            ],
            &rows
        )
    );
    println!(
        "tok/s: generated tokens per second, prompt pass included, summed over the prompts. speed-up: over \
         autoregressive decoding at the same T. decode: the same after each run's first round (the prompt \
         pass, which costs the same with or without drafts). modelled: the run's counts priced by the cost \
         model at c = {cost_ratio:.3} and the passes' measured costs above (each round's pass priced by its \
         length, plus c per draft call, in target steps): the policies' decisions without the timing \
         noise of short runs."
    );
    println!(
        "tokens/round: tokens emitted per verification round, 1 + accepted drafts (vLLM's mean acceptance \
         length); drafted/round: draft tokens proposed per round."
    );
    println!("greedy (T = 0) outputs of every method identical to autoregressive decoding: yes");
    println!("prompt kinds: {}", ctx.kinds.join(", "));

    // Summary per temperature: measured (0), decode only (1), modelled (2).
    for (ti, t) in temperatures.iter().enumerate() {
        let get = |name: &str, k: usize| {
            speedups
                .iter()
                .find(|(n, _)| n.starts_with(name))
                .map_or(f64::NAN, |(_, v)| v[k][ti])
        };
        let best_static = |k: usize| {
            (1..=8)
                .map(|g| (g, get(&format!("static-{g} "), k)))
                .fold((0, f64::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a })
        };
        let best = |k: usize| {
            speedups
                .iter()
                .filter(|(n, _)| n != "autoregressive")
                .map(|(n, v)| (n.as_str(), v[k][ti]))
                .fold(
                    ("", f64::NEG_INFINITY),
                    |a, b| if b.1 > a.1 { b } else { a },
                )
        };
        let ((g, g_v), (name, v)) = (best_static(0), best(0));
        let ((decode_name, decode_v), (mg, mg_v), (m_name, m_v)) =
            (best(1), best_static(2), best(2));
        println!(
            "T = {t}: AdaEDL {:.2}x vs static-4 {:.2}x and heuristic {:.2}x; best static γ = {g} \
             ({g_v:.2}x); best method {name} ({v:.2}x; decode only: {decode_name} {decode_v:.2}x); \
             modelled: best static γ = {mg} ({mg_v:.2}x), best method {m_name} ({m_v:.2}x)",
            get("adaedl ", 0),
            get("static-4 ", 0),
            get("heuristic ", 0)
        );
    }

    let dir = output_dir()?;
    let csv_path = dir.join("spec_decode_llm.csv");
    write_csv(
        &csv_path,
        &[
            "temperature",
            "method",
            "tokens",
            "seconds",
            "tokens_per_s",
            "speedup",
            "decode_tokens_per_s",
            "decode_speedup",
            "modelled_speedup",
            "tokens_per_round",
            "target_calls_per_token",
        ],
        &csv,
    )?;
    let svg_path = dir.join("spec_decode_llm.svg");
    let mut panel = BarPanel::new(
        format!("SmolLM2-135M: speculative decoding speed-up (draft: {label})"),
        "speed-up over autoregressive (x)",
        temperatures.iter().map(|t| format!("T = {t}")),
    )
    .hline("1x: autoregressive", 1.0);
    for (name, [v, _, _]) in speedups.into_iter().filter(|(n, _)| n != "autoregressive") {
        panel = panel.series(name, v);
    }
    write_svg_sized(&svg_path, &[panel.into()], 1, (1240, 560))?;
    Ok((csv_path, svg_path))
}
