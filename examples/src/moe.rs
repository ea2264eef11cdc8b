//! MoE expert offloading on a trained byte-level MoE LM: training and
//! checkpointing, routing traces from held-out text, replay of eviction
//! policies and routing rules, live generation and perplexity with experts
//! on disk under a DRAM budget, plots, and the tour section.
//!
//! The model is `lastmile_models::MoeTransformer` (4 blocks, d = 128, 32
//! SwiGLU experts of width 128 per block, top-4). Why 32 × top-4 rather
//! than 16 × top-2: Cache-Prior's top-`J` term with `J = k` is a no-op (the
//! original top-k get the same bonus as every cached expert, so they always
//! win), so `J ∈ {1, 2}` needs `k ≥ 3`; and 1/8 of the experts must hold at
//! least `k` of them. Fine-grained experts are also what Qwen-MoE and
//! DeepSeek-MoE use.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::lm::LanguageModel;
use lastmile_datasets::TextCorpus;
use lastmile_models::{
    MoeTrainStep, MoeTransformer, MoeTransformerConfig, OffloadedMoeTransformer, TrainConfig,
    train_moe,
};
use lastmile_moe_cache::PolicyKind;
use lastmile_moe_cache::cache::Budget;
use lastmile_moe_cache::cost::{IoCostModel, LinearIoCost};
use lastmile_moe_cache::moe::OffloadConfig;
use lastmile_moe_cache::routing::RoutingRule;
use lastmile_moe_cache::store::{ExpertStore, PageCache, StoreOptions};
use lastmile_moe_cache::trace::{
    Capacity, LogitsFormat, ReplayConfig, ReplayRouting, Trace, replay,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::plot::{LinePanel, write_svg};
use crate::report::{output_dir, progress_bar, table, write_csv};
use crate::spec_decode::{checkpoint_dir, corpus_bytes, held_out_prompts};

/// Context window (bytes).
pub const CONTEXT: usize = 128;

/// Weight α of the load-balancing loss (Switch Transformer's value).
pub const BALANCE_COEF: f64 = 0.01;

/// The example's model: 4 blocks, d = 128, 4 heads, 32 experts of width 128, top-4.
pub fn model_config() -> MoeTransformerConfig {
    MoeTransformerConfig {
        d_ff: 128,
        ..MoeTransformerConfig::byte_level(128, 4, 4, 32, 4, CONTEXT)
    }
}

/// The tour's quick model: 2 blocks, d = 64, 16 experts of width 64, top-2.
pub fn tour_config() -> MoeTransformerConfig {
    MoeTransformerConfig {
        d_ff: 64,
        ..MoeTransformerConfig::byte_level(64, 2, 2, 16, 2, 64)
    }
}

/// `steps` AdamW steps of 16 windows of the context.
pub fn train_config(steps: usize) -> TrainConfig {
    TrainConfig::new(steps, 16, CONTEXT)
}

fn checkpoint_path(dir: &Path, name: &str, c: &MoeTransformerConfig, steps: usize) -> PathBuf {
    dir.join(format!(
        "{name}-l{}-d{}-e{}x{}-k{}-ctx{}-steps{steps}.bpk",
        c.n_layers, c.d_model, c.experts, c.d_ff, c.k, c.max_len
    ))
}

/// Loads the model from its checkpoint, or trains it (progress bar, loss
/// curve to CSV) and saves it. Returns the model and where it came from.
pub fn load_or_train(
    name: &str,
    config: MoeTransformerConfig,
    train_cfg: &TrainConfig,
    corpus: &[u8],
    device: &Device,
    retrain: bool,
) -> Result<(MoeTransformer, String)> {
    let path = checkpoint_path(&checkpoint_dir(), name, &config, train_cfg.steps);
    if !retrain && path.exists() {
        let model = MoeTransformer::load(config, &path, device)
            .with_context(|| format!("loading {}", path.display()))?;
        return Ok((model, format!("loaded {}", path.display())));
    }
    let ad = device.clone().autodiff();
    ad.seed(train_cfg.seed);
    let model = config.init(&ad)?;
    let bar = progress_bar(train_cfg.steps as u64, name);
    let mut rows = Vec::with_capacity(train_cfg.steps);
    let mut recent = Vec::new();
    let mut steps: Vec<MoeTrainStep> = Vec::new();
    let start = Instant::now();
    let trained = train_moe(model, corpus, train_cfg, BALANCE_COEF, |step, s| {
        rows.push(vec![
            step.to_string(),
            format!("{:.4}", s.lm_loss),
            format!("{:.4}", s.balance_loss),
        ]);
        recent.push(s.lm_loss);
        steps.push(s);
        let tail = &recent[recent.len().saturating_sub(20)..];
        bar.set_message(format!(
            "loss {:.3} balance {:.3}",
            tail.iter().sum::<f32>() / tail.len() as f32,
            s.balance_loss
        ));
        bar.set_position(step as u64 + 1);
    })?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    trained.save(&path)?;
    // Reload on the plain device through the checkpoint: exercises save/load too.
    let model = MoeTransformer::load(config, &path, device)?;
    let csv = output_dir()?.join(format!("moe_{name}_loss.csv"));
    write_csv(&csv, &["step", "lm_loss", "balance_loss"], &rows)?;
    let smooth = |f: &dyn Fn(&MoeTrainStep) -> f32| -> Vec<(f64, f64)> {
        (0..steps.len())
            .map(|i| {
                let w = &steps[i.saturating_sub(19)..=i];
                (
                    i as f64,
                    w.iter().map(|s| f64::from(f(s))).sum::<f64>() / w.len() as f64,
                )
            })
            .collect()
    };
    let svg = csv.with_extension("svg");
    write_svg(
        &svg,
        &[LinePanel::new(
            format!("{name}: training loss (mean of the last 20 steps)"),
            "step",
            "loss (nats)",
        )
        .series("next-byte loss", smooth(&|s| s.lm_loss))
        .series("load-balancing loss", smooth(&|s| s.balance_loss))
        .into()],
        1,
    )?;
    let tenth = (recent.len() / 10).max(1);
    let curve: Vec<String> = recent
        .chunks(tenth)
        .map(|c| format!("{:.2}", c.iter().sum::<f32>() / c.len() as f32))
        .collect();
    println!(
        "  {name}: trained {} steps in {secs:.0} s; next-byte loss (mean of each tenth): {}",
        train_cfg.steps,
        curve.join(" → ")
    );
    println!(
        "    (CSV and plot with the load-balancing loss too: {}, {})",
        csv.display(),
        svg.display()
    );
    Ok((model, format!("trained, saved to {}", path.display())))
}

/// Held-out windows of `len` bytes as tokens (seeded).
pub fn windows(validation: &[u8], n: usize, len: usize, seed: u64) -> Vec<Vec<usize>> {
    held_out_prompts(validation, n, len, seed)
}

/// Mean next-byte cross-entropy (nats) of the resident model over `windows`
/// (whole-window forwards; every position but the last predicts the next).
pub fn held_out_nll(model: &MoeTransformer, windows: &[Vec<usize>]) -> Result<f64> {
    let device = model.device();
    let (mut total, mut count) = (0.0f64, 0usize);
    for w in windows.iter().filter(|w| w.len() >= 2) {
        let l = w.len();
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(w.iter().map(|&t| t as i64).collect(), [1, l]),
            &device,
        );
        let logp = tensor_to_vec(log_softmax(
            model.forward(ids)?.reshape([l, model.vocab()]),
            1,
        ))?;
        for i in 0..l - 1 {
            total -= f64::from(logp[i * model.vocab() + w[i + 1]]);
            count += 1;
        }
    }
    Ok(total / count.max(1) as f64)
}

