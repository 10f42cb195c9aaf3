//! GPU GEMV throughput: Q8_0, Q4_K, Q6_K, Q3_K and Q2_K 14336 × 4096 matrices (Mixtral's FFN shape) times
//! one activation row, repeated, reported as GB/s of weights read (the kernel alone, and
//! with the activation quantization before it) — next to the CPU backend's matmul of the
//! same matrix in the same run. Timed from submission to completion, recording excluded. On lavapipe (Mesa's CPU Vulkan driver) the
//! GPU figure only shows the kernel runs; on a real GPU compare it to the card's memory
//! bandwidth. Then stacked expert products over a batched step's (token, expert) pairs,
//! one pair at a time against pairs grouped by expert (`ODMOE_BENCH_EXPERTS_ONLY=1` runs
//! only those). `cargo bench --bench gpu_gemv`.

use std::time::Instant;

use odmoe::compute::gpu::matrix::GpuMatrix;
use odmoe::compute::gpu::recorder::{Recorder, Workspace};
use odmoe::compute::gpu::Gpu;
use odmoe::compute::{cpu, QMatrix};
use odmoe::quant::GgmlType;

fn main() {
    let Some(gpu) = Gpu::open().expect("opening the GPU") else {
        println!("no GPU adapter: nothing to measure");
        return;
    };
    println!("adapter: {}, subgroups: {:?}", gpu.describe(), gpu.subgroup_size());
    let reps: usize = std::env::var("ODMOE_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    if std::env::var_os("ODMOE_BENCH_LAYOUTS").is_some() {
        sizes(&gpu, reps);
        lane_layouts(&gpu, reps);
        return;
    }
    let experts_only = std::env::var_os("ODMOE_BENCH_EXPERTS_ONLY").is_some();
    if !experts_only {
        plain_matrices(&gpu, reps);
    }
    expert_products(&gpu, reps);
}

/// Seconds per product of `g` (one activation row, quantized in `q`) over one round of
/// `reps` products recorded into one submission (through a workspace, as a forward pass
/// records), timed from the submission (recording excluded) to completion, each product
/// waiting for the one before.
fn time_products(gpu: &Gpu, ws: &mut Workspace, g: &GpuMatrix, xb: &wgpu::Buffer, q: Option<&odmoe::compute::gpu::quantize::QuantizedRows>, y: &wgpu::Buffer, reps: usize) -> f64 {
    ws.recycle();
    let mut enc = Recorder::with_workspace(gpu, ws);
    for _ in 0..reps {
        g.record_quantized(&mut enc, xb, q, y, 1, None).unwrap();
    }
    let cmds = enc.finish();
    let t = Instant::now();
    gpu.queue.submit([cmds]);
    gpu.device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    t.elapsed().as_secs_f64() / reps as f64
}

/// Products of `g` for a tenth of a second: a GPU left idle while the host prepares the
/// next matrix lowers its clocks, and timings right after would measure that.
fn warm_up(gpu: &Gpu, ws: &mut Workspace, g: &GpuMatrix, xb: &wgpu::Buffer, q: Option<&odmoe::compute::gpu::quantize::QuantizedRows>, y: &wgpu::Buffer) {
    let t = Instant::now();
    while t.elapsed().as_secs_f64() < 0.1 {
        time_products(gpu, ws, g, xb, q, y, 50);
    }
}

