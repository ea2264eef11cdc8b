//! A burn Mixture-of-Experts layer in two forms: [`MoeLayer`], every expert
//! resident (a plain, trainable burn module), and [`CachedMoeLayer`], whose
//! experts come from an [`ExpertStore`] through an [`ExpertCache`] and whose
//! routing is any [`RoutingRule`].
//!
//! Both compute, for tokens `x ∈ ℝ^{n×d}` with router `W_r ∈ ℝ^{d×E}`,
//! `z = x W_r`, `p = softmax(z)`, the chosen set `S` (top-k of `z`, or the
//! rule's choice) with weights `g_i = p_i` (renormalised over `S` if asked),
//! and `y = Σ_{i∈S} g_i · (silu(x W_gate,i) ⊙ x W_up,i) W_down,i` — SwiGLU
//! experts (Shazeer 2020, "GLU Variants Improve Transformer") in Mixtral's
//! layout, with `W_gate,i, W_up,i ∈ ℝ^{d×f}` and `W_down,i ∈ ℝ^{f×d}`.
//!
//! [`MoeLayer::forward`] evaluates every expert on every token and mixes
//! with zero weights for unchosen ones: simple, differentiable, and E/k
//! times the work of sparse dispatch — meant for training small models.
//! [`CachedMoeLayer::forward`] reads the router logits back once per step
//! (cache-aware routing runs on the host), loads the union of the step's
//! experts through the cache, and evaluates only those.
//!
//! ```
//! # #[cfg(all(feature = "flex", any(target_os = "linux", target_os = "android")))] {
//! use burn::tensor::{Device, Distribution, Tensor};
//! use lastmile_moe_cache::cache::Budget;
//! use lastmile_moe_cache::moe::{CachedMoeLayer, MoeConfig, OffloadConfig, OffloadContext, write_store};
//! use lastmile_moe_cache::policy::PolicyKind;
//! use lastmile_moe_cache::routing::RoutingRule;
//! use lastmile_moe_cache::store::{ExpertStore, StoreOptions};
//!
//! let device = Device::flex();
//! let resident = MoeConfig::new(8, 16, 4, 2)?.init(&device);
//! let path = std::env::temp_dir().join(format!("doc-moe-{}.lmexp", std::process::id()));
//! write_store(&path, &[&resident])?;
//! let store = ExpertStore::open(&path, StoreOptions::default())?;
//! let config = OffloadConfig::new(PolicyKind::Lru, RoutingRule::CachePrior { lambda: 0.3, top_j: 1 }, 2);
//! let mut ctx = OffloadContext::new(store, Budget::PerLayer(vec![3 * 4 * 3 * 8 * 16]), config, &device)?;
//! let cached = CachedMoeLayer::from_resident(&resident, 0);
//! let x = Tensor::<2>::random([1, 8], Distribution::Normal(0.0, 1.0), &device);
//! let step = cached.forward(x, &mut ctx)?;
//! assert_eq!(step.output.dims(), [1, 8]);
//! assert_eq!(step.report.misses, 2); // a cold cache
//! # std::fs::remove_file(&path).ok();
//! # }
//! # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
//! ```

use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Device, Distribution, IndexingUpdateOp, Tensor, TensorData};
use lastmile_core::CoreError;
use lastmile_core::convert::tensor_to_vec;

use crate::cache::{Budget, CacheGeometry, ExpertCache, PrefetchReport, StepReport};
use crate::error::{MoeCacheError, Result};
use crate::policy::PolicyKind;
use crate::prefetch::step_union;
use crate::routing::{Router, RouterConfig, Routing, RoutingRule};
use crate::store::{ExpertStore, ExpertStoreWriter, ExpertWeights, LayerSpec};

