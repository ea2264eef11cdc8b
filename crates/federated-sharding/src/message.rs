//! Serialisable messages between server and clients, with a versioned,
//! checksummed binary format.
//!
//! - [`ShardMessage`] (down): round, client id, strategy, sampler, clients
//!   per round, and the client's [`ModelShard`] (per sharded layer: path,
//!   layout, shape, selected indices, multipliers, factors `A`, `B`; dense
//!   parameters by path and shape).
//! - [`UpdateMessage`] (up): round, client id, number of local samples, per
//!   sharded layer either the trained factors or a dense delta, and the
//!   trained dense parameters.
//!
//! Any transport that moves bytes can carry them (an FL engine's message
//! payload, gRPC `bytes`, a file). The format is specified in the crate
//! README ("Wire format"); in short, every message is
//!
//! ```text
//! magic "LMFS" | version u16 | kind u8 | flags u8 | payload length u64 | payload | FNV-1a-64 u64
//! ```
//!
//! with every integer and float little-endian, the checksum taken over all
//! bytes before it. [`ShardMessage::encoded_len`] and
//! [`UpdateMessage::encoded_len`] give the exact size before encoding.
//!
//! Decoding never trusts a length: each declared count is checked against
//! the bytes that remain (and a format cap) before anything is allocated,
//! and every failure — truncation, wrong magic, unknown version, checksum
//! mismatch, out-of-range field, trailing bytes — is a typed
//! [`ShardingError`], never a panic. The checksum detects accidental
//! corruption; it is not authentication (use TLS or a MAC against an
//! adversary).
//!
//! ```
//! use lastmile_federated_sharding::{DenseParam, LayerShard, ModelShard, NamedShard, Sampler, Strategy};
//! use lastmile_federated_sharding::message::ShardMessage;
//! use lastmile_core::module::Layout;
//!
//! let shard = LayerShard::new(2, 2, vec![0], vec![1.0], vec![1.0, 0.0], vec![2.0, 0.0])?;
//! let msg = ShardMessage {
//!     round: 3, client_id: 7, strategy: Strategy::Unbiased, sampler: Sampler::ConditionalPoisson,
//!     clients_per_round: 10,
//!     shard: ModelShard::new(
//!         vec![NamedShard { path: "fc.weight".into(), layout: Layout::InOut, shard }],
//!         vec![DenseParam::new("fc.bias", vec![2], vec![0.5, -0.5])?],
//!     )?,
//! };
//! let bytes = msg.encode()?;
//! assert_eq!(bytes.len(), msg.encoded_len());
//! assert_eq!(ShardMessage::decode(&bytes)?, msg);
//! assert!(ShardMessage::decode(&bytes[..bytes.len() - 1]).is_err());
//! # Ok::<(), lastmile_federated_sharding::ShardingError>(())
//! ```

use lastmile_core::module::Layout;

use crate::error::{Result, ShardingError};
use crate::sampler::Sampler;
use crate::shard::{DenseParam, LayerShard, ModelShard, NamedShard};
use crate::strategy::Strategy;

/// The four bytes every message starts with.
pub const MAGIC: [u8; 4] = *b"LMFS";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Kind byte of a [`ShardMessage`].
pub const KIND_SHARD: u8 = 1;
/// Kind byte of an [`UpdateMessage`].
pub const KIND_UPDATE: u8 = 2;
/// Header bytes: magic, version, kind, flags, payload length.
pub const HEADER_LEN: usize = 16;
/// Trailer bytes: the checksum.
pub const TRAILER_LEN: usize = 8;
/// Longest parameter path, in UTF-8 bytes.
pub const MAX_NAME_LEN: usize = 1024;
/// Most dimensions of a dense parameter.
pub const MAX_NDIM: usize = 8;
/// Most layers or dense parameters in one message.
pub const MAX_ENTRIES: usize = 1 << 20;
/// Most elements of one tensor (factor, delta or dense parameter).
pub const MAX_ELEMENTS: u64 = u32::MAX as u64;