/// GB/s of the default kernels by matrix size (4096 columns): where a product is too
/// small for the device to reach its bandwidth (launch and drain), with F32 as the
/// simplest kernel of all.
fn sizes(gpu: &Gpu, reps: usize) {
    let mut ws = Workspace::new();
    let cols = 4096usize;
    let x: Vec<f32> = (0..cols).map(|i| (i % 17) as f32 / 17.0 - 0.5).collect();
    let xb = gpu.upload("x", &x).unwrap();
    for ty in [GgmlType::F32, GgmlType::Q8_0, GgmlType::Q4_K] {
        let mut line = Vec::new();
        for mb in [16usize, 33, 66, 132, 264] {
            let rows = (mb << 20) / ty.row_bytes(cols as u64).unwrap() as usize / 256 * 256;
            if odmoe::compute::gpu::matrix::device_bytes(&random_matrix(ty, 1, cols)) * rows as u64 > gpu.max_storage_bytes() {
                continue; // past what one storage buffer holds here
            }
            let w = match ty {
                GgmlType::F32 => QMatrix::new(ty, rows, cols, (0..rows * cols).flat_map(|i| ((i % 13) as f32 * 0.01).to_le_bytes()).collect::<Vec<u8>>().into()),
                _ => random_matrix(ty, rows, cols),
            };
            let g = GpuMatrix::new(gpu, &w).unwrap();
            let y = gpu.output("y", rows);
            let mut enc = Recorder::new(gpu);
            let q = g.quantize(&mut enc, &xb, 1).unwrap();
            enc.submit();
            warm_up(gpu, &mut ws, &g, &xb, q.as_ref(), &y);
            let best = (0..3).map(|_| time_products(gpu, &mut ws, &g, &xb, q.as_ref(), &y, reps)).fold(f64::MAX, f64::min);
            line.push(format!("{:.0} MB {:.0}", w.data.len() as f64 / 1e6, w.data.len() as f64 / best / 1e9));
        }
        println!("{ty} x {cols} columns, GB/s by size: {}", line.join(", "));
    }
}

/// `ODMOE_BENCH_LAYOUTS=1`: the Q8_0 and Q4_K kernels in every lane layout (lanes per
/// row, rows per invocation, subgroup sums) on both FFN shapes and an expert's,
/// all reading the same uploaded weights. Each layout's round is timed right after a
/// round of the plain layout (one row per invocation, no subgroup sums), three times over;
/// reported: GB/s of weights read (best round) and the median ratio to the plain round
/// before it, so a device whose speed drifts does not favour the layouts timed first; the
/// layout products use by default is named.
fn lane_layouts(gpu: &Gpu, reps: usize) {
    use odmoe::compute::gpu::lane_layout::LaneLayout;
    let mut ws = Workspace::new();
    for (rows, cols) in [(14336usize, 4096usize), (4096, 14336), (768, 2048), (2048, 768)] {
        let x: Vec<f32> = (0..cols).map(|i| (i % 17) as f32 / 17.0 - 0.5).collect();
        for ty in [GgmlType::Q8_0, GgmlType::Q4_K] {
            let w = random_matrix(ty, rows, cols);
            let xb = gpu.upload("x", &x).unwrap();
            let y = gpu.output("y", rows);
            let default = GpuMatrix::new(gpu, &w).unwrap();
            let items = if ty == GgmlType::Q8_0 { cols / 32 } else { cols / 64 };
            // the baseline: one row per invocation, no subgroup sums (the layout of old)
            let plain = default.with_layout(gpu, LaneLayout::for_items(items)).unwrap();
            let mut enc = Recorder::new(gpu);
            let q = default.quantize(&mut enc, &xb, 1).unwrap();
            enc.submit();
            let bytes = w.data.len() as f64;
            let mut layouts = Vec::new();
            for lanes in [8, 16, 32, 64, 128] {
                for rows_per_lane in [1, 2, 4] {
                    for subgroup_sums in [false, true] {
                        let layout = LaneLayout { lanes, rows_per_lane, subgroup_sums };
                        if default.with_layout(gpu, layout).is_ok() {
                            layouts.push(layout);
                        }
                    }
                }
            }
            let variants: Vec<GpuMatrix> = layouts.iter().map(|l| default.with_layout(gpu, *l).unwrap()).collect();
            for g in &variants {
                time_products(gpu, &mut ws, g, &xb, q.as_ref(), &y, 1); // compiled
            }
            warm_up(gpu, &mut ws, &plain, &xb, q.as_ref(), &y);
            let mut best = vec![f64::MAX; layouts.len()];
            let mut ratios = vec![Vec::new(); layouts.len()];
            let mut default_best = f64::MAX;
            for _ in 0..3 {
                for (i, g) in variants.iter().enumerate() {
                    let base = time_products(gpu, &mut ws, &plain, &xb, q.as_ref(), &y, reps);
                    let t = time_products(gpu, &mut ws, g, &xb, q.as_ref(), &y, reps);
                    default_best = default_best.min(base);
                    best[i] = best[i].min(t);
                    ratios[i].push(base / t);
                }
            }
            let mut results: Vec<(f64, f64, LaneLayout)> = (0..layouts.len())
                .map(|i| {
                    let r = &mut ratios[i];
                    r.sort_by(f64::total_cmp);
                    (r[r.len() / 2], bytes / best[i] / 1e9, layouts[i])
                })
                .collect();
            results.sort_by(|a, b| b.0.total_cmp(&a.0));
            let name = |l: &LaneLayout| format!("{}/{}{}", l.lanes, l.rows_per_lane, if l.subgroup_sums { "s" } else { "" });
            let show = |r: &[(f64, f64, LaneLayout)]| r.iter().map(|(ratio, gbs, l)| format!("{} {gbs:.0} ({ratio:.2}x)", name(l))).collect::<Vec<_>>().join(", ");
            let chosen = results.iter().find(|r| r.2 == default.layout()).map_or(String::new(), |r| show(std::slice::from_ref(r)));
            println!("{ty} {rows}x{cols} ({:.1} MB), plain {} {:.0} GB/s; lanes/rows[s: subgroup sums] GB/s (x plain): default {chosen}; best {}", bytes / 1e6, name(&plain.layout()), bytes / default_best / 1e9, show(&results[..8]));
            println!("  all: {}", show(&results));
        }
    }
}

