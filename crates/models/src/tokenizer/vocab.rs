//! The vocabulary of a tokenizer as GGUF stores it: token texts and types,
//! the model's merges (byte-level BPE) or scores (SentencePiece), the
//! pre-tokenisation rule, special tokens and the chat template.

use lastmile_core::gguf::Metadata;

use super::bytes;
use super::error::{TokenizerError, TokenizerResult};
use super::pretokenize::PreTokenizer;

/// The kind of a vocabulary entry (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenType {
    /// 0, or any value outside 1..=6.
    Undefined,
    /// 1: an ordinary token, written in GPT-2's byte characters
    /// (byte-level BPE) or with `▁` for a space (SentencePiece).
    Normal,
    /// 2: the unknown token.
    Unknown,
    /// 3: a control token (`<|im_start|>`, …), matched in text only with
    /// `parse_special` and shown only when decoding with `special`.
    Control,
    /// 4: a user-defined token, always matched in text and always shown.
    UserDefined,
    /// 5: unused; never shown.
    Unused,
    /// 6: a raw byte written `<0xXX>`.
    Byte,
}

impl TokenType {
    /// The type for a `tokenizer.ggml.token_type` value.
    ///
    /// # Examples
    /// ```
    /// use lastmile_models::tokenizer::TokenType;
    /// assert_eq!(TokenType::from_gguf(3), TokenType::Control);
    /// assert_eq!(TokenType::from_gguf(42), TokenType::Undefined);
    /// ```
    pub fn from_gguf(value: i32) -> Self {
        match value {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Undefined,
        }
    }

    /// Whether text can contain this token (control, user-defined, unknown).
    pub(crate) fn is_special(self) -> bool {
        matches!(self, Self::Control | Self::UserDefined | Self::Unknown)
    }
}

/// The special token ids named in the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpecialTokens {
    /// Beginning of sequence.
    pub bos: Option<usize>,
    /// End of sequence.
    pub eos: Option<usize>,
    /// Unknown token.
    pub unk: Option<usize>,
    /// Padding.
    pub pad: Option<usize>,
}

/// How a vocabulary turns text into tokens (`tokenizer.ggml.model`), with
/// what that algorithm reads from the file.
///
/// ```
/// use lastmile_models::tokenizer::{Tokenizer, TokenizerModel, Vocabulary};
/// // A SentencePiece vocabulary: `<unk>`, the space stand-in and two letters.
/// let tokens = ["<unk>", "\u{2581}", "a", "b", "\u{2581}a", "ab"];
/// let mut v = Vocabulary::byte_level(&[], &[]);
/// v.tokens = tokens.iter().map(|t| t.to_string()).collect();
/// v.token_types = vec![lastmile_models::tokenizer::TokenType::Normal; tokens.len()];
/// v.special.unk = Some(0);
/// v.model = TokenizerModel::SentencePiece {
///     scores: vec![0.0, -1.0, -2.0, -3.0, -0.5, -4.0],
///     add_space_prefix: true,
/// };
/// let tok = Tokenizer::from_vocabulary(v)?;
/// // "▁a" scores best, so it merges first; "b" stays alone.
/// assert_eq!(tok.encode("ab", false, false), [4, 3]);
/// assert_eq!(tok.decode(&[4, 3], false)?, "ab"); // the prefixed space is dropped
/// assert_eq!(tok.pre_tokenizer(), None);
/// # Ok::<(), lastmile_models::tokenizer::TokenizerError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TokenizerModel {
    /// `gpt2`: byte-level BPE (GPT-2, SmolLM2, Llama 3, Qwen2, …): the text
    /// is cut into pieces by a pre-tokenisation rule, then each piece's
    /// bytes are merged by rank.
    BytePairs {
        /// `"left right"` merge lines, highest priority first.
        merges: Vec<String>,
        /// The pre-tokenisation rule.
        pre_tokenizer: PreTokenizer,
    },
    /// `llama`: SentencePiece BPE (Llama 2, TinyLlama, Mistral, Phi-3, …):
    /// spaces become `▁`, then adjacent symbols whose concatenation is a
    /// token merge, highest score first; characters without a token fall
    /// back to `<0xXX>` byte tokens.
    SentencePiece {
        /// One score per token (`tokenizer.ggml.scores`; all 0 when absent).
        scores: Vec<f32>,
        /// Whether a space is put before the text, and before text that
        /// follows a special token (`tokenizer.ggml.add_space_prefix`,
        /// default true).
        add_space_prefix: bool,
    },
}

