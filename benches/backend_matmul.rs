//! f32 matmul throughput of each compiled backend; criterion reports
//! elements/s, where one "element" is one floating-point operation
//! (2·n³ per n×n product), i.e. FLOP/s.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lastmile_benches::random_tensor;
use lastmile_core::Backend;

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

criterion_group!(benches, bench_matmul);
criterion_main!(benches);
