//! Federated spectral sharding on digits: a 64 → 256 → 256 → 10 MLP trained
//! by 20 simulated clients with Dirichlet(α) label skew, comparing full-model
//! FedAvg with clients that train low-rank shards chosen by Top-n, Uniform,
//! PriSM-like, Unbiased and Collective sampling (Korzhenkov & Louizos,
//! NeurIPS 2024). Used by the `fl_digits` example and the tour.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::Device;
use indicatif::ProgressBar;
use lastmile_datasets::Dataset;
use lastmile_federated_sharding::simulation::{
    ClientData, Method, RoundRecord, ShardingConfig, Simulation, SimulationConfig,
    mixed_keep_ratios,
};
use lastmile_federated_sharding::{Sampler, Strategy};

use crate::plot::{LinePanel, Panel, write_svg};
use crate::report::{output_dir, progress_bar, table};

/// MLP widths of the example.
pub const LAYER_SIZES: [usize; 4] = [64, 256, 256, 10];

/// The sharded strategies compared, in table order.
pub const STRATEGIES: [Strategy; 5] = [
    Strategy::TopN,
    Strategy::Uniform,
    Strategy::PrismLike,
    Strategy::Unbiased,
    Strategy::Collective,
];

/// Name of the full-model baseline in tables and files.
pub const FULL: &str = "fedavg-full";

/// Per-client keep budget of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// Every client keeps this fraction of each layer's rank.
    Ratio(f64),
    /// 60 % of the clients keep 0.2, 40 % keep 0.4 (fixed per client).
    Mixed,
}

impl Budget {
    /// Label used in tables, files and plots.
    pub fn label(self) -> String {
        match self {
            Budget::Ratio(r) => format!("keep {r}"),
            Budget::Mixed => "mixed 60%@0.2/40%@0.4".to_owned(),
        }
    }

    fn ratios(self, n_clients: usize, seed: u64) -> Result<Vec<f64>> {
        Ok(match self {
            Budget::Ratio(r) => vec![r; n_clients],
            Budget::Mixed => mixed_keep_ratios(n_clients, &[(0.6, 0.2), (0.4, 0.4)], seed)?,
        })
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Rounds per run.
    pub rounds: usize,
    /// Seeds per configuration (partition, initialisation, sampling).
    pub seeds: usize,
    /// Dirichlet concentrations of the label skew.
    pub alphas: Vec<f64>,
    /// Keep budgets.
    pub budgets: Vec<Budget>,
    /// Sharded strategies.
    pub strategies: Vec<Strategy>,
    /// Whether to run the full-model FedAvg baseline.
    pub full_baseline: bool,
    /// Clients.
    pub n_clients: usize,
    /// Clients per round `K`.
    pub clients_per_round: usize,
    /// Local epochs per round.
    pub local_epochs: usize,
    /// Local mini-batch size.
    pub batch_size: usize,
    /// Local SGD learning rate.
    pub learning_rate: f64,
    /// FedProx μ (0: plain FedAvg local training).
    pub proximal_mu: f64,
}

impl Settings {
    /// The full comparison: α ∈ {0.1, 1}, keep 0.25, 0.5 and mixed, every
    /// strategy and the full baseline, 20 clients, 10 per round.
    pub fn full(rounds: usize, seeds: usize) -> Self {
        Self {
            rounds,
            seeds,
            alphas: vec![0.1, 1.0],
            budgets: vec![Budget::Ratio(0.25), Budget::Ratio(0.5), Budget::Mixed],
            strategies: STRATEGIES.to_vec(),
            full_baseline: true,
            n_clients: 20,
            clients_per_round: 10,
            local_epochs: 2,
            batch_size: 16,
            learning_rate: 0.05,
            proximal_mu: 0.0,
        }
    }

