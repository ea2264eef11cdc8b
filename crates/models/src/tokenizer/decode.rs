//! Streaming detokenisation: token bytes in, complete UTF-8 out.

use super::Tokenizer;
use super::error::TokenizerResult;

/// Turns a stream of token ids into text, emitting only complete UTF-8.
///
/// A byte-level token can end in the middle of a multi-byte character (an
/// emoji is often two or three tokens). [`push`](Self::push) returns the
/// text that is complete so far and keeps an unfinished character's bytes
/// until the tokens that complete it arrive. Bytes that can never form a
/// character become U+FFFD, as [`String::from_utf8_lossy`] does, and
/// [`finish`](Self::finish) flushes an unfinished tail the same way. The
/// concatenation of everything returned equals
/// [`Tokenizer::decode`] of all the ids.
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
}

impl<'t> StreamDecoder<'t> {
    pub(crate) fn new(tokenizer: &'t Tokenizer, special: bool) -> Self {
        Self {
            tokenizer,
            special,
            pending: Vec::new(),
        }
    }

    /// Adds one token and returns the text it completes (possibly empty).
    ///
    /// # Errors
    /// [`TokenizerError::TokenOutOfRange`](super::TokenizerError::TokenOutOfRange)
    /// for an id outside the vocabulary (the stream is left unchanged).
    pub fn push(&mut self, id: usize) -> TokenizerResult<String> {
        let bytes = self.tokenizer.token_bytes(id, self.special)?;
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
