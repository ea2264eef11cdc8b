//! In-process federated simulation, for research: `N` clients, `K` sampled
//! per round, local SGD on spectral shards of an MLP, server aggregation,
//! and exact byte accounting of every message that would travel.
//!
//! One round `t`:
//!
//! 1. The server samples `K` of the `N` clients without replacement (seeded).
//! 2. **Sharded methods**: it takes the thin SVD of every sharded weight of
//!    the global MLP ([`SpectralModel::from_module`]), builds one
//!    [`ShardPlan`] per distinct keep ratio among the
//!    sampled clients (Collective is allocated for the server's average of
//!    all `K` clients, see below), and draws each client's
//!    [`ModelShard`]. **Full FedAvg**: the client gets every parameter dense.
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
//!    [`aggregate::fedavg`] (dense reconstructions `A_k B_k` weighted by the
//!    clients' sample counts, McMahan et al., 2017) or
//!    [`aggregate::factorwise`].
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

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor};
use lastmile_core::CoreError;
use lastmile_core::convert::{
    indices_to_vec, int_tensor_from_indices, tensor_from_vec, tensor_to_vec,
};
use lastmile_core::module::{Layout, ParamValue, Selector, collect_params};
use lastmile_core::numerics::log_softmax;
use lastmile_core::validate::{
    check_at_least, check_finite_slice, check_indices, check_interval, check_len, check_positive,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use crate::aggregate::{self, proximal_penalty};
use crate::error::{Result, ShardingError};
use crate::message::{ShardMessage, UpdateMessage};
use crate::sampler::Sampler;
use crate::shard::{Budget, DenseParam, ModelShard, NamedShard, ShardPlan, SpectralModel};
use crate::strategy::Strategy;

// ------------------------------------------------------------------ model

/// A multi-layer perceptron `Linear → ReLU → … → Linear` (logits out), the
/// model the simulation trains. Layer `i` is the module path `layers.{i}`,
/// so its weight is `layers.{i}.weight` (stored `[in, out]`, burn's
/// `Linear`, [`Layout::InOut`]) and its bias `layers.{i}.bias`.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_federated_sharding::simulation::Mlp;
/// let d = Device::flex();
/// let mlp = Mlp::new(&[4, 8, 3], 0, &d)?;
/// assert_eq!(mlp.forward(Tensor::zeros([5, 4], &d)).dims(), [5, 3]);
/// assert_eq!(Mlp::weight_path(1), "layers.1.weight");
/// # }
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    /// An MLP with widths `[input, hidden…, classes]`, initialised on the
    /// host from `seed` like burn's `Linear` default: every weight and bias
    /// uniform in `[−1/√in, 1/√in]` (Kaiming-uniform with gain `1/√3`).
    ///
    /// # Errors
    /// [`CoreError::Empty`] for fewer than 2 widths,
    /// [`CoreError::OutOfRange`] named `layer_sizes[i]` for a width of 0.
    pub fn new(layer_sizes: &[usize], seed: u64, device: &Device) -> Result<Self> {
        check_layer_sizes(layer_sizes)?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut layers = Vec::with_capacity(layer_sizes.len() - 1);
        for w in layer_sizes.windows(2) {
            let (d_in, d_out) = (w[0], w[1]);
            let bound = 1.0 / (d_in as f64).sqrt();
            let mut uniform = |n: usize| -> Vec<f32> {
                (0..n)
                    .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32)
                    .collect()
            };
            let weight = tensor_from_vec(uniform(d_in * d_out), [d_in, d_out], device)?;
            let bias = tensor_from_vec(uniform(d_out), [d_out], device)?;
            layers.push(Linear {
                weight: Param::from_tensor(weight),
                bias: Some(Param::from_tensor(bias)),
            });
        }
        Ok(Self { layers })
    }

    /// Logits `[batch, classes]` for inputs `[batch, input]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len().saturating_sub(1);
        self.layers.iter().enumerate().fold(x, |h, (i, layer)| {
            let h = layer.forward(h);
            if i < last { relu(h) } else { h }
        })
    }

    /// Number of `Linear` layers.
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// Module path of layer `i`'s weight: `layers.{i}.weight`.
    pub fn weight_path(i: usize) -> String {
        format!("layers.{i}.weight")
    }

    /// Module path of layer `i`'s bias: `layers.{i}.bias`.
    pub fn bias_path(i: usize) -> String {
        format!("layers.{i}.bias")
    }
}

