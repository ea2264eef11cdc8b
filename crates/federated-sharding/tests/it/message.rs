//! Wire format: exact round trips and sizes, and typed errors (never a
//! panic, never a large allocation) on truncated, corrupted, tampered and
//! hostile input.
#![allow(clippy::unwrap_used)]

use crate::common::{gaussian, tensor};
use lastmile_core::CoreError;
use lastmile_core::module::Layout;
use lastmile_federated_sharding::message::{
    FORMAT_VERSION, HEADER_LEN, KIND_SHARD, KIND_UPDATE, LayerUpdate, MAGIC, MAX_NAME_LEN,
    ShardMessage, TRAILER_LEN, UpdateMessage, fnv1a64, peek_kind,
};
use lastmile_federated_sharding::{
    DenseParam, FixedSizeDesign, LayerShard, ModelShard, NamedShard, Sampler, SamplingStrategy,
    ShardingError, SpectralLayer, Strategy,
};
use rand::{SeedableRng, rngs::StdRng};

fn layer_shard(rows: usize, cols: usize, keep: usize, seed: u64) -> LayerShard {
    let device = lastmile_core::default_device().unwrap();
    let layer =
        SpectralLayer::decompose(tensor(gaussian(rows, cols, seed), rows, cols, &device)).unwrap();
    let alloc = Strategy::Unbiased.allocate(layer.sigma(), keep, 1).unwrap();
    let idx = Sampler::ConditionalPoisson
        .design(alloc.probabilities())
        .unwrap()
        .sample(&mut StdRng::seed_from_u64(seed));
    layer.shard(&idx, &alloc).unwrap()
}

fn shard_message() -> ShardMessage {
    // special but finite values must survive bit for bit
    let special = vec![
        -0.0f32,
        f32::MIN_POSITIVE / 2.0,
        f32::MAX,
        -f32::MAX,
        1e-30,
        0.1,
    ];
    ShardMessage {
        round: u64::MAX - 1,
        client_id: 42,
        strategy: Strategy::Collective,
        sampler: Sampler::ConditionalPoisson,
        clients_per_round: 10,
        shard: ModelShard::new(
            vec![
                NamedShard {
                    path: "layers.0.fc1.weight".into(),
                    layout: Layout::InOut,
                    shard: layer_shard(16, 8, 3, 1),
                },
                NamedShard {
                    path: "conv.weight".into(),
                    layout: Layout::OutIn,
                    shard: layer_shard(4, 18, 2, 2),
                },
            ],
            vec![
                DenseParam::new("layers.0.fc1.bias", vec![6], special).unwrap(),
                DenseParam::new("norm.γ", vec![2, 1, 3], vec![1.0; 6]).unwrap(),
            ],
        )
        .unwrap(),
    }
}

fn update_message() -> UpdateMessage {
    UpdateMessage {
        round: 3,
        client_id: 9,
        num_samples: 1234,
        layers: vec![
            LayerUpdate::Factors {
                path: "fc1.weight".into(),
                shard: layer_shard(12, 10, 4, 3),
            },
            LayerUpdate::DenseDelta {
                path: "fc2.weight".into(),
                rows: 2,
                cols: 3,
                delta: vec![0.5, -0.25, 0.0, -0.0, 1e-20, 3.0],
            },
        ],
        dense: vec![DenseParam::new("fc1.bias", vec![12], vec![0.125; 12]).unwrap()],
    }
}

/// Builds a frame around `payload` with a correct checksum.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(kind);
    out.push(0);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let sum = fnv1a64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Recomputes the checksum after tampering with a payload byte.
fn reseal(bytes: &mut [u8]) {
    let end = bytes.len() - TRAILER_LEN;
    let sum = fnv1a64(&bytes[..end]);
    bytes[end..].copy_from_slice(&sum.to_le_bytes());
}

