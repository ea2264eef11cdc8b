//! Every policy against a naive O(n) reference on small random traces, with
//! multi-expert steps (pinning), through the real cache.
#![allow(clippy::unwrap_used)]

use lastmile_moe_cache::MoeCacheError;
use lastmile_moe_cache::cache::{Budget, CacheGeometry, ExpertCache};
use lastmile_moe_cache::policy::{Belady, EvictionPolicy, Lfu, Lru, PolicyKind, RandomPolicy};

#[derive(Clone, Copy, Debug)]
enum Naive {
    Lru,
    Lfu,
    Fifo,
    Lrfu(f64),
    Belady,
    /// Belady seeing `w` accesses ahead of the current one.
    BeladyW(usize),
}

struct Meta {
    id: usize,
    inserted: u64,
    last: u64,
    count: u64,
    times: Vec<u64>,
}

/// Hit (true) or miss of every access, by brute force.
fn naive(steps: &[Vec<usize>], cap: usize, policy: Naive) -> Vec<bool> {
    let flat: Vec<usize> = steps.concat();
    let mut residents: Vec<Meta> = Vec::new();
    let mut hits = Vec::new();
    let (mut seq, mut time, mut pos) = (0u64, 0u64, 0usize);
    for step in steps {
        let mut pinned: Vec<usize> = Vec::new();
        for &id in step {
            seq += 1;
            time += 1;
            if let Some(m) = residents.iter_mut().find(|m| m.id == id) {
                m.last = seq;
                m.count += 1;
                m.times.push(time);
                hits.push(true);
            } else {
                if residents.len() == cap {
                    let candidates = residents
                        .iter()
                        .enumerate()
                        .filter(|(_, m)| !pinned.contains(&m.id));
                    let victim = match policy {
                        Naive::Lru => candidates.min_by_key(|(_, m)| m.last),
                        Naive::Fifo => candidates.min_by_key(|(_, m)| m.inserted),
                        Naive::Lfu => candidates.min_by_key(|(_, m)| (m.count, m.last)),
                        Naive::Lrfu(lambda) => candidates.min_by(|(_, a), (_, b)| {
                            let crf = |m: &Meta| -> f64 {
                                m.times
                                    .iter()
                                    .map(|&t| 0.5f64.powf(lambda * (time - t) as f64))
                                    .sum()
                            };
                            crf(a)
                                .partial_cmp(&crf(b))
                                .unwrap()
                                .then(a.last.cmp(&b.last))
                        }),
                        Naive::Belady | Naive::BeladyW(_) => candidates.max_by_key(|(_, m)| {
                            let horizon = match policy {
                                Naive::BeladyW(w) => pos + w,
                                _ => usize::MAX,
                            };
                            let next = flat[pos + 1..]
                                .iter()
                                .position(|&x| x == m.id)
                                .map(|n| pos + 1 + n)
                                .filter(|&n| n <= horizon);
                            match next {
                                Some(n) => (1u8, n as u64, 0),
                                // unknown or never used again: above all known, least recent first
                                None => (2u8, 0, u64::MAX - m.last),
                            }
                        }),
                    };
                    let (at, _) = victim.expect("a victim exists when capacity >= k");
                    residents.swap_remove(at);
                }
                residents.push(Meta {
                    id,
                    inserted: seq,
                    last: seq,
                    count: 1,
                    times: vec![time],
                });
                hits.push(false);
            }
            pinned.push(id);
            pos += 1;
        }
    }
    hits
}

/// Hit or miss of every access through the real cache.
fn fast(steps: &[Vec<usize>], universe: usize, cap: usize, policy: PolicyKind) -> Vec<bool> {
    let k = steps[0].len();
    let geometry = CacheGeometry::uniform(1, universe, 1, k).unwrap();
    let future: Vec<usize> = steps.concat();
    let mut cache: ExpertCache<()> =
        ExpertCache::with_policies(geometry, Budget::PerLayer(vec![cap as u64]), |p| {
            policy.build_with_future(p.universe, &future)
        })
        .unwrap();
    let mut hits = Vec::new();
    for step in steps {
        for &id in step {
            hits.push(cache.access(0, id, || Ok(())).unwrap());
        }
        cache.end_step().unwrap();
        cache.check_consistency().unwrap();
    }
    hits
}

const CASES: [(u64, usize, usize, usize); 6] = [
    // (seed, universe, k, capacity)
    (1, 8, 1, 3),
    (2, 12, 2, 4),
    (3, 16, 3, 5),
    (4, 10, 2, 2),
    (5, 20, 4, 9),
    (6, 6, 1, 1),
];

#[test]
fn policies_match_naive_references() {
    for (seed, universe, k, cap) in CASES {
        let steps = crate::common::random_steps(seed, 300, universe, k);
        for (kind, reference) in [
            (PolicyKind::Lru, Naive::Lru),
            (PolicyKind::Fifo, Naive::Fifo),
            (PolicyKind::Lfu, Naive::Lfu),
            (PolicyKind::Lrfu { lambda: 0.3 }, Naive::Lrfu(0.3)),
            (PolicyKind::Belady { lookahead: None }, Naive::Belady),
            (PolicyKind::Belady { lookahead: Some(1) }, Naive::BeladyW(1)),
            (PolicyKind::Belady { lookahead: Some(3) }, Naive::BeladyW(3)),
            (
                PolicyKind::Belady {
                    lookahead: Some(10),
                },
                Naive::BeladyW(10),
            ),
        ] {
            assert_eq!(
                fast(&steps, universe, cap, kind),
                naive(&steps, cap, reference),
                "{kind:?} differs from its reference (seed {seed}, E {universe}, k {k}, capacity {cap})"
            );
        }
    }
}

