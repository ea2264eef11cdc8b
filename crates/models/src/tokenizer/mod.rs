//! The byte-level BPE tokenizer of GGUF checkpoints (GPT-2 style, as in
//! SmolLM2), built from the file's metadata and matching llama.cpp's
//! tokenisation id for id.
//!
//! # What is read
//!
//! | key | use |
//! |---|---|
//! | `tokenizer.ggml.model` | must be `gpt2` (byte-level BPE) |
//! | `tokenizer.ggml.pre` | the pre-tokenisation rule ([`PreTokenizer::from_name`]) |
//! | `tokenizer.ggml.tokens`, `.token_type` | the vocabulary and each token's [`TokenType`] |
//! | `tokenizer.ggml.merges` | the merges, by rank |
//! | `tokenizer.ggml.{bos,eos,unknown,padding}_token_id` | [`SpecialTokens`] |
//! | `tokenizer.ggml.add_bos_token`, `.add_eos_token` | what `add_special` adds |
//! | `tokenizer.chat_template` | [`ChatTemplate`] |
//!
//! # Encoding (as llama.cpp's `llama_tokenize`)
//!
//! 1. **Special tokens.** With `parse_special`, occurrences of the text of
//!    every control, user-defined and unknown token are cut out of the text
//!    and become that token, the longest texts first. Without it only
//!    user-defined tokens are (SmolLM2 has none), so `"<|im_start|>"` is
//!    then tokenised as ordinary text.
//! 2. **Pre-tokenisation** of each remaining stretch ([`PreTokenizer`]):
//!    for SmolLM2 (`smollm`) every digit alone, then GPT-2's pattern.
//! 3. **Byte-level BPE** on each piece: its UTF-8 bytes, merged by rank
//!    (Sennrich et al. 2016, Algorithm 1) with a heap, leftmost first among
//!    equal ranks. Identical pieces are encoded once per call.
//! 4. With `add_special`, BOS / EOS as `add_bos_token` / `add_eos_token`
//!    say (both false for SmolLM2).
//!
//! # Decoding
//!
//! Each normal token maps back to bytes through GPT-2's byte↔character
//! table; control and unknown tokens give their text only when `special`
//! is asked for. [`Tokenizer::decode`] replaces invalid UTF-8 by U+FFFD;
//! [`StreamDecoder`] emits text token by token, holding back the bytes of an
//! unfinished character.
//!
//! # Agreement with llama.cpp, and speed
//!
//! `tests/it/tokenizer_llama_cpp.rs` checks SmolLM2-135M-Instruct's GGUF
//! against a fixture written by llama-cpp-python 0.3.36
//! (`tests/fixtures/make_tokenizer_fixture.py`): 50 varied strings and 300
//! seeded random ones give identical ids with and without `parse_special`,
//! and identical detokenisation; the shipped 1.3 MB corpus and four long
//! single pieces give identical ids (by count and hash). In a release build
//! on the 2-core reference machine the corpus encodes in about 0.05 s
//! (llama.cpp: about 1.35 s), a megabyte of random mixed-script text in
//! about 0.15 s, and the worst case measured, one piece of 10⁶ identical
//! letters, in about 0.5 s.
//!
//! # Dependencies
//!
//! The pre-tokenizer is hand-written (llama.cpp does the same): GPT-2's
//! pattern needs a look-ahead, which only backtracking regex engines offer,
//! and the scanner is linear. The only new dependency is `regex-syntax`
//! (already compiled for burn's `regex`), whose Unicode tables give the
//! letter and number categories, restricted to Unicode 15.1 as llama.cpp's
//! tables are (see [`PreTokenizer`]). The HF `tokenizers` crate was not
//! used: its default features build C code (`onig`, `esaxx_fast`) and
//! progress bars (`indicatif`); its pipeline would have to be assembled
//! from the GGUF keys anyway; and its regex classes follow its own Unicode
//! version, not llama.cpp's.
//!
//! # Examples
//!
//! A tiny vocabulary (the 256 bytes and four merges):
//!
//! ```
//! use lastmile_models::tokenizer::{Tokenizer, Vocabulary};
//! let vocab = Vocabulary::byte_level(&["l l", "h e", "he ll", "hell o"], &["<|im_end|>"]);
//! let tok = Tokenizer::from_vocabulary(vocab)?;
//! let ids = tok.encode("hello<|im_end|>", false, true);
//! assert_eq!(ids.len(), 2); // "hello" and the control token
//! assert_eq!(tok.decode(&ids, true)?, "hello<|im_end|>");
//! assert_eq!(tok.decode(&ids, false)?, "hello"); // control tokens hidden
//! assert_eq!(tok.encode("hello<|im_end|>", false, false).len(), 1 + 10);
//! # Ok::<(), lastmile_models::tokenizer::TokenizerError>(())
//! ```
//!
//! SmolLM2 from its GGUF file:
//!
//! ```no_run
//! use lastmile_core::gguf::GgufFile;
//! use lastmile_models::tokenizer::{ChatMessage, Tokenizer};
//! let file = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let tok = Tokenizer::from_gguf(&file)?;
//! let prompt = tok.apply_chat_template(&[ChatMessage::new("user", "Hi!")], true)?;
//! let ids = tok.encode(&prompt, true, true);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bpe;
mod bytes;
mod chat;
mod decode;
mod error;
mod pretokenize;
mod vocab;

