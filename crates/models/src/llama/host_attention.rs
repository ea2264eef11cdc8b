//! The host pass's cache layout and grouped-query attention over it
//! ([`super::host`]).
//!
//! The kernel is written once over vectors of `W` lanes ([`Lanes`]) and
//! compiled three times: 16 lanes for AVX-512 through pulp's V4 token
//! where the CPU has it (twice the lanes of an instruction on Intel's
//! server cores), 8 for AVX2 + FMA (+ F16C) through core's `Avx2F16c`,
//! and plain arrays elsewhere.
//! Every product is fused into its sum (`mul_add`, one rounding) on each,
//! and each position's and output's sums run in the same order whatever
//! the width, so all give the same bits (tested).
//!
//! The query heads that read one key/value head are taken through its keys
//! and values together, up to [`TILE`] at a time: each key or value vector
//! loaded then feeds several heads' sums, and their accumulators are
//! independent chains of FMAs that keep the vector units busy instead of
//! waiting on one another (measured in `docs/benchmarks.md`).

use lastmile_core::fastmath::exp;
use rayon::prelude::*;

use super::block::Heads;
use super::cache::{HostKv, KvRows};
use super::host::HostBatch;

mod lanes;
#[cfg(test)]
use lanes::FUSED;
use lanes::{Lanes, Portable};

/// Positions per block of the cached keys' layout: one 512-bit vector of
/// scores (two 256-bit ones on AVX2).
pub(super) const KEY_BLOCK: usize = 16;

/// Query heads scored together: 4 score accumulators each, 12 for 3 heads
/// (a GQA group of SmolLM2), which with a key vector and a broadcast query
/// fit AVX2's 16 vector registers (AVX-512 has 32).
const TILE: usize = 3;

/// Query heads taken through the values together: 2·4 output vectors of
/// independent chains, two broadcast weights and a value vector in
/// registers (3 heads' 12 accumulators spilled to the stack).
const VALUE_TILE: usize = 2;

/// Vectors of a head's outputs accumulated at a time over the positions
/// (`VALUE_TILE · 4` accumulators in registers): 32 outputs on AVX2, 64
/// on AVX-512.
const CHUNK_VECTORS: usize = 4;

/// Writes the new keys and values (`[b·n, n_kv·dh]`) at each row's
/// positions `offset .. offset + n` (positions past the context are
/// padding and dropped; their outputs are never read), in the cache's
/// precision. Each (row, key/value head) has its own keys and values, so
/// that a unit of work reads one contiguous stream of each instead of a
/// third of every cached position's row (measured in `docs/benchmarks.md`:
/// attention 5–15 % faster than with the heads side by side). Values are kept
/// `[position][dh]`; keys in blocks of [`KEY_BLOCK`] positions,
/// `[block][dh][KEY_BLOCK]`, so that a query's scores over a block are one
/// vector of running sums along the head's dimensions.
pub(super) fn write(
    kv: &mut HostKv,
    k: &[f32],
    v: &[f32],
    batch: &HostBatch<'_>,
    heads: Heads,
    max_context: usize,
) {
    match kv {
        HostKv::F32(rows) => write_rows(rows, k, v, batch, heads, max_context),
        HostKv::F16(rows) => write_rows(rows, k, v, batch, heads, max_context),
    }
}

/// [`write()`] into rows of `E`.
fn write_rows<E: Elem>(
    kv: &mut KvRows<E>,
    k: &[f32],
    v: &[f32],
    batch: &HostBatch<'_>,
    heads: Heads,
    max_context: usize,
) {
    let (dh, groups) = (heads.head_dim, heads.n_kv_heads.max(1));
    let width = groups * dh;
    let n = batch.n;
    let slots = batch.offsets.len() * groups;
    if kv.keys.len() < slots {
        kv.keys.resize(slots, Vec::new());
        kv.values.resize(slots, Vec::new());
    }
    for (row, &offset) in batch.offsets.iter().enumerate() {
        let end = (offset + n).min(max_context);
        for g in 0..groups {
            let slot = row * groups + g;
            let (keys, values) = (&mut kv.keys[slot], &mut kv.values[slot]);
            if values.len() < end * dh {
                values.resize(end * dh, E::default());
            }
            let key_len = end.div_ceil(KEY_BLOCK) * dh * KEY_BLOCK;
            if keys.len() < key_len {
                keys.resize(key_len, E::default());
            }
            for p in offset..end {
                let i = (row * n + p - offset) * width + g * dh;
                for (to, &x) in values[p * dh..(p + 1) * dh].iter_mut().zip(&v[i..i + dh]) {
                    *to = E::from_f32(x);
                }
                let block = &mut keys[p / KEY_BLOCK * dh * KEY_BLOCK..];
                for (c, &x) in k[i..i + dh].iter().enumerate() {
                    block[c * KEY_BLOCK + p % KEY_BLOCK] = E::from_f32(x);
                }
            }
        }
    }
}

