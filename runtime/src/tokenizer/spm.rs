//! SentencePiece BPE (`tokenizer.ggml.model = "llama"`): merge adjacent pieces by best score.
//!
//! Spaces are escaped as `▁` before merging; code points that never merge into a token are
//! emitted as `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::Vocab;

const NONE: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Sym {
    start: u32,
    len: u32,
    prev: u32,
    next: u32,
}

/// Candidate merge: highest score first, then leftmost.
struct Bigram {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

/// Encode already-escaped text (spaces replaced by `▁`) and append token ids to `out`.
pub(crate) fn encode(vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
    let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
    for (i, (start, c)) in text.char_indices().enumerate() {
        syms.push(Sym {
            start: start as u32,
            len: c.len_utf8() as u32,
            prev: if i == 0 { NONE } else { i as u32 - 1 },
            next: i as u32 + 1,
        });
    }
    if let Some(last) = syms.last_mut() {
        last.next = NONE;
    }
    let mut heap = BinaryHeap::new();
    let try_add = |heap: &mut BinaryHeap<Bigram>, syms: &[Sym], l: u32, r: u32| {
        if l == NONE || r == NONE {
            return;
        }
        let (ls, rs) = (syms[l as usize], syms[r as usize]);
        let piece = &text[ls.start as usize..(rs.start + rs.len) as usize];
        if let Some(&id) = vocab.token_to_id.get(piece) {
            heap.push(Bigram {
                score: vocab.scores[id as usize],
                left: l,
                right: r,
                size: ls.len + rs.len,
            });
        }
    };
    for i in 1..syms.len() as u32 {
        try_add(&mut heap, &syms, i - 1, i);
    }
    while let Some(bg) = heap.pop() {
        let (ls, rs) = (syms[bg.left as usize], syms[bg.right as usize]);
        if ls.len == 0 || rs.len == 0 || ls.len + rs.len != bg.size {
            continue; // stale
        }
        let left = &mut syms[bg.left as usize];
        left.len += rs.len;
        left.next = rs.next;
        syms[bg.right as usize].len = 0;
        if rs.next != NONE {
            syms[rs.next as usize].prev = bg.left;
        }
        try_add(&mut heap, &syms, ls.prev, bg.left);
        try_add(&mut heap, &syms, bg.left, rs.next);
    }
    let mut i = if syms.is_empty() { NONE } else { 0 };
    while i != NONE {
        let s = syms[i as usize];
        let piece = &text[s.start as usize..(s.start + s.len) as usize];
        match vocab.token_to_id.get(piece) {
            Some(&id) => out.push(id),
            None => {
                for &b in piece.as_bytes() {
                    if let Some(id) = vocab.byte_ids[b as usize].or(vocab.unk) {
                        out.push(id);
                    }
                }
            }
        }
        i = s.next;
    }
}
