//! ggml tensor types: their ids in GGUF files and their block layouts.

use std::fmt;

/// The element type of a tensor in a GGUF file (ggml's `ggml_type`).
///
/// Every type is stored in blocks: [`block_size`](Self::block_size)
/// consecutive elements along the fastest dimension (`ne[0]`) occupy
/// [`type_size`](Self::type_size) bytes. Plain types have blocks of one
/// element. The reader knows every type ggml has defined, so it can index
/// any file; [`dequantize`](super::dequantize) supports F32, F16, BF16,
/// Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, the k-quants Q2_K … Q6_K, IQ4_NL and
/// IQ4_XS ([`Self::can_dequantize`]).
///
/// # Examples
/// ```
/// use lastmile_core::gguf::GgmlType;
/// let t = GgmlType::from_id(3).unwrap();
/// assert_eq!(t, GgmlType::Q4_1);
/// assert_eq!((t.block_size(), t.type_size()), (32, 20));
/// assert_eq!(t.to_string(), "Q4_1");
/// assert!(GgmlType::from_id(4).is_none()); // a removed type id
/// ```
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u32)]
pub enum GgmlType {
    /// IEEE binary32.
    F32 = 0,
    /// IEEE binary16.
    F16 = 1,
    /// 32 elements: f16 scale `d`, 16 bytes of 4-bit quants; `x = d·(q − 8)`.
    Q4_0 = 2,
    /// 32 elements: f16 scale `d`, f16 minimum `m`, 16 bytes of 4-bit quants; `x = d·q + m`.
    Q4_1 = 3,
    /// 32 elements, 5-bit quants with a scale.
    Q5_0 = 6,
    /// 32 elements, 5-bit quants with a scale and a minimum.
    Q5_1 = 7,
    /// 32 elements: f16 scale `d`, 32 signed bytes; `x = d·q`.
    Q8_0 = 8,
    /// 32 elements, 8-bit quants with a scale and a sum (an intermediate type of ggml's dot products).
    Q8_1 = 9,
    /// k-quant super-block of 256 elements, 2 bits.
    Q2_K = 10,
    /// k-quant super-block of 256 elements, 3 bits.
    Q3_K = 11,
    /// k-quant super-block of 256 elements, 4 bits.
    Q4_K = 12,
    /// k-quant super-block of 256 elements, 5 bits.
    Q5_K = 13,
    /// k-quant super-block of 256 elements, 6 bits.
    Q6_K = 14,
    /// k-quant super-block of 256 elements, 8 bits.
    Q8_K = 15,
    /// i-quant, 2.06 bits per weight.
    IQ2_XXS = 16,
    /// i-quant, 2.31 bits per weight.
    IQ2_XS = 17,
    /// i-quant, 3.06 bits per weight.
    IQ3_XXS = 18,
    /// i-quant, 1.56 bits per weight.
    IQ1_S = 19,
    /// i-quant, non-linear 4-bit, blocks of 32.
    IQ4_NL = 20,
    /// i-quant, 3.44 bits per weight.
    IQ3_S = 21,
    /// i-quant, 2.5 bits per weight.
    IQ2_S = 22,
    /// i-quant, non-linear 4-bit, super-blocks of 256.
    IQ4_XS = 23,
    /// 8-bit signed integers.
    I8 = 24,
    /// 16-bit signed integers.
    I16 = 25,
    /// 32-bit signed integers.
    I32 = 26,
    /// 64-bit signed integers.
    I64 = 27,
    /// IEEE binary64.
    F64 = 28,
    /// i-quant, 1.75 bits per weight.
    IQ1_M = 29,
    /// bfloat16 (the upper half of an IEEE binary32).
    BF16 = 30,
    /// Ternary quant, 1.69 bits per weight.
    TQ1_0 = 34,
    /// Ternary quant, 2.06 bits per weight.
    TQ2_0 = 35,
    /// Microscaling FP4, blocks of 32.
    MXFP4 = 39,
    /// NVIDIA FP4, blocks of 64.
    NVFP4 = 40,
    /// 1-bit quant, blocks of 128.
    Q1_0 = 41,
}

/// Every type, in id order.
const ALL: [GgmlType; 34] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
    GgmlType::IQ2_XXS,
    GgmlType::IQ2_XS,
    GgmlType::IQ3_XXS,
    GgmlType::IQ1_S,
    GgmlType::IQ4_NL,
    GgmlType::IQ3_S,
    GgmlType::IQ2_S,
    GgmlType::IQ4_XS,
    GgmlType::I8,
    GgmlType::I16,
    GgmlType::I32,
    GgmlType::I64,
    GgmlType::F64,
    GgmlType::IQ1_M,
    GgmlType::BF16,
    GgmlType::TQ1_0,
    GgmlType::TQ2_0,
    GgmlType::MXFP4,
    GgmlType::NVFP4,
    GgmlType::Q1_0,
];

impl GgmlType {
    /// Every type the reader knows, in id order.
    pub fn all() -> impl Iterator<Item = GgmlType> {
        ALL.into_iter()
    }

