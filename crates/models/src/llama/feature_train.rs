//! Training a feature-level draft ([`super::LlamaFeatureDraft`]) from its
//! target: the trainable module, EAGLE's loss, saving and loading.

use std::path::Path;

use burn::grad_clipping::GradientClippingConfig;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use lastmile_core::convert::tensor_to_vec;

use super::distill::{TrainingWindows, index_tensor};
use super::error::{LlamaError, LlamaResult};
use super::feature_draft::LlamaFeatureDraft;
use super::model::LlamaModel;
use super::module::LlamaModule;
use super::storage::{Matrix, WeightStorage};
use crate::checkpoint::{load_module, save_module};
use crate::train::TrainConfig;

/// The loss of [`train_feature_draft`]: EAGLE's (§3.2) by default.
///
/// ```
/// use lastmile_models::llama::FeatureLossConfig;
/// let c = FeatureLossConfig::default();
/// assert_eq!((c.token_weight, c.noise, c.unroll), (0.1, 0.1, 1));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FeatureLossConfig {
    /// Weight of the token loss against the feature loss, EAGLE's `w_cls`
    /// (0.1).
    pub token_weight: f32,
    /// Half-width of the uniform noise added to the target's features, so
    /// that the draft learns to read imperfect features, as it must when
    /// it reads its own predictions (EAGLE: `U(−0.1, 0.1)`).
    pub noise: f64,
    /// Drafting steps the training forward is unrolled over
    /// ([`LlamaFeatureDraftModule::forward_unrolled`]: EAGLE-3's
    /// training-time test); 1 trains on the target's features only, as
    /// EAGLE-1.
    pub unroll: usize,
}

impl Default for FeatureLossConfig {
    fn default() -> Self {
        Self {
            token_weight: 0.1,
            noise: 0.1,
            unroll: 1,
        }
    }
}

/// A feature-level draft as a trainable burn module (see
/// [`super::LlamaFeatureDraft`] for the network): the fusion map `fc`
/// (`2d → d`, weight `[in, out]`) and a [`LlamaModule`] holding the
/// target's embedding (frozen), the draft's blocks, the norm of their
/// output, and the target's head (frozen; over part of the vocabulary with
/// `head_vocab`).
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_models::llama::{LlamaConfig, LlamaFeatureDraftModule, WeightStorage};
/// let d = Device::flex();
/// let target = LlamaConfig::tiny().init_random(1, WeightStorage::F32, &d)?;
/// let module = LlamaFeatureDraftModule::new(&target, 1, Some(&[1, 2, 3]), &d)?;
/// let width = target.config().d_model;
/// let (logits, predicted) = module.forward(&[vec![5, 6]], Tensor::zeros([1, 2, width], &d))?;
/// assert_eq!((logits.dims(), predicted.dims()), ([1, 2, 3], [1, 2, width])); // 3 head rows
/// # }
/// # Ok::<(), lastmile_models::llama::LlamaError>(())
/// ```
#[derive(Module, Debug)]
pub struct LlamaFeatureDraftModule {
    /// The fusion map `[e_j ; f_{j-1}] → g_j`.
    pub fc: Linear,
    /// Embedding, blocks, output norm and head.
    pub lm: LlamaModule,
}

