//! A small draft for speculative decoding, distilled from its target: the
//! target's embedding (and tied head), its first `L` blocks and its final
//! norm, the blocks and the norm then trained so that the `L`-block model's
//! next-token distribution matches the full model's.
//!
//! The loss is the forward KL divergence `KL(p_target ‖ q_draft)` at every
//! position (Hinton et al. 2015, eq. 1 at temperature 1; the "FKL" objective
//! of DistillSpec, Zhou et al. 2023, §3), on windows of a text corpus fed to
//! both models. The draft starts where the early-exit view
//! ([`super::LlamaEarlyExit`]) is: the same weights, but a head that reads
//! block `L`'s output as if it were block 30's; distillation teaches the
//! first `L` blocks to produce what the head expects. The embedding and head
//! stay frozen (shared vocabulary, and 28 M of the 35 M parameters of a
//! 2-block SmolLM2 draft).

use std::path::Path;

use burn::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::error::{LlamaError, LlamaResult};
use super::model::LlamaModel;
use super::module::LlamaModule;
use crate::checkpoint::{load_module, save_module};
use crate::train::TrainConfig;

/// Largest draft checkpoint [`LlamaModule::load_draft`] reads (1 GiB).
pub const MAX_DRAFT_BYTES: u64 = 1 << 30;

fn fail(path: &Path, reason: impl Into<String>) -> LlamaError {
    LlamaError::Checkpoint {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

impl LlamaModule {
    /// The draft's starting point: `target`'s embedding, first `layers`
    /// blocks and final norm, on `device` (an autodiff device to train),
    /// the embedding frozen.
    ///
    /// # Errors
    /// [`LlamaError::Config`] for `layers` outside `1..=n_layers`; as
    /// [`LlamaModule::from_model`].
    pub fn draft_from(
        target: &LlamaModel,
        layers: usize,
        device: &burn::tensor::Device,
    ) -> LlamaResult<Self> {
        let mut draft = Self::from_model(target, device)?.first_blocks(layers)?;
        draft.embed = draft.embed.set_require_grad(false);
        Ok(draft)
    }

    /// Writes the module's weights to `path` (burn's native format),
    /// creating parent folders.
    ///
    /// # Errors
    /// [`LlamaError::Checkpoint`] on I/O failure.
    pub fn save(&self, path: impl AsRef<Path>) -> LlamaResult<()> {
        let path = path.as_ref();
        save_module(self, path).map_err(|e| fail(path, e))
    }

    /// Loads a draft saved by [`LlamaModule::save`] after
    /// [`distill_draft`]: the skeleton is `target`'s first `layers` blocks
    /// ([`LlamaModule::draft_from`]), whose every weight the file replaces.
    ///
    /// # Errors
    /// [`LlamaError::Checkpoint`] for a missing, oversized, malformed or
    /// truncated file, or one whose weights do not fit the skeleton.
    pub fn load_draft(
        target: &LlamaModel,
        layers: usize,
        path: impl AsRef<Path>,
        device: &burn::tensor::Device,
    ) -> LlamaResult<Self> {
        let path = path.as_ref();
        let skeleton = Self::draft_from(target, layers, device)?;
        load_module(skeleton, path, MAX_DRAFT_BYTES).map_err(|e| fail(path, e))
    }
}

/// Distils `draft` (from [`LlamaModule::draft_from`], on an autodiff
/// device) from `target` on windows of `tokens`: `config.steps` AdamW steps
/// (gradient norm clipped at 1, `config`'s warm-up and cosine schedule) on
/// `config.batch` windows of `config.context` tokens each, minimising
/// `KL(p_target ‖ q_draft)` averaged over positions. Calls
/// `on_step(step, kl)` after each step.
///
/// # Errors
/// As [`TrainConfig::check`] (as [`LlamaError::Config`]);
/// [`LlamaError::Config`] for vocabularies that differ, or `tokens` not
/// longer than one window; the models' forward errors.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_models::TrainConfig;
/// use lastmile_models::llama::{LlamaConfig, LlamaModule, WeightStorage, distill_draft};
/// let d = Device::flex();
/// let config = LlamaConfig { n_layers: 3, ..LlamaConfig::tiny() };
/// let target = config.init_random(1, WeightStorage::F32, &d)?;
/// let draft = LlamaModule::draft_from(&target, 1, &d.clone().autodiff())?;
/// let tokens: Vec<usize> = (0..400).map(|i| (i * 7 + i / 5) % 64).collect();
/// let mut kl = Vec::new();
/// let cfg = TrainConfig { lr: 1e-2, ..TrainConfig::new(20, 4, 16) };
/// let draft = distill_draft(draft, &target, &tokens, &cfg, |_, l| kl.push(l))?;
/// assert!(kl[19] < kl[0]);
/// # }
/// # Ok::<(), lastmile_models::llama::LlamaError>(())
/// ```
pub fn distill_draft(
    mut draft: LlamaModule,
    target: &LlamaModel,
    tokens: &[usize],
    config: &TrainConfig,
    mut on_step: impl FnMut(usize, f32),
) -> LlamaResult<LlamaModule> {
    config.check().map_err(|e| LlamaError::Config {
        field: "train config",
        value: format!("{config:?}"),
        expected: e.to_string(),
    })?;
    let vocab = target.config().vocab_size;
    if draft.config().vocab_size != vocab {
        return Err(LlamaError::Config {
            field: "vocab_size",
            value: draft.config().vocab_size.to_string(),
            expected: format!("the target's {vocab}"),
        });
    }
    let (b, n) = (config.batch, config.context);
    if tokens.len() <= n {
        return Err(LlamaError::Config {
            field: "tokens",
            value: format!("{} tokens", tokens.len()),
            expected: format!("more than one window of {n}"),
        });
    }
    let device = draft.embed.val().device();
    let mut optim = AdamWConfig::new()
        .with_grad_clipping(Some(GradientClippingConfig::Norm(1.0)))
        .init();
    let mut rng = StdRng::seed_from_u64(config.seed);
    for step in 0..config.steps {
        let windows: Vec<Vec<usize>> = (0..b)
            .map(|_| {
                let start = rng.random_range(0..tokens.len() - n);
                tokens[start..start + n].to_vec()
            })
            .collect();
        let mut cache = target.new_cache(b)?;
        let log_p = log_softmax(target.forward_cached(&mut cache, &windows)?, 2);
        // The target's distribution is a constant of the draft's graph.
        let log_p = Tensor::<3>::from_data(log_p.into_data(), &device);
        let log_q = log_softmax(draft.forward(&windows)?, 2);
        let kl = (log_p.clone().exp() * (log_p - log_q)).sum_dim(2).mean();
        let value = kl.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(kl.backward(), &draft);
        draft = optim.step(config.lr_at(step), draft, grads);
        on_step(step, value);
    }
    Ok(draft)
}
