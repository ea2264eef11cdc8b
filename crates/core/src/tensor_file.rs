//! Named tensors in the [safetensors](https://huggingface.co/docs/safetensors)
//! format: adapters, expert stores and checkpoints are saved with it.
//!
//! Parsing is done by the `safetensors` crate (the format's reference
//! implementation), which rejects headers over 100 MB, offsets that overlap,
//! leave gaps or run past the buffer, and shapes whose byte size does not
//! match their offsets. On top of that, [`TensorFile::load`] refuses files
//! larger than a caller-chosen limit before reading them, so a hostile file
//! can neither panic the loader nor make it allocate without bound: every
//! allocation is bounded by the size of the file actually read.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};

use crate::convert::{checked_numel, tensor_to_vec};
use crate::error::{CoreError, Result};

/// Default cap on the size of a file [`TensorFile::load`] will read: 8 GiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 8 << 30;

/// The values of one stored tensor.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TensorValues {
    /// 32-bit floats (weights, activations).
    F32(Vec<f32>),
    /// 64-bit integers (indices). `I32` files are widened to this on load.
    I64(Vec<i64>),
}

impl TensorValues {
    fn len(&self) -> usize {
        match self {
            TensorValues::F32(v) => v.len(),
            TensorValues::I64(v) => v.len(),
        }
    }

    fn dtype_name(&self) -> &'static str {
        match self {
            TensorValues::F32(_) => "F32",
            TensorValues::I64(_) => "I64",
        }
    }
}

/// One named tensor held on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: TensorValues,
}

/// An in-memory collection of named tensors plus string metadata, read from
/// or written to a safetensors file.
///
/// # Examples
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::tensor::{Device, Tensor};
/// use lastmile_core::tensor_file::TensorFile;
/// let d = Device::flex();
/// let mut file = TensorFile::new();
/// file.insert_float("lora_A.weight", Tensor::<2>::from_floats([[1.0, 2.0]], &d)).unwrap();
/// file.insert_indices("idx", vec![2], vec![0, 5]).unwrap();
/// file.set_metadata("format", "pt");
/// let bytes = file.to_bytes().unwrap();
/// let back = TensorFile::from_bytes(&bytes).unwrap();
/// let a: Tensor<2> = back.float("lora_A.weight", &d).unwrap();
/// assert_eq!(a.dims(), [1, 2]);
/// assert_eq!(back.metadata("format"), Some("pt"));
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TensorFile {
    tensors: BTreeMap<String, StoredTensor>,
    metadata: BTreeMap<String, String>,
}

impl TensorFile {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names of the stored tensors, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    /// Number of stored tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether no tensor is stored.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Sets a metadata entry (stored in the file's `__metadata__`).
    pub fn set_metadata(&mut self, key: &str, value: &str) {
        self.metadata.insert(key.to_owned(), value.to_owned());
    }

    /// A metadata entry, if present.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// A stored tensor, if present.
    pub fn get(&self, name: &str) -> Option<&StoredTensor> {
        self.tensors.get(name)
    }

    /// Stores host values under `name` after checking that they fit `shape`.
    ///
    /// # Errors
    /// [`CoreError::ShapeMismatch`] when the value count is not the product of `shape`.
    pub fn insert(&mut self, name: &str, shape: Vec<usize>, values: TensorValues) -> Result<()> {
        let numel = checked_numel(&shape)?;
        if numel != values.len() {
            return Err(CoreError::ShapeMismatch {
                what: format!("tensor `{name}`"),
                expected: format!("{numel} values for shape {shape:?}"),
                found: vec![values.len()],
            });
        }
        self.tensors
            .insert(name.to_owned(), StoredTensor { shape, values });
        Ok(())
    }

    /// Reads a float tensor back from its device and stores it under `name`.
    ///
    /// # Errors
    /// [`CoreError::TensorData`] if the tensor cannot be read as `f32`.
    pub fn insert_float<const D: usize>(&mut self, name: &str, tensor: Tensor<D>) -> Result<()> {
        let shape = tensor.dims().to_vec();
        let values = tensor_to_vec(tensor)?;
        self.insert(name, shape, TensorValues::F32(values))
    }

    /// Stores integer indices under `name`.
    ///
    /// # Errors
    /// [`CoreError::ShapeMismatch`] when the value count is not the product of `shape`.
    pub fn insert_indices(
        &mut self,
        name: &str,
        shape: Vec<usize>,
        values: Vec<i64>,
    ) -> Result<()> {
        self.insert(name, shape, TensorValues::I64(values))
    }

