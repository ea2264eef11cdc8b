//! Overhead of each draft-length policy per draft step, against the cost of
//! the draft step itself (one cached forward of the 1-layer d = 64 draft
//! transformer, its distribution q, a sample and the policy signals, read
//! back in one transfer as `ModelDrafter` does; q stays on the device),
//! measured in the same run;
//! and the cost of the target's verify pass over `k` tokens against its
//! one-token step, with plain weights and with the panel layout; and the
//! decoding GELU (`gelu_decode`) against burn's `gelu` on MLP activations.

use std::hint::black_box;

use rand::SeedableRng;

use burn::tensor::activation::gelu;
use burn::tensor::{Device, Distribution, Tensor};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lastmile_core::numerics::SamplingParams;
use lastmile_models::{PackedTransformer, TransformerConfig, gelu_decode};
use lastmile_spec_decode::{
    AdaEdl, AdaEdlConfig, CostModel, DraftPolicy, DraftStepInfo, HeuristicSchedule, MaxConfidence,
    RoundOutcome, StaticLength,
};

fn policies() -> Vec<Box<dyn DraftPolicy>> {
    vec![
        Box::new(StaticLength::new(4).expect("valid")),
        Box::new(HeuristicSchedule::new(5, 8).expect("valid")),
        Box::new(MaxConfidence::new(0.4, 8).expect("valid")),
        Box::new(AdaEdl::new(AdaEdlConfig::default()).expect("valid")),
        Box::new(CostModel::new(0.3, 0.7, 0.5, 8).expect("valid")),
    ]
}

fn bench_policies(c: &mut Criterion) {
    let mut group = c.benchmark_group("spec_decode_policy_per_draft_step");
    // A round of 8 draft steps: round_limit + 7 stopping decisions + observe, divided by 8 in the docs.
    let infos: Vec<DraftStepInfo> = (0..8)
        .map(|i| DraftStepInfo {
            entropy: 0.05 * i as f64,
            top_prob: 1.0 - 0.05 * i as f64,
        })
        .collect();
    for policy in policies() {
        let name = policy.name();
        let mut p = policy.clone();
        group.bench_function(BenchmarkId::new("round_of_8", name), |b| {
            b.iter(|| {
                let limit = p.round_limit();
                let mut drafted = 1;
                while drafted < limit && p.continue_drafting(drafted, black_box(&infos[drafted])) {
                    drafted += 1;
                }
                p.observe(RoundOutcome {
                    drafted,
                    accepted: drafted / 2,
                });
                drafted
            })
        });
    }

    // Baseline: one draft step of the example's draft model at context 80,
    // as `ModelDrafter` takes it: forward, q on the device, a sample, the
    // entropy and top probability, and one read-back of the three.
    let device = Device::flex();
    device.seed(0);
    let draft = TransformerConfig::byte_level(64, 1, 2, 128)
        .init(&device)
        .expect("valid config");
    let params = SamplingParams::new(1.0).expect("valid");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    group.bench_function(BenchmarkId::new("baseline", "draft_step_d64"), |b| {
        b.iter_batched(
            || {
                let mut cache = draft.new_cache(1);
                draft
                    .forward_cached(&mut cache, &[vec![32; 80]])
                    .expect("forward");
                cache
            },
            |mut cache| {
                let logits = draft
                    .forward_cached(&mut cache, &[vec![101]])
                    .expect("forward")
                    .reshape([1, 256]);
                let q = params
                    .probabilities_unchecked(logits)
                    .expect("probabilities");
                let token =
                    lastmile_core::numerics::sample_categorical_on_device(q.clone(), &mut rng)
                        .expect("sample")
                        .float();
                let h = lastmile_core::numerics::entropy(q.clone()).expect("entropy");
                let top = q.max_dim(1).reshape([1]);
                let signals = burn::tensor::Tensor::cat(vec![token, h, top], 0);
                (
                    lastmile_core::convert::tensor_to_vec(signals).expect("read back"),
                    cache,
                )
            },
            criterion::BatchSize::SmallInput,
        )
    });
    // What AdaEDL / max-confidence add to a draft step: entropy and top
    // probability of q, read back to the host.
    let q = params
        .probabilities(burn::tensor::Tensor::<2>::random(
            [1, 256],
            burn::tensor::Distribution::Normal(0.0, 2.0),
            &device,
        ))
        .expect("probabilities");
    group.bench_function(BenchmarkId::new("signals", "entropy_and_top_prob"), |b| {
        b.iter(|| {
            let h = lastmile_core::numerics::entropy(q.clone()).expect("entropy");
            let top = q.clone().max_dim(1);
            (
                lastmile_core::convert::tensor_to_vec(h).expect("read back"),
                lastmile_core::convert::tensor_to_vec(top).expect("read back"),
            )
        })
    });
    group.finish();
}

