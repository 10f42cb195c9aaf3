//! The `odmoe` command-line interface.

mod cli;
mod config;
mod pipeline;
mod server;

fn main() {
    if let Err(e) = cli::run() {
        eprintln!("error: {}", cli::printable(&e.to_string()));
        std::process::exit(1);
    }
}