use std::collections::HashMap;
use std::ops::Range;

use lastmile_core::gguf::GgufFile;

use bpe::{Bpe, BpeScratch};
pub use chat::{ChatMessage, ChatTemplate};
pub use decode::StreamDecoder;
pub use error::{TokenizerError, TokenizerResult};
pub use pretokenize::PreTokenizer;
use pretokenize::{CharClasses, SplitScratch};
pub use vocab::{SpecialTokens, TokenType, Vocabulary};

/// Texts of tokens that end a generation (as llama.cpp's end-of-generation
/// set), when they are in the vocabulary.
const END_OF_GENERATION: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "<|end_of_text|>",
];

/// A byte-level BPE tokenizer; see the [module docs](self).
///
/// Immutable after construction (`Send + Sync`): encoding keeps its cache
/// and buffers per call.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    texts: Vec<String>,
    types: Vec<TokenType>,
    token_to_id: HashMap<String, u32>,
    /// Decoded bytes of every token (its text for special tokens).
    pieces: Vec<Box<[u8]>>,
    bpe: Bpe,
    pre: PreTokenizer,
    classes: CharClasses,
    /// Special tokens matched with `parse_special`, longest text first.
    specials: Vec<u32>,
    special: SpecialTokens,
    add_bos: bool,
    add_eos: bool,
    end_of_generation: Vec<usize>,
    chat_template: Option<String>,
}

/// A stretch of the input: text to tokenise, or a special token.
#[derive(Debug, Clone)]
enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

