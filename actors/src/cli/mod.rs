//! Subcommands of the `odmoe` binary. Each one is a small module; the argument
//! definitions here are the command-line contract (see DESIGN.md).

mod collect;
mod convert;
mod demo;
mod generate;
mod info;
pub mod logits;
mod tokenize;
mod train_shadow;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, KvTypeConfig, PrefetchMode};

/// Runs Mixture-of-Experts language models from GGUF files.
#[derive(Parser)]
#[command(name = "odmoe", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Compute backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The CPU reference backend.
    Cpu,
    /// wgpu (Vulkan/Metal/DX12).
    Gpu,
    /// The GPU when there is a hardware adapter that can run the model, else the CPU
    /// (a software Vulkan driver such as lavapipe does not count).
    Auto,
}

/// Whether mapped experts get the CPU's packed copy under backend `b`: not when the GPU
/// is asked for by name (the copy would cost memory and load time for nothing; with
/// `auto` the choice is made after loading, so the default applies).
pub fn expert_packing(b: Backend) -> odmoe::model::PackExperts {
    if b == Backend::Gpu {
        odmoe::model::PackExperts::Never
    } else {
        odmoe::model::PackExperts::Auto
    }
}

/// The backend `b` means for `m`: `Auto` becomes the GPU or the CPU, saying which and
/// why on stderr.
pub fn resolve_backend(b: Backend, m: &odmoe::model::Model) -> Backend {
    if b != Backend::Auto {
        return b;
    }
    let (chosen, why) = auto_backend(m);
    eprintln!("backend: {} ({why})", if chosen == Backend::Gpu { "gpu" } else { "cpu" });
    chosen
}

#[cfg(feature = "gpu")]
fn auto_backend(m: &odmoe::model::Model) -> (Backend, String) {
    match odmoe::compute::gpu::Gpu::open() {
        Ok(Some(g)) if g.info.device_type == odmoe::compute::gpu::DeviceType::Cpu => (Backend::Cpu, format!("the only adapter is a software one: {}", g.describe())),
        Ok(Some(g)) => match odmoe::model::gpu_unsupported(m) {
            Some(why) => (Backend::Cpu, format!("{} cannot run this model: {why}", g.describe())),
            None => (Backend::Gpu, g.describe()),
        },
        Ok(None) => (Backend::Cpu, "no GPU adapter".into()),
        Err(e) => (Backend::Cpu, format!("the GPU did not open: {e}")),
    }
}

