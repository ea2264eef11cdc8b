//! The GGUF reader on hostile input: every failure is a typed error, never a
//! panic, and nothing is allocated for a count the file cannot hold.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use lastmile_core::gguf::{GgmlType, GgufError, GgufFile, MAX_ARRAY_DEPTH};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn fixture_bytes(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(path).unwrap()
}

// ---- a minimal GGUF writer for hand-made files ------------------------------

fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// A metadata pair: key, value type id, encoded value.
fn kv(key: &str, type_id: u32, value: &[u8]) -> Vec<u8> {
    let mut out = string(key.as_bytes());
    out.extend(type_id.to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// A tensor-index entry.
fn tensor(name: &str, dims: &[u64], type_id: u32, offset: u64) -> Vec<u8> {
    let mut out = string(name.as_bytes());
    out.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        out.extend(d.to_le_bytes());
    }
    out.extend(type_id.to_le_bytes());
    out.extend(offset.to_le_bytes());
    out
}

/// A whole file: header with the stated counts, padding to `align`, `data`, padding.
fn file(
    version: u32,
    kvs: &[Vec<u8>],
    tensors: &[Vec<u8>],
    counts: Option<(u64, u64)>,
    align: usize,
    data: &[u8],
) -> Vec<u8> {
    let (n_tensors, n_kv) = counts.unwrap_or((tensors.len() as u64, kvs.len() as u64));
    let mut out = b"GGUF".to_vec();
    out.extend(version.to_le_bytes());
    out.extend(n_tensors.to_le_bytes());
    out.extend(n_kv.to_le_bytes());
    for part in kvs.iter().chain(tensors) {
        out.extend_from_slice(part);
    }
    out.resize(out.len().next_multiple_of(align), 0);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(align), 0);
    out
}

