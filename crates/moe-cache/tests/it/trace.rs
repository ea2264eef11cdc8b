//! Trace files: round trips, exact errors for damaged or lying files, the
//! synthetic generator, and replay's own errors.
#![allow(clippy::unwrap_used)]

use crate::common::{TempFile, temp_path};
use lastmile_core::CoreError;
use lastmile_moe_cache::MoeCacheError;
use lastmile_moe_cache::cost::LinearIoCost;
use lastmile_moe_cache::policy::PolicyKind;
use lastmile_moe_cache::routing::{Router, RouterConfig, Routing, RoutingRule};
use lastmile_moe_cache::trace::{
    Capacity, LogitsFormat, ReplayConfig, ReplayRouting, SyntheticConfig, Trace, replay,
    synthetic_trace,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn sample(format: LogitsFormat) -> Trace {
    synthetic_trace(
        &SyntheticConfig::new(3, 10, 2, 40)
            .with_logits(format)
            .with_seed(2),
    )
    .unwrap()
}

/// Re-signs a damaged trace so that only the structural checks can catch it.
fn resign(bytes: &mut [u8]) {
    let end = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..end]);
    bytes[end..].copy_from_slice(&crc.to_le_bytes());
}

fn corrupt(r: lastmile_moe_cache::Result<Trace>) -> String {
    match r {
        Err(MoeCacheError::CorruptFile {
            what: "trace",
            reason,
        }) => reason,
        other => panic!("expected CorruptFile, got {other:?}"),
    }
}

#[test]
fn traces_round_trip_in_every_format() {
    for format in [LogitsFormat::None, LogitsFormat::F16, LogitsFormat::F32] {
        let t = sample(format);
        assert_eq!(t.len(), 120);
        assert_eq!(t.tokens(), 40);
        let bytes = t.to_bytes();
        let record = 4 + 2 + 2 * 2 + [0, 2, 4][format as usize] * 10;
        assert_eq!(bytes.len(), 36 + 120 * record + 4);
        assert_eq!(Trace::from_bytes(&bytes).unwrap(), t);
        let file = TempFile(temp_path("trace"));
        t.save(&file.0).unwrap();
        assert_eq!(Trace::load(&file.0).unwrap(), t);
        assert!(matches!(
            Trace::load_with_limit(&file.0, 100),
            Err(MoeCacheError::FileTooLarge {
                what: "trace",
                limit: 100,
                ..
            })
        ));
    }
}

#[test]
fn damaged_traces_give_exact_errors() {
    let good = sample(LogitsFormat::F32).to_bytes();
    let n = good.len() as u64;
    assert!(matches!(
        Trace::from_bytes(&good[..good.len() - 1]),
        Err(MoeCacheError::Truncated { what: "trace", expected, found }) if expected == n && found == n - 1
    ));
    assert!(matches!(
        Trace::from_bytes(&good[..20]),
        Err(MoeCacheError::Truncated { .. })
    ));
    let mut flipped = good.clone();
    flipped[100] ^= 0x10;
    assert!(matches!(
        Trace::from_bytes(&flipped),
        Err(MoeCacheError::ChecksumMismatch { .. })
    ));
    let mut magic = good.clone();
    magic[3] = b'?';
    assert!(matches!(
        Trace::from_bytes(&magic),
        Err(MoeCacheError::BadMagic { what: "trace", .. })
    ));
    let mut version = good.clone();
    version[8] = 9;
    assert!(matches!(
        Trace::from_bytes(&version),
        Err(MoeCacheError::UnsupportedVersion { found: 9, .. })
    ));
    // A lying record count, re-signed: the length no longer matches.
    let mut count = good.clone();
    count[28..36].copy_from_slice(&u64::MAX.to_le_bytes());
    resign(&mut count);
    corrupt(Trace::from_bytes(&count)); // count × record size overflows
    let mut count = good.clone();
    count[28..36].copy_from_slice(&1_000_000u64.to_le_bytes());
    resign(&mut count);
    assert!(matches!(
        Trace::from_bytes(&count),
        Err(MoeCacheError::Truncated { .. })
    ));
}