/// Routing trace of the resident model over `windows` (one stream; each
/// window a fresh KV cache), with f16 router logits so rules can re-route.
pub fn record_trace(model: &MoeTransformer, windows: &[Vec<usize>]) -> Result<Trace> {
    let c = model.config();
    let mut trace = Trace::new(c.n_layers, c.experts, c.k, LogitsFormat::F16)?;
    for w in windows {
        let mut cache = model.new_cache(1);
        model.forward_traced(&mut cache, w, &mut trace)?;
    }
    Ok(trace)
}

/// One replayed (policy, routing, capacity).
#[derive(Debug, Clone)]
pub struct ReplayRow {
    /// Policy (and routing) label.
    pub label: String,
    /// Experts cached per layer.
    pub capacity: usize,
    /// Hit rate over all layers.
    pub hit_rate: f64,
    /// Expert loads per token (all layers).
    pub misses_per_token: f64,
}

/// The policies and routings of the replay table: LRU, LFU, LRFU(0.5),
/// FIFO, Random, Belady/OPT under the recorded routing, and LRU with
/// Cache-Prior (λ = 0.2, J = 1).
pub fn replay_policies() -> Vec<(String, PolicyKind, ReplayRouting)> {
    let rec = ReplayRouting::Recorded;
    vec![
        ("LRU".into(), PolicyKind::Lru, rec),
        ("LFU".into(), PolicyKind::Lfu, rec),
        ("LRFU(0.5)".into(), PolicyKind::Lrfu { lambda: 0.5 }, rec),
        ("FIFO".into(), PolicyKind::Fifo, rec),
        ("Random".into(), PolicyKind::Random { seed: 0 }, rec),
        (
            "Belady/OPT".into(),
            PolicyKind::Belady { lookahead: None },
            rec,
        ),
        (
            "LRU+CachePrior(0.2,J1)".into(),
            PolicyKind::Lru,
            ReplayRouting::Rule(RoutingRule::CachePrior {
                lambda: 0.2,
                top_j: 1,
            }),
        ),
    ]
}

