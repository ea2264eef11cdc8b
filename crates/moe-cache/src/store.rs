//! The expert store: every expert of every layer packed in one file with an
//! index, read back one expert at a time with a real, measured file read.
//!
//! # Format (version 1, little-endian)
//!
//! ```text
//! preamble   magic "LMMOEXPS" (8 bytes) | version u32 = 1 | body_len u32
//! body       num_layers u32 | alignment u32 (a power of two, 4096 by default)
//!            per layer:  num_experts u32 | num_tensors u32
//!                        per tensor: name_len u16 | name (UTF-8) | rank u8 | dims u64 × rank
//!            per layer, per expert:  offset u64 | len u64 | crc32 u32
//!            crc32 u32 of the preamble and the body before it
//! data       one blob per expert at its offset (aligned), the tensors' f32
//!            values back to back in the layer's tensor order
//! ```
//!
//! All experts of a layer share that layer's tensor shapes (checked when
//! written), so a blob is exactly `4 · Σ numel` bytes. Offsets are aligned so
//! an expert occupies whole pages (ready for `O_DIRECT`, and page-cache drops
//! cover nothing else).
//!
//! Why not safetensors: [`lastmile_core::tensor_file::TensorFile`] reads a
//! whole file, while a miss here must read exactly one expert's bytes; this
//! format puts each expert in one contiguous, page-aligned region with its
//! own checksum, and its index is small and fully validated at open.
//!
//! # Hostile files
//! [`ExpertStore::open`] reads at most `max_header_bytes` of header (64 MiB
//! by default), checks its CRC, then every count, name, rank and dimension
//! against the bytes that remain, every offset against the alignment, the
//! file length and the other experts (no overlap), and every length against
//! the layer's shapes. Allocation is bounded by the header and one expert.
//! Each load checks the expert's CRC. Malformed input gives a typed error,
//! never a panic.
//!
//! # Honest reads
//! With [`PageCache::Drop`] (the default on Linux and Android) every load
//! first advises the kernel to drop the expert's pages from the page cache
//! (`posix_fadvise(POSIX_FADV_DONTNEED)`), so the read that follows comes
//! from the device instead of DRAM. The call goes through `rustix`, whose
//! safe `fadvise` wrapper keeps this crate free of `unsafe` (the workspace
//! forbids it) while calling the same system call `libc` would; `O_DIRECT`
//! would need aligned buffers and therefore `unsafe` allocation. Pages are
//! only dropped when clean: the writer `fsync`s before it returns.
//!
//! ```
//! # #[cfg(any(target_os = "linux", target_os = "android"))] {
//! use lastmile_moe_cache::store::{ExpertStore, ExpertStoreWriter, LayerSpec, StoreOptions};
//! let path = std::env::temp_dir().join(format!("doc-store-{}.lmexp", std::process::id()));
//! let spec = LayerSpec::swiglu(4, 2, 3)?; // 4 experts, d_model 2, d_ff 3
//! let mut w = ExpertStoreWriter::create(&path, vec![spec])?;
//! for e in 0..4 {
//!     let v = e as f32;
//!     w.write_expert(0, e, &[(&[2, 3], &[v; 6]), (&[2, 3], &[v; 6]), (&[3, 2], &[v; 6])])?;
//! }
//! w.finish()?;
//! let store = ExpertStore::open(&path, StoreOptions::default())?;
//! let expert = store.load(0, 3)?;
//! assert_eq!(expert.tensor(2), Some(&[3.0; 6][..]));
//! assert_eq!(store.stats().bytes, 72);
//! # std::fs::remove_file(&path).ok();
//! # }
//! # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
//! ```

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::error::{MoeCacheError, Result};

/// Magic bytes at the start of an expert store.
pub const STORE_MAGIC: [u8; 8] = *b"LMMOEXPS";
/// The format version this build writes and reads.
pub const STORE_VERSION: u32 = 1;
/// Default alignment of expert blobs: one 4 KiB page.
pub const DEFAULT_ALIGNMENT: u32 = 4096;
/// Default cap on the header size [`ExpertStore::open`] reads: 64 MiB.
pub const DEFAULT_MAX_HEADER_BYTES: u32 = 64 << 20;

const WHAT: &str = "expert store";
const PREAMBLE: usize = 16;
const MAX_RANK: usize = 8;

