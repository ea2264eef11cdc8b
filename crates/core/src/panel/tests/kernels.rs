//! The x86-64 kernels for 8-bit activations (AVX2, AVX-512 VNNI) and their
//! quantisers, bit for bit against the portable loops.

use super::*;

/// The AVX2 kernel's token, or `None` with a note that the AVX2 test is skipped.
fn avx2_or_skip() -> Option<crate::simd::Avx2F16c> {
    let token = crate::simd::Avx2F16c::try_new();
    if token.is_none() {
        eprintln!("skipped: this CPU has no AVX2, FMA and F16C");
    }
    token
}

/// The AVX2 kernel for 8-bit activations called directly (the products
/// take the AVX-512 one where the CPU has it): bit-identical to the
/// portable kernel (see [`check_int8_kernel`]), including the blocks that
/// come closest to its i16 sums' limit.
#[test]
fn avx2_int8_kernel_is_the_portable_one() {
    let Some(v3) = avx2_or_skip() else {
        return;
    };
    check_int8_kernel(|job, out| int8_avx2::panels(v3, job, out));
}

/// The AVX-512 VNNI kernel called directly, as [`check_int8_kernel`] (the
/// products run it too, against the portable kernel at fewer row counts).
#[test]
fn vnni_int8_kernel_is_the_portable_one() {
    if !vnni::available() {
        eprintln!("skipped: this CPU has no AVX-512 VNNI");
        return;
    }
    check_int8_kernel(vnni::panels);
}

/// `kernel` against the portable kernel, bit for bit, for every block
/// type, at every register block size (1 to 17, 25 and 33 rows: blocks of
/// 1 to 12 rows, alone and beside others), on ordinary blocks and on the
/// extremes (all 4-bit codes 15 against activations of 127, all Q8_0
/// codes −128 against −127), in rows of 8 blocks (all types) and of 9
/// (the types without super-blocks: an odd count of blocks).
fn check_int8_kernel(kernel: impl Fn(int8::Int8Job<'_>, &mut [f32])) {
    let out = 37;
    let all = BLOCK_TYPES.into_iter().chain(FIVE_BIT_AND_K_TYPES);
    let cases = all
        .map(|ty| (ty, 8 * BLOCK))
        .chain(BLOCK_TYPES.map(|ty| (ty, 9 * BLOCK)));
    for (ty, inp) in cases {
        let mut extreme = block_data(ty, out, inp);
        for block in extreme.chunks_exact_mut(ty.type_size()) {
            // The codes (and Q5's fifth bits) follow the f16 scale (and
            // minimum), or a k-quant's scales; Q2_K, Q3_K and Q6_K become
            // Q8_0 blocks whatever their bytes.
            let codes_from = match ty {
                GgmlType::Q4_1 | GgmlType::Q5_1 => 4,
                GgmlType::Q4_K | GgmlType::Q5_K => 16,
                GgmlType::IQ4_XS => 8,
                GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q6_K => block.len(),
                _ => 2,
            };
            // Q8_0's −128 and IQ4's level −127 (index 0) against
            // activations of −127; the largest unsigned codes against 127.
            let fill = match blocks::packing(ty) {
                int8::Packing::Bytes => 0x80,
                int8::Packing::Levels => 0x00,
                _ => 0xFF,
            };
            block[codes_from..].fill(fill);
        }
        for (data, sign) in [(block_data(ty, out, inp), 1.0), (extreme, -1.0)] {
            let m =
                PanelMatrix::from_gguf_q8(ty, &data, out, inp).unwrap_or_else(|e| panic!("{e}"));
            let Weights::Int8(w) = &m.weights else {
                panic!("{ty}: not 8-bit codes");
            };
            for rows in (1..=17).chain([25, 33]) {
                let signed = matches!(
                    blocks::packing(ty),
                    int8::Packing::Bytes | int8::Packing::Levels
                );
                let x = if sign < 0.0 && signed {
                    vec![-1.0; rows * inp]
                } else if sign < 0.0 {
                    vec![1.0; rows * inp]
                } else {
                    values(rows * inp, rows)
                };
                let q = int8::quantise(&x, rows, inp, false);
                let panels = w.panels(inp);
                let job = int8::Int8Job {
                    w,
                    inp,
                    first: 0,
                    x: &q,
                    rows,
                };
                let mut simd = vec![0.0; panels * rows * int8::LANES];
                let mut portable = simd.clone();
                kernel(job, &mut simd);
                int8::panels(job, &mut portable);
                assert_eq!(simd, portable, "{ty}, {rows}×{inp}, extreme {}", sign < 0.0);
            }
        }
    }
}

/// The AVX2 build of the activations' quantisation gives the portable
/// loop's codes, sums and scales bit for bit (see [`check_quantiser`]).
#[test]
fn avx2_quantisation_is_the_portable_one() {
    let Some(v3) = avx2_or_skip() else {
        return;
    };
    check_quantiser(|x, rows, inp| int8_avx2::quantise(v3, x, rows, inp));
}

/// The AVX-512 build of the activations' quantisation gives the portable
/// loop's codes, sums and scales bit for bit (see [`check_quantiser`]).
#[test]
fn avx512_quantisation_is_the_portable_one() {
    if !crate::panel::vnni::available() {
        eprintln!("skipped: this CPU has no AVX-512 VNNI");
        return;
    }
    check_quantiser(vnni::quantise);
}

/// `quantise` against the portable loop: ordinary blocks at several scales
/// and row counts, rows of 12 and of 21 blocks (more than one vector of 16
/// blocks' scales, and a partial one), and the edge cases of `q8_block`
/// (an all-zero block, ties at ±0.5 steps, subnormals, values near f32's
/// largest, an infinity and a NaN).
fn check_quantiser(quantise: impl Fn(&[f32], usize, usize) -> int8::Q8Rows) {
    for inp in [12 * BLOCK, 21 * BLOCK] {
        check_quantiser_at(&quantise, inp);
    }
}

fn check_quantiser_at(quantise: &impl Fn(&[f32], usize, usize) -> int8::Q8Rows, inp: usize) {
    let edge = [
        0.0,
        0.5,
        -1.5,
        2.5,
        127.0,
        1e-40,
        -3e38,
        3.4e38,
        f32::INFINITY,
        f32::NAN,
    ];
    for rows in [1, 2, 3, 8, 9, 13] {
        for scale in [1e-3f32, 1.0, 250.0] {
            let mut x: Vec<f32> = values(rows * inp, rows).iter().map(|v| v * scale).collect();
            // Block 0 of row 0 all zeros; each later block of row 0 holds one edge value.
            x[..BLOCK].fill(0.0);
            for (b, v) in edge.iter().enumerate().take(inp / BLOCK - 1) {
                x[(b + 1) * BLOCK + b] = *v;
            }
            let simd = quantise(&x, rows, inp);
            let portable = int8::quantise_rows(&x, rows, inp, int8::q8_block);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            let what = format!("{rows} rows of {inp} at scale {scale}");
            assert_eq!(simd.q, portable.q, "{what}: codes");
            assert_eq!(simd.sum, portable.sum, "{what}: sums");
            assert_eq!(bits(&simd.d), bits(&portable.d), "{what}: scales");
            assert_eq!(bits(&simd.ds), bits(&portable.ds), "{what}: d·Σq");
            assert_eq!(simd.blocks, portable.blocks, "{what}: register blocks");
        }
    }
}
