//! The expert store: round trips, measured reads, and hostile files (corrupt,
//! truncated, lying headers, random damage) giving exact typed errors.
#![allow(clippy::unwrap_used)]

use crate::common::{TempFile, temp_path};
use lastmile_core::CoreError;
use lastmile_moe_cache::MoeCacheError;
use lastmile_moe_cache::store::{
    ExpertStore, ExpertStoreWriter, LayerSpec, PageCache, STORE_MAGIC, StoreOptions, TensorSpec,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn value(layer: usize, expert: usize, tensor: usize, i: usize) -> f32 {
    (layer * 1000 + expert * 100 + tensor * 10) as f32 + i as f32 * 0.01
}

/// Two layers: 3 SwiGLU experts of d=4, f=6, and 5 experts of one [3] tensor.
fn specs() -> Vec<LayerSpec> {
    vec![
        LayerSpec::swiglu(3, 4, 6).unwrap(),
        LayerSpec::new(
            5,
            vec![TensorSpec {
                name: "w".into(),
                shape: vec![3],
            }],
        )
        .unwrap(),
    ]
}

fn write(path: &std::path::Path) {
    let specs = specs();
    let mut w = ExpertStoreWriter::create(path, specs.clone()).unwrap();
    // Out of order, with one rewrite.
    for (l, spec) in specs.iter().enumerate().rev() {
        for e in (0..spec.experts()).rev() {
            let data: Vec<(Vec<usize>, Vec<f32>)> = spec
                .tensors()
                .iter()
                .enumerate()
                .map(|(t, ts)| {
                    let n = ts.shape.iter().product();
                    (
                        ts.shape.clone(),
                        (0..n).map(|i| value(l, e, t, i)).collect(),
                    )
                })
                .collect();
            let refs: Vec<(&[usize], &[f32])> = data
                .iter()
                .map(|(s, v)| (s.as_slice(), v.as_slice()))
                .collect();
            if l == 0 && e == 1 {
                let zeros: Vec<Vec<f32>> = data.iter().map(|(_, v)| vec![0.0; v.len()]).collect();
                let z: Vec<(&[usize], &[f32])> = data
                    .iter()
                    .zip(&zeros)
                    .map(|((s, _), v)| (s.as_slice(), v.as_slice()))
                    .collect();
                w.write_expert(l, e, &z).unwrap();
            }
            w.write_expert(l, e, &refs).unwrap();
        }
    }
    w.finish().unwrap();
}

fn keep() -> StoreOptions {
    StoreOptions::default().with_page_cache(PageCache::Keep)
}

fn open_bytes(bytes: &[u8]) -> lastmile_moe_cache::Result<ExpertStore> {
    let file = TempFile(temp_path("bytes"));
    std::fs::write(&file.0, bytes).unwrap();
    ExpertStore::open(&file.0, keep())
}

fn valid_bytes() -> Vec<u8> {
    let file = TempFile(temp_path("valid"));
    write(&file.0);
    std::fs::read(&file.0).unwrap()
}

#[test]
fn experts_round_trip_and_reads_are_measured() {
    let file = TempFile(temp_path("roundtrip"));
    write(&file.0);
    let options = if cfg!(any(target_os = "linux", target_os = "android")) {
        StoreOptions::default()
    } else {
        keep()
    };
    let store = ExpertStore::open(&file.0, options).unwrap();
    assert_eq!(store.num_layers(), 2);
    assert_eq!(store.experts_per_layer(), vec![3, 5]);
    assert_eq!(store.expert_bytes_per_layer(), vec![4 * 3 * 24, 12]);
    for (l, spec) in specs().iter().enumerate() {
        for e in 0..spec.experts() {
            let w = store.load(l, e).unwrap();
            assert_eq!((w.layer, w.expert, w.bytes), (l, e, spec.expert_bytes()));
            for (t, ts) in spec.tensors().iter().enumerate() {
                assert_eq!(w.shapes[t], ts.shape);
                let expected: Vec<f32> = (0..ts.shape.iter().product())
                    .map(|i| value(l, e, t, i))
                    .collect();
                assert_eq!(w.tensor(t), Some(expected.as_slice()));
            }
        }
    }
    let s = store.stats();
    assert_eq!(s.loads, 8);
    assert_eq!(s.bytes, 3 * 288 + 5 * 12);
    assert!(s.read_seconds > 0.0);
    if options.page_cache == PageCache::Drop {
        assert_eq!(s.page_cache_drops, 8);
        store.drop_page_cache().unwrap();
    }
    store.reset_stats();
    assert_eq!(store.stats().loads, 0);
    assert!(matches!(
        store.load(2, 0),
        Err(MoeCacheError::LayerOutOfRange {
            layer: 2,
            layers: 2
        })
    ));
    assert!(matches!(
        store.load(1, 5),
        Err(MoeCacheError::ExpertOutOfRange {
            layer: 1,
            expert: 5,
            experts: 5
        })
    ));
}

#[test]
fn the_writer_checks_shapes_counts_and_completeness() {
    let file = TempFile(temp_path("writer"));
    let mut w = ExpertStoreWriter::create(&file.0, specs()).unwrap();
    let g = vec![0.0f32; 24];
    let bad_shape = w.write_expert(0, 0, &[(&[6, 4], &g), (&[4, 6], &g), (&[6, 4], &g)]);
    assert!(matches!(
        bad_shape,
        Err(MoeCacheError::ExpertShapeMismatch { layer: 0, expert: 0, ref tensor, ref expected, ref found })
            if tensor == "w_gate" && expected == &vec![4, 6] && found == &vec![6, 4]
    ));
    assert!(matches!(
        w.write_expert(0, 0, &[(&[4, 6], &g)]),
        Err(MoeCacheError::Core(CoreError::LengthMismatch {
            expected: 3,
            found: 1,
            ..
        }))
    ));
    assert!(matches!(
        w.write_expert(0, 0, &[(&[4, 6], &g[..20]), (&[4, 6], &g), (&[6, 4], &g)]),
        Err(MoeCacheError::Core(CoreError::LengthMismatch {
            expected: 24,
            found: 20,
            ..
        }))
    ));
    let mut nan = g.clone();
    nan[3] = f32::NAN;
    assert!(matches!(
        w.write_expert(0, 0, &[(&[4, 6], &nan), (&[4, 6], &g), (&[6, 4], &g)]),
        Err(MoeCacheError::Core(CoreError::NonFinite { index: 3, .. }))
    ));
    assert!(matches!(
        w.write_expert(2, 0, &[]),
        Err(MoeCacheError::LayerOutOfRange {
            layer: 2,
            layers: 2
        })
    ));
    assert!(matches!(
        w.write_expert(1, 5, &[]),
        Err(MoeCacheError::ExpertOutOfRange { expert: 5, .. })
    ));
    w.write_expert(0, 0, &[(&[4, 6], &g), (&[4, 6], &g), (&[6, 4], &g)])
        .unwrap();
    assert!(matches!(
        w.finish(),
        Err(MoeCacheError::MissingExpert {
            layer: 0,
            expert: 1
        })
    ));
    // An unfinished store has no header: it does not open.
    assert!(matches!(
        ExpertStore::open(&file.0, keep()),
        Err(MoeCacheError::BadMagic { .. })
    ));
    assert!(matches!(
        LayerSpec::new(
            2,
            vec![TensorSpec {
                name: String::new(),
                shape: vec![2]
            }]
        ),
        Err(MoeCacheError::Core(CoreError::OutOfRange { .. }))
    ));
    assert!(matches!(
        ExpertStoreWriter::create(&file.0, vec![]),
        Err(MoeCacheError::Core(CoreError::Empty { .. }))
    ));
}

#[test]
fn damaged_files_give_exact_errors() {
    let good = valid_bytes();
    assert!(open_bytes(&good).is_ok());
    assert!(matches!(
        ExpertStore::open(temp_path("missing"), keep()),
        Err(MoeCacheError::Core(CoreError::Io { .. }))
    ));
    assert!(matches!(
        open_bytes(&good[..10]),
        Err(MoeCacheError::Truncated {
            expected: 16,
            found: 10,
            ..
        })
    ));
    let mut magic = good.clone();
    magic[0] = b'X';
    assert!(matches!(
        open_bytes(&magic),
        Err(MoeCacheError::BadMagic { .. })
    ));
    let mut version = good.clone();
    version[8] = 2;
    assert!(matches!(
        open_bytes(&version),
        Err(MoeCacheError::UnsupportedVersion {
            found: 2,
            supported: 1,
            ..
        })
    ));
    // Header longer than the file, and longer than the limit.
    let mut long = good.clone();
    long[12..16].copy_from_slice(&(good.len() as u32).to_le_bytes());
    assert!(matches!(
        open_bytes(&long),
        Err(MoeCacheError::Truncated { .. })
    ));
    let file = TempFile(temp_path("limit"));
    std::fs::write(&file.0, &good).unwrap();
    assert!(matches!(
        ExpertStore::open(&file.0, keep().with_max_header_bytes(16)),
        Err(MoeCacheError::FileTooLarge { limit: 16, .. })
    ));
    // A flipped header byte: checksum.
    let mut flipped = good.clone();
    flipped[20] ^= 0x40;
    assert!(matches!(
        open_bytes(&flipped),
        Err(MoeCacheError::ChecksumMismatch { .. })
    ));
    // Cut inside the last expert: the index promises more than the file holds.
    let cut = &good[..good.len() - 5];
    assert!(matches!(
        open_bytes(cut),
        Err(MoeCacheError::Truncated { expected, found, .. }) if expected == good.len() as u64 && found == expected - 5
    ));
    // A flipped data byte: that expert's load fails its checksum, the others load.
    let mut data = good.clone();
    let last = data.len() - 1;
    data[last] ^= 0x01;
    let store = open_bytes(&data).unwrap();
    assert!(
        matches!(store.load(1, 4), Err(MoeCacheError::ChecksumMismatch { ref what, .. }) if what == "layer 1, expert 4")
    );
    assert!(store.load(1, 3).is_ok());
}

/// Byte offset of each field of the valid store's header.
struct Layout {
    body: usize,
    layer0_rank: usize,
    layer0_dim0: usize,
    index: usize,
}

fn layout() -> Layout {
    let body = 16;
    // num_layers, alignment, layer 0: experts, num_tensors, then "w_gate": len, name
    let layer0_rank = body + 4 + 4 + 4 + 4 + 2 + 6;
    let layer0_dim0 = layer0_rank + 1;
    // layer 0 tensors: w_gate (2+6+1+16), w_up (2+4+1+16), w_down (2+6+1+16); layer 1: 8 + (2+1+1+8)
    let index = body + 8 + 8 + 25 + 23 + 25 + 8 + 12;
    Layout {
        body,
        layer0_rank,
        layer0_dim0,
        index,
    }
}

/// Applies `edit` to a valid store and re-signs its header, so only the
/// structural checks can catch the lie.
fn lie(edit: impl FnOnce(&mut [u8])) -> lastmile_moe_cache::Result<ExpertStore> {
    let mut bytes = valid_bytes();
    let body_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let end = 16 + body_len - 4;
    edit(&mut bytes);
    let crc = crc32(&bytes[..end]);
    bytes[end..end + 4].copy_from_slice(&crc.to_le_bytes());
    open_bytes(&bytes)
}

fn crc32(bytes: &[u8]) -> u32 {
    // Bitwise CRC-32 (IEEE), independent of the crate's implementation.
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn corrupt(r: lastmile_moe_cache::Result<ExpertStore>) -> String {
    match r {
        Err(MoeCacheError::CorruptFile {
            what: "expert store",
            reason,
        }) => reason,
        other => panic!("expected CorruptFile, got {other:?}"),
    }
}

#[test]
fn lying_headers_are_caught_by_structural_checks() {
    let l = layout();
    assert!(
        lie(|_| {}).is_ok(),
        "re-signing alone must keep the file valid"
    );
    // Counts too large for the header: bounded before any allocation.
    corrupt(lie(|b| {
        b[l.body..l.body + 4].copy_from_slice(&u32::MAX.to_le_bytes())
    }));
    corrupt(lie(|b| {
        b[l.body + 8..l.body + 12].copy_from_slice(&u32::MAX.to_le_bytes())
    }));
    corrupt(lie(|b| {
        b[l.body + 4..l.body + 8].copy_from_slice(&3u32.to_le_bytes())
    })); // alignment
    corrupt(lie(|b| b[l.layer0_rank] = 0));
    corrupt(lie(|b| put_u64(b, l.layer0_dim0, u64::MAX)));
    // A smaller dim changes the layer's expert size: indexed lengths no longer match.
    corrupt(lie(|b| put_u64(b, l.layer0_dim0, 3)));
    // Index entries: overlapping, misaligned, inside the header, wrong length.
    let entry = |i: usize| l.index + 20 * i;
    let reason = corrupt(lie(|b| {
        let first = get_u64(b, entry(0));
        put_u64(b, entry(1), first);
    }));
    assert!(reason.contains("overlap"), "{reason}");
    corrupt(lie(|b| {
        let at = get_u64(b, entry(2));
        put_u64(b, entry(2), at + 8);
    }));
    corrupt(lie(|b| put_u64(b, entry(0), 0)));
    corrupt(lie(|b| put_u64(b, entry(3) + 8, 13)));
    // Offsets past the end of the file: truncated, not an out-of-bounds read.
    assert!(matches!(
        lie(|b| put_u64(b, entry(7), 1 << 40)),
        Err(MoeCacheError::Truncated { expected, .. }) if expected == (1 << 40) + 12
    ));
    corrupt(lie(|b| put_u64(b, entry(7), u64::MAX)));
}

#[test]
fn random_damage_never_panics() {
    let good = valid_bytes();
    let mut rng = StdRng::seed_from_u64(7);
    let file = TempFile(temp_path("fuzz"));
    let (mut opened, mut rejected) = (0, 0);
    for trial in 0..400 {
        let mut bytes = good.clone();
        if trial % 5 == 0 {
            bytes.truncate(rng.random_range(0..good.len()));
        } else {
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] = rng.random();
            }
        }
        std::fs::write(&file.0, &bytes).unwrap();
        match ExpertStore::open(&file.0, keep()) {
            Ok(store) => {
                opened += 1;
                for (l, e) in [(0, 0), (0, 2), (1, 4)] {
                    let _ = store.load(l, e);
                }
            }
            Err(_) => rejected += 1,
        }
    }
    assert!(rejected > 0 && opened > 0);
    assert_eq!(&good[..8], &STORE_MAGIC);
}
