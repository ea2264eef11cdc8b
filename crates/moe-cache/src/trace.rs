//! Routing traces: a compact versioned binary format, replay against any
//! policy × routing rule × capacity, per-layer miss curves, and a seeded
//! synthetic generator.
//!
//! # Format (version 1, little-endian)
//!
//! ```text
//! header   magic "LMMOETRC" (8) | version u32 = 1 | logits u32 (0 none, 1 f16, 2 f32)
//!          layers u32 | experts u32 | k u32 | records u64
//! records  token u32 | layer u16 | expert u16 × k | logit (f16 or f32) × experts
//! footer   crc32 u32 of every byte before it
//! ```
//!
//! One record is one token at one layer: its index in the sequence (non-
//! decreasing through the file), the `k` experts it was routed to (distinct,
//! best first) and optionally the layer's router logits, which rules that
//! re-rank experts need. At `E = 64, k = 4` a record takes 14 bytes without
//! logits and 142 with f16 logits.
//!
//! Reading checks, in order: the length against the header's record count
//! (every allocation is bounded by the bytes actually present), the CRC,
//! then every record (layer and expert ranges, distinct experts, token
//! order, finite logits). Any failure is a typed error: [`MoeCacheError::Truncated`],
//! [`MoeCacheError::ChecksumMismatch`], [`MoeCacheError::BadMagic`],
//! [`MoeCacheError::UnsupportedVersion`], [`MoeCacheError::CorruptFile`].
//!
//! ```
//! use lastmile_moe_cache::trace::{LogitsFormat, ReplayConfig, ReplayRouting, Capacity, Trace, replay};
//! use lastmile_moe_cache::policy::PolicyKind;
//! let mut trace = Trace::new(1, 4, 1, LogitsFormat::None)?;
//! for (token, expert) in [0usize, 1, 0, 2, 0, 1].into_iter().enumerate() {
//!     trace.push(token as u32, 0, &[expert], None)?;
//! }
//! let back = Trace::from_bytes(&trace.to_bytes())?;
//! assert_eq!(back, trace);
//! let report = replay(&trace, &ReplayConfig::new(PolicyKind::Lru, ReplayRouting::Recorded, Capacity::Uniform(2)))?;
//! assert_eq!(report.misses(), 4); // 0, 1, 2, then 1 again
//! # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
//! ```

use std::path::Path;

use half::f16;
use lastmile_core::CoreError;
use lastmile_core::validate::{check_at_least, check_finite_slice, check_in_range, check_len};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::cache::{Budget, CacheGeometry, ExpertCache, LayerStats, MissCurve};
use crate::cost::IoCostModel;
use crate::error::{MoeCacheError, Result};
use crate::policy::PolicyKind;
use crate::routing::{Router, RouterConfig, Routing, RoutingRule};

/// Magic bytes at the start of a trace file.
pub const TRACE_MAGIC: [u8; 8] = *b"LMMOETRC";
/// The format version this build writes and reads.
pub const TRACE_VERSION: u32 = 1;
/// Default cap on the size of a trace file [`Trace::load`] reads: 4 GiB.
pub const DEFAULT_MAX_TRACE_BYTES: u64 = 4 << 30;

const WHAT: &str = "trace";
const HEADER: usize = 36;

/// How router logits are stored in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFormat {
    /// Not stored (replay can only use the recorded experts).
    None,
    /// IEEE binary16 (values rounded on [`Trace::push`]; |z| ≤ 65504).
    F16,
    /// IEEE binary32.
    F32,
}

impl LogitsFormat {
    fn code(self) -> u32 {
        match self {
            LogitsFormat::None => 0,
            LogitsFormat::F16 => 1,
            LogitsFormat::F32 => 2,
        }
    }

    fn width(self) -> usize {
        match self {
            LogitsFormat::None => 0,
            LogitsFormat::F16 => 2,
            LogitsFormat::F32 => 4,
        }
    }
}

/// One record of a [`Trace`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceRecord<'a> {
    /// Token index in the sequence.
    pub token: u32,
    /// Layer.
    pub layer: usize,
    /// The experts the token was routed to, best first.
    pub experts: &'a [u16],
    /// The layer's router logits, if the trace stores them.
    pub logits: Option<&'a [f32]>,
}

