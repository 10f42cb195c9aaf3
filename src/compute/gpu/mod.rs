//! The wgpu backend (Vulkan on Linux, Metal on Macs, DX12 on Windows): a device with the
//! adapter's real limits, and WGSL kernels, each in `shaders/NAME.wgsl` with its dispatch,
//! a CPU reference and a GPU-vs-CPU test in `NAME.rs` here.
//!
//! Kernels: activation quantization ([`quantize`]) and quantized matrix products, plain
//! or over a stack of experts picked by id ([`matrix`], [`gemv_f16`], [`gemv_q8_0`], [`gemv_q2_k`],
//! [`gemv_q3_k`], [`gemv_q4_k`], [`gemv_q5_k`], [`gemv_q6_k`]; the pairs of a batched step
//! grouped by expert for them, [`expert_tiles`]), RMS norm ([`rms_norm`]), rope from host-computed angles ([`rope`]),
//! causal grouped-query attention over a KV cache ([`attention`]), routing ([`route`]),
//! residual add and SwiGLU ([`elementwise`]) and the MoE combine ([`moe_combine`]).
//! Commands are recorded through a [`recorder::Recorder`]. The forward pass that uses
//! them is `crate::model::GpuModel`. Not here yet: latent attention, the other block
//! formats, experts read from disk straight into device slots.

pub mod attention;
pub mod copy_rows;
pub mod elementwise;
pub mod expert_tiles;
pub mod gemv_f16;
pub mod half_rows;
pub mod gemv_q2_k;
pub mod gemv_q3_k;
pub mod gemv_q4_k;
pub mod gemv_q5_k;
pub mod gemv_q6_k;
pub mod gemv_q8_0;
pub mod kernel;
pub mod lane_layout;
pub mod matrix;
pub mod moe_combine;
pub mod quantize;
pub mod recorder;
pub mod route;
pub mod rms_norm;
pub mod rope;

use crate::{Error, Result};

/// What kind of adapter a [`Gpu`] is (discrete, integrated, a software rasterizer, …).
pub use wgpu::DeviceType;

/// An opened GPU: its device and queue, and what the adapter is.
pub struct Gpu {
    /// The logical device (owns buffers and pipelines).
    pub device: wgpu::Device,
    /// Where command buffers are submitted.
    pub queue: wgpu::Queue,
    /// Adapter name, backend and type, for logs.
    pub info: wgpu::AdapterInfo,
    /// Compiled kernels by name: every matrix of a format shares one pipeline.
    kernels: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<kernel::Kernel>>>,
    /// A one-word buffer for bindings a dispatch does not use (the expert ids of a plain
    /// matrix product).
    pub(crate) zero_word: wgpu::Buffer,
    /// Uniform buffers by content: a kernel's sizes repeat every step, so their buffers
    /// are made once.
    uniforms: std::sync::Mutex<std::collections::HashMap<Vec<u32>, wgpu::Buffer>>,
    /// The largest buffer a kernel may bind as storage (the device's limits, read once).
    max_storage_bytes: u64,
    /// The smallest subgroup the adapter runs, where kernels may use subgroup
    /// operations ([`Gpu::subgroup_size`]); 0 where they may not.
    subgroup_size: u32,
    /// Every kernel compiled on this device: name, WGSL source and entry point
    /// ([`Gpu::compiled_kernels`]).
    compiled: std::sync::Mutex<Vec<CompiledKernel>>,
}

/// A kernel as it was compiled: what checks for other platforms translate
/// (`tests/gpu_shaders.rs` turns each into Metal Shading Language).
#[derive(Clone, Debug)]
pub struct CompiledKernel {
    /// The kernel's name (its variant: format, lanes, rows per lane, subgroup sums).
    pub name: String,
    /// The WGSL source, as assembled (shared parts and switches applied).
    pub source: String,
    /// The entry point.
    pub entry: String,
}

/// Distinct uniform contents kept at most (attention's change with the context length).
const MAX_UNIFORMS: usize = 1 << 16;