fn check_layer_sizes(sizes: &[usize]) -> Result<()> {
    if sizes.len() < 2 {
        return Err(CoreError::Empty {
            what: "layer sizes (input and output widths)".to_owned(),
            min: 2,
        }
        .into());
    }
    for (i, &s) in sizes.iter().enumerate() {
        check_at_least(&format!("layer_sizes[{i}]"), s, 1)?;
    }
    Ok(())
}

// ----------------------------------------------------------------- config

/// How the server combines the clients' trained sub-models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregation {
    /// [`aggregate::fedavg`]: average of the dense reconstructions `A_k B_k`.
    FedAvg,
    /// [`aggregate::factorwise`]: per-triplet average of the factors.
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

    fn check(&self, what: &str, dim: usize, classes: usize) -> Result<()> {
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
    fn batch(
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
    train_device: Device,
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
        use std::ops::Bound::{Excluded, Included, Unbounded};
        check_layer_sizes(&config.layer_sizes)?;
        let dim = config.layer_sizes[0];
        let classes = config.layer_sizes[config.layer_sizes.len() - 1];
        if clients.is_empty() {
            return Err(CoreError::Empty {
                what: "clients".to_owned(),
                min: 1,
            }
            .into());
        }
        let n = clients.len();
        if config.clients_per_round == 0 || config.clients_per_round > n {
            return Err(CoreError::out_of_range(
                "clients_per_round",
                config.clients_per_round as f64,
                &format!("an integer in [1, {n}] (the number of clients)"),
            )
            .into());
        }
        check_at_least("rounds", config.rounds, 1)?;
        check_at_least("local_epochs", config.local_epochs, 1)?;
        check_at_least("batch_size", config.batch_size, 1)?;
        check_positive("learning_rate", config.learning_rate)?;
        check_interval("proximal_mu", config.proximal_mu, Included(0.0), Unbounded)?;
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
            train_device: device.clone().autodiff(),
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
        let mut global = Mlp::new(&cfg.layer_sizes, derive_seed(cfg.seed, 0, 0), &self.device)?;
        let initial_accuracy = self.evaluate(&global)?;
        let mut pick_rng = StdRng::seed_from_u64(derive_seed(cfg.seed, 1, 0));
        let mut draw_rng = StdRng::seed_from_u64(derive_seed(cfg.seed, 2, 0));
        let mut rounds: Vec<RoundRecord> = Vec::with_capacity(cfg.rounds);
        let (mut cum_down, mut cum_up) = (0u64, 0u64);
        for round in 1..=cfg.rounds {
            let clients = sample_clients(self.clients.len(), cfg.clients_per_round, &mut pick_rng);
            let server = self.server_model(&global)?;
            let downs = self.shard_messages(&server, round, &clients, &mut draw_rng)?;
            let (mut bytes_down, mut bytes_up) = (0u64, 0u64);
            let (mut loss_sum, mut loss_rows) = (0.0f64, 0usize);
            let mut updates = Vec::with_capacity(clients.len());
            for (&k, down) in clients.iter().zip(&downs) {
                let wire_down = encode_shard(down)?;
                bytes_down += wire_down.len() as u64;
                // The client sees only what came over the wire.
                let received = ShardMessage::decode(&wire_down)?;
                let seed = derive_seed(cfg.seed, 3 + round as u64, k as u64);
                let (trained, sum, rows) = self.train_client(&received, &self.clients[k], seed)?;
                loss_sum += sum;
                loss_rows += rows;
                let up =
                    UpdateMessage::from_shard(&received, self.clients[k].len() as u64, &trained);
                let wire_up = encode_update(&up)?;
                bytes_up += wire_up.len() as u64;
                updates.push(UpdateMessage::decode(&wire_up)?);
            }
            let weights = match &cfg.method {
                Method::Sharded(ShardingConfig {
                    aggregation: Aggregation::FactorWise,
                    ..
                }) => aggregate::factorwise(&server, &updates)?,
                _ => aggregate::fedavg(&server, &updates)?,
            };
            global = weights.apply_to(global)?;
            cum_down += bytes_down;
            cum_up += bytes_up;
            let record = RoundRecord {
                round,
                clients,
                bytes_down,
                bytes_up,
                cumulative_bytes_down: cum_down,
                cumulative_bytes_up: cum_up,
                train_loss: loss_sum / loss_rows.max(1) as f64,
                test_accuracy: self.evaluate(&global)?,
            };
            progress(&record);
            rounds.push(record);
        }
        Ok(SimulationReport {
            rounds,
            initial_accuracy,
            final_params: all_dense(&global)?,
        })
    }

    /// The server's view of the global model this round: SVDs of the
    /// sharded weights (none for full FedAvg) and every other parameter dense.
    fn server_model(&self, global: &Mlp) -> Result<SpectralModel> {
        match &self.config.method {
            Method::Full => SpectralModel::from_parts(Vec::new(), all_dense(global)?),
            Method::Sharded(s) => {
                let depth = global.depth();
                let sharded = if s.dense_output_layer {
                    depth - 1
                } else {
                    depth
                };
                if sharded == 0 {
                    // A single-layer model with its only layer kept dense.
                    return SpectralModel::from_parts(Vec::new(), all_dense(global)?);
                }
                let selector = Selector::new((0..sharded).map(Mlp::weight_path))?;
                SpectralModel::from_module(global, &selector, Layout::InOut)
            }
        }
    }

    /// One shard message per sampled client.
    fn shard_messages(
        &self,
        server: &SpectralModel,
        round: usize,
        clients: &[usize],
        rng: &mut StdRng,
    ) -> Result<Vec<ShardMessage>> {
        let k = self.config.clients_per_round;
        let message = |client: usize, strategy, sampler, shard| ShardMessage {
            round: round as u64,
            client_id: client as u64,
            strategy,
            sampler,
            clients_per_round: k as u32,
            shard,
        };
        match &self.config.method {
            // No triplets are chosen: the strategy and sampler fields are
            // placeholders of the format.
            Method::Full => clients
                .iter()
                .map(|&c| {
                    Ok(message(
                        c,
                        Strategy::TopN,
                        Sampler::Systematic,
                        ModelShard::new(Vec::new(), server.dense().to_vec())?,
                    ))
                })
                .collect(),
            Method::Sharded(s) => {
                // One plan per distinct ratio (its f64 bits as key), built
                // when first needed; draws follow the client order.
                let mut plans: BTreeMap<u64, ShardPlan<'_>> = BTreeMap::new();
                let mut out = Vec::with_capacity(clients.len());
                for &c in clients {
                    let ratio = s.keep_ratios[c];
                    let plan = match plans.entry(ratio.to_bits()) {
                        Entry::Occupied(e) => e.into_mut(),
                        Entry::Vacant(e) => e.insert(server.plan(
                            &s.strategy,
                            s.sampler,
                            Budget::KeepRatio(ratio),
                            k,
                        )?),
                    };
                    out.push(message(c, s.strategy, s.sampler, plan.draw(rng)?));
                }
                Ok(out)
            }
        }
    }

    /// Local training of one client on the decoded message; returns the
    /// trained sub-model, the summed batch loss × rows and the row count.
    fn train_client(
        &self,
        received: &ShardMessage,
        data: &ClientData,
        seed: u64,
    ) -> Result<(ModelShard, f64, usize)> {
        let cfg = &self.config;
        let ad = &self.train_device;
        let depth = cfg.layer_sizes.len() - 1;
        let dim = cfg.layer_sizes[0];
        let mut model = ClientMlp::from_shard(&received.shard, depth, ad)?;
        let reference = if cfg.proximal_mu > 0.0 {
            model.flat_values(ad)?
        } else {
            Vec::new()
        };
        let mut optim = SgdConfig::new().init();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..data.len()).collect();
        let mut losses: Vec<Tensor<1>> = Vec::new();
        for _ in 0..cfg.local_epochs {
            order.shuffle(&mut rng);
            for chunk in order.chunks(cfg.batch_size) {
                let (x, y) = data.batch(chunk, dim, ad)?;
                let ce = cross_entropy(model.forward(x), y)?;
                losses.push(ce.clone().detach().mul_scalar(chunk.len() as f64));
                let loss = if cfg.proximal_mu > 0.0 {
                    let mut penalty = ce;
                    for (w, w0) in model.flat_params().into_iter().zip(&reference) {
                        penalty = penalty + proximal_penalty(w, w0.clone(), cfg.proximal_mu)?;
                    }
                    penalty
                } else {
                    ce
                };
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optim.step(cfg.learning_rate, model, grads);
            }
        }
        let loss_sum = if losses.is_empty() {
            0.0
        } else {
            f64::from(
                tensor_to_vec(Tensor::cat(losses, 0).sum())?
                    .first()
                    .copied()
                    .unwrap_or(f32::NAN),
            )
        };
        let rows = data.len() * cfg.local_epochs;
        Ok((model.to_shard(&received.shard)?, loss_sum, rows))
    }

    /// Held-out accuracy of `model`, or `None` without a held-out set.
    fn evaluate(&self, model: &Mlp) -> Result<Option<f64>> {
        let Some(test) = &self.test else {
            return Ok(None);
        };
        let dim = self.config.layer_sizes[0];
        let idx: Vec<usize> = (0..test.len()).collect();
        let mut hits = 0usize;
        for chunk in idx.chunks(1024) {
            let (x, _) = test.batch(chunk, dim, &self.device)?;
            let pred = indices_to_vec(model.forward(x).argmax(1))?;
            hits += pred
                .iter()
                .zip(chunk)
                .filter(|(p, i)| **p == test.labels[**i])
                .count();
        }
        Ok(Some(hits as f64 / test.len() as f64))
    }
}

