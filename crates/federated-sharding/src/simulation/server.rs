//! The server side of a round: client sampling, shard messages, aggregation.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use burn::tensor::Device;
use lastmile_core::module::{Layout, Selector};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::{
    Aggregation, ClientData, Method, Mlp, ShardingConfig, SimulationConfig, check_config,
    check_federation, derive_seed,
};
use crate::aggregate;
use crate::error::{Result, ShardingError};
use crate::message::{ShardMessage, UpdateMessage};
use crate::sampler::Sampler;
use crate::shard::{Budget, DenseParam, ModelShard, ShardPlan, SpectralModel};
use crate::strategy::Strategy;

/// One round's sampled clients and the sub-model each of them gets.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundPlan {
    /// Round number, from 1.
    pub round: usize,
    /// The sampled clients, ascending.
    pub clients: Vec<usize>,
    /// One shard message per client, in the order of `clients`.
    pub messages: Vec<ShardMessage>,
}

/// The server of a federated run, one round at a time: the global MLP and
/// the seeded generators that pick clients and draw shards.
///
/// [`Simulation::run`](super::Simulation::run) drives it in process; a
/// deployment (e.g. a Flower strategy) drives the same object with messages
/// that crossed a network, so both make identical choices for the same
/// configuration and seed.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_federated_sharding::simulation::{Server, SimulationConfig};
///
/// let mut config = SimulationConfig::new(vec![4, 8, 3]);
/// config.clients_per_round = 2;
/// let mut server = Server::new(config, 5, &Device::flex())?;
/// let plan = server.begin_round()?;
/// assert_eq!((plan.round, plan.clients.len(), plan.messages.len()), (1, 2, 2));
/// # }
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
#[derive(Debug)]
pub struct Server {
    config: SimulationConfig,
    n_clients: usize,
    global: Mlp,
    pick_rng: StdRng,
    draw_rng: StdRng,
    rounds_done: usize,
    /// The decomposition the current round's shards came from, and its clients.
    pending: Option<(SpectralModel, Vec<usize>)>,
}

impl Server {
    /// A server for `n_clients` clients with a freshly initialised global
    /// model (seeded by `config.seed`, as the simulation does).
    ///
    /// # Errors
    /// As [`Simulation::new`](super::Simulation::new) for the configuration
    /// (every check that does not need the clients' data).
    pub fn new(config: SimulationConfig, n_clients: usize, device: &Device) -> Result<Self> {
        check_config(&config)?;
        check_federation(&config, n_clients)?;
        let global = Mlp::new(&config.layer_sizes, derive_seed(config.seed, 0, 0), device)?;
        Ok(Self {
            pick_rng: StdRng::seed_from_u64(derive_seed(config.seed, 1, 0)),
            draw_rng: StdRng::seed_from_u64(derive_seed(config.seed, 2, 0)),
            config,
            n_clients,
            global,
            rounds_done: 0,
            pending: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SimulationConfig {
        &self.config
    }

    /// The current global model.
    pub fn global(&self) -> &Mlp {
        &self.global
    }

    /// Rounds aggregated so far.
    pub fn rounds_done(&self) -> usize {
        self.rounds_done
    }

    /// Samples `K` clients and draws each one's sub-model.
    ///
    /// # Errors
    /// [`ShardingError::Mismatch`] if the previous round was not finished;
    /// decomposition or sampling errors of the global model's weights.
    pub fn begin_round(&mut self) -> Result<RoundPlan> {
        if let Some((_, clients)) = &self.pending {
            return Err(ShardingError::mismatch(
                "server state",
                format!("finish_round for round {}", self.rounds_done + 1),
                format!(
                    "begin_round while {} client(s) still owe updates",
                    clients.len()
                ),
            ));
        }
        let round = self.rounds_done + 1;
        let clients = sample_clients(
            self.n_clients,
            self.config.clients_per_round,
            &mut self.pick_rng,
        );
        let server = self.server_model()?;
        let messages = self.shard_messages(&server, round, &clients)?;
        self.pending = Some((server, clients.clone()));
        Ok(RoundPlan {
            round,
            clients,
            messages,
        })
    }

    /// Aggregates the round's updates into the global model. Every sampled
    /// client must send exactly one update for this round, in any order;
    /// they are aggregated in client order, so the result does not depend
    /// on arrival order.
    ///
    /// # Errors
    /// [`ShardingError::Mismatch`] without a round in progress, for an
    /// update of another round, from a client that was not sampled, or a
    /// missing or repeated client; aggregation errors ([`aggregate::fedavg`]).
    pub fn finish_round(&mut self, mut updates: Vec<UpdateMessage>) -> Result<()> {
        let Some((server, clients)) = &self.pending else {
            return Err(ShardingError::mismatch(
                "server state",
                "begin_round before finish_round",
                "no round in progress",
            ));
        };
        let round = self.rounds_done + 1;
        if let Some(u) = updates.iter().find(|u| u.round != round as u64) {
            return Err(ShardingError::mismatch(
                format!("round of client {}'s update", u.client_id),
                round.to_string(),
                u.round.to_string(),
            ));
        }
        updates.sort_by_key(|u| u.client_id);
        let senders: Vec<u64> = updates.iter().map(|u| u.client_id).collect();
        let expected: Vec<u64> = clients.iter().map(|&c| c as u64).collect();
        if senders != expected {
            return Err(ShardingError::mismatch(
                format!("clients that sent round {round}'s updates"),
                format!("{expected:?}, each once"),
                format!("{senders:?}"),
            ));
        }
        let weights = match &self.config.method {
            Method::Sharded(ShardingConfig {
                aggregation: Aggregation::FactorWise,
                ..
            }) => aggregate::factorwise(server, &updates)?,
            _ => aggregate::fedavg(server, &updates)?,
        };
        // A module clone shares its tensors; the global model changes only
        // if every weight applies.
        self.global = weights.apply_to(self.global.clone())?;
        self.pending = None;
        self.rounds_done = round;
        Ok(())
    }

    /// Accuracy of the global model on `data`.
    ///
    /// # Errors
    /// As [`Mlp::accuracy`].
    pub fn evaluate(&self, data: &ClientData) -> Result<f64> {
        self.global.accuracy(data)
    }

    /// Every parameter of the global model, as stored.
    ///
    /// # Errors
    /// As [`Mlp::params`].
    pub fn params(&self) -> Result<Vec<DenseParam>> {
        self.global.params()
    }

    /// The server's view of the global model this round: SVDs of the
    /// sharded weights (none for full FedAvg) and every other parameter dense.
    fn server_model(&self) -> Result<SpectralModel> {
        let global = &self.global;
        match &self.config.method {
            Method::Full => SpectralModel::from_parts(Vec::new(), global.params()?),
            Method::Sharded(s) => {
                let depth = global.depth();
                let sharded = if s.dense_output_layer {
                    depth - 1
                } else {
                    depth
                };
                if sharded == 0 {
                    // A single-layer model with its only layer kept dense.
                    return SpectralModel::from_parts(Vec::new(), global.params()?);
                }
                let selector = Selector::new((0..sharded).map(Mlp::weight_path))?;
                SpectralModel::from_module(global, &selector, Layout::InOut)
            }
        }
    }

    /// One shard message per sampled client.
    fn shard_messages(
        &mut self,
        server: &SpectralModel,
        round: usize,
        clients: &[usize],
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
                    out.push(message(
                        c,
                        s.strategy,
                        s.sampler,
                        plan.draw(&mut self.draw_rng)?,
                    ));
                }
                Ok(out)
            }
        }
    }
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
}
