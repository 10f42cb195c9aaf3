//! Decoding a model whose experts do not fit the cache budget (run by `benches/overbudget.sh`,
//! which confines the process to a cgroup memory limit below the model's size).
//!
//! `overbudget generate PATH` writes a synthetic Qwen3-30B-A3B-shaped GGUF with random
//! weights (48 layers, 128 experts top-8, hidden 2048, expert FFN 768, 32/4 heads of 128,
//! vocabulary 151936, every matrix Q4_K: about 17 GB).
//!
//! `overbudget run PATH [BUDGET|half] [off|gate] [buffered|direct] [TOKENS]` measures the
//! disk before and after (cold reads of 2 GiB of the file's expert data, as one stream and
//! as eight; the ceiling uses the faster) and
//! in between opens the model with experts paged into BUDGET (default: half the expert
//! bytes), prefetch `off` or `gate`, buffered or O_DIRECT reads,
//! decodes TOKENS tokens (default 48; each step one token of a fixed pseudo-random stream)
//! after a warm-up of 16 steps that fills the cache,
//! (`ODMOE_BENCH_THREADS` readers, default 8; `ODMOE_BENCH_IN_FLIGHT` prefetches in
//! flight, default 4; `ODMOE_BENCH_DEPTH` layers of lookahead, default 1)
//! and prints decode tokens/s, the hit rate, bytes read per token, the I/O-bound ceiling
//! (disk bandwidth ÷ bytes read per token), the ratio to it, and the peak resident memory
//! against base weights + budget.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

use odmoe::experts::{parse_size, PagerOptions};
use odmoe::model::{ExpertMode, Logits, Model, Prefetch};

const LAYERS: usize = 48;
const HIDDEN: usize = 2048;
const HEADS: usize = 32;
const KV_HEADS: usize = 4;
const HEAD_DIM: usize = 128;
const EXPERTS: usize = 128;
const TOP_K: usize = 8;
const EXPERT_FF: usize = 768;
const VOCAB: usize = 151_936;
const Q4K: u32 = 12;
const F32: u32 = 0;
const Q4K_BLOCK: usize = 144;

struct Tensor {
    name: String,
    dims: Vec<u64>,
    ty: u32,
}

impl Tensor {
    fn bytes(&self) -> u64 {
        let n: u64 = self.dims.iter().product();
        if self.ty == F32 {
            n * 4
        } else {
            n / 256 * Q4K_BLOCK as u64
        }
    }
}