#[test]
fn round_trips_are_bit_exact_and_sizes_exact() {
    let down = shard_message();
    let bytes = down.encode().unwrap();
    assert_eq!(bytes.len(), down.encoded_len());
    assert_eq!(peek_kind(&bytes).unwrap(), KIND_SHARD);
    let decoded = ShardMessage::decode(&bytes).unwrap();
    assert_eq!(decoded, down);
    assert_eq!(decoded.encode().unwrap(), bytes, "re-encoding differs");
    // -0.0 == 0.0 under PartialEq: check the bits too
    let bits = |m: &ShardMessage| -> Vec<u32> {
        m.shard.dense()[0]
            .values
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    assert_eq!(bits(&decoded), bits(&down));

    let up = update_message();
    let bytes = up.encode().unwrap();
    assert_eq!(bytes.len(), up.encoded_len());
    assert_eq!(peek_kind(&bytes).unwrap(), KIND_UPDATE);
    let decoded = UpdateMessage::decode(&bytes).unwrap();
    assert_eq!(decoded, up);
    assert_eq!(decoded.encode().unwrap(), bytes);

    // an update built from a shard message round-trips too
    let from = UpdateMessage::from_shard(&down, 77, &down.shard);
    let bytes = from.encode().unwrap();
    assert_eq!(bytes.len(), from.encoded_len());
    assert_eq!(UpdateMessage::decode(&bytes).unwrap(), from);
}

#[test]
fn size_accounting_matches_the_spec() {
    // header + fixed fields + counts + one layer + one dense + trailer, by hand
    let shard = LayerShard::new(3, 2, vec![1], vec![2.0], vec![1.0; 3], vec![1.0; 2]).unwrap();
    let msg = ShardMessage {
        round: 0,
        client_id: 0,
        strategy: Strategy::Unbiased,
        sampler: Sampler::Systematic,
        clients_per_round: 1,
        shard: ModelShard::new(
            vec![NamedShard {
                path: "w".into(),
                layout: Layout::OutIn,
                shard,
            }],
            vec![DenseParam::new("b", vec![3], vec![0.0; 3]).unwrap()],
        )
        .unwrap(),
    };
    let layer = (2 + 1) + 1 + 4 + 4 + 4 + 4 + 4 + 4 * (3 + 2);
    let dense = (2 + 1) + 1 + 4 + 4 * 3;
    let expected = HEADER_LEN + 22 + 4 + layer + 4 + dense + TRAILER_LEN;
    assert_eq!(msg.encoded_len(), expected);
    assert_eq!(msg.encode().unwrap().len(), expected);
}

#[test]
fn truncation_at_every_offset_is_a_typed_error() {
    for bytes in [
        shard_message().encode().unwrap(),
        update_message().encode().unwrap(),
    ] {
        let kind = bytes[6];
        for cut in 0..bytes.len() {
            let r = if kind == KIND_SHARD {
                ShardMessage::decode(&bytes[..cut]).err()
            } else {
                UpdateMessage::decode(&bytes[..cut]).err()
            };
            assert!(
                matches!(r, Some(ShardingError::Truncated { .. })),
                "cut at {cut}: {r:?}"
            );
        }
    }
}

#[test]
fn every_flipped_byte_is_detected() {
    let bytes = shard_message().encode().unwrap();
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        let r = ShardMessage::decode(&bad);
        let ok = match i {
            0..4 => matches!(r, Err(ShardingError::BadMagic { .. })),
            4 | 5 => matches!(r, Err(ShardingError::UnsupportedVersion { .. })),
            6 => matches!(r, Err(ShardingError::WrongKind { .. })),
            7 => matches!(r, Err(ShardingError::InvalidField { .. })),
            8..16 => matches!(
                r,
                Err(ShardingError::Truncated { .. } | ShardingError::TrailingBytes { .. })
            ),
            _ => matches!(r, Err(ShardingError::ChecksumMismatch { .. })),
        };
        assert!(ok, "byte {i} flipped: {r:?}");
    }
}

#[test]
fn framing_errors_are_typed() {
    let bytes = update_message().encode().unwrap();
    // wrong kind
    assert!(matches!(
        ShardMessage::decode(&bytes),
        Err(ShardingError::WrongKind { found: 2, .. })
    ));
    // unknown version
    let mut v2 = bytes.clone();
    v2[4] = 2;
    assert!(matches!(
        UpdateMessage::decode(&v2),
        Err(ShardingError::UnsupportedVersion {
            found: 2,
            supported: 1
        })
    ));
    // trailing bytes
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        UpdateMessage::decode(&long),
        Err(ShardingError::TrailingBytes { count: 1 })
    ));
    // empty input
    assert!(matches!(
        UpdateMessage::decode(&[]),
        Err(ShardingError::Truncated { available: 0, .. })
    ));
    // payload length u64::MAX in a well-formed header
    let mut huge = bytes.clone();
    huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        UpdateMessage::decode(&huge),
        Err(ShardingError::Truncated { .. })
    ));
}

