//! Adapters on digits: pretrain a small MLP on the original 8×8 digits, then
//! adapt it with LoRA, FouRA and SHiRA (every mask kind) to two shifted
//! domains — mirrored images and transposed images — and combine the two
//! adapters of each kind. Used by the `adapters_digits` example and the tour.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use lastmile_adapters::shira::weight_gradient;
use lastmile_adapters::{
    AdaptedLinear, AdaptedModel, Adapter, FouraConfig, GateMode, LoraConfig, ShiraBudget,
    ShiraConfig, ShiraMask,
};
use lastmile_core::convert::indices_to_vec;
use lastmile_datasets::{SplitFractions, stratified_split};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::mlp::{Labelled, cross_entropy};
use crate::plot::{BarPanel, write_svg};
use crate::report::{output_dir, progress_bar, table};

/// Names of the three layers (module paths of their `weight`s).
pub const LAYERS: [&str; 3] = ["l0", "l1", "l2"];

/// The base classifier: 64 → 128 → 64 → 10.
#[derive(Module, Debug)]
pub struct Net {
    l0: Linear,
    l1: Linear,
    l2: Linear,
}

impl Net {
    /// A freshly initialised network.
    pub fn new(device: &Device) -> Self {
        Self {
            l0: LinearConfig::new(64, 128).init(device),
            l1: LinearConfig::new(128, 64).init(device),
            l2: LinearConfig::new(64, 10).init(device),
        }
    }

    /// Logits.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.l2
            .forward(relu(self.l1.forward(relu(self.l0.forward(x)))))
    }
}

/// The same network with an adapter on every layer.
#[derive(Module, Debug)]
pub struct AdaptedNet {
    l0: AdaptedLinear,
    l1: AdaptedLinear,
    l2: AdaptedLinear,
}

impl AdaptedNet {
    /// Logits.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.l2
            .forward(relu(self.l1.forward(relu(self.l0.forward(x)))))
    }

    /// The input of each layer, for freezing FouRA gates.
    fn layer_inputs(&self, x: Tensor<2>) -> [Tensor<2>; 3] {
        let h0 = relu(self.l0.forward(x.clone()));
        let h1 = relu(self.l1.forward(h0.clone()));
        [x, h0, h1]
    }

    fn adapters(&self) -> BTreeMap<String, Adapter> {
        [&self.l0, &self.l1, &self.l2]
            .iter()
            .zip(LAYERS)
            .map(|(l, n)| (n.to_owned(), l.adapter.clone()))
            .collect()
    }

    fn trainable(&self) -> usize {
        self.l0.trainable_params() + self.l1.trainable_params() + self.l2.trainable_params()
    }
}

/// The image domains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// The original digits.
    Original,
    /// Left-right mirrored.
    Mirrored,
    /// Transposed (reflected about the main diagonal).
    Transposed,
}

fn remap(x: &[f32], domain: Domain) -> Vec<f32> {
    let mut out = x.to_vec();
    for row in out.chunks_exact_mut(64) {
        let src = row.to_vec();
        for r in 0..8 {
            for c in 0..8 {
                row[r * 8 + c] = match domain {
                    Domain::Original => src[r * 8 + c],
                    Domain::Mirrored => src[r * 8 + (7 - c)],
                    Domain::Transposed => src[c * 8 + r],
                };
            }
        }
    }
    out
}

/// Train/test digits (pixels scaled to [0, 1]) in the three domains.
pub struct Data {
    /// `(train, test)` per domain.
    pub sets: BTreeMap<&'static str, (Labelled, Labelled)>,
}

impl Data {
    /// Loads digits and builds the domains (stratified 70/30 split).
    pub fn load(seed: u64) -> Result<Self> {
        let ds = lastmile_datasets::digits()?;
        let labels = ds.labels().context("digits has labels")?.to_vec();
        let split = stratified_split(&labels, 10, SplitFractions::new(0.7, 0.3, 0.0), seed)?;
        let part = |idx: &[usize]| -> Result<Labelled> {
            let sub = ds.subset(idx)?;
            Ok(Labelled {
                x: sub.features().iter().map(|v| v / 16.0).collect(),
                y: sub.labels().context("labels")?.to_vec(),
                dim: sub.n_features(),
            })
        };
        let (train, test) = (part(&split.train)?, part(&split.calibration)?);
        ensure!(train.dim == 64, "digits should have 64 features");
        let mut sets = BTreeMap::new();
        for (name, d) in [
            ("original", Domain::Original),
            ("mirrored", Domain::Mirrored),
            ("transposed", Domain::Transposed),
        ] {
            let map = |l: &Labelled| Labelled {
                x: remap(&l.x, d),
                y: l.y.clone(),
                dim: 64,
            };
            sets.insert(name, (map(&train), map(&test)));
        }
        Ok(Self { sets })
    }

