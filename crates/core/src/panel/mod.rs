//! Weight matrices for products with a few rows on the CPU: `y = x Wᵀ` for
//! `x` of 1 to ~16 rows, the shape of a language model's decoding step and
//! of a speculative verify pass.
//!
//! Such a product reads every weight once and does little arithmetic per
//! weight, so its speed is set by the bytes read and by how the kernel
//! keeps several rows in registers. burn's CPU backends run it through a
//! general GEMM (measured in `docs/benchmarks.md`: 2.1× the one-row time at
//! 8 rows over SmolLM2-135M's f32 matrices); [`PanelMatrix`] is the
//! dedicated kernel:
//!
//! - **Layout.** `W` is cut into panels of [`PANEL`] = 8 output rows and
//!   stored input-major within a panel (`[panel][in][8]`), so that one
//!   vector load gives 8 outputs' weights for one input and a pass over a
//!   panel reads contiguous memory once.
//! - **Kept-quantised blocks.** A GGUF tensor of Q8_0, Q4_0 or Q4_1 blocks
//!   is kept as its integer codes, one byte each, with each block's scale
//!   (and Q4_1's minimum) as f32: 1.25 bytes a weight instead of 4. The
//!   kernel dequantises a panel's codes as it goes with the same f32
//!   operations as [`crate::gguf::dequantize`] (`q·d`, or `q·d + m`), so
//!   the weights it multiplies are bit-identical to the dequantised file,
//!   and it does so once per 8 input rows.
//! - **Register blocking.** Up to 8 input rows share each loaded (or
//!   dequantised) weight vector, one accumulator per row; one or two rows
//!   use several accumulators along the input instead to hide the FMA
//!   latency.
//! - **Threads.** Panels are split over rayon's pool (set its size with
//!   `RAYON_NUM_THREADS`).
//!
//! The x86-64 kernel uses AVX2 and FMA through `pulp` (safe, detected at
//! run time); other CPUs take a portable loop over the same layout.
//! `pulp` and `rayon` are what faer (already a dependency) is built on, so
//! they add nothing to the build.
//!
//! ```
//! use lastmile_core::panel::PanelMatrix;
//! // W = [[1, 2], [3, 4], [5, 6]] (3 outputs, 2 inputs); x = [[1, 1]].
//! let w = PanelMatrix::from_f32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2)?;
//! assert_eq!(w.matmul(&[1.0, 1.0], 1)?, vec![3.0, 7.0, 11.0]);
//! assert_eq!(w.to_f32(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
//! # Ok::<(), lastmile_core::CoreError>(())
//! ```

mod blocks;
mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

use rayon::prelude::*;

use crate::error::{CoreError, Result};
use crate::gguf::{GgmlType, GgufError};

/// Output rows per panel.
pub const PANEL: usize = 8;

/// Elements per quantisation block along the input (GGUF's Q8_0, Q4_0, Q4_1).
pub const BLOCK: usize = 32;

/// Input rows sharing one pass over a panel (the widest register block).
const ROW_BLOCK: usize = 8;

/// A weight matrix `W` (`[out, in]`) held for `y = x Wᵀ` on the CPU; see
/// the [module documentation](self).
#[derive(Debug, Clone)]
pub struct PanelMatrix {
    out: usize,
    inp: usize,
    weights: Weights,
}

#[derive(Debug, Clone)]
pub(crate) enum Weights {
    /// `[panel][in][PANEL]`, f32.
    F32(Vec<f32>),
    /// Integer codes `[panel][in][PANEL]` and per-block scales (and
    /// minimums) `[panel][in / BLOCK][PANEL]`: `w = q·d (+ m)`.
    Codes(Codes),
}

#[derive(Debug, Clone)]
pub(crate) struct Codes {
    pub(crate) q: Vec<i8>,
    pub(crate) scale: Vec<f32>,
    pub(crate) min: Option<Vec<f32>>,
}

