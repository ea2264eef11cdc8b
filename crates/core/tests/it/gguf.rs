//! The GGUF reader against the `gguf` Python package (an independent
//! implementation): the fixtures in `tests/fixtures/` were written and read
//! back by it (`make_gguf_fixture.py`, gguf 0.19.0, numpy 2.4.6), and every
//! value it dequantised is compared here **bit for bit** (tolerance 0: both
//! implementations widen the f16 scales exactly and do one f32 multiply,
//! plus one f32 add for Q4_1, per element; NaN is compared as NaN because
//! f16 NaN payload handling may differ).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use burn::tensor::Tensor;
use lastmile_core::backend_test;
use lastmile_core::convert::tensor_to_vec;
use lastmile_core::gguf::{GgmlType, GgufError, GgufFile, MetadataArray, MetadataValue};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("gguf_fixture.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn same_f32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Index and values of `file` against one file entry of the JSON.
fn check_file(file: &GgufFile, want: &Value) {
    let name = want["file"].as_str().unwrap();
    assert_eq!(file.version() as u64, want["version"].as_u64().unwrap());
    assert_eq!(file.alignment(), want["alignment"].as_u64().unwrap());
    assert_eq!(file.data_offset(), want["data_offset"].as_u64().unwrap());
    assert_eq!(file.file_len(), want["file_len"].as_u64().unwrap());
    let tensors = want["tensors"].as_array().unwrap();
    assert_eq!(file.tensors().len(), tensors.len(), "{name}");
    for (info, t) in file.tensors().iter().zip(tensors) {
        let tname = t["name"].as_str().unwrap();
        assert_eq!(info.name(), tname);
        assert_eq!(info.ggml_type().name(), t["ggml_type"].as_str().unwrap());
        assert_eq!(info.ggml_type().id() as u64, t["type_id"].as_u64().unwrap());
        let ne: Vec<usize> = u64s(&t["ne"]).into_iter().map(|d| d as usize).collect();
        assert_eq!(info.dims(), ne.as_slice(), "{tname}");
        let mut shape = ne.clone();
        shape.reverse();
        assert_eq!(info.shape(), shape, "{tname}");
        assert_eq!(info.offset(), t["offset"].as_u64().unwrap(), "{tname}");
        assert_eq!(
            info.n_bytes() as u64,
            t["n_bytes"].as_u64().unwrap(),
            "{tname}"
        );

        let want_bits = u64s(&t["bits"]);
        let got = file.dequantize(tname).unwrap();
        assert_eq!(got.len(), want_bits.len(), "{tname}");
        assert_eq!(info.n_elements(), got.len());
        for (i, (&g, &w)) in got.iter().zip(&want_bits).enumerate() {
            let w = f32::from_bits(w as u32);
            assert!(
                same_f32(g, w),
                "{name}: {tname}[{i}] = {g:e} ({:#010x}), gguf package {w:e} ({:#010x})",
                g.to_bits(),
                w.to_bits()
            );
        }
    }
}

#[test]
fn dequantisation_matches_the_gguf_package_bit_for_bit() {
    let want = expected();
    let mut types_seen = std::collections::BTreeSet::new();
    for entry in want["files"].as_array().unwrap() {
        let path = fixture(entry["file"].as_str().unwrap());
        // From disk (header streamed, tensors read on request) and from memory.
        let from_disk = GgufFile::open(&path).unwrap();
        check_file(&from_disk, entry);
        let from_bytes = GgufFile::from_bytes(&std::fs::read(&path).unwrap()).unwrap();
        check_file(&from_bytes, entry);
        for t in from_disk.tensors() {
            types_seen.insert(t.ggml_type().name());
        }
    }
    // The fixture covers every type we dequantise.
    for t in GgmlType::all().filter(|t| t.can_dequantize()) {
        assert!(types_seen.contains(t.name()), "fixture lacks {t}");
    }
}

fn check_metadata_entry(file: &GgufFile, e: &Value) {
    let meta = file.metadata();
    let key = e["key"].as_str().unwrap();
    let v = &e["value"];
    match e["type"].as_str().unwrap() {
        "u8" => assert_eq!(meta.get_u8(key).unwrap() as u64, v.as_u64().unwrap()),
        "i8" => assert_eq!(meta.get_i8(key).unwrap() as i64, v.as_i64().unwrap()),
        "u16" => assert_eq!(meta.get_u16(key).unwrap() as u64, v.as_u64().unwrap()),
        "i16" => assert_eq!(meta.get_i16(key).unwrap() as i64, v.as_i64().unwrap()),
        "u32" => assert_eq!(meta.get_u32(key).unwrap() as u64, v.as_u64().unwrap()),
        "i32" => assert_eq!(meta.get_i32(key).unwrap() as i64, v.as_i64().unwrap()),
        "u64" => assert_eq!(meta.get_u64(key).unwrap(), v.as_u64().unwrap()),
        "i64" => assert_eq!(meta.get_i64(key).unwrap(), v.as_i64().unwrap()),
        "f32" => assert_eq!(
            meta.get_f32(key).unwrap().to_bits() as u64,
            e["bits"].as_u64().unwrap()
        ),
        "f64" => assert_eq!(
            meta.get_f64(key).unwrap().to_bits(),
            e["bits"].as_u64().unwrap()
        ),
        "bool" => assert_eq!(meta.get_bool(key).unwrap(), v.as_bool().unwrap()),
        "string" => assert_eq!(meta.get_str(key).unwrap(), v.as_str().unwrap()),
        "array" => match e["element"].as_str().unwrap() {
            "string" => {
                let want: Vec<&str> = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap())
                    .collect();
                assert_eq!(meta.get_str_array(key).unwrap(), want.as_slice());
            }
            "i32" => {
                let want: Vec<i32> = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap() as i32)
                    .collect();
                assert_eq!(meta.get_i32_array(key).unwrap(), want.as_slice());
            }
            "u8" => {
                let want: Vec<u8> = u64s(v).into_iter().map(|x| x as u8).collect();
                assert_eq!(meta.get_u8_array(key).unwrap(), want.as_slice());
            }
            "u64" => assert_eq!(meta.get_u64_array(key).unwrap(), u64s(v).as_slice()),
            "bool" => {
                let want: Vec<bool> = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_bool().unwrap())
                    .collect();
                assert_eq!(meta.get_bool_array(key).unwrap(), want.as_slice());
            }
            "f32" => {
                let got: Vec<u64> = meta
                    .get_f32_array(key)
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits() as u64)
                    .collect();
                assert_eq!(got, u64s(&e["bits"]));
            }
            "array" => {
                // Arrays of arrays of strings.
                let got = meta.get_nested_array(key).unwrap();
                let want = v.as_array().unwrap();
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(want) {
                    let w: Vec<String> = w
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s.as_str().unwrap().to_owned())
                        .collect();
                    assert_eq!(g, &MetadataArray::String(w));
                }
            }
            other => panic!("fixture element type {other} not covered by this test"),
        },
        other => panic!("fixture type {other} not covered by this test"),
    }
}

