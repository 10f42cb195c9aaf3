//! Recording GPU work. A [`Recorder`] gathers dispatches and copies into one command
//! encoder and keeps consecutive dispatches in one compute pass (wgpu inserts the
//! barriers between dispatches that share a buffer), so a forward pass of a few thousand
//! dispatches costs little more to record than to describe.
//!
//! With a [`Workspace`] — owned by a model and reused every step — the buffers a step
//! asks for ([`Recorder::output`], [`Recorder::upload`]) come back from the previous
//! step in the same order, and so do the bind groups that name them: after the first
//! step nothing is allocated and no bind group is created. Without one, every output is
//! a fresh buffer (tests, one-off products).
//!
//! Guarantee: a workspace buffer is handed out again only after [`Workspace::recycle`],
//! which the owner calls once the step's commands are submitted; the device runs
//! submissions in order, so a later step's writes never overtake an earlier step's reads.

use std::collections::HashMap;

use super::kernel::Kernel;
use super::Gpu;
use crate::{Error, Result};

/// Buffers and bind groups kept from one step to the next.
#[derive(Default)]
pub struct Workspace {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    used: Vec<(u64, wgpu::Buffer)>,
    binds: HashMap<BindKey, wgpu::BindGroup>,
    /// Buffers that live as long as the workspace's owner (its weights, and the
    /// workspace's own): only bind groups naming nothing else are kept, so a kept bind
    /// group never holds on to a buffer someone else meant to free (a KV cache, an
    /// evicted expert).
    pinned: std::collections::HashSet<wgpu::Buffer>,
}

/// A bind group's identity: the pipeline and every (binding, buffer) it names. The key
/// holds the buffers, so a buffer in it is never freed and its identity never reused.
type BindKey = (wgpu::ComputePipeline, Vec<(u32, wgpu::Buffer)>);

/// Bind groups kept at most; beyond it the cache starts afresh (attention's sizes change
/// with the context length, so its bind groups are new every step).
const MAX_BINDS: usize = 1 << 14;

impl Workspace {
    /// An empty workspace.
    pub fn new() -> Workspace {
        Workspace::default()
    }

    /// Marks `buf` as living as long as the workspace's owner.
    pub fn pin(&mut self, buf: &wgpu::Buffer) {
        self.pinned.insert(buf.clone());
    }

    fn take(&mut self, gpu: &Gpu, label: &str, bytes: u64) -> wgpu::Buffer {
        // sizes go up to a power of two (where the device allows it), so steps of
        // different batch sizes share buffers (and bind groups) instead of each size
        // keeping a set of its own: at most twice the bytes, a few sizes in all
        let rounded = bytes.max(4).next_power_of_two();
        let bytes = if rounded <= gpu.max_storage_bytes() { rounded } else { bytes.max(4) };
        let buf = match self.free.get_mut(&bytes).and_then(Vec::pop) {
            Some(b) => b,
            None => {
                let b = gpu.output_bytes(label, bytes);
                self.pinned.insert(b.clone());
                b
            }
        };
        self.used.push((bytes, buf.clone()));
        buf
    }

    /// Makes every buffer handed out since the last call available again, in the same
    /// order; call it after submitting the commands that use them.
    pub fn recycle(&mut self) {
        for (bytes, buf) in self.used.drain(..).rev() {
            self.free.entry(bytes).or_default().push(buf);
        }
    }
}

/// Commands being recorded for one GPU.
pub struct Recorder<'g> {
    // the pass borrows the encoder's recording: declared first, so dropped first
    pass: Option<wgpu::ComputePass<'static>>,
    enc: wgpu::CommandEncoder,
    gpu: &'g Gpu,
    ws: Option<&'g mut Workspace>,
    profile: Option<Profile>,
}

/// Timestamps around each dispatch while profiling: every dispatch then gets its own
/// compute pass, whose end time is written to the query set.
struct Profile {
    set: wgpu::QuerySet,
    names: Vec<&'static str>,
}

/// Queries in a profile's set (wgpu's limit): dispatches beyond it are not timed.
const PROFILE_QUERIES: u32 = 4096;