/// Name and shape of one tensor of an expert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// The tensor's name (e.g. `"w_gate"`).
    pub name: String,
    /// Its shape, outermost first.
    pub shape: Vec<usize>,
}

/// The experts of one layer: how many, and the tensors each one holds.
///
/// ```
/// use lastmile_moe_cache::store::LayerSpec;
/// let spec = LayerSpec::swiglu(8, 16, 32)?;
/// assert_eq!(spec.expert_bytes(), 4 * 3 * 16 * 32);
/// assert!(LayerSpec::swiglu(0, 16, 32).is_err());
/// # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSpec {
    experts: usize,
    tensors: Vec<TensorSpec>,
    expert_bytes: u64,
}

impl LayerSpec {
    /// `experts` experts, each holding `tensors` (f32) in this order.
    ///
    /// # Errors
    /// [`lastmile_core::CoreError::OutOfRange`] for no experts or no tensors,
    /// an empty or over-long (> 65535 bytes) name, a rank outside 1..=8, a
    /// zero dimension, or a byte size that overflows `u64`.
    pub fn new(experts: usize, tensors: Vec<TensorSpec>) -> Result<Self> {
        if experts == 0 || experts > u32::MAX as usize {
            return Err(MoeCacheError::param(
                "experts",
                experts as f64,
                "between 1 and 2^32 - 1 experts",
            ));
        }
        if tensors.is_empty() {
            return Err(MoeCacheError::param(
                "tensors",
                0.0,
                "at least one tensor per expert",
            ));
        }
        let mut numel_total: u64 = 0;
        for t in &tensors {
            if t.name.is_empty() || t.name.len() > u16::MAX as usize {
                return Err(MoeCacheError::param(
                    "tensor name length",
                    t.name.len() as f64,
                    "a name of 1 to 65535 bytes",
                ));
            }
            if t.shape.is_empty() || t.shape.len() > MAX_RANK {
                return Err(MoeCacheError::param(
                    "tensor rank",
                    t.shape.len() as f64,
                    "a rank between 1 and 8",
                ));
            }
            let mut numel: u64 = 1;
            for &d in &t.shape {
                if d == 0 {
                    return Err(MoeCacheError::param(
                        "tensor dimension",
                        0.0,
                        "dimensions >= 1",
                    ));
                }
                numel = numel.checked_mul(d as u64).ok_or_else(overflow)?;
            }
            numel_total = numel_total.checked_add(numel).ok_or_else(overflow)?;
        }
        let expert_bytes = numel_total.checked_mul(4).ok_or_else(overflow)?;
        Ok(Self {
            experts,
            tensors,
            expert_bytes,
        })
    }

    /// A SwiGLU expert layer: `w_gate`, `w_up` of shape `[d_model, d_ff]`
    /// and `w_down` of shape `[d_ff, d_model]`.
    ///
    /// # Errors
    /// As [`LayerSpec::new`].
    pub fn swiglu(experts: usize, d_model: usize, d_ff: usize) -> Result<Self> {
        Self::new(
            experts,
            vec![
                TensorSpec {
                    name: "w_gate".to_owned(),
                    shape: vec![d_model, d_ff],
                },
                TensorSpec {
                    name: "w_up".to_owned(),
                    shape: vec![d_model, d_ff],
                },
                TensorSpec {
                    name: "w_down".to_owned(),
                    shape: vec![d_ff, d_model],
                },
            ],
        )
    }

    /// Number of experts.
    pub fn experts(&self) -> usize {
        self.experts
    }

    /// The tensors of every expert.
    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// Bytes of one expert's weights (`4 · Σ numel`).
    pub fn expert_bytes(&self) -> u64 {
        self.expert_bytes
    }
}

fn overflow() -> MoeCacheError {
    MoeCacheError::param("expert size", f64::INFINITY, "a byte size that fits in u64")
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    x.checked_add(a - 1).map(|v| v & !(a - 1))
}

fn body_len(layers: &[LayerSpec]) -> Result<u64> {
    let mut len: u64 = 4 + 4 + 4; // num_layers, alignment, crc
    for l in layers {
        len += 8;
        for t in &l.tensors {
            len += 2 + t.name.len() as u64 + 1 + 8 * t.shape.len() as u64;
        }
        len = len
            .checked_add((l.experts as u64).checked_mul(20).ok_or_else(overflow)?)
            .ok_or_else(overflow)?;
    }
    Ok(len)
}