impl Tokenizer {
    /// The tokenizer of a GGUF file.
    ///
    /// # Errors
    /// As [`Vocabulary::from_metadata`] and [`Tokenizer::from_vocabulary`].
    ///
    /// # Examples
    /// ```no_run
    /// use lastmile_core::gguf::GgufFile;
    /// use lastmile_models::tokenizer::Tokenizer;
    /// let tok = Tokenizer::from_gguf(&GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?)?;
    /// assert_eq!(tok.encode("Hello world! 123", false, false).len(), 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_gguf(file: &GgufFile) -> TokenizerResult<Self> {
        Self::from_vocabulary(Vocabulary::from_metadata(file.metadata())?)
    }

    /// Builds the tokenizer: the text→id map (a repeated text maps to its
    /// last id, and an empty text is renamed `[EMPTY_<id>]`, as llama.cpp
    /// does), the merge table and the decoded bytes of every token.
    ///
    /// # Errors
    /// [`TokenizerError::InvalidVocab`] for an empty vocabulary, more than
    /// 2³¹ tokens, a `token_types` length different from `tokens`, a
    /// special id outside the vocabulary, or `add_bos` / `add_eos` without
    /// a BOS / EOS id.
    ///
    /// # Examples
    /// ```
    /// use lastmile_models::tokenizer::{Tokenizer, TokenizerError, Vocabulary};
    /// let mut v = Vocabulary::byte_level(&[], &[]);
    /// v.add_bos = true; // but no BOS id
    /// assert!(matches!(Tokenizer::from_vocabulary(v), Err(TokenizerError::InvalidVocab(_))));
    /// ```
    pub fn from_vocabulary(vocab: Vocabulary) -> TokenizerResult<Self> {
        let Vocabulary {
            mut tokens,
            token_types,
            merges,
            pre_tokenizer,
            special,
            add_bos,
            add_eos,
            chat_template,
        } = vocab;
        let invalid = |m: String| Err(TokenizerError::InvalidVocab(m));
        let n = tokens.len();
        if n == 0 || n > i32::MAX as usize {
            return invalid(format!("{n} tokens (expected 1..=2^31-1)"));
        }
        if token_types.len() != n {
            return invalid(format!("{} token types for {n} tokens", token_types.len()));
        }
        for (name, id) in [
            ("bos", special.bos),
            ("eos", special.eos),
            ("unk", special.unk),
            ("pad", special.pad),
        ] {
            if let Some(id) = id.filter(|&id| id >= n) {
                return invalid(format!("{name} token id {id} >= vocabulary size {n}"));
            }
        }
        if add_bos && special.bos.is_none() {
            return invalid("add_bos_token is set but there is no BOS id".into());
        }
        if add_eos && special.eos.is_none() {
            return invalid("add_eos_token is set but there is no EOS id".into());
        }
        let mut token_to_id = HashMap::with_capacity(n);
        for (id, text) in tokens.iter_mut().enumerate() {
            if text.is_empty() {
                *text = format!("[EMPTY_{id}]");
            }
            token_to_id.insert(text.clone(), id as u32);
        }
        let bpe = Bpe::new(&token_to_id, n as u32, &merges)?;
        let pieces = tokens
            .iter()
            .zip(&token_types)
            .map(|(text, &ty)| decoded_piece(text, ty))
            .collect();
        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&id| token_types[id as usize].is_special())
            .collect();
        specials.sort_by_key(|&id| (std::cmp::Reverse(tokens[id as usize].len()), id));
        let mut end_of_generation: Vec<usize> = special.eos.into_iter().collect();
        for text in END_OF_GENERATION {
            if let Some(&id) = token_to_id.get(*text)
                && !end_of_generation.contains(&(id as usize))
            {
                end_of_generation.push(id as usize);
            }
        }
        Ok(Self {
            texts: tokens,
            types: token_types,
            token_to_id,
            pieces,
            bpe,
            pre: pre_tokenizer,
            classes: CharClasses::new(),
            specials,
            special,
            add_bos,
            add_eos,
            end_of_generation,
            chat_template,
        })
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }

    /// The pre-tokenisation rule.
    pub fn pre_tokenizer(&self) -> PreTokenizer {
        self.pre
    }

    /// Special token ids.
    pub fn special_tokens(&self) -> SpecialTokens {
        self.special
    }

    /// Whether `add_special` prepends BOS (`tokenizer.ggml.add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `add_special` appends EOS (`tokenizer.ggml.add_eos_token`).
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Tokens that end a generation: EOS and the vocabulary's end-of-turn
    /// tokens (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, …).
    pub fn end_of_generation(&self) -> &[usize] {
        &self.end_of_generation
    }

    /// Whether `id` ends a generation (see [`end_of_generation`](Self::end_of_generation)).
    pub fn is_end_of_generation(&self, id: usize) -> bool {
        self.end_of_generation.contains(&id)
    }

    /// The id of a token text, if it is in the vocabulary.
    pub fn token_id(&self, text: &str) -> Option<usize> {
        self.token_to_id.get(text).map(|&id| id as usize)
    }

    fn check(&self, id: usize) -> TokenizerResult<()> {
        if id < self.texts.len() {
            Ok(())
        } else {
            Err(TokenizerError::TokenOutOfRange {
                id,
                vocab_size: self.texts.len(),
            })
        }
    }

    /// A token's text as stored (GPT-2 byte characters for normal tokens).
    ///
    /// # Errors
    /// [`TokenizerError::TokenOutOfRange`].
    pub fn token_text(&self, id: usize) -> TokenizerResult<&str> {
        self.check(id)?;
        Ok(&self.texts[id])
    }

    /// A token's type.
    ///
    /// # Errors
    /// [`TokenizerError::TokenOutOfRange`].
    pub fn token_type(&self, id: usize) -> TokenizerResult<TokenType> {
        self.check(id)?;
        Ok(self.types[id])
    }

    /// The bytes a token decodes to: empty for control and unknown tokens
    /// unless `special`, and for unused or undefined ones.
    ///
    /// # Errors
    /// [`TokenizerError::TokenOutOfRange`].
    pub fn token_bytes(&self, id: usize, special: bool) -> TokenizerResult<&[u8]> {
        self.check(id)?;
        let shown = match self.types[id] {
            TokenType::Control | TokenType::Unknown => special,
            TokenType::Unused | TokenType::Undefined => false,
            TokenType::Normal | TokenType::UserDefined | TokenType::Byte => true,
        };
        Ok(if shown { &self.pieces[id] } else { &[] })
    }

    /// The pieces that BPE sees for `text` (special tokens not split out).
    ///
    /// # Examples
    /// ```
    /// # use lastmile_models::tokenizer::{Tokenizer, Vocabulary};
    /// let tok = Tokenizer::from_vocabulary(Vocabulary::byte_level(&[], &[]))?;
    /// assert_eq!(tok.pre_tokenize("Hi  there, 42!"), ["Hi", " ", " there", ",", " ", "4", "2", "!"]);
    /// # Ok::<(), lastmile_models::tokenizer::TokenizerError>(())
    /// ```
    pub fn pre_tokenize<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut ranges = Vec::new();
        pretokenize::split(
            self.pre,
            &self.classes,
            text,
            &mut SplitScratch::default(),
            &mut ranges,
        );
        ranges.into_iter().map(|r| &text[r]).collect()
    }

    /// Token ids of `text`, as llama.cpp's `llama_tokenize(text,
    /// add_special, parse_special)`.
    ///
    /// - `add_special`: add BOS / EOS where the vocabulary asks for them;
    /// - `parse_special`: turn the text of control tokens into those tokens.
    ///
    /// # Examples
    /// ```
    /// # use lastmile_models::tokenizer::{Tokenizer, Vocabulary};
    /// let tok = Tokenizer::from_vocabulary(Vocabulary::byte_level(&["Ġ t", "Ġt o"], &["<|im_end|>"]))?;
    /// let ids = tok.encode(" to<|im_end|>", false, true);
    /// assert_eq!(ids, [tok.token_id("Ġto").unwrap(), tok.token_id("<|im_end|>").unwrap()]);
    /// # Ok::<(), lastmile_models::tokenizer::TokenizerError>(())
    /// ```
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<usize> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special
            && self.add_bos
            && let Some(bos) = self.special.bos
        {
            out.push(bos);
        }
        let mut cache: HashMap<&str, Range<usize>> = HashMap::new();
        let mut cached: Vec<u32> = Vec::new();
        let mut ranges = Vec::new();
        let mut split_scratch = SplitScratch::default();
        let mut bpe_scratch = BpeScratch::default();
        for fragment in self.partition(text, parse_special) {
            let range = match fragment {
                Fragment::Token(id) => {
                    out.push(id as usize);
                    continue;
                }
                Fragment::Text(range) => range,
            };
            let stretch = &text[range];
            ranges.clear();
            pretokenize::split(
                self.pre,
                &self.classes,
                stretch,
                &mut split_scratch,
                &mut ranges,
            );
            for r in ranges.iter() {
                let piece = &stretch[r.clone()];
                let span = match cache.get(piece) {
                    Some(span) => span.clone(),
                    None => {
                        let start = cached.len();
                        self.bpe
                            .encode_piece(piece.as_bytes(), &mut bpe_scratch, &mut cached);
                        let span = start..cached.len();
                        cache.insert(piece, span.clone());
                        span
                    }
                };
                out.extend(cached[span].iter().map(|&id| id as usize));
            }
        }
        if add_special
            && self.add_eos
            && let Some(eos) = self.special.eos
        {
            out.push(eos);
        }
        out
    }

    /// Cuts special tokens out of `text` (llama.cpp's special-token
    /// partition): each special token in turn, longest first, splits every
    /// text fragment at its leftmost non-overlapping occurrences.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
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
                    if start > at {
                        next.push(Fragment::Text(at..start));
                    }
                    next.push(Fragment::Token(id));
                    at = start + needle.len();
                }
                if at < range.end {
                    next.push(Fragment::Text(at..range.end));
                }
            }
            std::mem::swap(&mut fragments, &mut next);
        }
        fragments
    }

    /// The bytes of `ids` concatenated (see [`token_bytes`](Self::token_bytes)).
    ///
    /// # Errors
    /// [`TokenizerError::TokenOutOfRange`] for any id outside the vocabulary.
    pub fn decode_bytes(&self, ids: &[usize], special: bool) -> TokenizerResult<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id, special)?);
        }
        Ok(out)
    }

    /// The text of `ids`; invalid UTF-8 (e.g. half an emoji) becomes U+FFFD.
    ///
    /// # Errors
    /// [`TokenizerError::TokenOutOfRange`] for any id outside the vocabulary.
    ///
    /// # Examples
    /// ```
    /// # use lastmile_models::tokenizer::{Tokenizer, Vocabulary};
    /// let tok = Tokenizer::from_vocabulary(Vocabulary::byte_level(&[], &[]))?;
    /// let ids = tok.encode("né", false, false); // n, 0xC3, 0xA9
    /// assert_eq!(tok.decode(&ids, false)?, "né");
    /// assert_eq!(tok.decode(&ids[..2], false)?, "n\u{fffd}");
    /// assert!(tok.decode(&[1 << 20], false).is_err());
    /// # Ok::<(), lastmile_models::tokenizer::TokenizerError>(())
    /// ```
    pub fn decode(&self, ids: &[usize], special: bool) -> TokenizerResult<String> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids, special)?).into_owned())
    }

    /// A decoder that turns ids into text one at a time, emitting only
    /// complete characters ([`StreamDecoder`]).
    pub fn stream_decoder(&self, special: bool) -> StreamDecoder<'_> {
        StreamDecoder::new(self, special)
    }

    /// The Jinja chat template from the metadata, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders a conversation with the model's own chat template (read from
    /// `tokenizer.chat_template`), ending with the assistant header when
    /// `add_generation_prompt`. Encode the result with `parse_special`.
    ///
    /// # Errors
    /// [`TokenizerError::MissingChatTemplate`] when the metadata has none;
    /// [`TokenizerError::UnsupportedChatTemplate`] when it is not one of the
    /// templates [`ChatTemplate::parse`] recognises.
    ///
    /// # Examples
    /// ```
    /// # use lastmile_models::tokenizer::{ChatMessage, Tokenizer, TokenizerError, Vocabulary};
    /// let mut v = Vocabulary::byte_level(&[], &["<|im_start|>", "<|im_end|>"]);
    /// let tok = Tokenizer::from_vocabulary(v.clone())?;
    /// let chat = [ChatMessage::new("user", "Hi")];
    /// assert!(matches!(tok.apply_chat_template(&chat, true), Err(TokenizerError::MissingChatTemplate)));
    /// v.chat_template = Some("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' \
    ///     + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}\
    ///     {{ '<|im_start|>assistant\n' }}{% endif %}".into());
    /// let tok = Tokenizer::from_vocabulary(v)?;
    /// assert_eq!(tok.apply_chat_template(&chat, true)?, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    /// # Ok::<(), TokenizerError>(())
    /// ```
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage<'_>],
        add_generation_prompt: bool,
    ) -> TokenizerResult<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or(TokenizerError::MissingChatTemplate)?;
        Ok(ChatTemplate::parse(template)?.apply(messages, add_generation_prompt))
    }

    /// The ids of a conversation: [`apply_chat_template`](Self::apply_chat_template)
    /// encoded with `add_special` and `parse_special`, so the turn markers
    /// become their control tokens.
    ///
    /// # Errors
    /// As [`apply_chat_template`](Self::apply_chat_template).
    ///
    /// # Examples
    /// ```
    /// # use lastmile_models::tokenizer::{ChatMessage, Tokenizer, Vocabulary};
    /// let mut v = Vocabulary::byte_level(&[], &["<|im_start|>", "<|im_end|>"]);
    /// v.chat_template = Some("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' \
    ///     + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}\
    ///     {{ '<|im_start|>assistant\n' }}{% endif %}".into());
    /// let tok = Tokenizer::from_vocabulary(v)?;
    /// let ids = tok.encode_chat(&[ChatMessage::new("user", "Hi")], true)?;
    /// let start = tok.token_id("<|im_start|>").unwrap();
    /// assert_eq!(ids.iter().filter(|&&id| id == start).count(), 2);
    /// # Ok::<(), lastmile_models::tokenizer::TokenizerError>(())
    /// ```
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage<'_>],
        add_generation_prompt: bool,
    ) -> TokenizerResult<Vec<usize>> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        Ok(self.encode(&text, true, true))
    }
}

