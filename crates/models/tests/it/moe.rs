#![allow(clippy::unwrap_used)]
//! The MoE language models: the resident model keeps the `LanguageModel`
//! promises; the offloaded model equals it when every expert is cached or
//! when Cache-Prior has λ = 0; traces record the router's top-k; training
//! lowers the loss; bad settings give typed errors.
//!
//! Tolerance: as in `tests/it/lm.rs`, the compared logits differ only by f32
//! summation order (dense vs sparse expert mixing, chunked vs whole
//! forwards); measured differences are ~1e-6 for logits of magnitude ~1,
//! and a wrong expert or weight changes logits by far more than `TOL`.

use std::path::PathBuf;

use burn::tensor::{Device, Tensor};
use lastmile_core::backend_test;
use lastmile_core::lm::{LanguageModel, LmError, conformance};
use lastmile_models::{
    ModelError, MoeModelError, MoeTransformer, MoeTransformerConfig, OffloadedMoeTransformer,
    TrainConfig, train_moe,
};
use lastmile_moe_cache::cache::Budget;
use lastmile_moe_cache::moe::OffloadConfig;
use lastmile_moe_cache::routing::RoutingRule;
use lastmile_moe_cache::store::{ExpertStore, PageCache, StoreOptions};
use lastmile_moe_cache::trace::{
    Capacity, LogitsFormat, ReplayConfig, ReplayRouting, Trace, replay,
};
use lastmile_moe_cache::{MoeCacheError, PolicyKind};

const TOL: f32 = 1e-4;
const EXPERTS: usize = 8;

fn config() -> MoeTransformerConfig {
    MoeTransformerConfig::byte_level(32, 2, 4, EXPERTS, 2, 64)
}

fn model(device: &Device) -> MoeTransformer {
    device.seed(5);
    config().init(device).unwrap()
}

fn tokens(n: usize, salt: usize) -> Vec<usize> {
    (0..n).map(|i| (i * 37 + salt * 101 + 5) % 256).collect()
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "lastmile-models-moe-{name}-{}-{:?}.lmexp",
        std::process::id(),
        std::thread::current().id()
    ))
}

fn store(m: &MoeTransformer, name: &str) -> (ExpertStore, PathBuf) {
    let path = temp(name);
    let s = m
        .write_experts(
            &path,
            StoreOptions::default().with_page_cache(PageCache::Keep),
        )
        .unwrap();
    (s, path)
}

fn budget(slots: usize) -> Budget {
    Budget::PerLayer(vec![
        slots as u64 * config().expert_bytes();
        config().n_layers
    ])
}

/// Logits of a 20-token prompt then 8 single-token steps, stacked `[28, vocab]`.
fn decode<M: LanguageModel>(m: &M) -> Tensor<2> {
    let mut cache = m.new_cache(1).unwrap();
    let mut out = vec![
        m.forward(&mut cache, &[tokens(20, 1)])
            .unwrap()
            .squeeze_dim(0),
    ];
    for t in tokens(8, 2) {
        out.push(m.forward(&mut cache, &[vec![t]]).unwrap().squeeze_dim(0));
    }
    Tensor::cat(out, 0)
}

/// Logits of 28 tokens fed one at a time (a decode under a small budget), `[28, vocab]`.
fn decode_one_by_one<M: LanguageModel>(m: &M) -> Tensor<2> {
    let mut cache = m.new_cache(1).unwrap();
    let mut out = Vec::new();
    for t in tokens(20, 1).into_iter().chain(tokens(8, 2)) {
        out.push(m.forward(&mut cache, &[vec![t]]).unwrap().squeeze_dim(0));
    }
    Tensor::cat(out, 0)
}

fn max_diff(a: Tensor<2>, b: Tensor<2>) -> f32 {
    (a - b).abs().max().into_scalar()
}

backend_test!(resident_moe_conforms, |device| {
    let m = model(device);
    let mut worst = conformance::check_all(&m, 11, TOL).unwrap();
    let first = vec![tokens(9, 4), Vec::new(), tokens(3, 5)];
    let second = vec![tokens(2, 6), tokens(4, 7), Vec::new()];
    worst = worst.max(conformance::ragged_batch(&m, &first, &second, TOL).unwrap());
    assert!(worst <= TOL, "worst {worst}");
});

