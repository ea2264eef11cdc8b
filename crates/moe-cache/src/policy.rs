//! Eviction policies behind one trait: LRU, LFU, LRFU (LFU with decay),
//! FIFO, seeded Random, and Belady/OPT with full or bounded lookahead.
//!
//! A policy tracks the resident ids of one cache partition (the experts of
//! one layer, or of every layer under a global budget), numbered densely
//! `0..universe`. The cache tells it about every event — a demand hit, a
//! demand miss that inserted the id, a prefetch that inserted it, an
//! eviction — and asks it for a victim among the residents that are not
//! pinned by the current step.
//!
//! Data structures (all arrays allocated once at construction; no per-access
//! allocation, no hashing — expert ids are dense):
//!
//! | policy | structure | hit / insert / evict | victim |
//! |---|---|---|---|
//! | [`Lru`] ([`ListPolicy`]) | intrusive doubly-linked list over ids | O(1) | O(1 + p) |
//! | [`Fifo`] | the same list, not reordered on hits | O(1) | O(1 + p) |
//! | [`Lfu`] | indexed binary heap on (count, last touch) | O(log n) | O(1 + p) |
//! | [`Lrfu`] | indexed binary heap on the decayed CRF | O(log n) | O(1 + p) |
//! | [`RandomPolicy`] | dense resident array with positions | O(1) | O(1) expected |
//! | [`Belady`] | indexed heap on next use, precomputed next-use links | O(log n) | O(1 + p) |
//!
//! `p` is the number of pinned residents skipped (at most the experts of one
//! step). LFU and LRFU are *in-cache* variants: an evicted expert's history is
//! forgotten.
//!
//! ```
//! use lastmile_moe_cache::policy::{EvictionPolicy, Lru};
//! let mut lru = Lru::new(4)?;
//! for id in [0, 1, 2] {
//!     lru.on_insert(id);
//! }
//! lru.on_hit(0);
//! let pinned = [false; 4];
//! assert_eq!(lru.victim(&pinned), Some(1)); // least recently used
//! # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
//! ```

use std::fmt;

use lastmile_core::validate::check_in_range;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::error::{MoeCacheError, Result};
use crate::heap::IndexedHeap;

/// Largest id universe a policy accepts (ids are stored as `u32`).
pub const MAX_UNIVERSE: usize = (u32::MAX - 2) as usize;

/// An eviction policy for one cache partition of dense ids `0..universe`.
///
/// The cache calls exactly one of [`on_hit`](Self::on_hit) or
/// [`on_insert`](Self::on_insert) per demand access, in access order;
/// [`on_prefetch`](Self::on_prefetch) when an id is loaded ahead of use (not
/// an access); [`on_evict`](Self::on_evict) when an id leaves. `victim` never
/// changes which ids are resident: the cache evicts and then calls `on_evict`.
///
/// # Panics
/// The methods sit on the per-access hot path and do not re-check their
/// arguments: an `id >= universe()`, or a `pinned` slice shorter than the
/// universe, panics on indexing. [`ExpertCache`](crate::cache::ExpertCache)
/// validates every id before it reaches a policy.
///
/// # Examples
/// ```
/// use lastmile_moe_cache::policy::{EvictionPolicy, PolicyKind};
/// let mut p = PolicyKind::Fifo.build(3)?;
/// p.on_insert(2);
/// p.on_insert(0);
/// p.on_hit(2); // FIFO ignores hits
/// assert_eq!(p.victim(&[false; 3]), Some(2));
/// assert_eq!(p.victim(&[false, false, true]), Some(0)); // 2 is pinned
/// # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
/// ```
pub trait EvictionPolicy: Send + fmt::Debug {
    /// Short name for reports (`"lru"`, `"belady"`, ...).
    fn name(&self) -> &'static str;
    /// Number of ids this policy tracks.
    fn universe(&self) -> usize;
    /// A demand access found resident `id`.
    fn on_hit(&mut self, id: usize);
    /// A demand access missed `id`, which was loaded and is now resident.
    fn on_insert(&mut self, id: usize);
    /// `id` was loaded ahead of use and is now resident (not an access).
    fn on_prefetch(&mut self, id: usize);
    /// `id` was evicted.
    fn on_evict(&mut self, id: usize);
    /// The resident id to evict next among those with `pinned[id] == false`,
    /// or `None` when every resident is pinned. `pinned.len()` is the universe.
    fn victim(&mut self, pinned: &[bool]) -> Option<usize>;
    /// Forgets every resident and all history.
    fn reset(&mut self);
    /// Errors the policy detected while being driven (only Belady/OPT can:
    /// the accesses departed from the future it was given).
    ///
    /// # Errors
    /// [`MoeCacheError::OracleMismatch`] for Belady driven off its sequence.
    fn check(&self) -> Result<()> {
        Ok(())
    }
}

