//! Thin SVD: `lastmile_core::linalg::svd` (faer on the host) against burn
//! 0.22's `linalg::svd` (one-sided Jacobi on the device), same matrices.
//! Set `LASTMILE_BENCH_BURN_SVD_MAX` to change the largest size given to burn's
//! Jacobi SVD (default 256: at 1024² one call takes minutes).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lastmile_benches::random_tensor;
use lastmile_core::Backend;
use lastmile_core::linalg::{qr, svd};

fn bench_svd(c: &mut Criterion) {
    let Ok(device) = Backend::Flex
        .device()
        .or_else(|_| lastmile_core::default_device())
    else {
        return;
    };
    let burn_max: usize = std::env::var("LASTMILE_BENCH_BURN_SVD_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let mut group = c.benchmark_group("svd");
    group.sample_size(10);
    for n in [256usize, 1024] {
        let a = random_tensor([n, n], 1.0, n as u64, &device);
        group.bench_with_input(BenchmarkId::new("lastmile-faer", n), &a, |b, a| {
            b.iter(|| svd(a.clone()).map(|d| d.s.into_data()))
        });
        if n <= burn_max {
            group.bench_with_input(BenchmarkId::new("burn-jacobi", n), &a, |b, a| {
                b.iter(|| {
                    let (_u, s, _v) = burn::linalg::svd::<2, 1>(a.clone(), 30);
                    s.into_data()
                })
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("qr");
    group.sample_size(10);
    for n in [256usize, 1024] {
        let a = random_tensor([n, n], 1.0, n as u64 + 1, &device);
        group.bench_with_input(BenchmarkId::new("lastmile-faer", n), &a, |b, a| {
            b.iter(|| qr(a.clone()).map(|d| d.r.into_data()))
        });
        if n <= burn_max {
            group.bench_with_input(BenchmarkId::new("burn", n), &a, |b, a| {
                b.iter(|| burn::linalg::qr(a.clone(), true).1.into_data())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_svd);
criterion_main!(benches);