backend_test!(full_forward_equals_cached_forward, |device| {
    let m = model(device);
    let t = tokens(12, 3);
    let ids = Tensor::<2, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(t.iter().map(|&x| x as i64).collect(), [1, 12]),
        device,
    );
    // Sparse dispatch (training) against dense evaluation of every expert.
    let (sparse, _) = m.forward_with_aux(ids.clone()).unwrap();
    let full = m.forward(ids).unwrap().squeeze_dim(0);
    assert!(max_diff(sparse.squeeze_dim(0), full.clone()) <= TOL);
    let mut cache = m.new_cache(1);
    let cached = m.forward_cached(&mut cache, &[t]).unwrap().squeeze_dim(0);
    assert!(max_diff(full, cached) <= TOL);
});

backend_test!(
    offloaded_with_every_expert_cached_equals_resident,
    |device| {
        let m = model(device);
        let (s, path) = store(&m, "all");
        let off = OffloadedMoeTransformer::lru(&m, s, budget(EXPERTS)).unwrap();
        let d = max_diff(decode(&m), decode(&off));
        assert!(d <= TOL, "offloaded vs resident: {d}");
        // The prefill is one step per layer (its union of experts is
        // accessed once), then 8 tokens × 2 layers × top-2; nothing is
        // loaded twice.
        let stats = off.cache_stats().unwrap();
        assert!(stats.hits + stats.misses >= 8 * 2 * 2 + 2 * 2);
        assert!(stats.misses <= (2 * EXPERTS) as u64);
        assert_eq!(stats.evictions, 0);
        assert!(conformance::check_all(&off, 3, TOL).unwrap() <= TOL);
        std::fs::remove_file(path).ok();
    }
);

backend_test!(
    cache_prior_lambda_zero_equals_resident_under_pressure,
    |device| {
        let m = model(device);
        let (s, path) = store(&m, "lambda0");
        let prior = |lambda: f32, s| {
            let rule = RoutingRule::CachePrior { lambda, top_j: 1 };
            let config = OffloadConfig::new(PolicyKind::Lru, rule, 2);
            OffloadedMoeTransformer::new(&m, s, budget(2), config).unwrap()
        };
        let off = prior(0.0, s);
        let d = max_diff(decode(&m), decode_one_by_one(&off));
        assert!(d <= TOL, "λ = 0 vs resident: {d}");
        assert!(
            off.cache_stats().unwrap().evictions > 0,
            "the cache was under pressure"
        );
        // A strong prior changes the routing, hence the logits (a live control).
        let (s, path2) = store(&m, "lambda1");
        let off = prior(1.0, s);
        assert!(max_diff(decode(&m), decode_one_by_one(&off)) > 1e-3);
        std::fs::remove_file(path).ok();
        std::fs::remove_file(path2).ok();
    }
);

