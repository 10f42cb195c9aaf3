//! `odmoe serve`: an OpenAI-compatible HTTP server (warp) in front of the actor pipeline
//! ([`crate::pipeline`]).
//!
//! Handlers parse and check a request, have the tokenizer actor encode it, and submit it
//! to the scheduler, which admits it or refuses it at once (429 with `Retry-After` when
//! its queue is full). Each request gets its own bounded event channel; when a client
//! goes away its receiver is dropped and the scheduler drops the session and its cache.

mod body;
pub mod metrics;
mod openai;
pub mod request;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::pipeline::engine::Engine;
use crate::pipeline::Pipeline;
use odmoe::model::{ExpertMode, Model};
use odmoe::tokenizer::{ChatTemplate, Tokenizer};
use warp::Filter;

/// The server's settings, resolved from the config file, environment and flags.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Queue, batch and mailbox sizes of the pipeline.
    pub pipeline: crate::pipeline::Limits,
    /// Events buffered per streaming response before the engine waits for the client.
    pub stream_buffer: usize,
    /// Largest request body.
    pub max_body_bytes: u64,
    /// Context per request (prompt plus completion); `None`: the model's trained context
    /// within the key/value memory ([`crate::cli::context::resolve`]).
    pub max_context: Option<usize>,
    /// Longest prompt accepted (tokens); `None`: the context.
    pub max_prompt_tokens: Option<usize>,
    /// Most completion tokens a request may ask for.
    pub max_tokens: usize,
    /// Completion tokens when a request does not say.
    pub default_max_tokens: usize,
    /// Expert prefetching.
    pub prefetch: odmoe::model::Prefetch,
    /// Element type of the sessions' key/value caches.
    pub kv_type: odmoe::model::KvType,
    /// The shadow predictor, for `Prefetch::Shadow`.
    pub shadow: Option<Arc<odmoe::shadow::Shadow>>,
    /// Seconds running streams get to finish after SIGINT/SIGTERM.
    pub shutdown_timeout_s: u64,
    /// Time a client may take to send a request's headers, and again its body.
    pub read_timeout: std::time::Duration,
    /// Where the steps run.
    pub backend: crate::cli::Backend,
    /// Device memory for routed experts on the GPU backend.
    pub gpu_expert_budget: u64,
}

impl ServerConfig {
    /// The server's part of `c`.
    pub fn from_config(c: &crate::config::Config) -> Result<ServerConfig, String> {
        let (host, port) = (&c.server.host, c.server.port);
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .map_err(|e| format!("cannot use host {host} port {port}: {e}"))?
            .next()
            .ok_or_else(|| format!("host {host} has no address"))?;
        Ok(ServerConfig {
            addr,
            pipeline: crate::pipeline::Limits {
                max_queued: c.server.max_queued,
                max_sessions: c.scheduler.max_sessions,
                batch_tokens: c.scheduler.batch_tokens,
                prefill_chunk: c.scheduler.prefill_chunk,
                tokenizer_mailbox: c.tokenizer.mailbox,
                scheduler_mailbox: c.scheduler.mailbox,
                kv_budget: c.limits.kv_budget.map(|s| s.0),
                prefix_budget: c.cache.prefix_budget.map_or_else(|| odmoe::model::available_memory().map_or(0, |m| (m / 8).min(8 << 30)), |s| s.0),
            },
            stream_buffer: c.server.stream_buffer,
            max_body_bytes: c.server.max_body.0,
            max_context: c.limits.context,
            max_prompt_tokens: c.limits.max_prompt_tokens,
            max_tokens: c.limits.max_tokens,
            default_max_tokens: c.limits.default_max_tokens,
            prefetch: c.prefetch(),
            kv_type: c.kv_type(),
            shadow: c.shadow()?,
            shutdown_timeout_s: c.server.shutdown_timeout_s,
            read_timeout: std::time::Duration::from_secs(c.server.read_timeout_s),
            backend: c.server.backend,
            gpu_expert_budget: c.gpu.expert_budget.0,
        })
    }
}

/// What every handler shares. The port opens before the model is loaded; until `loaded`
/// is set, /health and the completion endpoints answer 503.
pub struct AppState {
    pub model_name: String,
    pub config: ServerConfig,
    pub started: Instant,
    pub loaded: std::sync::OnceLock<Loaded>,
    pub metrics: Arc<metrics::Metrics>,
}

