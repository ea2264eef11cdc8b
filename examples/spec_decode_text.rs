//! Speculative decoding of a byte-level transformer trained on the Rust book.
//!
//! ```text
//! cargo build --release -p lastmile-examples --example spec_decode_text
//! target/release/examples/spec_decode_text [--steps N] [--retrain] [--prompts N] [--new-tokens N] [--draft-width 64..128] [--distill]
//! ```
//!
//! Trains (or loads from `target/lastmile-models/`) a 4-layer d = 256 target
//! (`--steps`, default 1000 — about 7 minutes; `--steps 6000`, about an hour
//! on one core, gives the pair measured in `docs/benchmarks.md`) and a
//! 1-layer draft (d = 64, or `--draft-width`; next-byte training for twice
//! the steps, or with `--distill` distilled from the target for half the
//! steps) on the text corpus, prints how the draft's entropy predicts
//! acceptance (the signal AdaEDL reads),
//! measures the target's verify cost over k tokens with plain and packed
//! weights, then decodes held-out prompts (both models as
//! `PackedTransformer`) with autoregressive decoding, static γ ∈ 1..8, the
//! HF heuristic, max-confidence, AdaEDL (also with `min_len = 0`), the
//! cost-model controller, cost-aware AdaEDL (given its costs, and timing
//! them in the loop), prompt lookup and the hybrid
//! (lookup where two or three bytes recur, the draft elsewhere) at
//! T ∈ {0, 0.7, 1.0, 1.5} — same
//! prompts and seeds for every method — and prints tokens/s, speed-up over
//! autoregressive decoding, mean acceptance length and target calls per
//! token (CSV in `target/lastmile-out`), then re-prices the same runs for
//! cheaper verification (`c_v` = measured, 0.25, 0.1, 0: where the policies
//! would stand on an accelerator; `spec_decode_modelled.csv`).
//! `LASTMILE_SD_STEPS` sets the training steps too.

use anyhow::{Context, Result, bail};
use lastmile_core::default_device;
use lastmile_core::numerics::SamplingParams;
use lastmile_datasets::TextCorpus;
use lastmile_examples::drafts::TokenDraft;
use lastmile_examples::plot::{BarPanel, LinePanel, write_svg, write_svg_sized};
use lastmile_examples::report::{Flags, output_dir, progress_bar, table, write_csv};
use lastmile_examples::spec_decode::{
    EntropyBin, Objective, acceptance_by_entropy, corpus_bytes, default_steps, distill_config,
    draft_config_with_width, held_out_loss, held_out_prompts, load_or_train, step_time,
    target_config, train_configs,
};
use lastmile_examples::sweep::{Method, methods, modelled_speedup, sweep};
use lastmile_models::PackedTransformer;
use lastmile_spec_decode::{GenerationConfig, Metrics, PassCosts};

