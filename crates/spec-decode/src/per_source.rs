//! One draft-length policy per draft source.

use crate::policy::{DraftPolicy, DraftSource, DraftStepInfo, RoundOutcome};
use crate::round_timing::RoundTiming;

/// A policy for draft-model rounds and another for prompt-lookup rounds,
/// each round handed to the one for its [source](DraftPolicy::begin_round).
///
/// Under [`HybridDrafter`](crate::HybridDrafter) the two sources differ in
/// everything a policy weighs: a looked-up token costs a scan of the
/// context where a model token costs a forward, and the copy model's
/// confidence means something else than the draft's entropy. One policy
/// for both prices looked-up tokens at the draft's cost and mixes the two
/// confidences in one calibration; and a gate that finds the draft model
/// not worth running shuts lookup out with it. Here each source keeps its
/// own costs (e.g. [`CostAwareAdaEdl`](crate::CostAwareAdaEdl) with the
/// measured `c` for the model and `c = 0` for lookup), its own calibration
/// and its own gate; each sees only its own rounds' outcomes and timings.
/// A round whose source was not told (a decoder of another crate) is a
/// model round.
///
/// ```
/// use lastmile_spec_decode::{DraftPolicy, DraftSource, HeuristicSchedule, PerSource, RoundOutcome, StaticLength};
/// let mut p = PerSource::new(
///     Box::new(StaticLength::new(1)?),
///     Box::new(HeuristicSchedule::new(2, 8)?),
/// );
/// p.begin_round(DraftSource::Lookup);
/// assert_eq!(p.round_limit(), 2);
/// p.observe(RoundOutcome { drafted: 2, accepted: 2 }); // the schedule grows
/// p.begin_round(DraftSource::Model);
/// assert_eq!(p.round_limit(), 1);
/// p.observe(RoundOutcome { drafted: 1, accepted: 0 }); // not the schedule's round
/// p.begin_round(DraftSource::Lookup);
/// assert_eq!(p.round_limit(), 4);
/// assert_eq!(p.name(), "static-1|lookup:heuristic");
/// # Ok::<(), lastmile_spec_decode::SpecDecodeError>(())
/// ```
#[derive(Debug)]
pub struct PerSource {
    model: Box<dyn DraftPolicy>,
    lookup: Box<dyn DraftPolicy>,
    current: DraftSource,
}

impl PerSource {
    /// `model` decides draft-model rounds, `lookup` prompt-lookup rounds.
    pub fn new(model: Box<dyn DraftPolicy>, lookup: Box<dyn DraftPolicy>) -> Self {
        Self {
            model,
            lookup,
            current: DraftSource::Model,
        }
    }

    /// The policy of `source`'s rounds.
    ///
    /// ```
    /// use lastmile_spec_decode::{DraftSource, PerSource, StaticLength};
    /// let p = PerSource::new(Box::new(StaticLength::new(1)?), Box::new(StaticLength::new(8)?));
    /// assert_eq!(p.policy(DraftSource::Lookup).name(), "static-8");
    /// # Ok::<(), lastmile_spec_decode::SpecDecodeError>(())
    /// ```
    pub fn policy(&self, source: DraftSource) -> &dyn DraftPolicy {
        match source {
            DraftSource::Model => self.model.as_ref(),
            DraftSource::Lookup => self.lookup.as_ref(),
        }
    }

    fn current(&self) -> &dyn DraftPolicy {
        self.policy(self.current)
    }

    fn current_mut(&mut self) -> &mut dyn DraftPolicy {
        match self.current {
            DraftSource::Model => self.model.as_mut(),
            DraftSource::Lookup => self.lookup.as_mut(),
        }
    }
}

impl Clone for PerSource {
    fn clone(&self) -> Self {
        Self {
            model: self.model.clone_box(),
            lookup: self.lookup.clone_box(),
            current: self.current,
        }
    }
}

impl DraftPolicy for PerSource {
    /// `"<model>|lookup:<lookup>"`, or `"<policy>-per-source"` when both
    /// are the same kind of policy.
    fn name(&self) -> String {
        let (model, lookup) = (self.model.name(), self.lookup.name());
        if model == lookup {
            format!("{model}-per-source")
        } else {
            format!("{model}|lookup:{lookup}")
        }
    }

    fn begin_round(&mut self, source: DraftSource) {
        self.current = source;
        self.current_mut().begin_round(source);
    }

    fn round_limit(&mut self) -> usize {
        self.current_mut().round_limit()
    }