/// The parts of the server that exist once the model is loaded.
pub struct Loaded {
    pub pipeline: Pipeline,
    pub max_context: usize,
    /// Longest prompt accepted (tokens).
    pub max_prompt_tokens: usize,
    pub model: Arc<Model>,
    /// Where the steps run (`cpu`, or `gpu: ` and the adapter), for /health.
    pub backend: String,
}

/// Opens the port, loads the model (answering 503 meanwhile) and serves until the process
/// ends. A model that fails to load ends the process with the error.
pub fn run(model_path: &Path, mode: &ExpertMode, config: ServerConfig) -> Result<(), Box<dyn std::error::Error>> {
    let name = model_path.file_stem().map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned());
    let state = Arc::new(AppState {
        model_name: name,
        config: config.clone(),
        started: Instant::now(),
        loaded: std::sync::OnceLock::new(),
        metrics: Arc::new(metrics::Metrics::default()),
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener = listen(config.addr).map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
        let local = listener.local_addr()?;
        eprintln!("listening on http://{local} (loading {})", model_path.display());
        let (st, path, mode) = (state.clone(), model_path.to_path_buf(), mode.clone());
        tokio::spawn(async move {
            match load(&path, &mode, &st.config, st.metrics.clone()).await {
                Ok(l) => {
                    let _ = st.loaded.set(l);
                    eprintln!("ready: {}", path.display());
                }
                Err(e) => {
                    eprintln!("error: cannot load the model: {}", crate::cli::printable(&e.to_string()));
                    std::process::exit(1);
                }
            }
        });
        let grace = std::time::Duration::from_secs(state.config.shutdown_timeout_s);
        let read_timeout = state.config.read_timeout;
        let filter = routes(state.clone());
        let connections = hyper_util::server::graceful::GracefulShutdown::new();
        let mut stop = std::pin::pin!(stop_signal());
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => serve_connection(stream, filter.clone(), connections.watcher(), read_timeout),
                    Err(e) => {
                        // out of descriptors, say: the connections in hand go on
                        eprintln!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
                _ = &mut stop => break,
            }
        }
        drop(listener);
        eprintln!("shutting down: no new connections; letting running streams finish (up to {} s; a second signal ends the process now)", grace.as_secs());
        tokio::spawn(async {
            stop_signal().await;
            eprintln!("second signal: exiting now");
            std::process::exit(130);
        });
        let mut drained = std::pin::pin!(connections.shutdown());
        tokio::select! {
            _ = &mut drained => {
                eprintln!("stopped");
                return Ok(());
            }
            _ = tokio::time::sleep(grace) => {}
        }
        // the streams still running get a last event saying why they end, and [DONE]
        eprintln!("shutdown timeout: ending the remaining streams");
        if let Some(l) = state.loaded.get() {
            l.pipeline.shut_down();
        }
        tokio::select! {
            _ = &mut drained => eprintln!("stopped"),
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => eprintln!("stopped (connections still open were closed)"),
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

/// SIGINT or SIGTERM.
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Serves one connection (HTTP/1.1, or HTTP/2 by prior knowledge) until it closes or
/// the server shuts down. A client gets `read_timeout` to send a request's headers: a
/// connection that sends them a byte at a time, or stops half-way, is closed rather than
/// held open.
fn serve_connection<F>(stream: tokio::net::TcpStream, filter: F, watcher: hyper_util::server::graceful::Watcher, read_timeout: std::time::Duration)
where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    tokio::spawn(async move {
        let svc = hyper_util::service::TowerToHyperService::new(warp::service(filter));
        let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(read_timeout);
        let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), svc);
        // (errors are the client's: a reset, a timeout, a malformed request)
        let _ = watcher.watch(conn).await;
    });
}