/// Writes an expert store. Experts may be written in any order; [`finish`]
/// checks that every one was, writes the index and `fsync`s. A store whose
/// writer was dropped unfinished has no valid header and fails to open.
///
/// [`finish`]: ExpertStoreWriter::finish
///
/// ```
/// # #[cfg(any(target_os = "linux", target_os = "android"))] {
/// use lastmile_moe_cache::MoeCacheError;
/// use lastmile_moe_cache::store::{ExpertStoreWriter, LayerSpec};
/// let path = std::env::temp_dir().join(format!("doc-writer-{}.lmexp", std::process::id()));
/// let mut w = ExpertStoreWriter::create(&path, vec![LayerSpec::swiglu(2, 2, 2)?])?;
/// let bad = w.write_expert(0, 0, &[(&[2, 3], &[0.0; 6]), (&[2, 2], &[0.0; 4]), (&[2, 2], &[0.0; 4])]);
/// assert!(matches!(bad, Err(MoeCacheError::ExpertShapeMismatch { .. })));
/// assert!(matches!(w.finish(), Err(MoeCacheError::MissingExpert { layer: 0, expert: 0 })));
/// # std::fs::remove_file(&path).ok();
/// # }
/// # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
/// ```
#[derive(Debug)]
pub struct ExpertStoreWriter {
    file: File,
    path: PathBuf,
    layers: Vec<LayerSpec>,
    /// Offset of each layer's first expert and the stride between experts.
    layer_base: Vec<(u64, u64)>,
    crcs: Vec<Vec<Option<u32>>>,
    alignment: u32,
    end: u64,
}

impl ExpertStoreWriter {
    /// Creates (or truncates) `path` for a store of `layers`, with blobs
    /// aligned to [`DEFAULT_ALIGNMENT`].
    ///
    /// # Errors
    /// [`lastmile_core::CoreError::Empty`] for no layers; a header over
    /// [`DEFAULT_MAX_HEADER_BYTES`] as an out-of-range error; I/O errors.
    pub fn create(path: impl AsRef<Path>, layers: Vec<LayerSpec>) -> Result<Self> {
        Self::create_with_alignment(path, layers, DEFAULT_ALIGNMENT)
    }

    /// As [`create`](Self::create) with blobs aligned to `alignment`, a power
    /// of two between 8 and 2^20 bytes.
    ///
    /// # Errors
    /// As [`create`](Self::create); out of range for a bad alignment.
    pub fn create_with_alignment(
        path: impl AsRef<Path>,
        layers: Vec<LayerSpec>,
        alignment: u32,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if layers.is_empty() {
            return Err(lastmile_core::CoreError::Empty {
                what: "layers".to_owned(),
                min: 1,
            }
            .into());
        }
        if !alignment.is_power_of_two() || !(8..=1 << 20).contains(&alignment) {
            return Err(MoeCacheError::param(
                "alignment",
                f64::from(alignment),
                "a power of two between 8 and 2^20",
            ));
        }
        let body = body_len(&layers)?;
        if body > u64::from(DEFAULT_MAX_HEADER_BYTES) {
            return Err(MoeCacheError::param(
                "header bytes",
                body as f64,
                "a header of at most 64 MiB",
            ));
        }
        let a = u64::from(alignment);
        let mut at = align_up(PREAMBLE as u64 + body, a).ok_or_else(overflow)?;
        let mut layer_base = Vec::with_capacity(layers.len());
        let mut end = at;
        for l in &layers {
            let stride = align_up(l.expert_bytes, a).ok_or_else(overflow)?;
            layer_base.push((at, stride));
            end = at
                .checked_add(
                    stride
                        .checked_mul(l.experts as u64 - 1)
                        .ok_or_else(overflow)?,
                )
                .and_then(|v| v.checked_add(l.expert_bytes))
                .ok_or_else(overflow)?;
            at = at
                .checked_add(stride.checked_mul(l.experts as u64).ok_or_else(overflow)?)
                .ok_or_else(overflow)?;
        }
        let file = File::create(&path).map_err(|e| MoeCacheError::io(&path, e))?;
        let crcs = layers.iter().map(|l| vec![None; l.experts]).collect();
        Ok(Self {
            file,
            path,
            layers,
            layer_base,
            crcs,
            alignment,
            end,
        })
    }

