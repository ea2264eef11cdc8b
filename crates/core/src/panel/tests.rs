//! The panel kernels against naive products.

use super::*;

/// The x86-64 SIMD kernels and quantisers against the portable ones.
#[cfg(target_arch = "x86_64")]
mod kernels;

/// `x Wᵀ` in f64 from the row-major weights.
fn naive(w: &[f32], out: usize, inp: usize, x: &[f32], rows: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; rows * out];
    for r in 0..rows {
        for o in 0..out {
            let s: f64 = (0..inp)
                .map(|k| f64::from(w[o * inp + k]) * f64::from(x[r * inp + k]))
                .sum();
            y[r * out + o] = s as f32;
        }
    }
    y
}

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7919 + seed * 104729) % 2003) as f32 / 1001.0) - 1.0)
        .collect()
}

/// Both kernels against the naive product of `m.to_f32()`, at row
/// counts that exercise every register block and their mixtures, within
/// f32 summation's error: relative to the result, or to the sum of the
/// products' magnitudes where they cancel (`2·10⁻⁶` of it: √n of f32's
/// 6·10⁻⁸ for n up to 1 000).
fn check_products(m: &PanelMatrix) {
    let (out, inp) = (m.out(), m.inp());
    let w = m.to_f32();
    let w_abs: Vec<f32> = w.iter().map(|v| v.abs()).collect();
    for rows in [1, 2, 3, 5, 8, 13, 17] {
        let x = values(rows * inp, rows);
        let want = naive(&w, out, inp, &x, rows);
        let x_abs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        let magnitude = naive(&w_abs, out, inp, &x_abs, rows);
        for simd in [true, false] {
            let y = m.product(&x, rows, simd).unwrap_or_else(|e| panic!("{e}"));
            for ((a, b), s) in y.iter().zip(&want).zip(&magnitude) {
                let tol = (1e-5 * (1.0 + b.abs()) * (inp as f32).sqrt()).max(2e-6 * s);
                assert!((a - b).abs() <= tol, "{rows} rows, simd {simd}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn f32_panels_match_naive_at_every_row_count() {
    // 21 outputs: two whole panels and a padded one; 70 inputs: not a
    // multiple of the accumulator interleave.
    let (out, inp) = (21, 70);
    let w = values(out * inp, 1);
    let m = PanelMatrix::from_f32(&w, out, inp).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.to_f32(), w);
    check_products(&m);
}

/// GGUF blocks of `ty` for `out` rows of `inp`, with varied codes and
/// small finite f16 scales (and minimums).
fn block_data(ty: GgmlType, out: usize, inp: usize) -> Vec<u8> {
    let bytes = out * inp / ty.block_size() * ty.type_size();
    let mut data: Vec<u8> = (0..bytes).map(|i| ((i * 131 + 7) % 251) as u8).collect();
    // Where each type keeps its f16 scale (`d`) and minimum (or `dmin`).
    let (d_at, m_at) = match ty {
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => (0, Some(2)),
        GgmlType::Q2_K => (80, Some(82)),
        GgmlType::Q3_K => (108, None),
        GgmlType::Q6_K => (208, None),
        _ => (0, None),
    };
    for block in data.chunks_exact_mut(ty.type_size()) {
        let d = half::f16::from_f32(f32::from(block[4]) / 512.0 - 0.2).to_bits();
        block[d_at..d_at + 2].copy_from_slice(&d.to_le_bytes());
        if let Some(at) = m_at {
            let m = half::f16::from_f32(-f32::from(block[5]) / 256.0).to_bits();
            block[at..at + 2].copy_from_slice(&m.to_le_bytes());
        }
    }
    data
}

const BLOCK_TYPES: [GgmlType; 3] = [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1];

#[test]
fn quantised_blocks_are_the_dequantised_file() {
    let (out, inp) = (19, 96);
    for ty in BLOCK_TYPES {
        let data = block_data(ty, out, inp);
        let m = PanelMatrix::from_gguf(ty, &data, out, inp).unwrap_or_else(|e| panic!("{e}"));
        assert!(m.is_quantised() && !m.quantises_activations());
        let want = crate::gguf::dequantize(ty, &data, out * inp).unwrap_or_default();
        assert_eq!(m.to_f32(), want, "{ty}");
        check_products(&m);
    }
}

/// ggml's Q8_0 rounding of `x`, written out plainly: per block of 32,
/// `d = max|x| / 127` and `x ≈ d · round(x · 127 / max|x|)` (ties to even).
fn q8_rounded(x: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for block in x.chunks(BLOCK) {
        let amax = block.iter().map(|v| v.abs()).fold(0.0, f32::max);
        let d = amax / 127.0;
        for v in block {
            let q = if d > 0.0 {
                (v * (127.0 / amax)).round_ties_even()
            } else {
                0.0
            };
            out.push(q * d);
        }
    }
    out
}

/// `q8_block`'s codes are ggml's: `x · 127 / max|x|` rounded to the
/// nearest integer with ties to even, within ±127, for values spread over
/// the block's range and for exact ties; a NaN gives a NaN scale.
#[test]
fn q8_codes_round_to_nearest_even() {
    let codes = |b: &int8::Q8Block| -> Vec<i32> {
        b.groups
            .iter()
            .flat_map(|g| g.to_le_bytes().map(|c| i32::from(c as i8)))
            .collect()
    };
    for amax in [1e-30f32, 0.37, 1.0, 127.0, 3e38] {
        let mut x = [0.0f32; BLOCK];
        for (i, v) in x.iter_mut().enumerate() {
            // Steps of 1/8 of a code from −amax to amax: ties among them.
            *v = amax * ((i as f32 * 8.0 - 127.0) / 127.0).clamp(-1.0, 1.0);
        }
        x[1] = -amax;
        let block = int8::q8_block(&x);
        let id = 127.0 / amax;
        let want: Vec<i32> = x
            .iter()
            .map(|v| (v * id).round_ties_even() as i32)
            .collect();
        assert_eq!(codes(&block), want, "max |x| = {amax}");
        assert_eq!(block.sum, want.iter().sum::<i32>(), "max |x| = {amax}");
        assert_eq!(block.d, amax / 127.0);
    }
    // Exact ties at 127 / 127 scale: 0.5 → 0, 1.5 → 2, 2.5 → 2, −0.5 → 0.
    let mut x = [0.0f32; BLOCK];
    x[..5].copy_from_slice(&[127.0, 0.5, 1.5, 2.5, -0.5]);
    assert_eq!(codes(&int8::q8_block(&x))[..5], [127, 0, 2, 2, 0]);
    x[5] = f32::NAN;
    assert!(int8::q8_block(&x).d.is_nan());
}

#[test]
fn q8_products_are_block_dot_products_of_rounded_activations() {
    // 37 outputs: two whole panels of 16 and a padded one.
    let (out, inp) = (37, 96);
    for ty in BLOCK_TYPES {
        let data = block_data(ty, out, inp);
        let m = PanelMatrix::from_gguf_q8(ty, &data, out, inp).unwrap_or_else(|e| panic!("{e}"));
        assert!(m.is_quantised() && m.quantises_activations());
        let w = crate::gguf::dequantize(ty, &data, out * inp).unwrap_or_default();
        assert_eq!(m.to_f32(), w, "{ty}");
        for rows in [1, 2, 3, 5, 8, 9, 11, 12, 13, 17, 25] {
            let x = values(rows * inp, rows);
            let simd = m.product(&x, rows, true).unwrap_or_else(|e| panic!("{e}"));
            let portable = m.product(&x, rows, false).unwrap_or_else(|e| panic!("{e}"));
            // Integer block sums and the same float steps: bit-identical.
            assert_eq!(simd, portable, "{ty}, {rows} rows");
            // Against the f64 product of the weights with the rounded activations.
            let want = naive(&w, out, inp, &q8_rounded(&x), rows);
            for (a, b) in simd.iter().zip(&want) {
                let tol = 1e-5 * (1.0 + b.abs()) * (inp as f32).sqrt();
                assert!((a - b).abs() <= tol, "{ty}, {rows} rows: {a} vs {b}");
            }
            // And within the rounding bound of the exact product:
            // |Δx| ≤ d/2 per input, so |Δy| ≤ Σ_k |w_k|·d_k/2.
            let exact = naive(&w, out, inp, &x, rows);
            for (i, (a, b)) in simd.iter().zip(&exact).enumerate() {
                let (r, o) = (i / out, i % out);
                let xr = &x[r * inp..(r + 1) * inp];
                let bound: f32 = xr
                    .chunks(BLOCK)
                    .zip(w[o * inp..(o + 1) * inp].chunks(BLOCK))
                    .map(|(xb, wb)| {
                        let d = xb.iter().map(|v| v.abs()).fold(0.0, f32::max) / 127.0;
                        wb.iter().map(|v| v.abs()).sum::<f32>() * d / 2.0
                    })
                    .sum();
                assert!((a - b).abs() <= bound * 1.001 + 1e-5, "{ty}: {a} vs {b}");
            }
        }
    }
}

/// The types beyond Q8_0, Q4_0 and Q4_1.
const FIVE_BIT_AND_K_TYPES: [GgmlType; 9] = [
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];

/// 5-bit blocks and the k-quants on both kernels: kept as codes where a
/// block of 32 has one scale (Q5_0, Q5_1, Q4_K, Q5_K), dequantised
/// otherwise (Q2_K, Q3_K, Q6_K), always the dequantised file for the f32
/// kernel; for 8-bit activations the k-quant scales are rounded to f16 (at
/// most 2⁻¹¹ relative) and Q2_K, Q3_K, Q6_K to Q8_0 blocks.
#[test]
fn five_bit_and_k_quant_blocks() {
    // 19 outputs (a padded panel); 512 inputs: two super-blocks a row.
    let (out, inp) = (19, 512);
    for ty in FIVE_BIT_AND_K_TYPES {
        let data = block_data(ty, out, inp);
        let file = crate::gguf::dequantize(ty, &data, out * inp).unwrap_or_else(|e| panic!("{e}"));
        let codes = blocks::has_codes(ty);
        let m = PanelMatrix::from_gguf(ty, &data, out, inp).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.is_quantised(), codes, "{ty}");
        assert_eq!(m.to_f32(), file, "{ty}");
        let q8 = PanelMatrix::from_gguf_q8(ty, &data, out, inp).unwrap_or_else(|e| panic!("{e}"));
        assert!(q8.quantises_activations(), "{ty}");
        let w = q8.to_f32();
        match ty {
            GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::IQ4_NL => assert_eq!(w, file, "{ty}"),
            GgmlType::IQ4_XS => {
                // |Δw| ≤ 2⁻¹¹·|d_s|·127 per block of 32 (the f16 rounding of d_s).
                let scales = data
                    .chunks_exact(ty.type_size())
                    .flat_map(crate::gguf::iq4::iq4_xs_scales);
                for ((a, b), d) in w.chunks(BLOCK).zip(file.chunks(BLOCK)).zip(scales) {
                    for (x, y) in a.iter().zip(b) {
                        assert!(
                            (x - y).abs() <= d.abs() * 127.0 / 2048.0,
                            "{ty}: {x} vs {y}"
                        );
                    }
                }
            }
            GgmlType::Q4_K | GgmlType::Q5_K => {
                // |Δw| ≤ 2⁻¹¹·(|q·d_s| + |m_s|), q < 32, per block of 32.
                let scales = data
                    .chunks_exact(ty.type_size())
                    .flat_map(crate::gguf::kquants::q4_k_scales);
                for ((a, b), (d, m)) in w.chunks(BLOCK).zip(file.chunks(BLOCK)).zip(scales) {
                    let bound = (31.0 * d.abs() + m.abs()) / 2048.0;
                    for (x, y) in a.iter().zip(b) {
                        assert!((x - y).abs() <= bound, "{ty}: {x} vs {y}");
                    }
                }
                assert_ne!(w, file, "{ty}: the f16 rounding is exercised");
            }
            _ => {
                let blocks = crate::gguf::quantize_q8_0(&file).unwrap_or_else(|e| panic!("{e}"));
                let want = crate::gguf::dequantize(GgmlType::Q8_0, &blocks, out * inp);
                assert_eq!(w, want.unwrap_or_default(), "{ty}");
            }
        }
        for rows in [1, 3, 8, 13] {
            let x = values(rows * inp, rows);
            let simd = q8.product(&x, rows, true).unwrap_or_else(|e| panic!("{e}"));
            let portable = q8
                .product(&x, rows, false)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(simd, portable, "{ty}, {rows} rows");
            let want = naive(&w, out, inp, &q8_rounded(&x), rows);
            for (a, b) in simd.iter().zip(&want) {
                let tol = 1e-5 * (1.0 + b.abs()) * (inp as f32).sqrt();
                assert!((a - b).abs() <= tol, "{ty}, {rows} rows: {a} vs {b}");
            }
        }
        check_products(&m);
    }
}

/// A k-quant whose computed scales overflow f16 keeps f32 scales (and the
/// f32 kernel) rather than turning into infinities.
#[test]
fn k_quant_scales_beyond_f16_stay_f32() {
    let mut data = block_data(GgmlType::Q4_K, 1, 256);
    data[..2].copy_from_slice(&half::f16::from_f32(60000.0).to_bits().to_le_bytes());
    data[4] = 63; // sub-block 0's 6-bit scale: 63 · 60000 > f16::MAX
    let m =
        PanelMatrix::from_gguf_q8(GgmlType::Q4_K, &data, 1, 256).unwrap_or_else(|e| panic!("{e}"));
    assert!(m.is_quantised() && !m.quantises_activations());
    let file = crate::gguf::dequantize(GgmlType::Q4_K, &data, 256).unwrap_or_default();
    assert!(file.iter().all(|v| v.is_finite()));
    assert_eq!(m.to_f32(), file);
}

#[test]
fn q8_codes_take_the_files_bytes() {
    // 32 outputs (two panels of 16) × 64 inputs (two blocks a row).
    let (out, inp) = (32, 64);
    let blocks = out * inp / BLOCK;
    for (ty, code_bytes, per_block) in [
        // 4-bit codes two a byte; f16 scale (and minimum) a block.
        (GgmlType::Q4_1, out * inp / 2, 4),
        (GgmlType::Q4_0, out * inp / 2, 2),
        (GgmlType::Q8_0, out * inp, 2),
        // Nibbles and a plane of fifth bits: the file's own size.
        (GgmlType::Q5_0, out * inp / 2 + out * inp / 8, 2),
        (GgmlType::Q5_1, out * inp / 2 + out * inp / 8, 4),
        // IQ4_NL: level indices two a byte.
        (GgmlType::IQ4_NL, out * inp / 2, 2),
    ] {
        let data = block_data(ty, out, inp);
        let m = PanelMatrix::from_gguf_q8(ty, &data, out, inp).unwrap_or_else(|e| panic!("{e}"));
        // As many bytes as the file's blocks: what a decoding step reads.
        assert_eq!(m.bytes(), code_bytes + blocks * per_block, "{ty}");
        assert_eq!(m.bytes(), data.len(), "{ty}");
    }
}

#[test]
fn shared_inputs_give_each_product() {
    let inp = 64;
    let q8 = PanelMatrix::from_gguf_q8(
        GgmlType::Q4_1,
        &block_data(GgmlType::Q4_1, 20, inp),
        20,
        inp,
    );
    let q8_0 =
        PanelMatrix::from_gguf_q8(GgmlType::Q8_0, &block_data(GgmlType::Q8_0, 9, inp), 9, inp);
    let codes = PanelMatrix::from_gguf(GgmlType::Q4_0, &block_data(GgmlType::Q4_0, 5, inp), 5, inp);
    let mut ms: Vec<PanelMatrix> = [q8, q8_0, codes]
        .into_iter()
        .map(|m| m.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    ms.push(PanelMatrix::from_f32(&values(3 * inp, 2), 3, inp).unwrap_or_else(|e| panic!("{e}")));
    let refs: Vec<&PanelMatrix> = ms.iter().collect();
    let x = values(3 * inp, 5);
    let each = PanelMatrix::matmul_each(&refs, &x, 3).unwrap_or_else(|e| panic!("{e}"));
    for (m, y) in ms.iter().zip(&each) {
        assert_eq!(*y, m.matmul(&x, 3).unwrap_or_default());
    }
    // A matrix of another input length is an error, not a wrong product.
    let other = PanelMatrix::from_f32(&[1.0; 32], 1, 32).unwrap_or_else(|e| panic!("{e}"));
    assert!(PanelMatrix::matmul_each(&[refs[0], &other], &x, 3).is_err());
}

#[test]
fn q8_products_of_zero_rows_are_zero() {
    let data = block_data(GgmlType::Q4_1, 16, 64);
    let m =
        PanelMatrix::from_gguf_q8(GgmlType::Q4_1, &data, 16, 64).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.matmul(&[0.0; 128], 2).unwrap_or_default(), vec![0.0; 32]);
    // Float tensors are widened, with f32 activations.
    let f: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let m = PanelMatrix::from_gguf_q8(GgmlType::F32, &f, 1, 2).unwrap_or_else(|e| panic!("{e}"));
    assert!(!m.quantises_activations());
}

#[test]
fn gguf_blocks_are_checked() {
    // A row of 48 elements is not whole Q8_0 blocks.
    let data = vec![0u8; 3 * 34];
    assert!(PanelMatrix::from_gguf(GgmlType::Q8_0, &data, 2, 48).is_err());
    // Too few bytes, an unsupported type.
    assert!(PanelMatrix::from_gguf(GgmlType::Q8_0, &data[..60], 1, 64).is_err());
    assert!(PanelMatrix::from_gguf(GgmlType::Q5_0, &data, 1, 32).is_err());
    // Float tensors are widened.
    let f: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let m = PanelMatrix::from_gguf(GgmlType::F32, &f, 1, 2).unwrap_or_else(|e| panic!("{e}"));
    assert!(!m.is_quantised());
    assert_eq!(m.matmul(&[1.0, 1.0], 1).unwrap_or_default(), vec![3.0]);
}

#[test]
fn shapes_are_checked() {
    assert!(PanelMatrix::from_f32(&[1.0; 5], 2, 3).is_err());
    assert!(PanelMatrix::from_f32(&[], 0, 3).is_err());
    let m = PanelMatrix::from_f32(&[1.0; 6], 2, 3).unwrap_or_else(|e| panic!("{e}"));
    assert!(m.matmul(&[1.0; 5], 2).is_err());
    assert!(m.matmul(&[], 0).is_err());
}

#[test]
fn q8_register_blocks_cover_the_rows_evenly() {
    for rows in 1..=40 {
        let x = values(rows * BLOCK, rows);
        let q = int8::quantise(&x, rows, BLOCK, false);
        let sizes: Vec<usize> = q.blocks.iter().map(|&(_, n)| n).collect();
        assert_eq!(sizes.iter().sum::<usize>(), rows, "{sizes:?}");
        assert!(
            sizes.iter().all(|&n| (1..=int8::MAX_ROWS).contains(&n)),
            "{sizes:?}"
        );
        assert_eq!(
            sizes.len(),
            rows.div_ceil(int8::MAX_ROWS),
            "{rows}: {sizes:?}"
        );
        let (lo, hi) = (sizes.iter().min(), sizes.iter().max());
        assert!(
            hi.zip(lo).is_some_and(|(h, l)| h - l <= 1),
            "{rows}: {sizes:?}"
        );
        let starts: Vec<usize> = q.blocks.iter().map(|&(r0, _)| r0).collect();
        let want: Vec<usize> = sizes
            .iter()
            .scan(0, |at, n| {
                let s = *at;
                *at += n;
                Some(s)
            })
            .collect();
        assert_eq!(starts, want);
    }
}

#[test]
fn team_products_are_the_pools_products() {
    let inp = 96;
    let data = |ty, out| block_data(ty, out, inp);
    let ms: Vec<PanelMatrix> = [
        PanelMatrix::from_gguf_q8(GgmlType::Q4_1, &data(GgmlType::Q4_1, 200), 200, inp),
        PanelMatrix::from_gguf_q8(GgmlType::Q8_0, &data(GgmlType::Q8_0, 37), 37, inp),
        PanelMatrix::from_gguf(GgmlType::Q4_0, &data(GgmlType::Q4_0, 21), 21, inp),
    ]
    .into_iter()
    .map(|m| m.unwrap_or_else(|e| panic!("{e}")))
    .collect();
    let refs: Vec<&PanelMatrix> = ms.iter().collect();
    on_teams(|team, threads| {
        assert_eq!(team.threads(), threads);
        for rows in [1, 2, 5, 8, 9, 12, 17] {
            let x = values(rows * inp, rows);
            let want = PanelMatrix::matmul_each(&refs, &x, rows);
            let got = team.matmul_each(&refs, &x, rows);
            assert_eq!(
                got.unwrap_or_else(|e| panic!("{e}")),
                want.unwrap_or_else(|e| panic!("{e}")),
                "{threads} threads, {rows} rows"
            );
            let one = team.matmul(refs[0], &x, rows).unwrap_or_default();
            assert_eq!(one, refs[0].matmul(&x, rows).unwrap_or_default());
        }
        // Inputs of the wrong length are errors, not wrong products.
        assert!(team.matmul_each(&refs, &values(inp + 1, 1), 1).is_err());
        assert!(team.matmul(refs[0], &[], 0).is_err());
    });
}

#[test]
fn zipped_team_products_are_the_products_combined() {
    let (inp, out, ty) = (64, 70, GgmlType::Q4_1);
    let q8 = |data: &[u8], out| {
        PanelMatrix::from_gguf_q8(ty, data, out, inp).unwrap_or_else(|e| panic!("{e}"))
    };
    // Two Q4_1 matrices of 70 rows (the last panel part-used) with
    // different codes: the second's are the first's with bits flipped.
    let data = block_data(ty, out, inp);
    let mut flipped = data.clone();
    for block in flipped.chunks_exact_mut(ty.type_size()) {
        block[4..].iter_mut().for_each(|c| *c ^= 0x5A);
    }
    let (a, b) = (q8(&data, out), q8(&flipped, out));
    let small = q8(&block_data(ty, 30, inp), 30);
    let exact = PanelMatrix::from_gguf(ty, &data, out, inp).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(a.to_f32(), b.to_f32());
    // Not commutative and not linear, so swapped or skipped operands would show.
    let combine = |ya: &mut [f32], yb: &[f32]| {
        for (p, q) in ya.iter_mut().zip(yb) {
            *p = *p * 0.5 - q * q;
        }
    };
    on_teams(|team, threads| {
        for rows in [1, 3, 8, 12, 17] {
            let x = values(rows * inp, rows);
            let mut want = a.matmul(&x, rows).unwrap_or_else(|e| panic!("{e}"));
            combine(&mut want, &b.matmul(&x, rows).unwrap_or_default());
            let got = team.matmul_zip(&a, &b, &x, rows, combine);
            assert_eq!(
                got.unwrap_or_default(),
                want,
                "{threads} threads, {rows} rows"
            );
        }
        // Matrices of different shapes or storage are refused.
        let x = values(inp, 1);
        assert!(team.matmul_zip(&a, &small, &x, 1, combine).is_err());
        assert!(team.matmul_zip(&a, &exact, &x, 1, combine).is_err());
    });
}

/// Runs `f` on a team of each of 1 to 3 threads (with its thread count),
/// each running many products in a row: a helper takes each newly
/// published job, or the caller does it all.
fn on_teams<'t>(f: impl Fn(&Team<'t>, usize) + Send + Sync) {
    for threads in 1..=3 {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        pool.install(|| Team::run(|team| f(team, threads)));
    }
}

#[test]
fn a_team_whose_caller_panics_stops_its_helpers() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let w = PanelMatrix::from_f32(&[1.0; 64], 2, 32).unwrap_or_else(|e| panic!("{e}"));
    // Without stopping the helper as the panic unwinds, `run` would never
    // return (its scope waits for the helper).
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.install(|| {
            Team::run(|team| {
                let y = team.matmul(&w, &[1.0; 32], 1).unwrap_or_default();
                assert_eq!(y, vec![32.0, 32.0]);
                panic!("the caller's own failure");
            })
        })
    }));
    assert!(outcome.is_err());
}
