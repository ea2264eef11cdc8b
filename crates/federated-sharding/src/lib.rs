//! # lastmile-federated-sharding
//!
//! Spectral model sharding for federated learning: weak clients train a
//! low-rank sub-model built from some of the singular triplets of each
//! weight matrix, chosen by the sampling strategies of Korzhenkov & Louizos,
//! *On Sampling Strategies for Spectral Model Sharding* (NeurIPS 2024,
//! arXiv 2410.24106).
//!
//! - [`strategy`]: the [`SamplingStrategy`] trait and the strategies Top-n,
//!   Uniform (with and without `1/p` rescaling), PriSM-like, **Unbiased**
//!   (`p_i = min(1, c·σ_i)`, `λ_i = 1/p_i`) and **Collective**
//!   (`p_i = clip((c·σ_i − 1)/(K − 1), 0, 1)`, `λ_i = K/(1 + (K − 1)p_i)`),
//!   with the closed-form expected errors of one estimate and of the
//!   server's average of `K` estimates.
//! - [`sampler`]: fixed-size samplers with exact marginals — systematic
//!   sampling and conditional Poisson sampling (fitted working
//!   probabilities, sequential draws).
//! - [`shard`]: the server's thin SVD per round ([`SpectralLayer`]), a
//!   client's factor pair per layer ([`LayerShard`], `Ŵ = A·B`), and the
//!   same for a whole burn module ([`SpectralModel`], [`ModelShard`]).
//! - [`aggregate`]: FedAvg of clients' reconstructions weighted by data size,
//!   the factor-wise alternative, and the FedProx proximal term.
//! - [`message`]: the shard (down) and update (up) messages in a versioned,
//!   checksummed binary format that any FL transport can carry.
//! - [`simulation`]: an in-process federated run for research — `K` of `N`
//!   clients per round train their shards of an MLP with local SGD (or
//!   FedProx) on `device.autodiff()`, every message is encoded, counted
//!   and decoded, and the server aggregates; full-model FedAvg as baseline.
//! - [`ShardingError`]: one error type; shared input checks come from
//!   [`lastmile_core::validate`] through [`ShardingError::Core`].
//!
//! All sampling and estimation bookkeeping runs on the host in `f64`; the
//! SVD is [`lastmile_core::linalg::svd`] (faer); module access goes through
//! [`lastmile_core::module`]. No dependency beyond the workspace's burn,
//! `rand` (caller-seeded sampling), `thiserror` and `lastmile-core`: the
//! SVD comes from core, and the wire format (little-endian fields, FNV-1a
//! checksum) is ~400 lines that a serialisation crate would not shorten
//! while adding a format we would still have to specify.
//!
//! ## Example
//! One layer, one round: decompose, allocate with the Collective strategy
//! for `K = 4` clients, draw a client's shard by conditional Poisson
//! sampling, check its reconstruction error against the closed form, and
//! send it over the wire.
//!
//! ```
//! # #[cfg(feature = "flex")] {
//! use burn::tensor::{Device, Distribution, Tensor};
//! use lastmile_federated_sharding::{
//!     ModelShard, NamedShard, Sampler, SamplingStrategy, SpectralLayer, Strategy,
//!     budget_for_ratio, message::ShardMessage, sampler::FixedSizeDesign,
//! };
//! use lastmile_core::module::Layout;
//! use rand::{SeedableRng, rngs::StdRng};
//!
//! let device = Device::flex();
//! device.seed(0);
//! let w = Tensor::<2>::random([16, 12], Distribution::Normal(0.0, 1.0), &device);
//! let layer = SpectralLayer::decompose(w)?;
//! let n = budget_for_ratio(0.25, layer.rank())?; // 3 of 12 triplets
//! let allocation = Strategy::Collective.allocate(layer.sigma(), n, 4)?;
//! let design = Sampler::ConditionalPoisson.design(allocation.probabilities())?;
//!
//! let mut rng = StdRng::seed_from_u64(7);
//! let indices = design.sample(&mut rng);
//! let shard = layer.shard(&indices, &allocation)?;
//! assert_eq!((shard.rows(), shard.kept(), shard.cols()), (16, 3, 12));
//!
//! // closed-form error of the server's average of 4 such estimates, relative to ‖W‖²
//! let rel = allocation.expected_error_averaged(layer.sigma(), 4)? / layer.frobenius_sq();
//! assert!(rel > 0.0 && rel < 1.0);
//!
//! let msg = ShardMessage {
//!     round: 0, client_id: 1, strategy: Strategy::Collective,
//!     sampler: Sampler::ConditionalPoisson, clients_per_round: 4,
//!     shard: ModelShard::new(vec![NamedShard { path: "w".into(), layout: Layout::OutIn, shard }], vec![])?,
//! };
//! let bytes = msg.encode()?;
//! assert_eq!(ShardMessage::decode(&bytes)?, msg);
//! # }
//! # Ok::<(), lastmile_federated_sharding::ShardingError>(())
//! ```

pub mod aggregate;
mod error;
pub mod message;
pub mod sampler;
pub mod shard;
pub mod simulation;
pub mod strategy;

pub use error::{Result, ShardingError};
pub use sampler::{ConditionalPoisson, Design, FixedSizeDesign, Sampler, Systematic};
pub use shard::{
    Budget, DenseParam, LayerPlan, LayerShard, ModelShard, ModelWeights, NamedLayer, NamedMatrix,
    NamedShard, ShardPlan, SpectralLayer, SpectralModel, budget_for_ratio,
};
pub use strategy::{
    Allocation, Collective, PrismLike, SamplingStrategy, Strategy, TopN, Unbiased, Uniform,
};
