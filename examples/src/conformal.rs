//! Conformal prediction on digits: train a classifier with plain
//! cross-entropy, ConfTr or one of the information-theoretic bounds of
//! Correia et al. (2024) as objective, then measure coverage and mean set size
//! of split-conformal THR (LAC) and APS sets over random calibration/test
//! re-splits. Used by the `conformal_digits` example and the tour.

use anyhow::{Context, Result};
use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::Device;
use lastmile_conformal::training::{ConformalTraining, Objective, TrainingScore};
use lastmile_conformal::{CoverageDistribution, ScoreFunction, SplitConformal, coverage};
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::numerics::softmax;
use lastmile_datasets::{SplitFractions, Standardizer, stratified_split};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use crate::mlp::{Labelled, Mlp};
use crate::plot::{BarPanel, Panel, write_svg};
use crate::report::{output_dir, table};

/// Digits split into a training part, a model-selection part and an
/// evaluation part (the latter is re-split into calibration and test
/// halves), standardised with training statistics.
#[derive(Clone, Debug)]
pub struct DigitsSplit {
    /// Rows the model is trained on.
    pub train: Labelled,
    /// Held-out rows used only to pick the training epoch (lowest
    /// cross-entropy), as Correia et al. select their models.
    pub select: Labelled,
    /// Rows re-split into calibration and test sets for evaluation.
    pub eval: Labelled,
}

/// Stratified `train / select / eval` split of digits with the given
/// fractions (`eval` gets the rest).
pub fn digits_data(train_fraction: f64, select_fraction: f64, seed: u64) -> Result<DigitsSplit> {
    let ds = lastmile_datasets::digits()?;
    let labels = ds.labels().context("digits has labels")?.to_vec();
    let split = stratified_split(
        &labels,
        10,
        SplitFractions::new(
            train_fraction,
            select_fraction,
            1.0 - train_fraction - select_fraction,
        ),
        seed,
    )?;
    let mut train = ds.subset(&split.train)?;
    let mut select = ds.subset(&split.calibration)?;
    let mut eval = ds.subset(&split.test)?;
    let scaler = Standardizer::fit(&train)?;
    for d in [&mut train, &mut select, &mut eval] {
        scaler.transform(d)?;
    }
    let to_labelled = |d: &lastmile_datasets::Dataset| -> Result<Labelled> {
        Ok(Labelled {
            x: d.features().to_vec(),
            y: d.labels().context("labels")?.to_vec(),
            dim: d.n_features(),
        })
    };
    Ok(DigitsSplit {
        train: to_labelled(&train)?,
        select: to_labelled(&select)?,
        eval: to_labelled(&eval)?,
    })
}

/// Settings shared by every objective (the training recipe of Correia et
/// al.'s reference configurations, scaled to digits).
#[derive(Clone, Debug)]
pub struct TrainSettings {
    /// Passes over the training set; the learning rate drops 10× at 2/5,
    /// 3/5 and 4/5 of them.
    pub epochs: usize,
    /// Hidden width of the MLP; 0 gives a linear (softmax regression)
    /// model, the paper's MNIST model.
    pub hidden: usize,
    /// SGD (Nesterov) momentum.
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Miscoverage level the conformal objectives are trained at.
    pub alpha: f64,
    /// NeuralSort temperature of the differentiable quantile.
    pub sort_temperature: f64,
    /// Whether the DPI objective uses the empirical-Bernstein corrected
    /// estimate (as the paper trains).
    pub dpi_concentration: bool,
    /// Diagnostic: train the cross-entropy baseline on the prediction half
    /// of each batch only (the rows the DPI bound's cross-entropy term sees).
    pub ce_on_prediction_half: bool,
    /// Epochs trained with cross-entropy before switching to the objective
    /// (0: the objective from scratch, as in the paper).
    pub warm_start_epochs: usize,
    /// Seed for initialisation, shuffling and randomised scores.
    pub seed: u64,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            epochs: 100,
            hidden: 64,
            momentum: 0.9,
            weight_decay: 5e-4,
            alpha: 0.01,
            sort_temperature: 0.1,
            dpi_concentration: true,
            ce_on_prediction_half: false,
            warm_start_epochs: 0,
            seed: 1,
        }
    }
}

