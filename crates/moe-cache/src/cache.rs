//! A DRAM cache of experts with a byte budget per layer or one global
//! budget, driven by an [`EvictionPolicy`], plus a per-layer budget
//! allocator driven by miss curves from trace replay.
//!
//! # Partitions
//! With [`Budget::PerLayer`] each layer is its own partition (its own
//! budget and policy over ids `0..experts`); with [`Budget::Global`] one
//! partition holds every layer's experts (ids `offset(layer) + expert`) and
//! a miss in any layer may evict an expert of any layer.
//!
//! # Steps and pins
//! Demand accesses happen inside a *step* (one layer of one decode token, or
//! one layer of a multi-token prefill/verify pass): every expert accessed is
//! pinned until [`ExpertCache::end_step`], and [`ExpertCache::ensure`] pins
//! the step's resident experts before its first miss, so no access of the
//! same step evicts an expert the step still needs. [`ExpertCache::ensure`] checks up
//! front that the step's experts fit together ([`MoeCacheError::StepExceedsCapacity`]
//! otherwise, with nothing changed).
//!
//! # Failure safety
//! A miss first chooses its victims (without evicting), then loads, then
//! evicts and inserts. A load that fails leaves the cache exactly as it was
//! (only a random policy's generator has advanced); a step that fails half
//! way keeps the experts it already loaded, all valid and within budget.
//! Peak memory is the budget plus the one expert being loaded.
//!
//! ```
//! use lastmile_moe_cache::cache::{Budget, CacheGeometry, ExpertCache};
//! use lastmile_moe_cache::policy::PolicyKind;
//! // 2 layers of 8 experts of 100 bytes, top-2; room for 3 experts per layer.
//! let geometry = CacheGeometry::uniform(2, 8, 100, 2)?;
//! let mut cache: ExpertCache<Vec<f32>> =
//!     ExpertCache::new(geometry, Budget::PerLayer(vec![300, 300]), PolicyKind::Lru)?;
//! let load = |e: usize| Ok(vec![e as f32; 25]);
//! let report = cache.ensure(0, &[5, 1], load)?;
//! assert_eq!((report.hits, report.misses), (0, 2));
//! cache.end_step()?;
//! cache.ensure(0, &[5, 7], load)?;
//! cache.end_step()?;
//! assert!(cache.is_cached(0, 1));
//! cache.ensure(0, &[2, 7], load)?; // evicts 1, the least recently used
//! cache.end_step()?;
//! assert!(!cache.is_cached(0, 1));
//! assert!(cache.resident_bytes() <= 600);
//! assert_eq!(cache.get(0, 2), Some(&vec![2.0; 25]));
//! # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
//! ```

use lastmile_core::CoreError;
use lastmile_core::validate::check_len;

use crate::error::{MoeCacheError, Result};
use crate::policy::{EvictionPolicy, PolicyKind};
use crate::store::ExpertStore;

/// Layers, experts per layer, bytes per expert, and experts per token (k).
///
/// ```
/// use lastmile_moe_cache::MoeCacheError;
/// use lastmile_moe_cache::cache::CacheGeometry;
/// let g = CacheGeometry::new(vec![8, 16], vec![64, 32], 2)?;
/// assert_eq!(g.global_id(1, 3), Some(11));
/// assert_eq!(g.experts(1), Some(16));
/// assert_eq!(g.global_id(2, 0), None);
/// let too_many = CacheGeometry::uniform(2, 4, 64, 5);
/// assert!(matches!(too_many, Err(MoeCacheError::KAboveExperts { k: 5, experts: 4 })));
/// # Ok::<(), MoeCacheError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheGeometry {
    experts: Vec<usize>,
    expert_bytes: Vec<u64>,
    offsets: Vec<usize>,
    k: usize,
}

impl CacheGeometry {
    /// Layer `l` has `experts[l]` experts of `expert_bytes[l]` bytes; each
    /// token uses `k` experts per layer.
    ///
    /// # Errors
    /// [`lastmile_core::CoreError::Empty`] for no layers;
    /// [`lastmile_core::CoreError::LengthMismatch`] for lists of different
    /// lengths; out of range for `k = 0`, a layer of 0 experts or 0 bytes;
    /// [`MoeCacheError::KAboveExperts`] when a layer has fewer than `k` experts.
    pub fn new(experts: Vec<usize>, expert_bytes: Vec<u64>, k: usize) -> Result<Self> {
        if experts.is_empty() {
            return Err(CoreError::Empty {
                what: "layers".to_owned(),
                min: 1,
            }
            .into());
        }
        check_len("expert_bytes", expert_bytes.len(), experts.len())?;
        lastmile_core::validate::check_at_least("k", k, 1)?;
        let mut offsets = Vec::with_capacity(experts.len());
        let mut total = 0usize;
        for (&e, &b) in experts.iter().zip(&expert_bytes) {
            lastmile_core::validate::check_at_least("experts per layer", e, 1)?;
            if b == 0 {
                return Err(MoeCacheError::param(
                    "expert_bytes",
                    0.0,
                    "at least 1 byte per expert",
                ));
            }
            if k > e {
                return Err(MoeCacheError::KAboveExperts { k, experts: e });
            }
            offsets.push(total);
            total = total.checked_add(e).ok_or_else(|| {
                MoeCacheError::param("total experts", f64::INFINITY, "a count that fits in usize")
            })?;
        }
        if total > crate::policy::MAX_UNIVERSE {
            return Err(MoeCacheError::param(
                "total experts",
                total as f64,
                "at most 2^32 - 3 experts over all layers",
            ));
        }
        Ok(Self {
            experts,
            expert_bytes,
            offsets,
            k,
        })
    }

