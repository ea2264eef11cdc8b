//! Byte-pair merges by rank (Sennrich et al. 2016, "Neural Machine
//! Translation of Rare Words with Subword Units", Algorithm 1, applied to
//! bytes as in GPT-2).
//!
//! A piece starts as one symbol per byte. The adjacent pair whose merge has
//! the lowest rank (its line in `tokenizer.ggml.merges`) is merged, the
//! leftmost first among equal ranks, until no adjacent pair has a merge.
//! Candidate pairs sit in a binary heap keyed by `(rank, left position)`;
//! an entry whose pair changed since it was pushed (its rank no longer
//! matches the pair now at that position) is skipped when popped, so a
//! piece of `n` bytes costs `O(n log n)`.
//!
//! Symbols are interned ids: the vocabulary's ids, and ids past the
//! vocabulary for strings that a merge produces or consumes but the
//! vocabulary lacks. Such a symbol, if it survives to the end, is emitted as
//! the single-byte tokens of its text that exist (as llama.cpp does); in
//! consistent vocabularies this never happens.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use super::bytes::BYTE_TO_CHAR;
use super::error::{TokenizerError, TokenizerResult};

/// A multiplicative hasher for the `u64` pair keys (keys are not attacker
/// controlled beyond the vocabulary file, and the table is built once).
#[derive(Default, Clone, Copy)]
pub(crate) struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type PairMap = HashMap<u64, (u32, u32), BuildHasherDefault<PairHasher>>;

fn key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

/// The merge table over interned symbols.
#[derive(Debug, Clone)]
pub(crate) struct Bpe {
    /// `(left, right) → (rank, merged)`.
    merges: PairMap,
    /// The symbol of each byte.
    byte_sym: [u32; 256],
    /// Number of vocabulary tokens (symbols below it are token ids).
    n_vocab: u32,
    /// Tokens emitted for each interned symbol past the vocabulary.
    extra_fallback: Vec<Vec<u32>>,
}

/// Interns strings as symbols.
struct Interner<'v> {
    token_to_id: &'v HashMap<String, u32>,
    n_vocab: u32,
    extra: HashMap<String, u32>,
    extra_text: Vec<String>,
}

impl Interner<'_> {
    fn intern(&mut self, s: &str) -> TokenizerResult<u32> {
        if let Some(&id) = self.token_to_id.get(s) {
            return Ok(id);
        }
        if let Some(&id) = self.extra.get(s) {
            return Ok(id);
        }
        let id = u32::try_from(self.extra_text.len())
            .ok()
            .and_then(|n| self.n_vocab.checked_add(n))
            .ok_or_else(|| TokenizerError::InvalidVocab("too many merge symbols".into()))?;
        self.extra.insert(s.to_owned(), id);
        self.extra_text.push(s.to_owned());
        Ok(id)
    }
}

impl Bpe {
    /// Builds the table from `"left right"` merge lines; the first line of a
    /// pair sets its rank (later duplicates are ignored), and a line
    /// without a separating space after its first byte is skipped, as
    /// llama.cpp reads them.
    pub(crate) fn new(
        token_to_id: &HashMap<String, u32>,
        n_vocab: u32,
        merges: &[String],
    ) -> TokenizerResult<Self> {
        let mut interner = Interner {
            token_to_id,
            n_vocab,
            extra: HashMap::new(),
            extra_text: Vec::new(),
        };
        let mut byte_sym = [0u32; 256];
        let mut buf = [0u8; 4];
        for (b, sym) in byte_sym.iter_mut().enumerate() {
            *sym = interner.intern(BYTE_TO_CHAR[b].encode_utf8(&mut buf))?;
        }
        let mut table = PairMap::with_capacity_and_hasher(merges.len(), Default::default());
        for (rank, line) in merges.iter().enumerate() {
            let rank = u32::try_from(rank)
                .map_err(|_| TokenizerError::InvalidVocab("more than 2^32 merges".into()))?;
            // The separator is the first space after the first byte.
            let Some(sep) = line.bytes().skip(1).position(|b| b == b' ').map(|i| i + 1) else {
                continue;
            };
            let (left, right) = (&line[..sep], &line[sep + 1..]);
            let l = interner.intern(left)?;
            let r = interner.intern(right)?;
            let merged = interner.intern(&format!("{left}{right}"))?;
            table.entry(key(l, r)).or_insert((rank, merged));
        }
        let extra_fallback = interner
            .extra_text
            .iter()
            .map(|text| {
                text.bytes()
                    .filter_map(|b| {
                        let one = [b];
                        std::str::from_utf8(&one)
                            .ok()
                            .and_then(|s| token_to_id.get(s).copied())
                    })
                    .collect()
            })
            .collect();
        Ok(Self {
            merges: table,
            byte_sym,
            n_vocab,
            extra_fallback,
        })
    }