impl LlamaFeatureDraftModule {
    /// A draft for `target` with `layers` blocks, on `device` (an autodiff
    /// device to train), and a head over `head_tokens` (strictly
    /// increasing ids) or the whole vocabulary. It starts from the target:
    /// the blocks are copies of its last `layers` blocks, the output norm is
    /// its final norm, and the fusion map passes the feature through
    /// (`g_j = f_{j-1}`), so the untrained draft applies the target's last
    /// blocks once more to the previous position's feature. The embedding
    /// and the head are the target's, frozen.
    ///
    /// # Errors
    /// [`LlamaError::Config`] for `layers` outside `1..=n_layers` or an
    /// invalid token list; as [`LlamaModule::from_model`].
    pub fn new(
        target: &LlamaModel,
        layers: usize,
        head_tokens: Option<&[usize]>,
        device: &Device,
    ) -> LlamaResult<Self> {
        let n = target.config().n_layers;
        if layers == 0 || layers > n {
            return Err(LlamaError::Config {
                field: "layers",
                value: layers.to_string(),
                expected: format!("1..={n} blocks"),
            });
        }
        let mut lm = match head_tokens {
            Some(ids) => LlamaModule::draft_with_vocab(target, n, ids, device)?,
            None => LlamaModule::draft_from(target, n, device)?,
        };
        lm.blocks.drain(..n - layers);
        lm.config.n_layers = layers;
        lm.head = lm.head.map(|h| Linear {
            weight: h.weight.set_require_grad(false),
            bias: None,
        });
        let d = target.config().d_model;
        let mut w = vec![0.0f32; 2 * d * d];
        for i in 0..d {
            w[(d + i) * d + i] = 1.0; // [in, out]: feature input d + i → output i
        }
        let fc = Linear {
            weight: Param::from_tensor(Tensor::from_data(TensorData::new(w, [2 * d, d]), device)),
            bias: None,
        };
        Ok(Self { fc, lm })
    }

    /// The training forward over whole windows (each row from position 0):
    /// `tokens` `[b][n]` and the features before them `[b, n, d]`; returns
    /// the head's logits `[b, n, head rows]` and the predicted features
    /// `[b, n, d]`.
    ///
    /// # Errors
    /// As [`LlamaModule::forward`]; [`LlamaError::Core`] for `features` of
    /// another shape.
    pub fn forward(
        &self,
        tokens: &[Vec<usize>],
        features: Tensor<3>,
    ) -> LlamaResult<(Tensor<3>, Tensor<3>)> {
        let mut steps = self.forward_unrolled(tokens, features, 1)?;
        steps.pop().ok_or_else(|| LlamaError::Config {
            field: "unrolled steps",
            value: "0 outputs".to_owned(),
            expected: "one step's outputs".to_owned(),
        })
    }

    /// The fast inference form, its matrices stored as `storage` on
    /// `device`.
    ///
    /// # Errors
    /// As [`LlamaModule::to_model`].
    pub fn to_draft(
        &self,
        storage: WeightStorage,
        device: &Device,
    ) -> LlamaResult<LlamaFeatureDraft> {
        let model = self.lm.to_model(storage, device)?;
        let w = self.fc.weight.val().inner().transpose(); // [out, in]
        let [out, inp] = w.dims();
        let fc = Matrix::from_out_in(&tensor_to_vec(w)?, out, inp, storage, device)?;
        Ok(LlamaFeatureDraft { fc, model })
    }

    /// Writes the module's weights to `path` (burn's native format).
    ///
    /// # Errors
    /// [`LlamaError::Checkpoint`] on I/O failure.
    pub fn save(&self, path: impl AsRef<Path>) -> LlamaResult<()> {
        let path = path.as_ref();
        save_module(self, path).map_err(|e| LlamaError::Checkpoint {
            path: path.display().to_string(),
            reason: e,
        })
    }

    /// Loads a draft saved by [`LlamaFeatureDraftModule::save`]: the
    /// skeleton is [`LlamaFeatureDraftModule::new`] with `layers` blocks
    /// and a head of `head_rows` tokens (`None`: the whole vocabulary);
    /// the file replaces every weight and the head's token ids.
    ///
    /// # Errors
    /// [`LlamaError::Checkpoint`] for a missing, oversized
    /// ([`super::MAX_DRAFT_BYTES`]), malformed or truncated file, weights
    /// that do not fit the skeleton, or invalid head token ids;
    /// [`LlamaError::Config`] for `layers` or `head_rows` out of range.
    pub fn load(
        target: &LlamaModel,
        layers: usize,
        head_rows: Option<usize>,
        path: impl AsRef<Path>,
        device: &Device,
    ) -> LlamaResult<Self> {
        let path = path.as_ref();
        let fail = |reason: String| LlamaError::Checkpoint {
            path: path.display().to_string(),
            reason,
        };
        let ids: Option<Vec<usize>> = head_rows.map(|r| (0..r).collect());
        let skeleton = Self::new(target, layers, ids.as_deref(), device)?;
        let draft = load_module(skeleton, path, super::MAX_DRAFT_BYTES).map_err(fail)?;
        draft.lm.head_tokens().map_err(|e| fail(e.to_string()))?;
        Ok(draft)
    }
}