/// Cost of one cached target forward over `k` new tokens after an 80-token
/// prefix (the verify pass of a round with `k - 1` drafted tokens), for the
/// example's 4-layer d = 256 target shape. `k = 1` is the autoregressive
/// step, the baseline of the ratios in the docs.
fn bench_verify_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("spec_decode_verify_cost");
    let device = Device::flex();
    device.seed(0);
    let target = TransformerConfig::byte_level(256, 4, 4, 128)
        .init(&device)
        .expect("valid config");
    let packed = PackedTransformer::new(target.clone()).expect("packable");
    for k in [1usize, 2, 3, 5, 9] {
        // An 80-token context; each iteration scores k new tokens and rolls
        // them back, as a verify pass of a decoding round does. "plain" is
        // `Transformer::forward_cached` (the baseline), "panels" the
        // `PackedTransformer` the decoder uses.
        let mut cache = target.new_cache(1);
        target
            .forward_cached(&mut cache, &[vec![32; 80]])
            .expect("forward");
        group.bench_function(BenchmarkId::new("plain", k), |b| {
            b.iter(|| {
                let logits = target
                    .forward_cached(&mut cache, &[vec![101; k]])
                    .expect("forward");
                cache.truncate(0, 80).expect("rollback");
                lastmile_core::convert::tensor_to_vec(logits).expect("read back")
            })
        });
        let mut cache = packed.new_cache(1);
        packed
            .forward_cached(&mut cache, &[vec![32; 80]])
            .expect("forward");
        group.bench_function(BenchmarkId::new("panels", k), |b| {
            b.iter(|| {
                let logits = packed
                    .forward_cached(&mut cache, &[vec![101; k]])
                    .expect("forward");
                cache.truncate(0, 80).expect("rollback");
                lastmile_core::convert::tensor_to_vec(logits).expect("read back")
            })
        });
    }
    group.finish();
}

/// The MLP activation of `rows` tokens of the target (`d_ff = 1024`):
/// burn's `gelu` (the baseline) against [`gelu_decode`]. 1 row is a decoding
/// step, 5 a verify pass, 64 a short prefill. Inputs ~ N(0, 3²): a trained
/// model's pre-activations spread over several units, and the scalar erf
/// takes its slower branch for |x| > 0.84 (untrained weights give smaller
/// inputs and flatter the baseline).
fn bench_gelu(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_gelu");
    let device = Device::flex();
    device.seed(0);
    for rows in [1usize, 5, 64] {
        let x = Tensor::<3>::random([1, rows, 1024], Distribution::Normal(0.0, 3.0), &device);
        group.bench_function(BenchmarkId::new("burn_gelu", rows), |b| {
            b.iter(|| lastmile_core::convert::tensor_to_vec(gelu(black_box(x.clone()))))
        });
        group.bench_function(BenchmarkId::new("gelu_decode", rows), |b| {
            b.iter(|| lastmile_core::convert::tensor_to_vec(gelu_decode(black_box(x.clone()))))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench_policies, bench_verify_cost, bench_gelu
}
criterion_main!(benches);