    /// `layers` layers of `experts` experts of `expert_bytes` bytes each.
    ///
    /// # Errors
    /// As [`CacheGeometry::new`].
    pub fn uniform(layers: usize, experts: usize, expert_bytes: u64, k: usize) -> Result<Self> {
        Self::new(vec![experts; layers], vec![expert_bytes; layers], k)
    }

    /// The geometry of an expert store, with `k` experts per token.
    ///
    /// # Errors
    /// As [`CacheGeometry::new`].
    pub fn from_store(store: &ExpertStore, k: usize) -> Result<Self> {
        Self::new(store.experts_per_layer(), store.expert_bytes_per_layer(), k)
    }

    /// Number of layers.
    pub fn layers(&self) -> usize {
        self.experts.len()
    }

    /// Experts of `layer` (`None` when out of range).
    pub fn experts(&self, layer: usize) -> Option<usize> {
        self.experts.get(layer).copied()
    }

    /// Bytes of one expert of `layer` (`None` when out of range).
    pub fn expert_bytes(&self, layer: usize) -> Option<u64> {
        self.expert_bytes.get(layer).copied()
    }

    /// Experts per token.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Experts over all layers.
    pub fn total_experts(&self) -> usize {
        self.offsets.last().copied().unwrap_or(0) + self.experts.last().copied().unwrap_or(0)
    }

    /// The id of `(layer, expert)` in a global partition: experts of earlier
    /// layers first.
    /// `None` when `(layer, expert)` is out of range.
    pub fn global_id(&self, layer: usize, expert: usize) -> Option<usize> {
        self.check(layer, expert).ok()?;
        Some(self.offsets[layer] + expert)
    }

    /// Checks `layer` and `expert`.
    ///
    /// # Errors
    /// [`MoeCacheError::LayerOutOfRange`] or [`MoeCacheError::ExpertOutOfRange`].
    pub fn check(&self, layer: usize, expert: usize) -> Result<()> {
        let experts = *self
            .experts
            .get(layer)
            .ok_or(MoeCacheError::LayerOutOfRange {
                layer,
                layers: self.experts.len(),
            })?;
        if expert >= experts {
            return Err(MoeCacheError::ExpertOutOfRange {
                layer,
                expert,
                experts,
            });
        }
        Ok(())
    }
}

/// How much DRAM the cache may fill with experts.
///
/// ```
/// use lastmile_moe_cache::cache::{Budget, CacheGeometry};
/// let g = CacheGeometry::new(vec![8, 8], vec![100, 50], 2)?;
/// assert_eq!(Budget::experts_per_layer(&g, &[3, 4])?, Budget::PerLayer(vec![300, 200]));
/// assert_eq!(Budget::global_experts(&g, 2), Budget::Global(300));
/// # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Budget {
    /// Bytes for each layer (one entry per layer).
    PerLayer(Vec<u64>),
    /// One pool of bytes shared by all layers.
    Global(u64),
}

impl Budget {
    /// A per-layer budget of `slots[l]` experts for layer `l`.
    ///
    /// # Errors
    /// [`lastmile_core::CoreError::LengthMismatch`] unless there is one count per layer.
    pub fn experts_per_layer(geometry: &CacheGeometry, slots: &[usize]) -> Result<Self> {
        check_len("slots", slots.len(), geometry.layers())?;
        Ok(Budget::PerLayer(
            slots
                .iter()
                .zip(&geometry.expert_bytes)
                .map(|(&s, &b)| (s as u64).saturating_mul(b))
                .collect(),
        ))
    }

    /// A per-layer budget of `slots` experts in every layer.
    pub fn uniform_experts(geometry: &CacheGeometry, slots: usize) -> Self {
        Budget::PerLayer(
            geometry
                .expert_bytes
                .iter()
                .map(|&b| (slots as u64).saturating_mul(b))
                .collect(),
        )
    }

    /// A global budget as large as `slots` experts in every layer.
    pub fn global_experts(geometry: &CacheGeometry, slots: usize) -> Self {
        Budget::Global(
            geometry
                .expert_bytes
                .iter()
                .map(|&b| (slots as u64).saturating_mul(b))
                .fold(0u64, u64::saturating_add),
        )
    }

