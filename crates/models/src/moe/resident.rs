//! [`MoeTransformer`]: every expert resident; its training (the
//! load-balancing loss, sparse dispatch), traced routing and files.

use std::path::Path;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};
use lastmile_core::CoreError;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::lm::LmError;
use lastmile_moe_cache::MoeCacheError;
use lastmile_moe_cache::moe::{MoeConfig, MoeLayer, write_store};
use lastmile_moe_cache::routing::{Router, RouterConfig, Routing, RoutingRule};
use lastmile_moe_cache::store::{ExpertStore, StoreOptions};
use lastmile_moe_cache::trace::Trace;

use super::{MoeModelError, MoeResult, MoeTransformerConfig, Trunk};
use crate::cache::KvCache;
use crate::checkpoint::MAX_CHECKPOINT_BYTES;
use crate::error::ModelError;
use crate::train::{TrainConfig, check_data, fit, windows};

/// A byte-level MoE transformer LM with every expert resident (the layout is
/// described in the crate README's MoE section).
#[derive(Module, Debug)]
pub struct MoeTransformer {
    pub(super) trunk: Trunk,
    pub(super) experts: Vec<MoeLayer>,
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
/// `config`'s schedule, as [`train`](crate::train()). Returns the model in
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
