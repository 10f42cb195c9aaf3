//! The forward pass on the GPU backend, for checks against the CPU: every position's
//! logits of one prompt (`odmoe logits --backend gpu`).
//!
//! Covers grouped-query attention (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) with F32, Q8_0
//! and Q4_K weights; latent attention (DeepSeek, Kimi) and other block formats are
//! refused with an error saying so. The pass is recorded into command encoders with one
//! readback per MoE layer: the router's logits come back so the CPU can route and fetch
//! the chosen experts through the expert source (the pager included), which are then
//! uploaded. Weights are uploaded on each call; keeping them resident, the expert slab
//! the pager fills, GPU routing and decoding with a GPU KV cache are the next steps.

use std::collections::BTreeMap;

use super::config::Config;
use super::rope::Rotation;
use super::router::route;
use super::weights::{Attention, Ffn, Mlp};
use super::Model;
use crate::compute::gpu::attention::{Attention as GpuAttention, Shape};
use crate::compute::gpu::elementwise::Elementwise;
use crate::compute::gpu::matrix::GpuMatrix;
use crate::compute::gpu::moe_combine::MoeCombine;
use crate::compute::gpu::rms_norm::RmsNorm;
use crate::compute::gpu::rope::Rope;
use crate::compute::gpu::Gpu;
use crate::compute::QMatrix;
use crate::{Error, Result};

struct Kernels {
    norm: RmsNorm,
    ew: Elementwise,
    rope: Rope,
    attn: GpuAttention,
    combine: MoeCombine,
}

/// What a pass needs at hand: the device, its kernels and the encoder being recorded.
struct Pass<'a> {
    gpu: &'a Gpu,
    k: Kernels,
    enc: wgpu::CommandEncoder,
}

impl Pass<'_> {
    fn matmul(&mut self, w: &QMatrix, x: &wgpu::Buffer, n: usize) -> Result<wgpu::Buffer> {
        let y = self.gpu.output("y", n * w.rows);
        GpuMatrix::new(self.gpu, w)?.record(self.gpu, &mut self.enc, x, &y, n)?;
        Ok(y)
    }

    fn copy(&mut self, x: &wgpu::Buffer, len: usize) -> wgpu::Buffer {
        let y = self.gpu.output("copy", len);
        self.enc.copy_buffer_to_buffer(x, 0, &y, 0, (len * 4) as u64);
        y
    }

    fn norm(&mut self, x: &wgpu::Buffer, g: &[f32], len: usize) -> Result<()> {
        let gb = self.gpu.upload("norm", g)?;
        self.k.norm.record(self.gpu, &mut self.enc, x, &gb, len / g.len(), g.len())
    }

    fn mlp(&mut self, m: &Mlp, x: &wgpu::Buffer, n: usize) -> Result<wgpu::Buffer> {
        self.swiglu_ffn(&m.gate, &m.up, &m.down, x, n)
    }

    fn swiglu_ffn(&mut self, gate: &QMatrix, up: &QMatrix, down: &QMatrix, x: &wgpu::Buffer, n: usize) -> Result<wgpu::Buffer> {
        let g = self.matmul(gate, x, n)?;
        let u = self.matmul(up, x, n)?;
        self.k.ew.swiglu(self.gpu, &mut self.enc, &g, &u, n * gate.rows)?;
        self.matmul(down, &g, n)
    }

    /// Submits what is recorded and reads `buf` back.
    fn read(&mut self, buf: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        let enc = std::mem::replace(&mut self.enc, self.gpu.device.create_command_encoder(&Default::default()));
        self.gpu.queue.submit([enc.finish()]);
        self.gpu.read_f32(buf, len)
    }
}