/// Replays `trace` for every policy at every capacity.
pub fn replay_grid(
    trace: &Trace,
    policies: &[(String, PolicyKind, ReplayRouting)],
    capacities: &[usize],
) -> Result<Vec<ReplayRow>> {
    let mut rows = Vec::new();
    for (label, policy, routing) in policies {
        for &cap in capacities {
            let r = replay(
                trace,
                &ReplayConfig::new(*policy, *routing, Capacity::Uniform(cap)),
            )?;
            rows.push(ReplayRow {
                label: label.clone(),
                capacity: cap,
                hit_rate: r.hit_rate(),
                misses_per_token: r.misses_per_token(),
            });
        }
    }
    Ok(rows)
}

/// Hit-rate table: one row per policy, one column per capacity.
pub fn replay_table(rows: &[ReplayRow], capacities: &[usize], experts: usize) -> String {
    let mut labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
    labels.dedup();
    let header: Vec<String> = std::iter::once("policy".to_owned())
        .chain(capacities.iter().map(|c| format!("{c}/{experts}")))
        .collect();
    let body: Vec<Vec<String>> = labels
        .iter()
        .map(|l| {
            std::iter::once((*l).to_owned())
                .chain(capacities.iter().map(|&c| {
                    rows.iter()
                        .find(|r| r.label == *l && r.capacity == c)
                        .map_or("-".to_owned(), |r| format!("{:.3}", r.hit_rate))
                }))
                .collect()
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    table(&header, &body)
}

/// Opens the expert store at `path`.
pub fn open_store(path: &Path, page_cache: PageCache) -> Result<ExpertStore> {
    ExpertStore::open(path, StoreOptions::default().with_page_cache(page_cache))
        .with_context(|| format!("opening {}", path.display()))
}

/// A per-layer budget of `slots` experts.
pub fn budget(config: &MoeTransformerConfig, slots: usize) -> Budget {
    Budget::PerLayer(vec![slots as u64 * config.expert_bytes(); config.n_layers])
}

/// One pool for every layer, as large as `slots` experts per layer.
pub fn global_budget(config: &MoeTransformerConfig, slots: usize) -> Budget {
    Budget::Global((slots * config.n_layers) as u64 * config.expert_bytes())
}

/// Counters of one live run of the offloaded model.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveStats {
    /// Tokens processed.
    pub tokens: usize,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Time inside store reads, seconds.
    pub read_seconds: f64,
    /// Cache hit rate.
    pub hit_rate: f64,
    /// Expert loads per token.
    pub misses_per_token: f64,
    /// Bytes read from the store per token.
    pub bytes_per_token: f64,
}

impl LiveStats {
    /// Tokens per second.
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-12)
    }

    /// Seconds per token outside store reads (compute, uploads, host reads).
    pub fn compute_seconds_per_token(&self) -> f64 {
        (self.seconds - self.read_seconds).max(0.0) / self.tokens.max(1) as f64
    }
}

fn finish(off: &mut OffloadedMoeTransformer, tokens: usize, seconds: f64) -> Result<LiveStats> {
    let s = off.cache_stats()?;
    let store = off.context().store().stats();
    Ok(LiveStats {
        tokens,
        seconds,
        read_seconds: store.read_seconds,
        hit_rate: s.hit_rate(),
        misses_per_token: s.misses as f64 / tokens.max(1) as f64,
        bytes_per_token: store.bytes as f64 / tokens.max(1) as f64,
    })
}

