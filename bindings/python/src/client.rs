//! `lastmile_fl.Client`: local training of a received sub-model.

use lastmile_federated_sharding::message::ShardMessage;
use lastmile_federated_sharding::simulation::{Client, SimulationConfig};
use numpy::{PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::arrays::client_data;
use crate::py_err;

/// A client's local trainer (`lastmile_fl.Client`).
///
/// `Client(layer_sizes, local_epochs=1, batch_size=32, learning_rate=0.05,
/// proximal_mu=0.0)`: mini-batch SGD on the received sub-model (the
/// factors `A`, `B` of every sharded layer and the dense parameters), with
/// FedProx's proximal term when `proximal_mu > 0`.
#[pyclass(name = "Client", module = "lastmile_fl", frozen)]
pub(crate) struct PyClient {
    // Boxed: the trainer holds over-aligned burn state (64-byte), and a
    // Python object's memory is only 16-byte aligned.
    inner: Box<Client>,
}

#[pymethods]
impl PyClient {
    #[new]
    #[pyo3(signature = (layer_sizes, local_epochs = 1, batch_size = 32, learning_rate = 0.05, proximal_mu = 0.0))]
    fn new(
        layer_sizes: Vec<usize>,
        local_epochs: usize,
        batch_size: usize,
        learning_rate: f64,
        proximal_mu: f64,
    ) -> PyResult<Self> {
        let mut config = SimulationConfig::new(layer_sizes);
        config.local_epochs = local_epochs;
        config.batch_size = batch_size;
        config.learning_rate = learning_rate;
        config.proximal_mu = proximal_mu;
        let device = lastmile_core::default_device().map_err(py_err)?;
        Ok(Self {
            inner: Box::new(Client::new(config, &device).map_err(py_err)?),
        })
    }

    /// Trains the sub-model of `payload` (a shard message) on `x`
    /// (`float32 [n, d]`) and `y` (`int64 [n]`), shuffling with `seed`.
    /// Returns `(update message bytes, summed loss, rows seen)`.
    fn train<'py>(
        &self,
        py: Python<'py>,
        payload: &[u8],
        x: PyReadonlyArray2<'_, f32>,
        y: PyReadonlyArray1<'_, i64>,
        seed: u64,
    ) -> PyResult<(Bound<'py, PyBytes>, f64, usize)> {
        let received = ShardMessage::decode(payload).map_err(py_err)?;
        let data = client_data(&x, &y)?;
        let (wire, loss_sum, rows) = py.detach(|| {
            let local = self.inner.train(&received, &data, seed).map_err(py_err)?;
            let wire = local.message.encode().map_err(py_err)?;
            Ok::<_, PyErr>((wire, local.loss_sum, local.rows))
        })?;
        Ok((PyBytes::new(py, &wire), loss_sum, rows))
    }
}
