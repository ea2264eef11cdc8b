//! The host attention against a naive softmax, across kernels and chunkings.

use super::*;

/// `heads`' attention for the last `rows` of `positions` cached
/// positions (written by two passes, so that the keys' last block is
/// partial), keys and values stored as `E`: the output of
/// [`attention_on`] on its best kernel, on AVX2 kernel, the same rows
/// each in a pass of its own, and the naive softmax in f64 over the
/// stored (rounded) keys and values.
fn attend<E: Elem>(heads: Heads, positions: usize, rows: usize) -> [Vec<f64>; 5] {
    let (nh, dh) = (heads.n_heads, heads.head_dim);
    let width = heads.n_kv_heads * dh;
    let value = |i: usize| ((i * 37 % 23) as f32 - 11.0) * 0.11;
    let k: Vec<f32> = (0..positions * width).map(value).collect();
    let v: Vec<f32> = (0..positions * width).map(|i| value(i + 5)).collect();
    let device = burn::tensor::Device::flex();
    let rope = super::super::rope::Rope::new(
        dh,
        2 * positions,
        1e4,
        &[],
        super::super::rope::RopeScaling::None,
        &device,
    )
    .at_host(&[0]);
    let mut kv = KvRows::<E>::default();
    let first = positions - rows;
    for (offset, n) in [(0, first), (first, rows)] {
        let ids = vec![0i64; n];
        let batch = HostBatch {
            ids: &ids,
            rope: &rope,
            offsets: &[offset],
            n,
        };
        let at = offset * width..(offset + n) * width;
        write_rows(
            &mut kv,
            &k[at.clone()],
            &v[at],
            &batch,
            heads,
            2 * positions,
        );
    }
    let q: Vec<f32> = (0..rows * nh * dh).map(|i| value(i + 11)).collect();
    let pass = |offset: usize, q: &[f32], kernel: Kernel| {
        let ids = vec![0i64; q.len() / (nh * dh)];
        let batch = HostBatch {
            ids: &ids,
            rope: &rope,
            offsets: &[offset],
            n: ids.len(),
        };
        attention_on(q, &kv, &batch, heads, kernel)
    };
    let wide = |x: Vec<f32>| x.into_iter().map(f64::from).collect::<Vec<f64>>();
    let stored = |x: &f32| E::from_f32(*x).to_f32();
    let (k, v): (Vec<f32>, Vec<f32>) = (
        k.iter().map(stored).collect(),
        v.iter().map(stored).collect(),
    );
    let simd = wide(pass(first, &q, Kernel::Best));
    let avx2 = wide(pass(first, &q, Kernel::Avx2));
    let portable = wide(pass(first, &q, Kernel::Portable));
    let alone = wide(
        q.chunks_exact(nh * dh)
            .enumerate()
            .flat_map(|(i, q)| pass(first + i, q, Kernel::Best))
            .collect(),
    );
    let mut naive = Vec::new();
    for i in 0..rows {
        for j in 0..nh {
            let qh = &q[(i * nh + j) * dh..(i * nh + j + 1) * dh];
            let at = j / (nh / heads.n_kv_heads) * dh;
            let s: Vec<f64> = (0..first + i + 1)
                .map(|t| {
                    let key = &k[t * width + at..t * width + at + dh];
                    let d: f64 = qh.iter().zip(key).map(|(a, b)| f64::from(a * b)).sum();
                    d * f64::from(heads.scale)
                })
                .collect();
            let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
            let total: f64 = e.iter().sum();
            for c in 0..dh {
                naive.push(
                    e.iter()
                        .enumerate()
                        .map(|(t, e)| e / total * f64::from(v[t * width + at + c]))
                        .sum(),
                );
            }
        }
    }
    [simd, avx2, portable, alone, naive]
}

/// The shapes the tests take: groups of 2, 3 (one whole tile) and 5
/// (a tile of 3 and one of 2) query heads per key/value head; head
/// widths with a tail past the groups of 4 dimensions (6), past the
/// chunks of 32 outputs (36, 40) and without (64); keys ending in a
/// partial block; up to 9 rows over up to 150 positions (3 blocks of
/// values), the longer passes split between units of work (5 rows of
/// 5 heads into units of 7, 6, 6 and 6 heads on 2 threads). Scores
/// scaled by `1/√dh`, or by another factor (`1/dh`, Granite's kind).
const SHAPES: [(Heads, usize, usize); 6] = [
    (heads(4, 2, 6, 0.25), 11, 3),
    (heads(6, 2, 40, 0.158_113_88), 21, 3),
    (heads(5, 1, 36, 1.0 / 6.0), 13, 3),
    (heads(9, 3, 64, 0.125), 35, 3),
    (heads(9, 3, 64, 1.0 / 64.0), 150, 9),
    (heads(5, 1, 36, 1.0 / 6.0), 100, 5),
];

/// `n_heads` query heads of `head_dim` over `n_kv_heads` key/value heads,
/// scores scaled by `scale`.
const fn heads(n_heads: usize, n_kv_heads: usize, head_dim: usize, scale: f32) -> Heads {
    Heads {
        n_heads,
        n_kv_heads,
        head_dim,
        scale,
    }
}

/// A shape's name in a failure message.
fn name(h: Heads) -> String {
    format!("{}/{} heads of {}", h.n_heads, h.n_kv_heads, h.head_dim)
}

