//! Multi-token steps and prefetch hooks on top of [`ExpertCache`].
//!
//! # Step semantics
//! A *step* is one layer's work for a set of tokens processed together: one
//! decode token, a prefill chunk, or a verify pass of `k` draft tokens.
//!
//! - The experts the step needs are the **union** of its tokens' choices, in
//!   order of first use ([`step_union`]); each is loaded at most once.
//! - Each needed expert counts as **one access** per step for the policy and
//!   the hit/miss counters, however many of the step's tokens use it (the
//!   weights are read from DRAM once per step, which is what the cache saves).
//! - All of the step's experts are **pinned** until [`ExpertCache::end_step`]:
//!   no load of the same step evicts an expert the step needs.
//! - If the union does not fit in the layer's budget, [`ensure_step`] fails
//!   with [`MoeCacheError::StepExceedsCapacity`](crate::MoeCacheError::StepExceedsCapacity)
//!   before changing anything; the caller splits the step (e.g. verifies
//!   fewer tokens at once) or raises the budget. There is no silent fallback.
//!
//! # Prefetch
//! [`prefetch_predicted`] loads ahead of use the experts a predictor expects
//! a layer to need — the next layer's router applied to the current hidden
//! state, or a pre-gating router (Read-ME, Cai et al. 2024, arXiv
//! 2410.19123) — evicting only unpinned residents. Prefetched experts are
//! not accesses (their loads are counted apart) and a later demand access
//! to one is a hit. Belady with a bounded lookahead
//! ([`crate::policy::Belady`]) is the matching eviction policy when routing
//! decisions are known ahead.
//!
//! ```
//! use lastmile_moe_cache::cache::{Budget, CacheGeometry, ExpertCache};
//! use lastmile_moe_cache::policy::PolicyKind;
//! use lastmile_moe_cache::prefetch::{ensure_step, prefetch_predicted};
//! use lastmile_moe_cache::routing::Routing;
//! let g = CacheGeometry::uniform(2, 8, 1, 2)?;
//! let mut cache: ExpertCache<()> = ExpertCache::new(g, Budget::PerLayer(vec![4, 4]), PolicyKind::Lru)?;
//! // A verify pass of 3 tokens at layer 0 needs experts {1, 2, 5}: 3 loads, not 6.
//! let tokens = [
//!     Routing { experts: vec![1, 2], weights: vec![0.5, 0.5] },
//!     Routing { experts: vec![2, 5], weights: vec![0.5, 0.5] },
//!     Routing { experts: vec![5, 1], weights: vec![0.5, 0.5] },
//! ];
//! let step = ensure_step(&mut cache, 0, &tokens, |_| Ok(()))?;
//! assert_eq!((step.misses, step.hits), (3, 0));
//! cache.end_step()?;
//! // Layer 1 is predicted to need 3 and 4: load them now, hit later.
//! let pre = prefetch_predicted(&mut cache, 1, &[3, 4], |_| Ok(()))?;
//! assert_eq!(pre.loaded, 2);
//! let step = ensure_step(&mut cache, 1, &tokens[..1], |_| Ok(()))?;
//! assert_eq!(step.misses, 2); // experts 1 and 2 were not predicted
//! cache.end_step()?;
//! # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
//! ```

use crate::cache::{ExpertCache, PrefetchReport, StepReport};
use crate::error::Result;
use crate::routing::Routing;

/// The distinct experts of `routings`, in order of first use, into `out`.
///
/// ```
/// use lastmile_moe_cache::prefetch::step_union;
/// use lastmile_moe_cache::routing::Routing;
/// let r = |e: Vec<usize>| Routing { weights: vec![0.5; e.len()], experts: e };
/// let mut out = Vec::new();
/// step_union(&[r(vec![3, 1]), r(vec![1, 4])], &mut out);
/// assert_eq!(out, vec![3, 1, 4]);
/// ```
pub fn step_union(routings: &[Routing], out: &mut Vec<usize>) {
    out.clear();
    for r in routings {
        for &e in &r.experts {
            if !out.contains(&e) {
                out.push(e);
            }
        }
    }
}

/// Makes the union of `routings`' experts resident for one step of `layer`
/// (see the [module docs](self) for the semantics). Call
/// [`ExpertCache::end_step`] when the step's compute is done.
///
/// # Errors
/// As [`ExpertCache::ensure`].
pub fn ensure_step<P>(
    cache: &mut ExpertCache<P>,
    layer: usize,
    routings: &[Routing],
    load: impl FnMut(usize) -> Result<P>,
) -> Result<StepReport> {
    let mut union = Vec::new();
    step_union(routings, &mut union);
    cache.ensure(layer, &union, load)
}

/// Loads the `predicted` experts of `layer` ahead of use; see the [module docs](self).
///
/// # Errors
/// As [`ExpertCache::prefetch`].
pub fn prefetch_predicted<P>(
    cache: &mut ExpertCache<P>,
    layer: usize,
    predicted: &[usize],
    load: impl FnMut(usize) -> Result<P>,
) -> Result<PrefetchReport> {
    cache.prefetch(layer, predicted, load)
}