fn check_universe(universe: usize) -> Result<usize> {
    if universe == 0 || universe > MAX_UNIVERSE {
        return Err(MoeCacheError::param(
            "universe",
            universe as f64,
            &format!("between 1 and {MAX_UNIVERSE} ids"),
        ));
    }
    Ok(universe)
}

// ------------------------------------------------------------------ lists

const NIL: u32 = u32::MAX;

/// Intrusive doubly-linked list over ids `0..n` with a sentinel at `n`:
/// `next` points towards the tail (older), `prev` towards the head (newer).
#[derive(Debug, Clone)]
struct IdList {
    prev: Vec<u32>,
    next: Vec<u32>,
    sentinel: u32,
}

impl IdList {
    fn new(n: usize) -> Self {
        let s = n as u32;
        let mut prev = vec![NIL; n + 1];
        let mut next = vec![NIL; n + 1];
        prev[n] = s;
        next[n] = s;
        Self {
            prev,
            next,
            sentinel: s,
        }
    }

    fn contains(&self, id: usize) -> bool {
        self.next[id] != NIL
    }

    fn push_front(&mut self, id: usize) {
        if self.contains(id) {
            self.unlink(id);
        }
        let s = self.sentinel as usize;
        let first = self.next[s];
        self.next[id] = first;
        self.prev[id] = s as u32;
        self.prev[first as usize] = id as u32;
        self.next[s] = id as u32;
    }

    fn unlink(&mut self, id: usize) {
        if !self.contains(id) {
            return;
        }
        let (p, n) = (self.prev[id], self.next[id]);
        self.next[p as usize] = n;
        self.prev[n as usize] = p;
        self.prev[id] = NIL;
        self.next[id] = NIL;
    }

    /// The oldest unpinned id, walking from the tail.
    fn oldest_unpinned(&self, pinned: &[bool]) -> Option<usize> {
        let s = self.sentinel;
        let mut at = self.prev[s as usize];
        while at != s {
            if !pinned[at as usize] {
                return Some(at as usize);
            }
            at = self.prev[at as usize];
        }
        None
    }

    fn clear(&mut self) {
        self.prev.fill(NIL);
        self.next.fill(NIL);
        let s = self.sentinel as usize;
        self.prev[s] = s as u32;
        self.next[s] = s as u32;
    }
}

/// A recency-list policy: the residents in one intrusive list, newest at
/// the front, the victim the oldest unpinned one. With `REORDER_ON_HIT`
/// a hit moves the expert to the front ([`Lru`]); without, the list keeps
/// insertion order ([`Fifo`]). Insertions and prefetches go to the front.
#[derive(Debug, Clone)]
pub struct ListPolicy<const REORDER_ON_HIT: bool> {
    list: IdList,
}

/// Least recently used: evicts the resident whose last access is oldest.
/// Prefetched experts count as most recently used.
///
/// ```
/// use lastmile_moe_cache::policy::{EvictionPolicy, Lru};
/// let mut lru = Lru::new(3)?;
/// lru.on_insert(0);
/// lru.on_insert(1);
/// lru.on_hit(0);
/// assert_eq!(lru.victim(&[false; 3]), Some(1));
/// # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
/// ```
pub type Lru = ListPolicy<true>;

/// First in, first out: evicts the resident inserted longest ago; hits do
/// not reorder.
///
/// ```
/// use lastmile_moe_cache::policy::{EvictionPolicy, Fifo};
/// let mut fifo = Fifo::new(3)?;
/// fifo.on_insert(0);
/// fifo.on_insert(1);
/// fifo.on_hit(0);
/// assert_eq!(fifo.victim(&[false; 3]), Some(0));
/// # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
/// ```
pub type Fifo = ListPolicy<false>;

