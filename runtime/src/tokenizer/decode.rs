//! Token ids -> text: per-token pieces, whole-sequence decoding and a streaming [`Decoder`].

use super::unicode::char_to_byte;
use super::{attr, Model, Tokenizer};

impl Tokenizer {
    /// The bytes a token stands for.
    ///
    /// Byte-level BPE tokens are mapped back through the GPT-2 byte table; SentencePiece tokens
    /// have `▁` turned into spaces and `<0xXX>` tokens become the byte. Control, unknown and
    /// user-defined tokens yield their text (e.g. `<|im_end|>`), as llama.cpp's
    /// `token_to_piece(.., special = true)` does. Unknown ids and unused tokens yield nothing.
    /// A piece may be an incomplete UTF-8 sequence; use [`Decoder`] when streaming.
    pub fn token_to_piece(&self, id: u32) -> Vec<u8> {
        let mut out = Vec::new();
        self.append_piece(id, &mut out);
        out
    }

    fn append_piece(&self, id: u32, out: &mut Vec<u8>) {
        let Some(text) = self.vocab.tokens.get(id as usize) else {
            return;
        };
        let a = self.attr(id);
        if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
            out.extend_from_slice(text.as_bytes());
        } else if a & attr::NORMAL != 0 {
            match self.model {
                Model::Spm => {
                    let mut rest = text.as_str();
                    while let Some(p) = rest.find('▁') {
                        out.extend_from_slice(&rest.as_bytes()[..p]);
                        out.push(b' ');
                        rest = &rest[p + '▁'.len_utf8()..];
                    }
                    out.extend_from_slice(rest.as_bytes());
                }
                Model::Bpe { .. } => {
                    for c in text.chars() {
                        match char_to_byte(c) {
                            Some(b) => out.push(b),
                            None => out.extend_from_slice(c.encode_utf8(&mut [0u8; 4]).as_bytes()),
                        }
                    }
                }
            }
        } else if a & attr::BYTE != 0 {
            // "<0xXX>"
            if let Some(b) = text.get(3..5).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
            }
        }
    }

    /// Decode a whole sequence to text (invalid UTF-8 replaced by U+FFFD), like llama.cpp's
    /// `llama_detokenize(.., remove_special = false, unparse_special = true)`: special tokens are
    /// rendered, the SentencePiece prefix space of the first token is removed, and vocabularies
    /// that ask for it get `clean_up_tokenization_spaces` (" ." -> ".", " 's" -> "'s", ...).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for (i, &id) in ids.iter().enumerate() {
            let at = bytes.len();
            self.append_piece(id, &mut bytes);
            if i == 0 && self.add_space_prefix && bytes.get(at) == Some(&b' ') {
                bytes.remove(at);
            }
        }
        if self.clean_spaces {
            bytes = clean_spaces(&bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// llama.cpp's three clean-up passes over detokenized text.
fn clean_spaces(t: &[u8]) -> Vec<u8> {
    // " ?", " !", " .", " ,": drop the space
    let mut a: Vec<u8> = Vec::with_capacity(t.len());
    for (i, &x) in t.iter().enumerate() {
        if i > 0 && t[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            a.pop();
        }
        a.push(x);
    }
    // " ' ": drop both spaces around a lone apostrophe
    // (the skipped space reads as NUL afterwards, as in llama.cpp's in-place loop)
    let mut b: Vec<u8> = Vec::with_capacity(a.len());
    let mut i = 0;
    while i < a.len() {
        let x = a[i];
        if i > 0 && x == b'\'' && i + 1 < a.len() && a[i - 1] == b' ' && a[i + 1] == b' ' {
            b.pop();
            b.push(x);
            a[i + 1] = 0;
            i += 2;
            continue;
        }
        b.push(x);
        i += 1;
    }
    // " 's", " 'm", " 're", " 've": drop the space
    let mut c: Vec<u8> = Vec::with_capacity(b.len());
    for (i, &x) in b.iter().enumerate() {
        if i > 0 && b[i - 1] == b' ' && x == b'\'' && i + 1 < b.len() {
            let x1 = b[i + 1];
            let x2 = b.get(i + 2).copied();
            if matches!(x1, b's' | b'm')
                || matches!((x1, x2), (b'r', Some(b'e')) | (b'v', Some(b'e')))
            {
                c.pop();
            }
        }
        c.push(x);
    }
    c
}

/// Streaming detokenizer: turns tokens into text as they are generated, holding back bytes of
/// a UTF-8 sequence split across tokens until it is complete.
///
/// ```ignore
/// let mut d = Decoder::new(&tokenizer);
/// for id in generated { print!("{}", d.push(id)); }
/// print!("{}", d.finish());
/// ```
pub struct Decoder<'a> {
    tok: &'a Tokenizer,
    pending: Vec<u8>,
    first: bool,
}

impl<'a> Decoder<'a> {
    /// A decoder for a fresh sequence. For SentencePiece vocabularies the prefix space of the
    /// first token is removed, as in [`Tokenizer::decode`]; no other clean-up is applied.
    pub fn new(tok: &'a Tokenizer) -> Decoder<'a> {
        Decoder {
            tok,
            pending: Vec::new(),
            first: true,
        }
    }

    /// Add one token; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        let at = self.pending.len();
        self.tok.append_piece(id, &mut self.pending);
        if self.first {
            self.first = false;
            if self.tok.add_space_prefix && self.pending.get(at) == Some(&b' ') {
                self.pending.remove(at);
            }
        }
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: from_utf8 validated this prefix
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        None => {
                            // incomplete sequence at the end: keep it for the next token
                            self.pending.drain(..valid);
                            break;
                        }
                        Some(n) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + n);
                        }
                    }
                }
            }
        }
        out
    }

    /// Flush bytes still held back (an incomplete sequence becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}
