//! Text -> token ids: special-token splitting, then the vocabulary's encoder per text fragment.

use super::bpe::BpeScratch;
use super::{attr, spm, Model, Tokenizer};

/// A piece of the input after special-token splitting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frag {
    /// Byte range of ordinary text.
    Text(usize, usize),
    /// A special token found in the text.
    Token(u32),
}

/// C `isspace` on one byte.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

impl Tokenizer {
    /// Encode `text` to token ids, with llama.cpp's semantics.
    ///
    /// `add_special` prepends BOS when the model's `add_bos` flag is set (and appends EOS when
    /// `add_eos` is). `parse_special` turns control tokens written in the text (e.g.
    /// `<|im_start|>`) into their ids; without it they are tokenized as plain text.
    /// User-defined tokens are always matched.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let frags = self.split_special(text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            if let Some(bos) = self.bos {
                out.push(bos);
            }
        }
        match &self.model {
            Model::Spm => {
                let mut prev_special = true; // prefix a space to the first text fragment
                let mut buf = String::new();
                for f in frags {
                    match f {
                        Frag::Text(a, b) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push('▁');
                            }
                            for c in text[a..b].chars() {
                                buf.push(if c == ' ' { '▁' } else { c });
                            }
                            spm::encode(&self.vocab, &buf, &mut out);
                            prev_special = false;
                        }
                        Frag::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Model::Bpe {
                merges,
                pre,
                ignore_merges,
            } => {
                let mut sc = BpeScratch::default();
                for f in frags {
                    match f {
                        Frag::Text(a, b) => {
                            let part = &text[a..b];
                            for (wa, wb) in pre.split(part) {
                                merges.encode_word(
                                    &self.vocab,
                                    &part[wa..wb],
                                    *ignore_merges,
                                    &mut sc,
                                    &mut out,
                                );
                            }
                        }
                        Frag::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_special && self.add_eos {
            if let Some(eos) = self.eos {
                out.push(eos);
            }
        }
        out
    }

    /// Split `text` at occurrences of special tokens, longest token first.
    fn split_special(&self, text: &str, parse_special: bool) -> Vec<Frag> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Frag::Text(0, text.len()));
        let bytes = text.as_bytes();
        let mut next = Vec::new();
        for &id in &self.special {
            let a = self.attr(id);
            if !parse_special && a & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let tok = self.vocab.tokens[id as usize].as_str();
            if !frags
                .iter()
                .any(|f| matches!(*f, Frag::Text(s, e) if text[s..e].contains(tok)))
            {
                continue;
            }
            next.clear();
            for &f in &frags {
                let Frag::Text(mut start, end) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(m) = text[start..end].find(tok).map(|p| p + start) {
                    let mut left_end = m;
                    if a & LSTRIP != 0 {
                        while left_end > start && is_c_space(bytes[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > start {
                        next.push(Frag::Text(start, left_end));
                    }
                    next.push(Frag::Token(id));
                    start = m + tok.len();
                    if a & attr::RSTRIP != 0 {
                        while start < end && is_c_space(bytes[start]) {
                            start += 1;
                        }
                    }
                }
                if start < end {
                    next.push(Frag::Text(start, end));
                }
            }
            std::mem::swap(&mut frags, &mut next);
        }
        frags
    }
}

/// Strip whitespace before the token (llama.cpp `LLAMA_TOKEN_ATTR_LSTRIP`; only set by a few
/// embedding models, kept for completeness).
const LSTRIP: u16 = 1 << 7;
