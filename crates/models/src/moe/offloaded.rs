//! [`OffloadedMoeTransformer`]: routers resident, experts read from an
//! expert store through a DRAM cache.

use std::cell::RefCell;

use burn::tensor::Tensor;
use lastmile_moe_cache::cache::{Budget, LayerStats};
use lastmile_moe_cache::moe::{CachedMoeLayer, OffloadConfig, OffloadContext};
use lastmile_moe_cache::routing::RoutingRule;
use lastmile_moe_cache::store::ExpertStore;
use lastmile_moe_cache::{MoeCacheError, PolicyKind};

use super::{MoeModelError, MoeResult, MoeTransformer, Trunk};
use crate::cache::KvCache;
use crate::error::ModelError;

/// An [`MoeTransformer`] whose experts live in an [`ExpertStore`] and reach
/// the device through a DRAM expert cache, routed by any [`RoutingRule`]
/// (the crate README's MoE section describes the layout). Every forward is one cache step per layer
/// for all of its real tokens.
#[derive(Debug)]
pub struct OffloadedMoeTransformer {
    pub(super) trunk: Trunk,
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
