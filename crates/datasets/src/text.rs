//! The embedded text corpus, byte-level tokenisation, a contiguous
//! train/validation split and seeded batches of fixed-length windows for
//! next-token prediction.

use burn::prelude::{Device, Int, Tensor, TensorData};
use lastmile_core::validate::{check_at_least, check_open_unit};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::error::{DatasetError, Result};

const RUST_BOOK: &str = include_str!("../data/rust-book.txt");

/// The text of "The Rust Programming Language" book (as shipped with the
/// Rust 1.95 documentation; MIT OR Apache-2.0): about 1.3 MB of English prose
/// and Rust code, UTF-8.
///
/// # Examples
/// ```
/// let book = lastmile_datasets::rust_book();
/// assert!(book.len() > 1_000_000);
/// assert!(std::str::from_utf8(book).is_ok());
/// ```
pub fn rust_book() -> &'static [u8] {
    RUST_BOOK.as_bytes()
}

/// Byte-level tokeniser: every byte is its own token, so the vocabulary has
/// 256 entries, any input can be encoded and decoding is lossless.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByteTokenizer;

impl ByteTokenizer {
    /// Number of distinct tokens (one per byte value).
    pub const VOCAB_SIZE: usize = 256;

    /// Number of distinct tokens, [`ByteTokenizer::VOCAB_SIZE`].
    ///
    /// # Examples
    /// ```
    /// assert_eq!(lastmile_datasets::ByteTokenizer.vocab_size(), 256);
    /// ```
    pub fn vocab_size(&self) -> usize {
        Self::VOCAB_SIZE
    }

    /// Encodes text (or any bytes) as one token per byte.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::ByteTokenizer;
    /// assert_eq!(ByteTokenizer.encode("hé"), vec![104, 195, 169]);
    /// ```
    pub fn encode(&self, text: impl AsRef<[u8]>) -> Vec<u32> {
        text.as_ref().iter().map(|&b| u32::from(b)).collect()
    }

    /// Decodes tokens back to bytes.
    ///
    /// # Errors
    /// [`DatasetError::InvalidToken`] if a token is `>= 256`.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::ByteTokenizer;
    /// let tokens = ByteTokenizer.encode("fn main() {}");
    /// assert_eq!(ByteTokenizer.decode(&tokens)?, b"fn main() {}");
    /// assert!(ByteTokenizer.decode(&[300]).is_err());
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn decode(&self, tokens: &[u32]) -> Result<Vec<u8>> {
        tokens
            .iter()
            .enumerate()
            .map(|(position, &token)| {
                u8::try_from(token).map_err(|_| DatasetError::InvalidToken {
                    position,
                    token,
                    vocab_size: Self::VOCAB_SIZE,
                })
            })
            .collect()
    }

    /// Decodes tokens to a string, replacing invalid UTF-8 (e.g. a multi-byte
    /// character cut by a window boundary) with `U+FFFD`.
    ///
    /// # Errors
    /// [`DatasetError::InvalidToken`] if a token is `>= 256`.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::ByteTokenizer;
    /// assert_eq!(ByteTokenizer.decode_lossy(&[104, 195])?, "h\u{FFFD}");
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn decode_lossy(&self, tokens: &[u32]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode(tokens)?).into_owned())
    }
}

/// A byte-tokenised corpus split into a training part and a validation part
/// (its last `validation_fraction`, contiguous, so that no window spans both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextCorpus {
    train: Vec<u32>,
    validation: Vec<u32>,
}

impl TextCorpus {
    /// Tokenises `bytes` with [`ByteTokenizer`] and keeps the last
    /// `round(len · validation_fraction)` tokens for validation.
    ///
    /// # Errors
    /// Through [`DatasetError::Core`]:
    /// * [`CoreError::OutOfRange`](lastmile_core::CoreError::OutOfRange) if
    ///   `validation_fraction` is not in (0, 1).
    /// * [`CoreError::Empty`](lastmile_core::CoreError::Empty) if either part
    ///   would be empty.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::TextCorpus;
    /// let corpus = TextCorpus::from_bytes(b"0123456789", 0.2)?;
    /// assert_eq!((corpus.train().len(), corpus.validation().len()), (8, 2));
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn from_bytes(bytes: &[u8], validation_fraction: f64) -> Result<Self> {
        check_open_unit("validation_fraction", validation_fraction)?;
        let n_validation = (bytes.len() as f64 * validation_fraction).round() as usize;
        if n_validation == 0 {
            return Err(DatasetError::empty("validation part of the corpus", 1));
        }
        if n_validation >= bytes.len() {
            return Err(DatasetError::empty("training part of the corpus", 1));
        }
        let (train, validation) = bytes.split_at(bytes.len() - n_validation);
        Ok(Self {
            train: ByteTokenizer.encode(train),
            validation: ByteTokenizer.encode(validation),
        })
    }

