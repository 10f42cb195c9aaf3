//! Subcommands of the `odmoe` binary. Each one is a small module; the argument
//! definitions here are the command-line contract (see DESIGN.md).

mod convert;
mod demo;
mod generate;
mod info;
mod logits;
mod tokenize;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Runs Mixture-of-Experts language models from GGUF files.
#[derive(Parser)]
#[command(name = "odmoe", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Compute backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// The CPU reference backend.
    Cpu,
    /// wgpu (Vulkan/Metal/DX12).
    Gpu,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible HTTP API (chat and text completions, streamed as SSE).
    Serve {
        /// GGUF model file or expert store; the demo model if not given.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port (0 picks a free one).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Read routed experts on demand into a cache of this many bytes.
        #[arg(long)]
        cache_budget: Option<String>,
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
        Command::Serve { model, host, port, cache_budget } => {
            let addr: std::net::SocketAddr = format!("{host}:{port}").parse().map_err(|e| format!("--host {host} --port {port}: {e}"))?;
            let config = crate::server::ServerConfig { addr, queue: 16, stream_buffer: 64, max_body_bytes: 1 << 20, max_context: 4096 };
            crate::server::run(&demo::resolve(model)?, &expert_mode(cache_budget.as_deref())?, config)
        }
        Command::Convert { input, output } => convert::run(&input, &output),
        Command::Generate { model, prompt, chat, max_tokens, temperature, top_p, top_k, min_p, repeat_penalty, seed, stop, cache_budget } => {
            let sampling = odmoe::sampling::SamplingParams {
                temperature,
                top_p,
                top_k,
                min_p,
                repetition_penalty: repeat_penalty,
                seed,
                ..Default::default()
            };
            let mode = expert_mode(cache_budget.as_deref())?;
            generate::run(&demo::resolve(model)?, generate::Args { prompt, chat, max_tokens, sampling, stop, mode })
        }
        Command::Tokenize { model, text, file, no_bos, special } => tokenize::tokenize(&model, text, file.as_deref(), no_bos, special),
        Command::Detokenize { model, ids } => tokenize::detokenize(&model, &ids),
    }
}

/// Parallel expert reads when experts are paged.
const READ_THREADS: usize = 4;

/// The expert mode a `--cache-budget` flag asks for.
fn expert_mode(budget: Option<&str>) -> Result<odmoe::model::ExpertMode, Box<dyn std::error::Error>> {
    Ok(match budget {
        None => odmoe::model::ExpertMode::Mapped,
        Some(b) => odmoe::model::ExpertMode::Paged(odmoe::experts::PagerOptions { budget: odmoe::experts::parse_size(b)?, read_threads: READ_THREADS, ..Default::default() }),
    })
}
