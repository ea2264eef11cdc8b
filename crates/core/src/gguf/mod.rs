//! A reader for [GGUF](https://github.com/ggml-org/ggml/blob/master/docs/gguf.md)
//! files, the format of llama.cpp / ggml checkpoints: metadata, the tensor
//! index, and dequantisation of the common tensor types to `f32`.
//!
//! # The format (versions 2 and 3, little-endian)
//!
//! ```text
//! "GGUF"  version: u32  tensor_count: u64  kv_count: u64
//! kv_count × (key: string, value_type: u32, value)
//! tensor_count × (name: string, n_dims: u32, ne: [u64; n_dims], ggml_type: u32, offset: u64)
//! padding to `general.alignment` (default 32)
//! data section: each tensor at data_start + offset, offsets multiples of the alignment
//! ```
//!
//! A string is a `u64` byte length and UTF-8 bytes; an array is an element
//! type (`u32`), a `u64` count and the elements. Versions 2 and 3 share this
//! layout (version 3 only allowed big-endian files, which are rejected here).
//!
//! # Hostile files
//!
//! [`GgufFile`] never panics and never trusts a count: truncation at any
//! byte, counts or string lengths larger than the rest of the file, unknown
//! value or tensor types, more than [`MAX_DIMS`] dimensions, arrays nested
//! deeper than [`MAX_ARRAY_DEPTH`], overflowing shapes, misaligned,
//! out-of-range or overlapping tensor data, duplicate keys or names and
//! invalid UTF-8 are all typed [`GgufError`]s. Nothing is allocated for a
//! count before the file is known to hold it, so memory stays within a small
//! multiple of the file's size. [`GgufFile::open`] reads only the header and
//! then each tensor's bytes on request; [`GgufFile::from_bytes`] works on a
//! buffer.
//!
//! # Shapes
//!
//! GGUF lists dimensions as ggml does, `ne[0]` first, and `ne[0]` is the
//! fastest-varying one ([`TensorInfo::dims`]). [`TensorInfo::shape`] and the
//! burn tensors of [`GgufFile::tensor`] use the reverse, outermost-first
//! order: a weight stored with `ne = [in, out]` comes back as `[out, in]`,
//! the layout of PyTorch's `nn.Linear`.
//!
//! # Dequantisation
//!
//! F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, the k-quants Q2_K,
//! Q3_K, Q4_K, Q5_K and Q6_K (the types of llama.cpp's `Q4_K_M`-style
//! files) and the non-linear 4-bit IQ4_NL and IQ4_XS, bit-exactly as ggml
//! defines them (block layouts in [`dequantize`] and the `kquants` and
//! `iq4` modules); the other ggml types (the 1–3-bit i-quants, ternary and
//! FP4 types) are indexed but not dequantised
//! ([`GgufError::UnsupportedType`]). Weights trained here
//! are rounded the other way to Q8_0 ([`quantize_q8_0`]) or Q4_1
//! ([`quantize_q4_1`]) as ggml's reference quantisers do.
//!
//! # Examples
//!
//! Reading the test fixture (written by the `gguf` Python package):
//!
//! ```
//! # #[cfg(feature = "flex")] {
//! use burn::tensor::{Device, Tensor};
//! use lastmile_core::gguf::{GgmlType, GgufFile};
//!
//! let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf_fixture.gguf");
//! let file = GgufFile::open(path)?;
//! assert_eq!(file.version(), 3);
//! assert_eq!(file.metadata().get_str("general.architecture")?, "lastmile-test");
//!
//! let info = file.tensor_info("q4_1.matrix")?;
//! assert_eq!(info.ggml_type(), GgmlType::Q4_1);
//! assert_eq!(info.dims(), [64, 7]); // ne[0] = 64 is the contiguous dimension
//! assert_eq!(info.shape(), [7, 64]);
//!
//! let values: Vec<f32> = file.dequantize("q4_1.matrix")?;
//! assert_eq!(values.len(), 7 * 64);
//! let t: Tensor<2> = file.tensor("q4_1.matrix", &Device::flex())?;
//! assert_eq!(t.dims(), [7, 64]);
//! # }
//! # Ok::<(), lastmile_core::gguf::GgufError>(())
//! ```