/// Grouped-query attention (Ainslie et al. 2023) of each query row over its
/// row's cached positions `0 ..= offset + i` (causal), query head `j`
/// reading key/value head `j / (n_heads / n_kv_heads)`:
/// `softmax(s·q·kᵀ) v` (`s` the heads' scale, `1/√dh` unless the file
/// sets another), keys summed in position order (cached f16 keys
/// and values widened exactly to f32 as they are read). Returns
/// `[b·n, n_heads·dh]`.
pub(super) fn attention(q: &[f32], kv: &HostKv, batch: &HostBatch<'_>, heads: Heads) -> Vec<f32> {
    match kv {
        HostKv::F32(rows) => attention_on(q, rows, batch, heads, Kernel::Best),
        HostKv::F16(rows) => attention_on(q, rows, batch, heads, Kernel::Best),
    }
}

/// A cached key or value as stored: f32, or the bits of an f16
/// ([`super::KvPrecision`]).
trait Elem: Copy + Default + Send + Sync {
    /// `x` as stored (for f16: rounded to nearest, ties to even).
    fn from_f32(x: f32) -> Self;
    /// The stored value as f32 (exact).
    fn to_f32(self) -> f32;
    /// `W` stored values widened to a vector (exact).
    fn load<const W: usize, S: Lanes<W>>(s: S, x: &[Self; W]) -> S::V;
}

impl Elem for f32 {
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn load<const W: usize, S: Lanes<W>>(s: S, x: &[f32; W]) -> S::V {
        s.load(x)
    }
}

impl Elem for u16 {
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        half::f16::from_f32(x).to_bits()
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::from_bits(self).to_f32()
    }
    #[inline(always)]
    fn load<const W: usize, S: Lanes<W>>(s: S, x: &[u16; W]) -> S::V {
        s.load_f16(x)
    }
}

/// Which compilation of the kernel a unit runs on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kernel {
    /// AVX-512 where the CPU has it, else AVX2 + FMA + F16C, else portable.
    Best,
    /// AVX2 + FMA + F16C where the CPU has it, else portable.
    #[cfg_attr(not(test), allow(dead_code))]
    Avx2,
    /// Plain arrays.
    #[cfg_attr(not(test), allow(dead_code))]
    Portable,
}

