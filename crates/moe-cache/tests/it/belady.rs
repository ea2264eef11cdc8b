//! Properties of replay: Belady/OPT bounds every online policy; LRU and
//! Belady are monotone in capacity; Cache-Prior with λ = 0 is top-k.
#![allow(clippy::unwrap_used)]

use lastmile_moe_cache::policy::PolicyKind;
use lastmile_moe_cache::routing::RoutingRule;
use lastmile_moe_cache::trace::{
    Capacity, LogitsFormat, ReplayConfig, ReplayRouting, SyntheticConfig, Trace, replay,
    synthetic_trace,
};

const ONLINE: [PolicyKind; 6] = [
    PolicyKind::Lru,
    PolicyKind::Lfu,
    PolicyKind::Lrfu { lambda: 0.05 },
    PolicyKind::Lrfu { lambda: 0.5 },
    PolicyKind::Fifo,
    PolicyKind::Random { seed: 3 },
];
const OPT: PolicyKind = PolicyKind::Belady { lookahead: None };

/// A trace of uniformly random (biased) steps, one layer.
fn random_trace(seed: u64, experts: usize, k: usize, tokens: usize) -> Trace {
    let mut t = Trace::new(1, experts, k, LogitsFormat::None).unwrap();
    for (i, s) in crate::common::random_steps(seed, tokens, experts, k)
        .iter()
        .enumerate()
    {
        t.push(i as u32, 0, s, None).unwrap();
    }
    t
}

fn traces() -> Vec<Trace> {
    let mut out = Vec::new();
    for seed in 0..12u64 {
        let experts = 6 + (seed as usize % 4) * 4;
        let k = 1 + seed as usize % 3;
        out.push(random_trace(seed, experts, k, 150));
    }
    for seed in 0..8u64 {
        let c = SyntheticConfig::new(3, 12 + 4 * (seed as usize % 3), 1 + seed as usize % 3, 120)
            .with_zipf(0.6 + 0.2 * seed as f64)
            .with_reuse(0.1 * (seed % 4) as f64)
            .with_cross_layer(0.2)
            .with_topics(3, 40)
            .with_seed(seed);
        out.push(synthetic_trace(&c).unwrap());
    }
    out
}

fn hits(trace: &Trace, policy: PolicyKind, capacity: Capacity) -> u64 {
    replay(
        trace,
        &ReplayConfig::new(policy, ReplayRouting::Recorded, capacity),
    )
    .unwrap()
    .total()
    .hits
}

#[test]
fn belady_beats_every_online_policy_per_layer() {
    for (i, trace) in traces().iter().enumerate() {
        for cap in trace.k()..=trace.experts() {
            let opt = hits(trace, OPT, Capacity::Uniform(cap));
            for policy in ONLINE {
                let online = hits(trace, policy, Capacity::Uniform(cap));
                assert!(
                    opt >= online,
                    "trace {i}, capacity {cap}: Belady {opt} hits < {policy:?} {online}"
                );
            }
        }
    }
}

#[test]
fn belady_beats_every_online_policy_with_a_global_budget() {
    for (i, trace) in traces().iter().enumerate().filter(|(_, t)| t.layers() > 1) {
        for cap in [trace.k(), trace.k() + 2, trace.experts() / 2] {
            let opt = hits(trace, OPT, Capacity::GlobalPerLayer(cap));
            for policy in ONLINE {
                let online = hits(trace, policy, Capacity::GlobalPerLayer(cap));
                assert!(
                    opt >= online,
                    "trace {i}, global {cap}/layer: Belady {opt} < {policy:?} {online}"
                );
            }
        }
    }
}

#[test]
fn lru_and_belady_are_monotone_in_capacity() {
    for (i, trace) in traces().iter().enumerate() {
        for policy in [PolicyKind::Lru, OPT] {
            let mut last = 0;
            for cap in trace.k()..=trace.experts() {
                let h = hits(trace, policy, Capacity::Uniform(cap));
                assert!(
                    h >= last,
                    "trace {i}: {policy:?} loses hits from capacity {} to {cap}",
                    cap - 1
                );
                last = h;
            }
            // With every expert resident only compulsory misses remain.
            let all = replay(
                trace,
                &ReplayConfig::new(
                    policy,
                    ReplayRouting::Recorded,
                    Capacity::Uniform(trace.experts()),
                ),
            )
            .unwrap();
            assert!(all.misses() <= (trace.layers() * trace.experts()) as u64);
        }
    }
}

