//! Model hyperparameters, read only from GGUF metadata, with the per-architecture
//! defaults llama.cpp applies where a key is absent.

use crate::gguf::Metadata;
use crate::{Error, Result};

/// The architectures the engine runs (llama.cpp's `general.architecture` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// `llama`: Mixtral (and dense Llama layers).
    Llama,
    /// `qwen2moe`: Qwen1.5-MoE, Qwen2-57B-A14B.
    Qwen2Moe,
    /// `qwen3moe`: Qwen3-30B-A3B, Qwen3-235B-A22B.
    Qwen3Moe,
    /// `olmoe`: OLMoE.
    Olmoe,
    /// `deepseek2`: DeepSeek-V2/V2-Lite/V3/R1, Kimi-K2.
    Deepseek2,
}

impl Arch {
    /// Parses `general.architecture`.
    pub fn from_name(name: &str) -> Result<Arch> {
        Ok(match name {
            "llama" => Arch::Llama,
            "qwen2moe" => Arch::Qwen2Moe,
            "qwen3moe" => Arch::Qwen3Moe,
            "olmoe" => Arch::Olmoe,
            "deepseek2" => Arch::Deepseek2,
            other => {
                return Err(Error::model(format!(
                    "architecture {other:?} is not supported (supported: llama, qwen2moe, qwen3moe, olmoe, deepseek2)"
                )))
            }
        })
    }

    /// The GGUF name.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2Moe => "qwen2moe",
            Arch::Qwen3Moe => "qwen3moe",
            Arch::Olmoe => "olmoe",
            Arch::Deepseek2 => "deepseek2",
        }
    }
}

/// How rotary position embedding pairs dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(x[2i], x[2i+1])` (llama.cpp "norm"; llama, deepseek2).
    Interleaved,
    /// Halves `(x[i], x[i + n/2])` (llama.cpp "neox"; the Qwen family, OLMoE).
    Neox,
}

/// Rotary embedding parameters, including YaRN context extension.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    /// Pairing of dimensions.
    pub style: RopeStyle,
    /// Number of rotated dimensions per head.
    pub n_rot: usize,
    /// Base of the frequencies.
    pub freq_base: f32,
    /// 1 / scaling factor (1 when unscaled).
    pub freq_scale: f32,
    /// YaRN extrapolation mix (1 with YaRN, 0 otherwise).
    pub ext_factor: f32,
    /// Multiplier applied to cos and sin (YaRN's attention factor, all adjustments included).
    pub mscale: f32,
    /// YaRN ramp boundaries.
    pub beta_fast: f32,
    /// YaRN ramp boundaries.
    pub beta_slow: f32,
    /// Context length the model was trained with before extension.
    pub n_ctx_orig: usize,
}

/// How router scores are turned into probabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gating {
    /// Softmax over all experts.
    Softmax,
    /// Independent sigmoid per expert (DeepSeek-V3, Kimi-K2).
    Sigmoid,
}

/// How a group of experts is scored for group-limited routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupScore {
    /// Highest score in the group (DeepSeek-V2 `group_limited_greedy`).
    Max,
    /// Sum of the two highest scores (DeepSeek-V3 `noaux_tc`).
    SumTop2,
}

/// Mixture-of-experts routing and expert sizes.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    /// Routed experts per layer.
    pub n_expert: usize,
    /// Experts used per token.
    pub n_expert_used: usize,
    /// Hidden size of one routed expert.
    pub n_ff_exp: usize,
    /// Probability function.
    pub gating: Gating,
    /// Renormalize the chosen experts' weights to sum to 1.
    pub norm_weights: bool,
    /// Multiply the chosen experts' weights by this (1 = off).
    pub weights_scale: f32,
    /// Expert groups (1 = no group-limited routing).
    pub n_group: usize,
    /// Groups kept per token.
    pub n_group_used: usize,
    /// Group scoring rule.
    pub group_score: GroupScore,
    /// Hidden size of the shared expert(s), 0 if none.
    pub n_ff_shexp: usize,
    /// Leading layers that use a dense FFN instead of experts.
    pub n_dense_lead: usize,
}

/// Multi-head latent attention sizes (deepseek2).
#[derive(Clone, Debug, PartialEq)]
pub struct MlaConfig {
    /// Rank of the query compression, `None` for models without q-LoRA (V2-Lite).
    pub q_lora_rank: Option<usize>,
    /// Rank of the key/value compression (the per-token cache width, with the rope part).
    pub kv_lora_rank: usize,
    /// Per-head key dims without rope.
    pub nope_dim: usize,
    /// Per-head rope dims (shared key).
    pub rope_dim: usize,
    /// Per-head value dims.
    pub v_dim: usize,
}