/// Every parameter of `model`, as stored, in module order.
fn all_dense(model: &Mlp) -> Result<Vec<DenseParam>> {
    collect_params(model, &Selector::all(), ParamValue::Stored)?
        .into_iter()
        .map(|p| {
            let values = tensor_to_vec(p.value)?;
            DenseParam::new(p.path, p.shape, values)
        })
        .collect()
}

/// `K` distinct clients of `N`, ascending (partial Fisher–Yates).
fn sample_clients(n: usize, k: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..n).collect();
    for i in 0..k {
        let j = rng.random_range(i..n);
        ids.swap(i, j);
    }
    let mut picked = ids[..k].to_vec();
    picked.sort_unstable();
    picked
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

/// Mean cross-entropy `−(1/n) Σ log softmax(z)_y`, `[1]`.
fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Result<Tensor<1>> {
    let log_p = log_softmax(logits, 1.0)?;
    Ok(log_p.gather(1, labels.unsqueeze_dim::<2>(1)).mean().neg())
}

// ---------------------------------------------------------- client model

/// A client's factor pair of one sharded layer, `W = A·B`.
#[derive(Module, Debug)]
struct Factors {
    /// `[out, n]`.
    a: Param<Tensor<2>>,
    /// `[n, in]`.
    b: Param<Tensor<2>>,
}

