#![allow(clippy::unwrap_used)]
//! Draft-length policies follow their published update rules.

use lastmile_spec_decode::*;

#[test]
fn adaedl_threshold_update_matches_the_formulas() {
    let c = AdaEdlConfig::default();
    let mut p = AdaEdl::new(c).unwrap();
    // Naive re-computation of the update, step by step.
    let (mut ar, mut lambda) = (c.alpha, c.lambda0);
    for (drafted, accepted) in [(8, 8), (5, 1), (3, 3), (8, 2), (1, 0), (6, 6), (8, 8)] {
        p.observe(RoundOutcome { drafted, accepted });
        ar = c.beta1 * ar + (1.0 - c.beta1) * accepted as f64 / drafted as f64;
        let proposed = if ar < c.alpha {
            lambda + c.epsilon
        } else if accepted != c.max_len {
            lambda - c.epsilon
        } else {
            lambda
        };
        lambda = c.beta2 * lambda + (1.0 - c.beta2) * proposed;
        assert!((p.lambda() - lambda).abs() < 1e-12);
        assert!((p.acceptance_ema() - ar).abs() < 1e-12);
    }
    // Stopping rule: 1 - sqrt(gamma H) < lambda.
    let h_stop = ((1.0 - p.lambda()) / 1.0).powi(2) / c.gamma;
    assert!(p.continue_drafting(
        1,
        &DraftStepInfo {
            entropy: h_stop * 0.99,
            top_prob: 0.5
        }
    ));
    assert!(!p.continue_drafting(
        1,
        &DraftStepInfo {
            entropy: h_stop * 1.01,
            top_prob: 0.5
        }
    ));
    assert_eq!(p.round_limit(), c.max_len);
}

#[test]
fn heuristic_schedule_grows_and_shrinks_within_bounds() {
    let mut p = HeuristicSchedule::new(5, 8).unwrap();
    for _ in 0..5 {
        let g = p.round_limit();
        p.observe(RoundOutcome {
            drafted: g,
            accepted: g,
        });
    }
    assert_eq!(p.round_limit(), 8);
    for _ in 0..20 {
        let g = p.round_limit();
        p.observe(RoundOutcome {
            drafted: g,
            accepted: 0,
        });
    }
    assert_eq!(p.round_limit(), 1);
    // Rounds with nothing drafted (prompt lookup found no match) change nothing.
    p.observe(RoundOutcome {
        drafted: 0,
        accepted: 0,
    });
    assert_eq!(p.round_limit(), 1);
}

#[test]
fn cost_model_picks_the_best_length() {
    // With a known acceptance, the chosen g maximises E(a, g) / (g c + 1) (brute force).
    for (a, c) in [(0.9, 0.05), (0.6, 0.2), (0.3, 0.5), (0.99, 0.01)] {
        let mut p = CostModel::new(c, a, 0.5, 10).unwrap();
        let g = p.round_limit();
        let score = |g: usize| CostModel::expected_tokens(a, g) / (g as f64 * c + 1.0);
        for h in 1..=10 {
            assert!(
                score(g) >= score(h) - 1e-12,
                "a={a} c={c}: g={g} beaten by {h}"
            );
        }
    }
    // E(a, g) is the mean of a truncated geometric: check against a direct sum.
    for g in 0..8usize {
        let direct: f64 = (0..=g).map(|k| 0.7f64.powi(k as i32)).sum();
        assert!((CostModel::expected_tokens(0.7, g) - direct).abs() < 1e-12);
    }
}

#[test]
fn max_confidence_and_static() {
    let mut p = MaxConfidence::new(0.75, 6).unwrap();
    assert_eq!(p.round_limit(), 6);
    assert!(p.continue_drafting(
        2,
        &DraftStepInfo {
            entropy: 0.3,
            top_prob: 0.75
        }
    ));
    assert!(!p.continue_drafting(
        2,
        &DraftStepInfo {
            entropy: 0.3,
            top_prob: 0.74
        }
    ));
    let mut s = StaticLength::new(4).unwrap();
    assert!(s.continue_drafting(
        3,
        &DraftStepInfo {
            entropy: 5.0,
            top_prob: 0.01
        }
    ));
    assert_eq!(s.round_limit(), 4);
}