/// An in-memory routing trace (structure of arrays); see the [module docs](self).
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    layers: usize,
    experts: usize,
    k: usize,
    format: LogitsFormat,
    tokens: Vec<u32>,
    record_layers: Vec<u16>,
    chosen: Vec<u16>,
    logits: Vec<f32>,
}

impl Trace {
    /// An empty trace of `layers` layers of `experts` experts, `k` per token.
    ///
    /// # Errors
    /// Out of range for 0 or more than 65535 layers or experts, or `k = 0`;
    /// [`MoeCacheError::KAboveExperts`].
    pub fn new(layers: usize, experts: usize, k: usize, format: LogitsFormat) -> Result<Self> {
        for (name, v) in [("layers", layers), ("experts", experts)] {
            if v == 0 || v > u16::MAX as usize {
                return Err(MoeCacheError::param(name, v as f64, "between 1 and 65535"));
            }
        }
        check_at_least("k", k, 1)?;
        if k > experts {
            return Err(MoeCacheError::KAboveExperts { k, experts });
        }
        Ok(Self {
            layers,
            experts,
            k,
            format,
            tokens: Vec::new(),
            record_layers: Vec::new(),
            chosen: Vec::new(),
            logits: Vec::new(),
        })
    }

    /// Layers.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Experts per layer.
    pub fn experts(&self) -> usize {
        self.experts
    }

    /// Experts per token.
    pub fn k(&self) -> usize {
        self.k
    }

    /// How logits are stored.
    pub fn logits_format(&self) -> LogitsFormat {
        self.format
    }

    /// Whether logits are stored.
    pub fn has_logits(&self) -> bool {
        self.format != LogitsFormat::None
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Number of distinct tokens (token indices are non-decreasing).
    pub fn tokens(&self) -> u64 {
        let mut n = 0u64;
        let mut last = None;
        for &t in &self.tokens {
            if last != Some(t) {
                n += 1;
                last = Some(t);
            }
        }
        n
    }

    /// Record `i` (`None` when `i >= len()`).
    pub fn record(&self, i: usize) -> Option<TraceRecord<'_>> {
        (i < self.len()).then(|| self.record_unchecked(i))
    }

