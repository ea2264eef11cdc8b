//! In-process federated simulation, for research: `N` clients, `K` sampled
//! per round, local SGD on spectral shards of an MLP, server aggregation,
//! and exact byte accounting of every message that would travel.
//!
//! One round `t`:
//!
//! 1. The server samples `K` of the `N` clients without replacement (seeded).
//! 2. **Sharded methods**: it takes the thin SVD of every sharded weight of
//!    the global MLP ([`SpectralModel::from_module`](crate::SpectralModel::from_module)), builds one
//!    [`ShardPlan`](crate::ShardPlan) per distinct keep ratio among the
//!    sampled clients (Collective is allocated for the server's average of
//!    all `K` clients, see below), and draws each client's
//!    [`ModelShard`](crate::ModelShard). **Full FedAvg**: the client gets every parameter dense.
//! 3. Each sub-model travels as a [`ShardMessage`]: it is encoded to bytes,
//!    counted, and decoded on the "client" side, which builds its model from
//!    the decoded message only. A sharded layer becomes two trainable
//!    factors `A [out, n]`, `B [n, in]` with `W = A·B`; biases (and any layer
//!    left dense) are trained as they are.
//! 4. The client runs `local_epochs` of mini-batch SGD on its data, on
//!    `device.autodiff()`, minimising cross-entropy plus, with FedProx
//!    (Li et al., 2020, eq. 2), `μ/2 ‖w − w_received‖²` over its trainable
//!    parameters `w` (the factors and dense values it received).
//! 5. The trained sub-model travels back as an [`UpdateMessage`] (encoded,
//!    counted, decoded by the server), and the server aggregates with
//!    [`aggregate::fedavg`](crate::aggregate::fedavg) (dense reconstructions `A_k B_k` weighted by the
//!    clients' sample counts, McMahan et al., 2017) or
//!    [`aggregate::factorwise`](crate::aggregate::factorwise).
//! 6. The new global model is evaluated on the held-out set, if given, and
//!    the round's [`RoundRecord`] goes to the caller's progress closure.
//!
//! **Heterogeneous budgets.** Every client has a fixed keep ratio
//! ([`mixed_keep_ratios`] assigns e.g. 60 % of clients 0.2 and 40 % 0.4).
//! Collective's allocation depends on `K`; with several budgets in a round
//! every budget group is allocated with `K` = clients per round. By
//! Jensen's inequality the error of the server's weighted average is at
//! most the weighted mean of the groups' errors (E2) with that `K`, which is
//! what each group's allocation then minimises.
//!
//! **Bytes.** `bytes_down` / `bytes_up` are the lengths of the encoded
//! messages (checked against [`ShardMessage::encoded_len`] /
//! [`UpdateMessage::encoded_len`]), so they are what a transport would carry.
//!
//! **One server, one client, two drivers.** [`Server`] (steps 1, 2 and 5)
//! and [`Client`] (step 4) hold the round's logic; [`Simulation::run`]
//! drives them in one process, and a deployment drives the same objects
//! with messages that crossed a network (the Flower app of
//! `bindings/python`), so both make the same choices for the same seed.
//! A client's local-training seed is [`client_seed`].
//!
//! **Determinism.** Initial weights, client sampling, shard draws and
//! mini-batch order all come from host generators derived from
//! [`SimulationConfig::seed`]; the device's RNG is never used, so two runs
//! with the same inputs give bit-identical records on the same backend.
//!
//! ```
//! # #[cfg(feature = "flex")] {
//! use burn::tensor::Device;
//! use lastmile_federated_sharding::simulation::{
//!     ClientData, Method, ShardingConfig, Simulation, SimulationConfig,
//! };
//! use lastmile_federated_sharding::{Sampler, Strategy};
//!
//! // 2 clients, 2 features, 2 classes: class = sign of the first feature
//! let client = |s: f32| ClientData {
//!     features: vec![s, 0.1, -s, 0.2, s * 0.5, -0.1, -s * 0.5, 0.0],
//!     labels: vec![0, 1, 0, 1],
//! };
//! let mut config = SimulationConfig::new(vec![2, 4, 2]);
//! config.rounds = 2;
//! config.clients_per_round = 2;
//! config.method = Method::Sharded(ShardingConfig::new(
//!     Strategy::Collective,
//!     Sampler::ConditionalPoisson,
//!     vec![0.5, 0.5],
//! ));
//! let sim = Simulation::new(config, vec![client(1.0), client(2.0)], None, &Device::flex())?;
//! let report = sim.run(|r| println!("round {} sent {} bytes", r.round, r.bytes_down))?;
//! assert_eq!(report.rounds.len(), 2);
//! assert!(report.rounds[1].cumulative_bytes_up > report.rounds[0].bytes_up);
//! # }
//! # Ok::<(), lastmile_federated_sharding::ShardingError>(())
//! ```