impl<const REORDER_ON_HIT: bool> ListPolicy<REORDER_ON_HIT> {
    /// An empty policy over ids `0..universe`.
    ///
    /// # Errors
    /// [`lastmile_core::CoreError::OutOfRange`] for a universe of 0 or above [`MAX_UNIVERSE`].
    pub fn new(universe: usize) -> Result<Self> {
        Ok(Self {
            list: IdList::new(check_universe(universe)?),
        })
    }
}

impl<const REORDER_ON_HIT: bool> EvictionPolicy for ListPolicy<REORDER_ON_HIT> {
    fn name(&self) -> &'static str {
        if REORDER_ON_HIT { "lru" } else { "fifo" }
    }
    fn universe(&self) -> usize {
        self.list.sentinel as usize
    }
    #[inline]
    fn on_hit(&mut self, id: usize) {
        if REORDER_ON_HIT {
            self.list.push_front(id);
        }
    }
    #[inline]
    fn on_insert(&mut self, id: usize) {
        self.list.push_front(id);
    }
    fn on_prefetch(&mut self, id: usize) {
        self.list.push_front(id);
    }
    #[inline]
    fn on_evict(&mut self, id: usize) {
        self.list.unlink(id);
    }
    #[inline]
    fn victim(&mut self, pinned: &[bool]) -> Option<usize> {
        self.list.oldest_unpinned(pinned)
    }
    fn reset(&mut self) {
        self.list.clear();
    }
}

// ------------------------------------------------------------------ LFU

/// Least frequently used (in-cache): evicts the resident with the fewest
/// accesses since it was loaded, the least recently touched among ties. A
/// prefetched expert starts at 0 accesses.
///
/// ```
/// use lastmile_moe_cache::policy::{EvictionPolicy, Lfu};
/// let mut lfu = Lfu::new(3)?;
/// lfu.on_insert(0);
/// lfu.on_insert(1);
/// lfu.on_hit(0);
/// lfu.on_insert(2);
/// assert_eq!(lfu.victim(&[false; 3]), Some(1)); // count 1, older than 2
/// # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Lfu {
    heap: IndexedHeap<(u64, u64)>,
    seq: u64,
    universe: usize,
}

impl Lfu {
    /// An empty LFU over ids `0..universe`.
    ///
    /// # Errors
    /// As [`Lru::new`].
    pub fn new(universe: usize) -> Result<Self> {
        let universe = check_universe(universe)?;
        Ok(Self {
            heap: IndexedHeap::new(universe),
            seq: 0,
            universe,
        })
    }

    fn touch(&mut self, id: usize, count: u64) {
        self.seq += 1;
        self.heap.set(id, (count, self.seq));
    }
}

impl EvictionPolicy for Lfu {
    fn name(&self) -> &'static str {
        "lfu"
    }
    fn universe(&self) -> usize {
        self.universe
    }
    #[inline]
    fn on_hit(&mut self, id: usize) {
        let count = if self.heap.contains(id) {
            self.heap.key(id).0 + 1
        } else {
            1
        };
        self.touch(id, count);
    }
    #[inline]
    fn on_insert(&mut self, id: usize) {
        self.touch(id, 1);
    }
    fn on_prefetch(&mut self, id: usize) {
        self.touch(id, 0);
    }
    #[inline]
    fn on_evict(&mut self, id: usize) {
        self.heap.remove(id);
    }
    #[inline]
    fn victim(&mut self, pinned: &[bool]) -> Option<usize> {
        self.heap.min_unpinned(pinned)
    }
    fn reset(&mut self) {
        self.heap.clear();
        self.seq = 0;
    }
}

