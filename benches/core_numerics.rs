//! Softmax and categorical-sampling throughput of `lastmile-core` on each
//! compiled CPU backend, at decoding-like shapes (batch × vocabulary).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lastmile_benches::{cpu_backends, random_tensor};
use lastmile_core::numerics::{SamplingParams, sample_categorical, softmax};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn bench_numerics(c: &mut Criterion) {
    let shapes = [(1usize, 32_000usize), (64, 1_000), (256, 256)];
    let mut group = c.benchmark_group("softmax");
    for backend in cpu_backends() {
        let Ok(device) = backend.device() else {
            continue;
        };
        for &(batch, vocab) in &shapes {
            let logits = random_tensor([batch, vocab], 3.0, 1, &device);
            group.throughput(Throughput::Elements((batch * vocab) as u64));
            group.bench_with_input(
                BenchmarkId::new(backend.name(), format!("{batch}x{vocab}")),
                &logits,
                |b, l| b.iter(|| softmax(l.clone(), 0.8).map(|p| p.into_data())),
            );
        }
    }
    group.finish();

    let mut group = c.benchmark_group("sample_top_p");
    for backend in cpu_backends() {
        let Ok(device) = backend.device() else {
            continue;
        };
        let params = SamplingParams::new(0.8)
            .and_then(|p| p.with_top_p(0.9))
            .expect("valid sampling parameters");
        for &(batch, vocab) in &shapes {
            let logits = random_tensor([batch, vocab], 3.0, 2, &device);
            let mut rng = StdRng::seed_from_u64(3);
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(
                BenchmarkId::new(backend.name(), format!("{batch}x{vocab}")),
                &logits,
                |b, l| {
                    b.iter(|| {
                        params
                            .probabilities(l.clone())
                            .and_then(|p| sample_categorical(p, &mut rng))
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench_numerics);
criterion_main!(benches);
