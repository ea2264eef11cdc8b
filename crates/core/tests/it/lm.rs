//! The LM conformance kit on a reference model it must accept, and on broken
//! models it must reject (negative controls).
#![allow(clippy::unwrap_used)]

use burn::tensor::{Device, Tensor, TensorData};
use lastmile_core::backend_test;
use lastmile_core::lm::{LanguageModel, LmError, LmResult, conformance};

/// Logits at each position = a hash of the whole prefix so far, so any
/// mistake in what the cache remembers changes the logits.
struct PrefixHash {
    vocab: usize,
    device: Device,
    /// Broken variant: `truncate` forgets nothing.
    ignore_truncate: bool,
    /// Broken variant: rows of a batch see row 0's history.
    share_rows: bool,
}

impl PrefixHash {
    fn new(device: &Device) -> Self {
        Self {
            vocab: 7,
            device: device.clone(),
            ignore_truncate: false,
            share_rows: false,
        }
    }

    fn logits_for(&self, prefix: &[usize]) -> Vec<f32> {
        let mut h: u64 = 1469598103934665603;
        for &t in prefix {
            h = (h ^ t as u64).wrapping_mul(1099511628211);
        }
        (0..self.vocab)
            .map(|j| ((h.rotate_left(j as u32 * 7) % 1000) as f32) / 100.0)
            .collect()
    }
}

impl LanguageModel for PrefixHash {
    type Cache = Vec<Vec<usize>>;
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn device(&self) -> Device {
        self.device.clone()
    }
    fn max_context(&self) -> usize {
        64
    }
    fn new_cache(&self, batch: usize) -> LmResult<Self::Cache> {
        Ok(vec![Vec::new(); batch])
    }
    fn cached_len(&self, cache: &Self::Cache, row: usize) -> usize {
        cache[row].len()
    }
    fn truncate(&self, cache: &mut Self::Cache, row: usize, len: usize) -> LmResult<()> {
        if !self.ignore_truncate {
            cache[row].truncate(len);
        }
        Ok(())
    }
    fn forward(&self, cache: &mut Self::Cache, tokens: &[Vec<usize>]) -> LmResult<Tensor<3>> {
        let n = tokens.iter().map(Vec::len).max().unwrap_or(0);
        let mut data = vec![0.0; tokens.len() * n * self.vocab];
        for (b, row) in tokens.iter().enumerate() {
            for (i, &t) in row.iter().enumerate() {
                let src = if self.share_rows { 0 } else { b };
                cache[src].push(t);
                let at = (b * n + i) * self.vocab;
                data[at..at + self.vocab].copy_from_slice(&self.logits_for(&cache[src]));
            }
            if self.share_rows && b != 0 {
                cache[b].extend_from_slice(row);
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(data, [tokens.len(), n, self.vocab]),
            &self.device,
        ))
    }
}

backend_test!(reference_model_conforms, |device| {
    let lm = PrefixHash::new(device);
    assert_eq!(conformance::check_all(&lm, 3, 0.0).unwrap(), 0.0);
});

backend_test!(ignoring_truncate_is_caught, |device| {
    let lm = PrefixHash {
        ignore_truncate: true,
        ..PrefixHash::new(device)
    };
    let err = conformance::truncate_refeed(&lm, &[1, 2, 3], &[4, 5], &[6, 0], 1e-3).unwrap_err();
    assert!(
        matches!(
            err,
            LmError::Conformance {
                check: "truncate_refeed",
                ..
            }
        ),
        "{err}"
    );
});

backend_test!(shared_rows_are_caught, |device| {
    let lm = PrefixHash {
        share_rows: true,
        ..PrefixHash::new(device)
    };
    let err = conformance::ragged_batch(&lm, &[vec![1, 2], vec![3]], &[vec![4], vec![]], 1e-3)
        .unwrap_err();
    assert!(
        matches!(
            err,
            LmError::Conformance {
                check: "ragged_batch",
                ..
            }
        ),
        "{err}"
    );
});

backend_test!(chunk_sizes_are_validated, |device| {
    let lm = PrefixHash::new(device);
    let err = conformance::chunked_forward(&lm, &[1, 2, 3], &[1, 1], 0.0).unwrap_err();
    assert!(matches!(
        err,
        LmError::Conformance {
            check: "chunked_forward",
            ..
        }
    ));
    assert_eq!(
        conformance::chunked_forward(&lm, &[1, 2, 3], &[2, 1], 0.0).unwrap(),
        0.0
    );
});

backend_test!(logits_shape_is_checked, |device| {
    let logits = Tensor::<3>::zeros([2, 3, 5], device);
    assert_eq!(
        lastmile_core::lm::check_logits_shape(&logits, 2, 3, 5).unwrap(),
        3
    );
    for (b, n, v) in [(1, 3, 5), (2, 4, 5), (2, 3, 6)] {
        let err = lastmile_core::lm::check_logits_shape(&logits, b, n, v).unwrap_err();
        assert!(matches!(err, LmError::BadLogits { .. }));
    }
});
