//! The speculative-decoding sweep of a real model (the `spec_decode_llm`
//! example): every method at three temperatures, the table, the summary,
//! the CSV and the plot.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, ensure};
use lastmile_core::lm::LanguageModel;
use lastmile_core::numerics::SamplingParams;
use lastmile_spec_decode::{GenerationConfig, Metrics, PassCosts};

use crate::drafts::MakeDrafter;
use crate::plot::{BarPanel, write_svg_sized};
use crate::report::{progress_bar, table, write_csv};
use crate::sweep::{Method, methods, modelled_speedup, run_method, sweep_paired};
use crate::timing::LengthCycle;

/// The prompts, costs and choices a sweep runs with.
pub struct SweepCtx<'a> {
    /// Prompt token ids.
    pub prompts: &'a [Vec<usize>],
    /// What each prompt is ("corpus", "chat"), for the report.
    pub kinds: &'a [&'static str],
    /// The token that ends a generation.
    pub stop: Option<usize>,
    /// New tokens per prompt.
    pub max_tokens: usize,
    /// The verify pass's cost by its length.
    pub verify: &'a PassCosts,
    /// Where the CSV and the plot go.
    pub out: &'a Path,
    /// The temperatures swept (0: greedy).
    pub temperatures: &'a [f64],
    /// Seeds each prompt is decoded with (at least 1). One sampled
    /// decoding of a few prompts is a single draw of which tokens come and
    /// how many drafts are accepted, and differences of a few percent
    /// between policies are within its spread: with several seeds the
    /// report gives each speed-up's standard error over the seeds and the
    /// differences between policies paired by seed. Greedy decoding gives
    /// the same tokens under every seed: there the repeats measure the
    /// timing's spread alone.
    pub seeds: usize,
    /// The methods to run, by [`Method::name`]; empty: every method of
    /// [`methods`]. Autoregressive decoding always runs (the baseline).
    pub methods: &'a [String],
}

/// A method's runs at one temperature: summed over prompts and seeds,
/// and per seed.
#[derive(Default)]
struct Tally {
    /// The method's runs.
    total: Metrics,
    /// The autoregressive runs paired with them.
    base: Metrics,
    /// Per seed: end-to-end, decode-only and modelled speed-ups.
    per_seed: Vec<[f64; 3]>,
}

/// A method's speed-ups at one temperature: end-to-end, decode-only and
/// modelled, over all seeds and per seed.
struct Speedups {
    name: String,
    all: [f64; 3],
    per_seed: Vec<[f64; 3]>,
}

/// Mean and standard error of the mean (NaN with fewer than two values).
fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// `mean ± s.e.` of the per-seed differences `a − b` (paired by seed).
fn paired_difference(a: &[f64], b: &[f64]) -> String {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let (mean, se) = mean_se(&d);
    format!("{mean:+.3} ± {se:.3}")
}