/// A layer the client trains in full, stored `[in, out]` like `Linear`.
#[derive(Module, Debug)]
struct DenseWeight {
    w: Param<Tensor<2>>,
}

#[derive(Module, Debug)]
enum ClientWeight {
    Factored(Factors),
    Dense(DenseWeight),
}

#[derive(Module, Debug)]
struct ClientLayer {
    weight: ClientWeight,
    bias: Param<Tensor<1>>,
}

/// The client's trainable sub-model: the MLP with each sharded weight
/// replaced by its factors.
#[derive(Module, Debug)]
struct ClientMlp {
    layers: Vec<ClientLayer>,
}

impl ClientMlp {
    /// Builds the sub-model of a decoded shard for an MLP of `depth` layers.
    fn from_shard(shard: &ModelShard, depth: usize, device: &Device) -> Result<Self> {
        let dense_tensor = |path: &str| -> Result<&DenseParam> {
            shard
                .dense()
                .iter()
                .find(|d| d.path == path)
                .ok_or_else(|| {
                    ShardingError::mismatch(
                        "received sub-model",
                        format!("a parameter {path}"),
                        "none",
                    )
                })
        };
        let mut layers = Vec::with_capacity(depth);
        for i in 0..depth {
            let path = Mlp::weight_path(i);
            let weight = match shard.layers().iter().find(|l| l.path == path) {
                Some(named) => {
                    let (a, b) = named.shard.factor_tensors(device)?;
                    ClientWeight::Factored(Factors {
                        a: Param::from_tensor(a),
                        b: Param::from_tensor(b),
                    })
                }
                None => {
                    let d = dense_tensor(&path)?;
                    let [d_in, d_out] = match d.shape.as_slice() {
                        [i, o] => [*i, *o],
                        other => {
                            return Err(CoreError::shape(&path, "[in, out]", other).into());
                        }
                    };
                    let w = tensor_from_vec(d.values.clone(), [d_in, d_out], device)?;
                    ClientWeight::Dense(DenseWeight {
                        w: Param::from_tensor(w),
                    })
                }
            };
            let bias_path = Mlp::bias_path(i);
            let b = dense_tensor(&bias_path)?;
            let n = b.values.len();
            let bias = tensor_from_vec(b.values.clone(), [n], device)?;
            layers.push(ClientLayer {
                weight,
                bias: Param::from_tensor(bias),
            });
        }
        Ok(Self { layers })
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len().saturating_sub(1);
        self.layers.iter().enumerate().fold(x, |h, (i, layer)| {
            let h = match &layer.weight {
                // x·Bᵀ·Aᵀ = x·(A·B)ᵀ, the [batch, n] bottleneck first.
                ClientWeight::Factored(f) => h
                    .matmul(f.b.val().transpose())
                    .matmul(f.a.val().transpose()),
                ClientWeight::Dense(d) => h.matmul(d.w.val()),
            };
            let h = h + layer.bias.val().unsqueeze::<2>();
            if i < last { relu(h) } else { h }
        })
    }