    /// The embedded [`rust_book`] split with `validation_fraction`.
    ///
    /// # Errors
    /// As [`TextCorpus::from_bytes`].
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::TextCorpus;
    /// let corpus = TextCorpus::rust_book(0.1)?;
    /// assert_eq!(corpus.train().len() + corpus.validation().len(), lastmile_datasets::rust_book().len());
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn rust_book(validation_fraction: f64) -> Result<Self> {
        Self::from_bytes(rust_book(), validation_fraction)
    }

    /// The training tokens.
    ///
    /// # Examples
    /// ```
    /// let corpus = lastmile_datasets::TextCorpus::from_bytes(b"abcd", 0.25)?;
    /// assert_eq!(corpus.train(), &[97, 98, 99]);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn train(&self) -> &[u32] {
        &self.train
    }

    /// The validation tokens (the end of the corpus).
    ///
    /// # Examples
    /// ```
    /// let corpus = lastmile_datasets::TextCorpus::from_bytes(b"abcd", 0.25)?;
    /// assert_eq!(corpus.validation(), &[100]);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn validation(&self) -> &[u32] {
        &self.validation
    }

    /// Vocabulary size of the tokens (256).
    ///
    /// # Examples
    /// ```
    /// let corpus = lastmile_datasets::TextCorpus::from_bytes(b"abcd", 0.25)?;
    /// assert_eq!(corpus.vocab_size(), 256);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn vocab_size(&self) -> usize {
        ByteTokenizer::VOCAB_SIZE
    }
}

/// A batch of `batch_size` windows of `seq_len` tokens for next-token
/// prediction: `targets[b][t] == inputs[b][t + 1]` within the source text,
/// i.e. each target row is its input row shifted left by one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowBatch {
    /// Input tokens, row-major `[batch_size, seq_len]`.
    pub inputs: Vec<u32>,
    /// Target tokens (the next token of each input), row-major `[batch_size, seq_len]`.
    pub targets: Vec<u32>,
    /// Number of windows.
    pub batch_size: usize,
    /// Tokens per window.
    pub seq_len: usize,
}