    /// Appends the tokens of one pre-tokenised piece (its raw bytes).
    pub(crate) fn encode_piece(&self, bytes: &[u8], scratch: &mut BpeScratch, out: &mut Vec<u32>) {
        if bytes.len() == 1 {
            self.emit(self.byte_sym[bytes[0] as usize], out);
            return;
        }
        let syms = &mut scratch.syms;
        let heap = &mut scratch.heap;
        syms.clear();
        heap.clear();
        let n = bytes.len();
        syms.extend(bytes.iter().enumerate().map(|(i, &b)| Sym {
            id: self.byte_sym[b as usize],
            prev: i.wrapping_sub(1),
            next: if i + 1 < n { i + 1 } else { NONE },
            alive: true,
        }));
        for i in 1..n {
            self.push_pair(syms, heap, i - 1, i);
        }
        while let Some(Reverse((rank, left))) = heap.pop() {
            // An entry is current when the pair now starting at `left` has
            // the popped rank: ranks are unique per pair, so it is the
            // pair that was pushed (or an identical one).
            let l = syms[left];
            if !l.alive || l.next == NONE {
                continue;
            }
            let right = l.next;
            let r = syms[right];
            let merged = match self.merges.get(&key(l.id, r.id)) {
                Some(&(current, merged)) if current == rank => merged,
                _ => continue, // stale
            };
            syms[left].id = merged;
            syms[left].next = r.next;
            syms[right].alive = false;
            if r.next != NONE {
                syms[r.next].prev = left;
            }
            if l.prev != NONE {
                self.push_pair(syms, heap, l.prev, left);
            }
            if r.next != NONE {
                self.push_pair(syms, heap, left, r.next);
            }
        }
        let mut i = 0;
        while i != NONE {
            self.emit(syms[i].id, out);
            i = syms[i].next;
        }
    }

    fn push_pair(&self, syms: &[Sym], heap: &mut Heap, left: usize, right: usize) {
        if let Some(&(rank, _)) = self.merges.get(&key(syms[left].id, syms[right].id)) {
            heap.push(Reverse((rank, left)));
        }
    }

    fn emit(&self, sym: u32, out: &mut Vec<u32>) {
        if sym < self.n_vocab {
            out.push(sym);
        } else if let Some(tokens) = self.extra_fallback.get((sym - self.n_vocab) as usize) {
            out.extend_from_slice(tokens);
        }
    }
}

const NONE: usize = usize::MAX;

#[derive(Debug, Clone, Copy)]
struct Sym {
    id: u32,
    prev: usize,
    next: usize,
    alive: bool,
}

/// Mergeable adjacent pairs as `(rank, left position)`, lowest first.
type Heap = BinaryHeap<Reverse<(u32, usize)>>;

/// Reusable buffers of [`Bpe::encode_piece`].
#[derive(Debug, Default)]
pub(crate) struct BpeScratch {
    syms: Vec<Sym>,
    heap: Heap,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A naive reference: rescan all pairs after every merge.
    fn naive(token_to_id: &HashMap<String, u32>, merges: &[String], piece: &[u8]) -> Vec<u32> {
        let ranks: HashMap<(String, String), usize> = merges
            .iter()
            .enumerate()
            .rev()
            .filter_map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| ((a.to_owned(), b.to_owned()), i))
            })
            .collect();
        let mut syms: Vec<String> = piece
            .iter()
            .map(|&b| BYTE_TO_CHAR[b as usize].to_string())
            .collect();
        loop {
            let best = (0..syms.len().saturating_sub(1))
                .filter_map(|i| {
                    ranks
                        .get(&(syms[i].clone(), syms[i + 1].clone()))
                        .map(|&r| (r, i))
                })
                .min();
            let Some((_, i)) = best else { break };
            let right = syms.remove(i + 1);
            syms[i].push_str(&right);
        }
        syms.iter().map(|s| token_to_id[s]).collect()
    }

    #[test]
    fn heap_merges_equal_naive_rescans() {
        // A vocabulary of all bytes plus merged strings over a tiny alphabet.
        let mut tokens: Vec<String> = (0..=255u8)
            .map(|b| BYTE_TO_CHAR[b as usize].to_string())
            .collect();
        let merges: Vec<String> = [
            "a b", "b a", "ab a", "a a", "aa a", "b b", "ba b", "ab ab", "bb a",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for m in &merges {
            let joined = m.replace(' ', "");
            if !tokens.contains(&joined) {
                tokens.push(joined);
            }
        }
        let token_to_id: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = Bpe::new(&token_to_id, tokens.len() as u32, &merges).unwrap();
        // Every string over {a, b} up to length 10.
        let mut scratch = BpeScratch::default();
        for len in 1..=10u32 {
            for bits in 0..(1u32 << len) {
                let piece: Vec<u8> = (0..len)
                    .map(|i| if bits >> i & 1 == 1 { b'b' } else { b'a' })
                    .collect();
                let mut out = Vec::new();
                bpe.encode_piece(&piece, &mut scratch, &mut out);
                assert_eq!(
                    out,
                    naive(&token_to_id, &merges, &piece),
                    "piece {:?}",
                    String::from_utf8_lossy(&piece)
                );
            }
        }
    }
}
