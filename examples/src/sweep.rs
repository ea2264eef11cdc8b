//! The decoding-method sweep shared by the speculative-decoding examples
//! (`spec_decode_text`, `spec_decode_llm`, the tour): the methods compared,
//! one run of a method, the interleaved sweep over prompts, and the cost
//! model that re-prices a run's counts.

use anyhow::Result;
use lastmile_core::lm::LanguageModel;
use lastmile_spec_decode::{
    AdaEdl, AdaEdlConfig, CostAwareAdaEdl, CostAwareConfig, CostModel, DraftPolicy, Generation,
    GenerationConfig, HeuristicSchedule, HybridDrafter, MaxConfidence, Metrics, PassCosts,
    PerSource, PromptLookup, SpeculativeDecoder, StaticLength, generate_autoregressive,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::drafts::MakeDrafter;

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
/// controller (given the measured draft cost `cost_ratio` and the mean
/// marginal cost of verifying 8 tokens, its linear model's `c_v`),
/// cost-aware AdaEDL (given `cost_ratio` and the verify pass's cost by
/// length, `verify`; and timing its costs in the loop, those as the
/// prior), prompt lookup (static γ = 8, and cost-aware AdaEDL at no draft
/// cost), and the hybrids (max-confidence; both cost-aware AdaEDLs, one
/// per source: [`PerSource`]).
pub fn methods(temperature: f64, cost_ratio: f64, verify: &PassCosts) -> Result<Vec<Method>> {
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
        CostModel::new(cost_ratio, 0.7, 0.5, 8)?.with_verify_cost(verify.mean_marginal(8))?,
    )));
    // AdaEDL's entropy bound weighed by the same measured costs, and by
    // the costs the decoder times in the loop (these as the prior).
    let timed = CostAwareConfig {
        measure_costs: true,
        ..CostAwareConfig::default()
    };
    for config in [CostAwareConfig::default(), timed] {
        m.push(Method::Draft(Box::new(CostAwareAdaEdl::with_pass_costs(
            config,
            cost_ratio,
            verify.clone(),
        )?)));
    }
    m.push(Method::Lookup(Box::new(StaticLength::new(8)?)));
    // Lookup costs a scan of the context, nothing next to a step (c = 0);
    // the copy model's confidence tells the policy which matches to trust.
    m.push(Method::Lookup(Box::new(CostAwareAdaEdl::with_pass_costs(
        CostAwareConfig::default(),
        0.0,
        verify.clone(),
    )?)));
    // Lookup where the text repeats itself, the draft elsewhere: under
    // max-confidence, and under the cost-aware AdaEDLs with a policy per
    // source, each at its own cost (the draft's `c`, lookup's none).
    m.push(Method::Hybrid(Box::new(MaxConfidence::new(tau, 8)?), 10));
    for config in [CostAwareConfig::default(), timed] {
        let model = CostAwareAdaEdl::with_pass_costs(config, cost_ratio, verify.clone())?;
        let lookup = CostAwareAdaEdl::with_pass_costs(config, 0.0, verify.clone())?;
        m.push(Method::Hybrid(
            Box::new(PerSource::new(Box::new(model), Box::new(lookup))),
            10,
        ));
    }
    Ok(m)
}

/// Runs `method` on one prompt (batch 1, the latency setting) with a fixed
/// seed. Any pair of [`LanguageModel`]s with the same vocabulary: the
/// byte-level transformers here, the Llama model and its early-exit view
/// in [`crate::llm`].
pub fn run_method<T: LanguageModel, S: MakeDrafter<T>>(
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
pub fn sweep<T: LanguageModel, S: MakeDrafter<T>>(
    methods: &[Method],
    target: &T,
    draft: &S,
    prompts: &[Vec<usize>],
    config: &GenerationConfig,
    seed: u64,
    on_run: impl FnMut(),
) -> Result<Vec<MethodResult>> {
    let runs = sweep_runs(methods, target, draft, prompts, config, seed, false, on_run)?;
    Ok(runs.into_iter().map(|(result, _)| result).collect())
}

/// [`sweep`] with a baseline per method: each of its runs is preceded by
/// an autoregressive run on the same prompt and seed, and the second
/// [`Metrics`] sums those. Speed-ups taken against a method's own
/// baseline compare runs a second apart, so that a machine whose speed
/// drifts (other tenants' load) slows both alike; against one baseline
/// per sweep, drifts of 1.5–2× within a sweep were measured as speed-ups
/// (`docs/benchmarks.md`). Twice the runs.
///
/// # Errors
/// As [`sweep`].
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::Device;
/// use lastmile_core::numerics::SamplingParams;
/// use lastmile_examples::drafts::TokenDraft;
/// use lastmile_examples::sweep::{Method, sweep_paired};
/// use lastmile_models::llama::{LlamaConfig, WeightStorage};
/// use lastmile_spec_decode::GenerationConfig;
/// let model = LlamaConfig::tiny().init_random(1, WeightStorage::F32, &Device::flex())?;
/// let config = GenerationConfig::new(SamplingParams::greedy(), 4)?;
/// let prompts = [vec![1, 2, 3]];
/// let runs = sweep_paired(&[Method::Autoregressive], &model, &TokenDraft(&model), &prompts, &config, 1, || {})?;
/// let ((outputs, metrics), baseline) = &runs[0];
/// assert_eq!(outputs[0].len(), 4);
/// // Autoregressive decoding against itself: the same tokens, timed twice.
/// assert_eq!(metrics.generated_tokens, baseline.generated_tokens);
/// # }
/// # Ok::<(), anyhow::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn sweep_paired<T: LanguageModel, S: MakeDrafter<T>>(
    methods: &[Method],
    target: &T,
    draft: &S,
    prompts: &[Vec<usize>],
    config: &GenerationConfig,
    seed: u64,
    on_run: impl FnMut(),
) -> Result<Vec<(MethodResult, Metrics)>> {
    sweep_runs(methods, target, draft, prompts, config, seed, true, on_run)
}

