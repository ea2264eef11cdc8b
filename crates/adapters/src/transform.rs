//! Orthonormal transforms along the feature axis, used by FouRA to move the
//! low-rank projections into the frequency domain.
//!
//! Two interchangeable evaluations of the same linear map `F(x) = T x`:
//!
//! - [`SpectralTransform::matrix`]: the dense orthonormal matrix `T` from its
//!   closed form (computed in `f64`). FouRA folds it into its factors
//!   (`A·T`, `Tᵀ·B`), which keeps the forward differentiable on any backend
//!   and costs `O(r·n²)` per call instead of `O(batch·n²)`.
//! - [`TransformPlan`]: an `O(n log n)` host evaluation with
//!   [rustfft](https://docs.rs/rustfft) (DCT-II through a real-symmetric FFT
//!   of size `2n`; real DFT through an FFT of size `n`), for transforming
//!   activations directly. `docs/benchmarks.md` compares the two.
//!
//! Since `T` is orthonormal, `F⁻¹ = Tᵀ`.

use std::f64::consts::PI;
use std::sync::Arc;

use burn::tensor::{Device, Tensor};
use lastmile_core::convert::tensor_from_vec;
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

use crate::error::{AdapterError, Result};

/// Largest transform size accepted (the dense matrix of this size is 256 MiB).
pub const MAX_TRANSFORM_SIZE: usize = 1 << 13;

/// Which orthonormal transform FouRA applies along the feature axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
#[non_exhaustive]
pub enum SpectralTransform {
    /// No transform: FouRA then reduces to LoRA (with a gate).
    Identity,
    /// Orthonormal DCT-II, `X_k = √(2/n) c_k Σ_j x_j cos(π (j+½) k / n)` with
    /// `c_0 = 1/√2`, `c_k = 1` otherwise. The default: real, and it packs the
    /// energy of smooth signals into few coefficients.
    #[default]
    Dct,
    /// Orthonormal real DFT, packed as `[Re X_0, √2 Re X_1, √2 Im X_1, …,
    /// (Re X_{n/2} for even n)] / √n`, so that `n` reals map to `n` reals.
    Rfft,
}