#[test]
fn lying_records_are_caught_by_structural_checks() {
    let t = sample(LogitsFormat::F32);
    let good = t.to_bytes();
    let record = 4 + 2 + 4 + 4 * 10;
    let rec = |i: usize| 36 + i * record;
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        resign(&mut b);
        Trace::from_bytes(&b)
    };
    let r = corrupt(edit(&|b| {
        b[rec(5) + 6..rec(5) + 8].copy_from_slice(&10u16.to_le_bytes())
    }));
    assert!(r.contains("record 5"), "{r}");
    corrupt(edit(&|b| {
        let first: [u8; 2] = b[rec(2) + 6..rec(2) + 8].try_into().unwrap();
        b[rec(2) + 8..rec(2) + 10].copy_from_slice(&first);
    }));
    corrupt(edit(&|b| {
        b[rec(4) + 4..rec(4) + 6].copy_from_slice(&3u16.to_le_bytes())
    })); // layer 3 of 3
    corrupt(edit(&|b| {
        b[rec(0)..rec(0) + 4].copy_from_slice(&99u32.to_le_bytes())
    })); // token order
    corrupt(edit(&|b| {
        b[rec(7) + 10..rec(7) + 14].copy_from_slice(&f32::NAN.to_le_bytes())
    }));
    corrupt(edit(&|b| b[24..28].copy_from_slice(&11u32.to_le_bytes()))); // k > experts
    corrupt(edit(&|b| b[12..16].copy_from_slice(&7u32.to_le_bytes()))); // logits format
}

#[test]
fn random_damage_never_panics() {
    let good = sample(LogitsFormat::F16).to_bytes();
    let mut rng = StdRng::seed_from_u64(3);
    for trial in 0..500 {
        let mut bytes = good.clone();
        if trial % 4 == 0 {
            bytes.truncate(rng.random_range(0..good.len()));
        } else {
            let at = rng.random_range(0..bytes.len());
            bytes[at] = rng.random();
            if trial % 3 == 0 {
                resign(&mut bytes);
            }
        }
        let _ = Trace::from_bytes(&bytes);
    }
}

#[test]
fn push_validates_records() {
    let mut t = Trace::new(2, 4, 2, LogitsFormat::F16).unwrap();
    let z = [1.0f32, 2.0, 3.0, 4.0];
    t.push(3, 1, &[3, 2], Some(&z)).unwrap();
    assert!(matches!(
        t.push(2, 0, &[0, 1], Some(&z)),
        Err(MoeCacheError::Core(CoreError::OutOfRange { .. }))
    ));
    assert!(matches!(
        t.push(3, 2, &[0, 1], Some(&z)),
        Err(MoeCacheError::LayerOutOfRange {
            layer: 2,
            layers: 2
        })
    ));
    assert!(matches!(
        t.push(3, 0, &[0], Some(&z)),
        Err(MoeCacheError::Core(CoreError::LengthMismatch {
            expected: 2,
            found: 1,
            ..
        }))
    ));
    assert!(matches!(
        t.push(3, 0, &[0, 4], Some(&z)),
        Err(MoeCacheError::ExpertOutOfRange { expert: 4, .. })
    ));
    assert!(matches!(
        t.push(3, 0, &[1, 1], Some(&z)),
        Err(MoeCacheError::DuplicateExpert { expert: 1, .. })
    ));
    assert!(matches!(
        t.push(3, 0, &[0, 1], None),
        Err(MoeCacheError::Core(CoreError::LengthMismatch { .. }))
    ));
    assert!(matches!(
        t.push(3, 0, &[0, 1], Some(&[1.0, 1e6, 0.0, 0.0])),
        Err(MoeCacheError::Core(CoreError::NonFinite { index: 1, .. }))
    ));
    assert_eq!(t.len(), 1, "rejected records must not be stored");
    assert_eq!(Trace::from_bytes(&t.to_bytes()).unwrap(), t);
    assert!(matches!(
        Trace::new(1, 4, 5, LogitsFormat::None),
        Err(MoeCacheError::KAboveExperts { k: 5, experts: 4 })
    ));
    assert!(matches!(
        Trace::new(1, 70_000, 2, LogitsFormat::None),
        Err(MoeCacheError::Core(CoreError::OutOfRange { .. }))
    ));
}