/// Shape of an MoE layer.
///
/// ```
/// use lastmile_moe_cache::MoeCacheError;
/// use lastmile_moe_cache::moe::MoeConfig;
/// let c = MoeConfig::new(64, 128, 16, 2)?.with_renormalize(false);
/// assert!(!c.renormalize);
/// assert!(matches!(MoeConfig::new(64, 128, 4, 8), Err(MoeCacheError::KAboveExperts { k: 8, experts: 4 })));
/// # Ok::<(), MoeCacheError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeConfig {
    /// Model width `d`.
    pub d_model: usize,
    /// Expert hidden width `f`.
    pub d_ff: usize,
    /// Experts `E`.
    pub experts: usize,
    /// Experts per token `k`.
    pub k: usize,
    /// Renormalise the chosen weights to sum to 1 (default: true, as Mixtral).
    pub renormalize: bool,
}

impl MoeConfig {
    /// A layer of `experts` SwiGLU experts of width `d_model → d_ff → d_model`, top-`k`.
    ///
    /// # Errors
    /// Out of range for a zero size; [`MoeCacheError::KAboveExperts`].
    pub fn new(d_model: usize, d_ff: usize, experts: usize, k: usize) -> Result<Self> {
        lastmile_core::validate::check_at_least("d_model", d_model, 1)?;
        lastmile_core::validate::check_at_least("d_ff", d_ff, 1)?;
        RouterConfig::new(1, experts, k)?;
        Ok(Self {
            d_model,
            d_ff,
            experts,
            k,
            renormalize: true,
        })
    }

    /// Sets the weight convention.
    pub fn with_renormalize(mut self, renormalize: bool) -> Self {
        self.renormalize = renormalize;
        self
    }

    /// A layer with random weights on `device`: router as burn's `Linear`
    /// default (no bias), expert weights `N(0, 1/fan_in)`.
    pub fn init(&self, device: &Device) -> MoeLayer {
        let (d, f, e) = (self.d_model, self.d_ff, self.experts);
        let normal = |shape: [usize; 3], fan_in: usize| {
            let std = 1.0 / (fan_in as f64).sqrt();
            Param::from_tensor(Tensor::<3>::random(
                shape,
                Distribution::Normal(0.0, std),
                device,
            ))
        };
        MoeLayer {
            router: LinearConfig::new(d, e).with_bias(false).init(device),
            w_gate: normal([e, d, f], d),
            w_up: normal([e, d, f], d),
            w_down: normal([e, f, d], f),
            k: self.k,
            renormalize: self.renormalize,
        }
    }
}

/// An MoE layer with every expert resident, for training (see the [module docs](self)).
#[derive(Module, Debug)]
pub struct MoeLayer {
    /// Router `d → E` (no bias).
    pub router: Linear,
    /// Gate projections, `[E, d, f]`.
    pub w_gate: Param<Tensor<3>>,
    /// Up projections, `[E, d, f]`.
    pub w_up: Param<Tensor<3>>,
    /// Down projections, `[E, f, d]`.
    pub w_down: Param<Tensor<3>>,
    k: usize,
    renormalize: bool,
}

impl MoeLayer {
    /// The configuration this layer was built with.
    pub fn config(&self) -> MoeConfig {
        let [e, d, f] = self.w_gate.val().dims();
        MoeConfig {
            d_model: d,
            d_ff: f,
            experts: e,
            k: self.k,
            renormalize: self.renormalize,
        }
    }

    /// Router logits `[n, E]` of tokens `x` `[n, d]`.
    pub fn router_logits(&self, x: Tensor<2>) -> Tensor<2> {
        self.router.forward(x)
    }

    /// `y` `[n, d]` for tokens `x` `[n, d]` with normal top-k routing,
    /// evaluated densely on the device (differentiable; no host reads).
    ///
    /// # Errors
    /// [`CoreError::ShapeMismatch`] unless `x` is `[n ≥ 1, d]`.
    pub fn forward(&self, x: Tensor<2>) -> Result<Tensor<2>> {
        let c = self.config();
        let [n, d] = x.dims();
        if n == 0 || d != c.d_model {
            return Err(CoreError::shape("x", format!("[n >= 1, {}]", c.d_model), &[n, d]).into());
        }
        let logits = self.router.forward(x.clone());
        let probs = softmax(logits.clone(), 1);
        let (_, idx) = logits.topk_with_indices(c.k, 1);
        let mut w = probs.gather(1, idx.clone());
        if c.renormalize {
            let sum = w.clone().sum_dim(1);
            w = w / sum;
        }
        let dense = Tensor::<2>::zeros([n, c.experts], &x.device()).scatter(
            1,
            idx,
            w,
            IndexingUpdateOp::Add,
        );
        let xb = x.unsqueeze::<3>();
        let gate = xb.clone().matmul(self.w_gate.val());
        let up = xb.matmul(self.w_up.val());
        let out = (silu(gate) * up).matmul(self.w_down.val()); // [E, n, d]
        let mix = dense.transpose().unsqueeze_dim::<3>(2); // [E, n, 1]
        Ok((out * mix).sum_dim(0).reshape([n, d]))
    }
}

