//! Converting to the expert store and running from it gives the same logits as running
//! from the GGUF (its experts in the file's layout, as the store's), bit for bit, with any
//! budget; damaged stores are refused with errors that
//! name what is wrong.

mod common;

use std::path::{Path, PathBuf};

use odmoe::experts::store;
use odmoe::gguf::GgufModel;
use odmoe::experts::PagerOptions;
use odmoe::model::{ExpertMode, Logits, Model, PackExperts};

const TOKENS: [u32; 10] = [1, 17, 300, 42, 511, 7, 99, 256, 128, 3];

fn logits(path: &Path, mode: &ExpertMode) -> odmoe::Result<Vec<f32>> {
    let m = Model::open_with_packing(path, mode, PackExperts::Never)?;
    let mut c = m.new_cache(32);
    let mut out = m.forward(&TOKENS[..6], &mut c, Logits::All)?;
    for &t in &TOKENS[6..] {
        out.extend(m.forward(&[t], &mut c, Logits::Last)?);
    }
    Ok(out)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("odmoe-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn convert(name: &str) -> PathBuf {
    let out = tmp(name);
    let g = GgufModel::open(common::fixture(&format!("models/{name}.gguf"))).unwrap();
    let mut last = (0, 0);
    store::convert(&g, &out, &mut |d, t| last = (d, t)).unwrap();
    assert_eq!(last.0, last.1, "progress reaches the total");
    out
}

#[test]
fn store_runs_exactly_like_the_gguf() {
    for name in ["mixtral.f32", "qwen2moe.f32", "qwen3moe.f32", "olmoe.f32", "deepseek2.f32", "deepseek2lite.f32", "deepseek3.f32", "kimik2.f32", "mixtral_h256.Q4_K_M", "deepseek3_h256.Q4_K_M"] {
        let gguf = common::fixture(&format!("models/{name}.gguf"));
        let want = logits(&gguf, &ExpertMode::Mapped).unwrap();
        let dir = convert(name);
        let total: u64 = store::Store::open(&dir).unwrap().manifest().layers.iter().map(|l| (l.gate.bytes + l.up.bytes + l.down.bytes) * l.n_expert as u64).sum();
        for budget in [u64::MAX, total / 4, 1] {
            for threads in [1, 3] {
                let got = logits(&dir, &ExpertMode::Paged(PagerOptions { budget, read_threads: threads, ..Default::default() })).unwrap();
                assert!(got == want, "{name}: store with budget {budget} differs from the GGUF");
            }
        }
        assert!(logits(&dir, &ExpertMode::Mapped).unwrap() == want);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn damaged_stores_are_refused() {
    let dir = convert("qwen3moe.f32");
    // converting onto an existing store refuses and leaves it alone
    let g = GgufModel::open(common::fixture("models/qwen3moe.f32.gguf")).unwrap();
    let e = store::convert(&g, &dir, &mut |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
    assert!(logits(&dir, &ExpertMode::Mapped).is_ok());

    // a manifest that lacks a layer's experts is refused at load, naming the layer
    let mpath = dir.join("manifest.json");
    let original = std::fs::read(&mpath).unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&original).unwrap();
    m["layers"].as_array_mut().unwrap().remove(1);
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    let e = Model::open(&dir).err().unwrap().to_string();
    assert!(e.contains("layer 1 experts"), "{e}");
    std::fs::write(&mpath, &original).unwrap();

    // manifests that lie about the expert files are refused, saying how
    type Edit<'a> = (&'a str, &'a dyn Fn(&mut serde_json::Value), &'a str);
    let edits: [Edit; 6] = [
        ("a path out of the store", &|m| m["layers"][0]["file"] = "../experts-001.bin".into(), "not a file name inside the store"),
        ("an absolute path", &|m| m["layers"][0]["file"] = "/etc/passwd".into(), "not a file name inside the store"),
        ("records of one byte", &|m| m["layers"][0]["record_bytes"] = 1.into(), "cannot hold"),
        ("records whose count overflows", &|m| m["layers"][0]["record_bytes"] = (u64::MAX / 4 / 65536 * 65536).into(), "overflow"),
        ("a short checksum list", &|m| {
            m["layers"][0]["crc32"].as_array_mut().unwrap().pop();
        }, "checksums for"),
        ("a wrong base checksum", &|m| m["base_crc32"] = 12345.into(), "checksum mismatch"),
    ];
    for (what, edit, needle) in edits {
        let mut m: serde_json::Value = serde_json::from_slice(&original).unwrap();
        edit(&mut m);
        std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
        let e = Model::open(&dir).err().unwrap_or_else(|| panic!("{what}: opened")).to_string();
        assert!(e.contains(needle), "{what}: {e}");
    }
    std::fs::write(&mpath, &original).unwrap();

    // bytes flipped in the base file are caught by its checksum when the store opens
    let base = dir.join("base.safetensors");
    let good = std::fs::read(&base).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&base, &bad).unwrap();
    let e = Model::open(&dir).err().unwrap().to_string();
    assert!(e.contains("base.safetensors") && e.contains("checksum mismatch"), "{e}");
    std::fs::write(&base, &good).unwrap();

    // a flipped byte in an expert record is caught by its checksum, naming layer and expert
    let f = dir.join("experts-001.bin");
    let mut bytes = std::fs::read(&f).unwrap();
    let rec = store::Store::open(&dir).unwrap().manifest().layers[1].record_bytes as usize;
    for e in 0..8 {
        bytes[e * rec + 100] ^= 0x40;
    }
    std::fs::write(&f, &bytes).unwrap();
    let e = logits(&dir, &ExpertMode::Mapped).unwrap_err().to_string();
    assert!(e.contains("of layer 1 is corrupt"), "{e}");

    // a truncated expert file is refused when the store is opened
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let e = Model::open(&dir).err().unwrap().to_string();
    assert!(e.contains("truncated"), "{e}");

    // a broken manifest is named
    std::fs::write(dir.join("manifest.json"), b"{not json").unwrap();
    let e = Model::open(&dir).err().unwrap().to_string();
    assert!(e.contains("manifest"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