    fn min_len(&self) -> usize {
        self.current().min_len()
    }

    fn continue_drafting(&mut self, drafted: usize, next: &DraftStepInfo) -> bool {
        self.current_mut().continue_drafting(drafted, next)
    }

    fn worth_a_step(&self, drafted: usize) -> bool {
        self.current().worth_a_step(drafted)
    }

    fn observe_timing(&mut self, timing: &RoundTiming) {
        self.current_mut().observe_timing(timing);
    }

    fn observe(&mut self, outcome: RoundOutcome) {
        self.current_mut().observe(outcome);
    }

    fn clone_box(&self) -> Box<dyn DraftPolicy> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use lastmile_core::backend_test;
    use lastmile_core::numerics::SamplingParams;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::exactness_tests::NGramLm;
    use crate::{
        CostAwareAdaEdl, CostAwareConfig, GenerationConfig, HybridDrafter, MaxConfidence, Metrics,
        ModelDrafter, PromptLookup, SpeculativeDecoder, StaticLength, generate_autoregressive,
    };

    #[test]
    fn each_round_is_decided_by_its_sources_policy() {
        // Max-confidence stops at an unsure token; a static length does not
        // consult the token at all past its limit's reach.
        let mut p = PerSource::new(
            Box::new(MaxConfidence::new(0.5, 4).unwrap()),
            Box::new(StaticLength::new(6).unwrap()),
        );
        let unsure = DraftStepInfo {
            entropy: 2.0,
            top_prob: 0.2,
        };
        // No source told: a model round.
        assert_eq!(p.round_limit(), 4);
        assert!(!p.continue_drafting(1, &unsure));
        p.begin_round(DraftSource::Lookup);
        assert_eq!(p.round_limit(), 6);
        assert!(p.continue_drafting(1, &unsure));
        assert_eq!(p.policy(DraftSource::Model).name(), "max-conf-0.5");
        let copy = p.clone_box();
        assert_eq!(copy.name(), p.name());
    }

    backend_test!(a_shut_model_gate_leaves_lookup_open, |device| {
        // A draft model so dear (c = 2 steps) that cost-aware AdaEDL's gate
        // stays shut, drafting only in its probes (every 8th round), beside
        // lookup, free, on greedy text that soon repeats itself.
        let (target, draft) = (NGramLm::target(device), NGramLm::draft(device));
        let prompts: Vec<Vec<usize>> = (0..6).map(|i| vec![i % 5, (i + 2) % 5, 3]).collect();
        let config = GenerationConfig::new(SamplingParams::greedy(), 40).unwrap();
        let mut rng = StdRng::seed_from_u64(0);
        let reference = generate_autoregressive(&target, &prompts, &config, &mut rng).unwrap();
        let dear = || Box::new(CostAwareAdaEdl::new(CostAwareConfig::default(), 2.0, 0.1).unwrap());
        let mut run = |policy: Box<dyn DraftPolicy>| -> (Metrics, u64, u64) {
            let lookup = PromptLookup::new(2, 3, 8).unwrap();
            let hybrid = HybridDrafter::new(lookup, ModelDrafter::new(&draft), device).unwrap();
            let mut dec = SpeculativeDecoder::new(&target, hybrid, policy).unwrap();
            let out = dec.generate(&prompts, &config, &mut rng).unwrap();
            assert_eq!(out.tokens, reference.tokens);
            let d = dec.drafter();
            (out.metrics, d.looked_up_rounds(), d.model_rounds())
        };
        let (shared, shared_lookups, _) = run(dear());
        let free = CostAwareAdaEdl::new(CostAwareConfig::default(), 0.0, 0.1).unwrap();
        let (apart, lookups, _) = run(Box::new(PerSource::new(dear(), Box::new(free))));
        eprintln!(
            "one policy: {} rounds, {} drafted, {} accepted, {} draft calls, {shared_lookups} looked up",
            shared.rounds, shared.drafted, shared.accepted, shared.draft_calls
        );
        eprintln!(
            "per source: {} rounds, {} drafted, {} accepted, {} draft calls, {lookups} looked up",
            apart.rounds, apart.drafted, apart.accepted, apart.draft_calls
        );
        // One policy: the shut gate shuts lookup out but for the probes.
        // Per source: lookup drafts wherever it finds a match.
        assert!(apart.accepted >= 3 * shared.accepted.max(1));
        assert!(apart.rounds < shared.rounds);
        assert!(apart.draft_calls <= shared.draft_calls);
    });
}