    /// Whether one pool serves every layer.
    pub fn is_global(&self) -> bool {
        matches!(self, Budget::Global(_))
    }

    /// The partition and partition-local id of `(layer, expert)`, which
    /// the caller has checked against `geometry`.
    pub(crate) fn partition_of(
        &self,
        geometry: &CacheGeometry,
        layer: usize,
        expert: usize,
    ) -> (usize, usize) {
        match self {
            Budget::PerLayer(_) => (layer, expert),
            Budget::Global(_) => (0, geometry.offsets[layer] + expert),
        }
    }

    /// Number of partitions (`layers` per layer, 1 global).
    pub fn partitions(&self, geometry: &CacheGeometry) -> usize {
        match self {
            Budget::PerLayer(_) => geometry.layers(),
            Budget::Global(_) => 1,
        }
    }
}

/// Counters of one layer of an [`ExpertCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Demand accesses that found the expert resident.
    pub hits: u64,
    /// Demand accesses that loaded the expert.
    pub misses: u64,
    /// Experts of this layer evicted.
    pub evictions: u64,
    /// Bytes loaded on demand misses.
    pub bytes_loaded: u64,
    /// Experts loaded ahead of use.
    pub prefetch_loads: u64,
    /// Bytes loaded ahead of use.
    pub prefetch_bytes: u64,
    /// Loads that failed (nothing was inserted).
    pub failed_loads: u64,
}

impl LayerStats {
    /// Demand accesses.
    pub fn accesses(&self) -> u64 {
        self.hits + self.misses
    }

    /// Hits per demand access (0 when there were none).
    pub fn hit_rate(&self) -> f64 {
        if self.accesses() == 0 {
            0.0
        } else {
            self.hits as f64 / self.accesses() as f64
        }
    }

    fn add(&mut self, o: &LayerStats) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.evictions += o.evictions;
        self.bytes_loaded += o.bytes_loaded;
        self.prefetch_loads += o.prefetch_loads;
        self.prefetch_bytes += o.prefetch_bytes;
        self.failed_loads += o.failed_loads;
    }
}

/// What one [`ExpertCache::ensure`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Experts found resident.
    pub hits: u64,
    /// Experts loaded.
    pub misses: u64,
    /// Bytes loaded.
    pub bytes_loaded: u64,
    /// Experts evicted to make room.
    pub evictions: u64,
}

/// What one [`ExpertCache::prefetch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefetchReport {
    /// Experts loaded ahead of use.
    pub loaded: u64,
    /// Experts that were already resident.
    pub already_resident: u64,
    /// Experts not loaded because every resident that could make room was pinned.
    pub no_room: u64,
}

/// The identity of one cache partition, given to a policy factory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition index (the layer under a per-layer budget, 0 under a global one).
    pub index: usize,
    /// Ids in the partition.
    pub universe: usize,
    /// Layers it serves.
    pub layers: Vec<usize>,
}

#[derive(Debug)]
struct Partition {
    policy: Box<dyn EvictionPolicy>,
    budget: u64,
    used: u64,
    pinned: Vec<bool>,
    pinned_bytes: u64,
    /// `(layer, expert)` of each id.
    owner: Vec<(u32, u32)>,
}

/// A cache of expert payloads `P` (device tensors for inference, `()` for
/// simulation) under a byte [`Budget`]; see the [module docs](self).
#[derive(Debug)]
pub struct ExpertCache<P> {
    geometry: CacheGeometry,
    budget: Budget,
    partitions: Vec<Partition>,
    resident: Vec<Vec<bool>>,
    payloads: Vec<Vec<Option<P>>>,
    stats: Vec<LayerStats>,
    pinned_list: Vec<(usize, usize)>,
    victims: Vec<usize>,
    /// Each partition's demand accesses (partition-local ids), while recording.
    access_log: Option<Vec<Vec<usize>>>,
}

impl<P> ExpertCache<P> {
    /// A cache with an online `policy` in every partition.
    ///
    /// # Errors
    /// [`MoeCacheError::OracleNeedsFuture`] for Belady (use
    /// [`with_policies`](Self::with_policies)); budget errors as in
    /// [`with_policies`](Self::with_policies).
    pub fn new(geometry: CacheGeometry, budget: Budget, policy: PolicyKind) -> Result<Self> {
        Self::with_policies(geometry, budget, |p| policy.build(p.universe))
    }