/// Writes the experts of `layers` (layer `l` of the store is `layers[l]`)
/// to an expert store at `path`. One host read per weight tensor.
///
/// # Errors
/// Host-read errors; the store writer's errors.
pub fn write_store(path: impl AsRef<Path>, layers: &[&MoeLayer]) -> Result<PathBuf> {
    let specs = layers
        .iter()
        .map(|l| {
            let c = l.config();
            LayerSpec::swiglu(c.experts, c.d_model, c.d_ff)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut writer = ExpertStoreWriter::create(path, specs)?;
    for (li, layer) in layers.iter().enumerate() {
        let c = layer.config();
        let (d, f) = (c.d_model, c.d_ff);
        let gate = tensor_to_vec(layer.w_gate.val())?;
        let up = tensor_to_vec(layer.w_up.val())?;
        let down = tensor_to_vec(layer.w_down.val())?;
        let n = d * f;
        for e in 0..c.experts {
            let r = e * n..(e + 1) * n;
            writer.write_expert(
                li,
                e,
                &[
                    (&[d, f], &gate[r.clone()]),
                    (&[d, f], &up[r.clone()]),
                    (&[f, d], &down[r]),
                ],
            )?;
        }
    }
    writer.finish()
}

/// One expert's SwiGLU weights on the device.
#[derive(Debug, Clone)]
pub struct DeviceExpert {
    /// `[d, f]`.
    pub w_gate: Tensor<2>,
    /// `[d, f]`.
    pub w_up: Tensor<2>,
    /// `[f, d]`.
    pub w_down: Tensor<2>,
}

impl DeviceExpert {
    /// Uploads loaded weights (tensors `w_gate`, `w_up`, `w_down` in that
    /// order, as [`LayerSpec::swiglu`] lays them out).
    ///
    /// # Errors
    /// [`MoeCacheError::ExpertShapeMismatch`] unless there are three rank-2
    /// tensors of shapes `[d, f]`, `[d, f]`, `[f, d]`.
    pub fn from_weights(w: ExpertWeights, device: &Device) -> Result<Self> {
        let mismatch = |i: usize, expected: Vec<usize>, found: Vec<usize>| {
            MoeCacheError::ExpertShapeMismatch {
                layer: w.layer,
                expert: w.expert,
                tensor: ["w_gate", "w_up", "w_down"]
                    .get(i)
                    .copied()
                    .unwrap_or("extra")
                    .to_owned(),
                expected,
                found,
            }
        };
        if w.shapes.len() != 3 {
            return Err(mismatch(3, vec![], vec![w.shapes.len()]));
        }
        let (d, f) = match w.shapes[0].as_slice() {
            &[d, f] => (d, f),
            other => return Err(mismatch(0, vec![0, 0], other.to_vec())),
        };
        for (i, expected) in [vec![d, f], vec![d, f], vec![f, d]].into_iter().enumerate() {
            if w.shapes[i] != expected {
                return Err(mismatch(i, expected, w.shapes[i].clone()));
            }
        }
        let mut t = w.tensors.into_iter();
        let mut next = |shape: [usize; 2]| {
            let v = t.next().unwrap_or_default();
            lastmile_core::convert::tensor_from_vec(v, shape, device)
        };
        Ok(Self {
            w_gate: next([d, f])?,
            w_up: next([d, f])?,
            w_down: next([f, d])?,
        })
    }

    /// `silu(x W_gate) ⊙ (x W_up) W_down` for `x` `[n, d]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let gate = x.clone().matmul(self.w_gate.clone());
        let up = x.matmul(self.w_up.clone());
        (silu(gate) * up).matmul(self.w_down.clone())
    }
}

/// Policy, routing rule and sizes of an [`OffloadContext`].
///
/// ```
/// use lastmile_moe_cache::moe::OffloadConfig;
/// use lastmile_moe_cache::policy::PolicyKind;
/// use lastmile_moe_cache::routing::RoutingRule;
/// let c = OffloadConfig::new(PolicyKind::Lfu, RoutingRule::TopK, 2).with_renormalize(false);
/// assert_eq!(c.k, 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OffloadConfig {
    /// Eviction policy (Belady needs the run's future: [`OffloadContext::with_future`]).
    pub policy: PolicyKind,
    /// Routing rule.
    pub rule: RoutingRule,
    /// Experts per token.
    pub k: usize,
    /// Renormalise chosen weights (must match the trained layer's convention).
    pub renormalize: bool,
}