/// LRFU, LFU with exponential decay (Lee et al., "LRFU: A Spectrum of
/// Policies that Subsumes the Least Recently Used and Least Frequently Used
/// Policies", IEEE Trans. Computers 50(12), 2001).
///
/// Each access at time `tᵢ` contributes `F(t − tᵢ) = (1/2)^{λ(t − tᵢ)}` to
/// an expert's *combined recency and frequency* `CRF(t) = Σᵢ F(t − tᵢ)`; the
/// victim has the smallest CRF. Time counts demand accesses to the
/// partition. The recurrence `CRF ← 1 + 2^{−λΔt}·CRF` (their Eq. 2 for
/// this `F`) means only the last access time and the CRF then are stored;
/// comparing `log₂ CRF(t_last) + λ·t_last` orders experts as `CRF(now)` does
/// (the common factor `2^{−λ·now}` cancels), so keys never need refreshing.
///
/// `λ ∈ [0, 1]`: `λ = 0` is LFU (CRF = access count), `λ = 1` is LRU (the
/// newest access outweighs all older ones), values between trade recency
/// for frequency; `λ ≈ 0.01–0.1` keeps frequency dominant with a memory of
/// about `1/λ` accesses. A prefetched expert starts with CRF 0.
///
/// ```
/// use lastmile_moe_cache::policy::{EvictionPolicy, Lrfu};
/// let mut p = Lrfu::new(3, 0.5)?;
/// p.on_insert(0);
/// p.on_hit(0);
/// p.on_insert(1);
/// p.on_insert(2);
/// assert_eq!(p.victim(&[false; 3]), Some(1));
/// assert!(Lrfu::new(3, 1.5).is_err());
/// # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Lrfu {
    heap: IndexedHeap<(f64, u64)>,
    log2_crf: Vec<f64>,
    last: Vec<u64>,
    lambda: f64,
    time: u64,
    seq: u64,
    universe: usize,
}

impl Lrfu {
    /// An empty LRFU over ids `0..universe` with decay `lambda ∈ [0, 1]`.
    ///
    /// # Errors
    /// [`lastmile_core::CoreError::OutOfRange`] for `lambda` outside `[0, 1]`
    /// or a bad universe.
    pub fn new(universe: usize, lambda: f64) -> Result<Self> {
        let universe = check_universe(universe)?;
        let lambda = check_in_range("lambda", lambda, 0.0, 1.0)?;
        Ok(Self {
            heap: IndexedHeap::new(universe),
            log2_crf: vec![f64::NEG_INFINITY; universe],
            last: vec![0; universe],
            lambda,
            time: 0,
            seq: 0,
            universe,
        })
    }

    /// The decay parameter λ.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }

    fn access(&mut self, id: usize, fresh: bool) {
        self.time += 1;
        self.seq += 1;
        let log2_crf = if fresh || !self.heap.contains(id) {
            0.0
        } else {
            // log2(1 + 2^(log2 CRF − λΔt)), Δt ≥ 1.
            let dt = (self.time - self.last[id]) as f64;
            (self.log2_crf[id] - self.lambda * dt).exp2().ln_1p() / std::f64::consts::LN_2
        };
        self.log2_crf[id] = log2_crf;
        self.last[id] = self.time;
        self.heap
            .set(id, (log2_crf + self.lambda * self.time as f64, self.seq));
    }
}

impl EvictionPolicy for Lrfu {
    fn name(&self) -> &'static str {
        "lrfu"
    }
    fn universe(&self) -> usize {
        self.universe
    }
    fn on_hit(&mut self, id: usize) {
        self.access(id, false);
    }
    fn on_insert(&mut self, id: usize) {
        self.access(id, true);
    }
    fn on_prefetch(&mut self, id: usize) {
        self.seq += 1;
        self.log2_crf[id] = f64::NEG_INFINITY;
        self.last[id] = self.time;
        self.heap.set(id, (f64::NEG_INFINITY, self.seq));
    }
    fn on_evict(&mut self, id: usize) {
        self.heap.remove(id);
    }
    fn victim(&mut self, pinned: &[bool]) -> Option<usize> {
        self.heap.min_unpinned(pinned)
    }
    fn reset(&mut self) {
        self.heap.clear();
        self.log2_crf.fill(f64::NEG_INFINITY);
        self.last.fill(0);
        self.time = 0;
        self.seq = 0;
    }
}

// ------------------------------------------------------------------ Random

/// Uniformly random eviction from a seeded generator (reproducible).
///
/// Residents are kept in a dense array with each id's position, so insert
/// and evict are O(1) swap-removes. A victim is drawn uniformly; a pinned
/// draw is redrawn up to 8 times, after which the first unpinned resident
/// after a random start is taken (bounded work when most residents are
/// pinned; exactly uniform whenever no resident is pinned).
///
/// ```
/// use lastmile_moe_cache::policy::{EvictionPolicy, RandomPolicy};
/// let mut p = RandomPolicy::new(4, 7)?;
/// for id in 0..4 {
///     p.on_insert(id);
/// }
/// let v = p.victim(&[true, false, true, true]);
/// assert_eq!(v, Some(1));
/// # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
/// ```
#[derive(Debug)]
pub struct RandomPolicy {
    members: Vec<u32>,
    slot: Vec<u32>,
    rng: StdRng,
    seed: u64,
    universe: usize,
}

