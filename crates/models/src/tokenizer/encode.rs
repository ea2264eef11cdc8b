//! Encoding after the special-token partition: byte-level BPE over
//! pre-tokenised pieces, or SentencePiece over whole stretches.

use std::collections::HashMap;
use std::ops::Range;

use super::bpe::{Bpe, BpeScratch};
use super::pretokenize::{self, CharClasses, PreTokenizer, SplitScratch};
use super::spm::{Spm, SpmScratch};
use super::{TokenType, Tokenizer, bytes};

/// A stretch of the input: text to tokenise, or a special token.
#[derive(Debug, Clone)]
pub(super) enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

impl Tokenizer {
    /// Byte-level BPE over the fragments: pre-tokenisation, then merges,
    /// each distinct piece encoded once.
    pub(super) fn encode_pairs(
        &self,
        text: &str,
        fragments: &[Fragment],
        bpe: &Bpe,
        pre: PreTokenizer,
        classes: &CharClasses,
        out: &mut Vec<usize>,
    ) {
        let mut cache: HashMap<&str, Range<usize>> = HashMap::new();
        let mut cached: Vec<u32> = Vec::new();
        let mut ranges = Vec::new();
        let mut split_scratch = SplitScratch::default();
        let mut bpe_scratch = BpeScratch::default();
        for fragment in fragments {
            let range = match fragment {
                Fragment::Token(id) => {
                    out.push(*id as usize);
                    continue;
                }
                Fragment::Text(range) => range.clone(),
            };
            let stretch = &text[range];
            ranges.clear();
            pretokenize::split(pre, classes, stretch, &mut split_scratch, &mut ranges);
            for r in ranges.iter() {
                let piece = &stretch[r.clone()];
                let span = match cache.get(piece) {
                    Some(span) => span.clone(),
                    None => {
                        let start = cached.len();
                        match pre
                            .ignores_merges()
                            .then(|| self.token_to_id.get(&bytes::to_chars(piece.as_bytes())))
                            .flatten()
                        {
                            Some(&id) => cached.push(id),
                            None => {
                                bpe.encode_piece(piece.as_bytes(), &mut bpe_scratch, &mut cached)
                            }
                        }
                        let span = start..cached.len();
                        cache.insert(piece, span.clone());
                        span
                    }
                };
                out.extend(cached[span].iter().map(|&id| id as usize));
            }
        }
    }

    /// Cuts special tokens out of `text` (llama.cpp's special-token
    /// partition): each special token in turn, longest first, splits every
    /// text fragment at its leftmost non-overlapping occurrences, dropping
    /// the white space after a token marked `rstrip`.
    pub(super) fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut fragments = Vec::new();
        if text.is_empty() {
            return fragments;
        }
        fragments.push(Fragment::Text(0..text.len()));
        let mut next = Vec::new();
        for &id in &self.specials {
            let ty = self.types[id as usize];
            if !parse_special && ty != TokenType::UserDefined {
                continue;
            }
            let needle = self.texts[id as usize].as_str();
            if !fragments
                .iter()
                .any(|f| matches!(f, Fragment::Text(r) if text[r.clone()].contains(needle)))
            {
                continue;
            }
            next.clear();
            for fragment in fragments.drain(..) {
                let Fragment::Text(range) = fragment else {
                    next.push(fragment);
                    continue;
                };
                let mut at = range.start;
                for (offset, _) in text[range.clone()].match_indices(needle) {
                    let start = range.start + offset;
                    if start < at {
                        continue; // inside white space already dropped
                    }
                    if start > at {
                        next.push(Fragment::Text(at..start));
                    }
                    next.push(Fragment::Token(id));
                    at = start + needle.len();
                    if self.rstrip[id as usize] {
                        // C's `isspace`, as llama.cpp strips.
                        let rest = &text[at..range.end];
                        let kept = rest.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
                        at += rest.len() - kept.len();
                    }
                }
                if at < range.end {
                    next.push(Fragment::Text(at..range.end));
                }
            }
            std::mem::swap(&mut fragments, &mut next);
        }
        fragments
    }

    /// SentencePiece over the fragments: a space goes before text that
    /// opens the input or follows a special token (`add_space_prefix`).
    pub(super) fn encode_sentencepiece(
        &self,
        text: &str,
        fragments: &[Fragment],
        spm: &Spm,
        out: &mut Vec<usize>,
    ) {
        let mut scratch = SpmScratch::default();
        let mut ids = Vec::new();
        let mut after_special = true;
        for fragment in fragments {
            match fragment {
                Fragment::Token(id) => {
                    out.push(*id as usize);
                    after_special = true;
                }
                Fragment::Text(range) => {
                    ids.clear();
                    let prefix = spm.add_space_prefix() && after_special;
                    spm.encode(
                        &self.token_to_id,
                        &text[range.clone()],
                        prefix,
                        &mut scratch,
                        &mut ids,
                    );
                    out.extend(ids.iter().map(|&id| id as usize));
                    after_special = false;
                }
            }
        }
    }
}
