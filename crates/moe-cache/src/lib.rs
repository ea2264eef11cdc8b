//! # lastmile-moe-cache
//!
//! Expert caching for Mixture-of-Experts inference on memory-constrained
//! devices: keep the experts on flash, a DRAM cache of some of them, and
//! decide what to keep (eviction policies) and what to use (cache-aware
//! routing).
//!
//! - [`store`]: every expert of every layer in one packed, indexed,
//!   checksummed file; one expert per miss is a real file read, measured,
//!   with the page cache dropped for its region so the read is honest.
//! - [`cache`]: a DRAM cache with a byte budget per layer or one global
//!   budget; steps pin their experts; a failed load changes nothing; a
//!   per-layer budget allocator driven by replayed miss curves.
//! - [`policy`]: LRU, LFU, LRFU, FIFO, seeded Random and Belady/OPT (full or
//!   bounded lookahead) behind [`EvictionPolicy`], O(1) or O(log n) per access.
//! - [`routing`]: normal top-k, Cache-Prior, Max-Rank and the cumulative
//!   threshold rule of Skliar et al. (arXiv 2412.00099), host-side.
//! - [`prefetch`]: multi-token steps (prefill, verify) and prefetch ahead of use.
//! - [`trace`]: a versioned binary trace format, replay of policy × rule ×
//!   capacity, miss curves, and a seeded synthetic generator.
//! - [`moe`]: a burn SwiGLU MoE layer, resident (trainable) or cached.
//! - [`cost`]: an injectable flash cost model with a phone (UFS 3.1) default.
//!
//! Dependencies beyond lastmile-core, burn, rand and thiserror:
//!
//! - `rustix` (Linux/Android): dropping an expert's pages from the OS page
//!   cache before its read (`posix_fadvise(POSIX_FADV_DONTNEED)`) is what
//!   makes the measured reads honest. `libc` exposes that call only as an
//!   `unsafe` FFI function and `O_DIRECT` needs aligned (unsafely
//!   allocated) buffers, while the workspace denies `unsafe`; rustix wraps
//!   the same system call in a safe function, so no `unsafe` is needed here.
//! - `crc32fast`: SIMD CRC-32 for the store's and traces' checksums.
//! - `half`: IEEE binary16 conversion for f16 logits in traces.
//!
//! ```
//! use lastmile_moe_cache::policy::PolicyKind;
//! use lastmile_moe_cache::routing::RoutingRule;
//! use lastmile_moe_cache::trace::{Capacity, LogitsFormat, ReplayConfig, ReplayRouting, SyntheticConfig, replay, synthetic_trace};
//!
//! // 4 layers of 16 experts, top-2, 500 tokens with logits.
//! let trace = synthetic_trace(&SyntheticConfig::new(4, 16, 2, 500).with_logits(LogitsFormat::F16))?;
//! let run = |policy, routing| replay(&trace, &ReplayConfig::new(policy, routing, Capacity::Uniform(4)));
//! let lru = run(PolicyKind::Lru, ReplayRouting::Recorded)?;
//! let opt = run(PolicyKind::Belady { lookahead: None }, ReplayRouting::Recorded)?;
//! let prior = run(PolicyKind::Lru, ReplayRouting::Rule(RoutingRule::CachePrior { lambda: 0.5, top_j: 1 }))?;
//! assert!(opt.hit_rate() >= lru.hit_rate()); // Belady bounds every policy under fixed routing
//! assert!(prior.hit_rate() > lru.hit_rate()); // routing towards the cache raises hits
//! # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
//! ```

pub mod cache;
pub mod cost;
pub mod error;
mod heap;
pub mod moe;
pub mod policy;
pub mod prefetch;
pub mod routing;
pub mod store;
pub mod trace;

pub use cache::{Budget, CacheGeometry, ExpertCache};
pub use error::{MoeCacheError, Result};
pub use policy::{EvictionPolicy, PolicyKind};
pub use routing::{Router, RouterConfig, Routing, RoutingRule};
