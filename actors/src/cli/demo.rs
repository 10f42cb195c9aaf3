//! Where the demo model that ships with odmoe is found when `--model` is not given.

use std::path::PathBuf;

/// File name of the shipped demo model (in the repository's `models/` folder).
pub const DEMO_MODEL: &str = "odmoe-demo-shakespeare-Q8_0.gguf";

/// Places searched, in order: `$ODMOE_DEMO_MODEL`; `models/` beside the binary's
/// repository (for `target/{debug,release}/odmoe`); `./models/`; and the source tree
/// the binary was built from.
pub fn candidates() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("ODMOE_DEMO_MODEL") {
        v.push(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1).take(4) {
            v.push(up.join("models").join(DEMO_MODEL));
        }
    }
    v.push(PathBuf::from("models").join(DEMO_MODEL));
    v.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("models").join(DEMO_MODEL));
    v
}

/// The model to use: the one given, else the demo model, else an error saying where it
/// was looked for.
pub fn resolve(model: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(m) = model {
        return Ok(m);
    }
    let c = candidates();
    if let Some(found) = c.iter().find(|p| p.is_file() || odmoe::experts::store::Store::is_store(p)) {
        eprintln!("no --model given: using the demo model {}", found.display());
        return Ok(found.clone());
    }
    let looked: Vec<String> = c.iter().map(|p| format!("  {}", p.display())).collect();
    Err(format!(
        "no --model given and the demo model {DEMO_MODEL} was not found; looked in:\n{}\n(set ODMOE_DEMO_MODEL or pass --model PATH)",
        looked.join("\n")
    ))
}
