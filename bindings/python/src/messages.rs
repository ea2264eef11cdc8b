//! Message helpers: seeds, predicted sizes, and the factor view for clients
//! that train in their own framework.

use std::collections::BTreeMap;

use lastmile_federated_sharding::message::{ShardMessage, UpdateMessage};
use lastmile_federated_sharding::simulation;
use lastmile_federated_sharding::{
    DenseParam, LayerShard, ModelShard, NamedShard, SamplingStrategy,
};
use numpy::{PyReadonlyArray2, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::arrays::to_numpy;
use crate::py_err;

/// The local-training seed of `client` in `round` of a run seeded `seed`,
/// as the in-process simulation uses it.
#[pyfunction]
pub(crate) fn client_seed(seed: u64, round: usize, client: usize) -> u64 {
    simulation::client_seed(seed, round, client)
}

/// Bytes of the update message a client sends back for the shard message
/// `payload` (the trained sub-model has the received one's structure).
#[pyfunction]
pub(crate) fn expected_update_len(payload: &[u8]) -> PyResult<usize> {
    let m = ShardMessage::decode(payload).map_err(py_err)?;
    Ok(UpdateMessage::from_shard(&m, 0, &m.shard).encoded_len())
}

/// A shard message as a dict of numpy arrays: `round`, `client_id`,
/// `strategy`, `sampler`, `clients_per_round`, `layers` (`{path: {"a":
/// [out, n], "b": [n, in], "indices", "multipliers", "layout"}}`, so that
/// the layer's weight is `a @ b` in `[out, in]` orientation) and `dense`
/// (`{path: array}` as stored).
#[pyfunction]
pub(crate) fn decode_shard<'py>(py: Python<'py>, payload: &[u8]) -> PyResult<Bound<'py, PyDict>> {
    let m = ShardMessage::decode(payload).map_err(py_err)?;
    let out = PyDict::new(py);
    out.set_item("round", m.round)?;
    out.set_item("client_id", m.client_id)?;
    out.set_item("strategy", m.strategy.name())?;
    out.set_item("sampler", m.sampler.name())?;
    out.set_item("clients_per_round", m.clients_per_round)?;
    let layers = PyDict::new(py);
    for l in m.shard.layers() {
        let s = &l.shard;
        let entry = PyDict::new(py);
        entry.set_item("a", to_numpy(py, &[s.rows(), s.kept()], s.a().to_vec())?)?;
        entry.set_item("b", to_numpy(py, &[s.kept(), s.cols()], s.b().to_vec())?)?;
        let idx: Vec<i64> = s.indices().iter().map(|&i| i as i64).collect();
        entry.set_item("indices", to_numpy(py, &[idx.len()], idx)?)?;
        entry.set_item(
            "multipliers",
            to_numpy(py, &[s.kept()], s.multipliers().to_vec())?,
        )?;
        entry.set_item("layout", format!("{:?}", l.layout))?;
        layers.set_item(&l.path, entry)?;
    }
    out.set_item("layers", layers)?;
    let dense = PyDict::new(py);
    for d in m.shard.dense() {
        dense.set_item(&d.path, to_numpy(py, &d.shape, d.values.clone())?)?;
    }
    out.set_item("dense", dense)?;
    Ok(out)
}

type Factors<'py> = (PyReadonlyArray2<'py, f32>, PyReadonlyArray2<'py, f32>);

/// The update message for the shard message `payload` after training
/// elsewhere: `layers` maps every sharded layer's path to its trained
/// `(a, b)` (`[out, n]`, `[n, in]`), `dense` every dense parameter's path
/// to its trained values (shape as received). A missing, extra or
/// misshapen entry is an error.
#[pyfunction]
pub(crate) fn encode_update<'py>(
    py: Python<'py>,
    payload: &[u8],
    num_samples: u64,
    layers: BTreeMap<String, Factors<'py>>,
    dense: BTreeMap<String, PyReadonlyArrayDyn<'py, f32>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let m = ShardMessage::decode(payload).map_err(py_err)?;
    check_keys(
        "layers",
        layers.keys(),
        m.shard.layers().iter().map(|l| &l.path),
    )?;
    check_keys(
        "dense",
        dense.keys(),
        m.shard.dense().iter().map(|d| &d.path),
    )?;
    let mut trained_layers = Vec::with_capacity(layers.len());
    for l in m.shard.layers() {
        let (a, b) = layers
            .get(&l.path)
            .ok_or_else(|| py_err(format!("layers: no factors for {:?}", l.path)))?;
        let s = &l.shard;
        let (n, rows, cols) = (s.kept(), s.rows(), s.cols());
        check_shape(&format!("layers[{:?}] a", l.path), a.shape(), &[rows, n])?;
        check_shape(&format!("layers[{:?}] b", l.path), b.shape(), &[n, cols])?;
        let shard = LayerShard::new(
            rows,
            cols,
            s.indices().to_vec(),
            s.multipliers().to_vec(),
            a.as_array().iter().copied().collect(),
            b.as_array().iter().copied().collect(),
        )
        .map_err(py_err)?;
        trained_layers.push(NamedShard {
            path: l.path.clone(),
            layout: l.layout,
            shard,
        });
    }
    let mut trained_dense = Vec::with_capacity(dense.len());
    for d in m.shard.dense() {
        let v = dense
            .get(&d.path)
            .ok_or_else(|| py_err(format!("dense: no values for {:?}", d.path)))?;
        check_shape(&format!("dense[{:?}]", d.path), v.shape(), &d.shape)?;
        let values = v.as_array().iter().copied().collect();
        trained_dense
            .push(DenseParam::new(d.path.clone(), d.shape.clone(), values).map_err(py_err)?);
    }
    let trained = ModelShard::new(trained_layers, trained_dense).map_err(py_err)?;
    let wire = UpdateMessage::from_shard(&m, num_samples, &trained)
        .encode()
        .map_err(py_err)?;
    Ok(PyBytes::new(py, &wire))
}

fn check_keys<'a>(
    what: &str,
    given: impl Iterator<Item = &'a String>,
    expected: impl Iterator<Item = &'a String>,
) -> PyResult<()> {
    let given: Vec<&String> = given.collect();
    let mut expected: Vec<&String> = expected.collect();
    expected.sort();
    if given != expected {
        return Err(py_err(format!(
            "{what}: found paths {given:?}; expected exactly {expected:?}"
        )));
    }
    Ok(())
}

fn check_shape(what: &str, found: &[usize], expected: &[usize]) -> PyResult<()> {
    if found != expected {
        return Err(py_err(format!(
            "{what}: found shape {found:?}; expected {expected:?}"
        )));
    }
    Ok(())
}
