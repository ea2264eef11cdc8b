//! The tokenizers of GGUF checkpoints — byte-level BPE (GPT-2 style, as in
//! SmolLM2, Llama 3 and Qwen2) and SentencePiece BPE (Llama 2, TinyLlama,
//! Mistral, Phi-3) — built from the file's metadata and matching
//! llama.cpp's tokenisation id for id.
//!
//! # What is read
//!
//! | key | use |
//! |---|---|
//! | `tokenizer.ggml.model` | `gpt2` (byte-level BPE) or `llama` (SentencePiece): [`TokenizerModel`] |
//! | `tokenizer.ggml.pre` | byte-level BPE: the pre-tokenisation rule ([`PreTokenizer::from_name`]) |
//! | `tokenizer.ggml.tokens`, `.token_type` | the vocabulary and each token's [`TokenType`] |
//! | `tokenizer.ggml.merges` | byte-level BPE: the merges, by rank |
//! | `tokenizer.ggml.scores`, `.add_space_prefix` | SentencePiece: each token's merge priority; whether text gets a leading space |
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
//! 2. Byte-level BPE: **pre-tokenisation** of each remaining stretch
//!    ([`PreTokenizer`]): for SmolLM2 (`smollm`) every digit alone, then
//!    GPT-2's pattern; then **byte-level BPE** on each piece: its UTF-8
//!    bytes, merged by rank (Sennrich et al. 2016, Algorithm 1) with a
//!    heap, leftmost first among equal ranks (with Llama 3's rule a piece
//!    that is a token is taken whole). Identical pieces are encoded once
//!    per call.
//! 3. SentencePiece: each stretch, with a space before it if it opens the
//!    text or follows a special token (`add_space_prefix`) and spaces
//!    written `▁`, is merged by token score with byte fallback (`spm`
//!    module docs).
//! 4. With `add_special`, BOS / EOS as `add_bos_token` / `add_eos_token`
//!    say (both false for SmolLM2; where the file does not say, BOS is
//!    added for SentencePiece and Llama 3, as llama.cpp does).
//!
//! # Decoding
//!
//! Each normal token maps back to bytes through GPT-2's byte↔character
//! table (SentencePiece: `▁` back to a space, `<0xXX>` to its byte);
//! control and unknown tokens give their text only when `special` is
//! asked for. As llama.cpp's `llama_detokenize`, a SentencePiece decode
//! drops one space at the start of its first token (the one
//! `add_space_prefix` put there). [`Tokenizer::decode`] replaces invalid UTF-8 by U+FFFD;
//! [`StreamDecoder`] emits text token by token, holding back the bytes of an
//! unfinished character.
//!
//! # Agreement with llama.cpp and Hugging Face, and speed
//!
//! `tests/it/tokenizer_vocabs.rs` checks the vocabulary-only GGUF files
//! llama.cpp tests its own tokenizers with (`scripts/fetch-vocabs.sh`):
//! Llama 2's and Phi-3's SentencePiece, Llama 3's, Qwen2's, DeepSeek
//! Coder's and DeepSeek LLM's byte-level BPE, and GPT-2, MPT, StarCoder, Refact and Command-R,
//! each against the ids the model's Hugging Face tokenizer gives for
//! llama.cpp's test strings. `tests/it/tokenizer_llama_cpp.rs` checks SmolLM2-135M-Instruct's GGUF
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
mod encode;
mod error;
mod pretokenize;
mod spm;
#[cfg(test)]
mod tests;
mod vocab;

use std::collections::HashMap;

use lastmile_core::gguf::GgufFile;

use bpe::Bpe;
pub use chat::{ChatMessage, ChatTemplate};
pub use decode::StreamDecoder;
pub use error::{TokenizerError, TokenizerResult};
pub use pretokenize::PreTokenizer;
use pretokenize::{CharClasses, SplitScratch};
use spm::Spm;
pub use vocab::{SpecialTokens, TokenType, TokenizerModel, Vocabulary};

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

/// A byte-level BPE or SentencePiece tokenizer; see the [module docs](self).
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
    engine: Engine,
    /// Special tokens matched with `parse_special`, longest text first.
    specials: Vec<u32>,
    /// Per token: white space after it is dropped when it is cut out of text.
    rstrip: Vec<bool>,
    special: SpecialTokens,
    add_bos: bool,
    add_eos: bool,
    end_of_generation: Vec<usize>,
    chat_template: Option<String>,
}