/// Per-objective hyperparameters, fixed before any evaluation.
#[derive(Clone, Copy, Debug)]
pub struct Recipe {
    /// The training objective (used alone: no added cross-entropy).
    pub objective: Objective,
    /// Rows per step; half calibrate, half predict for conformal objectives.
    pub batch_size: usize,
    /// Initial SGD learning rate.
    pub learning_rate: f64,
    /// Set-membership temperature `T` (unused by cross-entropy).
    pub temperature: f64,
    /// Weight of the cross-entropy added to a conformal objective (the
    /// paper uses 0).
    pub ce_weight: f64,
}

/// The five objectives with the temperatures of the reference THR
/// configurations (DPI 0.01, model-based Fano 0.5, simple Fano and ConfTr
/// 0.1), batch 100 and learning rate 0.05 for all.
pub fn default_recipes() -> Vec<Recipe> {
    let r = |objective, temperature| Recipe {
        objective,
        batch_size: 100,
        learning_rate: 0.05,
        temperature,
        ce_weight: 0.0,
    };
    vec![
        r(Objective::CrossEntropy, 1.0),
        r(Objective::conftr(), 0.1),
        r(Objective::Dpi, 0.01),
        r(Objective::ModelFano, 0.5),
        r(Objective::SimpleFano, 0.1),
    ]
}

/// The conformal training configuration of a recipe: thresholding on
/// log-probabilities, objective alone (cross-entropy weight 0).
pub fn training_config(recipe: &Recipe, settings: &TrainSettings) -> Result<ConformalTraining> {
    Ok(
        ConformalTraining::new(recipe.objective, ScoreFunction::Lac, settings.alpha)?
            .with_training_score(TrainingScore::LogProbability)?
            .with_temperature(recipe.temperature)?
            .with_sort_temperature(settings.sort_temperature)?
            .with_ce_weight(recipe.ce_weight)?
            .with_dpi_concentration(settings.dpi_concentration),
    )
}

fn mean_cross_entropy(model: &Mlp, data: &Labelled, device: &Device) -> Result<f64> {
    let probs = probabilities(model, data, device)?;
    let k = probs.len() / data.len().max(1);
    let total: f64 = data
        .y
        .iter()
        .enumerate()
        .map(|(i, &y)| -f64::from(probs[i * k + y].max(1e-12)).ln())
        .sum();
    Ok(total / data.len().max(1) as f64)
}

/// Model, optimiser (momentum buffers) and shuffling RNG during training.
struct TrainState {
    model: Mlp,
    optim: ModuleOptimizer,
    rng: StdRng,
}

impl TrainState {
    /// A freshly initialised MLP (seeded by `settings.seed`), SGD with
    /// Nesterov momentum and weight decay, and the shuffling RNG.
    fn new(data: &DigitsSplit, settings: &TrainSettings, device: &Device) -> Result<Self> {
        let ad = device.clone().autodiff();
        ad.seed(settings.seed);
        let dim = data.train.dim;
        let widths = if settings.hidden == 0 {
            vec![dim, 10]
        } else {
            vec![dim, settings.hidden, 10]
        };
        let optim = SgdConfig::new()
            .with_momentum(Some(MomentumConfig {
                momentum: settings.momentum,
                dampening: 0.0,
                nesterov: true,
            }))
            .with_weight_decay(Some(WeightDecayConfig {
                penalty: settings.weight_decay as f32,
            }))
            .init();
        Ok(Self {
            model: Mlp::new(&widths, &ad)?,
            optim,
            rng: StdRng::seed_from_u64(settings.seed),
        })
    }

