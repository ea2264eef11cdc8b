//! Cache-aware routing: training-free rules that bend one layer's top-k
//! expert choice towards experts already in DRAM, at decode time (Skliar et
//! al., "Mixture of Cache-Conditional Experts for Efficient Mobile Device
//! Inference", arXiv 2412.00099).
//!
//! All rules read the router logits `z ∈ ℝᴱ` of one token (host `f32`), the
//! layer's cached-expert mask, and choose `k` distinct experts. Mixing
//! weights always come from the *original* distribution `p = softmax(z)`
//! gathered at the chosen experts; with [`RouterConfig::renormalize`] they
//! are divided by their sum (Mixtral's convention), otherwise they are the
//! raw `pᵢ` (Qwen-MoE's `norm_topk_prob = false`). Chosen experts are listed
//! in descending `z` (original rank) order. Ties in any ordering go to the
//! lower expert index.
//!
//! - [`RoutingRule::TopK`] — normal routing: the `k` largest `zᵢ`.
//! - [`RoutingRule::CachePrior`] — `z' = z + λ·Δ̄·m`, top-k of `z'`, where
//!   `Δ̄` is the layer's running mean of the logit range `max z − min z`
//!   (EMA `Δ̄ ← 0.99·Δ̄ + 0.01·(max z − min z)`, seeded by the first token
//!   and updated before the token is routed), and `mᵢ = 1` if expert `i` is
//!   cached or among the top-`J` by `z`. The prior is scaled by the typical
//!   logit spread so one λ works across layers; the top-`J` term keeps the
//!   router's strongest choices competitive with cached experts. `λ = 0`
//!   reproduces [`RoutingRule::TopK`] exactly (same experts, same weights,
//!   bit for bit), since `z + 0 = z`.
//! - [`RoutingRule::MaxRank`] — keep the top-`J` experts; fill the other
//!   `k − J` slots with cached experts of original rank ≤ `R` (best rank
//!   first), and any slot still open with the best remaining original picks.
//! - [`RoutingRule::CumulativeThreshold`] — take the smallest prefix of
//!   experts by `p` whose mass reaches `τ` (at least `k` experts); choose
//!   its cached experts first, then its uncached ones, best rank first.
//!
//! The paper names the three rules and gives Max-Rank (its Algorithm 1,
//! keeping the top-J) and the threshold rule (Algorithm 2) as pseudocode;
//! the formulas above follow lastmile's spec, which took them from public
//! re-implementations. λ ∈ [0.1, 0.5] and J = 2 are the typical settings.
//!
//! ```
//! use lastmile_moe_cache::routing::{Router, RouterConfig, Routing, RoutingRule};
//! let config = RouterConfig::new(1, 4, 2)?;
//! let z = [2.0, 1.9, 0.0, 1.8];
//! let cached = [false, false, false, true];
//! let mut out = Routing::default();
//!
//! let mut normal = Router::new(RoutingRule::TopK, config)?;
//! normal.route(0, &z, &cached, &mut out)?;
//! assert_eq!(out.experts, vec![0, 1]);
//!
//! let mut prior = Router::new(RoutingRule::CachePrior { lambda: 0.2, top_j: 1 }, config)?;
//! prior.route(0, &z, &cached, &mut out)?;
//! assert_eq!(out.experts, vec![0, 3]); // the cached expert 3 displaces expert 1
//! # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
//! ```

use std::cmp::Ordering;

use lastmile_core::validate::{check_finite_slice, check_in_range, check_len};

use crate::error::{MoeCacheError, Result};

/// Weight of the old value in the Cache-Prior range EMA.
pub const RANGE_EMA_DECAY: f32 = 0.99;

