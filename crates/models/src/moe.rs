//! A byte-level Mixture-of-Experts transformer LM: the attention trunk of
//! [`Transformer`](crate::Transformer) (learned positions, pre-norm, causal
//! multi-head attention) with every MLP replaced by lastmile-moe-cache's
//! SwiGLU MoE layer, in two forms:
//!
//! - [`MoeTransformer`]: every expert resident; trainable ([`train_moe`],
//!   with the Switch/GShard load-balancing loss), a [`LanguageModel`] with a
//!   KV cache, and a routing hook that records traces in moe-cache's format
//!   ([`MoeTransformer::forward_traced`]);
//! - [`OffloadedMoeTransformer`]: the same trunk, routers resident, experts
//!   read from an on-disk [`ExpertStore`] through a DRAM
//!   [`ExpertCache`](lastmile_moe_cache::ExpertCache) with any eviction
//!   policy and routing rule (Cache-Prior, Max-Rank, …).
//!
//! With every expert cached and normal top-k routing (or Cache-Prior with
//! λ = 0) the offloaded model computes the resident one's logits.
//!
//! ```
//! # #[cfg(all(feature = "flex", any(target_os = "linux", target_os = "android")))] {
//! use burn::tensor::Device;
//! use lastmile_core::lm::LanguageModel;
//! use lastmile_models::{MoeTransformerConfig, OffloadedMoeTransformer};
//! use lastmile_moe_cache::moe::OffloadConfig;
//! use lastmile_moe_cache::routing::RoutingRule;
//! use lastmile_moe_cache::store::{PageCache, StoreOptions};
//! use lastmile_moe_cache::{Budget, PolicyKind};
//!
//! let device = Device::flex();
//! let model = MoeTransformerConfig::byte_level(16, 2, 2, 8, 2, 32).init(&device)?;
//! let path = std::env::temp_dir().join(format!("doc-moe-lm-{}.lmexp", std::process::id()));
//! let store = model.write_experts(&path, StoreOptions::default().with_page_cache(PageCache::Keep))?;
//! let budget = Budget::PerLayer(vec![4 * store.expert_bytes_per_layer()[0]; 2]); // 4 of 8 experts
//! let rule = RoutingRule::CachePrior { lambda: 0.2, top_j: 1 };
//! let offloaded = OffloadedMoeTransformer::new(&model, store, budget, OffloadConfig::new(PolicyKind::Lru, rule, 2))?;
//! let mut cache = offloaded.new_cache(1)?;
//! let logits = offloaded.forward(&mut cache, &[vec![104, 105]])?;
//! assert_eq!(logits.dims(), [1, 2, 256]);
//! assert!(offloaded.cache_stats()?.misses >= 2);
//! # std::fs::remove_file(&path).ok();
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cell::RefCell;
use std::path::Path;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Bool, Device, IndexingUpdateOp, Int, Tensor, TensorData};
use lastmile_core::CoreError;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::lm::{LanguageModel, LmError, LmResult};
use lastmile_moe_cache::cache::{Budget, LayerStats};
use lastmile_moe_cache::moe::{
    CachedMoeLayer, MoeConfig, MoeLayer, OffloadConfig, OffloadContext, write_store,
};
use lastmile_moe_cache::routing::{Router, RouterConfig, Routing, RoutingRule};
use lastmile_moe_cache::store::{ExpertStore, StoreOptions};
use lastmile_moe_cache::trace::Trace;
use lastmile_moe_cache::{MoeCacheError, PolicyKind};
use thiserror::Error;

use crate::cache::KvCache;
use crate::checkpoint::MAX_CHECKPOINT_BYTES;
use crate::error::ModelError;
use crate::train::{TrainConfig, check_data, fit, windows};
use crate::transformer::{
    TransformerConfig, attention, causal_mask, check_sizes, positions, split_qkv,
};

/// Errors of the MoE language models: the model errors of this crate and
/// the expert-cache errors of lastmile-moe-cache, each kept whole.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MoeModelError {
    /// A model, configuration, checkpoint, data or interface error.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// An expert store, cache, routing or trace error.
    #[error(transparent)]
    Cache(#[from] MoeCacheError),
}

impl From<LmError> for MoeModelError {
    fn from(e: LmError) -> Self {
        Self::Model(ModelError::Lm(e))
    }
}

impl From<CoreError> for MoeModelError {
    fn from(e: CoreError) -> Self {
        Self::Model(ModelError::Core(e))
    }
}

/// Interface errors keep their [`LmError`] variant, core checks become
/// [`LmError::Core`], everything else travels as [`LmError::Model`].
impl From<MoeModelError> for LmError {
    fn from(e: MoeModelError) -> Self {
        match e {
            MoeModelError::Model(m) => m.into(),
            MoeModelError::Cache(MoeCacheError::Core(c)) => LmError::Core(c),
            MoeModelError::Cache(c) => LmError::Model(Box::new(c)),
        }
    }
}

/// Result alias of the MoE models.
pub type MoeResult<T> = std::result::Result<T, MoeModelError>;

