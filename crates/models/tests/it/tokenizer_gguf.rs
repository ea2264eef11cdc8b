//! The tokenizer built from GGUF metadata, on small GGUF files written
//! here byte by byte: the happy path end to end, and a typed error for
//! every kind of unusable metadata.
#![allow(clippy::unwrap_used)]

use lastmile_core::gguf::{GgufError, GgufFile};
use lastmile_models::tokenizer::{
    ChatMessage, TokenType, Tokenizer, TokenizerError, TokenizerModel, Vocabulary,
};

/// A metadata value, as GGUF stores it.
enum Value {
    U32(u32),
    Bool(bool),
    Str(String),
    StrArray(Vec<String>),
    I32Array(Vec<i32>),
    U32Array(Vec<u32>),
    F32Array(Vec<f32>),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A GGUF v3 file with `kvs` and no tensors.
fn gguf(kvs: &[(&str, Value)]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (key, value) in kvs {
        put_str(&mut out, key);
        match value {
            Value::U32(v) => {
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::Bool(v) => {
                out.extend_from_slice(&7u32.to_le_bytes());
                out.push(u8::from(*v));
            }
            Value::Str(s) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                put_str(&mut out, s);
            }
            Value::StrArray(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for s in items {
                    put_str(&mut out, s);
                }
            }
            Value::I32Array(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&5u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for v in items {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            Value::U32Array(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for v in items {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            Value::F32Array(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&6u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for v in items {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    out
}

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// The keys of a small valid vocabulary: bytes, a few merges, two control
/// tokens; `edit` changes them before writing.
fn file_with(
    edit: impl FnOnce(&mut Vec<(&'static str, Value)>),
) -> Result<Tokenizer, TokenizerError> {
    let vocab = Vocabulary::byte_level(
        &["Ġ t", "h e", "Ġt he", "Ġ Ġ"],
        &["<|im_start|>", "<|im_end|>"],
    );
    let TokenizerModel::BytePairs { merges, .. } = vocab.model.clone() else {
        unreachable!("byte_level is byte-level BPE")
    };
    let types = vocab
        .token_types
        .iter()
        .map(|t| if *t == TokenType::Control { 3 } else { 1 })
        .collect();
    let mut kvs = vec![
        ("general.architecture", Value::Str("llama".into())),
        ("tokenizer.ggml.model", Value::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Value::Str("smollm".into())),
        (
            "tokenizer.ggml.tokens",
            Value::StrArray(vocab.tokens.clone()),
        ),
        ("tokenizer.ggml.token_type", Value::I32Array(types)),
        ("tokenizer.ggml.merges", Value::StrArray(merges)),
        (
            "tokenizer.ggml.bos_token_id",
            Value::U32(vocab.tokens.len() as u32 - 2),
        ),
        (
            "tokenizer.ggml.eos_token_id",
            Value::U32(vocab.tokens.len() as u32 - 1),
        ),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ("tokenizer.chat_template", Value::Str(CHATML.into())),
    ];
    edit(&mut kvs);
    let file = GgufFile::from_vec(gguf(&kvs)).unwrap();
    Tokenizer::from_gguf(&file)
}

fn set(kvs: &mut [(&'static str, Value)], key: &str, value: Value) {
    let slot = kvs.iter_mut().find(|(k, _)| *k == key).unwrap();
    slot.1 = value;
}

#[test]
fn a_small_gguf_vocabulary_encodes_decodes_and_chats() {
    let tok = file_with(|_| {}).unwrap();
    assert_eq!(tok.vocab_size(), 256 + 4 + 2);
    let the = tok.token_id("Ġthe").unwrap();
    let start = tok.token_id("<|im_start|>").unwrap();
    assert_eq!(tok.encode(" the", true, false), [the]);
    assert_eq!(tok.encode("<|im_start|> the", true, true), [start, the]);
    assert_eq!(tok.special_tokens().bos, Some(start));
    let prompt = tok
        .apply_chat_template(&[ChatMessage::new("user", "the")], true)
        .unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>user\nthe<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tok.encode(&prompt, true, true);
    assert_eq!(tok.decode(&ids, true).unwrap(), prompt);
    assert_eq!(tok.decode(&ids, false).unwrap(), "user\nthe\nassistant\n");
}

#[test]
fn add_bos_token_prepends_bos_only_with_add_special() {
    let tok = file_with(|kvs| set(kvs, "tokenizer.ggml.add_bos_token", Value::Bool(true))).unwrap();
    let bos = tok.special_tokens().bos.unwrap();
    assert_eq!(
        tok.encode("x", true, false),
        [bos, tok.token_id("x").unwrap()]
    );
    assert_eq!(tok.encode("x", false, false), [tok.token_id("x").unwrap()]);
}

#[test]
fn unusable_metadata_gives_typed_errors() {
    let err =
        file_with(|kvs| set(kvs, "tokenizer.ggml.model", Value::Str("bert".into()))).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::UnsupportedModel { found } if found == "bert"),
        "{err}"
    );

    // As SentencePiece, this vocabulary has no token for byte 0x00 (nor an
    // unknown token to stand for it), and scores must be one per token.
    let err =
        file_with(|kvs| set(kvs, "tokenizer.ggml.model", Value::Str("llama".into()))).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::InvalidVocab(m) if m.contains("<0x00>")),
        "{err}"
    );
    let err = file_with(|kvs| {
        set(kvs, "tokenizer.ggml.model", Value::Str("llama".into()));
        kvs.push(("tokenizer.ggml.unknown_token_id", Value::U32(0)));
        kvs.push(("tokenizer.ggml.scores", Value::F32Array(vec![0.0; 3])));
    })
    .unwrap_err();
    assert!(
        matches!(&err, TokenizerError::InvalidVocab(m) if m.contains("3 scores")),
        "{err}"
    );

    let err =
        file_with(|kvs| set(kvs, "tokenizer.ggml.pre", Value::Str("falcon".into()))).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::UnsupportedPreTokenizer { found, supported } if found == "falcon" && supported.contains("smollm") && supported.contains("llama-bpe")),
        "{err}"
    );

    let err = file_with(|kvs| kvs.retain(|(k, _)| *k != "tokenizer.ggml.pre")).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::UnsupportedPreTokenizer { found, .. } if found.is_empty()),
        "{err}"
    );

    let err = file_with(|kvs| kvs.retain(|(k, _)| *k != "tokenizer.ggml.merges")).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::Gguf(GgufError::MissingKey { .. })),
        "{err}"
    );

    let err = file_with(|kvs| {
        set(
            kvs,
            "tokenizer.ggml.token_type",
            Value::U32Array(vec![1; 262]),
        )
    })
    .unwrap_err();
    assert!(
        matches!(&err, TokenizerError::Gguf(GgufError::WrongType { .. })),
        "{err}"
    );

    let err = file_with(|kvs| {
        set(
            kvs,
            "tokenizer.ggml.token_type",
            Value::I32Array(vec![1; 10]),
        )
    })
    .unwrap_err();
    assert!(matches!(&err, TokenizerError::InvalidVocab(_)), "{err}");

    let err = file_with(|kvs| set(kvs, "tokenizer.ggml.eos_token_id", Value::U32(1_000_000)))
        .unwrap_err();
    assert!(
        matches!(&err, TokenizerError::InvalidVocab(m) if m.contains("eos")),
        "{err}"
    );

    let err = file_with(|kvs| {
        set(
            kvs,
            "tokenizer.ggml.add_bos_token",
            Value::Str("yes".into()),
        )
    })
    .unwrap_err();
    assert!(
        matches!(&err, TokenizerError::Gguf(GgufError::WrongType { .. })),
        "{err}"
    );
}

#[test]
fn chat_template_errors_are_clear() {
    let tok = file_with(|kvs| kvs.retain(|(k, _)| *k != "tokenizer.chat_template")).unwrap();
    let chat = [ChatMessage::new("user", "hi")];
    let err = tok.apply_chat_template(&chat, true).unwrap_err();
    assert!(matches!(err, TokenizerError::MissingChatTemplate));
    assert!(err.to_string().contains("tokenizer.chat_template"));

    let llama3 = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] %}";
    let tok =
        file_with(|kvs| set(kvs, "tokenizer.chat_template", Value::Str(llama3.into()))).unwrap();
    let err = tok.apply_chat_template(&chat, true).unwrap_err();
    assert!(matches!(
        err,
        TokenizerError::UnsupportedChatTemplate { .. }
    ));
    let message = err.to_string();
    assert!(
        message.contains("ChatML") && message.contains("{% set loop_messages"),
        "{message}"
    );
}

#[test]
fn out_of_range_ids_are_errors_not_panics() {
    let tok = file_with(|_| {}).unwrap();
    let n = tok.vocab_size();
    assert!(matches!(
        tok.decode(&[0, n], false),
        Err(TokenizerError::TokenOutOfRange { id, vocab_size }) if id == n && vocab_size == n
    ));
    assert!(tok.token_text(n).is_err());
    assert!(tok.token_type(usize::MAX).is_err());
    assert!(tok.token_bytes(n, true).is_err());
}
