//! GPU GEMV throughput: a Q8_0 4096 × 14336 matrix (Mixtral's FFN shape) times one
//! activation row, repeated, reported as GB/s of weights read — next to the CPU backend's
//! matmul of the same matrix in the same run. On lavapipe (Mesa's CPU Vulkan driver) the
//! GPU figure only shows the kernel runs; on a real GPU compare it to the card's memory
//! bandwidth. `cargo bench --bench gpu_gemv`.

use std::time::Instant;

use odmoe::compute::gpu::gemv_q8_0::GemvQ8_0;
use odmoe::compute::gpu::Gpu;
use odmoe::compute::{cpu, QMatrix};
use odmoe::quant::GgmlType;

fn main() {
    let Some(gpu) = Gpu::open().expect("opening the GPU") else {
        println!("no GPU adapter: nothing to measure");
        return;
    };
    println!("adapter: {}", gpu.describe());
    let (rows, cols) = (14336usize, 4096usize);
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut data = Vec::with_capacity(rows * cols / 32 * 34);
    for _ in 0..rows * cols / 32 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        data.extend(half::f16::from_f32(0.01).to_le_bytes());
        data.extend((0..32).map(|i| (s >> (i % 8 * 8)) as u8));
    }
    let w = QMatrix { ty: GgmlType::Q8_0, rows, cols, data: data.into() };
    let x: Vec<f32> = (0..cols).map(|i| (i % 17) as f32 / 17.0 - 0.5).collect();
    let bytes = w.data.len() as f64;

    let g = GemvQ8_0::new(&gpu, &w).unwrap();
    g.run(&gpu, &x).unwrap(); // warm-up (pipeline compilation)
    let xb = {
        use wgpu::util::DeviceExt;
        gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: bytemuck::cast_slice(&x), usage: wgpu::BufferUsages::STORAGE })
    };
    let y = gpu.device.create_buffer(&wgpu::BufferDescriptor { label: None, size: (rows * 4) as u64, usage: wgpu::BufferUsages::STORAGE, mapped_at_creation: false });
    let reps = 20;
    let t = Instant::now();
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    for _ in 0..reps {
        g.record(&gpu, &mut enc, &xb, &y, 1).unwrap();
    }
    gpu.queue.submit([enc.finish()]);
    gpu.device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let gpu_s = t.elapsed().as_secs_f64() / reps as f64;

    cpu::matmul(&w, &x);
    let t = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(cpu::matmul(&w, &x));
    }
    let cpu_s = t.elapsed().as_secs_f64() / reps as f64;
    println!("Q8_0 {rows}x{cols} ({:.0} MB): GPU {:.3} ms = {:.1} GB/s; CPU backend {:.3} ms = {:.1} GB/s", bytes / 1e6, gpu_s * 1e3, bytes / gpu_s / 1e9, cpu_s * 1e3, bytes / cpu_s / 1e9);
}
