//! A model split into shards by llama.cpp's converter loads as one model from any shard
//! and computes exactly what the single-file model computes.

mod common;

use odmoe::model::{Logits, Model};

const TOKENS: [u32; 6] = [1, 17, 300, 42, 511, 7];

fn logits(path: &std::path::Path) -> Vec<f32> {
    let m = Model::open(path).expect("model loads");
    let mut c = m.new_cache(16);
    m.forward(&TOKENS, &mut c, Logits::All).unwrap()
}

#[test]
fn split_equals_single_file_from_any_shard() {
    let single = logits(&common::fixture("models/qwen3moe.f32.gguf"));
    for shard in 1..=3 {
        let p = common::fixture(&format!("models/split/qwen3moe.f32-0000{shard}-of-00003.gguf"));
        assert_eq!(logits(&p), single, "opened from shard {shard}");
    }
}

#[test]
fn missing_shard_is_named() {
    let dir = std::env::temp_dir().join(format!("odmoe-split-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for shard in [1, 3] {
        let name = format!("qwen3moe.f32-0000{shard}-of-00003.gguf");
        std::fs::copy(common::fixture(&format!("models/split/{name}")), dir.join(&name)).unwrap();
    }
    let e = Model::open(dir.join("qwen3moe.f32-00001-of-00003.gguf")).err().expect("must fail").to_string();
    assert!(e.contains("shard 2 of 3 is missing"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