#[test]
fn lambda_zero_replays_exactly_like_top_k() {
    let c = SyntheticConfig::new(4, 16, 2, 300)
        .with_logits(LogitsFormat::F16)
        .with_seed(5);
    let trace = synthetic_trace(&c).unwrap();
    for policy in [PolicyKind::Lru, PolicyKind::Lfu, OPT] {
        let run = |rule| {
            replay(
                &trace,
                &ReplayConfig::new(policy, ReplayRouting::Rule(rule), Capacity::Uniform(4)),
            )
            .unwrap()
        };
        let top_k = run(RoutingRule::TopK);
        let prior0 = run(RoutingRule::CachePrior {
            lambda: 0.0,
            top_j: 2,
        });
        assert_eq!(top_k.layers, prior0.layers, "{policy:?}");
        // Synthetic logits put the recorded experts on top: top-k replays the recording.
        let recorded = replay(
            &trace,
            &ReplayConfig::new(policy, ReplayRouting::Recorded, Capacity::Uniform(4)),
        )
        .unwrap();
        assert_eq!(top_k.layers, recorded.layers, "{policy:?}");
    }
}

#[test]
fn cache_aware_rules_raise_the_hit_rate_over_lru() {
    let c = SyntheticConfig::new(4, 32, 4, 400)
        .with_logits(LogitsFormat::F32)
        .with_reuse(0.2)
        .with_seed(8);
    let trace = synthetic_trace(&c).unwrap();
    let run = |routing| {
        replay(
            &trace,
            &ReplayConfig::new(PolicyKind::Lru, routing, Capacity::Uniform(8)),
        )
        .unwrap()
    };
    let base = run(ReplayRouting::Recorded).hit_rate();
    for rule in [
        RoutingRule::CachePrior {
            lambda: 0.5,
            top_j: 2,
        },
        RoutingRule::MaxRank {
            top_j: 2,
            max_rank: 12,
        },
        RoutingRule::CumulativeThreshold { tau: 0.9 },
    ] {
        let r = run(ReplayRouting::Rule(rule)).hit_rate();
        assert!(r > base, "{rule:?}: hit rate {r} not above LRU's {base}");
    }
}

/// The access log of a live top-k run is the future Belady needs: a cache
/// built with it serves the same steps with exactly the hits replay finds
/// (per layer and with a global budget, full and bounded lookahead), and
/// departing from it is reported.
#[test]
fn recorded_access_logs_drive_belady_live_as_replay_does() {
    use lastmile_moe_cache::MoeCacheError;
    use lastmile_moe_cache::cache::{Budget, CacheGeometry, ExpertCache};
    for (i, trace) in traces().iter().enumerate().step_by(3) {
        let (layers, experts, k) = (trace.layers(), trace.experts(), trace.k());
        let geometry = CacheGeometry::uniform(layers, experts, 1, k).unwrap();
        let cap = (k + 2).min(experts);
        let run = |cache: &mut ExpertCache<()>| -> Result<u64, MoeCacheError> {
            for rec in trace.records() {
                let step: Vec<usize> = rec.experts.iter().map(|&e| e as usize).collect();
                cache.ensure(rec.layer, &step, |_| Ok(()))?;
                cache.end_step()?;
            }
            Ok(cache.total_stats().hits)
        };
        for (budget, capacity) in [
            (
                Budget::PerLayer(vec![cap as u64; layers]),
                Capacity::Uniform(cap),
            ),
            (
                Budget::Global((cap * layers) as u64),
                Capacity::GlobalPerLayer(cap),
            ),
        ] {
            let mut lru =
                ExpertCache::new(geometry.clone(), budget.clone(), PolicyKind::Lru).unwrap();
            lru.record_accesses(true);
            let lru_hits = run(&mut lru).unwrap();
            let log = lru.take_access_log();
            assert_eq!(log.len(), budget.partitions(&geometry));
            assert_eq!(
                log.iter().map(Vec::len).sum::<usize>(),
                trace.len() * k,
                "trace {i}: one logged access per expert use"
            );
            for lookahead in [None, Some(k), Some(4 * k)] {
                let policy = PolicyKind::Belady { lookahead };
                let mut live: ExpertCache<()> =
                    ExpertCache::with_policies(geometry.clone(), budget.clone(), |p| {
                        policy.build_with_future(p.universe, &log[p.index])
                    })
                    .unwrap();
                let live_hits = run(&mut live).unwrap();
                assert_eq!(
                    live_hits,
                    hits(trace, policy, capacity.clone()),
                    "trace {i} {lookahead:?}"
                );
                if lookahead.is_none() {
                    assert!(
                        live_hits >= lru_hits,
                        "trace {i}: OPT {live_hits} < LRU {lru_hits}"
                    );
                }
            }
        }
        // A run that departs from the logged future fails at that step.
        let budget = Budget::PerLayer(vec![cap as u64; layers]);
        let mut lru = ExpertCache::new(geometry.clone(), budget.clone(), PolicyKind::Lru).unwrap();
        lru.record_accesses(true);
        run(&mut lru).unwrap();
        let mut log = lru.take_access_log();
        log[0][0] = (log[0][0] + 1) % experts;
        let mut off: ExpertCache<()> = ExpertCache::with_policies(geometry, budget, |p| {
            OPT.build_with_future(p.universe, &log[p.index])
        })
        .unwrap();
        assert!(matches!(
            run(&mut off),
            Err(MoeCacheError::OracleMismatch { .. })
        ));
    }
}
