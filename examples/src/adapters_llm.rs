//! Fine-tuning a real pretrained model with adapters: LoRA and SHiRA on
//! the attention and MLP projections of SmolLM2-135M-Instruct
//! ([`LlamaModule`], the trainable form of the model) through
//! [`AdaptedModel`], on the Rust book shipped with `lastmile-datasets`; each
//! adapter saved in PEFT's layout and reloaded in a fresh process, which
//! must reproduce the switched-in logits bit for bit.
//!
//! The model file is not shipped: `scripts/fetch-smollm2.sh` downloads it.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use lastmile_adapters::{
    AdaptedModel, AdapterSpec, LoraConfig, ShiraBudget, ShiraConfig, ShiraMask,
};
use lastmile_core::convert::tensor_to_vec;
use lastmile_datasets::TextCorpus;
use lastmile_models::llama::LlamaModule;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::llm::Llm;
use crate::plot::{LinePanel, write_svg};
use crate::report::{progress_bar, table, write_csv};

/// The attention and MLP projections of every block (module paths of
/// [`LlamaModule`]).
pub const LAYERS: [&str; 7] = [
    "blocks.*.q",
    "blocks.*.k",
    "blocks.*.v",
    "blocks.*.o",
    "blocks.*.gate",
    "blocks.*.up",
    "blocks.*.down",
];

/// The text whose next-token logits the reload check compares.
pub const PROBE: &str =
    "In Rust, every value has a single owner, and when the owner goes out of scope";

/// What to train.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Wall-clock training budget per adapter, in seconds.
    pub seconds_per_adapter: f64,
    /// Tokens per training window.
    pub window: usize,
    /// Held-out windows the loss is measured on.
    pub eval_windows: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Seed of the window sampler and the adapters' initialisation.
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            seconds_per_adapter: 120.0,
            window: 64,
            eval_windows: 8,
            lr: 1e-3,
            seed: 1,
        }
    }
}

/// One adapter's run.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    /// `"lora"` or `"shira"`.
    pub name: String,
    /// Trainable values of the adapter.
    pub trainable: usize,
    /// Training steps taken in the budget.
    pub steps: usize,
    /// Training seconds.
    pub seconds: f64,
    /// Training loss per step (one window each).
    pub losses: Vec<f64>,
    /// Mean held-out loss with the adapter switched in.
    pub held_out: f64,
}

/// The whole run.
#[derive(Clone, Debug)]
pub struct Report {
    /// Parameters of the model.
    pub model_params: usize,
    /// Mean held-out loss of the base model.
    pub base_held_out: f64,
    /// One entry per adapter.
    pub adapters: Vec<AdapterReport>,
}

/// Token ids of the shipped Rust book: (training, held-out).
fn corpus(llm: &Llm) -> Result<(Vec<usize>, Vec<usize>)> {
    let corpus = TextCorpus::rust_book(0.05)?;
    let text = |bytes: &[u32]| -> String {
        let b: Vec<u8> = bytes.iter().map(|t| *t as u8).collect();
        String::from_utf8_lossy(&b).into_owned()
    };
    let ids = |t: String| llm.tokenizer.encode(&t, false, false);
    Ok((ids(text(corpus.train())), ids(text(corpus.validation()))))
}

/// Mean next-token cross-entropy (nats) of each row of `windows`.
fn loss(module: &LlamaModule, windows: &[Vec<usize>]) -> Result<Tensor<1>> {
    let (b, n) = (windows.len(), windows[0].len() - 1);
    let logits = module.forward(windows)?;
    let vocab = logits.dims()[2];
    let logp = log_softmax(logits.slice([0..b, 0..n, 0..vocab]), 2);
    let next: Vec<i64> = windows
        .iter()
        .flat_map(|w| w[1..].iter().map(|&t| t as i64))
        .collect();
    let next = Tensor::<3, Int>::from_data(TensorData::new(next, [b, n, 1]), &logp.device());
    Ok(logp.gather(2, next).mean().neg())
}

fn scalar(t: Tensor<1>) -> Result<f64> {
    Ok(f64::from(tensor_to_vec(t)?[0]))
}

/// Mean held-out loss over `windows`, one window per forward.
fn held_out(module: &LlamaModule, windows: &[Vec<usize>]) -> Result<f64> {
    let mut sum = 0.0;
    for w in windows {
        sum += scalar(loss(module, std::slice::from_ref(w))?)?;
    }
    Ok(sum / windows.len() as f64)
}