    /// Number of simulation runs.
    pub fn runs(&self) -> usize {
        let per_alpha =
            self.budgets.len() * self.strategies.len() + usize::from(self.full_baseline);
        per_alpha * self.alphas.len() * self.seeds
    }
}

/// One run's curve.
#[derive(Clone, Debug)]
pub struct Curve {
    /// Dirichlet α.
    pub alpha: f64,
    /// Budget label (`"-"` for the full baseline).
    pub budget: String,
    /// Method name (strategy or [`FULL`]).
    pub method: String,
    /// Seed.
    pub seed: u64,
    /// Held-out accuracy before round 1.
    pub initial_accuracy: f64,
    /// One record per round.
    pub rounds: Vec<RoundRecord>,
}

impl Curve {
    /// Held-out accuracy after the last round.
    pub fn final_accuracy(&self) -> f64 {
        self.rounds
            .last()
            .and_then(|r| r.test_accuracy)
            .unwrap_or(f64::NAN)
    }

    /// Bytes sent both ways over the whole run.
    pub fn total_bytes(&self) -> u64 {
        self.rounds.last().map_or(0, RoundRecord::cumulative_bytes)
    }
}

/// The clients' data and the held-out set, as the simulation takes them.
#[derive(Clone, Debug)]
pub struct Federation {
    /// Client data.
    pub clients: Vec<ClientData>,
    /// Held-out data (fixed across seeds).
    pub test: ClientData,
}

fn client_data(d: &Dataset) -> Result<ClientData> {
    Ok(ClientData {
        features: d.features().to_vec(),
        labels: d.labels().context("digits has labels")?.to_vec(),
    })
}

/// [`lastmile_datasets::digits_federation`] for `alpha`, `n_clients` and
/// `seed`, converted to the simulation's [`ClientData`].
pub fn digits_federation(alpha: f64, n_clients: usize, seed: u64) -> Result<Federation> {
    let fed = lastmile_datasets::digits_federation(alpha, n_clients, seed)?;
    Ok(Federation {
        clients: fed.clients.iter().map(client_data).collect::<Result<_>>()?,
        test: client_data(&fed.test)?,
    })
}

fn config(settings: &Settings, method: Method, seed: u64) -> SimulationConfig {
    let mut c = SimulationConfig::new(LAYER_SIZES.to_vec());
    c.rounds = settings.rounds;
    c.clients_per_round = settings.clients_per_round;
    c.local_epochs = settings.local_epochs;
    c.batch_size = settings.batch_size;
    c.learning_rate = settings.learning_rate;
    c.proximal_mu = settings.proximal_mu;
    c.method = method;
    c.seed = seed;
    c
}

/// Runs every configuration of `settings`, advancing `bar` once per round.
pub fn run_all(settings: &Settings, device: &Device, bar: &ProgressBar) -> Result<Vec<Curve>> {
    let mut curves = Vec::with_capacity(settings.runs());
    for &alpha in &settings.alphas {
        for seed in 0..settings.seeds as u64 {
            let fed = digits_federation(alpha, settings.n_clients, seed)?;
            let mut jobs: Vec<(String, Method)> = Vec::new();
            if settings.full_baseline {
                jobs.push(("-".to_owned(), Method::Full));
            }
            for &budget in &settings.budgets {
                let ratios = budget.ratios(settings.n_clients, seed)?;
                for &strategy in &settings.strategies {
                    jobs.push((
                        budget.label(),
                        Method::Sharded(ShardingConfig::new(
                            strategy,
                            Sampler::ConditionalPoisson,
                            ratios.clone(),
                        )),
                    ));
                }
            }
            for (budget, method) in jobs {
                let name = method.name().to_owned();
                bar.set_message(format!("α={alpha} seed {seed} {budget} {name}"));
                let sim = Simulation::new(
                    config(settings, method, seed),
                    fed.clients.clone(),
                    Some(fed.test.clone()),
                    device,
                )?;
                let report = sim.run(|_| bar.inc(1))?;
                curves.push(Curve {
                    alpha,
                    budget,
                    method: name,
                    seed,
                    initial_accuracy: report.initial_accuracy.unwrap_or(f64::NAN),
                    rounds: report.rounds,
                });
            }
        }
    }
    Ok(curves)
}

/// Mean and (sample) standard deviation; std is 0 for one value.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Curves grouped by (α, budget, method), seeds together, in run order.
type Groups<'a> = Vec<((f64, String, String), Vec<&'a Curve>)>;