impl RandomPolicy {
    /// An empty random policy over ids `0..universe`, seeded with `seed`.
    ///
    /// # Errors
    /// As [`Lru::new`].
    pub fn new(universe: usize, seed: u64) -> Result<Self> {
        let universe = check_universe(universe)?;
        Ok(Self {
            members: Vec::with_capacity(universe),
            slot: vec![NIL; universe],
            rng: StdRng::seed_from_u64(seed),
            seed,
            universe,
        })
    }

    fn add(&mut self, id: usize) {
        if self.slot[id] == NIL {
            self.slot[id] = self.members.len() as u32;
            self.members.push(id as u32);
        }
    }
}

impl EvictionPolicy for RandomPolicy {
    fn name(&self) -> &'static str {
        "random"
    }
    fn universe(&self) -> usize {
        self.universe
    }
    fn on_hit(&mut self, _id: usize) {}
    fn on_insert(&mut self, id: usize) {
        self.add(id);
    }
    fn on_prefetch(&mut self, id: usize) {
        self.add(id);
    }
    fn on_evict(&mut self, id: usize) {
        let at = self.slot[id];
        if at == NIL {
            return;
        }
        let at = at as usize;
        self.members.swap_remove(at);
        if let Some(&moved) = self.members.get(at) {
            self.slot[moved as usize] = at as u32;
        }
        self.slot[id] = NIL;
    }
    fn victim(&mut self, pinned: &[bool]) -> Option<usize> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        for _ in 0..8 {
            let id = self.members[self.rng.random_range(0..n)] as usize;
            if !pinned[id] {
                return Some(id);
            }
        }
        let start = self.rng.random_range(0..n);
        (0..n)
            .map(|i| self.members[(start + i) % n] as usize)
            .find(|&id| !pinned[id])
    }
    fn reset(&mut self) {
        self.members.clear();
        self.slot.fill(NIL);
        self.rng = StdRng::seed_from_u64(self.seed);
    }
}

// ------------------------------------------------------------------ Belady

const NEVER: u64 = u64::MAX;
/// Priorities of experts whose next use lies beyond the lookahead start here;
/// below it are known next-use positions.
const UNKNOWN_BASE: u64 = 1 << 62;

/// Belady's OPT (Belady 1966, "A study of replacement algorithms for a
/// virtual-storage computer"): evicts the resident whose next use is
/// farthest in the future. Offline: it is given the partition's future
/// access sequence and must then be driven by exactly that sequence
/// ([`EvictionPolicy::check`] reports a departure).
///
/// With a bounded `lookahead` W it sees only the next W accesses after the
/// current one (the online-with-prefetch setting of pre-gated routers such
/// as Read-ME, Cai et al. 2024, arXiv 2410.19123): experts used within the
/// window are ranked by next use, the farthest first, and experts not used
/// within it are evicted before them, least recently used first. `W = 0` is
/// exactly LRU; unbounded W is OPT, the best hit rate any policy can reach
/// on that sequence and capacity.
///
/// Next uses are precomputed links (`next[t]` = the next position of the id
/// accessed at `t`), and residents live in an indexed heap keyed by next
/// use: O(log n) per access; sliding the window re-keys at most one id per
/// access.
///
/// ```
/// use lastmile_moe_cache::policy::{Belady, EvictionPolicy};
/// let future = [0, 1, 2, 0, 1, 0];
/// let mut opt = Belady::new(3, &future, None)?;
/// opt.on_insert(0);
/// opt.on_insert(1);
/// // access 2 misses with room for 2: evict the one used farthest ahead
/// assert_eq!(opt.victim(&[false; 3]), Some(1));
/// # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Belady {
    future: Vec<u32>,
    next: Vec<u64>,
    occ_start: Vec<usize>,
    occ: Vec<u32>,
    /// Index of the next access to be served.
    t: usize,
    lookahead: usize,
    true_next: Vec<u64>,
    last_seq: Vec<u64>,
    resident: Vec<bool>,
    heap: IndexedHeap<u64>,
    seq: u64,
    mismatch: Option<(usize, usize, usize)>,
    universe: usize,
}

