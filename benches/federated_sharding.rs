//! Federated spectral sharding (`lastmile-federated-sharding`): the server's
//! per-round costs and the wire format.
//!
//! - `fs_svd/<impl>/<n>`: thin SVD of an `n × n` f32 matrix (seeded uniform
//!   in [−1, 1]) with `lastmile_core::linalg::svd` (faer), n = 256, 1024,
//!   2048. numpy/LAPACK's SVD of the **same** matrices runs in the same
//!   process before the criterion groups (`benches/svd_numpy_sizes.py`, fed
//!   the matrices as raw f32 files); without python3 or numpy a note is
//!   printed and the rest runs.
//! - `fs_round/<strategy>/<sampler>`: one round's sampling work for the
//!   64-256-256-10 MLP at keep ratio 0.25 and K = 10 clients: the strategy's
//!   allocation and the sampler's design for every layer (the plan), 10
//!   client shards drawn (indices + factor build `A = U_S diag(√(λσ))`,
//!   `B = diag(√(λσ)) V_Sᵀ`) and each reconstructed as `A·B` on the host.
//!   `fs_round/svd/model` is the per-round SVD of the three layers
//!   (`SpectralModel::from_module`), `fs_round/fedavg/10` the aggregation of
//!   10 factor updates.
//! - `fs_message/<op>/<what>`: encode and decode throughput (criterion
//!   reports bytes/s) of a keep-0.25 shard message, a keep-1.0 (all
//!   triplets) shard message and a keep-0.25 update message for that MLP.
//!
//! Run: `cargo bench -p lastmile-benches --bench federated_sharding`

use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use burn::tensor::Device;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lastmile_benches::random_tensor;
use lastmile_core::Backend;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::linalg::svd;
use lastmile_core::module::{Layout, Selector};
use lastmile_federated_sharding::aggregate::fedavg;
use lastmile_federated_sharding::message::{ShardMessage, UpdateMessage};
use lastmile_federated_sharding::simulation::Mlp;
use lastmile_federated_sharding::{Budget, Sampler, SpectralModel, Strategy};
use rand::SeedableRng;
use rand::rngs::StdRng;

const SVD_SIZES: [usize; 3] = [256, 1024, 2048];
const MLP: [usize; 4] = [64, 256, 256, 10];
const K: usize = 10;

fn flex() -> Option<Device> {
    Backend::Flex
        .device()
        .or_else(|_| lastmile_core::default_device())
        .ok()
}