    fn get(&self, name: &str) -> Result<&(Labelled, Labelled)> {
        self.sets
            .get(name)
            .with_context(|| format!("domain {name}"))
    }
}

fn accuracy_of(
    forward: impl Fn(Tensor<2>) -> Tensor<2>,
    data: &Labelled,
    device: &Device,
) -> Result<f64> {
    let idx: Vec<usize> = (0..data.len()).collect();
    let mut hits = 0;
    for chunk in idx.chunks(512) {
        let (x, _) = data.batch(chunk, device)?;
        let pred = indices_to_vec(forward(x).argmax(1).squeeze_dim::<1>(1))?;
        hits += pred
            .iter()
            .zip(chunk)
            .filter(|(p, i)| **p == data.y[**i])
            .count();
    }
    Ok(hits as f64 / data.len() as f64)
}

/// Training settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Epochs of base pretraining.
    pub base_epochs: usize,
    /// Epochs of adapter training.
    pub adapter_epochs: usize,
    /// LoRA/FouRA rank; SHiRA uses the same parameter count (`r·(m+n)` per layer).
    pub rank: usize,
    /// Mask kinds to try.
    pub masks: Vec<ShiraMask>,
    /// Seed.
    pub seed: u64,
}

/// A generic Adam loop over minibatches.
#[allow(clippy::too_many_arguments)] // private helper; a settings struct would only rename these
fn train<M: Module>(
    mut model: M,
    forward: impl Fn(&M, Tensor<2>) -> Tensor<2>,
    data: &Labelled,
    epochs: usize,
    lr: f64,
    seed: u64,
    label: &str,
    device: &Device,
) -> Result<M> {
    let mut optim = AdamConfig::new().init();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let bar = progress_bar((epochs * data.len().div_ceil(64)) as u64, label);
    for _ in 0..epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(64) {
            let (x, y) = data.batch(chunk, device)?;
            let loss = cross_entropy(forward(&model, x), y)?;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(model)
}

/// One adapter kind's results.
#[derive(Clone, Debug)]
pub struct KindReport {
    /// Kind label.
    pub kind: String,
    /// Accuracy on the mirrored test set after adapting to it.
    pub accuracy: f64,
    /// Trainable values / base values.
    pub trainable_fraction: f64,
    /// Adapter training wall time in seconds.
    pub seconds: f64,
    /// Accuracy on mirrored / transposed with the two adapters combined.
    pub combined: Option<(f64, f64)>,
    /// Accuracy on transposed with its own adapter.
    pub accuracy_second: Option<f64>,
    /// AWOR between the two adapters on the middle layer.
    pub awor: Option<f64>,
}

fn adapter_for(
    kind: &Kind,
    base: &Net,
    grads: &[Tensor<2>; 3],
    rank: usize,
    device: &Device,
) -> Result<AdaptedNet> {
    let make = |l: &Linear, g: &Tensor<2>| -> Result<AdaptedLinear> {
        let w0 = l.weight.val().transpose();
        let [d_out, d_in] = w0.dims();
        let adapter: Adapter = match kind {
            Kind::Lora => LoraConfig::new(rank, 2.0 * rank as f64)
                .init(d_in, d_out, device)?
                .into(),
            Kind::Foura => FouraConfig::new(rank, 2.0 * rank as f64)
                .init(d_in, d_out, device)?
                .into(),
            Kind::Shira(m) => ShiraConfig::new(*m, ShiraBudget::LoraRank(rank))
                .with_seed(7)
                .init(&w0, Some(g))?
                .into(),
        };
        Ok(AdaptedLinear::new(l.clone(), adapter)?)
    };
    Ok(AdaptedNet {
        l0: make(&base.l0, &grads[0])?,
        l1: make(&base.l1, &grads[1])?,
        l2: make(&base.l2, &grads[2])?,
    })
}

#[derive(Clone, Debug)]
enum Kind {
    Lora,
    Foura,
    Shira(ShiraMask),
}

impl Kind {
    fn label(&self) -> String {
        match self {
            Kind::Lora => "LoRA".into(),
            Kind::Foura => "FouRA (DCT, gated)".into(),
            Kind::Shira(m) => format!("SHiRA-{}", m.name()),
        }
    }
}

/// `∇L` of each base weight (`[out, in]`) on a calibration batch of `data`.
fn calibration_grads(base: &Net, data: &Labelled, device: &Device) -> Result<[Tensor<2>; 3]> {
    let idx: Vec<usize> = (0..data.len().min(256)).collect();
    let (x, y) = data.batch(&idx, device)?;
    let layers = [&base.l0, &base.l1, &base.l2];
    let mut out = Vec::new();
    for (k, layer) in layers.iter().enumerate() {
        let g = weight_gradient(layer.weight.val().transpose(), |w| {
            let mut h = x.clone();
            for (j, l) in layers.iter().enumerate() {
                let z = if j == k {
                    h.matmul(w.clone().transpose())
                        + l.bias
                            .as_ref()
                            .map(|b| b.val().unsqueeze_dim::<2>(0))
                            .unwrap_or_else(|| Tensor::zeros([1, 1], device))
                } else {
                    l.forward(h)
                };
                h = if j < 2 { relu(z) } else { z };
            }
            cross_entropy(h, y.clone()).unwrap_or_else(|_| Tensor::zeros([1], device))
        })?;
        out.push(g);
    }
    out.try_into()
        .map_err(|_| anyhow::anyhow!("three gradients expected"))
}

/// Runs the experiment; `device` must be an autodiff device.
pub fn run(settings: &Settings, device: &Device) -> Result<(f64, f64, Vec<KindReport>)> {
    ensure!(device.is_autodiff(), "needs an autodiff device");
    device.seed(settings.seed);
    let data = Data::load(settings.seed)?;
    let (orig_train, orig_test) = data.get("original")?;
    let (mir_train, mir_test) = data.get("mirrored")?;
    let (tr_train, tr_test) = data.get("transposed")?;
    let base = train(
        Net::new(device),
        |m, x| m.forward(x),
        orig_train,
        settings.base_epochs,
        5e-3,
        settings.seed,
        "base",
        device,
    )?;
    let base_acc = accuracy_of(|x| base.forward(x), orig_test, device)?;
    let base_on_mirrored = accuracy_of(|x| base.forward(x), mir_test, device)?;
    let base_params = base.num_params() as f64;
    let grads_mir = calibration_grads(&base, mir_train, device)?;
    let grads_tr = calibration_grads(&base, tr_train, device)?;
    let mut kinds = vec![Kind::Lora, Kind::Foura];
    kinds.extend(settings.masks.iter().map(|m| Kind::Shira(*m)));
    let mut reports = Vec::new();
    for kind in kinds {
        let start = Instant::now();
        let net = adapter_for(&kind, &base, &grads_mir, settings.rank, device)?;
        let trainable = net.trainable();
        let net = train(
            net,
            |m, x| m.forward(x),
            mir_train,
            settings.adapter_epochs,
            1e-2,
            settings.seed + 1,
            &kind.label(),
            device,
        )?;
        let seconds = start.elapsed().as_secs_f64();
        let accuracy = accuracy_of(|x| net.forward(x), mir_test, device)?;
        // Second task, then both adapters fused into W0 + ΔW_mirrored + ΔW_transposed.
        let net2 = adapter_for(&kind, &base, &grads_tr, settings.rank, device)?;
        let net2 = train(
            net2,
            |m, x| m.forward(x),
            tr_train,
            settings.adapter_epochs,
            1e-2,
            settings.seed + 2,
            &kind.label(),
            device,
        )?;
        let acc2 = accuracy_of(|x| net2.forward(x), tr_test, device)?;
        let freeze = |n: &AdaptedNet, d: &Labelled| -> Result<BTreeMap<String, Adapter>> {
            let idx: Vec<usize> = (0..d.len().min(512)).collect();
            let (x, _) = d.batch(&idx, device)?;
            let inputs = n.layer_inputs(x);
            let mut out = BTreeMap::new();
            for ((name, a), input) in n.adapters().into_iter().zip(inputs) {
                let a = match a {
                    Adapter::Foura(f) if f.gate_mode() == GateMode::Adaptive => {
                        Adapter::Foura(f.freeze_gate(input)?)
                    }
                    other => other,
                };
                out.insert(name, a);
            }
            Ok(out)
        };
        let mut deployed = AdaptedModel::new(base.clone(), &LAYERS)?;
        deployed.add("mirrored", freeze(&net, mir_train)?)?;
        deployed.add("transposed", freeze(&net2, tr_train)?)?;
        let awor = deployed
            .interference("mirrored", "transposed")?
            .get("l1")
            .map(|i| i.awor);
        deployed.switch_weighted(&[("mirrored", 1.0), ("transposed", 1.0)])?;
        let fused = deployed.module();
        let combined = (
            accuracy_of(|x| fused.forward(x), mir_test, device)?,
            accuracy_of(|x| fused.forward(x), tr_test, device)?,
        );
        reports.push(KindReport {
            kind: kind.label(),
            accuracy,
            trainable_fraction: trainable as f64 / base_params,
            seconds,
            combined: Some(combined),
            accuracy_second: Some(acc2),
            awor,
        });
    }
    Ok((base_acc, base_on_mirrored, reports))
}

/// Renders the results as a table followed by one line per column a
/// newcomer could misread.
pub fn render(base_acc: f64, base_on_mirrored: f64, reports: &[KindReport]) -> String {
    let pct = |v: f64| format!("{:.1}%", 100.0 * v);
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            let (cm, ct) = r.combined.unwrap_or((f64::NAN, f64::NAN));
            let second = r.accuracy_second.unwrap_or(f64::NAN);
            vec![
                r.kind.clone(),
                pct(r.trainable_fraction),
                format!("{:.1}", r.seconds),
                pct(r.accuracy),
                pct(second),
                pct(cm),
                pct(ct),
                format!("{:+.1} pt", -100.0 * r.fusion_drop()),
                r.awor.map_or("-".into(), |a| format!("{a:.3}")),
            ]
        })
        .collect();
    format!(
        "  base model: {} on original digits, {} on mirrored digits without an adapter\n{}{}",
        pct(base_acc),
        pct(base_on_mirrored),
        table(
            &[
                "adapter",
                "trainable",
                "train s",
                "mirrored, own",
                "transposed, own",
                "mirrored, fused",
                "transposed, fused",
                "fused − own",
                "AWOR"
            ],
            &rows
        ),
        "   trainable: adapter values / base model values. own: test accuracy with the task's own adapter.\n\
         \x20  fused: both adapters added into the base weights at once (W0 + ΔW_mirrored + ΔW_transposed), no \
         retraining; fused − own: the mean accuracy lost by fusing.\n\
         \x20  A large loss is interference between the adapters, the effect the FouRA and SHiRA papers address, \
         not a bug: two dense LoRA\n\
         \x20  updates overlap everywhere and disturb each other; FouRA's gated frequency-domain and SHiRA's sparse \
         updates are meant to overlap less.\n\
         \x20  AWOR: share of zero entries in S1ᵀS2 for the middle layer's two adapters (1 = disjoint supports, \
         0 for dense low-rank updates).\n"
    )
}

