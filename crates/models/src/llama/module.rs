//! The Llama model as a burn [`Module`]: the same network as
//! [`LlamaModel`], its projections held as `burn::nn::Linear` layers, for
//! fine-tuning with autodiff and for adapters (`lastmile-adapters`'
//! `AdaptedModel` finds its layers by module path, e.g. `blocks.*.q`).
//!
//! [`LlamaModel`] stays the model to decode with: its panel matrices and KV
//! cache are laid out for one-token steps, which a training graph does not
//! need. [`LlamaModule::from_model`] and [`LlamaModule::to_model`] move the
//! weights between the two; both compute with the same block code, so the
//! two agree to rounding (`tests/it/llama_module.rs`).

use std::sync::Arc;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor, TensorData};
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::lm::LmError;

use super::block::{Block, BlockWeights, Proj, causal_mask, scaled};
use super::config::LlamaConfig;
use super::error::{LlamaError, LlamaResult};
use super::model::LlamaModel;
use super::norm::RmsNorm;
use super::rope::{Rope, RopeAt};
use super::storage::{Matrix, WeightStorage};

/// One Llama block as a burn module. Parameter paths (under
/// `blocks.<i>.`): `attn_norm`, `q`, `k`, `v`, `o` (attention),
/// `ffn_norm`, `gate`, `up`, `down` (SwiGLU); the projections are
/// `Linear` layers without bias, weights `[in, out]`.
#[derive(Module, Debug)]
pub struct LlamaBlock {
    /// RMSNorm gain before attention, `[d]`.
    pub attn_norm: Param<Tensor<1>>,
    /// Query projection, `d → n_heads·dh`.
    pub q: Linear,
    /// Key projection, `d → n_kv_heads·dh`.
    pub k: Linear,
    /// Value projection, `d → n_kv_heads·dh`.
    pub v: Linear,
    /// Qwen3's RMSNorm gain of each query head, `[dh]` (none elsewhere).
    pub q_norm: Option<Param<Tensor<1>>>,
    /// Qwen3's RMSNorm gain of each key head, `[dh]` (none elsewhere).
    pub k_norm: Option<Param<Tensor<1>>>,
    /// Attention output projection, `n_heads·dh → d`.
    pub o: Linear,
    /// RMSNorm gain before the feed-forward network, `[d]`.
    pub ffn_norm: Param<Tensor<1>>,
    /// SwiGLU gate projection, `d → d_ff`.
    pub gate: Linear,
    /// SwiGLU up projection, `d → d_ff`.
    pub up: Linear,
    /// SwiGLU down projection, `d_ff → d`.
    pub down: Linear,
    #[module(skip)]
    eps: f32,
}

impl BlockWeights for LlamaBlock {
    fn attn_norm(&self, x: Tensor<3>) -> Tensor<3> {
        RmsNorm::new(self.attn_norm.val(), self.eps).forward(x)
    }

    fn ffn_norm(&self, x: Tensor<3>) -> Tensor<3> {
        RmsNorm::new(self.ffn_norm.val(), self.eps).forward(x)
    }

    fn head_norm(&self, p: Proj) -> Option<RmsNorm> {
        let gain = match p {
            Proj::Q => self.q_norm.as_ref(),
            Proj::K => self.k_norm.as_ref(),
            _ => None,
        };
        gain.map(|g| RmsNorm::new(g.val(), self.eps))
    }

    fn project(&self, p: Proj, x: Tensor<3>) -> LlamaResult<Tensor<3>> {
        Ok(match p {
            Proj::Q => &self.q,
            Proj::K => &self.k,
            Proj::V => &self.v,
            Proj::O => &self.o,
            Proj::Gate => &self.gate,
            Proj::Up => &self.up,
            Proj::Down => &self.down,
        }
        .forward(x))
    }
}