/// [`attention`] on `kernel` (as far as the CPU has it).
fn attention_on<E: Elem>(
    q: &[f32],
    kv: &KvRows<E>,
    batch: &HostBatch<'_>,
    heads: Heads,
    kernel: Kernel,
) -> Vec<f32> {
    let (dh, groups) = (heads.head_dim, heads.n_kv_heads.max(1));
    let group_width = heads.n_heads / groups * dh;
    let n = batch.n;
    let mut out = vec![0.0f32; q.len()];
    if group_width == 0 {
        return out;
    }
    // Slot (i, g): the query heads of pass row i that read key/value head g.
    let q_slots: Vec<&[f32]> = q.chunks_exact(group_width).collect();
    let mut out_slots: Vec<Option<&mut [f32]>> =
        out.chunks_exact_mut(group_width).map(Some).collect();
    // A few short rows are not worth handing between threads.
    let parallel = batch.ids.len() * (batch.offsets.iter().max().copied().unwrap_or(0) + n) >= 64;
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    // Each (sequence, key/value head) splits its n·group queries into
    // units of at most MAX_QUERIES, and into enough that every thread gets
    // two (a one-token step's 3 groups of 3 heads become 6 units, not 3).
    let per_group = n * (heads.n_heads / groups);
    let want = (2 * threads).div_ceil(batch.offsets.len() * groups).max(1);
    let size = per_group.div_ceil(want).clamp(1, MAX_QUERIES);
    let mut units = Vec::new();
    for (row, &offset) in batch.offsets.iter().enumerate() {
        for g in 0..groups {
            let slot = row * groups + g;
            let (Some(keys), Some(values)) = (kv.keys.get(slot), kv.values.get(slot)) else {
                continue; // never: every pass writes its rows first
            };
            let cached = values.len() / dh.max(1);
            let mut queries = Vec::with_capacity(per_group);
            for i in 0..n {
                let slot = (row * n + i) * groups + g;
                // Padding positions may run past the cache; their outputs
                // are never read.
                let seen = (offset + i + 1).min(cached);
                let out = out_slots[slot].take().unwrap_or_default();
                for (q, out) in q_slots[slot].chunks_exact(dh).zip(out.chunks_exact_mut(dh)) {
                    queries.push(Query { q, out, seen });
                }
            }
            // Units as even as the count allows (sizes differ by at most 1).
            let count = per_group.div_ceil(size);
            let mut rest = queries.into_iter();
            for u in 0..count {
                let queries: Vec<Query<'_>> = rest
                    .by_ref()
                    .take(per_group / count + usize::from(u < per_group % count))
                    .collect();
                let seen = queries.iter().map(|q| q.seen).max().unwrap_or(0);
                units.push(Unit {
                    queries,
                    keys: &keys[..seen.div_ceil(KEY_BLOCK) * dh * KEY_BLOCK],
                    values: &values[..seen * dh],
                    heads,
                });
            }
        }
    }
    let run = |unit: Unit<'_, E>| {
        #[cfg(target_arch = "x86_64")]
        {
            if kernel == Kernel::Best
                && let Some(v4) = pulp::x86::V4::try_new()
            {
                return pulp::Simd::vectorize(v4, OnV4(unit, v4));
            }
            if kernel != Kernel::Portable
                && let Some(avx2) = lastmile_core::simd::Avx2F16c::try_new()
            {
                return avx2.vectorize(OnAvx2(unit, avx2));
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = kernel;
        unit.run::<8, _>(Portable);
    };
    if parallel {
        units.into_par_iter().for_each(run);
    } else {
        units.into_iter().for_each(run);
    }
    out
}

/// Query heads of a unit of work: the heads of consecutive pass rows that
/// read one key/value head go through its keys and values together (each
/// key block and value vector loaded once for all of them); 4 rows of
/// SmolLM2's groups of 3, so that a verify pass over 8 tokens still splits
/// into 2 units per key/value head for the threads.
const MAX_QUERIES: usize = 12;

/// Positions of values taken through all of a unit's query heads before
/// the next (their outputs' 32-wide chunks stay in L1 meanwhile).
const VALUE_BLOCK: usize = 64;

/// One query head of one pass row: it attends to the first `seen` cached
/// positions and writes `out` (`dh` wide).
struct Query<'a> {
    q: &'a [f32],
    out: &'a mut [f32],
    seen: usize,
}

/// Up to [`MAX_QUERIES`] query heads of one sequence's pass rows that read
/// one key/value head: its `keys` (blocks of [`KEY_BLOCK`] positions, as
/// [`write()`] lays them out) and `values` (`[positions, dh]`), as far as
/// the last query sees.
struct Unit<'a, E> {
    queries: Vec<Query<'a>>,
    keys: &'a [E],
    values: &'a [E],
    heads: Heads,
}

impl<E: Elem> Unit<'_, E> {
    /// Scaled dot products, softmax and weighted values of every query, in
    /// tiles of up to [`TILE`] queries. A query's sums run in the same
    /// order whatever the tile and the unit it is in.
    #[inline(always)]
    fn run<const W: usize, S: Lanes<W>>(mut self, s: S) {
        let dh = self.heads.head_dim;
        let width = dh.max(1);
        let padded = self.keys.len() / width;
        let mut p = vec![0.0f32; self.queries.len() * padded];
        let scale = s.splat(self.heads.scale);
        for (b, dims) in self.keys.chunks_exact(width * KEY_BLOCK).enumerate() {
            let tiles = self.queries.chunks(TILE).zip(p.chunks_mut(TILE * padded));
            for (qs, ps) in tiles {
                let at = b * KEY_BLOCK;
                for half in 0..KEY_BLOCK / W {
                    let at = at + half * W;
                    match qs.len() {
                        3 => score_tile::<W, S, 3, E>(s, dims, half, qs, ps, padded, at, scale),
                        2 => score_tile::<W, S, 2, E>(s, dims, half, qs, ps, padded, at, scale),
                        _ => score_tile::<W, S, 1, E>(s, dims, half, qs, ps, padded, at, scale),
                    }
                }
            }
        }
        for (q, p) in self.queries.iter().zip(p.chunks_mut(padded.max(1))) {
            softmax_in_place(&mut p[..q.seen]);
        }
        let seen = self.values.len() / width;
        let chunk = CHUNK_VECTORS * W;
        for c in 0..dh / chunk {
            let from = chunk * c;
            for t0 in (0..seen).step_by(VALUE_BLOCK) {
                let span = t0..(t0 + VALUE_BLOCK).min(seen);
                let tiles = self.queries.chunks_mut(VALUE_TILE);
                for (qs, ps) in tiles.zip(p.chunks(VALUE_TILE * padded)) {
                    let job = ValueTile {
                        values: self.values,
                        width,
                        from,
                        to: chunk * c,
                        span: span.clone(),
                        padded,
                    };
                    match qs.len() {
                        2 => job.run::<W, S, 2>(s, qs, ps),
                        _ => job.run::<W, S, 1>(s, qs, ps),
                    }
                }
            }
        }
        // Outputs past the whole chunks, one sum at a time.
        let done = dh / chunk * chunk;
        for (q, p) in self.queries.iter_mut().zip(p.chunks(padded.max(1))) {
            for (e, o) in q.out[done..].iter_mut().enumerate() {
                let column = done + e;
                *o = self
                    .values
                    .chunks_exact(width)
                    .zip(&p[..q.seen])
                    .fold(0.0, |sum, (v, p)| {
                        s.mul_add_one(*p, v[column].to_f32(), sum)
                    });
            }
        }
    }
}

