//! Mixture-of-Experts inference with the experts on disk and a DRAM cache.
//!
//! ```text
//! cargo build --release -p lastmile-examples --example moe_offload
//! target/release/examples/moe_offload [--steps N] [--retrain] [--quick] [--eval-windows N] [--trace-windows N] [--new-tokens N]
//! ```
//!
//! Trains (or loads from `target/lastmile-models/`) a byte-level MoE LM
//! (4 blocks, d = 128, 32 SwiGLU experts of width 128 per block, top-4,
//! Switch load-balancing loss) on the text corpus, writes its experts to an
//! on-disk expert store, records routing traces on held-out text, then:
//!
//! 1. generates text with the experts on disk (page cache dropped before
//!    every read) under a DRAM budget of 1/4 of the experts, printing
//!    tokens/s, hit rate and bytes read per token for LRU, LFU and LRU +
//!    Cache-Prior, and Belady/OPT on the same routing (replayed: it needs
//!    the future);
//! 2. replays the held-out trace for every policy at every capacity (table,
//!    CSV and SVG of hit rate vs capacity);
//! 3. runs the model on held-out text with LRU and Cache-Prior
//!    (λ ∈ {0.05, 0.1, 0.2, 0.5}, J ∈ {1, 2}) at 1/8, 1/4 and 1/2 of the
//!    experts cached, measuring perplexity and miss rate (table, CSV, SVG
//!    front) and the modelled token rate on phone flash.
//!
//! `--quick` trains 200 steps and evaluates less (a smoke run of a couple of
//! minutes). Output: `target/lastmile-out` (`LASTMILE_OUT`).

use std::time::Instant;

use anyhow::{Context, Result, bail};
use lastmile_core::default_device;
use lastmile_datasets::TextCorpus;
use lastmile_examples::moe::{
    BALANCE_COEF, baseline, default_steps, generate, held_out_nll, load_or_train, model_config,
    modelled_token_seconds, plot_front, plot_hit_rate, record_trace, replay_grid, replay_policies,
    replay_table, routing_sweep, train_config, windows,
};
use lastmile_examples::report::{output_dir, table, write_csv};
use lastmile_examples::spec_decode::corpus_bytes;
use lastmile_moe_cache::PolicyKind;
use lastmile_moe_cache::cost::LinearIoCost;
use lastmile_moe_cache::moe::OffloadConfig;
use lastmile_moe_cache::routing::RoutingRule;
use lastmile_moe_cache::trace::{Capacity, ReplayConfig, ReplayRouting, replay};