/// Shape of a [`MoeTransformer`].
///
/// ```
/// use lastmile_models::{MoeModelError, MoeTransformerConfig};
/// use lastmile_moe_cache::MoeCacheError;
/// let c = MoeTransformerConfig::byte_level(128, 4, 4, 16, 2, 128);
/// assert_eq!((c.d_ff, c.experts, c.k), (256, 16, 2));
/// assert!(c.check().is_ok());
/// let bad = MoeTransformerConfig { k: 17, ..c };
/// assert!(matches!(bad.check(), Err(MoeModelError::Cache(MoeCacheError::KAboveExperts { k: 17, experts: 16 }))));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoeTransformerConfig {
    /// Vocabulary size.
    pub vocab: usize,
    /// Model width `d`.
    pub d_model: usize,
    /// Number of blocks.
    pub n_layers: usize,
    /// Attention heads (must divide `d_model`).
    pub n_heads: usize,
    /// Hidden width `f` of each SwiGLU expert.
    pub d_ff: usize,
    /// Experts per layer `E`.
    pub experts: usize,
    /// Experts per token `k`.
    pub k: usize,
    /// Context window.
    pub max_len: usize,
}

impl MoeTransformerConfig {
    /// A byte-level (256-token) model with experts of hidden width `2·d_model`.
    pub fn byte_level(
        d_model: usize,
        n_layers: usize,
        n_heads: usize,
        experts: usize,
        k: usize,
        max_len: usize,
    ) -> Self {
        Self {
            vocab: 256,
            d_model,
            n_layers,
            n_heads,
            d_ff: 2 * d_model,
            experts,
            k,
            max_len,
        }
    }

    /// Checks every size.
    ///
    /// # Errors
    /// [`ModelError::Config`] for a zero size or heads that do not divide
    /// the width, or more than 65535 layers or experts (the trace format's
    /// limit); [`MoeCacheError::KAboveExperts`] for `k = 0` or `k > E`.
    pub fn check(&self) -> MoeResult<()> {
        // The attention trunk's sizes are a dense transformer's (with d_ff
        // the width of one expert).
        TransformerConfig {
            vocab: self.vocab,
            d_model: self.d_model,
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            d_ff: self.d_ff,
            max_len: self.max_len,
        }
        .check()?;
        check_sizes(&[("experts", self.experts)], self.d_model, self.n_heads)?;
        for (name, v) in [("n_layers", self.n_layers), ("experts", self.experts)] {
            if v > usize::from(u16::MAX) {
                return Err(ModelError::Config(format!(
                    "{name} = {v}; expected at most 65535 (the trace format's limit)"
                ))
                .into());
            }
        }
        if self.k == 0 || self.k > self.experts {
            return Err(MoeCacheError::KAboveExperts {
                k: self.k,
                experts: self.experts,
            }
            .into());
        }
        Ok(())
    }

    /// The configuration of each MoE layer.
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub fn moe_config(&self) -> MoeResult<MoeConfig> {
        self.check()?;
        Ok(MoeConfig::new(
            self.d_model,
            self.d_ff,
            self.experts,
            self.k,
        )?)
    }

    /// Randomly initialised weights on `device`.
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub fn init(&self, device: &Device) -> MoeResult<MoeTransformer> {
        let moe = self.moe_config()?;
        let d = self.d_model;
        Ok(MoeTransformer {
            trunk: Trunk {
                tokens: EmbeddingConfig::new(self.vocab, d).init(device),
                positions: EmbeddingConfig::new(self.max_len, d).init(device),
                attention: (0..self.n_layers)
                    .map(|_| Attention {
                        norm1: LayerNormConfig::new(d).init(device),
                        qkv: LinearConfig::new(d, 3 * d).init(device),
                        proj: LinearConfig::new(d, d).init(device),
                        norm2: LayerNormConfig::new(d).init(device),
                    })
                    .collect(),
                norm: LayerNormConfig::new(d).init(device),
                head: LinearConfig::new(d, self.vocab).init(device),
                n_heads: self.n_heads,
                max_len: self.max_len,
                vocab: self.vocab,
            },
            experts: (0..self.n_layers).map(|_| moe.init(device)).collect(),
        })
    }

    /// Bytes of one expert (f32 weights `W_gate`, `W_up`, `W_down`).
    pub fn expert_bytes(&self) -> u64 {
        (4 * 3 * self.d_model * self.d_ff) as u64
    }
}

/// The attention half of a pre-norm block and the norm before its MoE:
/// `x + attn(ln₁(x))`, then the MoE reads `ln₂(x)`.
#[derive(Module, Debug)]
pub struct Attention {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
}

impl Attention {
    /// q, k, v `[B, H, L, d/H]` of `ln₁(x)` for `x` `[B, L, d]`.
    fn qkv(&self, x: Tensor<3>, n_heads: usize) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        split_qkv(self.qkv.forward(self.norm1.forward(x)), n_heads)
    }

    /// `x + proj(softmax(q kᵀ / √d_h + mask) v)`; `mask` is `true` where a key is hidden.
    fn attend(
        &self,
        x: Tensor<3>,
        qkv: (Tensor<4>, Tensor<4>, Tensor<4>),
        mask: Tensor<4, Bool>,
    ) -> Tensor<3> {
        x + self.proj.forward(attention(qkv, mask))
    }
}

/// Everything but the experts: embeddings, attention, norms, head.
#[derive(Module, Debug)]
pub struct Trunk {
    tokens: Embedding,
    positions: Embedding,
    attention: Vec<Attention>,
    norm: LayerNorm,
    head: Linear,
    n_heads: usize,
    max_len: usize,
    vocab: usize,
}

