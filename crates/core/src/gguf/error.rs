//! The error type of the GGUF reader.

use thiserror::Error;

use super::types::GgmlType;

/// Errors returned by [`crate::gguf`]: malformed or hostile files, and
/// requests the file cannot satisfy (a missing key or tensor, a metadata
/// value of another type, a tensor type that cannot be dequantised).
///
/// Converts into [`CoreError::Gguf`](crate::CoreError::Gguf) with `?`.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file could not be opened or read.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file path.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The file ended before a field it announces.
    #[error(
        "truncated GGUF file: {what} needs {needed} byte(s) at offset {offset}, but only {available} remain"
    )]
    Truncated {
        /// The field being read.
        what: String,
        /// Byte offset of the field.
        offset: u64,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the file at that offset.
        available: u64,
    },

    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file: expected magic bytes \"GGUF\", found {found:?}")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },

    /// The version is not 2 or 3 (or the file is big-endian).
    #[error(
        "unsupported GGUF version {version}; expected 2 or 3, little-endian{}",
        if *big_endian { " (this looks like a big-endian file)" } else { "" }
    )]
    UnsupportedVersion {
        /// The version field as read (little-endian).
        version: u32,
        /// Whether the byte-swapped value is a known version.
        big_endian: bool,
    },

    /// A count cannot be true: even at the smallest encoding of each item,
    /// the items would not fit in the rest of the file.
    #[error(
        "{what}: count {count} cannot fit in the {remaining} byte(s) left in the file (at most {max})"
    )]
    CountTooLarge {
        /// What is being counted (metadata pairs, tensors, array elements of a key).
        what: String,
        /// The count the file states.
        count: u64,
        /// Bytes left in the file after the count.
        remaining: u64,
        /// The largest count those bytes could hold.
        max: u64,
    },

    /// A string is not valid UTF-8.
    #[error("{what} is not valid UTF-8 (string at offset {offset})")]
    InvalidUtf8 {
        /// The field being read.
        what: String,
        /// Byte offset of the string's bytes.
        offset: u64,
    },

    /// A metadata value type id is not one GGUF defines (0..=12).
    #[error("metadata key `{key}` has unknown value type {id}; expected 0..=12")]
    UnknownValueType {
        /// The key.
        key: String,
        /// The type id found.
        id: u32,
    },

    /// A boolean metadata value is neither 0 nor 1.
    #[error("metadata key `{key}` holds the boolean byte {value}; expected 0 or 1")]
    InvalidBool {
        /// The key.
        key: String,
        /// The byte found.
        value: u8,
    },

    /// Arrays of arrays nest deeper than the reader allows.
    #[error("metadata key `{key}` nests arrays deeper than {max} levels")]
    NestingTooDeep {
        /// The key.
        key: String,
        /// The deepest nesting accepted.
        max: usize,
    },

    /// A metadata key appears twice.
    #[error("metadata key `{key}` appears more than once")]
    DuplicateKey {
        /// The key.
        key: String,
    },

    /// `general.alignment` is not a `u32` power of two.
    #[error("`general.alignment` must be a u32 power of two; found {found}")]
    InvalidAlignment {
        /// The value (or its type) found.
        found: String,
    },

    /// A tensor has more dimensions than ggml supports.
    #[error("tensor `{tensor}` has {n_dims} dimensions; expected at most {max}")]
    TooManyDims {
        /// The tensor's name.
        tensor: String,
        /// The number of dimensions stated.
        n_dims: u32,
        /// The maximum (ggml's `GGML_MAX_DIMS`).
        max: u32,
    },

    /// A tensor's dimensions are unusable: too large, overflowing, or not a
    /// whole number of blocks along `ne[0]`.
    #[error(
        "tensor `{tensor}` has invalid dimensions {dims:?} (GGUF order, ne[0] first): {reason}"
    )]
    InvalidDims {
        /// The tensor's name.
        tensor: String,
        /// The dimensions as stored (`ne[0]` first).
        dims: Vec<u64>,
        /// What is wrong with them.
        reason: String,
    },

    /// A tensor's ggml type id is not a known ggml type.
    #[error("tensor `{tensor}` has unknown ggml type id {id}")]
    UnknownGgmlType {
        /// The tensor's name.
        tensor: String,
        /// The type id found.
        id: u32,
    },

    /// Two tensors share a name.
    #[error("tensor name `{name}` appears more than once")]
    DuplicateTensor {
        /// The name.
        name: String,
    },

    /// A tensor's data offset is not a multiple of the file's alignment.
    #[error(
        "tensor `{tensor}` has data offset {offset}, not a multiple of the alignment {alignment}"
    )]
    MisalignedOffset {
        /// The tensor's name.
        tensor: String,
        /// Its offset, relative to the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },

    /// A tensor's data (padded to the alignment) runs past the end of the file.
    #[error(
        "tensor `{tensor}` occupies bytes {start}..{end} (padded to the alignment), past the end of the {file_len}-byte file"
    )]
    OutOfBounds {
        /// The tensor's name.
        tensor: String,
        /// Absolute start of its data (saturated on overflow).
        start: u64,
        /// Absolute end of its padded data (saturated on overflow).
        end: u64,
        /// The file's length.
        file_len: u64,
    },

    /// Two tensors' data ranges overlap.
    #[error("the data of tensors `{first}` and `{second}` overlap")]
    Overlap {
        /// The tensor that starts first.
        first: String,
        /// The tensor that starts inside it.
        second: String,
    },

    /// A metadata key is absent.
    #[error("metadata key `{key}` not found")]
    MissingKey {
        /// The key asked for.
        key: String,
    },

    /// A metadata value has another type than the one asked for.
    #[error("metadata key `{key}` holds {found}; expected {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// The type asked for.
        expected: String,
        /// The type stored.
        found: String,
    },

    /// No tensor has this name.
    #[error("tensor `{name}` not found among the file's {count} tensors")]
    MissingTensor {
        /// The name asked for.
        name: String,
        /// How many tensors the file has.
        count: usize,
    },

    /// Dequantisation of this ggml type is not implemented.
    #[error(
        "cannot dequantise `{what}`: ggml type {ggml_type} is not supported; expected F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K … Q6_K, IQ4_NL or IQ4_XS"
    )]
    UnsupportedType {
        /// The tensor or buffer.
        what: String,
        /// Its type.
        ggml_type: GgmlType,
    },

    /// A buffer handed to the dequantiser does not match the element count.
    #[error("{what}: {found}; expected {expected}")]
    Length {
        /// The buffer.
        what: String,
        /// The size required.
        expected: String,
        /// The size supplied.
        found: String,
    },

    /// The tensor's rank does not fit the requested burn tensor rank.
    #[error(
        "tensor `{tensor}` has shape {shape:?} (outermost first); it cannot be returned as a rank-{rank} tensor"
    )]
    Rank {
        /// The tensor's name.
        tensor: String,
        /// Its shape, outermost first.
        shape: Vec<usize>,
        /// The rank asked for.
        rank: usize,
    },
}
