//! Pre-tokenizers: split text into words before byte-level BPE.
//!
//! Each supported `tokenizer.ggml.pre` value maps to a list of split steps applied in order;
//! every step splits each word of the previous step further (matches and the gaps between them
//! both become words). The GPT-2, Llama-3 and Qwen2 patterns are hand-written scanners over
//! code-point classes; the others run a `regex` over a "collapsed" copy of the text in which each
//! non-ASCII code point is replaced by one placeholder character for its class, so that
//! `\p{L}`-style classes behave exactly like llama.cpp's (see `unicode.rs`).

use regex::Regex;

use super::unicode::{is_whitespace, CpFlags};
use super::{Result, TokenizerError};

/// Placeholders for non-ASCII code points in collapsed text, by class.
const C_OTHER: char = '\u{D0}';
const C_NUMBER: char = '\u{D1}';
const C_LETTER: char = '\u{D2}';
const C_PUNCT: char = '\u{D3}';
const C_MARK: char = '\u{D4}';
const C_SYMBOL: char = '\u{D5}';

/// Class bodies (for use inside `[...]`) matching collapsed text.
const N: &str = r"\x{D1}0-9";
const L: &str = r"\x{D2}A-Za-z";
const P: &str = r"\x{D3}!-#%-*,-/:-;?-@\[-\]_\{\}";

/// The GPT-2 pattern `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
const GPT2: Step = Step::Gpt2;
/// Llama-3's pattern (numbers in groups of up to three).
const LLAMA3: Step = Step::Llama3 {
    digits: 3,
    marks: false,
};

