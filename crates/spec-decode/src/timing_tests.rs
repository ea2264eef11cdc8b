//! The decoder times its rounds and reports them to the policies
//! ([`DraftPolicy::observe_timing`]); a cost-aware policy that measures its
//! costs times plain steps in the rounds after the prompt's.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use burn::tensor::Device;
use lastmile_core::backend_test;
use lastmile_core::numerics::SamplingParams;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::exactness_tests::NGramLm;
use crate::*;

/// What a policy was told, round by round.
#[derive(Debug, Default)]
struct Log {
    outcomes: Vec<RoundOutcome>,
    timings: Vec<RoundTiming>,
}

/// A policy that logs what the decoder tells `inner`.
#[derive(Clone, Debug)]
struct Logged<P> {
    inner: P,
    log: Arc<Mutex<Log>>,
}

impl<P: DraftPolicy + Clone + 'static> DraftPolicy for Logged<P> {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn round_limit(&mut self) -> usize {
        self.inner.round_limit()
    }
    fn min_len(&self) -> usize {
        self.inner.min_len()
    }
    fn continue_drafting(&mut self, drafted: usize, next: &DraftStepInfo) -> bool {
        self.inner.continue_drafting(drafted, next)
    }
    fn worth_a_step(&self, drafted: usize) -> bool {
        self.inner.worth_a_step(drafted)
    }
    fn observe_timing(&mut self, timing: &RoundTiming) {
        self.log.lock().unwrap().timings.push(*timing);
        self.inner.observe_timing(timing);
    }
    fn observe(&mut self, outcome: RoundOutcome) {
        self.log.lock().unwrap().outcomes.push(outcome);
        self.inner.observe(outcome);
    }
    fn clone_box(&self) -> Box<dyn DraftPolicy> {
        Box::new(self.clone())
    }
}

/// Decodes 40 tokens after one prompt with the target as its own draft
/// (every draft token accepted at T = 0) under `policy`; returns the log.
fn decode<P: DraftPolicy + Clone + 'static>(device: &Device, policy: P) -> Log {
    let target = NGramLm::target(device);
    let log = Arc::new(Mutex::new(Log::default()));
    let logged = Logged {
        inner: policy,
        log: Arc::clone(&log),
    };
    let mut dec =
        SpeculativeDecoder::new(&target, ModelDrafter::new(&target), Box::new(logged)).unwrap();
    let config = GenerationConfig::new(SamplingParams::greedy(), 40).unwrap();
    dec.generate(&[vec![0, 1, 2]], &config, &mut StdRng::seed_from_u64(3))
        .unwrap();
    drop(dec); // its prototype of the policy shares the log
    Arc::try_unwrap(log).unwrap().into_inner().unwrap()
}

backend_test!(every_round_but_the_prompts_is_timed, |device| {
    let log = decode(device, StaticLength::new(3).unwrap());
    let rounds = log.outcomes.len();
    assert!(rounds > 5, "{log:?}");
    assert_eq!(
        log.timings.len(),
        rounds - 1,
        "the prompt's round is not timed"
    );
    for (o, t) in log.outcomes[1..].iter().zip(&log.timings) {
        // One sequence: its pending token and its drafts, one draft call each.
        assert_eq!(t.pass_tokens, o.drafted + 1, "{o:?} {t:?}");
        assert_eq!(t.draft_calls, o.drafted, "{o:?} {t:?}");
        assert!(
            t.draft_seconds.is_finite() && t.draft_seconds >= 0.0,
            "{t:?}"
        );
        assert!(
            t.verify_seconds.is_finite() && t.verify_seconds > 0.0,
            "{t:?}"
        );
    }
});

backend_test!(measuring_policy_times_plain_steps, |device| {
    let config = CostAwareConfig {
        measure_costs: true,
        retime_every: 4,
        initial_acceptance: 0.9,
        max_len: 3,
        ..CostAwareConfig::default()
    };
    let policy = CostAwareAdaEdl::new(config, 0.05, 0.05).unwrap();
    let log = decode(device, policy.clone());
    let drafted: Vec<usize> = log.outcomes.iter().map(|o| o.drafted).collect();
    // Drafting in the prompt's round, then the two plain steps that time
    // the unit.
    assert!(drafted[0] > 0, "{drafted:?}");
    assert_eq!(drafted[1..3], [0, 0], "{drafted:?}");
    // Then never more than `retime_every` timed rounds without a plain step.
    let mut since = 0;
    for (i, t) in log.timings.iter().enumerate().skip(2) {
        if t.is_plain_step() {
            since = 0;
        } else {
            since += 1;
            assert!(since <= 4, "round {}: {drafted:?}", i + 1);
        }
    }
    // (Whether the later rounds draft depends on this machine's times: the
    // draft is the target itself, so a draft step may cost a whole step.)
    // Without measuring, the same policy drafts every round of this
    // predictable text (but the last, which has room for no draft) and
    // never runs a plain step.
    let config = CostAwareConfig {
        measure_costs: false,
        ..config
    };
    let log = decode(device, CostAwareAdaEdl::new(config, 0.05, 0.05).unwrap());
    let (last, rest) = log.outcomes.split_last().unwrap();
    assert!(rest.iter().all(|o| o.drafted > 0), "{log:?}");
    assert!(last.drafted <= 3, "{log:?}");
});
