//! Whole decodings: greedy speculative decoding gives the target's greedy
//! tokens under every policy, host sampling decodes what the tensor path
//! decodes, AdaEDL's zero-minimum variant, and the metrics' counts.

use super::*;

fn random_prompts(n: usize, seed: u64) -> Vec<Vec<usize>> {
    (0..n as u64)
        .map(|i| {
            let len = 1 + (splitmix(seed ^ i) % 9) as usize;
            (0..len as u64)
                .map(|j| (splitmix(seed ^ (i << 8) ^ j) % 5) as usize)
                .collect()
        })
        .collect()
}

backend_test!(greedy_equals_target_greedy_for_every_policy, |device| {
    let target = NGramLm::target(device);
    let draft = NGramLm::draft(device);
    let prompts = random_prompts(120, 9);
    let config = GenerationConfig::new(SamplingParams::greedy(), 24).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let reference = generate_autoregressive(&target, &prompts, &config, &mut rng).unwrap();
    for policy in policies() {
        let name = policy.name();
        let mut dec =
            SpeculativeDecoder::new(&target, ModelDrafter::new(&draft), policy.clone()).unwrap();
        let out = dec.generate(&prompts, &config, &mut rng).unwrap();
        assert_eq!(out.tokens, reference.tokens, "draft model, {name}");
        assert!(out.metrics.accepted > 0, "{name}: nothing accepted");
        let mut dec =
            SpeculativeDecoder::new(&target, PromptLookup::new(1, 3, 8).unwrap(), policy.clone())
                .unwrap();
        let out = dec.generate(&prompts, &config, &mut rng).unwrap();
        assert_eq!(out.tokens, reference.tokens, "prompt lookup, {name}");
        let lookup = PromptLookup::new(2, 3, 8).unwrap();
        let hybrid = HybridDrafter::new(lookup, ModelDrafter::new(&draft), device).unwrap();
        let mut dec = SpeculativeDecoder::new(&target, hybrid, policy).unwrap();
        let out = dec.generate(&prompts, &config, &mut rng).unwrap();
        assert_eq!(out.tokens, reference.tokens, "hybrid, {name}");
        let d = dec.drafter();
        assert!(
            d.looked_up_rounds() > 0 && d.model_rounds() > 0,
            "hybrid, {name}: one source only"
        );
    }
    // The hybrid per source: AdaEDL for the model, cost-aware AdaEDL at c = 0 for lookup.
    let free = Box::new(CostAwareAdaEdl::new(CostAwareConfig::default(), 0.0, 0.1).unwrap());
    let policy = Box::new(PerSource::new(policies().remove(3), free));
    let lookup = PromptLookup::new(2, 3, 8).unwrap();
    let hybrid = HybridDrafter::new(lookup, ModelDrafter::new(&draft), device).unwrap();
    let mut dec = SpeculativeDecoder::new(&target, hybrid, policy).unwrap();
    let out = dec.generate(&prompts, &config, &mut rng).unwrap();
    assert_eq!(out.tokens, reference.tokens, "hybrid, per source");
    // One sequence at a time gives the same as the batch.
    let mut dec =
        SpeculativeDecoder::new(&target, ModelDrafter::new(&draft), policies().remove(3)).unwrap();
    for (p, expected) in prompts.iter().zip(&reference.tokens).take(10) {
        let out = dec
            .generate(std::slice::from_ref(p), &config, &mut rng)
            .unwrap();
        assert_eq!(&out.tokens[0], expected);
    }
});

