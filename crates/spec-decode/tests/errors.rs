#![allow(clippy::unwrap_used)]
//! Bad inputs give typed errors, never panics.

use burn::tensor::{Device, Tensor, TensorData};
use lastmile_core::CoreError;
use lastmile_core::backend_test;
use lastmile_core::numerics::SamplingParams;
use lastmile_spec_decode::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Context-free model with fixed logits (possibly NaN) and a context limit.
struct Fixed {
    logits: Vec<f32>,
    context: usize,
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
    fn new_cache(&self, batch: usize) -> Result<Vec<usize>> {
        Ok(vec![0; batch])
    }
    fn cached_len(&self, c: &Vec<usize>, row: usize) -> usize {
        c[row]
    }
    fn truncate(&self, c: &mut Vec<usize>, row: usize, len: usize) -> Result<()> {
        c[row] = c[row].min(len);
        Ok(())
    }
    fn forward(&self, c: &mut Vec<usize>, tokens: &[Vec<usize>]) -> Result<Tensor<3>> {
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
});

#[test]
fn bad_parameters() {
    assert!(matches!(
        SamplingParams::new(-0.5),
        Err(CoreError::OutOfRange { .. })
    ));
    assert!(SamplingParams::new(1.0).unwrap().with_top_p(0.0).is_err());
    assert!(SamplingParams::new(1.0).unwrap().with_top_p(1.5).is_err());
    assert!(matches!(
        GenerationConfig::new(SamplingParams::greedy(), 0),
        Err(SpecDecodeError::Core(CoreError::OutOfRange { .. }))
    ));
    assert!(StaticLength::new(0).is_err());
    assert!(HeuristicSchedule::new(0, 4).is_err());
    assert!(MaxConfidence::new(1.5, 4).is_err());
    assert!(MaxConfidence::new(f64::NAN, 4).is_err());
    assert!(
        AdaEdl::new(AdaEdlConfig {
            gamma: -1.0,
            ..AdaEdlConfig::default()
        })
        .is_err()
    );
    assert!(
        AdaEdl::new(AdaEdlConfig {
            beta1: 1.5,
            ..AdaEdlConfig::default()
        })
        .is_err()
    );
    assert!(
        AdaEdl::new(AdaEdlConfig {
            max_len: 0,
            ..AdaEdlConfig::default()
        })
        .is_err()
    );
    assert!(
        AdaEdl::new(AdaEdlConfig {
            min_len: 2,
            ..AdaEdlConfig::default()
        })
        .is_err()
    );
    assert!(CostModel::new(0.0, 0.5, 0.5, 4).is_err());
    assert!(CostModel::new(0.1, 0.5, 1.0, 4).is_err());
    assert!(PromptLookup::new(0, 2, 4).is_err());
    assert!(PromptLookup::new(3, 2, 4).is_err());
    assert!(PromptLookup::new(1, 2, 0).is_err());
}

backend_test!(bad_verification_inputs, |device| {
    let mut rng = StdRng::seed_from_u64(0);
    let p = Tensor::<3>::from_floats([[[0.5, 0.5], [0.5, 0.5]]], device);
    let q = Tensor::<3>::from_floats([[[0.5, 0.5]]], device);
    // Draft longer than G, token out of range, mismatched q, p not a distribution.
    assert!(verify_drafts(p.clone(), Some(q.clone()), &[vec![0, 1]], false, &mut rng).is_err());
    assert!(matches!(
        verify_drafts(p.clone(), Some(q.clone()), &[vec![5]], false, &mut rng),
        Err(SpecDecodeError::TokenOutOfRange { token: 5, .. })
    ));
    let q_bad = Tensor::<3>::from_floats([[[0.5, 0.5], [0.5, 0.5]]], device);
    assert!(verify_drafts(p.clone(), Some(q_bad), &[vec![0]], false, &mut rng).is_err());
    let p_bad = Tensor::<3>::from_floats([[[0.9, 0.5], [0.5, 0.5]]], device);
    assert!(verify_drafts(p_bad, Some(q.clone()), &[vec![0]], false, &mut rng).is_err());
    let q_nan = Tensor::<3>::from_floats([[[f32::NAN, 0.5]]], device);
    assert!(verify_drafts(p.clone(), Some(q_nan), &[vec![0]], false, &mut rng).is_err());
    assert!(verify_drafts(p, Some(q), &[vec![0], vec![1]], false, &mut rng).is_err());
});