#[cfg(not(feature = "gpu"))]
fn auto_backend(_: &odmoe::model::Model) -> (Backend, String) {
    (Backend::Cpu, "this build has no GPU backend".into())
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible HTTP API (chat and text completions, streamed as SSE).
    Serve {
        /// GGUF model file or expert store; the demo model if not given.
        #[arg(long)]
        model: Option<PathBuf>,
        /// TOML configuration file (see odmoe.example.toml); ODMOE_<SECTION>_<KEY>
        /// environment variables override it, and these flags override both.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1].
        #[arg(long)]
        host: Option<String>,
        /// Port (0 picks a free one) [default: 8080].
        #[arg(long)]
        port: Option<u16>,
        /// Read routed experts on demand into a cache of this many bytes (e.g. 512MiB,
        /// 4GiB, unlimited). Without it, experts are reached through the file mapping.
        #[arg(long)]
        cache_budget: Option<String>,
        /// Read experts ahead of the layer that needs them [default: off].
        #[arg(long, value_enum)]
        prefetch: Option<PrefetchMode>,
        /// The shadow predictor for `--prefetch shadow` (made by `odmoe train-shadow`).
        #[arg(long)]
        shadow: Option<PathBuf>,
        /// Element type of each session's key/value cache (f16: half the memory, keys
        /// and values rounded; both backends) [default: f32].
        #[arg(long, value_enum)]
        kv_type: Option<KvTypeConfig>,
        /// Where the sessions' steps run (gpu: as for generate; auto: a hardware GPU that
        /// can run the model, else the CPU) [default: server.backend, cpu].
        #[arg(long, value_enum)]
        backend: Option<Backend>,
        /// Device memory for routed experts on the GPU (e.g. 24GiB) [default: gpu.expert_budget,
        /// 1GiB]: when every expert fits, all are uploaded once and routed on the device.
        #[arg(long)]
        gpu_expert_budget: Option<String>,
    },
    /// Print the logits at every position as JSON: {"logits": [[f32; vocab]; n_tokens]}.
    Logits {
        /// GGUF model file (any shard of a split model); the demo model if not given.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Comma-separated token ids, e.g. 1,2,3.
        #[arg(long, value_delimiter = ',', required = true)]
        tokens: Vec<u32>,
        /// Compute backend.
        #[arg(long, value_enum, default_value_t = Backend::Cpu)]
        backend: Backend,
        /// Read routed experts on demand into a cache of this many bytes (e.g. 512MiB,
        /// 4GiB, unlimited). Without it, experts are reached through the file mapping.
        #[arg(long)]
        cache_budget: Option<String>,
    },
    /// Generate text from a prompt, streamed to stdout (timings on stderr).
    Generate {
        /// GGUF model file (any shard of a split model); the demo model if not given.
        #[arg(long)]
        model: Option<PathBuf>,
        /// The prompt.
        #[arg(long)]
        prompt: String,
        /// Wrap the prompt in the model's chat template as a user message.
        #[arg(long)]
        chat: bool,
        /// Most tokens to generate.
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        /// Sampling temperature (0 = greedy).
        #[arg(long, default_value_t = 0.8)]
        temperature: f32,
        /// Nucleus sampling: keep the most likely tokens up to this total probability.
        #[arg(long, default_value_t = 0.95)]
        top_p: f32,
        /// Keep only the k most likely tokens (0 = all).
        #[arg(long, default_value_t = 40)]
        top_k: usize,
        /// Drop tokens less likely than this fraction of the most likely one.
        #[arg(long, default_value_t = 0.05)]
        min_p: f32,
        /// Penalty for repeating recent tokens (1 = off).
        #[arg(long, default_value_t = 1.0)]
        repeat_penalty: f32,
        /// Random seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Stop before this string (may be repeated).
        #[arg(long)]
        stop: Vec<String>,
        /// Read routed experts on demand into a cache of this many bytes (e.g. 512MiB,
        /// 4GiB, unlimited). Without it, experts are reached through the file mapping.
        #[arg(long)]
        cache_budget: Option<String>,
        /// Read experts ahead of the layer that needs them [default: off].
        #[arg(long, value_enum)]
        prefetch: Option<PrefetchMode>,
        /// The shadow predictor for `--prefetch shadow` (made by `odmoe train-shadow`).
        #[arg(long)]
        shadow: Option<PathBuf>,
        /// Element type of the key/value cache (f16: half the memory, keys and values
        /// rounded; both backends) [default: f32].
        #[arg(long, value_enum)]
        kv_type: Option<KvTypeConfig>,
        /// TOML configuration file: its [cache], [prefetch], [threads] and [gpu] sections
        /// apply.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Compute backend (gpu: models with F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q2_K,
        /// Q3_K, Q4_K, Q5_K or Q6_K weights; auto: a hardware GPU that can run the model,
        /// else the CPU).
        #[arg(long, value_enum, default_value_t = Backend::Cpu)]
        backend: Backend,
        /// Device memory for routed experts on the GPU (e.g. 24GiB) [default: gpu.expert_budget,
        /// 1GiB]: when every expert fits, all are uploaded once and routed on the device.
        #[arg(long)]
        gpu_expert_budget: Option<String>,
    },
    /// Run the model over a text corpus and record routing traces: per token and MoE
    /// layer, the router's input (f16) and the experts and weights it chose.
    Collect {
        /// GGUF model file or expert store; the demo model if not given.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Text file to run over (read as UTF-8).
        #[arg(long)]
        corpus: PathBuf,
        /// Trace file to write (replaced if it exists).
        #[arg(long)]
        output: PathBuf,
        /// Stop after this many tokens (default: the whole corpus).
        #[arg(long)]
        max_tokens: Option<usize>,
        /// Tokens per window: the corpus is cut into windows run from an empty context.
        #[arg(long, default_value_t = 512)]
        window: usize,
        /// Read routed experts on demand into a cache of this many bytes.
        #[arg(long)]
        cache_budget: Option<String>,
    },
    /// Train the shadow predictor on routing traces and compare it, on held-out tokens,
    /// with the baselines it must beat.
    TrainShadow {
        /// Trace file from `odmoe collect`.
        #[arg(long)]
        traces: PathBuf,
        /// Predictor file to write (safetensors).
        #[arg(long)]
        output: PathBuf,
        /// MoE layers ahead to predict.
        #[arg(long, default_value_t = 2)]
        lookahead: usize,
        /// Width of the predictor's shared layer.
        #[arg(long, default_value_t = 256)]
        rank: usize,
        /// Passes over the training tokens.
        #[arg(long, default_value_t = 6)]
        epochs: usize,
        /// Fraction of the tokens (the last ones) held out for evaluation.
        #[arg(long, default_value_t = 0.1)]
        holdout: f64,
        /// The model the traces came from, for the router baseline (default: the path
        /// recorded in the traces, if it still exists).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Random seed.
        #[arg(long, default_value_t = 20261127)]
        seed: u64,
    },
    /// Tokenize text with the model's tokenizer; prints {"ids": [...]}.
    Tokenize {
        /// GGUF model file.
        #[arg(long)]
        model: PathBuf,
        /// Text to tokenize.
        #[arg(long, conflicts_with = "file")]
        text: Option<String>,
        /// File whose contents to tokenize.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Do not add BOS even if the model's metadata asks for it.
        #[arg(long)]
        no_bos: bool,
        /// Turn special-token text such as <|im_start|> into that token.
        #[arg(long)]
        special: bool,
    },
    /// Turn token ids back into text; prints {"text": "..."}.
    Detokenize {
        /// GGUF model file.
        #[arg(long)]
        model: PathBuf,
        /// Comma-separated token ids.
        #[arg(long, value_delimiter = ',', required = true)]
        ids: Vec<u32>,
    },
    /// Convert a GGUF model (single or split) into an expert store directory for paging.
    Convert {
        /// GGUF model file (any shard of a split model).
        #[arg(long)]
        input: PathBuf,
        /// Output directory (must not exist).
        #[arg(long)]
        output: PathBuf,
    },
    /// Describe a model: architecture, hyperparameters, tensor types, base and expert bytes.
    Info {
        /// GGUF model file (any shard of a split model).
        #[arg(long)]
        model: PathBuf,
    },
}