const FORM_FACTORS: u8 = 1;
const FORM_DENSE_DELTA: u8 = 2;

/// FNV-1a, 64-bit (Fowler–Noll–Vo): the format's checksum. Any single
/// changed byte changes it (each step is a bijection of the state).
///
/// ```
/// use lastmile_federated_sharding::message::fnv1a64;
/// assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
/// assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
/// ```
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// A server → client message: one client's sub-model for one round.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardMessage {
    /// Round number.
    pub round: u64,
    /// The receiving client.
    pub client_id: u64,
    /// The strategy that chose the triplets.
    pub strategy: Strategy,
    /// The sampler that drew them.
    pub sampler: Sampler,
    /// Clients per round `K` the strategy assumed (≥ 1).
    pub clients_per_round: u32,
    /// The sub-model.
    pub shard: ModelShard,
}

/// One sharded layer of an [`UpdateMessage`].
#[derive(Clone, Debug, PartialEq)]
pub enum LayerUpdate {
    /// The trained factors (indices and multipliers as received).
    Factors {
        /// Dotted module path of the weight.
        path: String,
        /// The trained factors.
        shard: LayerShard,
    },
    /// A dense change `ΔW` to the round's global weight: the client's weight
    /// is `W + ΔW` (for clients that train the full matrix).
    DenseDelta {
        /// Dotted module path of the weight.
        path: String,
        /// Rows (`out`).
        rows: usize,
        /// Columns (`in`).
        cols: usize,
        /// `[out, in]` row-major.
        delta: Vec<f32>,
    },
}

impl LayerUpdate {
    /// The weight's path.
    pub fn path(&self) -> &str {
        match self {
            LayerUpdate::Factors { path, .. } | LayerUpdate::DenseDelta { path, .. } => path,
        }
    }

    /// `(out, in)`.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            LayerUpdate::Factors { shard, .. } => (shard.rows(), shard.cols()),
            LayerUpdate::DenseDelta { rows, cols, .. } => (*rows, *cols),
        }
    }

    pub(crate) fn check(&self) -> Result<()> {
        if let LayerUpdate::DenseDelta {
            path,
            rows,
            cols,
            delta,
        } = self
        {
            let numel = rows.checked_mul(*cols).ok_or_else(|| {
                lastmile_core::CoreError::shape(
                    path,
                    "a shape whose element count fits in usize",
                    &[*rows, *cols],
                )
            })?;
            lastmile_core::validate::check_len(path, delta.len(), numel)?;
            lastmile_core::validate::check_finite_slice(path, delta)?;
        }
        Ok(())
    }
}

/// A client → server message: the result of local training.
#[derive(Clone, Debug, PartialEq)]
pub struct UpdateMessage {
    /// Round number.
    pub round: u64,
    /// The sending client.
    pub client_id: u64,
    /// Local training samples (the FedAvg weight).
    pub num_samples: u64,
    /// One entry per sharded layer.
    pub layers: Vec<LayerUpdate>,
    /// Trained dense parameters (values, not deltas).
    pub dense: Vec<DenseParam>,
}

impl UpdateMessage {
    /// An update carrying the factors and dense parameters of `trained` (the
    /// client's shard after local training) for the round and client of
    /// `received`.
    ///
    /// ```
    /// use lastmile_federated_sharding::{LayerShard, ModelShard, NamedShard, Sampler, Strategy};
    /// use lastmile_federated_sharding::message::{ShardMessage, UpdateMessage};
    /// use lastmile_core::module::Layout;
    /// let shard = LayerShard::new(1, 1, vec![0], vec![1.0], vec![1.0], vec![1.0])?;
    /// let down = ShardMessage {
    ///     round: 1, client_id: 2, strategy: Strategy::TopN, sampler: Sampler::Systematic,
    ///     clients_per_round: 1,
    ///     shard: ModelShard::new(vec![NamedShard { path: "w".into(), layout: Layout::OutIn, shard }], vec![])?,
    /// };
    /// let up = UpdateMessage::from_shard(&down, 32, &down.shard);
    /// assert_eq!((up.round, up.client_id, up.num_samples), (1, 2, 32));
    /// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
    /// ```
    pub fn from_shard(received: &ShardMessage, num_samples: u64, trained: &ModelShard) -> Self {
        Self {
            round: received.round,
            client_id: received.client_id,
            num_samples,
            layers: trained
                .layers()
                .iter()
                .map(|l| LayerUpdate::Factors {
                    path: l.path.clone(),
                    shard: l.shard.clone(),
                })
                .collect(),
            dense: trained.dense().to_vec(),
        }
    }
}