/// A routing rule; see the [module docs](self) for the formulas.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum RoutingRule {
    /// The `k` largest logits.
    TopK,
    /// Cache-Prior: top-k of `z + λ·Δ̄·m`.
    CachePrior {
        /// Strength λ ≥ 0 of the prior, in units of the mean logit range.
        lambda: f32,
        /// `J`: the top-`J` experts by `z` get the prior too (0 ≤ J ≤ k).
        top_j: usize,
    },
    /// Max-Rank: keep the top-`J`, fill with cached experts of rank ≤ `R`.
    MaxRank {
        /// `J`: experts always kept (0 ≤ J ≤ k).
        top_j: usize,
        /// `R`: worst original rank (1-based) a cached expert may have (k ≤ R ≤ E).
        max_rank: usize,
    },
    /// Cached experts first within the top-`τ` probability mass.
    CumulativeThreshold {
        /// Mass τ ∈ [0, 1].
        tau: f32,
    },
}

impl RoutingRule {
    /// Short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            RoutingRule::TopK => "top-k",
            RoutingRule::CachePrior { .. } => "cache-prior",
            RoutingRule::MaxRank { .. } => "max-rank",
            RoutingRule::CumulativeThreshold { .. } => "cumulative-threshold",
        }
    }

    /// Whether its choice can depend on the cache's contents (`false` for
    /// top-k and for Cache-Prior with λ = 0).
    pub fn depends_on_cache(&self) -> bool {
        match *self {
            RoutingRule::TopK => false,
            RoutingRule::CachePrior { lambda, .. } => lambda != 0.0,
            _ => true,
        }
    }
}

/// Sizes and the weight convention shared by all rules.
///
/// ```
/// use lastmile_moe_cache::routing::RouterConfig;
/// let c = RouterConfig::new(24, 60, 4)?.with_renormalize(false);
/// assert!(!c.renormalize);
/// assert!(RouterConfig::new(24, 60, 61).is_err());
/// # Ok::<(), lastmile_moe_cache::MoeCacheError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterConfig {
    /// Layers (each keeps its own Cache-Prior range EMA).
    pub layers: usize,
    /// Experts per layer.
    pub experts: usize,
    /// Experts chosen per token.
    pub k: usize,
    /// Divide the chosen weights by their sum (default: true, as Mixtral).
    pub renormalize: bool,
}

impl RouterConfig {
    /// `layers` layers of `experts` experts, `k` per token, renormalised weights.
    ///
    /// # Errors
    /// Out of range for 0 layers, experts or k; [`MoeCacheError::KAboveExperts`].
    pub fn new(layers: usize, experts: usize, k: usize) -> Result<Self> {
        lastmile_core::validate::check_at_least("layers", layers, 1)?;
        lastmile_core::validate::check_at_least("experts", experts, 1)?;
        lastmile_core::validate::check_at_least("k", k, 1)?;
        if k > experts {
            return Err(MoeCacheError::KAboveExperts { k, experts });
        }
        Ok(Self {
            layers,
            experts,
            k,
            renormalize: true,
        })
    }

    /// Sets whether weights are renormalised over the chosen experts.
    pub fn with_renormalize(mut self, renormalize: bool) -> Self {
        self.renormalize = renormalize;
        self
    }
}

/// The experts chosen for one token and their mixing weights.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routing {
    /// Chosen experts, best original rank first.
    pub experts: Vec<usize>,
    /// Their weights (same order).
    pub weights: Vec<f32>,
}

/// Applies a [`RoutingRule`] token by token, keeping each layer's state
/// (the Cache-Prior range EMA) and scratch buffers (no allocation per token
/// once the output buffers have grown to `k`).
#[derive(Debug, Clone)]
pub struct Router {
    rule: RoutingRule,
    config: RouterConfig,
    range_ema: Vec<Option<f32>>,
    order: Vec<usize>,
    shifted_order: Vec<usize>,
    probs: Vec<f32>,
    shifted: Vec<f32>,
    chosen: Vec<bool>,
}

