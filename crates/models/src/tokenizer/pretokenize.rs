//! Pre-tokenisation: cutting text into the pieces that BPE merges never
//! cross (the rules are described on [`PreTokenizer`]).

use std::ops::Range;

mod regex_steps;

/// The pre-tokenisation rule of a vocabulary: how text is cut into the
/// pieces that BPE merges never cross.
///
/// Six rules are implemented, each as llama.cpp applies it to the
/// `tokenizer.ggml.pre` names listed in [`PreTokenizer::from_name`]:
///
/// - **GPT-2** — the pattern
///   `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
///   (Radford et al. 2019, the GPT-2 encoder), matched left to right.
///   The contractions are lower-case only; `\s` is Unicode `White_Space`,
///   `\p{L}` / `\p{N}` the Unicode letter / number general categories. A run
///   of white space followed by something else leaves its last character to
///   start the next piece (`"a   b"` → `"a"`, `"  "`, `" b"`).
/// - **GPT-2 with single digits** (SmolLM, StarCoder and others) — first every
///   `\p{N}` character becomes a piece of its own, then the GPT-2 pattern runs
///   inside each remaining stretch, never across a digit. `" 2024"` thus
///   gives `" "`, `"2"`, `"0"`, `"2"`, `"4"`.
/// - **Llama 3** — the pattern
///   `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
///   of Llama 3's `tokenizer.json`: contractions in either case, a word
///   takes one non-letter before it (`"(hello"` is one piece), numbers
///   are cut into groups of three from the left, punctuation keeps the
///   line breaks after it, and a white-space run ending in line breaks
///   ends at its last one. llama.cpp also skips the merges of a piece that
///   is a token already ([`ignores_merges`](Self::ignores_merges)).
/// - **Qwen2** — Llama 3's pattern with single digits (`\p{N}` for
///   `\p{N}{1,3}`), the merges always applied.
/// - **DeepSeek Coder** — llama.cpp's sequence `[\r\n]`, `\s?\p{L}+`,
///   `\s?\p{P}+`, `[一-龥ࠀ-一가-퟿]+`, `\p{N}`: each expression cuts every
///   piece left by the previous ones into its matches and the stretches
///   between them (line breaks alone, words and punctuation runs with one
///   white-space character before them, CJK runs, single digits; symbols
///   such as `+` or `=` stay in the stretches).
/// - **DeepSeek LLM** — llama.cpp's sequence `[\r\n]`, `\s?[A-Za-zµÀ-Ö…]+`
///   (listed ranges of cased scripts: Latin, Greek, Cyrillic and a few
///   others, not `\p{L}`), `\s?[!-/:-~！-／：-～‘-‟　-。]+` (ASCII
///   punctuation and symbols with their full-width forms), `\s+$` (the
///   white space that ends a piece), the CJK runs above, `\p{N}+` (whole
///   numbers).
///
/// The rule is written by hand over a small character-class table instead
/// of a regex engine: the look-ahead `(?!\S)` would need a backtracking
/// engine, and the hand-written scanner is linear in the text.
///
/// # Unicode version
///
/// llama.cpp classifies characters with tables generated from Unicode 15.1;
/// `regex-syntax` (16.0) is therefore asked for `\p{L}` and `\p{N}`
/// restricted to characters assigned by 15.1 (`\p{age:15.1}`), so that a
/// character new in 16.0 (e.g. Garay letters) falls in "other" as it does
/// in llama.cpp. Letters, numbers and white space agree with the tables of
/// the llama.cpp that llama-cpp-python 0.3.36 vendors on all 1 114 112 code
/// points (checked once by dumping both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PreTokenizer {
    /// GPT-2's pattern.
    Gpt2,
    /// Every number character alone, then GPT-2's pattern between them.
    Gpt2SingleDigits,
    /// Llama 3's pattern (numbers in groups of up to three).
    Llama3,
    /// Llama 3's pattern with every number character alone (Qwen2).
    Qwen2,
    /// DeepSeek Coder's sequence of expressions.
    DeepseekCoder,
    /// DeepSeek LLM's sequence of expressions.
    DeepseekLlm,
}

