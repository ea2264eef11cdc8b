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
use burn::module::Param;
use burn::nn::Linear;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Int, Tensor, TensorData};
use lastmile_core::convert::tensor_to_vec;
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

    /// A draft whose head covers `tokens` only (strictly increasing ids,
    /// e.g. from [`likely_tokens`]): `target`'s embedding (frozen), first
    /// `layers` blocks and final norm, and an untied head whose rows start
    /// as the target's head rows of those tokens, trainable. Its step
    /// reads `tokens.len()` head rows instead of the whole vocabulary's
    /// (SmolLM2: 8 192 instead of 49 152 rows of 576); it never proposes
    /// another token ([`super::OUTSIDE_HEAD_LOGIT`]), which exact
    /// speculative sampling allows (such tokens are then drawn from the
    /// target's residual distribution).
    ///
    /// # Errors
    /// As [`LlamaModule::draft_from`]; [`LlamaError::Config`] for an
    /// empty, unordered or out-of-range `tokens`.
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::Device;
    /// use lastmile_models::llama::{LlamaConfig, LlamaModule, OUTSIDE_HEAD_LOGIT, WeightStorage};
    /// let d = Device::flex();
    /// let target = LlamaConfig { n_layers: 2, ..LlamaConfig::tiny() }.init_random(1, WeightStorage::F32, &d)?;
    /// let draft = LlamaModule::draft_with_vocab(&target, 1, &[2, 3, 5, 7], &d)?.to_model(WeightStorage::F32, &d)?;
    /// assert_eq!(draft.head_tokens(), Some(&[2, 3, 5, 7][..]));
    /// let mut cache = draft.new_cache(1)?;
    /// let logits = draft.forward_cached(&mut cache, &[vec![1, 2]])?.into_data().to_vec::<f32>().unwrap_or_default();
    /// assert_eq!(logits[4], OUTSIDE_HEAD_LOGIT); // token 4 is not in the head
    /// # }
    /// # Ok::<(), lastmile_models::llama::LlamaError>(())
    /// ```
    pub fn draft_with_vocab(
        target: &LlamaModel,
        layers: usize,
        tokens: &[usize],
        device: &burn::tensor::Device,
    ) -> LlamaResult<Self> {
        super::vocab::check(tokens, target.config().vocab_size)?;
        let mut draft = Self::draft_from(target, layers, device)?;
        let index: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let index = Tensor::<1, Int>::from_data(TensorData::new(index, [tokens.len()]), device);
        // [vocab, d] rows → the head's [d, rows] Linear weight.
        let rows = target.head.to_in_out(device).transpose().select(0, index);
        draft.head = Some(Linear {
            weight: Param::from_tensor(rows.transpose()),
            bias: None,
        });
        let ids: Vec<f32> = tokens.iter().map(|&t| t as f32).collect();
        draft.head_vocab = Some(
            Param::from_tensor(Tensor::<1>::from_data(
                TensorData::new(ids, [tokens.len()]),
                device,
            ))
            .set_require_grad(false),
        );
        draft.config.tied_embeddings = false;
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
    /// ([`LlamaModule::draft_from`]), or with `head_rows = Some(r)` those
    /// and a head over `r` tokens ([`LlamaModule::draft_with_vocab`]);
    /// the file replaces every weight, and the head's token ids.
    ///
    /// # Errors
    /// [`LlamaError::Checkpoint`] for a missing, oversized, malformed or
    /// truncated file, one whose weights do not fit the skeleton, or head
    /// token ids that are not a valid list
    /// ([`LlamaModule::head_tokens`]); [`LlamaError::Config`] for
    /// `head_rows` of 0 or above the vocabulary size.
    pub fn load_draft(
        target: &LlamaModel,
        layers: usize,
        head_rows: Option<usize>,
        path: impl AsRef<Path>,
        device: &burn::tensor::Device,
    ) -> LlamaResult<Self> {
        let path = path.as_ref();
        let skeleton = match head_rows {
            None => Self::draft_from(target, layers, device)?,
            Some(r) => Self::draft_with_vocab(target, layers, &(0..r).collect::<Vec<_>>(), device)?,
        };
        let draft = load_module(skeleton, path, MAX_DRAFT_BYTES).map_err(|e| fail(path, e))?;
        draft.head_tokens().map_err(|e| fail(path, e.to_string()))?;
        Ok(draft)
    }
}

/// The `count` tokens to which `target` gives the most probability mass,
/// summed over every position of `windows`: the vocabulary of a draft head
/// ([`LlamaModule::draft_with_vocab`]) that covers what the target says on
/// text like `windows`. Sorted by id.
///
/// # Errors
/// [`LlamaError::Config`] for `count` of 0 or above the vocabulary size,
/// or no windows; the target's forward errors.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_models::llama::{LlamaConfig, WeightStorage, likely_tokens};
/// let target = LlamaConfig::tiny().init_random(1, WeightStorage::F32, &Device::flex())?;
/// let ids = likely_tokens(&target, &[vec![1, 2, 3], vec![4, 5, 6]], 16)?;
/// assert_eq!(ids.len(), 16);
/// assert!(ids.windows(2).all(|w| w[0] < w[1]));
/// # }
/// # Ok::<(), lastmile_models::llama::LlamaError>(())
/// ```
pub fn likely_tokens(
    target: &LlamaModel,
    windows: &[Vec<usize>],
    count: usize,
) -> LlamaResult<Vec<usize>> {
    let vocab = target.config().vocab_size;
    if count == 0 || count > vocab || windows.is_empty() {
        return Err(LlamaError::Config {
            field: "likely_tokens",
            value: format!("count {count}, {} windows", windows.len()),
            expected: format!("a count in 1..={vocab} and at least one window"),
        });
    }
    let mut mass = vec![0.0f64; vocab];
    for w in windows {
        let mut cache = target.new_cache(1)?;
        let logits = target.forward_cached(&mut cache, std::slice::from_ref(w))?;
        let p = softmax(logits, 2).sum_dim(1);
        for (m, v) in mass.iter_mut().zip(tensor_to_vec(p)?) {
            *m += f64::from(v);
        }
    }
    let mut order: Vec<usize> = (0..vocab).collect();
    order.sort_by(|a, b| mass[*b].total_cmp(&mass[*a]).then(a.cmp(b)));
    order.truncate(count);
    order.sort_unstable();
    Ok(order)
}

