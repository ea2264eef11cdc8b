//! SentencePiece BPE (Kudo & Richardson 2018, "SentencePiece: A simple and
//! language independent subword tokenizer", the BPE model) as llama.cpp
//! applies it to `llama` vocabularies.
//!
//! The text, spaces written `▁`, starts as one symbol per character. Of
//! all adjacent pairs whose concatenation is a token, the one whose token
//! has the highest score is merged, the leftmost first among equal
//! scores, until no adjacent pair forms a token. A remaining symbol that is
//! not a token (a character outside the vocabulary) becomes the byte
//! tokens `<0xXX>` of its UTF-8 ("byte fallback").
//!
//! Candidate pairs sit in a binary heap keyed by `(score, left position)`;
//! an entry whose symbols changed since it was pushed (their lengths no
//! longer add up to its length) is skipped when popped, so `n` characters
//! cost `O(n log n)`. A character that no token of two or more characters
//! contains (a line break in Llama 2's vocabulary) can never be merged
//! with a neighbour, so the text is cut around such characters and each
//! stretch merged on its own — the same tokens, with a heap the size of a
//! line rather than of the whole text (the 1.3 MB corpus in a tenth of
//! the time). (llama.cpp also keeps the pair each merged text came
//! from, to split a final symbol that is not a token; a merged symbol
//! always is one, and a single character is no concatenation of two, so
//! that path is never taken and is left out here.)

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};

use super::error::{TokenizerError, TokenizerResult};

/// SentencePiece's stand-in for a space.
pub(crate) const SPACE: char = '\u{2581}';

/// Scores and the byte-fallback table of a SentencePiece vocabulary.
#[derive(Debug, Clone)]
pub(crate) struct Spm {
    scores: Vec<f32>,
    /// The token of each byte: `<0xXX>`, else the byte as a one-character
    /// token (ASCII), else the unknown token.
    byte_token: [u32; 256],
    add_space_prefix: bool,
    /// Characters that some token of two or more characters contains;
    /// any other character is never merged.
    mergeable: HashSet<char>,
}

/// One symbol: a byte range of the escaped text, linked to its neighbours.
#[derive(Debug, Clone, Copy)]
struct Sym {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
}

const NONE: usize = usize::MAX;

/// A candidate merge of the symbols at `left` and `right`.
#[derive(Debug, Clone, Copy)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// The heap's top: the highest score, then the leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// Reusable buffers of [`Spm::encode`].
#[derive(Debug, Default)]
pub(crate) struct SpmScratch {
    text: String,
    syms: Vec<Sym>,
    heap: BinaryHeap<Bigram>,
}

impl Spm {
    /// Builds the byte-fallback table.
    ///
    /// # Errors
    /// [`TokenizerError::InvalidVocab`] when `scores` does not have one
    /// score per token, or a byte has neither a byte token nor a
    /// one-character token and there is no unknown token to stand for it.
    pub(crate) fn new(
        token_to_id: &HashMap<String, u32>,
        scores: Vec<f32>,
        n_vocab: usize,
        unk: Option<usize>,
        add_space_prefix: bool,
    ) -> TokenizerResult<Self> {
        if scores.len() != n_vocab {
            return Err(TokenizerError::InvalidVocab(format!(
                "{} scores for {n_vocab} tokens",
                scores.len()
            )));
        }
        let mut byte_token = [0u32; 256];
        for (b, slot) in byte_token.iter_mut().enumerate() {
            let hex = format!("<0x{b:02X}>");
            let one = (b < 128).then(|| char::from(b as u8).to_string());
            *slot = match token_to_id
                .get(&hex)
                .or_else(|| one.as_ref().and_then(|s| token_to_id.get(s)))
            {
                Some(&id) => id,
                None => match unk {
                    Some(unk) => unk as u32,
                    None => {
                        return Err(TokenizerError::InvalidVocab(format!(
                            "SentencePiece vocabulary has no token for byte {hex} and no \
                             unknown token"
                        )));
                    }
                },
            };
        }
        let mergeable = token_to_id
            .keys()
            .filter(|t| t.chars().nth(1).is_some())
            .flat_map(|t| t.chars())
            .collect();
        Ok(Self {
            scores,
            byte_token,
            add_space_prefix,
            mergeable,
        })
    }

    /// Whether text gets a leading space (`tokenizer.ggml.add_space_prefix`).
    pub(crate) fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// Appends the tokens of `text`, with a space put before it when
    /// `prefix_space`.
    pub(crate) fn encode(
        &self,
        token_to_id: &HashMap<String, u32>,
        text: &str,
        prefix_space: bool,
        scratch: &mut SpmScratch,
        out: &mut Vec<u32>,
    ) {
        let mut escaped = std::mem::take(&mut scratch.text);
        escaped.clear();
        if prefix_space {
            escaped.push(SPACE);
        }
        escaped.extend(text.chars().map(|c| if c == ' ' { SPACE } else { c }));
        // Stretches between characters that never merge, and those
        // characters alone.
        let mut start = 0;
        for (at, c) in escaped.char_indices() {
            if !self.mergeable.contains(&c) {
                self.merge(token_to_id, &escaped[start..at], scratch, out);
                let end = at + c.len_utf8();
                self.merge(token_to_id, &escaped[at..end], scratch, out);
                start = end;
            }
        }
        self.merge(token_to_id, &escaped[start..], scratch, out);
        scratch.text = escaped;
    }

