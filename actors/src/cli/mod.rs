//! Subcommands of the `odmoe` binary. Each one is a small module; the argument
//! definitions here are the command-line contract (see DESIGN.md).

mod info;
mod logits;

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
    /// Print the logits at every position as JSON: {"logits": [[f32; vocab]; n_tokens]}.
    Logits {
        /// GGUF model file (any shard of a split model).
        #[arg(long)]
        model: PathBuf,
        /// Comma-separated token ids, e.g. 1,2,3.
        #[arg(long, value_delimiter = ',', required = true)]
        tokens: Vec<u32>,
        /// Compute backend.
        #[arg(long, value_enum, default_value_t = Backend::Cpu)]
        backend: Backend,
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
        Command::Logits { model, tokens, backend } => logits::run(&model, &tokens, backend),
        Command::Info { model } => info::run(&model),
    }
}
