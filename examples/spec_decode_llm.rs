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
//!     [--temperatures 0,0.7,1] [--seeds N] [--methods NAME,NAME,...]
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
//!    pass costs by length; and `-timed`, pricing its decisions with the
//!    costs the decoder times in the loop, these as the prior), prompt lookup, and
//!    the hybrid (lookup where a bigram or trigram recurs, the draft elsewhere) under
//!    max-confidence and both cost-aware AdaEDLs, one per source (`PerSource`:
//!    the draft's rounds at its `c`, the looked-up ones at no cost), at
//!    T ∈ {0, 0.7, 1.0}, on `--prompts` windows of the shipped corpus
//!    (default 1, about `--prompt-chars` 300 characters each) and
//!    `--chat` chat messages (default 1, at most 4), `--max-tokens` new
//!    tokens each (default 40), stopping at `<|im_end|>`. Same prompts and seeds for
//!    every method; greedy outputs are asserted identical to autoregressive
//!    decoding. Each prompt is decoded under `--seeds` seeds (default 1):
//!    a sampled decoding is one draw of which tokens come and how many
//!    drafts are accepted, and with several the report gives each
//!    speed-up's standard error over the seeds and the differences between
//!    policies paired by seed (at T = 0, where every seed gives the same
//!    tokens, the spread of the timing alone). `--methods` runs only the named
//!    methods (their names as printed, e.g. `static-1,heuristic,adaedl`)
//!    beside autoregressive decoding. Prints tokens/s (the prompt pass included), speed-up (over
//!    autoregressive runs on the same prompts, each just before the
//!    method's run: a paired measurement on a machine whose speed
//!    drifts), the modelled speed-up (the run's counts priced at the measured `c` and
//!    pass costs: the decisions without the timing noise), mean
//!    tokens per round (1 + accepted drafts) and target calls per token; writes
//!    `spec_decode_llm.csv`, `spec_decode_llm.svg` (speed-ups) and, for the
//!    early exit, `spec_decode_llm_depth.svg` (acceptance and speed-up by
//!    draft depth) to the output folder
//!    (`$LASTMILE_OUT`, default `<target dir>/lastmile-out`).
//!
//! The default run takes a few minutes on 2 cores.

use anyhow::{Context, Result, bail, ensure};
use lastmile_core::default_device;
use lastmile_core::numerics::SamplingParams;
use lastmile_examples::drafts::{FeatureDraft, TokenDraft};
use lastmile_examples::drafts::{draft_file_name, feature_draft_file_name};
use lastmile_examples::llm::{CHAT_PROMPTS, Llm, MODEL_DIR, corpus_prompts, models_dir};
use lastmile_examples::llm_sweep::{SweepCtx, sweep_report};
use lastmile_examples::plot::{LinePanel, write_svg};
use lastmile_examples::report::{Flags, output_dir, table};
use lastmile_examples::sweep::{Method, run_method};
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
    temperatures: Vec<f64>,
    seeds: usize,
    methods: Vec<String>,
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
        temperatures: vec![0.0, 0.7, 1.0],
        seeds: 1,
        methods: Vec::new(),
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
            "--seeds" => args.seeds = value("--seeds")?,
            "--temperatures" => {
                args.temperatures = flags
                    .value::<String>("--temperatures")?
                    .split(',')
                    .map(|t| {
                        t.trim()
                            .parse::<f64>()
                            .with_context(|| format!("--temperatures: {t:?} is not a number"))
                    })
                    .collect::<Result<_>>()?;
            }
            "--methods" => {
                args.methods = flags
                    .value::<String>("--methods")?
                    .split(',')
                    .map(|m| m.trim().to_owned())
                    .filter(|m| !m.is_empty())
                    .collect();
            }
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
                 --prompt-chars N, --layers L, --draft auto|exit|distilled|feature, --vocab V, \
                 --temperatures T,T,..., --seeds N, --methods NAME,NAME,..."
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
    ensure!(args.seeds >= 1, "--seeds must be at least 1");
    ensure!(
        !args.temperatures.is_empty(),
        "--temperatures needs at least one temperature"
    );
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
    let out = output_dir()?;
    let ctx = SweepCtx {
        prompts: &prompts,
        kinds: &kinds,
        stop,
        max_tokens: args.max_tokens,
        verify: &verify,
        out: &out,
        temperatures: &args.temperatures,
        seeds: args.seeds,
        methods: &args.methods,
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
        .to_model(target.storage().for_draft(), &device)?;
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
    let depth_svg = out.join("spec_decode_llm_depth.svg");
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