impl Trunk {
    fn device(&self) -> Device {
        self.head.weight.device()
    }

    /// Full causal forward of `tokens` `[B, L]`; `moe(layer, h)` maps the
    /// normalised hidden states `[B·L, d]` of each block to its MoE output.
    fn forward_full(
        &self,
        tokens: Tensor<2, Int>,
        mut moe: impl FnMut(usize, Tensor<2>) -> MoeResult<Tensor<2>>,
    ) -> MoeResult<Tensor<3>> {
        let [b, l] = tokens.dims();
        if l == 0 || l > self.max_len {
            return Err(LmError::ContextOverflow {
                row: 0,
                needed: l,
                max: self.max_len,
            }
            .into());
        }
        let device = tokens.device();
        let pos = positions(b, l, &device);
        let mut x = self.tokens.forward(tokens) + self.positions.forward(pos);
        let d = x.dims()[2];
        let causal = causal_mask(b, self.n_heads, l, &device);
        for (layer, attn) in self.attention.iter().enumerate() {
            let qkv = attn.qkv(x.clone(), self.n_heads);
            x = attn.attend(x, qkv, causal.clone());
            let h = attn.norm2.forward(x.clone()).reshape([b * l, d]);
            x = x + moe(layer, h)?.reshape([b, l, d]);
        }
        Ok(self.head.forward(self.norm.forward(x)))
    }

    /// Appends `tokens[r]` to row `r` of `cache` and returns logits at the
    /// new positions `[B, max(1, n_max), vocab]`; `moe(layer, h)` receives
    /// only the real (not padding) positions, row by row, `[Σ_r n_r, d]`.
    fn forward_cached(
        &self,
        cache: &mut KvCache,
        tokens: &[Vec<usize>],
        mut moe: impl FnMut(usize, Tensor<2>) -> MoeResult<Tensor<2>>,
    ) -> MoeResult<Tensor<3>> {
        let device = self.device();
        let step = cache.begin(tokens, self.vocab, self.max_len, self.n_heads, &device)?;
        let [b, n] = step.ids.dims();
        let m = step.real.len();
        let real = Tensor::<1, Int>::from_data(TensorData::new(step.real.clone(), [m]), &device);
        let mut x =
            self.tokens.forward(step.ids.clone()) + self.positions.forward(step.pos.clone());
        let d = x.dims()[2];
        for (layer, attn) in self.attention.iter().enumerate() {
            let (q, k, v) = attn.qkv(x.clone(), self.n_heads);
            let (k_all, v_all) = cache.append(layer, (k, v), &step);
            x = attn.attend(x, (q, k_all, v_all), step.mask.clone());
            if m > 0 {
                // Only real positions reach the experts: padding must not
                // cost expert loads or count as cache accesses.
                let h = attn.norm2.forward(x.clone()).reshape([b * n, d]);
                let y = moe(layer, h.select(0, real.clone()))?;
                let y = Tensor::<2>::zeros([b * n, d], &device).select_assign(
                    0,
                    real.clone(),
                    y,
                    IndexingUpdateOp::Add,
                );
                x = x + y.reshape([b, n, d]);
            }
        }
        cache.commit(tokens);
        Ok(self.head.forward(self.norm.forward(x)))
    }
}

/// A byte-level MoE transformer LM with every expert resident (the layout is
/// described in the crate README's MoE section).
#[derive(Module, Debug)]
pub struct MoeTransformer {
    trunk: Trunk,
    experts: Vec<MoeLayer>,
}

/// The load-balancing loss of one layer's router (Switch Transformer, Fedus
/// et al. 2022, Eq. (4); GShard, Lepikhin et al. 2021): `E · Σ_i f_i · P_i`
/// with `f_i` the fraction of the `k·T` routing slots that go to expert `i`
/// (not differentiable) and `P_i` the mean router probability of expert `i`
/// over the `T` tokens. It is 1 for uniform routing (`f_i = P_i = 1/E`)
/// and lies in `(0, E]` (`E` when one expert takes every slot and all the
/// probability). It is not bounded below by 1: the hard choices `f` and
/// the soft probabilities `P` can disagree (two of three tokens sent to
/// expert 1 of 2 at probability 0.51, the third to expert 2 at 0.99: 0.90).
fn load_balancing_loss(logits: Tensor<2>, k: usize) -> Tensor<1> {
    let [t, e] = logits.dims();
    let device = logits.device();
    let p_mean = softmax(logits.clone(), 1).mean_dim(0); // [1, E]
    let (_, idx) = logits.detach().topk_with_indices(k, 1);
    let ones = Tensor::<2>::ones([t, k], &device);
    let f = Tensor::<2>::zeros([t, e], &device)
        .scatter(1, idx, ones, IndexingUpdateOp::Add)
        .sum_dim(0)
        .div_scalar((k * t) as f32); // [1, E]
    (f * p_mean).sum().mul_scalar(e as f32)
}