impl WindowBatch {
    /// The input tokens of window `index`.
    ///
    /// # Panics
    /// If `index >= batch_size`.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::WindowBatcher;
    /// let tokens: Vec<u32> = (0..100).collect();
    /// let batch = WindowBatcher::new(tokens, 8, 4, 0)?.next_batch();
    /// assert_eq!(&batch.input_row(0)[1..], &batch.target_row(0)[..7]);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn input_row(&self, index: usize) -> &[u32] {
        &self.inputs[index * self.seq_len..(index + 1) * self.seq_len]
    }

    /// The target tokens of window `index`.
    ///
    /// # Panics
    /// If `index >= batch_size`.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::WindowBatcher;
    /// let tokens: Vec<u32> = (0..100).collect();
    /// let batch = WindowBatcher::new(tokens, 8, 4, 0)?.next_batch();
    /// assert_eq!(batch.target_row(3)[0], batch.input_row(3)[0] + 1);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn target_row(&self, index: usize) -> &[u32] {
        &self.targets[index * self.seq_len..(index + 1) * self.seq_len]
    }

    /// The inputs as a `[batch_size, seq_len]` integer tensor on `device`.
    ///
    /// The integer dtype is the backend's (I32 on flex and wgpu, I64 on ndarray).
    ///
    /// # Shapes
    /// Returns `[batch_size, seq_len]`.
    ///
    /// # Examples
    /// ```
    /// use burn::prelude::Device;
    /// use lastmile_datasets::{TextCorpus, WindowBatcher};
    /// let corpus = TextCorpus::rust_book(0.1)?;
    /// let mut batcher = WindowBatcher::new(corpus.train().to_vec(), 64, 16, 42)?;
    /// let batch = batcher.next_batch();
    /// let x = batch.inputs_tensor(&Device::flex());
    /// assert_eq!(x.dims(), [16, 64]);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn inputs_tensor(&self, device: &Device) -> Tensor<2, Int> {
        self.to_tensor(&self.inputs, device)
    }

    /// The targets as a `[batch_size, seq_len]` integer tensor on `device`.
    ///
    /// # Shapes
    /// Returns `[batch_size, seq_len]`.
    ///
    /// # Examples
    /// ```
    /// use burn::prelude::Device;
    /// use lastmile_datasets::WindowBatcher;
    /// let batch = WindowBatcher::new((0..50).collect::<Vec<u32>>(), 10, 3, 1)?.next_batch();
    /// assert_eq!(batch.targets_tensor(&Device::flex()).dims(), [3, 10]);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn targets_tensor(&self, device: &Device) -> Tensor<2, Int> {
        self.to_tensor(&self.targets, device)
    }

    fn to_tensor(&self, tokens: &[u32], device: &Device) -> Tensor<2, Int> {
        let values: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        Tensor::from_data(
            TensorData::new(values, [self.batch_size, self.seq_len]),
            device,
        )
    }
}

/// Draws seeded random batches of fixed-length windows from a token sequence.
///
/// Each window starts at a uniformly random position `s` with
/// `s + seq_len < tokens.len()`; its inputs are `tokens[s..s + seq_len]` and
/// its targets `tokens[s + 1..s + seq_len + 1]`. The batcher is also an
/// endless [`Iterator`] of batches. [`WindowBatcher::sequential_batches`]
/// gives the deterministic, non-overlapping windows wanted for evaluation.
#[derive(Debug)]
pub struct WindowBatcher {
    tokens: Vec<u32>,
    seq_len: usize,
    batch_size: usize,
    rng: StdRng,
}