    /// Trains `epochs` epochs with `recipe`'s objective, batch size and the
    /// step-decayed learning rate (`base_lr`, ×0.1 at 2/5, 3/5 and 4/5 of
    /// the phase). With `best = Some(..)` the epoch with the lowest
    /// cross-entropy on `data.select` (starting from the given candidate)
    /// is tracked and returned; `None` selects among this phase's epochs only.
    #[allow(clippy::too_many_arguments)]
    fn run_phase(
        &mut self,
        recipe: &Recipe,
        settings: &TrainSettings,
        data: &DigitsSplit,
        epochs: usize,
        base_lr: f64,
        mut best: Option<(f64, Mlp)>,
        device: &Device,
        bar: Option<&indicatif::ProgressBar>,
    ) -> Result<Option<(f64, Mlp)>> {
        let cfg = training_config(recipe, settings)?;
        let ad = device.clone().autodiff();
        let train = &data.train;
        let mut order: Vec<usize> = (0..train.len()).collect();
        for epoch in 0..epochs {
            let decays = [2, 3, 4]
                .iter()
                .filter(|&&m| epoch >= m * epochs / 5)
                .count();
            let lr = base_lr * 0.1f64.powi(decays as i32);
            order.shuffle(&mut self.rng);
            for chunk in order.chunks(recipe.batch_size) {
                if chunk.len() < recipe.batch_size {
                    continue; // drop the last partial batch, as the reference loaders do
                }
                let (x, y) = train.batch(chunk, &ad)?;
                let (x, y) = if settings.ce_on_prediction_half
                    && matches!(recipe.objective, Objective::CrossEntropy)
                {
                    // diagnostic baseline: the rows a bound's CE term sees
                    let half = chunk.len() / 2;
                    (
                        x.narrow(0, half, chunk.len() - half),
                        y.narrow(0, half, chunk.len() - half),
                    )
                } else {
                    (x, y)
                };
                let loss = cfg.loss(self.model.forward(x), y, &mut self.rng)?;
                let grads = GradientsParams::from_grads(loss.backward(), &self.model);
                self.model = self.optim.step(lr, self.model.clone(), grads);
            }
            let valid = self.model.valid();
            let ce = mean_cross_entropy(&valid, &data.select, device)?;
            let better = best.as_ref().is_none_or(|(b, _)| ce <= *b);
            if ce.is_finite() && better {
                best = Some((ce, valid));
            }
            if let Some(bar) = bar {
                bar.inc(1);
            }
        }
        Ok(best)
    }
}

/// A trained cross-entropy warm start: model, optimiser state (momentum
/// buffers) and the seed of the fine-tuning phase's shuffling RNG, drawn
/// from the warm start's RNG. Trained once per run and cloned for every
/// objective fine-tuned from it.
#[derive(Clone)]
pub struct WarmStart {
    model: Mlp,
    optim: ModuleOptimizer,
    seed: u64,
}