/// Distils `draft` (from [`LlamaModule::draft_from`] or
/// [`LlamaModule::draft_with_vocab`], on an autodiff device) from `target`
/// on windows of the token streams `texts` (each window from a stream drawn
/// uniformly, at a uniform offset: e.g. a corpus and text the target
/// generated, weighted equally whatever their lengths): `config.steps`
/// AdamW steps (gradient norm clipped at 1, `config`'s warm-up and cosine
/// schedule) on `config.batch` windows of `config.context` tokens each,
/// minimising
/// `KL(p_target ‖ q_draft)` averaged over positions — for a head over a
/// token list `S`, to the target's distribution restricted to `S`,
/// `p(x)/p(S)`. Calls `on_step(step, kl)` after each step.
///
/// # Errors
/// As [`TrainConfig::check`] (as [`LlamaError::Config`]);
/// [`LlamaError::Config`] for vocabularies that differ, no streams, or a
/// stream not longer than one window; the models' forward errors.
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
/// let draft = distill_draft(draft, &target, &[&tokens], &cfg, |_, l| kl.push(l))?;
/// assert!(kl[19] < kl[0]);
/// # }
/// # Ok::<(), lastmile_models::llama::LlamaError>(())
/// ```
pub fn distill_draft(
    mut draft: LlamaModule,
    target: &LlamaModel,
    texts: &[&[usize]],
    config: &TrainConfig,
    mut on_step: impl FnMut(usize, f32),
) -> LlamaResult<LlamaModule> {
    let vocab = target.config().vocab_size;
    if draft.config().vocab_size != vocab {
        return Err(LlamaError::Config {
            field: "vocab_size",
            value: draft.config().vocab_size.to_string(),
            expected: format!("the target's {vocab}"),
        });
    }
    let mut windows = TrainingWindows::new(texts, config)?;
    let device = draft.embed.val().device();
    // A head over part of the vocabulary learns the target's distribution
    // restricted to its tokens and renormalised: `p_S(x) = p(x) / p(S)`.
    let restrict = draft
        .head_tokens()?
        .map(|ids| index_tensor(&ids, &target.device()));
    let mut optim = AdamWConfig::new()
        .with_grad_clipping(Some(GradientClippingConfig::Norm(1.0)))
        .init();
    for step in 0..config.steps {
        let windows = windows.next();
        let mut cache = target.new_cache(windows.len())?;
        let mut logits = target.forward_cached(&mut cache, &windows)?;
        if let Some(ids) = &restrict {
            logits = logits.select(2, ids.clone());
        }
        let log_p = log_softmax(logits, 2);
        // The target's distribution is a constant of the draft's graph.
        let log_p = Tensor::<3>::from_data(log_p.into_data(), &device);
        let log_q = log_softmax(draft.head_logits(&windows)?, 2);
        let kl = (log_p.clone().exp() * (log_p - log_q)).sum_dim(2).mean();
        let value = kl.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(kl.backward(), &draft);
        draft = optim.step(config.lr_at(step), draft, grads);
        on_step(step, value);
    }
    Ok(draft)
}

/// The checks and the window sampler shared by the draft trainers: `batch`
/// windows of `context` tokens per step, each from a stream drawn
/// uniformly, at a uniform offset.
pub(super) struct TrainingWindows<'t> {
    texts: &'t [&'t [usize]],
    batch: usize,
    len: usize,
    rng: StdRng,
}

impl<'t> TrainingWindows<'t> {
    /// Checks `config` ([`TrainConfig::check`]) and that every stream is
    /// longer than one window.
    pub(super) fn new(texts: &'t [&'t [usize]], config: &TrainConfig) -> LlamaResult<Self> {
        config.check().map_err(|e| LlamaError::Config {
            field: "train config",
            value: format!("{config:?}"),
            expected: e.to_string(),
        })?;
        let n = config.context;
        let shortest = texts.iter().map(|t| t.len()).min().unwrap_or(0);
        if shortest <= n {
            return Err(LlamaError::Config {
                field: "texts",
                value: format!("{} streams, the shortest of {shortest} tokens", texts.len()),
                expected: format!("at least one stream, each longer than one window of {n}"),
            });
        }
        Ok(Self {
            texts,
            batch: config.batch,
            len: n,
            rng: StdRng::seed_from_u64(config.seed),
        })
    }

    /// The next step's windows.
    pub(super) fn next(&mut self) -> Vec<Vec<usize>> {
        (0..self.batch)
            .map(|_| {
                let tokens = self.texts[self.rng.random_range(0..self.texts.len())];
                let start = self.rng.random_range(0..tokens.len() - self.len);
                tokens[start..start + self.len].to_vec()
            })
            .collect()
    }
}

/// Token ids as an index tensor on `device`.
pub(super) fn index_tensor(ids: &[usize], device: &burn::tensor::Device) -> Tensor<1, Int> {
    let values: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    Tensor::<1, Int>::from_data(TensorData::new(values, [ids.len()]), device)
}
