//! Statistical exactness tests of speculative sampling, at the level of one
//! verification step (synthetic `p`, `q`) and of whole sequences (exactly
//! enumerable n-gram target and draft models), with negative controls that
//! must fail the same tests. In-crate so the negative control can swap the
//! residual rule, which the public API does not expose.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use burn::tensor::{Device, Tensor, TensorData};
use lastmile_core::backend_test;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::numerics::{SamplingParams, sample_categorical};
use lastmile_core::stats::chi_square_gof;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::verify::{ResidualRule, verify_unchecked};
use crate::*;

mod unit_step;

/// Like `backend_test!`, but only for the CPU backends compiled into
/// lastmile-core. The sequence-level tests draw thousands of whole
/// sequences, each round a device synchronisation; on wgpu over lavapipe
/// (CI's software Vulkan) that took over 15 minutes per test, so they run
/// where the same algorithm runs fast. Every single-step exactness test
/// (`unit_step_is_exact` and its negative control) still runs on wgpu too.
macro_rules! cpu_backend_test {
    ($name:ident, |$device:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[allow(dead_code)]
            fn body($device: &Device) $body

            lastmile_core::__if_flex! {
                #[test]
                fn flex() {
                    lastmile_core::testing::run_on(lastmile_core::Backend::Flex, body);
                }
            }

            lastmile_core::__if_ndarray! {
                #[test]
                fn ndarray() {
                    lastmile_core::testing::run_on(lastmile_core::Backend::NdArray, body);
                }
            }
        }
    };
}

/// Family-wise significance level, split over the cases of a test (Bonferroni).
const ALPHA: f64 = 1e-3;

