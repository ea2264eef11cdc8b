//! Adapter switching, unmerged forward overhead and FouRA's transform cost,
//! with numpy's anchors in the same run.
//!
//! - `adapter_switch/<kind>/<n>`: one switch between two adapters of the
//!   same kind through `AdaptedModel` on one `n × n` f32 linear layer (SHiRA at
//!   1 % density: scatter the saved originals of the old adapter back and
//!   the prepared values of the new one; LoRA rank 16: the fuse
//!   `W0 + s·BA` into a fresh weight). Also the LoRA fuse alone
//!   (`Adapter::add_scaled_delta` on a copy of `W0`), burn's own
//!   `W0 + B.matmul(A)·s` for comparison, and the raw host-slice scatter.
//! - `adapter_forward/<kind>/b<batch>`: unmerged forward of a 1024 × 1024
//!   layer vs the base `Linear`; FouRA both re-folding its transform per call
//!   (training) and with the folded factors cached (`Foura::fold`, inference).
//! - `foura_transform/<way>/1024`: DCT of a [64, 1024] activation batch by
//!   dense matmul and by the rustfft plan, the per-call fold `A·T` FouRA
//!   uses instead, and the rank-16 low-rank matmul it wraps.
//! - the anchor: `python3 benches/adapters_numpy.py 1024 4096` (the same
//!   two scatters and the fuse in numpy), run after the criterion groups and
//!   printed with them; skipped with a note without python3 or numpy.
//!
//! ```text
//! cargo bench -p lastmile-benches --bench adapters
//! ```

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lastmile_adapters::{
    AdaptedLinear, AdaptedModel, Adapter, FouraConfig, Lora, Shira, ShiraBudget, ShiraConfig,
    ShiraMask, SpectralTransform, WeightLayout,
};
use lastmile_benches::random_tensor;
use lastmile_core::Backend;

fn flex() -> Option<Device> {
    Backend::Flex
        .device()
        .or_else(|_| lastmile_core::default_device())
        .ok()
}

fn shira(w0: &Tensor<2>, seed: u64, device: &Device) -> Shira {
    let s = ShiraConfig::new(ShiraMask::Random, ShiraBudget::Density(0.01))
        .with_seed(seed)
        .init(w0, None)
        .expect("mask");
    let n = s.nnz();
    let values = random_tensor([1, n], 0.01, seed, device).reshape([n]);
    Shira::from_parts(s.indices().to_vec(), values, s.d_out(), s.d_in()).expect("shira")
}

fn lora(n: usize, r: usize, seed: u64, device: &Device) -> Lora {
    let a = random_tensor([r, n], 0.05, seed, device);
    let b = random_tensor([n, r], 0.05, seed + 1, device);
    Lora::from_factors(a, b, 2.0 * r as f64, false).expect("lora")
}

/// A module holding one `Linear`, as the adapted model in the switch bench.
#[derive(Module, Debug)]
struct One {
    w: Linear,
}

fn sync(t: Tensor<2>) -> f32 {
    t.slice([0..1, 0..1]).into_scalar::<f32>()
}

fn bench_switch(c: &mut Criterion) {
    let Some(device) = flex() else { return };
    let mut group = c.benchmark_group("adapter_switch");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for n in [1024usize, 4096] {
        let w0 = random_tensor([n, n], 0.05, 1, &device);
        // One n × n layer; its stored [in, out] weight is W0ᵀ, so the
        // adapters' [out, in] W0 is `w0` itself.
        let layer = One {
            w: Linear {
                weight: Param::from_tensor(w0.clone().transpose()),
                bias: None,
            },
        };
        let mut model = AdaptedModel::new(layer, &["w"]).expect("model");
        let one = |a: Adapter| BTreeMap::from([("w".to_string(), a)]);
        model
            .add("s1", one(shira(&w0, 1, &device).into()))
            .expect("s1");
        model
            .add("s2", one(shira(&w0, 2, &device).into()))
            .expect("s2");
        model
            .add("l1", one(lora(n, 16, 3, &device).into()))
            .expect("l1");
        model
            .add("l2", one(lora(n, 16, 5, &device).into()))
            .expect("l2");
        let mut flip = false;
        group.bench_function(BenchmarkId::new("shira_1pct_set", n), |b| {
            b.iter(|| {
                flip = !flip;
                model
                    .switch(if flip { "s1" } else { "s2" })
                    .expect("switch");
                sync(model.module().w.weight.val())
            })
        });
        group.bench_function(BenchmarkId::new("lora_r16_set", n), |b| {
            b.iter(|| {
                flip = !flip;
                model
                    .switch(if flip { "l1" } else { "l2" })
                    .expect("switch");
                sync(model.module().w.weight.val())
            })
        });
        model.unmerge().expect("unmerge");
        let s = shira(&w0, 1, &device);
        let mut host = w0.clone().into_data().try_to_vec::<f32>().expect("host");
        group.bench_function(BenchmarkId::new("shira_1pct_host_in_out", n), |b| {
            b.iter(|| {
                let saved = s
                    .scatter_host(&mut host, WeightLayout::OutIn, 1.0)
                    .expect("scatter");
                s.restore_host(&mut host, WeightLayout::OutIn, &saved)
                    .expect("restore");
                black_box(host[0])
            })
        });
        let l = Adapter::from(lora(n, 16, 3, &device));
        group.bench_function(BenchmarkId::new("lora_r16_fuse", n), |b| {
            b.iter(|| {
                sync(
                    l.add_scaled_delta(w0.clone(), WeightLayout::OutIn, 1.0)
                        .expect("fuse"),
                )
            })
        });
        let Adapter::Lora(raw) = &l else { return };
        group.bench_function(BenchmarkId::new("lora_r16_fuse_burn_matmul", n), |b| {
            b.iter(|| sync(w0.clone() + raw.delta_weight()))
        });
    }
    group.finish();
}

