//! `lastmile_fl.Server`: the server side of a federated round.

use std::sync::Mutex;

use lastmile_federated_sharding::message::UpdateMessage;
use lastmile_federated_sharding::simulation::{
    Aggregation, Method, Server, ShardingConfig, SimulationConfig,
};
use lastmile_federated_sharding::{Sampler, Strategy};
use numpy::{PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::arrays::{client_data, to_numpy};
use crate::py_err;

/// One keep ratio for every client, or one per client.
#[derive(FromPyObject)]
pub(crate) enum KeepRatio {
    /// The same ratio for every client.
    One(f64),
    /// Client `k` keeps `ratios[k]`.
    PerClient(Vec<f64>),
}

impl KeepRatio {
    fn per_client(self, n_clients: usize) -> Vec<f64> {
        match self {
            KeepRatio::One(r) => vec![r; n_clients],
            KeepRatio::PerClient(v) => v,
        }
    }
}

/// The method of a run from its Python names: `"full"` (full-model FedAvg)
/// or a strategy name with its sampler, budgets and aggregation.
pub(crate) fn method(
    strategy: &str,
    keep_ratio: KeepRatio,
    n_clients: usize,
    sampler: &str,
    aggregation: &str,
    dense_output_layer: bool,
) -> PyResult<Method> {
    if strategy == "full" {
        return Ok(Method::Full);
    }
    let mut cfg = ShardingConfig::new(
        Strategy::from_name(strategy).map_err(py_err)?,
        Sampler::from_name(sampler).map_err(py_err)?,
        keep_ratio.per_client(n_clients),
    );
    cfg.aggregation = match aggregation {
        "fedavg" => Aggregation::FedAvg,
        "factorwise" => Aggregation::FactorWise,
        other => {
            return Err(py_err(format!(
                "aggregation: found {other:?}; expected \"fedavg\" or \"factorwise\""
            )));
        }
    };
    cfg.dense_output_layer = dense_output_layer;
    Ok(Method::Sharded(cfg))
}

/// One round's plan: the sampled clients and each one's shard message.
#[pyclass(name = "RoundPlan", module = "lastmile_fl", frozen)]
pub(crate) struct PyRoundPlan {
    /// Round number, from 1.
    #[pyo3(get)]
    round: usize,
    /// Sampled client ids (partition ids), ascending.
    #[pyo3(get)]
    clients: Vec<usize>,
    /// One encoded shard message per client, in the order of `clients`.
    #[pyo3(get)]
    payloads: Vec<Py<PyBytes>>,
    /// Bytes of each shard message as lastmile's byte accounting predicts.
    #[pyo3(get)]
    expected_down: Vec<usize>,
    /// Bytes of each client's update message, predicted the same way.
    #[pyo3(get)]
    expected_up: Vec<usize>,
}

/// The server of a federated run (`lastmile_fl.Server`).
///
/// `Server(layer_sizes, num_clients, clients_per_round, strategy="collective",
/// keep_ratio=0.25, sampler="conditional-poisson", aggregation="fedavg",
/// seed=0, dense_output_layer=False)`; `strategy` is `"full"` or one of
/// `top-n`, `uniform`, `uniform-rescaled`, `prism-like`, `unbiased`,
/// `collective`; `keep_ratio` is one ratio or a list with one per client.
#[pyclass(name = "Server", module = "lastmile_fl")]
pub(crate) struct PyServer {
    // Boxed: the server holds over-aligned burn state (64-byte), and a
    // Python object's memory is only 16-byte aligned.
    inner: Mutex<Box<Server>>,
}

impl PyServer {
    fn with<T>(&self, f: impl FnOnce(&mut Server) -> PyResult<T>) -> PyResult<T> {
        let mut guard = self
            .inner
            .lock()
            .map_err(|_| py_err("the server's state was poisoned by an earlier failure"))?;
        f(&mut guard)
    }
}

#[pymethods]
impl PyServer {
    #[new]
    #[pyo3(signature = (
        layer_sizes, num_clients, clients_per_round, strategy = "collective",
        keep_ratio = KeepRatio::One(0.25), sampler = "conditional-poisson",
        aggregation = "fedavg", seed = 0, dense_output_layer = false,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        layer_sizes: Vec<usize>,
        num_clients: usize,
        clients_per_round: usize,
        strategy: &str,
        keep_ratio: KeepRatio,
        sampler: &str,
        aggregation: &str,
        seed: u64,
        dense_output_layer: bool,
    ) -> PyResult<Self> {
        let mut config = SimulationConfig::new(layer_sizes);
        config.clients_per_round = clients_per_round;
        config.seed = seed;
        config.method = method(
            strategy,
            keep_ratio,
            num_clients,
            sampler,
            aggregation,
            dense_output_layer,
        )?;
        let device = lastmile_core::default_device().map_err(py_err)?;
        let server = Server::new(config, num_clients, &device).map_err(py_err)?;
        Ok(Self {
            inner: Mutex::new(Box::new(server)),
        })
    }

    /// Samples this round's clients and draws each one's shard message.
    fn begin_round(&self, py: Python<'_>) -> PyResult<PyRoundPlan> {
        let (plan, wires) = py.detach(|| {
            self.with(|s| {
                let plan = s.begin_round().map_err(py_err)?;
                let wires = plan
                    .messages
                    .iter()
                    .map(|m| m.encode().map_err(py_err))
                    .collect::<PyResult<Vec<_>>>()?;
                Ok((plan, wires))
            })
        })?;
        let expected_down = plan.messages.iter().map(|m| m.encoded_len()).collect();
        let expected_up = plan
            .messages
            .iter()
            .map(|m| UpdateMessage::from_shard(m, 0, &m.shard).encoded_len())
            .collect();
        Ok(PyRoundPlan {
            round: plan.round,
            clients: plan.clients,
            payloads: wires.iter().map(|w| PyBytes::new(py, w).unbind()).collect(),
            expected_down,
            expected_up,
        })
    }

    /// Aggregates the round's update messages (every sampled client once,
    /// any order) into the global model.
    fn finish_round(&self, py: Python<'_>, updates: Vec<Bound<'_, PyBytes>>) -> PyResult<()> {
        // Decoding reads each `bytes` in place, so it holds the GIL.
        let decoded = updates
            .iter()
            .map(|b| UpdateMessage::decode(b.as_bytes()).map_err(py_err))
            .collect::<PyResult<Vec<_>>>()?;
        py.detach(|| self.with(|s| s.finish_round(decoded).map_err(py_err)))
    }

    /// Accuracy of the global model on features `x` (`float32 [n, d]`) and
    /// labels `y` (`int64 [n]`).
    fn evaluate(
        &self,
        py: Python<'_>,
        x: PyReadonlyArray2<'_, f32>,
        y: PyReadonlyArray1<'_, i64>,
    ) -> PyResult<f64> {
        let data = client_data(&x, &y)?;
        py.detach(|| self.with(|s| s.evaluate(&data).map_err(py_err)))
    }

    /// The global model: `{path: float32 array}`, weights `[in, out]`.
    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let params = self.with(|s| s.params().map_err(py_err))?;
        let out = PyDict::new(py);
        for p in params {
            out.set_item(&p.path, to_numpy(py, &p.shape, p.values)?)?;
        }
        Ok(out)
    }

    /// Rounds aggregated so far.
    #[getter]
    fn rounds_done(&self) -> PyResult<usize> {
        self.with(|s| Ok(s.rounds_done()))
    }
}