impl WindowBatcher {
    /// A batcher over `tokens` producing `batch_size` windows of `seq_len` tokens.
    ///
    /// # Errors
    /// * [`CoreError::OutOfRange`](lastmile_core::CoreError::OutOfRange)
    ///   (through [`DatasetError::Core`]) if `seq_len == 0` or `batch_size == 0`.
    /// * [`DatasetError::LengthMismatch`] if `tokens.len() < seq_len + 1`
    ///   (a window needs one more token for its last target).
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::WindowBatcher;
    /// assert!(WindowBatcher::new(vec![1, 2, 3], 3, 1, 0).is_err());
    /// assert!(WindowBatcher::new(vec![1, 2, 3, 4], 3, 1, 0).is_ok());
    /// ```
    pub fn new(
        tokens: impl Into<Vec<u32>>,
        seq_len: usize,
        batch_size: usize,
        seed: u64,
    ) -> Result<Self> {
        let tokens = tokens.into();
        check_window(&tokens, seq_len, batch_size)?;
        Ok(Self {
            tokens,
            seq_len,
            batch_size,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// Tokens per window.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::WindowBatcher;
    /// assert_eq!(WindowBatcher::new(vec![0; 10], 4, 2, 0)?.seq_len(), 4);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Windows per batch.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::WindowBatcher;
    /// assert_eq!(WindowBatcher::new(vec![0; 10], 4, 2, 0)?.batch_size(), 2);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Number of distinct window start positions, `tokens.len() − seq_len`.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::WindowBatcher;
    /// assert_eq!(WindowBatcher::new(vec![0; 10], 4, 2, 0)?.n_windows(), 6);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn n_windows(&self) -> usize {
        self.tokens.len() - self.seq_len
    }

    /// The next random batch.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::WindowBatcher;
    /// let tokens: Vec<u32> = (0..1000).collect();
    /// let mut a = WindowBatcher::new(tokens.clone(), 16, 8, 5)?;
    /// let mut b = WindowBatcher::new(tokens, 16, 8, 5)?;
    /// assert_eq!(a.next_batch(), b.next_batch()); // same seed, same batches
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn next_batch(&mut self) -> WindowBatch {
        let n_windows = self.n_windows();
        let starts: Vec<usize> = (0..self.batch_size)
            .map(|_| self.rng.random_range(0..n_windows))
            .collect();
        make_batch(&self.tokens, &starts, self.seq_len)
    }

    /// Deterministic batches of non-overlapping windows starting at
    /// `0, seq_len, 2·seq_len, …` (every window that fits), in order; the
    /// last batch may hold fewer than `batch_size` windows.
    ///
    /// # Examples
    /// ```
    /// use lastmile_datasets::WindowBatcher;
    /// let batcher = WindowBatcher::new((0..21).collect::<Vec<u32>>(), 4, 2, 0)?;
    /// let batches = batcher.sequential_batches();
    /// // Windows start at 0, 4, 8, 12, 16 (16 + 4 < 21).
    /// assert_eq!(batches.iter().map(|b| b.batch_size).collect::<Vec<_>>(), [2, 2, 1]);
    /// assert_eq!(batches[2].input_row(0), &[16, 17, 18, 19]);
    /// # Ok::<(), lastmile_datasets::DatasetError>(())
    /// ```
    pub fn sequential_batches(&self) -> Vec<WindowBatch> {
        let starts: Vec<usize> = (0..self.n_windows()).step_by(self.seq_len).collect();
        starts
            .chunks(self.batch_size)
            .map(|chunk| make_batch(&self.tokens, chunk, self.seq_len))
            .collect()
    }
}

impl Iterator for WindowBatcher {
    type Item = WindowBatch;

    /// Always `Some(self.next_batch())`: the iterator is endless.
    fn next(&mut self) -> Option<WindowBatch> {
        Some(self.next_batch())
    }
}

fn check_window(tokens: &[u32], seq_len: usize, batch_size: usize) -> Result<()> {
    check_at_least("seq_len", seq_len, 1)?;
    check_at_least("batch_size", batch_size, 1)?;
    if tokens.len() <= seq_len {
        return Err(DatasetError::LengthMismatch {
            what: "token sequence".to_owned(),
            found: tokens.len(),
            expected: format!(
                "at least seq_len + 1 = {} tokens",
                seq_len.saturating_add(1)
            ),
        });
    }
    Ok(())
}

fn make_batch(tokens: &[u32], starts: &[usize], seq_len: usize) -> WindowBatch {
    let mut inputs = Vec::with_capacity(starts.len() * seq_len);
    let mut targets = Vec::with_capacity(starts.len() * seq_len);
    for &s in starts {
        inputs.extend_from_slice(&tokens[s..s + seq_len]);
        targets.extend_from_slice(&tokens[s + 1..s + seq_len + 1]);
    }
    WindowBatch {
        inputs,
        targets,
        batch_size: starts.len(),
        seq_len,
    }
}

#[cfg(test)]
mod tests {
    use lastmile_core::CoreError;

    use super::*;

    #[test]
    fn tokenizer_round_trips_the_corpus_and_all_bytes() {
        let all: Vec<u8> = (0..=255).collect();
        let tokens = ByteTokenizer.encode(&all);
        assert_eq!(ByteTokenizer.decode(&tokens).expect("valid tokens"), all);
        let book = rust_book();
        let tokens = ByteTokenizer.encode(book);
        assert_eq!(tokens.len(), book.len());
        assert_eq!(ByteTokenizer.decode(&tokens).expect("valid tokens"), book);
        let text = "héllo, 世界 🦀";
        let decoded = ByteTokenizer.decode_lossy(&ByteTokenizer.encode(text));
        assert_eq!(decoded.expect("valid tokens"), text);
    }

    #[test]
    fn invalid_token_reports_position() {
        let err = ByteTokenizer
            .decode(&[1, 2, 256])
            .expect_err("256 is out of range");
        assert!(matches!(
            err,
            DatasetError::InvalidToken {
                position: 2,
                token: 256,
                vocab_size: 256
            }
        ));
    }

    #[test]
    fn corpus_split_is_contiguous() {
        let corpus = TextCorpus::rust_book(0.1).expect("valid fraction");
        let book = rust_book();
        let n_val = corpus.validation().len();
        assert_eq!(n_val, (book.len() as f64 * 0.1).round() as usize);
        let joined: Vec<u8> = corpus
            .train()
            .iter()
            .chain(corpus.validation())
            .map(|&t| t as u8)
            .collect();
        assert_eq!(joined, book);
        for bad in [0.0, 1.0, -0.5, f64::NAN] {
            assert!(matches!(
                TextCorpus::from_bytes(b"abc", bad),
                Err(DatasetError::Core(CoreError::OutOfRange { ref name, .. }))
                    if name == "validation_fraction"
            ));
        }
        assert!(matches!(
            TextCorpus::from_bytes(b"abc", 0.01),
            Err(DatasetError::Core(CoreError::Empty { ref what, .. }))
                if what == "validation part of the corpus"
        ));
        assert!(matches!(
            TextCorpus::from_bytes(b"abc", 0.99),
            Err(DatasetError::Core(CoreError::Empty { ref what, .. }))
                if what == "training part of the corpus"
        ));
        assert!(matches!(
            TextCorpus::from_bytes(b"", 0.5),
            Err(DatasetError::Core(CoreError::Empty { .. }))
        ));
    }

    #[test]
    fn targets_are_inputs_shifted_by_one() {
        let corpus = TextCorpus::rust_book(0.1).expect("valid fraction");
        let mut batcher =
            WindowBatcher::new(corpus.train(), 32, 16, 9).expect("long enough corpus");
        for _ in 0..10 {
            let batch = batcher.next_batch();
            assert_eq!(batch.inputs.len(), 16 * 32);
            assert_eq!(batch.targets.len(), 16 * 32);
            for b in 0..batch.batch_size {
                assert_eq!(&batch.input_row(b)[1..], &batch.target_row(b)[..31]);
            }
        }
        // With token == position, each window must be a contiguous slice.
        let positions: Vec<u32> = (0..10_000).collect();
        let batch = WindowBatcher::new(positions, 32, 64, 4)
            .expect("valid")
            .next_batch();
        for b in 0..batch.batch_size {
            let s = batch.input_row(b)[0];
            let expected_x: Vec<u32> = (s..s + 32).collect();
            let expected_y: Vec<u32> = (s + 1..s + 33).collect();
            assert_eq!(batch.input_row(b), expected_x.as_slice());
            assert_eq!(batch.target_row(b), expected_y.as_slice());
        }
    }

    #[test]
    fn window_positions_cover_the_range() {
        let tokens: Vec<u32> = (0..12).collect();
        let mut batcher = WindowBatcher::new(tokens, 4, 64, 3).expect("valid");
        let mut seen = [false; 8];
        for _ in 0..4 {
            let batch = batcher.next_batch();
            for b in 0..batch.batch_size {
                let start = batch.input_row(b)[0] as usize;
                assert!(start < 8, "window starting at {start} overruns");
                seen[start] = true;
            }
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
    }

    #[test]
    fn seeds_and_errors() {
        let tokens: Vec<u32> = (0..500).collect();
        let a: Vec<WindowBatch> = WindowBatcher::new(tokens.clone(), 8, 4, 1)
            .expect("valid")
            .take(3)
            .collect();
        let b: Vec<WindowBatch> = WindowBatcher::new(tokens.clone(), 8, 4, 2)
            .expect("valid")
            .take(3)
            .collect();
        assert_ne!(a, b);
        for (seq_len, batch_size, name) in [(0, 1, "seq_len"), (1, 0, "batch_size")] {
            assert!(matches!(
                WindowBatcher::new(tokens.clone(), seq_len, batch_size, 0),
                Err(DatasetError::Core(CoreError::OutOfRange { name: ref n, .. })) if n == name
            ));
        }
        assert!(matches!(
            WindowBatcher::new(vec![1, 2], 2, 1, 0),
            Err(DatasetError::LengthMismatch { found: 2, .. })
        ));
        assert!(matches!(
            WindowBatcher::new(vec![1, 2], usize::MAX, 1, 0),
            Err(DatasetError::LengthMismatch { found: 2, .. })
        ));
    }
}