    /// A cache whose partition policies come from `make` (e.g. Belady with
    /// each partition's future).
    ///
    /// # Errors
    /// [`lastmile_core::CoreError::LengthMismatch`] for a per-layer budget
    /// without one entry per layer, or a policy of the wrong universe;
    /// [`MoeCacheError::ZeroCapacity`] when a budget holds no expert;
    /// [`MoeCacheError::CapacityBelowK`] when it holds fewer than k experts
    /// of some layer; errors from `make`.
    pub fn with_policies(
        geometry: CacheGeometry,
        budget: Budget,
        mut make: impl FnMut(&PartitionInfo) -> Result<Box<dyn EvictionPolicy>>,
    ) -> Result<Self> {
        let k = geometry.k;
        let layers = geometry.layers();
        let mut infos = Vec::new();
        let mut budgets = Vec::new();
        match &budget {
            Budget::PerLayer(b) => {
                check_len("per-layer budget", b.len(), layers)?;
                for (l, &bytes) in b.iter().enumerate() {
                    let slots = bytes / geometry.expert_bytes[l];
                    if slots == 0 {
                        return Err(MoeCacheError::ZeroCapacity {
                            layer: Some(l),
                            expert_bytes: geometry.expert_bytes[l],
                        });
                    }
                    if (slots as usize) < k {
                        return Err(MoeCacheError::CapacityBelowK {
                            layer: Some(l),
                            capacity: slots as usize,
                            k,
                        });
                    }
                    infos.push(PartitionInfo {
                        index: l,
                        universe: geometry.experts[l],
                        layers: vec![l],
                    });
                    budgets.push(bytes);
                }
            }
            Budget::Global(bytes) => {
                let smallest = geometry.expert_bytes.iter().copied().min().unwrap_or(1);
                if bytes / smallest == 0 {
                    return Err(MoeCacheError::ZeroCapacity {
                        layer: None,
                        expert_bytes: smallest,
                    });
                }
                let largest = geometry.expert_bytes.iter().copied().max().unwrap_or(1);
                let slots = (bytes / largest) as usize;
                if slots < k {
                    return Err(MoeCacheError::CapacityBelowK {
                        layer: None,
                        capacity: slots,
                        k,
                    });
                }
                infos.push(PartitionInfo {
                    index: 0,
                    universe: geometry.total_experts(),
                    layers: (0..layers).collect(),
                });
                budgets.push(*bytes);
            }
        }
        let mut partitions = Vec::with_capacity(infos.len());
        for (info, budget_bytes) in infos.iter().zip(budgets) {
            let policy = make(info)?;
            check_len("policy universe", policy.universe(), info.universe)?;
            let mut owner = Vec::with_capacity(info.universe);
            for &l in &info.layers {
                for e in 0..geometry.experts[l] {
                    owner.push((l as u32, e as u32));
                }
            }
            partitions.push(Partition {
                policy,
                budget: budget_bytes,
                used: 0,
                pinned: vec![false; info.universe],
                pinned_bytes: 0,
                owner,
            });
        }
        let resident = geometry.experts.iter().map(|&e| vec![false; e]).collect();
        let payloads = geometry
            .experts
            .iter()
            .map(|&e| (0..e).map(|_| None).collect())
            .collect();
        Ok(Self {
            stats: vec![LayerStats::default(); layers],
            geometry,
            budget,
            partitions,
            resident,
            payloads,
            pinned_list: Vec::new(),
            victims: Vec::new(),
            access_log: None,
        })
    }

    /// The geometry.
    pub fn geometry(&self) -> &CacheGeometry {
        &self.geometry
    }