impl SpectralTransform {
    /// Short name used in files and reports (`"identity"`, `"dct"`, `"rfft"`).
    ///
    /// ```
    /// assert_eq!(lastmile_adapters::SpectralTransform::Dct.name(), "dct");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Dct => "dct",
            Self::Rfft => "rfft",
        }
    }

    /// Parses a [`SpectralTransform::name`].
    ///
    /// ```
    /// use lastmile_adapters::SpectralTransform;
    /// assert_eq!(SpectralTransform::from_name("rfft"), Some(SpectralTransform::Rfft));
    /// assert_eq!(SpectralTransform::from_name("wavelet"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "identity" => Some(Self::Identity),
            "dct" => Some(Self::Dct),
            "rfft" => Some(Self::Rfft),
            _ => None,
        }
    }

    fn check_size(n: usize) -> Result<()> {
        if n == 0 || n > MAX_TRANSFORM_SIZE {
            return Err(AdapterError::config(
                "transform size",
                n,
                &format!("an integer in [1, {MAX_TRANSFORM_SIZE}]"),
            ));
        }
        Ok(())
    }

    /// The orthonormal matrix `T: [n, n]` (row-major, `F(x) = T x`), from
    /// the closed form in `f64`.
    ///
    /// # Errors
    /// [`AdapterError::InvalidConfig`] for `n == 0` or `n > MAX_TRANSFORM_SIZE`.
    ///
    /// ```
    /// use lastmile_adapters::SpectralTransform;
    /// let t = SpectralTransform::Dct.matrix(4).unwrap();
    /// // first row of the orthonormal DCT-II is constant 1/√n
    /// assert!((t[0] - 0.5).abs() < 1e-7 && (t[3] - 0.5).abs() < 1e-7);
    /// ```
    pub fn matrix(self, n: usize) -> Result<Vec<f32>> {
        Self::check_size(n)?;
        let nf = n as f64;
        let mut t = vec![0f32; n * n];
        for k in 0..n {
            for j in 0..n {
                let v = match self {
                    Self::Identity => f64::from(u8::from(j == k)),
                    Self::Dct => {
                        let c = if k == 0 {
                            (1.0 / nf).sqrt()
                        } else {
                            (2.0 / nf).sqrt()
                        };
                        c * (PI * (j as f64 + 0.5) * k as f64 / nf).cos()
                    }
                    Self::Rfft => {
                        let angle = |f: usize| 2.0 * PI * (j * f % n) as f64 / nf;
                        if k == 0 {
                            1.0 / nf.sqrt()
                        } else if n.is_multiple_of(2) && k == n - 1 {
                            if j % 2 == 0 {
                                1.0 / nf.sqrt()
                            } else {
                                -1.0 / nf.sqrt()
                            }
                        } else if k % 2 == 1 {
                            (2.0 / nf).sqrt() * angle(k.div_ceil(2)).cos()
                        } else {
                            -(2.0 / nf).sqrt() * angle(k / 2).sin()
                        }
                    }
                };
                t[k * n + j] = v as f32;
            }
        }
        Ok(t)
    }

    /// [`SpectralTransform::matrix`] as a tensor on `device`.
    ///
    /// # Errors
    /// As [`SpectralTransform::matrix`].
    pub fn matrix_tensor(self, n: usize, device: &Device) -> Result<Tensor<2>> {
        Ok(tensor_from_vec(self.matrix(n)?, [n, n], device)?)
    }

    /// An `O(n log n)` host plan for this transform (rustfft).
    ///
    /// # Errors
    /// As [`SpectralTransform::matrix`].
    ///
    /// ```
    /// use lastmile_adapters::SpectralTransform;
    /// let mut plan = SpectralTransform::Dct.plan(8).unwrap();
    /// let x: Vec<f32> = (0..8).map(|i| (i as f32).sin()).collect();
    /// let mut y = x.clone();
    /// plan.forward(&mut y).unwrap();
    /// plan.inverse(&mut y).unwrap();
    /// assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-5));
    /// ```
    pub fn plan(self, n: usize) -> Result<TransformPlan> {
        Self::check_size(n)?;
        let mut planner = FftPlanner::<f32>::new();
        let len = match self {
            Self::Dct => 2 * n,
            Self::Rfft | Self::Identity => n,
        };
        let fwd = planner.plan_fft_forward(len);
        let inv = planner.plan_fft_inverse(len);
        let scratch_len = fwd
            .get_inplace_scratch_len()
            .max(inv.get_inplace_scratch_len());
        let twiddle = (0..n)
            .map(|k| {
                let theta = -PI * k as f64 / (2.0 * n as f64);
                Complex::new(theta.cos() as f32, theta.sin() as f32)
            })
            .collect();
        Ok(TransformPlan {
            kind: self,
            n,
            fwd,
            inv,
            twiddle,
            buf: vec![Complex::default(); len],
            scratch: vec![Complex::default(); scratch_len],
        })
    }
}

/// A reusable host plan: FFT plans and scratch allocated once, so
/// transforming a batch allocates nothing.
pub struct TransformPlan {
    kind: SpectralTransform,
    n: usize,
    fwd: Arc<dyn Fft<f32>>,
    inv: Arc<dyn Fft<f32>>,
    twiddle: Vec<Complex<f32>>,
    buf: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
}

impl std::fmt::Debug for TransformPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransformPlan")
            .field("kind", &self.kind)
            .field("n", &self.n)
            .finish()
    }
}