/// The cross-entropy warm start of the fine-tuning recipe:
/// `settings.warm_start_epochs` (at most `settings.epochs`) epochs of cross-entropy with `recipe`'s
/// batch size and learning rate. The state does not depend on `recipe`'s
/// objective, so one warm start serves every objective of a run.
pub fn warm_start(
    recipe: &Recipe,
    data: &DigitsSplit,
    settings: &TrainSettings,
    device: &Device,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<WarmStart> {
    let mut state = TrainState::new(data, settings, device)?;
    let ce = Recipe {
        objective: Objective::CrossEntropy,
        ..*recipe
    };
    // full batches in the shared phase, whatever the CE-half diagnostic says
    let shared = TrainSettings {
        ce_on_prediction_half: false,
        ..settings.clone()
    };
    state.run_phase(
        &ce,
        &shared,
        data,
        settings.warm_start_epochs.min(settings.epochs),
        recipe.learning_rate,
        None,
        device,
        bar,
    )?;
    Ok(WarmStart {
        seed: state.rng.random::<u64>(),
        model: state.model,
        optim: state.optim,
    })
}

/// Fine-tunes a warm start with `recipe`'s objective for the remaining
/// `settings.epochs − settings.warm_start_epochs` epochs from a 10× lower
/// learning rate (same step decay), keeping the momentum buffers, and
/// returns the fine-tuned epoch with the lowest cross-entropy on
/// `data.select` (the warm start itself is not a candidate).
pub fn fine_tune(
    warm: WarmStart,
    recipe: &Recipe,
    data: &DigitsSplit,
    settings: &TrainSettings,
    device: &Device,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<Mlp> {
    let epochs = settings.epochs.saturating_sub(settings.warm_start_epochs);
    let mut state = TrainState {
        model: warm.model,
        optim: warm.optim,
        rng: StdRng::seed_from_u64(warm.seed),
    };
    let best = state.run_phase(
        recipe,
        settings,
        data,
        epochs,
        0.1 * recipe.learning_rate,
        None,
        device,
        bar,
    )?;
    Ok(best.map_or_else(|| state.model.valid(), |(_, m)| m))
}

/// Trains an MLP on `data.train` with the recipe (SGD with Nesterov
/// momentum, weight decay, step decay) and returns the epoch with the
/// lowest cross-entropy on `data.select`, as a non-autodiff model. With
/// `settings.warm_start_epochs > 0` this is [`warm_start`] followed by
/// [`fine_tune`].
pub fn train(
    recipe: &Recipe,
    data: &DigitsSplit,
    settings: &TrainSettings,
    device: &Device,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<Mlp> {
    if settings.warm_start_epochs > 0 {
        let state = warm_start(recipe, data, settings, device, bar)?;
        return fine_tune(state, recipe, data, settings, device, bar);
    }
    let mut state = TrainState::new(data, settings, device)?;
    let init = state.model.valid();
    let best = state.run_phase(
        recipe,
        settings,
        data,
        settings.epochs,
        recipe.learning_rate,
        Some((mean_cross_entropy(&init, &data.select, device)?, init)),
        device,
        bar,
    )?;
    Ok(best.map_or_else(|| state.model.valid(), |(_, m)| m))
}

/// Softmax probabilities of `model` on every row of `data`, row-major.
pub fn probabilities(model: &Mlp, data: &Labelled, device: &Device) -> Result<Vec<f32>> {
    let idx: Vec<usize> = (0..data.len()).collect();
    let mut out = Vec::with_capacity(data.len() * 10);
    for chunk in idx.chunks(512) {
        let (x, _) = data.batch(chunk, device)?;
        out.extend(tensor_to_vec(softmax(model.forward(x), 1.0)?)?);
    }
    Ok(out)
}

/// Coverage and mean set size of every calibration/test re-split for one
/// score and α.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// Score name.
    pub score: &'static str,
    /// Miscoverage level.
    pub alpha: f64,
    /// Empirical coverage of each re-split.
    pub coverages: Vec<f64>,
    /// Mean set size of each re-split.
    pub sizes: Vec<f64>,
}

impl Evaluation {
    /// Mean and sample std of the coverages.
    pub fn coverage(&self) -> (f64, f64) {
        mean_std(&self.coverages)
    }

    /// Mean and sample std of the mean set sizes.
    pub fn size(&self) -> (f64, f64) {
        mean_std(&self.sizes)
    }

    /// Appends another run's re-splits (same score and α).
    pub fn absorb(&mut self, other: &Evaluation) {
        self.coverages.extend(&other.coverages);
        self.sizes.extend(&other.sizes);
    }
}

/// Mean and sample standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, var.sqrt())
}

/// Split-conformal THR and APS (randomised) at each α over `resplits`
/// random halvings of the evaluation rows.
pub fn evaluate(
    probs: &[f32],
    labels: &[usize],
    alphas: &[f64],
    resplits: usize,
    seed: u64,
) -> Result<Vec<Evaluation>> {
    let k = 10;
    let n = labels.len();
    let mut out = Vec::new();
    for (name, score) in [
        ("THR", ScoreFunction::Lac),
        ("APS", ScoreFunction::Aps { randomized: true }),
    ] {
        for &alpha in alphas {
            let cp = SplitConformal::new(score, alpha)?;
            let mut rng = StdRng::seed_from_u64(seed);
            let (mut coverages, mut sizes) = (Vec::new(), Vec::new());
            for _ in 0..resplits {
                let mut idx: Vec<usize> = (0..n).collect();
                idx.shuffle(&mut rng);
                let (cal, test) = idx.split_at(n / 2);
                let rows = |ix: &[usize]| -> Vec<f32> {
                    ix.iter()
                        .flat_map(|&i| probs[i * k..(i + 1) * k].iter().copied())
                        .collect()
                };
                let ys = |ix: &[usize]| -> Vec<usize> { ix.iter().map(|&i| labels[i]).collect() };
                let fitted = cp.calibrate_slice(&rows(cal), k, &ys(cal), &mut rng)?;
                let sets = fitted.predict_slice(&rows(test), k, &mut rng)?;
                coverages.push(coverage(&sets, &ys(test))?);
                sizes.push(sets.mean_size());
            }
            out.push(Evaluation {
                score: name,
                alpha,
                coverages,
                sizes,
            });
        }
    }
    Ok(out)
}

/// Top-1 accuracy of row-major probabilities.
pub fn accuracy(probs: &[f32], labels: &[usize]) -> f64 {
    let k = probs.len() / labels.len().max(1);
    let hits = labels
        .iter()
        .enumerate()
        .filter(|&(i, &y)| {
            let row = &probs[i * k..(i + 1) * k];
            row.iter().all(|&p| p <= row[y])
        })
        .count();
    hits as f64 / labels.len().max(1) as f64
}

/// Results of one objective pooled over training runs.
#[derive(Clone, Debug)]
pub struct ObjectiveResult {
    /// The recipe trained.
    pub recipe: Recipe,
    /// Test accuracy of each training run.
    pub accuracies: Vec<f64>,
    /// Per score and α, the re-splits of every run.
    pub evaluations: Vec<Evaluation>,
}

/// Trains every recipe on `runs` independent data splits / seeds and
/// evaluates each model with `resplits` calibration/test re-splits at each
/// α. With `settings.warm_start_epochs > 0` the cross-entropy warm start is
/// trained once per run and fine-tuned by every recipe (see
/// [`compare_ticks`]). One progress-bar tick per epoch.
pub fn compare(
    recipes: &[Recipe],
    settings: &TrainSettings,
    runs: usize,
    resplits: usize,
    alphas: &[f64],
    device: &Device,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<Vec<ObjectiveResult>> {
    let mut results: Vec<ObjectiveResult> = recipes
        .iter()
        .map(|&recipe| ObjectiveResult {
            recipe,
            accuracies: Vec::new(),
            evaluations: Vec::new(),
        })
        .collect();
    for run in 0..runs {
        let seed = settings.seed + run as u64;
        let data = digits_data(0.5, 0.1, seed)?;
        let run_settings = TrainSettings {
            seed,
            ..settings.clone()
        };
        // one cross-entropy warm start per (batch size, learning rate),
        // shared by every objective fine-tuned from it in this run
        let mut warm: Vec<((usize, u64), WarmStart)> = Vec::new();
        for result in &mut results {
            let recipe = result.recipe;
            let model = if run_settings.warm_start_epochs > 0 {
                let key = (recipe.batch_size, recipe.learning_rate.to_bits());
                let state = match warm.iter().find(|(k, _)| *k == key) {
                    Some((_, state)) => state.clone(),
                    None => {
                        if let Some(bar) = bar {
                            bar.set_message(format!("CE warm start (run {}/{runs})", run + 1));
                        }
                        let state = warm_start(&recipe, &data, &run_settings, device, bar)?;
                        warm.push((key, state.clone()));
                        state
                    }
                };
                if let Some(bar) = bar {
                    bar.set_message(format!(
                        "fine-tune {} (run {}/{runs})",
                        recipe.objective.name(),
                        run + 1
                    ));
                }
                fine_tune(state, &recipe, &data, &run_settings, device, bar)?
            } else {
                if let Some(bar) = bar {
                    bar.set_message(format!(
                        "{} (run {}/{runs})",
                        recipe.objective.name(),
                        run + 1
                    ));
                }
                train(&recipe, &data, &run_settings, device, bar)?
            };
            let probs = probabilities(&model, &data.eval, device)?;
            result.accuracies.push(accuracy(&probs, &data.eval.y));
            let evals = evaluate(&probs, &data.eval.y, alphas, resplits, 1000 + seed)?;
            if result.evaluations.is_empty() {
                result.evaluations = evals;
            } else {
                for (acc, e) in result.evaluations.iter_mut().zip(&evals) {
                    acc.absorb(e);
                }
            }
        }
    }
    Ok(results)
}

/// Progress-bar ticks (epochs) of [`compare`]: a shared warm start counts
/// once per run and distinct (batch size, learning rate).
pub fn compare_ticks(recipes: &[Recipe], settings: &TrainSettings, runs: usize) -> u64 {
    let warm = settings.warm_start_epochs.min(settings.epochs);
    let mut keys: Vec<(usize, u64)> = recipes
        .iter()
        .map(|r| (r.batch_size, r.learning_rate.to_bits()))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let per_run = if warm > 0 {
        keys.len() * warm + recipes.len() * (settings.epochs - warm)
    } else {
        recipes.len() * settings.epochs
    };
    (runs * per_run) as u64
}

/// Paired difference of mean set size against a baseline trained on the
/// same runs: per run, the mean over its re-splits of `size − baseline size`
/// (same data split and calibration/test re-splits); returns the mean over
/// runs and its standard error.
pub fn paired_size_difference(
    e: &Evaluation,
    baseline: &Evaluation,
    resplits: usize,
) -> (f64, f64) {
    let per_run: Vec<f64> = e
        .sizes
        .chunks(resplits)
        .zip(baseline.sizes.chunks(resplits))
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x - y).sum::<f64>() / a.len() as f64)
        .collect();
    let (m, sd) = mean_std(&per_run);
    (m, sd / (per_run.len() as f64).sqrt())
}