    /// Appends the tokens of one stretch of escaped text: the merges by
    /// score, then each symbol as its token or its bytes.
    fn merge(
        &self,
        token_to_id: &HashMap<String, u32>,
        escaped: &str,
        scratch: &mut SpmScratch,
        out: &mut Vec<u32>,
    ) {
        let SpmScratch { syms, heap, .. } = scratch;
        syms.clear();
        heap.clear();
        let n = escaped.chars().count();
        syms.extend(escaped.char_indices().enumerate().map(|(i, (at, c))| Sym {
            start: at,
            len: c.len_utf8(),
            prev: i.wrapping_sub(1),
            next: if i + 1 < n { i + 1 } else { NONE },
        }));
        let token = |s: &Sym, len: usize| token_to_id.get(&escaped[s.start..s.start + len]);
        let push = |syms: &[Sym], heap: &mut BinaryHeap<Bigram>, left: usize, right: usize| {
            if left == NONE || right == NONE {
                return;
            }
            let len = syms[left].len + syms[right].len;
            if let Some(&id) = token(&syms[left], len) {
                heap.push(Bigram {
                    score: self.scores[id as usize],
                    left,
                    right,
                    len,
                });
            }
        };
        for i in 1..n {
            push(syms, heap, i - 1, i);
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (syms[b.left], syms[b.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
                continue; // stale: one of the symbols changed
            }
            syms[b.left].len = b.len;
            syms[b.left].next = r.next;
            syms[b.right].len = 0;
            if r.next != NONE {
                syms[r.next].prev = b.left;
            }
            push(syms, heap, l.prev, b.left);
            push(syms, heap, b.left, r.next);
        }
        let mut i = if n == 0 { NONE } else { 0 };
        while i != NONE {
            let s = syms[i];
            match token(&s, s.len) {
                Some(&id) => out.push(id),
                None => out.extend(
                    escaped.as_bytes()[s.start..s.start + s.len]
                        .iter()
                        .map(|&b| self.byte_token[b as usize]),
                ),
            }
            i = s.next;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A naive reference: scan all adjacent pairs for the best merge each
    /// time (highest score, leftmost), `O(n²)`.
    fn naive(vocab: &HashMap<String, u32>, scores: &[f32], text: &str) -> Vec<String> {
        let mut syms: Vec<String> = text.chars().map(String::from).collect();
        loop {
            let mut best: Option<(f32, usize)> = None;
            for i in 1..syms.len() {
                if let Some(&id) = vocab.get(&format!("{}{}", syms[i - 1], syms[i])) {
                    let s = scores[id as usize];
                    if best.is_none_or(|(b, _)| s > b) {
                        best = Some((s, i - 1));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            let right = syms.remove(i + 1);
            syms[i].push_str(&right);
        }
        syms
    }

    #[test]
    fn merges_by_score_and_matches_a_naive_scan() {
        let entries = [
            ("<unk>", 0.0),
            ("▁", -1.0),
            ("a", -2.0),
            ("b", -3.0),
            ("ab", -4.0),
            ("▁a", -5.0),
            ("▁ab", -0.5),
            ("ba", -4.0),
            ("aba", -6.0),
            ("bb", -2.5),
            // 'c' is in no longer token, so the text is cut around it;
            // '\n' is in no token at all (the unknown token).
            ("c", -1.5),
        ];
        let vocab: HashMap<String, u32> = entries
            .iter()
            .enumerate()
            .map(|(i, (t, _))| ((*t).to_owned(), i as u32))
            .collect();
        let scores: Vec<f32> = entries.iter().map(|e| e.1).collect();
        let spm = Spm::new(&vocab, scores.clone(), entries.len(), Some(0), true).unwrap();
        let mut scratch = SpmScratch::default();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for len in 0..40 {
            for _ in 0..20 {
                let text: String = (0..len)
                    .map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        ['a', 'b', ' ', 'a', 'b', ' ', 'c', '\n'][(rng % 8) as usize]
                    })
                    .collect();
                let mut out = Vec::new();
                spm.encode(&vocab, &text, true, &mut scratch, &mut out);
                let escaped = format!("▁{}", text.replace(' ', "▁"));
                let expected: Vec<u32> = naive(&vocab, &scores, &escaped)
                    .iter()
                    .map(|s| vocab.get(s).copied().unwrap_or(0))
                    .collect();
                assert_eq!(out, expected, "{text:?}");
            }
        }
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes() {
        let mut vocab: HashMap<String, u32> = HashMap::new();
        vocab.insert("<unk>".into(), 0);
        for b in 0..256u32 {
            vocab.insert(format!("<0x{b:02X}>"), 1 + b);
        }
        vocab.insert("▁".into(), 257);
        let spm = Spm::new(&vocab, vec![0.0; 258], 258, Some(0), true).unwrap();
        let mut out = Vec::new();
        spm.encode(&vocab, "é", false, &mut SpmScratch::default(), &mut out);
        assert_eq!(out, [1 + 0xC3, 1 + 0xA9]);
        out.clear();
        spm.encode(&vocab, "", true, &mut SpmScratch::default(), &mut out);
        assert_eq!(out, [257]);
        // Without byte tokens or an unknown token, bytes cannot be encoded.
        let mut small: HashMap<String, u32> = HashMap::new();
        small.insert("a".into(), 0);
        assert!(Spm::new(&small, vec![0.0], 1, None, true).is_err());
        assert!(Spm::new(&small, vec![], 1, Some(0), true).is_err());
    }
}