backend_test!(
    belady_runs_live_on_the_recorded_future_of_a_top_k_run,
    |device| {
        let m = model(device);
        let (s, path) = store(&m, "belady-live");
        let top_k = |policy| OffloadConfig::new(policy, RoutingRule::TopK, 2);
        let mut lru =
            OffloadedMoeTransformer::new(&m, s, budget(3), top_k(PolicyKind::Lru)).unwrap();
        lru.context().record_accesses(true);
        let want = decode_one_by_one(&lru);
        let lru_stats = lru.cache_stats().unwrap();
        let future = lru.context().take_access_log();
        assert_eq!(future.len(), config().n_layers);
        assert!(
            future.iter().all(|f| f.len() == 28 * 2),
            "k accesses per token and layer"
        );
        let options = StoreOptions::default().with_page_cache(PageCache::Keep);
        for lookahead in [None, Some(2)] {
            let policy = PolicyKind::Belady { lookahead };
            let store = ExpertStore::open(&path, options).unwrap();
            let opt =
                OffloadedMoeTransformer::with_future(&m, store, budget(3), top_k(policy), &future)
                    .unwrap();
            // Same routing (the oracle checks every access), so the same logits.
            let d = max_diff(want.clone(), decode_one_by_one(&opt));
            assert!(d <= TOL, "{lookahead:?}: {d}");
            let s = opt.cache_stats().unwrap();
            assert_eq!(s.accesses(), lru_stats.accesses());
            if lookahead.is_none() {
                assert!(
                    s.hits >= lru_stats.hits,
                    "OPT {} < LRU {}",
                    s.hits,
                    lru_stats.hits
                );
            }
        }
        // Belady with a rule that follows the cache has no fixed future.
        let store = ExpertStore::open(&path, options).unwrap();
        let rule = RoutingRule::CachePrior {
            lambda: 0.5,
            top_j: 1,
        };
        let err = OffloadedMoeTransformer::with_future(
            &m,
            store,
            budget(3),
            OffloadConfig::new(PolicyKind::Belady { lookahead: None }, rule, 2),
            &future,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            MoeModelError::Cache(MoeCacheError::OracleNeedsFixedRouting { .. })
        ));
        // One sequence per partition.
        let store = ExpertStore::open(&path, options).unwrap();
        let err = OffloadedMoeTransformer::with_future(
            &m,
            store,
            budget(3),
            top_k(PolicyKind::Belady { lookahead: None }),
            &future[..1],
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                MoeModelError::Model(ModelError::Core(_))
                    | MoeModelError::Cache(MoeCacheError::Core(_))
            ),
            "{err:?}"
        );
        std::fs::remove_file(path).ok();
    }
);

backend_test!(traces_record_the_router_top_k, |device| {
    let m = model(device);
    let mut trace = Trace::new(2, EXPERTS, 2, LogitsFormat::F32).unwrap();
    let mut cache = m.new_cache(1);
    let first = tokens(10, 1);
    m.forward_traced(&mut cache, &first, &mut trace).unwrap();
    m.forward_traced(&mut cache, &[7], &mut trace).unwrap();
    assert_eq!((trace.len(), trace.tokens()), (22, 11));
    for r in trace.records() {
        let z = r.logits.unwrap();
        let mut order: Vec<usize> = (0..EXPERTS).collect();
        order.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
        let chosen: Vec<usize> = r.experts.iter().map(|&e| e as usize).collect();
        assert_eq!(chosen, order[..2].to_vec(), "record of token {}", r.token);
    }
    // Decoding the same tokens one by one through the offloaded model at 2
    // slots misses exactly as often as LRU replay of the recorded trace
    // (normal routing does not depend on the cache).
    let mut prefix = Trace::new(2, EXPERTS, 2, LogitsFormat::F32).unwrap();
    for r in trace.records().filter(|r| r.token < 10) {
        let e: Vec<usize> = r.experts.iter().map(|&e| e as usize).collect();
        prefix.push(r.token, r.layer, &e, r.logits).unwrap();
    }
    let (s, path) = store(&m, "trace");
    let off = OffloadedMoeTransformer::lru(&m, s, budget(2)).unwrap();
    let mut c = off.new_cache(1).unwrap();
    for t in first {
        off.forward(&mut c, &[vec![t]]).unwrap();
    }
    let live = off.cache_stats().unwrap();
    let replayed = replay(
        &prefix,
        &ReplayConfig::new(
            PolicyKind::Lru,
            ReplayRouting::Recorded,
            Capacity::Uniform(2),
        ),
    )
    .unwrap();
    assert_eq!(live.misses, replayed.misses());
    // Batches of two rows cannot be traced.
    let mut two = m.new_cache(2);
    assert!(matches!(
        m.forward_traced(&mut two, &[1], &mut trace),
        Err(MoeModelError::Model(ModelError::Lm(LmError::Batch {
            found: 2,
            ..
        })))
    ));
    let mut wrong = Trace::new(3, EXPERTS, 2, LogitsFormat::None).unwrap();
    assert!(matches!(
        m.forward_traced(&mut m.new_cache(1), &[1], &mut wrong),
        Err(MoeModelError::Cache(MoeCacheError::LayerMismatch { .. }))
    ));
    std::fs::remove_file(path).ok();
});

