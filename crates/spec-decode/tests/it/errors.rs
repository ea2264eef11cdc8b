#![allow(clippy::unwrap_used)]
//! Bad inputs give typed errors, never panics.

use burn::tensor::{Device, Tensor, TensorData};
use lastmile_core::CoreError;
use lastmile_core::backend_test;
use lastmile_core::numerics::SamplingParams;
use lastmile_spec_decode::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Context-free model with fixed logits (possibly NaN) and a context limit;
/// `fail` makes every forward fail with the model's own error.
struct Fixed {
    logits: Vec<f32>,
    context: usize,
    fail: bool,
    device: Device,
}

impl LanguageModel for Fixed {
    type Cache = Vec<usize>;
    fn vocab_size(&self) -> usize {
        self.logits.len()
    }
    fn device(&self) -> Device {
        self.device.clone()
    }
    fn max_context(&self) -> usize {
        self.context
    }
    fn new_cache(&self, batch: usize) -> LmResult<Vec<usize>> {
        Ok(vec![0; batch])
    }
    fn cached_len(&self, c: &Vec<usize>, row: usize) -> usize {
        c[row]
    }
    fn truncate(&self, c: &mut Vec<usize>, row: usize, len: usize) -> LmResult<()> {
        c[row] = c[row].min(len);
        Ok(())
    }
    fn forward(&self, c: &mut Vec<usize>, tokens: &[Vec<usize>]) -> LmResult<Tensor<3>> {
        if self.fail {
            return Err(LmError::Model("the model's weights are gone".into()));
        }
        let n = tokens.iter().map(Vec::len).max().unwrap_or(0).max(1);
        for (l, t) in c.iter_mut().zip(tokens) {
            *l += t.len();
        }
        let data: Vec<f32> = (0..tokens.len() * n)
            .flat_map(|_| self.logits.clone())
            .collect();
        Ok(Tensor::from_data(
            TensorData::new(data, [tokens.len(), n, self.logits.len()]),
            &self.device,
        ))
    }
}

fn lm(logits: Vec<f32>, device: &Device) -> Fixed {
    Fixed {
        logits,
        context: 64,
        fail: false,
        device: device.clone(),
    }
}

fn policy() -> Box<dyn DraftPolicy> {
    Box::new(StaticLength::new(3).unwrap())
}

