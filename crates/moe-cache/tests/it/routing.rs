//! Routing rules: λ = 0 is top-k bit for bit; each rule on hand-checked cases;
//! typed errors for bad input.
#![allow(clippy::unwrap_used)]

use lastmile_core::CoreError;
use lastmile_moe_cache::MoeCacheError;
use lastmile_moe_cache::routing::{Router, RouterConfig, Routing, RoutingRule};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn route(rule: RoutingRule, k: usize, z: &[f32], cached: &[bool]) -> Routing {
    let mut r = Router::new(rule, RouterConfig::new(1, z.len(), k).unwrap()).unwrap();
    let mut out = Routing::default();
    r.route(0, z, cached, &mut out).unwrap();
    out
}

#[test]
fn lambda_zero_is_top_k_bit_for_bit() {
    let mut rng = StdRng::seed_from_u64(0);
    for trial in 0..200 {
        let e = 4 + trial % 29;
        let k = 1 + trial % e.min(6);
        let renormalize = trial % 2 == 0;
        let config = RouterConfig::new(3, e, k)
            .unwrap()
            .with_renormalize(renormalize);
        let mut top_k = Router::new(RoutingRule::TopK, config).unwrap();
        let mut prior = Router::new(
            RoutingRule::CachePrior {
                lambda: 0.0,
                top_j: k.min(2),
            },
            config,
        )
        .unwrap();
        // Several tokens, including exact ties, through the batched form.
        let tokens = 5;
        let z: Vec<f32> = (0..tokens * e)
            .map(|i| {
                if i % 7 == 3 {
                    0.5
                } else {
                    rng.random::<f32>() * 8.0 - 4.0
                }
            })
            .collect();
        let cached: Vec<bool> = (0..e).map(|_| rng.random_bool(0.4)).collect();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for layer in 0..3 {
            top_k.route_batch(layer, &z, &cached, &mut a).unwrap();
            prior.route_batch(layer, &z, &cached, &mut b).unwrap();
            assert_eq!(a.len(), tokens);
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.experts, y.experts);
                let bits = |r: &Routing| r.weights.iter().map(|w| w.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(x), bits(y));
            }
        }
    }
}

#[test]
fn top_k_chooses_the_largest_logits_with_softmax_weights() {
    let z = [0.0f32, 3.0, 1.0, 2.0];
    let out = route(RoutingRule::TopK, 2, &z, &[false; 4]);
    assert_eq!(out.experts, vec![1, 3]);
    let (e3, e2) = (3f64.exp(), 2f64.exp());
    assert!((f64::from(out.weights[0]) - e3 / (e3 + e2)).abs() < 1e-6);
    // Without renormalisation the weights are the full softmax's entries.
    let mut r = Router::new(
        RoutingRule::TopK,
        RouterConfig::new(1, 4, 2).unwrap().with_renormalize(false),
    )
    .unwrap();
    let mut raw = Routing::default();
    r.route(0, &z, &[false; 4], &mut raw).unwrap();
    let total: f64 = z.iter().map(|&x| f64::from(x).exp()).sum();
    assert!((f64::from(raw.weights[0]) - e3 / total).abs() < 1e-6);
    assert!((f64::from(raw.weights[1]) - e2 / total).abs() < 1e-6);
    // Switching the convention on a live router: same experts, renormalised weights.
    r.set_renormalize(true);
    assert!(r.config().renormalize);
    let mut renorm = Routing::default();
    r.route(0, &z, &[false; 4], &mut renorm).unwrap();
    assert_eq!(renorm.experts, raw.experts);
    assert!((f64::from(renorm.weights[0]) - e3 / (e3 + e2)).abs() < 1e-6);
    // Ties go to the lower index.
    assert_eq!(
        route(RoutingRule::TopK, 2, &[1.0, 2.0, 2.0, 2.0], &[false; 4]).experts,
        vec![1, 2]
    );
}

fn cache_prior(lambda: f32, top_j: usize, config: RouterConfig) -> Router {
    Router::new(RoutingRule::CachePrior { lambda, top_j }, config).unwrap()
}

#[test]
fn cache_prior_tracks_the_logit_range_and_prefers_cached_experts() {
    let config = RouterConfig::new(2, 4, 2).unwrap();
    let mut r = cache_prior(0.2, 1, config);
    let mut out = Routing::default();
    let cached = [false, false, false, true];
    // First token seeds the EMA with its range (2.0); bonus 0.4 lifts expert 3 (1.8 → 2.2) past 1.
    r.route(0, &[2.0, 1.9, 0.0, 1.8], &cached, &mut out)
        .unwrap();
    assert_eq!(r.range_ema(0), Some(2.0));
    assert_eq!(out.experts, vec![0, 3]);
    // Weights come from softmax(z), not z'.
    let (a, b) = (2f64.exp(), 1.8f64.exp());
    assert!((f64::from(out.weights[1]) - b / (a + b)).abs() < 1e-6);
    // Second token: EMA = 0.99·2 + 0.01·4 = 2.02; other layers untouched.
    r.route(0, &[4.0, 1.0, 0.0, 0.5], &cached, &mut out)
        .unwrap();
    assert!((r.range_ema(0).unwrap() - 2.02).abs() < 1e-6);
    assert_eq!(r.range_ema(1), None);
    // The top-J expert gets the bonus too, so a cached expert cannot displace it.
    let mut r = Router::new(
        RoutingRule::CachePrior {
            lambda: 10.0,
            top_j: 1,
        },
        RouterConfig::new(1, 4, 2).unwrap(),
    )
    .unwrap();
    r.route(
        0,
        &[3.0, 2.9, 0.0, 0.1],
        &[false, false, true, true],
        &mut out,
    )
    .unwrap();
    assert_eq!(out.experts, vec![0, 3]);
    r.reset();
    assert_eq!(r.range_ema(0), None);
}