fn tensors() -> Vec<Tensor> {
    let t = |name: String, dims: &[usize], ty| Tensor { name, dims: dims.iter().map(|&d| d as u64).collect(), ty };
    let mut v = vec![t("token_embd.weight".into(), &[HIDDEN, VOCAB], Q4K), t("output_norm.weight".into(), &[HIDDEN], F32), t("output.weight".into(), &[HIDDEN, VOCAB], Q4K)];
    for l in 0..LAYERS {
        let b = |s: &str| format!("blk.{l}.{s}.weight");
        v.push(t(b("attn_norm"), &[HIDDEN], F32));
        v.push(t(b("attn_q"), &[HIDDEN, HEADS * HEAD_DIM], Q4K));
        v.push(t(b("attn_k"), &[HIDDEN, KV_HEADS * HEAD_DIM], Q4K));
        v.push(t(b("attn_v"), &[HIDDEN, KV_HEADS * HEAD_DIM], Q4K));
        v.push(t(b("attn_output"), &[HEADS * HEAD_DIM, HIDDEN], Q4K));
        v.push(t(b("attn_q_norm"), &[HEAD_DIM], F32));
        v.push(t(b("attn_k_norm"), &[HEAD_DIM], F32));
        v.push(t(b("ffn_norm"), &[HIDDEN], F32));
        v.push(t(b("ffn_gate_inp"), &[HIDDEN, EXPERTS], F32));
        v.push(t(b("ffn_gate_exps"), &[HIDDEN, EXPERT_FF, EXPERTS], Q4K));
        v.push(t(b("ffn_up_exps"), &[HIDDEN, EXPERT_FF, EXPERTS], Q4K));
        v.push(t(b("ffn_down_exps"), &[EXPERT_FF, HIDDEN, EXPERTS], Q4K));
    }
    v
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            c.copy_from_slice(&r[..c.len()]);
        }
    }

    /// Roughly uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn generate(path: &Path) -> std::io::Result<()> {
    let ts = tensors();
    let mut w = BufWriter::with_capacity(16 << 20, File::create(path)?);
    let s = |w: &mut BufWriter<File>, v: &str| -> std::io::Result<()> {
        w.write_all(&(v.len() as u64).to_le_bytes())?;
        w.write_all(v.as_bytes())
    };
    let a = "qwen3moe";
    let u32s: [(String, u32); 12] = [
        (format!("{a}.vocab_size"), VOCAB as u32),
        (format!("{a}.block_count"), LAYERS as u32),
        (format!("{a}.context_length"), 4096),
        (format!("{a}.embedding_length"), HIDDEN as u32),
        (format!("{a}.feed_forward_length"), 6144),
        (format!("{a}.attention.head_count"), HEADS as u32),
        (format!("{a}.attention.head_count_kv"), KV_HEADS as u32),
        (format!("{a}.expert_count"), EXPERTS as u32),
        (format!("{a}.expert_used_count"), TOP_K as u32),
        (format!("{a}.attention.key_length"), HEAD_DIM as u32),
        (format!("{a}.attention.value_length"), HEAD_DIM as u32),
        (format!("{a}.expert_feed_forward_length"), EXPERT_FF as u32),
    ];
    let f32s: [(String, f32); 2] = [(format!("{a}.rope.freq_base"), 1e6), (format!("{a}.attention.layer_norm_rms_epsilon"), 1e-6)];
    w.write_all(b"GGUF")?;
    w.write_all(&3u32.to_le_bytes())?;
    w.write_all(&(ts.len() as u64).to_le_bytes())?;
    w.write_all(&((u32s.len() + f32s.len() + 1) as u64).to_le_bytes())?;
    s(&mut w, "general.architecture")?;
    w.write_all(&8u32.to_le_bytes())?;
    s(&mut w, a)?;
    for (k, v) in &u32s {
        s(&mut w, k)?;
        w.write_all(&4u32.to_le_bytes())?;
        w.write_all(&v.to_le_bytes())?;
    }
    for (k, v) in &f32s {
        s(&mut w, k)?;
        w.write_all(&6u32.to_le_bytes())?;
        w.write_all(&v.to_le_bytes())?;
    }
    let mut offset = 0u64;
    for t in &ts {
        s(&mut w, &t.name)?;
        w.write_all(&(t.dims.len() as u32).to_le_bytes())?;
        for d in &t.dims {
            w.write_all(&d.to_le_bytes())?;
        }
        w.write_all(&t.ty.to_le_bytes())?;
        w.write_all(&offset.to_le_bytes())?;
        offset += t.bytes().div_ceil(32) * 32;
    }
    w.flush()?;
    let mut pos = w.get_mut().stream_position()?;
    let pad = pos.div_ceil(32) * 32 - pos;
    w.write_all(&vec![0u8; pad as usize])?;
    pos += pad;
    let data_start = pos;

    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    // Q4_K blocks: random quants and 6-bit scales under a small fixed super-block scale
    // (activations stay finite through 48 layers). Each sub-block's min equals its scale
    // and dmin = 7.5·d, so a weight is d·sc·(q − 7.5): zero mean. (With independent
    // random mins every row shares a bias, hidden states share one direction, and every
    // token routes to the same experts.)
    // The token embedding is scaled far above the layers' outputs so that the residual
    // stream, and with it each layer's routing, depends on the token: in a random model
    // the layers' outputs would otherwise swamp it and route every token alike (trained
    // models spread tokens over experts; this spreads them about uniformly, the hardest
    // case for a cache: the hit rate is close to the budget's fraction of expert bytes).
    let scales = |d: f32| (half::f16::from_f32(d).to_le_bytes(), half::f16::from_f32(7.5 * d).to_le_bytes());
    let mut chunk = vec![0u8; Q4K_BLOCK * 8192];
    let total: u64 = ts.iter().map(|t| t.bytes()).sum();
    let mut written = 0u64;
    let t0 = Instant::now();
    for t in &ts {
        let n = t.bytes();
        if t.ty == F32 {
            let is_norm = t.dims.len() == 1;
            let mut v = Vec::with_capacity(n as usize);
            for _ in 0..n / 4 {
                let x = if is_norm { 1.0 } else { 0.05 * rng.unit() };
                v.extend_from_slice(&f32::to_le_bytes(x));
            }
            w.write_all(&v)?;
        } else {
            let (d, dmin) = scales(if t.name == "token_embd.weight" { 0.2 } else { 2e-5 });
            let mut left = n as usize;
            while left > 0 {
                let m = left.min(chunk.len());
                rng.fill(&mut chunk[..m]);
                for b in chunk[..m].chunks_exact_mut(Q4K_BLOCK) {
                    b[0..2].copy_from_slice(&d);
                    b[2..4].copy_from_slice(&dmin);
                    // scales: bytes 4..8 (mins of sub-blocks 0-3) = bytes 0..4 (their
                    // scales); bytes 8..12 hold sub-blocks 4-7 as scale | min << 4
                    let (lo, hi) = b[4..16].split_at_mut(4);
                    hi[..4].copy_from_slice(lo);
                    for x in &mut hi[4..8] {
                        *x = (*x & 0x0F) | (*x << 4);
                    }
                }
                w.write_all(&chunk[..m])?;
                left -= m;
            }
        }
        let pad = n.div_ceil(32) * 32 - n;
        w.write_all(&vec![0u8; pad as usize])?;
        written += n;
        if t.name.ends_with("ffn_down_exps.weight") {
            eprint!("\r{:.1} / {:.1} GB ({:.0} MB/s)", written as f64 / 1e9, total as f64 / 1e9, written as f64 / 1e6 / t0.elapsed().as_secs_f64());
        }
    }
    w.flush()?;
    eprintln!();
    assert_eq!(w.get_mut().stream_position()?, data_start + offset);
    Ok(())
}