// ------------------------------------------------------------------ sizes

fn name_len(name: &str) -> usize {
    2 + name.len()
}

fn dense_len(d: &DenseParam) -> usize {
    name_len(&d.path) + 1 + 4 * d.shape.len() + 4 * d.values.len()
}

fn factors_len(s: &LayerShard) -> usize {
    4 + 8 * s.kept() + 4 * s.factor_len()
}

impl ShardMessage {
    fn payload_len(&self) -> usize {
        let layers: usize = self
            .shard
            .layers()
            .iter()
            .map(|l| name_len(&l.path) + 1 + 8 + factors_len(&l.shard))
            .sum();
        let dense: usize = self.shard.dense().iter().map(dense_len).sum();
        22 + 4 + layers + 4 + dense
    }

    /// The exact number of bytes [`ShardMessage::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload_len() + TRAILER_LEN
    }

    /// Encodes the message (format version [`FORMAT_VERSION`]).
    ///
    /// # Errors
    /// [`ShardingError::LengthLimit`] for a path over [`MAX_NAME_LEN`] bytes,
    /// more than [`MAX_ENTRIES`] layers or parameters, more than
    /// [`MAX_NDIM`] dimensions, or a dimension or tensor over the format's
    /// 32-bit limits; [`ShardingError::InvalidField`] for
    /// `clients_per_round = 0`.
    pub fn encode(&self) -> Result<Vec<u8>> {
        if self.clients_per_round == 0 {
            return Err(invalid("clients_per_round", "must be >= 1"));
        }
        let mut w = Writer::with_capacity(self.encoded_len());
        w.header(KIND_SHARD, self.payload_len());
        w.u64(self.round);
        w.u64(self.client_id);
        w.u8(self.strategy.tag());
        w.u8(self.sampler.tag());
        w.u32(self.clients_per_round);
        w.count("layer count", self.shard.layers().len())?;
        for l in self.shard.layers() {
            w.name(&l.path)?;
            w.u8(layout_tag(l.layout));
            w.dim("rows", l.shard.rows())?;
            w.dim("cols", l.shard.cols())?;
            w.factors(&l.shard)?;
        }
        w.count("dense parameter count", self.shard.dense().len())?;
        for d in self.shard.dense() {
            w.dense(d)?;
        }
        Ok(w.finish())
    }

    /// Decodes and validates a shard message.
    ///
    /// # Errors
    /// [`ShardingError::Truncated`], [`ShardingError::BadMagic`],
    /// [`ShardingError::UnsupportedVersion`], [`ShardingError::WrongKind`],
    /// [`ShardingError::ChecksumMismatch`], [`ShardingError::LengthLimit`],
    /// [`ShardingError::TrailingBytes`], [`ShardingError::InvalidField`];
    /// the checks of [`LayerShard::new`], [`DenseParam::new`] and
    /// [`ModelShard::new`] on the decoded parts.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(open_frame(bytes, KIND_SHARD)?);
        let round = r.u64("round")?;
        let client_id = r.u64("client id")?;
        let tag = r.u8("strategy")?;
        let strategy = Strategy::from_tag(tag)
            .ok_or_else(|| invalid("strategy", format!("unknown tag {tag}")))?;
        let tag = r.u8("sampler")?;
        let sampler = Sampler::from_tag(tag)
            .ok_or_else(|| invalid("sampler", format!("unknown tag {tag}")))?;
        let clients_per_round = r.u32("clients per round")?;
        if clients_per_round == 0 {
            return Err(invalid("clients_per_round", "must be >= 1, found 0"));
        }
        // smallest layer entry: name (2) + layout + rows + cols + kept
        let count = r.count("layer count", 2 + 1 + 12)?;
        let mut layers = Vec::with_capacity(count);
        for _ in 0..count {
            let path = r.name()?;
            let tag = r.u8("layout")?;
            let layout = layout_from_tag(tag)?;
            let rows = r.dim("rows")?;
            let cols = r.dim("cols")?;
            let shard = r.factors(rows, cols)?;
            layers.push(NamedShard {
                path,
                layout,
                shard,
            });
        }
        let dense = r.dense_list()?;
        r.finish()?;
        Ok(Self {
            round,
            client_id,
            strategy,
            sampler,
            clients_per_round,
            shard: ModelShard::new(layers, dense)?,
        })
    }
}