impl PanelMatrix {
    /// From `values`, row-major `[out, in]`.
    ///
    /// # Errors
    /// [`CoreError::ShapeMismatch`] when `values.len() != out · in` or a
    /// dimension is 0.
    pub fn from_f32(values: &[f32], out: usize, inp: usize) -> Result<Self> {
        check_dims(values.len(), out, inp, "values")?;
        let panels = out.div_ceil(PANEL);
        let mut w = vec![0.0f32; panels * inp * PANEL];
        for (o, row) in values.chunks_exact(inp).enumerate() {
            let (p, c) = (o / PANEL, o % PANEL);
            for (i, v) in row.iter().enumerate() {
                w[(p * inp + i) * PANEL + c] = *v;
            }
        }
        Ok(Self {
            out,
            inp,
            weights: Weights::F32(w),
        })
    }

    /// From the raw data of a GGUF tensor of `ggml_type` with `out` rows of
    /// `inp` elements (GGUF's `ne = [in, out]`). Q8_0, Q4_0 and Q4_1 are
    /// kept as codes (see the [module documentation](self)); F32, F16 and
    /// BF16 are widened to f32.
    ///
    /// # Errors
    /// [`GgufError::UnsupportedType`] for other types;
    /// [`GgufError::Length`] when `data` does not hold `out · in` elements
    /// of the type, or a row is not a whole number of blocks.
    ///
    /// ```
    /// use lastmile_core::gguf::{GgmlType, dequantize};
    /// use lastmile_core::panel::PanelMatrix;
    /// // One Q8_0 block per row: f16 scale 0.5, then 32 signed codes.
    /// let mut data = Vec::new();
    /// for row in 0..2i8 {
    ///     data.extend([0x00, 0x38]); // 0.5 as f16
    ///     data.extend((0..32i8).map(|j| (j - 16 + row) as u8));
    /// }
    /// let w = PanelMatrix::from_gguf(GgmlType::Q8_0, &data, 2, 32)?;
    /// assert_eq!(w.to_f32(), dequantize(GgmlType::Q8_0, &data, 64)?);
    /// // One panel of 8 rows (2 used): a byte per code, an f32 scale per block.
    /// assert_eq!(w.bytes(), 8 * 32 + 8 * 4);
    /// # Ok::<(), lastmile_core::gguf::GgufError>(())
    /// ```
    pub fn from_gguf(
        ggml_type: GgmlType,
        data: &[u8],
        out: usize,
        inp: usize,
    ) -> std::result::Result<Self, GgufError> {
        let n = out.checked_mul(inp).ok_or_else(|| GgufError::Length {
            what: "panel matrix".to_owned(),
            expected: "out · in within usize".to_owned(),
            found: format!("{out} × {inp}"),
        })?;
        crate::gguf::dequant::check(ggml_type, data, n, "panel matrix")?;
        match ggml_type {
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 => {
                if out == 0 || inp == 0 || !inp.is_multiple_of(BLOCK) {
                    return Err(GgufError::Length {
                        what: "panel matrix".to_owned(),
                        expected: format!("rows of a positive multiple of {BLOCK} elements"),
                        found: format!("{out} rows of {inp}"),
                    });
                }
                Ok(Self {
                    out,
                    inp,
                    weights: Weights::Codes(blocks::codes(ggml_type, data, out, inp)),
                })
            }
            _ => {
                let mut values = vec![0.0f32; n];
                crate::gguf::dequant::decode(ggml_type, data, &mut values);
                Self::from_f32(&values, out, inp).map_err(|e| GgufError::Length {
                    what: "panel matrix".to_owned(),
                    expected: "a non-empty matrix".to_owned(),
                    found: e.to_string(),
                })
            }
        }
    }

    /// Output rows (`out`).
    ///
    /// ```
    /// use lastmile_core::panel::PanelMatrix;
    /// let w = PanelMatrix::from_f32(&[0.5; 12], 3, 4)?;
    /// assert_eq!((w.out(), w.inp(), w.is_quantised()), (3, 4, false));
    /// // One panel of 8 rows (3 used) × 4 inputs, f32.
    /// assert_eq!(w.bytes(), 8 * 4 * 4);
    /// # Ok::<(), lastmile_core::CoreError>(())
    /// ```
    pub fn out(&self) -> usize {
        self.out
    }

    /// Input columns (`in`).
    pub fn inp(&self) -> usize {
        self.inp
    }