    fn record_unchecked(&self, i: usize) -> TraceRecord<'_> {
        let e = self.experts;
        TraceRecord {
            token: self.tokens[i],
            layer: self.record_layers[i] as usize,
            experts: &self.chosen[i * self.k..(i + 1) * self.k],
            logits: self.has_logits().then(|| &self.logits[i * e..(i + 1) * e]),
        }
    }

    /// All records in order.
    pub fn records(&self) -> impl Iterator<Item = TraceRecord<'_>> + '_ {
        (0..self.len()).map(|i| self.record_unchecked(i))
    }

    /// Appends a record. F16 logits are rounded to binary16 here, so a trace
    /// equals itself after a round trip through a file.
    ///
    /// # Errors
    /// Out of range for a token index below the previous record's;
    /// [`MoeCacheError::LayerOutOfRange`]; [`lastmile_core::CoreError::LengthMismatch`]
    /// for other than `k` experts or `E` logits, or logits given to a trace
    /// without (or missing from a trace with) them; [`MoeCacheError::ExpertOutOfRange`];
    /// [`MoeCacheError::DuplicateExpert`]; [`lastmile_core::CoreError::NonFinite`]
    /// for non-finite logits (after f16 rounding).
    pub fn push(
        &mut self,
        token: u32,
        layer: usize,
        experts: &[usize],
        logits: Option<&[f32]>,
    ) -> Result<()> {
        if let Some(&last) = self.tokens.last()
            && token < last
        {
            return Err(MoeCacheError::param(
                "token",
                f64::from(token),
                &format!("a token index >= the previous record's ({last})"),
            ));
        }
        if layer >= self.layers {
            return Err(MoeCacheError::LayerOutOfRange {
                layer,
                layers: self.layers,
            });
        }
        check_len("experts", experts.len(), self.k)?;
        for (i, &x) in experts.iter().enumerate() {
            if x >= self.experts {
                return Err(MoeCacheError::ExpertOutOfRange {
                    layer,
                    expert: x,
                    experts: self.experts,
                });
            }
            if experts[..i].contains(&x) {
                return Err(MoeCacheError::DuplicateExpert { layer, expert: x });
            }
        }
        let start = self.logits.len();
        match (self.format, logits) {
            (LogitsFormat::None, None) => {}
            (LogitsFormat::None, Some(z)) => check_len("logits (trace stores none)", z.len(), 0)?,
            (_, None) => check_len("logits", 0, self.experts)?,
            (format, Some(z)) => {
                check_len("logits", z.len(), self.experts)?;
                if format == LogitsFormat::F16 {
                    self.logits
                        .extend(z.iter().map(|&x| f16::from_f32(x).to_f32()));
                } else {
                    self.logits.extend_from_slice(z);
                }
                if let Err(e) = check_finite_slice("logits", &self.logits[start..]) {
                    self.logits.truncate(start);
                    return Err(e.into());
                }
            }
        }
        self.tokens.push(token);
        self.record_layers.push(layer as u16);
        self.chosen.extend(experts.iter().map(|&x| x as u16));
        Ok(())
    }

    fn record_bytes(&self) -> usize {
        4 + 2 + 2 * self.k + self.format.width() * self.experts
    }

    /// Serialises to the binary format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.len() * self.record_bytes() + 4);
        out.extend_from_slice(&TRACE_MAGIC);
        out.extend_from_slice(&TRACE_VERSION.to_le_bytes());
        out.extend_from_slice(&self.format.code().to_le_bytes());
        out.extend_from_slice(&(self.layers as u32).to_le_bytes());
        out.extend_from_slice(&(self.experts as u32).to_le_bytes());
        out.extend_from_slice(&(self.k as u32).to_le_bytes());
        out.extend_from_slice(&(self.len() as u64).to_le_bytes());
        for r in self.records() {
            out.extend_from_slice(&r.token.to_le_bytes());
            out.extend_from_slice(&(r.layer as u16).to_le_bytes());
            for &x in r.experts {
                out.extend_from_slice(&x.to_le_bytes());
            }
            if let Some(z) = r.logits {
                match self.format {
                    LogitsFormat::F16 => {
                        for &x in z {
                            out.extend_from_slice(&f16::from_f32(x).to_le_bytes());
                        }
                    }
                    _ => {
                        for &x in z {
                            out.extend_from_slice(&x.to_le_bytes());
                        }
                    }
                }
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses and validates the binary format.
    ///
    /// # Errors
    /// See the [module docs](self).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let found = bytes.len() as u64;
        if bytes.len() < HEADER + 4 {
            return Err(MoeCacheError::Truncated {
                what: WHAT,
                expected: (HEADER + 4) as u64,
                found,
            });
        }
        if bytes[..8] != TRACE_MAGIC {
            return Err(MoeCacheError::BadMagic {
                what: WHAT,
                found: bytes[..8].to_vec(),
                expected: TRACE_MAGIC.to_vec(),
            });
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let version = u32_at(8);
        if version != TRACE_VERSION {
            return Err(MoeCacheError::UnsupportedVersion {
                what: WHAT,
                found: version,
                supported: TRACE_VERSION,
            });
        }
        let format = match u32_at(12) {
            0 => LogitsFormat::None,
            1 => LogitsFormat::F16,
            2 => LogitsFormat::F32,
            other => {
                return Err(corrupt(format!(
                    "logits format code {other}; expected 0, 1 or 2"
                )));
            }
        };
        let (layers, experts, k) = (
            u32_at(16) as usize,
            u32_at(20) as usize,
            u32_at(24) as usize,
        );
        let mut c = [0u8; 8];
        c.copy_from_slice(&bytes[28..36]);
        let records = u64::from_le_bytes(c);
        let mut trace =
            Trace::new(layers, experts, k, format).map_err(|e| corrupt(format!("header: {e}")))?;
        let record_bytes = trace.record_bytes() as u64;
        let expected = records
            .checked_mul(record_bytes)
            .and_then(|v| v.checked_add((HEADER + 4) as u64))
            .ok_or_else(|| {
                corrupt(format!(
                    "{records} records of {record_bytes} bytes overflow"
                ))
            })?;
        if expected != found {
            return Err(MoeCacheError::Truncated {
                what: WHAT,
                expected,
                found,
            });
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(MoeCacheError::ChecksumMismatch {
                what: "trace".to_owned(),
                stored,
                computed,
            });
        }
        // `records` is now bounded by the bytes present.
        let n = records as usize;
        trace.tokens.reserve_exact(n);
        trace.record_layers.reserve_exact(n);
        trace.chosen.reserve_exact(n * k);
        trace
            .logits
            .reserve_exact(n * format.width().min(1) * experts);
        let mut scratch = vec![0usize; k];
        let mut z = vec![
            0f32;
            if format == LogitsFormat::None {
                0
            } else {
                experts
            }
        ];
        for (i, rec) in body[HEADER..]
            .chunks_exact(record_bytes as usize)
            .enumerate()
        {
            let token = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
            let layer = u16::from_le_bytes([rec[4], rec[5]]) as usize;
            for (j, s) in scratch.iter_mut().enumerate() {
                *s = u16::from_le_bytes([rec[6 + 2 * j], rec[7 + 2 * j]]) as usize;
            }
            let at = 6 + 2 * k;
            match format {
                LogitsFormat::None => {}
                LogitsFormat::F16 => {
                    for (j, v) in z.iter_mut().enumerate() {
                        *v = f16::from_le_bytes([rec[at + 2 * j], rec[at + 2 * j + 1]]).to_f32();
                    }
                }
                LogitsFormat::F32 => {
                    for (j, v) in z.iter_mut().enumerate() {
                        let b = &rec[at + 4 * j..at + 4 * j + 4];
                        *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
            }
            let logits = (format != LogitsFormat::None).then_some(z.as_slice());
            trace
                .push(token, layer, &scratch, logits)
                .map_err(|e| corrupt(format!("record {i}: {e}")))?;
        }
        Ok(trace)
    }

    /// Writes the trace to `path`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()).map_err(|e| MoeCacheError::io(path, e))
    }

    /// Reads a trace of at most [`DEFAULT_MAX_TRACE_BYTES`].
    ///
    /// # Errors
    /// I/O errors, [`MoeCacheError::FileTooLarge`], and those of [`from_bytes`](Self::from_bytes).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with_limit(path, DEFAULT_MAX_TRACE_BYTES)
    }

    /// Reads a trace, refusing files over `max_bytes` before reading them.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn load_with_limit(path: impl AsRef<Path>, max_bytes: u64) -> Result<Self> {
        use std::io::Read;
        let path = path.as_ref();
        let io = |e| MoeCacheError::io(path, e);
        let file = std::fs::File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        if size > max_bytes {
            return Err(MoeCacheError::FileTooLarge {
                what: WHAT,
                size,
                limit: max_bytes,
            });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.take(max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > max_bytes {
            return Err(MoeCacheError::FileTooLarge {
                what: WHAT,
                size: bytes.len() as u64,
                limit: max_bytes,
            });
        }
        Self::from_bytes(&bytes)
    }
}

fn corrupt(reason: String) -> MoeCacheError {
    MoeCacheError::CorruptFile { what: WHAT, reason }
}

// ------------------------------------------------------------------ replay

/// Which experts replay accesses for each record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReplayRouting {
    /// The experts the trace recorded.
    Recorded,
    /// Re-route every record from its logits with a rule, against the
    /// replayed cache's contents.
    Rule(RoutingRule),
}

impl ReplayRouting {
    fn name(&self) -> &'static str {
        match self {
            ReplayRouting::Recorded => "recorded",
            ReplayRouting::Rule(r) => r.name(),
        }
    }

    fn depends_on_cache(&self) -> bool {
        match self {
            ReplayRouting::Recorded => false,
            ReplayRouting::Rule(r) => r.depends_on_cache(),
        }
    }
}

