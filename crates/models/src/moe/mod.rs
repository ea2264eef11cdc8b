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
//!   read from an on-disk [`ExpertStore`](lastmile_moe_cache::store::ExpertStore) through a DRAM
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

use burn::nn::{EmbeddingConfig, LayerNormConfig, LinearConfig};
use burn::tensor::{Device, Tensor};
use lastmile_core::CoreError;
use lastmile_core::lm::{LanguageModel, LmError, LmResult};
use lastmile_moe_cache::MoeCacheError;
use lastmile_moe_cache::moe::MoeConfig;
use thiserror::Error;

use crate::cache::KvCache;
use crate::error::ModelError;
use crate::transformer::{TransformerConfig, check_sizes};

mod offloaded;
mod resident;
mod trunk;

pub use offloaded::OffloadedMoeTransformer;
pub use resident::{MoeTrainStep, MoeTransformer, train_moe};
pub use trunk::{Attention, Trunk};

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
