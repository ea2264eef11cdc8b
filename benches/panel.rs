//! The panel kernel alone (`lastmile_core::panel`), on one thread: one
//! product of a Q4_1 matrix of SmolLM2-135M's shapes with 1 to 16 rows of
//! activations, through the 8-bit-activation kernel the `BlocksQ8` storage
//! uses, against burn's f32 matrix product of the same shape (the anchor:
//! what the model would run without the kernel).
//!
//! Throughput is counted in panel-blocks (16 outputs × 32 inputs), so
//! `1000 / (Melem/s)` is the nanoseconds per panel-block that
//! `docs/benchmarks.md` compares with the kernel's instruction count. The
//! product includes quantising the rows and allocating the output (a few
//! per cent at 8 rows); the weights (0.55 MB) stay in the L2 cache, so
//! this is the kernel's arithmetic, not the memory's speed.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lastmile_benches::{cpu_backends, random_tensor};
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::gguf::GgmlType;
use lastmile_core::panel::PanelMatrix;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Outputs × inputs: the feed-forward gate (and up) and down projections.
const SHAPES: [(&str, usize, usize); 2] = [("gate", 1536, 576), ("down", 576, 1536)];

const ROWS: [usize; 6] = [1, 2, 4, 8, 12, 16];

/// Seeded Q4_1 blocks: a small positive f16 scale, a small negative f16
/// minimum and random nibbles (20 bytes a block of 32).
fn q4_1_blocks(out: usize, inp: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = Vec::with_capacity(out * inp / 32 * 20);
    for _ in 0..out * inp / 32 {
        let d: u16 = 0x2000 + rng.random_range(0..0x0800);
        let m: u16 = 0xA000 + rng.random_range(0..0x0800);
        data.extend(d.to_le_bytes());
        data.extend(m.to_le_bytes());
        data.extend((0..16).map(|_| rng.random::<u8>()));
    }
    data
}

fn bench_panel(c: &mut Criterion) {
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    let Some(Ok(device)) = cpu_backends().first().map(|b| b.device()) else {
        eprintln!("panel bench skipped: no CPU backend compiled in");
        return;
    };
    let mut group = c.benchmark_group("panel_q4_1");
    for (name, out, inp) in SHAPES {
        let w = PanelMatrix::from_gguf_q8(GgmlType::Q4_1, &q4_1_blocks(out, inp, 1), out, inp)
            .expect("valid Q4_1 blocks");
        let w_t = random_tensor([inp, out], 0.1, 2, &device);
        let panel_blocks = (out / 16 * inp / 32) as u64;
        for rows in ROWS {
            let x = random_tensor([rows, inp], 1.0, 3, &device);
            let xs = tensor_to_vec(x.clone()).expect("f32 rows");
            group.throughput(Throughput::Elements(panel_blocks));
            group.bench_function(BenchmarkId::new(format!("kernel/{name}"), rows), |b| {
                one.install(|| b.iter(|| w.matmul(&xs, rows).expect("a product")));
            });
            group.bench_function(BenchmarkId::new(format!("burn_f32/{name}"), rows), |b| {
                one.install(|| b.iter(|| x.clone().matmul(w_t.clone()).into_data()));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_panel);
criterion_main!(benches);