impl TransformPlan {
    /// Transform size `n`.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Always false: plans have `n ≥ 1`.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn check_rows(&self, rows: &[f32]) -> Result<()> {
        if !rows.len().is_multiple_of(self.n) {
            return Err(AdapterError::shape(
                "transform input",
                format!("a multiple of n = {} values (row-major [batch, n])", self.n),
                &[rows.len()],
            ));
        }
        Ok(())
    }

    /// Applies `F` in place to every length-`n` row of `rows`.
    ///
    /// # Errors
    /// [`AdapterError::Shape`] if `rows.len()` is not a multiple of `n`.
    pub fn forward(&mut self, rows: &mut [f32]) -> Result<()> {
        self.check_rows(rows)?;
        let n = self.n;
        let nf = n as f32;
        for row in rows.chunks_exact_mut(n) {
            match self.kind {
                SpectralTransform::Identity => {}
                SpectralTransform::Dct => {
                    // Even extension y = [x, reverse(x)]: Y_k = 2 e^{iπk/2n} Σ x_j cos(π(j+½)k/n).
                    for (j, &x) in row.iter().enumerate() {
                        self.buf[j] = Complex::new(x, 0.0);
                        self.buf[2 * n - 1 - j] = Complex::new(x, 0.0);
                    }
                    self.fwd
                        .process_with_scratch(&mut self.buf, &mut self.scratch);
                    let c0 = (1.0 / nf).sqrt() * 0.5;
                    let ck = (2.0 / nf).sqrt() * 0.5;
                    for (k, out) in row.iter_mut().enumerate() {
                        let c = if k == 0 { c0 } else { ck };
                        *out = c * (self.buf[k] * self.twiddle[k]).re;
                    }
                }
                SpectralTransform::Rfft => {
                    for (j, &x) in row.iter().enumerate() {
                        self.buf[j] = Complex::new(x, 0.0);
                    }
                    self.fwd
                        .process_with_scratch(&mut self.buf, &mut self.scratch);
                    let inv_sqrt_n = 1.0 / nf.sqrt();
                    let s = std::f32::consts::SQRT_2 * inv_sqrt_n;
                    row[0] = self.buf[0].re * inv_sqrt_n;
                    for k in 1..n.div_ceil(2) {
                        row[2 * k - 1] = s * self.buf[k].re;
                        row[2 * k] = s * self.buf[k].im;
                    }
                    if n.is_multiple_of(2) && n > 1 {
                        row[n - 1] = self.buf[n / 2].re * inv_sqrt_n;
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies `F⁻¹ = Tᵀ` in place to every length-`n` row of `rows`.
    ///
    /// # Errors
    /// [`AdapterError::Shape`] if `rows.len()` is not a multiple of `n`.
    pub fn inverse(&mut self, rows: &mut [f32]) -> Result<()> {
        self.check_rows(rows)?;
        let n = self.n;
        let nf = n as f32;
        for row in rows.chunks_exact_mut(n) {
            match self.kind {
                SpectralTransform::Identity => {}
                SpectralTransform::Dct => {
                    // Rebuild the spectrum of the even extension and invert it.
                    let c0 = (1.0 / nf).sqrt();
                    let ck = (2.0 / nf).sqrt();
                    for (k, (&x, tw)) in row.iter().zip(&self.twiddle).enumerate() {
                        let c = if k == 0 { c0 } else { ck };
                        self.buf[k] = tw.conj() * (2.0 * x / c);
                    }
                    self.buf[n] = Complex::default();
                    for k in 1..n {
                        self.buf[2 * n - k] = self.buf[k].conj();
                    }
                    self.inv
                        .process_with_scratch(&mut self.buf, &mut self.scratch);
                    let scale = 1.0 / (2.0 * nf);
                    for (j, out) in row.iter_mut().enumerate() {
                        *out = self.buf[j].re * scale;
                    }
                }
                SpectralTransform::Rfft => {
                    let sqrt_n = nf.sqrt();
                    let s = sqrt_n / std::f32::consts::SQRT_2;
                    self.buf[0] = Complex::new(row[0] * sqrt_n, 0.0);
                    for k in 1..n.div_ceil(2) {
                        self.buf[k] = Complex::new(row[2 * k - 1] * s, row[2 * k] * s);
                        self.buf[n - k] = self.buf[k].conj();
                    }
                    if n.is_multiple_of(2) && n > 1 {
                        self.buf[n / 2] = Complex::new(row[n - 1] * sqrt_n, 0.0);
                    }
                    self.inv
                        .process_with_scratch(&mut self.buf, &mut self.scratch);
                    for (j, out) in row.iter_mut().enumerate() {
                        *out = self.buf[j].re / nf;
                    }
                }
            }
        }
        Ok(())
    }
}
