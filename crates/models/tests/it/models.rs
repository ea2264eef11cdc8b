#![allow(clippy::unwrap_used)]
//! The cached forward equals the full forward; checkpoints round-trip and
//! reject bad files with typed errors.

use burn::tensor::{Device, Int, Tensor, TensorData};
use lastmile_core::backend_test;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::lm::LmError;
use lastmile_core::testing::assert_close;
use lastmile_models::{
    ModelError, PANEL_MAX_ROWS, PackedTransformer, Transformer, TransformerConfig, gelu_decode,
};

fn tiny(device: &Device) -> Transformer {
    device.seed(7);
    TransformerConfig {
        vocab: 256,
        d_model: 16,
        n_layers: 2,
        n_heads: 2,
        d_ff: 32,
        max_len: 24,
    }
    .init(device)
    .unwrap()
}

fn full_logits(model: &Transformer, seq: &[usize], device: &Device) -> Vec<f32> {
    let ids: Vec<i64> = seq.iter().map(|t| *t as i64).collect();
    let t = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, seq.len()]), device);
    tensor_to_vec(model.forward(t).unwrap()).unwrap()
}

/// Rows of `out` `[B, n, V]` for `row`, positions `0..count`.
fn row_slice(out: &[f32], n: usize, row: usize, count: usize) -> Vec<f32> {
    out[row * n * 256..(row * n + count) * 256].to_vec()
}

/// Feeds `seqs` in ragged `chunks` (tokens per row per call) through
/// `forward` and checks every returned row against the full-forward
/// `reference` logits; `after` sees each row's new length.
fn check_chunked<const B: usize>(
    seqs: &[Vec<usize>],
    reference: &[Vec<f32>],
    chunks: &[[usize; B]],
    mut forward: impl FnMut(&[Vec<usize>]) -> Tensor<3>,
    mut after: impl FnMut(usize, usize),
) {
    let mut pos = [0usize; B];
    for chunk in chunks {
        let feed: Vec<Vec<usize>> = (0..B)
            .map(|r| seqs[r][pos[r]..pos[r] + chunk[r]].to_vec())
            .collect();
        let out = forward(&feed);
        let n = out.dims()[1];
        let out = tensor_to_vec(out).unwrap();
        for r in 0..B {
            let got = row_slice(&out, n, r, chunk[r]);
            let want: Vec<f64> = reference[r][pos[r] * 256..(pos[r] + chunk[r]) * 256]
                .iter()
                .map(|x| f64::from(*x))
                .collect();
            assert_close(&got, &want, 1e-3, 1e-4);
            pos[r] += chunk[r];
            after(r, pos[r]);
        }
    }
}

backend_test!(decoding_gelu_matches_exact_gelu, |device| {
    // x·Φ(x) from tabulated values of the normal CDF.
    let table: [(f32, f64); 8] = [
        (-3.0, -0.004_049_694_094_890_3),
        (-1.0, -0.158_655_253_931_457_07),
        (-0.5, -0.154_268_769_362_993_45),
        (0.0, 0.0),
        (0.5, 0.345_731_230_637_006_55),
        (1.0, 0.841_344_746_068_542_9),
        (2.0, 1.954_499_736_103_641_6),
        (3.0, 2.995_950_305_905_11),
    ];
    let x = Tensor::<1>::from_floats(table.map(|(x, _)| x), device);
    let expected = table.map(|(_, g)| g);
    assert_close(
        &tensor_to_vec(gelu_decode(x)).unwrap(),
        &expected,
        0.0,
        1e-6,
    );
    // Against burn's erf GELU on a dense grid, tails included.
    let grid: Vec<f32> = (0..=4000).map(|i| -20.0 + i as f32 * 0.01).collect();
    let x = Tensor::<1>::from_floats(grid.as_slice(), device);
    let exact: Vec<f64> = tensor_to_vec(burn::tensor::activation::gelu(x.clone()))
        .unwrap()
        .iter()
        .map(|v| f64::from(*v))
        .collect();
    assert_close(&tensor_to_vec(gelu_decode(x)).unwrap(), &exact, 0.0, 2e-6);
});

backend_test!(cached_forward_equals_full_forward, |device| {
    let model = tiny(device);
    let seqs: Vec<Vec<usize>> = vec![
        (0..20).map(|i| (i * 37 + 5) % 256).collect(),
        (0..17).map(|i| (i * 11 + 200) % 256).collect(),
        (0..9).map(|i| (i * 3) % 256).collect(),
    ];
    let reference: Vec<Vec<f32>> = seqs
        .iter()
        .map(|s| full_logits(&model, s, device))
        .collect();
    // Ragged chunks: rows advance by different amounts, some not at all.
    let chunks: [[usize; 3]; 5] = [[3, 1, 0], [1, 5, 4], [7, 0, 1], [4, 6, 4], [5, 5, 0]];
    let cache = std::cell::RefCell::new(model.new_cache(3));
    check_chunked(
        &seqs,
        &reference,
        &chunks,
        |feed| model.forward_cached(&mut cache.borrow_mut(), feed).unwrap(),
        |r, len| assert_eq!(cache.borrow().len(r), len),
    );
});