/// Cache capacity for a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capacity {
    /// The same number of experts in every layer.
    Uniform(usize),
    /// Experts per layer.
    PerLayer(Vec<usize>),
    /// One pool as large as this many experts of every layer.
    GlobalPerLayer(usize),
    /// An explicit byte budget.
    Bytes(Budget),
}

/// What to replay: a policy, a routing, a capacity, and each layer's expert
/// size in bytes (default 1, so bytes count experts).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayConfig {
    /// The eviction policy.
    pub policy: PolicyKind,
    /// The routing.
    pub routing: ReplayRouting,
    /// The capacity.
    pub capacity: Capacity,
    /// Bytes of one expert of each layer (`None`: 1 byte each).
    pub expert_bytes: Option<Vec<u64>>,
}

impl ReplayConfig {
    /// A replay with 1-byte experts.
    pub fn new(policy: PolicyKind, routing: ReplayRouting, capacity: Capacity) -> Self {
        Self {
            policy,
            routing,
            capacity,
            expert_bytes: None,
        }
    }

    /// Sets each layer's expert size.
    pub fn with_expert_bytes(mut self, expert_bytes: Vec<u64>) -> Self {
        self.expert_bytes = Some(expert_bytes);
        self
    }
}

/// Result of a replay.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayReport {
    /// Policy name.
    pub policy: &'static str,
    /// Routing name.
    pub routing: &'static str,
    /// Counters per layer.
    pub layers: Vec<LayerStats>,
    /// Distinct tokens replayed.
    pub tokens: u64,
    /// Bytes of one expert of each layer.
    pub expert_bytes: Vec<u64>,
}