impl Model {
    /// Every position's logits (`n × n_vocab`) for `tokens` from the start of a sequence,
    /// computed on `gpu`.
    pub fn logits_gpu(&self, gpu: &Gpu, tokens: &[u32]) -> Result<Vec<f32>> {
        let cfg: &Config = &self.config;
        if tokens.is_empty() {
            return Err(Error::Invalid("no tokens to process".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.n_vocab) {
            return Err(Error::Invalid(format!("token id {bad} is out of range (vocabulary has {} tokens)", cfg.n_vocab)));
        }
        if cfg.mla.is_some() {
            return Err(Error::Gpu("latent attention (DeepSeek, Kimi) is not on the GPU backend yet".into()));
        }
        let (n, d) = (tokens.len(), cfg.n_embd);
        let k = Kernels { norm: RmsNorm::new(gpu, cfg.rms_eps), ew: Elementwise::new(gpu), rope: Rope::new(gpu), attn: GpuAttention::new(gpu), combine: MoeCombine::new(gpu) };
        let mut p = Pass { gpu, k, enc: gpu.device.create_command_encoder(&Default::default()) };
        let mut xh = Vec::with_capacity(n * d);
        for &t in tokens {
            xh.extend(self.weights.tok_embd.row_f32(t as usize));
        }
        let x = gpu.upload("x", &xh)?;
        let rot: Vec<Rotation> = (0..n).map(|t| Rotation::new(&cfg.rope, t)).collect();
        let cs = gpu.upload("rope", &Rope::table(&rot))?;
        let (nh, nkv, hd, hdv) = (cfg.n_head, cfg.n_head_kv, cfg.head_dim_k, cfg.head_dim_v);

        for (l, layer) in self.weights.layers.iter().enumerate() {
            let Attention::Standard { wq, wk, wv, wo, bq, bk, bv, q_norm, k_norm } = &layer.attn else {
                return Err(Error::Gpu("latent attention is not on the GPU backend yet".into()));
            };
            let h = p.copy(&x, n * d);
            p.norm(&h, &layer.attn_norm, n * d)?;
            let q = p.matmul(wq, &h, n)?;
            let kb = p.matmul(wk, &h, n)?;
            let vb = p.matmul(wv, &h, n)?;
            for (buf, bias, len) in [(&q, bq, n * nh * hd), (&kb, bk, n * nkv * hd), (&vb, bv, n * nkv * hdv)] {
                if let Some(b) = bias {
                    let bb = gpu.upload("bias", b)?;
                    p.k.ew.add_row(gpu, &mut p.enc, buf, &bb, len, b.len())?;
                }
            }
            if let Some(g) = q_norm {
                p.norm(&q, g, n * nh * hd)?;
            }
            if let Some(g) = k_norm {
                p.norm(&kb, g, n * nkv * hd)?;
            }
            p.k.rope.record(gpu, &mut p.enc, &q, &cs, &rot, nh, hd)?;
            p.k.rope.record(gpu, &mut p.enc, &kb, &cs, &rot, nkv, hd)?;
            let (scratch, att) = (gpu.output("scores", n * nh * n), gpu.output("attended", n * nh * hdv));
            let shape = Shape { n, heads: nh, kv_heads: nkv, head_dim: hd, value_dim: hdv, pos0: 0, scale: cfg.kq_scale };
            p.k.attn.record(gpu, &mut p.enc, shape, &q, &kb, &vb, &scratch, &att)?;
            let a = p.matmul(wo, &att, n)?;
            p.k.ew.add(gpu, &mut p.enc, &x, &a, n * d)?;

            let h = p.copy(&x, n * d);
            p.norm(&h, &layer.ffn_norm, n * d)?;
            let out = match &layer.ffn {
                Ffn::Dense(m) => p.mlp(m, &h, n)?,
                Ffn::Moe { router, bias, shared, shared_gate } => {
                    let moe = cfg.moe.as_ref().expect("MoE config");
                    let lb = p.matmul(router, &h, n)?;
                    let logits = p.read(&lb, n * moe.n_expert)?;
                    // tokens by expert, each expert fetched once, as the CPU pass does
                    let mut by_expert: BTreeMap<usize, Vec<(u32, f32)>> = BTreeMap::new();
                    for t in 0..n {
                        let r = route(moe, &logits[t * moe.n_expert..(t + 1) * moe.n_expert], bias.as_deref());
                        for (&e, &w) in r.ids.iter().zip(&r.weights) {
                            by_expert.entry(e).or_default().push((t as u32, w));
                        }
                    }
                    let ids: Vec<usize> = by_expert.keys().copied().collect();
                    let fetched = self.experts.experts(l, &ids)?;
                    let out = gpu.output("ffn out", n * d);
                    for (toks, w) in by_expert.values().zip(&fetched) {
                        let m = toks.len();
                        let xe = gpu.output("expert in", m * d);
                        for (i, &(t, _)) in toks.iter().enumerate() {
                            p.enc.copy_buffer_to_buffer(&h, (t as usize * d * 4) as u64, &xe, (i * d * 4) as u64, (d * 4) as u64);
                        }
                        let y = p.swiglu_ffn(&w.gate, &w.up, &w.down, &xe, m)?;
                        let idx: Vec<u32> = toks.iter().map(|&(t, _)| t).collect();
                        let wts: Vec<f32> = toks.iter().map(|&(_, w)| w).collect();
                        let (ib, wb) = (gpu.storage("expert tokens", bytemuck::cast_slice(&idx))?, gpu.upload("expert weights", &wts)?);
                        p.k.combine.scatter_add(gpu, &mut p.enc, &out, &y, &ib, &wb, m, d)?;
                    }
                    if let Some(s) = shared {
                        let ys = p.mlp(s, &h, n)?;
                        match shared_gate {
                            Some(g) => {
                                let gl = p.matmul(g, &h, n)?;
                                p.k.combine.gated_add(gpu, &mut p.enc, &out, &ys, &gl, n, d)?;
                            }
                            None => p.k.ew.add(gpu, &mut p.enc, &out, &ys, n * d)?,
                        }
                    }
                    out
                }
            };
            p.k.ew.add(gpu, &mut p.enc, &x, &out, n * d)?;
        }
        p.norm(&x, &self.weights.output_norm, n * d)?;
        let logits = p.matmul(&self.weights.output, &x, n)?;
        p.read(&logits, n * cfg.n_vocab)
    }
}