backend_test!(rollback_then_refeed_matches_full_forward, |device| {
    let model = tiny(device);
    let seq: Vec<usize> = (0..16).map(|i| (i * 29 + 1) % 256).collect();
    let other: Vec<usize> = (0..6).map(|i| (i * 53 + 9) % 256).collect();
    let reference = full_logits(&model, &seq, device);
    let mut cache = model.new_cache(1);
    // Feed 8 true tokens plus 6 wrong "draft" tokens, roll back, then continue correctly.
    let mut first = seq[..8].to_vec();
    first.extend_from_slice(&other);
    model.forward_cached(&mut cache, &[first]).unwrap();
    cache.truncate(0, 8).unwrap();
    let out = model
        .forward_cached(&mut cache, &[seq[8..].to_vec()])
        .unwrap();
    let got = tensor_to_vec(out).unwrap();
    let want: Vec<f64> = reference[8 * 256..].iter().map(|x| f64::from(*x)).collect();
    assert_close(&got, &want, 1e-3, 1e-4);
});

backend_test!(packed_forward_equals_full_forward, |device| {
    device.seed(5);
    let model = TransformerConfig::byte_level(32, 2, 2, 40)
        .init(device)
        .unwrap();
    let seqs: Vec<Vec<usize>> = vec![
        (0..38).map(|i| (i * 37 + 5) % 256).collect(),
        (0..38).map(|i| (i * 11 + 200) % 256).collect(),
    ];
    let reference: Vec<Vec<f32>> = seqs
        .iter()
        .map(|s| full_logits(&model, s, device))
        .collect();
    let packed = PackedTransformer::new(model).unwrap();
    let mut cache = packed.new_cache(2);
    // Chunks below, at and above the panel range: 20 rows (plain), 1 row,
    // 2 x 1, 2 x 3, ragged 4 + 2 (8 rows), 2 x 8 = 16 rows (panels).
    let chunks: [[usize; 2]; 6] = [[10, 10], [1, 0], [1, 1], [3, 3], [4, 2], [8, 8]];
    assert_eq!(2 * 8, PANEL_MAX_ROWS);
    check_chunked(
        &seqs,
        &reference,
        &chunks,
        |feed| packed.forward_cached(&mut cache, feed).unwrap(),
        |_, _| {},
    );
    // Widths that are not multiples of 16 cannot be packed.
    let odd = TransformerConfig::byte_level(24, 1, 2, 8)
        .init(device)
        .unwrap();
    assert!(matches!(
        PackedTransformer::new(odd),
        Err(ModelError::Config(_))
    ));
});

backend_test!(cached_forward_rejects_bad_input, |device| {
    let model = tiny(device);
    let mut cache = model.new_cache(2);
    assert!(matches!(
        model.forward_cached(&mut cache, &[vec![1]]),
        Err(ModelError::Lm(LmError::Batch { .. }))
    ));
    assert!(matches!(
        model.forward_cached(&mut cache, &[vec![1], vec![300]]),
        Err(ModelError::Lm(LmError::TokenOutOfRange { token: 300, .. }))
    ));
    assert!(matches!(
        model.forward_cached(&mut cache, &[vec![1; 25], vec![]]),
        Err(ModelError::Lm(LmError::ContextOverflow {
            needed: 25,
            max: 24,
            ..
        }))
    ));
    assert!(cache.truncate(5, 0).is_err());
    let bad = TransformerConfig {
        n_heads: 3,
        ..TransformerConfig::byte_level(16, 1, 2, 8)
    };
    assert!(matches!(bad.init(device), Err(ModelError::Config(_))));
});

backend_test!(checkpoint_round_trip_and_bad_files, |device| {
    let model = tiny(device);
    let dir = std::env::temp_dir().join(format!(
        "lastmile-models-test-{}-{:?}",
        std::process::id(),
        lastmile_core::Backend::of(device)
    ));
    let path = dir.join("tiny.bpk");
    model.save(&path).unwrap();
    let config = TransformerConfig {
        vocab: 256,
        d_model: 16,
        n_layers: 2,
        n_heads: 2,
        d_ff: 32,
        max_len: 24,
    };
    let loaded = Transformer::load(config, &path, device).unwrap();
    let seq: Vec<usize> = (0..10).collect();
    let a = full_logits(&model, &seq, device);
    let b: Vec<f64> = full_logits(&loaded, &seq, device)
        .iter()
        .map(|x| f64::from(*x))
        .collect();
    assert_close(&a, &b, 0.0, 0.0);

    // Wrong shape, missing file, garbage, truncated file: typed errors, no panic.
    let wrong = TransformerConfig {
        d_model: 32,
        d_ff: 64,
        ..config
    };
    assert!(matches!(
        Transformer::load(wrong, &path, device),
        Err(ModelError::Checkpoint { .. })
    ));
    assert!(matches!(
        Transformer::load(config, dir.join("missing.bpk"), device),
        Err(ModelError::Checkpoint { .. })
    ));
    let garbage = dir.join("garbage.bpk");
    std::fs::write(&garbage, b"not a checkpoint at all, just bytes").unwrap();
    assert!(matches!(
        Transformer::load(config, &garbage, device),
        Err(ModelError::Checkpoint { .. })
    ));
    let bytes = std::fs::read(&path).unwrap();
    let truncated = dir.join("truncated.bpk");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        Transformer::load(config, &truncated, device),
        Err(ModelError::Checkpoint { .. })
    ));
    let empty = dir.join("empty.bpk");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        Transformer::load(config, &empty, device),
        Err(ModelError::Checkpoint { .. })
    ));
    std::fs::remove_dir_all(&dir).ok();
});