/// Everything needed to run a model, from metadata alone.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Architecture.
    pub arch: Arch,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention).
    pub n_head_kv: usize,
    /// Per-head query/key size (for MLA: nope + rope).
    pub head_dim_k: usize,
    /// Per-head value size.
    pub head_dim_v: usize,
    /// Training context length.
    pub n_ctx_train: usize,
    /// RMS norm epsilon.
    pub rms_eps: f32,
    /// Hidden size of dense FFN layers (0 if none).
    pub n_ff: usize,
    /// Rotary embedding.
    pub rope: RopeConfig,
    /// Scale of attention scores.
    pub kq_scale: f32,
    /// Expert routing; `None` for a dense model.
    pub moe: Option<MoeConfig>,
    /// MLA sizes for deepseek2.
    pub mla: Option<MlaConfig>,
}

struct Keys<'a> {
    md: &'a Metadata,
    arch: &'a str,
}

impl Keys<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }
    fn opt_usize(&self, k: &str) -> Result<Option<usize>> {
        let key = self.key(k);
        match self.md.get(&key) {
            None => Ok(None),
            Some(v) => {
                // Per-layer arrays (e.g. head_count_kv) are accepted when uniform.
                if let Some(arr) = v.as_array() {
                    let vals: Vec<u64> = arr.iter().filter_map(|x| x.as_u64()).collect();
                    if vals.len() != arr.len() || vals.is_empty() {
                        return Err(Error::model(format!("metadata {key}: expected integers")));
                    }
                    if vals.iter().any(|&x| x != vals[0]) {
                        return Err(Error::model(format!("metadata {key}: per-layer values differ ({vals:?}); not supported")));
                    }
                    return Ok(Some(vals[0] as usize));
                }
                let n = v.as_u64().ok_or_else(|| Error::model(format!("metadata {key}: expected an integer, found {}", v.type_name())))?;
                usize::try_from(n).map(Some).map_err(|_| Error::model(format!("metadata {key}: {n} is too large")))
            }
        }
    }
    fn usize(&self, k: &str) -> Result<usize> {
        self.opt_usize(k)?.ok_or_else(|| Error::model(format!("metadata key {} is missing", self.key(k))))
    }
    fn opt_f32(&self, k: &str) -> Result<Option<f32>> {
        let key = self.key(k);
        match self.md.get(&key) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                // (a NaN or infinite setting poisons every logit downstream)
                Some(x) if (x as f32).is_finite() => Ok(Some(x as f32)),
                Some(x) => Err(Error::model(format!("metadata {key} is {x}, not a finite number"))),
                None => Err(Error::model(format!("metadata {key}: expected a number, found {}", v.type_name()))),
            },
        }
    }

    /// [`Self::opt_f32`] that must also be above zero.
    fn opt_positive_f32(&self, k: &str) -> Result<Option<f32>> {
        match self.opt_f32(k)? {
            Some(x) if x <= 0.0 => Err(Error::model(format!("metadata {} is {x}; it must be above zero", self.key(k)))),
            v => Ok(v),
        }
    }
    fn opt_bool(&self, k: &str) -> Option<bool> {
        self.md.get_bool(&self.key(k))
    }
}

/// Largest sizes accepted from metadata, so a hostile file cannot ask for absurd buffers.
const MAX_DIM: usize = 1 << 20;