fn plain_matrices(gpu: &Gpu, reps: usize) {
    // gate/up (14336 rows of 4096) and down (4096 rows of 14336) of a Mixtral-sized FFN
    for (rows, cols) in [(14336usize, 4096usize), (4096, 14336)] {
        let x: Vec<f32> = (0..cols).map(|i| (i % 17) as f32 / 17.0 - 0.5).collect();
        for ty in [GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q3_K, GgmlType::Q2_K] {
            let w = random_matrix(ty, rows, cols);
            let g = GpuMatrix::new(gpu, &w).unwrap();
            g.run(gpu, &x).unwrap(); // warm-up (pipeline compilation)
            let xb = gpu.upload("x", &x).unwrap();
            // four outputs: products writing different ones need no barrier between them
            let ys: Vec<_> = (0..4).map(|_| gpu.output("y", rows)).collect();
            // the activation row quantized once (as q, k and v share one quantization)
            let mut enc = Recorder::new(gpu);
            let q = g.quantize(&mut enc, &xb, 1).unwrap();
            enc.submit();
            warm_up(gpu, &mut Workspace::new(), &g, &xb, q.as_ref(), &ys[0]);
            // fastest of three rounds of `reps` products recorded into one submission,
            // timed from the submission (recording excluded) to completion: the kernel
            // alone, each product waiting for the one before (one output) or not (outputs
            // taken in turn: the device may overlap them, as with q, k and v), then with
            // the activation quantization before each product
            let mut ws = Workspace::new();
            let mut time = |with_quantize: bool, outputs: usize| {
                let mut best = f64::MAX;
                for _ in 0..3 {
                    // as in a forward pass: the workspace's buffers, reused each round
                    ws.recycle();
                    let mut enc = Recorder::with_workspace(gpu, &mut ws);
                    for i in 0..reps {
                        let y = &ys[i % outputs];
                        if with_quantize {
                            g.record(&mut enc, &xb, y, 1).unwrap();
                        } else {
                            g.record_quantized(&mut enc, &xb, q.as_ref(), y, 1, None).unwrap();
                        }
                    }
                    let cmds = enc.finish();
                    let t = Instant::now();
                    gpu.queue.submit([cmds]);
                    gpu.device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
                    best = best.min(t.elapsed().as_secs_f64() / reps as f64);
                }
                best
            };
            let (gpu_s, gpu_par_s, gpu_q_s) = (time(false, 1), time(false, ys.len()), time(true, 1));
            if matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q6_K) {
                // eight activation rows (eight sessions' tokens): one product, whose kernel
                // reads each weight block once for all of them, against eight one-row products
                let x8: Vec<f32> = (0..8 * cols).map(|i| (i % 23) as f32 / 23.0 - 0.5).collect();
                let x8b = gpu.upload("x8", &x8).unwrap();
                let y8 = gpu.output("y8", 8 * rows);
                let mut enc = Recorder::new(gpu);
                let q8 = g.quantize(&mut enc, &x8b, 8).unwrap();
                let rows1: Vec<_> = (0..8).map(|t| gpu.upload("x1", &x8[t * cols..(t + 1) * cols]).unwrap()).collect();
                let q1: Vec<_> = rows1.iter().map(|xb| g.quantize(&mut enc, xb, 1).unwrap()).collect();
                enc.submit();
                let mut best = [f64::MAX; 2];
                for _ in 0..3 {
                    for (k, together) in [true, false].into_iter().enumerate() {
                        let mut enc = Recorder::new(gpu);
                        for _ in 0..reps / 8 {
                            if together {
                                g.record_quantized(&mut enc, &x8b, q8.as_ref(), &y8, 8, None).unwrap();
                            } else {
                                for (xb, q) in rows1.iter().zip(&q1) {
                                    g.record_quantized(&mut enc, xb, q.as_ref(), &ys[0], 1, None).unwrap();
                                }
                            }
                        }
                        let cmds = enc.finish();
                        let t = Instant::now();
                        gpu.queue.submit([cmds]);
                        gpu.device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
                        best[k] = best[k].min(t.elapsed().as_secs_f64() / (reps / 8) as f64);
                    }
                }
                println!("{ty} {rows}x{cols}, 8 activation rows: one product {:.3} ms, eight one-row products {:.3} ms ({:.2}x)", best[0] * 1e3, best[1] * 1e3, best[1] / best[0]);
            }
            cpu::matmul(&w, &x);
            let cpu_reps = 10;
            let t = Instant::now();
            for _ in 0..cpu_reps {
                std::hint::black_box(cpu::matmul(&w, &x));
            }
            let cpu_s = t.elapsed().as_secs_f64() / cpu_reps as f64;
            let bytes = w.data.len() as f64;
            println!(
                "{ty} {rows}x{cols} ({:.0} MB): GPU kernel {:.4} ms = {:.1} GB/s (independent products {:.1} GB/s), with quantization {:.4} ms = {:.1} GB/s; CPU backend {:.3} ms = {:.1} GB/s",
                bytes / 1e6,
                gpu_s * 1e3,
                bytes / gpu_s / 1e9,
                bytes / gpu_par_s / 1e9,
                gpu_q_s * 1e3,
                bytes / gpu_q_s / 1e9,
                cpu_s * 1e3,
                bytes / cpu_s / 1e9
            );
        }
    }
}

