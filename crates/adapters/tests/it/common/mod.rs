//! Helpers shared by the integration tests.
#![allow(missing_docs)]
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Tensor};
use lastmile_adapters::{AdaptedLinear, AdaptedModel};

/// Asserts that `$e` is `Err` of the variant `$p` (an `AdapterError`
/// pattern), printing the error it got otherwise.
macro_rules! assert_err {
    ($e:expr, $p:pat) => {{
        let r = $e;
        assert!(
            matches!(r, Err($p)),
            "expected Err({}), got {:?}",
            stringify!($p),
            r.as_ref().err()
        );
    }};
}

pub fn vec1(t: Tensor<1>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

pub fn vec2(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// Standard normal values from `StdRng(seed)`: the same on every backend and
/// whatever other tests (sharing the device's generator in this binary) draw.
pub fn seeded_randn(shape: [usize; 2], seed: u64, device: &Device) -> Tensor<2> {
    use burn::tensor::TensorData;
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Tensor::from_data(
        TensorData::random::<f32, _, _>(shape, Distribution::Normal(0.0, 1.0), &mut rng),
        device,
    )
}

pub fn randn(shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Naive f64 `[m, k] × [k, n]` on row-major slices.
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|t| f64::from(a[i * k + t]) * f64::from(b[t * n + j]))
                .sum();
        }
    }
    out
}

pub fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; a.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = a[i * cols + j];
        }
    }
    out
}

/// One linear layer, as a module for `AdaptedModel`.
#[derive(Module, Debug)]
pub struct OneLayer {
    pub fc: Linear,
}

/// Deploys `layer`'s adapter through `AdaptedModel` on the layer's own
/// base: the output for `x` with the adapter switched in, and the weight
/// after unmerging.
pub fn deploy(layer: &AdaptedLinear, x: Tensor<2>) -> (Vec<f32>, Vec<f32>) {
    let module = OneLayer {
        fc: layer.base.clone(),
    };
    let mut model = AdaptedModel::new(module, &["fc"]).unwrap();
    model
        .add(
            "a",
            BTreeMap::from([("fc".to_string(), layer.adapter.clone())]),
        )
        .unwrap();
    model.switch("a").unwrap();
    let y = vec2(model.module().fc.forward(x));
    model.unmerge().unwrap();
    (y, vec2(model.module().fc.weight.val()))
}