// ---------------------------------------------------------------------------
// Enumerable n-gram language models.

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Pseudo-random logits in `[-scale, scale]` for a context.
fn hashed_logits(seed: u64, context: &[usize], vocab: usize, scale: f32) -> Vec<f32> {
    let mut h = seed;
    for &t in context {
        h = splitmix(h ^ (t as u64 + 1));
    }
    (0..vocab)
        .map(|i| {
            let r = splitmix(h ^ (0x1000 + i as u64));
            ((r >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A language model whose logits are an explicit function of the last
/// `order - 1` tokens, so every distribution it defines can be enumerated.
pub(crate) struct NGramLm {
    pub vocab: usize,
    /// Tokens of context read (order − 1).
    pub context: usize,
    pub seed: u64,
    pub scale: f32,
    /// Draft-style model: averages the logits of `seed` over the oldest
    /// context token and adds noise of its own, so it resembles the target.
    pub smooth_of: Option<(u64, usize, f32)>,
    pub device: Device,
}

impl NGramLm {
    pub fn target(device: &Device) -> Self {
        Self {
            vocab: 5,
            context: 2,
            seed: 11,
            scale: 2.0,
            smooth_of: None,
            device: device.clone(),
        }
    }

    pub fn draft(device: &Device) -> Self {
        Self {
            vocab: 5,
            context: 1,
            seed: 23,
            scale: 0.7,
            smooth_of: Some((11, 2, 2.0)),
            device: device.clone(),
        }
    }

    pub fn logits(&self, history: &[usize]) -> Vec<f32> {
        let ctx = &history[history.len().saturating_sub(self.context)..];
        let mut l = hashed_logits(self.seed, ctx, self.vocab, self.scale);
        if let Some((seed, ctx_len, scale)) = self.smooth_of {
            let tail = &history[history.len().saturating_sub(ctx_len - 1)..];
            for first in 0..self.vocab {
                let mut c = vec![first];
                c.extend_from_slice(tail);
                let t = hashed_logits(seed, &c, self.vocab, scale);
                for (a, b) in l.iter_mut().zip(t) {
                    *a += b / self.vocab as f32;
                }
            }
        }
        l
    }
}

impl LanguageModel for NGramLm {
    type Cache = Vec<Vec<usize>>;
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn device(&self) -> Device {
        self.device.clone()
    }
    fn new_cache(&self, batch: usize) -> LmResult<Self::Cache> {
        Ok(vec![Vec::new(); batch])
    }
    fn cached_len(&self, cache: &Self::Cache, row: usize) -> usize {
        cache[row].len()
    }
    fn truncate(&self, cache: &mut Self::Cache, row: usize, len: usize) -> LmResult<()> {
        cache[row].truncate(len);
        Ok(())
    }
    fn forward(&self, cache: &mut Self::Cache, tokens: &[Vec<usize>]) -> LmResult<Tensor<3>> {
        let n = tokens.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let v = self.vocab;
        let mut data = vec![0.0f32; tokens.len() * n * v];
        for (b, row) in tokens.iter().enumerate() {
            for (i, &t) in row.iter().enumerate() {
                cache[b].push(t);
                let at = (b * n + i) * v;
                data[at..at + v].copy_from_slice(&self.logits(&cache[b]));
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(data, [tokens.len(), n, v]),
            &self.device,
        ))
    }
}

/// Processed next-token distribution of `lm` after `history`.
fn processed(lm: &NGramLm, history: &[usize], params: &SamplingParams) -> Vec<f64> {
    let l = Tensor::<2>::from_data(
        TensorData::new(lm.logits(history), [1, lm.vocab]),
        &lm.device,
    );
    tensor_to_vec(params.probabilities(l).unwrap())
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// Exact joint distribution of the first `k` generated tokens (index = base-V number).
fn exact_joint(lm: &NGramLm, prompt: &[usize], k: usize, params: &SamplingParams) -> Vec<f64> {
    let v = lm.vocab;
    let mut memo: HashMap<Vec<usize>, Vec<f64>> = HashMap::new();
    let mut joint = vec![0.0; v.pow(k as u32)];
    for (code, slot) in joint.iter_mut().enumerate() {
        let mut hist = prompt.to_vec();
        let mut prob = 1.0;
        let mut c = code;
        let mut toks = vec![0; k];
        for t in toks.iter_mut().rev() {
            *t = c % v;
            c /= v;
        }
        for &t in &toks {
            let dist = memo
                .entry(hist.clone())
                .or_insert_with(|| processed(lm, &hist, params));
            prob *= dist[t];
            hist.push(t);
        }
        *slot = prob;
    }
    let total: f64 = joint.iter().sum();
    joint.iter().map(|p| p / total).collect()
}

fn joint_counts(tokens: &[Vec<usize>], v: usize, k: usize) -> Vec<u64> {
    let mut counts = vec![0u64; v.pow(k as u32)];
    for t in tokens {
        let code = t[..k].iter().fold(0, |acc, &x| acc * v + x);
        counts[code] += 1;
    }
    counts
}

fn policies() -> Vec<Box<dyn DraftPolicy>> {
    vec![
        Box::new(StaticLength::new(3).unwrap()),
        Box::new(HeuristicSchedule::new(2, 6).unwrap()),
        Box::new(MaxConfidence::new(0.5, 6).unwrap()),
        Box::new(
            AdaEdl::new(AdaEdlConfig {
                max_len: 6,
                ..AdaEdlConfig::default()
            })
            .unwrap(),
        ),
        Box::new(CostModel::new(0.3, 0.6, 0.5, 6).unwrap()),
        // May skip a round's drafting altogether (bound 0.45 <=> H <= 1.51 nats).
        Box::new(
            AdaEdl::new(AdaEdlConfig {
                max_len: 6,
                min_len: 0,
                lambda0: 0.45,
                ..AdaEdlConfig::default()
            })
            .unwrap(),
        ),
        // Declines tokens by cost, and skips whole rounds (no draft step)
        // while its acceptance estimate says speculation does not pay: it
        // starts at 0, so the first rounds skip, then probes reopen.
        Box::new(
            CostAwareAdaEdl::new(
                CostAwareConfig {
                    max_len: 6,
                    probe_every: 2,
                    initial_acceptance: 0.0,
                    ..CostAwareConfig::default()
                },
                0.1,
                0.1,
            )
            .unwrap(),
        ),
    ]
}

const PROMPT: [usize; 7] = [0, 1, 2, 3, 4, 0, 1];

/// Where a sequence test's drafts come from.
#[derive(Clone, Copy, Debug)]
enum Source {
    Model,
    Lookup,
    /// Lookup where a bigram recurs, the draft model elsewhere.
    Hybrid,
}

/// p-value of the first three tokens of `n` speculative samples against the exact joint.
fn sequence_p_value(
    device: &Device,
    policy: Box<dyn DraftPolicy>,
    source: Source,
    temperature: f64,
    rule: ResidualRule,
    n: usize,
    seed: u64,
) -> f64 {
    let target = NGramLm::target(device);
    let draft = NGramLm::draft(device);
    let params = SamplingParams::new(temperature).unwrap();
    // Six tokens so that drafts can run past the three tokens tested.
    let config = GenerationConfig::new(params, 6).unwrap();
    let prompts = vec![PROMPT.to_vec(); n];
    let mut rng = StdRng::seed_from_u64(seed);
    let out = match source {
        Source::Lookup => {
            let mut dec =
                SpeculativeDecoder::new(&target, PromptLookup::new(1, 3, 8).unwrap(), policy)
                    .unwrap();
            dec.set_rule(rule);
            dec.generate(&prompts, &config, &mut rng).unwrap()
        }
        Source::Model => {
            let mut dec =
                SpeculativeDecoder::new(&target, ModelDrafter::new(&draft), policy).unwrap();
            dec.set_rule(rule);
            dec.generate(&prompts, &config, &mut rng).unwrap()
        }
        Source::Hybrid => {
            let lookup = PromptLookup::new(2, 3, 8).unwrap();
            let drafter = HybridDrafter::new(lookup, ModelDrafter::new(&draft), device).unwrap();
            let mut dec = SpeculativeDecoder::new(&target, drafter, policy).unwrap();
            dec.set_rule(rule);
            let out = dec.generate(&prompts, &config, &mut rng).unwrap();
            let d = dec.drafter();
            assert!(
                d.looked_up_rounds() > 0 && d.model_rounds() > 0,
                "the hybrid used one source only ({} looked up, {} drafted)",
                d.looked_up_rounds(),
                d.model_rounds()
            );
            out
        }
    };
    let m = &out.metrics;
    assert!(
        m.drafted > 0,
        "no drafts: the test would not exercise verification"
    );
    assert!(
        m.accepted < m.drafted,
        "no rejections: the test would not exercise resampling"
    );
    eprintln!(
        "mean draft length {:.2}, acceptance {:.2}, rounds without a draft {}",
        m.mean_draft_length(),
        m.acceptance_rate(),
        m.rounds - m.drafted_at.first().copied().unwrap_or(0)
    );
    let expected = exact_joint(&target, &PROMPT, 3, &params);
    chi_square_gof(&joint_counts(&out.tokens, 5, 3), &expected)
        .unwrap()
        .p_value
}

// ---------------------------------------------------------------------------
// Sequence level: joint law of the first three tokens under every policy.

// The reference sampler itself passes (sanity check of the harness).
backend_test!(autoregressive_matches_enumeration, |device| {
    let target = NGramLm::target(device);
    let params = SamplingParams::new(1.0).unwrap();
    let config = GenerationConfig::new(params, 3).unwrap();
    let prompts = vec![PROMPT.to_vec(); 20_000];
    let out =
        generate_autoregressive(&target, &prompts, &config, &mut StdRng::seed_from_u64(5)).unwrap();
    let expected = exact_joint(&target, &PROMPT, 3, &params);
    let t = chi_square_gof(&joint_counts(&out.tokens, 5, 3), &expected).unwrap();
    assert!(t.p_value > ALPHA, "p-value {}", t.p_value);
});

cpu_backend_test!(
    sequences_are_exact_for_every_policy_and_temperature,
    |device| {
        let temps = [0.5, 1.0, 1.5];
        let n_cases = temps.len() * (policies().len() + 2);
        let level = ALPHA / n_cases as f64;
        let mut seed = 1000;
        for &t in &temps {
            for policy in policies() {
                seed += 1;
                let name = policy.name();
                let p = sequence_p_value(
                    device,
                    policy,
                    Source::Model,
                    t,
                    ResidualRule::Exact,
                    20_000,
                    seed,
                );
                eprintln!("draft model, {name}, T = {t}: p-value {p:.4}");
                assert!(p > level, "draft model, {name}, T = {t}: p-value {p}");
            }
            seed += 1;
            let policy = Box::new(HeuristicSchedule::new(2, 6).unwrap());
            let p = sequence_p_value(
                device,
                policy,
                Source::Lookup,
                t,
                ResidualRule::Exact,
                20_000,
                seed,
            );
            assert!(p > level, "prompt lookup, T = {t}: p-value {p}");
            seed += 1;
            // Each source's rounds under a policy of its own.
            let policy = Box::new(PerSource::new(
                Box::new(AdaEdl::new(AdaEdlConfig::default()).unwrap()),
                Box::new(HeuristicSchedule::new(2, 6).unwrap()),
            ));
            let p = sequence_p_value(
                device,
                policy,
                Source::Hybrid,
                t,
                ResidualRule::Exact,
                20_000,
                seed,
            );
            assert!(
                p > level,
                "hybrid lookup + draft model, T = {t}: p-value {p}"
            );
        }
    }
);

cpu_backend_test!(sequence_negative_control_is_rejected, |device| {
    let temps = [0.5, 1.0, 1.5];
    let level = ALPHA / (temps.len() * 6) as f64;
    for (i, &t) in temps.iter().enumerate() {
        let policy = Box::new(StaticLength::new(3).unwrap());
        let p = sequence_p_value(
            device,
            policy,
            Source::Model,
            t,
            ResidualRule::DraftDistribution,
            20_000,
            77 + i as u64,
        );
        assert!(p < level, "biased sampler passed at T = {t}: p-value {p}");
    }
});

// ---------------------------------------------------------------------------
// Greedy: token-for-token equal to target-only greedy decoding.

mod decoding;