/// [`MoeLayer::forward`] with sparse dispatch, for training: each expert
/// runs only on the tokens routed to it (k/E of the dense work), gathered
/// with `select` and added back with `select_assign`, so gradients reach the
/// router (through the mixing weights) and the chosen experts as in the
/// dense form. One host read (the chosen experts) per call.
fn sparse_moe(moe: &MoeLayer, x: Tensor<2>) -> MoeResult<Tensor<2>> {
    let c = moe.config();
    let [n, d] = x.dims();
    if n == 0 || d != c.d_model {
        return Err(CoreError::shape("x", format!("[n >= 1, {}]", c.d_model), &[n, d]).into());
    }
    let (k, f) = (c.k, c.d_ff);
    let device = x.device();
    let logits = moe.router_logits(x.clone());
    let probs = softmax(logits.clone(), 1);
    let (_, idx) = logits.detach().topk_with_indices(k, 1);
    let mut w = probs.gather(1, idx.clone());
    if c.renormalize {
        let sum = w.clone().sum_dim(1);
        w = w / sum;
    }
    let w = w.reshape([n * k]);
    let chosen = lastmile_core::convert::indices_to_vec(idx)?;
    let mut tokens_of = vec![Vec::new(); c.experts];
    let mut slots_of = vec![Vec::new(); c.experts];
    for (slot, &e) in chosen.iter().enumerate() {
        if let (Some(t), Some(s)) = (tokens_of.get_mut(e), slots_of.get_mut(e)) {
            t.push((slot / k) as i64);
            s.push(slot as i64);
        }
    }
    let (w_gate, w_up, w_down) = (moe.w_gate.val(), moe.w_up.val(), moe.w_down.val());
    let mut y = Tensor::<2>::zeros([n, d], &device);
    for e in 0..c.experts {
        let m = tokens_of[e].len();
        if m == 0 {
            continue;
        }
        let ti = Tensor::<1, Int>::from_data(
            TensorData::new(std::mem::take(&mut tokens_of[e]), [m]),
            &device,
        );
        let si = Tensor::<1, Int>::from_data(
            TensorData::new(std::mem::take(&mut slots_of[e]), [m]),
            &device,
        );
        let xe = x.clone().select(0, ti.clone());
        let g = w_gate.clone().slice([e..e + 1, 0..d, 0..f]).reshape([d, f]);
        let u = w_up.clone().slice([e..e + 1, 0..d, 0..f]).reshape([d, f]);
        let dn = w_down.clone().slice([e..e + 1, 0..f, 0..d]).reshape([f, d]);
        let out = (silu(xe.clone().matmul(g)) * xe.matmul(u)).matmul(dn);
        let gate = w.clone().select(0, si).reshape([m, 1]);
        y = y.select_assign(0, ti, out * gate, IndexingUpdateOp::Add);
    }
    Ok(y)
}

