//! SentencePiece BPE (`tokenizer.ggml.model = llama`, as Mixtral uses), following
//! llama.cpp: spaces become `▁`, symbols are merged greedily by the score of the merged
//! piece, and characters outside the vocabulary fall back to `<0xXX>` byte tokens.

use std::collections::{BinaryHeap, HashMap};


/// The vocabulary view the SPM tokenizer needs.
pub struct Spm {
    index: HashMap<String, u32>,
    scores: Vec<f32>,
    byte_tokens: [Option<u32>; 256],
    unk: Option<u32>,
}

#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // highest score first, then leftmost
        self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

#[derive(Clone, Copy)]
struct Symbol {
    prev: Option<usize>,
    next: Option<usize>,
    start: usize,
    len: usize,
}

impl Spm {
    /// Indexes the vocabulary; `byte_ids[b]` is the `<0xXX>` token of byte `b`, if any.
    pub fn new(tokens: &[String], scores: Vec<f32>, byte_tokens: [Option<u32>; 256], unk: Option<u32>) -> Spm {
        let index = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        Spm { index, scores, byte_tokens, unk }
    }

    /// Encodes text that has already been escaped (spaces as `▁`, prefix added).
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut syms: Vec<Symbol> = Vec::new();
        for (i, (start, ch)) in text.char_indices().enumerate() {
            syms.push(Symbol { prev: i.checked_sub(1), next: Some(i + 1), start, len: ch.len_utf8() });
        }
        let n = syms.len();
        syms[n - 1].next = None;

        let mut heap = BinaryHeap::new();
        let try_add = |heap: &mut BinaryHeap<Bigram>, syms: &[Symbol], l: usize, r: usize| {
            let s = &text[syms[l].start..syms[r].start + syms[r].len];
            if let Some(&id) = self.index.get(s) {
                heap.push(Bigram { score: self.scores[id as usize], left: l, right: r, size: s.len() });
            }
        };
        for i in 1..n {
            try_add(&mut heap, &syms, i - 1, i);
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (b.left, b.right);
            // skip stale entries: one side was merged since this bigram was queued
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != b.size {
                continue;
            }
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if let Some(nn) = syms[r].next {
                syms[nn].prev = Some(l);
            }
            if let Some(p) = syms[l].prev {
                try_add(&mut heap, &syms, p, l);
            }
            if let Some(nn) = syms[l].next {
                try_add(&mut heap, &syms, l, nn);
            }
        }
        let mut i = Some(0);
        while let Some(k) = i {
            let s = &text[syms[k].start..syms[k].start + syms[k].len];
            self.resegment(s, out);
            i = syms[k].next;
        }
    }

    /// A final symbol is a token, or a single character that never merged: then its
    /// bytes become byte tokens (or the unknown token).
    fn resegment(&self, s: &str, out: &mut Vec<u32>) {
        if let Some(&id) = self.index.get(s) {
            out.push(id);
            return;
        }
        for &b in s.as_bytes() {
            if let Some(id) = self.byte_tokens[b as usize].or(self.unk) {
                out.push(id);
            }
        }
    }
}
