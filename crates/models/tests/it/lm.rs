#![allow(clippy::unwrap_used)]
//! `Transformer` and `PackedTransformer` keep the promises of lastmile-core's
//! `LanguageModel` interface (conformance kit), and report failures with the
//! interface's typed errors.
//!
//! Tolerance: the kit compares the same positions computed through
//! different forward shapes (one call against chunks, a ragged batch against
//! single rows, panels against plain GEMM for `PackedTransformer`), so f32
//! results differ only by summation order. Measured worst case on these
//! models (flex): 6e-7, for logits of magnitude ~1. `TOL = 1e-4` leaves two
//! orders of margin for other backends and kernels, and is four orders below
//! what a broken cache produces (the negative controls below, even a
//! rollback that keeps a single stale position, differ by ~2).

use burn::tensor::{Device, Tensor};
use lastmile_core::backend_test;
use lastmile_core::lm::{LanguageModel, LmError, LmResult, conformance};
use lastmile_models::{KvCache, ModelError, PackedTransformer, Transformer, TransformerConfig};

const TOL: f32 = 1e-4;

fn model(device: &Device) -> Transformer {
    device.seed(3);
    TransformerConfig::byte_level(32, 2, 4, 64)
        .init(device)
        .unwrap()
}

fn tokens(n: usize, salt: usize) -> Vec<usize> {
    (0..n).map(|i| (i * 37 + salt * 101 + 5) % 256).collect()
}

/// Every check of the kit, with ragged batches that mix empty rows, single
/// tokens and long rows (for the packed model: forwards below, inside and
/// above its panel range of 2..=16 tokens). Returns the worst difference.
fn run_all<M: LanguageModel>(m: &M) -> f32 {
    let mut worst = conformance::check_all(m, 11, TOL).unwrap();
    worst = worst.max(conformance::check_all(m, 12, TOL).unwrap());
    let seq = tokens(40, 1);
    worst = worst.max(conformance::chunked_forward(m, &seq, &[1, 13, 2, 3, 21], TOL).unwrap());
    worst = worst.max(
        conformance::truncate_refeed(m, &seq[..10], &tokens(6, 2), &tokens(9, 3), TOL).unwrap(),
    );
    // 3 rows: 20 + 0 + 5 tokens (60 padded rows, plain GEMM), then
    // 3 + 4 + 0 (12 rows: panels) and 1 + 0 + 0 (3 rows: panels).
    let first = vec![tokens(20, 4), Vec::new(), tokens(5, 5)];
    let second = vec![tokens(3, 6), tokens(4, 7), Vec::new()];
    worst = worst.max(conformance::ragged_batch(m, &first, &second, TOL).unwrap());
    let first = vec![tokens(1, 8), tokens(1, 9), tokens(1, 10)];
    let second = vec![tokens(1, 11), Vec::new(), Vec::new()];
    worst = worst.max(conformance::ragged_batch(m, &first, &second, TOL).unwrap());
    eprintln!("worst |Δlogit| = {worst:e} (tolerance {TOL:e})");
    worst
}

backend_test!(transformer_conforms, |device| {
    assert!(run_all(&model(device)) <= TOL);
});

backend_test!(packed_transformer_conforms, |device| {
    assert!(run_all(&PackedTransformer::new(model(device)).unwrap()) <= TOL);
});

/// A 5-token verify-sized forward after a 12-token prefill, through the interface.
fn verify_sized<M: LanguageModel>(m: &M) -> Tensor<3> {
    let mut cache = m.new_cache(1).unwrap();
    m.forward(&mut cache, &[tokens(12, 1)]).unwrap();
    m.forward(&mut cache, &[tokens(5, 2)]).unwrap()
}

backend_test!(packed_matches_plain_through_the_interface, |device| {
    let plain = model(device);
    let packed = PackedTransformer::new(plain.clone()).unwrap();
    // Panels (5 rows) against the plain GEMM.
    let diff: f32 = (verify_sized(&plain) - verify_sized(&packed))
        .abs()
        .max()
        .into_scalar();
    assert!(diff <= TOL, "packed vs plain: {diff}");
});

/// A broken cache: `truncate` only moves the reported length, so the rolled
/// back positions stay in the model's cache (a rollback bug).
struct NoRollback(Transformer);

impl LanguageModel for NoRollback {
    type Cache = (KvCache, Vec<usize>);
    fn vocab_size(&self) -> usize {
        256
    }
    fn device(&self) -> Device {
        self.0.device()
    }
    fn new_cache(&self, batch: usize) -> LmResult<Self::Cache> {
        Ok((self.0.new_cache(batch), vec![0; batch]))
    }
    fn cached_len(&self, cache: &Self::Cache, row: usize) -> usize {
        cache.1[row]
    }
    fn truncate(&self, cache: &mut Self::Cache, row: usize, len: usize) -> LmResult<()> {
        cache.1[row] = cache.1[row].min(len);
        Ok(())
    }
    fn forward(&self, cache: &mut Self::Cache, tokens: &[Vec<usize>]) -> LmResult<Tensor<3>> {
        for (len, t) in cache.1.iter_mut().zip(tokens) {
            *len += t.len();
        }
        LanguageModel::forward(&self.0, &mut cache.0, tokens)
    }
}

/// A broken cache that keeps one stale position on rollback: the smallest
/// rollback error, caught by the logits (the reported lengths are right).
struct OffByOne(Transformer);