fn groups(curves: &[Curve]) -> Groups<'_> {
    let mut out: Groups<'_> = Vec::new();
    for c in curves {
        let key = (c.alpha, c.budget.clone(), c.method.clone());
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(c),
            None => out.push((key, vec![c])),
        }
    }
    out
}

/// Summary rows: α, budget, method, final accuracy mean ± std, MB sent
/// (both ways, whole run), MB per round, seeds.
pub fn summary_rows(curves: &[Curve]) -> Vec<Vec<String>> {
    groups(curves)
        .into_iter()
        .map(|((alpha, budget, method), cs)| {
            let acc: Vec<f64> = cs.iter().map(|c| c.final_accuracy()).collect();
            let (m, s) = mean_std(&acc);
            let mb = cs.iter().map(|c| c.total_bytes() as f64).sum::<f64>() / cs.len() as f64 / 1e6;
            let rounds = cs.first().map_or(1, |c| c.rounds.len().max(1));
            vec![
                format!("{alpha}"),
                budget,
                method,
                format!("{m:.3} ± {s:.3}"),
                format!("{mb:.1}"),
                format!("{:.2}", mb / rounds as f64),
                cs.len().to_string(),
            ]
        })
        .collect()
}

/// Header of [`summary_rows`].
pub const SUMMARY_HEADER: [&str; 7] = [
    "alpha",
    "budget",
    "method",
    "final acc (mean ± std)",
    "MB sent",
    "MB/round",
    "seeds",
];

/// The paper's finding checked at equal budget (same keep ratios, hence the
/// same bytes), per (α, budget).
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    /// One explained line per (α, budget) cell.
    pub lines: Vec<String>,
    /// Cells where the finding holds in every seed.
    pub every_seed: usize,
    /// Cells where it holds on the mean over seeds but not in every seed.
    pub mean_only: usize,
    /// Cells compared.
    pub cells: usize,
}

/// Do Unbiased and Collective both beat Top-n and PriSM-like in final
/// accuracy? Per seed (runs of one seed share the partition and the
/// initial model, so they are paired) the margin is
/// `min(unbiased, collective) − max(top-n, prism-like)`.
pub fn verdict(curves: &[Curve]) -> Verdict {
    // (α, budget) → method → seed → final accuracy
    type Cell = BTreeMap<String, BTreeMap<u64, f64>>;
    let mut cells: BTreeMap<(String, String), Cell> = BTreeMap::new();
    for c in curves {
        cells
            .entry((format!("{}", c.alpha), c.budget.clone()))
            .or_default()
            .entry(c.method.clone())
            .or_default()
            .insert(c.seed, c.final_accuracy());
    }
    let mut v = Verdict::default();
    for ((alpha, budget), m) in &cells {
        let get = |s: Strategy| m.get(s.to_string().as_str());
        let (Some(u), Some(c), Some(t), Some(p)) = (
            get(Strategy::Unbiased),
            get(Strategy::Collective),
            get(Strategy::TopN),
            get(Strategy::PrismLike),
        ) else {
            continue;
        };
        let margins: Vec<f64> = u
            .keys()
            .filter_map(|seed| {
                Some(u.get(seed)?.min(*c.get(seed)?) - t.get(seed)?.max(*p.get(seed)?))
            })
            .collect();
        if margins.is_empty() {
            continue;
        }
        let mean = |x: &BTreeMap<u64, f64>| x.values().sum::<f64>() / x.len().max(1) as f64;
        let (dm, ds) = mean_std(&margins);
        let positive = margins.iter().filter(|&&d| d > 0.0).count();
        let status = if positive == margins.len() {
            v.every_seed += 1;
            "holds in every seed"
        } else if dm > 0.0 {
            v.mean_only += 1;
            "holds on the mean only"
        } else {
            "does not hold"
        };
        v.cells += 1;
        v.lines.push(format!(
            "α={alpha}, {budget}: unbiased {:.3}, collective {:.3} vs top-n {:.3}, prism-like {:.3}; \
             margin {dm:+.3} ± {ds:.3}, > 0 in {positive}/{} seeds → {status}",
            mean(u),
            mean(c),
            mean(t),
            mean(p),
            margins.len()
        ));
    }
    v
}