/// The terms of a feature draft's training loss at one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FeatureLoss {
    /// Smooth-L1 distance between predicted and target features (mean
    /// over elements), reading the target's features.
    pub feature: f32,
    /// `KL(p_target ‖ q_draft)` of the next token, averaged over positions
    /// (the cross-entropy EAGLE minimises, less the target's entropy),
    /// reading the target's features.
    pub token: f32,
    /// The token KL of the unrolled steps, which read the draft's own
    /// predictions, averaged over them (`None` without unrolling).
    pub unrolled_token: Option<f32>,
}

/// Smooth L1 (Huber with threshold 1): `x²/2` for `|x| < 1`, `|x| − 1/2`
/// beyond, elementwise, averaged.
fn smooth_l1(diff: Tensor<3>) -> Tensor<1> {
    let a = diff.abs();
    let inner = a.clone().clamp_max(1.0);
    (inner.clone().powf_scalar(2.0) * 0.5 + (a - inner)).mean()
}

/// Trains `draft` (from [`LlamaFeatureDraftModule::new`], on an autodiff
/// device) to predict `target`'s features and next-token distribution on
/// windows of the token streams `texts` (each window from a stream drawn
/// uniformly, at a uniform offset): `config.steps` AdamW steps (gradient
/// norm clipped at 1, `config`'s warm-up and cosine schedule) on
/// `config.batch` windows of `config.context` tokens. At position `j` the
/// draft reads token `x_j` and the target's feature `f_{j-1}` (zeros at the
/// window's start) plus uniform noise (`loss.noise`), and minimises
/// EAGLE's loss (§3.2)
/// `L = SmoothL1(f̂_j, f_j) + w_cls · CE(p_{j+1}, q̂_{j+1})`, with
/// `w_cls = loss.token_weight`, `p` the target's next-token
/// distribution (restricted to the head's tokens and renormalised for a
/// head over part of the vocabulary) and `q̂` the head applied to `f̂_j`.
/// With `loss.unroll = s > 1` the forward is unrolled over `s` drafting
/// steps ([`LlamaFeatureDraftModule::forward_unrolled`], EAGLE-3's
/// training-time test) and `L` is averaged over them, each step's
/// prediction at `j` compared with the same `f_j` and `p_{j+1}`.
/// Calls `on_step(step, loss)` after each step.
///
/// # Errors
/// As [`TrainConfig::check`] (as [`LlamaError::Config`]);
/// [`LlamaError::Config`] for another vocabulary or width, no streams, a
/// stream not longer than one window, a negative or non-finite weight
/// or noise, or `unroll` outside `1..=`[`super::MAX_UNROLL`]; the models'
/// forward errors.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_models::TrainConfig;
/// use lastmile_models::llama::{
///     FeatureLossConfig, LlamaConfig, LlamaFeatureDraftModule, WeightStorage, train_feature_draft,
/// };
/// let d = Device::flex();
/// let target = LlamaConfig { n_layers: 2, ..LlamaConfig::tiny() }.init_random(1, WeightStorage::F32, &d)?;
/// let draft = LlamaFeatureDraftModule::new(&target, 1, None, &d.clone().autodiff())?;
/// let tokens: Vec<usize> = (0..400).map(|i| (i * 7 + i / 5) % 64).collect();
/// let mut losses = Vec::new();
/// let cfg = TrainConfig { lr: 1e-2, ..TrainConfig::new(20, 4, 16) };
/// let loss = FeatureLossConfig::default();
/// train_feature_draft(draft, &target, &[&tokens], &cfg, &loss, |_, l| losses.push(l.token))?;
/// assert!(losses[19] < losses[0]);
/// # }
/// # Ok::<(), lastmile_models::llama::LlamaError>(())
/// ```
pub fn train_feature_draft(
    mut draft: LlamaFeatureDraftModule,
    target: &LlamaModel,
    texts: &[&[usize]],
    config: &TrainConfig,
    loss_config: &FeatureLossConfig,
    mut on_step: impl FnMut(usize, FeatureLoss),
) -> LlamaResult<LlamaFeatureDraftModule> {
    let FeatureLossConfig {
        token_weight,
        noise,
        unroll,
    } = *loss_config;
    if !(token_weight.is_finite()
        && token_weight >= 0.0
        && noise.is_finite()
        && noise >= 0.0
        && (1..=super::MAX_UNROLL).contains(&unroll))
    {
        return Err(LlamaError::Config {
            field: "feature loss",
            value: format!("{loss_config:?}"),
            expected: format!(
                "a finite, non-negative token weight and noise, and 1..={} unrolled steps",
                super::MAX_UNROLL
            ),
        });
    }
    let (tc, dc) = (target.config(), draft.lm.config());
    if (tc.vocab_size, tc.d_model) != (dc.vocab_size, dc.d_model) {
        return Err(LlamaError::Config {
            field: "feature draft",
            value: format!("vocabulary {}, width {}", dc.vocab_size, dc.d_model),
            expected: format!("the target's {} and {}", tc.vocab_size, tc.d_model),
        });
    }
    let (b, n, d) = (config.batch, config.context, tc.d_model);
    let mut windows = TrainingWindows::new(texts, config)?;
    let device = draft.lm.embed.val().device();
    let restrict = draft
        .lm
        .head_tokens()?
        .map(|ids| index_tensor(&ids, &target.device()));
    let mut optim = AdamWConfig::new()
        .with_grad_clipping(Some(GradientClippingConfig::Norm(1.0)))
        .init();
    for step in 0..config.steps {
        let windows = windows.next();
        let mut cache = target.new_cache(b)?;
        let (mut logits, features) = target.forward_features(&mut cache, &windows)?;
        if let Some(ids) = &restrict {
            logits = logits.select(2, ids.clone());
        }
        // The target's side is a constant of the draft's graph.
        let log_p = Tensor::<3>::from_data(log_softmax(logits, 2).into_data(), &device);
        let f = Tensor::<3>::from_data(features.into_data(), &device);
        let before = Tensor::cat(
            vec![
                Tensor::zeros([b, 1, d], &device),
                f.clone().slice([0..b, 0..n - 1, 0..d]),
            ],
            1,
        );
        let jitter = Tensor::random([b, n, d], Distribution::Uniform(-noise, noise), &device);
        let steps = draft.forward_unrolled(&windows, before + jitter, unroll)?;
        let mut terms = Vec::with_capacity(2 * unroll);
        for (logits_hat, f_hat) in steps {
            let log_q = log_softmax(logits_hat, 2);
            terms.push(smooth_l1(f_hat - f.clone()));
            terms.push(
                (log_p.clone().exp() * (log_p.clone() - log_q))
                    .sum_dim(2)
                    .mean(),
            );
        }
        let terms = Tensor::cat(terms, 0).reshape([unroll, 2]);
        let weights =
            Tensor::<2>::from_data(TensorData::new(vec![1.0, token_weight], [1, 2]), &device);
        let loss = (terms.clone() * weights).sum() / unroll as f32;
        let values = tensor_to_vec(terms)?;
        let grads = GradientsParams::from_grads(loss.backward(), &draft);
        draft = optim.step(config.lr_at(step), draft, grads);
        let unrolled = values.chunks(2).skip(1).map(|v| v[1]);
        on_step(
            step,
            FeatureLoss {
                feature: values[0],
                token: values[1],
                unrolled_token: (unroll > 1).then(|| unrolled.sum::<f32>() / (unroll - 1) as f32),
            },
        );
    }
    Ok(draft)
}