impl OffloadConfig {
    /// Renormalised weights by default.
    pub fn new(policy: PolicyKind, rule: RoutingRule, k: usize) -> Self {
        Self {
            policy,
            rule,
            k,
            renormalize: true,
        }
    }

    /// Sets the weight convention.
    pub fn with_renormalize(mut self, renormalize: bool) -> Self {
        self.renormalize = renormalize;
        self
    }
}

/// Everything the cached layers of one model share: the store, the cache of
/// device experts, the routing rule's state, the device.
#[derive(Debug)]
pub struct OffloadContext {
    store: ExpertStore,
    cache: ExpertCache<DeviceExpert>,
    router: Router,
    device: Device,
    routings: Vec<Routing>,
    union: Vec<usize>,
}

impl OffloadContext {
    /// A context over `store` with `budget`, on `device`.
    ///
    /// # Errors
    /// The cache's and router's construction errors (e.g.
    /// [`MoeCacheError::CapacityBelowK`], [`MoeCacheError::KAboveExperts`],
    /// [`MoeCacheError::OracleNeedsFuture`]); the store's layers must all
    /// have the same expert count (out of range otherwise).
    pub fn new(
        store: ExpertStore,
        budget: Budget,
        config: OffloadConfig,
        device: &Device,
    ) -> Result<Self> {
        Self::build(store, budget, config, None, device)
    }

    /// A context whose policy is given each partition's future demand
    /// accesses, for Belady/OPT (full or bounded lookahead) in a live run:
    /// `futures[p]` is partition `p`'s sequence, as
    /// [`ExpertCache::take_access_log`] returns it from an earlier run of
    /// the same tokens with a cache-independent routing rule (online
    /// policies ignore it). A run that departs from it fails at the end of
    /// the step where it departs ([`MoeCacheError::OracleMismatch`]).
    ///
    /// # Errors
    /// As [`new`](Self::new) (except `OracleNeedsFuture`);
    /// [`CoreError::LengthMismatch`] unless there is one sequence per
    /// partition; [`MoeCacheError::OracleNeedsFixedRouting`] for Belady
    /// with a rule that depends on the cache; the policy's errors (ids out
    /// of range).
    pub fn with_future(
        store: ExpertStore,
        budget: Budget,
        config: OffloadConfig,
        futures: &[Vec<usize>],
        device: &Device,
    ) -> Result<Self> {
        if config.policy.needs_future() && config.rule.depends_on_cache() {
            return Err(MoeCacheError::OracleNeedsFixedRouting {
                rule: config.rule.name(),
            });
        }
        Self::build(store, budget, config, Some(futures), device)
    }