/// Parses the command line and runs the subcommand.
pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::Logits { model, tokens, backend, cache_budget } => {
            logits::run(&demo::resolve(model)?, &tokens, backend, &expert_mode(cache_budget.as_deref())?)
        }
        Command::Info { model } => info::run(&model),
        Command::Serve { model, config, host, port, cache_budget, prefetch, shadow, kv_type, backend, gpu_expert_budget } => {
            let mut c = Config::load(config.as_deref(), std::env::vars())?;
            if let Some(h) = host {
                c.server.host = h;
            }
            if let Some(p) = port {
                c.server.port = p;
            }
            apply_cache_flags(&mut c, cache_budget.as_deref(), prefetch, shadow)?;
            if let Some(t) = kv_type {
                c.cache.kv_type = t;
            }
            if let Some(b) = backend {
                c.server.backend = b;
            }
            apply_gpu_flags(&mut c, gpu_expert_budget.as_deref())?;
            apply_threads(&c)?;
            let server = crate::server::ServerConfig::from_config(&c)?;
            crate::server::run(&demo::resolve(model)?, &c.expert_mode(), server)
        }
        Command::Convert { input, output } => convert::run(&input, &output),
        Command::Generate { model, prompt, chat, max_tokens, temperature, top_p, top_k, min_p, repeat_penalty, seed, stop, cache_budget, prefetch, shadow, kv_type, config, backend, gpu_expert_budget } => {
            let mut c = Config::load(config.as_deref(), std::env::vars())?;
            apply_cache_flags(&mut c, cache_budget.as_deref(), prefetch, shadow)?;
            if let Some(t) = kv_type {
                c.cache.kv_type = t;
            }
            apply_gpu_flags(&mut c, gpu_expert_budget.as_deref())?;
            apply_threads(&c)?;
            let sampling = odmoe::sampling::SamplingParams {
                temperature,
                top_p,
                top_k,
                min_p,
                repetition_penalty: repeat_penalty,
                seed,
                ..Default::default()
            };
            generate::run(&demo::resolve(model)?, generate::Args { prompt, chat, max_tokens, sampling, stop, mode: c.expert_mode(), prefetch: c.prefetch(), shadow: c.shadow()?, kv_type: c.kv_type(), backend, gpu_expert_budget: c.gpu.expert_budget.0 })
        }
        Command::Tokenize { model, text, file, no_bos, special } => tokenize::tokenize(&model, text, file.as_deref(), no_bos, special),
        Command::Detokenize { model, ids } => tokenize::detokenize(&model, &ids),
        Command::Collect { model, corpus, output, max_tokens, window, cache_budget } => {
            collect::run(&demo::resolve(model)?, &expert_mode(cache_budget.as_deref())?, &corpus, &output, max_tokens, window)
        }
        Command::TrainShadow { traces, output, lookahead, rank, epochs, holdout, model, seed } => {
            let opts = odmoe::shadow::TrainOptions { lookahead, rank, epochs, holdout, seed, ..Default::default() };
            train_shadow::run(&traces, &output, &opts, model.as_deref())
        }
    }
}