struct Args {
    steps: usize,
    retrain: bool,
    eval_windows: usize,
    trace_windows: usize,
    new_tokens: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        steps: default_steps(),
        retrain: false,
        eval_windows: 8,
        trace_windows: 48,
        new_tokens: 96,
    };
    let mut quick = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<usize> {
            it.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} needs an integer"))
        };
        match a.as_str() {
            "--steps" => args.steps = value("--steps")?,
            "--eval-windows" => args.eval_windows = value("--eval-windows")?,
            "--trace-windows" => args.trace_windows = value("--trace-windows")?,
            "--new-tokens" => args.new_tokens = value("--new-tokens")?,
            "--retrain" => args.retrain = true,
            "--quick" => quick = true,
            other => bail!(
                "unknown argument {other}; expected --steps N, --eval-windows N, \
                 --trace-windows N, --new-tokens N, --quick, --retrain"
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
    let eval = windows(&validation, args.eval_windows, config.max_len, 11);
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
    let mut lru_sequence = Vec::new();
    let mut csv_rows = Vec::new();
    for (name, policy, rule) in [
        ("LRU", PolicyKind::Lru, RoutingRule::TopK),
        ("LFU", PolicyKind::Lfu, RoutingRule::TopK),
        ("LRU + Cache-Prior(λ=0.2, J=1)", PolicyKind::Lru, cp),
    ] {
        let (s, seq) = generate(
            &model,
            &store_path,
            quarter,
            OffloadConfig::new(policy, rule, k),
            prompt,
            args.new_tokens,
            1,
        )?;
        if name == "LRU" {
            lru_sequence = seq.clone();
        }
        gen_rows.push(vec![
            name.to_owned(),
            "measured".to_owned(),
            format!("{:.0}", s.tokens_per_second()),
            format!("{:.3}", s.hit_rate),
            format!("{:.2}", s.misses_per_token),
            format!("{:.0}", s.bytes_per_token / 1024.0),
        ]);
        csv_rows.push(vec![
            name.replace(',', ";"),
            format!("{:.2}", s.tokens_per_second()),
            format!("{:.4}", s.hit_rate),
            format!("{:.3}", s.bytes_per_token),
        ]);
        if name == "LRU + Cache-Prior(λ=0.2, J=1)" {
            let text: Vec<u8> = seq.iter().map(|&t| t as u8).collect();
            println!(
                "  sample (Cache-Prior): {:?}",
                String::from_utf8_lossy(&text)
            );
        }
    }
    // Belady needs the future: replay the routing of the LRU run's text
    // (top-k routing does not depend on the cache, so it is the same).
    let trace = record_trace(&model, std::slice::from_ref(&lru_sequence))?;
    let bytes = vec![config.expert_bytes(); config.n_layers];
    let opt = replay(
        &trace,
        &ReplayConfig::new(
            PolicyKind::Belady { lookahead: None },
            ReplayRouting::Recorded,
            Capacity::Uniform(quarter),
        )
        .with_expert_bytes(bytes.clone()),
    )?;
    gen_rows.push(vec![
        "Belady/OPT".to_owned(),
        "replayed".to_owned(),
        "-".to_owned(),
        format!("{:.3}", opt.hit_rate()),
        format!("{:.2}", opt.misses_per_token()),
        format!("{:.0}", opt.bytes_per_token() / 1024.0),
    ]);
    print!(
        "{}",
        table(
            &[
                "policy",
                "how",
                "tok/s",
                "hit rate",
                "loads/tok",
                "KiB read/tok"
            ],
            &gen_rows
        )
    );
    println!(
        "  {} tokens each ({}-byte prompt + {} sampled at T = 0.8, same seed), {quarter} of {} experts per block in DRAM",
        lru_sequence.len(),
        prompt.len(),
        lru_sequence.len() - prompt.len(),
        config.experts
    );
    println!(
        "  tok/s: tokens processed per second on this machine, reads included (page cache dropped before each, so they come from the disk)"
    );
    println!(
        "  hit rate: share of expert uses already in DRAM; loads/tok: experts read from disk per token (all blocks); KiB read/tok: bytes read per token"
    );
    println!(
        "  Belady/OPT is replayed on the LRU run's routing: evicting the expert needed furthest ahead is optimal for fixed routing, but needs the future"
    );
    write_csv(
        &out.join("moe_generation.csv"),
        &["policy", "tokens_per_s", "hit_rate", "bytes_per_token"],
        &csv_rows,
    )?;

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
    let (resident, _) = generate(
        &model,
        &store_path,
        config.experts,
        OffloadConfig::new(PolicyKind::Lru, RoutingRule::TopK, k),
        prompt,
        args.new_tokens,
        1,
    )?;
    let compute = resident.compute_seconds_per_token();
    let mut rows = Vec::new();
    let mut csv = Vec::new();
    let mut goal_met = Vec::new();
    for &cap in &sweep_caps {
        let base = baseline(&sweep, cap)?;
        let base_t = modelled_token_seconds(compute, base.misses_per_token, config.expert_bytes());
        let mut best: Option<(f64, f64, f64)> = None;
        for r in sweep.iter().filter(|r| r.capacity == cap) {
            let reduction = 1.0 - r.miss_rate / base.miss_rate.max(1e-12);
            let dppl = r.ppl / base.ppl - 1.0;
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
                format!("{:+.2}%", 100.0 * dppl),
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
        "  perplexity: exp(mean next-byte loss) on held-out text, run token by token through the offloaded model; Δ ppl: change vs top-k at the same size"
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
            "modelled_phone_speedup",
        ],
        &csv,
    )?;
    let svg = out.join("moe_routing_front.svg");
    plot_front(&sweep, &sweep_caps, &svg)?;
    println!("  CSV and plot: moe_routing_front.csv, {}", svg.display());
    println!();
    println!("finished in {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}