impl Config {
    /// Reads the configuration from GGUF metadata.
    pub fn from_metadata(md: &Metadata) -> Result<Config> {
        let arch_name = md
            .get_str("general.architecture")
            .ok_or_else(|| Error::model("metadata key general.architecture is missing"))?;
        let arch = Arch::from_name(arch_name)?;
        let k = Keys { md, arch: arch_name };

        let n_embd = k.usize("embedding_length")?;
        let n_layer = k.usize("block_count")?;
        let n_head = k.usize("attention.head_count")?;
        let n_head_kv = k.opt_usize("attention.head_count_kv")?.unwrap_or(n_head);
        let n_vocab = match k.opt_usize("vocab_size")? {
            Some(v) => v,
            None => md
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .ok_or_else(|| Error::model("vocabulary size unknown: neither {arch}.vocab_size nor tokenizer.ggml.tokens is present"))?,
        };
        for (name, v) in [("embedding_length", n_embd), ("block_count", n_layer), ("attention.head_count", n_head), ("vocab_size", n_vocab)] {
            if v == 0 || v > MAX_DIM * 4 {
                return Err(Error::model(format!("metadata {arch_name}.{name} = {v} is out of range")));
            }
        }
        if n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(Error::model(format!("head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")));
        }
        let rms_eps = k.opt_positive_f32("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5);
        let n_ctx_train = k.opt_usize("context_length")?.unwrap_or(4096);
        let n_ff = k.opt_usize("feed_forward_length")?.unwrap_or(0);

        // MLA (deepseek2)
        let mla = if arch == Arch::Deepseek2 {
            let kv_lora_rank = k.usize("attention.kv_lora_rank")?;
            let q_lora_rank = k.opt_usize("attention.q_lora_rank")?.filter(|&r| r > 0);
            let rope_dim = k.usize("rope.dimension_count")?;
            let head_k = match k.opt_usize("attention.key_length_mla")? {
                Some(v) => v,
                None => {
                    return Err(Error::model(
                        "deepseek2 model without attention.key_length_mla: this is an old GGUF with the unsplit attn_kv_b tensor; re-convert it with a current llama.cpp converter",
                    ))
                }
            };
            let v_dim = k.opt_usize("attention.value_length_mla")?.unwrap_or(head_k - rope_dim);
            if head_k <= rope_dim {
                return Err(Error::model(format!("key_length_mla {head_k} must exceed rope.dimension_count {rope_dim}")));
            }
            Some(MlaConfig { q_lora_rank, kv_lora_rank, nope_dim: head_k - rope_dim, rope_dim, v_dim })
        } else {
            None
        };

        let (head_dim_k, head_dim_v) = match &mla {
            Some(m) => (m.nope_dim + m.rope_dim, m.v_dim),
            None => {
                let hk = k.opt_usize("attention.key_length")?.unwrap_or(n_embd / n_head);
                let hv = k.opt_usize("attention.value_length")?.unwrap_or(hk);
                (hk, hv)
            }
        };
        if head_dim_k == 0 || head_dim_v == 0 || head_dim_k > MAX_DIM || head_dim_v > MAX_DIM {
            return Err(Error::model(format!("head sizes {head_dim_k}/{head_dim_v} are out of range")));
        }

        let rope = Self::rope(&k, arch, head_dim_k, mla.as_ref(), n_ctx_train)?;

        // MoE
        let n_expert = k.opt_usize("expert_count")?.unwrap_or(0);
        let moe = if n_expert > 0 {
            let n_expert_used = k.usize("expert_used_count")?;
            if n_expert_used == 0 || n_expert_used > n_expert {
                return Err(Error::model(format!("expert_used_count {n_expert_used} must be in 1..={n_expert}")));
            }
            let n_ff_exp = match k.opt_usize("expert_feed_forward_length")? {
                Some(v) => v,
                // llama and olmoe size their experts with feed_forward_length
                None if matches!(arch, Arch::Llama | Arch::Olmoe) && n_ff > 0 => n_ff,
                None => return Err(Error::model(format!("metadata key {arch_name}.expert_feed_forward_length is missing"))),
            };
            let gating = match k.opt_usize("expert_gating_func")? {
                None | Some(0) | Some(1) => Gating::Softmax,
                Some(2) => Gating::Sigmoid,
                Some(other) => return Err(Error::model(format!("expert_gating_func {other} is not supported (1 = softmax, 2 = sigmoid)"))),
            };
            let norm_default = matches!(arch, Arch::Llama | Arch::Qwen3Moe);
            let norm_weights = match arch {
                // llama.cpp fixes these per architecture
                Arch::Llama | Arch::Qwen3Moe | Arch::Olmoe | Arch::Qwen2Moe => k.opt_bool("expert_weights_norm").unwrap_or(norm_default),
                Arch::Deepseek2 => k.opt_bool("expert_weights_norm").unwrap_or(false),
            };
            let weights_scale = k.opt_f32("expert_weights_scale")?.filter(|&s| s != 0.0).unwrap_or(1.0);
            let n_group = k.opt_usize("expert_group_count")?.unwrap_or(1).max(1);
            let n_group_used = k.opt_usize("expert_group_used_count")?.unwrap_or(n_group).max(1);
            if n_expert % n_group != 0 || n_group_used > n_group {
                return Err(Error::model(format!("expert groups: {n_expert} experts, {n_group} groups, {n_group_used} used is inconsistent")));
            }
            // DeepSeek-V2 (softmax) scores a group by its best expert; V3 (sigmoid) by its top two.
            let group_score = if gating == Gating::Softmax { GroupScore::Max } else { GroupScore::SumTop2 };
            let n_ff_shexp = match arch {
                Arch::Qwen2Moe => k.opt_usize("expert_shared_feed_forward_length")?.unwrap_or(0),
                Arch::Deepseek2 => k.opt_usize("expert_shared_count")?.unwrap_or(0) * n_ff_exp,
                _ => 0,
            };
            let n_dense_lead = k.opt_usize("leading_dense_block_count")?.unwrap_or(0);
            for (name, v) in [("expert_count", n_expert), ("expert_feed_forward_length", n_ff_exp)] {
                if v > MAX_DIM {
                    return Err(Error::model(format!("metadata {arch_name}.{name} = {v} is out of range")));
                }
            }
            Some(MoeConfig {
                n_expert,
                n_expert_used,
                n_ff_exp,
                gating,
                norm_weights,
                weights_scale,
                n_group,
                n_group_used,
                group_score,
                n_ff_shexp,
                n_dense_lead,
            })
        } else {
            None
        };

        let kq_scale = match &mla {
            Some(m) => {
                // llama.cpp deepseek2: mscale = attn_factor * (1 + 0.1 * mscale_all_dim * ln(1/freq_scale))
                let log_mul = k.opt_f32("rope.scaling.yarn_log_multiplier")?.unwrap_or(0.0) / 0.1;
                let ln = (1.0 / rope.freq_scale).ln();
                let ms = rope.mscale * (1.0 + 0.1 * log_mul * ln);
                ms * ms / ((m.nope_dim + m.rope_dim) as f32).sqrt()
            }
            None => 1.0 / (head_dim_k as f32).sqrt(),
        };

        Ok(Config {
            arch,
            n_vocab,
            n_embd,
            n_layer,
            n_head,
            n_head_kv: if mla.is_some() { 1 } else { n_head_kv },
            head_dim_k,
            head_dim_v,
            n_ctx_train,
            rms_eps,
            n_ff,
            rope,
            kq_scale,
            moe,
            mla,
        })
    }