pub(crate) mod dequant;
mod error;
mod header;
pub(crate) mod iq4;
pub(crate) mod kquants;
mod metadata;
mod quant;
mod tensor_info;
mod types;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use burn::tensor::{Device, Tensor, TensorData};

pub use dequant::{dequantize, dequantize_into};
pub use error::GgufError;
pub use header::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_DIMS};
pub use metadata::{Metadata, MetadataArray, MetadataValue, ValueType};
pub use quant::{quantize_q4_1, quantize_q8_0};
pub use tensor_info::TensorInfo;
pub use types::GgmlType;

/// Where the tensor bytes come from.
enum Source {
    Bytes(Vec<u8>),
    File { path: PathBuf, file: Mutex<File> },
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Source::File { path, .. } => write!(f, "File({})", path.display()),
        }
    }
}

/// An opened GGUF file: its metadata, its validated tensor index, and
/// access to each tensor's data.
///
/// See the [module documentation](self) for the format, the checks made on
/// hostile input and the shape convention.
///
/// # Examples
/// ```
/// use lastmile_core::gguf::{GgufError, GgufFile};
/// let bytes = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf_fixture.gguf"));
/// let file = GgufFile::from_bytes(bytes)?;
/// let names: Vec<&str> = file.tensors().iter().map(|t| t.name()).collect();
/// assert!(names.contains(&"q8_0.vector"));
/// assert_eq!(file.dequantize("q8_0.vector")?.len(), 96);
/// // A truncated copy is an error, not a panic.
/// assert!(matches!(
///     GgufFile::from_bytes(&bytes[..100]),
///     Err(GgufError::Truncated { .. } | GgufError::CountTooLarge { .. })
/// ));
/// # Ok::<(), GgufError>(())
/// ```
#[derive(Debug)]
pub struct GgufFile {
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
    file_len: u64,
    source: Source,
}