/// Table rows `[objective, score, α, coverage, size]`.
pub fn rows(objective: &str, evals: &[Evaluation]) -> Vec<Vec<String>> {
    evals
        .iter()
        .map(|e| {
            let (c, cs) = e.coverage();
            let (m, ms) = e.size();
            vec![
                objective.to_owned(),
                e.score.to_owned(),
                format!("{}", e.alpha),
                format!("{c:.4} ± {cs:.4}"),
                format!("{m:.3} ± {ms:.3}"),
            ]
        })
        .collect()
}

/// Calibration and test sizes of one re-split of `eval_rows` evaluation rows
/// (as [`evaluate`] splits them: the first half calibrates).
pub fn resplit_sizes(eval_rows: usize) -> (usize, usize) {
    (eval_rows / 2, eval_rows - eval_rows / 2)
}

/// Two bar panels for one recipe at one α: coverage and mean set size per
/// objective (one bar per score, ± std over re-splits). The coverage panel
/// draws 1 − α and the central 95 % band of one split's coverage under the
/// exact finite-sample law ([`CoverageDistribution`]).
pub fn coverage_size_panels(
    title: &str,
    results: &[ObjectiveResult],
    alpha: f64,
    law: &CoverageDistribution,
) -> Result<[Panel; 2]> {
    let objectives: Vec<&str> = results.iter().map(|r| r.recipe.objective.name()).collect();
    let (lo, hi) = law.interval(0.95)?;
    let mut coverage_panel = BarPanel::new(
        format!("{title}: coverage at α = {alpha}"),
        "coverage",
        objectives.clone(),
    )
    .hline(format!("1 − α = {:.2}", 1.0 - alpha), 1.0 - alpha)
    .band(format!("95 % of single splits [{lo:.3}, {hi:.3}]"), lo, hi);
    let mut size_panel = BarPanel::new(
        format!("{title}: mean set size at α = {alpha}"),
        "labels per set",
        objectives,
    );
    for score in ["THR", "APS"] {
        let evals: Vec<&Evaluation> = results
            .iter()
            .filter_map(|r| {
                r.evaluations
                    .iter()
                    .find(|e| e.score == score && e.alpha == alpha)
            })
            .collect();
        if evals.len() != results.len() {
            continue;
        }
        let (c, cs): (Vec<f64>, Vec<f64>) = evals.iter().map(|e| e.coverage()).unzip();
        let (m, ms): (Vec<f64>, Vec<f64>) = evals.iter().map(|e| e.size()).unzip();
        coverage_panel = coverage_panel.series_with_errors(score, c, cs);
        size_panel = size_panel.series_with_errors(score, m, ms);
    }
    let floor = (lo - 0.05).max(0.0);
    Ok([
        coverage_panel.y_range(floor, 1.06).into(),
        size_panel.into(),
    ])
}

