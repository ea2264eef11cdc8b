//! Feature-level drafting: a [`FeatureDrafter`] conditions its draft on the
//! target's feature of the position before each token whenever the target
//! has computed it (and on its own prediction otherwise), also when a
//! [`HybridDrafter`] hands some rounds to prompt lookup; greedy outputs
//! equal autoregressive decoding, and a decoder that does not verify with
//! the drafter's [`FeatureTap`] is an error, not a silent loss of speed.

use std::cell::{Cell, RefCell};

use burn::tensor::{Device, Tensor, TensorData};
use lastmile_core::backend_test;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::lm::{FeatureDraftModel, HiddenFeatures};
use lastmile_core::numerics::SamplingParams;
use lastmile_spec_decode::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

const VOCAB: usize = 6;
const D: usize = 3;

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The target's feature after `context`: three values in [-1, 1) hashed
/// from the whole context.
fn feature(context: &[usize]) -> Vec<f32> {
    let h = context.iter().fold(17u64, |h, &t| mix(h ^ (t as u64 + 1)));
    (0..D as u64)
        .map(|i| (mix(h ^ i) % 2000) as f32 / 1000.0 - 1.0)
        .collect()
}

/// The shared head: logits of a feature.
fn head(f: &[f32]) -> Vec<f32> {
    (0..VOCAB)
        .map(|v| 3.0 * (f[0] * (v as f32 + 1.0) + f[1] * f[2] * v as f32).sin())
        .collect()
}

/// A target whose feature at each position hashes its context and whose
/// logits are `head(feature)`.
struct Target {
    device: Device,
}

impl LanguageModel for Target {
    type Cache = Vec<Vec<usize>>;
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn device(&self) -> Device {
        self.device.clone()
    }
    fn new_cache(&self, batch: usize) -> LmResult<Self::Cache> {
        Ok(vec![Vec::new(); batch])
    }
    fn cached_len(&self, c: &Self::Cache, row: usize) -> usize {
        c[row].len()
    }
    fn truncate(&self, c: &mut Self::Cache, row: usize, len: usize) -> LmResult<()> {
        c[row].truncate(len);
        Ok(())
    }
    fn forward(&self, c: &mut Self::Cache, tokens: &[Vec<usize>]) -> LmResult<Tensor<3>> {
        Ok(self.forward_features(c, tokens)?.0)
    }
}

impl HiddenFeatures for Target {
    fn feature_dim(&self) -> usize {
        D
    }
    fn forward_features(
        &self,
        c: &mut Self::Cache,
        tokens: &[Vec<usize>],
    ) -> LmResult<(Tensor<3>, Tensor<3>)> {
        let (b, n) = (
            tokens.len(),
            tokens.iter().map(Vec::len).max().unwrap_or(0).max(1),
        );
        let (mut logits, mut feats) = (Vec::new(), Vec::new());
        for (row, t) in tokens.iter().enumerate() {
            for i in 0..n {
                let mut ctx = c[row].clone();
                ctx.extend(&t[..(i + 1).min(t.len())]);
                let f = feature(&ctx);
                logits.extend(head(&f));
                feats.extend(f);
            }
            c[row].extend(t);
        }
        Ok((
            Tensor::from_data(TensorData::new(logits, [b, n, VOCAB]), &self.device),
            Tensor::from_data(TensorData::new(feats, [b, n, D]), &self.device),
        ))
    }
}

/// A draft that classifies, for every token it is fed at position `p`,
/// the feature it reads: the target's true feature of the context before
/// `p`, its own prediction for `p - 1`, or neither (a violation; zeros are
/// required at position 0). It predicts `f̂_p = (f + token/6) / 2` and
/// proposes from `head(f̂_p)`.
struct Checking {
    device: Device,
    violations: Cell<usize>,
    true_reads: Cell<usize>,
    own_reads: Cell<usize>,
    /// Per row, the prediction made at each cached position.
    predictions: RefCell<Vec<Vec<Vec<f32>>>>,
    /// Per row, the tokens fed at each cached position.
    history: RefCell<Vec<Vec<usize>>>,
}

impl LanguageModel for Checking {
    type Cache = Vec<usize>;
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn device(&self) -> Device {
        self.device.clone()
    }
    fn new_cache(&self, batch: usize) -> LmResult<Vec<usize>> {
        *self.predictions.borrow_mut() = vec![Vec::new(); batch];
        *self.history.borrow_mut() = vec![Vec::new(); batch];
        Ok(vec![0; batch])
    }
    fn cached_len(&self, c: &Vec<usize>, row: usize) -> usize {
        c[row]
    }
    fn truncate(&self, c: &mut Vec<usize>, row: usize, len: usize) -> LmResult<()> {
        c[row] = c[row].min(len);
        self.predictions.borrow_mut()[row].truncate(c[row]);
        Ok(())
    }
    fn forward(&self, _: &mut Vec<usize>, _: &[Vec<usize>]) -> LmResult<Tensor<3>> {
        Err(LmError::Model(
            "this test draft is fed through forward_conditioned only".into(),
        ))
    }
}