fn bench_forward(c: &mut Criterion) {
    let Some(device) = flex() else { return };
    let mut group = c.benchmark_group("adapter_forward");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    let n = 1024;
    let base = LinearConfig::new(n, n).init(&device);
    let w0 = base.weight.val().transpose();
    let kinds: Vec<(&str, Adapter)> = vec![
        ("lora_r16", lora(n, 16, 3, &device).into()),
        (
            "foura_r16_dct_adaptive",
            FouraConfig::new(16, 32.0)
                .init(n, n, &device)
                .expect("foura")
                .into(),
        ),
        (
            "foura_r16_dct_frozen",
            FouraConfig::new(16, 32.0)
                .with_gate(lastmile_adapters::GateMode::Frozen)
                .init(n, n, &device)
                .expect("foura")
                .into(),
        ),
        ("shira_1pct", shira(&w0, 1, &device).into()),
    ];
    for batch in [1usize, 64] {
        let x = random_tensor([batch, n], 1.0, 9, &device);
        group.bench_function(BenchmarkId::new("base_linear", format!("b{batch}")), |b| {
            b.iter(|| sync(base.forward(x.clone())))
        });
        for (name, adapter) in &kinds {
            let layer = AdaptedLinear::new(base.clone(), adapter.clone()).expect("layer");
            group.bench_function(BenchmarkId::new(*name, format!("b{batch}")), |b| {
                b.iter(|| sync(layer.forward(x.clone())))
            });
            // Inference with the transform folded once (what a deployment runs).
            if let Adapter::Foura(f) = adapter {
                let folded = f.fold();
                group.bench_function(
                    BenchmarkId::new(format!("{name}_folded"), format!("b{batch}")),
                    |b| b.iter(|| sync(base.forward(x.clone()) + folded.forward_delta(x.clone()))),
                );
            }
        }
    }
    group.finish();
}

fn bench_transform(c: &mut Criterion) {
    let Some(device) = flex() else { return };
    let mut group = c.benchmark_group("foura_transform");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    let (n, batch, r) = (1024usize, 64usize, 16usize);
    let x = random_tensor([batch, n], 1.0, 4, &device);
    let t = SpectralTransform::Dct
        .matrix_tensor(n, &device)
        .expect("matrix");
    let a = random_tensor([r, n], 0.05, 5, &device);
    let bm = random_tensor([n, r], 0.05, 6, &device);
    group.bench_function(BenchmarkId::new("dct_dense_matmul_b64", n), |b| {
        b.iter(|| sync(x.clone().matmul(t.clone().transpose())))
    });
    let mut plan = SpectralTransform::Dct.plan(n).expect("plan");
    let host = x.clone().into_data().try_to_vec::<f32>().expect("host");
    let mut buf = host.clone();
    group.bench_function(BenchmarkId::new("dct_rustfft_b64", n), |b| {
        b.iter(|| {
            buf.copy_from_slice(&host);
            plan.forward(&mut buf).expect("fft");
            black_box(buf[0])
        })
    });
    let mut rplan = SpectralTransform::Rfft.plan(n).expect("plan");
    group.bench_function(BenchmarkId::new("rfft_rustfft_b64", n), |b| {
        b.iter(|| {
            buf.copy_from_slice(&host);
            rplan.forward(&mut buf).expect("fft");
            black_box(buf[0])
        })
    });
    group.bench_function(BenchmarkId::new("fold_A_T_r16", n), |b| {
        b.iter(|| sync(a.clone().matmul(t.clone())))
    });
    group.bench_function(BenchmarkId::new("low_rank_matmul_b64_r16", n), |b| {
        b.iter(|| {
            sync(
                x.clone()
                    .matmul(a.clone().transpose())
                    .matmul(bm.clone().transpose()),
            )
        })
    });
    group.finish();
}

/// numpy's scatter and fuse on the same sizes, printed with this run.
fn numpy_anchor(_: &mut Criterion) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("adapters_numpy.py");
    match Command::new("python3")
        .arg(&script)
        .args(["1024", "4096"])
        .output()
    {
        Ok(o) => {
            println!("numpy anchor ({}):", script.display());
            print!("{}", String::from_utf8_lossy(&o.stdout));
            if !o.status.success() {
                println!(
                    "numpy anchor failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
        Err(e) => println!("numpy anchor skipped: cannot run python3: {e}"),
    }
}

criterion_group!(
    benches,
    bench_switch,
    bench_forward,
    bench_transform,
    numpy_anchor
);
criterion_main!(benches);
