//! Unit tests of the tokenizer on small vocabularies.
#![allow(clippy::unwrap_used)]

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
