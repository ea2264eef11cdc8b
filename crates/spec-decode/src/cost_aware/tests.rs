//! The policy's rules, checked round by round.

use super::*;

fn info(entropy: f64) -> DraftStepInfo {
    DraftStepInfo {
        entropy,
        top_prob: 0.5,
    }
}

/// The default settings but acceptance 0.7 assumed before evidence (the
/// default 0.4 drafts a single token at most costs).
fn optimistic() -> CostAwareConfig {
    CostAwareConfig {
        initial_acceptance: 0.7,
        ..CostAwareConfig::default()
    }
}

/// The policy at costs `c` and `c_v`, assuming acceptance 0.7 before
/// evidence.
fn policy(c: f64, c_v: f64) -> CostAwareAdaEdl {
    CostAwareAdaEdl::new(optimistic(), c, c_v).unwrap_or_else(|e| panic!("{e}"))
}

/// [`policy`] at `c = c_v = 0.05`, pricing with the costs it times in the
/// loop once it has a unit.
fn measuring() -> CostAwareAdaEdl {
    let config = CostAwareConfig {
        measure_costs: true,
        ..optimistic()
    };
    CostAwareAdaEdl::new(config, 0.05, 0.05).unwrap_or_else(|e| panic!("{e}"))
}

/// The policy with `config` at draft cost `c` and a pass over `k` tokens
/// costing `times[k − 1]` steps.
fn policy_with_pass(config: CostAwareConfig, c: f64, times: &[f64]) -> CostAwareAdaEdl {
    let costs = PassCosts::from_times(times).unwrap_or_else(|e| panic!("{e}"));
    CostAwareAdaEdl::with_pass_costs(config, c, costs).unwrap_or_else(|e| panic!("{e}"))
}

/// A round's times as the decoder reports them.
fn timing(
    draft_calls: usize,
    draft_seconds: f64,
    pass_tokens: usize,
    verify_seconds: f64,
) -> RoundTiming {
    RoundTiming {
        draft_calls,
        draft_seconds,
        pass_tokens,
        verify_seconds,
    }
}

/// One round drafting from `entropies` until the policy stops, of which
/// the first `accepted` drafted tokens are accepted; returns the length.
fn round(p: &mut CostAwareAdaEdl, entropies: &[f64], accepted: usize) -> usize {
    let limit = p.round_limit().min(entropies.len());
    let drafted = (0..limit)
        .take_while(|&j| p.worth_a_step(j) && p.continue_drafting(j, &info(entropies[j])))
        .count();
    p.observe(RoundOutcome {
        drafted,
        accepted: accepted.min(drafted),
    });
    drafted
}

#[test]
fn costlier_verification_drafts_shorter() {
    // No evidence yet: acceptance 0.7 assumed at every position.
    let lengths: Vec<usize> = [0.02, 0.1, 0.3, 0.45]
        .iter()
        .map(|&c_v| round(&mut policy(0.05, c_v), &[0.2; 8], 0))
        .collect();
    assert!(lengths.windows(2).all(|w| w[0] >= w[1]), "{lengths:?}");
    assert!(lengths[0] > lengths[3], "{lengths:?}");
    assert!(lengths[3] >= 1, "{lengths:?}");
}

#[test]
fn first_tokens_of_a_rejected_level_are_declined() {
    // Confident tokens accepted, unsure ones rejected: the unsure level's
    // estimate falls below c_v / (1 + c) and its first tokens are declined,
    // while confident ones are still drafted.
    let mut p = policy(0.1, 0.15);
    for _ in 0..30 {
        round(&mut p, &[0.05], 1);
        round(&mut p, &[4.0], 0);
    }
    assert!(p.speculation_pays());
    assert_eq!(round(&mut p.clone(), &[4.0; 8], 0), 0);
    assert!(round(&mut p, &[0.05; 8], 0) >= 1);
    // Declined since its estimate fell below c_v / (1 + c).
    assert!(p.calibration().estimate(4.0) * 1.1 < 0.15);
    assert!(p.calibration().estimate(0.05) > 0.8);
}