mod client;
mod mlp;
mod server;

pub use client::{Client, LocalUpdate};
pub use mlp::Mlp;
pub use server::{RoundPlan, Server};

use burn::tensor::{Device, Int, Tensor};
use lastmile_core::CoreError;
use lastmile_core::convert::{int_tensor_from_indices, tensor_from_vec};
use lastmile_core::validate::{
    check_at_least, check_finite_slice, check_indices, check_interval, check_len, check_positive,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::error::{Result, ShardingError};
use crate::message::{ShardMessage, UpdateMessage};
use crate::sampler::Sampler;
use crate::shard::DenseParam;
use crate::strategy::Strategy;
use mlp::check_layer_sizes;

// ----------------------------------------------------------------- config

/// How the server combines the clients' trained sub-models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregation {
    /// [`aggregate::fedavg`](crate::aggregate::fedavg): average of the dense reconstructions `A_k B_k`.
    FedAvg,
    /// [`aggregate::factorwise`](crate::aggregate::factorwise): per-triplet average of the factors.
    FactorWise,
}

/// Spectral sharding settings of a [`Method::Sharded`] run.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardingConfig {
    /// Which triplets each client gets, and with which multipliers.
    pub strategy: Strategy,
    /// The fixed-size design that draws them.
    pub sampler: Sampler,
    /// Keep ratio of every client (one per client, each in `(0, 1]`): a
    /// client keeps `max(1, round(ratio · rank))` triplets of each sharded
    /// layer ([`budget_for_ratio`](crate::budget_for_ratio)).
    pub keep_ratios: Vec<f64>,
    /// Server aggregation.
    pub aggregation: Aggregation,
    /// Keep the output layer dense (sent and trained in full) instead of
    /// sharding it. Default `false`: every layer is sharded.
    pub dense_output_layer: bool,
}

impl ShardingConfig {
    /// FedAvg aggregation, every layer sharded.
    pub fn new(strategy: Strategy, sampler: Sampler, keep_ratios: Vec<f64>) -> Self {
        Self {
            strategy,
            sampler,
            keep_ratios,
            aggregation: Aggregation::FedAvg,
            dense_output_layer: false,
        }
    }
}

/// What clients train.
#[derive(Clone, Debug, PartialEq)]
pub enum Method {
    /// Full-model FedAvg: every client gets and trains the whole model.
    Full,
    /// Spectral sharding.
    Sharded(ShardingConfig),
}

impl Method {
    /// A short name: `fedavg-full` or the strategy's name.
    pub fn name(&self) -> &'static str {
        use crate::strategy::SamplingStrategy;
        match self {
            Method::Full => "fedavg-full",
            Method::Sharded(s) => s.strategy.name(),
        }
    }
}

/// Settings of a [`Simulation`]. [`SimulationConfig::new`] gives defaults;
/// every field is checked by [`Simulation::new`].
#[derive(Clone, Debug, PartialEq)]
pub struct SimulationConfig {
    /// MLP widths `[input, hidden…, classes]`.
    pub layer_sizes: Vec<usize>,
    /// Rounds (≥ 1).
    pub rounds: usize,
    /// Clients sampled per round `K`, `1 ≤ K ≤ N`.
    pub clients_per_round: usize,
    /// Passes over its data a client makes per round (≥ 1).
    pub local_epochs: usize,
    /// Rows per SGD step (≥ 1).
    pub batch_size: usize,
    /// SGD learning rate (> 0).
    pub learning_rate: f64,
    /// FedProx `μ ≥ 0`; 0 is plain FedAvg local training.
    pub proximal_mu: f64,
    /// Full model or spectral sharding.
    pub method: Method,
    /// Seed of every random choice of the run.
    pub seed: u64,
}

impl SimulationConfig {
    /// Defaults: 10 rounds, 1 client per round, 1 local epoch, batch 32,
    /// learning rate 0.05, `μ = 0`, full-model FedAvg, seed 0.
    pub fn new(layer_sizes: Vec<usize>) -> Self {
        Self {
            layer_sizes,
            rounds: 10,
            clients_per_round: 1,
            local_epochs: 1,
            batch_size: 32,
            learning_rate: 0.05,
            proximal_mu: 0.0,
            method: Method::Full,
            seed: 0,
        }
    }
}