/// `count` windows of `len` tokens from `tokens` at seeded random offsets.
fn windows(
    tokens: &[usize],
    len: usize,
    count: usize,
    rng: &mut StdRng,
) -> Result<Vec<Vec<usize>>> {
    ensure!(
        tokens.len() > len,
        "text of {} tokens; expected more than {len}",
        tokens.len()
    );
    Ok((0..count)
        .map(|_| {
            let start = rng.random_range(0..tokens.len() - len);
            tokens[start..start + len].to_vec()
        })
        .collect())
}

/// The probe's next-token logits under `model`, flattened.
pub fn probe_logits(model: &AdaptedModel<LlamaModule>, probe: &[usize]) -> Result<Vec<f32>> {
    Ok(tensor_to_vec(model.module().forward(&[probe.to_vec()])?)?)
}

/// The model as a module on `device`'s autodiff form, its projections adapted.
fn adapted(llm: &Llm, device: &Device) -> Result<AdaptedModel<LlamaModule>> {
    let module = LlamaModule::from_model(&llm.model, &device.clone().autodiff())?;
    Ok(AdaptedModel::new(module, &LAYERS)?)
}

/// Trains LoRA and then SHiRA, each for the time budget, saves each to
/// `out/<name>/` in PEFT's layout with its probe logits in
/// `out/<name>.logits`.
///
/// # Errors
/// A missing model file (the message says how to fetch it); any model,
/// adapter or I/O error.
pub fn run(settings: &Settings, device: &Device, out: &Path) -> Result<Report> {
    let llm = Llm::load(device)?;
    let (train, valid) = corpus(&llm)?;
    let probe = llm.tokenizer.encode(PROBE, false, false);
    let mut model = adapted(&llm, device)?;
    let model_params = llm.model.config().n_params();
    drop(llm);
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let eval = windows(&valid, settings.window + 1, settings.eval_windows, &mut rng)?;
    let base_held_out = held_out(model.module(), &eval)?;
    let base_logits = probe_logits(&model, &probe)?;
    let specs = [
        (
            "lora",
            AdapterSpec::Lora(LoraConfig::new(8, 16.0).with_seed(settings.seed)),
        ),
        (
            "shira",
            // The same budget of trainable values as LoRA r = 8.
            AdapterSpec::Shira(
                ShiraConfig::new(ShiraMask::WeightMagnitude, ShiraBudget::LoraRank(8))
                    .with_seed(settings.seed),
            ),
        ),
    ];
    let mut adapters = Vec::new();
    for (name, spec) in &specs {
        model.attach(spec)?;
        let trainable = model
            .trained()?
            .values()
            .map(|a| a.trainable_params())
            .sum();
        let mut optim = AdamConfig::new().init();
        let mut losses = Vec::new();
        let bar = progress_bar(settings.seconds_per_adapter.ceil() as u64, name);
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < settings.seconds_per_adapter {
            let batch = windows(&train, settings.window + 1, 1, &mut rng)?;
            let l = loss(model.module(), &batch)?;
            losses.push(scalar(l.clone())?);
            let grads = GradientsParams::from_grads(l.backward(), model.module());
            model.update(|m| optim.step(settings.lr, m, grads));
            bar.set_position(start.elapsed().as_secs());
            bar.set_message(format!(
                "step {} loss {:.3}",
                losses.len(),
                losses[losses.len() - 1]
            ));
        }
        bar.finish_and_clear();
        let seconds = start.elapsed().as_secs_f64();
        model.register(name)?;
        model.save(name, out.join(name))?;
        model.switch(name)?;
        let held = held_out(model.module(), &eval)?;
        let logits = probe_logits(&model, &probe)?;
        write_f32(&out.join(format!("{name}.logits")), &logits)?;
        model.unmerge()?;
        ensure!(
            probe_logits(&model, &probe)? == base_logits,
            "{name}: unmerging did not give the base model back"
        );
        adapters.push(AdapterReport {
            name: (*name).to_owned(),
            trainable,
            steps: losses.len(),
            seconds,
            losses,
            held_out: held,
        });
    }
    Ok(Report {
        model_params,
        base_held_out,
        adapters,
    })
}