#[test]
fn metadata_matches_what_the_gguf_package_wrote() {
    let want = expected();
    for entry in want["files"].as_array().unwrap() {
        let file = GgufFile::open(fixture(entry["file"].as_str().unwrap())).unwrap();
        let expected_meta = entry["metadata"].as_array().unwrap();
        assert_eq!(file.metadata().len(), expected_meta.len());
        for e in expected_meta {
            check_metadata_entry(&file, e);
        }
    }
}

#[test]
fn getters_name_the_key_and_both_types() {
    let file = GgufFile::open(fixture("gguf_fixture.gguf")).unwrap();
    let meta = file.metadata();
    match meta.get_u64("test.u32") {
        Err(GgufError::WrongType {
            key,
            expected,
            found,
        }) => {
            assert_eq!(
                (key.as_str(), expected.as_str(), found.as_str()),
                ("test.u32", "u64", "u32")
            );
        }
        other => panic!("{other:?}"),
    }
    match meta.get_i32_array("test.strings") {
        Err(e @ GgufError::WrongType { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("test.strings")
                    && msg.contains("array of i32")
                    && msg.contains("array of string"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        meta.get_str("test.strings"),
        Err(GgufError::WrongType { .. })
    ));
    assert!(
        matches!(meta.get_str("no.such.key"), Err(GgufError::MissingKey { key }) if key == "no.such.key")
    );
    assert!(matches!(
        meta.value("test.bool"),
        Ok(MetadataValue::Bool(true))
    ));
    assert_eq!(meta.keys().next(), Some("general.architecture"));
    assert!(matches!(
        file.dequantize("no.such.tensor"),
        Err(GgufError::MissingTensor { count: 8, .. })
    ));
    // Converts into the crate-wide error.
    let core: lastmile_core::CoreError = meta.get_bool("test.u8").unwrap_err().into();
    assert!(core.to_string().contains("test.u8"), "{core}");
}

#[test]
fn version_2_reads_like_version_3() {
    // Versions 2 and 3 share the little-endian layout.
    let mut bytes = std::fs::read(fixture("gguf_fixture.gguf")).unwrap();
    let v3 = GgufFile::from_bytes(&bytes).unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let v2 = GgufFile::from_bytes(&bytes).unwrap();
    assert_eq!(v2.version(), 2);
    assert_eq!(v2.metadata(), v3.metadata());
    assert_eq!(v2.tensors(), v3.tensors());
    for t in v3.tensors() {
        let bits = |f: &GgufFile| -> Vec<u32> {
            f.dequantize(t.name())
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        assert_eq!(bits(&v2), bits(&v3));
    }
}

backend_test!(burn_tensors_have_the_outermost_first_shape, |device| {
    let file = GgufFile::open(fixture("gguf_fixture.gguf")).unwrap();
    // ne = [7, 3, 5] -> [5, 3, 7], values in storage order.
    let t: Tensor<3> = file.tensor("f32.odd", device).unwrap();
    assert_eq!(t.dims(), [5, 3, 7]);
    let got = tensor_to_vec(t).unwrap();
    let want = file.dequantize("f32.odd").unwrap();
    assert!(got.iter().zip(&want).all(|(&a, &b)| same_f32(a, b)));
    // Element [r, c] of the [3, 64] Q8_0 matrix is value r·64 + c (ne[0] = 64 fastest).
    let m: Tensor<2> = file.tensor("q8_0.matrix", device).unwrap();
    assert_eq!(m.dims(), [3, 64]);
    let row2 = tensor_to_vec(m.slice([2..3, 0..64])).unwrap();
    assert_eq!(row2, file.dequantize("q8_0.matrix").unwrap()[128..192]);
    // Leading 1s when D exceeds the stored rank; an error when it is smaller.
    let v: Tensor<2> = file.tensor("q8_0.vector", device).unwrap();
    assert_eq!(v.dims(), [1, 96]);
    assert!(matches!(
        file.tensor::<1>("q4_1.cube", device),
        Err(GgufError::Rank { rank: 1, .. })
    ));
});

#[test]
fn block_sizes_agree_with_the_gguf_package() {
    let want = expected();
    let table = want["quant_sizes"].as_object().unwrap();
    for (name, row) in table {
        let row = u64s(row);
        let t = GgmlType::from_id(row[0] as u32).unwrap_or_else(|| panic!("unknown {name}"));
        assert_eq!(t.name(), name);
        assert_eq!(t.block_size() as u64, row[1], "{name}");
        if t == GgmlType::Q8_1 {
            // ggml's block_q8_1 is two f16 and 32 quants (36 bytes); the Python
            // table still lists the older two-f32 layout (40).
            assert_eq!((t.type_size(), row[2]), (36, 40));
        } else {
            assert_eq!(t.type_size() as u64, row[2], "{name}");
        }
    }
    assert_eq!(GgmlType::all().count(), table.len());
}