#[test]
fn stop_rule_keeps_the_round_yield_from_falling() {
    // Along any entropy path, a token is drafted exactly when it, or a
    // run it opens at its estimate, keeps E/C from falling, C = s·c +
    // v(j + 1) counting every draft step run (token j + 1's included): with one marginal verify
    // cost, and with a measured pass that is flat for a few tokens and
    // then dear.
    let c = 0.1;
    let flat_then_dear = [1.0, 1.0, 1.02, 1.02, 1.5, 1.9, 2.3, 2.7, 3.1];
    for costs in [
        PassCosts::linear(0.15).unwrap_or_else(|e| panic!("{e}")),
        PassCosts::from_times(&flat_then_dear).unwrap_or_else(|e| panic!("{e}")),
    ] {
        let mut p = CostAwareAdaEdl::with_pass_costs(optimistic(), c, costs.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..20 {
            // Acceptance falls with entropy: 0.9 below 0.2 nats, 0.2 above.
            round(&mut p, &[0.01], 1);
            round(&mut p, &[0.02, 1.0], 1);
            round(&mut p, &[0.05, 0.01, 0.03, 0.02, 0.01, 0.4], 4);
            round(&mut p, &[1.0], 0);
        }
        p.round_limit();
        let (mut all, mut expected) = (1.0f64, 1.0f64);
        let mut drafted = 0;
        for (j, h) in [0.01, 0.1, 0.05, 0.4, 0.3, 1.0].into_iter().enumerate() {
            let before = expected / ((j + 1) as f64 * c + costs.verify(j));
            let a = p.calibration().estimate(h);
            let next = all * a;
            // A run of k tokens at token j + 1's estimate takes k − 1
            // more draft steps (token j + 1 is shown already) and may pay
            // where the token alone does not.
            let after = (1..=8 - j)
                .map(|k| {
                    let gain: f64 = (1..=k).map(|i| all * a.powi(i as i32)).sum();
                    (expected + gain) / ((j + k) as f64 * c + costs.verify(j + k))
                })
                .fold(f64::MIN, f64::max);
            let drafts = p.continue_drafting(j, &info(h));
            assert_eq!(
                drafts,
                after >= before - 1e-12,
                "{costs:?}, token {}: {before} -> {after}",
                j + 1
            );
            if !drafts {
                break;
            }
            drafted += 1;
            all = next;
            expected += next;
        }
        assert!((1..6).contains(&drafted), "{costs:?}: {drafted}");
    }
}

#[test]
fn calibration_lengthens_drafts_of_an_accepted_level() {
    // Entropy 2 (bound 0.37) at c = 0.1, c_v = 0.2: at the assumed
    // acceptance 0.7 the policy drafts two tokens. Rounds in which such
    // tokens are always accepted teach it to draft more.
    let mut p = policy(0.1, 0.2);
    let lengths: Vec<usize> = (0..30).map(|_| round(&mut p, &[2.0; 8], 8)).collect();
    assert_eq!(lengths[0], 2);
    assert_eq!(lengths[29], 8, "{lengths:?}");
    assert!(p.calibration().estimate(2.0) > 0.9);
}

#[test]
fn a_second_draft_step_is_run_only_when_it_may_pay() {
    // First tokens accepted 38 % of the time at every level: after one
    // drafted token (P_1 = 0.38, the round's yield R = 1.38 / 1.24 ≈ 1.1
    // tokens a step) a second gains at most 0.38² − R·c_v ≈ 0.01 < R·c,
    // so no draft step is spent on it.
    let mut p = policy(0.12, 0.12);
    for i in 0..100 {
        round(&mut p, &[3.0], usize::from(i % 50 < 19));
    }
    p.round_limit();
    assert!(p.continue_drafting(0, &info(3.0)));
    assert!(!p.worth_a_step(1));
    // A confident first token (P_1 = 0.95 after such tokens were
    // accepted) makes the next step worth running.
    for _ in 0..40 {
        round(&mut p, &[0.01], 1);
    }
    p.round_limit();
    assert!(p.continue_drafting(0, &info(0.01)));
    assert!(p.worth_a_step(1));
}

#[test]
fn a_draft_step_is_priced_at_the_round_yield() {
    // Acceptance 0.7 assumed, c = 0.1, c_v = 0.2: two drafted tokens
    // yield E = 2.19 for C = 2·0.1 + 1.4 = 1.6 steps (R = 1.37). A third
    // would add 0.7³ = 0.34 tokens for c + c_v = 0.3 steps (1.14 a step),
    // so the step that shows it is not run, although its net gain in
    // plain steps, 0.34 − 0.2 = 0.14, exceeds c.
    let mut p = policy(0.1, 0.2);
    p.round_limit();
    assert!((p.calibration().estimate(2.0) - 0.7).abs() < 1e-9);
    assert!(p.continue_drafting(0, &info(2.0)));
    assert!(p.worth_a_step(1));
    assert!(p.continue_drafting(1, &info(2.0)));
    assert!(!p.worth_a_step(2));
}

#[test]
fn a_draft_step_that_opens_a_cheap_run_is_run() {
    // The second draft token costs a whole step in the pass and the ones
    // after it nothing: alone it does not pay (P_1·a − 1 < 0 at a < 1),
    // a run of seven does, so the step that shows it is run and the round
    // drafts all eight confident tokens.
    let pass = [1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0];
    let mut p = policy_with_pass(optimistic(), 0.05, &pass);
    for _ in 0..40 {
        round(&mut p, &[0.01; 8], 8);
    }
    let a = p.calibration().estimate(0.01);
    assert!(a > 0.9 && a * a < 1.0, "{a}");
    p.round_limit();
    assert!(p.continue_drafting(0, &info(0.01)));
    assert!(p.worth_a_step(1));
    assert_eq!(round(&mut p, &[0.01; 8], 8), 8);
}

#[test]
fn rejected_rounds_close_the_gate() {
    // Confident tokens (bound 0.86) that the target rejects: the gate
    // closes within a few rounds (no draft step), and the probes every
    // 8th round each draft one token.
    let mut p = policy(0.1, 0.1);
    let lengths: Vec<usize> = (0..80).map(|_| round(&mut p, &[0.1; 8], 0)).collect();
    assert!(lengths[0] > 1, "{lengths:?}");
    assert!(!p.speculation_pays());
    let late = &lengths[8..];
    assert!(late.iter().all(|&g| g <= 1), "{lengths:?}");
    assert!(
        late.iter().filter(|&&g| g == 1).count() <= late.len() / 8 + 1,
        "{lengths:?}"
    );
    // Below c_v / (1 + c): the estimate stops an open gate's first token too.
    let before = p.calibration().estimate(0.1);
    assert!(before * 1.1 < 0.1, "{before}");
    let limits: Vec<usize> = (0..8).map(|_| p.round_limit()).collect();
    assert_eq!(limits.iter().filter(|&&l| l > 0).count(), 1, "{limits:?}");
}

#[test]
fn gate_reopens_when_probes_are_accepted() {
    let mut p = policy(0.2, 0.25);
    for _ in 0..30 {
        round(&mut p, &[0.1; 8], 0);
    }
    assert!(!p.speculation_pays());
    // Only probes draft; fully accepted probes reopen the gate.
    let mut probes = 0;
    for _ in 0..200 {
        if p.speculation_pays() {
            break;
        }
        if round(&mut p, &[0.1; 8], 8) > 0 {
            probes += 1;
        }
    }
    assert!(
        p.speculation_pays(),
        "closed after {probes} accepted probes"
    );
    assert!(probes <= 12, "{probes} probes to reopen");
    assert_eq!(p.round_limit(), 8);
}

#[test]
fn measured_costs_replace_the_given_ones() {
    // Given c = c_v = 0.05, drafting pays at acceptance 0.7; the loop
    // times a draft call at 0.8 steps and a 2-token pass at 1.3: the
    // measuring policy stops drafting, the other keeps drafting.
    let mut measuring = measuring();
    let mut given = policy(0.05, 0.05);
    assert!(measuring.speculation_pays() && given.speculation_pays());
    for _ in 0..4 {
        for p in [&mut measuring, &mut given] {
            p.observe_timing(&timing(0, 0.0, 1, 1e-3));
            p.observe_timing(&timing(1, 8e-4, 2, 1.3e-3));
        }
    }
    let (c, v) = measuring.costs();
    assert!(
        (c - 0.8).abs() < 1e-9 && (v.verify(1) - 1.3).abs() < 1e-9,
        "{c} {v:?}"
    );
    assert_eq!(
        given.costs(),
        (
            0.05,
            &PassCosts::linear(0.05).unwrap_or_else(|e| panic!("{e}"))
        )
    );
    assert!(!measuring.speculation_pays());
    assert!(given.speculation_pays());
}

#[test]
fn measured_costs_retime_the_unit_soon_after_the_prompt() {
    // Drafting pays throughout (cheap draft, 2-token passes at 1.1 steps):
    // the rounds that run as plain steps to time the unit are the two
    // after the prompt's, then gaps of 4, 8, 16 and 32 drafting rounds.
    let mut p = measuring();
    let mut plain = Vec::new();
    for round in 1..=110 {
        let limit = p.round_limit();
        if limit == 0 {
            plain.push(round);
        }
        // The decoder reports every round but the prompt's.
        if round > 1 {
            p.observe_timing(&if limit == 0 {
                timing(0, 0.0, 1, 1e-3)
            } else {
                timing(1, 5e-5, 2, 1.1e-3)
            });
        }
    }
    assert_eq!(plain, [2, 3, 8, 17, 34, 67, 100]);
}

#[test]
fn bad_settings_are_errors() {
    let c = CostAwareConfig::default();
    assert!(CostAwareAdaEdl::new(c, -0.01, 0.1).is_err());
    assert!(CostAwareAdaEdl::new(c, 0.0, 0.1).is_ok()); // a model-free drafter
    assert!(CostAwareAdaEdl::new(c, 0.1, -0.1).is_err());
    assert!(CostAwareAdaEdl::new(c, f64::NAN, 0.1).is_err());
    let bad = [
        CostAwareConfig { gamma: 0.0, ..c },
        CostAwareConfig {
            prior_weight: 0.0,
            ..c
        },
        CostAwareConfig { forget: 0.0, ..c },
        CostAwareConfig {
            initial_acceptance: 1.5,
            ..c
        },
        CostAwareConfig { max_len: 0, ..c },
        CostAwareConfig {
            probe_every: 0,
            ..c
        },
        CostAwareConfig {
            retime_every: 0,
            ..c
        },
        // A table of pass costs this long is not kept.
        CostAwareConfig {
            max_len: usize::MAX,
            measure_costs: true,
            ..c
        },
    ];
    for b in bad {
        assert!(CostAwareAdaEdl::new(b, 0.1, 0.1).is_err(), "{b:?}");
    }
}

#[test]
fn prompt_lookup_at_no_draft_cost_learns_which_matches_to_trust() {
    // Prompt lookup costs nothing next to a step (c = 0); the pass costs
    // are those measured on a CPU (docs/benchmarks.md, session 26). Text
    // where one-token matches are never continued and long copies always
    // are: the policy learns to decline the first and to draft the second
    // at length, by the copy model's confidence alone.
    let pass = [1.0, 1.12, 1.27, 1.51, 1.65, 2.02, 2.03, 2.24, 2.71];
    // A light prior: the levels' own counts soon dominate.
    let config = CostAwareConfig {
        prior_weight: 2.0,
        ..CostAwareConfig::default()
    };
    let mut p = policy_with_pass(config, 0.0, &pass);
    let lookup = crate::PromptLookup::new(1, 3, 8).unwrap_or_else(|e| panic!("{e}"));
    // "… 9 | 3": only "3" recurs (one token matched).
    let short: Vec<usize> = vec![3, 1, 2, 4, 5, 6, 7, 8, 9, 3];
    // A 12-token span recurs.
    let long: Vec<usize> = (0..12).chain(20..24).chain(0..12).collect();
    let proposal = |ctx: &[usize]| {
        let (tokens, info) = lookup.lookup_with_info(ctx, 8);
        assert_eq!(tokens.len(), info.len());
        info
    };
    let (short_info, long_info) = (proposal(&short), proposal(&long));
    assert!(short_info.len() >= 8 && long_info.len() >= 4);
    let drafted = |p: &mut CostAwareAdaEdl, info: &[DraftStepInfo], accept_all: bool| {
        let limit = p.round_limit().min(info.len());
        let n = (0..limit)
            .take_while(|&j| p.worth_a_step(j) && p.continue_drafting(j, &info[j]))
            .count();
        p.observe(RoundOutcome {
            drafted: n,
            accepted: if accept_all { n } else { 0 },
        });
        n
    };
    let mut short_lengths = Vec::new();
    for _ in 0..100 {
        short_lengths.push(drafted(&mut p, &short_info, false));
        drafted(&mut p, &long_info, true);
    }
    // At first a one-token match is drafted (acceptance 0.4 assumed).
    assert_eq!(short_lengths[0], 1);
    assert_eq!(
        drafted(&mut p.clone(), &short_info, false),
        0,
        "{short_lengths:?}"
    );
    // Seven: past the 6-token pass's step up (the 8-token pass costs
    // about as much as the 7-token one), short of the dear 9-token pass.
    assert_eq!(drafted(&mut p, &long_info, true), 7);
    assert!(p.calibration().estimate(long_info[0].entropy) > 0.9);
    // Declined once its estimate fell below the 2-token pass's extra 0.12 step.
    assert!(p.calibration().estimate(short_info[0].entropy) < 0.12);
}