/// Declared counts far beyond the input are rejected before any
/// allocation: each of these would ask for gigabytes if trusted (the test
/// process would abort), and each comes back as `LengthLimit`.
#[test]
fn huge_declared_lengths_are_rejected_without_allocating() {
    let mut fixed = Vec::new();
    fixed.extend_from_slice(&0u64.to_le_bytes()); // round
    fixed.extend_from_slice(&0u64.to_le_bytes()); // client
    fixed.extend_from_slice(&[4, 1]); // unbiased, conditional Poisson
    fixed.extend_from_slice(&1u32.to_le_bytes()); // K

    // layer count u32::MAX
    let mut p = fixed.clone();
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    let r = ShardMessage::decode(&frame(KIND_SHARD, &p));
    assert!(
        matches!(r, Err(ShardingError::LengthLimit { declared, .. }) if declared == u64::from(u32::MAX)),
        "{r:?}"
    );

    // one layer of 2^32−1 × 2^32−1 keeping 1 triplet: factor A of 2^32−1 values
    let mut p = fixed.clone();
    p.extend_from_slice(&1u32.to_le_bytes());
    p.extend_from_slice(&1u16.to_le_bytes());
    p.push(b'w');
    p.push(0); // layout
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    p.extend_from_slice(&1u32.to_le_bytes()); // kept
    p.extend_from_slice(&0u32.to_le_bytes()); // index
    p.extend_from_slice(&1.0f32.to_le_bytes()); // multiplier
    p.extend_from_slice(&[0u8; 64]);
    let r = ShardMessage::decode(&frame(KIND_SHARD, &p));
    assert!(
        matches!(&r, Err(ShardingError::LengthLimit { what, .. }) if what == "factor A"),
        "{r:?}"
    );

    // kept above the rank
    let mut p = fixed.clone();
    p.extend_from_slice(&1u32.to_le_bytes());
    p.extend_from_slice(&1u16.to_le_bytes());
    p.push(b'w');
    p.push(0);
    p.extend_from_slice(&2u32.to_le_bytes());
    p.extend_from_slice(&3u32.to_le_bytes());
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    let r = ShardMessage::decode(&frame(KIND_SHARD, &p));
    assert!(
        matches!(&r, Err(ShardingError::LengthLimit { what, .. }) if what == "kept triplets"),
        "{r:?}"
    );

    // a dense parameter of 8 dimensions of 2^32−1 each (product saturates)
    let mut p = fixed.clone();
    p.extend_from_slice(&0u32.to_le_bytes()); // no layers
    p.extend_from_slice(&1u32.to_le_bytes()); // one dense
    p.extend_from_slice(&1u16.to_le_bytes());
    p.push(b'b');
    p.push(8);
    for _ in 0..8 {
        p.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    p.extend_from_slice(&[0u8; 16]);
    let r = ShardMessage::decode(&frame(KIND_SHARD, &p));
    assert!(matches!(r, Err(ShardingError::LengthLimit { .. })), "{r:?}");

    // a name of 65535 bytes
    let mut p = fixed.clone();
    p.extend_from_slice(&1u32.to_le_bytes());
    p.extend_from_slice(&u16::MAX.to_le_bytes());
    p.extend_from_slice(&[b'x'; 32]);
    let r = ShardMessage::decode(&frame(KIND_SHARD, &p));
    assert!(
        matches!(r, Err(ShardingError::LengthLimit { limit, .. }) if limit == MAX_NAME_LEN as u64),
        "{r:?}"
    );

    // update: dense delta of 2^32−1 × 2 values
    let mut p = Vec::new();
    p.extend_from_slice(&[0u8; 24]);
    p.extend_from_slice(&1u32.to_le_bytes());
    p.extend_from_slice(&1u16.to_le_bytes());
    p.push(b'w');
    p.push(2); // dense delta
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    p.extend_from_slice(&2u32.to_le_bytes());
    p.extend_from_slice(&[0u8; 8]);
    let r = UpdateMessage::decode(&frame(KIND_UPDATE, &p));
    assert!(
        matches!(&r, Err(ShardingError::LengthLimit { what, .. }) if what == "dense delta"),
        "{r:?}"
    );
}

/// Semantically invalid fields under a valid checksum.
#[test]
fn tampered_fields_are_typed_errors() {
    let msg = shard_message();
    let bytes = msg.encode().unwrap();
    let off = HEADER_LEN + 16; // strategy tag
    let mut bad = bytes.clone();
    bad[off] = 99;
    reseal(&mut bad);
    assert!(
        matches!(&ShardMessage::decode(&bad), Err(ShardingError::InvalidField { what, .. }) if what == "strategy")
    );
    let mut bad = bytes.clone();
    bad[off + 1] = 7;
    reseal(&mut bad);
    assert!(
        matches!(&ShardMessage::decode(&bad), Err(ShardingError::InvalidField { what, .. }) if what == "sampler")
    );
    let mut bad = bytes.clone();
    bad[off + 2..off + 6].copy_from_slice(&0u32.to_le_bytes());
    reseal(&mut bad);
    assert!(
        matches!(&ShardMessage::decode(&bad), Err(ShardingError::InvalidField { what, .. }) if what == "clients_per_round")
    );

    // first layer: name at off + 10
    let name_len = "layers.0.fc1.weight".len();
    let layout_at = off + 10 + 2 + name_len;
    let mut bad = bytes.clone();
    bad[layout_at] = 5;
    reseal(&mut bad);
    assert!(
        matches!(&ShardMessage::decode(&bad), Err(ShardingError::InvalidField { what, .. }) if what == "layout")
    );
    // invalid UTF-8 in the name
    let mut bad = bytes.clone();
    bad[off + 12] = 0xFF;
    reseal(&mut bad);
    assert!(
        matches!(&ShardMessage::decode(&bad), Err(ShardingError::InvalidField { what, .. }) if what == "parameter path")
    );

    let kept_at = layout_at + 1 + 8;
    let indices_at = kept_at + 4;
    // indices out of order: swap the first two
    let mut bad = bytes.clone();
    let (a, b) = (indices_at, indices_at + 4);
    let first: [u8; 4] = bad[a..a + 4].try_into().unwrap();
    let second: [u8; 4] = bad[b..b + 4].try_into().unwrap();
    bad[a..a + 4].copy_from_slice(&second);
    bad[b..b + 4].copy_from_slice(&first);
    reseal(&mut bad);
    assert!(matches!(
        ShardMessage::decode(&bad),
        Err(ShardingError::Core(CoreError::OutOfRange { .. }))
    ));
    // index beyond the rank
    let mut bad = bytes.clone();
    bad[b..b + 4].copy_from_slice(&1000u32.to_le_bytes());
    reseal(&mut bad);
    assert!(matches!(
        ShardMessage::decode(&bad),
        Err(ShardingError::Core(CoreError::IndexOutOfRange { .. }))
    ));
    // a NaN multiplier and a NaN factor value
    let mult_at = indices_at + 4 * 3;
    let mut bad = bytes.clone();
    bad[mult_at..mult_at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    reseal(&mut bad);
    assert!(matches!(
        ShardMessage::decode(&bad),
        Err(ShardingError::Core(CoreError::OutOfRange { .. }))
    ));
    let a_at = mult_at + 4 * 3;
    let mut bad = bytes.clone();
    bad[a_at..a_at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    reseal(&mut bad);
    assert!(matches!(
        ShardMessage::decode(&bad),
        Err(ShardingError::Core(CoreError::NonFinite { .. }))
    ));

    // a duplicated path
    let mut dup = msg.clone();
    let first = dup.shard.layers()[0].clone();
    let mut second = dup.shard.layers()[1].clone();
    second.path = first.path.clone();
    dup.shard = ModelShard::new(vec![first], vec![]).unwrap();
    let err = ModelShard::new(vec![dup.shard.layers()[0].clone(), second], vec![]);
    assert!(matches!(err, Err(ShardingError::Mismatch { .. })));
}

#[test]
fn encoding_rejects_what_the_format_cannot_hold() {
    let mut msg = shard_message();
    msg.clients_per_round = 0;
    assert!(matches!(
        msg.encode(),
        Err(ShardingError::InvalidField { .. })
    ));

    let long = "x".repeat(MAX_NAME_LEN + 1);
    let up = UpdateMessage {
        round: 0,
        client_id: 0,
        num_samples: 1,
        layers: vec![],
        dense: vec![DenseParam::new(long, vec![1], vec![0.0]).unwrap()],
    };
    assert!(matches!(
        up.encode(),
        Err(ShardingError::LengthLimit { .. })
    ));

    let up = UpdateMessage {
        round: 0,
        client_id: 0,
        num_samples: 1,
        layers: vec![LayerUpdate::DenseDelta {
            path: "w".into(),
            rows: 2,
            cols: 2,
            delta: vec![0.0; 3],
        }],
        dense: vec![],
    };
    assert!(matches!(
        up.encode(),
        Err(ShardingError::Core(CoreError::LengthMismatch { .. }))
    ));
}