    /// Every trainable parameter, flattened, in a fixed order.
    fn flat_params(&self) -> Vec<Tensor<1>> {
        fn flat(t: Tensor<2>) -> Tensor<1> {
            let n: usize = t.dims().iter().product();
            t.reshape([n])
        }
        let mut out = Vec::with_capacity(3 * self.layers.len());
        for l in &self.layers {
            match &l.weight {
                ClientWeight::Factored(f) => {
                    out.push(flat(f.a.val()));
                    out.push(flat(f.b.val()));
                }
                ClientWeight::Dense(d) => out.push(flat(d.w.val())),
            }
            out.push(l.bias.val());
        }
        out
    }

    /// [`ClientMlp::flat_params`] as constants (no gradient), for FedProx.
    fn flat_values(&self, device: &Device) -> Result<Vec<Tensor<1>>> {
        self.flat_params()
            .into_iter()
            .map(|t| {
                let n = t.dims()[0];
                Ok(tensor_from_vec(tensor_to_vec(t)?, [n], device)?)
            })
            .collect()
    }

    /// The trained values as a sub-model of the same structure as `received`.
    fn to_shard(&self, received: &ModelShard) -> Result<ModelShard> {
        let mut trained: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        let mut layers: Vec<NamedShard> = Vec::with_capacity(received.layers().len());
        for (i, l) in self.layers.iter().enumerate() {
            match &l.weight {
                ClientWeight::Factored(f) => {
                    let path = Mlp::weight_path(i);
                    let named = received
                        .layers()
                        .iter()
                        .find(|x| x.path == path)
                        .ok_or_else(|| {
                            ShardingError::mismatch(
                                "received sub-model",
                                format!("factors of {path}"),
                                "none",
                            )
                        })?;
                    layers.push(NamedShard {
                        path,
                        layout: named.layout,
                        shard: named.shard.with_trained_factors(f.a.val(), f.b.val())?,
                    });
                }
                ClientWeight::Dense(d) => {
                    trained.insert(Mlp::weight_path(i), tensor_to_vec(d.w.val())?);
                }
            }
            trained.insert(Mlp::bias_path(i), tensor_to_vec(l.bias.val())?);
        }
        let dense = received
            .dense()
            .iter()
            .map(|d| {
                let values = trained.remove(&d.path).ok_or_else(|| {
                    ShardingError::mismatch(
                        "trained sub-model",
                        format!("a parameter {}", d.path),
                        "none",
                    )
                })?;
                DenseParam::new(d.path.clone(), d.shape.clone(), values)
            })
            .collect::<Result<Vec<_>>>()?;
        ModelShard::new(layers, dense)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_clients_are_distinct_and_sorted() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..50 {
            let s = sample_clients(20, 10, &mut rng);
            assert_eq!(s.len(), 10);
            assert!(s.windows(2).all(|w| w[0] < w[1]));
            assert!(s.iter().all(|&c| c < 20));
        }
        assert_eq!(sample_clients(5, 5, &mut rng), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn derived_seeds_differ_by_stream_and_index() {
        let a = derive_seed(1, 2, 3);
        assert_ne!(a, derive_seed(1, 2, 4));
        assert_ne!(a, derive_seed(1, 3, 3));
        assert_ne!(a, derive_seed(2, 2, 3));
        assert_eq!(a, derive_seed(1, 2, 3));
    }
}
