//! Byte-level BPE (GPT-2 style, `tokenizer.ggml.model = "gpt2"`).
//!
//! Merges are interned at load time: every merge side and result gets an id (its token id when
//! the string is a token, an id past the vocabulary otherwise), so merging a word needs only a
//! `(left, right) -> (rank, merged)` hash lookup per adjacent pair and a binary heap ordered by
//! (rank, position), without building strings.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::unicode::byte_char_table;
use super::{FastMap, Result, TokenizerError, Vocab};

const NONE: u32 = u32::MAX;
/// Code points below this get their piece id from a table instead of a hash lookup.
const CHAR_TABLE: usize = 0x800;

/// Merge table of a byte-level BPE vocabulary.
pub(crate) struct BpeModel {
    /// (left id, right id) -> (rank, merged id)
    merges: FastMap<(u32, u32), (u32, u32)>,
    /// Interned strings that are not tokens (ids from `n_vocab` on).
    extra: FastMap<String, u32>,
    /// Piece id of each single code point below `CHAR_TABLE` (`NONE` if it has none).
    char_ids: Vec<u32>,
    /// Byte-level character of each byte.
    byte_chars: [char; 256],
}

/// Reusable buffers for encoding many words.
#[derive(Default)]
pub(crate) struct BpeScratch {
    word: String,
    syms: Vec<Sym>,
    heap: BinaryHeap<Reverse<Candidate>>,
}

/// A possible merge: (rank, left index, right index, left id, right id); lowest rank, then
/// leftmost, is applied first.
type Candidate = (u32, u32, u32, u32, u32);

#[derive(Clone, Copy)]
struct Sym {
    start: u32,
    len: u32,
    prev: u32,
    next: u32,
    id: u32,
}

impl BpeModel {
    /// Build the merge table from `tokenizer.ggml.merges` ("left right" per entry, rank = index).
    pub fn new(
        n_vocab: usize,
        token_to_id: &FastMap<String, u32>,
        merges: &[String],
    ) -> Result<BpeModel> {
        let n_vocab = n_vocab as u32;
        let mut extra: FastMap<String, u32> = FastMap::default();
        let intern = |s: &str, extra: &mut FastMap<String, u32>| -> u32 {
            if let Some(&id) = token_to_id.get(s) {
                return id;
            }
            if let Some(&id) = extra.get(s) {
                return id;
            }
            let id = n_vocab + extra.len() as u32;
            extra.insert(s.to_string(), id);
            id
        };
        let mut table = FastMap::with_capacity_and_hasher(merges.len(), Default::default());
        let mut joined = String::new();
        for (rank, m) in merges.iter().enumerate() {
            // split at the first space after the first byte (a merge side may start with ' ')
            let Some(pos) = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
                continue;
            };
            let (a, b) = (&m[..pos], &m[pos + 1..]);
            if a.is_empty() || b.is_empty() {
                continue;
            }
            let rank = u32::try_from(rank).map_err(|_| TokenizerError::TooLarge {
                what: "tokenizer.ggml.merges",
                len: merges.len(),
            })?;
            let (ia, ib) = (intern(a, &mut extra), intern(b, &mut extra));
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            let ij = intern(&joined, &mut extra);
            // first occurrence wins, like llama.cpp's emplace
            table.entry((ia, ib)).or_insert((rank, ij));
        }
        let char_ids = (0..CHAR_TABLE as u32)
            .map(|cp| {
                let Some(c) = char::from_u32(cp) else {
                    return NONE;
                };
                let mut buf = [0u8; 4];
                let s: &str = c.encode_utf8(&mut buf);
                token_to_id
                    .get(s)
                    .or_else(|| extra.get(s))
                    .copied()
                    .unwrap_or(NONE)
            })
            .collect();
        Ok(BpeModel {
            merges: table,
            extra,
            char_ids,
            byte_chars: byte_char_table(),
        })
    }

    fn char_id(&self, vocab: &Vocab, c: char) -> u32 {
        if (c as usize) < CHAR_TABLE {
            return self.char_ids[c as usize];
        }
        let mut buf = [0u8; 4];
        let s: &str = c.encode_utf8(&mut buf);
        vocab
            .token_to_id
            .get(s)
            .or_else(|| self.extra.get(s))
            .copied()
            .unwrap_or(NONE)
    }

    /// Encode one pre-tokenized word (raw UTF-8) and append its token ids to `out`.
    pub fn encode_word(
        &self,
        vocab: &Vocab,
        raw: &str,
        ignore_merges: bool,
        sc: &mut BpeScratch,
        out: &mut Vec<u32>,
    ) {
        sc.word.clear();
        for &b in raw.as_bytes() {
            sc.word.push(self.byte_chars[b as usize]);
        }
        let word = sc.word.as_str();
        if ignore_merges {
            if let Some(&id) = vocab.token_to_id.get(word) {
                out.push(id);
                return;
            }
        }
        let syms = &mut sc.syms;
        syms.clear();
        for (i, (start, c)) in word.char_indices().enumerate() {
            syms.push(Sym {
                start: start as u32,
                len: c.len_utf8() as u32,
                prev: if i == 0 { NONE } else { i as u32 - 1 },
                next: i as u32 + 1,
                id: self.char_id(vocab, c),
            });
        }
        if let Some(last) = syms.last_mut() {
            last.next = NONE;
        }
        let heap = &mut sc.heap;
        heap.clear();
        let push = |heap: &mut BinaryHeap<_>, syms: &[Sym], l: u32, r: u32| {
            if l == NONE || r == NONE {
                return;
            }
            let (a, b) = (syms[l as usize].id, syms[r as usize].id);
            if a == NONE || b == NONE {
                return;
            }
            if let Some(&(rank, _)) = self.merges.get(&(a, b)) {
                heap.push(Reverse((rank, l, r, a, b)));
            }
        };
        for i in 1..syms.len() as u32 {
            push(heap, syms, i - 1, i);
        }
        while let Some(Reverse((_, l, r, a, b))) = heap.pop() {
            let (ls, rs) = (syms[l as usize], syms[r as usize]);
            if ls.len == 0 || rs.len == 0 || ls.id != a || rs.id != b {
                continue; // stale
            }
            let merged = self.merges[&(a, b)].1;
            let left = &mut syms[l as usize];
            left.len += rs.len;
            left.id = merged;
            left.next = rs.next;
            syms[r as usize].len = 0;
            if rs.next != NONE {
                syms[rs.next as usize].prev = l;
            }
            push(heap, syms, ls.prev, l);
            push(heap, syms, l, rs.next);
        }
        let n_vocab = vocab.tokens.len() as u32;
        for s in syms.iter().filter(|s| s.len > 0) {
            if s.id < n_vocab {
                out.push(s.id);
                continue;
            }
            // not a token: fall back to single-byte tokens (only ASCII can be one)
            let text = &word[s.start as usize..(s.start + s.len) as usize];
            for &byte in text.as_bytes() {
                if byte < 0x80 {
                    if let Some(id) = vocab.ascii_ids[byte as usize] {
                        out.push(id);
                    }
                }
            }
        }
    }
}