    /// Writes expert `expert` of `layer`: one `(shape, values)` pair per
    /// tensor of the layer, in the layer's order. Rewriting an expert
    /// replaces it.
    ///
    /// # Errors
    /// [`MoeCacheError::LayerOutOfRange`], [`MoeCacheError::ExpertOutOfRange`];
    /// [`lastmile_core::CoreError::LengthMismatch`] for a wrong tensor count or
    /// value count; [`MoeCacheError::ExpertShapeMismatch`] for a shape that is
    /// not the layer's; [`lastmile_core::CoreError::NonFinite`] for NaN or
    /// infinite weights; I/O errors.
    pub fn write_expert(
        &mut self,
        layer: usize,
        expert: usize,
        tensors: &[(&[usize], &[f32])],
    ) -> Result<()> {
        let spec = self
            .layers
            .get(layer)
            .ok_or(MoeCacheError::LayerOutOfRange {
                layer,
                layers: self.layers.len(),
            })?;
        if expert >= spec.experts {
            return Err(MoeCacheError::ExpertOutOfRange {
                layer,
                expert,
                experts: spec.experts,
            });
        }
        lastmile_core::validate::check_len("expert tensors", tensors.len(), spec.tensors.len())?;
        let mut bytes = Vec::with_capacity(spec.expert_bytes as usize);
        for ((shape, values), t) in tensors.iter().zip(&spec.tensors) {
            if *shape != t.shape.as_slice() {
                return Err(MoeCacheError::ExpertShapeMismatch {
                    layer,
                    expert,
                    tensor: t.name.clone(),
                    expected: t.shape.clone(),
                    found: shape.to_vec(),
                });
            }
            let numel: usize = t.shape.iter().product();
            lastmile_core::validate::check_len(&t.name, values.len(), numel)?;
            lastmile_core::validate::check_finite_slice(&t.name, values)?;
            for v in values.iter() {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        let (base, stride) = self.layer_base[layer];
        let offset = base + stride * expert as u64;
        self.file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.file.write_all(&bytes))
            .map_err(|e| MoeCacheError::io(&self.path, e))?;
        self.crcs[layer][expert] = Some(crc32fast::hash(&bytes));
        Ok(())
    }

    /// Writes the index, checks every expert was written, and `fsync`s (so a
    /// reader can drop the file's pages from the page cache).
    ///
    /// # Errors
    /// [`MoeCacheError::MissingExpert`] naming the first expert never
    /// written; I/O errors.
    pub fn finish(mut self) -> Result<PathBuf> {
        let mut body = Vec::new();
        body.extend_from_slice(&(self.layers.len() as u32).to_le_bytes());
        body.extend_from_slice(&self.alignment.to_le_bytes());
        for l in &self.layers {
            body.extend_from_slice(&(l.experts as u32).to_le_bytes());
            body.extend_from_slice(&(l.tensors.len() as u32).to_le_bytes());
            for t in &l.tensors {
                body.extend_from_slice(&(t.name.len() as u16).to_le_bytes());
                body.extend_from_slice(t.name.as_bytes());
                body.push(t.shape.len() as u8);
                for &d in &t.shape {
                    body.extend_from_slice(&(d as u64).to_le_bytes());
                }
            }
        }
        for (layer, l) in self.layers.iter().enumerate() {
            let (base, stride) = self.layer_base[layer];
            for expert in 0..l.experts {
                let crc = self.crcs[layer][expert]
                    .ok_or(MoeCacheError::MissingExpert { layer, expert })?;
                body.extend_from_slice(&(base + stride * expert as u64).to_le_bytes());
                body.extend_from_slice(&l.expert_bytes.to_le_bytes());
                body.extend_from_slice(&crc.to_le_bytes());
            }
        }
        let body_len = body.len() as u32 + 4;
        let mut header = Vec::with_capacity(PREAMBLE + body.len() + 4);
        header.extend_from_slice(&STORE_MAGIC);
        header.extend_from_slice(&STORE_VERSION.to_le_bytes());
        header.extend_from_slice(&body_len.to_le_bytes());
        header.extend_from_slice(&body);
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        let path = self.path.clone();
        let io = |e| MoeCacheError::io(&path, e);
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        self.file.write_all(&header).map_err(io)?;
        self.file.set_len(self.end).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        Ok(self.path)
    }
}

/// What a load does about the OS page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PageCache {
    /// Drop the expert's pages before each read (`posix_fadvise DONTNEED`),
    /// so reads are served by the device. Linux and Android only.
    Drop,
    /// Leave the page cache alone: repeated reads may be served from DRAM.
    Keep,
}