/// Keep ratios for `n_clients` clients from a mixture `[(share, ratio)]`:
/// `round(share · n)` clients get each ratio (the last group takes the
/// rest), assigned to clients in a seeded random order. Each client keeps
/// its ratio for the whole run.
///
/// # Errors
/// [`CoreError::Empty`] for no group, [`CoreError::OutOfRange`] named
/// `shares` unless the shares are `≥ 0` and sum to 1 (within 1e-9),
/// `keep_ratio` for a ratio outside `(0, 1]`, `n_clients` for 0 clients.
///
/// ```
/// use lastmile_federated_sharding::simulation::mixed_keep_ratios;
/// let r = mixed_keep_ratios(10, &[(0.6, 0.2), (0.4, 0.4)], 0)?;
/// assert_eq!(r.iter().filter(|&&x| x == 0.2).count(), 6);
/// assert_eq!(r.iter().filter(|&&x| x == 0.4).count(), 4);
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
pub fn mixed_keep_ratios(n_clients: usize, groups: &[(f64, f64)], seed: u64) -> Result<Vec<f64>> {
    use std::ops::Bound::{Excluded, Included};
    check_at_least("n_clients", n_clients, 1)?;
    if groups.is_empty() {
        return Err(CoreError::Empty {
            what: "keep-ratio groups".to_owned(),
            min: 1,
        }
        .into());
    }
    let mut total = 0.0;
    for &(share, ratio) in groups {
        check_interval("shares", share, Included(0.0), Included(1.0))?;
        check_interval("keep_ratio", ratio, Excluded(0.0), Included(1.0))?;
        total += share;
    }
    if (total - 1.0).abs() > 1e-9 {
        return Err(CoreError::out_of_range("shares", total, "shares summing to 1").into());
    }
    let mut ratios = Vec::with_capacity(n_clients);
    for (g, &(share, ratio)) in groups.iter().enumerate() {
        let count = if g + 1 == groups.len() {
            n_clients - ratios.len()
        } else {
            ((share * n_clients as f64).round() as usize).min(n_clients - ratios.len())
        };
        ratios.extend(std::iter::repeat_n(ratio, count));
    }
    ratios.shuffle(&mut StdRng::seed_from_u64(seed));
    Ok(ratios)
}

/// One client's local data: `n × input` features (row-major) and `n` labels.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientData {
    /// Row-major features, `n · input` values.
    pub features: Vec<f32>,
    /// Class labels, `n` values `< classes`.
    pub labels: Vec<usize>,
}

impl ClientData {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there is no sample.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub(crate) fn check(&self, what: &str, dim: usize, classes: usize) -> Result<()> {
        if self.is_empty() {
            return Err(CoreError::Empty {
                what: what.to_owned(),
                min: 1,
            }
            .into());
        }
        check_len(
            &format!("{what} features"),
            self.features.len(),
            self.len() * dim,
        )?;
        check_finite_slice(&format!("{what} features"), &self.features)?;
        check_indices(&format!("{what} labels"), &self.labels, classes)?;
        Ok(())
    }

    /// Rows `idx` as tensors on `device`.
    pub(crate) fn batch(
        &self,
        idx: &[usize],
        dim: usize,
        device: &Device,
    ) -> Result<(Tensor<2>, Tensor<1, Int>)> {
        let mut x = Vec::with_capacity(idx.len() * dim);
        let mut y = Vec::with_capacity(idx.len());
        for &i in idx {
            x.extend_from_slice(&self.features[i * dim..(i + 1) * dim]);
            y.push(self.labels[i]);
        }
        Ok((
            tensor_from_vec(x, [idx.len(), dim], device)?,
            int_tensor_from_indices(&y, [idx.len()], device)?,
        ))
    }
}

// ---------------------------------------------------------------- records

/// What happened in one round.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundRecord {
    /// Round number, from 1.
    pub round: usize,
    /// The sampled clients, ascending.
    pub clients: Vec<usize>,
    /// Bytes of this round's shard messages (server → clients).
    pub bytes_down: u64,
    /// Bytes of this round's update messages (clients → server).
    pub bytes_up: u64,
    /// `bytes_down` summed over rounds `1..=round`.
    pub cumulative_bytes_down: u64,
    /// `bytes_up` summed over rounds `1..=round`.
    pub cumulative_bytes_up: u64,
    /// Mean local cross-entropy over every SGD step of the round's clients,
    /// weighted by batch size (without the FedProx term).
    pub train_loss: f64,
    /// Accuracy of the aggregated global model on the held-out set, if one
    /// was given.
    pub test_accuracy: Option<f64>,
}

