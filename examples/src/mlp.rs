//! A small multi-layer perceptron classifier and its training loop, shared by
//! the examples.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor};
use lastmile_core::convert::{indices_to_vec, int_tensor_from_indices, tensor_from_vec};
use lastmile_core::numerics::log_softmax;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::report::progress_bar;

/// `Linear → ReLU → … → Linear` producing logits.
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    /// Layer widths `[input, hidden…, classes]`.
    pub fn new(widths: &[usize], device: &Device) -> Result<Self> {
        ensure!(
            widths.len() >= 2,
            "an MLP needs at least input and output widths"
        );
        let layers = widths
            .windows(2)
            .map(|w| LinearConfig::new(w[0], w[1]).init(device))
            .collect();
        Ok(Self { layers })
    }

    /// Logits `[batch, classes]` for inputs `[batch, input]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |h, (i, layer)| {
            let h = layer.forward(h);
            if i < last { relu(h) } else { h }
        })
    }

    /// The hidden representation fed to the last layer, `[batch, hidden]`.
    pub fn features(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        self.layers[..last]
            .iter()
            .fold(x, |h, layer| relu(layer.forward(h)))
    }

    /// Number of trainable scalars.
    pub fn parameter_count(&self) -> usize {
        self.num_params()
    }
}

/// Mean cross-entropy `−(1/n) Σ log softmax(z)_y`.
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Result<Tensor<1>> {
    let log_p = log_softmax(logits, 1.0)?;
    let picked = log_p.gather(1, labels.unsqueeze_dim::<2>(1));
    Ok(picked.mean().neg())
}

/// Host-side data set: row-major features and labels.
#[derive(Clone, Debug)]
pub struct Labelled {
    /// `n × d` features, row-major.
    pub x: Vec<f32>,
    /// `n` labels.
    pub y: Vec<usize>,
    /// Feature count `d`.
    pub dim: usize,
}

impl Labelled {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// The rows at `idx` as tensors on `device`.
    pub fn batch(&self, idx: &[usize], device: &Device) -> Result<(Tensor<2>, Tensor<1, Int>)> {
        let mut x = Vec::with_capacity(idx.len() * self.dim);
        let mut y = Vec::with_capacity(idx.len());
        for &i in idx {
            x.extend_from_slice(&self.x[i * self.dim..(i + 1) * self.dim]);
            y.push(self.y[i]);
        }
        Ok((
            tensor_from_vec(x, [idx.len(), self.dim], device)?,
            int_tensor_from_indices(&y, [idx.len()], device)?,
        ))
    }
}

/// Training settings.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Rows per optimiser step.
    pub batch_size: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Shuffling seed.
    pub seed: u64,
}

/// Per-epoch training record.
#[derive(Clone, Debug)]
pub struct EpochStats {
    /// Mean training loss over the epoch.
    pub loss: f64,
    /// Wall time of the epoch.
    pub time: Duration,
}

/// Trains `model` (created on an autodiff device) with Adam on cross-entropy,
/// showing a progress bar. Returns the trained model and per-epoch stats.
pub fn train_classifier(
    mut model: Mlp,
    data: &Labelled,
    config: &TrainConfig,
    device: &Device,
) -> Result<(Mlp, Vec<EpochStats>)> {
    ensure!(device.is_autodiff(), "training needs an autodiff device");
    ensure!(!data.is_empty(), "empty training set");
    let mut optim = AdamConfig::new().init();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let steps_per_epoch = data.len().div_ceil(config.batch_size);
    let bar = progress_bar((config.epochs * steps_per_epoch) as u64, "training");
    let mut stats = Vec::with_capacity(config.epochs);
    for epoch in 0..config.epochs {
        let start = Instant::now();
        order.shuffle(&mut rng);
        let mut total = 0.0;
        for chunk in order.chunks(config.batch_size) {
            let (x, y) = data.batch(chunk, device)?;
            let loss = cross_entropy(model.forward(x), y)?;
            total += f64::from(loss.clone().into_scalar::<f32>()) * chunk.len() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(config.learning_rate, model, grads);
            bar.inc(1);
        }
        let loss = total / data.len() as f64;
        bar.set_message(format!("epoch {} loss {loss:.4}", epoch + 1));
        stats.push(EpochStats {
            loss,
            time: start.elapsed(),
        });
    }
    bar.finish_and_clear();
    Ok((model, stats))
}

/// Predicted classes for every row of `data` (in batches of 512).
pub fn predict(model: &Mlp, data: &Labelled, device: &Device) -> Result<Vec<usize>> {
    let idx: Vec<usize> = (0..data.len()).collect();
    let mut out = Vec::with_capacity(data.len());
    for chunk in idx.chunks(512) {
        let (x, _) = data.batch(chunk, device)?;
        out.extend(indices_to_vec(model.forward(x).argmax(1)).context("reading predictions")?);
    }
    Ok(out)
}

/// Fraction of rows whose predicted class equals the label.
pub fn accuracy(model: &Mlp, data: &Labelled, device: &Device) -> Result<f64> {
    let pred = predict(model, data, device)?;
    let hits = pred.iter().zip(&data.y).filter(|(p, y)| p == y).count();
    Ok(hits as f64 / data.len().max(1) as f64)
}