    /// The budget.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Name of the eviction policy (of the first partition).
    pub fn policy_name(&self) -> &'static str {
        self.partitions.first().map_or("none", |p| p.policy.name())
    }

    fn route(&self, layer: usize, expert: usize) -> (usize, usize) {
        self.budget.partition_of(&self.geometry, layer, expert)
    }

    /// Whether `(layer, expert)` is resident (false when out of range).
    pub fn is_cached(&self, layer: usize, expert: usize) -> bool {
        self.resident
            .get(layer)
            .and_then(|r| r.get(expert))
            .copied()
            .unwrap_or(false)
    }

    /// Which experts of `layer` are resident, indexed by expert.
    ///
    /// # Errors
    /// [`MoeCacheError::LayerOutOfRange`].
    pub fn cached(&self, layer: usize) -> Result<&[bool]> {
        self.resident
            .get(layer)
            .map(Vec::as_slice)
            .ok_or(MoeCacheError::LayerOutOfRange {
                layer,
                layers: self.geometry.layers(),
            })
    }

    /// The payload of a resident expert.
    pub fn get(&self, layer: usize, expert: usize) -> Option<&P> {
        self.payloads.get(layer)?.get(expert)?.as_ref()
    }

    /// Number of resident experts of `layer` (0 when out of range).
    pub fn resident_count(&self, layer: usize) -> usize {
        self.resident
            .get(layer)
            .map_or(0, |r| r.iter().filter(|&&b| b).count())
    }

    /// Bytes of resident experts over all layers.
    pub fn resident_bytes(&self) -> u64 {
        self.partitions.iter().map(|p| p.used).sum()
    }

    /// Bytes of the budget over all partitions.
    pub fn budget_bytes(&self) -> u64 {
        self.partitions.iter().map(|p| p.budget).sum()
    }

    /// `(used, budget)` bytes of each partition.
    pub fn partition_usage(&self) -> Vec<(u64, u64)> {
        self.partitions.iter().map(|p| (p.used, p.budget)).collect()
    }

    /// Counters of `layer` (all zero when out of range).
    pub fn stats(&self, layer: usize) -> LayerStats {
        self.stats.get(layer).copied().unwrap_or_default()
    }

    /// Counters summed over layers.
    pub fn total_stats(&self) -> LayerStats {
        let mut t = LayerStats::default();
        for s in &self.stats {
            t.add(s);
        }
        t
    }

    /// Zeroes the counters (residents stay).
    pub fn reset_stats(&mut self) {
        self.stats.fill(LayerStats::default());
    }

    /// Starts (`true`) or stops (`false`) recording every demand access,
    /// hit or miss, as the partition-local id its policy sees, in order.
    /// Starting clears any earlier log. Prefetches are not accesses and are
    /// not recorded.
    ///
    /// The log of a run whose accesses do not depend on the cache (normal
    /// top-k routing, or Cache-Prior with λ = 0) is the future that a
    /// [`Belady`](crate::policy::Belady) policy needs to serve the *same*
    /// run live: pass it to [`with_policies`](Self::with_policies) through
    /// [`PolicyKind::build_with_future`], one sequence per partition.
    ///
    /// ```
    /// use lastmile_moe_cache::cache::{Budget, CacheGeometry, ExpertCache};
    /// use lastmile_moe_cache::policy::PolicyKind;
    /// let geometry = CacheGeometry::uniform(1, 6, 1, 2)?;
    /// let steps = [[0, 1], [2, 3], [0, 4], [1, 2], [0, 5], [3, 1]];
    /// let run = |cache: &mut ExpertCache<()>| -> lastmile_moe_cache::Result<u64> {
    ///     for s in &steps {
    ///         cache.ensure(0, s, |_| Ok(()))?;
    ///         cache.end_step()?;
    ///     }
    ///     Ok(cache.total_stats().hits)
    /// };
    /// let mut lru = ExpertCache::new(geometry.clone(), Budget::PerLayer(vec![3]), PolicyKind::Lru)?;
    /// lru.record_accesses(true);
    /// let lru_hits = run(&mut lru)?;
    /// let future = lru.take_access_log();
    /// assert_eq!(future[0][..4], [0, 1, 2, 3]);
    /// let opt = PolicyKind::Belady { lookahead: None };
    /// let mut belady: ExpertCache<()> = ExpertCache::with_policies(geometry, Budget::PerLayer(vec![3]), |p| {
    ///     opt.build_with_future(p.universe, &future[p.index])
    /// })?;
    /// assert!(run(&mut belady)? >= lru_hits);
    /// # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
    /// ```
    pub fn record_accesses(&mut self, on: bool) {
        self.access_log = on.then(|| vec![Vec::new(); self.partitions.len()]);
    }

    /// Whether demand accesses are being recorded.
    pub fn is_recording(&self) -> bool {
        self.access_log.is_some()
    }

    /// The demand accesses recorded since [`record_accesses`](Self::record_accesses)
    /// was turned on, one sequence per partition (index = [`PartitionInfo::index`]);
    /// recording goes on with an empty log. Empty sequences when not recording.
    pub fn take_access_log(&mut self) -> Vec<Vec<usize>> {
        match &mut self.access_log {
            Some(log) => log.iter_mut().map(std::mem::take).collect(),
            None => vec![Vec::new(); self.partitions.len()],
        }
    }

    /// Evicts every expert and resets the policies' history. Counters stay.
    pub fn clear(&mut self) {
        self.unpin_all();
        for p in &mut self.partitions {
            p.policy.reset();
            p.used = 0;
        }
        for r in &mut self.resident {
            r.fill(false);
        }
        for ps in &mut self.payloads {
            for slot in ps.iter_mut() {
                *slot = None;
            }
        }
    }

    #[inline]
    fn log_access(&mut self, p: usize, id: usize) {
        if let Some(log) = &mut self.access_log {
            log[p].push(id);
        }
    }

    /// Releases every pin; O(pinned), only the partitions the step touched.
    fn unpin_all(&mut self) {
        for &(p, id) in &self.pinned_list {
            let part = &mut self.partitions[p];
            part.pinned[id] = false;
            part.pinned_bytes = 0;
        }
        self.pinned_list.clear();
    }

    fn pin(&mut self, p: usize, id: usize, bytes: u64) {
        let part = &mut self.partitions[p];
        if !part.pinned[id] {
            part.pinned[id] = true;
            part.pinned_bytes += bytes;
            self.pinned_list.push((p, id));
        }
    }

    /// Chooses victims in partition `p` so that `bytes` more fit; `None`
    /// (and no change) when pinned residents make that impossible.
    fn plan_victims(&mut self, p: usize, bytes: u64) -> bool {
        self.victims.clear();
        let part = &mut self.partitions[p];
        let mut used = part.used;
        let mut ok = true;
        while used + bytes > part.budget {
            match part.policy.victim(&part.pinned) {
                Some(v) => {
                    // Mark as pinned so the next call picks another victim.
                    part.pinned[v] = true;
                    self.victims.push(v);
                    let (l, _) = part.owner[v];
                    used -= self.geometry.expert_bytes[l as usize];
                }
                None => {
                    ok = false;
                    break;
                }
            }
        }
        for &v in &self.victims {
            part.pinned[v] = false;
        }
        ok
    }

    fn evict_planned(&mut self, p: usize) {
        for i in 0..self.victims.len() {
            let v = self.victims[i];
            let part = &mut self.partitions[p];
            let (l, e) = part.owner[v];
            let (l, e) = (l as usize, e as usize);
            part.policy.on_evict(v);
            part.used -= self.geometry.expert_bytes[l];
            self.resident[l][e] = false;
            self.payloads[l][e] = None;
            self.stats[l].evictions += 1;
        }
    }

    /// One demand access of `(layer, expert)` in the current step: a hit, or
    /// a load through `load` and an insertion (evicting unpinned residents
    /// as the policy chooses). The expert is pinned until [`end_step`](Self::end_step).
    /// Returns whether it was a hit.
    ///
    /// # Errors
    /// Index errors; [`MoeCacheError::StepExceedsCapacity`] when pinned
    /// experts leave no room (nothing changed); the loader's error (nothing
    /// changed).
    pub fn access(
        &mut self,
        layer: usize,
        expert: usize,
        load: impl FnOnce() -> Result<P>,
    ) -> Result<bool> {
        self.geometry.check(layer, expert)?;
        let (p, id) = self.route(layer, expert);
        let bytes = self.geometry.expert_bytes[layer];
        if self.resident[layer][expert] {
            self.log_access(p, id);
            self.partitions[p].policy.on_hit(id);
            self.stats[layer].hits += 1;
            self.pin(p, id, bytes);
            return Ok(true);
        }
        if !self.plan_victims(p, bytes) {
            let part = &self.partitions[p];
            return Err(MoeCacheError::StepExceedsCapacity {
                layer,
                needed_bytes: part.pinned_bytes + bytes,
                budget_bytes: part.budget,
            });
        }
        let payload = match load() {
            Ok(payload) => payload,
            Err(e) => {
                self.stats[layer].failed_loads += 1;
                return Err(e);
            }
        };
        self.evict_planned(p);
        self.log_access(p, id);
        let part = &mut self.partitions[p];
        part.used += bytes;
        part.policy.on_insert(id);
        self.resident[layer][expert] = true;
        self.payloads[layer][expert] = Some(payload);
        let s = &mut self.stats[layer];
        s.misses += 1;
        s.bytes_loaded += bytes;
        self.pin(p, id, bytes);
        Ok(false)
    }

    /// Makes the distinct `experts` of `layer` resident together for the
    /// current step, accessing each once in the given order (one policy
    /// access per expert per step, however many of the step's tokens use
    /// it) and pinning them until [`end_step`](Self::end_step). The step's
    /// experts that are already resident are pinned before its first miss,
    /// so no miss evicts an expert the same step uses later.
    ///
    /// `load(expert)` is called for each miss.
    ///
    /// # Errors
    /// Index errors; [`MoeCacheError::DuplicateExpert`];
    /// [`MoeCacheError::StepExceedsCapacity`] when the experts plus those
    /// already pinned do not fit in the layer's budget (checked first:
    /// nothing changed); a loader error (the experts accessed before it stay
    /// resident and pinned; the cache is consistent).
    pub fn ensure(
        &mut self,
        layer: usize,
        experts: &[usize],
        mut load: impl FnMut(usize) -> Result<P>,
    ) -> Result<StepReport> {
        for (i, &e) in experts.iter().enumerate() {
            self.geometry.check(layer, e)?;
            if experts[..i].contains(&e) {
                return Err(MoeCacheError::DuplicateExpert { layer, expert: e });
            }
        }
        let bytes = self.geometry.expert_bytes[layer];
        let mut needed = 0u64;
        let mut p_of_layer = 0;
        for &e in experts {
            let (p, id) = self.route(layer, e);
            p_of_layer = p;
            if !self.partitions[p].pinned[id] {
                needed += bytes;
            }
        }
        let part = &self.partitions[p_of_layer];
        if part.pinned_bytes + needed > part.budget {
            return Err(MoeCacheError::StepExceedsCapacity {
                layer,
                needed_bytes: part.pinned_bytes + needed,
                budget_bytes: part.budget,
            });
        }
        // Pin first, access in order: the policy still sees the accesses in
        // the given order (Belady's future stays the routing's order).
        for &e in experts {
            if self.resident[layer][e] {
                let (p, id) = self.route(layer, e);
                self.pin(p, id, bytes);
            }
        }
        let mut report = StepReport::default();
        for &e in experts {
            let before = self.stats[layer].evictions;
            let hit = self.access(layer, e, || load(e))?;
            if hit {
                report.hits += 1;
            } else {
                report.misses += 1;
                report.bytes_loaded += bytes;
            }
            report.evictions += self.stats[layer].evictions - before;
        }
        Ok(report)
    }

    /// Ends the current step: unpins every expert, then asks each policy
    /// whether it was driven consistently.
    ///
    /// # Errors
    /// [`MoeCacheError::OracleMismatch`] when a Belady policy saw accesses
    /// other than its future sequence (the cache itself stays consistent).
    pub fn end_step(&mut self) -> Result<()> {
        // Only demand accesses can put a policy off course, and every demand
        // access pins: checking the pinned partitions is enough.
        let mut result = Ok(());
        let mut last = usize::MAX;
        for &(p, _) in &self.pinned_list {
            if p != last && result.is_ok() {
                result = self.partitions[p].policy.check();
            }
            last = p;
        }
        self.unpin_all();
        result
    }

    /// Loads the experts of `layer` that are not resident ahead of use
    /// (e.g. the next layer's predicted experts), evicting only unpinned
    /// residents and never an expert this call loaded. An expert with no
    /// evictable resident to replace is skipped and counted in
    /// [`PrefetchReport::no_room`]. Prefetched experts are not pinned
    /// afterwards and not counted as accesses; a later demand access to one
    /// is a hit.
    ///
    /// # Errors
    /// Index errors; a loader error (experts prefetched before it stay).
    pub fn prefetch(
        &mut self,
        layer: usize,
        experts: &[usize],
        mut load: impl FnMut(usize) -> Result<P>,
    ) -> Result<PrefetchReport> {
        for &e in experts {
            self.geometry.check(layer, e)?;
        }
        let bytes = self.geometry.expert_bytes[layer];
        let mut report = PrefetchReport::default();
        // Experts loaded by this call are protected from its later loads.
        let mut protected: Vec<(usize, usize)> = Vec::new();
        let mut result = Ok(());
        for &e in experts {
            if self.resident[layer][e] {
                report.already_resident += 1;
                continue;
            }
            let (p, id) = self.route(layer, e);
            if !self.plan_victims(p, bytes) {
                report.no_room += 1;
                continue;
            }
            let payload = match load(e) {
                Ok(payload) => payload,
                Err(err) => {
                    self.stats[layer].failed_loads += 1;
                    result = Err(err);
                    break;
                }
            };
            self.evict_planned(p);
            let part = &mut self.partitions[p];
            part.used += bytes;
            part.policy.on_prefetch(id);
            if !part.pinned[id] {
                part.pinned[id] = true;
                protected.push((p, id));
            }
            self.resident[layer][e] = true;
            self.payloads[layer][e] = Some(payload);
            let s = &mut self.stats[layer];
            s.prefetch_loads += 1;
            s.prefetch_bytes += bytes;
            report.loaded += 1;
        }
        for (p, id) in protected {
            self.partitions[p].pinned[id] = false;
        }
        result?;
        Ok(report)
    }

    /// Checks the cache's internal bookkeeping: resident bytes within every
    /// budget and equal to the resident experts' sizes, payloads present
    /// exactly for resident experts. For tests and debugging.
    ///
    /// # Errors
    /// [`MoeCacheError::CorruptFile`] (`what = "expert cache"`) describing
    /// the first inconsistency.
    pub fn check_consistency(&self) -> Result<()> {
        let bad = |reason: String| MoeCacheError::CorruptFile {
            what: "expert cache",
            reason,
        };
        let mut used = vec![0u64; self.partitions.len()];
        for (l, r) in self.resident.iter().enumerate() {
            for (e, &res) in r.iter().enumerate() {
                if res != self.payloads[l][e].is_some() {
                    return Err(bad(format!(
                        "layer {l}, expert {e}: resident flag {res} but payload present {}",
                        !res
                    )));
                }
                if res {
                    used[self.route(l, e).0] += self.geometry.expert_bytes[l];
                }
            }
        }
        for (i, (p, &u)) in self.partitions.iter().zip(&used).enumerate() {
            if p.used != u {
                return Err(bad(format!(
                    "partition {i}: {} bytes accounted, {u} resident",
                    p.used
                )));
            }
            if p.used > p.budget {
                return Err(bad(format!(
                    "partition {i}: {} bytes over a budget of {}",
                    p.used, p.budget
                )));
            }
        }
        if !self.pinned_list.is_empty() {
            return Err(bad(format!(
                "{} experts still pinned outside a step",
                self.pinned_list.len()
            )));
        }
        Ok(())
    }
}