/// CSV rows, one per run and round (round 0 is the initial model).
pub fn csv_rows(curves: &[Curve]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for c in curves {
        rows.push(vec![
            format!("{}", c.alpha),
            c.budget.clone(),
            c.method.clone(),
            c.seed.to_string(),
            "0".to_owned(),
            format!("{:.4}", c.initial_accuracy),
            String::new(),
            "0".to_owned(),
            "0".to_owned(),
            "0".to_owned(),
        ]);
        for r in &c.rounds {
            rows.push(vec![
                format!("{}", c.alpha),
                c.budget.clone(),
                c.method.clone(),
                c.seed.to_string(),
                r.round.to_string(),
                format!("{:.4}", r.test_accuracy.unwrap_or(f64::NAN)),
                format!("{:.5}", r.train_loss),
                r.bytes_down.to_string(),
                r.bytes_up.to_string(),
                r.cumulative_bytes().to_string(),
            ]);
        }
    }
    rows
}

/// Header of [`csv_rows`].
pub const CSV_HEADER: [&str; 10] = [
    "alpha",
    "budget",
    "method",
    "seed",
    "round",
    "test_accuracy",
    "train_loss",
    "bytes_down",
    "bytes_up",
    "cumulative_bytes",
];

/// A point of a mean curve.
#[derive(Clone, Copy, Debug)]
struct Point {
    round: f64,
    megabytes: f64,
    accuracy: f64,
}

/// Mean curve over seeds, from round 0 (the initial model).
fn mean_curve(cs: &[&Curve]) -> Vec<Point> {
    let rounds = cs.iter().map(|c| c.rounds.len()).min().unwrap_or(0);
    let n = cs.len().max(1) as f64;
    let mut out = vec![Point {
        round: 0.0,
        megabytes: 0.0,
        accuracy: cs.iter().map(|c| c.initial_accuracy).sum::<f64>() / n,
    }];
    for t in 0..rounds {
        let acc = cs
            .iter()
            .map(|c| c.rounds[t].test_accuracy.unwrap_or(f64::NAN))
            .sum::<f64>()
            / n;
        let mb = cs
            .iter()
            .map(|c| c.rounds[t].cumulative_bytes() as f64)
            .sum::<f64>()
            / n
            / 1e6;
        out.push(Point {
            round: (t + 1) as f64,
            megabytes: mb,
            accuracy: acc,
        });
    }
    out
}

/// One SVG per α: a row per budget, accuracy vs round (left) and vs
/// cumulative MB sent (right), mean over seeds; the full-model baseline is
/// drawn in every panel.
pub fn plot(curves: &[Curve], alpha: f64, path: &Path) -> Result<()> {
    let gs = groups(curves);
    let mut budgets: Vec<String> = gs
        .iter()
        .filter(|((a, budget, _), _)| *a == alpha && budget != "-")
        .map(|((_, budget, _), _)| budget.clone())
        .collect();
    budgets.dedup();
    let full: Option<Vec<Point>> = gs
        .iter()
        .find(|((a, _, m), _)| *a == alpha && m == FULL)
        .map(|(_, cs)| mean_curve(cs));
    let mut panels: Vec<Panel> = Vec::new();
    for budget in &budgets {
        let mut series: Vec<(String, Vec<Point>)> = gs
            .iter()
            .filter(|((a, b, _), _)| *a == alpha && b == budget)
            .map(|((_, _, m), cs)| (m.clone(), mean_curve(cs)))
            .collect();
        if let Some(f) = &full {
            series.insert(0, (FULL.to_owned(), f.clone()));
        }
        for by_round in [true, false] {
            let (what, x_desc) = if by_round {
                ("round", "round")
            } else {
                ("MB sent (both ways)", "cumulative MB")
            };
            let mut panel = LinePanel::new(
                format!("α = {alpha}, {budget}: accuracy vs {what}"),
                x_desc,
                "test accuracy",
            )
            .y_range(0.0, 1.0)
            .legend_low();
            for (name, pts) in &series {
                let x_of = |p: &Point| if by_round { p.round } else { p.megabytes };
                panel = panel.series(
                    name.clone(),
                    pts.iter().map(|p| (x_of(p), p.accuracy)).collect(),
                );
            }
            panels.push(panel.into());
        }
    }
    write_svg(path, &panels, 2)
}