impl ReplayReport {
    /// Counters summed over layers.
    pub fn total(&self) -> LayerStats {
        let mut t = LayerStats::default();
        for s in &self.layers {
            t.hits += s.hits;
            t.misses += s.misses;
            t.evictions += s.evictions;
            t.bytes_loaded += s.bytes_loaded;
        }
        t
    }

    /// Overall hit rate.
    pub fn hit_rate(&self) -> f64 {
        self.total().hit_rate()
    }

    /// Hit rate of `layer` (0 when out of range or unused).
    pub fn layer_hit_rate(&self, layer: usize) -> f64 {
        self.layers.get(layer).map_or(0.0, LayerStats::hit_rate)
    }

    /// Misses over all layers.
    pub fn misses(&self) -> u64 {
        self.total().misses
    }

    /// Misses per token.
    pub fn misses_per_token(&self) -> f64 {
        self.misses() as f64 / self.tokens.max(1) as f64
    }

    /// Bytes read over all layers.
    pub fn bytes_read(&self) -> u64 {
        self.total().bytes_loaded
    }

    /// Bytes read per token.
    pub fn bytes_per_token(&self) -> f64 {
        self.bytes_read() as f64 / self.tokens.max(1) as f64
    }

    /// Modelled I/O time: every miss is one read of its expert.
    pub fn io_seconds(&self, model: &dyn IoCostModel) -> f64 {
        self.layers
            .iter()
            .zip(&self.expert_bytes)
            .map(|(s, &b)| s.misses as f64 * model.read_seconds(b))
            .sum()
    }

    /// Modelled I/O time per token.
    pub fn io_seconds_per_token(&self, model: &dyn IoCostModel) -> f64 {
        self.io_seconds(model) / self.tokens.max(1) as f64
    }
}

/// Replays `trace`: each record is one step of one layer (its experts
/// accessed once each, pinned together), with the configured policy,
/// routing and capacity.
///
/// Belady/OPT is given each partition's exact future, which requires a
/// routing that does not depend on the cache (recorded, top-k, or
/// Cache-Prior with λ = 0).
///
/// # Errors
/// [`MoeCacheError::TraceWithoutLogits`] for a rule on a trace without
/// logits; [`MoeCacheError::OracleNeedsFixedRouting`]; the cache's budget
/// errors ([`MoeCacheError::ZeroCapacity`], [`MoeCacheError::CapacityBelowK`],
/// length mismatches) and the router's parameter errors.
pub fn replay(trace: &Trace, config: &ReplayConfig) -> Result<ReplayReport> {
    let geometry = geometry_of(trace, config)?;
    let budget = match &config.capacity {
        Capacity::Uniform(s) => Budget::uniform_experts(&geometry, *s),
        Capacity::PerLayer(v) => Budget::experts_per_layer(&geometry, v)?,
        Capacity::GlobalPerLayer(s) => Budget::global_experts(&geometry, *s),
        Capacity::Bytes(b) => b.clone(),
    };
    let mut router = make_router(trace, config.routing)?;
    let futures = if config.policy.needs_future() {
        if config.routing.depends_on_cache() {
            return Err(MoeCacheError::OracleNeedsFixedRouting {
                rule: config.routing.name(),
            });
        }
        Some(futures(trace, &geometry, &budget, router.as_mut())?)
    } else {
        None
    };
    if let Some(r) = router.as_mut() {
        r.reset();
    }
    let policy = config.policy;
    let mut cache: ExpertCache<()> =
        ExpertCache::with_policies(geometry, budget, |info| match &futures {
            Some(f) => policy.build_with_future(info.universe, &f[info.index]),
            None => policy.build(info.universe),
        })?;
    let mut experts = Vec::with_capacity(trace.k());
    let mut routing = Routing::default();
    for rec in trace.records() {
        choose(
            &rec,
            router.as_mut(),
            cache.cached(rec.layer)?,
            &mut routing,
            &mut experts,
        )?;
        cache.ensure(rec.layer, &experts, |_| Ok(()))?;
        cache.end_step()?;
    }
    Ok(ReplayReport {
        policy: config.policy.name(),
        routing: config.routing.name(),
        layers: (0..trace.layers()).map(|l| cache.stats(l)).collect(),
        tokens: trace.tokens(),
        expert_bytes: (0..trace.layers())
            .map(|l| cache.geometry().expert_bytes(l).unwrap_or(0))
            .collect(),
    })
}

