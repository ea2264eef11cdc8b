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
//! - **Kept-quantised blocks.** A GGUF tensor of Q8_0, Q4_0, Q4_1, Q5_0,
//!   Q5_1, Q4_K, Q5_K, IQ4_NL or IQ4_XS blocks is kept as its integer
//!   codes (IQ4's: its levels), one byte
//!   each, with each block of 32's scale (and minimum) as f32: 1.25 bytes
//!   a weight instead of 4. The
//!   kernel dequantises a panel's codes as it goes with the same f32
//!   operations as [`crate::gguf::dequantize`] (`q·d`, or `q·d + m`), so
//!   the weights it multiplies are bit-identical to the dequantised file,
//!   and it does so once per 8 input rows.
//! - **8-bit activations** ([`PanelMatrix::from_gguf_q8`]): the blocks in
//!   the file's own size (4-bit codes two a byte, 5-bit ones with a plane
//!   of fifth bits, f16 scales; 0.625 bytes a weight for Q4_1), multiplied
//!   with integer dot products as ggml does.
//! - **Register blocking.** Up to 8 input rows share each loaded (or
//!   dequantised) weight vector, one accumulator per row; one or two rows
//!   use several accumulators along the input instead to hide the FMA
//!   latency.
//! - **Threads.** Panels are split over rayon's pool (set its size with
//!   `RAYON_NUM_THREADS`); a forward pass of ~150 products shares them
//!   out on a [`Team`] of the pool's threads, which stays together and
//!   polls for work between products instead of sleeping.
//!
//! The x86-64 kernels use AVX2 and FMA through `pulp` (safe, detected at
//! run time), and AVX-512 VNNI for 8-bit activations where the CPU has
//! it; other CPUs take a portable loop over the same layout.
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
mod int8;
#[cfg(target_arch = "x86_64")]
mod int8_avx2;
mod pack;
mod pool;
mod portable;
mod team;
#[cfg(target_arch = "x86_64")]
mod vnni;
#[cfg(target_arch = "x86_64")]
mod x86;

pub(crate) use pack::{Packed, pack};
pub use team::{Combine, Team};

use crate::error::{CoreError, Result};
use crate::gguf::{GgmlType, GgufError};