impl LanguageModel for OffByOne {
    type Cache = (KvCache, Vec<usize>);
    fn vocab_size(&self) -> usize {
        256
    }
    fn device(&self) -> Device {
        self.0.device()
    }
    fn new_cache(&self, batch: usize) -> LmResult<Self::Cache> {
        Ok((self.0.new_cache(batch), vec![0; batch]))
    }
    fn cached_len(&self, cache: &Self::Cache, row: usize) -> usize {
        cache.1[row]
    }
    fn truncate(&self, cache: &mut Self::Cache, row: usize, len: usize) -> LmResult<()> {
        if len < cache.1[row] {
            LanguageModel::truncate(&self.0, &mut cache.0, row, len + 1)?;
            cache.1[row] = len;
        }
        Ok(())
    }
    fn forward(&self, cache: &mut Self::Cache, tokens: &[Vec<usize>]) -> LmResult<Tensor<3>> {
        for (len, t) in cache.1.iter_mut().zip(tokens) {
            *len += t.len();
        }
        LanguageModel::forward(&self.0, &mut cache.0, tokens)
    }
}

/// A broken cache that forgets the context between calls (a fresh KV cache
/// per forward, lengths still counted).
struct Forgetful(Transformer);

impl LanguageModel for Forgetful {
    type Cache = Vec<usize>;
    fn vocab_size(&self) -> usize {
        256
    }
    fn device(&self) -> Device {
        self.0.device()
    }
    fn new_cache(&self, batch: usize) -> LmResult<Vec<usize>> {
        Ok(vec![0; batch])
    }
    fn cached_len(&self, cache: &Vec<usize>, row: usize) -> usize {
        cache[row]
    }
    fn truncate(&self, cache: &mut Vec<usize>, row: usize, len: usize) -> LmResult<()> {
        cache[row] = cache[row].min(len);
        Ok(())
    }
    fn forward(&self, cache: &mut Vec<usize>, tokens: &[Vec<usize>]) -> LmResult<Tensor<3>> {
        for (len, t) in cache.iter_mut().zip(tokens) {
            *len += t.len();
        }
        let mut fresh = self.0.new_cache(tokens.len());
        LanguageModel::forward(&self.0, &mut fresh, tokens)
    }
}

fn conformance_failure(r: LmResult<f32>, check: &str) -> String {
    match r {
        Err(LmError::Conformance { check: c, detail }) if c == check => detail,
        other => panic!("expected a `{check}` conformance failure, got {other:?}"),
    }
}

backend_test!(broken_caches_fail_the_kit, |device| {
    let seq = tokens(16, 1);
    let detail = conformance_failure(
        conformance::truncate_refeed(
            &NoRollback(model(device)),
            &seq[..8],
            &tokens(4, 2),
            &seq[8..],
            TOL,
        ),
        "truncate_refeed",
    );
    eprintln!("no rollback: {detail}");
    let detail = conformance_failure(
        conformance::truncate_refeed(
            &OffByOne(model(device)),
            &seq[..8],
            &tokens(4, 2),
            &seq[8..],
            TOL,
        ),
        "truncate_refeed",
    );
    eprintln!("off by one: {detail}");
    let detail = conformance_failure(
        conformance::chunked_forward(&Forgetful(model(device)), &seq, &[8, 8], TOL),
        "chunked_forward",
    );
    eprintln!("forgetful: {detail}");
    // The whole kit catches them too.
    for r in [
        conformance::check_all(&NoRollback(model(device)), 11, TOL),
        conformance::check_all(&OffByOne(model(device)), 11, TOL),
        conformance::check_all(&Forgetful(model(device)), 11, TOL),
    ] {
        assert!(matches!(r, Err(LmError::Conformance { .. })), "{r:?}");
    }
});

backend_test!(failures_map_to_the_interface_errors, |device| {
    let m = model(device);
    let packed = PackedTransformer::new(m.clone()).unwrap();
    let mut cache = LanguageModel::new_cache(&m, 2).unwrap();
    assert!(matches!(
        LanguageModel::forward(&m, &mut cache, &[vec![1, 2], vec![3, 300]]),
        Err(LmError::TokenOutOfRange {
            row: 1,
            position: 1,
            token: 300,
            vocab: 256
        })
    ));
    assert!(matches!(
        LanguageModel::forward(&packed, &mut cache, &[vec![1; 65], vec![]]),
        Err(LmError::ContextOverflow {
            row: 0,
            needed: 65,
            max: 64
        })
    ));
    assert!(matches!(
        LanguageModel::forward(&m, &mut cache, &[vec![1]]),
        Err(LmError::Batch { found: 1, .. })
    ));
    assert!(matches!(
        LanguageModel::truncate(&packed, &mut cache, 2, 0),
        Err(LmError::Batch { found: 2, .. })
    ));
    assert!(matches!(
        LanguageModel::new_cache(&m, 0),
        Err(LmError::Batch { found: 0, .. })
    ));
    // Errors without an interface variant keep their own type.
    match LmError::from(ModelError::Data("too short".into())) {
        LmError::Model(e) => assert!(matches!(
            e.downcast_ref::<ModelError>(),
            Some(ModelError::Data(_))
        )),
        other => panic!("expected LmError::Model, got {other:?}"),
    }
    // Nothing was fed by the failed calls.
    assert_eq!((m.cached_len(&cache, 0), m.cached_len(&cache, 1)), (0, 0));
    assert_eq!(
        (m.vocab_size(), packed.vocab_size(), m.max_context()),
        (256, 256, 64)
    );
});