/// Misses of one layer as a function of its capacity in experts, from
/// replaying a trace ([`crate::trace::miss_curves`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissCurve {
    /// The layer.
    pub layer: usize,
    /// The capacity of `misses[0]` (k).
    pub min_capacity: usize,
    /// `misses[i]`: misses at capacity `min_capacity + i`, up to all experts.
    pub misses: Vec<u64>,
}

impl MissCurve {
    /// Misses at `capacity` (clamped to the curve's range).
    pub fn at(&self, capacity: usize) -> u64 {
        let i = capacity.saturating_sub(self.min_capacity);
        self.misses
            .get(i)
            .or(self.misses.last())
            .copied()
            .unwrap_or(0)
    }

    /// Largest capacity on the curve.
    pub fn max_capacity(&self) -> usize {
        self.min_capacity + self.misses.len().saturating_sub(1)
    }
}

/// A per-layer split of a total byte budget, from [`allocate_budget`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetAllocation {
    /// Experts cached in each layer.
    pub slots: Vec<usize>,
    /// Bytes those slots take (≤ the total).
    pub bytes: u64,
    /// Misses the curves predict at these capacities.
    pub predicted_misses: u64,
}

impl BudgetAllocation {
    /// The allocation as a per-layer [`Budget`].
    ///
    /// # Errors
    /// As [`Budget::experts_per_layer`].
    pub fn budget(&self, geometry: &CacheGeometry) -> Result<Budget> {
        Budget::experts_per_layer(geometry, &self.slots)
    }
}

