//! # lastmile_fl
//!
//! A Python extension module (built by maturin) that exposes lastmile's
//! spectral model sharding to federated-learning engines written in Python,
//! Flower first. A deployment drives the same [`Server`] and [`Client`]
//! objects as lastmile's in-process simulation, so a run on Flower's engine
//! makes the same choices as `simulate` for the same settings and seed.
//!
//! - server side: `Server` samples clients, builds each
//!   one's shard message (bytes in lastmile's wire format) and aggregates
//!   their update messages;
//! - client side: `Client` trains the received sub-model on
//!   numpy data; `decode_shard` / `encode_update` serve a client that trains
//!   the factors in its own framework;
//! - `digits_federation`, `client_seed`, `expected_update_len`, `simulate`.
//!
//! **Copies.** Arrays passed in are read in place when C-contiguous
//! (features are then copied once into the trainer's own buffer, labels
//! converted to indices); arrays returned hand their Rust buffer to numpy
//! without a copy; message bytes are read in place and returned as one
//! `bytes` object (one copy, the only way to make a Python `bytes`).
//! Long computations (shard drawing with SVDs, aggregation, training,
//! evaluation, simulation) release the GIL.
//!
//! **Errors.** Every error of the Rust library surfaces as
//! `lastmile_fl.LastmileError` (a `ValueError`) carrying its message; the
//! library does not panic on any input.
//!
//! **Building.** The module is compiled only with the `python` feature,
//! which maturin turns on (`pyproject.toml`); without it the crate is empty,
//! so workspace-wide cargo commands build without a Python interpreter.
//!
//! [`Server`]: lastmile_federated_sharding::simulation::Server
//! [`Client`]: lastmile_federated_sharding::simulation::Client

#[cfg(feature = "python")]
mod arrays;
#[cfg(feature = "python")]
mod client;
#[cfg(feature = "python")]
mod data;
#[cfg(feature = "python")]
mod messages;
#[cfg(feature = "python")]
mod server;

#[cfg(feature = "python")]
use pyo3::prelude::*;

#[cfg(feature = "python")]
pyo3::create_exception!(
    lastmile_fl,
    LastmileError,
    pyo3::exceptions::PyValueError,
    "An error of the lastmile library: what was wrong and what was expected."
);

/// Any displayable library error as a `LastmileError`.
#[cfg(feature = "python")]
pub(crate) fn py_err(e: impl std::fmt::Display) -> PyErr {
    LastmileError::new_err(e.to_string())
}

/// The Python module `lastmile_fl`.
#[cfg(feature = "python")]
#[pymodule]
fn lastmile_fl(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("LastmileError", m.py().get_type::<LastmileError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<server::PyServer>()?;
    m.add_class::<server::PyRoundPlan>()?;
    m.add_class::<client::PyClient>()?;
    m.add_function(wrap_pyfunction!(data::digits_federation, m)?)?;
    m.add_function(wrap_pyfunction!(data::simulate, m)?)?;
    m.add_function(wrap_pyfunction!(messages::client_seed, m)?)?;
    m.add_function(wrap_pyfunction!(messages::expected_update_len, m)?)?;
    m.add_function(wrap_pyfunction!(messages::decode_shard, m)?)?;
    m.add_function(wrap_pyfunction!(messages::encode_update, m)?)?;
    Ok(())
}