    fn rope(k: &Keys, arch: Arch, head_dim_k: usize, mla: Option<&MlaConfig>, n_ctx_train: usize) -> Result<RopeConfig> {
        let style = match arch {
            Arch::Llama | Arch::Deepseek2 => RopeStyle::Interleaved,
            Arch::Qwen2Moe | Arch::Qwen3Moe | Arch::Olmoe => RopeStyle::Neox,
        };
        let n_rot = match mla {
            Some(m) => m.rope_dim,
            None => k.opt_usize("rope.dimension_count")?.unwrap_or(head_dim_k),
        };
        if n_rot % 2 != 0 || n_rot > head_dim_k {
            return Err(Error::model(format!("rope.dimension_count {n_rot} is invalid for head size {head_dim_k}")));
        }
        let freq_base = k.opt_positive_f32("rope.freq_base")?.unwrap_or(10000.0);
        let scaling = k.md.get_str(&k.key("rope.scaling.type")).unwrap_or("none");
        let factor = match k.opt_f32("rope.scaling.factor")? {
            Some(f) if f > 0.0 => f,
            _ => match k.opt_f32("rope.scale_linear")? {
                Some(f) if f > 0.0 => f,
                _ => 1.0,
            },
        };
        let (freq_scale, ext_factor) = match scaling {
            "none" => (1.0, 0.0),
            "linear" => (1.0 / factor, 0.0),
            "yarn" => (1.0 / factor, 1.0),
            other => return Err(Error::model(format!("rope scaling type {other:?} is not supported (none, linear, yarn)"))),
        };
        let rope_attn_factor = k.opt_f32("rope.scaling.attn_factor")?.filter(|&f| f > 0.0).unwrap_or(1.0);
        // The factor that multiplies cos/sin, as llama.cpp computes it (see llama-context.cpp).
        let mut mscale = 1.0f32;
        if ext_factor != 0.0 {
            let get_mscale = |scale: f32, m: f32| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
            let s = 1.0 / freq_scale;
            let log_mul = k.opt_f32("rope.scaling.yarn_log_multiplier")?.unwrap_or(0.0) / 0.1;
            let attn = if log_mul != 0.0 {
                let m = if arch == Arch::Deepseek2 && log_mul != 1.0 { log_mul } else { 1.0 };
                get_mscale(s, m) / get_mscale(s, log_mul)
            } else {
                get_mscale(s, 1.0)
            };
            // llama.cpp divides by (1 + 0.1 ln s) and the YaRN kernel multiplies it back in.
            mscale = attn;
        }
        mscale *= rope_attn_factor;
        let n_ctx_orig = k.opt_usize("rope.scaling.original_context_length")?.unwrap_or(n_ctx_train);
        Ok(RopeConfig {
            style,
            n_rot,
            freq_base,
            freq_scale,
            ext_factor,
            mscale,
            beta_fast: k.opt_f32("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
            beta_slow: k.opt_f32("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
            n_ctx_orig,
        })
    }
}