impl MoeTransformer {
    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        self.trunk.vocab
    }

    /// Context window.
    pub fn max_len(&self) -> usize {
        self.trunk.max_len
    }

    /// The device holding the weights.
    pub fn device(&self) -> Device {
        self.trunk.device()
    }

    /// Number of blocks.
    pub fn n_layers(&self) -> usize {
        self.experts.len()
    }

    /// The MoE layer of block `layer`.
    pub fn moe_layer(&self, layer: usize) -> Option<&MoeLayer> {
        self.experts.get(layer)
    }

    /// The configuration this model was built with.
    pub fn config(&self) -> MoeTransformerConfig {
        let c = self
            .experts
            .first()
            .map(MoeLayer::config)
            .unwrap_or(MoeConfig {
                d_model: 0,
                d_ff: 0,
                experts: 0,
                k: 0,
                renormalize: true,
            });
        MoeTransformerConfig {
            vocab: self.trunk.vocab,
            d_model: c.d_model,
            n_layers: self.experts.len(),
            n_heads: self.trunk.n_heads,
            d_ff: c.d_ff,
            experts: c.experts,
            k: c.k,
            max_len: self.trunk.max_len,
        }
    }

    /// Logits `[B, L, vocab]` for every position of `tokens` `[B, L]`
    /// (causal), and the mean over layers of the load-balancing loss
    /// (Switch Transformer Eq. (4), see [`train_moe`]). The experts run
    /// with sparse dispatch (only on their tokens; one host read per layer),
    /// equal to [`forward`](Self::forward) up to float rounding.
    ///
    /// # Errors
    /// [`LmError::ContextOverflow`] when `L` is 0 or above the context.
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::{Device, Int, Tensor};
    /// let d = Device::flex();
    /// let m = lastmile_models::MoeTransformerConfig::byte_level(16, 2, 2, 4, 2, 8).init(&d)?;
    /// let (logits, aux) = m.forward_with_aux(Tensor::<2, Int>::from_ints([[1, 2, 3]], &d))?;
    /// assert_eq!(logits.dims(), [1, 3, 256]);
    /// let aux = aux.into_scalar::<f32>(); // 1 for uniform routing
    /// assert!(aux > 0.0 && aux <= 4.0); // in (0, E], E = 4 experts
    /// # }
    /// # Ok::<(), lastmile_models::MoeModelError>(())
    /// ```
    pub fn forward_with_aux(&self, tokens: Tensor<2, Int>) -> MoeResult<(Tensor<3>, Tensor<1>)> {
        let mut aux: Option<Tensor<1>> = None;
        let logits = self.trunk.forward_full(tokens, |layer, h| {
            let moe = &self.experts[layer];
            let lb = load_balancing_loss(moe.router_logits(h.clone()), moe.config().k);
            aux = Some(match aux.take() {
                Some(a) => a + lb,
                None => lb,
            });
            sparse_moe(moe, h)
        })?;
        let aux = aux
            .unwrap_or_else(|| Tensor::zeros([1], &self.device()))
            .div_scalar(self.experts.len().max(1) as f32);
        Ok((logits, aux))
    }

    /// Logits `[B, L, vocab]` for every position of `tokens` `[B, L]`.
    ///
    /// # Errors
    /// As [`forward_with_aux`](Self::forward_with_aux).
    pub fn forward(&self, tokens: Tensor<2, Int>) -> MoeResult<Tensor<3>> {
        self.trunk
            .forward_full(tokens, |layer, h| Ok(self.experts[layer].forward(h)?))
    }

    /// An empty KV cache for `batch` sequences.
    pub fn new_cache(&self, batch: usize) -> KvCache {
        KvCache::new(batch, self.experts.len())
    }

    /// Appends `tokens[r]` to row `r` of `cache` and returns logits at the
    /// new positions, `[B, max(1, n_max), vocab]` (padding past a row's count).
    ///
    /// # Errors
    /// [`LmError::Batch`], [`LmError::TokenOutOfRange`], [`LmError::ContextOverflow`].
    pub fn forward_cached(
        &self,
        cache: &mut KvCache,
        tokens: &[Vec<usize>],
    ) -> MoeResult<Tensor<3>> {
        self.trunk.forward_cached(
            cache,
            tokens,
            |layer, h| Ok(self.experts[layer].forward(h)?),
        )
    }

    /// [`forward_cached`](Self::forward_cached) for one row, recording into
    /// `trace` one record per token and layer: the token's index (continuing
    /// after the trace's last token, so several sequences form one stream),
    /// the layer, its top-k experts best first (ties to the lower index, as
    /// moe-cache's top-k rule) and, if the trace stores them, the router
    /// logits. One extra host read per layer.
    ///
    /// # Errors
    /// [`LmError::Batch`] unless the cache has one row; [`MoeCacheError::LayerMismatch`]
    /// when the trace's layers, experts or `k` differ from the model's;
    /// the errors of [`forward_cached`](Self::forward_cached) and [`Trace::push`].
    ///
    /// ```
    /// # #[cfg(feature = "flex")] {
    /// use burn::tensor::Device;
    /// use lastmile_models::MoeTransformerConfig;
    /// use lastmile_moe_cache::trace::{LogitsFormat, Trace};
    /// let m = MoeTransformerConfig::byte_level(16, 2, 2, 8, 2, 32).init(&Device::flex())?;
    /// let mut trace = Trace::new(2, 8, 2, LogitsFormat::F16)?;
    /// let mut cache = m.new_cache(1);
    /// m.forward_traced(&mut cache, &[1, 2, 3], &mut trace)?;
    /// assert_eq!((trace.len(), trace.tokens()), (6, 3)); // 3 tokens × 2 layers
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn forward_traced(
        &self,
        cache: &mut KvCache,
        tokens: &[usize],
        trace: &mut Trace,
    ) -> MoeResult<Tensor<3>> {
        if cache.batch() != 1 {
            return Err(LmError::Batch {
                what: "cache rows of a traced forward".to_owned(),
                expected: "1".to_owned(),
                found: cache.batch(),
            }
            .into());
        }
        let c = self.config();
        if (trace.layers(), trace.experts(), trace.k()) != (c.n_layers, c.experts, c.k) {
            return Err(MoeCacheError::LayerMismatch {
                layer: 0,
                reason: format!(
                    "the trace has {} layers of {} experts, top-{}; the model {} layers of {} experts, top-{}",
                    trace.layers(),
                    trace.experts(),
                    trace.k(),
                    c.n_layers,
                    c.experts,
                    c.k
                ),
            }
            .into());
        }
        let first = match trace.len().checked_sub(1).and_then(|i| trace.record(i)) {
            Some(r) => r.token.saturating_add(1),
            None => 0,
        };
        let mut router = Router::new(
            RoutingRule::TopK,
            RouterConfig::new(c.n_layers, c.experts, c.k)?,
        )?;
        let no_cache = vec![false; c.experts];
        // Records per layer, pushed token-major afterwards (the trace's token
        // indices may not decrease).
        let mut per_layer: Vec<(Vec<f32>, Vec<Routing>)> = Vec::with_capacity(c.n_layers);
        let logits = self
            .trunk
            .forward_cached(cache, &[tokens.to_vec()], |layer, h| {
                let moe = &self.experts[layer];
                let z = tensor_to_vec(moe.router_logits(h.clone()))?;
                let mut routed = Vec::new();
                router.route_batch(layer, &z, &no_cache, &mut routed)?;
                per_layer.push((z, routed));
                Ok(moe.forward(h)?)
            })?;
        let e = c.experts;
        for i in 0..tokens.len() {
            let token = first.saturating_add(i as u32);
            for (layer, (z, routed)) in per_layer.iter().enumerate() {
                let logits = trace.has_logits().then(|| &z[i * e..(i + 1) * e]);
                trace.push(token, layer, &routed[i].experts, logits)?;
            }
        }
        Ok(logits)
    }

    /// Writes every layer's experts to an expert store at `path` (layer `l`
    /// of the store is block `l`) and opens it with `options`.
    ///
    /// # Errors
    /// The store's write and open errors.
    pub fn write_experts(
        &self,
        path: impl AsRef<Path>,
        options: StoreOptions,
    ) -> MoeResult<ExpertStore> {
        let layers: Vec<&MoeLayer> = self.experts.iter().collect();
        let path = write_store(path, &layers)?;
        Ok(ExpertStore::open(path, options)?)
    }

    /// Writes the weights to `path` (burn's native format, creating parent directories).
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] on I/O failure.
    pub fn save(&self, path: impl AsRef<Path>) -> MoeResult<()> {
        let path = path.as_ref();
        let fail = |e: String| ModelError::Checkpoint {
            path: path.display().to_string(),
            reason: e,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        self.clone()
            .save_file(path)
            .map_err(|e| fail(e.to_string()).into())
    }

    /// A model of shape `config` on `device` with the weights saved by [`save`](Self::save).
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] for a missing, oversized or malformed file
    /// or weights of other shapes; configuration errors.
    pub fn load(
        config: MoeTransformerConfig,
        path: impl AsRef<Path>,
        device: &Device,
    ) -> MoeResult<Self> {
        let path = path.as_ref();
        let fail = |e: String| ModelError::Checkpoint {
            path: path.display().to_string(),
            reason: e,
        };
        let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
        if meta.len() > MAX_CHECKPOINT_BYTES {
            return Err(fail(format!(
                "{} bytes; expected at most {MAX_CHECKPOINT_BYTES}",
                meta.len()
            ))
            .into());
        }
        config
            .init(device)?
            .try_load_file(path)
            .map_err(|e| fail(e.to_string()).into())
    }
}

