//! The host attention against a naive softmax, across kernels and chunkings.

use super::*;

/// `heads`' attention for the last `rows` of `positions` cached
/// positions (written by two passes, so that the keys' last block is
/// partial): the output of [`attention_on`] on its best kernel, on AVX2
/// kernel, the same rows each in a pass of its own, and the naive
/// softmax in f64.
fn attend(heads: Heads, positions: usize, rows: usize) -> [Vec<f64>; 5] {
    let (nh, dh) = (heads.n_heads, heads.head_dim);
    let width = heads.n_kv_heads * dh;
    let value = |i: usize| ((i * 37 % 23) as f32 - 11.0) * 0.11;
    let k: Vec<f32> = (0..positions * width).map(value).collect();
    let v: Vec<f32> = (0..positions * width).map(|i| value(i + 5)).collect();
    let device = burn::tensor::Device::flex();
    let rope = super::super::rope::Rope::new(dh, 2 * positions, 1e4, &device).at_host(&[0]);
    let mut kv = HostKv {
        keys: vec![Vec::new()],
        values: vec![Vec::new()],
    };
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
        write(&mut kv, &k[at.clone()], &v[at], &batch, 2 * positions);
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
                    d / (dh as f64).sqrt()
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
/// 5 heads into units of 7, 6, 6 and 6 heads on 2 threads).
const SHAPES: [(Heads, usize, usize); 6] = [
    (heads(4, 2, 6), 11, 3),
    (heads(6, 2, 40), 21, 3),
    (heads(5, 1, 36), 13, 3),
    (heads(9, 3, 64), 35, 3),
    (heads(9, 3, 64), 150, 9),
    (heads(5, 1, 36), 100, 5),
];

/// `n_heads` query heads of `head_dim` over `n_kv_heads` key/value heads.
const fn heads(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Heads {
    Heads {
        n_heads,
        n_kv_heads,
        head_dim,
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
        let [got, _, _, _, want] = attend(heads, positions, rows);
        for (e, (have, want)) in got.iter().zip(&want).enumerate() {
            assert!(
                (have - want).abs() < 1e-5,
                "{}, output {e}: {have} vs {want}",
                name(heads)
            );
        }
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
    let has_avx2 = pulp::x86::V3::try_new().is_some();
    #[cfg(not(target_arch = "x86_64"))]
    let has_avx2 = false;
    if !has_avx2 {
        eprintln!("no AVX2 + FMA on this CPU: only the portable kernel ran");
    }
    for (heads, positions, rows) in SHAPES {
        let [simd, avx2, portable, alone, _] = attend(heads, positions, rows);
        let shape = name(heads);
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