/// The bytes a token stands for: GPT-2 byte characters mapped back for
/// normal tokens (a character outside that alphabet is kept as its own
/// UTF-8), `<0xXX>` as that byte for byte tokens, and the text itself for
/// special tokens.
fn decoded_piece(text: &str, ty: TokenType) -> Box<[u8]> {
    match ty {
        TokenType::Normal => {
            let mut out = Vec::with_capacity(text.len());
            let mut buf = [0u8; 4];
            for c in text.chars() {
                match bytes::char_to_byte(c) {
                    Some(b) => out.push(b),
                    None => out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
                }
            }
            out.into_boxed_slice()
        }
        TokenType::Byte => text
            .strip_prefix("<0x")
            .and_then(|h| h.strip_suffix('>'))
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .map_or_else(|| Box::<[u8]>::from(text.as_bytes()), |b| Box::new([b])),
        _ => text.as_bytes().into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tiny() -> Tokenizer {
        Tokenizer::from_vocabulary(Vocabulary::byte_level(
            &["Ġ t", "h e", "Ġt he", "i n", "Ġ Ġ", "ĠĠ Ġ"],
            &["<|im_start|>", "<|im_end|>", "<|im_end|>x"],
        ))
        .unwrap()
    }

    #[test]
    fn special_tokens_only_with_parse_special_longest_first() {
        let tok = tiny();
        let start = tok.token_id("<|im_start|>").unwrap();
        let end = tok.token_id("<|im_end|>").unwrap();
        let endx = tok.token_id("<|im_end|>x").unwrap();
        let ids = tok.encode("<|im_start|>the<|im_end|>x<|im_end|>", false, true);
        let the = tok.encode("the", false, false);
        assert_eq!(ids, [vec![start], the.clone(), vec![endx, end]].concat());
        let plain = tok.encode("<|im_end|>", false, false);
        assert!(!plain.contains(&end) && plain.len() == 10);
        assert_eq!(tok.decode(&plain, false).unwrap(), "<|im_end|>");
    }

    #[test]
    fn round_trips_arbitrary_text() {
        let tok = tiny();
        for text in [
            "",
            " the  thin   the",
            "日本語 🙂\n\t\u{a0}x",
            "a\u{301}\u{300}",
            "123 4.5e-6",
        ] {
            let ids = tok.encode(text, true, false);
            assert_eq!(tok.decode(&ids, false).unwrap(), text);
        }
    }

    #[test]
    fn merges_apply_across_the_piece() {
        let tok = tiny();
        assert_eq!(
            tok.encode(" the", false, false),
            [tok.token_id("Ġthe").unwrap()]
        );
        // "   x": the run keeps its last space for " x".
        let ids = tok.encode("   x", false, false);
        assert_eq!(
            ids,
            [
                tok.token_id("ĠĠ").unwrap(),
                tok.token_id("Ġ").unwrap(),
                tok.token_id("x").unwrap()
            ]
        );
    }

    #[test]
    fn bos_eos_follow_the_flags() {
        let mut v = Vocabulary::byte_level(&[], &["<s>", "</s>"]);
        v.special.bos = Some(256);
        v.special.eos = Some(257);
        v.add_bos = true;
        v.add_eos = true;
        let tok = Tokenizer::from_vocabulary(v).unwrap();
        let a = tok.token_id("a").unwrap();
        assert_eq!(tok.encode("a", true, false), [256, a, 257]);
        assert_eq!(tok.encode("a", false, false).len(), 1);
        assert_eq!(tok.encode("", true, false), [256, 257]);
    }

    #[test]
    fn invalid_vocabularies_are_errors() {
        let mut v = Vocabulary::byte_level(&[], &[]);
        v.special.eos = Some(10_000);
        assert!(matches!(
            Tokenizer::from_vocabulary(v),
            Err(TokenizerError::InvalidVocab(_))
        ));
        let mut v = Vocabulary::byte_level(&[], &[]);
        v.token_types.pop();
        assert!(matches!(
            Tokenizer::from_vocabulary(v),
            Err(TokenizerError::InvalidVocab(_))
        ));
        let mut v = Vocabulary::byte_level(&[], &[]);
        v.tokens.clear();
        v.token_types.clear();
        assert!(Tokenizer::from_vocabulary(v).is_err());
    }

    #[test]
    fn stream_decoder_waits_for_whole_characters() {
        let tok = tiny();
        let text = "a🙂é\u{10FFFF}z";
        let ids = tok.encode(text, false, false);
        let mut stream = tok.stream_decoder(false);
        let mut out = String::new();
        for &id in &ids {
            let piece = stream.push(id).unwrap();
            assert!(!piece.contains('\u{fffd}'));
            out.push_str(&piece);
        }
        assert!(stream.pending_bytes().is_empty());
        out.push_str(&stream.finish());
        assert_eq!(out, text);
        // Invalid bytes: 0xFF can never start a character; an unfinished
        // emoji at the end is flushed as U+FFFD, as the lossy decode does.
        let bad = [b'x' as usize, 0xFF, 0xF0, 0x9F];
        let bad: Vec<usize> = bad
            .iter()
            .map(|&b| tok.token_id(&bytes::BYTE_TO_CHAR[b].to_string()).unwrap())
            .collect();
        let mut stream = tok.stream_decoder(false);
        let mut out = String::new();
        for &id in &bad {
            out.push_str(&stream.push(id).unwrap());
        }
        out.push_str(&stream.finish());
        assert_eq!(out, tok.decode(&bad, false).unwrap());
        assert!(stream.push(usize::MAX).is_err());
    }
}
