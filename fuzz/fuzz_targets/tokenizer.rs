//! The demo model's tokenizer (byte-level BPE from GGUF metadata) on any text: encoding
//! with and without special tokens, with plain ranges anywhere, and decoding any ids,
//! whole and streamed; never a panic, and encoding then decoding gives the text back.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use odmoe::tokenizer::{StreamDecoder, Tokenizer};

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let g = odmoe::gguf::GgufModel::open(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/odmoe-demo-shakespeare-Q8_0.gguf")).unwrap();
        Tokenizer::from_gguf(g.metadata()).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let tok = tokenizer();
    // the first byte picks what is done with the rest (one thing per run keeps runs fast)
    let Some((&what, data)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(data);
    match what % 4 {
        0 => {
            // byte-level BPE loses nothing
            let ids = tok.encode(&text, false, false).unwrap();
            assert_eq!(tok.decode(&ids, false), text);
        }
        1 => drop(tok.encode(&text, true, true).unwrap()),
        2 => {
            // special tokens parsed outside an arbitrary range (on character boundaries)
            let cut: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
            let (a, b) = (cut[what as usize / 4 % cut.len()], cut[data.last().map_or(0, |&x| x as usize) % cut.len()]);
            drop(tok.encode_spans(&text, true, true, &[a.min(b)..a.max(b)]).unwrap());
        }
        _ => {
            // any ids, whole and one at a time
            let ids: Vec<u32> = data.chunks(2).map(|c| u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32 % (tok.n_vocab() as u32 + 8)).collect();
            let valid: Vec<u32> = ids.iter().copied().filter(|&i| (i as usize) < tok.n_vocab()).collect();
            let _ = tok.decode(&valid, true);
            let mut d = StreamDecoder::new();
            for &i in &ids {
                let _ = d.push(&tok.token_bytes(i, false));
            }
            let _ = d.finish();
        }
    }
});
