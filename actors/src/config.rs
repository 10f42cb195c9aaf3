//! The runtime's configuration: one TOML file (`--config FILE`), every knob with a default,
//! unknown sections and keys rejected by name. `ODMOE_<SECTION>_<KEY>` environment
//! variables override the file (e.g. `ODMOE_SERVER_PORT=9000`, `ODMOE_CACHE_BUDGET=4GiB`),
//! and command-line flags override both. `odmoe.example.toml` at the top of the repository
//! documents every key with its default; a test keeps the two in step.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Everything `odmoe serve` (and, for the cache, `odmoe generate`) can be told.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listening address and HTTP-side limits.
    pub server: Server,
    /// Per-request limits.
    pub limits: Limits,
    /// The routed-expert cache.
    pub cache: Cache,
    /// Reading experts ahead of the layer that needs them.
    pub prefetch: PrefetchConfig,
    /// Sessions and batching.
    pub scheduler: Scheduler,
    /// The tokenizer actor.
    pub tokenizer: TokenizerConfig,
    /// Compute threads.
    pub threads: Threads,
    /// The GPU backend (`--backend gpu` or `auto`).
    pub gpu: GpuConfig,
}

/// `[gpu]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// Device memory for routed experts: when every expert fits, all are uploaded once
    /// and routed on the device; otherwise they are fetched as routed and the latest kept.
    pub expert_budget: Size,
}

impl Default for GpuConfig {
    fn default() -> Self {
        // odmoe::model::DEFAULT_DEVICE_EXPERT_BYTES, which builds without the gpu feature lack
        GpuConfig { expert_budget: Size(1 << 30) }
    }
}

/// `[scheduler]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Scheduler {
    /// Sessions generating at once; admitted requests beyond it wait in the queue.
    pub max_sessions: usize,
    /// Tokens per batched step: one per running session plus prompt chunks.
    pub batch_tokens: usize,
    /// Most prompt tokens of one request in one step, so a long prompt delays running
    /// streams by one chunk at most.
    pub prefill_chunk: usize,
    /// Requests in flight to the scheduler's mailbox; more wait before sending.
    pub mailbox: usize,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler { max_sessions: 64, batch_tokens: 256, prefill_chunk: 128, mailbox: 256 }
    }
}

/// `[tokenizer]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerConfig {
    /// Requests in the tokenizer's mailbox at most; more wait before sending.
    pub mailbox: usize,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        TokenizerConfig { mailbox: 64 }
    }
}

/// `[server]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Address to listen on.
    pub host: String,
    /// Port (0 picks a free one).
    pub port: u16,
    /// Generation requests waiting for the engine; beyond it, 429 with `Retry-After`.
    pub max_queued: usize,
    /// Events buffered per streaming response: a client that does not read stalls only
    /// its own generation once this many are waiting.
    pub stream_buffer: usize,
    /// Largest request body.
    pub max_body: Size,
    /// Seconds to let running streams finish after SIGINT/SIGTERM before cancelling them.
    pub shutdown_timeout_s: u64,
    /// Seconds a client may take to send a request's headers, and again its body; a
    /// connection that takes longer is closed (its slot is not held forever).
    pub read_timeout_s: u64,
    /// Compute backend of the sessions' steps: `cpu`, `gpu` or `auto`.
    pub backend: crate::cli::Backend,
}

impl Default for Server {
    fn default() -> Self {
        Server { host: "127.0.0.1".into(), port: 8080, max_queued: 64, stream_buffer: 64, max_body: Size(1 << 20), shutdown_timeout_s: 10, read_timeout_s: 30, backend: crate::cli::Backend::Cpu }
    }
}

/// `[limits]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Positions per request, prompt plus completion; absent: the model's trained
    /// context, bounded by the memory keys and values may take (`cli::context`).
    pub context: Option<usize>,
    /// Longest prompt accepted, in tokens; absent: the context.
    pub max_prompt_tokens: Option<usize>,
    /// Most completion tokens a request may ask for.
    pub max_tokens: usize,
    /// Completion tokens when a request does not say.
    pub default_max_tokens: usize,
    /// Key/value cache memory the running sessions may reserve together; absent: no limit.
    pub kv_budget: Option<Size>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { context: None, max_prompt_tokens: None, max_tokens: 4096, default_max_tokens: 256, kv_budget: None }
    }
}