impl GgufFile {
    /// Opens a GGUF file, reading and validating its header. Tensor data is
    /// read later, one tensor per request, so memory use is the header's
    /// plus the tensors asked for.
    ///
    /// # Errors
    /// [`GgufError::Io`] if the file cannot be opened or read; any other
    /// [`GgufError`] for a malformed or hostile header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io_err = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let file_len = file.metadata().map_err(io_err)?.len();
        let name = path.display().to_string();
        let header = header::parse(BufReader::new(&file), file_len, &name)?;
        Ok(Self::assemble(
            header,
            file_len,
            Source::File {
                path: path.to_owned(),
                file: Mutex::new(file),
            },
        ))
    }

    /// Parses a GGUF file held in memory (copied).
    ///
    /// # Errors
    /// As [`GgufFile::from_vec`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GgufError> {
        Self::from_vec(bytes.to_vec())
    }

    /// Parses a GGUF file held in memory, taking ownership of the buffer.
    ///
    /// # Errors
    /// Any [`GgufError`] describing a malformed or hostile file.
    pub fn from_vec(bytes: Vec<u8>) -> Result<Self, GgufError> {
        let file_len = bytes.len() as u64;
        let header = header::parse(bytes.as_slice(), file_len, "<bytes>")?;
        Ok(Self::assemble(header, file_len, Source::Bytes(bytes)))
    }

    fn assemble(header: header::Header, file_len: u64, source: Source) -> Self {
        Self {
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            index: header.index,
            alignment: header.alignment,
            data_offset: header.data_offset,
            file_len,
            source,
        }
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment: `general.alignment`, or [`DEFAULT_ALIGNMENT`].
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The file's length in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The metadata, with typed getters.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The tensor index, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The index entry of tensor `name`.
    ///
    /// # Errors
    /// [`GgufError::MissingTensor`].
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| GgufError::MissingTensor {
                name: name.to_owned(),
                count: self.tensors.len(),
            })
    }

    /// The stored bytes of tensor `name` (borrowed from an in-memory file,
    /// read from disk otherwise).
    ///
    /// # Errors
    /// [`GgufError::MissingTensor`]; [`GgufError::Io`] or
    /// [`GgufError::Truncated`] if the file on disk can no longer be read
    /// (e.g. it shrank after being opened).
    pub fn tensor_data(&self, name: &str) -> Result<Cow<'_, [u8]>, GgufError> {
        let info = self.tensor_info(name)?;
        // The header check guaranteed data_offset + offset + n_bytes <= file_len.
        let start = self.data_offset + info.offset;
        match &self.source {
            Source::Bytes(bytes) => usize::try_from(start)
                .ok()
                .and_then(|s| bytes.get(s..s.checked_add(info.n_bytes)?))
                .map(Cow::Borrowed)
                .ok_or_else(|| GgufError::OutOfBounds {
                    tensor: name.to_owned(),
                    start,
                    end: start.saturating_add(info.n_bytes as u64),
                    file_len: self.file_len,
                }),
            Source::File { path, file } => {
                let io_err = |source| GgufError::Io {
                    path: path.display().to_string(),
                    source,
                };
                // A panic elsewhere cannot leave the file in a bad state: every read seeks first.
                let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
                file.seek(SeekFrom::Start(start)).map_err(io_err)?;
                let mut buf = vec![0u8; info.n_bytes];
                match file.read_exact(&mut buf) {
                    Ok(()) => Ok(Cow::Owned(buf)),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        Err(GgufError::Truncated {
                            what: format!(
                                "data of tensor `{name}` (the file shrank after opening)"
                            ),
                            offset: start,
                            needed: info.n_bytes as u64,
                            available: 0,
                        })
                    }
                    Err(e) => Err(io_err(e)),
                }
            }
        }
    }

    /// The values of tensor `name` as `f32`, in storage order (`ne[0]`
    /// fastest, i.e. row-major for [`TensorInfo::shape`]).
    ///
    /// # Errors
    /// [`GgufError::MissingTensor`], [`GgufError::UnsupportedType`] for a
    /// type that cannot be dequantised, or a read error as in
    /// [`GgufFile::tensor_data`].
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor_info(name)?;
        let what = format!("tensor `{name}`");
        // Fail on the type before reading the data.
        if !info.ggml_type.can_dequantize() {
            return Err(GgufError::UnsupportedType {
                what,
                ggml_type: info.ggml_type,
            });
        }
        let data = self.tensor_data(name)?;
        dequant::check(info.ggml_type, &data, info.n_elements, &what)?;
        let mut out = vec![0.0f32; info.n_elements];
        dequant::decode(info.ggml_type, &data, &mut out);
        Ok(out)
    }

    /// Tensor `name`, dequantised, as a rank-`D` burn tensor on `device`.
    ///
    /// # Shapes
    /// [`TensorInfo::shape`] (outermost first, the reverse of GGUF's `ne`),
    /// with leading dimensions of size 1 added when `D` exceeds the stored
    /// rank (ggml drops trailing `ne` of 1 when it writes a file).
    ///
    /// # Errors
    /// [`GgufError::Rank`] when the stored rank exceeds `D`; otherwise as
    /// [`GgufFile::dequantize`].
    pub fn tensor<const D: usize>(
        &self,
        name: &str,
        device: &Device,
    ) -> Result<Tensor<D>, GgufError> {
        let info = self.tensor_info(name)?;
        let stored = info.shape();
        if stored.len() > D {
            return Err(GgufError::Rank {
                tensor: name.to_owned(),
                shape: stored,
                rank: D,
            });
        }
        let mut shape = [1usize; D];
        shape[D - stored.len()..].copy_from_slice(&stored);
        let values = self.dequantize(name)?;
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }
}