/// Splits `total_bytes` over layers where the measured miss curves gain
/// most.
///
/// Every layer starts at its curve's minimum capacity (k). Then, while
/// budget remains, the layer and increment `Δ ≥ 1` with the largest miss
/// reduction per byte, `(m_l(c_l) − m_l(c_l + Δ)) / (Δ · bytes_l)`, receive
/// `Δ` more slots. Looking beyond one slot ahead (the upper-hull step of
/// the curve) keeps the greedy from stalling on a flat stretch before a
/// drop; on convex curves it is the classic marginal-gain greedy, optimal
/// for separable convex costs. Budget that buys no measured reduction is
/// left unassigned (`bytes < total_bytes`).
///
/// # Errors
/// [`lastmile_core::CoreError::LengthMismatch`] unless there is one byte
/// size per curve; [`MoeCacheError::BudgetTooSmall`] when the minimum
/// capacities do not fit.
///
/// ```
/// use lastmile_moe_cache::cache::{MissCurve, allocate_budget};
/// // Layer 0 gains nothing from capacity; layer 1 gains a lot.
/// let curves = vec![
///     MissCurve { layer: 0, min_capacity: 1, misses: vec![10, 10, 10, 10] },
///     MissCurve { layer: 1, min_capacity: 1, misses: vec![90, 40, 10, 5] },
/// ];
/// let a = allocate_budget(&curves, &[1, 1], 5)?;
/// assert_eq!(a.slots, vec![1, 4]);
/// assert_eq!(a.predicted_misses, 15);
/// # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
/// ```
pub fn allocate_budget(
    curves: &[MissCurve],
    expert_bytes: &[u64],
    total_bytes: u64,
) -> Result<BudgetAllocation> {
    check_len("expert_bytes", expert_bytes.len(), curves.len())?;
    let mut slots: Vec<usize> = curves.iter().map(|c| c.min_capacity).collect();
    let needed = slots
        .iter()
        .zip(expert_bytes)
        .map(|(&s, &b)| (s as u64).saturating_mul(b))
        .fold(0u64, u64::saturating_add);
    if needed > total_bytes {
        return Err(MoeCacheError::BudgetTooSmall {
            budget: total_bytes,
            needed,
        });
    }
    let mut left = total_bytes - needed;
    loop {
        // (rate, layer, delta): best miss reduction per byte that still fits.
        let mut best: Option<(f64, usize, usize)> = None;
        for (l, c) in curves.iter().enumerate() {
            let b = expert_bytes[l].max(1);
            let now = c.at(slots[l]);
            let room = (left / b) as usize;
            let top = c.max_capacity().min(slots[l].saturating_add(room));
            for cap in slots[l] + 1..=top {
                let gain = now.saturating_sub(c.at(cap));
                if gain == 0 {
                    continue;
                }
                let delta = cap - slots[l];
                let rate = gain as f64 / (delta as f64 * b as f64);
                if best.is_none_or(|(r, _, _)| rate > r) {
                    best = Some((rate, l, delta));
                }
            }
        }
        match best {
            Some((_, l, delta)) => {
                slots[l] += delta;
                left -= delta as u64 * expert_bytes[l];
            }
            None => break,
        }
    }
    let bytes = total_bytes - left;
    let predicted_misses = curves.iter().zip(&slots).map(|(c, &s)| c.at(s)).sum();
    Ok(BudgetAllocation {
        slots,
        bytes,
        predicted_misses,
    })
}