/// A live evaluation: each window's mean next-byte loss, and the counters.
#[derive(Debug, Clone)]
pub struct LiveEval {
    /// Mean NLL (nats) of each window's predicted bytes.
    pub window_nll: Vec<f64>,
    /// Predicted bytes per window.
    pub window_len: Vec<usize>,
    /// Counters of the run.
    pub stats: LiveStats,
}

impl LiveEval {
    /// Mean NLL over every predicted byte.
    pub fn nll(&self) -> f64 {
        let n: usize = self.window_len.iter().sum();
        let total: f64 = self
            .window_nll
            .iter()
            .zip(&self.window_len)
            .map(|(m, &l)| m * l as f64)
            .sum();
        total / n.max(1) as f64
    }

    /// Perplexity, `exp(nll)`.
    pub fn ppl(&self) -> f64 {
        self.nll().exp()
    }

    /// Predicted bytes.
    pub fn predicted(&self) -> usize {
        self.window_len.iter().sum()
    }

    /// Relative perplexity change from `base` (run on the same windows) and
    /// its standard error: `Δ = exp(mean(d)) − 1` with `d` the per-window
    /// differences of mean loss (paired: same text), and the standard error
    /// of `mean(d)` across windows (windows are disjoint text, tokens within
    /// one are not independent) carried through `exp` by the delta method.
    pub fn delta_ppl(&self, base: &LiveEval) -> (f64, f64) {
        let d: Vec<f64> = self
            .window_nll
            .iter()
            .zip(&base.window_nll)
            .map(|(a, b)| a - b)
            .collect();
        let n = d.len().max(1) as f64;
        let mean = (self.nll() - base.nll()).exp();
        let m = d.iter().sum::<f64>() / n;
        let var = d.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        (mean - 1.0, mean * (var / n).sqrt())
    }
}

/// Runs the offloaded model under `setup` token by token over `windows`
/// (a decode: each token's routing sees the cache as the previous tokens
/// left it), the page cache kept (the reads' cost is not measured here);
/// the DRAM cache stays warm across windows, the routing state restarts
/// with each. `renormalize` overrides the model's weight convention.
pub fn live_eval(
    model: &MoeTransformer,
    store_path: &Path,
    setup: CacheSetup<'_>,
    renormalize: Option<bool>,
    windows: &[Vec<usize>],
) -> Result<LiveEval> {
    let c = model.config();
    let store = open_store(store_path, PageCache::Keep)?;
    let mut off = OffloadedMoeTransformer::new(model, store, setup.budget, setup.config)?;
    if let Some(r) = renormalize {
        off.context().set_renormalize(r);
    }
    let start = Instant::now();
    let (mut window_nll, mut window_len, mut tokens) = (Vec::new(), Vec::new(), 0usize);
    for w in windows.iter().filter(|w| w.len() >= 2) {
        let mut cache = off.new_cache(1)?;
        let mut nll = 0.0f64;
        for (i, &t) in w.iter().enumerate() {
            let logits = off.forward(&mut cache, &[vec![t]])?;
            tokens += 1;
            if let Some(&next) = w.get(i + 1) {
                let logp = tensor_to_vec(log_softmax(logits.reshape([1, c.vocab]), 1))?;
                nll -= f64::from(logp[next]);
            }
        }
        window_nll.push(nll / (w.len() - 1) as f64);
        window_len.push(w.len() - 1);
    }
    let stats = finish(&mut off, tokens, start.elapsed().as_secs_f64())?;
    Ok(LiveEval {
        window_nll,
        window_len,
        stats,
    })
}

/// `n` non-overlapping windows of `len` bytes spread evenly over `bytes`
/// (as tokens), for evaluation sets that share no text.
pub fn disjoint_windows(bytes: &[u8], n: usize, len: usize) -> Result<Vec<Vec<usize>>> {
    let stride = bytes.len() / n.max(1);
    if n == 0 || stride < len {
        anyhow::bail!(
            "{n} disjoint windows of {len} bytes need {} bytes; have {}",
            n * len,
            bytes.len()
        );
    }
    Ok((0..n)
        .map(|i| {
            bytes[i * stride..i * stride + len]
                .iter()
                .map(|&b| usize::from(b))
                .collect()
        })
        .collect())
}

