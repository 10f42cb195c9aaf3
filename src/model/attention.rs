//! Causal self-attention over the KV cache: grouped-query attention and DeepSeek's
//! multi-head latent attention (absorbed form: the cache holds the compressed KV and the
//! shared rope key, `kv_lora + rope` floats per token and layer).

#![allow(clippy::needless_range_loop)] // index loops mirror the block layouts

use super::config::Config;
use super::rope::Rotation;
use super::weights::Attention;
use crate::compute::cpu::{add_assign, dot, matmul, rms_norm, softmax};

/// One layer's cached keys and values.
pub enum LayerCache {
    /// Keys and values, `n_head_kv * head_dim` floats per token each.
    Standard {
        /// Keys.
        k: Vec<f32>,
        /// Values.
        v: Vec<f32>,
    },
    /// Normalized compressed KV followed by the roped key, per token.
    Latent {
        /// `kv_lora + rope` floats per token.
        c: Vec<f32>,
    },
}

/// Runs attention for `n` new tokens (`h`, normalized hidden states, `n × n_embd`) whose
/// positions are `pos0..pos0+n`, appending them to `cache`. Returns `n × n_embd`.
pub fn forward(cfg: &Config, w: &Attention, h: &[f32], pos0: usize, rot: &[Rotation], cache: &mut LayerCache) -> Vec<f32> {
    let n = h.len() / cfg.n_embd;
    match (w, cache) {
        (Attention::Standard { wq, wk, wv, wo, bq, bk, bv, q_norm, k_norm }, LayerCache::Standard { k: kc, v: vc }) => {
            let (hd, hdv, nh, nkv) = (cfg.head_dim_k, cfg.head_dim_v, cfg.n_head, cfg.n_head_kv);
            let mut q = matmul(wq, h);
            let mut k = matmul(wk, h);
            let mut v = matmul(wv, h);
            for (x, b) in [(&mut q, bq), (&mut k, bk), (&mut v, bv)] {
                if let Some(b) = b {
                    for row in x.chunks_exact_mut(b.len()) {
                        add_assign(row, b);
                    }
                }
            }
            if let Some(g) = q_norm {
                rms_norm(&mut q, g, cfg.rms_eps);
            }
            if let Some(g) = k_norm {
                rms_norm(&mut k, g, cfg.rms_eps);
            }
            for t in 0..n {
                for hq in q[t * nh * hd..(t + 1) * nh * hd].chunks_exact_mut(hd) {
                    rot[t].apply(hq);
                }
                for hk in k[t * nkv * hd..(t + 1) * nkv * hd].chunks_exact_mut(hd) {
                    rot[t].apply(hk);
                }
            }
            kc.extend_from_slice(&k);
            vc.extend_from_slice(&v);
            let group = nh / nkv;
            let mut out = vec![0.0f32; n * nh * hdv];
            let mut scores = Vec::new();
            for t in 0..n {
                let len = pos0 + t + 1;
                for head in 0..nh {
                    let kvh = head / group;
                    let qh = &q[(t * nh + head) * hd..(t * nh + head + 1) * hd];
                    scores.clear();
                    for s in 0..len {
                        let ks = &kc[(s * nkv + kvh) * hd..(s * nkv + kvh + 1) * hd];
                        scores.push(dot(qh, ks) * cfg.kq_scale);
                    }
                    softmax(&mut scores);
                    let o = &mut out[(t * nh + head) * hdv..(t * nh + head + 1) * hdv];
                    for (s, &a) in scores.iter().enumerate() {
                        let vs = &vc[(s * nkv + kvh) * hdv..(s * nkv + kvh + 1) * hdv];
                        for (o, v) in o.iter_mut().zip(vs) {
                            *o += a * v;
                        }
                    }
                }
            }
            matmul(wo, &out)
        }
        (Attention::Mla { wq_a, q_a_norm, wq, wkv_a, kv_a_norm, wk_b, wv_b, wo }, LayerCache::Latent { c: cache }) => {
            let m = cfg.mla.as_ref().expect("MLA config");
            let nh = cfg.n_head;
            let (nope, rope, lora, vd) = (m.nope_dim, m.rope_dim, m.kv_lora_rank, m.v_dim);
            let q = match (wq_a, q_a_norm) {
                (Some(a), Some(g)) => {
                    let mut qa = matmul(a, h);
                    rms_norm(&mut qa, g, cfg.rms_eps);
                    matmul(wq, &qa)
                }
                _ => matmul(wq, h),
            };
            let kv = matmul(wkv_a, h);
            let width = lora + rope;
            for t in 0..n {
                let row = &kv[t * width..(t + 1) * width];
                let mut c = row[..lora].to_vec();
                rms_norm(&mut c, kv_a_norm, cfg.rms_eps);
                let mut kpe = row[lora..].to_vec();
                rot[t].apply(&mut kpe);
                cache.extend_from_slice(&c);
                cache.extend_from_slice(&kpe);
            }
            let mut out = vec![0.0f32; n * nh * vd];
            let mut scores = Vec::new();
            for t in 0..n {
                let len = pos0 + t + 1;
                for head in 0..nh {
                    let qh = &q[(t * nh + head) * (nope + rope)..(t * nh + head + 1) * (nope + rope)];
                    let q_abs = matmul(&wk_b.slice_rows(head * lora, (head + 1) * lora), &qh[..nope]);
                    let mut q_pe = qh[nope..].to_vec();
                    rot[t].apply(&mut q_pe);
                    scores.clear();
                    for s in 0..len {
                        let cs = &cache[s * width..(s + 1) * width];
                        scores.push((dot(&q_abs, &cs[..lora]) + dot(&q_pe, &cs[lora..])) * cfg.kq_scale);
                    }
                    softmax(&mut scores);
                    let mut lat = vec![0.0f32; lora];
                    for (s, &a) in scores.iter().enumerate() {
                        for (o, c) in lat.iter_mut().zip(&cache[s * width..s * width + lora]) {
                            *o += a * c;
                        }
                    }
                    let o = matmul(&wv_b.slice_rows(head * vd, (head + 1) * vd), &lat);
                    out[(t * nh + head) * vd..(t * nh + head + 1) * vd].copy_from_slice(&o);
                }
            }
            matmul(wo, &out)
        }
        _ => unreachable!("cache kind matches the attention kind"),
    }
}
