//! Tokenizer read from GGUF metadata, as llama.cpp reads it: byte-level BPE (`gpt2`,
//! with the pre-tokenizer named by `tokenizer.ggml.pre`) or SentencePiece BPE (`llama`),
//! special and control tokens, BOS/EOS/EOT, and decoding to bytes for streaming.

mod bpe;
mod chat;
mod spm;
mod stream;

use std::collections::{HashMap, HashSet};

pub use chat::{ChatMessage, ChatTemplate};
pub use stream::StreamDecoder;

use crate::gguf::Metadata;
use crate::{Error, Result};

/// Token types as GGUF stores them (`tokenizer.ggml.token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    /// Ordinary vocabulary entry.
    Normal,
    /// The unknown token.
    Unknown,
    /// Control token (`<s>`, `<|im_start|>`, ...): never produced from plain text.
    Control,
    /// User-defined token: always matched in text.
    UserDefined,
    /// Reserved, never produced.
    Unused,
    /// A `<0xXX>` byte token.
    Byte,
}

impl TokenType {
    fn from_id(v: i64) -> TokenType {
        match v {
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Normal,
        }
    }
}

enum Model {
    Bpe { tok: Box<tokenizers::Tokenizer>, byte_of: HashMap<char, u8> },
    Spm(Box<spm::Spm>),
}

/// A model's tokenizer.
pub struct Tokenizer {
    model: Model,
    tokens: Vec<String>,
    types: Vec<TokenType>,
    /// Special texts matched before the model sees the text, longest first.
    specials: Vec<(String, u32)>,
    bos: Option<u32>,
    eos: Option<u32>,
    eog: HashSet<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
}

fn strings(md: &Metadata, key: &str) -> Result<Vec<String>> {
    let arr = md.get(key).and_then(|v| v.as_array()).ok_or_else(|| Error::model(format!("metadata {key} is missing or not an array")))?;
    arr.iter()
        .map(|v| v.as_str().map(str::to_string).ok_or_else(|| Error::model(format!("metadata {key}: expected strings"))))
        .collect()
}

