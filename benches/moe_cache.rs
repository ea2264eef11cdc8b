//! lastmile-moe-cache: eviction policy throughput (accesses/s, bare policy
//! and through `ExpertCache`), replay of a 10^6-access synthetic trace,
//! expert load latency vs expert size (real reads, page cache dropped
//! before each), and the modelled token rate on phone flash for LRU vs
//! Cache-Prior (printed once, with the replay it comes from timed).
//!
//! ```text
//! cargo bench -p lastmile-benches --bench moe_cache
//! ```

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lastmile_moe_cache::cache::{Budget, CacheGeometry, ExpertCache};
use lastmile_moe_cache::cost::LinearIoCost;
use lastmile_moe_cache::policy::PolicyKind;
use lastmile_moe_cache::routing::RoutingRule;
use lastmile_moe_cache::store::{
    ExpertStore, ExpertStoreWriter, LayerSpec, PageCache, StoreOptions,
};
use lastmile_moe_cache::trace::{
    Capacity, LogitsFormat, ReplayConfig, ReplayRouting, SyntheticConfig, Trace, replay,
    synthetic_trace,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Accesses per measured iteration of the policy benches.
const ACCESSES: usize = 100_000;
/// Experts in the policy benches' universe and cached among them.
const UNIVERSE: usize = 64;
const CAPACITY: usize = 16;

/// A seeded Zipf(1.0)-like id sequence over `UNIVERSE` ids (hit rate ~0.6 at 16 slots).
fn ids() -> Vec<usize> {
    let weights: Vec<f64> = (1..=UNIVERSE).map(|r| 1.0 / r as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut rng = StdRng::seed_from_u64(7);
    (0..ACCESSES)
        .map(|_| {
            let mut u = rng.random::<f64>() * total;
            for (i, &w) in weights.iter().enumerate() {
                if u < w {
                    return i;
                }
                u -= w;
            }
            UNIVERSE - 1
        })
        .collect()
}

fn online_policies() -> Vec<PolicyKind> {
    vec![
        PolicyKind::Lru,
        PolicyKind::Lfu,
        PolicyKind::Lrfu { lambda: 0.5 },
        PolicyKind::Fifo,
        PolicyKind::Random { seed: 1 },
    ]
}

/// The bare policy (the cache's bookkeeping inlined: a resident bitmap and
/// a count), and the same accesses through `ExpertCache::access` (id
/// checks, pins, stats).
fn bench_policies(c: &mut Criterion) {
    let ids = ids();
    let mut group = c.benchmark_group("moe_policy_accesses");
    group.throughput(Throughput::Elements(ACCESSES as u64));
    for kind in online_policies() {
        group.bench_function(BenchmarkId::new("bare", kind.name()), |b| {
            let mut p = kind.build(UNIVERSE).expect("valid policy");
            let pinned = vec![false; UNIVERSE];
            b.iter(|| {
                p.reset();
                let mut resident = [false; UNIVERSE];
                let (mut count, mut hits) = (0, 0u64);
                for &id in &ids {
                    if resident[id] {
                        p.on_hit(id);
                        hits += 1;
                        continue;
                    }
                    if count == CAPACITY {
                        let v = p.victim(&pinned).expect("an unpinned resident");
                        p.on_evict(v);
                        resident[v] = false;
                        count -= 1;
                    }
                    p.on_insert(id);
                    resident[id] = true;
                    count += 1;
                }
                black_box(hits)
            })
        });
        group.bench_function(BenchmarkId::new("expert_cache", kind.name()), |b| {
            let geometry = CacheGeometry::uniform(1, UNIVERSE, 1, 1).expect("valid geometry");
            let mut cache: ExpertCache<()> =
                ExpertCache::new(geometry, Budget::PerLayer(vec![CAPACITY as u64]), kind)
                    .expect("valid cache");
            b.iter(|| {
                cache.clear();
                for &id in &ids {
                    cache.access(0, id, || Ok(())).expect("fits");
                    cache.end_step().expect("step");
                }
                black_box(cache.total_stats().hits)
            })
        });
    }
    group.finish();
}

/// 8 layers × 64 experts, top-4, 31 250 tokens: 10^6 accesses with f16 logits.
fn million_access_trace() -> Trace {
    synthetic_trace(
        &SyntheticConfig::new(8, 64, 4, 31_250)
            .with_logits(LogitsFormat::F16)
            .with_seed(3),
    )
    .expect("valid synthetic trace")
}

fn bench_replay(c: &mut Criterion) {
    let trace = million_access_trace();
    let mut group = c.benchmark_group("moe_replay_1m_accesses");
    group.sample_size(10);
    group.throughput(Throughput::Elements((trace.len() * trace.k()) as u64));
    let cases = [
        ("lru", PolicyKind::Lru, ReplayRouting::Recorded),
        ("lfu", PolicyKind::Lfu, ReplayRouting::Recorded),
        (
            "belady",
            PolicyKind::Belady { lookahead: None },
            ReplayRouting::Recorded,
        ),
        (
            "lru_cache_prior",
            PolicyKind::Lru,
            ReplayRouting::Rule(RoutingRule::CachePrior {
                lambda: 0.2,
                top_j: 1,
            }),
        ),
    ];
    for (name, policy, routing) in cases {
        let config = ReplayConfig::new(policy, routing, Capacity::Uniform(16));
        group.bench_function(BenchmarkId::new("capacity_16_of_64", name), |b| {
            b.iter(|| black_box(replay(&trace, &config).expect("replay").hit_rate()))
        });
    }
    group.finish();

    // The modelled token rate on phone flash (I/O only) for Qwen1.5-MoE-sized
    // experts (3 × 2048 × 1408 f16 weights, 17.3 MB), printed once.
    let expert_bytes = 3 * 2048 * 1408 * 2;
    let phone = LinearIoCost::phone_ufs31();
    for cap in [8, 16, 32] {
        let run = |routing| {
            replay(
                &trace,
                &ReplayConfig::new(PolicyKind::Lru, routing, Capacity::Uniform(cap))
                    .with_expert_bytes(vec![expert_bytes; trace.layers()]),
            )
            .expect("replay")
        };
        let lru = run(ReplayRouting::Recorded);
        let prior = run(ReplayRouting::Rule(RoutingRule::CachePrior {
            lambda: 0.2,
            top_j: 1,
        }));
        eprintln!(
            "modelled phone I/O token rate at {cap}/64 experts cached: LRU {:.2} tok/s (hit rate {:.3}), LRU + Cache-Prior(0.2, J=1) {:.2} tok/s (hit rate {:.3}): {:.2}x",
            1.0 / lru.io_seconds_per_token(&phone),
            lru.hit_rate(),
            1.0 / prior.io_seconds_per_token(&phone),
            prior.hit_rate(),
            lru.io_seconds_per_token(&phone) / prior.io_seconds_per_token(&phone)
        );
    }
}

/// One expert read from a store (page cache dropped first where supported),
/// for experts of 48 KiB to 12 MiB.
fn bench_loads(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("lastmile-bench-moe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let page_cache = if cfg!(any(target_os = "linux", target_os = "android")) {
        PageCache::Drop
    } else {
        PageCache::Keep
    };
    let mut group = c.benchmark_group("moe_expert_load");
    group.sample_size(20);
    const EXPERTS: usize = 8;
    for (d, f) in [(64, 64), (256, 256), (512, 1024), (1024, 1024)] {
        let path = dir.join(format!("store-{d}x{f}.lmexp"));
        let spec = LayerSpec::swiglu(EXPERTS, d, f).expect("valid spec");
        let bytes = spec.expert_bytes();
        let mut w = ExpertStoreWriter::create(&path, vec![spec]).expect("create store");
        let gate = vec![0.5f32; d * f];
        for e in 0..EXPERTS {
            w.write_expert(
                0,
                e,
                &[(&[d, f], &gate), (&[d, f], &gate), (&[f, d], &gate)],
            )
            .expect("write expert");
        }
        w.finish().expect("finish store");
        let store = ExpertStore::open(&path, StoreOptions::default().with_page_cache(page_cache))
            .expect("open store");
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function(BenchmarkId::new("bytes", bytes), |b| {
            let mut e = 0;
            b.iter(|| {
                e = (e + 1) % EXPERTS;
                black_box(store.load(0, e).expect("load").bytes)
            })
        });
        let s = store.stats();
        eprintln!(
            "expert of {bytes} bytes: {:.1} µs per read on average ({} reads, {:?})",
            1e6 * s.read_seconds / s.loads.max(1) as f64,
            s.loads,
            page_cache
        );
    }
    group.finish();
    std::fs::remove_dir_all(&dir).ok();
}

criterion_group!(benches, bench_policies, bench_replay, bench_loads);
criterion_main!(benches);