enum Step {
    Gpt2,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,digits}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`,
    /// with `\p{L}` widened to `[\p{L}\p{M}]` when `marks` (Qwen3.5).
    Llama3 {
        digits: usize,
        marks: bool,
    },
    /// A regex over collapsed text (`collapsed`) or over the real code points.
    Regex {
        re: Regex,
        collapsed: bool,
    },
}

/// A pre-tokenizer: the split steps of one `tokenizer.ggml.pre` kind.
pub(crate) struct PreTokenizer {
    steps: Vec<Step>,
}

/// Per-kind flags that llama.cpp ties to the pre-tokenizer name.
pub(crate) struct PreFlags {
    pub ignore_merges: bool,
    pub add_bos: bool,
    pub clean_spaces: bool,
}

fn collapsed(pattern: &str) -> Result<Step> {
    let re = Regex::new(pattern).map_err(|e| TokenizerError::Regex(e.to_string()))?;
    Ok(Step::Regex {
        re,
        collapsed: true,
    })
}

fn plain(pattern: &str) -> Result<Step> {
    let re = Regex::new(pattern).map_err(|e| TokenizerError::Regex(e.to_string()))?;
    Ok(Step::Regex {
        re,
        collapsed: false,
    })
}

impl PreTokenizer {
    /// Build the pre-tokenizer for a `tokenizer.ggml.pre` value (`None` = missing = "default").
    pub fn new(pre: Option<&str>) -> Result<(PreTokenizer, PreFlags)> {
        let mut flags = PreFlags {
            ignore_merges: false,
            add_bos: false,
            clean_spaces: true,
        };
        let name = pre.unwrap_or("default");
        let punct_run = format!(r"[{P}\$\+<=>\^~\|]+");
        let steps = match name {
            "default" => vec![
                collapsed(&punct_run)?,
                GPT2,
                collapsed(&format!("[{N}]+"))?,
                plain("[0-9][0-9][0-9]")?,
            ],
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" => {
                flags.ignore_merges = true;
                flags.add_bos = true;
                vec![LLAMA3]
            }
            "dbrx" | "smaug-bpe" => vec![LLAMA3],
            "deepseek-llm" => {
                flags.clean_spaces = false;
                vec![
                    plain("[\r\n]")?,
                    plain(DEEPSEEK_LLM_LETTERS)?,
                    plain(
                        r"\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+",
                    )?,
                    plain("\\s+$")?,
                    plain(CJK_RUN)?,
                    collapsed(&format!("[{N}]+"))?,
                ]
            }
            "deepseek-coder" => {
                flags.clean_spaces = false;
                vec![
                    plain("[\r\n]")?,
                    collapsed(&format!(r"\s?[{L}]+"))?,
                    collapsed(&format!(r"\s?[{P}]+"))?,
                    plain(CJK_RUN)?,
                    collapsed(&format!("[{N}]"))?,
                ]
            }
            "falcon" => vec![collapsed(&punct_run)?, GPT2, plain("[0-9][0-9][0-9]")?],
            "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
                vec![collapsed(&format!("[{N}]"))?, GPT2]
            }
            "command-r" | "smollm" => {
                flags.clean_spaces = false;
                vec![collapsed(&format!("[{N}]"))?, GPT2]
            }
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "mpt" | "olmo" | "jais"
            | "exaone4" => vec![GPT2],
            "trillion" | "granite-docling" => {
                flags.clean_spaces = false;
                vec![GPT2]
            }
            "stablelm2" | "megrez" => vec![Step::Llama3 {
                digits: 1,
                marks: false,
            }],
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "solar-open" => {
                flags.clean_spaces = false;
                vec![Step::Llama3 {
                    digits: 1,
                    marks: false,
                }]
            }
            "qwen35" => {
                flags.clean_spaces = false;
                vec![Step::Llama3 {
                    digits: 1,
                    marks: true,
                }]
            }
            other => return Err(TokenizerError::UnsupportedPreTokenizer(other.to_string())),
        };
        Ok((PreTokenizer { steps }, flags))
    }

    /// Split `text` into words; returns their byte ranges, in order, covering all of `text`.
    pub fn split(&self, text: &str) -> Vec<(usize, usize)> {
        let cpts: Vec<char> = text.chars().collect();
        let flags: Vec<CpFlags> = cpts.iter().map(|&c| CpFlags::of(c)).collect();
        let mut lens: Vec<usize> = vec![cpts.len()];
        let mut collapsed_text: Option<Vec<char>> = None;
        let mut plain_text: Option<Vec<char>> = None;
        for step in &self.steps {
            lens = match step {
                Step::Gpt2 => split_gpt2(&cpts, &flags, &lens),
                Step::Llama3 { digits, marks } => {
                    split_llama3(&cpts, &flags, &lens, *digits, *marks)
                }
                Step::Regex { re, collapsed } => {
                    let chars: &[char] = if *collapsed {
                        collapsed_text.get_or_insert_with(|| collapse(&cpts, &flags))
                    } else {
                        plain_text.get_or_insert_with(|| {
                            cpts.iter()
                                .map(|&c| {
                                    if (c as u32) > 0x7F && is_whitespace(c) {
                                        '\x0B'
                                    } else {
                                        c
                                    }
                                })
                                .collect()
                        })
                    };
                    split_regex(re, chars, &lens)
                }
            };
        }
        // code-point lengths -> byte ranges
        let mut out = Vec::with_capacity(lens.len());
        let mut it = text
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(text.len()));
        let mut start = it.next().unwrap_or(0);
        for len in lens {
            if len == 0 {
                continue;
            }
            let end = it.nth(len - 1).unwrap_or(text.len());
            out.push((start, end));
            start = end;
        }
        out
    }
}

/// One placeholder character per code point: ASCII is kept, non-ASCII whitespace becomes
/// `\x0B`, everything else its class placeholder.
fn collapse(cpts: &[char], flags: &[CpFlags]) -> Vec<char> {
    cpts.iter()
        .zip(flags)
        .map(|(&c, f)| {
            if (c as u32) < 128 {
                c
            } else if f.is_whitespace() {
                '\x0B'
            } else {
                match f.category() {
                    CpFlags::NUMBER => C_NUMBER,
                    CpFlags::LETTER => C_LETTER,
                    CpFlags::PUNCTUATION => C_PUNCT,
                    CpFlags::MARK => C_MARK,
                    CpFlags::SYMBOL => C_SYMBOL,
                    _ => C_OTHER,
                }
            }
        })
        .collect()
}

/// Split each chunk (code-point lengths in `lens`) into regex matches and the gaps between.
fn split_regex(re: &Regex, chars: &[char], lens: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(lens.len());
    let mut start = 0;
    let mut s = String::new();
    let mut byte_to_cp: Vec<usize> = Vec::new();
    for &len in lens {
        let chunk = &chars[start..start + len];
        start += len;
        s.clear();
        byte_to_cp.clear();
        for (i, &c) in chunk.iter().enumerate() {
            for _ in 0..c.len_utf8() {
                byte_to_cp.push(i);
            }
            s.push(c);
        }
        byte_to_cp.push(chunk.len());
        let mut prev = 0;
        for m in re.find_iter(&s) {
            let (a, b) = (byte_to_cp[m.start()], byte_to_cp[m.end()]);
            if a > prev {
                out.push(a - prev);
            }
            out.push(b - a);
            prev = b;
        }
        if prev < chunk.len() {
            out.push(chunk.len() - prev);
        }
    }
    out
}

/// Cursor over one chunk: positions outside it read as "no character".
struct Chunk<'a> {
    cpts: &'a [char],
    flags: &'a [CpFlags],
    end: usize,
}

impl Chunk<'_> {
    #[inline]
    fn cpt(&self, pos: usize) -> Option<char> {
        (pos < self.end).then(|| self.cpts[pos])
    }
    #[inline]
    fn flags(&self, pos: usize) -> CpFlags {
        if pos < self.end {
            self.flags[pos]
        } else {
            CpFlags::NONE
        }
    }
    /// Length of a `'s|'t|'re|'ve|'m|'ll|'d` contraction at `pos` (0 if none).
    fn contraction(&self, pos: usize, ignore_case: bool) -> usize {
        if self.cpt(pos) != Some('\'') || pos + 1 >= self.end {
            return 0;
        }
        let low = |c: Option<char>| {
            let c = c.unwrap_or('\0');
            if ignore_case {
                c.to_ascii_lowercase()
            } else {
                c
            }
        };
        let c1 = low(self.cpt(pos + 1));
        if matches!(c1, 's' | 't' | 'm' | 'd') {
            return 2;
        }
        if pos + 2 < self.end {
            let c2 = low(self.cpt(pos + 2));
            if matches!((c1, c2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                return 3;
            }
        }
        0
    }
}