/// A Llama-family model as a burn module, for training (full sequences, no
/// cache). Parameter paths: `embed` (`[vocab, d]`, also the output head
/// when the checkpoint ties them), `blocks.<i>.…` ([`LlamaBlock`]), `norm`
/// (the final RMSNorm gain), and `head` (an untied output projection).
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_core::lm::LanguageModel;
/// use lastmile_models::llama::{LlamaConfig, LlamaModule, WeightStorage};
///
/// let device = Device::flex();
/// let model = LlamaConfig::tiny().init_random(3, WeightStorage::F32, &device)?;
/// let module = LlamaModule::from_model(&model, &device.clone().autodiff())?;
/// let logits = module.forward(&[vec![1, 2, 3, 4]])?; // [1, 4, vocab], differentiable
/// let mut cache = model.new_cache(1)?;
/// let cached = model.forward_cached(&mut cache, &[vec![1, 2, 3, 4]])?;
/// let diff = (logits.inner() - cached).abs().max().into_scalar::<f32>();
/// assert!(diff < 1e-4);
/// # }
/// # Ok::<(), lastmile_models::llama::LlamaError>(())
/// ```
#[derive(Module, Debug)]
pub struct LlamaModule {
    /// Token embeddings, `[vocab, d]`.
    pub embed: Param<Tensor<2>>,
    /// The blocks, in order.
    pub blocks: Vec<LlamaBlock>,
    /// Final RMSNorm gain, `[d]`.
    pub norm: Param<Tensor<1>>,
    /// The output projection when it is not tied to `embed`.
    pub head: Option<Linear>,
    /// For a head over part of the vocabulary
    /// ([`LlamaModule::draft_with_vocab`]): the token id of each of
    /// `head`'s outputs, `[rows]`, frozen. Stored as f32 values (exact for
    /// ids below 2²⁴) so that they travel in the same checkpoint file.
    pub head_vocab: Option<Param<Tensor<1>>>,
    #[module(skip)]
    pub(super) config: LlamaConfig,
}

impl LlamaModule {
    /// The weights of `model`, as `f32` on `device` (e.g. an autodiff
    /// device to train).
    ///
    /// # Errors
    /// [`LlamaError::Storage`] when `device` cannot hold `f32` tensors.
    pub fn from_model(model: &LlamaModel, device: &Device) -> LlamaResult<Self> {
        if !device.supports_dtype(WeightStorage::F32.dtype()) {
            return Err(LlamaError::Storage {
                storage: "F32".into(),
                device: format!("{device:?}"),
            });
        }
        let config = model.config.clone();
        let eps = config.rms_eps;
        let onto = |t: Tensor<2>| Tensor::<2>::from_data(t.into_data(), device);
        let linear = |m: &Matrix| Linear {
            weight: Param::from_tensor(onto(m.to_in_out(device))),
            bias: m.bias().map(|b| {
                Param::from_tensor(Tensor::<1>::from_data(
                    TensorData::new(b.to_vec(), [b.len()]),
                    device,
                ))
            }),
        };
        let gain =
            |n: &RmsNorm| Param::from_tensor(Tensor::<1>::from_data(n.gain().into_data(), device));
        let blocks = model
            .blocks
            .iter()
            .map(|b: &Block| LlamaBlock {
                attn_norm: gain(&b.attn_norm),
                q: linear(&b.q),
                k: linear(&b.k),
                v: linear(&b.v),
                q_norm: b.q_norm.as_ref().map(gain),
                k_norm: b.k_norm.as_ref().map(gain),
                o: linear(&b.o),
                ffn_norm: gain(&b.ffn_norm),
                gate: linear(&b.gate),
                up: linear(&b.up),
                down: linear(&b.down),
                eps,
            })
            .collect();
        let head = (!config.tied_embeddings).then(|| linear(&model.head));
        let head_vocab = model.head_tokens.as_ref().map(|ids| {
            let ids: Vec<f32> = ids.iter().map(|&t| t as f32).collect();
            let n = ids.len();
            Param::from_tensor(Tensor::<1>::from_data(TensorData::new(ids, [n]), device))
                .set_require_grad(false)
        });
        Ok(Self {
            embed: Param::from_tensor(onto(model.embed.clone())),
            blocks,
            norm: gain(&model.norm),
            head,
            head_vocab,
            config,
        })
    }

