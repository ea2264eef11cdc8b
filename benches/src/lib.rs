//! Shared inputs for lastmile's criterion benchmarks: seeded random tensors
//! and the list of CPU backends to compare.

use burn::tensor::{Device, Tensor, TensorData};
use lastmile_core::Backend;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// A `[rows, cols]` tensor of seeded uniform values in `[-scale, scale]`.
pub fn random_tensor(shape: [usize; 2], scale: f32, seed: u64, device: &Device) -> Tensor<2> {
    let mut rng = StdRng::seed_from_u64(seed);
    let data: Vec<f32> = (0..shape[0] * shape[1])
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
        .collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// The CPU backends compiled into this build.
pub fn cpu_backends() -> Vec<Backend> {
    Backend::compiled()
        .into_iter()
        .filter(|b| b.is_cpu())
        .collect()
}