/// The methods of [`methods`] that `ctx` asks for, autoregressive first.
fn chosen_methods(ctx: &SweepCtx<'_>, temperature: f64, cost_ratio: f64) -> Result<Vec<Method>> {
    let all = methods(temperature, cost_ratio, ctx.verify)?;
    for name in ctx.methods {
        ensure!(
            all.iter().any(|m| m.name() == *name),
            "no method called {name:?}; the methods are: {}",
            all.iter().map(Method::name).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(all
        .into_iter()
        .enumerate()
        .filter(|(i, m)| *i == 0 || ctx.methods.is_empty() || ctx.methods.contains(&m.name()))
        .map(|(_, m)| m)
        .collect())
}

/// Sweeps the methods of [`methods`] that `ctx` asks for with `draft`
/// (called `label`, one step costing `cost_ratio` target steps) at
/// `ctx.temperatures`, each under `ctx.seeds` seeds;
/// prints the table and a summary per temperature, writes
/// `spec_decode_llm.csv` and the speed-up plot `spec_decode_llm.svg` to
/// `ctx.out` (their paths returned).
///
/// # Errors
/// A method's error; a method name that is not one of [`methods`]; no
/// temperature or no seed; a greedy output that differs from
/// autoregressive decoding; a file that cannot be written.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_examples::drafts::TokenDraft;
/// use lastmile_examples::llm_sweep::{SweepCtx, sweep_report};
/// use lastmile_models::llama::{LlamaConfig, WeightStorage};
/// use lastmile_spec_decode::PassCosts;
/// let model = LlamaConfig::tiny().init_random(1, WeightStorage::F32, &Device::flex())?;
/// let out = std::env::temp_dir().join("lastmile-doc-sweep");
/// std::fs::create_dir_all(&out)?;
/// let methods = ["static-2".to_owned(), "adaedl".to_owned()];
/// let ctx = SweepCtx {
///     prompts: &[vec![1, 2, 3]],
///     kinds: &["toy"],
///     stop: None,
///     max_tokens: 3,
///     verify: &PassCosts::linear(0.1)?,
///     out: &out,
///     temperatures: &[0.0, 1.0],
///     seeds: 2,
///     methods: &methods,
/// };
/// // The model drafting for itself: every greedy draft is accepted.
/// let (csv, svg) = sweep_report(&ctx, &model, &TokenDraft(&model), "itself", 1.0)?;
/// assert!(csv.exists() && svg.exists());
/// // A name that is no method is an error, not an empty sweep.
/// let typo = ["static2".to_owned()];
/// assert!(sweep_report(&SweepCtx { methods: &typo, ..ctx }, &model, &TokenDraft(&model), "itself", 1.0).is_err());
/// # }
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn sweep_report<T: LanguageModel, S: MakeDrafter<T>>(
    ctx: &SweepCtx<'_>,
    target: &T,
    draft: &S,
    label: &str,
    cost_ratio: f64,
) -> Result<(PathBuf, PathBuf)> {
    let temperatures = ctx.temperatures;
    ensure!(!temperatures.is_empty(), "no temperature to sweep");
    ensure!(ctx.seeds >= 1, "seeds must be at least 1");
    let n_methods = chosen_methods(ctx, 0.0, cost_ratio)?.len();
    for &temperature in temperatures.iter().filter(|t| [0.0, 0.7].contains(*t)) {
        print_in_loop_costs(ctx, target, draft, temperature, cost_ratio)?;
    }
    let runs = temperatures.len() * ctx.seeds;
    let bar = progress_bar((runs * n_methods * ctx.prompts.len()) as u64, "sweep");
    let start = Instant::now();
    // Per temperature, per method (in the order of `chosen_methods`).
    let mut tallies: Vec<Vec<(String, Tally)>> = Vec::new();
    for &temperature in temperatures {
        let config = GenerationConfig::new(SamplingParams::new(temperature)?, ctx.max_tokens)?
            .with_stop_token(ctx.stop);
        let list = chosen_methods(ctx, temperature, cost_ratio)?;
        let mut tally: Vec<(String, Tally)> = list
            .iter()
            .map(|m| {
                let name = match m {
                    Method::Draft(_) | Method::Hybrid(..) => format!("{} ({label})", m.name()),
                    _ => m.name(),
                };
                (name, Tally::default())
            })
            .collect();
        for k in 0..ctx.seeds {
            // Prompt i of seed k decodes with seed 1 + 1000·k + i.
            let seed = 1 + 1000 * k as u64;
            let results = sweep_paired(&list, target, draft, ctx.prompts, &config, seed, || {
                bar.inc(1)
            })?;
            let ((ar_out, ar), _) = &results[0];
            let model = |m| modelled_speedup(m, cost_ratio, ctx.verify).unwrap_or(f64::NAN);
            for (method, (((out, m), base), (_, t))) in
                list.iter().zip(results.iter().zip(tally.iter_mut()))
            {
                if temperature == 0.0 {
                    ensure!(
                        out == ar_out,
                        "greedy output of {} differs from autoregressive decoding",
                        method.name()
                    );
                }
                // Against the autoregressive runs timed just before this
                // method's (paired): the machine's drift hits both alike.
                t.per_seed.push([
                    m.tokens_per_second() / base.tokens_per_second(),
                    m.decode_tokens_per_second() / base.decode_tokens_per_second(),
                    // The same decisions priced by the cost model: no timing noise.
                    model(m) / model(ar),
                ]);
                t.total.merge(m);
                t.base.merge(base);
            }
        }
        tallies.push(tally);
    }
    bar.finish_and_clear();
    let seeds_note = if ctx.seeds > 1 {
        format!(
            ", {} seeds a prompt (speed-ups over all of them, ± their standard error over the seeds; at T = 0 \
             the same tokens each time)",
            ctx.seeds
        )
    } else {
        String::new()
    };
    println!(
        "sweep ({:.0} s; {} prompts x {} methods x {} temperatures{seeds_note}, each run paired with an \
         autoregressive run just before it, after one untimed warm-up run per method):",
        start.elapsed().as_secs_f64(),
        ctx.prompts.len(),
        n_methods,
        temperatures.len()
    );
    let mut rows = Vec::new();
    let mut csv = Vec::new();
    // Per temperature and method: end-to-end, decode-only and modelled
    // speed-ups over all seeds, and the per-seed ones.
    let mut speedups: Vec<Vec<Speedups>> = Vec::new();
    for (&temperature, tally) in temperatures.iter().zip(&tallies) {
        let ar = &tally[0].1.total;
        let model = |m| modelled_speedup(m, cost_ratio, ctx.verify).unwrap_or(f64::NAN);
        let mut at_t = Vec::new();
        for (name, t) in tally {
            let m = &t.total;
            let speedup = m.tokens_per_second() / t.base.tokens_per_second();
            let decode_speedup = m.decode_tokens_per_second() / t.base.decode_tokens_per_second();
            let modelled = model(m) / model(ar);
            let seeds = t.per_seed.len();
            let se = mean_se(&t.per_seed.iter().map(|s| s[0]).collect::<Vec<_>>()).1;
            let drafts = name != "autoregressive";
            let acc = if drafts {
                format!("{:.2}", m.mean_acceptance_length())
            } else {
                "-".to_owned()
            };
            let with_se = |x: f64| {
                if seeds > 1 {
                    format!("{x:.2}x ± {se:.2}")
                } else {
                    format!("{x:.2}x")
                }
            };
            rows.push(vec![
                format!("{temperature}"),
                name.clone(),
                format!("{:.1}", m.tokens_per_second()),
                with_se(speedup),
                format!("{:.1}", m.decode_tokens_per_second()),
                format!("{decode_speedup:.2}x"),
                format!("{modelled:.2}x"),
                acc,
                format!("{:.2}", m.mean_draft_length()),
                format!("{:.2}", m.target_calls_per_token()),
            ]);
            csv.push(vec![
                format!("{temperature}"),
                name.clone(),
                seeds.to_string(),
                m.generated_tokens.to_string(),
                format!("{:.3}", m.elapsed.as_secs_f64()),
                format!("{:.2}", m.tokens_per_second()),
                format!("{speedup:.3}"),
                if seeds > 1 {
                    format!("{se:.3}")
                } else {
                    String::new()
                },
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
            at_t.push(Speedups {
                name: name.clone(),
                all: [speedup, decode_speedup, modelled],
                per_seed: t.per_seed.clone(),
            });
        }
        speedups.push(at_t);
    }
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
        "tok/s: generated tokens per second, prompt pass included, summed over the prompts{}. speed-up: over \
         autoregressive decoding at the same T, timed on the same prompts just before each of the \
         method's runs (so autoregressive decoding's own speed-up shows the timing noise). decode: the same after each run's first round (the prompt \
         pass, which costs the same with or without drafts). modelled: the run's counts priced by the cost \
         model at c = {cost_ratio:.3} and the passes' measured costs above (each round's pass priced by its \
         length, plus c per draft call, in target steps): the policies' decisions without the timing \
         noise of short runs.",
        if ctx.seeds > 1 { " and seeds" } else { "" }
    );
    println!(
        "tokens/round: tokens emitted per verification round, 1 + accepted drafts (vLLM's mean acceptance \
         length); drafted/round: draft tokens proposed per round."
    );
    if temperatures.contains(&0.0) {
        println!(
            "greedy (T = 0) outputs of every method identical to autoregressive decoding: yes"
        );
    }
    println!("prompt kinds: {}", ctx.kinds.join(", "));
    for (t, at_t) in temperatures.iter().zip(&speedups) {
        print_summary(*t, at_t);
    }

    let dir = ctx.out;
    let csv_path = dir.join("spec_decode_llm.csv");
    write_csv(
        &csv_path,
        &[
            "temperature",
            "method",
            "seeds",
            "tokens",
            "seconds",
            "tokens_per_s",
            "speedup",
            "speedup_se",
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
    let names: Vec<&String> = speedups[0].iter().map(|s| &s.name).collect();
    for name in names.into_iter().filter(|n| *n != "autoregressive") {
        let v = speedups
            .iter()
            .map(|at_t| {
                at_t.iter()
                    .find(|s| s.name == *name)
                    .map_or(f64::NAN, |s| s.all[0])
            })
            .collect();
        panel = panel.series(name.clone(), v);
    }
    write_svg_sized(&svg_path, &[panel.into()], 1, (1240, 560))?;
    Ok((csv_path, svg_path))
}

/// Prints the summary of one temperature: AdaEDL against static γ = 4 and
/// the heuristic, the best static γ, the best adaptive policy with the
/// draft alone (AdaEDL and its cost-aware variants) and the best method;
/// end to end, decode only and modelled. With several seeds, also the
/// differences paired by seed.
fn print_summary(t: f64, at_t: &[Speedups]) {
    let find = |name: &str| at_t.iter().find(|s| s.name.starts_with(name));
    let get = |name: &str, k: usize| find(name).map_or(f64::NAN, |s| s.all[k]);
    let best_of = |keep: &dyn Fn(&str) -> bool, k: usize| {
        at_t.iter()
            .filter(|s| keep(&s.name))
            .map(|s| (s.name.as_str(), s.all[k]))
            .fold(
                ("n/a", f64::NEG_INFINITY),
                |a, b| if b.1 > a.1 { b } else { a },
            )
    };
    let is_static = |n: &str| n.starts_with("static-");
    let is_adaptive = |n: &str| n.starts_with("adaedl") || n.starts_with("cost-aware-adaedl");
    let any = |n: &str| n != "autoregressive";
    let ((g, g_v), (a, a_v), (name, v)) = (
        best_of(&is_static, 0),
        best_of(&is_adaptive, 0),
        best_of(&any, 0),
    );
    let ((decode_name, decode_v), (mg, mg_v), (ma, ma_v), (m_name, m_v)) = (
        best_of(&any, 1),
        best_of(&is_static, 2),
        best_of(&is_adaptive, 2),
        best_of(&any, 2),
    );
    // A method left out of the sweep (`--methods`) is not a number.
    let x = |v: f64| {
        if v.is_finite() {
            format!("{v:.2}x")
        } else {
            "n/a".to_owned()
        }
    };
    println!(
        "T = {t}: AdaEDL {} vs static-4 {} and heuristic {}; best static {g} ({}); best adaptive with \
         the draft alone {a} ({}); best method {name} ({}; decode only: {decode_name} {}); modelled: \
         best static {mg} ({}), best adaptive {ma} ({}), best method {m_name} ({})",
        x(get("adaedl ", 0)),
        x(get("static-4 ", 0)),
        x(get("heuristic ", 0)),
        x(g_v),
        x(a_v),
        x(v),
        x(decode_v),
        x(mg_v),
        x(ma_v),
        x(m_v)
    );
    let per_seed = |name: &str, k: usize| -> Option<Vec<f64>> {
        find(name)
            .filter(|s| s.per_seed.len() > 1)
            .map(|s| s.per_seed.iter().map(|x| x[k]).collect())
    };
    let pairs = [
        ("AdaEDL − static-4", "adaedl ", "static-4 ", 0),
        ("AdaEDL − heuristic", "adaedl ", "heuristic ", 0),
        ("best adaptive − best static", a, g, 0),
        ("modelled: best adaptive − best static", ma, mg, 2),
    ];
    let lines: Vec<String> = pairs
        .iter()
        .filter_map(|(what, x, y, k)| {
            let (x, y) = (per_seed(x, *k)?, per_seed(y, *k)?);
            Some(format!("{what} {}", paired_difference(&x, &y)))
        })
        .collect();
    if !lines.is_empty() {
        println!(
            "  paired by seed (mean ± standard error of the per-seed differences in speed-up): {}",
            lines.join("; ")
        );
    }
}

/// Decodes every prompt at `temperature` with the draft's length cycling
/// through 0..=8 ([`LengthCycle`]) and prints the draft step and pass costs
/// timed in the loop, in plain steps of the same loop, beside `cost_ratio`
/// and the passes timed back to back (`ctx.verify`).
fn print_in_loop_costs<T: LanguageModel, S: MakeDrafter<T>>(
    ctx: &SweepCtx<'_>,
    target: &T,
    draft: &S,
    temperature: f64,
    cost_ratio: f64,
) -> Result<()> {
    let config = GenerationConfig::new(SamplingParams::new(temperature)?, ctx.max_tokens)?
        .with_stop_token(ctx.stop);
    let cycle = LengthCycle::new(8)?;
    let method = Method::Draft(Box::new(cycle.clone()));
    for prompt in ctx.prompts {
        run_method(&method, target, draft, prompt, &config, 1)?;
    }
    let Some((c, pass)) = cycle.costs().costs(cost_ratio, ctx.verify)? else {
        println!("in the loop at T = {temperature}: no plain step timed (outputs too short)");
        return Ok(());
    };
    let lengths = |v: &PassCosts| -> String {
        (1..=8)
            .map(|j| format!("{:.2}", v.verify(j)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "in the loop at T = {temperature} (draft length cycling 0..=8, in plain steps of the same loop): \
         draft step c = {c:.3} (timed after a target step: {cost_ratio:.3}); passes over 2..=9 tokens \
         with their round's host work: {} (back to back: {})",
        lengths(&pass),
        lengths(ctx.verify)
    );
    Ok(())
}