    fn lookup(&self, name: &str) -> Result<&StoredTensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| CoreError::MissingTensor {
                name: name.to_owned(),
                available: self.tensors.keys().cloned().collect(),
            })
    }

    fn check_rank<const D: usize>(name: &str, stored: &StoredTensor) -> Result<[usize; D]> {
        <[usize; D]>::try_from(stored.shape.as_slice()).map_err(|_| CoreError::ShapeMismatch {
            what: format!("tensor `{name}`"),
            expected: format!("rank {D}"),
            found: stored.shape.clone(),
        })
    }

    /// The float tensor `name` on `device`, as a rank-`D` tensor.
    ///
    /// # Errors
    /// [`CoreError::MissingTensor`], a [`CoreError::ShapeMismatch`] on a rank
    /// mismatch, or [`CoreError::InvalidFile`] if the tensor holds integers.
    pub fn float<const D: usize>(&self, name: &str, device: &Device) -> Result<Tensor<D>> {
        let stored = self.lookup(name)?;
        let shape = Self::check_rank::<D>(name, stored)?;
        match &stored.values {
            TensorValues::F32(v) => {
                Ok(Tensor::from_data(TensorData::new(v.clone(), shape), device))
            }
            other => Err(CoreError::InvalidFile(format!(
                "tensor `{name}` has dtype {}, expected F32",
                other.dtype_name()
            ))),
        }
    }

    /// The integer tensor `name` on `device`, as a rank-`D` tensor.
    ///
    /// # Errors
    /// As [`TensorFile::float`], with integers expected.
    pub fn int<const D: usize>(&self, name: &str, device: &Device) -> Result<Tensor<D, Int>> {
        let stored = self.lookup(name)?;
        let shape = Self::check_rank::<D>(name, stored)?;
        match &stored.values {
            TensorValues::I64(v) => {
                Ok(Tensor::from_data(TensorData::new(v.clone(), shape), device))
            }
            other => Err(CoreError::InvalidFile(format!(
                "tensor `{name}` has dtype {}, expected I64",
                other.dtype_name()
            ))),
        }
    }

    /// Serialises to safetensors bytes.
    ///
    /// # Errors
    /// [`CoreError::InvalidFile`] if serialisation fails.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let views = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let (dtype, bytes) = match &t.values {
                    TensorValues::F32(v) => (
                        Dtype::F32,
                        v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
                    ),
                    TensorValues::I64(v) => {
                        (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect())
                    }
                };
                Ok((name.clone(), dtype, t.shape.clone(), bytes))
            })
            .collect::<Result<Vec<_>>>()?;
        let tensor_views = views
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (name.as_str(), v))
                    .map_err(|e| CoreError::InvalidFile(format!("cannot encode `{name}`: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = (!self.metadata.is_empty()).then(|| {
            self.metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>()
        });
        safetensors::serialize(tensor_views, metadata)
            .map_err(|e| CoreError::InvalidFile(format!("cannot serialise: {e}")))
    }

    /// Parses safetensors bytes. Supported dtypes: F32, I64 and I32 (widened to I64).
    ///
    /// # Errors
    /// [`CoreError::InvalidFile`] for anything malformed: bad or oversized
    /// header, offsets inconsistent with shapes, truncated data, unsupported dtype.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let parsed = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| CoreError::InvalidFile(format!("{e}")))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| CoreError::InvalidFile(format!("{e}")))?;
        let mut out = TensorFile::new();
        if let Some(meta) = header.metadata() {
            for (k, v) in meta {
                out.metadata.insert(k.clone(), v.clone());
            }
        }
        for (name, view) in parsed.tensors() {
            let shape = view.shape().to_vec();
            let numel = checked_numel(&shape)?;
            let data = view.data();
            let values = match view.dtype() {
                Dtype::F32 => TensorValues::F32(decode(data, numel, &name, f32::from_le_bytes)?),
                Dtype::I64 => TensorValues::I64(decode(data, numel, &name, i64::from_le_bytes)?),
                Dtype::I32 => TensorValues::I64(
                    decode(data, numel, &name, i32::from_le_bytes)?
                        .into_iter()
                        .map(i64::from)
                        .collect(),
                ),
                other => {
                    return Err(CoreError::InvalidFile(format!(
                        "tensor `{name}` has unsupported dtype {other:?}; expected F32, I64 or I32"
                    )));
                }
            };
            out.tensors.insert(name, StoredTensor { shape, values });
        }
        Ok(out)
    }

    /// Writes the collection to `path` as a safetensors file.
    ///
    /// # Errors
    /// [`CoreError::Io`] on write failure.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|source| CoreError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads a safetensors file of at most [`DEFAULT_MAX_FILE_BYTES`].
    ///
    /// # Errors
    /// [`CoreError::Io`] if the file cannot be read, [`CoreError::InvalidFile`]
    /// if it is too large or malformed.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with_limit(path, DEFAULT_MAX_FILE_BYTES)
    }

    /// Reads a safetensors file, refusing files larger than `max_bytes`
    /// before reading them.
    ///
    /// # Errors
    /// As [`TensorFile::load`].
    pub fn load_with_limit(path: impl AsRef<Path>, max_bytes: u64) -> Result<Self> {
        let path = path.as_ref();
        let io_err = |source| CoreError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        if len > max_bytes {
            return Err(CoreError::InvalidFile(format!(
                "{} is {len} bytes, over the {max_bytes}-byte limit",
                path.display()
            )));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        // `take` guards against a file that grows while being read.
        file.take(max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        if bytes.len() as u64 > max_bytes {
            return Err(CoreError::InvalidFile(format!(
                "{} grew past the {max_bytes}-byte limit while being read",
                path.display()
            )));
        }
        Self::from_bytes(&bytes)
    }
}

fn decode<T, const N: usize>(
    data: &[u8],
    numel: usize,
    name: &str,
    from_le: fn([u8; N]) -> T,
) -> Result<Vec<T>> {
    if data.len() != numel.saturating_mul(N) {
        return Err(CoreError::InvalidFile(format!(
            "tensor `{name}` has {} data bytes, expected {numel} × {N}",
            data.len()
        )));
    }
    Ok(data
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            from_le(a)
        })
        .collect())
}
