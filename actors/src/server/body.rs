//! Reading a request's body: whole or chunked, up to the size limit, within the read
//! timeout. What went wrong is handed to the handler, which answers it like any other
//! request (413, 408 or 400) and writes its log line.

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use warp::hyper::body::Bytes;
use warp::Buf;

/// A request body as it arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum Body {
    /// All of it.
    Whole(Bytes),
    /// More bytes than the limit (said by its `Content-Length`, or counted as it came).
    TooLarge,
    /// Not all of it within the read timeout (a client that sent less than it announced,
    /// or sends a byte at a time).
    TimedOut,
    /// The connection failed part-way.
    Broken,
}

/// Reads `stream` (the body; `len` its announced length, if any) into memory, refusing
/// more than `limit` bytes or taking longer than `timeout`.
pub async fn read<S, B>(len: Option<u64>, stream: S, limit: u64, timeout: Duration) -> Body
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    if len.is_some_and(|n| n > limit) {
        // refused unread
        return Body::TooLarge;
    }
    let collect = async {
        let mut out = Vec::with_capacity(len.unwrap_or(0) as usize);
        let mut stream = std::pin::pin!(stream);
        while let Some(chunk) = stream.next().await {
            let Ok(mut chunk) = chunk else { return Body::Broken };
            if (out.len() + chunk.remaining()) as u64 > limit {
                return Body::TooLarge;
            }
            while chunk.has_remaining() {
                let part = chunk.chunk();
                out.extend_from_slice(part);
                let n = part.len();
                chunk.advance(n);
            }
        }
        Body::Whole(Bytes::from(out))
    };
    tokio::time::timeout(timeout, collect).await.unwrap_or(Body::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, warp::Error>> + Send {
        futures_util::stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn bodies_are_read_whole_or_refused() {
        let t = Duration::from_secs(5);
        // chunked (no length): read whole
        assert_eq!(read(None, chunks(&[b"{\"a\":", b"1}"]), 100, t).await, Body::Whole(Bytes::from_static(b"{\"a\":1}")));
        // over the limit: by its length (unread), or as it comes
        assert_eq!(read(Some(101), chunks(&[b"x"]), 100, t).await, Body::TooLarge);
        assert_eq!(read(None, chunks(&[&[b'x'; 60], &[b'x'; 60]]), 100, t).await, Body::TooLarge);
        // exactly the limit
        assert!(matches!(read(None, chunks(&[&[b'x'; 100]]), 100, t).await, Body::Whole(b) if b.len() == 100));
        // a body that never ends
        let stalled = futures_util::stream::pending::<Result<Bytes, warp::Error>>();
        assert_eq!(read(Some(10), stalled, 100, Duration::from_millis(50)).await, Body::TimedOut);
    }
}