/// Word lengths for the GPT-2 pattern, applied to each chunk in `lens`.
fn split_gpt2(cpts: &[char], flags: &[CpFlags], lens: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(lens.len());
    let mut ini = 0;
    for &len in lens {
        let ch = Chunk {
            cpts,
            flags,
            end: ini + len,
        };
        let mut pos = ini;
        let mut prev = ini;
        let emit = |end: usize, prev: &mut usize, out: &mut Vec<usize>| {
            if end > *prev {
                out.push(end - *prev);
            }
            *prev = end;
        };
        while pos < ch.end {
            let c = ch.cpt(pos);
            let n = ch.contraction(pos, false);
            if n > 0 {
                pos += n;
                emit(pos, &mut prev, &mut out);
                continue;
            }
            let space = c == Some(' ');
            let f2 = if space {
                ch.flags(pos + 1)
            } else {
                ch.flags(pos)
            };
            // <space>?\p{L}+ / <space>?\p{N}+ / <space>?[^\s\p{L}\p{N}]+
            type Pred = fn(CpFlags) -> bool;
            let runs: [Pred; 3] = [
                |f| f.is_letter(),
                |f| f.is_number(),
                |f| !(f.is_whitespace() || f.is_letter() || f.is_number()) && f.any(),
            ];
            if let Some(pred) = runs.iter().find(|p| p(f2)) {
                pos += space as usize;
                while pred(ch.flags(pos)) {
                    pos += 1;
                }
                emit(pos, &mut prev, &mut out);
                continue;
            }
            let mut nws = 0;
            while ch.flags(pos + nws).is_whitespace() {
                nws += 1;
            }
            if nws > 1 && ch.cpt(pos + nws).is_some() {
                // \s+(?!\S)
                pos += nws - 1;
            } else if nws > 0 {
                pos += nws;
            } else {
                pos += 1;
            }
            emit(pos, &mut prev, &mut out);
        }
        ini += len;
    }
    out
}

