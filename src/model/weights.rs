//! Loading and validating every tensor a model needs, by name and shape, at load time:
//! a missing tensor, a wrong shape or a type the engine cannot compute is an error that
//! names the tensor, before any token is processed.

use super::config::{Arch, Config};
use crate::compute::QMatrix;
use crate::experts::StackedExperts;
use super::source::TensorSource;
use crate::{Error, Result};

/// Attention weights of one layer.
pub enum Attention {
    /// Multi-head attention with grouped-query K/V.
    Standard {
        /// `n_head*hd × n_embd`
        wq: QMatrix,
        /// `n_kv*hd × n_embd`
        wk: QMatrix,
        /// `n_kv*hd_v × n_embd`
        wv: QMatrix,
        /// `n_embd × n_head*hd_v`
        wo: QMatrix,
        /// Biases (qwen2moe).
        bq: Option<Vec<f32>>,
        /// Key bias.
        bk: Option<Vec<f32>>,
        /// Value bias.
        bv: Option<Vec<f32>>,
        /// RMS norm of queries: per head (`hd` long) or over all heads (`n_head*hd`, OLMoE).
        q_norm: Option<Vec<f32>>,
        /// RMS norm of keys, as for queries.
        k_norm: Option<Vec<f32>>,
    },
    /// DeepSeek multi-head latent attention, in the absorbed form llama.cpp uses.
    Mla {
        /// Query down-projection (q-LoRA), or `None` with `wq` holding the full projection.
        wq_a: Option<QMatrix>,
        /// Norm after the query down-projection.
        q_a_norm: Option<Vec<f32>>,
        /// Query up-projection (or the full projection without q-LoRA).
        wq: QMatrix,
        /// `kv_lora + rope × n_embd`: compressed KV and the shared rope key.
        wkv_a: QMatrix,
        /// Norm of the compressed KV.
        kv_a_norm: Vec<f32>,
        /// Per head, `kv_lora × nope`: absorbs the key up-projection into the query.
        wk_b: QMatrix,
        /// Per head, `v_dim × kv_lora`: value up-projection.
        wv_b: QMatrix,
        /// Output projection.
        wo: QMatrix,
    },
}

/// A SwiGLU feed-forward block.
pub struct Mlp {
    /// Gate projection.
    pub gate: QMatrix,
    /// Up projection.
    pub up: QMatrix,
    /// Down projection.
    pub down: QMatrix,
}

/// Feed-forward part of one layer.
pub enum Ffn {
    /// Dense SwiGLU FFN (llama dense layers, DeepSeek leading layers).
    Dense(Mlp),
    /// Routed experts plus optional shared expert.
    Moe {
        /// Router, `n_expert × n_embd`.
        router: QMatrix,
        /// Selection bias (`exp_probs_b`).
        bias: Option<Vec<f32>>,
        /// Shared expert, always applied.
        shared: Option<Mlp>,
        /// Sigmoid gate of the shared expert (qwen2moe), `1 × n_embd`.
        shared_gate: Option<QMatrix>,
    },
}

/// One transformer block.
pub struct Layer {
    /// Norm before attention.
    pub attn_norm: Vec<f32>,
    /// Attention.
    pub attn: Attention,
    /// Norm before the FFN.
    pub ffn_norm: Vec<f32>,
    /// FFN.
    pub ffn: Ffn,
}

/// All resident (non-expert) weights, plus the stacked expert tensors for the expert source.
pub struct Weights {
    /// Token embeddings, `n_vocab × n_embd`.
    pub tok_embd: QMatrix,
    /// Final norm.
    pub output_norm: Vec<f32>,
    /// LM head, `n_vocab × n_embd` (the embeddings when tied).
    pub output: QMatrix,
    /// Blocks.
    pub layers: Vec<Layer>,
    /// Stacked routed experts per layer.
    pub experts: Vec<Option<StackedExperts>>,
}

/// Bytes at the start of each tensor whose values are checked at load.
const CHECKED_BYTES: usize = 64 * 1024;