impl Tokenizer {
    /// Builds the tokenizer from a model's metadata.
    pub fn from_gguf(md: &Metadata) -> Result<Tokenizer> {
        let model_name = md.get_str("tokenizer.ggml.model").ok_or_else(|| Error::model("metadata tokenizer.ggml.model is missing: this file has no tokenizer"))?;
        let tokens = strings(md, "tokenizer.ggml.tokens")?;
        let n = tokens.len();
        let types: Vec<TokenType> = match md.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
            Some(a) if a.len() == n => a.iter().map(|v| TokenType::from_id(v.as_f64().unwrap_or(1.0) as i64)).collect(),
            Some(a) => return Err(Error::model(format!("tokenizer.ggml.token_type has {} entries for {n} tokens", a.len()))),
            None => vec![TokenType::Normal; n],
        };
        let id = |key: &str| -> Option<u32> { md.get_u64(key).filter(|&v| (v as usize) < n).map(|v| v as u32) };
        let (mut add_bos, mut add_space_prefix) = (false, false);
        let model = match model_name {
            "gpt2" => {
                let pre = md.get_str("tokenizer.ggml.pre").unwrap_or("default");
                let merges = strings(md, "tokenizer.ggml.merges")?;
                if matches!(pre, "llama3" | "llama-bpe" | "llama-v3") {
                    add_bos = true;
                }
                let ignore_merges = matches!(pre, "llama3" | "llama-bpe" | "llama-v3");
                Model::Bpe { tok: Box::new(bpe::build(&tokens, &merges, pre, ignore_merges)?), byte_of: bpe::byte_decoder() }
            }
            "llama" => {
                add_bos = true;
                add_space_prefix = true;
                let scores: Vec<f32> = match md.get("tokenizer.ggml.scores").and_then(|v| v.as_array()) {
                    Some(a) if a.len() == n => a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
                    _ => return Err(Error::model("tokenizer.ggml.scores is missing or has the wrong length")),
                };
                let mut byte_tokens = [None; 256];
                for (i, t) in tokens.iter().enumerate() {
                    if types[i] == TokenType::Byte {
                        if let Some(b) = t.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                            byte_tokens[b as usize] = Some(i as u32);
                        }
                    }
                }
                Model::Spm(Box::new(spm::Spm::new(&tokens, scores, byte_tokens, id("tokenizer.ggml.unknown_token_id"))))
            }
            other => return Err(Error::model(format!("tokenizer model {other:?} is not supported (supported: gpt2, llama)"))),
        };
        if let Some(v) = md.get_bool("tokenizer.ggml.add_bos_token") {
            add_bos = v;
        }
        let add_eos = md.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false);
        if let Some(v) = md.get_bool("tokenizer.ggml.add_space_prefix") {
            add_space_prefix = v;
        }
        let bos = id("tokenizer.ggml.bos_token_id");
        let eos = id("tokenizer.ggml.eos_token_id");
        let mut eog: HashSet<u32> = [eos, id("tokenizer.ggml.eot_token_id"), id("tokenizer.ggml.eom_token_id")].into_iter().flatten().collect();
        // Like llama.cpp, also end generation on well-known end-of-turn control tokens.
        for (i, t) in tokens.iter().enumerate() {
            if types[i] == TokenType::Control
                && matches!(t.as_str(), "<|eot_id|>" | "<|im_end|>" | "<|end|>" | "<end_of_turn>" | "<|endoftext|>" | "<|end▁of▁sentence|>" | "<|eom_id|>")
            {
                eog.insert(i as u32);
            }
        }
        let mut specials: Vec<(String, u32)> = tokens
            .iter()
            .enumerate()
            .filter(|(i, t)| matches!(types[*i], TokenType::Control | TokenType::UserDefined | TokenType::Unknown) && !t.is_empty())
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Ok(Tokenizer { model, tokens, types, specials, bos, eos, eog, add_bos, add_eos, add_space_prefix })
    }

    /// Vocabulary size.
    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether the metadata asks for BOS before every sequence.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `id` ends generation (EOS, EOT, EOM and end-of-turn control tokens).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// A token's text as stored in the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Tokenizes `text`. `add_special` adds BOS/EOS as the metadata says; with
    /// `parse_special`, control-token text (`<|im_start|>`) becomes that token, otherwise
    /// it is tokenized as plain text (user-defined tokens always match, as in llama.cpp).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        self.encode_spans(text, add_special, parse_special, &[])
    }

    /// [`Tokenizer::encode`] with special-token text parsed (when `parse_special`) except
    /// inside the byte ranges `plain`, which are tokenized as the text they are: a chat
    /// template's markup becomes control tokens, what a user wrote never does
    /// ([`crate::tokenizer::ChatTemplate::render_json_spans`]).
    pub fn encode_spans(&self, text: &str, add_special: bool, parse_special: bool, plain: &[std::ops::Range<usize>]) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            if let Some(b) = self.bos {
                out.push(b);
            }
        }
        // SentencePiece's space prefix goes before the text and after each special token.
        let mut after_special = true;
        if !text.is_empty() {
            for seg in self.partition(text, parse_special, plain) {
                match seg {
                    Segment::Token(id) => {
                        out.push(id);
                        after_special = true;
                    }
                    Segment::Text(s) => {
                        self.encode_plain(s, after_special, &mut out)?;
                        after_special = false;
                    }
                }
            }
        }
        if add_special && self.add_eos {
            if let Some(e) = self.eos {
                out.push(e);
            }
        }
        Ok(out)
    }

    fn encode_plain(&self, text: &str, after_special: bool, out: &mut Vec<u32>) -> Result<()> {
        match &self.model {
            Model::Bpe { tok, .. } => {
                let enc = tok.encode_fast(text, false).map_err(|e| Error::Invalid(format!("tokenizer: {e}")))?;
                out.extend_from_slice(enc.get_ids());
            }
            Model::Spm(s) => {
                let mut esc = String::with_capacity(text.len() + 3);
                if self.add_space_prefix && after_special {
                    esc.push('▁');
                }
                esc.push_str(&text.replace(' ', "▁"));
                s.encode(&esc, out);
            }
        }
        Ok(())
    }

    /// `text` cut at the special tokens it holds (those of user-defined type always, the
    /// others when `parse_special`), except where an occurrence overlaps a range of
    /// `plain`.
    fn partition<'a>(&self, text: &'a str, parse_special: bool, plain: &[std::ops::Range<usize>]) -> Vec<Segment<'a>> {
        let mut segs = vec![Segment::Text(text)];
        let in_plain = |at: usize, len: usize| plain.iter().any(|r| at < r.end && r.start < at + len);
        for (s, id) in &self.specials {
            if !parse_special && self.types[*id as usize] != TokenType::UserDefined {
                continue;
            }
            let mut next = Vec::with_capacity(segs.len());
            for seg in segs {
                match seg {
                    Segment::Text(t) if t.contains(s.as_str()) => {
                        // where `t` starts in `text` (segments are slices of it)
                        let base = t.as_ptr() as usize - text.as_ptr() as usize;
                        let mut from = 0;
                        for (p, _) in t.match_indices(s.as_str()) {
                            if in_plain(base + p, s.len()) {
                                continue;
                            }
                            if p > from {
                                next.push(Segment::Text(&t[from..p]));
                            }
                            next.push(Segment::Token(*id));
                            from = p + s.len();
                        }
                        if from < t.len() {
                            next.push(Segment::Text(&t[from..]));
                        }
                    }
                    other => next.push(other),
                }
            }
            segs = next;
        }
        segs
    }

    /// The bytes a token stands for. Control tokens give their text only when
    /// `render_special` is set (llama.cpp's `special` flag); unused tokens give nothing.
    pub fn token_bytes(&self, id: u32, render_special: bool) -> Vec<u8> {
        let Some(t) = self.tokens.get(id as usize) else { return Vec::new() };
        match self.types[id as usize] {
            TokenType::Control | TokenType::Unknown => {
                if render_special { t.as_bytes().to_vec() } else { Vec::new() }
            }
            TokenType::Unused => Vec::new(),
            TokenType::UserDefined => t.as_bytes().to_vec(),
            TokenType::Byte => t
                .strip_prefix("<0x")
                .and_then(|h| h.strip_suffix('>'))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .map_or_else(Vec::new, |b| vec![b]),
            TokenType::Normal => match &self.model {
                Model::Bpe { byte_of, .. } => t.chars().map(|c| byte_of.get(&c).copied().unwrap_or(b'?')).collect(),
                Model::Spm(_) => t.replace('▁', " ").into_bytes(),
            },
        }
    }

    /// Decodes a whole sequence (llama.cpp's `detokenize`: the leading space that
    /// SentencePiece adds is removed from the first token). Invalid UTF-8 is replaced.
    pub fn decode(&self, ids: &[u32], render_special: bool) -> String {
        let mut bytes = Vec::new();
        let mut remove_space = self.add_space_prefix;
        for &id in ids {
            let mut b = self.token_bytes(id, render_special);
            if remove_space && b.first() == Some(&b' ') {
                b.remove(0);
            }
            remove_space = false;
            bytes.extend(b);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

enum Segment<'a> {
    Text(&'a str),
    Token(u32),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Value;

    fn byte_level_vocab(pre: &str) -> Metadata {
        // every single byte as a token, plus one merge, in byte-level form
        let dec = bpe::byte_decoder();
        let mut by_byte: Vec<(u8, char)> = dec.iter().map(|(&c, &b)| (b, c)).collect();
        by_byte.sort();
        let mut tokens: Vec<Value> = by_byte.iter().map(|&(_, c)| Value::String(c.to_string())).collect();
        tokens.push(Value::String("th".into()));
        let mut md = Metadata::default();
        md.push("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
        md.push("tokenizer.ggml.pre".into(), Value::String(pre.into()));
        md.push("tokenizer.ggml.tokens".into(), Value::Array(tokens));
        md.push("tokenizer.ggml.merges".into(), Value::Array(vec![Value::String("t h".into())]));
        md
    }

    #[test]
    fn every_named_pre_tokenizer_builds_and_round_trips() {
        for pre in ["gpt-2", "llama-bpe", "qwen2", "deepseek-llm", "deepseek-coder", "deepseek-v3", "joyai-llm", "kimi-k2"] {
            let t = Tokenizer::from_gguf(&byte_level_vocab(pre)).unwrap();
            let text = "the 12345 Hello, 世界! 'll\\n\\n  x";
            let ids = t.encode(text, false, false).unwrap();
            assert_eq!(t.decode(&ids, false), text, "{pre}");
            assert!(ids.contains(&256), "{pre}: merge applied");
        }
    }

    #[test]
    fn unknown_pre_tokenizer_and_model_are_named() {
        let e = Tokenizer::from_gguf(&byte_level_vocab("mystery")).err().unwrap().to_string();
        assert!(e.contains("\"mystery\""), "{e}");
        let mut md = byte_level_vocab("gpt-2");
        md.push("tokenizer.ggml.model".into(), Value::String("t5".into()));
        // the first entry wins in look-ups, so build a fresh one
        let mut md2 = Metadata::default();
        for (k, v) in md.iter() {
            if k != "tokenizer.ggml.model" {
                md2.push(k.to_string(), v.clone());
            }
        }
        md2.push("tokenizer.ggml.model".into(), Value::String("t5".into()));
        let e = Tokenizer::from_gguf(&md2).err().unwrap().to_string();
        assert!(e.contains("\"t5\""), "{e}");
    }
}