/// Word lengths for the Llama-3 / Qwen2 / Qwen3.5 patterns.
fn split_llama3(
    cpts: &[char],
    flags: &[CpFlags],
    lens: &[usize],
    digits: usize,
    marks: bool,
) -> Vec<usize> {
    let mut out = Vec::with_capacity(lens.len());
    let mut ini = 0;
    let is_word = |f: CpFlags| f.is_letter() || (marks && f.is_mark());
    for &len in lens {
        let ch = Chunk {
            cpts,
            flags,
            end: ini + len,
        };
        let mut pos = ini;
        let mut prev = ini;
        let emit = |end: usize, prev: &mut usize, out: &mut Vec<usize>| {
            if end > *prev {
                out.push(end - *prev);
            }
            *prev = end;
        };
        while pos < ch.end {
            let c = ch.cpt(pos);
            let f = ch.flags(pos);
            let n = ch.contraction(pos, true);
            if n > 0 {
                pos += n;
                emit(pos, &mut prev, &mut out);
                continue;
            }
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(c == Some('\r') || c == Some('\n') || f.is_number())
                && (is_word(f) || is_word(ch.flags(pos + 1)))
            {
                pos += 1;
                while is_word(ch.flags(pos)) {
                    pos += 1;
                }
                emit(pos, &mut prev, &mut out);
                continue;
            }
            // \p{N}{1,digits}
            if f.is_number() {
                let mut start = pos;
                while ch.flags(pos).is_number() {
                    pos += 1;
                    if pos - start >= digits {
                        emit(pos, &mut prev, &mut out);
                        start = pos;
                    }
                }
                emit(pos, &mut prev, &mut out);
                continue;
            }
            // <space>?[^\s\p{L}\p{N}]+[\r\n]*
            let space = c == Some(' ');
            let other = |f: CpFlags| !(f.is_whitespace() || is_word(f) || f.is_number());
            let f2 = if space { ch.flags(pos + 1) } else { f };
            if other(f2) && f.any() {
                pos += space as usize;
                while other(ch.flags(pos)) && ch.flags(pos).any() {
                    pos += 1;
                }
                while matches!(ch.cpt(pos), Some('\r' | '\n')) {
                    pos += 1;
                }
                emit(pos, &mut prev, &mut out);
                continue;
            }
            let mut nws = 0;
            let mut last_nl = None;
            while ch.flags(pos + nws).is_whitespace() {
                if matches!(ch.cpt(pos + nws), Some('\r' | '\n')) {
                    last_nl = Some(pos + nws + 1);
                }
                nws += 1;
            }
            if let Some(end) = last_nl {
                // \s*[\r\n]+
                pos = end;
            } else if nws > 1 && ch.cpt(pos + nws).is_some() {
                // \s+(?!\S)
                pos += nws - 1;
            } else if nws > 0 {
                pos += nws;
            } else {
                pos += 1;
            }
            emit(pos, &mut prev, &mut out);
        }
        ini += len;
    }
    out
}

/// CJK ideographs, U+0800.. and Hangul runs (deepseek pre-tokenizers).
const CJK_RUN: &str = r"[\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+";

/// deepseek-llm's letter pattern, from its tokenizer.json.
const DEEPSEEK_LLM_LETTERS: &str = r"\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+";

#[cfg(test)]
mod tests {
    use super::*;

    fn words<'a>(pre: &str, text: &'a str) -> Vec<&'a str> {
        let (p, _) = PreTokenizer::new(Some(pre)).unwrap();
        p.split(text)
            .into_iter()
            .map(|(a, b)| &text[a..b])
            .collect()
    }

    #[test]
    fn gpt2_words() {
        assert_eq!(
            words("gpt-2", "Hello world's  x 123"),
            ["Hello", " world", "'s", " ", " x", " 123"]
        );
        assert_eq!(words("gpt-2", "a  \n"), ["a", "  \n"]);
    }

    #[test]
    fn digit_rules_differ() {
        assert_eq!(words("llama-bpe", "12345"), ["123", "45"]);
        assert_eq!(words("qwen2", "123"), ["1", "2", "3"]);
        assert_eq!(words("smollm", " 123"), [" ", "1", "2", "3"]);
        assert_eq!(words("gpt-2", " 123"), [" 123"]);
    }

    #[test]
    fn llama3_newlines() {
        assert_eq!(words("llama-bpe", "a\n\n b"), ["a", "\n\n", " b"]);
        assert_eq!(words("llama-bpe", "x!?\n"), ["x", "!?\n"]);
        assert_eq!(words("llama-bpe", "I'LL"), ["I", "'LL"]);
    }

    #[test]
    fn unknown_pre_is_an_error() {
        assert!(matches!(
            PreTokenizer::new(Some("nope")),
            Err(TokenizerError::UnsupportedPreTokenizer(s)) if s == "nope"
        ));
    }
}