/// An error if the first rows of a tensor (up to [`CHECKED_BYTES`]) hold a NaN or an
/// infinity: no trained weight does, and a tensor whose type was changed in the header
/// (an F32 tensor marked F16, say) shows it there, where it would otherwise turn every
/// logit into NaN. Looking at the start only keeps loading a huge model fast.
fn check_finite_start(name: &str, ty: crate::quant::GgmlType, cols: usize, data: &[u8]) -> Result<()> {
    let row_bytes = ty.row_bytes(cols as u64).expect("checked by the caller") as usize;
    let rows = (CHECKED_BYTES / row_bytes.max(1)).max(1).min(data.len() / row_bytes.max(1));
    let mut values = vec![0.0f32; rows * cols];
    crate::quant::dequantize(ty, &data[..rows * row_bytes], &mut values);
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::model(format!(
            "tensor {name}: value {} (row {}) is {} as a {ty} tensor: the tensor is damaged or its type in the header is wrong",
            i % cols,
            i / cols,
            values[i]
        ))),
    }
}

struct Loader<'a> {
    g: &'a dyn TensorSource,
}

impl Loader<'_> {
    fn has(&self, name: &str) -> bool {
        self.g.tensor_meta(name).is_some()
    }

    /// A tensor with GGUF dims `dims` (innermost first) as a matrix of `dims[0]` columns.
    fn tensor(&self, name: &str, dims: &[usize]) -> Result<QMatrix> {
        let info = self.g.tensor_meta(name).ok_or_else(|| Error::model(format!("tensor {name} is missing")))?;
        let data = self.g.tensor_bytes(name).ok_or_else(|| Error::model(format!("tensor {name} is missing")))?;
        let got: Vec<usize> = info.dims.iter().map(|&d| d as usize).collect();
        // trailing 1s are equivalent
        let trim = |v: &[usize]| {
            let mut v = v.to_vec();
            while v.len() > 1 && *v.last().unwrap() == 1 {
                v.pop();
            }
            v
        };
        if dims.contains(&0) {
            return Err(Error::model(format!("tensor {name}: expected shape {dims:?} has a zero dimension (check the model's metadata)")));
        }
        if trim(&got) != trim(dims) {
            return Err(Error::model(format!("tensor {name} has shape {got:?}, expected {dims:?}")));
        }
        if !info.ty.is_computable() {
            return Err(Error::model(format!(
                "tensor {name} has type {}, which odmoe cannot compute (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)",
                info.ty
            )));
        }
        let cols = dims[0];
        let rows = dims[1..].iter().product();
        let want = info.ty.row_bytes(cols as u64).map(|rb| rb * rows as u64);
        if want != Some(data.len() as u64) {
            return Err(Error::model(format!("tensor {name}: {} bytes of data for shape {dims:?} of type {}", data.len(), info.ty)));
        }
        check_finite_start(name, info.ty, cols, &data)?;
        Ok(QMatrix::new(info.ty, rows, cols, data))
    }

    fn matrix(&self, name: &str, cols: usize, rows: usize) -> Result<QMatrix> {
        self.tensor(name, &[cols, rows])
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        Ok(self.tensor(name, &[len])?.to_f32())
    }

    fn opt_vector(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
        if self.has(name) {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl Weights {
    /// Packs every matrix with an interleaved layout (Q8_0, Q4_K, Q5_K, Q6_K) for the CPU's
    /// VNNI kernels ([`QMatrix::pack`]; nothing happens on CPUs without them), the stacked
    /// routed experts too when `experts`.
    /// `progress(done, total)` follows the bytes packed (a model's worth can take seconds).
    pub fn pack_for_cpu(&mut self, experts: bool, progress: &dyn Fn(u64, u64)) {
        fn mlp(m: &mut Mlp) -> [&mut QMatrix; 3] {
            [&mut m.gate, &mut m.up, &mut m.down]
        }
        let mut all: Vec<&mut QMatrix> = vec![&mut self.output];
        for l in &mut self.layers {
            match &mut l.attn {
                Attention::Standard { wq, wk, wv, wo, .. } => all.extend([wq, wk, wv, wo]),
                Attention::Mla { wq_a, wq, wkv_a, wk_b, wv_b, wo, .. } => all.extend(wq_a.iter_mut().chain([wq, wkv_a, wk_b, wv_b, wo])),
            }
            match &mut l.ffn {
                Ffn::Dense(m) => all.extend(mlp(m)),
                Ffn::Moe { router, shared, shared_gate, .. } => {
                    all.push(router);
                    all.extend(shared.iter_mut().flat_map(mlp));
                    all.extend(shared_gate.iter_mut());
                }
            }
        }
        if experts {
            all.extend(self.experts.iter_mut().flatten().flat_map(|s| [&mut s.gate, &mut s.up, &mut s.down]));
        }
        if !crate::quant::packing_available() {
            return;
        }
        let total: u64 = all.iter().map(|m| m.data.len() as u64).sum();
        let mut done = 0;
        for m in all {
            m.pack();
            done += m.data.len() as u64;
            progress(done, total);
        }
    }

    /// Bytes of the stacked routed experts held here.
    pub fn stacked_expert_bytes(&self) -> u64 {
        self.experts.iter().flatten().map(|s| (s.gate.data.len() + s.up.data.len() + s.down.data.len()) as u64).sum()
    }

    /// Loads and checks every tensor `cfg` calls for. With `stacked_experts` false the
    /// routed experts are not looked for (they come from an expert store).
    pub fn load(g: &dyn TensorSource, cfg: &Config, stacked_experts: bool) -> Result<Weights> {
        let l = Loader { g };
        let d = cfg.n_embd;
        let tok_embd = l.matrix("token_embd.weight", d, cfg.n_vocab)?;
        let output_norm = l.vector("output_norm.weight", d)?;
        let output = if l.has("output.weight") { l.matrix("output.weight", d, cfg.n_vocab)? } else { tok_embd.clone() };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        let mut experts = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}");
            let attn_norm = l.vector(&p("attn_norm.weight"), d)?;
            let ffn_norm = l.vector(&p("ffn_norm.weight"), d)?;
            let attn = if let Some(m) = &cfg.mla {
                let nh = cfg.n_head;
                let qdim = nh * (m.nope_dim + m.rope_dim);
                let (wq_a, q_a_norm, wq) = match m.q_lora_rank {
                    Some(r) => (
                        Some(l.matrix(&p("attn_q_a.weight"), d, r)?),
                        Some(l.vector(&p("attn_q_a_norm.weight"), r)?),
                        l.matrix(&p("attn_q_b.weight"), r, qdim)?,
                    ),
                    None => (None, None, l.matrix(&p("attn_q.weight"), d, qdim)?),
                };
                if l.has(&p("attn_kv_b.weight")) && !l.has(&p("attn_k_b.weight")) {
                    return Err(Error::model(format!(
                        "{} holds the unsplit attn_kv_b tensor of old GGUFs; re-convert the model with a current llama.cpp converter",
                        p("attn_kv_b.weight")
                    )));
                }
                Attention::Mla {
                    wq_a,
                    q_a_norm,
                    wq,
                    wkv_a: l.matrix(&p("attn_kv_a_mqa.weight"), d, m.kv_lora_rank + m.rope_dim)?,
                    kv_a_norm: l.vector(&p("attn_kv_a_norm.weight"), m.kv_lora_rank)?,
                    wk_b: l.tensor(&p("attn_k_b.weight"), &[m.nope_dim, m.kv_lora_rank, nh])?,
                    wv_b: l.tensor(&p("attn_v_b.weight"), &[m.kv_lora_rank, m.v_dim, nh])?,
                    wo: l.matrix(&p("attn_output.weight"), nh * m.v_dim, d)?,
                }
            } else {
                if l.has(&p("attn_qkv.weight")) {
                    return Err(Error::model(format!("{}: fused QKV tensors are not supported yet", p("attn_qkv.weight"))));
                }
                let (hq, hk, hv) = (cfg.n_head * cfg.head_dim_k, cfg.n_head_kv * cfg.head_dim_k, cfg.n_head_kv * cfg.head_dim_v);
                let norm = |name: &str, per_head: usize, all: usize| -> Result<Option<Vec<f32>>> {
                    match g.tensor_meta(&p(name)) {
                        None => Ok(None),
                        Some(t) if t.dims.first() == Some(&(all as u64)) && all != per_head => l.vector(&p(name), all).map(Some),
                        Some(_) => l.vector(&p(name), per_head).map(Some),
                    }
                };
                Attention::Standard {
                    wq: l.matrix(&p("attn_q.weight"), d, hq)?,
                    wk: l.matrix(&p("attn_k.weight"), d, hk)?,
                    wv: l.matrix(&p("attn_v.weight"), d, hv)?,
                    wo: l.matrix(&p("attn_output.weight"), cfg.n_head * cfg.head_dim_v, d)?,
                    bq: l.opt_vector(&p("attn_q.bias"), hq)?,
                    bk: l.opt_vector(&p("attn_k.bias"), hk)?,
                    bv: l.opt_vector(&p("attn_v.bias"), hv)?,
                    q_norm: norm("attn_q_norm.weight", cfg.head_dim_k, hq)?,
                    k_norm: norm("attn_k_norm.weight", cfg.head_dim_k, hk)?,
                }
            };
            let dense = |ff: usize, suffix: &str| -> Result<Mlp> {
                Ok(Mlp {
                    gate: l.matrix(&p(&format!("ffn_gate{suffix}.weight")), d, ff)?,
                    up: l.matrix(&p(&format!("ffn_up{suffix}.weight")), d, ff)?,
                    down: l.matrix(&p(&format!("ffn_down{suffix}.weight")), ff, d)?,
                })
            };
            let (ffn, stack) = match &cfg.moe {
                Some(m) if i >= m.n_dense_lead => {
                    let (e, ff) = (m.n_expert, m.n_ff_exp);
                    if l.has(&p("ffn_gate_up_exps.weight")) {
                        return Err(Error::model(format!("{}: merged gate/up expert tensors are not supported yet", p("ffn_gate_up_exps.weight"))));
                    }
                    let stack = if stacked_experts {
                        let gate = l.tensor(&p("ffn_gate_exps.weight"), &[d, ff, e])?;
                        let up = l.tensor(&p("ffn_up_exps.weight"), &[d, ff, e])?;
                        let down = l.tensor(&p("ffn_down_exps.weight"), &[ff, d, e])?;
                        Some(StackedExperts { gate, up, down, n_expert: e })
                    } else {
                        None
                    };
                    let shared = if m.n_ff_shexp > 0 { Some(dense(m.n_ff_shexp, "_shexp")?) } else { None };
                    let shared_gate = if cfg.arch == Arch::Qwen2Moe && l.has(&p("ffn_gate_inp_shexp.weight")) {
                        Some(l.tensor(&p("ffn_gate_inp_shexp.weight"), &[d])?)
                    } else {
                        None
                    };
                    (
                        Ffn::Moe {
                            router: l.matrix(&p("ffn_gate_inp.weight"), d, e)?,
                            bias: l.opt_vector(&p("exp_probs_b.bias"), e)?,
                            shared,
                            shared_gate,
                        },
                        stack,
                    )
                }
                _ => {
                    if cfg.n_ff == 0 {
                        return Err(Error::model(format!("layer {i} is dense but feed_forward_length is missing")));
                    }
                    (Ffn::Dense(dense(cfg.n_ff, "")?), None)
                }
            };
            layers.push(Layer { attn_norm, attn, ffn_norm, ffn });
            experts.push(stack);
        }
        Ok(Weights { tok_embd, output_norm, output, layers, experts })
    }
}