cpu_backend_test!(host_sampling_decodes_the_tensor_paths_tokens, |device| {
    // On a CPU device sampled rounds are decided on host rows
    // (crate::sampled); an autodiff device takes the tensor operations.
    // Same seeds, same tokens: the distributions and the draws agree bit
    // for bit, for the baseline, a sampling drafter, a deterministic one and
    // the hybrid, in ragged batches (rows of different draft lengths).
    let tensor_path = device.clone().autodiff();
    let prompts = random_prompts(12, 4);
    let decode = |d: &Device, how: usize, t: f64| {
        let (target, draft) = (NGramLm::target(d), NGramLm::draft(d));
        let config = GenerationConfig::new(SamplingParams::new(t).unwrap(), 16).unwrap();
        let mut rng = StdRng::seed_from_u64(17);
        let policy = policies().remove(3);
        let out = match how {
            0 => generate_autoregressive(&target, &prompts, &config, &mut rng),
            1 => SpeculativeDecoder::new(&target, ModelDrafter::new(&draft), policy)
                .and_then(|mut s| s.generate(&prompts, &config, &mut rng)),
            2 => SpeculativeDecoder::new(&target, PromptLookup::new(1, 3, 8).unwrap(), policy)
                .and_then(|mut s| s.generate(&prompts, &config, &mut rng)),
            _ => {
                let lookup = PromptLookup::new(2, 3, 8).unwrap();
                let hybrid = HybridDrafter::new(lookup, ModelDrafter::new(&draft), d).unwrap();
                SpeculativeDecoder::new(&target, hybrid, policy)
                    .and_then(|mut s| s.generate(&prompts, &config, &mut rng))
            }
        };
        out.unwrap().tokens
    };
    for t in [0.7, 1.0] {
        for how in 0..4 {
            let here = decode(device, how, t);
            assert_eq!(here, decode(&tensor_path, how, t), "T {t}, decoder {how}");
            assert!(here.iter().all(|r| r.len() == 16));
        }
    }
});

backend_test!(adaedl_min0_skips_uncertain_rounds, |device| {
    let target = NGramLm::target(device);
    let draft = NGramLm::draft(device);
    let prompts = random_prompts(16, 5);
    let config = GenerationConfig::new(SamplingParams::new(1.0).unwrap(), 20).unwrap();
    let run = |lambda0: f64, min_len: usize| {
        let policy = AdaEdl::new(AdaEdlConfig {
            lambda0,
            min_len,
            ..AdaEdlConfig::default()
        })
        .unwrap();
        let mut dec =
            SpeculativeDecoder::new(&target, ModelDrafter::new(&draft), Box::new(policy)).unwrap();
        dec.generate(&prompts, &config, &mut StdRng::seed_from_u64(2))
            .unwrap()
            .metrics
    };
    // Bound 1 - sqrt(0.2 H) never reaches 0.999 here: min_len 1 still drafts
    // one token per round, min_len 0 never drafts (plain target steps).
    let one = run(0.999, 1);
    assert!(one.drafted > 0 && one.drafted_at.len() == 1);
    let zero = run(0.999, 0);
    assert_eq!(zero.drafted, 0);
    assert_eq!(zero.rounds, 16 * 20);
    // In between, some rounds are skipped and some drafted.
    // In between, some rounds are skipped (beyond the undrafted rounds at the
    // length limit, which min_len 1 has too) and some drafted.
    let undrafted = |m: &Metrics| m.rounds - m.drafted_at.first().copied().unwrap_or(0);
    let (some, base) = (run(0.5, 0), run(0.5, 1));
    assert!(some.drafted > 0 && undrafted(&some) > undrafted(&base) + 20);
    assert_eq!(some.generated_tokens, 16 * 20);
});

backend_test!(metrics_are_consistent, |device| {
    let target = NGramLm::target(device);
    let draft = NGramLm::draft(device);
    let prompts = random_prompts(16, 4);
    let config = GenerationConfig::new(SamplingParams::new(1.0).unwrap(), 20).unwrap();
    let mut dec = SpeculativeDecoder::new(
        &target,
        ModelDrafter::new(&draft),
        Box::new(StaticLength::new(4).unwrap()),
    )
    .unwrap();
    let out = dec
        .generate(&prompts, &config, &mut StdRng::seed_from_u64(1))
        .unwrap();
    let m = &out.metrics;
    assert_eq!(m.generated_tokens, 16 * 20);
    assert!(out.tokens.iter().all(|t| t.len() == 20));
    assert_eq!(m.target_calls, m.rounds);
    assert!(m.accepted <= m.drafted && m.acceptance_rate() > 0.0);
    // Counts per position can only fall: position i + 1 is accepted only after i is.
    assert!(m.drafted_at.windows(2).all(|w| w[0] >= w[1]));
    assert!(m.accepted_at.windows(2).all(|w| w[0] >= w[1]));
    assert_eq!(m.accepted_at.iter().sum::<u64>(), m.accepted);
    assert_eq!(m.drafted_at.iter().sum::<u64>(), m.drafted);
    assert!(m.per_position_acceptance().len() <= 4);
    assert!(m.target_calls_per_token() < 1.0);
    // Static-4 drafts 4 tokens unless the length limit is near: about 4 draft calls per round.
    assert!(m.draft_calls as f64 <= 4.0 * m.rounds as f64);
});