#[path = "common/page_cache.rs"]
mod page_cache;

/// Asks the kernel to drop the file's cached pages.
fn drop_cache(path: &Path) {
    page_cache::forget_pages(&File::open(path).unwrap());
}

/// Peak and current resident set size of this process, and the current anonymous and
/// file-backed parts, in bytes.
fn rss() -> (u64, u64, u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |k: &str| s.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024;
    (get("VmHWM:"), get("VmRSS:"), get("RssAnon:"), get("RssFile:"))
}

/// Cold read throughput of 2 GiB from the middle of the file (expert data), in bytes/s:
/// one sequential stream, and 8 threads each reading a quarter-GiB stretch (the device's
/// throughput with reads in flight, which is what the pager can get from it).
fn disk_bandwidth(path: &Path) -> (f64, f64) {
    let len = std::fs::metadata(path).unwrap().len();
    let read = |from: u64, bytes: u64| {
        let mut f = File::open(path).unwrap();
        f.seek(SeekFrom::Start(from)).unwrap();
        let mut buf = vec![0u8; 8 << 20];
        let mut n = 0u64;
        while n < bytes {
            let r = f.read(&mut buf).unwrap();
            if r == 0 {
                break;
            }
            n += r as u64;
        }
        n
    };
    drop_cache(path);
    let t = Instant::now();
    let sequential = read(len / 2, 2 << 30) as f64 / t.elapsed().as_secs_f64();
    drop_cache(path);
    let t = Instant::now();
    let start = len / 4;
    let n: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8u64).map(|i| s.spawn(move || read(start + i * (256 << 20), 256 << 20))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let parallel = n as f64 / t.elapsed().as_secs_f64();
    drop_cache(path);
    (sequential, parallel)
}