/// `tokenizer.ggml.pre` names of [`PreTokenizer::Gpt2`].
const GPT2_NAMES: &[&str] = &[
    "gpt-2",
    "gpt2",
    "mpt",
    "olmo",
    "jais",
    "trillion",
    "granite-docling",
];
/// `tokenizer.ggml.pre` names of [`PreTokenizer::Gpt2SingleDigits`].
const SINGLE_DIGIT_NAMES: &[&str] = &[
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva-7b",
];
/// `tokenizer.ggml.pre` names of [`PreTokenizer::Llama3`].
const LLAMA3_NAMES: &[&str] = &[
    "llama-bpe",
    "llama3",
    "llama-v3",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
];
/// `tokenizer.ggml.pre` names of [`PreTokenizer::Qwen2`].
const QWEN2_NAMES: &[&str] = &["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "stablelm2"];
/// `tokenizer.ggml.pre` names of [`PreTokenizer::DeepseekCoder`].
const DEEPSEEK_CODER_NAMES: &[&str] = &["deepseek-coder"];
/// `tokenizer.ggml.pre` names of [`PreTokenizer::DeepseekLlm`].
const DEEPSEEK_LLM_NAMES: &[&str] = &["deepseek-llm"];

impl PreTokenizer {
    /// The rule llama.cpp uses for a `tokenizer.ggml.pre` value, if it is
    /// one implemented here.
    ///
    /// # Examples
    /// ```
    /// use lastmile_models::tokenizer::PreTokenizer;
    /// assert_eq!(PreTokenizer::from_name("smollm"), Some(PreTokenizer::Gpt2SingleDigits));
    /// assert_eq!(PreTokenizer::from_name("llama-bpe"), Some(PreTokenizer::Llama3));
    /// assert_eq!(PreTokenizer::from_name("falcon"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Self> {
        [
            (GPT2_NAMES, Self::Gpt2),
            (SINGLE_DIGIT_NAMES, Self::Gpt2SingleDigits),
            (LLAMA3_NAMES, Self::Llama3),
            (QWEN2_NAMES, Self::Qwen2),
            (DEEPSEEK_CODER_NAMES, Self::DeepseekCoder),
            (DEEPSEEK_LLM_NAMES, Self::DeepseekLlm),
        ]
        .into_iter()
        .find_map(|(names, rule)| names.contains(&name).then_some(rule))
    }

    /// The `tokenizer.ggml.pre` values accepted by [`from_name`](Self::from_name).
    pub fn supported_names() -> impl Iterator<Item = &'static str> {
        GPT2_NAMES
            .iter()
            .chain(SINGLE_DIGIT_NAMES)
            .chain(LLAMA3_NAMES)
            .chain(QWEN2_NAMES)
            .chain(DEEPSEEK_CODER_NAMES)
            .chain(DEEPSEEK_LLM_NAMES)
            .copied()
    }

    /// Whether a piece that is a token is emitted as that token without
    /// merging (llama.cpp's `ignore_merges`, set for the names of
    /// [`Llama3`](Self::Llama3)): a token that no merge sequence reaches
    /// still encodes as itself.
    ///
    /// ```
    /// use lastmile_models::tokenizer::PreTokenizer;
    /// assert!(PreTokenizer::Llama3.ignores_merges());
    /// assert!(!PreTokenizer::Qwen2.ignores_merges());
    /// ```
    pub fn ignores_merges(self) -> bool {
        self == Self::Llama3
    }
}

/// The character classes the GPT-2 pattern distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// `\p{L}`.
    Letter,
    /// `\p{N}`.
    Number,
    /// `\s` (`White_Space`).
    Space,
    /// Anything else.
    Other,
}

/// General-category lookup: ASCII by table, the rest by binary search over
/// the sorted ranges of `\p{L}` and `\p{N}` that `regex-syntax` ships.
#[derive(Debug, Clone)]
pub(crate) struct CharClasses {
    ascii: [Class; 128],
    /// Disjoint, sorted `(first, last, class)` ranges above ASCII.
    ranges: Vec<(u32, u32, Class)>,
    /// Sorted ranges of `\p{P}` above ASCII (a category only some rules
    /// name; its characters are [`Class::Other`]).
    punctuation: Vec<(u32, u32)>,
}

impl CharClasses {
    /// Builds the table from `regex-syntax`'s Unicode data.
    pub(crate) fn new() -> Self {
        let mut ranges = Vec::new();
        for (pattern, class) in [
            (r"[\p{L}&&\p{age:15.1}]", Class::Letter),
            (r"[\p{N}&&\p{age:15.1}]", Class::Number),
        ] {
            for (start, end) in unicode_ranges(pattern).filter(|r| r.1 >= 128) {
                ranges.push((start.max(128), end, class));
            }
        }
        ranges.sort_unstable_by_key(|r| r.0);
        let punctuation = unicode_ranges(r"[\p{P}&&\p{age:15.1}]")
            .filter(|r| r.1 >= 128)
            .map(|(start, end)| (start.max(128), end))
            .collect();
        let mut ascii = [Class::Other; 128];
        for (b, class) in ascii.iter_mut().enumerate() {
            let c = b as u8 as char;
            *class = if c.is_ascii_alphabetic() {
                Class::Letter
            } else if c.is_ascii_digit() {
                Class::Number
            } else if c.is_whitespace() {
                Class::Space
            } else {
                Class::Other
            };
        }
        Self {
            ascii,
            ranges,
            punctuation,
        }
    }

