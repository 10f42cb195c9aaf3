//! A small HTTP/1.1 client over tokio for the server's tests and the load bench: one
//! request per connection (`Connection: close`), bodies whole or chunked, and a reader
//! of Server-Sent Events. Written here rather than taken from a crate: an HTTP client
//! crate's features would change those of the server's own dependencies (hyper, url),
//! so `cargo test --release` would rebuild them instead of reusing `cargo build --release`.

#![allow(dead_code)] // each test binary uses its own part

use std::collections::HashMap;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A response read whole.
pub struct Response {
    pub status: u16,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Response {
    /// The body as JSON (panics, showing it, if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A response whose body is read as it comes.
pub struct Streaming {
    pub status: u16,
    pub headers: HashMap<String, String>,
    reader: BufReader<TcpStream>,
    chunked: bool,
    /// Bytes of the current chunk's data not yet read (chunked bodies).
    left: usize,
    /// Body bytes read but not yet returned as events.
    pending: Vec<u8>,
    ended: bool,
}

/// Splits `http://host:port/path` into the address and the path.
fn split_url(url: &str) -> (&str, &str) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    }
}

/// Sends one request and reads the status line and headers.
pub async fn send(method: &str, url: &str, body: Option<&str>) -> std::io::Result<Streaming> {
    let (addr, path) = split_url(url);
    let mut stream = TcpStream::connect(addr).await?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(b) = body {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    stream.write_all(req.as_bytes()).await?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| std::io::Error::other(format!("not an HTTP status line: {line:?}")))?;
    let mut headers = HashMap::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let chunked = headers.get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    Ok(Streaming { status, headers, reader, chunked, left: 0, pending: Vec::new(), ended: false })
}

/// `GET url`, read whole.
pub async fn get(url: &str) -> std::io::Result<Response> {
    send("GET", url, None).await?.whole().await
}

/// `POST url` with a JSON body, read whole.
pub async fn post(url: &str, body: &str) -> std::io::Result<Response> {
    send("POST", url, Some(body)).await?.whole().await
}

impl Streaming {
    /// The next piece of the body, or `None` at its end.
    pub async fn chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        if self.ended {
            return Ok(None);
        }
        if !self.chunked {
            let mut buf = vec![0u8; 8192];
            let n = self.reader.read(&mut buf).await?;
            buf.truncate(n);
            self.ended = n == 0;
            return Ok((n > 0).then_some(buf));
        }
        if self.left == 0 {
            let mut size = String::new();
            self.reader.read_line(&mut size).await?;
            let n = usize::from_str_radix(size.trim(), 16).map_err(|_| std::io::Error::other(format!("bad chunk size {size:?}")))?;
            if n == 0 {
                self.ended = true;
                return Ok(None);
            }
            self.left = n;
        }
        let mut buf = vec![0u8; self.left.min(8192)];
        self.reader.read_exact(&mut buf).await?;
        self.left -= buf.len();
        if self.left == 0 {
            let mut crlf = [0u8; 2];
            self.reader.read_exact(&mut crlf).await?;
        }
        Ok(Some(buf))
    }

    /// The rest of the body as a [`Response`].
    pub async fn whole(mut self) -> std::io::Result<Response> {
        let mut body = Vec::new();
        while let Some(c) = self.chunk().await? {
            body.extend(c);
        }
        Ok(Response { status: self.status, headers: self.headers, body: String::from_utf8_lossy(&body).into_owned() })
    }

    /// The data of the next Server-Sent Event (its `data:` lines joined), or `None` when
    /// the body ends. (Events end in a blank line, `\n\n`, as the server writes them.)
    pub async fn event(&mut self) -> std::io::Result<Option<String>> {
        loop {
            if let Some(i) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let ev: Vec<u8> = self.pending.drain(..i + 2).collect();
                let ev = String::from_utf8_lossy(&ev[..i]);
                let data: Vec<&str> = ev.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| d.strip_prefix(' ').unwrap_or(d)).collect();
                if data.is_empty() {
                    continue; // a comment or keep-alive
                }
                return Ok(Some(data.join("\n")));
            }
            match self.chunk().await? {
                Some(c) => self.pending.extend(c),
                None => return Ok(None),
            }
        }
    }
}
