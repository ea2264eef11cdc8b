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
pub(super) enum Step {
    /// `[\r\n]`.
    LineBreak,
    /// `\s?\p{L}+`.
    SpaceLetters,
    /// `\s?\p{P}+`.
    SpacePunctuation,
    /// `\s?[…]+` over DeepSeek LLM's letter ranges ([`LLM_LETTERS`]).
    SpaceListedLetters,
    /// `\s?[!-/:-~！-／：-～‘-‟　-。]+` ([`LLM_PUNCTUATION`]).
    SpaceListedPunctuation,
    /// `\s+$`: the white space that ends a piece.
    TrailingSpace,
    /// `[一-龥ࠀ-一가-퟿]+`: runs of U+0800–U+9FA5 and U+AC00–U+D7FF.
    CjkRun,
    /// `\p{N}`: one number character.
    Digit,
    /// `\p{N}+`: a run of number characters.
    Digits,
}

/// DeepSeek Coder's expressions (`LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_CODER`), in order.
pub(super) const DEEPSEEK_CODER: &[Step] = &[
    Step::LineBreak,
    Step::SpaceLetters,
    Step::SpacePunctuation,
    Step::CjkRun,
    Step::Digit,
];

/// DeepSeek LLM's expressions (`LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_LLM`), in order.
pub(super) const DEEPSEEK_LLM: &[Step] = &[
    Step::LineBreak,
    Step::SpaceListedLetters,
    Step::SpaceListedPunctuation,
    Step::TrailingSpace,
    Step::CjkRun,
    Step::Digits,
];

/// The character ranges of DeepSeek LLM's letter expression, as its
/// tokenizer lists them (Latin, Greek, Cyrillic, Armenian, Georgian,
/// Cherokee, Glagolitic, Coptic, Deseret, Osage, Old Hungarian, Warang Citi,
/// Adlam and their compatibility forms; not CJK, Arabic, Indic and the
/// other scripts without case), sorted.
const LLM_LETTERS: [(char, char); 87] = [
    ('A', 'Z'),
    ('a', 'z'),
    ('\u{B5}', '\u{B5}'),
    ('\u{C0}', '\u{D6}'),
    ('\u{D8}', '\u{F6}'),
    ('\u{F8}', '\u{1BA}'),
    ('\u{1BC}', '\u{1BF}'),
    ('\u{1C4}', '\u{293}'),
    ('\u{295}', '\u{2AF}'),
    ('\u{370}', '\u{373}'),
    ('\u{376}', '\u{376}'),
    ('\u{377}', '\u{377}'),
    ('\u{37B}', '\u{37D}'),
    ('\u{37F}', '\u{37F}'),
    ('\u{386}', '\u{386}'),
    ('\u{388}', '\u{38A}'),
    ('\u{38C}', '\u{38C}'),
    ('\u{38E}', '\u{3A1}'),
    ('\u{3A3}', '\u{3F5}'),
    ('\u{3F7}', '\u{481}'),
    ('\u{48A}', '\u{52F}'),
    ('\u{531}', '\u{556}'),
    ('\u{10A0}', '\u{10C5}'),
    ('\u{13A0}', '\u{13F5}'),
    ('\u{13F8}', '\u{13FD}'),
    ('\u{1C90}', '\u{1CBA}'),
    ('\u{1CBD}', '\u{1CBF}'),
    ('\u{1D00}', '\u{1D2B}'),
    ('\u{1D6B}', '\u{1D77}'),
    ('\u{1D79}', '\u{1D9A}'),
    ('\u{1E00}', '\u{1F15}'),
    ('\u{1F18}', '\u{1F1D}'),
    ('\u{1F20}', '\u{1F45}'),
    ('\u{1F48}', '\u{1F4D}'),
    ('\u{1F50}', '\u{1F57}'),
    ('\u{1F59}', '\u{1F59}'),
    ('\u{1F5B}', '\u{1F5B}'),
    ('\u{1F5D}', '\u{1F5D}'),
    ('\u{1F5F}', '\u{1F7D}'),
    ('\u{1F80}', '\u{1FB4}'),
    ('\u{1FB6}', '\u{1FBC}'),
    ('\u{1FBE}', '\u{1FBE}'),
    ('\u{1FC2}', '\u{1FC4}'),
    ('\u{1FC6}', '\u{1FCC}'),
    ('\u{1FD0}', '\u{1FD3}'),
    ('\u{1FD6}', '\u{1FDB}'),
    ('\u{1FE0}', '\u{1FEC}'),
    ('\u{1FF2}', '\u{1FF4}'),
    ('\u{1FF6}', '\u{1FFC}'),
    ('\u{2102}', '\u{2102}'),
    ('\u{2107}', '\u{2107}'),
    ('\u{210A}', '\u{2113}'),
    ('\u{2115}', '\u{2115}'),
    ('\u{2119}', '\u{211D}'),
    ('\u{2124}', '\u{2124}'),
    ('\u{2126}', '\u{2126}'),
    ('\u{2128}', '\u{2128}'),
    ('\u{212A}', '\u{212D}'),
    ('\u{212F}', '\u{2134}'),
    ('\u{2139}', '\u{2139}'),
    ('\u{213C}', '\u{213F}'),
    ('\u{2145}', '\u{2149}'),
    ('\u{214E}', '\u{214E}'),
    ('\u{2183}', '\u{2183}'),
    ('\u{2184}', '\u{2184}'),
    ('\u{2C00}', '\u{2C7B}'),
    ('\u{2C7E}', '\u{2CE4}'),
    ('\u{2CEB}', '\u{2CEE}'),
    ('\u{2CF2}', '\u{2CF2}'),
    ('\u{2CF3}', '\u{2CF3}'),
    ('\u{A640}', '\u{A66D}'),
    ('\u{A680}', '\u{A69B}'),
    ('\u{A722}', '\u{A76F}'),
    ('\u{A771}', '\u{A787}'),
    ('\u{A78B}', '\u{A78E}'),
    ('\u{AB70}', '\u{ABBF}'),
    ('\u{FB00}', '\u{FB06}'),
    ('\u{FB13}', '\u{FB17}'),
    ('\u{FF21}', '\u{FF3A}'),
    ('\u{FF41}', '\u{FF5A}'),
    ('\u{10400}', '\u{1044F}'),
    ('\u{104B0}', '\u{104D3}'),
    ('\u{104D8}', '\u{104FB}'),
    ('\u{10C80}', '\u{10CB2}'),
    ('\u{10CC0}', '\u{10CF2}'),
    ('\u{118A0}', '\u{118DF}'),
    ('\u{1E900}', '\u{1E943}'),
];

