//! Device synchronisations of a round, counted with
//! [`host_reads`](lastmile_core::convert::host_reads): one per draft step of
//! a [`ModelDrafter`], one per verification, whatever the batch and the
//! draft lengths.
#![allow(clippy::unwrap_used)]

use std::cell::Cell;

use burn::tensor::{Device, Tensor, TensorData};
use lastmile_core::backend_test;
use lastmile_core::convert::host_reads;
use lastmile_core::numerics::SamplingParams;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::exactness_tests::NGramLm;
use crate::verify::{Checked, ResidualRule, logits_fault, verify_kernel};
use crate::*;

/// An [`NGramLm`] that counts its forward passes (it reads nothing back itself).
struct Counted {
    lm: NGramLm,
    forwards: Cell<usize>,
}

impl Counted {
    fn new(lm: NGramLm) -> Self {
        Self {
            lm,
            forwards: Cell::new(0),
        }
    }
}

impl LanguageModel for Counted {
    type Cache = Vec<Vec<usize>>;
    fn vocab_size(&self) -> usize {
        self.lm.vocab_size()
    }
    fn device(&self) -> Device {
        self.lm.device()
    }
    fn new_cache(&self, batch: usize) -> LmResult<Self::Cache> {
        self.lm.new_cache(batch)
    }
    fn cached_len(&self, cache: &Self::Cache, row: usize) -> usize {
        self.lm.cached_len(cache, row)
    }
    fn truncate(&self, cache: &mut Self::Cache, row: usize, len: usize) -> LmResult<()> {
        self.lm.truncate(cache, row, len)
    }
    fn forward(&self, cache: &mut Self::Cache, tokens: &[Vec<usize>]) -> LmResult<Tensor<3>> {
        self.forwards.set(self.forwards.get() + 1);
        self.lm.forward(cache, tokens)
    }
}

/// Random distributions over the last axis of `shape`.
fn random_probs(rng: &mut StdRng, shape: [usize; 3], device: &Device) -> Tensor<3> {
    let [b, n, v] = shape;
    let mut data = Vec::with_capacity(b * n * v);
    for _ in 0..b * n {
        let w: Vec<f32> = (0..v).map(|_| rng.random::<f32>() + 0.05).collect();
        let s: f32 = w.iter().sum();
        data.extend(w.iter().map(|x| x / s));
    }
    Tensor::from_data(TensorData::new(data, shape), device)
}

backend_test!(verification_reads_back_once, |device| {
    let mut rng = StdRng::seed_from_u64(4);
    let (b, g, v) = (3, 4, 5);
    // Ragged drafts: the full G, one token, none.
    let drafts = vec![vec![1, 4, 0, 2], vec![3], vec![]];
    let p = random_probs(&mut rng, [b, g + 1, v], device);
    let q = random_probs(&mut rng, [b, g, v], device);
    for (name, q, greedy) in [
        ("sampling, draft model", Some(q.clone()), false),
        ("sampling, deterministic drafter", None, false),
        ("greedy", Some(q), true),
    ] {
        let before = host_reads();
        let out = verify_kernel(
            p.clone(),
            q,
            &drafts,
            greedy,
            ResidualRule::Exact,
            None,
            &mut rng,
        )
        .unwrap();
        assert_eq!(host_reads() - before, 1, "{name}");
        let Checked::Verdicts(verdicts) = out else {
            panic!("{name}: valid inputs flagged as non-finite: {out:?}")
        };
        for (d, verdict) in drafts.iter().zip(&verdicts) {
            assert!(verdict.accepted <= d.len() && verdict.token < v, "{name}");
        }
    }
    // No drafts at all (G = 0): still one read.
    let p0 = random_probs(&mut rng, [b, 1, v], device);
    let before = host_reads();
    let out = verify_kernel(
        p0,
        None,
        &vec![vec![]; b],
        false,
        ResidualRule::Exact,
        None,
        &mut rng,
    )
    .unwrap();
    assert_eq!(host_reads() - before, 1);
    assert!(matches!(out, Checked::Verdicts(_)));
    // A NaN is flagged by the same read.
    let nan = Tensor::<3>::from_floats([[[f32::NAN, 1.0], [0.5, 0.5]]], device);
    let before = host_reads();
    let out = verify_kernel(
        nan,
        None,
        &[vec![0]],
        false,
        ResidualRule::Exact,
        None,
        &mut rng,
    )
    .unwrap();
    assert_eq!(host_reads() - before, 1);
    assert!(matches!(out, Checked::NonFiniteTarget));
    // So is a fault of the logits behind a finite p (greedy p of a fully
    // masked row is uniform), passed in by the caller.
    let masked = Tensor::<2>::from_floats([[f32::NEG_INFINITY; 2], [0.0, 1.0]], device);
    let p = lastmile_core::numerics::softmax(masked.clone(), 0.0)
        .unwrap()
        .reshape([1, 2, 2]);
    let before = host_reads();
    let out = verify_kernel(
        p,
        None,
        &[vec![0]],
        true,
        ResidualRule::Exact,
        Some(logits_fault(&masked)),
        &mut rng,
    )
    .unwrap();
    assert_eq!(host_reads() - before, 1);
    assert!(matches!(out, Checked::NonFiniteTarget));
});