fn geometry_of(trace: &Trace, config: &ReplayConfig) -> Result<CacheGeometry> {
    let bytes = config
        .expert_bytes
        .clone()
        .unwrap_or_else(|| vec![1; trace.layers()]);
    CacheGeometry::new(vec![trace.experts(); trace.layers()], bytes, trace.k())
}

fn make_router(trace: &Trace, routing: ReplayRouting) -> Result<Option<Router>> {
    match routing {
        ReplayRouting::Recorded => Ok(None),
        ReplayRouting::Rule(rule) => {
            if !trace.has_logits() {
                return Err(MoeCacheError::TraceWithoutLogits { rule: rule.name() });
            }
            let config = RouterConfig::new(trace.layers(), trace.experts(), trace.k())?;
            Ok(Some(Router::new(rule, config)?))
        }
    }
}

/// The experts one record accesses, into `experts`.
fn choose(
    rec: &TraceRecord<'_>,
    router: Option<&mut Router>,
    cached: &[bool],
    routing: &mut Routing,
    experts: &mut Vec<usize>,
) -> Result<()> {
    experts.clear();
    match (router, rec.logits) {
        (Some(r), Some(z)) => {
            r.route(rec.layer, z, cached, routing)?;
            experts.extend_from_slice(&routing.experts);
        }
        _ => experts.extend(rec.experts.iter().map(|&x| x as usize)),
    }
    Ok(())
}

/// Each partition's access sequence under a cache-independent routing.
fn futures(
    trace: &Trace,
    geometry: &CacheGeometry,
    budget: &Budget,
    mut router: Option<&mut Router>,
) -> Result<Vec<Vec<usize>>> {
    let mut out = vec![Vec::new(); budget.partitions(geometry)];
    let none = vec![false; trace.experts()];
    let mut experts = Vec::with_capacity(trace.k());
    let mut routing = Routing::default();
    for rec in trace.records() {
        choose(
            &rec,
            router.as_deref_mut(),
            &none,
            &mut routing,
            &mut experts,
        )?;
        for &e in &experts {
            let (p, id) = budget.partition_of(geometry, rec.layer, e);
            out[p].push(id);
        }
    }
    Ok(out)
}

/// Each layer's misses at every per-layer capacity from k to all experts,
/// by replaying `trace` once per capacity. Valid for any routing rule:
/// under per-layer budgets a layer's routing and misses depend on that
/// layer's cache alone.
///
/// # Errors
/// As [`replay`].
///
/// ```
/// use lastmile_moe_cache::policy::PolicyKind;
/// use lastmile_moe_cache::trace::{ReplayRouting, SyntheticConfig, miss_curves, synthetic_trace};
/// let trace = synthetic_trace(&SyntheticConfig::new(2, 8, 2, 200))?;
/// let curves = miss_curves(&trace, PolicyKind::Lru, ReplayRouting::Recorded)?;
/// assert_eq!(curves[0].misses.len(), 7); // capacities 2..=8
/// assert!(curves[0].at(8) <= curves[0].at(2));
/// # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
/// ```
pub fn miss_curves(
    trace: &Trace,
    policy: PolicyKind,
    routing: ReplayRouting,
) -> Result<Vec<MissCurve>> {
    let k = trace.k();
    let mut curves: Vec<MissCurve> = (0..trace.layers())
        .map(|layer| MissCurve {
            layer,
            min_capacity: k,
            misses: Vec::with_capacity(trace.experts() - k + 1),
        })
        .collect();
    for c in k..=trace.experts() {
        let report = replay(
            trace,
            &ReplayConfig::new(policy, routing, Capacity::Uniform(c)),
        )?;
        for (curve, s) in curves.iter_mut().zip(&report.layers) {
            curve.misses.push(s.misses);
        }
    }
    Ok(curves)
}

// ------------------------------------------------------------------ synthetic