#[test]
fn synthetic_logits_rank_the_recorded_experts_first() {
    for format in [LogitsFormat::F16, LogitsFormat::F32] {
        let t = synthetic_trace(
            &SyntheticConfig::new(3, 24, 3, 100)
                .with_logits(format)
                .with_seed(11),
        )
        .unwrap();
        let mut router =
            Router::new(RoutingRule::TopK, RouterConfig::new(3, 24, 3).unwrap()).unwrap();
        let mut out = Routing::default();
        for rec in t.records() {
            router
                .route(rec.layer, rec.logits.unwrap(), &[false; 24], &mut out)
                .unwrap();
            let recorded: Vec<usize> = rec.experts.iter().map(|&x| x as usize).collect();
            assert_eq!(out.experts, recorded);
        }
    }
}

#[test]
fn synthetic_knobs_shape_the_trace() {
    let hit_rate = |c: SyntheticConfig| {
        let t = synthetic_trace(&c).unwrap();
        replay(
            &t,
            &ReplayConfig::new(
                PolicyKind::Lru,
                ReplayRouting::Recorded,
                Capacity::Uniform(8),
            ),
        )
        .unwrap()
        .hit_rate()
    };
    let base = SyntheticConfig::new(4, 64, 2, 400)
        .with_reuse(0.0)
        .with_cross_layer(0.0)
        .with_seed(1);
    let uniform = hit_rate(base.clone().with_zipf(0.0));
    let skewed = hit_rate(base.clone().with_zipf(1.5));
    let reused = hit_rate(base.clone().with_zipf(0.0).with_reuse(0.8));
    assert!(
        skewed > uniform + 0.2,
        "Zipf skew {skewed} vs uniform {uniform}"
    );
    assert!(
        reused > uniform + 0.3,
        "reuse {reused} vs uniform {uniform}"
    );
    assert!(matches!(
        synthetic_trace(&base.clone().with_reuse(1.5)),
        Err(MoeCacheError::Core(CoreError::OutOfRange { .. }))
    ));
    assert!(matches!(
        synthetic_trace(&base.with_topics(0, 10)),
        Err(MoeCacheError::Core(CoreError::OutOfRange { .. }))
    ));
}

#[test]
fn replay_reports_and_refuses_what_it_cannot_do() {
    let plain = sample(LogitsFormat::None);
    let prior = ReplayRouting::Rule(RoutingRule::CachePrior {
        lambda: 0.2,
        top_j: 1,
    });
    assert!(matches!(
        replay(
            &plain,
            &ReplayConfig::new(PolicyKind::Lru, prior, Capacity::Uniform(4))
        ),
        Err(MoeCacheError::TraceWithoutLogits {
            rule: "cache-prior"
        })
    ));
    let with = sample(LogitsFormat::F16);
    assert!(matches!(
        replay(
            &with,
            &ReplayConfig::new(
                PolicyKind::Belady { lookahead: None },
                prior,
                Capacity::Uniform(4)
            )
        ),
        Err(MoeCacheError::OracleNeedsFixedRouting {
            rule: "cache-prior"
        })
    ));
    let bytes = vec![3 << 20; 3];
    let r = replay(
        &with,
        &ReplayConfig::new(
            PolicyKind::Lru,
            ReplayRouting::Recorded,
            Capacity::Uniform(4),
        )
        .with_expert_bytes(bytes),
    )
    .unwrap();
    assert_eq!(r.tokens, 40);
    assert_eq!(r.total().accesses(), 240);
    assert_eq!(r.bytes_read(), r.misses() * (3 << 20));
    assert!((r.misses_per_token() - r.misses() as f64 / 40.0).abs() < 1e-12);
    let model = LinearIoCost::phone_ufs31();
    let expected = r.misses() as f64 * (100e-6 + (3 << 20) as f64 / 1.5e9);
    assert!((r.io_seconds(&model) - expected).abs() < 1e-9);
    assert!((0.0..=1.0).contains(&r.layer_hit_rate(2)));
}