impl KindReport {
    /// Mean accuracy lost by fusing, over the two tasks (NaN without a fused run).
    pub fn fusion_drop(&self) -> f64 {
        let (cm, ct) = self.combined.unwrap_or((f64::NAN, f64::NAN));
        let second = self.accuracy_second.unwrap_or(f64::NAN);
        ((self.accuracy - cm) + (second - ct)) / 2.0
    }
}

/// Accuracy per adapter kind on each task, with its own adapter and with
/// both fused (bar chart, SVG).
pub fn plot(reports: &[KindReport], path: &Path) -> Result<()> {
    let kinds: Vec<String> = reports.iter().map(|r| r.kind.clone()).collect();
    let col = |f: &dyn Fn(&KindReport) -> f64| reports.iter().map(f).collect::<Vec<f64>>();
    let panel = BarPanel::new(
        "adapters on digits: accuracy with own adapter vs both fused",
        "test accuracy",
        kinds,
    )
    .series("mirrored, own", col(&|r| r.accuracy))
    .series(
        "transposed, own",
        col(&|r| r.accuracy_second.unwrap_or(f64::NAN)),
    )
    .series(
        "mirrored, fused",
        col(&|r| r.combined.map_or(f64::NAN, |c| c.0)),
    )
    .series(
        "transposed, fused",
        col(&|r| r.combined.map_or(f64::NAN, |c| c.1)),
    )
    .y_range(0.0, 1.15);
    write_svg(path, &[panel.into()], 1)
}

/// The tour's section: a short run with LoRA, FouRA and SHiRA-random.
pub fn tour_section(device: &Device) -> Result<()> {
    let device = if device.is_autodiff() {
        device.clone()
    } else {
        device.clone().autodiff()
    };
    let settings = Settings {
        base_epochs: 15,
        adapter_epochs: 12,
        rank: 2,
        masks: vec![ShiraMask::Random],
        seed: 1,
    };
    println!(
        "adapters: pretrain on digits, adapt to mirrored and transposed digits, then fuse both adapters"
    );
    let (a, b, r) = run(&settings, &device)?;
    print!("{}", render(a, b, &r));
    let svg = output_dir()?.join("tour_adapters.svg");
    plot(&r, &svg)?;
    println!("   plot: {}", svg.display());
    Ok(())
}