/// One step of [`train_moe`]: the losses it optimised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeTrainStep {
    /// Next-byte cross-entropy (nats).
    pub lm_loss: f32,
    /// Load-balancing loss, mean over layers (1 = perfectly balanced).
    pub balance_loss: f32,
}

/// Trains `model` (parameters on an autodiff device) to predict the next
/// byte of `data` with loss `CE + α · L_balance`, where `L_balance` is the
/// Switch/GShard auxiliary loss `E · Σ_i f_i P_i` averaged over layers
/// (Fedus et al. 2022, "Switch Transformers", Eq. (4); they use α = 0.01).
/// AdamW with weight decay 0.01, gradient-norm clipping at 1 and
/// `config`'s schedule, as [`train`](crate::train). Returns the model in
/// evaluation mode on the plain device.
///
/// # Errors
/// [`ModelError::Config`] for bad settings (α negative or not finite),
/// untracked parameters, [`ModelError::Data`] for too little data,
/// [`LmError::ContextOverflow`] when the context exceeds the model's.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_models::{MoeTransformerConfig, TrainConfig, train_moe};
/// let ad = Device::flex().autodiff();
/// let m = MoeTransformerConfig::byte_level(16, 1, 2, 4, 2, 16).init(&ad)?;
/// let text = b"abcabcabcabcabcabcabcabcabcabcabcabcabcabc".repeat(4);
/// let mut losses = Vec::new();
/// train_moe(m, &text, &TrainConfig::new(30, 4, 16), 0.01, |_, s| losses.push(s.lm_loss))?;
/// assert!(losses[29] < losses[0]);
/// # }
/// # Ok::<(), lastmile_models::MoeModelError>(())
/// ```
pub fn train_moe(
    model: MoeTransformer,
    data: &[u8],
    config: &TrainConfig,
    balance_coef: f64,
    on_step: impl FnMut(usize, MoeTrainStep),
) -> MoeResult<MoeTransformer> {
    config.check()?;
    if !(balance_coef.is_finite() && balance_coef >= 0.0) {
        return Err(ModelError::Config(format!(
            "balance_coef = {balance_coef}; expected a finite value >= 0"
        ))
        .into());
    }
    check_data(data, config.context, model.max_len(), model.vocab())?;
    let device = model.device();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let (b, l, v) = (config.batch, config.context, model.vocab());
    fit(model, config, on_step, |model, rng| {
        let (x, y) = windows(data, b, l, rng, &device);
        let (logits, aux) = model.forward_with_aux(x)?;
        let ce = loss_fn.forward(logits.reshape([b * l, v]), y.reshape([b * l]));
        let loss = ce.clone() + aux.clone().mul_scalar(balance_coef as f32);
        let report = MoeTrainStep {
            lm_loss: ce.into_scalar::<f32>(),
            balance_loss: aux.into_scalar::<f32>(),
        };
        Ok::<_, MoeModelError>((loss, report))
    })
}

/// An [`MoeTransformer`] whose experts live in an [`ExpertStore`] and reach
/// the device through a DRAM expert cache, routed by any [`RoutingRule`]
/// (the crate README's MoE section describes the layout). Every forward is one cache step per layer
/// for all of its real tokens.
#[derive(Debug)]
pub struct OffloadedMoeTransformer {
    trunk: Trunk,
    layers: Vec<CachedMoeLayer>,
    ctx: RefCell<OffloadContext>,
}

impl OffloadedMoeTransformer {
    /// The trunk and routers of `model` (copied to its device) with experts
    /// from `store` (as written by [`MoeTransformer::write_experts`]) under
    /// `budget`, with `config`'s policy and routing rule.
    ///
    /// # Errors
    /// [`MoeCacheError::LayerMismatch`] when the store does not hold the
    /// model's layers and experts; [`MoeCacheError::KAboveExperts`] when
    /// `config.k` differs from the model's; the context's errors
    /// ([`MoeCacheError::ZeroCapacity`], [`MoeCacheError::CapacityBelowK`],
    /// [`MoeCacheError::OracleNeedsFuture`] for Belady, …).
    pub fn new(
        model: &MoeTransformer,
        store: ExpertStore,
        budget: Budget,
        config: OffloadConfig,
    ) -> MoeResult<Self> {
        Self::build(model, store, budget, config, None)
    }