impl FeatureDraftModel for Checking {
    fn feature_dim(&self) -> usize {
        D
    }
    fn forward_conditioned(
        &self,
        c: &mut Vec<usize>,
        tokens: &[Vec<usize>],
        features: Tensor<3>,
    ) -> LmResult<(Tensor<3>, Tensor<3>)> {
        let (b, n) = (
            tokens.len(),
            tokens.iter().map(Vec::len).max().unwrap_or(0).max(1),
        );
        assert_eq!(features.dims(), [b, n, D]);
        let given = tensor_to_vec(features)?;
        let mut preds = self.predictions.borrow_mut();
        let mut history = self.history.borrow_mut();
        let (mut logits, mut out) = (vec![0.0; b * n * VOCAB], vec![0.0; b * n * D]);
        for (row, t) in tokens.iter().enumerate() {
            for (i, &tok) in t.iter().enumerate() {
                let p = c[row];
                let x = &given[(row * n + i) * D..(row * n + i + 1) * D];
                // The target's true feature of the draft's context before
                // `p` (the toy target's feature is a function of the context).
                let own = (p > 0).then(|| preds[row][p - 1].clone());
                let truth = (p > 0).then(|| feature(&history[row][..p]));
                if p == 0 {
                    if x.iter().any(|v| *v != 0.0) {
                        self.violations.set(self.violations.get() + 1);
                    }
                } else if truth.as_deref() == Some(x) {
                    self.true_reads.set(self.true_reads.get() + 1);
                } else if own.as_deref() == Some(x) {
                    self.own_reads.set(self.own_reads.get() + 1);
                } else {
                    self.violations.set(self.violations.get() + 1);
                }
                history[row].truncate(p);
                history[row].push(tok);
                let pred: Vec<f32> = x.iter().map(|v| (v + tok as f32 / 6.0) / 2.0).collect();
                let k = row * n + i;
                logits[k * VOCAB..(k + 1) * VOCAB].copy_from_slice(&head(&pred));
                out[k * D..(k + 1) * D].copy_from_slice(&pred);
                preds[row].push(pred);
                c[row] += 1;
            }
        }
        Ok((
            Tensor::from_data(TensorData::new(logits, [b, n, VOCAB]), &self.device),
            Tensor::from_data(TensorData::new(out, [b, n, D]), &self.device),
        ))
    }
}

fn checking(device: &Device) -> Checking {
    Checking {
        device: device.clone(),
        violations: Cell::new(0),
        true_reads: Cell::new(0),
        own_reads: Cell::new(0),
        predictions: RefCell::new(Vec::new()),
        history: RefCell::new(Vec::new()),
    }
}

backend_test!(drafts_read_the_targets_features_and_stay_exact, |device| {
    let target = Target {
        device: device.clone(),
    };
    let tap = FeatureTap::new(&target);
    let draft = checking(device);
    let prompts = vec![vec![1, 2, 3], vec![4], vec![5, 0, 2, 2, 1]];
    let config = GenerationConfig::new(SamplingParams::greedy(), 24).unwrap();
    let ar =
        generate_autoregressive(&target, &prompts, &config, &mut StdRng::seed_from_u64(0)).unwrap();
    // The first step reads the prompts and emits one token per sequence.
    assert_eq!(ar.metrics.prefill_tokens, 3);
    assert!(ar.metrics.prefill <= ar.metrics.elapsed);
    let policies: Vec<Box<dyn DraftPolicy>> = vec![
        Box::new(StaticLength::new(1).unwrap()),
        Box::new(StaticLength::new(4).unwrap()),
        Box::new(AdaEdl::new(AdaEdlConfig::default()).unwrap()),
    ];
    for policy in policies {
        let name = policy.name();
        let drafter = FeatureDrafter::new(&tap, &draft).unwrap();
        let out = SpeculativeDecoder::new(&tap, drafter, policy)
            .unwrap()
            .generate(&prompts, &config, &mut StdRng::seed_from_u64(0))
            .unwrap();
        assert_eq!(out.tokens, ar.tokens, "{name}");
        assert!(out.metrics.drafted > 0, "{name}");
        // The first round drafts nothing (no features yet): one token a sequence.
        assert_eq!(out.metrics.prefill_tokens, 3, "{name}");
        assert!(out.metrics.prefill <= out.metrics.elapsed, "{name}");
    }
    assert_eq!(draft.violations.get(), 0);
    assert!(draft.true_reads.get() > 0 && draft.own_reads.get() > 0);
    // Sampling runs too (exactness of the sampled distribution is the
    // decoder's, tested in the crate's exactness tests, given the right q).
    let sampling = GenerationConfig::new(SamplingParams::new(1.0).unwrap(), 16).unwrap();
    let drafter = FeatureDrafter::new(&tap, &draft).unwrap();
    let out = SpeculativeDecoder::new(&tap, drafter, Box::new(StaticLength::new(3).unwrap()))
        .unwrap()
        .generate(&prompts, &sampling, &mut StdRng::seed_from_u64(1))
        .unwrap();
    assert!(out.tokens.iter().all(|t| t.len() == 16));
    assert_eq!(draft.violations.get(), 0);
});

