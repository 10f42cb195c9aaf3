//! `odmoe info`: what a model file holds and whether odmoe can run it.

use std::collections::BTreeMap;
use std::path::Path;

use odmoe::gguf::GgufModel;
use odmoe::model::{Config, Model};
use odmoe::quant::GgmlType;

/// Formats a byte count with a binary unit.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// Whether a tensor holds routed experts (paged on demand; everything else is base).
fn is_routed_expert(name: &str) -> bool {
    name.contains("_exps.")
}

pub fn run(model: &Path) -> Result<(), Box<dyn std::error::Error>> {
    if odmoe::experts::store::Store::is_store(model) {
        return store_info(model);
    }
    let g = GgufModel::open(model)?;
    let md = g.metadata();
    let nf = g.files().len();
    println!("file:           {} ({} file{}, GGUF v{})", model.display(), nf, if nf == 1 { "" } else { "s" }, g.files()[0].header().version);
    if let Some(name) = md.get_str("general.name") {
        println!("name:           {name}");
    }
    println!("architecture:   {}", md.get_str("general.architecture").unwrap_or("(missing)"));

    let mut hist: BTreeMap<GgmlType, (usize, u64)> = BTreeMap::new();
    let (mut total, mut experts) = (0u64, 0u64);
    let mut n = 0usize;
    for t in g.tensors() {
        let e = hist.entry(t.ggml_type).or_default();
        e.0 += 1;
        e.1 += t.size;
        total += t.size;
        n += 1;
        if is_routed_expert(&t.name) {
            experts += t.size;
        }
    }

    match Config::from_metadata(md) {
        Ok(c) => {
            println!("layers:         {}", c.n_layer);
            println!("hidden size:    {}", c.n_embd);
            println!("vocabulary:     {}", c.n_vocab);
            println!("context:        {} (trained)", c.n_ctx_train);
            println!("heads:          {} query, {} key/value, head size {} (k) / {} (v)", c.n_head, c.n_head_kv, c.head_dim_k, c.head_dim_v);
            if let Some(m) = &c.mla {
                println!(
                    "attention:      MLA, q-LoRA rank {}, kv-LoRA rank {}, nope {} + rope {}, value {}",
                    m.q_lora_rank.map_or("none".to_string(), |r| r.to_string()),
                    m.kv_lora_rank,
                    m.nope_dim,
                    m.rope_dim,
                    m.v_dim
                );
            }
            // the keys and values one position adds to a session's cache
            let kv = |bytes_per_value: usize| c.n_layer * c.n_head_kv * (c.head_dim_k + c.head_dim_v) * bytes_per_value;
            match &c.mla {
                Some(m) => println!(
                    "kv cache:       {} per position (compressed latent of {} + rope key of {} values per layer, f32)",
                    human_bytes((c.n_layer * (m.kv_lora_rank + m.rope_dim) * 4) as u64),
                    m.kv_lora_rank,
                    m.rope_dim
                ),
                None => println!("kv cache:       {} per position in f32, {} in f16 (--kv-type f16)", human_bytes(kv(4) as u64), human_bytes(kv(2) as u64)),
            }
            let r = &c.rope;
            let style = match r.style {
                odmoe::model::config::RopeStyle::Interleaved => "interleaved pairs",
                odmoe::model::config::RopeStyle::Neox => "halves (neox)",
            };
            println!(
                "rope:           {style}, {} dims, base {}, scale {}{}",
                r.n_rot,
                r.freq_base,
                1.0 / r.freq_scale,
                if r.ext_factor != 0.0 { format!(" (YaRN, original context {})", r.n_ctx_orig) } else { String::new() }
            );
            if let Some(m) = &c.moe {
                println!("experts:        {} routed, {} used per token, expert FFN {}", m.n_expert, m.n_expert_used, m.n_ff_exp);
                println!(
                    "routing:        {}{}{}{}",
                    match m.gating {
                        odmoe::model::config::Gating::Softmax => "softmax",
                        odmoe::model::config::Gating::Sigmoid => "sigmoid",
                    },
                    if m.norm_weights { ", renormalized" } else { "" },
                    if m.weights_scale != 1.0 { format!(", scaled ×{}", m.weights_scale) } else { String::new() },
                    if m.n_group > 1 {
                        let by = match m.group_score {
                            odmoe::model::config::GroupScore::Max => "best expert",
                            odmoe::model::config::GroupScore::SumTop2 => "sum of the best two",
                        };
                        format!(", {} of {} groups (by their {by})", m.n_group_used, m.n_group)
                    } else {
                        String::new()
                    }
                );
                if m.n_ff_shexp > 0 {
                    println!("shared expert:  FFN {}", m.n_ff_shexp);
                }
                if m.n_dense_lead > 0 {
                    println!("dense layers:   first {} (FFN {})", m.n_dense_lead, c.n_ff);
                }
            } else {
                println!("experts:        none (dense FFN {})", c.n_ff);
            }
        }
        Err(e) => println!("config:         cannot run: {e}"),
    }

    println!("tensors:        {n}");
    for (ty, (count, bytes)) in &hist {
        println!("  {:<8} {:>6} tensors  {:>12}", ty.name(), count, human_bytes(*bytes));
    }
    let pct = if total > 0 { 100.0 * experts as f64 / total as f64 } else { 0.0 };
    println!(
        "bytes:          {} total, {} base (resident), {} routed experts ({pct:.1}%)",
        human_bytes(total),
        human_bytes(total - experts),
        human_bytes(experts)
    );

    // A full load checks every tensor's presence, shape and type.
    match Model::open(model) {
        Ok(_) => println!("status:         ready (all tensors present with computable types)"),
        Err(e) => println!("status:         cannot run: {e}"),
    }
    Ok(())
}

fn store_info(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let s = odmoe::experts::store::Store::open(dir)?;
    let m = s.manifest();
    println!("store:          {} (converted from {}, {}, sha256 {})", dir.display(), m.source.files.join(", "), human_bytes(m.source.bytes), &m.source.sha256[..16]);
    let experts: u64 = m.layers.iter().map(|l| l.record_bytes * l.n_expert as u64).sum();
    println!("expert files:   {} layers, {} in records", m.layers.len(), human_bytes(experts));
    match Model::open(dir) {
        Ok(model) => {
            let c = model.config();
            println!("architecture:   {} ({} layers, hidden {}, vocabulary {})", c.arch.name(), c.n_layer, c.n_embd, c.n_vocab);
            println!("status:         ready");
        }
        Err(e) => println!("status:         cannot run: {e}"),
    }
    Ok(())
}
