//! Starting `odmoe serve` on a free loopback port for end-to-end tests.

#![allow(dead_code)] // each test binary uses its own part

pub mod http;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// A running server, killed on drop. `log` collects its stderr.
pub struct Server {
    child: Mutex<Child>,
    pub addr: String,
    pub log: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Server {
    /// Starts `odmoe serve --port 0` on the demo model with `env` set (config overrides
    /// such as `ODMOE_SERVER_STREAM_BUFFER`); returns once it listens (it may still load).
    pub fn start(env: &[(&str, &str)]) -> Server {
        Self::start_with(&[], env)
    }

    /// [`Server::start`] with more arguments (`--model PATH`, `--ctx-size N`).
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_odmoe"));
        cmd.args(["serve", "--port", "0"]).args(args).stderr(Stdio::piped()).stdout(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start odmoe serve");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let addr = loop {
            line.clear();
            assert!(err.read_line(&mut line).unwrap() > 0, "server exited before listening");
            if let Some(a) = line.trim().strip_prefix("listening on http://") {
                break a.split_whitespace().next().unwrap().to_string();
            }
        };
        // keep draining stderr so the server never blocks on it
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Server { child: Mutex::new(child), addr, log }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// Waits up to `limit` for the server to exit: `Some(its exit code)` (`None` inside
    /// when a signal ended it), or `None` if it is still running.
    pub fn wait_exit(&self, limit: std::time::Duration) -> Option<Option<i32>> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.lock().unwrap().try_wait().unwrap() {
                return Some(status.code());
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The base URL.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Waits (up to two minutes) until the server has loaded its model.
pub async fn ready(srv: &Server) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while http::get(&srv.url("/health")).await.map(|r| r.status).ok() != Some(200) {
        assert!(std::time::Instant::now() < deadline, "the server never became ready; its log:\n{}", srv.log.lock().unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The value of metric `name` in the server's `/metrics`.
pub async fn metric(srv: &Server, name: &str) -> f64 {
    let m = http::get(&srv.url("/metrics")).await.unwrap().body;
    m.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' ')).and_then(|l| l.rsplit(' ').next()).unwrap_or_else(|| panic!("no {name} in {m}")).parse().unwrap()
}

/// Waits (up to a minute) until `cond` holds, failing with the server's log.
pub async fn until(srv: &Server, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !cond().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}; server log:\n{}", srv.log.lock().unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The body of an HTTP/1.1 chunked response.
pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n + 2 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// A client that reads slowly: a loopback connection whose receive buffer is a few KiB
/// (set before connecting, so the kernel cannot grow it and absorb a whole stream), with
/// `request` (a complete HTTP/1.1 request) already sent. Nothing is read until the test
/// reads it.
pub fn slow_client(addr: &str, request: &str) -> std::net::TcpStream {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let sa: std::net::SocketAddrV4 = addr.parse().expect("an IPv4 loopback address");
    // SAFETY: plain socket calls on a descriptor this function owns until it is wrapped.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket");
        let size: libc::c_int = 4096;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &size as *const _ as *const libc::c_void, std::mem::size_of::<libc::c_int>() as libc::socklen_t);
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = sa.port().to_be();
        sin.sin_addr.s_addr = u32::from(*sa.ip()).to_be();
        let rc = libc::connect(fd, &sin as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t);
        assert_eq!(rc, 0, "connect to {addr}");
        std::net::TcpStream::from_raw_fd(fd)
    };
    (&stream).write_all(request.as_bytes()).unwrap();
    stream
}

/// A streaming completion request for `prompt`, closing the connection after.
pub fn stream_request(addr: &str, prompt: &str, max_tokens: usize) -> String {
    let body = format!(r#"{{"prompt":{},"stream":true,"max_tokens":{max_tokens},"temperature":0}}"#, serde_json::Value::from(prompt));
    format!("POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}

/// The text of an SSE completion stream's `data:` events, and whether it ended in `[DONE]`.
pub fn sse_text(body: &str) -> (String, bool) {
    let mut text = String::new();
    let mut done = false;
    for data in body.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim) {
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("not JSON ({e}): {data}"));
        if let Some(t) = v["choices"][0]["text"].as_str().or(v["choices"][0]["delta"]["content"].as_str()) {
            text.push_str(t);
        }
    }
    (text, done)
}