struct Args {
    steps: usize,
    retrain: bool,
    prompts: usize,
    new_tokens: usize,
    draft_width: usize,
    distill: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        steps: default_steps(),
        retrain: false,
        prompts: 8,
        new_tokens: 64,
        draft_width: 64,
        distill: false,
    };
    let mut flags = Flags::from_env();
    while let Some(a) = flags.next_flag() {
        let mut value = |name: &str| flags.value::<usize>(name);
        match a.as_str() {
            "--steps" => args.steps = value("--steps")?,
            "--prompts" => args.prompts = value("--prompts")?,
            "--new-tokens" => args.new_tokens = value("--new-tokens")?,
            "--draft-width" => args.draft_width = value("--draft-width")?,
            "--retrain" => args.retrain = true,
            "--distill" => args.distill = true,
            other => bail!(
                "unknown argument {other}; expected --steps N, --prompts N, --new-tokens N, \
                 --draft-width N, --distill, --retrain"
            ),
        }
    }
    if !(64..=128).contains(&args.draft_width) || !args.draft_width.is_multiple_of(16) {
        bail!(
            "--draft-width {} not supported; expected a multiple of 16 in 64..=128",
            args.draft_width
        );
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let device = default_device()?;
    let corpus = TextCorpus::rust_book(0.05)?;
    let (train_bytes, validation) = corpus_bytes(&corpus);
    println!(
        "corpus: {} training bytes, {} held-out bytes",
        train_bytes.len(),
        validation.len()
    );

    // 1. The model pair.
    let (target_train, draft_train) = train_configs(args.steps);
    let (target, how_t) = load_or_train(
        "target",
        target_config(),
        &target_train,
        Objective::NextByte,
        &train_bytes,
        &device,
        args.retrain,
    )?;
    let (draft, how_d) = if args.distill {
        load_or_train(
            "draft-kd",
            draft_config_with_width(args.draft_width),
            &distill_config(args.steps),
            Objective::Distill(&target),
            &train_bytes,
            &device,
            args.retrain,
        )?
    } else {
        load_or_train(
            "draft",
            draft_config_with_width(args.draft_width),
            &draft_train,
            Objective::NextByte,
            &train_bytes,
            &device,
            args.retrain,
        )?
    };
    // Few-token forwards (verification) read the weights as column panels.
    let (target, draft) = (
        PackedTransformer::new(target)?,
        PackedTransformer::new(draft)?,
    );
    println!(
        "target: {} params, held-out loss {:.3} nats/byte ({how_t})",
        target_config().n_params(),
        held_out_loss(target.model(), &validation)?
    );
    println!(
        "draft:  {} params, held-out loss {:.3} nats/byte ({how_d})",
        draft_config_with_width(args.draft_width).n_params(),
        held_out_loss(draft.model(), &validation)?
    );

    // Does the draft's entropy say when its tokens will be accepted?
    let bins = acceptance_by_entropy(target.model(), draft.model(), &validation, 64, 1.0)?;
    let rows: Vec<Vec<String>> = bins
        .iter()
        .enumerate()
        .map(|(i, b)| {
            vec![
                format!("{:.2}", i as f64 * 0.25),
                format!("{:.3}", b.share),
                format!("{:.3}", b.acceptance),
                format!("{:.3}", b.bound),
            ]
        })
        .collect();
    let header = [
        "draft entropy from (nats)",
        "share",
        "acceptance 1-TV",
        "AdaEDL bound",
    ];
    println!("\nacceptance by draft entropy at T = 1 (held-out text):");
    print!("{}", table(&header, &rows));
    let csv = output_dir()?.join("spec_decode_entropy_acceptance.csv");
    write_csv(&csv, &header, &rows)?;
    let at = |f: &dyn Fn(&EntropyBin) -> f64| -> Vec<(f64, f64)> {
        bins.iter()
            .enumerate()
            .filter(|(_, b)| b.share > 0.0)
            .map(|(i, b)| (i as f64 * 0.25 + 0.125, f(b)))
            .collect()
    };
    let svg = csv.with_extension("svg");
    write_svg(
        &svg,
        &[LinePanel::new(
            "acceptance of a drafted token vs draft entropy (T = 1)",
            "draft entropy H(q), nats (bin centre)",
            "probability",
        )
        .series("acceptance 1 − TV(p, q)", at(&|b| b.acceptance))
        .series("AdaEDL lower bound 1 − sqrt(0.2 H)", at(&|b| b.bound))
        .series("share of positions", at(&|b| b.share))
        .y_range(0.0, 1.0)
        .into()],
        1,
    )?;
    println!("(CSV and plot: {}, {})", csv.display(), svg.display());

    // 2. Cost of one decoding step of each model (the cost-model policy's c).
    let prompt_len = 48;
    let t_target = step_time(&target, true, prompt_len + 32, 1, 41)?;
    let t_draft = step_time(&draft, true, prompt_len + 32, 1, 41)?;
    let cost_ratio = t_draft / t_target;
    println!(
        "one-token step: target {:.2} ms, draft {:.3} ms (c = {cost_ratio:.3})",
        t_target * 1e3,
        t_draft * 1e3
    );
    // On a CPU, scoring k tokens in one forward is not free: measure it,
    // with the plain weight layout and with the panels the decoder uses.
    let mut verify = Vec::new();
    for k in [2, 3, 5, 9] {
        verify.push((k, step_time(&target, true, prompt_len + 32, k, 21)?));
    }
    for (name, packed) in [("plain weights", false), ("panels", true)] {
        let base = step_time(&target, packed, prompt_len + 32, 1, 41)?;
        let mut shown = Vec::new();
        for k in [2, 3, 5, 9] {
            let t = step_time(&target, packed, prompt_len + 32, k, 21)?;
            shown.push(format!("{k}: {:.2} ms ({:.2}x)", t * 1e3, t / base));
        }
        println!(
            "target forward over k new tokens, {name}: 1: {:.2} ms, {}",
            base * 1e3,
            shown.join(", ")
        );
    }
    // Marginal cost of one more verified token, relative to a one-token step.
    let verify_cost = ((verify[3].1 - t_target) / 8.0 / t_target).max(0.0);
    println!("marginal verify cost per extra token: c_v = {verify_cost:.2} target steps");

    // 3. The sweep.
    let prompts = held_out_prompts(&validation, args.prompts, prompt_len, 2024);
    let temperatures = [0.0, 0.7, 1.0, 1.5];
    // This target's passes are priced linearly: the re-pricing below asks
    // what other linear costs would change.
    let verify = PassCosts::linear(verify_cost)?;
    let n_methods = methods(0.0, cost_ratio, &verify)?.len();
    let bar = progress_bar(
        (temperatures.len() * n_methods * prompts.len()) as u64,
        "decoding",
    );
    let mut csv_rows = Vec::new();
    let mut summary = Vec::new();
    let mut tables = Vec::new();
    let mut counts: Vec<(f64, Vec<(String, Metrics)>)> = Vec::new();
    for (ti, &temperature) in temperatures.iter().enumerate() {
        let config = GenerationConfig::new(SamplingParams::new(temperature)?, args.new_tokens)?;
        let list = methods(temperature, cost_ratio, &verify)?;
        bar.set_message(format!("T = {temperature}"));
        let seed = 1000 * (ti as u64 + 1);
        let results = sweep(
            &list,
            &target,
            &TokenDraft(&draft),
            &prompts,
            &config,
            seed,
            || bar.inc(1),
        )?;
        let (ar_out, ar) = &results[0];
        let ar_tps = ar.tokens_per_second();
        let mut best_static = (0usize, 0.0f64);
        let mut adaedl_tps = 0.0;
        let mut adaedl0_tps = 0.0;
        let mut static4_tps = 0.0;
        let mut rows = Vec::new();
        for (method, (out, m)) in list.iter().zip(&results) {
            let tps = m.tokens_per_second();
            let name = method.name();
            if let Some(g) = name.strip_prefix("static-").and_then(|g| g.parse().ok())
                && tps > best_static.1
            {
                best_static = (g, tps);
            }
            match name.as_str() {
                "adaedl" => adaedl_tps = tps,
                "adaedl-min0" => adaedl0_tps = tps,
                "static-4" => static4_tps = tps,
                _ => {}
            }
            if temperature == 0.0 && out != ar_out {
                bail!("greedy output of {name} differs from target-only greedy decoding");
            }
            let drafts = !matches!(method, Method::Autoregressive);
            let if_drafts = |v: f64| {
                if drafts {
                    format!("{v:.2}")
                } else {
                    "-".to_owned()
                }
            };
            let row = vec![
                name,
                format!("{tps:.0}"),
                format!("{:.2}x", tps / ar_tps),
                if_drafts(m.mean_acceptance_length()),
                if_drafts(m.acceptance_rate()),
                format!("{:.3}", m.target_calls_per_token()),
                format!("{:.2}", m.draft_calls_per_token()),
            ];
            let mut csv = vec![format!("{temperature}")];
            csv.extend(row.iter().map(|c| c.trim_end_matches('x').to_owned()));
            csv_rows.push(csv);
            rows.push(row);
        }
        tables.push((temperature, rows));
        counts.push((
            temperature,
            list.iter()
                .zip(&results)
                .map(|(method, (_, m))| (method.name(), m.clone()))
                .collect(),
        ));
        summary.push((
            temperature,
            ar_tps,
            best_static,
            static4_tps,
            adaedl_tps,
            adaedl0_tps,
        ));
    }
    bar.finish_and_clear();
    let header = [
        "method",
        "tok/s",
        "speed-up",
        "mean acc. len",
        "acc. rate",
        "target calls/tok",
        "draft calls/tok",
    ];
    for (temperature, rows) in &tables {
        println!(
            "\nT = {temperature} ({} prompts x {} new tokens, batch 1)",
            prompts.len(),
            args.new_tokens
        );
        print!("{}", table(&header, rows));
    }
    println!(
        "\nmean acc. len: draft tokens accepted per verification round; acc. rate: accepted / drafted; \
         - : the method drafts nothing."
    );
    println!("greedy (T = 0): every method's output is identical to target-only greedy decoding");
    println!(
        "\nAdaEDL vs the best static γ (chosen with hindsight per temperature) and static γ = 4:"
    );
    for (temperature, ar, (g, best), s4, ada, ada0) in summary {
        println!(
            "  T = {temperature}: AR {ar:.0} tok/s, best static γ = {g} {best:.0} tok/s; \
             AdaEDL {ada:.0} tok/s ({:.2}x best static, {:.2}x γ = 4); \
             AdaEDL min_len 0 {ada0:.0} tok/s ({:.2}x best static, {:.2}x γ = 4, {:.2}x AR)",
            ada / best,
            ada / s4,
            ada0 / best,
            ada0 / s4,
            ada0 / ar
        );
    }
    modelled_table(&counts, cost_ratio, verify_cost)?;
    let path = output_dir()?.join("spec_decode_text.csv");
    let mut csv_header = vec!["temperature"];
    csv_header.extend(header);
    write_csv(&path, &csv_header, &csv_rows)?;
    let svg = path.with_extension("svg");
    plot_speedups(&counts, &svg)?;
    println!("CSV and plot: {}, {}", path.display(), svg.display());
    Ok(())
}