/// The character ranges of DeepSeek LLM's punctuation expression: ASCII
/// punctuation and symbols (and, as the expression is written, ASCII
/// letters, which the letter expression has already cut out), their
/// full-width forms, quotation marks, and `　、。` (whose white space never
/// matches).
const LLM_PUNCTUATION: [(char, char); 6] = [
    ('!', '/'),
    (':', '~'),
    ('\u{2018}', '\u{201F}'),
    ('\u{3000}', '\u{3002}'),
    ('\u{FF01}', '\u{FF0F}'),
    ('\u{FF1A}', '\u{FF5E}'),
];

/// Whether `c` falls in one of the sorted `ranges`.
fn listed(ranges: &[(char, char)], c: char) -> bool {
    let i = ranges.partition_point(|r| r.0 <= c);
    i.checked_sub(1).is_some_and(|i| c <= ranges[i].1)
}

/// A sequence's expressions applied in turn over `cps` (the whole text),
/// as byte ranges.
pub(super) fn split_steps(
    steps: &[Step],
    cps: &[Cp],
    classes: &CharClasses,
    end_byte: usize,
    out: &mut Vec<Range<usize>>,
) {
    let byte_at = |i: usize| cps.get(i).map_or(end_byte, |c| c.at);
    let mut pieces = Vec::with_capacity(cps.len() / 2 + 1);
    pieces.push(0..cps.len());
    let mut next = Vec::new();
    for &step in steps {
        next.clear();
        for piece in &pieces {
            if let Step::TrailingSpace = step {
                // One match at most, found from the end (a scan from each
                // start would be quadratic in a long run of white space).
                let space = cps[piece.clone()]
                    .iter()
                    .rev()
                    .take_while(|c| c.class == Class::Space)
                    .count();
                let cut = piece.end - space;
                next.extend(
                    [piece.start..cut, cut..piece.end]
                        .into_iter()
                        .filter(|r| !r.is_empty()),
                );
                continue;
            }
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
    // A listed range matches no white space: llama.cpp runs these
    // expressions on text whose non-ASCII white space is a vertical tab.
    let in_list = |ranges: &[(char, char)], c: &Cp| c.class != Class::Space && listed(ranges, c.ch);
    match step {
        Step::LineBreak => usize::from(matches!(cps[0].ch, '\r' | '\n')),
        Step::SpaceLetters => run_after_space(&|c| c.class == Class::Letter),
        Step::SpacePunctuation => run_after_space(&|c| classes.is_punctuation(c.ch)),
        Step::SpaceListedLetters => run_after_space(&|c| in_list(&LLM_LETTERS, c)),
        Step::SpaceListedPunctuation => run_after_space(&|c| in_list(&LLM_PUNCTUATION, c)),
        Step::TrailingSpace => 0, // matched per piece by `split_steps`
        Step::CjkRun => cps
            .iter()
            .take_while(|c| {
                c.class != Class::Space
                    && matches!(c.ch, '\u{0800}'..='\u{9FA5}' | '\u{AC00}'..='\u{D7FF}')
            })
            .count(),
        Step::Digit => usize::from(cps[0].class == Class::Number),
        Step::Digits => cps.iter().take_while(|c| c.class == Class::Number).count(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::PreTokenizer;
    use super::super::tests::pieces;

    #[test]
    fn deepseek_coder_cases() {
        let p = |t| pieces(PreTokenizer::DeepseekCoder, t);
        assert_eq!(p("Hello world"), ["Hello", " world"]);
        // Punctuation keeps one space before it; symbols ($ + = …) are not
        // punctuation and stay between the matches.
        assert_eq!(p("x = a+b;"), ["x", " =", " a", "+", "b", ";"]);
        assert_eq!(p("f(x) -> y"), ["f", "(", "x", ")", " -", ">", " y"]);
        assert_eq!(p("in 2024"), ["in", " ", "2", "0", "2", "4"]);
        assert_eq!(p("a\r\n\nb"), ["a", "\r", "\n", "\n", "b"]);
        assert_eq!(p("a   b"), ["a", "  ", " b"]);
        // A letter run that is CJK stays whole. `\u{3000}。、` is first one
        // punctuation piece with its white space, then the CJK expression
        // cuts it: the ideographic space is white space, never CJK.
        assert_eq!(p("日本語"), ["日本語"]);
        assert_eq!(p("ab\u{3000}。、"), ["ab", "\u{3000}", "。、"]);
        assert_eq!(p("🙂🙂 ok"), ["🙂🙂", " ok"]);
        assert_eq!(p(""), Vec::<&str>::new());
        let text = "Mixed: ÅÄÖ 12\t\u{a0}x  \n\n  'tis 🙂 ½ ٣ – end  ";
        assert_eq!(p(text).concat(), text);
    }

    #[test]
    fn deepseek_llm_cases() {
        let p = |t| pieces(PreTokenizer::DeepseekLlm, t);
        assert_eq!(p("Hello world"), ["Hello", " world"]);
        // ASCII symbols are punctuation here, with one space before them;
        // numbers stay whole.
        assert_eq!(p("x = a+b;"), ["x", " =", " a", "+", "b", ";"]);
        assert_eq!(
            p("in 2024, 3.5"),
            ["in", " ", "2024", ",", " ", "3", ".", "5"]
        );
        // Listed letters only: Greek and Cyrillic are words, Arabic (not
        // listed) stays in the stretch between them.
        assert_eq!(p("αβγ Привет"), ["αβγ", " Привет"]);
        assert_eq!(p("ab مرحبا"), ["ab", " مرحبا"]);
        // The white space that ends a piece is cut off it.
        assert_eq!(p("a \u{a0}"), ["a", " \u{a0}"]);
        assert_eq!(p("a   b  "), ["a", "  ", " b", "  "]);
        assert_eq!(p("日本語。"), ["日本語", "。"]);
        assert_eq!(p("a\r\n"), ["a", "\r", "\n"]);
        assert_eq!(p(""), Vec::<&str>::new());
        let text = "Mixed: ÅÄÖ 12\t\u{a0}x  \n\n  'tis 🙂 ½ ٣ – end  ";
        assert_eq!(p(text).concat(), text);
    }
}