/// Everything a [`Tokenizer`](super::Tokenizer) is built from; [`Vocabulary::from_metadata`]
/// reads it from a GGUF file.
///
/// # Examples
/// ```
/// use lastmile_models::tokenizer::{PreTokenizer, TokenType, TokenizerModel, Vocabulary};
/// let v = Vocabulary::byte_level(&["a b"], &["<s>"]);
/// assert_eq!(v.tokens.len(), 256 + 1 + 1);
/// assert_eq!(v.token_types[257], TokenType::Control);
/// assert!(matches!(
///     v.model,
///     TokenizerModel::BytePairs { pre_tokenizer: PreTokenizer::Gpt2SingleDigits, .. }
/// ));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Vocabulary {
    /// Token texts by id (for normal tokens: GPT-2 byte characters in
    /// byte-level BPE, `▁` for a space in SentencePiece).
    pub tokens: Vec<String>,
    /// One type per token.
    pub token_types: Vec<TokenType>,
    /// The algorithm and its merges or scores.
    pub model: TokenizerModel,
    /// Special token ids.
    pub special: SpecialTokens,
    /// Whether `add_special` prepends BOS.
    pub add_bos: bool,
    /// Whether `add_special` appends EOS.
    pub add_eos: bool,
    /// The Jinja chat template, if any.
    pub chat_template: Option<String>,
    /// Special tokens after which white space is dropped when they are cut
    /// out of text (llama.cpp's `RSTRIP` attribute, which it gives Phi-3's
    /// special tokens by the model's name; see [`Vocabulary::from_metadata`]).
    pub rstrip: Vec<usize>,
}

/// Texts that llama.cpp makes control tokens whatever type the file gives
/// them (its "control-looking token … its type will be overridden"):
/// ends of a turn or of a generation, and fill-in-the-middle markers.
const CONTROL_LOOKING: &[&str] = &[
    "</s>",
    "<EOT>",
    "<MID>",
    "<PAD>",
    "<PRE>",
    "<REPO>",
    "<SUF>",
    "<end_of_turn>",
    "<end_of_utterance>",
    "<eos>",
    "<fim-middle>",
    "<fim-pad>",
    "<fim-prefix>",
    "<fim-repo>",
    "<fim-suffix>",
    "<fim_middle>",
    "<fim_pad>",
    "<fim_prefix>",
    "<fim_suffix>",
    "<reponame>",
    "<turn|>",
    "<|calls|>",
    "<|call|>",
    "<|code_middle|>",
    "<|code_prefix|>",
    "<|code_suffix|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<|end|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|file_sep|>",
    "<|fim_middle|>",
    "<|fim_pad|>",
    "<|fim_prefix|>",
    "<|fim_repo|>",
    "<|fim_suffix|>",
    "<|flush|>",
    "<|im_end|>",
    "<|middle|>",
    "<|prefix|>",
    "<|repo_name|>",
    "<|return|>",
    "<|suffix|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "<｜fim▁begin｜>",
    "<｜fim▁end｜>",
    "<｜fim▁hole｜>",
    "[EOS]",
    "[EOT]",
    "[PAD]",
    "[e~[",
    "_<EOT>",
    "▁<MID>",
    "▁<PRE>",
    "▁<SUF>",
];

/// Reads `key` with `get` if it is present.
fn optional<'m, T>(
    meta: &'m Metadata,
    key: &str,
    get: impl FnOnce(&'m Metadata, &str) -> Result<T, lastmile_core::gguf::GgufError>,
) -> TokenizerResult<Option<T>> {
    match meta.get(key) {
        None => Ok(None),
        Some(_) => Ok(Some(get(meta, key)?)),
    }
}