    fn build(
        store: ExpertStore,
        budget: Budget,
        config: OffloadConfig,
        futures: Option<&[Vec<usize>]>,
        device: &Device,
    ) -> Result<Self> {
        let geometry = CacheGeometry::from_store(&store, config.k)?;
        let experts = store.experts_per_layer();
        if experts.iter().any(|&e| e != experts[0]) {
            return Err(MoeCacheError::param(
                "experts per layer",
                experts.iter().copied().max().unwrap_or(0) as f64,
                "the same expert count in every layer of the store",
            ));
        }
        let router_config = RouterConfig::new(store.num_layers(), experts[0], config.k)?
            .with_renormalize(config.renormalize);
        let router = Router::new(config.rule, router_config)?;
        let cache = match futures {
            None => ExpertCache::new(geometry, budget, config.policy)?,
            Some(f) => {
                lastmile_core::validate::check_len(
                    "futures (one per cache partition)",
                    f.len(),
                    budget.partitions(&geometry),
                )?;
                ExpertCache::with_policies(geometry, budget, |p| {
                    config.policy.build_with_future(p.universe, &f[p.index])
                })?
            }
        };
        Ok(Self {
            store,
            cache,
            router,
            device: device.clone(),
            routings: Vec::new(),
            union: Vec::new(),
        })
    }

    /// The expert store.
    pub fn store(&self) -> &ExpertStore {
        &self.store
    }

    /// The cache.
    pub fn cache(&self) -> &ExpertCache<DeviceExpert> {
        &self.cache
    }

    /// The router (rule and per-layer state).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Forgets the routing state (start of a new sequence); the cache stays warm.
    pub fn reset_routing(&mut self) {
        self.router.reset();
    }

    /// Overrides the weight convention (renormalised over the chosen experts
    /// or raw `softmax(z)` weights), e.g. to evaluate a layer trained with
    /// one convention under the other. Takes effect from the next step.
    pub fn set_renormalize(&mut self, renormalize: bool) {
        self.router.set_renormalize(renormalize);
    }

    /// Starts or stops recording the cache's demand accesses (see
    /// [`ExpertCache::record_accesses`]).
    pub fn record_accesses(&mut self, on: bool) {
        self.cache.record_accesses(on);
    }

    /// The recorded demand accesses, one sequence per cache partition (see
    /// [`ExpertCache::take_access_log`]): the `futures` of [`with_future`](Self::with_future).
    pub fn take_access_log(&mut self) -> Vec<Vec<usize>> {
        self.cache.take_access_log()
    }

    /// Loads `experts` of `layer` ahead of use (see [`crate::prefetch`]).
    ///
    /// # Errors
    /// As [`ExpertCache::prefetch`].
    pub fn prefetch(&mut self, layer: usize, experts: &[usize]) -> Result<PrefetchReport> {
        let Self {
            store,
            cache,
            device,
            ..
        } = self;
        cache.prefetch(layer, experts, |e| {
            DeviceExpert::from_weights(store.load(layer, e)?, device)
        })
    }
}

/// The result of one [`CachedMoeLayer::forward`].
#[derive(Debug, Clone)]
pub struct MoeStep {
    /// Layer output `[n, d]`.
    pub output: Tensor<2>,
    /// Each token's chosen experts and weights.
    pub routings: Vec<Routing>,
    /// Cache hits, misses and bytes of the step.
    pub report: StepReport,
}

/// An MoE layer whose experts live in an [`ExpertStore`] and reach the
/// device through the [`ExpertCache`] of an [`OffloadContext`]; only the
/// router is held here.
#[derive(Debug, Clone)]
pub struct CachedMoeLayer {
    router: Linear,
    layer: usize,
    d_model: usize,
    d_ff: usize,
}

impl CachedMoeLayer {
    /// A cached layer at index `layer` of the store, with `router` (`[d, E]`)
    /// and experts of hidden width `d_ff`.
    pub fn new(router: Linear, layer: usize, d_ff: usize) -> Self {
        let [d_model, _] = router.weight.val().dims();
        Self {
            router,
            layer,
            d_model,
            d_ff,
        }
    }

    /// The router of a resident layer, for store layer `layer`.
    pub fn from_resident(resident: &MoeLayer, layer: usize) -> Self {
        Self::new(resident.router.clone(), layer, resident.config().d_ff)
    }

    /// The store layer this layer reads.
    pub fn layer(&self) -> usize {
        self.layer
    }

