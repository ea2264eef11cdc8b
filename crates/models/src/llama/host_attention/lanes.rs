//! The vectors the host attention's kernel is written in ([`Lanes`]):
//! plain arrays, AVX2 + FMA (8 lanes) and AVX-512 (16 lanes).

/// `W`-lane f32 vectors: the operations the kernel is written in.
pub(super) trait Lanes<const W: usize>: Copy {
    type V: Copy;
    fn splat(self, x: f32) -> Self::V;
    fn load(self, x: &[f32; W]) -> Self::V;
    /// `W` f16 values (bits) widened to f32, exactly.
    fn load_f16(self, x: &[u16; W]) -> Self::V;
    fn store(self, v: Self::V) -> [f32; W];
    /// `a·b + c` (with one rounding where [`FUSED`]).
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a·b + c` for one lane, rounded as [`Lanes::mul_add`].
    fn mul_add_one(self, a: f32, b: f32, c: f32) -> f32;
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
}

/// Whether the portable kernel fuses its multiply-adds: where the build
/// targets hardware FMA (every aarch64; x86-64 built for it). Elsewhere
/// `f32::mul_add` is a correctly rounded call that made the kernel 20–30×
/// slower (measured), so there it rounds twice; the SIMD kernels always
/// fuse, and then they agree with it to rounding rather than bit for bit.
pub(super) const FUSED: bool = cfg!(any(target_feature = "fma", target_arch = "aarch64"));

/// Plain arrays (any CPU).
#[derive(Clone, Copy)]
pub(super) struct Portable;

impl<const W: usize> Lanes<W> for Portable {
    type V = [f32; W];

    #[inline(always)]
    fn splat(self, x: f32) -> [f32; W] {
        [x; W]
    }
    #[inline(always)]
    fn load(self, x: &[f32; W]) -> [f32; W] {
        *x
    }
    #[inline(always)]
    fn load_f16(self, x: &[u16; W]) -> [f32; W] {
        std::array::from_fn(|l| half::f16::from_bits(x[l]).to_f32())
    }
    #[inline(always)]
    fn store(self, v: [f32; W]) -> [f32; W] {
        v
    }
    #[inline(always)]
    fn mul_add(self, a: [f32; W], b: [f32; W], c: [f32; W]) -> [f32; W] {
        std::array::from_fn(|l| <Self as Lanes<W>>::mul_add_one(self, a[l], b[l], c[l]))
    }
    #[inline(always)]
    fn mul_add_one(self, a: f32, b: f32, c: f32) -> f32 {
        if FUSED { a.mul_add(b, c) } else { a * b + c }
    }
    #[inline(always)]
    fn add(self, a: [f32; W], b: [f32; W]) -> [f32; W] {
        std::array::from_fn(|l| a[l] + b[l])
    }
    #[inline(always)]
    fn mul(self, a: [f32; W], b: [f32; W]) -> [f32; W] {
        std::array::from_fn(|l| a[l] * b[l])
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes<8> for lastmile_core::simd::Avx2F16c {
    type V = std::arch::x86_64::__m256;

    #[inline(always)]
    fn splat(self, x: f32) -> Self::V {
        self.avx._mm256_set1_ps(x)
    }
    #[inline(always)]
    fn load(self, x: &[f32; 8]) -> Self::V {
        pulp::cast(*x)
    }
    /// One `vcvtph2ps` (F16C). Integer operations in its place made an
    /// 8-token pass with an f16 cache 13–35 % dearer than with an f32 one
    /// (`docs/benchmarks.md`, twenty-sixth session).
    #[inline(always)]
    fn load_f16(self, x: &[u16; 8]) -> Self::V {
        self.widen_f16(*x)
    }
    #[inline(always)]
    fn store(self, v: Self::V) -> [f32; 8] {
        pulp::cast(v)
    }
    #[inline(always)]
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        self.fma._mm256_fmadd_ps(a, b, c)
    }
    /// Inside the token's features, one `vfmadd` instruction.
    #[inline(always)]
    fn mul_add_one(self, a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    fn add(self, a: Self::V, b: Self::V) -> Self::V {
        self.avx._mm256_add_ps(a, b)
    }
    #[inline(always)]
    fn mul(self, a: Self::V, b: Self::V) -> Self::V {
        self.avx._mm256_mul_ps(a, b)
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes<16> for pulp::x86::V4 {
    type V = std::arch::x86_64::__m512;

    #[inline(always)]
    fn splat(self, x: f32) -> Self::V {
        self.avx512f._mm512_set1_ps(x)
    }
    #[inline(always)]
    fn load(self, x: &[f32; 16]) -> Self::V {
        pulp::cast(*x)
    }
    /// One `vcvtph2ps`.
    #[inline(always)]
    fn load_f16(self, x: &[u16; 16]) -> Self::V {
        self.avx512f._mm512_cvtph_ps(pulp::cast(*x))
    }
    #[inline(always)]
    fn store(self, v: Self::V) -> [f32; 16] {
        pulp::cast(v)
    }
    #[inline(always)]
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        self.avx512f._mm512_fmadd_ps(a, b, c)
    }
    /// Inside the V4 features, one `vfmadd` instruction.
    #[inline(always)]
    fn mul_add_one(self, a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    fn add(self, a: Self::V, b: Self::V) -> Self::V {
        self.avx512f._mm512_add_ps(a, b)
    }
    #[inline(always)]
    fn mul(self, a: Self::V, b: Self::V) -> Self::V {
        self.avx512f._mm512_mul_ps(a, b)
    }
}
