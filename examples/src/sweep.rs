//! The decoding-method sweep shared by the speculative-decoding examples
//! (`spec_decode_text`, `spec_decode_llm`, the tour): the methods compared,
//! one run of a method, the interleaved sweep over prompts, and the cost
//! model that re-prices a run's counts.

use anyhow::Result;
use lastmile_core::lm::LanguageModel;
use lastmile_spec_decode::{
    AdaEdl, AdaEdlConfig, CostAwareAdaEdl, CostAwareConfig, CostModel, DraftPolicy, Generation,
    GenerationConfig, HeuristicSchedule, HybridDrafter, MaxConfidence, Metrics, PromptLookup,
    SpeculativeDecoder, StaticLength, generate_autoregressive,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::drafts::DraftSource;

/// A decoding method of the sweep.
#[derive(Clone, Debug)]
pub enum Method {
    /// Target alone, one token per forward.
    Autoregressive,
    /// The draft model under a draft-length policy.
    Draft(Box<dyn DraftPolicy>),
    /// Prompt lookup under a policy (no draft model).
    Lookup(Box<dyn DraftPolicy>),
    /// Prompt lookup (at most the given number of tokens) where a bigram
    /// or trigram recurs, the draft model elsewhere ([`HybridDrafter`]),
    /// under a policy.
    Hybrid(Box<dyn DraftPolicy>, usize),
}

impl Method {
    /// Display name.
    pub fn name(&self) -> String {
        match self {
            Method::Autoregressive => "autoregressive".to_owned(),
            Method::Draft(p) => p.name(),
            Method::Lookup(p) => format!("prompt-lookup ({})", p.name()),
            Method::Hybrid(p, n) => format!("lookup≤{n}+{}", p.name()),
        }
    }
}

/// The methods compared: AR, static 1..=8, HF heuristic, max-confidence,
/// AdaEDL (default `min_len = 1`, and `min_len = 0`), the cost-model
/// controller, cost-aware AdaEDL (both given the measured draft cost
/// `cost_ratio` and marginal verify cost `verify_cost`) and prompt lookup.
pub fn methods(temperature: f64, cost_ratio: f64, verify_cost: f64) -> Result<Vec<Method>> {
    let mut m = vec![Method::Autoregressive];
    for g in 1..=8 {
        m.push(Method::Draft(Box::new(StaticLength::new(g)?)));
    }
    m.push(Method::Draft(Box::new(HeuristicSchedule::new(5, 8)?)));
    // llama.cpp's p_min for greedy decoding, HF's confidence threshold when sampling.
    let tau = if temperature == 0.0 { 0.75 } else { 0.4 };
    m.push(Method::Draft(Box::new(MaxConfidence::new(tau, 8)?)));
    m.push(Method::Draft(Box::new(AdaEdl::new(
        AdaEdlConfig::default(),
    )?)));
    // The same rule allowed to skip drafting when even the first token's bound is low.
    m.push(Method::Draft(Box::new(AdaEdl::new(AdaEdlConfig {
        min_len: 0,
        ..AdaEdlConfig::default()
    })?)));
    m.push(Method::Draft(Box::new(
        CostModel::new(cost_ratio, 0.7, 0.5, 8)?.with_verify_cost(verify_cost)?,
    )));
    // AdaEDL's entropy bound weighed by the same measured costs.
    m.push(Method::Draft(Box::new(CostAwareAdaEdl::new(
        CostAwareConfig::default(),
        cost_ratio,
        verify_cost,
    )?)));
    m.push(Method::Lookup(Box::new(StaticLength::new(8)?)));
    // Lookup where the text repeats itself, the draft elsewhere, under the
    // two confidence-reading policies (looked-up tokens read as certain).
    m.push(Method::Hybrid(Box::new(MaxConfidence::new(tau, 8)?), 10));
    m.push(Method::Hybrid(
        Box::new(CostAwareAdaEdl::new(
            CostAwareConfig::default(),
            cost_ratio,
            verify_cost,
        )?),
        10,
    ));
    Ok(m)
}

/// Runs `method` on one prompt (batch 1, the latency setting) with a fixed
/// seed. Any pair of [`LanguageModel`]s with the same vocabulary: the
/// byte-level transformers here, the Llama model and its early-exit view
/// in [`crate::llm`].
pub fn run_method<T: LanguageModel, S: DraftSource<T>>(
    method: &Method,
    target: &T,
    draft: &S,
    prompt: &[usize],
    config: &GenerationConfig,
    seed: u64,
) -> Result<Generation> {
    let mut rng = StdRng::seed_from_u64(seed);
    let batch = [prompt.to_vec()];
    Ok(match method {
        Method::Autoregressive => generate_autoregressive(target, &batch, config, &mut rng)?,
        Method::Draft(p) => SpeculativeDecoder::new(target, draft.drafter()?, p.clone())?
            .generate(&batch, config, &mut rng)?,
        Method::Lookup(p) => {
            SpeculativeDecoder::new(target, PromptLookup::new(1, 3, 10)?, p.clone())?
                .generate(&batch, config, &mut rng)?
        }
        Method::Hybrid(p, n) => {
            // A recurring single token says little: match two or three.
            let lookup = PromptLookup::new(2, 3, *n)?;
            let drafter = HybridDrafter::new(lookup, draft.drafter()?, &target.device())?;
            SpeculativeDecoder::new(target, drafter, p.clone())?
                .generate(&batch, config, &mut rng)?
        }
    })
}

/// Outputs of every prompt and the summed metrics of one method.
pub type MethodResult = (Vec<Vec<usize>>, Metrics);

/// Runs every method on every prompt, interleaving methods within each
/// prompt so that background load on the machine hits all methods alike.
/// Prompt `i` uses seed `seed + i` for every method. Each method first runs
/// once untimed on the first prompt (at most 8 new tokens), so that
/// first-call costs (allocations, thread start-up, cold caches) do not land
/// on whichever method runs first.
pub fn sweep<T: LanguageModel, S: DraftSource<T>>(
    methods: &[Method],
    target: &T,
    draft: &S,
    prompts: &[Vec<usize>],
    config: &GenerationConfig,
    seed: u64,
    mut on_run: impl FnMut(),
) -> Result<Vec<MethodResult>> {
    let mut results: Vec<MethodResult> = vec![(Vec::new(), Metrics::default()); methods.len()];
    if let Some(first) = prompts.first() {
        let warm = GenerationConfig::new(*config.sampling(), config.max_new_tokens().min(8))?
            .with_stop_token(config.stop_token());
        for method in methods {
            run_method(method, target, draft, first, &warm, seed)?;
        }
    }
    for (i, prompt) in prompts.iter().enumerate() {
        for (method, slot) in methods.iter().zip(results.iter_mut()) {
            let out = run_method(method, target, draft, prompt, config, seed + i as u64)?;
            slot.1.merge(&out.metrics);
            slot.0.extend(out.tokens);
            on_run();
        }
    }
    Ok(results)
}

/// Speed-up over autoregressive decoding that `m`'s counts would give on a
/// machine where a draft call costs `c` target steps and a target forward
/// over `k` tokens costs `1 + c_v·(k − 1)` steps (the cost model of Leviathan
/// et al. §3.4, extended with a per-token verify cost). A count-only replay:
/// the same decoded tokens, re-priced, so that the draft-length policies can
/// be compared for hardware other than this one (`c_v = 0` is a
/// memory-bound accelerator, where verifying a few extra tokens is free).
///
/// Autoregressive decoding costs one step per target call; `m` costs
/// `target_calls + c_v·drafted + c·draft_calls`. Returns `None` for a
/// run that generated nothing or cost nothing, and for a `c` or `c_v` that
/// is negative or not finite.
///
/// ```
/// use lastmile_examples::sweep::modelled_speedup;
/// use lastmile_spec_decode::Metrics;
/// let mut m = Metrics::default();
/// m.record_round(4, 3); // 4 drafted, 3 accepted: 4 tokens from one target call
/// m.generated_tokens = 4;
/// m.target_calls = 1;
/// m.draft_calls = 4;
/// // Free verification and free drafting: 4 tokens per step.
/// assert_eq!(modelled_speedup(&m, 0.0, 0.0), Some(4.0));
/// // Each extra verified token costing a whole step: 4 tokens for 5 steps.
/// assert_eq!(modelled_speedup(&m, 0.0, 1.0), Some(0.8));
/// // Costs must be finite and non-negative.
/// assert_eq!(modelled_speedup(&m, -0.1, 0.0), None);
/// assert_eq!(modelled_speedup(&m, 0.0, f64::NAN), None);
/// ```
pub fn modelled_speedup(m: &Metrics, c: f64, c_v: f64) -> Option<f64> {
    if !(c.is_finite() && c_v.is_finite() && c >= 0.0 && c_v >= 0.0) {
        return None;
    }
    let cost = m.target_calls as f64 + c_v * m.drafted as f64 + c * m.draft_calls as f64;
    (m.generated_tokens > 0 && cost > 0.0).then(|| m.generated_tokens as f64 / cost)
}
