//! Parsing and validation of a GGUF header: magic, version, counts,
//! metadata, tensor index and the layout of the data section.
//!
//! Every count and length is checked against the bytes left in the file
//! before anything is allocated for it, and nothing is reserved from a
//! stated count alone, so the memory a hostile header can claim is bounded
//! by a small constant multiple of the file's size: each value, string or
//! index entry held in memory was read from at least one (usually 8 or
//! more) bytes of the file.

use std::collections::HashMap;
use std::io::Read;

use super::error::GgufError;
use super::metadata::{Metadata, MetadataArray, MetadataValue, ValueType};
use super::tensor_info::TensorInfo;
use super::types::GgmlType;

/// The metadata key that sets the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Alignment of the data section and of tensor offsets when the file does not set [`ALIGNMENT_KEY`].
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// The deepest nesting of arrays of arrays the reader accepts.
pub const MAX_ARRAY_DEPTH: usize = 4;

/// Smallest encoding of a metadata pair: an empty key (8), a type (4), a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Smallest encoding of a tensor-index entry: an empty name (8), `n_dims` (4), type (4), offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;

/// A parsed and validated header.
#[derive(Debug)]
pub(crate) struct Header {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub index: HashMap<String, usize>,
    pub alignment: u64,
    pub data_offset: u64,
}

/// A byte reader that knows how many bytes the file has left.
struct Reader<'s, R> {
    inner: R,
    pos: u64,
    len: u64,
    source: &'s str,
}

