//! Cold expert reads through the pager versus a plain sequential read of the same files.
//!
//! Builds a synthetic expert store (default 4 GiB: 48 layers × 34 experts of 2.65 MB, the
//! size of a Qwen3-30B-A3B Q4_K expert), drops it from the page cache with
//! `posix_fadvise(DONTNEED)`, reads it sequentially, drops it again, then reads every
//! expert once in random order through the pager, eight experts per layer at a time (as a
//! top-8 layer asks), and prints the throughputs and their ratios (target ≥ 0.8).
//!
//! Run: `cargo bench --bench expert_fetch` (`ODMOE_BENCH_GIB=8` for a larger store,
//! `ODMOE_BENCH_DIR` to choose where it is written; it is deleted afterwards;
//! `ODMOE_BENCH_THREADS` reader threads, default 8). Buffered and O_DIRECT reads are both
//! measured, each with requests made one at a time (every request waits for its slowest
//! read) and with the next two requests announced as prefetches (the readers' queue kept
//! full, as a predictor would); the sequential read is taken before and after and averaged.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use odmoe::experts::store::{LayerExperts, Manifest, ProjectionInfo, SourceInfo, Store, RECORD_ALIGN};
use odmoe::experts::{ExpertSource, PagedExperts, PagerOptions};

const LAYERS: usize = 48;
const EXPERT_ROWS: usize = 768;
const HIDDEN: usize = 2048;

#[path = "common/page_cache.rs"]
mod page_cache;
use page_cache::forget_pages;

fn drop_cache(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let f = File::open(e.unwrap().path()).unwrap();
        f.sync_all().ok();
        forget_pages(&f);
    }
}


fn main() {
    let gib: f64 = std::env::var("ODMOE_BENCH_GIB").ok().and_then(|v| v.parse().ok()).unwrap_or(4.0);
    let root = std::env::var_os("ODMOE_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = root.join(format!("odmoe-bench-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // Q4_K projections: 768 × 2048 (gate, up) and 2048 × 768 (down)
    let q4k = |rows: usize, cols: usize| ProjectionInfo { ty: "Q4_K".into(), rows, cols, bytes: (rows * cols / 256 * 144) as u64 };
    let (gate, up, down) = (q4k(EXPERT_ROWS, HIDDEN), q4k(EXPERT_ROWS, HIDDEN), q4k(HIDDEN, EXPERT_ROWS));
    let rec = gate.bytes + up.bytes + down.bytes;
    let record_bytes = rec.div_ceil(RECORD_ALIGN) * RECORD_ALIGN;
    let n_expert = ((gib * (1u64 << 30) as f64) / (record_bytes as f64 * LAYERS as f64)).ceil() as usize;
    eprintln!("writing {LAYERS} layers x {n_expert} experts of {:.2} MB ({:.2} GiB) to {}", rec as f64 / 1e6, (record_bytes * (LAYERS * n_expert) as u64) as f64 / (1u64 << 30) as f64, dir.display());

    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; record_bytes as usize];
    let mut layers = Vec::new();
    for l in 0..LAYERS {
        let name = format!("experts-{l:03}.bin");
        let mut f = std::io::BufWriter::with_capacity(8 << 20, File::create(dir.join(&name)).unwrap());
        let mut crcs = Vec::new();
        for _ in 0..n_expert {
            for w in buf[..rec as usize].chunks_exact_mut(8) {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                w.copy_from_slice(&s.to_le_bytes());
            }
            crcs.push(crc32fast::hash(&buf[..rec as usize]));
            f.write_all(&buf).unwrap();
        }
        f.flush().unwrap();
        layers.push(LayerExperts { layer: l, file: name, n_expert, record_bytes, gate: gate.clone(), up: up.clone(), down: down.clone(), crc32: crcs });
    }
    safetensors::tensor::serialize_to_file(Vec::<(String, safetensors::tensor::TensorView<'_>)>::new(), None, &dir.join("base.safetensors")).unwrap();
    let manifest = Manifest { base_crc32: None, format: "odmoe-expert-store".into(), version: 1, source: SourceInfo { files: vec![], bytes: 0, sha256: String::new() }, metadata: vec![], layers };
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();

    // sequential read of the same files, cold
    let sequential = || {
        drop_cache(&dir);
        let t = Instant::now();
        let mut total = 0u64;
        let mut rb = vec![0u8; 8 << 20];
        for l in 0..LAYERS {
            let mut f = File::open(dir.join(format!("experts-{l:03}.bin"))).unwrap();
            loop {
                let n = f.read(&mut rb).unwrap();
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
        }
        total as f64 / t.elapsed().as_secs_f64()
    };

    // every expert once, random order, grouped into requests of up to 8 experts of one
    // layer (as a top-8 layer asks)
    let mut order: Vec<(usize, usize)> = (0..LAYERS).flat_map(|l| (0..n_expert).map(move |e| (l, e))).collect();
    for i in (1..order.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        order.swap(i, (s % (i as u64 + 1)) as usize);
    }
    let mut requests: Vec<(usize, Vec<usize>)> = Vec::new();
    let mut pending: Vec<Vec<usize>> = vec![Vec::new(); LAYERS];
    for (l, e) in order {
        pending[l].push(e);
        if pending[l].len() == 8 {
            requests.push((l, std::mem::take(&mut pending[l])));
        }
    }
    for (l, p) in pending.into_iter().enumerate() {
        if !p.is_empty() {
            requests.push((l, p));
        }
    }

    let store = Store::open(&dir).unwrap();
    let threads: usize = std::env::var("ODMOE_BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    // `lookahead`: requests announced ahead as prefetches (what a perfect predictor
    // would do), keeping the readers busy while the caller waits on the current one
    let paged = |direct: bool, lookahead: usize| {
        drop_cache(&dir);
        let pager = PagedExperts::from_store(&store, LAYERS, &PagerOptions { budget: 0, read_threads: threads, prefetch_in_flight: threads, direct_io: direct }).unwrap();
        let t = Instant::now();
        for (i, (l, ids)) in requests.iter().enumerate() {
            for (nl, nids) in requests.iter().skip(i + 1).take(lookahead) {
                pager.prefetch(*nl, nids);
            }
            std::hint::black_box(pager.experts(*l, ids).unwrap());
        }
        let st = pager.stats();
        (st.bytes_read as f64 / t.elapsed().as_secs_f64(), st, pager.direct_io())
    };

    let seq_before = sequential();
    let mut rows = Vec::new();
    for direct in [false, true] {
        for lookahead in [0, 2] {
            rows.push((direct, lookahead, paged(direct, lookahead)));
        }
    }
    let seq = (seq_before + sequential()) / 2.0;
    println!("sequential read (mean of before and after): {:.2} GB/s ({:.2}, then {:.2})", seq / 1e9, seq_before / 1e9, (2.0 * seq - seq_before) / 1e9);
    println!("{:<10} {:>9} {:>8} {:>6} {:>9} {:>9}", "mode", "lookahead", "GB/s", "ratio", "p50 ms", "p99 ms");
    for (direct, lookahead, (rate, st, is_direct)) in rows {
        let mode = if !direct { "buffered" } else if is_direct { "O_DIRECT" } else { "O_DIRECT refused" };
        println!("{mode:<10} {lookahead:>9} {:>8.2} {:>6.2} {:>9.2} {:>9.2}", rate / 1e9, rate / seq, st.read_p50_micros as f64 / 1e3, st.read_p99_micros as f64 / 1e3);
    }
    std::fs::remove_dir_all(&dir).ok();
}