/// Blocked keys and the attention over them against a naive softmax.
#[test]
fn attention_over_blocked_keys_is_the_naive_softmax() {
    for (heads, positions, rows) in SHAPES {
        let f32 = attend::<f32>(heads, positions, rows);
        let f16 = attend::<u16>(heads, positions, rows);
        for (precision, [got, _, _, _, want]) in [("f32", &f32), ("f16", &f16)] {
            for (e, (have, want)) in got.iter().zip(want).enumerate() {
                assert!(
                    (have - want).abs() < 1e-5,
                    "{} ({precision}), output {e}: {have} vs {want}",
                    name(heads)
                );
            }
        }
        // f16 storage rounds the keys and values (relative error ≤ 2⁻¹¹).
        let worst = f32[0]
            .iter()
            .zip(&f16[0])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            worst > 0.0 && worst < 5e-3,
            "{}: f16 vs f32 cache {worst}",
            name(heads)
        );
    }
}

/// Each row in a pass of its own gives the same bits as the rows in
/// one pass (a token's attention does not depend on the pass it is
/// in), the AVX-512 kernel (16 lanes) gives the bits of the AVX2 one (8),
/// and the AVX2 kernel those of the portable one where that fuses its
/// multiply-adds too ([`FUSED`]; else within 1e-6, rounding twice). On a
/// CPU without AVX2 every run takes the portable kernel, which the
/// message says.
#[test]
fn kernels_and_chunkings_agree() {
    #[cfg(target_arch = "x86_64")]
    let has_avx2 = lastmile_core::simd::Avx2F16c::try_new().is_some();
    #[cfg(not(target_arch = "x86_64"))]
    let has_avx2 = false;
    if !has_avx2 {
        eprintln!("no AVX2 + FMA + F16C on this CPU: only the portable kernel ran");
    }
    for (heads, positions, rows) in SHAPES {
        agree(
            attend::<f32>(heads, positions, rows),
            &format!("{} (f32)", name(heads)),
        );
        agree(
            attend::<u16>(heads, positions, rows),
            &format!("{} (f16)", name(heads)),
        );
    }
}

/// The assertions of [`kernels_and_chunkings_agree`] on one shape's runs.
fn agree([simd, avx2, portable, alone, _]: [Vec<f64>; 5], shape: &str) {
    {
        // AVX-512 (16 lanes) and AVX2 (8) fuse every product: same bits.
        assert_eq!(simd, avx2, "{shape}: best kernel vs AVX2");
        if FUSED {
            assert_eq!(simd, portable, "{shape}: AVX2 vs portable");
        } else {
            let worst = simd
                .iter()
                .zip(&portable)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-6, "{shape}: AVX2 vs portable differ by {worst}");
            assert!(
                worst > 0.0,
                "{shape}: the portable kernel did not round twice"
            );
        }
        assert_eq!(simd, alone, "{shape}: one pass vs a pass per row");
    }
}

/// Every f16 bit pattern (normal, subnormal, ±0, ±∞) widens to the same
/// f32 bits on each kernel's [`Lanes::load_f16`] as by `half`, and every
/// NaN to a NaN (the AVX2 kernel keeps a signalling NaN's payload as it is).
#[test]
fn f16_keys_and_values_widen_exactly() {
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let want: Vec<f32> = all
        .iter()
        .map(|b| half::f16::from_bits(*b).to_f32())
        .collect();
    let check = |got: Vec<f32>, kernel: &str| {
        assert_eq!(got.len(), all.len(), "{kernel}");
        for ((b, w), g) in all.iter().zip(&want).zip(&got) {
            if w.is_nan() {
                assert!(g.is_nan(), "{kernel}: f16 bits {b:#06x} gave {g}");
            } else {
                assert_eq!(g.to_bits(), w.to_bits(), "{kernel}: f16 bits {b:#06x}");
            }
        }
    };
    check(widened::<8, _>(Portable, &all), "portable");
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(avx2) = lastmile_core::simd::Avx2F16c::try_new() {
            check(widened::<8, _>(avx2, &all), "AVX2");
        }
        if let Some(v4) = pulp::x86::V4::try_new() {
            check(widened::<16, _>(v4, &all), "AVX-512");
        }
    }
}

/// `bits` (a whole number of `W`s) widened by `s`'s [`Lanes::load_f16`].
fn widened<const W: usize, S: Lanes<W>>(s: S, bits: &[u16]) -> Vec<f32> {
    let chunks = bits.as_chunks::<W>().0;
    chunks.iter().flat_map(|x| s.store(s.load_f16(x))).collect()
}

#[test]
fn max_of_is_the_largest_value_whatever_the_length() {
    for n in [0usize, 1, 5, 15, 16, 17, 31, 32, 45, 64, 100] {
        // Values whose largest sits at every position in turn.
        for top in 0..n.max(1) {
            let s: Vec<f32> = (0..n)
                .map(|i| {
                    if i == top {
                        7.5
                    } else {
                        (i as f32 * 0.37).sin()
                    }
                })
                .collect();
            let want = s.iter().fold(f32::NEG_INFINITY, |m, x| m.max(*x));
            assert_eq!(max_of(&s), want, "n = {n}, largest at {top}");
        }
    }
    assert_eq!(max_of(&[]), f32::NEG_INFINITY);
    // NaNs are skipped, as by f32::max (all NaN: −∞, as the former fold gave).
    assert_eq!(max_of(&[f32::NAN, -3.0, f32::NAN, -2.0]), -2.0);
    assert_eq!(max_of(&[f32::NAN; 20]), f32::NEG_INFINITY);
}