impl<R: Read> Reader<'_, R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn need(&self, n: u64, what: &str) -> Result<(), GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what.to_owned(),
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            });
        }
        Ok(())
    }

    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<(), GgufError> {
        self.need(buf.len() as u64, what)?;
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            // The file was shorter than its stated length (it shrank while being read).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(GgufError::Truncated {
                what: what.to_owned(),
                offset: self.pos,
                needed: buf.len() as u64,
                available: 0,
            }),
            Err(source) => Err(GgufError::Io {
                path: self.source.to_owned(),
                source,
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        self.fill(&mut buf, what)?;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// `n` bytes, allocated only after checking that the file holds them.
    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, GgufError> {
        self.need(n, what)?;
        let len = usize::try_from(n).map_err(|_| GgufError::Truncated {
            what: what.to_owned(),
            offset: self.pos,
            needed: n,
            available: self.remaining(),
        })?;
        let mut buf = vec![0u8; len];
        self.fill(&mut buf, what)?;
        Ok(buf)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let n = self.u64(what)?;
        let offset = self.pos;
        let bytes = self.bytes(n, what)?;
        String::from_utf8(bytes).map_err(|_| GgufError::InvalidUtf8 {
            what: what.to_owned(),
            offset,
        })
    }

    /// Checks that `count` items of at least `min_len` bytes each fit in the rest of the file.
    fn check_count(&self, count: u64, min_len: u64, what: &str) -> Result<usize, GgufError> {
        let max = self.remaining() / min_len.max(1);
        if count > max {
            return Err(GgufError::CountTooLarge {
                what: what.to_owned(),
                count,
                remaining: self.remaining(),
                max,
            });
        }
        usize::try_from(count).map_err(|_| GgufError::CountTooLarge {
            what: what.to_owned(),
            count,
            remaining: self.remaining(),
            max: usize::MAX as u64,
        })
    }

    /// `count` fixed-size values read in one block and decoded.
    fn fixed<T, const N: usize>(
        &mut self,
        count: usize,
        what: &str,
        decode: fn([u8; N]) -> T,
    ) -> Result<Vec<T>, GgufError> {
        let bytes = self.bytes((count as u64).saturating_mul(N as u64), what)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                decode(a)
            })
            .collect())
    }

    fn value_type(&mut self, key: &str) -> Result<ValueType, GgufError> {
        let id = self.u32(key)?;
        ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.to_owned(),
            id,
        })
    }

    fn bool(&mut self, key: &str) -> Result<bool, GgufError> {
        let [b] = self.array::<1>(key)?;
        decode_bool(b, key)
    }

    fn value(&mut self, ty: ValueType, key: &str) -> Result<MetadataValue, GgufError> {
        Ok(match ty {
            ValueType::U8 => MetadataValue::U8(u8::from_le_bytes(self.array(key)?)),
            ValueType::I8 => MetadataValue::I8(i8::from_le_bytes(self.array(key)?)),
            ValueType::U16 => MetadataValue::U16(u16::from_le_bytes(self.array(key)?)),
            ValueType::I16 => MetadataValue::I16(i16::from_le_bytes(self.array(key)?)),
            ValueType::U32 => MetadataValue::U32(u32::from_le_bytes(self.array(key)?)),
            ValueType::I32 => MetadataValue::I32(i32::from_le_bytes(self.array(key)?)),
            ValueType::F32 => MetadataValue::F32(f32::from_le_bytes(self.array(key)?)),
            ValueType::U64 => MetadataValue::U64(u64::from_le_bytes(self.array(key)?)),
            ValueType::I64 => MetadataValue::I64(i64::from_le_bytes(self.array(key)?)),
            ValueType::F64 => MetadataValue::F64(f64::from_le_bytes(self.array(key)?)),
            ValueType::Bool => MetadataValue::Bool(self.bool(key)?),
            ValueType::String => MetadataValue::String(self.string(key)?),
            ValueType::Array => MetadataValue::Array(self.array_value(key, 1)?),
        })
    }

    /// An array at nesting level `depth` (1 for a top-level array).
    fn array_value(&mut self, key: &str, depth: usize) -> Result<MetadataArray, GgufError> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::NestingTooDeep {
                key: key.to_owned(),
                max: MAX_ARRAY_DEPTH,
            });
        }
        let elem = self.value_type(key)?;
        let count = self.u64(key)?;
        let n = self.check_count(
            count,
            elem.min_encoded_len(),
            &format!("array elements of `{key}`"),
        )?;
        Ok(match elem {
            ValueType::U8 => MetadataArray::U8(self.fixed(n, key, u8::from_le_bytes)?),
            ValueType::I8 => MetadataArray::I8(self.fixed(n, key, i8::from_le_bytes)?),
            ValueType::U16 => MetadataArray::U16(self.fixed(n, key, u16::from_le_bytes)?),
            ValueType::I16 => MetadataArray::I16(self.fixed(n, key, i16::from_le_bytes)?),
            ValueType::U32 => MetadataArray::U32(self.fixed(n, key, u32::from_le_bytes)?),
            ValueType::I32 => MetadataArray::I32(self.fixed(n, key, i32::from_le_bytes)?),
            ValueType::F32 => MetadataArray::F32(self.fixed(n, key, f32::from_le_bytes)?),
            ValueType::U64 => MetadataArray::U64(self.fixed(n, key, u64::from_le_bytes)?),
            ValueType::I64 => MetadataArray::I64(self.fixed(n, key, i64::from_le_bytes)?),
            ValueType::F64 => MetadataArray::F64(self.fixed(n, key, f64::from_le_bytes)?),
            ValueType::Bool => MetadataArray::Bool(
                self.fixed(n, key, u8::from_le_bytes)?
                    .into_iter()
                    .map(|b| decode_bool(b, key))
                    .collect::<Result<_, _>>()?,
            ),
            ValueType::String => {
                MetadataArray::String((0..n).map(|_| self.string(key)).collect::<Result<_, _>>()?)
            }
            ValueType::Array => MetadataArray::Array(
                (0..n)
                    .map(|_| self.array_value(key, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    fn tensor_info(&mut self, i: usize) -> Result<TensorInfo, GgufError> {
        let name = self.string(&format!("name of tensor #{i}"))?;
        let what = format!("index entry of tensor `{name}`");
        let n_dims = self.u32(&what)?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::TooManyDims {
                tensor: name,
                n_dims,
                max: MAX_DIMS,
            });
        }
        let raw_dims = (0..n_dims)
            .map(|_| self.u64(&what))
            .collect::<Result<Vec<_>, _>>()?;
        let type_id = self.u32(&what)?;
        let offset = self.u64(&what)?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownGgmlType {
            tensor: name.clone(),
            id: type_id,
        })?;
        let invalid = |reason: String| GgufError::InvalidDims {
            tensor: name.clone(),
            dims: raw_dims.clone(),
            reason,
        };
        let dims = raw_dims
            .iter()
            .map(|&d| {
                // ggml stores dimensions as int64_t.
                if d > i64::MAX as u64 {
                    return None;
                }
                usize::try_from(d).ok()
            })
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| invalid("a dimension exceeds i64::MAX or usize".to_owned()))?;
        let n_elements = dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| invalid("the element count overflows".to_owned()))?;
        let row = dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(ggml_type.block_size()) {
            return Err(invalid(format!(
                "ne[0] = {row} is not a multiple of the {ggml_type} block size {}",
                ggml_type.block_size()
            )));
        }
        let n_bytes = ggml_type
            .bytes_for(n_elements)
            .ok_or_else(|| invalid("the byte size overflows".to_owned()))?;
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_elements,
            n_bytes,
        })
    }
}