    /// The fast inference model with this module's weights (e.g. after
    /// fine-tuning and merging adapters), stored as `storage` on `device`.
    ///
    /// # Errors
    /// [`LlamaError::Storage`] when `device` cannot hold `storage`;
    /// [`LlamaError::Core`] when a weight cannot be read back to the host.
    pub fn to_model(&self, storage: WeightStorage, device: &Device) -> LlamaResult<LlamaModel> {
        storage.check_device(device)?;
        let host = |t: Tensor<2>| -> LlamaResult<(Vec<f32>, [usize; 2])> {
            let dims = t.dims();
            Ok((tensor_to_vec(t)?, dims))
        };
        // Linear holds [in, out]; the inference model takes [out, in].
        let matrix = |l: &Linear| -> LlamaResult<Matrix> {
            let (w_oi, [out, inp]) = host(l.weight.val().inner().transpose())?;
            let m = Matrix::from_out_in(&w_oi, out, inp, storage, device)?;
            match &l.bias {
                Some(b) => m.with_bias(tensor_to_vec(b.val().inner())?, device),
                None => Ok(m),
            }
        };
        let onto1 =
            |p: &Param<Tensor<1>>| Tensor::<1>::from_data(p.val().inner().into_data(), device);
        let eps = self.config.rms_eps;
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            blocks.push(Block {
                attn_norm: RmsNorm::new(onto1(&b.attn_norm), eps),
                q: matrix(&b.q)?,
                k: matrix(&b.k)?,
                v: matrix(&b.v)?,
                q_norm: b.q_norm.as_ref().map(|g| RmsNorm::new(onto1(g), eps)),
                k_norm: b.k_norm.as_ref().map(|g| RmsNorm::new(onto1(g), eps)),
                o: matrix(&b.o)?,
                ffn_norm: RmsNorm::new(onto1(&b.ffn_norm), eps),
                gate: matrix(&b.gate)?,
                up: matrix(&b.up)?,
                down: matrix(&b.down)?,
            });
        }
        let (embed, [vocab, d]) = host(self.embed.val().inner())?;
        let head = match &self.head {
            Some(h) => matrix(h)?,
            None => Matrix::from_out_in(&embed, vocab, d, storage, device)?,
        };
        let head_tokens = self.head_tokens()?.map(Arc::from);
        let config = self.config.clone();
        Ok(LlamaModel {
            rope: Rope::new(
                config.head_dim(),
                config.max_context,
                config.rope_base,
                &config.rope_freq_factors,
                config.rope_scaling,
                device,
            ),
            embed: Tensor::from_data(TensorData::new(embed, [vocab, d]), device),
            blocks,
            norm: RmsNorm::new(onto1(&self.norm), eps),
            head,
            head_tokens,
            config,
            storage,
            device: device.clone(),
            kv: super::KvPrecision::F32,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The token ids of the head's outputs ([`LlamaModule::head_vocab`]),
    /// `None` for a head over the whole vocabulary.
    ///
    /// # Errors
    /// [`LlamaError::Config`] when they are not whole numbers in a strictly
    /// increasing list below the vocabulary size, or do not match the
    /// head's outputs (e.g. a corrupted checkpoint).
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::Device;
    /// use lastmile_models::llama::{LlamaConfig, LlamaModule, WeightStorage};
    /// let d = Device::flex();
    /// let target = LlamaConfig::tiny().init_random(1, WeightStorage::F32, &d)?;
    /// assert_eq!(LlamaModule::from_model(&target, &d)?.head_tokens()?, None);
    /// let draft = LlamaModule::draft_with_vocab(&target, 1, &[0, 8, 9], &d)?;
    /// assert_eq!(draft.head_tokens()?, Some(vec![0, 8, 9]));
    /// # }
    /// # Ok::<(), lastmile_models::llama::LlamaError>(())
    /// ```
    pub fn head_tokens(&self) -> LlamaResult<Option<Vec<usize>>> {
        let Some(p) = &self.head_vocab else {
            return Ok(None);
        };
        let values = tensor_to_vec(p.val().inner())?;
        let rows = self.head.as_ref().map(|h| h.weight.dims()[1]);
        let whole = values
            .iter()
            .all(|v| v.fract() == 0.0 && *v >= 0.0 && *v < 16_777_216.0);
        if !whole || rows != Some(values.len()) {
            return Err(LlamaError::Config {
                field: "head_vocab",
                value: format!("{} values, head of {rows:?} outputs", values.len()),
                expected: "one whole-number token id per output of an untied head".to_owned(),
            });
        }
        let ids: Vec<usize> = values.iter().map(|&v| v as usize).collect();
        super::vocab::check(&ids, self.config.vocab_size)?;
        Ok(Some(ids))
    }

    /// The model cut after its first `layers` blocks (final norm and head
    /// kept): the early-exit network as a trainable module.
    ///
    /// # Errors
    /// [`LlamaError::Config`] for `layers` outside `1..=n_layers`.
    pub fn first_blocks(mut self, layers: usize) -> LlamaResult<Self> {
        if layers == 0 || layers > self.blocks.len() {
            return Err(LlamaError::Config {
                field: "layers",
                value: layers.to_string(),
                expected: format!("1..={} blocks", self.blocks.len()),
            });
        }
        self.blocks.truncate(layers);
        self.config.n_layers = layers;
        Ok(self)
    }

    /// Next-token logits at every position of each row, `[b, n, vocab]`,
    /// each row starting at position 0 (no cache): the training forward.
    /// With a head over part of the vocabulary, the other tokens' logits
    /// are [`super::OUTSIDE_HEAD_LOGIT`].
    ///
    /// # Errors
    /// [`LmError::Batch`] for no rows, an empty row or rows of different
    /// lengths; [`LmError::TokenOutOfRange`]; [`LmError::ContextOverflow`]
    /// (each as [`LlamaError::Lm`]).
    pub fn forward(&self, tokens: &[Vec<usize>]) -> LlamaResult<Tensor<3>> {
        let logits = self.head_logits(tokens)?;
        Ok(match self.head_tokens()? {
            Some(ids) => super::vocab::expand(logits, &ids, self.config.vocab_size),
            None => logits,
        })
    }

    /// [`LlamaModule::forward`]'s logits over the head's outputs only:
    /// `[b, n, rows]`, the vocabulary or [`LlamaModule::head_tokens`].
    pub(crate) fn head_logits(&self, tokens: &[Vec<usize>]) -> LlamaResult<Tensor<3>> {
        Ok(self.run(self.embed_tokens(tokens)?)?.0)
    }

    /// The embeddings of `tokens`, `[b, n, d]`, after checking that there
    /// are rows, all of one non-zero length within the context, of ids in
    /// the vocabulary.
    pub(crate) fn embed_tokens(&self, tokens: &[Vec<usize>]) -> LlamaResult<Tensor<3>> {
        let n = tokens.first().map_or(0, Vec::len);
        if n == 0 || tokens.iter().any(|t| t.len() != n) {
            return Err(LlamaError::Lm(LmError::Batch {
                what: "token rows".into(),
                expected: "at least one row, all of one non-zero length".into(),
                found: tokens.iter().map(Vec::len).min().unwrap_or(0),
            }));
        }
        let (vocab, max) = (self.config.vocab_size, self.config.max_context);
        for (row, t) in tokens.iter().enumerate() {
            if let Some((position, &token)) = t.iter().enumerate().find(|(_, t)| **t >= vocab) {
                return Err(LlamaError::Lm(LmError::TokenOutOfRange {
                    row,
                    position,
                    token,
                    vocab,
                }));
            }
            if n > max {
                return Err(LlamaError::Lm(LmError::ContextOverflow {
                    row,
                    needed: n,
                    max,
                }));
            }
        }
        let b = tokens.len();
        let device = self.embed.val().device();
        let ids: Vec<i64> = tokens.iter().flatten().map(|&t| t as i64).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [b * n]), &device);
        let e = self
            .embed
            .val()
            .select(0, ids)
            .reshape([b, n, self.config.d_model]);
        Ok(scaled(e, self.config.scales.embedding))
    }