/// The scores of `T` queries (`qs`, into rows of `padded` in `ps`) over
/// `W` positions of one block of keys (`dims`: the head's `dh` dimensions
/// × [`KEY_BLOCK`] positions; the `half`-th `W` of them, starting at
/// position `at`): per query one vector of running sums per dimension
/// modulo 4 (a tail of fewer than 4 dimensions into the first), added as
/// ((a₀ + a₁) + (a₂ + a₃)) and scaled by the heads' scale. Each position's sum is the
/// same whatever `W`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn score_tile<const W: usize, S: Lanes<W>, const T: usize, E: Elem>(
    s: S,
    dims: &[E],
    half: usize,
    qs: &[Query<'_>],
    ps: &mut [f32],
    padded: usize,
    at: usize,
    scale: S::V,
) {
    let q4: [&[[f32; 4]]; T] = std::array::from_fn(|t| qs[t].q.as_chunks::<4>().0);
    let q_tail: [&[f32]; T] = std::array::from_fn(|t| qs[t].q.as_chunks::<4>().1);
    let (k4, k_tail) = dims.as_chunks::<{ 4 * KEY_BLOCK }>();
    // Each dimension's row of the block holds KEY_BLOCK positions; this
    // tile reads the `half`-th `W` of them.
    let mut acc = [[s.splat(0.0); 4]; T];
    for (c, k) in k4.iter().enumerate() {
        let k = k.as_chunks::<KEY_BLOCK>().0;
        for i in 0..4 {
            let kv = E::load(s, &k[i].as_chunks::<W>().0[half]);
            for t in 0..T {
                acc[t][i] = s.mul_add(s.splat(q4[t][c][i]), kv, acc[t][i]);
            }
        }
    }
    for (d, k) in k_tail.as_chunks::<KEY_BLOCK>().0.iter().enumerate() {
        let kv = E::load(s, &k.as_chunks::<W>().0[half]);
        for t in 0..T {
            acc[t][0] = s.mul_add(s.splat(q_tail[t][d]), kv, acc[t][0]);
        }
    }
    for (t, a) in acc.iter().enumerate() {
        let sum = s.add(s.add(a[0], a[1]), s.add(a[2], a[3]));
        let row = t * padded + at;
        ps[row..row + W].copy_from_slice(&s.store(s.mul(sum, scale)));
    }
}

/// One step of the weighted values for a tile of queries: positions `span`
/// of the values' columns `from..` (a chunk of [`CHUNK_VECTORS`] vectors)
/// added into the queries' outputs at `to..`, `o += p_t·v_t` in position
/// order.
struct ValueTile<'a, E> {
    values: &'a [E],
    width: usize,
    from: usize,
    to: usize,
    span: std::ops::Range<usize>,
    padded: usize,
}