/// Drafts for rows with limits 4, 2 and a finished row, returning the drafts,
/// the draft forwards and the host reads they took.
fn draft_once(
    device: &Device,
    sampling: SamplingParams,
    policy: &dyn DraftPolicy,
) -> (Vec<Draft>, usize, u64) {
    let model = Counted::new(NGramLm::draft(device));
    let mut drafter = ModelDrafter::new(&model);
    drafter.reset(3).unwrap();
    let (mut p0, mut p1) = (policy.clone_box(), policy.clone_box());
    let contexts = [vec![0, 1, 2], vec![3, 4]];
    let mut requests = vec![
        Some(DraftRequest {
            context: &contexts[0],
            limit: 4,
            policy: p0.as_mut(),
        }),
        Some(DraftRequest {
            context: &contexts[1],
            limit: 2,
            policy: p1.as_mut(),
        }),
        None,
    ];
    let before = host_reads();
    let drafts = drafter
        .propose(&mut requests, &sampling, &mut StdRng::seed_from_u64(9))
        .unwrap();
    (drafts, model.forwards.get(), host_reads() - before)
}

backend_test!(drafting_reads_back_once_per_step, |device| {
    let static4 = StaticLength::new(4).unwrap();
    for sampling in [SamplingParams::new(1.0).unwrap(), SamplingParams::greedy()] {
        let (drafts, forwards, reads) = draft_once(device, sampling, &static4);
        // Four steps: rows of limits 4 and 2 share the first two.
        assert_eq!(forwards, 4);
        assert_eq!(reads, 4, "one read per draft step");
        assert_eq!(
            drafts.iter().map(|d| d.tokens.len()).collect::<Vec<_>>(),
            [4, 2, 0]
        );
        assert_eq!(
            drafts.iter().map(|d| d.model_calls).collect::<Vec<_>>(),
            [4, 2, 0]
        );
        for d in &drafts {
            let dims = d.q.as_ref().map(|q| q.dims());
            match (sampling.is_greedy(), d.tokens.len()) {
                (false, g) if g > 0 => assert_eq!(dims, Some([g, 5])),
                _ => assert_eq!(dims, None),
            }
        }
    }
    // A policy that stops after the unconditional token: the second forward's
    // signals stop both rows, and its samples are discarded.
    let never = MaxConfidence::new(1.0, 8).unwrap();
    let (drafts, forwards, reads) = draft_once(device, SamplingParams::new(1.0).unwrap(), &never);
    assert_eq!((forwards, reads), (2, 2));
    assert_eq!(drafts[0].tokens.len(), 1);
    assert_eq!(drafts[0].q.as_ref().map(|q| q.dims()), Some([1, 5]));
});

backend_test!(
    a_round_reads_back_once_per_draft_step_and_verification,
    |device| {
        let prompts = vec![vec![0, 1, 2, 3], vec![4, 0], vec![1, 1, 1, 2, 3, 4]];
        for sampling in [SamplingParams::new(1.0).unwrap(), SamplingParams::greedy()] {
            let config = GenerationConfig::new(sampling, 10).unwrap();
            let target = Counted::new(NGramLm::target(device));
            let draft = Counted::new(NGramLm::draft(device));
            let policy = Box::new(StaticLength::new(4).unwrap());
            let mut dec =
                SpeculativeDecoder::new(&target, ModelDrafter::new(&draft), policy).unwrap();
            let before = host_reads();
            let out = dec
                .generate(&prompts, &config, &mut StdRng::seed_from_u64(1))
                .unwrap();
            let reads = host_reads() - before;
            let (verifications, draft_steps) = (target.forwards.get(), draft.forwards.get());
            assert!(verifications > 1 && draft_steps > verifications);
            assert_eq!(reads, (verifications + draft_steps) as u64);
            assert!(out.tokens.iter().all(|t| t.len() == 10));

            // Prompt lookup: no draft model, one read per round.
            let target = Counted::new(NGramLm::target(device));
            let policy = Box::new(StaticLength::new(4).unwrap());
            let mut dec =
                SpeculativeDecoder::new(&target, PromptLookup::new(1, 3, 8).unwrap(), policy)
                    .unwrap();
            let before = host_reads();
            dec.generate(&prompts, &config, &mut StdRng::seed_from_u64(1))
                .unwrap();
            assert_eq!(host_reads() - before, target.forwards.get() as u64);

            // The baseline: one read per step.
            let target = Counted::new(NGramLm::target(device));
            let before = host_reads();
            generate_autoregressive(&target, &prompts, &config, &mut StdRng::seed_from_u64(1))
                .unwrap();
            assert_eq!(host_reads() - before, 10);
            assert_eq!(target.forwards.get(), 10);
        }
    }
);