    /// Top-k experts this layer's router picks for hidden states `x` `[n, d]`
    /// (one host read) — e.g. applied to the previous layer's input to
    /// predict what to prefetch.
    ///
    /// # Errors
    /// Shape errors; host-read errors.
    pub fn predict(&self, x: Tensor<2>, k: usize) -> Result<Vec<Vec<usize>>> {
        let [n, d] = x.dims();
        if n == 0 || d != self.d_model {
            return Err(
                CoreError::shape("x", format!("[n >= 1, {}]", self.d_model), &[n, d]).into(),
            );
        }
        let e = self.router.weight.val().dims()[1];
        if k == 0 || k > e {
            return Err(MoeCacheError::KAboveExperts { k, experts: e });
        }
        let (_, idx) = self.router.forward(x).topk_with_indices(k, 1);
        let flat = lastmile_core::convert::indices_to_vec(idx)?;
        Ok(flat.chunks(k).map(<[usize]>::to_vec).collect())
    }

    /// `y` `[n, d]` for tokens `x` `[n, d]` as one step: route each token
    /// with the context's rule against the cache as it is now, load the
    /// union of the chosen experts through the cache (pinned for the step),
    /// and mix their outputs. One host read (the router logits).
    ///
    /// # Errors
    /// [`CoreError::ShapeMismatch`] for a bad `x`;
    /// [`MoeCacheError::LayerMismatch`] when the store's layer does not
    /// hold this layer's experts; [`MoeCacheError::StepExceedsCapacity`];
    /// store and load errors (the cache stays consistent, the step's pins
    /// are released).
    pub fn forward(&self, x: Tensor<2>, ctx: &mut OffloadContext) -> Result<MoeStep> {
        let [n, d] = x.dims();
        if n == 0 || d != self.d_model {
            return Err(
                CoreError::shape("x", format!("[n >= 1, {}]", self.d_model), &[n, d]).into(),
            );
        }
        let experts = self.router.weight.val().dims()[1];
        let spec = ctx.store.layer(self.layer)?;
        let expected = LayerSpec::swiglu(experts, self.d_model, self.d_ff)?;
        if spec.experts() != experts || spec.tensors() != expected.tensors() {
            return Err(MoeCacheError::LayerMismatch {
                layer: self.layer,
                reason: format!(
                    "the layer has {experts} experts of [{}, {}] but the store holds {} experts of {:?}",
                    self.d_model,
                    self.d_ff,
                    spec.experts(),
                    spec.tensors().iter().map(|t| &t.shape).collect::<Vec<_>>()
                ),
            });
        }
        let logits = tensor_to_vec(self.router.forward(x.clone()))?;
        let OffloadContext {
            store,
            cache,
            router,
            device,
            routings,
            union,
        } = ctx;
        let device: &Device = device;
        let layer = self.layer;
        router.route_batch(layer, &logits, cache.cached(layer)?, routings)?;
        step_union(routings, union);
        let report = match cache.ensure(layer, union, |e| {
            DeviceExpert::from_weights(store.load(layer, e)?, device)
        }) {
            Ok(r) => r,
            Err(e) => {
                cache.end_step()?;
                return Err(e);
            }
        };
        // Weights of each token for each expert of the union, [n, U].
        let u_n = union.len();
        let mut mix = vec![0f32; n * u_n];
        for (t, r) in routings.iter().enumerate() {
            for (&e, &w) in r.experts.iter().zip(&r.weights) {
                if let Some(col) = union.iter().position(|&u| u == e) {
                    mix[t * u_n + col] = w;
                }
            }
        }
        let mix = Tensor::<2>::from_data(TensorData::new(mix, [n, u_n]), device);
        let cache_ref = &*cache;
        let mixed = (|| {
            let mut y = Tensor::<2>::zeros([n, d], device);
            for (col, &e) in union.iter().enumerate() {
                let expert = cache_ref
                    .get(layer, e)
                    .ok_or(MoeCacheError::LayerMismatch {
                        layer,
                        reason: format!("expert {e} is not resident after ensure"),
                    })?;
                let out = expert.forward(x.clone());
                y = y + out * mix.clone().slice([0..n, col..col + 1]);
            }
            Ok::<_, MoeCacheError>(y)
        })();
        cache.end_step()?;
        let y = mixed?;
        Ok(MoeStep {
            output: y,
            routings: routings.clone(),
            report,
        })
    }
}