impl UpdateMessage {
    fn payload_len(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                name_len(l.path())
                    + 1
                    + 8
                    + match l {
                        LayerUpdate::Factors { shard, .. } => factors_len(shard),
                        LayerUpdate::DenseDelta { delta, .. } => 4 * delta.len(),
                    }
            })
            .sum();
        let dense: usize = self.dense.iter().map(dense_len).sum();
        24 + 4 + layers + 4 + dense
    }

    /// The exact number of bytes [`UpdateMessage::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload_len() + TRAILER_LEN
    }

    /// Encodes the message (format version [`FORMAT_VERSION`]).
    ///
    /// # Errors
    /// As [`ShardMessage::encode`]; [`CoreError::LengthMismatch`](lastmile_core::CoreError::LengthMismatch)
    /// or [`CoreError::NonFinite`](lastmile_core::CoreError::NonFinite) for
    /// an invalid dense delta or dense parameter.
    pub fn encode(&self) -> Result<Vec<u8>> {
        for l in &self.layers {
            l.check()?;
        }
        let mut w = Writer::with_capacity(self.encoded_len());
        w.header(KIND_UPDATE, self.payload_len());
        w.u64(self.round);
        w.u64(self.client_id);
        w.u64(self.num_samples);
        w.count("layer count", self.layers.len())?;
        for l in &self.layers {
            w.name(l.path())?;
            match l {
                LayerUpdate::Factors { shard, .. } => {
                    w.u8(FORM_FACTORS);
                    w.dim("rows", shard.rows())?;
                    w.dim("cols", shard.cols())?;
                    w.factors(shard)?;
                }
                LayerUpdate::DenseDelta {
                    rows, cols, delta, ..
                } => {
                    w.u8(FORM_DENSE_DELTA);
                    w.dim("rows", *rows)?;
                    w.dim("cols", *cols)?;
                    w.f32s(delta);
                }
            }
        }
        w.count("dense parameter count", self.dense.len())?;
        for d in &self.dense {
            w.dense(d)?;
        }
        Ok(w.finish())
    }

    /// Decodes and validates an update message.
    ///
    /// # Errors
    /// As [`ShardMessage::decode`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(open_frame(bytes, KIND_UPDATE)?);
        let round = r.u64("round")?;
        let client_id = r.u64("client id")?;
        let num_samples = r.u64("number of samples")?;
        // smallest layer entry: name (2) + form + rows + cols
        let count = r.count("layer count", 2 + 1 + 8)?;
        let mut layers = Vec::with_capacity(count);
        for _ in 0..count {
            let path = r.name()?;
            let form = r.u8("update form")?;
            let rows = r.dim("rows")?;
            let cols = r.dim("cols")?;
            layers.push(match form {
                FORM_FACTORS => LayerUpdate::Factors {
                    path,
                    shard: r.factors(rows, cols)?,
                },
                FORM_DENSE_DELTA => {
                    let delta = r.f32s("dense delta", rows as u64 * cols as u64)?;
                    let update = LayerUpdate::DenseDelta {
                        path,
                        rows,
                        cols,
                        delta,
                    };
                    update.check()?;
                    update
                }
                other => {
                    return Err(invalid(
                        "update form",
                        format!("unknown tag {other}; expected 1 (factors) or 2 (dense delta)"),
                    ));
                }
            });
        }
        let dense = r.dense_list()?;
        r.finish()?;
        crate::shard::check_unique(
            layers
                .iter()
                .map(LayerUpdate::path)
                .chain(dense.iter().map(|d| d.path.as_str())),
        )?;
        Ok(Self {
            round,
            client_id,
            num_samples,
            layers,
            dense,
        })
    }
}