impl Belady {
    /// Belady over ids `0..universe` that will be driven by `future`, seeing
    /// `lookahead` accesses ahead (`None`: the whole future, i.e. OPT).
    ///
    /// # Errors
    /// [`MoeCacheError::ExpertOutOfRange`] (layer 0) for an id `>= universe`
    /// in `future`; [`lastmile_core::CoreError::OutOfRange`] for a bad
    /// universe or a sequence of 2^40 accesses or more.
    pub fn new(universe: usize, future: &[usize], lookahead: Option<usize>) -> Result<Self> {
        let universe = check_universe(universe)?;
        if future.len() as u64 >= 1 << 40 {
            return Err(MoeCacheError::param(
                "future.len()",
                future.len() as f64,
                "fewer than 2^40 accesses",
            ));
        }
        if let Some(pos) = future.iter().position(|&id| id >= universe) {
            return Err(MoeCacheError::ExpertOutOfRange {
                layer: 0,
                expert: future[pos],
                experts: universe,
            });
        }
        let mut next = vec![NEVER; future.len()];
        let mut upcoming = vec![NEVER; universe];
        for t in (0..future.len()).rev() {
            let id = future[t];
            next[t] = upcoming[id];
            upcoming[id] = t as u64;
        }
        // Occurrence lists (CSR) for next-use lookups of prefetched ids.
        let mut occ_start = vec![0usize; universe + 1];
        for &id in future {
            occ_start[id + 1] += 1;
        }
        for i in 0..universe {
            occ_start[i + 1] += occ_start[i];
        }
        let mut fill = occ_start.clone();
        let mut occ = vec![0u32; future.len()];
        for (t, &id) in future.iter().enumerate() {
            occ[fill[id]] = t as u32;
            fill[id] += 1;
        }
        Ok(Self {
            future: future.iter().map(|&id| id as u32).collect(),
            next,
            occ_start,
            occ,
            t: 0,
            lookahead: lookahead.unwrap_or(usize::MAX),
            true_next: vec![NEVER; universe],
            last_seq: vec![0; universe],
            resident: vec![false; universe],
            heap: IndexedHeap::new(universe),
            seq: 0,
            mismatch: None,
            universe,
        })
    }

    /// Accesses served so far.
    pub fn position(&self) -> usize {
        self.t
    }

    fn horizon(&self) -> u64 {
        (self.t as u64).saturating_add(self.lookahead as u64)
    }

    /// Min-heap key: the farthest known next use first, then unknown ones.
    fn rekey(&mut self, id: usize) {
        let next = self.true_next[id];
        let priority = if next != NEVER && next <= self.horizon() {
            next
        } else {
            // Unknown next use: evict before any known one, oldest first.
            UNKNOWN_BASE + (UNKNOWN_BASE - 1 - self.last_seq[id].min(UNKNOWN_BASE - 1))
        };
        self.heap.set(id, u64::MAX - priority);
    }

    fn access(&mut self, id: usize) {
        self.seq += 1;
        let t = self.t;
        let next = match self.future.get(t) {
            Some(&f) if f as usize == id => self.next[t],
            other => {
                if self.mismatch.is_none() {
                    self.mismatch = Some((t, other.map_or(usize::MAX, |&f| f as usize), id));
                }
                self.next_occurrence(id, t + 1)
            }
        };
        self.t += 1;
        self.true_next[id] = next;
        self.last_seq[id] = self.seq;
        self.resident[id] = true;
        self.rekey(id);
        // Slide the window: the access at position t + W becomes visible.
        if self.lookahead != usize::MAX
            && let Some(p) = self.t.checked_add(self.lookahead)
            && let Some(&x) = self.future.get(p)
        {
            let x = x as usize;
            if self.resident[x] && self.true_next[x] == p as u64 {
                self.rekey(x);
            }
        }
    }

    /// First position `>= from` at which `id` is accessed.
    fn next_occurrence(&self, id: usize, from: usize) -> u64 {
        let list = &self.occ[self.occ_start[id]..self.occ_start[id + 1]];
        let i = list.partition_point(|&p| (p as usize) < from);
        list.get(i).map_or(NEVER, |&p| u64::from(p))
    }
}