    /// The type with this GGUF id, or `None` for an unknown id. Ids 4, 5,
    /// 31..=33 and 36..=38 belonged to types ggml has removed and are unknown.
    pub fn from_id(id: u32) -> Option<Self> {
        ALL.into_iter().find(|t| t.id() == id)
    }

    /// The type's id in GGUF files.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// `(name, elements per block, bytes per block)`, as ggml lays the
    /// blocks out (Q8_1 is two f16 and 32 quants: 36 bytes).
    const fn layout(self) -> (&'static str, usize, usize) {
        match self {
            GgmlType::F32 => ("F32", 1, 4),
            GgmlType::F16 => ("F16", 1, 2),
            GgmlType::Q4_0 => ("Q4_0", 32, 18),
            GgmlType::Q4_1 => ("Q4_1", 32, 20),
            GgmlType::Q5_0 => ("Q5_0", 32, 22),
            GgmlType::Q5_1 => ("Q5_1", 32, 24),
            GgmlType::Q8_0 => ("Q8_0", 32, 34),
            GgmlType::Q8_1 => ("Q8_1", 32, 36),
            GgmlType::Q2_K => ("Q2_K", 256, 84),
            GgmlType::Q3_K => ("Q3_K", 256, 110),
            GgmlType::Q4_K => ("Q4_K", 256, 144),
            GgmlType::Q5_K => ("Q5_K", 256, 176),
            GgmlType::Q6_K => ("Q6_K", 256, 210),
            GgmlType::Q8_K => ("Q8_K", 256, 292),
            GgmlType::IQ2_XXS => ("IQ2_XXS", 256, 66),
            GgmlType::IQ2_XS => ("IQ2_XS", 256, 74),
            GgmlType::IQ3_XXS => ("IQ3_XXS", 256, 98),
            GgmlType::IQ1_S => ("IQ1_S", 256, 50),
            GgmlType::IQ4_NL => ("IQ4_NL", 32, 18),
            GgmlType::IQ3_S => ("IQ3_S", 256, 110),
            GgmlType::IQ2_S => ("IQ2_S", 256, 82),
            GgmlType::IQ4_XS => ("IQ4_XS", 256, 136),
            GgmlType::I8 => ("I8", 1, 1),
            GgmlType::I16 => ("I16", 1, 2),
            GgmlType::I32 => ("I32", 1, 4),
            GgmlType::I64 => ("I64", 1, 8),
            GgmlType::F64 => ("F64", 1, 8),
            GgmlType::IQ1_M => ("IQ1_M", 256, 56),
            GgmlType::BF16 => ("BF16", 1, 2),
            GgmlType::TQ1_0 => ("TQ1_0", 256, 54),
            GgmlType::TQ2_0 => ("TQ2_0", 256, 66),
            GgmlType::MXFP4 => ("MXFP4", 32, 17),
            GgmlType::NVFP4 => ("NVFP4", 64, 36),
            GgmlType::Q1_0 => ("Q1_0", 128, 18),
        }
    }

    /// ggml's name for the type (`"Q4_1"`, `"BF16"`, …).
    pub fn name(self) -> &'static str {
        self.layout().0
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        self.layout().1
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.layout().2
    }

    /// Whether [`dequantize`](super::dequantize) supports this type.
    pub fn can_dequantize(self) -> bool {
        matches!(
            self,
            GgmlType::F32
                | GgmlType::F16
                | GgmlType::BF16
                | GgmlType::Q8_0
                | GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q5_0
                | GgmlType::Q5_1
                | GgmlType::Q2_K
                | GgmlType::Q3_K
                | GgmlType::Q4_K
                | GgmlType::Q5_K
                | GgmlType::Q6_K
                | GgmlType::IQ4_NL
                | GgmlType::IQ4_XS
        )
    }

    /// Bytes taken by `n_elements` elements, or `None` when `n_elements` is
    /// not a whole number of blocks or the size overflows.
    pub fn bytes_for(self, n_elements: usize) -> Option<usize> {
        if !n_elements.is_multiple_of(self.block_size()) {
            return None;
        }
        (n_elements / self.block_size()).checked_mul(self.type_size())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_unique() {
        for t in GgmlType::all() {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(GgmlType::all().filter(|u| u.id() == t.id()).count(), 1);
            assert_eq!(GgmlType::all().filter(|u| *u == t).count(), 1);
        }
        assert!(ALL.windows(2).all(|w| w[0].id() < w[1].id()));
        for removed in [4, 5, 31, 32, 33, 36, 37, 38, 42, u32::MAX] {
            assert_eq!(GgmlType::from_id(removed), None);
        }
    }

    #[test]
    fn bytes_for_counts_whole_blocks() {
        assert_eq!(GgmlType::Q4_0.bytes_for(64), Some(36));
        assert_eq!(GgmlType::Q4_0.bytes_for(33), None);
        assert_eq!(GgmlType::F16.bytes_for(7), Some(14));
        assert_eq!(GgmlType::F32.bytes_for(usize::MAX), None);
    }
}