/// One live generation run: its counters, the whole sequence, and the
/// cache's demand accesses (one sequence per cache partition: the future a
/// Belady run of the same tokens needs).
#[derive(Debug, Clone)]
pub struct Generation {
    /// Counters of the run.
    pub stats: LiveStats,
    /// Prompt and sampled tokens.
    pub sequence: Vec<usize>,
    /// Each cache partition's demand accesses, in order.
    pub accesses: Vec<Vec<usize>>,
}

/// The DRAM side of a live run: budget, policy and routing rule, and for a
/// Belady policy each cache partition's future accesses (recorded by an
/// earlier run of the same tokens with top-k routing: routing then does not
/// depend on the cache, so the run repeats exactly).
#[derive(Debug, Clone)]
pub struct CacheSetup<'a> {
    /// DRAM budget.
    pub budget: Budget,
    /// Policy, routing rule, k.
    pub config: OffloadConfig,
    /// Each partition's future demand accesses (Belady only).
    pub future: Option<&'a [Vec<usize>]>,
}

impl CacheSetup<'_> {
    /// An online policy under a per-layer budget of `slots` experts.
    pub fn per_layer(model: &MoeTransformerConfig, slots: usize, config: OffloadConfig) -> Self {
        Self {
            budget: budget(model, slots),
            config,
            future: None,
        }
    }
}

/// Samples `new_tokens` bytes after `prompt` (temperature 0.8, seeded) with
/// the experts on disk (page cache dropped before every read) under `setup`.
pub fn generate(
    model: &MoeTransformer,
    store_path: &Path,
    setup: CacheSetup<'_>,
    prompt: &[usize],
    new_tokens: usize,
    seed: u64,
) -> Result<Generation> {
    let CacheSetup {
        budget,
        config,
        future,
    } = setup;
    let c = model.config();
    let page_cache = if cfg!(any(target_os = "linux", target_os = "android")) {
        PageCache::Drop
    } else {
        PageCache::Keep
    };
    let store = open_store(store_path, page_cache)?;
    let mut off = match future {
        None => OffloadedMoeTransformer::new(model, store, budget, config)?,
        Some(f) => OffloadedMoeTransformer::with_future(model, store, budget, config, f)?,
    };
    off.context().record_accesses(true);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seq = prompt.to_vec();
    let start = Instant::now();
    let mut cache = off.new_cache(1)?;
    let mut logits = None;
    // The prompt token by token: a one-step prefill would need every expert
    // its tokens touch to fit the budget at once.
    for &t in prompt {
        logits = Some(off.forward(&mut cache, &[vec![t]])?);
    }
    for _ in 0..new_tokens {
        if seq.len() >= c.max_len {
            break;
        }
        let z = logits.context("empty prompt")?;
        let z = tensor_to_vec(z.reshape([1, c.vocab]).div_scalar(0.8))?;
        let next = sample(&z, &mut rng);
        seq.push(next);
        logits = Some(off.forward(&mut cache, &[vec![next]])?);
    }
    let seconds = start.elapsed().as_secs_f64();
    let accesses = off.context().take_access_log();
    let stats = finish(&mut off, seq.len(), seconds)?;
    Ok(Generation {
        stats,
        sequence: seq,
        accesses,
    })
}

/// A categorical draw from softmax(`z`).
fn sample(z: &[f32], rng: &mut StdRng) -> usize {
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let w: Vec<f64> = z.iter().map(|&x| f64::from(x - m).exp()).collect();
    let mut u = rng.random::<f64>() * w.iter().sum::<f64>();
    for (i, &p) in w.iter().enumerate() {
        if u < p {
            return i;
        }
        u -= p;
    }
    z.len() - 1
}

/// Modelled seconds per token on a phone: `compute + misses/token ×
/// (latency + expert bytes / bandwidth)` with moe-cache's UFS 3.1 model.
pub fn modelled_token_seconds(compute_s: f64, misses_per_token: f64, expert_bytes: u64) -> f64 {
    compute_s + misses_per_token * LinearIoCost::phone_ufs31().read_seconds(expert_bytes)
}