impl EvictionPolicy for Belady {
    fn name(&self) -> &'static str {
        "belady"
    }
    fn universe(&self) -> usize {
        self.universe
    }
    fn on_hit(&mut self, id: usize) {
        self.access(id);
    }
    fn on_insert(&mut self, id: usize) {
        self.access(id);
    }
    fn on_prefetch(&mut self, id: usize) {
        self.seq += 1;
        self.true_next[id] = self.next_occurrence(id, self.t);
        self.last_seq[id] = self.seq;
        self.resident[id] = true;
        self.rekey(id);
    }
    fn on_evict(&mut self, id: usize) {
        self.resident[id] = false;
        self.heap.remove(id);
    }
    fn victim(&mut self, pinned: &[bool]) -> Option<usize> {
        self.heap.min_unpinned(pinned)
    }
    fn reset(&mut self) {
        self.heap.clear();
        self.t = 0;
        self.seq = 0;
        self.true_next.fill(NEVER);
        self.last_seq.fill(0);
        self.resident.fill(false);
        self.mismatch = None;
    }
    fn check(&self) -> Result<()> {
        match self.mismatch {
            None => Ok(()),
            Some((position, expected, found)) => Err(MoeCacheError::OracleMismatch {
                position,
                expected,
                found,
            }),
        }
    }
}

// ------------------------------------------------------------------ kinds

/// A policy by name and parameters, to build one instance per cache partition.
///
/// ```
/// use lastmile_moe_cache::policy::PolicyKind;
/// let p = PolicyKind::Lrfu { lambda: 0.1 }.build(8)?;
/// assert_eq!(p.name(), "lrfu");
/// assert!(PolicyKind::Belady { lookahead: None }.build(8).is_err()); // needs the future
/// let opt = PolicyKind::Belady { lookahead: None }.build_with_future(8, &[1, 2, 1])?;
/// assert_eq!(opt.name(), "belady");
/// # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum PolicyKind {
    /// [`Lru`].
    Lru,
    /// [`Lfu`].
    Lfu,
    /// [`Lrfu`] with decay `lambda ∈ [0, 1]`.
    Lrfu {
        /// The decay λ.
        lambda: f64,
    },
    /// [`Fifo`].
    Fifo,
    /// [`RandomPolicy`] seeded with `seed`.
    Random {
        /// The seed.
        seed: u64,
    },
    /// [`Belady`]: offline, needs the future access sequence.
    Belady {
        /// Accesses visible ahead of the current one (`None`: all, i.e. OPT).
        lookahead: Option<usize>,
    },
}

impl PolicyKind {
    /// Short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            PolicyKind::Lru => "lru",
            PolicyKind::Lfu => "lfu",
            PolicyKind::Lrfu { .. } => "lrfu",
            PolicyKind::Fifo => "fifo",
            PolicyKind::Random { .. } => "random",
            PolicyKind::Belady { .. } => "belady",
        }
    }

    /// Whether building it needs the future access sequence.
    pub fn needs_future(&self) -> bool {
        matches!(self, PolicyKind::Belady { .. })
    }

    /// An online policy over `universe` ids.
    ///
    /// # Errors
    /// [`MoeCacheError::OracleNeedsFuture`] for Belady; the constructors' errors.
    pub fn build(&self, universe: usize) -> Result<Box<dyn EvictionPolicy>> {
        Ok(match *self {
            PolicyKind::Lru => Box::new(Lru::new(universe)?),
            PolicyKind::Lfu => Box::new(Lfu::new(universe)?),
            PolicyKind::Lrfu { lambda } => Box::new(Lrfu::new(universe, lambda)?),
            PolicyKind::Fifo => Box::new(Fifo::new(universe)?),
            PolicyKind::Random { seed } => Box::new(RandomPolicy::new(universe, seed)?),
            PolicyKind::Belady { .. } => return Err(MoeCacheError::OracleNeedsFuture),
        })
    }

    /// Any policy over `universe` ids; Belady is given `future` (online
    /// policies ignore it).
    ///
    /// # Errors
    /// The constructors' errors.
    pub fn build_with_future(
        &self,
        universe: usize,
        future: &[usize],
    ) -> Result<Box<dyn EvictionPolicy>> {
        match *self {
            PolicyKind::Belady { lookahead } => {
                Ok(Box::new(Belady::new(universe, future, lookahead)?))
            }
            _ => self.build(universe),
        }
    }
}