/// Measured speed-up over target-only decoding, one bar per method in each
/// temperature group.
fn plot_speedups(counts: &[(f64, Vec<(String, Metrics)>)], path: &std::path::Path) -> Result<()> {
    let names: Vec<String> = counts
        .first()
        .map(|(_, ms)| ms.iter().map(|(n, _)| n.clone()).collect())
        .unwrap_or_default();
    let mut panel = BarPanel::new(
        "speculative decoding: measured speed-up over target-only decoding",
        "speed-up (x)",
        counts.iter().map(|(t, _)| format!("T = {t}")),
    )
    .hline("1x: target-only", 1.0);
    for name in names.iter().filter(|n| n.as_str() != "autoregressive") {
        let values = counts
            .iter()
            .map(|(_, ms)| {
                let tps = |n: &str| {
                    ms.iter()
                        .find(|(m, _)| m == n)
                        .map_or(f64::NAN, |(_, m)| m.tokens_per_second())
                };
                tps(name) / tps("autoregressive")
            })
            .collect();
        panel = panel.series(name.clone(), values);
    }
    write_svg_sized(path, &[panel.into()], 1, (1240, 520))
}

/// The same decoded tokens re-priced for other verify costs: where would the
/// policies stand on hardware where scoring extra tokens is cheaper?
fn modelled_table(
    counts: &[(f64, Vec<(String, Metrics)>)],
    cost_ratio: f64,
    measured_cv: f64,
) -> Result<()> {
    let header = [
        "T",
        "c_v",
        "best static γ",
        "heuristic",
        "max-conf",
        "AdaEDL",
        "AdaEDL / best static",
    ];
    let mut rows = Vec::new();
    let mut panels = Vec::new();
    for (temperature, methods) in counts {
        let mut lines: [Vec<(f64, f64)>; 4] = Default::default();
        for c_v in [measured_cv, 0.25, 0.1, 0.0] {
            let speedup = |name: &str| -> Result<f64> {
                let (_, m) = methods
                    .iter()
                    .find(|(n, _)| n == name)
                    .with_context(|| format!("no results for {name}"))?;
                let (_, ar) = methods
                    .iter()
                    .find(|(n, _)| n == "autoregressive")
                    .context("no autoregressive run")?;
                let free = PassCosts::linear(0.0)?;
                let base = modelled_speedup(ar, 0.0, &free).context("empty AR run")?;
                let costs = PassCosts::linear(c_v)?;
                Ok(modelled_speedup(m, cost_ratio, &costs).context("empty run")? / base)
            };
            let mut best = (0, 0.0);
            for g in 1..=8 {
                let s = speedup(&format!("static-{g}"))?;
                if s > best.1 {
                    best = (g, s);
                }
            }
            let ada = speedup("adaedl")?;
            let conf = methods
                .iter()
                .find(|(n, _)| n.starts_with("max-conf"))
                .map(|(n, _)| n.clone())
                .context("no max-confidence run")?;
            for (line, v) in
                lines
                    .iter_mut()
                    .zip([best.1, speedup("heuristic")?, speedup(&conf)?, ada])
            {
                line.push((c_v, v));
            }
            rows.push(vec![
                format!("{temperature}"),
                format!("{c_v:.2}"),
                format!("{:.2}x (γ = {})", best.1, best.0),
                format!("{:.2}x", speedup("heuristic")?),
                format!("{:.2}x", speedup(&conf)?),
                format!("{ada:.2}x"),
                format!("{:.2}", ada / best.1),
            ]);
        }
        let mut panel = LinePanel::new(
            format!("T = {temperature}: modelled speed-up vs verify cost"),
            "c_v: cost of each extra verified token (target steps)",
            "modelled speed-up over AR (x)",
        )
        .hline("1x", 1.0);
        for (name, mut pts) in ["best static γ", "heuristic", "max-confidence", "AdaEDL"]
            .into_iter()
            .zip(lines)
        {
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            panel = panel.series(name, pts);
        }
        panels.push(panel.into());
    }
    println!(
        "\nmodelled speed-up over AR: the same tokens re-priced with a draft call = {cost_ratio:.3} \
         target steps and a k-token verify = 1 + c_v·(k − 1) steps (first c_v: measured here)"
    );
    print!("{}", table(&header, &rows));
    let path = output_dir()?.join("spec_decode_modelled.csv");
    write_csv(&path, &header, &rows)?;
    let svg = path.with_extension("svg");
    write_svg(&svg, &panels, 2)?;
    println!("CSV and plot: {}, {}", path.display(), svg.display());
    Ok(())
}
