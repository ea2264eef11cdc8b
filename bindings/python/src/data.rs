//! The digits federation and the in-process simulation, for comparison
//! with a deployment.

use std::time::Instant;

use lastmile_federated_sharding::simulation::{ClientData, Simulation, SimulationConfig};
use numpy::{PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::arrays::{NumpyData, client_data, data_to_numpy};
use crate::py_err;
use crate::server::{KeepRatio, method};

/// Standardised digits split over `num_partitions` clients with
/// Dirichlet(`alpha`) label skew (partition `seed`), and the fixed
/// held-out set: `([(x, y)] per partition, (x_test, y_test))`, `x` as
/// `float32 [n, 64]`, `y` as `int64 [n]`.
#[pyfunction]
pub(crate) fn digits_federation<'py>(
    py: Python<'py>,
    alpha: f64,
    num_partitions: usize,
    seed: u64,
) -> PyResult<(Vec<NumpyData<'py>>, NumpyData<'py>)> {
    let fed = py
        .detach(|| lastmile_datasets::digits_federation(alpha, num_partitions, seed))
        .map_err(py_err)?;
    let convert = |d: lastmile_datasets::Dataset| -> PyResult<NumpyData<'py>> {
        let labels = d.labels().map(<[usize]>::to_vec).unwrap_or_default();
        data_to_numpy(py, d.into_features(), &labels)
    };
    let clients = fed
        .clients
        .into_iter()
        .map(convert)
        .collect::<PyResult<Vec<_>>>()?;
    Ok((clients, convert(fed.test)?))
}

/// The in-process simulation of the same federation: returns
/// `{"initial_accuracy", "rounds": [{"round", "clients", "bytes_down",
/// "bytes_up", "train_loss", "test_accuracy", "seconds"}]}`.
#[pyfunction]
#[pyo3(signature = (
    layer_sizes, clients, test, rounds, clients_per_round, strategy = "collective",
    keep_ratio = KeepRatio::One(0.25), sampler = "conditional-poisson", local_epochs = 1,
    batch_size = 32, learning_rate = 0.05, proximal_mu = 0.0, seed = 0,
    aggregation = "fedavg", dense_output_layer = false,
))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn simulate<'py>(
    py: Python<'py>,
    layer_sizes: Vec<usize>,
    clients: Vec<(PyReadonlyArray2<'py, f32>, PyReadonlyArray1<'py, i64>)>,
    test: (PyReadonlyArray2<'py, f32>, PyReadonlyArray1<'py, i64>),
    rounds: usize,
    clients_per_round: usize,
    strategy: &str,
    keep_ratio: KeepRatio,
    sampler: &str,
    local_epochs: usize,
    batch_size: usize,
    learning_rate: f64,
    proximal_mu: f64,
    seed: u64,
    aggregation: &str,
    dense_output_layer: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let data = clients
        .iter()
        .map(|(x, y)| client_data(x, y))
        .collect::<PyResult<Vec<ClientData>>>()?;
    let test = client_data(&test.0, &test.1)?;
    let mut config = SimulationConfig::new(layer_sizes);
    config.rounds = rounds;
    config.clients_per_round = clients_per_round;
    config.local_epochs = local_epochs;
    config.batch_size = batch_size;
    config.learning_rate = learning_rate;
    config.proximal_mu = proximal_mu;
    config.seed = seed;
    config.method = method(
        strategy,
        keep_ratio,
        data.len(),
        sampler,
        aggregation,
        dense_output_layer,
    )?;
    let device = lastmile_core::default_device().map_err(py_err)?;
    let (report, seconds) = py
        .detach(|| {
            let sim = Simulation::new(config, data, Some(test), &device)?;
            let mut seconds = Vec::new();
            let mut last = Instant::now();
            let report = sim.run(|_| {
                seconds.push(last.elapsed().as_secs_f64());
                last = Instant::now();
            })?;
            Ok::<_, lastmile_federated_sharding::ShardingError>((report, seconds))
        })
        .map_err(py_err)?;
    let out = PyDict::new(py);
    out.set_item("initial_accuracy", report.initial_accuracy)?;
    let rounds = PyList::empty(py);
    for (r, s) in report.rounds.iter().zip(seconds) {
        let d = PyDict::new(py);
        d.set_item("round", r.round)?;
        d.set_item("clients", r.clients.clone())?;
        d.set_item("bytes_down", r.bytes_down)?;
        d.set_item("bytes_up", r.bytes_up)?;
        d.set_item("train_loss", r.train_loss)?;
        d.set_item("test_accuracy", r.test_accuracy)?;
        d.set_item("seconds", s)?;
        rounds.append(d)?;
    }
    out.set_item("rounds", rounds)?;
    Ok(out)
}