    /// As [`new`](Self::new), with each cache partition's future demand
    /// accesses for a Belady policy (see [`OffloadContext::with_future`]):
    /// record them with [`OffloadContext::record_accesses`] during a run of
    /// the same tokens with top-k routing, then run again live with
    /// `PolicyKind::Belady`.
    ///
    /// # Errors
    /// As [`new`](Self::new) and [`OffloadContext::with_future`].
    ///
    /// ```
    /// # #[cfg(all(feature = "flex", any(target_os = "linux", target_os = "android")))] {
    /// use burn::tensor::Device;
    /// use lastmile_core::lm::LanguageModel;
    /// use lastmile_models::{MoeTransformerConfig, OffloadedMoeTransformer};
    /// use lastmile_moe_cache::moe::OffloadConfig;
    /// use lastmile_moe_cache::routing::RoutingRule;
    /// use lastmile_moe_cache::store::{ExpertStore, PageCache, StoreOptions};
    /// use lastmile_moe_cache::{Budget, PolicyKind};
    ///
    /// let device = Device::flex();
    /// let model = MoeTransformerConfig::byte_level(16, 2, 2, 8, 2, 32).init(&device)?;
    /// let path = std::env::temp_dir().join(format!("doc-moe-opt-{}.lmexp", std::process::id()));
    /// let options = StoreOptions::default().with_page_cache(PageCache::Keep);
    /// let store = model.write_experts(&path, options)?;
    /// let budget = Budget::PerLayer(vec![3 * store.expert_bytes_per_layer()[0]; 2]);
    /// let tokens: Vec<usize> = (0..20).map(|i| (i * 37) % 256).collect();
    /// let run = |m: &mut OffloadedMoeTransformer| -> Result<f64, Box<dyn std::error::Error>> {
    ///     let mut cache = m.new_cache(1)?;
    ///     for &t in &tokens {
    ///         m.forward(&mut cache, &[vec![t]])?;
    ///     }
    ///     Ok(m.cache_stats()?.hit_rate())
    /// };
    /// let mut lru = OffloadedMoeTransformer::new(&model, store, budget.clone(),
    ///     OffloadConfig::new(PolicyKind::Lru, RoutingRule::TopK, 2))?;
    /// lru.context().record_accesses(true);
    /// let lru_hits = run(&mut lru)?;
    /// let future = lru.context().take_access_log();
    /// let belady = OffloadConfig::new(PolicyKind::Belady { lookahead: None }, RoutingRule::TopK, 2);
    /// let store = ExpertStore::open(&path, options)?;
    /// let mut opt = OffloadedMoeTransformer::with_future(&model, store, budget, belady, &future)?;
    /// assert!(run(&mut opt)? >= lru_hits);
    /// # std::fs::remove_file(&path).ok();
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_future(
        model: &MoeTransformer,
        store: ExpertStore,
        budget: Budget,
        config: OffloadConfig,
        futures: &[Vec<usize>],
    ) -> MoeResult<Self> {
        Self::build(model, store, budget, config, Some(futures))
    }

    fn build(
        model: &MoeTransformer,
        store: ExpertStore,
        budget: Budget,
        config: OffloadConfig,
        futures: Option<&[Vec<usize>]>,
    ) -> MoeResult<Self> {
        let c = model.config();
        if config.k != c.k {
            return Err(ModelError::Config(format!(
                "offload k = {}; expected the model's k = {}",
                config.k, c.k
            ))
            .into());
        }
        if store.num_layers() != c.n_layers
            || store.experts_per_layer().iter().any(|&e| e != c.experts)
            || store
                .expert_bytes_per_layer()
                .iter()
                .any(|&b| b != c.expert_bytes())
        {
            return Err(MoeCacheError::LayerMismatch {
                layer: 0,
                reason: format!(
                    "the model has {} layers of {} experts of {} bytes; the store {:?} experts of {:?} bytes",
                    c.n_layers,
                    c.experts,
                    c.expert_bytes(),
                    store.experts_per_layer(),
                    store.expert_bytes_per_layer()
                ),
            }
            .into());
        }
        let device = model.device();
        let config =
            config.with_renormalize(model.experts.first().is_none_or(|l| l.config().renormalize));
        let ctx = match futures {
            None => OffloadContext::new(store, budget, config, &device)?,
            Some(f) => OffloadContext::with_future(store, budget, config, f, &device)?,
        };
        Ok(Self {
            trunk: model.trunk.clone(),
            layers: model
                .experts
                .iter()
                .enumerate()
                .map(|(l, m)| CachedMoeLayer::from_resident(m, l))
                .collect(),
            ctx: RefCell::new(ctx),
        })
    }