/// Stacked experts times a batched step's (token, expert) pairs: each pair's product on
/// its own (the expert's weights read once per pair) against the pairs grouped by expert
/// into tiles (read once per tile; the grouping kernel included in the time), for a
/// Mixtral-shaped layer (8 experts of 14336 × 4096, two per token; fewer rows where the
/// stack would not fit one storage buffer) and a Qwen3-30B-A3B-shaped one (128 experts
/// of 768 × 2048, eight per token).
fn expert_products(gpu: &Gpu, reps: usize) {
    use odmoe::compute::gpu::expert_tiles::ExpertTiles;
    use odmoe::compute::gpu::matrix::Experts;
    let grouping = ExpertTiles::new(gpu);
    let reps = (reps / 20).max(2);
    for (ty, experts, rows, cols, per) in [(GgmlType::Q8_0, 8usize, 14336usize, 4096usize, 2usize), (GgmlType::Q4_K, 8, 14336, 4096, 2), (GgmlType::Q4_K, 128, 768, 2048, 8)] {
        // a stack must fit one storage buffer (lavapipe's hold 128 MiB): fewer rows if not
        let mut rows = rows;
        while experts as u64 * odmoe::compute::gpu::matrix::device_bytes(&random_matrix(ty, 16, cols)) * (rows / 16) as u64 > gpu.max_storage_bytes() {
            rows /= 2;
        }
        let ws: Vec<QMatrix> = (0..experts).map(|_| random_matrix(ty, rows, cols)).collect();
        let m = GpuMatrix::stacked(gpu, &ws).unwrap();
        drop(ws);
        for tokens in [4usize, 16, 64] {
            // each token's `per` distinct experts, spread as a router might
            let mut s = 0x2545_F491_4F6C_DD1Du64 ^ tokens as u64;
            let mut ids: Vec<u32> = Vec::with_capacity(tokens * per);
            for _ in 0..tokens {
                let mut mine: Vec<u32> = Vec::new();
                while mine.len() < per {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    let e = (s % experts as u64) as u32;
                    if !mine.contains(&e) {
                        mine.push(e);
                    }
                }
                ids.extend(mine);
            }
            let pairs = ids.len();
            let x: Vec<f32> = (0..tokens * cols).map(|i| (i % 29) as f32 / 29.0 - 0.5).collect();
            let mut enc = Recorder::new(gpu);
            let xb = enc.upload("x", &x).unwrap();
            let ib = enc.upload("ids", bytemuck::cast_slice(&ids)).unwrap();
            let q = m.quantize(&mut enc, &xb, tokens).unwrap();
            let y = enc.output("y", pairs * rows);
            enc.submit();
            let mut best = [f64::MAX; 2];
            for _ in 0..3 {
                for (k, tiled) in [false, true].into_iter().enumerate() {
                    let mut enc = Recorder::new(gpu);
                    for _ in 0..reps {
                        let tiles = if tiled { Some(grouping.record(&mut enc, &ib, pairs, experts).unwrap()) } else { None };
                        m.record_quantized(&mut enc, &xb, q.as_ref(), &y, pairs, Some(Experts { ids: &ib, act_div: per, tiles: tiles.as_ref() })).unwrap();
                    }
                    let cmds = enc.finish();
                    let t = Instant::now();
                    gpu.queue.submit([cmds]);
                    gpu.device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
                    best[k] = best[k].min(t.elapsed().as_secs_f64() / reps as f64);
                }
            }
            let mut used = ids.clone();
            used.sort_unstable();
            used.dedup();
            println!(
                "{ty} {experts} experts of {rows}x{cols}, {tokens} tokens x {per} ({pairs} pairs, {} experts used): pair by pair {:.3} ms, grouped {:.3} ms ({:.2}x)",
                used.len(),
                best[0] * 1e3,
                best[1] * 1e3,
                best[0] / best[1]
            );
        }
    }
}

/// Random blocks with a small, finite scale (f16 at the start of each block, and for
/// Q4_K also the mins' scale after it).
fn random_matrix(ty: GgmlType, rows: usize, cols: usize) -> QMatrix {
    let rb = ty.row_bytes(cols as u64).unwrap() as usize;
    let block = ty.type_size();
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut data: Vec<u8> = (0..rows * rb)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    // finite block scales where each format keeps them
    let scales: &[usize] = match ty {
        GgmlType::Q4_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        _ => &[0],
    };
    for b in data.chunks_exact_mut(block) {
        for &at in scales {
            b[at..at + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        }
    }
    QMatrix::new(ty, rows, cols, data.into())
}