/// The listening socket, with Nagle's algorithm off: Linux hands that setting on to the
/// connections it accepts, so each SSE event leaves at once instead of waiting for the
/// client's delayed ACK of the previous one (40 ms to the first token otherwise).
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Opens the model (on a blocking thread; with the GPU backend, uploads it) and starts the
/// pipeline's actors.
async fn load(path: &Path, mode: &ExpertMode, config: &ServerConfig, metrics: Arc<metrics::Metrics>) -> Result<Loaded, String> {
    let (path, mode, prefetch, kv_type, shadow) = (path.to_path_buf(), mode.clone(), config.prefetch, config.kv_type, config.shadow.clone());
    let (backend, gpu_budget) = (config.backend, config.gpu_expert_budget);
    let (engine, tokenizer, template) = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let mut model = crate::cli::open_model(&path, &mode, crate::cli::expert_packing(backend)).map_err(|e| e.to_string())?;
        model.set_prefetch(prefetch);
        model.set_kv_type(kv_type);
        if let Some(s) = shadow {
            model.set_shadow(s).map_err(|e| e.to_string())?;
        }
        let tokenizer = Tokenizer::from_gguf(model.metadata()).map_err(|e| e.to_string())?;
        let template = ChatTemplate::from_gguf(model.metadata()).ok();
        let engine = engine_for(Arc::new(model), backend, gpu_budget)?;
        eprintln!("compute: {}", engine.describe());
        Ok((engine, Arc::new(tokenizer), template))
    })
    .await
    .map_err(|e| format!("loading stopped: {e}"))??;
    let (model, backend) = (engine.model().clone(), engine.describe());
    let context = crate::cli::context::resolve(&model, config.max_context, config.pipeline.kv_budget);
    eprintln!("context: {} positions ({})", context.positions, context.why);
    let max_context = context.positions;
    let max_prompt_tokens = config.max_prompt_tokens.unwrap_or(max_context).min(max_context);
    let pipeline = Pipeline::start(engine, tokenizer, template, config.pipeline.clone(), metrics).await?;
    Ok(Loaded { pipeline, max_context, max_prompt_tokens, model, backend })
}

/// The engine `backend` means for `model` (`auto` resolved, saying why).
fn engine_for(model: Arc<Model>, backend: crate::cli::Backend, gpu_budget: u64) -> Result<Engine, String> {
    match crate::cli::resolve_backend(backend, &model) {
        crate::cli::Backend::Gpu => gpu_engine(model, gpu_budget),
        _ => Ok(Engine::Cpu(model)),
    }
}

#[cfg(feature = "gpu")]
fn gpu_engine(model: Arc<Model>, budget: u64) -> Result<Engine, String> {
    if let Some(why) = odmoe::model::gpu_unsupported(&model) {
        return Err(format!("the GPU backend cannot run this model: {why}"));
    }
    let gpu = crate::cli::logits::open_gpu().map_err(|e| e.to_string())?;
    let engine = crate::pipeline::engine::GpuEngine::new(model, gpu, budget).map_err(|e| e.to_string())?;
    Ok(Engine::Gpu(Arc::new(engine)))
}

#[cfg(not(feature = "gpu"))]
fn gpu_engine(_: Arc<Model>, _: u64) -> Result<Engine, String> {
    Err("this build has no GPU backend (built without the gpu feature); use --backend cpu".into())
}

fn routes(state: Arc<AppState>) -> impl Filter<Extract = (impl warp::Reply,), Error = std::convert::Infallible> + Clone + Send + Sync + 'static {
    let limit = state.config.max_body_bytes;
    let timeout = state.config.read_timeout;
    let st = warp::any().map(move || state.clone());
    let health = warp::path!("health").and(warp::get()).and(st.clone()).map(openai::health);
    let models = warp::path!("v1" / "models").and(warp::get()).and(st.clone()).map(openai::models);
    let metrics = warp::path!("metrics").and(warp::get()).and(st.clone()).map(openai::metrics);
    // the body as it came (whole, chunked, too large, too slow) reaches the handler, which
    // answers it and writes the request's log line like any other
    let body = warp::header::optional::<u64>("content-length").and(warp::body::stream()).then(move |len, stream| body::read(len, stream, limit, timeout));
    let chat = warp::path!("v1" / "chat" / "completions").and(warp::post()).and(body).and(st.clone()).and_then(|b, s| openai::completion(b, s, true));
    let completions = warp::path!("v1" / "completions").and(warp::post()).and(body).and(st).and_then(|b, s| openai::completion(b, s, false));
    // completions write their own line when the response ends (with token counts)
    let log = warp::log::custom(|i| {
        let handled = i.method() == warp::http::Method::POST && matches!(i.path(), "/v1/completions" | "/v1/chat/completions");
        if !handled {
            eprintln!("{} {} {} {:.3}s", i.method(), i.path(), i.status().as_u16(), i.elapsed().as_secs_f64());
        }
    });
    chat.or(completions).or(health).or(models).or(metrics).recover(openai::rejection).with(log)
}
