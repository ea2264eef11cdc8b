//! Properties of replay: Belady/OPT bounds every online policy; LRU and
//! Belady are monotone in capacity; Cache-Prior with λ = 0 is top-k.
#![allow(clippy::unwrap_used)]

mod common;

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
    for (i, s) in common::random_steps(seed, tokens, experts, k)
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