/// The expert mode a `--cache-budget` flag asks for (default settings otherwise).
fn expert_mode(budget: Option<&str>) -> Result<odmoe::model::ExpertMode, Box<dyn std::error::Error>> {
    let mut c = Config::default();
    apply_cache_flags(&mut c, budget, None, None)?;
    Ok(c.expert_mode())
}

/// `--cache-budget`, `--prefetch` and `--shadow` override the configuration.
fn apply_cache_flags(c: &mut Config, budget: Option<&str>, prefetch: Option<PrefetchMode>, shadow: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(s) = shadow {
        c.prefetch.shadow = Some(s);
    }
    if let Some(b) = budget {
        c.cache.budget = Some(crate::config::Size(odmoe::experts::parse_size(b)?));
    }
    if let Some(p) = prefetch {
        c.prefetch.mode = p;
    }
    Ok(())
}

/// `--gpu-expert-budget` over `[gpu] expert_budget`.
fn apply_gpu_flags(c: &mut Config, expert_budget: Option<&str>) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(b) = expert_budget {
        c.gpu.expert_budget = crate::config::Size(odmoe::experts::parse_size(b).map_err(|e| format!("--gpu-expert-budget: {e}"))?);
    }
    Ok(())
}

/// Sizes the compute thread pool as `[threads] compute` says (0: one per core) and names
/// its threads `odmoe-compute-N` (what `top -H` shows; the load benchmark tells the
/// engine's CPU time from the server's by it).
fn apply_threads(c: &Config) -> Result<(), Box<dyn std::error::Error>> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(c.threads.compute)
        .thread_name(|i| format!("odmoe-compute-{i}"))
        .build_global()
        .map_err(|e| format!("threads.compute: {e}"))?;
    Ok(())
}