impl<E: Elem> ValueTile<'_, E> {
    #[inline(always)]
    fn run<const W: usize, S: Lanes<W>, const T: usize>(
        &self,
        s: S,
        qs: &mut [Query<'_>],
        ps: &[f32],
    ) {
        const V: usize = CHUNK_VECTORS;
        let chunk = V * W;
        let mut acc = [[s.splat(0.0); V]; T];
        for (t, a) in acc.iter_mut().enumerate() {
            let o = qs[t].out[self.to..self.to + chunk].as_chunks::<W>().0;
            for (a, o) in a.iter_mut().zip(o) {
                *a = s.load(o);
            }
        }
        let seen: [usize; T] = std::array::from_fn(|t| qs[t].seen.min(self.span.end));
        let common = seen.iter().copied().min().unwrap_or(0).max(self.span.start);
        let p: [&[f32]; T] = std::array::from_fn(|t| &ps[t * self.padded..(t + 1) * self.padded]);
        // Position `pos`'s chunk of values, for positions `from..to`.
        let rows = |from: usize, to: usize| {
            let chunk = self.from..self.from + chunk;
            let rows = self.values.chunks_exact(self.width).enumerate();
            rows.take(to)
                .skip(from)
                .map(move |(pos, v)| (pos, &v[chunk.clone()]))
        };
        for (pos, v) in rows(self.span.start, common) {
            let v = v.as_chunks::<W>().0;
            let pt: [S::V; T] = std::array::from_fn(|t| s.splat(p[t][pos]));
            for (i, v) in v.iter().enumerate() {
                let v = E::load(s, v);
                for t in 0..T {
                    acc[t][i] = s.mul_add(pt[t], v, acc[t][i]);
                }
            }
        }
        // Queries that see further than the tile's shortest, alone.
        for (t, acc) in acc.iter_mut().enumerate() {
            for (pos, v) in rows(common, seen[t]) {
                let pt = s.splat(p[t][pos]);
                for (a, v) in acc.iter_mut().zip(v.as_chunks::<W>().0) {
                    *a = s.mul_add(pt, E::load(s, v), *a);
                }
            }
        }
        for (t, a) in acc.iter().enumerate() {
            let o = qs[t].out[self.to..self.to + chunk].as_chunks_mut::<W>().0;
            for (o, a) in o.iter_mut().zip(a) {
                *o = s.store(*a);
            }
        }
    }
}

/// `s ← softmax(s)`: the maximum subtracted, the exponentials
/// ([`lastmile_core::fastmath::exp`]), their sum over 8 lanes (then the
/// lanes and the tail in order), each divided by the sum.
#[inline(always)]
fn softmax_in_place(s: &mut [f32]) {
    let max = max_of(s);
    for x in s.iter_mut() {
        *x = exp(*x - max);
    }
    let mut lanes = [0.0f32; 8];
    let (s8, tail) = s.as_chunks::<8>();
    for x in s8 {
        for l in 0..8 {
            lanes[l] += x[l];
        }
    }
    let total = tail.iter().fold(lanes.iter().sum::<f32>(), |t, x| t + x);
    for x in s.iter_mut() {
        *x /= total;
    }
}

/// The largest of `s` (NaNs ignored, as by [`f32::max`]; `−∞` if empty),
/// over 16 running lanes: a fold of one running maximum was a chain of
/// dependent scalar steps that took a third of a verify pass's attention
/// (`docs/benchmarks.md`). The maximum is exact, so the order of its
/// comparisons does not change the value.
#[inline(always)]
fn max_of(s: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let (s16, tail) = s.as_chunks::<16>();
    for x in s16 {
        for l in 0..16 {
            lanes[l] = lanes[l].max(x[l]);
        }
    }
    for (l, x) in lanes.iter_mut().zip(tail) {
        *l = l.max(*x);
    }
    // A tree over the lanes: four dependent steps instead of fifteen.
    let mut width = 8;
    while width > 0 {
        for l in 0..width {
            lanes[l] = lanes[l].max(lanes[l + width]);
        }
        width /= 2;
    }
    lanes[0]
}

/// A unit on the AVX2 kernel: pulp inlines `call` into a function
/// compiled with the token's features, so every intrinsic and loop of the
/// kernel is compiled for them (a closure's body may be left outside it).
#[cfg(target_arch = "x86_64")]
struct OnAvx2<'a, E>(Unit<'a, E>, lastmile_core::simd::Avx2F16c);

#[cfg(target_arch = "x86_64")]
impl<E: Elem> pulp::NullaryFnOnce for OnAvx2<'_, E> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        self.0.run::<8, _>(self.1);
    }
}

/// A unit on the AVX-512 kernel (16-lane vectors), as [`OnAvx2`].
#[cfg(target_arch = "x86_64")]
struct OnV4<'a, E>(Unit<'a, E>, pulp::x86::V4);

#[cfg(target_arch = "x86_64")]
impl<E: Elem> pulp::WithSimd for OnV4<'_, E> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        self.0.run::<16, _>(self.1);
    }
}

// The tests build their caches with the flex backend's RoPE tables.
#[cfg(all(test, feature = "flex"))]
mod tests;
