//! The speculative-decoding sweep of a real model (the `spec_decode_llm`
//! example): every method at three temperatures, the table, the summary,
//! the CSV and the plot.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, ensure};
use lastmile_core::lm::LanguageModel;
use lastmile_core::numerics::SamplingParams;
use lastmile_spec_decode::{GenerationConfig, PassCosts};

use crate::drafts::MakeDrafter;
use crate::plot::{BarPanel, write_svg_sized};
use crate::report::{progress_bar, table, write_csv};
use crate::sweep::{Method, methods, modelled_speedup, run_method, sweep_paired};
use crate::timing::LengthCycle;

/// The prompts and costs a sweep runs with.
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
}

/// Sweeps every method of [`methods`] with `draft` (called `label`, one
/// step costing `cost_ratio` target steps) at T ∈ {0, 0.7, 1}; prints the
/// table and a summary per temperature, writes `spec_decode_llm.csv` and
/// the speed-up plot `spec_decode_llm.svg` to `ctx.out` (their paths
/// returned).
///
/// # Errors
/// A method's error; a greedy output that differs from autoregressive
/// decoding; a file that cannot be written.
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
/// let ctx = SweepCtx {
///     prompts: &[vec![1, 2, 3]],
///     kinds: &["toy"],
///     stop: None,
///     max_tokens: 3,
///     verify: &PassCosts::linear(0.1)?,
///     out: &out,
/// };
/// // The model drafting for itself: every greedy draft is accepted.
/// let (csv, svg) = sweep_report(&ctx, &model, &TokenDraft(&model), "itself", 1.0)?;
/// assert!(csv.exists() && svg.exists());
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
    let temperatures = [0.0, 0.7, 1.0];
    let mut rows = Vec::new();
    let mut csv = Vec::new();
    // Per method: end-to-end, decode-only and modelled speed-ups per temperature.
    let mut speedups: Vec<(String, [Vec<f64>; 3])> = Vec::new();
    for temperature in [0.0, 0.7] {
        print_in_loop_costs(ctx, target, draft, temperature, cost_ratio)?;
    }
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
        let results = sweep_paired(&list, target, draft, ctx.prompts, &config, 1, || bar.inc(1))?;
        let ((ar_out, ar), _) = &results[0];
        for (method, ((out, m), base)) in list.iter().zip(&results) {
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
            // Against the autoregressive runs timed just before this
            // method's (paired): the machine's drift hits both alike.
            let speedup = m.tokens_per_second() / base.tokens_per_second();
            let decode_speedup = m.decode_tokens_per_second() / base.decode_tokens_per_second();
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
        "sweep ({:.0} s; {} prompts x {} methods x {} temperatures, each run paired with an autoregressive \
         run just before it, after one untimed warm-up run per method):",
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
         autoregressive decoding at the same T, timed on the same prompts just before each of the \
         method's runs (so autoregressive decoding's own speed-up shows the timing noise). decode: the same after each run's first round (the prompt \
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

    let dir = ctx.out;
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