    /// The blocks, final norm and head over the rows `x` (`[b, n, d]`, each
    /// row at positions `0..n`): the head's logits `[b, n, rows]` and the
    /// features (the head's input) `[b, n, d]`.
    pub(crate) fn run(&self, x: Tensor<3>) -> LlamaResult<(Tensor<3>, Tensor<3>)> {
        let [b, n, _] = x.dims();
        let (heads, rope) = (self.config.heads(), self.rope(b, n, &x.device()));
        let mask = causal_mask(&vec![0; b], n, n, heads, &x.device());
        let mut x = x;
        for (layer, block) in self.blocks.iter().enumerate() {
            let rotates = self.config.rotates(layer).then_some(&rope);
            let (q, k, v) = block.qkv(x.clone(), heads, rotates)?;
            x = block.finish(
                x,
                q,
                (k, v),
                mask.clone(),
                heads,
                self.config.scales.residual,
            )?;
        }
        Ok(self.output(x))
    }

    /// Rotary positions `0..n` for each of `b` rows.
    pub(crate) fn rope(&self, b: usize, n: usize, device: &Device) -> RopeAt {
        let pos: Vec<i64> = (0..b).flat_map(|_| 0..n as i64).collect();
        let c = &self.config;
        let factors = &c.rope_freq_factors;
        Rope::new(
            c.head_dim(),
            n,
            c.rope_base,
            factors,
            c.rope_scaling,
            device,
        )
        .at(&pos, b, n, device)
    }

    /// The final norm and the head over the last block's output `x`
    /// (`[b, n, d]`): the head's logits and the features (its input).
    pub(crate) fn output(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        let [b, n, d] = x.dims();
        let h = RmsNorm::new(self.norm.val(), self.config.rms_eps).forward(x);
        let logits = match &self.head {
            Some(head) => head.forward(h.clone()),
            None => h
                .clone()
                .reshape([b * n, d])
                .matmul(self.embed.val().transpose())
                .reshape([b, n, self.config.vocab_size]),
        };
        (scaled(logits, 1.0 / self.config.scales.logit), h)
    }
}