fn f32_data(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// One valid F32 tensor `x` of 4 values, plus the given metadata.
fn simple(kvs: &[Vec<u8>]) -> Vec<u8> {
    file(
        3,
        kvs,
        &[tensor("x", &[4], 0, 0)],
        None,
        32,
        &f32_data(&[1.0, 2.0, 3.0, 4.0]),
    )
}

fn err(bytes: &[u8]) -> GgufError {
    match GgufFile::from_bytes(bytes) {
        Ok(_) => panic!("a hostile file was accepted"),
        Err(e) => e,
    }
}

/// Position of the `n_dims` field of tensor `name`'s index entry in a fixture.
fn entry_of(bytes: &[u8], name: &str) -> usize {
    let needle = string(name.as_bytes());
    bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .unwrap()
        + needle.len()
}

fn patch_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn patch_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// (position of the type id, position of the offset) of tensor `name`.
fn type_and_offset_of(bytes: &[u8], name: &str) -> (usize, usize) {
    let at = entry_of(bytes, name);
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let type_at = at + 4 + 8 * n_dims;
    (type_at, type_at + 4)
}

// ---- tests -------------------------------------------------------------------

#[test]
fn the_builder_makes_valid_files() {
    let f = GgufFile::from_bytes(&simple(&[kv("a", 4, &7u32.to_le_bytes())])).unwrap();
    assert_eq!(f.dequantize("x").unwrap(), [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(f.metadata().get_u32("a").unwrap(), 7);
}

/// A file without tensors may end right after its metadata, as llama.cpp
/// writes vocabulary-only files; cut anywhere before that end it is an error.
#[test]
fn a_file_without_tensors_needs_no_padding() {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(1u64.to_le_bytes());
    bytes.extend(kv("a", 4, &7u32.to_le_bytes()));
    assert!(!bytes.len().is_multiple_of(32));
    let f = GgufFile::from_bytes(&bytes).unwrap();
    assert_eq!(f.metadata().get_u32("a").unwrap(), 7);
    assert_eq!(f.tensors().len(), 0);
    for n in 0..bytes.len() {
        assert!(
            GgufFile::from_bytes(&bytes[..n]).is_err(),
            "cut to {n} bytes"
        );
    }
}

#[test]
fn truncation_at_every_byte_is_an_error() {
    for name in [
        "gguf_fixture.gguf",
        "gguf_fixture_align64.gguf",
        "gguf_fixture_kquants.gguf",
    ] {
        let bytes = fixture_bytes(name);
        assert!(GgufFile::from_bytes(&bytes).is_ok());
        for n in 0..bytes.len() {
            match GgufFile::from_bytes(&bytes[..n]) {
                Err(
                    GgufError::Truncated { .. }
                    | GgufError::CountTooLarge { .. }
                    | GgufError::OutOfBounds { .. },
                ) => {}
                other => panic!("{name} cut to {n} bytes: {other:?}"),
            }
        }
    }
}

#[test]
fn truncated_files_on_disk_are_errors_too() {
    let bytes = fixture_bytes("gguf_fixture.gguf");
    let dir = std::env::temp_dir().join(format!("lastmile-gguf-trunc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cut.gguf");
    for n in (0..bytes.len()).step_by(3) {
        std::fs::write(&path, &bytes[..n]).unwrap();
        assert!(GgufFile::open(&path).is_err(), "cut to {n} bytes");
    }
    // A file that shrinks after being opened: the data read fails cleanly.
    std::fs::write(&path, &bytes).unwrap();
    let f = GgufFile::open(&path).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1300)
        .unwrap();
    assert!(matches!(
        f.dequantize("q4_1.cube"),
        Err(GgufError::Truncated { .. })
    ));
    assert!(matches!(
        GgufFile::open(dir.join("missing.gguf")),
        Err(GgufError::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn absurd_counts_are_refused_before_allocating() {
    for counts in [
        (u64::MAX, 0),
        (1 << 40, 0),
        (0, u64::MAX),
        (0, 1 << 40),
        (2, 1),
    ] {
        let bytes = file(3, &[], &[], Some(counts), 32, &[]);
        assert!(
            matches!(err(&bytes), GgufError::CountTooLarge { .. }),
            "{counts:?}"
        );
    }
    // Array counts, for every element type (ids 0..=12).
    for elem in 0u32..=12 {
        let mut value = elem.to_le_bytes().to_vec();
        value.extend(u64::MAX.to_le_bytes());
        let bytes = simple(&[kv("arr", 9, &value)]);
        assert!(
            matches!(err(&bytes), GgufError::CountTooLarge { .. }),
            "element type {elem}"
        );
    }
}

#[test]
fn huge_string_lengths_are_refused() {
    // key length
    let mut key = u64::MAX.to_le_bytes().to_vec();
    key.extend(b"k");
    let bytes = file(3, &[key], &[], None, 32, &[]);
    assert!(matches!(err(&bytes), GgufError::Truncated { .. }));
    // string value length
    let mut value = (1u64 << 62).to_le_bytes().to_vec();
    value.extend(b"abc");
    assert!(matches!(
        err(&simple(&[kv("s", 8, &value)])),
        GgufError::Truncated { .. }
    ));
    // tensor name length
    let mut entry = (u64::MAX - 3).to_le_bytes().to_vec();
    entry.extend([0; 24]);
    let bytes = file(3, &[], &[entry], None, 32, &[]);
    assert!(matches!(err(&bytes), GgufError::Truncated { .. }));
}

#[test]
fn unknown_types_are_typed_errors() {
    let mut bytes = fixture_bytes("gguf_fixture.gguf");
    let (type_at, _) = type_and_offset_of(&bytes, "q4_1.cube");
    for id in [4, 5, 31, 1000, u32::MAX] {
        patch_u32(&mut bytes, type_at, id);
        match err(&bytes) {
            GgufError::UnknownGgmlType { tensor, id: found } => {
                assert_eq!((tensor.as_str(), found), ("q4_1.cube", id));
            }
            other => panic!("{other:?}"),
        }
    }
    // unknown metadata value type, at the top level and as an array element type
    assert!(matches!(
        err(&simple(&[kv("k", 13, &[0; 8])])),
        GgufError::UnknownValueType { id: 13, .. }
    ));
    let mut value = 99u32.to_le_bytes().to_vec();
    value.extend(1u64.to_le_bytes());
    value.extend([0; 8]);
    assert!(matches!(
        err(&simple(&[kv("k", 9, &value)])),
        GgufError::UnknownValueType { id: 99, .. }
    ));
}

#[test]
fn types_that_cannot_be_dequantised_are_still_indexed() {
    // One IQ2_XXS super-block (256 elements, 66 bytes).
    let bytes = file(
        3,
        &[],
        &[tensor("k", &[256], GgmlType::IQ2_XXS.id(), 0)],
        None,
        32,
        &[0; 66],
    );
    let f = GgufFile::from_bytes(&bytes).unwrap();
    assert_eq!(f.tensor_info("k").unwrap().ggml_type(), GgmlType::IQ2_XXS);
    assert_eq!(f.tensor_data("k").unwrap().len(), 66);
    assert!(matches!(
        f.dequantize("k"),
        Err(GgufError::UnsupportedType {
            ggml_type: GgmlType::IQ2_XXS,
            ..
        })
    ));
}

#[test]
fn lying_offsets_are_refused() {
    let base = fixture_bytes("gguf_fixture.gguf");
    let (_, offset_at) = type_and_offset_of(&base, "q4_0.matrix");
    let original = u64::from_le_bytes(base[offset_at..offset_at + 8].try_into().unwrap());
    let with_offset = |offset: u64| {
        let mut b = base.clone();
        patch_u64(&mut b, offset_at, offset);
        err(&b)
    };
    // beyond the file, and overflowing when added to the data start
    assert!(matches!(
        with_offset(1 << 40),
        GgufError::OutOfBounds { .. }
    ));
    assert!(matches!(
        with_offset(u64::MAX - 31),
        GgufError::OutOfBounds { .. }
    ));
    // just past the end: the data (padded to 32) no longer fits
    let data_end = base.len() as u64 - 1216;
    assert!(matches!(
        with_offset(data_end),
        GgufError::OutOfBounds { .. }
    ));
    // misaligned
    assert!(matches!(
        with_offset(original + 1),
        GgufError::MisalignedOffset { alignment: 32, .. }
    ));
    // onto another tensor's data
    assert!(matches!(
        with_offset(original - 32),
        GgufError::Overlap { .. }
    ));
    assert!(matches!(with_offset(0), GgufError::Overlap { .. }));

    // The alignment is the file's own: 32-aligned is not enough in a 64-aligned file.
    let mut b = fixture_bytes("gguf_fixture_align64.gguf");
    let (_, at) = type_and_offset_of(&b, "b.q8_0");
    patch_u64(&mut b, at, 32);
    assert!(matches!(
        err(&b),
        GgufError::MisalignedOffset { alignment: 64, .. }
    ));
}

#[test]
fn bad_magic_and_unsupported_versions() {
    let base = fixture_bytes("gguf_fixture.gguf");
    for magic in [b"GGUG", b"GGML", b"\0\0\0\0"] {
        let mut b = base.clone();
        b[..4].copy_from_slice(magic);
        assert!(matches!(err(&b), GgufError::BadMagic { found } if &found == magic));
    }
    for (version, big_endian) in [(0, false), (1, false), (4, false), (0x0300_0000, true)] {
        let mut b = base.clone();
        patch_u32(&mut b, 4, version);
        match err(&b) {
            GgufError::UnsupportedVersion {
                version: v,
                big_endian: be,
            } => assert_eq!((v, be), (version, big_endian)),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn malformed_dimensions_are_refused() {
    let data = f32_data(&[0.0; 4]);
    let one = |dims: &[u64], type_id: u32| {
        err(&file(
            3,
            &[],
            &[tensor("t", dims, type_id, 0)],
            None,
            32,
            &data,
        ))
    };
    assert!(matches!(
        one(&[1, 1, 1, 1, 4], 0),
        GgufError::TooManyDims {
            n_dims: 5,
            max: 4,
            ..
        }
    ));
    assert!(matches!(
        one(&[1 << 32, 1 << 32], 0),
        GgufError::InvalidDims { .. }
    ));
    assert!(matches!(one(&[u64::MAX], 0), GgufError::InvalidDims { .. }));
    assert!(matches!(one(&[1 << 62], 0), GgufError::InvalidDims { .. }));
    // ne[0] must be a whole number of Q4_0 blocks
    assert!(matches!(one(&[48, 2], 2), GgufError::InvalidDims { .. }));
    // a 4-element tensor whose data is not there
    assert!(matches!(one(&[4, 4], 0), GgufError::OutOfBounds { .. }));
    // 4 dimensions are fine
    let f = GgufFile::from_bytes(&file(
        3,
        &[],
        &[tensor("t", &[1, 2, 1, 2], 0, 0)],
        None,
        32,
        &data,
    ))
    .unwrap();
    assert_eq!(f.tensor_info("t").unwrap().shape(), [2, 1, 2, 1]);
}

#[test]
fn duplicates_are_refused() {
    let a = kv("a", 4, &1u32.to_le_bytes());
    assert!(matches!(
        err(&simple(&[a.clone(), a])),
        GgufError::DuplicateKey { key } if key == "a"
    ));
    let bytes = file(
        3,
        &[],
        &[tensor("t", &[4], 0, 0), tensor("t", &[4], 0, 32)],
        None,
        32,
        &[0; 48],
    );
    assert!(matches!(err(&bytes), GgufError::DuplicateTensor { name } if name == "t"));
}

#[test]
fn the_alignment_must_be_a_u32_power_of_two() {
    for a in [0u32, 3, 48] {
        assert!(matches!(
            err(&simple(&[kv("general.alignment", 4, &a.to_le_bytes())])),
            GgufError::InvalidAlignment { .. }
        ));
    }
    assert!(matches!(
        err(&simple(&[kv(
            "general.alignment",
            10,
            &32u64.to_le_bytes()
        )])),
        GgufError::InvalidAlignment { .. }
    ));
    // A valid custom alignment moves the data section.
    let bytes = file(
        3,
        &[kv("general.alignment", 4, &256u32.to_le_bytes())],
        &[tensor("x", &[4], 0, 0)],
        None,
        256,
        &f32_data(&[5.0, 6.0, 7.0, 8.0]),
    );
    let f = GgufFile::from_bytes(&bytes).unwrap();
    assert_eq!((f.alignment(), f.data_offset()), (256, 256));
    assert_eq!(f.dequantize("x").unwrap(), [5.0, 6.0, 7.0, 8.0]);
}

#[test]
fn invalid_values_are_refused() {
    assert!(matches!(
        err(&simple(&[kv("b", 7, &[2])])),
        GgufError::InvalidBool { value: 2, .. }
    ));
    let mut bools = 7u32.to_le_bytes().to_vec();
    bools.extend(2u64.to_le_bytes());
    bools.extend([1, 9]);
    assert!(matches!(
        err(&simple(&[kv("b", 9, &bools)])),
        GgufError::InvalidBool { value: 9, .. }
    ));
    assert!(matches!(
        err(&simple(&[kv("s", 8, &string(&[0xff, 0xfe]))])),
        GgufError::InvalidUtf8 { .. }
    ));
    let mut bad_key = string(&[0xc3, 0x28]);
    bad_key.extend(4u32.to_le_bytes());
    bad_key.extend(1u32.to_le_bytes());
    assert!(matches!(
        err(&simple(&[bad_key])),
        GgufError::InvalidUtf8 { .. }
    ));
}

/// An array nested `depth` levels deep with one string at the bottom.
fn nested(depth: usize) -> Vec<u8> {
    let mut value = 8u32.to_le_bytes().to_vec(); // innermost: array of one string
    value.extend(1u64.to_le_bytes());
    value.extend(string(b"leaf"));
    for _ in 1..depth {
        let mut outer = 9u32.to_le_bytes().to_vec();
        outer.extend(1u64.to_le_bytes());
        outer.extend(value);
        value = outer;
    }
    value
}

#[test]
fn array_nesting_is_capped() {
    let ok = GgufFile::from_bytes(&simple(&[kv("n", 9, &nested(MAX_ARRAY_DEPTH))])).unwrap();
    assert_eq!(ok.metadata().get_nested_array("n").unwrap().len(), 1);
    assert!(matches!(
        err(&simple(&[kv("n", 9, &nested(MAX_ARRAY_DEPTH + 1))])),
        GgufError::NestingTooDeep { .. }
    ));
    // A deep chain far beyond the cap fails at the cap, without deep recursion.
    assert!(matches!(
        err(&simple(&[kv("n", 9, &nested(10_000))])),
        GgufError::NestingTooDeep { .. }
    ));
}

#[test]
fn random_corruption_never_panics() {
    // Seeded mutations of the fixture's header and of its first data bytes:
    // each must give a typed error or a file whose tensors all read.
    let base = fixture_bytes("gguf_fixture.gguf");
    let mut rng = StdRng::seed_from_u64(14);
    let (mut accepted, mut rejected) = (0, 0);
    for _ in 0..3000 {
        let mut b = base.clone();
        for _ in 0..rng.random_range(1..5) {
            let at = rng.random_range(0..1300);
            b[at] = match rng.random_range(0..3) {
                0 => rng.random(),
                1 => 0xff,
                _ => b[at] ^ (1 << rng.random_range(0..8)),
            };
        }
        match GgufFile::from_bytes(&b) {
            Ok(f) => {
                accepted += 1;
                for t in f.tensors() {
                    match f.dequantize(t.name()) {
                        Ok(v) => assert_eq!(v.len(), t.n_elements()),
                        Err(GgufError::UnsupportedType { .. }) => {}
                        Err(e) => panic!("accepted file, unreadable tensor: {e}"),
                    }
                }
            }
            Err(_) => rejected += 1,
        }
    }
    eprintln!("3000 corrupted copies: {accepted} accepted, {rejected} rejected");
    // Both outcomes occur (data-byte changes are legal, header damage is not).
    assert!(
        accepted > 100 && rejected > 100,
        "{accepted} accepted, {rejected} rejected"
    );
}
