//! Mixture-of-Experts inference with the experts on disk and a DRAM cache.
//!
//! ```text
//! cargo build --release -p lastmile-examples --example moe_offload
//! target/release/examples/moe_offload [--steps N] [--retrain] [--quick] [--eval-windows N] [--trace-windows N] [--new-tokens N] [--goal-search]
//! ```
//!
//! Trains (or loads from `target/lastmile-models/`) a byte-level MoE LM
//! (4 blocks, d = 128, 32 SwiGLU experts of width 128 per block, top-4,
//! Switch load-balancing loss) on the text corpus, writes its experts to an
//! on-disk expert store, records routing traces on held-out text, then:
//!
//! 1. generates text with the experts on disk (page cache dropped before
//!    every read) under a DRAM budget of 1/4 of the experts, printing
//!    tokens/s, hit rate and bytes read per token for LRU, LFU, LRU +
//!    Cache-Prior and, live on the LRU run's recorded accesses (top-k
//!    routing does not depend on the cache, so the run repeats exactly),
//!    Belady/OPT and Belady with a bounded lookahead; then LRU and Belady
//!    with one DRAM pool shared by all blocks;
//! 2. replays the held-out trace for every policy at every capacity (table,
//!    CSV and SVG of hit rate vs capacity);
//! 3. runs the model on held-out text with LRU and Cache-Prior
//!    (λ ∈ {0.05, 0.1, 0.2, 0.5}, J ∈ {1, 2}) at 1/8, 1/4 and 1/2 of the
//!    experts cached, measuring perplexity and miss rate (table, CSV, SVG
//!    front) and the modelled token rate on phone flash;
//! 4. with `--goal-search` (several minutes more): the goal at 1/8 of the
//!    experts cached, searched over a finer λ grid, J ∈ {1, 2, 3}, LFU and
//!    LRFU as base policies, raw (not renormalised) weights, Max-Rank and
//!    the cumulative threshold on the evaluation text, the best setting of
//!    each family then measured again on disjoint held-out text, with
//!    paired standard errors of the perplexity change.
//!
//! `--quick` trains 200 steps and evaluates less (a smoke run of a couple of
//! minutes). Output: `target/lastmile-out` (`LASTMILE_OUT`).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use lastmile_core::default_device;
use lastmile_datasets::TextCorpus;
use lastmile_examples::moe::{
    BALANCE_COEF, CacheSetup, Candidate, LiveEval, LiveStats, baseline, best_within, default_steps,
    disjoint_windows, evaluate_candidates, generate, global_budget, goal_candidates, held_out_nll,
    live_eval, load_or_train, model_config, modelled_token_seconds, plot_front, plot_hit_rate,
    record_trace, replay_grid, replay_policies, replay_table, routing_sweep, train_config, windows,
};
use lastmile_examples::plot::{BarPanel, LinePanel, write_svg};
use lastmile_examples::report::{Flags, output_dir, table, write_csv};
use lastmile_examples::spec_decode::corpus_bytes;
use lastmile_models::MoeTransformer;
use lastmile_moe_cache::PolicyKind;
use lastmile_moe_cache::cost::LinearIoCost;
use lastmile_moe_cache::moe::OffloadConfig;
use lastmile_moe_cache::routing::RoutingRule;