fn run(path: &Path, budget: Option<&str>, prefetch: Prefetch, direct_io: bool, tokens: usize) {
    let len = std::fs::metadata(path).unwrap().len();
    let disk_before = disk_bandwidth(path);
    let expert_bytes: u64 = (0..LAYERS).map(|_| (EXPERT_FF * HIDDEN / 256 * Q4K_BLOCK * 3 * EXPERTS) as u64).sum();
    let base_bytes = std::fs::metadata(path).unwrap().len() - expert_bytes;
    let budget = budget.map(|b| parse_size(b).unwrap()).unwrap_or(expert_bytes / 2);
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (threads, in_flight, depth) = (env("ODMOE_BENCH_THREADS", 8), env("ODMOE_BENCH_IN_FLIGHT", 4), env("ODMOE_BENCH_DEPTH", 1));
    let opts = PagerOptions { budget, read_threads: threads, prefetch_in_flight: in_flight, direct_io };
    let t = Instant::now();
    let mut m = Model::open_with(path, &ExpertMode::Paged(opts)).unwrap();
    let prefetch = match prefetch {
        Prefetch::Gate { .. } => Prefetch::Gate { depth },
        Prefetch::Shadow { .. } => {
            let file = std::env::var("ODMOE_BENCH_SHADOW").expect("prefetch shadow needs ODMOE_BENCH_SHADOW=PATH (odmoe train-shadow)");
            m.set_shadow(std::sync::Arc::new(odmoe::shadow::Shadow::load(Path::new(&file)).unwrap())).unwrap();
            Prefetch::Shadow { depth }
        }
        off => off,
    };
    m.set_prefetch(prefetch);
    eprintln!("opened in {:.1} s", t.elapsed().as_secs_f64());
    let mut cache = m.new_cache(64 + tokens + 16);
    let prompt: Vec<u32> = (0..8u32).map(|i| 1000 + i * 7919).collect();
    m.forward(&prompt, &mut cache, Logits::Last).unwrap();
    // Decoding feeds a fixed pseudo-random token stream (as when following a text): a
    // random model's own greedy choice repeats one token, which would route every step to
    // the same experts.
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let warmup = 16;
    let pager = || m.pager().unwrap();
    let mut start = None;
    for i in 0..warmup + tokens {
        if i == warmup {
            start = Some((Instant::now(), pager().stats()));
        }
        let next = (rng.next() % VOCAB as u64) as u32;
        let logits = m.forward(&[next], &mut cache, Logits::Last).unwrap();
        assert!(logits.iter().all(|x| x.is_finite()), "non-finite logits at step {i}");
    }
    let (t0, s0) = start.unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let s1 = pager().stats();
    let (hits, misses) = (s1.hits - s0.hits, s1.misses - s0.misses);
    let read_per_token = (s1.bytes_read - s0.bytes_read) as f64 / tokens as f64;
    let tps = tokens as f64 / secs;
    let disk_after = disk_bandwidth(path);
    // the ceiling uses the better of the device's two throughputs, averaged over the two
    // measurements: the more it can deliver, the harder the ceiling is to reach
    let disk = (disk_before.0.max(disk_before.1) + disk_after.0.max(disk_after.1)) / 2.0;
    let ceiling = disk / read_per_token;
    let (peak, now, anon, file) = rss();
    let gb = |b: f64| b / 1e9;
    let io = if !direct_io { "buffered" } else if m.pager().unwrap().direct_io() { "O_DIRECT" } else { "O_DIRECT refused, buffered" };
    println!("model: {:.2} GB ({:.2} GB experts, {:.2} GB base); budget {:.2} GB; prefetch {prefetch:?} ({in_flight} in flight); {threads} readers, {io}", gb(len as f64), gb(expert_bytes as f64), gb(base_bytes as f64), gb(budget as f64));
    println!(
        "disk (cold reads of 2 GiB, before / after): one stream {:.2} / {:.2} GB/s, 8 streams {:.2} / {:.2} GB/s; used for the ceiling: {:.2} GB/s",
        gb(disk_before.0),
        gb(disk_after.0),
        gb(disk_before.1),
        gb(disk_after.1),
        gb(disk)
    );
    println!("decode: {tokens} tokens in {secs:.1} s = {tps:.3} tokens/s");
    println!("experts: hit rate {:.3} ({hits} hits, {misses} misses), {:.1} MB read per token, read p50 {:.1} ms p99 {:.1} ms, waited {:.1} s", hits as f64 / (hits + misses).max(1) as f64, read_per_token / 1e6, s1.read_p50_micros as f64 / 1e3, s1.read_p99_micros as f64 / 1e3, (s1.wait_micros - s0.wait_micros) as f64 / 1e6);
    if prefetch != Prefetch::Off {
        println!("prefetch: {} reads, {} hits, {:.1} MB wasted", s1.prefetch_reads - s0.prefetch_reads, s1.prefetch_hits - s0.prefetch_hits, (s1.prefetch_wasted_bytes - s0.prefetch_wasted_bytes) as f64 / 1e6);
    }
    println!("I/O-bound ceiling: {ceiling:.3} tokens/s; achieved {:.2} of it", tps / ceiling);
    println!(
        "memory: peak RSS {:.2} GB, now {:.2} GB ({:.2} anonymous, {:.2} file-backed); base + budget = {:.2} GB; peak / (base + budget) = {:.3}",
        gb(peak as f64),
        gb(now as f64),
        gb(anon as f64),
        gb(file as f64),
        gb((base_bytes + budget) as f64),
        peak as f64 / (base_bytes + budget) as f64
    );
}

