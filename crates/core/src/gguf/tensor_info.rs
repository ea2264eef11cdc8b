//! The index entry of one tensor.

use super::types::GgmlType;

/// Where and how one tensor is stored, as validated by the reader.
///
/// # Shapes
/// GGUF stores dimensions as ggml does: `ne[0]` first, and `ne[0]` is the
/// fastest-varying (contiguous) dimension. [`dims`](Self::dims) returns
/// them in that order; [`shape`](Self::shape) returns them reversed,
/// outermost first, which is the row-major shape burn, numpy and PyTorch
/// use. A Llama weight with `ne = [in, out]` has shape `[out, in]`; the
/// token embedding with `ne = [width, vocab]` has shape `[vocab, width]`.
///
/// # Examples
/// ```
/// use lastmile_core::gguf::{GgmlType, GgufFile};
/// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf_fixture.gguf");
/// let file = GgufFile::open(path)?;
/// let info = file.tensor_info("q4_0.matrix")?;
/// assert_eq!(info.dims(), [96, 5]);
/// assert_eq!(info.shape(), [5, 96]);
/// assert_eq!(info.ggml_type(), GgmlType::Q4_0);
/// assert_eq!(info.n_bytes(), 5 * 3 * 18); // 3 blocks of 32 per row, 18 bytes each
/// # Ok::<(), lastmile_core::gguf::GgufError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub(crate) name: String,
    pub(crate) dims: Vec<usize>,
    pub(crate) ggml_type: GgmlType,
    pub(crate) offset: u64,
    pub(crate) n_elements: usize,
    pub(crate) n_bytes: usize,
}

impl TensorInfo {
    /// The tensor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dimensions in GGUF order: `ne[0]` (fastest-varying) first.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Dimensions outermost first (row-major): `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }

    /// The element type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// Offset of the data from the start of the file's data section.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.n_elements
    }

    /// Bytes of stored data (without padding).
    pub fn n_bytes(&self) -> usize {
        self.n_bytes
    }
}