/// `[cache]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Cache {
    /// Byte budget for routed experts read on demand; absent: experts are reached through
    /// the file mapping (GGUF) or kept without limit (expert store).
    pub budget: Option<Size>,
    /// Eviction policy within a layer's share of the budget.
    pub policy: Policy,
    /// Reader threads, i.e. expert reads in flight at most.
    pub read_threads: usize,
    /// Read experts with O_DIRECT (bypassing the page cache) where the filesystem allows.
    pub direct_io: bool,
    /// Element type of the sessions' key/value caches.
    pub kv_type: KvTypeConfig,
    /// Bytes of finished sessions' keys and values kept for requests that begin as they
    /// did (the prefix cache); absent: an eighth of the memory available, at most 8 GiB;
    /// 0 turns it off.
    pub prefix_budget: Option<Size>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache { budget: None, policy: Policy::Lru, read_threads: 8, direct_io: true, kv_type: KvTypeConfig::F32, prefix_budget: None }
    }
}

/// Key/value cache element types, as written in the file and on the command line.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KvTypeConfig {
    /// Keys and values exactly as computed.
    F32,
    /// Rounded to f16: half the memory per position (lossy; not for latent attention,
    /// whose compressed cache stays f32).
    F16,
}

/// Eviction policies.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Least recently used, per layer.
    Lru,
}

/// `[prefetch]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PrefetchConfig {
    /// `off`, `gate` (the next layer's router applied to the current state) or `shadow`
    /// (the trained predictor in `shadow`).
    pub mode: PrefetchMode,
    /// Prefetch reads in flight at most (never more than `cache.read_threads`).
    pub in_flight: usize,
    /// Layers ahead whose experts are guessed and read (at least 1).
    pub depth: usize,
    /// The shadow predictor file (`odmoe train-shadow`), for mode `shadow`.
    pub shadow: Option<PathBuf>,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig { mode: PrefetchMode::Off, in_flight: 4, depth: 1, shadow: None }
    }
}

/// Prefetch modes, as written in the file and on the command line.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PrefetchMode {
    /// Read experts only when a layer asks.
    Off,
    /// Apply the next layer's router to the current state and read its picks ahead.
    Gate,
    /// Ask the trained shadow predictor (`prefetch.shadow`, `--shadow`) and read its
    /// picks ahead.
    Shadow,
}

/// `[threads]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Threads {
    /// Compute threads (0: one per core).
    pub compute: usize,
}

/// A byte count written as a number of bytes or a string with a unit ("512MiB", "4GiB").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(b) => Ok(Size(b)),
            Raw::Text(t) => odmoe::experts::parse_size(&t).map(Size).map_err(serde::de::Error::custom),
        }
    }
}

/// Compute threads per core `[threads] compute` may ask for.
const MAX_THREADS_PER_CORE: usize = 4;

/// Sections, as they appear in the file and in environment variable names.
const SECTIONS: [&str; 8] = ["server", "limits", "cache", "prefetch", "scheduler", "tokenizer", "threads", "gpu"];

/// The environment switches that are not configuration: `ODMOE_NO_*` turn something off,
/// the others name a file or force a choice. The configuration skips them, and none
/// begins with a section's name, so a reader cannot mistake one for a key.
pub const SWITCHES: [&str; 7] = ["ODMOE_NO_VNNI", "ODMOE_NO_SIMD", "ODMOE_NO_SUBGROUPS", "ODMOE_NO_HUGE_PAGES", "ODMOE_PACK_EXPERTS", "ODMOE_DEMO_MODEL", "ODMOE_REQUIRE_GPU"];