struct Args {
    steps: usize,
    retrain: bool,
    eval_windows: usize,
    trace_windows: usize,
    new_tokens: usize,
    goal_search: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        steps: default_steps(),
        retrain: false,
        eval_windows: 32,
        trace_windows: 48,
        new_tokens: 96,
        goal_search: false,
    };
    let mut quick = false;
    let mut flags = Flags::from_env();
    while let Some(a) = flags.next_flag() {
        let mut value = |name: &str| flags.value::<usize>(name);
        match a.as_str() {
            "--steps" => args.steps = value("--steps")?,
            "--eval-windows" => args.eval_windows = value("--eval-windows")?,
            "--trace-windows" => args.trace_windows = value("--trace-windows")?,
            "--new-tokens" => args.new_tokens = value("--new-tokens")?,
            "--retrain" => args.retrain = true,
            "--goal-search" => args.goal_search = true,
            "--quick" => quick = true,
            other => bail!(
                "unknown argument {other}; expected --steps N, --eval-windows N, \
                 --trace-windows N, --new-tokens N, --quick, --retrain, --goal-search"
            ),
        }
    }
    if quick {
        args.steps = args.steps.min(200);
        args.eval_windows = args.eval_windows.min(2);
        args.trace_windows = args.trace_windows.min(8);
        args.new_tokens = args.new_tokens.min(48);
    }
    if args.steps == 0 || args.eval_windows == 0 || args.trace_windows == 0 {
        bail!("--steps, --eval-windows and --trace-windows must be at least 1");
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let start = Instant::now();
    let device = default_device().context("choosing the default device")?;
    let corpus = TextCorpus::rust_book(0.05)?;
    let (train_bytes, validation) = corpus_bytes(&corpus);
    let config = model_config();
    let out = output_dir()?;

    println!("== 1. the model ==");
    let (model, source) = load_or_train(
        "moe",
        config,
        &train_config(args.steps),
        &train_bytes,
        &device,
        args.retrain,
    )?;
    let expert_kb = config.expert_bytes() as f64 / 1024.0;
    println!("  {source}");
    println!(
        "  {} blocks of attention + MoE, {} experts per block, top-{} routing, load-balancing weight α = {BALANCE_COEF}",
        config.n_layers, config.experts, config.k
    );
    println!(
        "  one expert = {expert_kb:.0} KiB of f32 weights; all experts = {:.1} MiB (what would have to sit in DRAM without offloading)",
        (config.expert_bytes() * (config.experts * config.n_layers) as u64) as f64 / 1048576.0
    );
    // Evaluation text: disjoint windows from the first half of the held-out
    // bytes; the goal search confirms its choice on the second half.
    let (held_out_a, held_out_b) = validation.split_at(validation.len() / 2);
    let eval = disjoint_windows(held_out_a, args.eval_windows, config.max_len)?;
    let nll = held_out_nll(&model, &eval)?;
    println!(
        "  held-out loss {nll:.3} nats/byte, perplexity {:.2} (lower is better; 256 = guessing bytes uniformly)",
        nll.exp()
    );

    let store_path = out.join("moe_experts.lmexp");
    let store = model.write_experts(&store_path, Default::default())?;
    let file_mb = std::fs::metadata(&store_path)?.len() as f64 / 1048576.0;
    println!(
        "  expert store: {} ({file_mb:.1} MiB: every expert page-aligned with a CRC-32, one read per miss)",
        store_path.display()
    );
    drop(store);

    println!();
    println!("== 2. generation with experts on disk, 1/4 of them in DRAM ==");
    let quarter = config.experts / 4;
    let prompt = &windows(&validation, 1, 24, 5)[0];
    let k = config.k;
    let cp = RoutingRule::CachePrior {
        lambda: 0.2,
        top_j: 1,
    };
    let mut gen_rows = Vec::new();
    let mut csv_rows = Vec::new();
    let mut plot_rows: Vec<(String, String, f64, f64)> = Vec::new();
    let mut push_row = |name: &str, budget: &str, s: &LiveStats| {
        plot_rows.push((
            name.to_owned(),
            budget.to_owned(),
            s.hit_rate,
            s.bytes_per_token / 1024.0,
        ));
        gen_rows.push(vec![
            name.to_owned(),
            budget.to_owned(),
            format!("{:.0}", s.tokens_per_second()),
            format!("{:.3}", s.hit_rate),
            format!("{:.2}", s.misses_per_token),
            format!("{:.0}", s.bytes_per_token / 1024.0),
        ]);
        csv_rows.push(vec![
            name.replace(',', ";"),
            budget.to_owned(),
            format!("{:.2}", s.tokens_per_second()),
            format!("{:.4}", s.hit_rate),
            format!("{:.3}", s.bytes_per_token),
        ]);
    };
    let run =
        |setup: CacheSetup<'_>| generate(&model, &store_path, setup, prompt, args.new_tokens, 1);
    let top_k = |policy| OffloadConfig::new(policy, RoutingRule::TopK, k);
    // LRU first: its run records each block's accesses, the future that
    // Belady is given below (top-k routing does not depend on the cache, so
    // the Belady runs process the same tokens with the same routing).
    let per_block = |config_of_run| CacheSetup::per_layer(&config, quarter, config_of_run);
    let lru = run(per_block(top_k(PolicyKind::Lru)))?;
    push_row("LRU", "per block", &lru.stats);
    let lfu = run(per_block(top_k(PolicyKind::Lfu)))?;
    push_row("LFU", "per block", &lfu.stats);
    let prior = run(per_block(OffloadConfig::new(PolicyKind::Lru, cp, k)))?;
    push_row("LRU + Cache-Prior(λ=0.2, J=1)", "per block", &prior.stats);
    println!(
        "  sample (Cache-Prior): {:?}",
        String::from_utf8_lossy(&prior.sequence.iter().map(|&t| t as u8).collect::<Vec<u8>>())
    );
    let belady = |lookahead| top_k(PolicyKind::Belady { lookahead });
    // A lookahead of n·k + k − 1 accesses shows, from any access of a step,
    // the rest of that step and at least the next n steps (the block's next
    // n tokens here; the next n blocks' steps in the shared pool below).
    let ahead = |steps: usize| steps * k + k - 1;
    for (name, lookahead) in [
        ("Belady/OPT (whole future)".to_owned(), None),
        (
            format!("Belady, sees 8 tokens ahead ({} accesses)", ahead(8)),
            Some(ahead(8)),
        ),
        (
            format!("Belady, sees the next token ({} accesses)", ahead(1)),
            Some(ahead(1)),
        ),
    ] {
        let g = run(CacheSetup {
            future: Some(&lru.accesses),
            ..per_block(belady(lookahead))
        })?;
        if g.sequence != lru.sequence {
            bail!("{name} generated other tokens than LRU: the run was not repeated exactly");
        }
        push_row(&name, "per block", &g.stats);
    }
    // One pool for all blocks (the same DRAM): evictions may cross blocks,
    // so knowing the next block's experts (what a next-layer prefetcher
    // predicts) can inform them.
    let global = |config| CacheSetup {
        budget: global_budget(&model.config(), quarter),
        config,
        future: None,
    };
    let glru = run(global(top_k(PolicyKind::Lru)))?;
    push_row("LRU", "one pool", &glru.stats);
    for (name, lookahead) in [
        (
            format!("Belady, sees the next block ({} accesses)", ahead(1)),
            Some(ahead(1)),
        ),
        ("Belady/OPT (whole future)".to_owned(), None),
    ] {
        let g = run(CacheSetup {
            future: Some(&glru.accesses),
            ..global(belady(lookahead))
        })?;
        if g.sequence != glru.sequence {
            bail!("{name} (one pool) generated other tokens than LRU");
        }
        push_row(&name, "one pool", &g.stats);
    }
    print!(
        "{}",
        table(
            &[
                "policy",
                "DRAM budget",
                "tok/s",
                "hit rate",
                "loads/tok",
                "KiB read/tok"
            ],
            &gen_rows
        )
    );
    println!(
        "  {} tokens each ({}-byte prompt + {} sampled at T = 0.8, same seed), {quarter} of {} experts per block in DRAM \
         (per block: {quarter} slots in each block; one pool: {} slots shared by all blocks)",
        lru.sequence.len(),
        prompt.len(),
        lru.sequence.len() - prompt.len(),
        config.experts,
        quarter * config.n_layers
    );
    println!(
        "  tok/s: tokens processed per second on this machine, reads included (page cache dropped before each, so they come from the disk)"
    );
    println!(
        "  hit rate: share of expert uses already in DRAM; loads/tok: experts read from disk per token (all blocks); KiB read/tok: bytes read per token"
    );
    println!(
        "  Belady runs live: it is given the LRU run's recorded expert accesses (top-k routing does not depend on the cache, so the run repeats \
         exactly: same tokens, checked) and evicts the expert needed furthest ahead; with a lookahead of n accesses it sees only the next n \
         (experts not needed within them go first, least recently used first)"
    );
    println!(
        "  lookahead of {} accesses: the rest of the current step and at least the next step's {k} experts; per block that is the next token's \
         experts at the block (knowable only from a guess of the next token, e.g. a speculative draft); in the shared pool it is the next block's \
         experts for this token, about what a prefetcher running the next block's router on the current hidden state knows",
        ahead(1)
    );
    write_csv(
        &out.join("moe_generation.csv"),
        &[
            "policy",
            "budget",
            "tokens_per_s",
            "hit_rate",
            "bytes_per_token",
        ],
        &csv_rows,
    )?;

    let svg = out.join("moe_generation.svg");
    let mut panels = Vec::new();
    for budget in ["per block", "one pool"] {
        let rows: Vec<&(String, String, f64, f64)> =
            plot_rows.iter().filter(|r| r.1 == budget).collect();
        let mut hit = BarPanel::new(
            format!("generation, DRAM {budget}: hit rate"),
            "hit rate",
            ["policy"],
        );
        let mut kib = BarPanel::new(
            format!("generation, DRAM {budget}: KiB read from disk per token"),
            "KiB / token",
            ["policy"],
        );
        // Head room above the bars for the legend.
        let top = rows.iter().map(|r| r.3).fold(1.0, f64::max);
        kib = kib.y_range(0.0, 1.9 * top);
        hit = hit.y_range(0.0, 1.5);
        for (name, _, h, b) in rows {
            hit = hit.series(name.clone(), vec![*h]);
            kib = kib.series(name.clone(), vec![*b]);
        }
        panels.push(hit.into());
        panels.push(kib.into());
    }
    write_svg(&svg, &panels, 2)?;
    println!("  CSV and plot: moe_generation.csv, {}", svg.display());

    println!();
    println!("== 3. hit rate vs cache size (replay of held-out routing traces) ==");
    let trace_windows = windows(&validation, args.trace_windows, config.max_len, 21);
    let trace = record_trace(&model, &trace_windows)?;
    let trace_path = out.join("moe_trace.lmtrc");
    trace.save(&trace_path)?;
    println!(
        "  trace: {} tokens × {} blocks = {} records, {:.1} MiB with f16 router logits ({})",
        trace.tokens(),
        config.n_layers,
        trace.len(),
        std::fs::metadata(&trace_path)?.len() as f64 / 1048576.0,
        trace_path.display()
    );
    let caps: Vec<usize> = (1..=8).map(|i| i * config.experts / 8).collect();
    let rows = replay_grid(&trace, &replay_policies(), &caps)?;
    print!("{}", replay_table(&rows, &caps, config.experts));
    println!(
        "  each cell: hit rate with that many experts per block in DRAM (columns) under that policy (rows)"
    );
    println!(
        "  LRFU(0.5) weighs recency and frequency; Random evicts a random expert (seeded); Belady/OPT is the best any policy can do on this routing"
    );
    println!(
        "  LRU+CachePrior changes the routing itself (from the recorded logits), so it is not bounded by OPT; its quality cost is measured in section 4"
    );
    let csv: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.label.replace(',', ";"),
                r.capacity.to_string(),
                format!("{:.4}", r.hit_rate),
                format!("{:.3}", r.misses_per_token),
            ]
        })
        .collect();
    write_csv(
        &out.join("moe_hit_rate.csv"),
        &["policy", "capacity", "hit_rate", "misses_per_token"],
        &csv,
    )?;
    let svg = out.join("moe_hit_rate.svg");
    plot_hit_rate(&rows, config.experts, &svg)?;
    println!("  CSV and plot: moe_hit_rate.csv, {}", svg.display());

    println!();
    println!("== 4. cache-aware routing: fewer misses for how much perplexity? ==");
    let sweep_caps = [config.experts / 8, config.experts / 4, config.experts / 2];
    let lambdas = [0.05, 0.1, 0.2, 0.5];
    let sweep = routing_sweep(&model, &store_path, &sweep_caps, &lambdas, &[1, 2], &eval)?;
    // Compute time per token (this machine, every expert resident): the
    // non-I/O part of the modelled phone token time.
    // The least of three runs: other jobs on a shared machine only add time.
    let mut compute = f64::INFINITY;
    for _ in 0..3 {
        let resident = generate(
            &model,
            &store_path,
            CacheSetup::per_layer(&config, config.experts, top_k(PolicyKind::Lru)),
            prompt,
            args.new_tokens,
            1,
        )?;
        compute = compute.min(resident.stats.compute_seconds_per_token());
    }
    let mut rows = Vec::new();
    let mut csv = Vec::new();
    let mut goal_met = Vec::new();
    for &cap in &sweep_caps {
        let base = baseline(&sweep, cap)?;
        let base_t = modelled_token_seconds(compute, base.misses_per_token, config.expert_bytes());
        let mut best: Option<(f64, f64, f64)> = None;
        for r in sweep.iter().filter(|r| r.capacity == cap) {
            let reduction = 1.0 - r.miss_rate / base.miss_rate.max(1e-12);
            let (dppl, se) = r.dppl;
            let t = modelled_token_seconds(compute, r.misses_per_token, config.expert_bytes());
            let speed = base_t / t;
            let setting = match r.lambda {
                None => "top-k".to_owned(),
                Some(l) => format!("λ={l} J={}", r.top_j),
            };
            rows.push(vec![
                format!("{cap}/{}", config.experts),
                setting.clone(),
                format!("{:.3}", r.ppl),
                format!("{:+.2}% ± {:.2}", 100.0 * dppl, 100.0 * se),
                format!("{:.3}", r.miss_rate),
                format!("{:.0}%", 100.0 * reduction),
                format!("{speed:.2}x"),
            ]);
            csv.push(vec![
                cap.to_string(),
                r.lambda.map_or("none".to_owned(), |l| l.to_string()),
                r.top_j.to_string(),
                format!("{:.4}", r.ppl),
                format!("{:.4}", r.miss_rate),
                format!("{:.4}", reduction),
                format!("{:.4}", dppl),
                format!("{:.4}", se),
                format!("{speed:.4}"),
            ]);
            if r.lambda.is_some() && dppl <= 0.03 && best.is_none_or(|b| reduction > b.0) {
                best = Some((reduction, dppl, speed));
            }
        }
        goal_met.push((cap, best));
    }
    print!(
        "{}",
        table(
            &[
                "cached",
                "routing",
                "perplexity",
                "Δ ppl",
                "miss rate",
                "fewer misses",
                "phone tok/s vs LRU"
            ],
            &rows
        )
    );
    let phone = LinearIoCost::phone_ufs31();
    println!(
        "  cached: experts per block in DRAM; routing: normal top-k, or Cache-Prior with strength λ keeping the top-J original experts eligible"
    );
    println!(
        "  perplexity: exp(mean next-byte loss) on {} held-out bytes ({} disjoint windows), run token by token through the offloaded model",
        eval.iter().map(|w| w.len() - 1).sum::<usize>(),
        eval.len()
    );
    println!(
        "  Δ ppl: change vs top-k at the same size ± its paired standard error (same text; spread of the per-window differences)"
    );
    println!(
        "  miss rate: share of expert uses that had to be read from disk (LRU eviction); fewer misses: reduction vs top-k routing with LRU"
    );
    println!(
        "  phone tok/s vs LRU: modelled speed-up, t = compute ({:.2} ms/token measured here) + loads/token × ({:.0} µs + {expert_kb:.0} KiB / {:.1} GB/s, moe-cache's UFS 3.1 phone model)",
        1e3 * compute,
        1e6 * phone.latency_s(),
        phone.bandwidth_bytes_per_s() / 1e9
    );
    for (cap, best) in &goal_met {
        match best {
            Some((red, dppl, speed)) => println!(
                "  goal at {cap}/{}: best setting with ≤ 3 % perplexity cuts misses by {:.0} % (goal ≥ 40 %: {}), Δ ppl {:+.2} %, modelled phone speed-up {speed:.2}x",
                config.experts,
                100.0 * red,
                if *red >= 0.4 { "met" } else { "not met" },
                100.0 * dppl
            ),
            None => println!(
                "  goal at {cap}/{}: no Cache-Prior setting stays within +3 % perplexity (not met)",
                config.experts
            ),
        }
    }
    write_csv(
        &out.join("moe_routing_front.csv"),
        &[
            "capacity",
            "lambda",
            "top_j",
            "ppl",
            "miss_rate",
            "miss_reduction",
            "ppl_increase",
            "ppl_increase_se",
            "modelled_phone_speedup",
        ],
        &csv,
    )?;
    let svg = out.join("moe_routing_front.svg");
    plot_front(&sweep, &sweep_caps, &svg)?;
    println!("  CSV and plot: moe_routing_front.csv, {}", svg.display());

    if args.goal_search {
        goal_search(
            &model,
            &store_path,
            &eval,
            &disjoint_windows(held_out_b, 2 * args.eval_windows, config.max_len)?,
            compute,
            &out,
        )?;
    }
    println!();
    println!("finished in {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// Section 5: the goal at 1/8 of the experts cached, searched on the
/// evaluation windows (`tune`) over every rule, base policy and weight
/// convention of [`goal_candidates`], then the chosen settings measured
/// again on disjoint text (`test`), where the verdict is read.
fn goal_search(
    model: &MoeTransformer,
    store_path: &Path,
    tune: &[Vec<usize>],
    test: &[Vec<usize>],
    compute: f64,
    out: &Path,
) -> Result<()> {
    let c = model.config();
    let slots = c.experts / 8;
    println!();
    println!(
        "== 5. goal search at {slots}/{} experts cached: ≥ 40 % fewer misses than LRU within +3 % perplexity ==",
        c.experts
    );
    let lru = |windows: &[Vec<usize>]| {
        live_eval(
            model,
            store_path,
            CacheSetup::per_layer(
                &c,
                slots,
                OffloadConfig::new(PolicyKind::Lru, RoutingRule::TopK, c.k),
            ),
            None,
            windows,
        )
    };
    let candidates = goal_candidates(c.k, c.experts);
    let base = lru(tune)?;
    let rows = evaluate_candidates(model, store_path, slots, &base, &candidates, tune, "tune")?;
    let csv: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.candidate.family.replace(',', ";"),
                r.candidate.label.clone(),
                format!("{:.4}", r.miss_rate),
                format!("{:.4}", r.reduction),
                format!("{:.4}", r.dppl.0),
                format!("{:.4}", r.dppl.1),
            ]
        })
        .collect();
    write_csv(
        &out.join("moe_goal_search.csv"),
        &[
            "family",
            "setting",
            "miss_rate",
            "miss_reduction",
            "ppl_increase",
            "ppl_increase_se",
        ],
        &csv,
    )?;
    let mut families: Vec<&str> = candidates.iter().map(|c| c.family.as_str()).collect();
    families.dedup();
    let mut front = LinePanel::new(
        format!(
            "goal search at {slots}/{}: every setting on the tuning text",
            c.experts
        ),
        "perplexity increase over top-k routing (%)",
        "fewer misses than LRU top-k (%)",
    )
    .dots()
    .legend_low()
    .vline("goal: ≤ 3 % perplexity", 3.0)
    .hline("goal: ≥ 40 % fewer misses", 40.0);
    for f in &families {
        let pts = rows
            .iter()
            .filter(|r| r.candidate.family == *f)
            .map(|r| (100.0 * r.dppl.0, 100.0 * r.reduction))
            .collect();
        front = front.series(*f, pts);
    }
    let svg = out.join("moe_goal_search.svg");
    write_svg(&svg, &[front.into()], 1)?;
    println!("  plot of all settings: {}", svg.display());
    let chosen = best_within(&rows, None, 0.03).map(|r| r.candidate.clone());
    let picks: Vec<Candidate> = families
        .iter()
        .filter_map(|f| best_within(&rows, Some(f), 0.03).map(|r| r.candidate.clone()))
        .collect();
    let base_t =
        |b: &LiveEval| modelled_token_seconds(compute, b.stats.misses_per_token, c.expert_bytes());
    let mut body = Vec::new();
    for f in &families {
        let best = best_within(&rows, Some(f), 0.03);
        let any = rows
            .iter()
            .filter(|r| r.candidate.family == *f)
            .max_by(|a, b| a.reduction.total_cmp(&b.reduction));
        for (what, r) in [("best ≤ +3 %", best), ("most misses cut", any)] {
            if let Some(r) = r {
                body.push(vec![
                    (*f).to_owned(),
                    what.to_owned(),
                    r.candidate.label.clone(),
                    format!("{:.0}%", 100.0 * r.reduction),
                    format!("{:+.2}% ± {:.2}", 100.0 * r.dppl.0, 100.0 * r.dppl.1),
                ]);
            }
        }
    }
    print!(
        "{}",
        table(
            &["family", "which", "setting", "fewer misses", "Δ ppl"],
            &body
        )
    );
    println!(
        "  tuning text: {} bytes ({} windows), LRU top-k miss rate {:.3}; all {} settings: moe_goal_search.csv",
        base.predicted(),
        tune.len(),
        1.0 - base.stats.hit_rate,
        rows.len()
    );
    // Confirmation on disjoint text: the best of each family within +3 %.
    let base_test = lru(test)?;
    let test_rows =
        evaluate_candidates(model, store_path, slots, &base_test, &picks, test, "test")?;
    let mut body = Vec::new();
    for r in &test_rows {
        let t = modelled_token_seconds(compute, r.misses_per_token, c.expert_bytes());
        let is_chosen = chosen
            .as_ref()
            .is_some_and(|ch| ch.label == r.candidate.label && ch.family == r.candidate.family);
        body.push(vec![
            format!(
                "{}{}",
                r.candidate.family,
                if is_chosen { " (chosen)" } else { "" }
            ),
            r.candidate.label.clone(),
            format!("{:.3}", r.miss_rate),
            format!("{:.0}%", 100.0 * r.reduction),
            format!("{:+.2}% ± {:.2}", 100.0 * r.dppl.0, 100.0 * r.dppl.1),
            format!("{:.2}x", base_t(&base_test) / t),
        ]);
    }
    print!(
        "{}",
        table(
            &[
                "family",
                "setting",
                "miss rate",
                "fewer misses",
                "Δ ppl",
                "phone tok/s vs LRU"
            ],
            &body
        )
    );
    println!(
        "  test text: {} bytes ({} disjoint windows from the other half of the held-out text), LRU top-k miss rate {:.3}, perplexity {:.3}",
        base_test.predicted(),
        test.len(),
        1.0 - base_test.stats.hit_rate,
        base_test.ppl()
    );
    match chosen.and_then(|ch| {
        test_rows
            .iter()
            .find(|r| r.candidate.label == ch.label && r.candidate.family == ch.family)
    }) {
        Some(r) => {
            let speed = base_t(&base_test)
                / modelled_token_seconds(compute, r.misses_per_token, c.expert_bytes());
            let met = r.reduction >= 0.4 && r.dppl.0 <= 0.03;
            println!(
                "  verdict (setting chosen on the tuning text, measured on the test text): {} {} cuts misses by {:.0} % at {:+.2} % ± {:.2} perplexity: goal {}; modelled phone speed-up {speed:.2}x (goal 1.3x: {})",
                r.candidate.family,
                r.candidate.label,
                100.0 * r.reduction,
                100.0 * r.dppl.0,
                100.0 * r.dppl.1,
                if met { "met" } else { "not met" },
                if speed >= 1.3 { "met" } else { "not met" }
            );
        }
        None => println!(
            "  verdict: no setting stayed within +3 % perplexity on the tuning text (goal not met)"
        ),
    }
    Ok(())
}