backend_test!(training_lowers_the_loss_and_balances, |device| {
    let ad = device.clone().autodiff();
    ad.seed(1);
    let m = MoeTransformerConfig::byte_level(32, 1, 2, 4, 2, 32)
        .init(&ad)
        .unwrap();
    let text = b"the quick brown fox jumps over the lazy dog. ".repeat(20);
    let mut steps = Vec::new();
    let trained = train_moe(m, &text, &TrainConfig::new(40, 4, 32), 0.01, |_, s| {
        steps.push(s)
    })
    .unwrap();
    let first = steps[..5].iter().map(|s| s.lm_loss).sum::<f32>();
    let last = steps[35..].iter().map(|s| s.lm_loss).sum::<f32>();
    assert!(last < 0.8 * first, "loss {first} → {last}");
    // E·Σ f_i P_i ≥ 1 up to rounding, with equality for uniform routing.
    assert!(steps.iter().all(|s| s.balance_loss >= 0.99));
    assert_eq!(trained.config().experts, 4);
});

backend_test!(bad_settings_give_typed_errors, |device| {
    let c = config();
    assert!(matches!(
        MoeTransformerConfig { k: 9, ..c }.init(device),
        Err(MoeModelError::Cache(MoeCacheError::KAboveExperts {
            k: 9,
            experts: 8
        }))
    ));
    assert!(matches!(
        MoeTransformerConfig { k: 0, ..c }.check(),
        Err(MoeModelError::Cache(MoeCacheError::KAboveExperts {
            k: 0,
            ..
        }))
    ));
    assert!(matches!(
        MoeTransformerConfig { n_heads: 3, ..c }.check(),
        Err(MoeModelError::Model(ModelError::Config(_)))
    ));
    assert!(matches!(
        MoeTransformerConfig { experts: 0, ..c }.check(),
        Err(MoeModelError::Model(ModelError::Config(_)))
    ));
    let m = model(device);
    let (s, path) = store(&m, "bad");
    assert!(matches!(
        OffloadedMoeTransformer::lru(&m, s, budget(1)),
        Err(MoeModelError::Cache(MoeCacheError::CapacityBelowK { .. }))
    ));
    let s = ExpertStore::open(
        &path,
        StoreOptions::default().with_page_cache(PageCache::Keep),
    )
    .unwrap();
    assert!(matches!(
        OffloadedMoeTransformer::new(
            &m,
            s,
            budget(4),
            OffloadConfig::new(PolicyKind::Belady { lookahead: None }, RoutingRule::TopK, 2)
        ),
        Err(MoeModelError::Cache(MoeCacheError::OracleNeedsFuture))
    ));
    // A store of a model with other experts.
    device.seed(6);
    let other = MoeTransformerConfig { d_ff: 32, ..c }.init(device).unwrap();
    let (s, path2) = store(&other, "other");
    assert!(matches!(
        OffloadedMoeTransformer::lru(&m, s, budget(4)),
        Err(MoeModelError::Cache(MoeCacheError::LayerMismatch { .. }))
    ));
    // A prefill whose union of experts exceeds the budget is refused.
    let s = ExpertStore::open(
        &path,
        StoreOptions::default().with_page_cache(PageCache::Keep),
    )
    .unwrap();
    let off = OffloadedMoeTransformer::lru(&m, s, budget(2)).unwrap();
    let mut cache = off.new_cache(1).unwrap();
    assert!(matches!(
        off.forward(&mut cache, &[tokens(30, 9)]),
        Err(LmError::Model(_))
    ));
    assert!(matches!(
        off.forward(&mut cache, &[vec![300]]),
        Err(LmError::TokenOutOfRange { token: 300, .. })
    ));
    let ad = device.clone().autodiff();
    let t = config().init(&ad).unwrap();
    assert!(matches!(
        train_moe(t, &[1u8; 200], &TrainConfig::new(2, 2, 16), -1.0, |_, _| {}),
        Err(MoeModelError::Model(ModelError::Config(_)))
    ));
    std::fs::remove_file(path).ok();
    std::fs::remove_file(path2).ok();
});