backend_test!(bad_generation_inputs, |device| {
    let target = lm(vec![0.0, 1.0, 2.0], device);
    let draft = lm(vec![0.5, 1.0, 1.5], device);
    let config = GenerationConfig::new(SamplingParams::new(1.0).unwrap(), 8).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let mut dec = SpeculativeDecoder::new(&target, ModelDrafter::new(&draft), policy()).unwrap();

    assert!(matches!(
        dec.generate(&[], &config, &mut rng),
        Err(SpecDecodeError::NoPrompts)
    ));
    assert!(matches!(
        dec.generate(&[vec![1], vec![]], &config, &mut rng),
        Err(SpecDecodeError::EmptyPrompt { row: 1 })
    ));
    assert!(matches!(
        dec.generate(&[vec![1, 7]], &config, &mut rng),
        Err(SpecDecodeError::TokenOutOfRange {
            token: 7,
            position: 1,
            vocab: 3,
            ..
        })
    ));
    let long = GenerationConfig::new(SamplingParams::greedy(), 60).unwrap();
    assert!(matches!(
        dec.generate(&[vec![0; 10]], &long, &mut rng),
        Err(SpecDecodeError::ContextOverflow {
            needed: 69,
            max: 64,
            ..
        })
    ));

    // Vocabulary mismatch between draft and target.
    let small = lm(vec![0.0, 1.0], device);
    assert!(matches!(
        SpeculativeDecoder::new(&target, ModelDrafter::new(&small), policy()),
        Err(SpecDecodeError::VocabMismatch {
            target: 3,
            draft: 2
        })
    ));

    // NaN logits from either model.
    let nan = lm(vec![0.0, f32::NAN, 1.0], device);
    let mut dec_nan_target =
        SpeculativeDecoder::new(&nan, ModelDrafter::new(&draft), policy()).unwrap();
    assert!(matches!(
        dec_nan_target.generate(&[vec![0]], &config, &mut rng),
        Err(SpecDecodeError::Core(CoreError::NonFinite { .. }))
    ));
    let mut dec_nan_draft =
        SpeculativeDecoder::new(&target, ModelDrafter::new(&nan), policy()).unwrap();
    assert!(matches!(
        dec_nan_draft.generate(&[vec![0]], &config, &mut rng),
        Err(SpecDecodeError::Core(CoreError::NonFinite { .. }))
    ));
    assert!(matches!(
        generate_autoregressive(&nan, &[vec![0]], &config, &mut rng),
        Err(SpecDecodeError::Core(CoreError::NonFinite { .. }))
    ));
    // Fully masked rows (every logit -inf), sampling and greedy.
    let masked = lm(vec![f32::NEG_INFINITY; 3], device);
    let greedy = GenerationConfig::new(SamplingParams::greedy(), 8).unwrap();
    for config in [&config, &greedy] {
        let mut dec =
            SpeculativeDecoder::new(&masked, ModelDrafter::new(&draft), policy()).unwrap();
        assert!(matches!(
            dec.generate(&[vec![0]], config, &mut rng),
            Err(SpecDecodeError::Core(CoreError::NotAProbability { .. }))
        ));
        let mut dec =
            SpeculativeDecoder::new(&target, ModelDrafter::new(&masked), policy()).unwrap();
        assert!(matches!(
            dec.generate(&[vec![0]], config, &mut rng),
            Err(SpecDecodeError::Core(CoreError::NotAProbability { .. }))
        ));
        let mut dec =
            SpeculativeDecoder::new(&masked, PromptLookup::new(1, 2, 4).unwrap(), policy())
                .unwrap();
        assert!(matches!(
            dec.generate(&[vec![0, 1, 0]], config, &mut rng),
            Err(SpecDecodeError::Core(CoreError::NotAProbability { .. }))
        ));
        assert!(matches!(
            generate_autoregressive(&masked, &[vec![0]], config, &mut rng),
            Err(SpecDecodeError::Core(CoreError::NotAProbability { .. }))
        ));
    }
    // A model's own failure travels as SpecDecodeError::Lm, from either model.
    let failing = Fixed {
        fail: true,
        ..lm(vec![0.0, 1.0, 2.0], device)
    };
    let mut dec = SpeculativeDecoder::new(&failing, ModelDrafter::new(&draft), policy()).unwrap();
    assert!(matches!(
        dec.generate(&[vec![0]], &config, &mut rng),
        Err(SpecDecodeError::Lm(LmError::Model(_)))
    ));
    let mut dec = SpeculativeDecoder::new(&target, ModelDrafter::new(&failing), policy()).unwrap();
    assert!(matches!(
        dec.generate(&[vec![0]], &config, &mut rng),
        Err(SpecDecodeError::Lm(LmError::Model(_)))
    ));
    assert!(matches!(
        generate_autoregressive(&failing, &[vec![0]], &config, &mut rng),
        Err(SpecDecodeError::Lm(LmError::Model(_)))
    ));
});

/// A drafter that breaks its contract in the way given.
enum Broken {
    /// Returns one draft too few.
    MissingDraft,
    /// Not deterministic, but gives no `q`.
    NoQ,
    /// Gives `q` of the wrong shape.
    WrongQ,
}