impl Config {
    /// Reads `file` (defaults when `None`) and applies `ODMOE_<SECTION>_<KEY>` overrides
    /// from `env`. Errors name the file, section and key.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, String> {
        let mut table: toml::Table = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| format!("config {}: {e}", p.display()))?;
                text.parse().map_err(|e: toml::de::Error| format!("config {}: {}", p.display(), e.message()))?
            }
            None => toml::Table::new(),
        };
        let where_ = file.map_or_else(|| "config".to_string(), |p| format!("config {}", p.display()));
        // "section.key" -> the variable that set it, to name it in errors
        let mut from_env: Vec<(String, String)> = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("ODMOE_").filter(|_| !SWITCHES.contains(&name.as_str())) else { continue };
            let lower = rest.to_ascii_lowercase();
            let Some(section) = SECTIONS.iter().find(|s| lower.starts_with(&format!("{s}_"))) else { continue };
            let key = &lower[section.len() + 1..];
            let sec = table.entry(section.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(sec) = sec else { return Err(format!("{where_}: [{section}] must be a table")) };
            sec.insert(key.to_string(), env_value(&value));
            from_env.push((format!("{section}.{key}"), name));
        }
        let parsed: Result<Config, _> = serde_path_to_error::deserialize(toml::Value::Table(table));
        parsed
            .map_err(|e| {
                let path = e.path().to_string();
                match from_env.iter().find(|(k, _)| *k == path) {
                    Some((_, var)) => format!("environment variable {var}: {path}: {}", e.inner().message()),
                    None => format!("{where_}: {path}: {}", e.inner().message()),
                }
            })?
            .checked()
    }

    /// The configuration, or an error naming the first value out of range.
    pub fn checked(self) -> Result<Config, String> {
        let positive = [
            ("server.max_queued", self.server.max_queued),
            ("server.stream_buffer", self.server.stream_buffer),
            ("limits.context", self.limits.context.unwrap_or(1)),
            ("limits.max_prompt_tokens", self.limits.max_prompt_tokens.unwrap_or(1)),
            ("limits.max_tokens", self.limits.max_tokens),
            ("limits.default_max_tokens", self.limits.default_max_tokens),
            ("cache.read_threads", self.cache.read_threads),
            ("prefetch.depth", self.prefetch.depth),
            ("scheduler.max_sessions", self.scheduler.max_sessions),
            ("server.read_timeout_s", self.server.read_timeout_s as usize),
            ("scheduler.batch_tokens", self.scheduler.batch_tokens),
            ("scheduler.prefill_chunk", self.scheduler.prefill_chunk),
            ("scheduler.mailbox", self.scheduler.mailbox),
            ("tokenizer.mailbox", self.tokenizer.mailbox),
        ];
        for (k, v) in positive {
            if v == 0 {
                return Err(format!("config: {k} must be at least 1"));
            }
        }
        // a pool far wider than the machine only costs memory and start-up (100,000
        // threads took minutes to start and never became ready)
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let most = MAX_THREADS_PER_CORE * cores;
        if self.threads.compute > most {
            return Err(format!("config: threads.compute is {}; this machine has {cores} cores, so at most {most} (0: one per core)", self.threads.compute));
        }
        if self.limits.default_max_tokens > self.limits.max_tokens {
            return Err(format!("config: limits.default_max_tokens ({}) exceeds limits.max_tokens ({})", self.limits.default_max_tokens, self.limits.max_tokens));
        }
        Ok(self)
    }

    /// How the engine should reach routed experts.
    pub fn expert_mode(&self) -> odmoe::model::ExpertMode {
        match self.cache.budget {
            None => odmoe::model::ExpertMode::Mapped,
            Some(Size(budget)) => odmoe::model::ExpertMode::Paged(odmoe::experts::PagerOptions {
                budget,
                read_threads: self.cache.read_threads,
                prefetch_in_flight: self.prefetch.in_flight,
                direct_io: self.cache.direct_io,
            }),
        }
    }

    /// The element type of the sessions' key/value caches (`[cache] kv_type`).
    pub fn kv_type(&self) -> odmoe::model::KvType {
        match self.cache.kv_type {
            KvTypeConfig::F32 => odmoe::model::KvType::F32,
            KvTypeConfig::F16 => odmoe::model::KvType::F16,
        }
    }

    /// The engine's prefetch setting.
    pub fn prefetch(&self) -> odmoe::model::Prefetch {
        match self.prefetch.mode {
            PrefetchMode::Off => odmoe::model::Prefetch::Off,
            PrefetchMode::Gate => odmoe::model::Prefetch::Gate { depth: self.prefetch.depth },
            PrefetchMode::Shadow => odmoe::model::Prefetch::Shadow { depth: self.prefetch.depth },
        }
    }

    /// The shadow predictor that mode `shadow` needs, read from `prefetch.shadow`; `None`
    /// in the other modes.
    pub fn shadow(&self) -> Result<Option<std::sync::Arc<odmoe::shadow::Shadow>>, String> {
        if self.prefetch.mode != PrefetchMode::Shadow {
            return Ok(None);
        }
        let path = self.prefetch.shadow.as_ref().ok_or("prefetch mode shadow needs a predictor: set prefetch.shadow or pass --shadow PATH (made by odmoe train-shadow)")?;
        let s = odmoe::shadow::Shadow::load(path).map_err(|e| e.to_string())?;
        Ok(Some(std::sync::Arc::new(s)))
    }
}