impl Gpu {
    /// Opens the best adapter (a discrete GPU before an integrated one before a software
    /// rasterizer) with its own limits rather than wgpu's defaults (256 MiB buffers, 128
    /// MiB storage bindings), so large weight matrices fit. `Ok(None)` when the machine
    /// has no adapter at all.
    pub fn open() -> Result<Option<Gpu>> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let options = wgpu::RequestAdapterOptions { power_preference: wgpu::PowerPreference::HighPerformance, ..Default::default() };
        let Ok(adapter) = pollster::block_on(instance.request_adapter(&options)) else { return Ok(None) };
        // timestamps (for profiling passes) and subgroup operations (row sums without
        // barriers) where the adapter has them, the latter unless ODMOE_NO_SUBGROUPS=1
        // (for a driver whose subgroups misbehave); nothing else optional
        let mut wanted = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP;
        if std::env::var_os("ODMOE_NO_SUBGROUPS").is_some_and(|v| v != "0") {
            wanted.remove(wgpu::Features::SUBGROUP);
        }
        let required_features = adapter.features() & wanted;
        let desc = wgpu::DeviceDescriptor { label: Some("odmoe"), required_limits: adapter.limits(), required_features, ..Default::default() };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| Error::Gpu(format!("{}: cannot open the device: {e}", adapter.get_info().name)))?;
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let zero_word = device.create_buffer(&wgpu::BufferDescriptor { label: Some("zero word"), size: 4, usage, mapped_at_creation: false });
        let limits = device.limits();
        let max_storage_bytes = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        let info = adapter.get_info();
        let mut gpu = Gpu { device, queue, info, kernels: Default::default(), zero_word, uniforms: Default::default(), max_storage_bytes, subgroup_size: 0, compiled: Default::default() };
        if required_features.contains(wgpu::Features::SUBGROUP) && gpu.subgroups_as_assumed()? {
            gpu.subgroup_size = gpu.info.subgroup_min_size;
        }
        Ok(Some(gpu))
    }

    /// Whether the device's subgroups are laid out as the matrix kernels' subgroup sums
    /// assume (`shaders/subgroup_probe.wgsl`); where they are not, the kernels sum in
    /// shared memory only, which gives the same results.
    fn subgroups_as_assumed(&self) -> Result<bool> {
        let probe = kernel::Kernel::new(self, "subgroup_probe", include_str!("../../../shaders/subgroup_probe.wgsl"), "main");
        let bad = self.storage("subgroup probe", &[0u8; 4])?;
        let mut rec = recorder::Recorder::new(self);
        probe.record(&mut rec, &[&bad], &[self.info.subgroup_min_size], [4, 1, 1])?;
        rec.submit();
        Ok(self.read_f32(&bad, 1)?[0].to_bits() == 0)
    }

    /// Every kernel compiled on this device so far, in order (a source compiled under
    /// several names appears under each).
    pub fn compiled_kernels(&self) -> Vec<CompiledKernel> {
        self.compiled.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Notes a kernel as compiled (called by [`kernel::Kernel::new`]).
    pub(crate) fn note_compiled(&self, name: &str, source: &str, entry: &str) {
        self.compiled.lock().unwrap_or_else(|p| p.into_inner()).push(CompiledKernel { name: name.into(), source: source.into(), entry: entry.into() });
    }

    /// The kernel `name` (entry point `entry` of `source`), compiled on first use and
    /// shared afterwards: compiling a pipeline per matrix would cost seconds for a model
    /// with thousands of experts.
    pub(crate) fn kernel(&self, name: &'static str, source: &'static str, entry: &'static str) -> std::sync::Arc<kernel::Kernel> {
        self.kernel_with(name, || source.into(), entry)
    }

    /// [`Gpu::kernel`] for a source made on first use (a variant of a shared source,
    /// named by its variant: a name made once per variant is kept for good, so the set of
    /// variants must be small).
    pub(crate) fn kernel_with(&self, name: &str, source: impl FnOnce() -> String, entry: &'static str) -> std::sync::Arc<kernel::Kernel> {
        let mut kernels = self.kernels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = kernels.get(name) {
            return k.clone();
        }
        let label: &'static str = Box::leak(name.to_string().into_boxed_str());
        kernels.entry(name.to_string()).or_insert_with(|| std::sync::Arc::new(kernel::Kernel::new(self, label, &source(), entry))).clone()
    }

    /// A uniform buffer holding `dims`, zero-padded to whole 16-byte rows and at least
    /// 64 bytes (so a kernel's size struct may have fields a caller leaves at zero),
    /// shared by every dispatch with the same sizes.
    pub(crate) fn uniform(&self, dims: &[u32]) -> wgpu::Buffer {
        use wgpu::util::DeviceExt;
        let mut words = dims.to_vec();
        words.resize(dims.len().div_ceil(4).max(4) * 4, 0);
        let mut cache = self.uniforms.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_UNIFORMS {
            cache.clear();
        }
        cache
            .entry(words)
            .or_insert_with_key(|w| self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some("sizes"), contents: bytemuck::cast_slice(w), usage: wgpu::BufferUsages::UNIFORM }))
            .clone()
    }

    /// The smallest subgroup size of the adapter when kernels may use subgroup
    /// operations (the device has them and lays them out as the kernels assume, checked
    /// when it was opened), else `None`.
    pub fn subgroup_size(&self) -> Option<u32> {
        (self.subgroup_size > 0).then_some(self.subgroup_size)
    }

    /// One line naming the adapter: name, type and backend.
    pub fn describe(&self) -> String {
        format!("{} ({:?}, {:?})", self.info.name, self.info.device_type, self.info.backend)
    }

    /// Bytes of the largest buffer a kernel may bind as storage.
    pub fn max_storage_bytes(&self) -> u64 {
        self.max_storage_bytes
    }

    /// A storage buffer holding `data`, checked against the device's limits.
    pub(crate) fn storage(&self, label: &str, data: &[u8]) -> Result<wgpu::Buffer> {
        use wgpu::util::DeviceExt;
        let max = self.max_storage_bytes;
        if data.len() as u64 > max {
            return Err(Error::Gpu(format!("{label}: {} bytes exceed the device's largest storage buffer ({max} bytes)", data.len())));
        }
        // zero-sized bindings are invalid: keep one word
        let data = if data.is_empty() { &[0u8; 4][..] } else { data };
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        Ok(self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some(label), contents: data, usage }))
    }

    /// An empty storage buffer of `bytes` (filled with `queue.write_buffer`), checked
    /// against the device's limits.
    pub(crate) fn buffer(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        let max = self.max_storage_bytes;
        if bytes > max {
            return Err(Error::Gpu(format!("{label}: {bytes} bytes exceed the device's largest storage buffer ({max} bytes)")));
        }
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size: bytes.max(4), usage, mapped_at_creation: false }))
    }

    /// A storage buffer of `len` f32 values for a kernel to write (and to read back).
    pub fn output(&self, label: &str, len: usize) -> wgpu::Buffer {
        self.output_bytes(label, (len * 4) as u64)
    }

    /// A storage buffer of `bytes` (at least 4) for a kernel to write.
    pub(crate) fn output_bytes(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        self.device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size: bytes.max(4), usage, mapped_at_creation: false })
    }

    /// A storage buffer holding `data` (f32).
    pub fn upload(&self, label: &str, data: &[f32]) -> Result<wgpu::Buffer> {
        self.storage(label, bytemuck::cast_slice(data))
    }

    /// Copies `buf` (`len` f32 values) back to the host, waiting for the queue.
    pub fn read_f32(&self, buf: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        let mut enc = self.device.create_command_encoder(&Default::default());
        let bytes = self.read_bytes(&mut enc, buf, (len * 4) as u64)?;
        Ok(bytemuck::cast_slice::<u8, f32>(&bytes).to_vec())
    }

    /// Submits `enc` with a copy of `bytes` of `buf` appended (leaving `enc` empty) and
    /// returns them, waiting for the queue.
    pub(crate) fn read_bytes(&self, enc: &mut wgpu::CommandEncoder, buf: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor { label: Some("readback"), size: bytes.max(4), usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST, mapped_at_creation: false });
        enc.copy_buffer_to_buffer(buf, 0, &staging, 0, bytes);
        let done = std::mem::replace(enc, self.device.create_command_encoder(&Default::default()));
        self.queue.submit([done.finish()]);
        let slice = staging.slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| drop(tx.send(r)));
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Gpu(format!("waiting for the device: {e}")))?;
        rx.recv().map_err(|_| Error::Gpu("the readback was dropped".into()))?.map_err(|e| Error::Gpu(format!("readback: {e}")))?;
        let view = slice.get_mapped_range().map_err(|e| Error::Gpu(format!("readback: {e}")))?;
        let out = view.to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::Gpu;

    /// The GPU, or `None` after printing why the test is skipped; where
    /// `ODMOE_REQUIRE_GPU` is set (as in CI, which installs lavapipe) a missing adapter
    /// fails the test instead.
    pub fn gpu_or_skip() -> Option<Gpu> {
        let gpu = Gpu::open().expect("opening the GPU");
        if gpu.is_none() {
            let why = "no GPU adapter (on Linux, mesa-vulkan-drivers provides lavapipe)";
            assert!(std::env::var_os("ODMOE_REQUIRE_GPU").is_none(), "{why}");
            eprintln!("skipped: {why}");
        }
        gpu
    }

    /// A `rows × cols` matrix of `ty` with random bytes, except that at each byte offset
    /// of `scales` in every block an f16 scale is written: the given value times
    /// 1..=7 (varying by block), so every block is finite and modest.
    pub fn random_matrix(ty: crate::quant::GgmlType, rows: usize, cols: usize, seed: u64, scales: &[(usize, f32)]) -> crate::compute::QMatrix {
        let block = ty.type_size();
        let mut s = seed | 1;
        let mut data: Vec<u8> = (0..rows * cols / ty.block_size() * block)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect();
        for (i, b) in data.chunks_exact_mut(block).enumerate() {
            for &(at, v) in scales {
                b[at..at + 2].copy_from_slice(&half::f16::from_f32(v * (1 + i % 7) as f32).to_le_bytes());
            }
        }
        crate::compute::QMatrix::new(ty, rows, cols, data.into())
    }

    /// Checks the GPU's product of a random `ty` matrix (block scales at `scales`, see
    /// [`random_matrix`]) with `n` activation rows against the CPU backend's, for each
    /// `(rows, cols, n)`: within 1e-5 of the sum of the terms' magnitudes (the two sum in
    /// different orders).
    pub fn gemv_matches_the_cpu_backend(gpu: &Gpu, ty: crate::quant::GgmlType, shapes: &[(usize, usize, usize)], scales: &[(usize, f32)]) {
        for &(rows, cols, n) in shapes {
            let w = random_matrix(ty, rows, cols, rows as u64 + 5, scales);
            let x = values(n * cols, cols as u64);
            let got = super::matrix::GpuMatrix::new(gpu, &w).unwrap().run(gpu, &x).unwrap();
            let cpu = crate::compute::cpu::matmul(&w, &x);
            let mut row = vec![0.0f32; cols];
            for r in 0..rows {
                crate::quant::dequantize(ty, &w.data[r * w.row_bytes()..(r + 1) * w.row_bytes()], &mut row);
                for t in 0..n {
                    let mag: f64 = row.iter().zip(&x[t * cols..(t + 1) * cols]).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                    let (g, want) = (got[t * rows + r] as f64, cpu[t * rows + r] as f64);
                    assert!((g - want).abs() <= 1e-5 * mag + 1e-6, "{ty} {rows}x{cols} n={n} row {r} token {t}: gpu {g} vs cpu {want} (terms {mag})");
                }
            }
        }
    }

    /// The several-row kernel's outputs for `n` activation rows at once equal the
    /// outputs of each row alone, bit for bit, for each `(rows, cols, n)`.
    pub fn several_rows_match_each_row_alone(gpu: &Gpu, ty: crate::quant::GgmlType, shapes: &[(usize, usize, usize)], scales: &[(usize, f32)]) {
        for &(rows, cols, n) in shapes {
            let w = random_matrix(ty, rows, cols, rows as u64 + 1, scales);
            let x = values(n * cols, 7);
            let m = super::matrix::GpuMatrix::new(gpu, &w).unwrap();
            let together = m.run(gpu, &x).unwrap();
            let alone: Vec<f32> = x.chunks(cols).flat_map(|row| m.run(gpu, row).unwrap()).collect();
            assert_eq!(together, alone, "{ty} {rows}x{cols}, {n} rows");
        }
    }

    /// `n` values in about -2..2, varied by `seed`.
    pub fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n).map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 - 500.0) / 250.0).collect()
    }
}