/// Device time per kernel over a profiled recording: (kernel, nanoseconds, dispatches),
/// most time first. A dispatch's time runs from the end of the one before it (or the
/// start of the first) to its own end, so it includes the wait for the dispatches it
/// depends on and any copies or submissions in between.
pub type ProfileReport = Vec<(&'static str, f64, usize)>;

impl<'g> Recorder<'g> {
    /// A recorder whose outputs are fresh buffers.
    pub fn new(gpu: &'g Gpu) -> Recorder<'g> {
        Recorder { pass: None, enc: gpu.device.create_command_encoder(&Default::default()), gpu, ws: None, profile: None }
    }

    /// A recorder that takes buffers and bind groups from `ws`.
    pub fn with_workspace(gpu: &'g Gpu, ws: &'g mut Workspace) -> Recorder<'g> {
        Recorder { pass: None, enc: gpu.device.create_command_encoder(&Default::default()), gpu, ws: Some(ws), profile: None }
    }

    /// Times every dispatch recorded from now on (the first 4095); false, changing
    /// nothing, where the device has no timestamp queries.
    pub fn start_profile(&mut self) -> bool {
        if !self.gpu.device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return false;
        }
        let set = self.gpu.device.create_query_set(&wgpu::QuerySetDescriptor { label: Some("profile"), ty: wgpu::QueryType::Timestamp, count: PROFILE_QUERIES });
        self.profile = Some(Profile { set, names: Vec::new() });
        true
    }

    /// Submits what is recorded and returns the device time of each kernel since
    /// [`Recorder::start_profile`] (waiting for the device); `None` when not profiling.
    pub fn finish_profile(&mut self) -> Result<Option<ProfileReport>> {
        let Some(p) = self.profile.take() else { return Ok(None) };
        self.pass = None;
        let n = p.names.len() as u32 + 1;
        if p.names.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let bytes = n as u64 * 8;
        let resolved = self.gpu.device.create_buffer(&wgpu::BufferDescriptor { label: Some("timestamps"), size: bytes, usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC, mapped_at_creation: false });
        self.enc.resolve_query_set(&p.set, 0..n, &resolved, 0);
        let stamps = self.gpu.read_bytes(&mut self.enc, &resolved, bytes)?;
        let ticks: Vec<u64> = stamps.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("eight bytes"))).collect();
        let period = self.gpu.queue.get_timestamp_period() as f64;
        let mut by_kernel: HashMap<&'static str, (f64, usize)> = HashMap::new();
        for (i, name) in p.names.iter().enumerate() {
            let e = by_kernel.entry(name).or_default();
            e.0 += ticks[i + 1].saturating_sub(ticks[i]) as f64 * period;
            e.1 += 1;
        }
        let mut report: ProfileReport = by_kernel.into_iter().map(|(k, (ns, c))| (k, ns, c)).collect();
        report.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(Some(report))
    }

    /// The GPU the commands are for.
    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// A buffer of `len` f32 values (or words) for a kernel to write. From a workspace it
    /// holds whatever it held last: kernels that accumulate need [`Recorder::clear`].
    pub fn output(&mut self, label: &str, len: usize) -> wgpu::Buffer {
        match self.ws.as_deref_mut() {
            Some(ws) => ws.take(self.gpu, label, (len * 4) as u64),
            None => self.gpu.output(label, len),
        }
    }

    /// A buffer holding `data`, written before the recorded commands run.
    pub fn upload(&mut self, label: &str, data: &[f32]) -> Result<wgpu::Buffer> {
        if self.ws.is_none() {
            return self.gpu.upload(label, data);
        }
        let buf = self.output(label, data.len());
        if !data.is_empty() {
            self.gpu.queue.write_buffer(&buf, 0, bytemuck::cast_slice(data));
        }
        Ok(buf)
    }

    /// Records a buffer copy (ending the current compute pass).
    pub fn copy(&mut self, src: &wgpu::Buffer, src_offset: u64, dst: &wgpu::Buffer, dst_offset: u64, bytes: u64) {
        self.pass = None;
        self.enc.copy_buffer_to_buffer(src, src_offset, dst, dst_offset, bytes);
    }

    /// Records zeroing `buf` (ending the current compute pass): workspace buffers come
    /// back holding the last step's values, so a kernel that adds into its output needs
    /// this first.
    pub fn clear(&mut self, buf: &wgpu::Buffer) {
        self.pass = None;
        self.enc.clear_buffer(buf, 0, None);
    }

    /// Submits what is recorded so far and starts afresh.
    pub fn submit(&mut self) {
        self.pass = None;
        let enc = std::mem::replace(&mut self.enc, self.gpu.device.create_command_encoder(&Default::default()));
        self.gpu.queue.submit([enc.finish()]);
    }

    /// The recorded commands, for the caller to submit (benchmarks time submission apart
    /// from recording).
    pub fn finish(mut self) -> wgpu::CommandBuffer {
        self.pass = None;
        let enc = std::mem::replace(&mut self.enc, self.gpu.device.create_command_encoder(&Default::default()));
        enc.finish()
    }

    /// Records one dispatch of `kernel` over `buffers` (at their bindings) and a uniform
    /// holding `dims` (at `uniform_binding`).
    pub(crate) fn dispatch(&mut self, kernel: &Kernel, buffers: &[(u32, &wgpu::Buffer)], uniform_binding: u32, dims: &[u32], groups: [u32; 3]) -> Result<()> {
        if groups.iter().any(|&g| g > super::kernel::MAX_GROUPS) {
            return Err(Error::Gpu(format!("{}: {groups:?} workgroups exceed {} in a dimension", kernel.name(), super::kernel::MAX_GROUPS)));
        }
        let uniform = self.gpu.uniform(dims);
        let gpu = self.gpu;
        let make = || {
            let mut entries: Vec<wgpu::BindGroupEntry> = buffers.iter().map(|(i, b)| wgpu::BindGroupEntry { binding: *i, resource: b.as_entire_binding() }).collect();
            entries.push(wgpu::BindGroupEntry { binding: uniform_binding, resource: uniform.as_entire_binding() });
            gpu.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some(kernel.name()), layout: &kernel.pipeline().get_bind_group_layout(0), entries: &entries })
        };
        let bind = match self.ws.as_deref_mut() {
            Some(ws) if buffers.iter().all(|(_, b)| ws.pinned.contains(*b)) => {
                let mut named: Vec<(u32, wgpu::Buffer)> = buffers.iter().map(|(i, b)| (*i, (*b).clone())).collect();
                named.push((uniform_binding, uniform.clone()));
                if ws.binds.len() >= MAX_BINDS {
                    ws.binds.clear();
                }
                ws.binds.entry((kernel.pipeline().clone(), named)).or_insert_with(make).clone()
            }
            _ => make(),
        };
        if let Some(p) = self.profile.as_mut().filter(|p| (p.names.len() as u32) < PROFILE_QUERIES - 1) {
            // its own pass, its end time written after the previous dispatch's
            self.pass = None;
            let first = p.names.is_empty();
            let writes = wgpu::ComputePassTimestampWrites { query_set: &p.set, beginning_of_pass_write_index: first.then_some(0), end_of_pass_write_index: Some(p.names.len() as u32 + 1) };
            let mut pass = self.enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(kernel.name()), timestamp_writes: Some(writes) });
            run(&mut pass, kernel, &bind, groups);
            p.names.push(kernel.name());
            return Ok(());
        }
        let enc = &mut self.enc;
        let pass = self.pass.get_or_insert_with(|| enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("odmoe"), timestamp_writes: None }).forget_lifetime());
        run(pass, kernel, &bind, groups);
        Ok(())
    }
}

fn run(pass: &mut wgpu::ComputePass, kernel: &Kernel, bind: &wgpu::BindGroup, groups: [u32; 3]) {
    pass.set_pipeline(kernel.pipeline());
    pass.set_bind_group(0, bind, &[]);
    pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
}