/// The tour's conformal section: cross-entropy vs the DPI bound as training
/// objective on digits (short training, one run), THR and APS sets at
/// α = 0.1 over 5 re-splits.
pub fn tour_section(device: &Device) -> Result<()> {
    println!("== conformal prediction (lastmile-conformal) ==");
    let settings = TrainSettings {
        epochs: 30,
        ..TrainSettings::default()
    };
    let recipes: Vec<Recipe> = default_recipes()
        .into_iter()
        .filter(|r| matches!(r.objective, Objective::CrossEntropy | Objective::Dpi))
        .collect();
    let results = compare(&recipes, &settings, 1, 5, &[0.1], device, None)?;
    let mut all = Vec::new();
    for r in &results {
        all.extend(rows(r.recipe.objective.name(), &r.evaluations));
    }
    let data = digits_data(0.5, 0.1, settings.seed)?;
    let (n_cal, n_test) = resplit_sizes(data.eval.len());
    let alpha = 0.1;
    println!(
        "digits, split conformal at α = {alpha} ({n_cal} calibration / {n_test} test rows, 5 re-splits):"
    );
    print!(
        "{}",
        table(
            &["objective", "score", "alpha", "coverage", "mean set size"],
            &all
        )
    );
    let law = CoverageDistribution::split(n_cal, n_test, alpha)?;
    let (lo, hi) = law.interval(0.95)?;
    println!(
        "   objective: ce = cross-entropy; dpi = conformal training with the DPI bound on H(Y|X) (aims at smaller sets)."
    );
    println!(
        "   score: THR thresholds the true class's probability (LAC); APS adds up sorted probabilities (randomised)."
    );
    println!(
        "   coverage = share of test digits whose set holds the true label (mean ± sd over re-splits). The guarantee is \
         marginal: in expectation over calibration sets, {:.3} ≤ E[coverage] < {:.3}.",
        law.mean(),
        1.0 - alpha + 1.0 / (n_cal as f64 + 1.0)
    );
    println!(
        "   One split of {n_cal} / {n_test} rows lands in [{lo:.3}, {hi:.3}] with 95 % probability (exact \
         Beta-binomial law), so a value a little under {:.2} is expected, not a failure.",
        1.0 - alpha
    );
    println!(
        "   mean set size: labels per set (1 = one confident label; smaller is better at the same coverage)."
    );
    let svg = output_dir()?.join("tour_conformal.svg");
    write_svg(
        &svg,
        &coverage_size_panels("tour", &results, alpha, &law)?,
        2,
    )?;
    println!("   plot: {}", svg.display());
    Ok(())
}