    /// Whether `c` is `\p{P}` (ASCII: `!"#%&'()*,-./:;?@[\]_{}`, as in
    /// llama.cpp's table; `$+<=>^`|~` are symbols).
    pub(crate) fn is_punctuation(&self, c: char) -> bool {
        let cp = c as u32;
        if cp < 128 {
            return matches!(
                c,
                '!'..='#' | '%'..='*' | ','..='/' | ':' | ';' | '?' | '@' | '['..=']' | '_' | '{' | '}'
            );
        }
        let i = self.punctuation.partition_point(|r| r.0 <= cp);
        i.checked_sub(1)
            .is_some_and(|i| cp <= self.punctuation[i].1)
    }

    /// The class of `c`.
    #[inline]
    pub(crate) fn class(&self, c: char) -> Class {
        let cp = c as u32;
        if cp < 128 {
            return self.ascii[cp as usize];
        }
        if c.is_whitespace() {
            return Class::Space;
        }
        let i = self.ranges.partition_point(|r| r.0 <= cp);
        match i.checked_sub(1).map(|i| self.ranges[i]) {
            Some((_, last, class)) if cp <= last => class,
            _ => Class::Other,
        }
    }
}

/// The code-point ranges of a Unicode class `pattern`. The patterns are
/// constants that regex-syntax always accepts; an error would only mean its
/// Unicode tables were compiled out, and then no non-ASCII character falls
/// in the class.
fn unicode_ranges(pattern: &str) -> impl Iterator<Item = (u32, u32)> {
    let ranges = match regex_syntax::parse(pattern).map(|hir| hir.into_kind()) {
        Ok(regex_syntax::hir::HirKind::Class(regex_syntax::hir::Class::Unicode(set))) => set
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        _ => Vec::new(),
    };
    ranges.into_iter()
}

/// One character of the text being split.
#[derive(Debug, Clone, Copy)]
struct Cp {
    /// Byte offset in the text.
    at: usize,
    ch: char,
    class: Class,
}

/// Reusable buffers of [`split`].
#[derive(Debug, Default)]
pub(crate) struct SplitScratch {
    cps: Vec<Cp>,
}

/// Appends the byte ranges of the pieces of `text` to `out`.
pub(crate) fn split(
    rule: PreTokenizer,
    classes: &CharClasses,
    text: &str,
    scratch: &mut SplitScratch,
    out: &mut Vec<Range<usize>>,
) {
    let cps = &mut scratch.cps;
    cps.clear();
    cps.extend(text.char_indices().map(|(at, ch)| Cp {
        at,
        ch,
        class: classes.class(ch),
    }));
    let end_byte = text.len();
    let byte_at = |cps: &[Cp], i: usize| cps.get(i).map_or(end_byte, |c| c.at);
    match rule {
        PreTokenizer::Gpt2 => gpt2(cps, 0, cps.len(), end_byte, out),
        PreTokenizer::Gpt2SingleDigits => {
            let mut start = 0;
            for i in 0..cps.len() {
                if cps[i].class == Class::Number {
                    gpt2(cps, start, i, end_byte, out);
                    out.push(cps[i].at..byte_at(cps, i + 1));
                    start = i + 1;
                }
            }
            gpt2(cps, start, cps.len(), end_byte, out);
        }
        PreTokenizer::Llama3 => llama3(cps, 3, end_byte, out),
        PreTokenizer::Qwen2 => llama3(cps, 1, end_byte, out),
        PreTokenizer::DeepseekCoder => {
            regex_steps::split_steps(regex_steps::DEEPSEEK_CODER, cps, classes, end_byte, out)
        }
        PreTokenizer::DeepseekLlm => {
            regex_steps::split_steps(regex_steps::DEEPSEEK_LLM, cps, classes, end_byte, out)
        }
    }
}

