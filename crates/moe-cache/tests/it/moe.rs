//! The MoE layer: with every expert cached the cached layer equals the
//! resident one on every compiled backend; λ = 0 gives identical outputs;
//! bad stores and budgets give typed errors with the cache left consistent.
#![allow(clippy::unwrap_used)]

use crate::common::{TempFile, temp_path};
use burn::tensor::{Device, Distribution, Tensor};
use lastmile_core::backend_test;
use lastmile_core::convert::tensor_to_vec;
use lastmile_moe_cache::MoeCacheError;
use lastmile_moe_cache::cache::Budget;
use lastmile_moe_cache::moe::{
    CachedMoeLayer, MoeConfig, MoeLayer, OffloadConfig, OffloadContext, write_store,
};
use lastmile_moe_cache::policy::PolicyKind;
use lastmile_moe_cache::routing::RoutingRule;
use lastmile_moe_cache::store::{ExpertStore, PageCache, StoreOptions};

const D: usize = 8;
const F: usize = 12;
const E: usize = 6;
const K: usize = 2;
const EXPERT_BYTES: u64 = 4 * 3 * (D * F) as u64;

fn options() -> StoreOptions {
    if cfg!(any(target_os = "linux", target_os = "android")) {
        StoreOptions::default()
    } else {
        StoreOptions::default().with_page_cache(PageCache::Keep)
    }
}

fn layers(device: &Device, renormalize: bool) -> Vec<MoeLayer> {
    (0..2)
        .map(|_| {
            MoeConfig::new(D, F, E, K)
                .unwrap()
                .with_renormalize(renormalize)
                .init(device)
        })
        .collect()
}

fn context(
    path: &std::path::Path,
    slots: usize,
    rule: RoutingRule,
    renormalize: bool,
    device: &Device,
) -> OffloadContext {
    let store = ExpertStore::open(path, options()).unwrap();
    let config = OffloadConfig::new(PolicyKind::Lru, rule, K).with_renormalize(renormalize);
    OffloadContext::new(
        store,
        Budget::PerLayer(vec![slots as u64 * EXPERT_BYTES; 2]),
        config,
        device,
    )
    .unwrap()
}

backend_test!(
    cached_layer_with_every_expert_cached_equals_the_resident_layer,
    |device| {
        for renormalize in [true, false] {
            let resident = layers(device, renormalize);
            let file = TempFile(temp_path("equal"));
            write_store(&file.0, &[&resident[0], &resident[1]]).unwrap();
            let mut ctx = context(&file.0, E, RoutingRule::TopK, renormalize, device);
            for (l, layer) in resident.iter().enumerate() {
                let cached = CachedMoeLayer::from_resident(layer, l);
                // A 5-token step (a verify pass) and single decode tokens.
                for n in [5, 1, 1, 3] {
                    let x = Tensor::<2>::random([n, D], Distribution::Normal(0.0, 1.0), device);
                    let want = tensor_to_vec(layer.forward(x.clone()).unwrap()).unwrap();
                    let step = cached.forward(x, &mut ctx).unwrap();
                    let got = tensor_to_vec(step.output).unwrap();
                    let want64: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
                    lastmile_core::testing::assert_close(&got, &want64, 1e-4, 1e-5);
                    assert_eq!(step.routings.len(), n);
                }
            }
            // Every expert fits: after warm-up only hits.
            let s = ctx.cache().total_stats();
            assert!(s.misses <= (2 * E) as u64 && s.evictions == 0, "{s:?}");
            ctx.cache().check_consistency().unwrap();
        }
    }
);

backend_test!(lambda_zero_gives_identical_layer_outputs, |device| {
    let resident = layers(device, true);
    let file = TempFile(temp_path("lambda0"));
    write_store(&file.0, &[&resident[0], &resident[1]]).unwrap();
    // A cache of 3 of 6 experts, so the cached mask changes every step.
    let mut top_k = context(&file.0, 3, RoutingRule::TopK, true, device);
    let mut prior = context(
        &file.0,
        3,
        RoutingRule::CachePrior {
            lambda: 0.0,
            top_j: 1,
        },
        true,
        device,
    );
    let mut biased = context(
        &file.0,
        3,
        RoutingRule::CachePrior {
            lambda: 2.0,
            top_j: 1,
        },
        true,
        device,
    );
    let mut differed = false;
    for t in 0..12 {
        let l = t % 2;
        let cached = CachedMoeLayer::from_resident(&resident[l], l);
        let x = Tensor::<2>::random([1, D], Distribution::Normal(0.0, 1.0), device);
        let a = cached.forward(x.clone(), &mut top_k).unwrap();
        let b = cached.forward(x.clone(), &mut prior).unwrap();
        let c = cached.forward(x, &mut biased).unwrap();
        assert_eq!(a.routings, b.routings);
        let bits = |s: &lastmile_moe_cache::moe::MoeStep| {
            tensor_to_vec(s.output.clone())
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&a), bits(&b), "token {t}");
        differed |= a.routings != c.routings;
    }
    assert!(differed, "a strong prior should change some routing");
    assert_eq!(top_k.cache().total_stats(), prior.cache().total_stats());
    assert!(biased.cache().total_stats().hits >= top_k.cache().total_stats().hits);
});