#[test]
fn prompt_lookup_prefers_longest_most_recent_match() {
    let pl = PromptLookup::new(1, 3, 3).unwrap();
    // "7 8 9" recurs: propose what followed its most recent earlier occurrence.
    let ctx = [7, 8, 9, 1, 2, 7, 8, 9, 4, 5, 6, 7, 8, 9];
    assert_eq!(pl.lookup(&ctx, 10), vec![4, 5, 6]);
    assert_eq!(pl.lookup(&ctx, 2), vec![4, 5]);
    // Only a 1-gram matches.
    assert_eq!(pl.lookup(&[3, 1, 4, 1], 10), vec![4, 1]);
}

#[test]
fn prompt_lookup_confidence_is_the_copy_models_distribution() {
    // Random contexts over 5 tokens (so matches of every length occur),
    // against a naive reference: the match found by `lookup`, extended
    // back by brute force, and the entropy of the explicit distribution.
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};
    let pl = PromptLookup::new(1, 3, 6).unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let mut lengths = std::collections::BTreeSet::new();
    for _ in 0..300 {
        let len = rng.random_range(2..120);
        // Long runs of copying: each token repeats the one 7 back 80 % of the time.
        let mut ctx: Vec<usize> = Vec::with_capacity(len);
        for i in 0..len {
            let copy = i >= 7 && rng.random::<f64>() < 0.8;
            ctx.push(if copy {
                ctx[i - 7]
            } else {
                rng.random_range(0..5)
            });
        }
        let (tokens, info) = pl.lookup_with_info(&ctx, 6);
        assert_eq!(tokens, pl.lookup(&ctx, 6));
        assert_eq!(tokens.len(), info.len());
        if tokens.is_empty() {
            continue;
        }
        // Where the proposal starts: the most recent earlier span that
        // ends with the longest recurring n-gram and is followed by `tokens`.
        let n = (1..=3)
            .rev()
            .find(|&n| n < len && (0..len - n).any(|s| ctx[s..s + n] == ctx[len - n..]))
            .unwrap();
        let from = (0..len - n)
            .rev()
            .find(|&s| ctx[s..s + n] == ctx[len - n..])
            .unwrap()
            + n;
        let matched = (n..=from)
            .take_while(|&m| ctx[from - m..from] == ctx[len - m..])
            .last()
            .unwrap()
            .min(PromptLookup::MAX_MATCH);
        lengths.insert(matched);
        let mut distinct = ctx.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let others = distinct.len() - 1;
        if others == 0 {
            // One distinct token: the copy model can name no other.
            assert!(info.iter().all(|i| i.entropy == 0.0 && i.top_prob == 1.0));
            continue;
        }
        for (i, got) in info.iter().enumerate() {
            let m = (matched + i).min(PromptLookup::MAX_MATCH) as f64;
            let p = (m + 1.0) / (m + 2.0);
            let mut probs = vec![p];
            probs.extend(std::iter::repeat_n((1.0 - p) / others as f64, others));
            let entropy: f64 = probs.iter().map(|&q| -q * q.ln()).sum();
            assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            assert!((got.top_prob - p).abs() < 1e-12, "{got:?} {p}");
            assert!((got.entropy - entropy).abs() < 1e-9, "{got:?} {entropy}");
            if i > 0 && matched + i <= PromptLookup::MAX_MATCH {
                assert!(got.entropy < info[i - 1].entropy);
            }
        }
    }
    // Short and long matches both occurred.
    assert!(
        lengths.contains(&1) && lengths.iter().any(|&m| m >= 20),
        "{lengths:?}"
    );
}

#[test]
fn metrics_merge_and_ratios() {
    let mut a = Metrics::default();
    a.record_round(3, 1);
    a.generated_tokens = 2;
    a.target_calls = 1;
    a.draft_calls = 3;
    let mut b = Metrics::default();
    b.record_round(5, 5);
    b.generated_tokens = 6;
    b.target_calls = 1;
    b.draft_calls = 5;
    a.merge(&b);
    assert_eq!(a.rounds, 2);
    assert_eq!(a.acceptance_rate(), 6.0 / 8.0);
    assert_eq!(a.mean_acceptance_length(), 4.0);
    assert_eq!(a.target_calls_per_token(), 0.25);
    assert_eq!(a.draft_calls_per_token(), 1.0);
    assert_eq!(a.drafted_at, vec![2, 2, 2, 1, 1]);
    assert_eq!(a.accepted_at, vec![2, 1, 1, 1, 1]);
}