#[test]
fn lrfu_spans_lfu_and_lru() {
    for (seed, universe, k, cap) in CASES {
        let steps = crate::common::random_steps(seed + 100, 300, universe, k);
        assert_eq!(
            fast(&steps, universe, cap, PolicyKind::Lrfu { lambda: 0.0 }),
            fast(&steps, universe, cap, PolicyKind::Lfu),
            "LRFU(0) must be LFU"
        );
        assert_eq!(
            fast(&steps, universe, cap, PolicyKind::Lrfu { lambda: 1.0 }),
            fast(&steps, universe, cap, PolicyKind::Lru),
            "LRFU(1) must be LRU"
        );
    }
}

#[test]
fn belady_without_lookahead_is_lru() {
    for (seed, universe, k, cap) in CASES {
        let steps = crate::common::random_steps(seed + 200, 300, universe, k);
        assert_eq!(
            fast(
                &steps,
                universe,
                cap,
                PolicyKind::Belady { lookahead: Some(0) }
            ),
            fast(&steps, universe, cap, PolicyKind::Lru)
        );
    }
}

#[test]
fn belady_lookahead_covering_the_trace_is_opt() {
    let steps = crate::common::random_steps(9, 200, 12, 2);
    let n = steps.len() * 2;
    assert_eq!(
        fast(&steps, 12, 4, PolicyKind::Belady { lookahead: Some(n) }),
        fast(&steps, 12, 4, PolicyKind::Belady { lookahead: None })
    );
}

#[test]
fn random_policy_is_reproducible_and_seed_dependent() {
    let steps = crate::common::random_steps(11, 400, 16, 2);
    let a = fast(&steps, 16, 5, PolicyKind::Random { seed: 1 });
    let b = fast(&steps, 16, 5, PolicyKind::Random { seed: 1 });
    let c = fast(&steps, 16, 5, PolicyKind::Random { seed: 2 });
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn random_policy_never_picks_a_pinned_or_absent_id() {
    let mut p = RandomPolicy::new(8, 3).unwrap();
    for id in [1, 4, 6, 7] {
        p.on_insert(id);
    }
    p.on_evict(4);
    let mut pinned = [false; 8];
    pinned[1] = true;
    pinned[7] = true;
    for _ in 0..200 {
        assert_eq!(p.victim(&pinned), Some(6));
    }
    pinned[6] = true;
    assert_eq!(p.victim(&pinned), None);
}

#[test]
fn victims_skip_pinned_ids() {
    let mut lru = Lru::new(4).unwrap();
    let mut lfu = Lfu::new(4).unwrap();
    for id in 0..4 {
        lru.on_insert(id);
        lfu.on_insert(id);
    }
    lfu.on_hit(0);
    let pinned = [true, true, false, false];
    assert_eq!(lru.victim(&pinned), Some(2));
    assert_eq!(lfu.victim(&pinned), Some(2));
    assert_eq!(lru.victim(&[true; 4]), None);
    assert_eq!(lfu.victim(&[true; 4]), None);
}

#[test]
fn belady_reports_accesses_off_its_future() {
    let mut opt = Belady::new(4, &[0, 1, 2], None).unwrap();
    opt.on_insert(0);
    assert!(opt.check().is_ok());
    opt.on_insert(3);
    assert!(matches!(
        opt.check(),
        Err(MoeCacheError::OracleMismatch {
            position: 1,
            expected: 1,
            found: 3
        })
    ));
}

#[test]
fn belady_rejects_ids_outside_its_universe() {
    assert!(matches!(
        Belady::new(4, &[0, 4], None),
        Err(MoeCacheError::ExpertOutOfRange {
            expert: 4,
            experts: 4,
            ..
        })
    ));
    assert!(matches!(
        PolicyKind::Belady { lookahead: None }.build(4),
        Err(MoeCacheError::OracleNeedsFuture)
    ));
}

#[test]
fn policy_parameters_are_checked() {
    assert!(matches!(
        PolicyKind::Lrfu { lambda: -0.1 }.build(4),
        Err(MoeCacheError::Core(
            lastmile_core::CoreError::OutOfRange { .. }
        ))
    ));
    assert!(matches!(
        PolicyKind::Lru.build(0),
        Err(MoeCacheError::Core(
            lastmile_core::CoreError::OutOfRange { .. }
        ))
    ));
}

#[test]
fn prefetched_experts_are_not_accesses() {
    // LFU: a prefetched expert has count 0, so it goes before a once-used one.
    let mut lfu = Lfu::new(4).unwrap();
    lfu.on_insert(0);
    lfu.on_prefetch(1);
    assert_eq!(lfu.victim(&[false; 4]), Some(1));
    // Belady: a prefetch does not advance its position in the future.
    let mut opt = Belady::new(4, &[0, 1, 0], None).unwrap();
    opt.on_insert(0);
    opt.on_prefetch(1);
    assert_eq!(opt.position(), 1);
    opt.on_hit(1);
    assert!(opt.check().is_ok());
}