/// Parameters of [`synthetic_trace`].
///
/// ```
/// use lastmile_moe_cache::trace::{LogitsFormat, SyntheticConfig};
/// let c = SyntheticConfig::new(4, 16, 2, 1000).with_zipf(1.2).with_logits(LogitsFormat::F16).with_seed(7);
/// assert_eq!(c.seed, 7);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticConfig {
    /// Layers.
    pub layers: usize,
    /// Experts per layer.
    pub experts: usize,
    /// Experts per token.
    pub k: usize,
    /// Tokens.
    pub tokens: usize,
    /// Zipf exponent `s` of expert popularity (`P(rank r) ∝ 1/r^s`; 0 is uniform).
    pub zipf: f64,
    /// Probability that a slot reuses the expert the previous token used in it.
    pub reuse: f64,
    /// Probability that a slot follows the previous layer's expert in the same
    /// slot through a fixed per-layer mapping (cross-layer correlation).
    pub cross_layer: f64,
    /// Number of topics; each has its own popularity order per layer.
    pub topics: usize,
    /// Tokens between topic changes (topic drift; 0: never change).
    pub topic_period: usize,
    /// How to store logits (generated so their top-k is the recorded choice).
    pub logits: LogitsFormat,
    /// RNG seed.
    pub seed: u64,
}

impl SyntheticConfig {
    /// Defaults: Zipf 1.0, reuse 0.3, cross-layer 0.3, 4 topics changing
    /// every 128 tokens, no logits, seed 0.
    pub fn new(layers: usize, experts: usize, k: usize, tokens: usize) -> Self {
        Self {
            layers,
            experts,
            k,
            tokens,
            zipf: 1.0,
            reuse: 0.3,
            cross_layer: 0.3,
            topics: 4,
            topic_period: 128,
            logits: LogitsFormat::None,
            seed: 0,
        }
    }

    /// Sets the Zipf exponent.
    pub fn with_zipf(mut self, s: f64) -> Self {
        self.zipf = s;
        self
    }

    /// Sets the reuse probability.
    pub fn with_reuse(mut self, p: f64) -> Self {
        self.reuse = p;
        self
    }

    /// Sets the cross-layer correlation.
    pub fn with_cross_layer(mut self, p: f64) -> Self {
        self.cross_layer = p;
        self
    }

    /// Sets the topics and their period.
    pub fn with_topics(mut self, topics: usize, period: usize) -> Self {
        self.topics = topics;
        self.topic_period = period;
        self
    }