/// The fresh-process check: loads the base model and each saved adapter
/// from `dir`, switches it in, and compares the probe logits with the ones
/// the training process wrote, bit for bit. Returns one line per adapter.
///
/// # Errors
/// Any difference, or a missing or malformed file.
pub fn check(dir: &Path, device: &Device) -> Result<Vec<String>> {
    let llm = Llm::load(device)?;
    let probe = llm.tokenizer.encode(PROBE, false, false);
    let mut model = adapted(&llm, device)?;
    drop(llm);
    let mut lines = Vec::new();
    for name in ["lora", "shira"] {
        model.load(name, dir.join(name))?;
        model.switch(name)?;
        let want = read_f32(&dir.join(format!("{name}.logits")))?;
        let got = probe_logits(&model, &probe)?;
        let same = got.len() == want.len()
            && got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
        if !same {
            bail!("{name}: the logits after reloading differ from the training process's");
        }
        lines.push(format!(
            "{name}: reloaded from {} — {} logits identical, bit for bit",
            dir.join(name).display(),
            got.len()
        ));
    }
    Ok(lines)
}

/// Runs [`check`] in a new process: this executable with `--check <dir>`.
///
/// # Errors
/// When the child cannot start or reports a difference.
pub fn check_in_fresh_process(dir: &Path) -> Result<String> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let out = Command::new(exe)
        .arg("--check")
        .arg(dir)
        .output()
        .context("starting the fresh process")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "the fresh process failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

fn write_f32(path: &Path, values: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn read_f32(path: &Path) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        bytes.len().is_multiple_of(4),
        "{}: {} bytes, not a whole number of f32 values",
        path.display(),
        bytes.len()
    );
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// The results as a table, with a line on how to read it.
pub fn render(report: &Report) -> String {
    let rows: Vec<Vec<String>> = std::iter::once(vec![
        "base model".to_owned(),
        "-".to_owned(),
        "-".to_owned(),
        "-".to_owned(),
        format!("{:.3}", report.base_held_out),
        format!("{:.1}", report.base_held_out.exp()),
    ])
    .chain(report.adapters.iter().map(|a| {
        vec![
            a.name.clone(),
            format!(
                "{} ({:.2}%)",
                a.trainable,
                100.0 * a.trainable as f64 / report.model_params as f64
            ),
            a.steps.to_string(),
            format!("{:.0}", a.seconds),
            format!("{:.3}", a.held_out),
            format!("{:.1}", a.held_out.exp()),
        ]
    }))
    .collect();
    format!(
        "{}\nheld-out loss: mean next-token cross-entropy (nats) on windows of the Rust book's \
         held-out 5 %, which no step trained on; perplexity = e^loss. Lower is better: the base \
         model was not trained on this text's style, the adapters were, for the steps shown.\n",
        table(
            &[
                "adapter",
                "trainable values",
                "steps",
                "seconds",
                "held-out loss",
                "perplexity"
            ],
            &rows
        )
    )
}

/// Writes the training losses as CSV and as an SVG chart (a running mean
/// of 10 steps, the held-out losses as reference lines).
///
/// # Errors
/// I/O or drawing failures.
pub fn write_outputs(report: &Report, csv: &Path, svg: &Path) -> Result<()> {
    let rows: Vec<Vec<String>> = report
        .adapters
        .iter()
        .flat_map(|a| {
            a.losses
                .iter()
                .enumerate()
                .map(|(i, l)| vec![a.name.clone(), (i + 1).to_string(), format!("{l:.5}")])
        })
        .collect();
    write_csv(csv, &["adapter", "step", "training_loss"], &rows)?;
    let mut panel = LinePanel::new(
        "SmolLM2-135M fine-tuned on the Rust book",
        "training step",
        "next-token loss (nats), mean of the last 10 steps",
    )
    .hline("base model, held-out", report.base_held_out);
    for a in &report.adapters {
        let smooth: Vec<(f64, f64)> = (0..a.losses.len())
            .map(|i| {
                let from = i.saturating_sub(9);
                let part = &a.losses[from..=i];
                ((i + 1) as f64, part.iter().sum::<f64>() / part.len() as f64)
            })
            .collect();
        panel = panel
            .series(a.name.clone(), smooth)
            .hline(format!("{}, held-out", a.name), a.held_out);
    }
    write_svg(svg, &[panel.into()], 1)
}