impl Drafter for Broken {
    fn vocab_size(&self) -> Option<usize> {
        Some(3)
    }
    fn is_deterministic(&self) -> bool {
        false
    }
    fn reset(&mut self, _batch: usize) -> Result<()> {
        Ok(())
    }
    fn propose<R: Rng + ?Sized>(
        &mut self,
        requests: &mut [Option<DraftRequest<'_>>],
        _sampling: &SamplingParams,
        _rng: &mut R,
    ) -> Result<Vec<Draft>> {
        let device = Device::default();
        let q = match self {
            Broken::WrongQ => Some(Tensor::<2>::ones([2, 4], &device) / 4.0),
            _ => None,
        };
        let n = match self {
            Broken::MissingDraft => requests.len() - 1,
            _ => requests.len(),
        };
        Ok(vec![
            Draft {
                tokens: vec![1, 2],
                q,
                model_calls: 0,
            };
            n
        ])
    }
}

backend_test!(broken_drafters_give_typed_errors, |device| {
    let target = lm(vec![0.0, 1.0, 2.0], device);
    let config = GenerationConfig::new(SamplingParams::new(1.0).unwrap(), 8).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let prompts = [vec![0], vec![1]];
    let run = |drafter: Broken, rng: &mut StdRng| {
        SpeculativeDecoder::new(&target, drafter, policy())
            .unwrap()
            .generate(&prompts, &config, rng)
    };
    assert!(matches!(
        run(Broken::MissingDraft, &mut rng),
        Err(SpecDecodeError::Core(CoreError::LengthMismatch {
            expected: 2,
            found: 1,
            ..
        }))
    ));
    assert!(matches!(
        run(Broken::NoQ, &mut rng),
        Err(SpecDecodeError::Core(CoreError::ShapeMismatch { .. }))
    ));
    assert!(matches!(
        run(Broken::WrongQ, &mut rng),
        Err(SpecDecodeError::Core(CoreError::ShapeMismatch { .. }))
    ));
    // A model drafter used before `reset`, or with another batch size.
    let draft = lm(vec![0.5, 1.0, 1.5], device);
    let mut drafter = ModelDrafter::new(&draft);
    let mut p = StaticLength::new(2).unwrap();
    let context = [0usize];
    let mut requests = [Some(DraftRequest {
        context: &context,
        limit: 2,
        policy: &mut p,
    })];
    let sampling = SamplingParams::new(1.0).unwrap();
    assert!(matches!(
        drafter.propose(&mut requests, &sampling, &mut rng),
        Err(SpecDecodeError::Lm(LmError::Batch { found: 1, .. }))
    ));
    drafter.reset(2).unwrap();
    assert!(matches!(
        drafter.propose(&mut requests, &sampling, &mut rng),
        Err(SpecDecodeError::Lm(LmError::Batch { found: 1, .. }))
    ));
});

/// Whether `r` is an out-of-range error for the parameter `name`.
fn out_of_range<T: std::fmt::Debug>(r: Result<T>, name: &str) -> bool {
    match r {
        Err(SpecDecodeError::Core(CoreError::OutOfRange { name: n, .. })) => n == name,
        other => panic!("expected OutOfRange for `{name}`, got {other:?}"),
    }
}

#[test]
fn bad_parameters() {
    assert!(matches!(
        SamplingParams::new(-0.5),
        Err(CoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        SamplingParams::new(1.0).unwrap().with_top_p(0.0),
        Err(CoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        SamplingParams::new(1.0).unwrap().with_top_p(1.5),
        Err(CoreError::OutOfRange { .. })
    ));
    assert!(out_of_range(
        GenerationConfig::new(SamplingParams::greedy(), 0),
        "max_new_tokens"
    ));
    assert!(out_of_range(StaticLength::new(0), "gamma"));
    assert!(out_of_range(HeuristicSchedule::new(0, 4), "initial"));
    assert!(out_of_range(HeuristicSchedule::new(2, 0), "max_len"));
    assert!(out_of_range(MaxConfidence::new(1.5, 4), "threshold"));
    assert!(out_of_range(MaxConfidence::new(f64::NAN, 4), "threshold"));
    assert!(out_of_range(MaxConfidence::new(0.5, 0), "max_len"));
    let ada = |c: AdaEdlConfig| AdaEdl::new(c);
    let d = AdaEdlConfig::default();
    assert!(out_of_range(
        ada(AdaEdlConfig { gamma: -1.0, ..d }),
        "gamma"
    ));
    assert!(out_of_range(ada(AdaEdlConfig { gamma: 0.0, ..d }), "gamma"));
    assert!(out_of_range(
        ada(AdaEdlConfig { lambda0: 1.1, ..d }),
        "lambda0"
    ));
    assert!(out_of_range(ada(AdaEdlConfig { beta1: 1.5, ..d }), "beta1"));
    assert!(out_of_range(
        ada(AdaEdlConfig { beta2: -0.1, ..d }),
        "beta2"
    ));
    assert!(out_of_range(
        ada(AdaEdlConfig {
            alpha: f64::NAN,
            ..d
        }),
        "alpha"
    ));
    assert!(out_of_range(
        ada(AdaEdlConfig {
            epsilon: -0.01,
            ..d
        }),
        "epsilon"
    ));
    assert!(out_of_range(
        ada(AdaEdlConfig { max_len: 0, ..d }),
        "max_len"
    ));
    assert!(out_of_range(
        ada(AdaEdlConfig { min_len: 2, ..d }),
        "min_len"
    ));
    assert!(out_of_range(CostModel::new(0.0, 0.5, 0.5, 4), "cost_ratio"));
    assert!(out_of_range(
        CostModel::new(0.1, 1.5, 0.5, 4),
        "initial_acceptance"
    ));
    assert!(out_of_range(CostModel::new(0.1, 0.5, 1.0, 4), "beta"));
    assert!(out_of_range(CostModel::new(0.1, 0.5, 0.5, 0), "max_len"));
    assert!(out_of_range(
        CostModel::new(0.1, 0.5, 0.5, 4)
            .unwrap()
            .with_verify_cost(-1.0),
        "verify_cost"
    ));
    assert!(out_of_range(PromptLookup::new(0, 2, 4), "min_ngram"));
    assert!(out_of_range(PromptLookup::new(3, 2, 4), "max_ngram"));
    assert!(out_of_range(PromptLookup::new(1, 2, 0), "max_tokens"));
    // Valid edges are accepted.
    assert!(MaxConfidence::new(0.0, 1).is_ok() && MaxConfidence::new(1.0, 1).is_ok());
    assert!(CostModel::new(0.1, 0.0, 0.0, 1).is_ok());
    assert!(
        AdaEdl::new(AdaEdlConfig {
            min_len: 0,
            epsilon: 0.0,
            ..d
        })
        .is_ok()
    );
}

backend_test!(bad_verification_inputs, |device| {
    let mut rng = StdRng::seed_from_u64(0);
    let p = Tensor::<3>::from_floats([[[0.5, 0.5], [0.5, 0.5]]], device);
    let q = Tensor::<3>::from_floats([[[0.5, 0.5]]], device);
    // Draft longer than G.
    assert!(matches!(
        verify_drafts(p.clone(), Some(q.clone()), &[vec![0, 1]], false, &mut rng),
        Err(SpecDecodeError::Core(CoreError::ShapeMismatch { .. }))
    ));
    // Token out of range.
    assert!(matches!(
        verify_drafts(p.clone(), Some(q.clone()), &[vec![5]], false, &mut rng),
        Err(SpecDecodeError::TokenOutOfRange { token: 5, .. })
    ));
    // q of the wrong shape.
    let q_bad = Tensor::<3>::from_floats([[[0.5, 0.5], [0.5, 0.5]]], device);
    assert!(matches!(
        verify_drafts(p.clone(), Some(q_bad), &[vec![0]], false, &mut rng),
        Err(SpecDecodeError::Core(CoreError::ShapeMismatch { .. }))
    ));
    // p not a distribution; NaN in p or q.
    let p_bad = Tensor::<3>::from_floats([[[0.9, 0.5], [0.5, 0.5]]], device);
    assert!(matches!(
        verify_drafts(p_bad, Some(q.clone()), &[vec![0]], false, &mut rng),
        Err(SpecDecodeError::Core(CoreError::NotAProbability {
            row: 0,
            ..
        }))
    ));
    let p_nan = Tensor::<3>::from_floats([[[0.5, 0.5], [f32::NAN, 0.5]]], device);
    assert!(matches!(
        verify_drafts(p_nan, None, &[vec![0]], true, &mut rng),
        Err(SpecDecodeError::Core(CoreError::NonFinite { index: 2, .. }))
    ));
    let q_nan = Tensor::<3>::from_floats([[[f32::NAN, 0.5]]], device);
    assert!(matches!(
        verify_drafts(p.clone(), Some(q_nan), &[vec![0]], false, &mut rng),
        Err(SpecDecodeError::Core(CoreError::NonFinite { index: 0, .. }))
    ));
    // One draft list per row.
    assert!(matches!(
        verify_drafts(p, Some(q), &[vec![0], vec![1]], false, &mut rng),
        Err(SpecDecodeError::Core(CoreError::LengthMismatch {
            expected: 1,
            found: 2,
            ..
        }))
    ));
    // Empty target.
    assert!(matches!(
        verify_drafts(
            Tensor::<3>::zeros([0, 1, 2], device),
            None,
            &[],
            false,
            &mut rng
        ),
        Err(SpecDecodeError::Core(CoreError::ShapeMismatch { .. }))
    ));
});