/// Options of [`ExpertStore::open`].
///
/// ```
/// use lastmile_moe_cache::store::{PageCache, StoreOptions};
/// let o = StoreOptions::default().with_page_cache(PageCache::Keep).with_verify_checksums(false);
/// assert_eq!(o.page_cache, PageCache::Keep);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Page-cache handling of loads (default: [`PageCache::Drop`] where
    /// supported, else [`PageCache::Keep`]).
    pub page_cache: PageCache,
    /// Check each expert's CRC-32 on load (default: true).
    pub verify_checksums: bool,
    /// Largest header accepted (default: [`DEFAULT_MAX_HEADER_BYTES`]).
    pub max_header_bytes: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            page_cache: if cfg!(any(target_os = "linux", target_os = "android")) {
                PageCache::Drop
            } else {
                PageCache::Keep
            },
            verify_checksums: true,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

impl StoreOptions {
    /// Sets the page-cache handling.
    pub fn with_page_cache(mut self, page_cache: PageCache) -> Self {
        self.page_cache = page_cache;
        self
    }

    /// Sets whether loads check checksums.
    pub fn with_verify_checksums(mut self, verify: bool) -> Self {
        self.verify_checksums = verify;
        self
    }

    /// Sets the header size limit.
    pub fn with_max_header_bytes(mut self, max: u32) -> Self {
        self.max_header_bytes = max;
        self
    }
}

/// Counters of an [`ExpertStore`]'s loads since it was opened (or reset).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StoreStats {
    /// Experts loaded.
    pub loads: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Wall time spent reading, seconds (page-cache drop and read; not decoding).
    pub read_seconds: f64,
    /// Page-cache drops issued.
    pub page_cache_drops: u64,
}

/// One expert's weights on the host, as loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertWeights {
    /// The layer.
    pub layer: usize,
    /// The expert.
    pub expert: usize,
    /// Values of each tensor, in the layer's order.
    pub tensors: Vec<Vec<f32>>,
    /// Shapes of each tensor.
    pub shapes: Vec<Vec<usize>>,
    /// Bytes read from the file.
    pub bytes: u64,
    /// Wall time of the read, seconds.
    pub read_seconds: f64,
}

impl ExpertWeights {
    /// The values of tensor `i` in the layer's order (`None` past the last).
    pub fn tensor(&self, i: usize) -> Option<&[f32]> {
        self.tensors.get(i).map(Vec::as_slice)
    }
}

#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    offset: u64,
    len: u64,
    crc: u32,
}

/// A read-only expert store opened from a file written by [`ExpertStoreWriter`].
///
/// Shareable across threads (`&self` loads; counters are atomic).
#[derive(Debug)]
pub struct ExpertStore {
    #[cfg(unix)]
    file: File,
    #[cfg(not(unix))]
    file: std::sync::Mutex<File>,
    path: PathBuf,
    layers: Vec<LayerSpec>,
    index: Vec<Vec<IndexEntry>>,
    options: StoreOptions,
    loads: AtomicU64,
    bytes: AtomicU64,
    nanos: AtomicU64,
    drops: AtomicU64,
}