backend_test!(
    a_hybrid_keeps_the_features_right_across_looked_up_rounds,
    |device| {
        // Rounds drafted by lookup skip the feature draft; when it drafts
        // again it must catch up on the committed tokens with the target's
        // features (a violation otherwise), and outputs stay exact.
        let target = Target {
            device: device.clone(),
        };
        let tap = FeatureTap::new(&target);
        let draft = checking(device);
        let prompts = vec![vec![1, 2, 3, 1, 2], vec![4, 4], vec![5, 0, 2, 2, 1, 0, 2]];
        let config = GenerationConfig::new(SamplingParams::greedy(), 32).unwrap();
        let ar = generate_autoregressive(&target, &prompts, &config, &mut StdRng::seed_from_u64(0))
            .unwrap();
        let sampling = GenerationConfig::new(SamplingParams::new(1.0).unwrap(), 24).unwrap();
        for config in [&config, &sampling] {
            let lookup = PromptLookup::new(2, 3, 4).unwrap();
            let drafter =
                HybridDrafter::new(lookup, FeatureDrafter::new(&tap, &draft).unwrap(), device)
                    .unwrap();
            let policy = Box::new(StaticLength::new(3).unwrap());
            let mut decoder = SpeculativeDecoder::new(&tap, drafter, policy).unwrap();
            let out = decoder
                .generate(&prompts, config, &mut StdRng::seed_from_u64(2))
                .unwrap();
            if config.sampling().is_greedy() {
                assert_eq!(out.tokens, ar.tokens);
            } else {
                assert!(out.tokens.iter().all(|t| t.len() == 24));
            }
            let d = decoder.drafter();
            assert!(
                d.looked_up_rounds() > 0 && d.model_rounds() > 0,
                "{} looked up, {} drafted",
                d.looked_up_rounds(),
                d.model_rounds()
            );
        }
        assert_eq!(draft.violations.get(), 0);
        assert!(draft.true_reads.get() > 0);
    }
);

backend_test!(verifying_without_the_tap_is_an_error, |device| {
    let target = Target {
        device: device.clone(),
    };
    let tap = FeatureTap::new(&target);
    let draft = checking(device);
    let config = GenerationConfig::new(SamplingParams::greedy(), 8).unwrap();
    let drafter = FeatureDrafter::new(&tap, &draft).unwrap();
    // The decoder verifies with the plain target: the tap records nothing.
    let result = SpeculativeDecoder::new(&target, drafter, Box::new(StaticLength::new(2).unwrap()))
        .unwrap()
        .generate(&[vec![1, 2]], &config, &mut StdRng::seed_from_u64(0));
    let message = result.unwrap_err().to_string();
    assert!(message.contains("FeatureTap"), "{message}");
});

/// A draft of another width.
struct Wide(Device);

impl LanguageModel for Wide {
    type Cache = ();
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn device(&self) -> Device {
        self.0.clone()
    }
    fn new_cache(&self, _: usize) -> LmResult<()> {
        Ok(())
    }
    fn cached_len(&self, _: &(), _: usize) -> usize {
        0
    }
    fn truncate(&self, _: &mut (), _: usize, _: usize) -> LmResult<()> {
        Ok(())
    }
    fn forward(&self, _: &mut (), _: &[Vec<usize>]) -> LmResult<Tensor<3>> {
        Err(LmError::Model("unused".into()))
    }
}

impl FeatureDraftModel for Wide {
    fn feature_dim(&self) -> usize {
        D + 1
    }
    fn forward_conditioned(
        &self,
        _: &mut (),
        _: &[Vec<usize>],
        _: Tensor<3>,
    ) -> LmResult<(Tensor<3>, Tensor<3>)> {
        Err(LmError::Model("unused".into()))
    }
}

backend_test!(a_draft_of_another_width_is_refused, |device| {
    let target = Target {
        device: device.clone(),
    };
    let tap = FeatureTap::new(&target);
    let wide = Wide(device.clone());
    assert!(matches!(
        FeatureDrafter::new(&tap, &wide),
        Err(SpecDecodeError::Core(_))
    ));
});
