//! The client side of a round: local training of the received sub-model.

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor};
use lastmile_core::CoreError;
use lastmile_core::convert::{tensor_from_vec, tensor_to_vec};
use lastmile_core::module::Layout;
use lastmile_core::numerics::log_softmax;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::{ClientData, Mlp, SimulationConfig, check_config};
use crate::aggregate::proximal_penalty;
use crate::error::{Result, ShardingError};
use crate::message::{ShardMessage, UpdateMessage};
use crate::shard::{DenseParam, ModelShard, NamedShard};

/// What a client sends back after local training, and its training loss.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalUpdate {
    /// The trained sub-model, ready to encode.
    pub message: UpdateMessage,
    /// Cross-entropy summed over every row of every SGD step (without the
    /// FedProx term).
    pub loss_sum: f64,
    /// Rows seen: samples × local epochs.
    pub rows: usize,
}

/// A client's local trainer: the MLP shape and local-training settings of a
/// [`SimulationConfig`] (`layer_sizes`, `local_epochs`, `batch_size`,
/// `learning_rate`, `proximal_mu`) on `device.autodiff()`.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_federated_sharding::simulation::{
///     Client, ClientData, Method, Server, ShardingConfig, SimulationConfig,
/// };
/// use lastmile_federated_sharding::{Sampler, Strategy};
///
/// let mut config = SimulationConfig::new(vec![2, 4, 2]);
/// config.method = Method::Sharded(ShardingConfig::new(
///     Strategy::Unbiased, Sampler::Systematic, vec![0.5]));
/// let device = Device::flex();
/// let mut server = Server::new(config.clone(), 1, &device)?;
/// let plan = server.begin_round()?;
/// let data = ClientData { features: vec![1.0, 0.0, -1.0, 0.0], labels: vec![0, 1] };
/// let local = Client::new(config, &device)?.train(&plan.messages[0], &data, 7)?;
/// assert_eq!(local.rows, 2);
/// server.finish_round(vec![local.message])?;
/// # }
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    config: SimulationConfig,
    device: Device,
}

impl Client {
    /// Checks the local-training fields of `config` (as
    /// [`Simulation::new`](super::Simulation::new) does).
    ///
    /// # Errors
    /// [`CoreError::Empty`] / [`CoreError::OutOfRange`] as
    /// [`Simulation::new`](super::Simulation::new) for the layer sizes,
    /// `local_epochs`, `batch_size`, `learning_rate` and `proximal_mu`.
    pub fn new(config: SimulationConfig, device: &Device) -> Result<Self> {
        check_config(&config)?;
        Ok(Self {
            config,
            device: device.clone().autodiff(),
        })
    }

    /// Trains the sub-model of `received` on `data` for `local_epochs` of
    /// mini-batch SGD (rows shuffled by `seed`; FedProx's `μ/2 ‖w − w₀‖²`
    /// when `proximal_mu > 0`) and returns the update message.
    ///
    /// # Errors
    /// [`ShardingError::Mismatch`] if the message does not hold a weight
    /// (as factors or dense) and a bias for every layer of the MLP, or holds
    /// them with other shapes; `data` errors as [`ClientData`]'s checks;
    /// [`CoreError::NonFinite`] if training diverged.
    pub fn train(
        &self,
        received: &ShardMessage,
        data: &ClientData,
        seed: u64,
    ) -> Result<LocalUpdate> {
        let cfg = &self.config;
        let ad = &self.device;
        let dim = cfg.layer_sizes[0];
        let classes = cfg.layer_sizes[cfg.layer_sizes.len() - 1];
        data.check("client data", dim, classes)?;
        let mut model = ClientMlp::from_shard(&received.shard, &cfg.layer_sizes, ad)?;
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
        let trained = model.to_shard(&received.shard)?;
        Ok(LocalUpdate {
            message: UpdateMessage::from_shard(received, data.len() as u64, &trained),
            loss_sum,
            rows: data.len() * cfg.local_epochs,
        })
    }
}

/// Mean cross-entropy `−(1/n) Σ log softmax(z)_y`, `[1]`.
fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Result<Tensor<1>> {
    let log_p = log_softmax(logits, 1.0)?;
    Ok(log_p.gather(1, labels.unsqueeze_dim::<2>(1)).mean().neg())
}

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
    /// Builds the sub-model of a decoded shard for an MLP of widths
    /// `sizes`, checking every shape (a message comes from the network).
    fn from_shard(shard: &ModelShard, sizes: &[usize], device: &Device) -> Result<Self> {
        let depth = sizes.len() - 1;
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
                    let found = (named.shard.cols(), named.shard.rows());
                    if found != (sizes[i], sizes[i + 1]) || named.layout != Layout::InOut {
                        return Err(ShardingError::mismatch(
                            format!("received factors of {path}"),
                            format!("an [in, out] = [{}, {}] weight", sizes[i], sizes[i + 1]),
                            format!("[{}, {}] in layout {:?}", found.0, found.1, named.layout),
                        ));
                    }
                    let (a, b) = named.shard.factor_tensors(device)?;
                    ClientWeight::Factored(Factors {
                        a: Param::from_tensor(a),
                        b: Param::from_tensor(b),
                    })
                }
                None => {
                    let d = dense_tensor(&path)?;
                    let [d_in, d_out] = [sizes[i], sizes[i + 1]];
                    if d.shape != [d_in, d_out] {
                        return Err(CoreError::shape(
                            &path,
                            format!("[{d_in}, {d_out}]"),
                            &d.shape,
                        )
                        .into());
                    }
                    let w = tensor_from_vec(d.values.clone(), [d_in, d_out], device)?;
                    ClientWeight::Dense(DenseWeight {
                        w: Param::from_tensor(w),
                    })
                }
            };
            let bias_path = Mlp::bias_path(i);
            let b = dense_tensor(&bias_path)?;
            let n = sizes[i + 1];
            if b.shape != [n] {
                return Err(CoreError::shape(&bias_path, format!("[{n}]"), &b.shape).into());
            }
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