/// The kind byte of a message after checking its magic and version, so a
/// transport can dispatch to [`ShardMessage::decode`] or
/// [`UpdateMessage::decode`].
///
/// # Errors
/// [`ShardingError::Truncated`] for fewer than [`HEADER_LEN`] bytes,
/// [`ShardingError::BadMagic`], [`ShardingError::UnsupportedVersion`].
///
/// ```
/// use lastmile_federated_sharding::message::{peek_kind, KIND_UPDATE, UpdateMessage};
/// let up = UpdateMessage { round: 0, client_id: 0, num_samples: 1, layers: vec![], dense: vec![] };
/// assert_eq!(peek_kind(&up.encode()?)?, KIND_UPDATE);
/// # Ok::<(), lastmile_federated_sharding::ShardingError>(())
/// ```
pub fn peek_kind(bytes: &[u8]) -> Result<u8> {
    check_header(bytes).map(|(kind, _)| kind)
}

// ------------------------------------------------------------- internals

fn invalid(what: &str, reason: impl Into<String>) -> ShardingError {
    ShardingError::InvalidField {
        what: what.to_owned(),
        reason: reason.into(),
    }
}

fn layout_tag(layout: Layout) -> u8 {
    match layout {
        Layout::InOut => 0,
        Layout::OutIn => 1,
    }
}

fn layout_from_tag(tag: u8) -> Result<Layout> {
    match tag {
        0 => Ok(Layout::InOut),
        1 => Ok(Layout::OutIn),
        other => Err(invalid(
            "layout",
            format!("unknown tag {other}; expected 0 (in-out) or 1 (out-in)"),
        )),
    }
}