backend_test!(bad_stores_and_budgets_give_typed_errors, |device| {
    let resident = layers(device, true);
    let file = TempFile(temp_path("errors"));
    write_store(&file.0, &[&resident[0], &resident[1]]).unwrap();
    let store = || ExpertStore::open(&file.0, options()).unwrap();
    let config = OffloadConfig::new(PolicyKind::Lru, RoutingRule::TopK, K);
    assert!(matches!(
        OffloadContext::new(
            store(),
            Budget::PerLayer(vec![EXPERT_BYTES; 2]),
            config,
            device
        ),
        Err(MoeCacheError::CapacityBelowK {
            layer: Some(0),
            capacity: 1,
            k: 2
        })
    ));
    assert!(matches!(
        OffloadContext::new(store(), Budget::PerLayer(vec![0; 2]), config, device),
        Err(MoeCacheError::ZeroCapacity { layer: Some(0), .. })
    ));
    assert!(matches!(
        OffloadContext::new(
            store(),
            Budget::Global(1 << 30),
            OffloadConfig::new(PolicyKind::Lru, RoutingRule::TopK, 7),
            device
        ),
        Err(MoeCacheError::KAboveExperts { k: 7, experts: 6 })
    ));
    assert!(matches!(
        OffloadContext::new(
            store(),
            Budget::Global(1 << 30),
            OffloadConfig::new(PolicyKind::Belady { lookahead: None }, RoutingRule::TopK, K),
            device
        ),
        Err(MoeCacheError::OracleNeedsFuture)
    ));
    // A layer whose shapes differ from the store's.
    let mut ctx = context(&file.0, 3, RoutingRule::TopK, true, device);
    let other = MoeConfig::new(D, F + 1, E, K).unwrap().init(device);
    let x = Tensor::<2>::random([1, D], Distribution::Normal(0.0, 1.0), device);
    assert!(matches!(
        CachedMoeLayer::from_resident(&other, 0).forward(x.clone(), &mut ctx),
        Err(MoeCacheError::LayerMismatch { layer: 0, .. })
    ));
    assert!(matches!(
        CachedMoeLayer::from_resident(&resident[0], 2).forward(x.clone(), &mut ctx),
        Err(MoeCacheError::LayerOutOfRange {
            layer: 2,
            layers: 2
        })
    ));
    assert!(matches!(
        CachedMoeLayer::from_resident(&resident[0], 0)
            .forward(Tensor::zeros([1, D + 1], device), &mut ctx),
        Err(MoeCacheError::Core(
            lastmile_core::CoreError::ShapeMismatch { .. }
        ))
    ));
    // A verify pass whose experts cannot all be resident at once.
    let wide = Tensor::<2>::random([16, D], Distribution::Normal(0.0, 3.0), device);
    let step = CachedMoeLayer::from_resident(&resident[0], 0).forward(wide, &mut ctx);
    assert!(
        matches!(
            step,
            Err(MoeCacheError::StepExceedsCapacity { layer: 0, .. })
        ),
        "{step:?}"
    );
    ctx.cache().check_consistency().unwrap();
    // Prefetch then a hit.
    let cached = CachedMoeLayer::from_resident(&resident[1], 1);
    let predicted = cached.predict(x.clone(), K).unwrap();
    let report = ctx.prefetch(1, &predicted[0]).unwrap();
    assert_eq!(report.loaded, K as u64);
    let step = cached.forward(x, &mut ctx).unwrap();
    assert_eq!((step.report.hits, step.report.misses), (K as u64, 0));
});

backend_test!(
    a_corrupt_expert_fails_its_load_and_leaves_the_cache_consistent,
    |device| {
        let resident = layers(device, true);
        let file = TempFile(temp_path("corrupt"));
        write_store(&file.0, &[&resident[0], &resident[1]]).unwrap();
        // Damage every expert's last byte of layer 0, through the store's own index order.
        // Blobs are 4096-aligned after a header shorter than a page: layer 1's
        // experts end the file, layer 0's precede them.
        let mut bytes = std::fs::read(&file.0).unwrap();
        let first_layer1 = bytes.len() as u64 - (E as u64 - 1) * 4096 - EXPERT_BYTES;
        let base = first_layer1 - E as u64 * 4096;
        assert_eq!(base, 4096);
        for e in 0..E as u64 {
            bytes[(base + e * 4096 + EXPERT_BYTES - 1) as usize] ^= 0x55;
        }
        std::fs::write(&file.0, &bytes).unwrap();
        let mut ctx = context(&file.0, 3, RoutingRule::TopK, true, device);
        let x = Tensor::<2>::random([1, D], Distribution::Normal(0.0, 1.0), device);
        let r = CachedMoeLayer::from_resident(&resident[0], 0).forward(x.clone(), &mut ctx);
        assert!(
            matches!(r, Err(MoeCacheError::ChecksumMismatch { .. })),
            "{r:?}"
        );
        ctx.cache().check_consistency().unwrap();
        assert_eq!(ctx.cache().resident_count(0), 0);
        assert_eq!(ctx.cache().stats(0).failed_loads, 1);
        // Layer 1 is intact and still works.
        CachedMoeLayer::from_resident(&resident[1], 1)
            .forward(x, &mut ctx)
            .unwrap();
        assert_eq!(ctx.cache().resident_count(1), K);
    }
);

#[cfg(feature = "flex")]
#[test]
fn the_resident_layer_trains() {
    use burn::optim::{AdamConfig, GradientsParams};
    let device = Device::flex().autodiff();
    device.seed(1);
    let mut layer = MoeConfig::new(4, 8, 4, 2).unwrap().init(&device);
    let mut optim = AdamConfig::new().init();
    let x = Tensor::<2>::random([16, 4], Distribution::Normal(0.0, 1.0), &device);
    let target = x.clone() * 0.5;
    let loss_of = |l: &MoeLayer| {
        let d = l.forward(x.clone()).unwrap() - target.clone();
        (d.clone() * d).mean()
    };
    let first = loss_of(&layer).into_scalar::<f32>();
    for _ in 0..30 {
        let loss = loss_of(&layer);
        let grads = GradientsParams::from_grads(loss.backward(), &layer);
        layer = optim.step(1e-2, layer, grads);
    }
    let last = loss_of(&layer).into_scalar::<f32>();
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}