impl Router {
    /// A router applying `rule` with `config`.
    ///
    /// # Errors
    /// Out of range for λ negative or non-finite, `J > k`, `R` outside
    /// `[k, E]`, `τ` outside `[0, 1]`.
    pub fn new(rule: RoutingRule, config: RouterConfig) -> Result<Self> {
        let k = config.k;
        match rule {
            RoutingRule::TopK => {}
            RoutingRule::CachePrior { lambda, top_j } => {
                lastmile_core::validate::check_interval(
                    "lambda",
                    f64::from(lambda),
                    std::ops::Bound::Included(0.0),
                    std::ops::Bound::Unbounded,
                )?;
                check_top_j(top_j, k)?;
            }
            RoutingRule::MaxRank { top_j, max_rank } => {
                check_top_j(top_j, k)?;
                if max_rank < k || max_rank > config.experts {
                    return Err(MoeCacheError::param(
                        "max_rank",
                        max_rank as f64,
                        &format!("a rank between k = {k} and E = {}", config.experts),
                    ));
                }
            }
            RoutingRule::CumulativeThreshold { tau } => {
                check_in_range("tau", f64::from(tau), 0.0, 1.0)?;
            }
        }
        let e = config.experts;
        Ok(Self {
            rule,
            config,
            range_ema: vec![None; config.layers],
            order: Vec::with_capacity(e),
            shifted_order: Vec::with_capacity(e),
            probs: vec![0.0; e],
            shifted: vec![0.0; e],
            chosen: vec![false; e],
        })
    }

    /// The rule.
    pub fn rule(&self) -> RoutingRule {
        self.rule
    }

    /// The configuration.
    pub fn config(&self) -> RouterConfig {
        self.config
    }

    /// Sets whether the chosen weights are renormalised over the chosen
    /// experts (see [`RouterConfig::renormalize`]).
    pub fn set_renormalize(&mut self, renormalize: bool) {
        self.config.renormalize = renormalize;
    }

    /// The Cache-Prior range EMA Δ̄ of `layer` (`None` before its first token).
    pub fn range_ema(&self, layer: usize) -> Option<f32> {
        self.range_ema.get(layer).copied().flatten()
    }

    /// Forgets every layer's EMA (start of a new sequence).
    pub fn reset(&mut self) {
        self.range_ema.fill(None);
    }

    /// Routes one token of `layer`: `logits` and `cached` have one entry per
    /// expert. Writes the choice into `out`.
    ///
    /// # Errors
    /// [`MoeCacheError::LayerOutOfRange`]; [`lastmile_core::CoreError::LengthMismatch`]
    /// for slices of the wrong length; [`lastmile_core::CoreError::NonFinite`]
    /// for NaN or infinite logits. Nothing (not even the EMA) changes on error.
    pub fn route(
        &mut self,
        layer: usize,
        logits: &[f32],
        cached: &[bool],
        out: &mut Routing,
    ) -> Result<()> {
        check_len("router logits", logits.len(), self.config.experts)?;
        self.check_inputs(layer, logits, cached)?;
        self.route_unchecked(layer, logits, cached, out);
        Ok(())
    }

    /// The layer in range, one cached flag per expert, finite logits.
    fn check_inputs(&self, layer: usize, logits: &[f32], cached: &[bool]) -> Result<()> {
        if layer >= self.config.layers {
            return Err(MoeCacheError::LayerOutOfRange {
                layer,
                layers: self.config.layers,
            });
        }
        check_len("cached mask", cached.len(), self.config.experts)?;
        check_finite_slice("router logits", logits)?;
        Ok(())
    }

    /// Routes `logits.len() / E` tokens of `layer` in order (row-major
    /// `[tokens, E]`), against the same cached mask (the cache as it was when
    /// the step began), updating the EMA token by token. `out` is resized to
    /// the token count.
    ///
    /// # Errors
    /// As [`route`](Self::route); an empty or ragged `logits` is a shape error.
    pub fn route_batch(
        &mut self,
        layer: usize,
        logits: &[f32],
        cached: &[bool],
        out: &mut Vec<Routing>,
    ) -> Result<()> {
        let e = self.config.experts;
        let tokens = lastmile_core::validate::check_matrix_len("router logits", logits.len(), e)?;
        self.check_inputs(layer, logits, cached)?;
        out.resize_with(tokens, Routing::default);
        for (row, o) in logits.chunks_exact(e).zip(out.iter_mut()) {
            self.route_unchecked(layer, row, cached, o);
        }
        Ok(())
    }