/// Llama 3's pattern over `cps`, number runs cut every `digits`
/// characters; the alternatives are tried in the pattern's order.
fn llama3(cps: &[Cp], digits: usize, end_byte: usize, out: &mut Vec<Range<usize>>) {
    let end = cps.len();
    let byte_at = |i: usize| cps.get(i).map_or(end_byte, |c| c.at);
    let class = |i: usize| (i < end).then(|| cps[i].class);
    let ch = |i: usize| (i < end).then(|| cps[i].ch);
    let line_break = |i: usize| matches!(ch(i), Some('\r' | '\n'));
    let mut prev = 0;
    let mut emit = |to: usize, prev: &mut usize| {
        if to > *prev {
            out.push(byte_at(*prev)..byte_at(to));
        }
        *prev = to;
    };
    let mut pos = 0;
    while pos < end {
        let Cp {
            ch: c, class: cl, ..
        } = cps[pos];
        // (?i:'s|'t|'re|'ve|'m|'ll|'d): only ASCII letters lower-case to these.
        if c == '\'' {
            let lower = |i: usize| ch(i).map(|c| c.to_ascii_lowercase());
            let len = match (lower(pos + 1), lower(pos + 2)) {
                (Some('s' | 't' | 'm' | 'd'), _) => 2,
                (Some('r' | 'v'), Some('e')) | (Some('l'), Some('l')) => 3,
                _ => 0,
            };
            if len > 0 {
                pos += len;
                emit(pos, &mut prev);
                continue;
            }
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !line_break(pos)
            && cl != Class::Number
            && (cl == Class::Letter || class(pos + 1) == Some(Class::Letter))
        {
            pos += 1;
            while class(pos) == Some(Class::Letter) {
                pos += 1;
            }
            emit(pos, &mut prev);
            continue;
        }
        // \p{N}{1,digits}
        if cl == Class::Number {
            let mut group = pos;
            while class(pos) == Some(Class::Number) {
                pos += 1;
                if pos - group >= digits {
                    emit(pos, &mut prev);
                    group = pos;
                }
            }
            emit(pos, &mut prev);
            continue;
        }
        // ' '?[^\s\p{L}\p{N}]+[\r\n]*
        let lead = if c == ' ' { class(pos + 1) } else { Some(cl) };
        if lead == Some(Class::Other) {
            pos += usize::from(c == ' ');
            while class(pos) == Some(Class::Other) {
                pos += 1;
            }
            while line_break(pos) {
                pos += 1;
            }
            emit(pos, &mut prev);
            continue;
        }
        // \s*[\r\n]+ | \s+(?!\S) | \s+
        let mut spaces = 0;
        let mut after_break = None;
        while class(pos + spaces) == Some(Class::Space) {
            if line_break(pos + spaces) {
                after_break = Some(pos + spaces + 1);
            }
            spaces += 1;
        }
        pos = match after_break {
            Some(to) => to,
            None if spaces > 1 && pos + spaces < end => pos + spaces - 1,
            None => pos + spaces.max(1),
        };
        emit(pos, &mut prev);
    }
}

/// GPT-2's pattern over the characters `cps[ini..end]` (nothing before
/// `ini` or from `end` on is visible to it).
fn gpt2(cps: &[Cp], ini: usize, end: usize, end_byte: usize, out: &mut Vec<Range<usize>>) {
    let byte_at = |i: usize| cps.get(i).map_or(end_byte, |c| c.at);
    let class = |i: usize| (i < end).then(|| cps[i].class);
    let ch = |i: usize| (i < end).then(|| cps[i].ch);
    let mut prev = ini;
    let mut pos = ini;
    let mut emit = |to: usize, prev: &mut usize| {
        if to > *prev {
            out.push(byte_at(*prev)..byte_at(to));
        }
        *prev = to;
    };
    while pos < end {
        let c = cps[pos].ch;
        // 's|'t|'re|'ve|'m|'ll|'d
        if c == '\'' {
            match (ch(pos + 1), ch(pos + 2)) {
                (Some('s' | 't' | 'm' | 'd'), _) => {
                    pos += 2;
                    emit(pos, &mut prev);
                    continue;
                }
                (Some('r' | 'v'), Some('e')) | (Some('l'), Some('l')) => {
                    pos += 3;
                    emit(pos, &mut prev);
                    continue;
                }
                _ => {}
            }
        }
        // An optional leading ' ' followed by a run of one class.
        let lead = if c == ' ' {
            class(pos + 1)
        } else {
            Some(cps[pos].class)
        };
        if let Some(run @ (Class::Letter | Class::Number | Class::Other)) = lead {
            pos += usize::from(c == ' ');
            while class(pos) == Some(run) {
                pos += 1;
            }
            emit(pos, &mut prev);
            continue;
        }
        // \s+(?!\S) | \s+
        let mut spaces = 0;
        while class(pos + spaces) == Some(Class::Space) {
            spaces += 1;
        }
        if spaces > 1 && pos + spaces < end {
            pos += spaces - 1;
        } else if spaces > 0 {
            pos += spaces;
        } else {
            pos += 1; // not reached: every class is handled above
        }
        emit(pos, &mut prev);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// `text` cut by `rule`, as string slices.
    pub(super) fn pieces(rule: PreTokenizer, text: &str) -> Vec<&str> {
        let classes = CharClasses::new();
        let mut out = Vec::new();
        split(rule, &classes, text, &mut SplitScratch::default(), &mut out);
        out.into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn gpt2_pattern_cases() {
        let p = |t| pieces(PreTokenizer::Gpt2, t);
        assert_eq!(p("Hello world"), ["Hello", " world"]);
        assert_eq!(
            p("I'll don't it's"),
            ["I", "'ll", " don", "'t", " it", "'s"]
        );
        assert_eq!(p("I'LL"), ["I", "'", "LL"]); // contractions are lower-case only
        assert_eq!(p("a   b"), ["a", "  ", " b"]);
        assert_eq!(p("a  "), ["a", "  "]);
        assert_eq!(p("x = 12345;"), ["x", " =", " 12345", ";"]);
        assert_eq!(p("  !!?"), [" ", " !!?"]);
        // The newline run leaves its last character to the next piece.
        assert_eq!(p("a\n\nb"), ["a", "\n", "\n", "b"]);
        assert_eq!(p("héllo wörld"), ["héllo", " wörld"]);
        assert_eq!(p("日本語のテキスト"), ["日本語のテキスト"]);
        assert_eq!(p("🙂🙂 ok"), ["🙂🙂", " ok"]);
        assert_eq!(p(""), Vec::<&str>::new());
    }

    #[test]
    fn single_digits_split_numbers_first() {
        let p = |t| pieces(PreTokenizer::Gpt2SingleDigits, t);
        assert_eq!(p("in 2024!"), ["in", " ", "2", "0", "2", "4", "!"]);
        assert_eq!(p("x1y"), ["x", "1", "y"]);
        assert_eq!(p("٣٤"), ["٣", "٤"]); // Arabic-Indic digits are \p{N}
        assert_eq!(p("½ cup"), ["½", " cup"]); // No is \p{N}
    }

    #[test]
    fn llama3_pattern_cases() {
        let p = |t| pieces(PreTokenizer::Llama3, t);
        assert_eq!(p("Hello world"), ["Hello", " world"]);
        assert_eq!(p("I'LL don't"), ["I", "'LL", " don", "'t"]); // either case
        assert_eq!(
            p("(hello) x=1234567"),
            ["(hello", ")", " x", "=", "123", "456", "7"]
        );
        assert_eq!(p("a.\n\nb"), ["a", ".\n\n", "b"]);
        assert_eq!(p("a \n \n  b"), ["a", " \n \n", " ", " b"]);
        assert_eq!(p("a   b"), ["a", "  ", " b"]);
        assert_eq!(p("x  "), ["x", "  "]);
        assert_eq!(p(" 42"), [" ", "42"]);
        assert_eq!(p("\t\tx"), ["\t", "\tx"]);
        assert_eq!(p(""), Vec::<&str>::new());
        let q = |t| pieces(PreTokenizer::Qwen2, t);
        assert_eq!(q("x=1234"), ["x", "=", "1", "2", "3", "4"]);
    }

    #[test]
    fn pieces_tile_the_text() {
        let text = "Mixed: ÅÄÖ 12\t\u{a0}x  \n\n  'tis 🙂 ½ ٣ – end  ";
        for rule in [
            PreTokenizer::Gpt2,
            PreTokenizer::Gpt2SingleDigits,
            PreTokenizer::Llama3,
            PreTokenizer::Qwen2,
        ] {
            assert_eq!(pieces(rule, text).concat(), text);
        }
    }

    #[test]
    fn classes_match_categories() {
        let c = CharClasses::new();
        assert_eq!(c.class('a'), Class::Letter);
        assert_eq!(c.class('é'), Class::Letter);
        assert_eq!(c.class('語'), Class::Letter);
        assert_eq!(c.class('7'), Class::Number);
        assert_eq!(c.class('Ⅻ'), Class::Number); // Nl
        assert_eq!(c.class('\u{3000}'), Class::Space);
        assert_eq!(c.class('\u{85}'), Class::Space);
        assert_eq!(c.class('🙂'), Class::Other);
        assert_eq!(c.class('\u{301}'), Class::Other); // combining mark: M, not L
        assert_eq!(c.class('\u{10FFFF}'), Class::Other);
    }
}