/// The algorithm and its tables.
#[derive(Debug, Clone)]
enum Engine {
    BytePairs {
        bpe: Bpe,
        pre: PreTokenizer,
        classes: CharClasses,
    },
    SentencePiece(Spm),
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
    /// does), the merge table or byte-fallback table and the decoded bytes
    /// of every token.
    ///
    /// # Errors
    /// [`TokenizerError::InvalidVocab`] for an empty vocabulary, more than
    /// 2³¹ tokens, a `token_types` (or SentencePiece `scores`) length
    /// different from `tokens`, a special id outside the vocabulary,
    /// `add_bos` / `add_eos` without a BOS / EOS id, or a SentencePiece
    /// vocabulary with neither a token for every byte nor an unknown token.
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
            model,
            special,
            add_bos,
            add_eos,
            chat_template,
            rstrip: rstrip_ids,
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
        let mut rstrip = vec![false; n];
        for id in rstrip_ids {
            match rstrip.get_mut(id) {
                Some(r) => *r = true,
                None => return invalid(format!("rstrip token id {id} >= vocabulary size {n}")),
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
        let sentencepiece = matches!(model, TokenizerModel::SentencePiece { .. });
        let engine = match model {
            TokenizerModel::BytePairs {
                merges,
                pre_tokenizer,
            } => Engine::BytePairs {
                bpe: Bpe::new(&token_to_id, n as u32, &merges)?,
                pre: pre_tokenizer,
                classes: CharClasses::new(),
            },
            TokenizerModel::SentencePiece {
                scores,
                add_space_prefix,
            } => Engine::SentencePiece(Spm::new(
                &token_to_id,
                scores,
                n,
                special.unk,
                add_space_prefix,
            )?),
        };
        let pieces = tokens
            .iter()
            .zip(&token_types)
            .map(|(text, &ty)| decode::token_piece(text, ty, sentencepiece))
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
            engine,
            specials,
            rstrip,
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

    /// The pre-tokenisation rule of a byte-level BPE vocabulary (`None`
    /// for SentencePiece, which has none).
    pub fn pre_tokenizer(&self) -> Option<PreTokenizer> {
        match &self.engine {
            Engine::BytePairs { pre, .. } => Some(*pre),
            Engine::SentencePiece(_) => None,
        }
    }

    /// `bytes` without the one leading space a SentencePiece decode drops
    /// from its first token (unchanged for byte-level BPE).
    pub(crate) fn strip_leading_space<'b>(&self, bytes: &'b [u8]) -> &'b [u8] {
        match &self.engine {
            Engine::SentencePiece(spm) if spm.add_space_prefix() => {
                bytes.strip_prefix(b" ").unwrap_or(bytes)
            }
            _ => bytes,
        }
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

    /// The pieces that BPE sees for `text` (special tokens not split out);
    /// SentencePiece has no pre-tokenisation: the whole text is one piece.
    ///
    /// # Examples
    /// ```
    /// # use lastmile_models::tokenizer::{Tokenizer, Vocabulary};
    /// let tok = Tokenizer::from_vocabulary(Vocabulary::byte_level(&[], &[]))?;
    /// assert_eq!(tok.pre_tokenize("Hi  there, 42!"), ["Hi", " ", " there", ",", " ", "4", "2", "!"]);
    /// # Ok::<(), lastmile_models::tokenizer::TokenizerError>(())
    /// ```
    pub fn pre_tokenize<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let Engine::BytePairs { pre, classes, .. } = &self.engine else {
            return if text.is_empty() { vec![] } else { vec![text] };
        };
        let mut ranges = Vec::new();
        pretokenize::split(
            *pre,
            classes,
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
        let fragments = self.partition(text, parse_special);
        match &self.engine {
            Engine::BytePairs { bpe, pre, classes } => {
                self.encode_pairs(text, &fragments, bpe, *pre, classes, &mut out);
            }
            Engine::SentencePiece(spm) => {
                self.encode_sentencepiece(text, &fragments, spm, &mut out);
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

    /// The bytes of `ids` concatenated (see [`token_bytes`](Self::token_bytes)).
    ///
    /// # Errors
    /// [`TokenizerError::TokenOutOfRange`] for any id outside the vocabulary.
    pub fn decode_bytes(&self, ids: &[usize], special: bool) -> TokenizerResult<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for (i, &id) in ids.iter().enumerate() {
            let bytes = self.token_bytes(id, special)?;
            out.extend_from_slice(if i == 0 {
                self.strip_leading_space(bytes)
            } else {
                bytes
            });
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
}