/// A bounds-checked little-endian reader over the header body.
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => Err(corrupt(format!(
                "header ends inside {field} (needs {n} bytes at {}, body has {})",
                self.at,
                self.buf.len()
            ))),
        }
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.at
    }
    fn u8(&mut self, f: &str) -> Result<u8> {
        Ok(self.take(1, f)?[0])
    }
    fn u16(&mut self, f: &str) -> Result<u16> {
        let b = self.take(2, f)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, f: &str) -> Result<u32> {
        let b = self.take(4, f)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, f: &str) -> Result<u64> {
        let b = self.take(8, f)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

fn corrupt(reason: String) -> MoeCacheError {
    MoeCacheError::CorruptFile { what: WHAT, reason }
}

impl ExpertStore {
    /// Opens and validates a store (header only; experts are read on load).
    ///
    /// # Errors
    /// I/O errors; [`MoeCacheError::BadMagic`], [`MoeCacheError::UnsupportedVersion`],
    /// [`MoeCacheError::Truncated`] (file shorter than its header or index
    /// implies), [`MoeCacheError::FileTooLarge`] (header over the limit),
    /// [`MoeCacheError::ChecksumMismatch`] (header), [`MoeCacheError::CorruptFile`]
    /// (lying counts, shapes, offsets or lengths);
    /// [`MoeCacheError::PageCacheUnsupported`] for [`PageCache::Drop`] off Linux/Android.
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if options.page_cache == PageCache::Drop
            && !cfg!(any(target_os = "linux", target_os = "android"))
        {
            return Err(MoeCacheError::PageCacheUnsupported);
        }
        let io = |e| MoeCacheError::io(&path, e);
        let mut file = File::open(&path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        if file_len < PREAMBLE as u64 {
            return Err(MoeCacheError::Truncated {
                what: WHAT,
                expected: PREAMBLE as u64,
                found: file_len,
            });
        }
        let mut pre = [0u8; PREAMBLE];
        file.read_exact(&mut pre).map_err(io)?;
        if pre[..8] != STORE_MAGIC {
            return Err(MoeCacheError::BadMagic {
                what: WHAT,
                found: pre[..8].to_vec(),
                expected: STORE_MAGIC.to_vec(),
            });
        }
        let version = u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]);
        if version != STORE_VERSION {
            return Err(MoeCacheError::UnsupportedVersion {
                what: WHAT,
                found: version,
                supported: STORE_VERSION,
            });
        }
        let body_len = u32::from_le_bytes([pre[12], pre[13], pre[14], pre[15]]);
        if body_len > options.max_header_bytes {
            return Err(MoeCacheError::FileTooLarge {
                what: "expert store header",
                size: u64::from(body_len),
                limit: u64::from(options.max_header_bytes),
            });
        }
        if PREAMBLE as u64 + u64::from(body_len) > file_len {
            return Err(MoeCacheError::Truncated {
                what: WHAT,
                expected: PREAMBLE as u64 + u64::from(body_len),
                found: file_len,
            });
        }
        if body_len < 12 {
            return Err(corrupt(format!(
                "header body of {body_len} bytes; expected at least 12"
            )));
        }
        let mut body = vec![0u8; body_len as usize];
        file.read_exact(&mut body).map_err(io)?;
        let (content, crc_bytes) = body.split_at(body.len() - 4);
        let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&pre);
        hasher.update(content);
        let computed = hasher.finalize();
        if stored != computed {
            return Err(MoeCacheError::ChecksumMismatch {
                what: "expert store header".to_owned(),
                stored,
                computed,
            });
        }
        let (layers, index) = Self::parse_body(content, file_len)?;
        Ok(Self {
            #[cfg(unix)]
            file,
            #[cfg(not(unix))]
            file: std::sync::Mutex::new(file),
            path,
            layers,
            index,
            options,
            loads: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
            drops: AtomicU64::new(0),
        })
    }

    fn parse_body(content: &[u8], file_len: u64) -> Result<(Vec<LayerSpec>, Vec<Vec<IndexEntry>>)> {
        let mut c = Cursor {
            buf: content,
            at: 0,
        };
        let num_layers = c.u32("num_layers")? as usize;
        let alignment = c.u32("alignment")?;
        if !alignment.is_power_of_two() || !(8..=1 << 20).contains(&alignment) {
            return Err(corrupt(format!(
                "alignment {alignment}; expected a power of two in [8, 2^20]"
            )));
        }
        // Each layer needs at least 8 header bytes: bounds the allocation.
        if num_layers == 0 || num_layers > c.remaining() / 8 {
            return Err(corrupt(format!(
                "{num_layers} layers do not fit in {} header bytes",
                c.remaining()
            )));
        }
        let mut layers = Vec::with_capacity(num_layers);
        for l in 0..num_layers {
            let experts = c.u32("num_experts")? as usize;
            let num_tensors = c.u32("num_tensors")? as usize;
            // A tensor spec takes at least 12 bytes, an index entry 20.
            if num_tensors == 0 || num_tensors > c.remaining() / 12 {
                return Err(corrupt(format!(
                    "layer {l}: {num_tensors} tensors do not fit in the header"
                )));
            }
            let mut tensors = Vec::with_capacity(num_tensors);
            for _ in 0..num_tensors {
                let name_len = c.u16("name_len")? as usize;
                let name = std::str::from_utf8(c.take(name_len, "tensor name")?)
                    .map_err(|_| corrupt(format!("layer {l}: a tensor name is not UTF-8")))?
                    .to_owned();
                let rank = c.u8("rank")? as usize;
                if rank == 0 || rank > MAX_RANK {
                    return Err(corrupt(format!(
                        "layer {l}: tensor `{name}` has rank {rank}; expected 1..=8"
                    )));
                }
                let mut shape = Vec::with_capacity(rank);
                for _ in 0..rank {
                    let d = c.u64("dim")?;
                    let d = usize::try_from(d)
                        .ok()
                        .filter(|&d| d > 0 && (d as u64) <= file_len)
                        .ok_or_else(|| {
                            corrupt(format!("layer {l}: tensor `{name}` has dimension {d}"))
                        })?;
                    shape.push(d);
                }
                tensors.push(TensorSpec { name, shape });
            }
            if experts == 0 {
                return Err(corrupt(format!("layer {l} has 0 experts")));
            }
            let spec =
                LayerSpec::new(experts, tensors).map_err(|e| corrupt(format!("layer {l}: {e}")))?;
            if spec.expert_bytes > file_len {
                return Err(corrupt(format!(
                    "layer {l}: experts of {} bytes cannot fit in a file of {file_len}",
                    spec.expert_bytes
                )));
            }
            layers.push(spec);
        }
        let total: usize = layers
            .iter()
            .map(|l| l.experts)
            .fold(0usize, usize::saturating_add);
        if total > c.remaining() / 20 {
            return Err(corrupt(format!(
                "{total} index entries do not fit in the {} header bytes left",
                c.remaining()
            )));
        }
        let data_start = PREAMBLE as u64 + content.len() as u64 + 4;
        let mut index = Vec::with_capacity(num_layers);
        let mut spans = Vec::with_capacity(total);
        let mut file_end = data_start;
        for (l, spec) in layers.iter().enumerate() {
            let mut entries = Vec::with_capacity(spec.experts);
            for e in 0..spec.experts {
                let offset = c.u64("offset")?;
                let len = c.u64("len")?;
                let crc = c.u32("crc")?;
                if len != spec.expert_bytes {
                    return Err(corrupt(format!(
                        "layer {l}, expert {e}: {len} bytes indexed; the layer's shapes need {}",
                        spec.expert_bytes
                    )));
                }
                if offset < data_start || !offset.is_multiple_of(u64::from(alignment)) {
                    return Err(corrupt(format!(
                        "layer {l}, expert {e}: offset {offset} is inside the header or not {alignment}-aligned"
                    )));
                }
                let end = offset.checked_add(len).ok_or_else(|| {
                    corrupt(format!(
                        "layer {l}, expert {e}: offset {offset} + {len} overflows"
                    ))
                })?;
                file_end = file_end.max(end);
                spans.push((offset, end));
                entries.push(IndexEntry { offset, len, crc });
            }
            index.push(entries);
        }
        if c.remaining() != 0 {
            return Err(corrupt(format!(
                "{} unexpected bytes after the index",
                c.remaining()
            )));
        }
        if file_end > file_len {
            return Err(MoeCacheError::Truncated {
                what: WHAT,
                expected: file_end,
                found: file_len,
            });
        }
        spans.sort_unstable();
        if let Some(w) = spans.windows(2).find(|w| w[1].0 < w[0].1) {
            return Err(corrupt(format!(
                "expert regions [{}, {}) and [{}, {}) overlap",
                w[0].0, w[0].1, w[1].0, w[1].1
            )));
        }
        Ok((layers, index))
    }

    /// The store's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options it was opened with.
    pub fn options(&self) -> StoreOptions {
        self.options
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The spec of `layer`.
    ///
    /// # Errors
    /// [`MoeCacheError::LayerOutOfRange`].
    pub fn layer(&self, layer: usize) -> Result<&LayerSpec> {
        self.layers
            .get(layer)
            .ok_or(MoeCacheError::LayerOutOfRange {
                layer,
                layers: self.layers.len(),
            })
    }

    /// Experts of each layer.
    pub fn experts_per_layer(&self) -> Vec<usize> {
        self.layers.iter().map(|l| l.experts).collect()
    }

    /// Bytes of one expert of each layer.
    pub fn expert_bytes_per_layer(&self) -> Vec<u64> {
        self.layers.iter().map(|l| l.expert_bytes).collect()
    }

    /// Load counters since open or the last [`reset_stats`](Self::reset_stats).
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            loads: self.loads.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            read_seconds: self.nanos.load(Ordering::Relaxed) as f64 * 1e-9,
            page_cache_drops: self.drops.load(Ordering::Relaxed),
        }
    }

    /// Zeroes the load counters.
    pub fn reset_stats(&self) {
        for c in [&self.loads, &self.bytes, &self.nanos, &self.drops] {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Reads expert `expert` of `layer` from the file (one read of its
    /// region, after dropping that region from the page cache under
    /// [`PageCache::Drop`]) and decodes it.
    ///
    /// # Errors
    /// [`MoeCacheError::LayerOutOfRange`], [`MoeCacheError::ExpertOutOfRange`];
    /// I/O errors (including a file truncated after open);
    /// [`MoeCacheError::ChecksumMismatch`] when the bytes read do not match
    /// the index's CRC (with `verify_checksums`).
    pub fn load(&self, layer: usize, expert: usize) -> Result<ExpertWeights> {
        let spec = self.layer(layer)?;
        let entry = *self.index[layer]
            .get(expert)
            .ok_or(MoeCacheError::ExpertOutOfRange {
                layer,
                expert,
                experts: spec.experts,
            })?;
        let len = usize::try_from(entry.len).map_err(|_| overflow())?;
        let mut buf = vec![0u8; len];
        let start = Instant::now();
        if self.options.page_cache == PageCache::Drop {
            self.drop_region(entry.offset, entry.len)?;
            self.drops.fetch_add(1, Ordering::Relaxed);
        }
        self.read_at(&mut buf, entry.offset)?;
        let elapsed = start.elapsed();
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(entry.len, Ordering::Relaxed);
        self.nanos.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if self.options.verify_checksums {
            let computed = crc32fast::hash(&buf);
            if computed != entry.crc {
                return Err(MoeCacheError::ChecksumMismatch {
                    what: format!("layer {layer}, expert {expert}"),
                    stored: entry.crc,
                    computed,
                });
            }
        }
        let mut tensors = Vec::with_capacity(spec.tensors.len());
        let mut at = 0usize;
        for t in &spec.tensors {
            let n = t.shape.iter().product::<usize>() * 4;
            let values = buf[at..at + n]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensors.push(values);
            at += n;
        }
        Ok(ExpertWeights {
            layer,
            expert,
            tensors,
            shapes: spec.tensors.iter().map(|t| t.shape.clone()).collect(),
            bytes: entry.len,
            read_seconds: elapsed.as_secs_f64(),
        })
    }

    /// Advises the kernel to drop the whole file from the page cache.
    ///
    /// # Errors
    /// [`MoeCacheError::PageCacheUnsupported`] off Linux/Android; I/O errors.
    pub fn drop_page_cache(&self) -> Result<()> {
        self.drop_region(0, 0)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn drop_region(&self, offset: u64, len: u64) -> Result<()> {
        rustix::fs::fadvise(
            &self.file,
            offset,
            std::num::NonZeroU64::new(len),
            rustix::fs::Advice::DontNeed,
        )
        .map_err(|e| MoeCacheError::io(&self.path, e.into()))
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn drop_region(&self, _offset: u64, _len: u64) -> Result<()> {
        Err(MoeCacheError::PageCacheUnsupported)
    }

    #[cfg(unix)]
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| MoeCacheError::io(&self.path, e))
    }

    #[cfg(not(unix))]
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let io = |e| MoeCacheError::io(&self.path, e);
        let mut file = self
            .file
            .lock()
            .map_err(|_| io(std::io::Error::other("store file lock poisoned")))?;
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        file.read_exact(buf).map_err(io)
    }
}