/// Writes the SVD inputs as raw little-endian f32 and times numpy's SVD of
/// them with `svd_numpy_sizes.py`, printing its report (or why it skipped).
fn numpy_reference(device: &Device) {
    let dir = std::env::temp_dir().join(format!("lastmile-fs-svd-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        println!(
            "numpy SVD reference skipped: cannot create {}: {e}",
            dir.display()
        );
        return;
    }
    for n in SVD_SIZES {
        let values =
            tensor_to_vec(random_tensor([n, n], 1.0, n as u64, device)).expect("host copy");
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let path = dir.join(format!("svd_{n}.f32"));
        if let Err(e) = std::fs::write(&path, bytes) {
            println!(
                "numpy SVD reference skipped: cannot write {}: {e}",
                path.display()
            );
            return;
        }
    }
    let script: PathBuf = [env!("CARGO_MANIFEST_DIR"), "svd_numpy_sizes.py"]
        .iter()
        .collect();
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg(&dir);
    for n in SVD_SIZES {
        cmd.arg(n.to_string());
    }
    match cmd.output() {
        Ok(out) => {
            println!("--- numpy reference (same matrices) ---");
            print!("{}", String::from_utf8_lossy(&out.stdout));
            if !out.status.success() {
                println!(
                    "svd_numpy_sizes.py failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Err(e) => println!("numpy SVD reference skipped: cannot run python3: {e}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn bench_svd(c: &mut Criterion) {
    let Some(device) = flex() else { return };
    numpy_reference(&device);
    let mut group = c.benchmark_group("fs_svd");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    for n in SVD_SIZES {
        let a = random_tensor([n, n], 1.0, n as u64, &device);
        group.bench_with_input(BenchmarkId::new("lastmile-faer", n), &a, |b, a| {
            b.iter(|| svd(a.clone()).map(|d| d.s.into_data()).expect("svd"))
        });
    }
    group.finish();
}

fn model(device: &Device) -> (Mlp, SpectralModel) {
    let mlp = Mlp::new(&MLP, 0, device).expect("mlp");
    let selector = Selector::new(["layers.*.weight"]).expect("selector");
    let spectral = SpectralModel::from_module(&mlp, &selector, Layout::InOut).expect("svd");
    (mlp, spectral)
}

fn bench_round(c: &mut Criterion) {
    let Some(device) = flex() else { return };
    let (mlp, spectral) = model(&device);
    let selector = Selector::new(["layers.*.weight"]).expect("selector");
    let mut group = c.benchmark_group("fs_round");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function(BenchmarkId::new("svd", "model"), |b| {
        b.iter(|| SpectralModel::from_module(&mlp, &selector, Layout::InOut).expect("svd"))
    });
    for strategy in Strategy::ALL {
        for sampler in Sampler::ALL {
            let mut rng = StdRng::seed_from_u64(1);
            group.bench_function(
                BenchmarkId::new(strategy.to_string(), sampler.name()),
                |b| {
                    b.iter(|| {
                        let plan = spectral
                            .plan(&strategy, sampler, Budget::KeepRatio(0.25), K)
                            .expect("plan");
                        let mut acc = 0.0f32;
                        for _ in 0..K {
                            let shard = plan.draw(&mut rng).expect("draw");
                            let w = shard.reconstruct();
                            acc += w.matrices[0].values[0];
                        }
                        black_box(acc)
                    })
                },
            );
        }
    }
    let plan = spectral
        .plan(
            &Strategy::Collective,
            Sampler::ConditionalPoisson,
            Budget::KeepRatio(0.25),
            K,
        )
        .expect("plan");
    let mut rng = StdRng::seed_from_u64(2);
    let updates: Vec<UpdateMessage> = (0..K)
        .map(|k| {
            let down = ShardMessage {
                round: 0,
                client_id: k as u64,
                strategy: Strategy::Collective,
                sampler: Sampler::ConditionalPoisson,
                clients_per_round: K as u32,
                shard: plan.draw(&mut rng).expect("draw"),
            };
            UpdateMessage::from_shard(&down, 72, &down.shard)
        })
        .collect();
    group.bench_function(BenchmarkId::new("fedavg", K), |b| {
        b.iter(|| fedavg(&spectral, &updates).expect("fedavg"))
    });
    group.finish();
}

fn bench_message(c: &mut Criterion) {
    let Some(device) = flex() else { return };
    let (_, spectral) = model(&device);
    let mut rng = StdRng::seed_from_u64(3);
    let shard = |ratio: f64, strategy: Strategy, rng: &mut StdRng| ShardMessage {
        round: 1,
        client_id: 1,
        strategy,
        sampler: Sampler::ConditionalPoisson,
        clients_per_round: K as u32,
        shard: spectral
            .plan(
                &strategy,
                Sampler::ConditionalPoisson,
                Budget::KeepRatio(ratio),
                K,
            )
            .expect("plan")
            .draw(rng)
            .expect("draw"),
    };
    let quarter = shard(0.25, Strategy::Unbiased, &mut rng);
    let all = shard(1.0, Strategy::TopN, &mut rng);
    let update = UpdateMessage::from_shard(&quarter, 72, &quarter.shard);
    let mut group = c.benchmark_group("fs_message");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for (what, msg) in [("shard_keep0.25", &quarter), ("shard_keep1.0", &all)] {
        let bytes = msg.encode().expect("encode");
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(BenchmarkId::new("encode", what), |b| {
            b.iter(|| msg.encode().expect("encode"))
        });
        group.bench_function(BenchmarkId::new("decode", what), |b| {
            b.iter(|| ShardMessage::decode(&bytes).expect("decode"))
        });
    }
    let bytes = update.encode().expect("encode");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function(BenchmarkId::new("encode", "update_keep0.25"), |b| {
        b.iter(|| update.encode().expect("encode"))
    });
    group.bench_function(BenchmarkId::new("decode", "update_keep0.25"), |b| {
        b.iter(|| UpdateMessage::decode(&bytes).expect("decode"))
    });
    group.finish();
}

criterion_group!(benches, bench_svd, bench_round, bench_message);
criterion_main!(benches);
