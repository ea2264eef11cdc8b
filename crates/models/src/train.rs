//! Next-byte training on a text corpus.

use burn::grad_clipping::GradientClippingConfig;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use lastmile_core::lm::LmError;

use crate::error::{ModelError, Result};
use crate::transformer::Transformer;

/// Training hyper-parameters.
///
/// ```
/// let c = lastmile_models::TrainConfig::new(100, 8, 64);
/// assert!(c.check().is_ok());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Windows per step.
    pub batch: usize,
    /// Bytes per window.
    pub context: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// Linear warm-up steps, then cosine decay to 10% of the peak.
    pub warmup: usize,
    /// Seed of the window sampler.
    pub seed: u64,
}

impl TrainConfig {
    /// `steps` steps of `batch` windows of `context` bytes, lr 3e-3, 5% warm-up, seed 0.
    pub fn new(steps: usize, batch: usize, context: usize) -> Self {
        Self {
            steps,
            batch,
            context,
            lr: 3e-3,
            warmup: steps / 20,
            seed: 0,
        }
    }

    /// Checks the sizes and learning rate.
    ///
    /// # Errors
    /// [`ModelError::Config`].
    pub fn check(&self) -> Result<()> {
        if self.steps == 0 || self.batch == 0 || self.context == 0 {
            return Err(ModelError::Config(
                "steps, batch and context must be >= 1".to_owned(),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(ModelError::Config(format!(
                "lr = {}; expected a finite value > 0",
                self.lr
            )));
        }
        Ok(())
    }

    /// Learning rate at `step`.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = (self.steps - self.warmup).max(1) as f64;
        let t = (step - self.warmup) as f64 / span;
        self.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
    }
}

/// Random `[batch, context]` inputs and next-byte targets drawn from `data`.
pub(crate) fn windows(
    data: &[u8],
    batch: usize,
    context: usize,
    rng: &mut StdRng,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let mut x = Vec::with_capacity(batch * context);
    let mut y = Vec::with_capacity(batch * context);
    for _ in 0..batch {
        let start = rng.random_range(0..data.len() - context);
        x.extend(data[start..start + context].iter().map(|b| i64::from(*b)));
        y.extend(
            data[start + 1..start + context + 1]
                .iter()
                .map(|b| i64::from(*b)),
        );
    }
    (
        Tensor::from_data(TensorData::new(x, [batch, context]), device),
        Tensor::from_data(TensorData::new(y, [batch, context]), device),
    )
}

/// Checks that `data` holds more than one window of `context` bytes and
/// that a model with context `max_len` and vocabulary `vocab` can take them.
///
/// # Errors
/// [`ModelError::Data`], [`LmError::ContextOverflow`], [`ModelError::Config`].
pub(crate) fn check_data(data: &[u8], context: usize, max_len: usize, vocab: usize) -> Result<()> {
    if data.len() <= context + 1 {
        return Err(ModelError::Data(format!(
            "{} bytes; expected more than context + 1 = {}",
            data.len(),
            context + 1
        )));
    }
    if context > max_len {
        return Err(ModelError::Lm(LmError::ContextOverflow {
            row: 0,
            needed: context,
            max: max_len,
        }));
    }
    if vocab < 256 {
        return Err(ModelError::Config(format!(
            "vocab {vocab} < 256 cannot hold bytes"
        )));
    }
    Ok(())
}

fn check_model_data(data: &[u8], context: usize, model: &Transformer) -> Result<()> {
    check_data(data, context, model.max_len(), model.vocab())
}

/// Trains `model` (whose parameters live on an autodiff device) to predict
/// the next byte of `data`, calling `on_step(step, loss)` after every step,
/// and returns the trained model in evaluation mode on the plain device.
///
/// Cross-entropy over every position of random windows; AdamW with
/// gradient-norm clipping at 1.
///
/// # Errors
/// [`ModelError::Config`] / [`ModelError::Data`] for bad settings or too little data,
/// [`LmError::ContextOverflow`] when `config.context` exceeds the model's,
/// [`ModelError::Config`] when autodiff does not track the model's parameters.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_models::{TrainConfig, TransformerConfig, train};
/// let ad = Device::flex().autodiff();
/// let m = TransformerConfig::byte_level(16, 1, 2, 16).init(&ad).unwrap();
/// let text = b"abcabcabcabcabcabcabcabcabcabcabcabcabcabc".repeat(4);
/// let mut losses = Vec::new();
/// let m = train(m, &text, &TrainConfig::new(30, 4, 16), |_, l| losses.push(l)).unwrap();
/// assert!(losses[29] < losses[0]);
/// # }
/// ```
pub fn train(
    model: Transformer,
    data: &[u8],
    config: &TrainConfig,
    on_step: impl FnMut(usize, f32),
) -> Result<Transformer> {
    config.check()?;
    check_model_data(data, config.context, &model)?;
    let device = model.head.weight.device();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let (b, l) = (config.batch, config.context);
    fit(model, config, on_step, |model, rng| {
        let (x, y) = windows(data, b, l, rng, &device);
        let logits = model.forward(x)?.reshape([b * l, model.vocab()]);
        Ok(with_value(loss_fn.forward(logits, y.reshape([b * l]))))
    })
}

/// A loss and its value, the report of [`train`] and [`distill`].
fn with_value(loss: Tensor<1>) -> (Tensor<1>, f32) {
    let value = loss.clone().into_scalar::<f32>();
    (loss, value)
}

/// The optimisation loop of every model in this crate ([`train`],
/// [`distill`], [`train_moe`](crate::train_moe)): AdamW with weight decay
/// 0.01 and gradient-norm clipping at 1, the schedule of `config`, the
/// window sampler seeded with `config.seed`. Each step calls
/// `loss(model, rng)`, which returns the loss to minimise and the step's
/// report (e.g. the loss value), then `on_step(step, report)` after the
/// update. Returns the model in evaluation mode on the plain device.
///
/// # Errors
/// `loss`'s errors; [`ModelError::Config`] when the loss is not tracked by
/// autodiff (a model on a plain device, or frozen).
pub(crate) fn fit<M: Module, R, E: From<ModelError>>(
    mut model: M,
    config: &TrainConfig,
    mut on_step: impl FnMut(usize, R),
    mut loss: impl FnMut(&M, &mut StdRng) -> std::result::Result<(Tensor<1>, R), E>,
) -> std::result::Result<M, E> {
    let mut optim = AdamWConfig::new()
        .with_weight_decay(0.01)
        .with_grad_clipping(Some(GradientClippingConfig::Norm(1.0)))
        .init();
    let mut rng = StdRng::seed_from_u64(config.seed);
    for step in 0..config.steps {
        let (loss, report) = loss(&model, &mut rng)?;
        if !loss.is_tracked() {
            return Err(ModelError::Config(
                "the model's parameters are not tracked by autodiff; expected a model created \
                 on `device.autodiff()` with trainable parameters"
                    .to_owned(),
            )
            .into());
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(config.lr_at(step), model, grads);
        on_step(step, report);
    }
    Ok(model.valid())
}

/// Trains `student` (parameters on an autodiff device) to match the
/// next-byte distributions of `teacher` on windows of `data`: knowledge
/// distillation with the forward KL divergence, as DistillSpec (Zhou et al.
/// 2024, "DistillSpec: Improving Speculative Decoding via Knowledge
/// Distillation", ICLR) uses to align a draft with its target.
///
/// Per position the loss is `KL(p‖q) = Σ_v p(v) (log p(v) − log q(v))`,
/// with `p` the teacher's softmax and `q` the student's; the mean over
/// positions is reported to `on_step(step, kl)` (nats). Why it is the right
/// objective for a draft: speculative sampling accepts a drafted token with
/// probability `1 − TV(p, q)` (Leviathan et al. 2023, Eq. (1)–(3)), and
/// Pinsker's inequality bounds `TV(p, q) ≤ sqrt(KL(p‖q) / 2)`, so lowering
/// the KL to the target raises the acceptance rate, whereas cross-entropy on
/// the data matches the data, not the target. Optimiser and schedule as
/// [`train`]. The teacher runs on its own (plain) device; its probabilities
/// are moved to the student's device as constants.
///
/// # Errors
/// As [`train`] (for the student and the teacher); [`ModelError::Config`]
/// when the vocabularies differ.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_models::{TrainConfig, TransformerConfig, distill};
/// let teacher = TransformerConfig::byte_level(16, 1, 2, 16).init(&Device::flex()).unwrap();
/// let ad = Device::flex().autodiff();
/// let student = TransformerConfig::byte_level(16, 1, 2, 16).init(&ad).unwrap();
/// let text = b"abcabcabcabcabcabcabcabcabcabcabcabcabcabc".repeat(4);
/// let mut kl = Vec::new();
/// distill(student, &teacher, &text, &TrainConfig::new(30, 4, 16), |_, l| kl.push(l)).unwrap();
/// assert!(kl[29] < kl[0]);
/// # }
/// ```
pub fn distill(
    student: Transformer,
    teacher: &Transformer,
    data: &[u8],
    config: &TrainConfig,
    on_step: impl FnMut(usize, f32),
) -> Result<Transformer> {
    config.check()?;
    check_model_data(data, config.context, &student)?;
    check_model_data(data, config.context, teacher)?;
    if teacher.vocab() != student.vocab() {
        return Err(ModelError::Config(format!(
            "teacher vocab {} != student vocab {}; expected the same vocabulary",
            teacher.vocab(),
            student.vocab()
        )));
    }
    let device = student.head.weight.device();
    let teacher_device = teacher.device();
    let (b, l, v) = (config.batch, config.context, student.vocab());
    fit(student, config, on_step, |student, rng| {
        let (x_t, _) = windows(data, b, l, rng, &teacher_device);
        let x = Tensor::<2, Int>::from_data(x_t.to_data(), &device);
        let log_p = log_softmax(teacher.forward(x_t)?.reshape([b * l, v]), 1);
        let log_p = Tensor::<2>::from_data(log_p.into_data(), &device);
        let p = log_p.clone().exp();
        let log_q = log_softmax(student.forward(x)?.reshape([b * l, v]), 1);
        Ok(with_value((p * (log_p - log_q)).sum_dim(1).mean()))
    })
}

/// Mean next-byte cross-entropy (nats) of `model` over `windows` random
/// windows of `context` bytes of `data`.
///
/// # Errors
/// As [`train`].
pub fn evaluate(
    model: &Transformer,
    data: &[u8],
    context: usize,
    windows_n: usize,
    seed: u64,
) -> Result<f32> {
    check_model_data(data, context, model)?;
    let device = model.head.weight.device();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut total = 0.0;
    let chunk = 8;
    let mut done = 0;
    while done < windows_n.max(1) {
        let b = chunk.min(windows_n.max(1) - done);
        let (x, y) = windows(data, b, context, &mut rng, &device);
        let logits = model.forward(x)?.reshape([b * context, model.vocab()]);
        total += loss_fn
            .forward(logits, y.reshape([b * context]))
            .into_scalar::<f32>()
            * b as f32;
        done += b;
    }
    Ok(total / done as f32)
}
