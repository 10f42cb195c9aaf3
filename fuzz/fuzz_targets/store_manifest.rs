//! An expert store's manifest on any bytes: parsed and checked against itself, or an
//! error; never a panic (overflowing sizes, paths out of the store, short checksum lists).
#![no_main]

use libfuzzer_sys::fuzz_target;
use odmoe::experts::store::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok((m, _)) = Manifest::parse(data) {
        for l in &m.layers {
            let need = l.check().expect("parse checked every layer");
            assert_eq!(Some(need), l.record_bytes.checked_mul(l.n_expert as u64));
            assert!(!l.file.contains('/') && l.file != ".." && l.crc32.len() == l.n_expert);
        }
    }
});