/// One setting of the routing sweep at one capacity.
#[derive(Debug, Clone)]
pub struct SweepRow {
    /// Experts cached per layer.
    pub capacity: usize,
    /// λ of Cache-Prior (`None`: normal top-k).
    pub lambda: Option<f32>,
    /// J of Cache-Prior.
    pub top_j: usize,
    /// Held-out perplexity.
    pub ppl: f64,
    /// Relative perplexity change vs top-k at the same capacity, and its
    /// paired standard error (see [`LiveEval::delta_ppl`]).
    pub dppl: (f64, f64),
    /// Miss rate (1 − hit rate).
    pub miss_rate: f64,
    /// Expert loads per token.
    pub misses_per_token: f64,
}

/// For each capacity: LRU with normal top-k, then LRU with Cache-Prior at
/// each (λ, J), all measured live on `windows`.
pub fn routing_sweep(
    model: &MoeTransformer,
    store_path: &Path,
    capacities: &[usize],
    lambdas: &[f32],
    top_js: &[usize],
    windows: &[Vec<usize>],
) -> Result<Vec<SweepRow>> {
    let c = model.config();
    let mut settings = vec![(None, 0)];
    for &j in top_js {
        for &l in lambdas {
            settings.push((Some(l), j));
        }
    }
    let bar = progress_bar((settings.len() * capacities.len()) as u64, "sweep");
    let mut rows = Vec::new();
    for &cap in capacities {
        let mut base: Option<LiveEval> = None;
        for &(lambda, top_j) in &settings {
            let rule = match lambda {
                None => RoutingRule::TopK,
                Some(lambda) => RoutingRule::CachePrior { lambda, top_j },
            };
            let setup =
                CacheSetup::per_layer(&c, cap, OffloadConfig::new(PolicyKind::Lru, rule, c.k));
            let e = live_eval(model, store_path, setup, None, windows)?;
            let dppl = base.as_ref().map_or((0.0, 0.0), |b| e.delta_ppl(b));
            rows.push(SweepRow {
                capacity: cap,
                lambda,
                top_j,
                ppl: e.ppl(),
                dppl,
                miss_rate: 1.0 - e.stats.hit_rate,
                misses_per_token: e.stats.misses_per_token,
            });
            base.get_or_insert(e);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(rows)
}

/// One routing setting of the goal search: a policy, a rule, and
/// optionally the weight convention (`None`: the model's).
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Family (rule and base policy), for "best of each family".
    pub family: String,
    /// The setting's parameters.
    pub label: String,
    /// Eviction policy.
    pub policy: PolicyKind,
    /// Routing rule.
    pub rule: RoutingRule,
    /// Weight convention override.
    pub renormalize: Option<bool>,
}

/// The goal search's settings for a top-`k` model of `experts` experts:
/// Cache-Prior on a fine λ grid with J ∈ {1, 2, 3} (LRU), Cache-Prior with
/// LFU and LRFU as the base policy, Cache-Prior with raw (not
/// renormalised) weights, Max-Rank (J, R), and the cumulative-probability
/// threshold τ.
pub fn goal_candidates(k: usize, experts: usize) -> Vec<Candidate> {
    let mut out = Vec::new();
    let mut add = |family: &str, label: String, policy, rule, renormalize| {
        out.push(Candidate {
            family: family.to_owned(),
            label,
            policy,
            rule,
            renormalize,
        });
    };
    let prior = |lambda, top_j| RoutingRule::CachePrior { lambda, top_j };
    for top_j in (1..k).take(3) {
        for i in 4..=14 {
            let lambda = i as f32 * 0.05;
            let label = format!("λ {lambda:.2} J {top_j}");
            add(
                "Cache-Prior + LRU",
                label,
                PolicyKind::Lru,
                prior(lambda, top_j),
                None,
            );
        }
    }
    for (family, policy) in [
        ("Cache-Prior + LFU", PolicyKind::Lfu),
        ("Cache-Prior + LRFU(0.1)", PolicyKind::Lrfu { lambda: 0.1 }),
    ] {
        for top_j in [1, 2] {
            for lambda in [0.3, 0.4, 0.5, 0.6] {
                let label = format!("λ {lambda:.2} J {top_j}");
                add(family, label, policy, prior(lambda, top_j), None);
            }
        }
    }
    for top_j in [1, 2] {
        for lambda in [0.3, 0.5] {
            let label = format!("λ {lambda:.2} J {top_j}");
            add(
                "Cache-Prior + LRU, raw weights",
                label,
                PolicyKind::Lru,
                prior(lambda, top_j),
                Some(false),
            );
        }
    }
    for top_j in (1..k).take(3) {
        for max_rank in [k + 2, 2 * k, 3 * k, 4 * k] {
            if max_rank <= experts {
                add(
                    "Max-Rank + LRU",
                    format!("J {top_j} R {max_rank}"),
                    PolicyKind::Lru,
                    RoutingRule::MaxRank { top_j, max_rank },
                    None,
                );
            }
        }
    }
    for tau in [0.5, 0.6, 0.7, 0.8, 0.9] {
        add(
            "Cumulative threshold + LRU",
            format!("τ {tau:.1}"),
            PolicyKind::Lru,
            RoutingRule::CumulativeThreshold { tau },
            None,
        );
    }
    out
}

/// One evaluated candidate of the goal search.
#[derive(Debug, Clone)]
pub struct GoalRow {
    /// The setting.
    pub candidate: Candidate,
    /// Miss rate.
    pub miss_rate: f64,
    /// Miss-rate reduction vs LRU top-k on the same windows.
    pub reduction: f64,
    /// Relative perplexity change and its paired standard error.
    pub dppl: (f64, f64),
    /// Expert loads per token.
    pub misses_per_token: f64,
}

/// Evaluates `candidates` live at `slots` experts per layer on `windows`
/// against `base` (LRU top-k on the same windows).
pub fn evaluate_candidates(
    model: &MoeTransformer,
    store_path: &Path,
    slots: usize,
    base: &LiveEval,
    candidates: &[Candidate],
    windows: &[Vec<usize>],
    label: &str,
) -> Result<Vec<GoalRow>> {
    let c = model.config();
    let bar = progress_bar(candidates.len() as u64, label);
    let mut rows = Vec::new();
    for cand in candidates {
        let setup =
            CacheSetup::per_layer(&c, slots, OffloadConfig::new(cand.policy, cand.rule, c.k));
        let e = live_eval(model, store_path, setup, cand.renormalize, windows)?;
        let miss_rate = 1.0 - e.stats.hit_rate;
        rows.push(GoalRow {
            candidate: cand.clone(),
            miss_rate,
            reduction: 1.0 - miss_rate / (1.0 - base.stats.hit_rate).max(1e-12),
            dppl: e.delta_ppl(base),
            misses_per_token: e.stats.misses_per_token,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(rows)
}

/// The row with the largest miss-rate reduction whose perplexity increase
/// is at most `max_dppl` (point estimate), among `rows` of `family` (any
/// family when `None`).
pub fn best_within<'a>(
    rows: &'a [GoalRow],
    family: Option<&str>,
    max_dppl: f64,
) -> Option<&'a GoalRow> {
    rows.iter()
        .filter(|r| family.is_none_or(|f| r.candidate.family == f) && r.dppl.0 <= max_dppl)
        .max_by(|a, b| a.reduction.total_cmp(&b.reduction))
}

/// The LRU top-k row of `capacity` in a sweep.
pub fn baseline(rows: &[SweepRow], capacity: usize) -> Result<&SweepRow> {
    rows.iter()
        .find(|r| r.capacity == capacity && r.lambda.is_none())
        .ok_or_else(|| anyhow!("no LRU baseline at capacity {capacity}"))
}

/// Hit rate vs capacity, one line per policy (SVG).
pub fn plot_hit_rate(rows: &[ReplayRow], experts: usize, path: &Path) -> Result<()> {
    let mut labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
    labels.dedup();
    let mut panel = LinePanel::new(
        "MoE expert cache: hit rate vs experts cached per layer",
        format!("experts cached per layer (of {experts})"),
        "hit rate",
    )
    .x_range(0.0, experts as f64)
    .y_range(0.0, 1.0)
    .legend_low();
    for label in labels {
        let pts = rows
            .iter()
            .filter(|r| r.label == label)
            .map(|r| (r.capacity as f64, r.hit_rate))
            .collect();
        panel = panel.series(label, pts);
    }
    write_svg(path, &[panel.into()], 1)
}

/// Miss-rate reduction over LRU vs perplexity increase, one set of dots per
/// capacity through its Cache-Prior settings, with the goal's edges (40 %
/// fewer misses, +3 % perplexity) dashed (SVG).
pub fn plot_front(rows: &[SweepRow], capacities: &[usize], path: &Path) -> Result<()> {
    let mut panel = LinePanel::new(
        "Cache-Prior: miss-rate reduction vs perplexity cost (LRU, per capacity)",
        "perplexity increase over top-k routing (%)",
        "miss-rate reduction vs LRU top-k (%)",
    )
    .dots()
    .y_range(-10.0, 100.0)
    .legend_low()
    .vline("goal: ≤ 3 % perplexity", 3.0)
    .hline("goal: ≥ 40 % fewer misses", 40.0);
    for &cap in capacities {
        let base = baseline(rows, cap)?;
        let mut pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.capacity == cap && r.lambda.is_some())
            .map(|r| {
                (
                    100.0 * (r.ppl / base.ppl - 1.0),
                    100.0 * (1.0 - r.miss_rate / base.miss_rate.max(1e-12)),
                )
            })
            .collect();
        pts.push((0.0, 0.0));
        panel = panel.series(format!("{cap} experts cached / layer"), pts);
    }
    write_svg(path, &[panel.into()], 1)
}

/// Tour section: a small MoE LM (the example's checkpoint if it exists,
/// else a quick one trained here), routing traces of held-out text, and a
/// replay table of hit rate vs cache size for LRU, LFU, Belady/OPT and
/// LRU with Cache-Prior.
pub fn tour_section(device: &Device) -> Result<()> {
    println!("== moe-cache: which experts to keep in DRAM, and routing towards them ==");
    let start = Instant::now();
    let corpus = TextCorpus::rust_book(0.05)?;
    let (train_bytes, validation) = corpus_bytes(&corpus);
    let full = model_config();
    let full_steps = train_config(default_steps());
    let (model, what) =
        if checkpoint_path(&checkpoint_dir(), "moe", &full, full_steps.steps).exists() {
            let (m, _) = load_or_train("moe", full, &full_steps, &train_bytes, device, false)?;
            (m, "the moe_offload example's trained model")
        } else {
            let quick = TrainConfig::new(150, 8, 64);
            let (m, _) = load_or_train(
                "tour-moe",
                tour_config(),
                &quick,
                &train_bytes,
                device,
                false,
            )?;
            (
                m,
                "a quick model (run the moe_offload example for the full one)",
            )
        };
    let c = model.config();
    println!(
        "  model: {what}: {} blocks, {} experts per block, top-{} routing",
        c.n_layers, c.experts, c.k
    );
    let windows = windows(&validation, 12, c.max_len, 3);
    let trace = record_trace(&model, &windows)?;
    println!(
        "  trace: {} held-out tokens × {} layers = {} routing records (each: token, layer, chosen experts, router logits)",
        trace.tokens(),
        c.n_layers,
        trace.len()
    );
    let caps: Vec<usize> = [8, 4, 2].iter().map(|d| (c.experts / d).max(c.k)).collect();
    let policies: Vec<_> = replay_policies()
        .into_iter()
        .filter(|(l, _, _)| {
            ["LRU", "LFU", "Belady/OPT", "LRU+CachePrior(0.2,J1)"].contains(&l.as_str())
        })
        .collect();
    let rows = replay_grid(&trace, &policies, &caps)?;
    print!("{}", replay_table(&rows, &caps, c.experts));
    let svg = output_dir()?.join("tour_moe_hit_rate.svg");
    plot_hit_rate(&rows, c.experts, &svg)?;
    println!(
        "  each cell: hit rate = share of expert uses found already in DRAM when the cache holds that many experts per layer (higher is better)"
    );
    println!(
        "  LRU / LFU evict the least recently / least often used expert; Belady/OPT evicts the one used furthest in the future (needs the future: an upper bound for fixed routing)"
    );
    println!(
        "  LRU+CachePrior re-routes each token from its logits, adding λ·(logit range) to cached experts (and the original best one) before top-k: it trades some quality for hits and can beat OPT"
    );
    if caps.first() == Some(&c.k) {
        println!(
            "  at {}/{} the cache holds only the {} experts the current token used, so every eviction policy keeps the same ones (OPT = LRU there)",
            c.k, c.experts, c.k
        );
    }
    println!("  plot: {}", svg.display());
    println!(
        "  moe-cache section finished in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Training steps of the example's model: `$LASTMILE_MOE_STEPS` or 1500.
pub fn default_steps() -> usize {
    std::env::var("LASTMILE_MOE_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500)
}