    /// Whether the weights are kept as quantised codes.
    pub fn is_quantised(&self) -> bool {
        matches!(self.weights, Weights::Codes(_))
    }

    /// Bytes held, the bytes a product reads (panels padded to [`PANEL`] rows).
    pub fn bytes(&self) -> usize {
        match &self.weights {
            Weights::F32(w) => w.len() * 4,
            Weights::Codes(c) => {
                c.q.len() + 4 * c.scale.len() + 4 * c.min.as_ref().map_or(0, Vec::len)
            }
        }
    }

    /// The weights as f32, row-major `[out, in]` (for quantised codes:
    /// bit-identical to [`crate::gguf::dequantize`] of the source data).
    pub fn to_f32(&self) -> Vec<f32> {
        let (out, inp) = (self.out, self.inp);
        let mut values = vec![0.0f32; out * inp];
        for (o, row) in values.chunks_exact_mut(inp).enumerate() {
            let (p, c) = (o / PANEL, o % PANEL);
            for (i, v) in row.iter_mut().enumerate() {
                *v = self.weights.at(p, i, c, inp);
            }
        }
        values
    }

    /// `y = x Wᵀ` for `x` row-major `[rows, in]`; returns `[rows, out]`.
    ///
    /// # Errors
    /// [`CoreError::ShapeMismatch`] when `x.len() != rows · in` or `rows == 0`.
    ///
    /// ```
    /// use lastmile_core::panel::PanelMatrix;
    /// let w = PanelMatrix::from_f32(&[1.0, 0.0, 0.0, 1.0], 2, 2)?; // the identity
    /// assert_eq!(w.matmul(&[1.0, 2.0, 3.0, 4.0], 2)?, vec![1.0, 2.0, 3.0, 4.0]);
    /// assert!(w.matmul(&[1.0, 2.0, 3.0], 2).is_err()); // 3 values are not 2 rows of 2
    /// # Ok::<(), lastmile_core::CoreError>(())
    /// ```
    pub fn matmul(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        self.product(x, rows, true)
    }

    /// [`PanelMatrix::matmul`], with the SIMD kernel when `simd` and the CPU has it.
    fn product(&self, x: &[f32], rows: usize, simd: bool) -> Result<Vec<f32>> {
        if rows == 0 || x.len() != rows * self.inp {
            return Err(CoreError::ShapeMismatch {
                what: "panel matrix input".to_owned(),
                expected: format!("[rows, {}] with rows > 0", self.inp),
                found: vec![rows, x.len() / self.inp.max(1)],
            });
        }
        let packed = pack(x, rows, self.inp);
        let panels = self.out.div_ceil(PANEL);
        let mut by_panel = vec![0.0f32; panels * rows * PANEL];
        // Enough panels per task to amortise the hand-off, enough tasks to
        // share out (4 per thread).
        let per_task = panels.div_ceil(4 * rayon::current_num_threads()).max(2);
        by_panel
            .par_chunks_mut(per_task * rows * PANEL)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * per_task;
                self.panels(first, &packed, rows, out, simd);
            });
        let mut y = vec![0.0f32; rows * self.out];
        for (p, panel) in by_panel.chunks_exact(rows * PANEL).enumerate() {
            let width = PANEL.min(self.out - p * PANEL);
            for (r, yr) in y.chunks_exact_mut(self.out).enumerate() {
                yr[p * PANEL..p * PANEL + width]
                    .copy_from_slice(&panel[r * PANEL..r * PANEL + width]);
            }
        }
        Ok(y)
    }

    /// Panels `first..` into `out` (`[panel][rows][PANEL]`).
    fn panels(&self, first: usize, x: &Packed, rows: usize, out: &mut [f32], simd: bool) {
        let job = Job {
            weights: &self.weights,
            inp: self.inp,
            first,
            x,
            rows,
        };
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new().filter(|_| simd) {
            x86::panels(simd, job, out);
            return;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = simd;
        portable::panels(job, out);
    }
}

