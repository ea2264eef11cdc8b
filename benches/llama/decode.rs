//! Decoding tokens/s of plain and speculative decoding on the real model,
//! for the comparison with llama.cpp in the same run (see the bench's
//! header in `llama.rs`).

use burn::tensor::Tensor;
use criterion::Criterion;
use lastmile_models::llama::{LlamaCache, LlamaFeatureDraftModule, LlamaModule, WeightStorage};

use super::{model_path, open};

/// Runs of each method in [`spec_decode_decode`].
const DECODE_RUNS: usize = 3;

/// `loaded`, or `None` with a note that the rows of `what` (a trained
/// draft, made by the `example`) are skipped.
fn trained<T, E: std::fmt::Display>(loaded: Result<T, E>, what: &str, example: &str) -> Option<T> {
    loaded
        .map_err(|e| {
            println!(
                "the {what}'s rows skipped: no trained {what} ({e}); make it with \
                 `cargo run --release -p lastmile-examples --example {example}`"
            );
        })
        .ok()
}

/// Decoding tokens/s (after the prompt's pass) of plain and speculative
/// decoding with prompt lookup and the trained drafts present, at T = 0 on
/// a chat prompt, for the comparison with llama.cpp's decoding in the same
/// run.
pub(crate) fn spec_decode_decode(_: &mut Criterion) {
    use lastmile_core::numerics::SamplingParams;
    use lastmile_models::tokenizer::{ChatMessage, Tokenizer};
    use lastmile_spec_decode::{
        CostAwareAdaEdl, CostAwareConfig, DraftPolicy, FeatureDrafter, FeatureTap,
        GenerationConfig, HybridDrafter, ModelDrafter, PassCosts, PerSource, PromptLookup,
        SpeculativeDecoder, StaticLength, generate_autoregressive,
    };
    use rand::SeedableRng;

    let device = lastmile_core::default_device().expect("default device");
    let storage = WeightStorage::fastest_on(&device);
    let Some(target) = open(storage, &device) else {
        return;
    };
    let draft_path = model_path().with_file_name("feature-L1-v8192.bpk");
    let draft = trained(
        LlamaFeatureDraftModule::load(&target, 1, Some(8192), &draft_path, &device)
            .and_then(|m| m.to_draft(storage, &device)),
        "feature draft",
        "feature_draft_llm",
    );
    // The distilled token draft (2 blocks, a head over 8 192 tokens), if
    // `distill_llm` saved one: the drafter of a machine without a feature draft.
    let distilled_path = model_path().with_file_name("draft-L2-v8192.bpk");
    let distilled = trained(
        LlamaModule::load_draft(&target, 2, Some(8192), &distilled_path, &device)
            .and_then(|m| m.to_model(storage.for_draft(), &device)),
        "distilled draft",
        "distill_llm",
    );
    let file = lastmile_core::gguf::GgufFile::open(model_path()).expect("gguf");
    let tokenizer = Tokenizer::from_gguf(&file).expect("tokenizer");
    let message = "Explain what a hash map is in two sentences.";
    let prompt = tokenizer
        .encode_chat(&[ChatMessage::new("user", message)], true)
        .expect("chat prompt");
    let config = GenerationConfig::new(SamplingParams::new(0.0).expect("T"), 128).expect("config");
    let tap = FeatureTap::new(&target);
    // The cost-aware policies' costs, in target steps, measured here as
    // spec_decode_llm measures them: passes over 1..=9 tokens after the
    // prompt, and a draft step right after a target step.
    let len = prompt.len();
    let mut tc = target.new_cache(1).expect("cache");
    target
        .forward_cached(&mut tc, std::slice::from_ref(&prompt))
        .expect("prompt");
    // Medians of 15 repetitions, each taking every timed thing in turn,
    // so that the VM's drift between minutes (up to 40 % on the AMD
    // EPYC) falls on all of them alike rather than on whichever was timed
    // last (one timing of a pass at a bad moment had priced 6–9 tokens at
    // 1.8–2.9 steps and closed the untimed policy's gate).
    const REPS: usize = 15;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // A pass over `k` tokens, rolled back; returns its seconds.
    let pass = |tc: &mut LlamaCache, k: usize| {
        let start = std::time::Instant::now();
        std::hint::black_box(
            target
                .forward_cached(tc, &[prompt[..k].to_vec()])
                .expect("pass")
                .into_data(),
        );
        let t = start.elapsed().as_secs_f64();
        tc.truncate(0, len).expect("truncate");
        t
    };
    let mut by_length: Vec<Vec<f64>> = vec![Vec::new(); 9];
    for _ in 0..REPS {
        for (k, times) in by_length.iter_mut().enumerate() {
            times.push(pass(&mut tc, k + 1));
        }
    }
    let pass_times: Vec<f64> = by_length.into_iter().map(median).collect();
    let pass_costs = PassCosts::from_times(&pass_times).expect("pass costs");
    let (one, nine) = (pass_times[0], pass_times[8]);
    // A draft's `(c, c_v)`: its `step` (which rolls itself back) timed as
    // in a round, right after a target step, which evicts the draft's
    // weights from the cache; `c` against that step's own median, timed
    // in the same repetitions.
    let mut draft_costs = |step: &mut dyn FnMut()| {
        let (mut steps, mut drafts) = (Vec::new(), Vec::new());
        for _ in 0..REPS {
            steps.push(pass(&mut tc, 1));
            let start = std::time::Instant::now();
            step();
            drafts.push(start.elapsed().as_secs_f64());
        }
        (
            median(drafts) / median(steps),
            ((nine - one) / 8.0 / one).max(0.0),
        )
    };
    let costs = draft.as_ref().map(|draft| {
        let d = target.config().d_model;
        let mut dc = draft.new_cache(1).expect("cache");
        let zeros = |n: usize| Tensor::<3>::zeros([1, n, d], &device);
        draft
            .forward_conditioned(&mut dc, std::slice::from_ref(&prompt), zeros(prompt.len()))
            .expect("prompt");
        draft_costs(&mut || {
            let (l, f) = draft
                .forward_conditioned(&mut dc, &[vec![42]], zeros(1))
                .expect("step");
            std::hint::black_box((l.into_data(), f.into_data()));
            dc.truncate(0, len).expect("truncate");
        })
    });
    let distilled_costs = distilled.as_ref().map(|draft| {
        let mut dc = draft.new_cache(1).expect("cache");
        draft
            .forward_cached(&mut dc, std::slice::from_ref(&prompt))
            .expect("prompt");
        draft_costs(&mut || {
            let logits = draft.forward_cached(&mut dc, &[vec![42]]).expect("step");
            std::hint::black_box(logits.into_data());
            dc.truncate(0, len).expect("truncate");
        })
    });
    for (name, costs) in [("feature", &costs), ("distilled", &distilled_costs)] {
        if let Some((c, c_v)) = costs {
            println!(
                "{name} draft's costs for cost-aware AdaEDL, in target steps: a draft step c = {c:.3} \
                 (timed right after a target step), each verified token c_v = {c_v:.3}"
            );
        }
    }
    let cost_aware = |(c, c_v): (f64, f64)| -> Box<dyn DraftPolicy> {
        Box::new(CostAwareAdaEdl::new(CostAwareConfig::default(), c, c_v).expect("policy"))
    };
    // The same policy pricing its decisions with the costs the decoder
    // times in the loop (the ones above as the prior): one timing of `c`
    // here, taken at a bad moment, can close the untimed policy's gate.
    let timed = |(c, c_v): (f64, f64)| -> Box<dyn DraftPolicy> {
        let config = CostAwareConfig {
            measure_costs: true,
            ..CostAwareConfig::default()
        };
        Box::new(CostAwareAdaEdl::new(config, c, c_v).expect("policy"))
    };
    // Rows: (name, drafter, policy). Prompt lookup needs no draft, so it
    // and autoregressive decoding are timed on every machine with the model.
    #[derive(Clone, Copy)]
    enum Drafts {
        Lookup,
        Feature,
        Hybrid,
        Distilled,
        DistilledHybrid,
    }
    let mut rows: Vec<(String, Drafts, Box<dyn DraftPolicy>)> = vec![
        (
            "prompt lookup, static γ = 8".to_owned(),
            Drafts::Lookup,
            Box::new(StaticLength::new(8).expect("γ")),
        ),
        // Lookup costs nothing next to a step (c = 0): the measured passes
        // and the copy model's confidence decide.
        (
            "prompt lookup, cost-aware AdaEDL".to_owned(),
            Drafts::Lookup,
            Box::new(
                CostAwareAdaEdl::with_pass_costs(
                    CostAwareConfig::default(),
                    0.0,
                    pass_costs.clone(),
                )
                .expect("policy"),
            ),
        ),
    ];
    // Each trained draft alone, and beside lookup with each source under
    // the policy at its own cost: the draft's rounds at `c`, the looked-up
    // ones at none.
    for (name, costs, alone, hybrid) in [
        ("feature", costs, Drafts::Feature, Drafts::Hybrid),
        (
            "distilled",
            distilled_costs,
            Drafts::Distilled,
            Drafts::DistilledHybrid,
        ),
    ] {
        let Some(costs) = costs else { continue };
        let free =
            CostAwareAdaEdl::with_pass_costs(CostAwareConfig::default(), 0.0, pass_costs.clone())
                .expect("policy");
        rows.push((
            format!("{name} draft, static γ = 1"),
            alone,
            Box::new(StaticLength::new(1).expect("γ")),
        ));
        rows.push((
            format!("{name} draft, cost-aware AdaEDL"),
            alone,
            cost_aware(costs),
        ));
        rows.push((
            format!("{name} draft, timed cost-aware AdaEDL"),
            alone,
            timed(costs),
        ));
        rows.push((
            format!("{name} draft, lookup + cost-aware AdaEDL per source"),
            hybrid,
            Box::new(PerSource::new(cost_aware(costs), Box::new(free))),
        ));
    }
    let mut rates = vec![Vec::new(); 1 + rows.len()];
    let mut rounds = vec![0.0; rows.len()];
    let batch = std::slice::from_ref(&prompt);
    for _ in 0..DECODE_RUNS {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let ar =
            generate_autoregressive(&target, batch, &config, &mut rng).expect("autoregressive");
        rates[0].push(ar.metrics.decode_tokens_per_second());
        for (i, (_, drafts, policy)) in rows.iter().enumerate() {
            let policy = policy.clone();
            let out = match (drafts, &draft) {
                (Drafts::Lookup, _) => {
                    let lookup = PromptLookup::new(1, 3, 10).expect("lookup");
                    SpeculativeDecoder::new(&target, lookup, policy)
                        .expect("decoder")
                        .generate(batch, &config, &mut rng)
                }
                (Drafts::Feature, Some(draft)) => {
                    let drafter = FeatureDrafter::new(&tap, draft).expect("drafter");
                    SpeculativeDecoder::new(&tap, drafter, policy)
                        .expect("decoder")
                        .generate(batch, &config, &mut rng)
                }
                (Drafts::Hybrid, Some(draft)) => {
                    let drafter = FeatureDrafter::new(&tap, draft).expect("drafter");
                    let lookup = PromptLookup::new(2, 3, 10).expect("lookup");
                    let drafter = HybridDrafter::new(lookup, drafter, &device).expect("hybrid");
                    SpeculativeDecoder::new(&tap, drafter, policy)
                        .expect("decoder")
                        .generate(batch, &config, &mut rng)
                }
                (Drafts::Distilled, _) => {
                    let draft = distilled
                        .as_ref()
                        .expect("its rows exist only with the draft");
                    SpeculativeDecoder::new(&target, ModelDrafter::new(draft), policy)
                        .expect("decoder")
                        .generate(batch, &config, &mut rng)
                }
                (Drafts::DistilledHybrid, _) => {
                    let draft = distilled
                        .as_ref()
                        .expect("its rows exist only with the draft");
                    let lookup = PromptLookup::new(2, 3, 10).expect("lookup");
                    let drafter = HybridDrafter::new(lookup, ModelDrafter::new(draft), &device)
                        .expect("hybrid");
                    SpeculativeDecoder::new(&target, drafter, policy)
                        .expect("decoder")
                        .generate(batch, &config, &mut rng)
                }
                (Drafts::Feature | Drafts::Hybrid, None) => {
                    unreachable!("the draft's rows exist only with the draft")
                }
            }
            .expect("speculative");
            assert_eq!(out.tokens, ar.tokens, "T = 0: the same tokens");
            rates[i + 1].push(out.metrics.decode_tokens_per_second());
            rounds[i] = out.metrics.mean_acceptance_length();
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ar = median(&mut rates[0]);
    println!(
        "decoding at T = 0, 128 tokens after a {}-token chat prompt, median of {DECODE_RUNS} \
         alternating runs (tokens/s after the prompt's pass):",
        prompt.len()
    );
    let passes: Vec<String> = (1..9)
        .map(|j| format!("{:.2}", pass_times[j] / one))
        .collect();
    println!(
        "  passes over 2..=9 tokens: {} steps (the cost-aware policies' prices)",
        passes.join(" / ")
    );
    println!("  autoregressive: {ar:.1} tokens/s");
    for (name, costs) in [("feature", costs), ("distilled", distilled_costs)] {
        if let Some((c, c_v)) = costs {
            println!(
                "  {name} draft: a step {c:.3}, one more verified token {c_v:.3} target steps"
            );
        }
    }
    for (i, (name, _, _)) in rows.iter().enumerate() {
        let r = median(&mut rates[i + 1]);
        println!(
            "  speculative, {name}: {r:.1} tokens/s ({:.2}x autoregressive, {:.2} tokens/round)",
            r / ar,
            rounds[i]
        );
    }
}