/// The tour's section: α = 1, keep 0.25, full FedAvg vs Top-n, PriSM-like,
/// Unbiased and Collective for 15 rounds, one seed (≈ 6 s in release).
pub fn tour_section(device: &Device) -> Result<()> {
    println!("== federated spectral sharding (lastmile-federated-sharding) ==");
    let start = Instant::now();
    let mut settings = Settings::full(15, 1);
    settings.alphas = vec![1.0];
    settings.budgets = vec![Budget::Ratio(0.25)];
    settings.strategies = vec![
        Strategy::TopN,
        Strategy::PrismLike,
        Strategy::Unbiased,
        Strategy::Collective,
    ];
    let bar = progress_bar((settings.runs() * settings.rounds) as u64, "fl rounds");
    let curves = run_all(&settings, device, &bar)?;
    bar.finish_and_clear();
    let test_rows = digits_federation(1.0, settings.n_clients, 0)?.test.len();
    let full_bytes = curves
        .iter()
        .find(|c| c.method == FULL)
        .map_or(f64::NAN, |c| c.total_bytes() as f64);
    let rows: Vec<Vec<String>> = curves
        .iter()
        .map(|c| {
            vec![
                c.method.clone(),
                c.budget.clone(),
                format!("{:.3}", c.final_accuracy()),
                format!("{:.1}", c.total_bytes() as f64 / 1e6),
                format!("{:.2}", c.total_bytes() as f64 / full_bytes),
            ]
        })
        .collect();
    println!(
        "digits, MLP 64-256-256-10, {} clients with Dirichlet(α = 1) label skew, {} per round, \
         {} rounds of {} local SGD epochs:",
        settings.n_clients, settings.clients_per_round, settings.rounds, settings.local_epochs
    );
    print!(
        "{}",
        table(
            &["method", "budget", "test acc", "MB sent", "bytes / full"],
            &rows
        )
    );
    println!(
        "   test acc: accuracy of the server's model on {test_rows} held-out digits after {} rounds (chance 0.1).",
        settings.rounds
    );
    println!(
        "   sharded clients hold and train 25 % of each layer's singular triplets as a factor pair A·B, \
         so they fit less per round than full FedAvg."
    );
    println!(
        "   top-n (always the largest triplets) and prism-like (random triplets, unscaled) are biased: the \
         server's average truncates or shrinks W every round (prism-like shrinks it to chance, 0.1, which is \
         the point of the comparison, not a bug); unbiased (λ = 1/p) and collective (λ = K/(1+(K−1)p)) rescale \
         the kept triplets to undo that."
    );
    println!(
        "   MB sent: every shard and update message encoded and counted, both ways; \
         bytes / full = traffic relative to full FedAvg."
    );
    let svg = output_dir()?.join("tour_federated.svg");
    plot(&curves, 1.0, &svg)?;
    println!(
        "   plot (accuracy vs round and vs MB sent): {}",
        svg.display()
    );
    println!("   section time {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// Writes the plots for every α of `curves` to `dir` and returns their paths.
pub fn plot_all(curves: &[Curve], dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut alphas: Vec<f64> = curves.iter().map(|c| c.alpha).collect();
    alphas.dedup();
    let mut paths = Vec::new();
    for alpha in alphas {
        let path = dir.join(format!("fl_digits_alpha{alpha}.svg"));
        plot(curves, alpha, &path)?;
        paths.push(path);
    }
    Ok(paths)
}
