//! Rules that llama.cpp writes as a sequence of regular expressions
//! (`llama-vocab.cpp`), each splitting every piece left by the previous
//! ones into its matches and the stretches between them
//! (`unicode_regex_split`); here each expression is a hand-written matcher
//! over the same character classes.
//!
//! llama.cpp runs an expression that names a Unicode category on a
//! "collapsed" copy of the text in which every non-ASCII character is
//! replaced by a byte standing for its category (white space first), so
//! `\s` is ASCII white space or any non-ASCII `White_Space`, `\p{L}`,
//! `\p{N}`, `\p{P}` the Unicode categories (ASCII included); an expression
//! with literal non-ASCII characters runs on the text with non-ASCII white
//! space replaced by a vertical tab, so that white space never falls in its
//! ranges. Matches are leftmost, alternatives greedy, none empty.

use std::ops::Range;

use super::{CharClasses, Class, Cp};

/// One expression of a sequence.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// `[\r\n]`.
    LineBreak,
    /// `\s?\p{L}+`.
    SpaceLetters,
    /// `\s?\p{P}+`.
    SpacePunctuation,
    /// `[一-龥ࠀ-一가-퟿]+`: runs of U+0800–U+9FA5 and U+AC00–U+D7FF.
    CjkRun,
    /// `\p{N}`: one number character.
    Digit,
}

/// DeepSeek Coder's expressions (`LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_CODER`), in order.
const DEEPSEEK_CODER: [Step; 5] = [
    Step::LineBreak,
    Step::SpaceLetters,
    Step::SpacePunctuation,
    Step::CjkRun,
    Step::Digit,
];

/// DeepSeek Coder's rule over `cps` (the whole text), as byte ranges.
pub(super) fn deepseek_coder(
    cps: &[Cp],
    classes: &CharClasses,
    end_byte: usize,
    out: &mut Vec<Range<usize>>,
) {
    let byte_at = |i: usize| cps.get(i).map_or(end_byte, |c| c.at);
    let mut pieces = Vec::with_capacity(cps.len() / 2 + 1);
    pieces.push(0..cps.len());
    let mut next = Vec::new();
    for step in DEEPSEEK_CODER {
        next.clear();
        for piece in &pieces {
            let (mut prev, mut i) = (piece.start, piece.start);
            while i < piece.end {
                let len = match_len(step, classes, &cps[i..piece.end]);
                if len == 0 {
                    i += 1;
                    continue;
                }
                if i > prev {
                    next.push(prev..i);
                }
                next.push(i..i + len);
                i += len;
                prev = i;
            }
            if piece.end > prev {
                next.push(prev..piece.end);
            }
        }
        std::mem::swap(&mut pieces, &mut next);
    }
    out.extend(pieces.into_iter().map(|r| byte_at(r.start)..byte_at(r.end)));
}

/// The length of `step`'s match at the start of `cps` (0: none).
fn match_len(step: Step, classes: &CharClasses, cps: &[Cp]) -> usize {
    let class = |i: usize| cps.get(i).map(|c| c.class);
    // `\s?` then a run of characters `is`.
    let run_after_space = |is: &dyn Fn(&Cp) -> bool| {
        let lead = usize::from(class(0) == Some(Class::Space));
        let run = cps[lead..].iter().take_while(|c| is(c)).count();
        if run == 0 { 0 } else { lead + run }
    };
    match step {
        Step::LineBreak => usize::from(matches!(cps[0].ch, '\r' | '\n')),
        Step::SpaceLetters => run_after_space(&|c| c.class == Class::Letter),
        Step::SpacePunctuation => run_after_space(&|c| classes.is_punctuation(c.ch)),
        Step::CjkRun => cps
            .iter()
            .take_while(|c| {
                c.class != Class::Space
                    && matches!(c.ch, '\u{0800}'..='\u{9FA5}' | '\u{AC00}'..='\u{D7FF}')
            })
            .count(),
        Step::Digit => usize::from(cps[0].class == Class::Number),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{PreTokenizer, SplitScratch, split};
    use super::*;

    fn pieces(text: &str) -> Vec<&str> {
        let classes = CharClasses::new();
        let mut out = Vec::new();
        let rule = PreTokenizer::DeepseekCoder;
        split(rule, &classes, text, &mut SplitScratch::default(), &mut out);
        out.into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn deepseek_coder_cases() {
        assert_eq!(pieces("Hello world"), ["Hello", " world"]);
        // Punctuation keeps one space before it; symbols ($ + = …) are not
        // punctuation and stay between the matches.
        assert_eq!(pieces("x = a+b;"), ["x", " =", " a", "+", "b", ";"]);
        assert_eq!(pieces("f(x) -> y"), ["f", "(", "x", ")", " -", ">", " y"]);
        assert_eq!(pieces("in 2024"), ["in", " ", "2", "0", "2", "4"]);
        assert_eq!(pieces("a\r\n\nb"), ["a", "\r", "\n", "\n", "b"]);
        assert_eq!(pieces("a   b"), ["a", "  ", " b"]);
        // A letter run that is CJK stays whole. `\u{3000}。、` is first one
        // punctuation piece with its white space, then the CJK expression
        // cuts it: the ideographic space is white space, never CJK.
        assert_eq!(pieces("日本語"), ["日本語"]);
        assert_eq!(pieces("ab\u{3000}。、"), ["ab", "\u{3000}", "。、"]);
        assert_eq!(pieces("🙂🙂 ok"), ["🙂🙂", " ok"]);
        assert_eq!(pieces(""), Vec::<&str>::new());
        let text = "Mixed: ÅÄÖ 12\t\u{a0}x  \n\n  'tis 🙂 ½ ٣ – end  ";
        assert_eq!(pieces(text).concat(), text);
    }
}