/// Whether this CPU runs products with 8-bit activations
/// ([`PanelMatrix::from_gguf_q8`]) in SIMD: x86-64 with AVX-512 VNNI, or
/// with AVX2, FMA and F16C; elsewhere a portable loop gives the
/// same results more slowly.
///
/// ```
/// let simd = lastmile_core::panel::int8_simd_available();
/// # let _ = simd;
/// ```
pub fn int8_simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return vnni::available() || crate::simd::Avx2F16c::is_available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

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
    /// Codes for products with 8-bit activations ([`int8`]).
    Int8(int8::Int8Codes),
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
    /// `inp` elements (GGUF's `ne = [in, out]`). Q8_0, Q4_0, Q4_1, Q5_0,
    /// Q5_1, Q4_K, Q5_K, IQ4_NL and IQ4_XS are kept as codes (see the [module
    /// documentation](self); a k-quant super-block as 8 blocks of 32, each
    /// with its own scale and minimum); F32, F16, BF16 and the k-quants
    /// whose scales cover 16 values (Q2_K, Q3_K, Q6_K) are dequantised to
    /// f32.
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
            t if blocks::has_codes(t) => {
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

    /// As [`PanelMatrix::from_gguf`], multiplied as ggml multiplies
    /// quantised blocks: each product quantises the rows of `x` to 8-bit
    /// blocks (ggml's Q8_0: `d = max|x|/127`, `q = round(x/d)` per 32
    /// inputs) and sums each block's products of codes in integers,
    /// `y = Σ_blocks d_x·(d_w·Σ q_w·q_x) + m·(d_x·Σ q_x)`. The weights are
    /// the file's (so [`PanelMatrix::to_f32`] is still the dequantised
    /// file, held in the file's own size: 4-bit codes two a byte, f16
    /// block scales); the activations are rounded to 8 bits, a relative error of
    /// at most `1/254` of each block's largest value, as in llama.cpp. On
    /// CPUs with AVX-512 VNNI one instruction does 64 byte products, four
    /// times the f32 FMAs of [`PanelMatrix::from_gguf`]'s kernel, which
    /// makes a product over several rows much cheaper; elsewhere a
    /// portable loop gives bit-identical results.
    ///
    /// F32, F16 and BF16 tensors are widened to f32, as by
    /// [`PanelMatrix::from_gguf`]. Q4_K and Q5_K keep their codes, with
    /// each block's scale `d·sc` and minimum `−dmin·m` (f32 products)
    /// rounded to f16 (a relative change of at most 2⁻¹¹, against steps
    /// of 1/15 or 1/31 of a block's range), as IQ4_XS its sub-block scales
    /// (IQ4's levels as their 4-bit indices, looked up in the kernel); Q2_K, Q3_K and Q6_K, whose
    /// blocks of 32 have two scales, are dequantised and rounded to Q8_0
    /// blocks (finer than their own 2–6 bits). A tensor whose scales
    /// overflow f16 keeps f32 scales and [`PanelMatrix::from_gguf`]'s
    /// kernel instead.
    ///
    /// # Errors
    /// As [`PanelMatrix::from_gguf`].
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
    /// let w = PanelMatrix::from_gguf_q8(GgmlType::Q8_0, &data, 2, 32)?;
    /// assert_eq!(w.to_f32(), dequantize(GgmlType::Q8_0, &data, 64)?);
    /// // x = 127 · e₀ is exact in 8 bits: y = 127 · W[:, 0].
    /// let mut x = vec![0.0; 32];
    /// x[0] = 127.0;
    /// assert_eq!(w.matmul(&x, 1).unwrap_or_default(), vec![127.0 * -8.0, 127.0 * -7.5]);
    /// # Ok::<(), lastmile_core::gguf::GgufError>(())
    /// ```
    pub fn from_gguf_q8(
        ggml_type: GgmlType,
        data: &[u8],
        out: usize,
        inp: usize,
    ) -> std::result::Result<Self, GgufError> {
        let mut m = Self::from_gguf(ggml_type, data, out, inp)?;
        if let Weights::F32(_) = &m.weights
            && ggml_type.block_size() > 1
            && inp.is_multiple_of(BLOCK)
        {
            // A k-quant with two scales a block of 32: rounded to Q8_0.
            let blocks = crate::gguf::quantize_q8_0(&m.to_f32())?;
            m = Self::from_gguf(GgmlType::Q8_0, &blocks, out, inp)?;
        }
        if let Weights::Codes(c) = &m.weights {
            // Computed k-quant scales may not fit f16 (the file's own f16
            // scales always do): such a tensor keeps f32 scales.
            let overflows = |v: &f32| v.is_finite() && half::f16::from_f32(*v).is_infinite();
            let fits = !c.scale.iter().chain(c.min.iter().flatten()).any(overflows);
            if fits {
                let packing = blocks::packing(ggml_type);
                m.weights = Weights::Int8(int8::Int8Codes::from_codes(c, out, inp, packing));
            }
        }
        Ok(m)
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
        matches!(self.weights, Weights::Codes(_) | Weights::Int8(_))
    }

    /// Whether products quantise the activations to 8 bits
    /// ([`PanelMatrix::from_gguf_q8`]).
    ///
    /// ```
    /// use lastmile_core::gguf::GgmlType;
    /// use lastmile_core::panel::PanelMatrix;
    /// let block = [[0x00u8, 0x38].as_slice(), &[1u8; 32]].concat(); // Q8_0: d = 0.5, codes 1
    /// let exact = PanelMatrix::from_gguf(GgmlType::Q8_0, &block, 1, 32)?;
    /// let q8 = PanelMatrix::from_gguf_q8(GgmlType::Q8_0, &block, 1, 32)?;
    /// assert!(!exact.quantises_activations() && q8.quantises_activations());
    /// # Ok::<(), lastmile_core::gguf::GgufError>(())
    /// ```
    pub fn quantises_activations(&self) -> bool {
        matches!(self.weights, Weights::Int8(_))
    }

    /// Bytes held, the bytes a product reads (panels padded to [`PANEL`] rows).
    pub fn bytes(&self) -> usize {
        match &self.weights {
            Weights::F32(w) => w.len() * 4,
            Weights::Codes(c) => {
                c.q.len() + 4 * c.scale.len() + 4 * c.min.as_ref().map_or(0, Vec::len)
            }
            Weights::Int8(c) => c.bytes(),
        }
    }

    /// The weights as f32, row-major `[out, in]` (for quantised codes:
    /// bit-identical to [`crate::gguf::dequantize`] of the source data).
    pub fn to_f32(&self) -> Vec<f32> {
        let (out, inp) = (self.out, self.inp);
        let mut values = vec![0.0f32; out * inp];
        for (o, row) in values.chunks_exact_mut(inp).enumerate() {
            if let Weights::Int8(w) = &self.weights {
                // A block's scale once per 32 codes (widened from f16).
                w.row_to_f32(o, row);
                continue;
            }
            for (i, v) in row.iter_mut().enumerate() {
                *v = self.weights.at(o, i, inp);
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

    /// [`PanelMatrix::matmul`] of each of `matrices` (all with the same
    /// input length) with the same `x`: the rows are packed (or quantised,
    /// for [`PanelMatrix::from_gguf_q8`] matrices) once for all of them, as
    /// for a layer's query, key and value projections, and the products
    /// share one hand-out of work to the threads (on SmolLM2-135M, a verify
    /// pass's ~240 parallel sections became ~150; each costs a few
    /// microseconds of waking and joining threads).
    ///
    /// # Errors
    /// As [`PanelMatrix::matmul`], for the first matrix `x` does not fit.
    ///
    /// ```
    /// use lastmile_core::panel::PanelMatrix;
    /// let a = PanelMatrix::from_f32(&[1.0, 0.0, 0.0, 1.0], 2, 2)?;
    /// let b = PanelMatrix::from_f32(&[1.0, 1.0], 1, 2)?;
    /// let ys = PanelMatrix::matmul_each(&[&a, &b], &[2.0, 3.0], 1)?;
    /// assert_eq!(ys, vec![vec![2.0, 3.0], vec![5.0]]);
    /// # Ok::<(), lastmile_core::CoreError>(())
    /// ```
    pub fn matmul_each(matrices: &[&PanelMatrix], x: &[f32], rows: usize) -> Result<Vec<Vec<f32>>> {
        pool::products(matrices, x, rows, true)
    }

    /// [`PanelMatrix::matmul`], with the SIMD kernel when `simd` and the CPU has it.
    fn product(&self, x: &[f32], rows: usize, simd: bool) -> Result<Vec<f32>> {
        let mut ys = pool::products(&[self], x, rows, simd)?;
        ys.pop().ok_or_else(|| CoreError::ShapeMismatch {
            what: "panel products".to_owned(),
            expected: "one product".to_owned(),
            found: vec![0],
        })
    }

    /// Panels of the kernel's layout and outputs per panel.
    fn layout(&self) -> (usize, usize) {
        match &self.weights {
            Weights::Int8(w) => (w.panels(self.inp), int8::LANES),
            Weights::F32(_) | Weights::Codes(_) => (self.out.div_ceil(PANEL), PANEL),
        }
    }

    /// Packs or quantises `x` into `prepared`, as this matrix's kernel reads it.
    fn prepare(&self, x: &[f32], rows: usize, simd: bool, prepared: &mut Prepared) {
        let inp = self.inp;
        match &self.weights {
            Weights::Int8(_) => {
                prepared
                    .q8
                    .get_or_insert_with(|| int8::quantise(x, rows, inp, simd));
            }
            Weights::F32(_) | Weights::Codes(_) => {
                prepared.packed.get_or_insert_with(|| pack(x, rows, inp));
            }
        }
    }

    /// Panels `first..` of this matrix times the prepared rows, into `out`
    /// (`[panel][rows][width]`). Rows this matrix's kernel does not read in
    /// `prepared` are left out (never: [`pool::products`] prepares them first).
    fn panels(&self, first: usize, out: &mut [f32], rows: usize, prepared: &Prepared, simd: bool) {
        let inp = self.inp;
        match (&self.weights, &prepared.q8, &prepared.packed) {
            (Weights::Int8(w), Some(q), _) => {
                let job = int8::Int8Job {
                    w,
                    inp,
                    first,
                    x: q,
                    rows,
                };
                #[cfg(target_arch = "x86_64")]
                if simd {
                    if vnni::available() {
                        vnni::panels(job, out);
                        return;
                    }
                    if let Some(avx2) = crate::simd::Avx2F16c::try_new() {
                        int8_avx2::panels(avx2, job, out);
                        return;
                    }
                }
                int8::panels(job, out);
            }
            (Weights::F32(w), _, Some(packed)) => {
                exact(Exact::F32(w), inp, first, packed, rows, simd, out);
            }
            (Weights::Codes(c), _, Some(packed)) => {
                exact(Exact::Codes(c), inp, first, packed, rows, simd, out);
            }
            _ => {}
        }
    }
}

/// The product with f32 activations of panels `first..` into `out`
/// (`[panel][rows][PANEL]`).
fn exact(
    weights: Exact<'_>,
    inp: usize,
    first: usize,
    packed: &Packed,
    rows: usize,
    simd: bool,
    out: &mut [f32],
) {
    let job = Job {
        weights,
        inp,
        first,
        x: packed,
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

impl Weights {
    /// Weight of output `o`, input `i` (`inp` inputs).
    fn at(&self, o: usize, i: usize, inp: usize) -> f32 {
        let (p, c) = (o / PANEL, o % PANEL);
        match self {
            Weights::Int8(w) => w.at(o, i, inp),
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

/// The rows of one `x`, packed or quantised for the kernels as first needed.
#[derive(Default)]
struct Prepared {
    packed: Option<Packed>,
    q8: Option<int8::Q8Rows>,
}

/// Weights multiplied by f32 activations.
#[derive(Clone, Copy)]
pub(crate) enum Exact<'a> {
    F32(&'a [f32]),
    Codes(&'a Codes),
}

/// A kernel's work: panels `first..` of `weights` (`inp` inputs each) times
/// every block of `x` (`rows` rows), into `[panel][rows][PANEL]`.
#[derive(Clone, Copy)]
pub(crate) struct Job<'a> {
    pub(crate) weights: Exact<'a>,
    pub(crate) inp: usize,
    pub(crate) first: usize,
    pub(crate) x: &'a Packed,
    pub(crate) rows: usize,
}

#[cfg(test)]
mod tests;