#[allow(clippy::too_many_arguments)]
fn sweep_runs<T: LanguageModel, S: MakeDrafter<T>>(
    methods: &[Method],
    target: &T,
    draft: &S,
    prompts: &[Vec<usize>],
    config: &GenerationConfig,
    seed: u64,
    paired: bool,
    mut on_run: impl FnMut(),
) -> Result<Vec<(MethodResult, Metrics)>> {
    let empty = ((Vec::new(), Metrics::default()), Metrics::default());
    let mut results: Vec<(MethodResult, Metrics)> = vec![empty; methods.len()];
    if let Some(first) = prompts.first() {
        let warm = GenerationConfig::new(*config.sampling(), config.max_new_tokens().min(8))?
            .with_stop_token(config.stop_token());
        for method in methods {
            run_method(method, target, draft, first, &warm, seed)?;
        }
    }
    for (i, prompt) in prompts.iter().enumerate() {
        let seed = seed + i as u64;
        for (method, (slot, base)) in methods.iter().zip(results.iter_mut()) {
            if paired {
                let ar = run_method(&Method::Autoregressive, target, draft, prompt, config, seed)?;
                base.merge(&ar.metrics);
            }
            let out = run_method(method, target, draft, prompt, config, seed)?;
            slot.1.merge(&out.metrics);
            slot.0.extend(out.tokens);
            on_run();
        }
    }
    Ok(results)
}

/// Speed-up over autoregressive decoding that `m`'s counts would give on a
/// machine where a draft call costs `c` target steps and a target pass
/// verifying `j` draft tokens costs `verify.verify(j)` steps (the cost
/// model of Leviathan et al. §3.4, extended with the verify pass's cost by
/// its length, [`PassCosts`]). A count-only replay: the same decoded
/// tokens, re-priced, so that the draft-length policies can be compared
/// without timing noise, and for hardware other than this one
/// ([`PassCosts::linear`]`(0.0)` is a memory-bound accelerator, where
/// verifying a few extra tokens is free).
///
/// Autoregressive decoding costs one step per target call; `m` costs
/// `target_calls + Σ_i n_i·c_v(i) + c·draft_calls`, with `n_i` the rounds
/// that drafted more than `i` tokens and `c_v(i)` what draft token `i + 1`
/// adds to a pass ([`PassCosts::marginal`]; `c_v·drafted` for linear
/// costs). Returns `None` for a run that generated nothing or cost nothing,
/// and for a `c` that is negative or not finite.
///
/// ```
/// use lastmile_examples::sweep::modelled_speedup;
/// use lastmile_spec_decode::{Metrics, PassCosts};
/// let mut m = Metrics::default();
/// m.record_round(4, 3); // 4 drafted, 3 accepted: 4 tokens from one target call
/// m.generated_tokens = 4;
/// m.target_calls = 1;
/// m.draft_calls = 4;
/// // Free verification and free drafting: 4 tokens per step.
/// assert_eq!(modelled_speedup(&m, 0.0, &PassCosts::linear(0.0)?), Some(4.0));
/// // Each extra verified token costing a whole step: 4 tokens for 5 steps.
/// assert_eq!(modelled_speedup(&m, 0.0, &PassCosts::linear(1.0)?), Some(0.8));
/// // Passes over up to 4 tokens cost a step, the 5th token another: 4 tokens for 2 steps.
/// let flat = PassCosts::from_times(&[1.0, 1.0, 1.0, 1.0, 2.0])?;
/// assert_eq!(modelled_speedup(&m, 0.0, &flat), Some(2.0));
/// // The draft cost must be finite and non-negative.
/// assert_eq!(modelled_speedup(&m, -0.1, &flat), None);
/// # Ok::<(), lastmile_spec_decode::SpecDecodeError>(())
/// ```
pub fn modelled_speedup(m: &Metrics, c: f64, verify: &PassCosts) -> Option<f64> {
    if !(c.is_finite() && c >= 0.0) {
        return None;
    }
    let verifying: f64 = m
        .drafted_at
        .iter()
        .enumerate()
        .map(|(i, &n)| n as f64 * verify.marginal(i))
        .sum();
    let cost = m.target_calls as f64 + verifying + c * m.draft_calls as f64;
    (m.generated_tokens > 0 && cost > 0.0).then(|| m.generated_tokens as f64 / cost)
}