    /// An offloaded model with normal top-k routing and an LRU cache.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn lru(model: &MoeTransformer, store: ExpertStore, budget: Budget) -> MoeResult<Self> {
        let k = model.config().k;
        Self::new(
            model,
            store,
            budget,
            OffloadConfig::new(PolicyKind::Lru, RoutingRule::TopK, k),
        )
    }

    /// The offload context (store, cache, router state).
    pub fn context(&mut self) -> &mut OffloadContext {
        self.ctx.get_mut()
    }

    /// Gives back the offload context (e.g. to reuse the store).
    pub fn into_context(self) -> OffloadContext {
        self.ctx.into_inner()
    }

    /// Cache counters summed over layers.
    ///
    /// # Errors
    /// [`ModelError::Config`] when called during a forward (re-entrancy).
    pub fn cache_stats(&self) -> MoeResult<LayerStats> {
        Ok(self.borrow()?.cache().total_stats())
    }

    /// Forgets the routing state (start of a new sequence); the cache stays warm.
    ///
    /// # Errors
    /// As [`cache_stats`](Self::cache_stats).
    pub fn reset_routing(&self) -> MoeResult<()> {
        self.borrow_mut()?.reset_routing();
        Ok(())
    }

    fn borrow(&self) -> MoeResult<std::cell::Ref<'_, OffloadContext>> {
        self.ctx.try_borrow().map_err(|_| reentrant())
    }

    fn borrow_mut(&self) -> MoeResult<std::cell::RefMut<'_, OffloadContext>> {
        self.ctx.try_borrow_mut().map_err(|_| reentrant())
    }

    /// Appends `tokens[r]` to row `r` of `cache` and returns logits at the
    /// new positions; each layer routes all real tokens of the call as one
    /// cache step (their union of experts must fit the layer's budget).
    ///
    /// # Errors
    /// As [`MoeTransformer::forward_cached`];
    /// [`MoeCacheError::StepExceedsCapacity`]; store and load errors.
    pub fn forward_cached(
        &self,
        cache: &mut KvCache,
        tokens: &[Vec<usize>],
    ) -> MoeResult<Tensor<3>> {
        let mut ctx = self.borrow_mut()?;
        self.trunk.forward_cached(cache, tokens, |layer, h| {
            Ok(self.layers[layer].forward(h, &mut ctx)?.output)
        })
    }
}

fn reentrant() -> MoeModelError {
    ModelError::Config(
        "the offload context is in use by another call; expected one forward at a time".to_owned(),
    )
    .into()
}

/// The interface over an MoE model's cached forward: both forms share the
/// trunk and the cache type; `$start` runs when a new cache (a new
/// sequence) begins.
macro_rules! moe_language_model {
    ($(#[$doc:meta])* $ty:ty, |$s:ident| $start:block) => {
        $(#[$doc])*
        impl LanguageModel for $ty {
            type Cache = KvCache;

            fn vocab_size(&self) -> usize {
                self.trunk.vocab
            }

            fn device(&self) -> Device {
                self.trunk.device()
            }

            fn max_context(&self) -> usize {
                self.trunk.max_len
            }

            fn new_cache(&self, batch: usize) -> LmResult<KvCache> {
                let cache = KvCache::for_rows(batch, self.trunk.attention.len())?;
                let $s = self;
                $start
                Ok(cache)
            }

            fn cached_len(&self, cache: &KvCache, row: usize) -> usize {
                cache.len(row)
            }

            fn truncate(&self, cache: &mut KvCache, row: usize, len: usize) -> LmResult<()> {
                Ok(cache.truncate(row, len)?)
            }

            fn forward(&self, cache: &mut KvCache, tokens: &[Vec<usize>]) -> LmResult<Tensor<3>> {
                Ok(self.forward_cached(cache, tokens)?)
            }
        }
    };
}

moe_language_model! {
/// [`MoeTransformer::forward_cached`] behind the shared interface.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_core::lm::{LanguageModel, conformance};
/// let m = lastmile_models::MoeTransformerConfig::byte_level(16, 1, 2, 4, 2, 32).init(&Device::flex())?;
/// assert!(conformance::check_all(&m, 1, 1e-4)? <= 1e-4);
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
    MoeTransformer, |_m| {}
}

moe_language_model! {
/// [`OffloadedMoeTransformer::forward_cached`] behind the shared interface.
/// A new cache also resets the routing state (a new sequence begins).
    OffloadedMoeTransformer, |m| { m.reset_routing()?; }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData};
    use lastmile_core::backend_test;

    use super::load_balancing_loss;

    backend_test!(load_balancing_loss_matches_its_formula, |device| {
        // Router logits whose softmax is (0.51, 0.49) twice and (0.01, 0.99).
        let logit = |p: f32| (p / (1.0 - p)).ln();
        let data = vec![logit(0.51), 0.0, logit(0.51), 0.0, logit(0.01), 0.0];
        let logits = Tensor::<2>::from_data(TensorData::new(data, [3, 2]), device);
        let got = load_balancing_loss(logits, 1).into_scalar::<f32>();
        // f = (2/3, 1/3), P = ((0.51 + 0.51 + 0.01)/3, (0.49 + 0.49 + 0.99)/3):
        // below 1, though routing is not uniform.
        let want = 2.0 * (2.0 / 3.0 * 1.03 / 3.0 + 1.0 / 3.0 * 1.97 / 3.0);
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        assert!(got < 0.9);
        // Equal probabilities over 4 experts, k = 2: exactly 1 whichever
        // experts the ties choose.
        let even = Tensor::<2>::zeros([3, 4], device);
        let got = load_balancing_loss(even, 2).into_scalar::<f32>();
        assert!((got - 1.0).abs() < 1e-6, "{got}");
    });
}
