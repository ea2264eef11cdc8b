//! Streaming detokenisation: token bytes in, complete UTF-8 out.

use super::error::TokenizerResult;
use super::{TokenType, Tokenizer, bytes, spm};

/// Turns a stream of token ids into text, emitting only complete UTF-8.
///
/// A byte-level token can end in the middle of a multi-byte character (an
/// emoji is often two or three tokens). [`push`](Self::push) returns the
/// text that is complete so far and keeps an unfinished character's bytes
/// until the tokens that complete it arrive. Bytes that can never form a
/// character become U+FFFD, as [`String::from_utf8_lossy`] does, and
/// [`finish`](Self::finish) flushes an unfinished tail the same way. The
/// concatenation of everything returned equals
/// [`Tokenizer::decode`] of all the ids (so a SentencePiece stream drops
/// the space its first token starts with, as `decode` does).
///
/// # Examples
/// ```
/// use lastmile_models::tokenizer::{Tokenizer, Vocabulary};
/// let tok = Tokenizer::from_vocabulary(Vocabulary::byte_level(&["Ġ ð"], &[]))?;
/// let ids = tok.encode("né 🙂", false, false);
/// let mut stream = tok.stream_decoder(false);
/// let mut text = String::new();
/// for &id in &ids {
///     let piece = stream.push(id)?;
///     assert!(!piece.contains('\u{fffd}')); // never half a character
///     text.push_str(&piece);
/// }
/// text.push_str(&stream.finish());
/// assert_eq!(text, "né 🙂");
/// # Ok::<(), lastmile_models::tokenizer::TokenizerError>(())
/// ```
#[derive(Debug, Clone)]
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    special: bool,
    pending: Vec<u8>,
    /// Whether no token has been pushed yet.
    first: bool,
}

impl<'t> StreamDecoder<'t> {
    pub(crate) fn new(tokenizer: &'t Tokenizer, special: bool) -> Self {
        Self {
            tokenizer,
            special,
            pending: Vec::new(),
            first: true,
        }
    }

    /// Adds one token and returns the text it completes (possibly empty).
    ///
    /// # Errors
    /// [`TokenizerError::TokenOutOfRange`](super::TokenizerError::TokenOutOfRange)
    /// for an id outside the vocabulary (the stream is left unchanged).
    pub fn push(&mut self, id: usize) -> TokenizerResult<String> {
        let mut bytes = self.tokenizer.token_bytes(id, self.special)?;
        if std::mem::take(&mut self.first) {
            bytes = self.tokenizer.strip_leading_space(bytes);
        }
        self.pending.extend_from_slice(bytes);
        let mut text = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(valid) => {
                    text.push_str(valid);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let good = start + e.valid_up_to();
                    // The prefix up to `good` was just checked as UTF-8.
                    text.push_str(&String::from_utf8_lossy(&self.pending[start..good]));
                    match e.error_len() {
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            start = good + bad;
                        }
                        None => {
                            start = good; // an unfinished character: wait
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        Ok(text)
    }

    /// Bytes of an unfinished character held back so far.
    pub fn pending_bytes(&self) -> &[u8] {
        &self.pending
    }

    /// Ends the stream: an unfinished character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// The bytes a token stands for: for normal tokens, GPT-2 byte characters
/// mapped back (byte-level BPE; a character outside that alphabet is kept
/// as its own UTF-8) or `▁` as a space (SentencePiece); `<0xXX>` as that
/// byte for byte tokens; the text itself for special tokens.
pub(crate) fn token_piece(text: &str, ty: TokenType, sentencepiece: bool) -> Box<[u8]> {
    match ty {
        TokenType::Normal if sentencepiece => text.replace(spm::SPACE, " ").into_bytes().into(),
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