/// Checks magic, version and flags; returns (kind, payload length).
fn check_header(bytes: &[u8]) -> Result<(u8, u64)> {
    if bytes.len() < HEADER_LEN {
        return Err(ShardingError::Truncated {
            what: "header".to_owned(),
            needed: HEADER_LEN,
            available: bytes.len(),
        });
    }
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&bytes[0..4]);
    if magic != MAGIC {
        return Err(ShardingError::BadMagic {
            found: magic,
            expected: MAGIC,
        });
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != FORMAT_VERSION {
        return Err(ShardingError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let (kind, flags) = (bytes[6], bytes[7]);
    if flags != 0 {
        return Err(invalid(
            "flags",
            format!("{flags:#04x}; version 1 defines no flags (expected 0)"),
        ));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[8..16]);
    Ok((kind, u64::from_le_bytes(len)))
}

/// Validates the frame and returns the payload.
fn open_frame(bytes: &[u8], expected_kind: u8) -> Result<&[u8]> {
    let (kind, payload_len) = check_header(bytes)?;
    if kind != expected_kind {
        let expected = match expected_kind {
            KIND_SHARD => "1 (shard)",
            _ => "2 (update)",
        };
        return Err(ShardingError::WrongKind {
            found: kind,
            expected: expected.to_owned(),
        });
    }
    let available = bytes.len() - HEADER_LEN;
    // Compare in u64 before any conversion: a hostile length never reaches
    // an allocation or an index.
    let needed = payload_len.saturating_add(TRAILER_LEN as u64);
    if needed > available as u64 {
        return Err(ShardingError::Truncated {
            what: "payload and checksum".to_owned(),
            needed: usize::try_from(needed).unwrap_or(usize::MAX),
            available,
        });
    }
    let end = HEADER_LEN + payload_len as usize;
    let total = end + TRAILER_LEN;
    if total < bytes.len() {
        return Err(ShardingError::TrailingBytes {
            count: bytes.len() - total,
        });
    }
    let mut stored = [0u8; 8];
    stored.copy_from_slice(&bytes[end..total]);
    let expected = u64::from_le_bytes(stored);
    let computed = fnv1a64(&bytes[..end]);
    if expected != computed {
        return Err(ShardingError::ChecksumMismatch { expected, computed });
    }
    Ok(&bytes[HEADER_LEN..end])
}

struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }

    fn header(&mut self, kind: u8, payload_len: usize) {
        self.buf.extend_from_slice(&MAGIC);
        self.buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        self.u8(kind);
        self.u8(0);
        self.u64(payload_len as u64);
    }

    fn finish(mut self) -> Vec<u8> {
        let sum = fnv1a64(&self.buf);
        self.u64(sum);
        self.buf
    }

    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn f32s(&mut self, values: &[f32]) {
        for v in values {
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn limited(what: &str, value: usize, limit: u64) -> Result<u32> {
        if value as u64 > limit {
            return Err(ShardingError::LengthLimit {
                what: what.to_owned(),
                declared: value as u64,
                limit,
            });
        }
        u32::try_from(value).map_err(|_| ShardingError::LengthLimit {
            what: what.to_owned(),
            declared: value as u64,
            limit: u64::from(u32::MAX),
        })
    }

    fn count(&mut self, what: &str, n: usize) -> Result<()> {
        let v = Self::limited(what, n, MAX_ENTRIES as u64)?;
        self.u32(v);
        Ok(())
    }

    /// A dimension: `1 ≤ n ≤ u32::MAX`.
    fn dim(&mut self, what: &str, n: usize) -> Result<()> {
        if n == 0 {
            return Err(invalid(what, "must be >= 1, found 0"));
        }
        self.index(what, n)
    }

    /// An index or any other `u32` field.
    fn index(&mut self, what: &str, n: usize) -> Result<()> {
        let v = Self::limited(what, n, u64::from(u32::MAX))?;
        self.u32(v);
        Ok(())
    }

    fn name(&mut self, name: &str) -> Result<()> {
        let len = Self::limited("parameter path length", name.len(), MAX_NAME_LEN as u64)?;
        self.u16(len as u16);
        self.buf.extend_from_slice(name.as_bytes());
        Ok(())
    }

    fn tensor_len(what: &str, n: usize) -> Result<()> {
        Self::limited(what, n, MAX_ELEMENTS).map(|_| ())
    }

    fn factors(&mut self, s: &LayerShard) -> Result<()> {
        self.dim("kept triplets", s.kept())?;
        Self::tensor_len("factor A", s.a().len())?;
        Self::tensor_len("factor B", s.b().len())?;
        for &i in s.indices() {
            self.index("triplet index", i)?;
        }
        self.f32s(s.multipliers());
        self.f32s(s.a());
        self.f32s(s.b());
        Ok(())
    }

    fn dense(&mut self, d: &DenseParam) -> Result<()> {
        d.check()?;
        self.name(&d.path)?;
        if d.shape.is_empty() {
            return Err(invalid(
                "dimension count",
                format!("0 for {}; expected 1 to {MAX_NDIM}", d.path),
            ));
        }
        let ndim = Self::limited("dimension count", d.shape.len(), MAX_NDIM as u64)?;
        self.u8(ndim as u8);
        for &s in &d.shape {
            self.dim("dimension", s)?;
        }
        Self::tensor_len(&d.path, d.values.len())?;
        self.f32s(&d.values);
        Ok(())
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(ShardingError::Truncated {
                what: what.to_owned(),
                needed: n,
                available: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of entries of at least `min_entry` bytes each: bounded by the
    /// format cap and by what the remaining bytes can hold.
    fn count(&mut self, what: &str, min_entry: usize) -> Result<usize> {
        let n = u64::from(self.u32(what)?);
        let limit = (MAX_ENTRIES as u64).min((self.remaining() / min_entry) as u64);
        if n > limit {
            return Err(ShardingError::LengthLimit {
                what: what.to_owned(),
                declared: n,
                limit,
            });
        }
        Ok(n as usize)
    }

    fn dim(&mut self, what: &str) -> Result<usize> {
        let v = self.u32(what)?;
        if v == 0 {
            return Err(invalid(what, "must be >= 1, found 0"));
        }
        Ok(v as usize)
    }

    fn name(&mut self) -> Result<String> {
        let len = usize::from(self.u16("parameter path length")?);
        if len > MAX_NAME_LEN {
            return Err(ShardingError::LengthLimit {
                what: "parameter path length".to_owned(),
                declared: len as u64,
                limit: MAX_NAME_LEN as u64,
            });
        }
        let bytes = self.take(len, "parameter path")?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| invalid("parameter path", format!("not UTF-8: {e}")))
    }

    /// `count` values of 4 bytes each; the count is checked against the
    /// remaining bytes and [`MAX_ELEMENTS`] before allocating.
    fn words(&mut self, what: &str, count: u64) -> Result<&'a [u8]> {
        let limit = MAX_ELEMENTS.min((self.remaining() / 4) as u64);
        if count > limit {
            return Err(ShardingError::LengthLimit {
                what: what.to_owned(),
                declared: count,
                limit,
            });
        }
        self.take(count as usize * 4, what)
    }

    fn f32s(&mut self, what: &str, count: u64) -> Result<Vec<f32>> {
        Ok(self
            .words(what, count)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn u32s(&mut self, what: &str, count: u64) -> Result<Vec<usize>> {
        Ok(self
            .words(what, count)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
            .collect())
    }

    fn factors(&mut self, rows: usize, cols: usize) -> Result<LayerShard> {
        let kept = self.dim("kept triplets")?;
        let rank = rows.min(cols);
        if kept > rank {
            return Err(ShardingError::LengthLimit {
                what: "kept triplets".to_owned(),
                declared: kept as u64,
                limit: rank as u64,
            });
        }
        let indices = self.u32s("triplet indices", kept as u64)?;
        let multipliers = self.f32s("multipliers", kept as u64)?;
        let a = self.f32s("factor A", rows as u64 * kept as u64)?;
        let b = self.f32s("factor B", kept as u64 * cols as u64)?;
        LayerShard::new(rows, cols, indices, multipliers, a, b)
    }

    fn dense_list(&mut self) -> Result<Vec<DenseParam>> {
        // smallest entry: name (2) + ndim (1) + one dim (4) + one value (4)
        let count = self.count("dense parameter count", 2 + 1 + 4 + 4)?;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let path = self.name()?;
            let ndim = usize::from(self.u8("dimension count")?);
            if ndim == 0 || ndim > MAX_NDIM {
                return Err(invalid(
                    "dimension count",
                    format!("{ndim}; expected 1 to {MAX_NDIM}"),
                ));
            }
            let mut shape = Vec::with_capacity(ndim);
            let mut numel: u64 = 1;
            for _ in 0..ndim {
                let d = self.dim("dimension")?;
                numel = numel.saturating_mul(d as u64);
                shape.push(d);
            }
            let values = self.f32s(&path, numel)?;
            out.push(DenseParam::new(path, shape, values)?);
        }
        Ok(out)
    }

    fn finish(&self) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(ShardingError::TrailingBytes { count }),
        }
    }
}
