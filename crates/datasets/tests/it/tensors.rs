//! Conversions to burn tensors on the flex device hold the same values.

use burn::prelude::Device;
use lastmile_core::CoreError;
use lastmile_datasets::{DatasetError, TextCorpus, WindowBatcher, diabetes, digits, iris};

#[test]
fn features_and_labels_round_trip() {
    let device = Device::flex();
    for ds in [iris().expect("iris"), digits().expect("digits")] {
        let x = ds.features_tensor(&device);
        assert_eq!(x.dims(), [ds.n_samples(), ds.n_features()]);
        let values = x.into_data().try_to_vec::<f32>().expect("f32 tensor");
        assert_eq!(values, ds.features());

        let y = ds.labels_tensor(&device).expect("classification");
        assert_eq!(y.dims(), [ds.n_samples()]);
        let labels = y.into_data().try_to_vec_as::<i64>().expect("int tensor");
        let expected: Vec<i64> = ds
            .labels()
            .expect("classification")
            .iter()
            .map(|&l| l as i64)
            .collect();
        assert_eq!(labels, expected);

        assert!(matches!(
            ds.targets_tensor(&device),
            Err(DatasetError::TargetKind { .. })
        ));
    }
}

#[test]
fn regression_targets_round_trip() {
    let device = Device::flex();
    let ds = diabetes().expect("diabetes");
    let y = ds.targets_tensor(&device).expect("regression");
    let values = y.into_data().try_to_vec::<f32>().expect("f32 tensor");
    assert_eq!(values, ds.values().expect("regression"));
    assert!(matches!(
        ds.labels_tensor(&device),
        Err(DatasetError::TargetKind { .. })
    ));
}

#[test]
fn subsets_and_empty_datasets_convert() {
    let device = Device::flex();
    let ds = iris().expect("iris");
    let sub = ds.subset(&[3, 1, 4]).expect("valid indices");
    let x = sub.features_tensor(&device);
    assert_eq!(x.dims(), [3, 4]);
    let empty = ds.subset(&[]).expect("empty subset");
    assert_eq!(empty.features_tensor(&device).dims(), [0, 4]);
    let r = ds.subset(&[0, 150]);
    assert!(
        matches!(
            &r,
            Err(DatasetError::Core(CoreError::IndexOutOfRange {
                what,
                index: 150,
                bound: 150
            })) if what == "indices[1]"
        ),
        "{r:?}"
    );
}

#[test]
fn window_batches_round_trip() {
    let device = Device::flex();
    let corpus = TextCorpus::rust_book(0.1).expect("valid fraction");
    let mut batcher = WindowBatcher::new(corpus.train(), 48, 6, 123).expect("valid");
    let batch = batcher.next_batch();
    let x = batch.inputs_tensor(&device);
    let y = batch.targets_tensor(&device);
    assert_eq!(x.dims(), [6, 48]);
    assert_eq!(y.dims(), [6, 48]);
    let xs = x.into_data().try_to_vec_as::<i64>().expect("int tensor");
    let ys = y.into_data().try_to_vec_as::<i64>().expect("int tensor");
    let as_i64 = |v: &[u32]| v.iter().map(|&t| i64::from(t)).collect::<Vec<_>>();
    assert_eq!(xs, as_i64(&batch.inputs));
    assert_eq!(ys, as_i64(&batch.targets));
}
