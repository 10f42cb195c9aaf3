//! A compiled WGSL kernel and the boilerplate of running it: every kernel here binds its
//! storage buffers at 0, 1, 2, … in order and a uniform of `u32` sizes after them.

use super::Gpu;
use crate::{Error, Result};

/// A compute pipeline built from one entry point of a WGSL source.
pub struct Kernel {
    name: &'static str,
    pipeline: wgpu::ComputePipeline,
}

/// Workgroups per dispatch dimension that every WebGPU device allows.
pub const MAX_GROUPS: u32 = 65535;

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
    pub fn new(gpu: &Gpu, name: &'static str, source: &'static str, entry: &'static str) -> Kernel {
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

    /// Records one dispatch of `groups` workgroups over `buffers` (bindings 0..) and a
    /// uniform holding `dims` (the next binding).
    pub fn record(&self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder, buffers: &[&wgpu::Buffer], dims: &[u32], groups: [u32; 3]) -> Result<()> {
        let bound: Vec<(u32, &wgpu::Buffer)> = buffers.iter().enumerate().map(|(i, b)| (i as u32, *b)).collect();
        self.record_bound(gpu, enc, &bound, buffers.len() as u32, dims, groups)
    }

    /// Like [`Kernel::record`] with the bindings named: for entry points of a shared
    /// source that use only some of its bindings (the others are not in their layout).
    pub fn record_bound(&self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder, buffers: &[(u32, &wgpu::Buffer)], uniform_binding: u32, dims: &[u32], groups: [u32; 3]) -> Result<()> {
        use wgpu::util::DeviceExt;
        if groups.iter().any(|&g| g > MAX_GROUPS) {
            return Err(Error::Gpu(format!("{}: {groups:?} workgroups exceed {MAX_GROUPS} in a dimension", self.name)));
        }
        // uniforms are read in 16-byte units: pad the sizes to a multiple of four words
        let mut words = dims.to_vec();
        words.resize(dims.len().div_ceil(4).max(1) * 4, 0);
        let uniform = gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some(self.name), contents: bytemuck::cast_slice(&words), usage: wgpu::BufferUsages::UNIFORM });
        let mut entries: Vec<wgpu::BindGroupEntry> = buffers.iter().map(|(i, b)| wgpu::BindGroupEntry { binding: *i, resource: b.as_entire_binding() }).collect();
        entries.push(wgpu::BindGroupEntry { binding: uniform_binding, resource: uniform.as_entire_binding() });
        let bind = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some(self.name), layout: &self.pipeline.get_bind_group_layout(0), entries: &entries });
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(self.name), timestamp_writes: None });
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        Ok(())
    }
}