impl RoundRecord {
    /// `cumulative_bytes_down + cumulative_bytes_up`.
    pub fn cumulative_bytes(&self) -> u64 {
        self.cumulative_bytes_down + self.cumulative_bytes_up
    }
}

/// The outcome of [`Simulation::run`].
#[derive(Clone, Debug, PartialEq)]
pub struct SimulationReport {
    /// One record per round.
    pub rounds: Vec<RoundRecord>,
    /// Held-out accuracy of the initial model (before round 1), if a
    /// held-out set was given.
    pub initial_accuracy: Option<f64>,
    /// Every parameter of the final global model, in module order, as stored.
    pub final_params: Vec<DenseParam>,
}

impl SimulationReport {
    /// Held-out accuracy after the last round, if measured.
    pub fn final_accuracy(&self) -> Option<f64> {
        self.rounds.last().and_then(|r| r.test_accuracy)
    }
}

// ------------------------------------------------------------- simulation

/// A validated federated simulation (see the [module docs](self)).
#[derive(Debug)]
pub struct Simulation {
    config: SimulationConfig,
    clients: Vec<ClientData>,
    test: Option<ClientData>,
    device: Device,
}

impl Simulation {
    /// Checks the configuration and the data.
    ///
    /// The global model and evaluation live on `device`; clients train on
    /// `device.clone().autodiff()`.
    ///
    /// # Errors
    /// All as [`ShardingError::Core`]:
    /// - [`CoreError::Empty`] for fewer than 2 layer sizes, no client, or a
    ///   client (`client {k} data`) or held-out set without samples;
    /// - [`CoreError::OutOfRange`] named `clients_per_round` unless
    ///   `1 ≤ K ≤ N`; `rounds`, `local_epochs`, `batch_size` or
    ///   `layer_sizes[i]` of 0; `learning_rate` not finite and `> 0`;
    ///   `proximal_mu` not finite and `≥ 0`; `keep_ratios[k]` outside `(0, 1]`;
    /// - [`CoreError::LengthMismatch`] for `keep_ratios` of another length
    ///   than the client list, or features that are not `n × input`;
    /// - [`CoreError::NonFinite`] for NaN/inf features;
    /// - [`CoreError::IndexOutOfRange`] for a label `≥ classes`.
    pub fn new(
        config: SimulationConfig,
        clients: Vec<ClientData>,
        test: Option<ClientData>,
        device: &Device,
    ) -> Result<Self> {
        check_config(&config)?;
        check_federation(&config, clients.len())?;
        let dim = config.layer_sizes[0];
        let classes = config.layer_sizes[config.layer_sizes.len() - 1];
        for (k, c) in clients.iter().enumerate() {
            c.check(&format!("client {k} data"), dim, classes)?;
        }
        if let Some(t) = &test {
            t.check("held-out data", dim, classes)?;
        }
        Ok(Self {
            config,
            clients,
            test,
            device: device.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SimulationConfig {
        &self.config
    }

    /// Runs every round, calling `progress` after each with its record.
    ///
    /// # Errors
    /// Only on an internal inconsistency (a message that does not decode to
    /// what was encoded, a non-finite trained value such as a diverged SGD
    /// run: [`CoreError::NonFinite`]), never silently.
    pub fn run(&self, mut progress: impl FnMut(&RoundRecord)) -> Result<SimulationReport> {
        let cfg = &self.config;
        let mut server = Server::new(cfg.clone(), self.clients.len(), &self.device)?;
        let client = Client::new(cfg.clone(), &self.device)?;
        let initial_accuracy = self.evaluate(&server)?;
        let mut rounds: Vec<RoundRecord> = Vec::with_capacity(cfg.rounds);
        let (mut cum_down, mut cum_up) = (0u64, 0u64);
        for _ in 0..cfg.rounds {
            let plan = server.begin_round()?;
            let (mut bytes_down, mut bytes_up) = (0u64, 0u64);
            let (mut loss_sum, mut loss_rows) = (0.0f64, 0usize);
            let mut updates = Vec::with_capacity(plan.clients.len());
            for (&k, down) in plan.clients.iter().zip(&plan.messages) {
                let wire_down = encode_shard(down)?;
                bytes_down += wire_down.len() as u64;
                // The client sees only what came over the wire.
                let received = ShardMessage::decode(&wire_down)?;
                let seed = client_seed(cfg.seed, plan.round, k);
                let local = client.train(&received, &self.clients[k], seed)?;
                loss_sum += local.loss_sum;
                loss_rows += local.rows;
                let wire_up = encode_update(&local.message)?;
                bytes_up += wire_up.len() as u64;
                updates.push(UpdateMessage::decode(&wire_up)?);
            }
            server.finish_round(updates)?;
            cum_down += bytes_down;
            cum_up += bytes_up;
            let record = RoundRecord {
                round: plan.round,
                clients: plan.clients,
                bytes_down,
                bytes_up,
                cumulative_bytes_down: cum_down,
                cumulative_bytes_up: cum_up,
                train_loss: loss_sum / loss_rows.max(1) as f64,
                test_accuracy: self.evaluate(&server)?,
            };
            progress(&record);
            rounds.push(record);
        }
        Ok(SimulationReport {
            rounds,
            initial_accuracy,
            final_params: server.params()?,
        })
    }

    /// Held-out accuracy of the server's global model, or `None` without a
    /// held-out set.
    fn evaluate(&self, server: &Server) -> Result<Option<f64>> {
        self.test.as_ref().map(|t| server.evaluate(t)).transpose()
    }
}

/// Checks of a configuration that do not depend on the federation.
pub(crate) fn check_config(config: &SimulationConfig) -> Result<()> {
    use std::ops::Bound::{Included, Unbounded};
    check_layer_sizes(&config.layer_sizes)?;
    check_at_least("rounds", config.rounds, 1)?;
    check_at_least("local_epochs", config.local_epochs, 1)?;
    check_at_least("batch_size", config.batch_size, 1)?;
    check_positive("learning_rate", config.learning_rate)?;
    check_interval("proximal_mu", config.proximal_mu, Included(0.0), Unbounded)?;
    Ok(())
}

/// Checks of a configuration against the number of clients `n`.
pub(crate) fn check_federation(config: &SimulationConfig, n: usize) -> Result<()> {
    use std::ops::Bound::{Excluded, Included};
    if n == 0 {
        return Err(CoreError::Empty {
            what: "clients".to_owned(),
            min: 1,
        }
        .into());
    }
    if config.clients_per_round == 0 || config.clients_per_round > n {
        return Err(CoreError::out_of_range(
            "clients_per_round",
            config.clients_per_round as f64,
            &format!("an integer in [1, {n}] (the number of clients)"),
        )
        .into());
    }
    if let Method::Sharded(s) = &config.method {
        check_len("keep_ratios", s.keep_ratios.len(), n)?;
        for (k, &r) in s.keep_ratios.iter().enumerate() {
            check_interval(
                &format!("keep_ratios[{k}]"),
                r,
                Excluded(0.0),
                Included(1.0),
            )?;
        }
    }
    Ok(())
}

/// The local-training seed of `client` in `round` of a run seeded `seed`:
/// what [`Simulation::run`] passes to [`Client::train`], so a deployment
/// that uses it trains exactly as the simulation does.
///
/// ```
/// use lastmile_federated_sharding::simulation::client_seed;
/// assert_ne!(client_seed(0, 1, 2), client_seed(0, 2, 1));
/// ```
pub fn client_seed(seed: u64, round: usize, client: usize) -> u64 {
    derive_seed(seed, 3 + round as u64, client as u64)
}

/// SplitMix64 of `(seed, stream, index)`: independent seeds per purpose.
fn derive_seed(seed: u64, stream: u64, index: u64) -> u64 {
    let mut z = seed
        ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn encode_shard(msg: &ShardMessage) -> Result<Vec<u8>> {
    let bytes = msg.encode()?;
    check_wire_len("shard message", bytes.len(), msg.encoded_len())?;
    Ok(bytes)
}

fn encode_update(msg: &UpdateMessage) -> Result<Vec<u8>> {
    let bytes = msg.encode()?;
    check_wire_len("update message", bytes.len(), msg.encoded_len())?;
    Ok(bytes)
}

fn check_wire_len(what: &str, found: usize, expected: usize) -> Result<()> {
    if found != expected {
        return Err(ShardingError::mismatch(
            format!("encoded length of a {what}"),
            format!("{expected} bytes (encoded_len)"),
            format!("{found} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_seeds_differ_by_stream_and_index() {
        let a = derive_seed(1, 2, 3);
        assert_ne!(a, derive_seed(1, 2, 4));
        assert_ne!(a, derive_seed(1, 3, 3));
        assert_ne!(a, derive_seed(2, 2, 3));
        assert_eq!(a, derive_seed(1, 2, 3));
    }
}