    fn route_unchecked(&mut self, layer: usize, z: &[f32], cached: &[bool], out: &mut Routing) {
        let k = self.config.k;
        sort_desc(z, &mut self.order);
        softmax_into(z, self.order[0], &mut self.probs);
        self.chosen.fill(false);
        match self.rule {
            RoutingRule::TopK => {
                for &i in &self.order[..k] {
                    self.chosen[i] = true;
                }
            }
            RoutingRule::CachePrior { lambda, top_j } => {
                let range = z[self.order[0]] - z[self.order[z.len() - 1]];
                let ema = match self.range_ema[layer] {
                    None => range,
                    Some(d) => RANGE_EMA_DECAY * d + (1.0 - RANGE_EMA_DECAY) * range,
                };
                self.range_ema[layer] = Some(ema);
                let bonus = lambda * ema;
                self.shifted.copy_from_slice(z);
                for (i, s) in self.shifted.iter_mut().enumerate() {
                    if cached[i] {
                        *s += bonus;
                    }
                }
                for &i in &self.order[..top_j] {
                    if !cached[i] {
                        self.shifted[i] += bonus;
                    }
                }
                sort_desc(&self.shifted, &mut self.shifted_order);
                for &i in &self.shifted_order[..k] {
                    self.chosen[i] = true;
                }
            }
            RoutingRule::MaxRank { top_j, max_rank } => {
                let mut taken = 0;
                for &i in &self.order[..top_j] {
                    self.chosen[i] = true;
                    taken += 1;
                }
                for &i in &self.order[top_j..max_rank] {
                    if taken == k {
                        break;
                    }
                    if cached[i] {
                        self.chosen[i] = true;
                        taken += 1;
                    }
                }
                for &i in &self.order[top_j..] {
                    if taken == k {
                        break;
                    }
                    if !self.chosen[i] {
                        self.chosen[i] = true;
                        taken += 1;
                    }
                }
            }
            RoutingRule::CumulativeThreshold { tau } => {
                let mut mass = 0.0f32;
                let mut m = z.len();
                for (n, &i) in self.order.iter().enumerate() {
                    mass += self.probs[i];
                    if mass >= tau {
                        m = n + 1;
                        break;
                    }
                }
                let m = m.max(k);
                let mut taken = 0;
                for want_cached in [true, false] {
                    for &i in &self.order[..m] {
                        if taken == k {
                            break;
                        }
                        if cached[i] == want_cached {
                            self.chosen[i] = true;
                            taken += 1;
                        }
                    }
                }
            }
        }
        out.experts.clear();
        out.weights.clear();
        for &i in &self.order {
            if self.chosen[i] {
                out.experts.push(i);
                out.weights.push(self.probs[i]);
            }
        }
        if self.config.renormalize {
            let sum: f32 = out.weights.iter().sum();
            if sum > 0.0 {
                for w in &mut out.weights {
                    *w /= sum;
                }
            }
        }
    }
}

fn check_top_j(top_j: usize, k: usize) -> Result<()> {
    if top_j > k {
        return Err(MoeCacheError::param(
            "top_j",
            top_j as f64,
            &format!("J between 0 and k = {k}"),
        ));
    }
    Ok(())
}

/// Indices of `v` by descending value, ties to the lower index.
fn sort_desc(v: &[f32], order: &mut Vec<usize>) {
    order.clear();
    order.extend(0..v.len());
    order.sort_unstable_by(|&a, &b| match v[b].partial_cmp(&v[a]) {
        Some(Ordering::Equal) | None => a.cmp(&b),
        Some(o) => o,
    });
}

/// `softmax(z)` in f64, stored as f32; `argmax` is the index of the largest logit.
fn softmax_into(z: &[f32], argmax: usize, probs: &mut [f32]) {
    let max = f64::from(z[argmax]);
    let sum: f64 = z.iter().map(|&x| (f64::from(x) - max).exp()).sum();
    for (p, &x) in probs.iter_mut().zip(z) {
        *p = ((f64::from(x) - max).exp() / sum) as f32;
    }
}
