//! Byte-level BPE (`tokenizer.ggml.model = gpt2`), built on the Hugging Face `tokenizers`
//! crate: the model's merges, and the pre-tokenizer llama.cpp names in `tokenizer.ggml.pre`.

use std::collections::HashMap;

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{SplitDelimiterBehavior, Tokenizer as HfTokenizer};

use crate::{Error, Result};

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DEEPSEEK_LLM: [&str; 6] = [
    "[\r\n]",
    "\\s?[A-Za-z\u{b5}\u{c0}-\u{d6}\u{d8}-\u{f6}\u{f8}-\u{1ba}\u{1bc}-\u{1bf}\u{1c4}-\u{293}\u{295}-\u{2af}\u{370}-\u{373}\u{376}\u{377}\u{37b}-\u{37d}\u{37f}\u{386}\u{388}-\u{38a}\u{38c}\u{38e}-\u{3a1}\u{3a3}-\u{3f5}\u{3f7}-\u{481}\u{48a}-\u{52f}\u{531}-\u{556}\u{10a0}-\u{10c5}\u{13a0}-\u{13f5}\u{13f8}-\u{13fd}\u{1c90}-\u{1cba}\u{1cbd}-\u{1cbf}\u{1d00}-\u{1d2b}\u{1d6b}-\u{1d77}\u{1d79}-\u{1d9a}\u{1e00}-\u{1f15}\u{1f18}-\u{1f1d}\u{1f20}-\u{1f45}\u{1f48}-\u{1f4d}\u{1f50}-\u{1f57}\u{1f59}\u{1f5b}\u{1f5d}\u{1f5f}-\u{1f7d}\u{1f80}-\u{1fb4}\u{1fb6}-\u{1fbc}\u{1fbe}\u{1fc2}-\u{1fc4}\u{1fc6}-\u{1fcc}\u{1fd0}-\u{1fd3}\u{1fd6}-\u{1fdb}\u{1fe0}-\u{1fec}\u{1ff2}-\u{1ff4}\u{1ff6}-\u{1ffc}\u{2102}\u{2107}\u{210a}-\u{2113}\u{2115}\u{2119}-\u{211d}\u{2124}\u{2126}\u{2128}\u{212a}-\u{212d}\u{212f}-\u{2134}\u{2139}\u{213c}-\u{213f}\u{2145}-\u{2149}\u{214e}\u{2183}\u{2184}\u{2c00}-\u{2c7b}\u{2c7e}-\u{2ce4}\u{2ceb}-\u{2cee}\u{2cf2}\u{2cf3}\u{a640}-\u{a66d}\u{a680}-\u{a69b}\u{a722}-\u{a76f}\u{a771}-\u{a787}\u{a78b}-\u{a78e}\u{ab70}-\u{abbf}\u{fb00}-\u{fb06}\u{fb13}-\u{fb17}\u{ff21}-\u{ff3a}\u{ff41}-\u{ff5a}\u{10400}-\u{1044f}\u{104b0}-\u{104d3}\u{104d8}-\u{104fb}\u{10c80}-\u{10cb2}\u{10cc0}-\u{10cf2}\u{118a0}-\u{118df}\u{1e900}-\u{1e943}]+",
    "\\s?[!-/:-~\u{ff01}-\u{ff0f}\u{ff1a}-\u{ff5e}\u{2018}-\u{201f}\u{3000}-\u{3002}]+",
    "\\s+$",
    "[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+",
    "\\p{N}+",
];
const DEEPSEEK_CODER: [&str; 5] = [
    "[\r\n]",
    "\\s?\\p{L}+",
    "\\s?\\p{P}+",
    "[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+",
    "\\p{N}",
];
const DEEPSEEK_V3: [&str; 3] = [
    "\\p{N}{1,3}",
    "[\u{4e00}-\u{9fa5}\u{3040}-\u{309f}\u{30a0}-\u{30ff}]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
];
// Kimi-K2's tiktoken pattern (one pass): Han runs, then cased words that exclude Han,
// numbers of up to three digits, punctuation runs, and whitespace.
const KIMI_K2: [&str; 1] = [concat!(
    r"[\p{Han}]+",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*",
    r"|\s*[\r\n]+",
    r"|\s+(?!\S)",
    r"|\s+",
)];

/// The regex splits applied, in order, before byte-level mapping, for a `tokenizer.ggml.pre`.
fn splits_for(pre: &str) -> Result<Vec<&'static str>> {
    Ok(match pre {
        "gpt-2" | "gpt2" | "default" | "olmo" | "mpt" => vec![GPT2],
        "llama3" | "llama-bpe" | "llama-v3" | "dbrx" | "smaug-bpe" => vec![LLAMA3],
        "qwen2" | "stablelm2" | "hunyuan" => vec![QWEN2],
        "deepseek-llm" => DEEPSEEK_LLM.to_vec(),
        "deepseek-coder" => DEEPSEEK_CODER.to_vec(),
        "deepseek-v3" | "joyai-llm" => DEEPSEEK_V3.to_vec(),
        "kimi-k2" => KIMI_K2.to_vec(),
        other => {
            return Err(Error::model(format!(
                "tokenizer.ggml.pre {other:?} is not supported (supported: gpt-2, llama-bpe, qwen2, deepseek-llm, deepseek-coder, deepseek-v3, joyai-llm, kimi-k2)"
            )))
        }
    })
}

/// Builds the byte-level BPE tokenizer from the vocabulary, merges and pre-tokenizer name.
pub fn build(tokens: &[String], merges: &[String], pre: &str, ignore_merges: bool) -> Result<HfTokenizer> {
    let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let mut pairs = Vec::with_capacity(merges.len());
    for m in merges {
        // the separating space is searched after the first character, as llama.cpp does
        let skip = m.chars().next().map_or(0, char::len_utf8);
        let pos = m[skip..].find(' ').map(|p| p + skip);
        match pos {
            Some(p) => pairs.push((m[..p].to_string(), m[p + 1..].to_string())),
            None => return Err(Error::model(format!("tokenizer.ggml.merges: entry {m:?} is not two tokens separated by a space"))),
        }
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| Error::model(format!("tokenizer: cannot build BPE: {e}")))?;
    let mut tok = HfTokenizer::new(bpe);
    let regexes = splits_for(pre)?;
    let mut seq: Vec<PreTokenizerWrapper> = Vec::with_capacity(regexes.len() + 1);
    for r in regexes {
        let split = Split::new(SplitPattern::Regex(r.to_string()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| Error::model(format!("tokenizer: bad pre-tokenizer regex for {pre}: {e}")))?;
        seq.push(split.into());
    }
    seq.push(ByteLevel::new(false, true, false).into());
    tok.with_pre_tokenizer(Some(Sequence::new(seq)));
    Ok(tok)
}

/// The byte that each of the 256 byte-level BPE code points stands for.
pub fn byte_decoder() -> HashMap<char, u8> {
    // GPT-2's table: printable bytes map to themselves, the rest to U+0100 upwards.
    let mut printable: Vec<u8> = (b'!'..=b'~').chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars: Vec<u32> = printable.iter().map(|&b| b as u32).collect();
    let mut n = 0;
    for b in 0..=255u8 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    printable.iter().zip(chars).map(|(&b, c)| (char::from_u32(c).unwrap(), b)).collect()
}
