//! Backend comparison for choosing the default CPU backend:
//! - `matmul`: f32 n×n products; throughput is reported in elements/s where
//!   one element is one floating-point operation (2·n³ per product), i.e. FLOP/s;
//! - `mlp_train_step`: forward + backward + Adam step of a 256-512-10 MLP on a
//!   batch of 256, the small latency-bound work our examples are made of.
//!
//! Every compiled backend is measured; ndarray is opt-in, so run with
//! `--features ndarray` to compare it with flex.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Int, Tensor, TensorData};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lastmile_benches::{cpu_backends, random_tensor};
use lastmile_core::Backend;
use lastmile_core::numerics::log_softmax;

#[derive(Module, Debug)]
struct Mlp {
    a: Linear,
    b: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.b.forward(relu(self.a.forward(x)))
    }
}

fn bench_matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul");
    group.sample_size(20);
    for backend in Backend::available() {
        let Ok(device) = backend.device() else {
            continue;
        };
        for n in [256usize, 1024] {
            let a = random_tensor([n, n], 1.0, 1, &device);
            let b = random_tensor([n, n], 1.0, 2, &device);
            group.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
            group.bench_with_input(
                BenchmarkId::new(backend.name(), n),
                &(a, b),
                |bench, (a, b)| bench.iter(|| a.clone().matmul(b.clone()).into_data()),
            );
        }
    }
    group.finish();
}

fn bench_train_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("mlp_train_step");
    group.sample_size(30);
    for backend in cpu_backends() {
        let Ok(device) = backend.device() else {
            continue;
        };
        let device = device.autodiff();
        device.seed(0);
        let mut model = Mlp {
            a: LinearConfig::new(256, 512).init(&device),
            b: LinearConfig::new(512, 10).init(&device),
        };
        let mut optim = AdamConfig::new().init();
        let x = random_tensor([256, 256], 1.0, 3, &device);
        let labels: Vec<i64> = (0..256).map(|i| i % 10).collect();
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [256]), &device);
        group.bench_function(
            BenchmarkId::new(backend.name(), "256-512-10/b256"),
            |bench| {
                bench.iter(|| {
                    let logits = model.forward(x.clone());
                    let loss = log_softmax(logits, 1.0)
                        .expect("valid temperature")
                        .gather(1, y.clone().unsqueeze_dim::<2>(1))
                        .mean()
                        .neg();
                    let grads = GradientsParams::from_grads(loss.backward(), &model);
                    model = optim.step(1e-3, model.clone(), grads);
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_matmul, bench_train_step);
criterion_main!(benches);