impl Vocabulary {
    /// Reads the tokenizer keys of a GGUF file's metadata (table in the
    /// [module docs](super)).
    ///
    /// # Errors
    /// [`TokenizerError::Gguf`] for a missing required key or a value of
    /// the wrong type; [`TokenizerError::UnsupportedModel`] unless the model
    /// is `gpt2` or `llama`; [`TokenizerError::UnsupportedPreTokenizer`] for
    /// a `gpt2` `pre` value without an implemented rule;
    /// [`TokenizerError::InvalidVocab`] when `token_type` or `scores` is
    /// shorter than `tokens`.
    ///
    /// As llama.cpp does when it loads a vocabulary, end-of-turn and
    /// fill-in-the-middle markers (`</s>`, `<|im_end|>`, `<|fim_prefix|>`, …)
    /// are made control tokens whatever their stored type, and Phi-3's
    /// special tokens (recognised by `general.name`) drop the white space
    /// after them ([`rstrip`](Self::rstrip)).
    ///
    /// # Examples
    /// ```no_run
    /// use lastmile_core::gguf::GgufFile;
    /// use lastmile_models::tokenizer::Vocabulary;
    /// let file = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
    /// let vocab = Vocabulary::from_metadata(file.metadata())?;
    /// assert_eq!(vocab.tokens.len(), 49_152);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_metadata(meta: &Metadata) -> TokenizerResult<Self> {
        let model = meta.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" && model != "llama" {
            return Err(TokenizerError::UnsupportedModel {
                found: model.to_owned(),
            });
        }
        let tokens = meta.get_str_array("tokenizer.ggml.tokens")?.to_vec();
        let token_types =
            match optional(meta, "tokenizer.ggml.token_type", Metadata::get_i32_array)? {
                None => vec![TokenType::Normal; tokens.len()],
                Some(types) if types.len() < tokens.len() => {
                    return Err(TokenizerError::InvalidVocab(format!(
                        "{} token types for {} tokens",
                        types.len(),
                        tokens.len()
                    )));
                }
                Some(types) => types[..tokens.len()]
                    .iter()
                    .map(|&t| TokenType::from_gguf(t))
                    .collect(),
            };
        // As llama.cpp: an end-of-turn or fill-in-the-middle marker is a
        // control token (matched in text only with `parse_special`, shown
        // only with `special`) even where the file says otherwise.
        let token_types: Vec<TokenType> = tokens
            .iter()
            .zip(token_types)
            .map(|(text, ty)| {
                if CONTROL_LOOKING.contains(&text.as_str()) {
                    TokenType::Control
                } else {
                    ty
                }
            })
            .collect();
        // Where the file does not say, BOS is added as llama.cpp does:
        // always for SentencePiece, for byte-level BPE with Llama 3's rule.
        let (model, default_bos) = if model == "gpt2" {
            let pre = optional(meta, "tokenizer.ggml.pre", Metadata::get_str)?.unwrap_or("");
            let pre_tokenizer = PreTokenizer::from_name(pre).ok_or_else(|| {
                TokenizerError::UnsupportedPreTokenizer {
                    found: pre.to_owned(),
                    supported: PreTokenizer::supported_names()
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            })?;
            let merges = meta.get_str_array("tokenizer.ggml.merges")?.to_vec();
            (
                TokenizerModel::BytePairs {
                    merges,
                    pre_tokenizer,
                },
                pre_tokenizer == PreTokenizer::Llama3,
            )
        } else {
            let scores = match optional(meta, "tokenizer.ggml.scores", Metadata::get_f32_array)? {
                None => vec![0.0; tokens.len()],
                Some(s) if s.len() < tokens.len() => {
                    return Err(TokenizerError::InvalidVocab(format!(
                        "{} scores for {} tokens",
                        s.len(),
                        tokens.len()
                    )));
                }
                Some(s) => s[..tokens.len()].to_vec(),
            };
            let add_space_prefix =
                optional(meta, "tokenizer.ggml.add_space_prefix", Metadata::get_bool)?
                    .unwrap_or(true);
            (
                TokenizerModel::SentencePiece {
                    scores,
                    add_space_prefix,
                },
                true,
            )
        };
        let id = |key: &str| -> TokenizerResult<Option<usize>> {
            Ok(optional(meta, key, Metadata::get_u32)?.map(|v| v as usize))
        };
        // llama.cpp strips white space after Phi-3's special tokens (all of
        // them, `</s>` included, but `<unk>`, `<s>` and `<|endoftext|>`),
        // recognising the model by `general.name`.
        let name = optional(meta, "general.name", Metadata::get_str)?
            .unwrap_or("")
            .to_ascii_lowercase();
        let rstrip = if name.contains("phi-3") || name.contains("phi3") {
            let kept = ["<unk>", "<s>", "<|endoftext|>"];
            (0..tokens.len())
                .filter(|&id| token_types[id].is_special() || tokens[id] == "</s>")
                .filter(|&id| !kept.contains(&tokens[id].as_str()))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            tokens,
            token_types,
            model,
            rstrip,
            special: SpecialTokens {
                bos: id("tokenizer.ggml.bos_token_id")?,
                eos: id("tokenizer.ggml.eos_token_id")?,
                unk: id("tokenizer.ggml.unknown_token_id")?,
                pad: id("tokenizer.ggml.padding_token_id")?,
            },
            add_bos: optional(meta, "tokenizer.ggml.add_bos_token", Metadata::get_bool)?
                .unwrap_or(default_bos),
            add_eos: optional(meta, "tokenizer.ggml.add_eos_token", Metadata::get_bool)?
                .unwrap_or(false),
            chat_template: optional(meta, "tokenizer.chat_template", Metadata::get_str)?
                .map(str::to_owned),
        })
    }

    /// A small byte-level vocabulary, for examples and tests: the 256 byte
    /// characters (ids 0..256), then the result of each merge not yet
    /// present, then `control` tokens; SmolLM2's pre-tokenisation rule, no
    /// BOS/EOS added, EOS = the first control token.
    ///
    /// Merges are written in GPT-2 byte characters (`"Ġ t"` for `" "` +
    /// `"t"`).
    pub fn byte_level(merges: &[&str], control: &[&str]) -> Self {
        let mut tokens: Vec<String> = bytes::BYTE_TO_CHAR.iter().map(|c| c.to_string()).collect();
        for m in merges {
            let joined: String = m.splitn(2, ' ').collect();
            if !tokens.contains(&joined) {
                tokens.push(joined);
            }
        }
        let mut token_types = vec![TokenType::Normal; tokens.len()];
        let first_control = tokens.len();
        for c in control {
            tokens.push((*c).to_owned());
            token_types.push(TokenType::Control);
        }
        Self {
            tokens,
            token_types,
            model: TokenizerModel::BytePairs {
                merges: merges.iter().map(|m| (*m).to_owned()).collect(),
                pre_tokenizer: PreTokenizer::Gpt2SingleDigits,
            },
            special: SpecialTokens {
                eos: (!control.is_empty()).then_some(first_control),
                ..SpecialTokens::default()
            },
            add_bos: false,
            add_eos: false,
            chat_template: None,
            rstrip: Vec::new(),
        }
    }
}