fn decode_bool(b: u8, key: &str) -> Result<bool, GgufError> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(GgufError::InvalidBool {
            key: key.to_owned(),
            value,
        }),
    }
}

/// `x` rounded up to a multiple of the power of two `align`, or `None` on overflow.
fn align_up(x: u64, align: u64) -> Option<u64> {
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// Parses and validates the header of a `file_len`-byte GGUF file whose
/// bytes `input` yields from the start. `source` names the file in I/O errors.
pub(crate) fn parse<R: Read>(input: R, file_len: u64, source: &str) -> Result<Header, GgufError> {
    let mut r = Reader {
        inner: input,
        pos: 0,
        len: file_len,
        source,
    };
    let magic = r.array::<4>("magic")?;
    if &magic != b"GGUF" {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = r.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion {
            version,
            big_endian: (1..=3).contains(&version.swap_bytes()),
        });
    }
    let tensor_count = r.u64("tensor count")?;
    let kv_count = r.u64("metadata count")?;
    r.check_count(kv_count, MIN_KV_BYTES, "metadata key-value pairs")?;
    r.check_count(tensor_count, MIN_TENSOR_INFO_BYTES, "tensors")?;

    let mut metadata = Metadata::default();
    for i in 0..kv_count {
        let key = r.string(&format!("key of metadata pair #{i}"))?;
        let ty = r.value_type(&key)?;
        let value = r.value(ty, &key)?;
        if metadata.get(&key).is_some() {
            return Err(GgufError::DuplicateKey { key });
        }
        metadata.insert(key, value);
    }

    // Checked again now that the metadata has used up part of the file.
    let n_tensors = r.check_count(tensor_count, MIN_TENSOR_INFO_BYTES, "tensors")?;
    // No capacity from the stated count: memory grows only with entries actually read.
    let mut tensors = Vec::new();
    let mut index = HashMap::new();
    for i in 0..n_tensors {
        let info = r.tensor_info(i)?;
        if index.insert(info.name.clone(), i).is_some() {
            return Err(GgufError::DuplicateTensor { name: info.name });
        }
        tensors.push(info);
    }

    let alignment = match metadata.get(ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some(MetadataValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(MetadataValue::U32(a)) => {
            return Err(GgufError::InvalidAlignment {
                found: a.to_string(),
            });
        }
        Some(other) => {
            return Err(GgufError::InvalidAlignment {
                found: format!("a value of type {}", other.type_name()),
            });
        }
    };
    let mut data_offset = align_up(r.pos, alignment).unwrap_or(u64::MAX);
    // A file without tensors (llama.cpp's vocabulary-only files) may end
    // right after its index: its empty data section needs no padding.
    if tensors.is_empty() {
        data_offset = data_offset.min(file_len);
    }
    if data_offset > file_len {
        return Err(GgufError::Truncated {
            what: "padding before the tensor data".to_owned(),
            offset: r.pos,
            needed: data_offset - r.pos,
            available: r.remaining(),
        });
    }
    check_layout(&tensors, alignment, data_offset, file_len)?;
    Ok(Header {
        version,
        metadata,
        tensors,
        index,
        alignment,
        data_offset,
    })
}

/// Offsets aligned, data (padded to the alignment, as ggml writes and
/// reads it) inside the file, and no two tensors sharing a byte.
fn check_layout(
    tensors: &[TensorInfo],
    alignment: u64,
    data_offset: u64,
    file_len: u64,
) -> Result<(), GgufError> {
    for t in tensors {
        if !t.offset.is_multiple_of(alignment) {
            return Err(GgufError::MisalignedOffset {
                tensor: t.name.clone(),
                offset: t.offset,
                alignment,
            });
        }
        let start = data_offset.checked_add(t.offset);
        let end = start
            .and_then(|s| s.checked_add(t.n_bytes as u64))
            .and_then(|e| align_up(e, alignment));
        match (start, end) {
            (Some(_), Some(end)) if end <= file_len => {}
            _ => {
                return Err(GgufError::OutOfBounds {
                    tensor: t.name.clone(),
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    file_len,
                });
            }
        }
    }
    let mut order: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    order.sort_by_key(|t| t.offset);
    for pair in order.windows(2) {
        // In bounds, so these sums cannot overflow.
        if pair[1].offset < pair[0].offset + pair[0].n_bytes as u64 {
            return Err(GgufError::Overlap {
                first: pair[0].name.clone(),
                second: pair[1].name.clone(),
            });
        }
    }
    Ok(())
}
