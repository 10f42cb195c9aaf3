//! The GGUF header parser on any bytes: an error or a header, never a panic, a hang or
//! an allocation the bytes do not pay for.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = odmoe::gguf::parse_header(data) {
        // every tensor the header describes lies within the bytes
        for t in &h.tensors {
            assert!(t.offset + t.size <= data.len() as u64);
        }
    }
});
