//! safetensors round trips and hostile files.
#![allow(clippy::unwrap_used)]

use burn::tensor::{Int, Tensor};
use lastmile_core::CoreError;
use lastmile_core::backend_test;
use lastmile_core::convert::{indices_to_vec, tensor_to_vec};
use lastmile_core::tensor_file::{TensorFile, TensorValues};

fn header_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn assert_invalid(bytes: &[u8], why: &str) {
    match TensorFile::from_bytes(bytes) {
        Err(CoreError::InvalidFile(_)) => {}
        other => panic!("{why}: expected InvalidFile, got {other:?}"),
    }
}

backend_test!(round_trip_preserves_tensors_and_metadata, |device| {
    let a = Tensor::<2>::from_floats([[1.0, -2.5, 3.25], [0.0, 1e-7, -1e7]], device);
    let idx = Tensor::<2, Int>::from_ints([[0, 1, 2], [5, 6, 7]], device);
    let mut file = TensorFile::new();
    file.insert_float("w", a.clone()).unwrap();
    file.insert_indices(
        "idx",
        vec![2, 3],
        indices_to_vec(idx)
            .unwrap()
            .iter()
            .map(|&i| i as i64)
            .collect(),
    )
    .unwrap();
    file.set_metadata("kind", "lora");
    let dir = std::env::temp_dir().join(format!(
        "lastmile-core-rt-{}-{:?}",
        std::process::id(),
        lastmile_core::Backend::of(device)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.safetensors");
    file.save(&path).unwrap();
    let back = TensorFile::load(&path).unwrap();
    assert_eq!(back, file);
    let w: Tensor<2> = back.float("w", device).unwrap();
    assert_eq!(tensor_to_vec(w).unwrap(), tensor_to_vec(a).unwrap());
    let i: Tensor<2, Int> = back.int("idx", device).unwrap();
    assert_eq!(indices_to_vec(i).unwrap(), vec![0, 1, 2, 5, 6, 7]);
    assert_eq!(back.metadata("kind"), Some("lora"));
    // wrong rank, wrong dtype, missing name
    assert!(back.float::<1>("w", device).is_err());
    assert!(back.int::<2>("w", device).is_err());
    assert!(matches!(
        back.float::<2>("nope", device),
        Err(CoreError::MissingTensor { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
});

#[test]
fn hostile_files_are_rejected_without_panicking() {
    // too short for the length prefix
    assert_invalid(&[1, 2, 3], "truncated prefix");
    // header length far larger than the file (would be a huge allocation if trusted)
    let mut lying = u64::MAX.to_le_bytes().to_vec();
    lying.extend_from_slice(b"{}");
    assert_invalid(&lying, "lying header length");
    let mut lying = (1u64 << 40).to_le_bytes().to_vec();
    lying.extend_from_slice(b"{}");
    assert_invalid(&lying, "header past end");
    // header is not JSON / not UTF-8
    assert_invalid(&header_file("not json", &[]), "bad JSON");
    assert_invalid(
        &{
            let mut v = 2u64.to_le_bytes().to_vec();
            v.extend_from_slice(&[0xff, 0xfe]);
            v
        },
        "bad UTF-8",
    );
    // huge declared shape with tiny data
    assert_invalid(
        &header_file(
            r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#,
            &[0; 8],
        ),
        "huge shape",
    );
    // shape product overflowing usize
    assert_invalid(
        &header_file(
            r#"{"w":{"dtype":"F32","shape":[18446744073709551615,18446744073709551615],"data_offsets":[0,8]}}"#,
            &[0; 8],
        ),
        "overflowing shape",
    );
    // offsets past the end of the data
    assert_invalid(
        &header_file(
            r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            &[0; 8],
        ),
        "offsets past end",
    );
    // shape and offsets disagree
    assert_invalid(
        &header_file(
            r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#,
            &[0; 16],
        ),
        "shape/offset mismatch",
    );
    // overlapping tensors
    assert_invalid(
        &header_file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            &[0; 12],
        ),
        "overlap",
    );
    // unsupported dtype
    assert_invalid(
        &header_file(
            r#"{"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#,
            &[0; 4],
        ),
        "unsupported dtype",
    );
    // missing fields
    assert_invalid(
        &header_file(r#"{"w":{"dtype":"F32"}}"#, &[]),
        "missing fields",
    );
}

#[test]
fn load_refuses_files_over_the_limit_and_missing_files() {
    let mut file = TensorFile::new();
    file.insert("v", vec![1000], TensorValues::F32(vec![0.5; 1000]))
        .unwrap();
    let path = std::env::temp_dir().join(format!(
        "lastmile-core-limit-{}.safetensors",
        std::process::id()
    ));
    file.save(&path).unwrap();
    assert!(matches!(
        TensorFile::load_with_limit(&path, 100),
        Err(CoreError::InvalidFile(_))
    ));
    assert!(TensorFile::load_with_limit(&path, 1 << 20).is_ok());
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(TensorFile::load(&path), Err(CoreError::Io { .. })));
}

#[test]
fn insert_checks_shapes() {
    let mut file = TensorFile::new();
    assert!(
        file.insert("x", vec![2, 2], TensorValues::F32(vec![1.0; 3]))
            .is_err()
    );
    assert!(file.insert_indices("i", vec![3], vec![1, 2]).is_err());
    assert!(file.is_empty());
}