impl Weights {
    /// Weight of panel `p`, input `i`, column `c` (`inp` inputs).
    fn at(&self, p: usize, i: usize, c: usize, inp: usize) -> f32 {
        match self {
            Weights::F32(w) => w[(p * inp + i) * PANEL + c],
            Weights::Codes(codes) => {
                let s = (p * (inp / BLOCK) + i / BLOCK) * PANEL + c;
                let q = f32::from(codes.q[(p * inp + i) * PANEL + c]);
                // The operations of ggml's dequantisation, in its order.
                match &codes.min {
                    Some(m) => q * codes.scale[s] + m[s],
                    None => q * codes.scale[s],
                }
            }
        }
    }
}

fn check_dims(len: usize, out: usize, inp: usize, what: &str) -> Result<()> {
    if out == 0 || inp == 0 || out.checked_mul(inp) != Some(len) {
        return Err(CoreError::ShapeMismatch {
            what: what.to_owned(),
            expected: format!("out · in = {out} · {inp} values with out, in > 0"),
            found: vec![len],
        });
    }
    Ok(())
}

/// A kernel's work: panels `first..` of `weights` (`inp` inputs each) times
/// every block of `x` (`rows` rows), into `[panel][rows][PANEL]`.
#[derive(Clone, Copy)]
pub(crate) struct Job<'a> {
    pub(crate) weights: &'a Weights,
    pub(crate) inp: usize,
    pub(crate) first: usize,
    pub(crate) x: &'a Packed,
    pub(crate) rows: usize,
}

/// The input rows in blocks of [`ROW_BLOCK`], 4, 2 and 1 rows, each block
/// transposed to `[in][block rows]` so that a kernel step reads one
/// contiguous group of values for all its rows.
pub(crate) struct Packed {
    pub(crate) values: Vec<f32>,
    /// `(first row, rows)` of each block; the block's values start at `first · in`.
    pub(crate) blocks: Vec<(usize, usize)>,
}

fn pack(x: &[f32], rows: usize, inp: usize) -> Packed {
    let mut values = vec![0.0f32; rows * inp];
    let mut blocks = Vec::new();
    let mut r = 0;
    while r < rows {
        let n = row_block(rows - r);
        for k in 0..inp {
            for j in 0..n {
                values[r * inp + k * n + j] = x[(r + j) * inp + k];
            }
        }
        blocks.push((r, n));
        r += n;
    }
    Packed { values, blocks }
}

/// Rows of the next register block when `left` rows remain.
fn row_block(left: usize) -> usize {
    match left {
        l if l >= ROW_BLOCK => ROW_BLOCK,
        l if l >= 4 => 4,
        l if l >= 2 => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    /// counts that exercise every register block and their mixtures.
    fn check_products(m: &PanelMatrix) {
        let (out, inp) = (m.out(), m.inp());
        let w = m.to_f32();
        for rows in [1, 2, 3, 5, 8, 13, 17] {
            let x = values(rows * inp, rows);
            let want = naive(&w, out, inp, &x, rows);
            for simd in [true, false] {
                let y = m.product(&x, rows, simd).unwrap_or_else(|e| panic!("{e}"));
                for (a, b) in y.iter().zip(&want) {
                    let tol = 1e-5 * (1.0 + b.abs()) * (inp as f32).sqrt();
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

    #[test]
    fn quantised_blocks_are_the_dequantised_file() {
        let (out, inp) = (19, 96);
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
            let bytes = out * inp / BLOCK * ty.type_size();
            let mut data: Vec<u8> = (0..bytes).map(|i| ((i * 131 + 7) % 251) as u8).collect();
            // Scales (and minimums) as small finite f16 values.
            for block in data.chunks_exact_mut(ty.type_size()) {
                let d = half::f16::from_f32(f32::from(block[4]) / 512.0 - 0.2).to_bits();
                block[..2].copy_from_slice(&d.to_le_bytes());
                if ty == GgmlType::Q4_1 {
                    let m = half::f16::from_f32(-f32::from(block[5]) / 256.0).to_bits();
                    block[2..4].copy_from_slice(&m.to_le_bytes());
                }
            }
            let m = PanelMatrix::from_gguf(ty, &data, out, inp).unwrap_or_else(|e| panic!("{e}"));
            assert!(m.is_quantised());
            let want = crate::gguf::dequantize(ty, &data, out * inp).unwrap_or_default();
            assert_eq!(m.to_f32(), want, "{ty}");
            check_products(&m);
        }
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
}