#[test]
fn max_rank_keeps_top_j_and_fills_with_cached_experts_within_rank() {
    // Ranks by z: 0 (1st), 1, 2, 3, 4, 5 (6th).
    let z = [6.0f32, 5.0, 4.0, 3.0, 2.0, 1.0];
    let rule = RoutingRule::MaxRank {
        top_j: 1,
        max_rank: 4,
    };
    // Cached 3 (rank 4) and 5 (rank 6 > R): only 3 replaces; last slot is the original pick 1.
    let out = route(rule, 3, &z, &[false, false, false, true, false, true]);
    assert_eq!(out.experts, vec![0, 1, 3]);
    // Nothing cached: the original top-k.
    assert_eq!(route(rule, 3, &z, &[false; 6]).experts, vec![0, 1, 2]);
    // J = k: always the original top-k.
    let keep = RoutingRule::MaxRank {
        top_j: 3,
        max_rank: 6,
    };
    assert_eq!(route(keep, 3, &z, &[true; 6]).experts, vec![0, 1, 2]);
}

#[test]
fn cumulative_threshold_prefers_cached_experts_inside_the_mass() {
    // p ≈ [0.64, 0.24, 0.09, 0.03]: 90% mass needs the top 3.
    let z = [3.0f32, 2.0, 1.0, 0.0];
    let rule = RoutingRule::CumulativeThreshold { tau: 0.9 };
    assert_eq!(
        route(rule, 2, &z, &[false, false, true, true]).experts,
        vec![0, 2]
    );
    assert_eq!(
        route(rule, 2, &z, &[false, true, true, true]).experts,
        vec![1, 2]
    );
    // τ = 0: the set is the top-k, so the rule is top-k whatever is cached.
    let none = RoutingRule::CumulativeThreshold { tau: 0.0 };
    assert_eq!(
        route(none, 2, &z, &[false, false, true, true]).experts,
        vec![0, 1]
    );
}

#[test]
fn renormalised_weights_sum_to_one_for_every_rule() {
    let mut rng = StdRng::seed_from_u64(4);
    for rule in [
        RoutingRule::TopK,
        RoutingRule::CachePrior {
            lambda: 0.3,
            top_j: 2,
        },
        RoutingRule::MaxRank {
            top_j: 1,
            max_rank: 8,
        },
        RoutingRule::CumulativeThreshold { tau: 0.8 },
    ] {
        for _ in 0..50 {
            let z: Vec<f32> = (0..16).map(|_| rng.random::<f32>() * 6.0).collect();
            let cached: Vec<bool> = (0..16).map(|_| rng.random_bool(0.3)).collect();
            let out = route(rule, 4, &z, &cached);
            assert_eq!(out.experts.len(), 4);
            let mut sorted = out.experts.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 4, "{rule:?} chose duplicates");
            let sum: f32 = out.weights.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "{rule:?}: weights sum to {sum}");
        }
    }
}

#[test]
fn bad_input_gives_typed_errors_and_changes_nothing() {
    assert!(matches!(
        RouterConfig::new(1, 4, 5),
        Err(MoeCacheError::KAboveExperts { k: 5, experts: 4 })
    ));
    assert!(matches!(
        RouterConfig::new(1, 4, 0),
        Err(MoeCacheError::Core(CoreError::OutOfRange { .. }))
    ));
    let config = RouterConfig::new(2, 4, 2).unwrap();
    for rule in [
        RoutingRule::CachePrior {
            lambda: -1.0,
            top_j: 1,
        },
        RoutingRule::CachePrior {
            lambda: f32::NAN,
            top_j: 1,
        },
        RoutingRule::CachePrior {
            lambda: 0.1,
            top_j: 3,
        },
        RoutingRule::MaxRank {
            top_j: 1,
            max_rank: 1,
        },
        RoutingRule::MaxRank {
            top_j: 1,
            max_rank: 5,
        },
        RoutingRule::CumulativeThreshold { tau: 1.5 },
    ] {
        assert!(
            matches!(
                Router::new(rule, config),
                Err(MoeCacheError::Core(CoreError::OutOfRange { .. }))
            ),
            "{rule:?} accepted"
        );
    }
    let mut r = cache_prior(0.2, 1, config);
    let mut out = Routing::default();
    assert!(matches!(
        r.route(0, &[1.0, f32::NAN, 0.0, 0.0], &[false; 4], &mut out),
        Err(MoeCacheError::Core(CoreError::NonFinite { index: 1, .. }))
    ));
    assert!(matches!(
        r.route(0, &[1.0, 0.0, 0.0], &[false; 4], &mut out),
        Err(MoeCacheError::Core(CoreError::LengthMismatch {
            expected: 4,
            found: 3,
            ..
        }))
    ));
    assert!(matches!(
        r.route(0, &[1.0, 0.0, 0.0, 0.0], &[false; 3], &mut out),
        Err(MoeCacheError::Core(CoreError::LengthMismatch {
            expected: 4,
            found: 3,
            ..
        }))
    ));
    assert!(matches!(
        r.route(2, &[1.0, 0.0, 0.0, 0.0], &[false; 4], &mut out),
        Err(MoeCacheError::LayerOutOfRange {
            layer: 2,
            layers: 2
        })
    ));
    let mut batch = Vec::new();
    assert!(matches!(
        r.route_batch(0, &[1.0; 6], &[false; 4], &mut batch),
        Err(MoeCacheError::Core(CoreError::ShapeMismatch { .. }))
    ));
    assert_eq!(
        r.range_ema(0),
        None,
        "a rejected token must not move the EMA"
    );
}
