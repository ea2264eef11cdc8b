//! The cache never exceeds its budget, rejects budgets below k, leaves
//! nothing wrong after a failed load, and the budget allocator spends where
//! the miss curves gain.
#![allow(clippy::unwrap_used)]

use lastmile_core::CoreError;
use lastmile_moe_cache::MoeCacheError;
use lastmile_moe_cache::cache::{Budget, CacheGeometry, ExpertCache, MissCurve, allocate_budget};
use lastmile_moe_cache::policy::PolicyKind;
use lastmile_moe_cache::prefetch::ensure_step;
use lastmile_moe_cache::routing::Routing;
use lastmile_moe_cache::trace::{
    Capacity, ReplayConfig, ReplayRouting, SyntheticConfig, miss_curves, replay, synthetic_trace,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const POLICIES: [PolicyKind; 5] = [
    PolicyKind::Lru,
    PolicyKind::Lfu,
    PolicyKind::Lrfu { lambda: 0.2 },
    PolicyKind::Fifo,
    PolicyKind::Random { seed: 9 },
];

/// A payload that remembers what it is, to catch a wrong entry.
type Payload = (usize, usize);

#[test]
fn the_cache_never_exceeds_its_budget() {
    // Layers of different expert sizes; per-layer and global budgets.
    let geometry = CacheGeometry::new(vec![12, 16, 8], vec![100, 60, 250], 2).unwrap();
    let budgets = [
        Budget::PerLayer(vec![250, 300, 999]),
        Budget::experts_per_layer(&geometry, &[2, 7, 3]).unwrap(),
        Budget::Global(1000),
        Budget::global_experts(&geometry, 3),
    ];
    let mut rng = StdRng::seed_from_u64(1);
    for budget in budgets {
        for policy in POLICIES {
            let mut cache: ExpertCache<Payload> =
                ExpertCache::new(geometry.clone(), budget.clone(), policy).unwrap();
            for _ in 0..400 {
                let layer = rng.random_range(0..3);
                let e = geometry.experts(layer).unwrap();
                let a = rng.random_range(0..e);
                let b = (a + 1 + rng.random_range(0..e - 1)) % e;
                if rng.random_bool(0.2) {
                    cache.prefetch(layer, &[a, b], |x| Ok((layer, x))).unwrap();
                } else {
                    cache.ensure(layer, &[a, b], |x| Ok((layer, x))).unwrap();
                    assert!(cache.is_cached(layer, a) && cache.is_cached(layer, b));
                    cache.end_step().unwrap();
                }
                cache.check_consistency().unwrap();
                for (used, cap) in cache.partition_usage() {
                    assert!(used <= cap, "{used} bytes over a budget of {cap}");
                }
                for l in 0..3 {
                    for x in 0..geometry.experts(l).unwrap() {
                        if let Some(&p) = cache.get(l, x) {
                            assert_eq!(p, (l, x), "wrong payload cached");
                        }
                    }
                }
            }
            let s = cache.total_stats();
            assert!(
                s.hits > 0 && s.misses > 0 && s.evictions > 0,
                "{policy:?}: {s:?}"
            );
        }
    }
}

#[test]
fn capacity_zero_or_below_k_is_a_typed_error() {
    let g = CacheGeometry::uniform(2, 8, 100, 3).unwrap();
    let build = |b| ExpertCache::<()>::new(g.clone(), b, PolicyKind::Lru);
    assert!(matches!(
        build(Budget::PerLayer(vec![300, 99])),
        Err(MoeCacheError::ZeroCapacity {
            layer: Some(1),
            expert_bytes: 100
        })
    ));
    assert!(matches!(
        build(Budget::PerLayer(vec![300, 250])),
        Err(MoeCacheError::CapacityBelowK {
            layer: Some(1),
            capacity: 2,
            k: 3
        })
    ));
    assert!(matches!(
        build(Budget::Global(50)),
        Err(MoeCacheError::ZeroCapacity { layer: None, .. })
    ));
    assert!(matches!(
        build(Budget::Global(200)),
        Err(MoeCacheError::CapacityBelowK {
            layer: None,
            capacity: 2,
            k: 3
        })
    ));
    assert!(matches!(
        build(Budget::PerLayer(vec![300])),
        Err(MoeCacheError::Core(CoreError::LengthMismatch {
            expected: 2,
            found: 1,
            ..
        }))
    ));
    assert!(matches!(
        CacheGeometry::uniform(2, 4, 1, 5),
        Err(MoeCacheError::KAboveExperts { k: 5, experts: 4 })
    ));
    assert!(matches!(
        replay(
            &synthetic_trace(&SyntheticConfig::new(1, 8, 2, 10)).unwrap(),
            &ReplayConfig::new(
                PolicyKind::Lru,
                ReplayRouting::Recorded,
                Capacity::Uniform(1)
            )
        ),
        Err(MoeCacheError::CapacityBelowK {
            layer: Some(0),
            capacity: 1,
            k: 2
        })
    ));
}

#[test]
fn a_failed_load_leaves_the_cache_unchanged() {
    let g = CacheGeometry::uniform(1, 8, 10, 2).unwrap();
    for policy in POLICIES {
        let mut cache: ExpertCache<Payload> =
            ExpertCache::new(g.clone(), Budget::PerLayer(vec![30]), policy).unwrap();
        cache.ensure(0, &[0, 1], |x| Ok((0, x))).unwrap();
        cache.end_step().unwrap();
        cache.ensure(0, &[2], |x| Ok((0, x))).unwrap();
        cache.end_step().unwrap();
        let before: Vec<bool> = cache.cached(0).unwrap().to_vec();
        let stats = cache.stats(0);
        // A full cache: the miss would evict, but the load fails first.
        let failed = cache.ensure(0, &[5], |_| {
            Err(MoeCacheError::MissingExpert {
                layer: 0,
                expert: 5,
            })
        });
        assert!(matches!(
            failed,
            Err(MoeCacheError::MissingExpert {
                layer: 0,
                expert: 5
            })
        ));
        cache.end_step().unwrap();
        assert_eq!(
            cache.cached(0).unwrap(),
            before.as_slice(),
            "{policy:?} evicted for a failed load"
        );
        assert_eq!(cache.stats(0).failed_loads, stats.failed_loads + 1);
        assert_eq!(
            (cache.stats(0).hits, cache.stats(0).misses),
            (stats.hits, stats.misses)
        );
        cache.check_consistency().unwrap();
        // Half a step: the first expert loads, the second fails; what loaded stays valid.
        let half = cache.ensure(0, &[6, 7], |x| {
            if x == 7 {
                Err(MoeCacheError::MissingExpert {
                    layer: 0,
                    expert: 7,
                })
            } else {
                Ok((0, x))
            }
        });
        assert!(matches!(
            half,
            Err(MoeCacheError::MissingExpert { expert: 7, .. })
        ));
        cache.end_step().unwrap();
        assert_eq!(cache.get(0, 6), Some(&(0, 6)));
        assert!(!cache.is_cached(0, 7));
        cache.check_consistency().unwrap();
        // The cache still works.
        cache.ensure(0, &[7, 3], |x| Ok((0, x))).unwrap();
        cache.end_step().unwrap();
        cache.check_consistency().unwrap();
    }
}

#[test]
fn a_step_larger_than_the_budget_is_rejected_before_anything_changes() {
    let g = CacheGeometry::uniform(1, 16, 1, 2).unwrap();
    let mut cache: ExpertCache<()> =
        ExpertCache::new(g, Budget::PerLayer(vec![4]), PolicyKind::Lru).unwrap();
    cache.ensure(0, &[0, 1], |_| Ok(())).unwrap();
    cache.end_step().unwrap();
    // A verify pass of 3 tokens whose union (5 experts) exceeds 4 slots.
    let r = |e: [usize; 2]| Routing {
        experts: e.to_vec(),
        weights: vec![0.5, 0.5],
    };
    let err = ensure_step(
        &mut cache,
        0,
        &[r([2, 3]), r([4, 5]), r([2, 6])],
        |_| Ok(()),
    );
    assert!(matches!(
        err,
        Err(MoeCacheError::StepExceedsCapacity {
            layer: 0,
            needed_bytes: 5,
            budget_bytes: 4
        })
    ));
    assert!(cache.is_cached(0, 0) && cache.is_cached(0, 1));
    assert_eq!(cache.resident_count(0), 2);
    // Pins accumulate within a step: 3 then 2 more do not fit together.
    cache.ensure(0, &[7, 8, 9], |_| Ok(())).unwrap();
    assert!(matches!(
        cache.ensure(0, &[10, 11], |_| Ok(())),
        Err(MoeCacheError::StepExceedsCapacity {
            needed_bytes: 5,
            ..
        })
    ));
    cache.end_step().unwrap();
    cache.check_consistency().unwrap();
    assert!(matches!(
        cache.ensure(0, &[3, 3], |_| Ok(())),
        Err(MoeCacheError::DuplicateExpert {
            layer: 0,
            expert: 3
        })
    ));
    assert!(matches!(
        cache.ensure(0, &[16], |_| Ok(())),
        Err(MoeCacheError::ExpertOutOfRange {
            layer: 0,
            expert: 16,
            experts: 16
        })
    ));
    assert!(matches!(
        cache.ensure(1, &[0], |_| Ok(())),
        Err(MoeCacheError::LayerOutOfRange {
            layer: 1,
            layers: 1
        })
    ));
}

#[test]
fn a_multi_token_step_counts_each_expert_once_and_pins_them_all() {
    let g = CacheGeometry::uniform(1, 8, 1, 2).unwrap();
    // FIFO would evict the oldest insertion, 0, which the step itself uses.
    let mut cache: ExpertCache<()> =
        ExpertCache::new(g, Budget::PerLayer(vec![3]), PolicyKind::Fifo).unwrap();
    cache.ensure(0, &[0, 1], |_| Ok(())).unwrap();
    cache.end_step().unwrap();
    cache.ensure(0, &[2], |_| Ok(())).unwrap();
    cache.end_step().unwrap();
    let r = |e: [usize; 2]| Routing {
        experts: e.to_vec(),
        weights: vec![0.5, 0.5],
    };
    let step = ensure_step(
        &mut cache,
        0,
        &[r([0, 4]), r([4, 0]), r([0, 2])],
        |_| Ok(()),
    )
    .unwrap();
    // Union {0, 4, 2}: 0 and 2 hit once each, 4 misses and evicts 1 (0 is pinned).
    assert_eq!((step.hits, step.misses, step.evictions), (2, 1, 1));
    assert!(cache.is_cached(0, 0) && cache.is_cached(0, 4) && cache.is_cached(0, 2));
    cache.end_step().unwrap();
}

/// A miss early in a step must not evict a resident expert the step uses
/// later: with room for exactly k experts the cache after every step holds
/// that step's experts, so every policy has the same misses.
#[test]
fn a_step_never_evicts_its_own_later_experts() {
    let g = CacheGeometry::uniform(1, 6, 1, 2).unwrap();
    let steps = [[0, 1], [2, 0], [0, 3], [4, 3], [3, 5], [1, 5]];
    let mut misses = Vec::new();
    for policy in POLICIES {
        let mut cache: ExpertCache<()> =
            ExpertCache::new(g.clone(), Budget::PerLayer(vec![2]), policy).unwrap();
        for s in &steps {
            // LRU's and FIFO's oldest resident before [2, 0] is 0, which the
            // step uses after missing 2.
            cache.ensure(0, s, |_| Ok(())).unwrap();
            assert!(s.iter().all(|&e| cache.is_cached(0, e)), "{policy:?}");
            cache.end_step().unwrap();
        }
        misses.push(cache.total_stats().misses);
    }
    // Misses = 2 (cold) + the one expert of each later step not in the previous one.
    assert!(misses.iter().all(|&m| m == 2 + 5), "{misses:?}");
}

#[test]
fn belady_driven_off_its_future_is_reported_at_the_end_of_the_step() {
    let g = CacheGeometry::uniform(1, 4, 1, 1).unwrap();
    let future = [0, 1, 2];
    let mut cache: ExpertCache<()> =
        ExpertCache::with_policies(g, Budget::PerLayer(vec![2]), |p| {
            PolicyKind::Belady { lookahead: None }.build_with_future(p.universe, &future)
        })
        .unwrap();
    cache.ensure(0, &[0], |_| Ok(())).unwrap();
    cache.end_step().unwrap();
    cache.ensure(0, &[3], |_| Ok(())).unwrap();
    assert!(matches!(
        cache.end_step(),
        Err(MoeCacheError::OracleMismatch {
            position: 1,
            expected: 1,
            found: 3
        })
    ));
    cache.check_consistency().unwrap();
}

#[test]
fn prefetch_loads_ahead_without_counting_accesses() {
    let g = CacheGeometry::uniform(1, 8, 1, 2).unwrap();
    let mut cache: ExpertCache<()> =
        ExpertCache::new(g, Budget::PerLayer(vec![3]), PolicyKind::Lru).unwrap();
    cache.ensure(0, &[0, 1], |_| Ok(())).unwrap();
    // Inside the step only one unpinned slot is free: the second prefetch has no room.
    let p = cache.prefetch(0, &[5, 6, 0], |_| Ok(())).unwrap();
    assert_eq!((p.loaded, p.no_room, p.already_resident), (1, 1, 1));
    cache.end_step().unwrap();
    let s = cache.stats(0);
    assert_eq!((s.hits, s.misses, s.prefetch_loads), (0, 2, 1));
    cache.ensure(0, &[5, 1], |_| Ok(())).unwrap();
    cache.end_step().unwrap();
    assert_eq!(cache.stats(0).hits, 2);
}

#[test]
fn the_allocator_spends_where_curves_gain_and_respects_the_total() {
    let trace = synthetic_trace(
        &SyntheticConfig::new(4, 16, 2, 400)
            .with_zipf(0.0)
            .with_reuse(0.0)
            .with_cross_layer(0.0)
            .with_seed(3),
    )
    .unwrap();
    let mut curves = miss_curves(&trace, PolicyKind::Lru, ReplayRouting::Recorded).unwrap();
    // Make layer 2 hot-spotted: pretend its misses collapse with capacity.
    for (i, m) in curves[2].misses.iter_mut().enumerate() {
        *m = if i < 4 { 800 - 150 * i as u64 } else { 200 };
    }
    let bytes = vec![10u64; 4];
    let total = 4 * 2 * 10 + 40;
    let a = allocate_budget(&curves, &bytes, total).unwrap();
    assert!(a.bytes <= total);
    assert_eq!(
        a.slots[2], 6,
        "the hot layer should take the spare budget: {:?}",
        a.slots
    );
    assert!(a.slots.iter().all(|&s| s >= 2));
    let sum: u64 = curves.iter().zip(&a.slots).map(|(c, &s)| c.at(s)).sum();
    assert_eq!(a.predicted_misses, sum);
    // The allocation replays to the curves' prediction for untouched layers.
    let g = CacheGeometry::uniform(4, 16, 10, 2).unwrap();
    let budget = a.budget(&g).unwrap();
    let report = replay(
        &trace,
        &ReplayConfig::new(
            PolicyKind::Lru,
            ReplayRouting::Recorded,
            Capacity::Bytes(budget),
        )
        .with_expert_bytes(bytes),
    )
    .unwrap();
    assert_eq!(report.layers[0].misses, curves[0].at(a.slots[0]));
    assert!(matches!(
        allocate_budget(&curves, &[10; 4], 79),
        Err(MoeCacheError::BudgetTooSmall {
            budget: 79,
            needed: 80
        })
    ));
    assert!(matches!(
        allocate_budget(&curves, &[10; 3], 100),
        Err(MoeCacheError::Core(CoreError::LengthMismatch { .. }))
    ));
    // A flat curve then a drop: the hull step sees past the plateau.
    let plateau = vec![
        MissCurve {
            layer: 0,
            min_capacity: 1,
            misses: vec![100, 100, 100, 0],
        },
        MissCurve {
            layer: 1,
            min_capacity: 1,
            misses: vec![100, 90, 80, 70],
        },
    ];
    assert_eq!(
        allocate_budget(&plateau, &[1, 1], 5).unwrap().slots,
        vec![4, 1]
    );
}
