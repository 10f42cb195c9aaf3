//! A compiled WGSL kernel and the boilerplate of running it: every kernel here binds its
//! storage buffers at 0, 1, 2, … in order and a uniform of `u32` sizes after them
//! (recorded through a [`Recorder`]).

use super::recorder::Recorder;
use super::Gpu;
use crate::Result;

/// A compute pipeline built from one entry point of a WGSL source.
pub struct Kernel {
    name: &'static str,
    pipeline: wgpu::ComputePipeline,
}

/// Workgroups per dispatch dimension that every WebGPU device allows.
pub const MAX_GROUPS: u32 = 65535;

/// `source` with its line `const NAME: bool = false;` turned to `true`, made once per
/// `cell`: one WGSL file that serves two formats (BF16 beside F16, Q5_K beside Q4_K).
pub(super) fn with_switch(cell: &'static std::sync::OnceLock<String>, source: &'static str, name: &str) -> &'static str {
    cell.get_or_init(|| {
        let off = format!("const {name}: bool = false;");
        assert!(source.contains(&off), "the kernel source declares its {name} switch");
        source.replace(&off, &format!("const {name}: bool = true;"))
    })
}

/// `groups` workgroups as an (x, y) grid within the per-dimension limit; a kernel finds
/// its linear index as `x + y · (the returned x)` and ignores indices past `groups`.
pub fn grid(groups: usize) -> (usize, usize) {
    let max = MAX_GROUPS as usize;
    if groups <= max {
        (groups.max(1), 1)
    } else {
        (max, groups.div_ceil(max))
    }
}

impl Kernel {
    /// Compiles entry point `entry` of `source`.
    pub fn new(gpu: &Gpu, name: &'static str, source: &str, entry: &'static str) -> Kernel {
        gpu.note_compiled(name, source, entry);
        let module = gpu.device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(name), source: wgpu::ShaderSource::Wgsl(source.into()) });
        let pipeline = gpu.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        Kernel { name, pipeline }
    }

    /// The kernel's name, for errors and labels.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The compiled pipeline.
    pub fn pipeline(&self) -> &wgpu::ComputePipeline {
        &self.pipeline
    }

    /// Records one dispatch of `groups` workgroups over `buffers` (bindings 0..) and a
    /// uniform holding `dims` (the next binding).
    pub fn record(&self, rec: &mut Recorder, buffers: &[&wgpu::Buffer], dims: &[u32], groups: [u32; 3]) -> Result<()> {
        let bound: Vec<(u32, &wgpu::Buffer)> = buffers.iter().enumerate().map(|(i, b)| (i as u32, *b)).collect();
        self.record_bound(rec, &bound, buffers.len() as u32, dims, groups)
    }

    /// Like [`Kernel::record`] with the bindings named: for entry points of a shared
    /// source that use only some of its bindings (the others are not in their layout).
    pub fn record_bound(&self, rec: &mut Recorder, buffers: &[(u32, &wgpu::Buffer)], uniform_binding: u32, dims: &[u32], groups: [u32; 3]) -> Result<()> {
        rec.dispatch(self, buffers, uniform_binding, dims, groups)
    }
}