    /// Sets the logits format.
    pub fn with_logits(mut self, format: LogitsFormat) -> Self {
        self.logits = format;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

fn shuffled(n: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
    v
}

/// A seeded synthetic trace with per-layer Zipf popularity, temporal reuse,
/// topic drift and cross-layer correlation, for stress tests.
///
/// Per token and layer, each of the `k` slots takes, in this order of
/// preference: with probability `reuse` the previous token's expert in that
/// slot; else with probability `cross_layer` the image of the previous
/// layer's expert in that slot under a fixed random permutation; else a Zipf
/// draw over the current topic's popularity order of the layer. A candidate
/// already chosen is replaced by fresh Zipf draws. With logits requested,
/// `z` is the log-popularity of every expert under the current topic plus
/// uniform noise in `[0, 0.5)`, with the chosen experts lifted above all
/// others (best slot first), so normal top-k routing of the stored logits
/// gives the recorded experts.
///
/// # Errors
/// Out of range for `reuse`, `cross_layer` outside `[0, 1]`, a negative or
/// non-finite `zipf`, 0 topics or tokens, more than 2^32 tokens; the errors
/// of [`Trace::new`].
///
/// ```
/// use lastmile_moe_cache::trace::{SyntheticConfig, synthetic_trace};
/// let a = synthetic_trace(&SyntheticConfig::new(3, 16, 2, 100).with_seed(1))?;
/// let b = synthetic_trace(&SyntheticConfig::new(3, 16, 2, 100).with_seed(1))?;
/// assert_eq!(a, b);
/// assert_eq!(a.len(), 300);
/// # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
/// ```
pub fn synthetic_trace(config: &SyntheticConfig) -> Result<Trace> {
    let c = config;
    let mut trace = Trace::new(c.layers, c.experts, c.k, c.logits)?;
    check_in_range("reuse", c.reuse, 0.0, 1.0)?;
    check_in_range("cross_layer", c.cross_layer, 0.0, 1.0)?;
    lastmile_core::validate::check_interval(
        "zipf",
        c.zipf,
        std::ops::Bound::Included(0.0),
        std::ops::Bound::Unbounded,
    )?;
    check_at_least("topics", c.topics, 1)?;
    check_at_least("tokens", c.tokens, 1)?;
    if c.tokens > u32::MAX as usize {
        return Err(
            CoreError::out_of_range("tokens", c.tokens as f64, "at most 2^32 - 1 tokens").into(),
        );
    }
    let (l_n, e_n, k) = (c.layers, c.experts, c.k);
    let mut rng = StdRng::seed_from_u64(c.seed);
    // Zipf over ranks 0..E, as a CDF for inverse-transform sampling.
    let weights: Vec<f64> = (0..e_n)
        .map(|r| 1.0 / ((r + 1) as f64).powf(c.zipf))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(e_n);
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cdf.push(acc);
    }
    let log_pop: Vec<f64> = weights.iter().map(|w| (w / total).ln()).collect();
    // popularity order of each (topic, layer): rank -> expert, and its inverse.
    let orders: Vec<Vec<Vec<usize>>> = (0..c.topics)
        .map(|_| (0..l_n).map(|_| shuffled(e_n, &mut rng)).collect())
        .collect();
    let ranks: Vec<Vec<Vec<usize>>> = orders
        .iter()
        .map(|per_layer| {
            per_layer
                .iter()
                .map(|o| {
                    let mut r = vec![0; e_n];
                    for (rank, &e) in o.iter().enumerate() {
                        r[e] = rank;
                    }
                    r
                })
                .collect()
        })
        .collect();
    let cross: Vec<Vec<usize>> = (0..l_n).map(|_| shuffled(e_n, &mut rng)).collect();
    let mut prev: Vec<Vec<usize>> = vec![Vec::new(); l_n];
    let mut topic = 0usize;
    let mut chosen = Vec::with_capacity(k);
    let mut logits = vec![0f32; e_n];
    for t in 0..c.tokens {
        if c.topic_period > 0 && t > 0 && t % c.topic_period == 0 {
            topic = rng.random_range(0..c.topics);
        }
        let mut upper: Vec<usize> = Vec::new();
        for l in 0..l_n {
            let order = &orders[topic][l];
            chosen.clear();
            for slot in 0..k {
                let mut candidate = None;
                if !prev[l].is_empty() && rng.random_bool(c.reuse) {
                    candidate = Some(prev[l][slot]);
                } else if l > 0 && rng.random_bool(c.cross_layer) {
                    candidate = Some(cross[l][upper[slot]]);
                }
                let mut pick = candidate.filter(|x| !chosen.contains(x));
                for _ in 0..16 {
                    if pick.is_some() {
                        break;
                    }
                    let u: f64 = rng.random();
                    let rank = cdf.partition_point(|&p| p < u).min(e_n - 1);
                    pick = Some(order[rank]).filter(|x| !chosen.contains(x));
                }
                let pick = pick.unwrap_or_else(|| {
                    order
                        .iter()
                        .copied()
                        .find(|x| !chosen.contains(x))
                        .unwrap_or(0)
                });
                chosen.push(pick);
            }
            let z = if c.logits == LogitsFormat::None {
                None
            } else {
                let rank = &ranks[topic][l];
                let mut top = f64::NEG_INFINITY;
                for (e, v) in logits.iter_mut().enumerate() {
                    let x = log_pop[rank[e]] + 0.5 * rng.random::<f64>();
                    *v = x as f32;
                }
                for (e, &v) in logits.iter().enumerate() {
                    if !chosen.contains(&e) {
                        top = top.max(f64::from(v));
                    }
                }
                if top == f64::NEG_INFINITY {
                    top = 0.0;
                }
                for (slot, &e) in chosen.iter().enumerate() {
                    // Margins of at least 0.1 survive f16 rounding at these magnitudes.
                    let lift = 0.1 + 0.25 * (k - slot) as f64 + 0.1 * rng.random::<f64>();
                    logits[e] = (top + lift) as f32;
                }
                Some(logits.as_slice())
            };
            // Slot order is lift order, so the record lists the experts best first.
            trace.push(t as u32, l, &chosen, z)?;
            prev[l].clone_from(&chosen);
            upper.clone_from(&chosen);
        }
    }
    Ok(trace)
}