/// Records routing traces (`odmoe::shadow::trace`) of the synthetic model over TOKENS
/// tokens of a pseudo-random stream (another seed than `run`'s), in windows of 256 run
/// from an empty context: the data `odmoe train-shadow` learns this model's routing from.
/// Experts are reached through the file mapping (run it outside the memory limit).
fn trace(path: &Path, out: &Path, tokens: usize) {
    use odmoe::shadow::{trace, TraceHeader, TraceWriter};
    let m = Model::open(path).unwrap();
    let mut w = TraceWriter::create(out, TraceHeader::for_model(&m, &path.display().to_string()).unwrap()).unwrap();
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let t0 = Instant::now();
    while (w.tokens() as usize) < tokens {
        let window: Vec<u32> = (0..256.min(tokens - w.tokens() as usize)).map(|_| (rng.next() % VOCAB as u64) as u32).collect();
        trace::record(&m, &window, 128, &mut w).unwrap();
        eprintln!("{} tokens traced ({:.0} s)", w.tokens(), t0.elapsed().as_secs_f64());
    }
    w.finish().unwrap();
}

/// Decoding on the GPU backend with every routed expert uploaded first (the card holds
/// the whole model): prints the adapter, upload time, prefill and decode tokens/s.
#[cfg(feature = "gpu")]
fn gpu_decode(path: &Path, tokens: usize) {
    use odmoe::compute::gpu::Gpu;
    use odmoe::model::GpuModel;
    let t = Instant::now();
    let m = Model::open(path).unwrap();
    let gpu = Gpu::open().unwrap().expect("no GPU adapter");
    println!("adapter: {}", gpu.describe());
    let g = GpuModel::with_expert_budget(&m, &gpu, u64::MAX).unwrap();
    assert!(g.experts_resident(), "every expert should be on the device");
    println!("weights uploaded in {:.1} s (all experts resident)", t.elapsed().as_secs_f64());
    let preloaded = g.expert_uploads();
    let mut cache = g.new_cache(128 + tokens + 5 * 32 + 8);
    let prompt: Vec<u32> = (0..64u32).map(|i| (1000 + i * 7919) % m.config().n_vocab as u32).collect();
    // warm-up: a prompt of the same length, so the timed one finds its buffers made
    // (the first pass at a new size allocates them; that once-only cost varied 70–210 ms)
    g.forward(&prompt, &mut g.new_cache(prompt.len()), Logits::Last).unwrap();
    let t = Instant::now();
    g.forward(&prompt, &mut cache, Logits::Last).unwrap();
    let prefill = t.elapsed().as_secs_f64();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let vocab = m.config().n_vocab as u64;
    let mut steps = Vec::with_capacity(tokens);
    // this thread's time on a CPU (ns): recording and submitting; the rest of a step is
    // waiting for the device
    let on_cpu = || std::fs::read_to_string("/proc/thread-self/schedstat").ok().and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok()).unwrap_or(0);
    let cpu0 = on_cpu();
    for _ in 0..tokens {
        let tok = (rng.next() % vocab) as u32;
        let t = Instant::now();
        g.forward(&[tok], &mut cache, Logits::Last).unwrap();
        steps.push(t.elapsed().as_secs_f64());
    }
    let cpu_ms = (on_cpu() - cpu0) as f64 / 1e6 / tokens as f64;
    // how often to submit within a pass: 32 steps at each setting
    let mut per_submit = Vec::new();
    for every in [1, 2, 4, 8, 48] {
        g.set_layers_per_submit(every);
        let t = Instant::now();
        for _ in 0..32 {
            let tok = (rng.next() % vocab) as u32;
            g.forward(&[tok], &mut cache, Logits::Last).unwrap();
        }
        per_submit.push(format!("{every}: {:.1}", 32.0 / t.elapsed().as_secs_f64()));
    }
    g.set_layers_per_submit(odmoe::model::SUBMIT_EVERY);
    println!("decode tokens/s by layers per submission: {}", per_submit.join(", "));
    // where a step's device time goes: three profiled steps, per kernel
    g.set_profiling(true);
    let mut by_kernel: Vec<(&'static str, f64, usize)> = Vec::new();
    let profiled = 3;
    for _ in 0..profiled {
        let tok = (rng.next() % vocab) as u32;
        g.forward(&[tok], &mut cache, Logits::Last).unwrap();
        for (k, ns, c) in g.take_profile().unwrap_or_default() {
            match by_kernel.iter_mut().find(|e| e.0 == k) {
                Some(e) => {
                    e.1 += ns;
                    e.2 += c;
                }
                None => by_kernel.push((k, ns, c)),
            }
        }
    }
    g.set_profiling(false);
    by_kernel.sort_by(|a, b| b.1.total_cmp(&a.1));
    let device_ns: f64 = by_kernel.iter().map(|e| e.1).sum::<f64>() / profiled as f64;
    if device_ns > 0.0 {
        println!("device time per profiled step (one pass per dispatch): {:.2} ms", device_ns / 1e6);
        for (k, ns, c) in &by_kernel {
            println!("  {k:<16} {:>8.1} us per step ({:>4.1}%), {:>4} dispatches, {:>6.1} us each", ns / 1e3 / profiled as f64, 100.0 * ns / profiled as f64 / device_ns, c / profiled, ns / 1e3 / *c as f64);
        }
    }
    let total: f64 = steps.iter().sum();
    steps.sort_by(f64::total_cmp);
    println!(
        "prefill: 64 tokens in {:.1} ms = {:.1} tokens/s; decode: {tokens} tokens = {:.2} tokens/s (step p50 {:.2} ms, min {:.2} ms, of which on the CPU {cpu_ms:.2} ms); experts fetched while decoding: {}",
        prefill * 1e3,
        64.0 / prefill,
        tokens as f64 / total,
        steps[steps.len() / 2] * 1e3,
        steps[0] * 1e3,
        g.expert_uploads() - preloaded
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["generate", path] => generate(Path::new(path)).unwrap(),
        ["trace", path, out, tokens] => trace(Path::new(path), Path::new(out), tokens.parse().unwrap()),
        ["run", path, rest @ ..] => {
            let budget = rest.first().copied().filter(|b| *b != "half");
            let prefetch = match rest.get(1).copied() {
                None | Some("off") => Prefetch::Off,
                Some("gate") => Prefetch::Gate { depth: 1 },
                Some("shadow") => Prefetch::Shadow { depth: 1 },
                Some(p) => panic!("prefetch {p}: off, gate or shadow"),
            };
            let direct = match rest.get(2).copied() {
                None | Some("buffered") => false,
                Some("direct") => true,
                Some(m) => panic!("read mode {m}: buffered or direct"),
            };
            let tokens = rest.get(3).map(|t| t.parse().unwrap()).unwrap_or(48);
            run(Path::new(path), budget, prefetch, direct, tokens)
        }
        #[cfg(feature = "gpu")]
        ["gpu", path, rest @ ..] => gpu_decode(Path::new(path), rest.first().map(|t| t.parse().unwrap()).unwrap_or(64)),
        [] => eprintln!("usage: overbudget generate PATH | overbudget run PATH [BUDGET|half] [off|gate|shadow] [buffered|direct] [TOKENS] | overbudget trace PATH OUT TOKENS | overbudget gpu PATH [TOKENS] (see benches/overbudget.sh)"),
        other => panic!("unknown arguments {other:?}"),
    }
}