/// An environment value as TOML: integers and booleans as such, anything else a string.
fn env_value(v: &str) -> toml::Value {
    if let Ok(i) = v.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(b) = v.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> Vec<(String, String)> {
        Vec::new()
    }

    fn write(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::with(text)
    }

    /// A temporary file removed on drop (tests only).
    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn with(text: &str) -> TempPath {
                static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir().join(format!("odmoe-config-test-{}-{n}.toml", std::process::id()));
                std::fs::write(&p, text).unwrap();
                TempPath(p)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                std::fs::remove_file(&self.0).ok();
            }
        }
    }

    #[test]
    fn the_example_file_states_the_defaults() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../odmoe.example.toml");
        assert_eq!(Config::load(Some(&example), none()).unwrap(), Config::default());
        // and mentions every key: uncommenting it must still parse to the defaults
        let text = std::fs::read_to_string(&example).unwrap();
        let uncommented: String = text.lines().map(|l| l.strip_prefix("# ").filter(|r| r.contains(" = ")).unwrap_or(l)).collect::<Vec<_>>().join("\n");
        let f = write(&uncommented);
        let mut want = Config::default();
        want.cache.budget = Some(Size(8 << 30));
        want.limits.kv_budget = Some(Size(16 << 30));
        want.limits.context = Some(32768);
        want.cache.prefix_budget = Some(Size(2 << 30));
        want.limits.max_prompt_tokens = Some(32768);
        want.prefetch.shadow = Some("shadow.safetensors".into());
        assert_eq!(Config::load(Some(&f.0), none()).unwrap(), want);
        let keys = uncommented.lines().filter(|l| l.contains(" = ") && !l.starts_with('#')).count();
        assert_eq!(keys, 30, "the example should list every key once");
    }

    #[test]
    fn files_and_environment_set_values() {
        let f = write("[server]\nport = 9000\nmax_body = \"2MiB\"\n[cache]\nbudget = \"512MiB\"\n[prefetch]\nmode = \"gate\"\n");
        let c = Config::load(Some(&f.0), none()).unwrap();
        assert_eq!((c.server.port, c.server.max_body, c.cache.budget), (9000, Size(2 << 20), Some(Size(512 << 20))));
        assert_eq!(c.prefetch.mode, PrefetchMode::Gate);
        let env = [("ODMOE_SERVER_PORT", "9100"), ("ODMOE_CACHE_BUDGET", "1GiB"), ("ODMOE_CACHE_DIRECT_IO", "false"), ("ODMOE_DEMO_MODEL", "x"), ("PATH", "/bin")];
        let c = Config::load(Some(&f.0), env.map(|(k, v)| (k.to_string(), v.to_string()))).unwrap();
        assert_eq!((c.server.port, c.cache.budget, c.cache.direct_io), (9100, Some(Size(1 << 30)), false));
        assert_eq!(c.cache.budget.map(|s| s.0), Some(1 << 30));
        let c = Config::load(None, [("ODMOE_SERVER_HOST".to_string(), "0.0.0.0".to_string())]).unwrap();
        assert_eq!(c.server.host, "0.0.0.0");
        // the GPU's expert budget: 1 GiB unless the file or the environment says
        assert_eq!(Config::default().gpu.expert_budget, Size(1 << 30));
        let c = Config::load(None, [("ODMOE_GPU_EXPERT_BUDGET".to_string(), "24GiB".to_string())]).unwrap();
        assert_eq!(c.gpu.expert_budget, Size(24 << 30));
        // the key/value cache type: f32 unless said
        assert_eq!(Config::default().kv_type(), odmoe::model::KvType::F32);
        let c = Config::load(None, [("ODMOE_SERVER_BACKEND".to_string(), "auto".to_string())]).unwrap();
        assert_eq!(c.server.backend, crate::cli::Backend::Auto);
        let c = Config::load(None, [("ODMOE_CACHE_KV_TYPE".to_string(), "f16".to_string())]).unwrap();
        assert_eq!(c.kv_type(), odmoe::model::KvType::F16);
        assert!(Config::load(Some(&write("[cache]\nkv_type = \"q8\"\n").0), none()).is_err());
    }

    #[test]
    fn environment_switches_are_not_taken_for_configuration() {
        // every switch set (as a user following the docs would) leaves the configuration
        // as it was
        let env = SWITCHES.map(|k| (k.to_string(), "1".to_string()));
        assert_eq!(Config::load(None, env).unwrap(), Config::default());
        for k in SWITCHES {
            let lower = k["ODMOE_".len()..].to_ascii_lowercase();
            assert!(!SECTIONS.iter().any(|s| lower.starts_with(&format!("{s}_"))), "{k} reads like a key of the configuration");
        }
        // and the code reads no other ODMOE_ variable outside the configuration (tests and
        // benchmarks aside): each name it reads is listed
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let mut read = std::collections::BTreeSet::new();
        let mut dirs = vec![Path::new(src).join("src"), Path::new(src).join("actors/src")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for (i, _) in text.match_indices("var_os(\"ODMOE_").chain(text.match_indices("var(\"ODMOE_")) {
                        let name = text[i..].split('"').nth(1).unwrap().to_string();
                        read.insert(name);
                    }
                }
            }
        }
        for name in &read {
            assert!(SWITCHES.contains(&name.as_str()), "{name} is read but not listed in SWITCHES");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let cases = [
            ("[server]\nprot = 1\n", "prot"),
            ("[sever]\nport = 1\n", "sever"),
            ("[cache]\nbudget = \"12 parsecs\"\n", "parsecs"),
            ("[cache]\npolicy = \"fifo\"\n", "fifo"),
            ("[gpu]\nexpert_budjet = \"1GiB\"\n", "expert_budjet"),
            ("[server]\nport = \"eighty\"\n", "port"),
            ("[limits]\ncontext = 0\n", "limits.context"),
            ("[threads]\ncompute = 100000\n", "threads.compute"),
            ("[server\nport = 1\n", "config"),
        ];
        for (text, needle) in cases {
            let f = write(text);
            let e = Config::load(Some(&f.0), none()).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        let e = Config::load(None, [("ODMOE_SERVER_PROT".to_string(), "1".to_string())]).unwrap_err();
        assert!(e.contains("ODMOE_SERVER_PROT") && e.contains("prot"), "{e}");
        let e = Config::load(Some(Path::new("/nonexistent/odmoe.toml")), none()).unwrap_err();
        assert!(e.contains("/nonexistent/odmoe.toml"), "{e}");
    }
}
