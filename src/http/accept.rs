//! Accepting connections: what `warp::serve` does, with two differences
//! that keep a long-lived client connection small.
//!
//! - A connection whose first request is a plain `GET /v1/<tenant>/events`
//!   is answered by walcast's own SSE writer (`sse::serve_socket`), not by
//!   hyper: hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for as
//!   long as a connection lives, which is most of an idle SSE client's cost.
//!   The request head is read here (`sniff`) into a small buffer that is
//!   dropped once the head is parsed.
//! - Requests to `/v1/<tenant>/ws` are upgraded by `ws::upgrade`, with
//!   walcast's own WebSocket buffer sizes.
//!
//! Everything else, including any later request on a kept-alive
//! connection, goes to hyper and warp's routes, with the bytes read so far
//! handed over first (`Prefixed`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::reply::Response;

use super::{sse, ws, ClientContext};

/// The client API's context and the allowed CORS origins.
pub type ClientRoute = Option<(Arc<ClientContext>, Arc<Vec<String>>)>;

/// warp's routes as a service (`warp::service`).
pub trait Routes:
    tower_service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> Routes for S where
    S: tower_service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// A request head larger than this is left to hyper.
const MAX_SNIFFED_HEAD: usize = 16 * 1024;
/// How long a new connection may take to send its first request head.
const FIRST_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts connections until `cancel` fires, then lets open requests
/// finish (hyper connections are told to close once their current response
/// is sent; SSE streams end by themselves at shutdown).
pub async fn accept_loop<S: Routes>(
    listener: TcpListener,
    service: S,
    client: ClientRoute,
    cancel: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, for example: wait, then go on.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        connections.spawn(connection(
            stream,
            service.clone(),
            client.clone(),
            cancel.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Serves one connection.
async fn connection<S: Routes>(
    mut stream: TcpStream,
    service: S,
    client: ClientRoute,
    cancel: CancellationToken,
) {
    let mut prefix = Bytes::new();
    if let Some((ctx, origins)) = &client {
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            first = tokio::time::timeout(FIRST_HEAD_TIMEOUT, first_head(&mut stream)) => first,
        };
        match first {
            Err(_elapsed) => {
                tracing::debug!("connection sent no request within 30 s; closed");
                return;
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "connection ended before its first request");
                return;
            }
            Ok(Ok(Sniffed::Sse(request))) => {
                sse::serve_socket(stream, Arc::clone(ctx), origins, request).await;
                return;
            }
            Ok(Ok(Sniffed::Other(read))) => prefix = read,
        }
    }
    let handler = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut service = service.clone();
        let client = client.clone();
        async move {
            if let Some((ctx, origins)) = &client {
                if let Some(tenant) = ws::ws_path(req.uri().path()).map(str::to_owned) {
                    return Ok(ws::upgrade(Arc::clone(ctx), origins, &tenant, req));
                }
            }
            tower_service::Service::call(&mut service, req).await
        }
    });
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.http1();
    let io = hyper_util::rt::TokioIo::new(Prefixed {
        prefix,
        inner: stream,
    });
    let connection = builder.serve_connection_with_upgrades(io, handler);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = cancel.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        // A client that went away mid-response: normal, not an error.
        tracing::debug!(%error, "http connection ended");
    }
}

/// What a connection's first bytes are.
#[derive(Debug)]
enum Sniffed {
    /// A complete `GET /v1/<tenant>/events` head and nothing after it.
    Sse(SseRequest),
    /// Anything else: the bytes read so far, for hyper.
    Other(Bytes),
}

/// What the SSE writer needs from a request head.
#[derive(Debug, PartialEq, Eq)]
pub struct SseRequest {
    pub tenant: String,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub last_event_id: Option<String>,
    pub origin: Option<String>,
    /// An HTTP/1.0 client: no chunked encoding, the body ends at close.
    pub http10: bool,
}

/// Reads until the first request head is complete, or until it is clear
/// that the request is not one for `sse::serve_socket`.
async fn first_head(stream: &mut TcpStream) -> io::Result<Sniffed> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity());
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match sniff(&buf) {
            Some(Some(request)) => return Ok(Sniffed::Sse(request)),
            Some(None) => return Ok(Sniffed::Other(buf.freeze())),
            None if buf.len() >= MAX_SNIFFED_HEAD => return Ok(Sniffed::Other(buf.freeze())),
            None => {}
        }
    }
}

/// `None`: more bytes are needed to tell. `Some(None)`: not a request
/// walcast's SSE writer takes (hyper answers it, errors included).
/// `Some(Some(_))`: a complete, bodiless `GET /v1/<tenant>/events`.
/// (Public for the `http_head` fuzz target.)
pub fn sniff(buf: &[u8]) -> Option<Option<SseRequest>> {
    const START: &[u8] = b"GET /v1/";
    let n = buf.len().min(START.len());
    if buf[..n] != START[..n] {
        return Some(None);
    }
    let line_end = buf.windows(2).position(|w| w == b"\r\n");
    if let Some(end) = line_end {
        let target = buf[4..end].split(|&b| b == b' ').next().unwrap_or_default();
        let path = target.split(|&b| b == b'?').next().unwrap_or_default();
        if sse_path(path).is_none() {
            return Some(None);
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return None,
        // Malformed, or too many headers: hyper gives the error reply.
        Err(_) => return Some(None),
    };
    // Pipelined requests are hyper's to answer in order.
    if head_len != buf.len() {
        return Some(None);
    }
    Some(sse_request(&request))
}

/// The tenant of an `/v1/<tenant>/events` path.
fn sse_path(path: &[u8]) -> Option<&[u8]> {
    let rest = path.strip_prefix(b"/v1/")?;
    let slash = rest.iter().position(|&b| b == b'/')?;
    let (tenant, tail) = rest.split_at(slash);
    (tail == b"/events" && !tenant.is_empty()).then_some(tenant)
}

fn sse_request(request: &httparse::Request<'_, '_>) -> Option<SseRequest> {
    let target = request.path?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let tenant = std::str::from_utf8(sse_path(path.as_bytes())?).ok()?;
    let mut authorization = None;
    let mut last_event_id = None;
    let mut origin = None;
    for header in request.headers.iter() {
        let slot = match header.name.to_ascii_lowercase().as_str() {
            "authorization" => &mut authorization,
            "last-event-id" => &mut last_event_id,
            "origin" => &mut origin,
            // A body, or an upgrade: not a plain event stream request.
            "content-length" if header.value != b"0" => return None,
            "transfer-encoding" | "upgrade" | "expect" => return None,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(std::str::from_utf8(header.value).ok()?.to_owned());
        }
    }
    Some(SseRequest {
        tenant: tenant.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        authorization,
        last_event_id,
        origin,
        http10: request.version? == 0,
    })
}

/// A connection with bytes already read from it put back in front.
struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // An empty `Bytes` would still hold the read buffer.
                this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_a_browser_event_source_request() {
        // As Chromium sends it (captured from the inspector test).
        let head = b"GET /v1/acme/events?table=public.tasks&access_token=t HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: keep-alive\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\nOrigin: http://app.example\r\nLast-Event-ID: 0/16B3F28-0\r\n\r\n";
        let request = sniff(head).unwrap().unwrap();
        assert_eq!(
            request,
            SseRequest {
                tenant: "acme".into(),
                path: "/v1/acme/events".into(),
                query: "table=public.tasks&access_token=t".into(),
                authorization: None,
                last_event_id: Some("0/16B3F28-0".into()),
                origin: Some("http://app.example".into()),
                http10: false,
            }
        );
        // Every shorter prefix asks for more, never decides wrongly.
        for n in 1..head.len() {
            assert!(sniff(&head[..n]).is_none(), "decided at {n} bytes");
        }
    }

    #[test]
    fn leaves_everything_else_to_hyper() {
        for head in [
            &b"GET /healthz HTTP/1.1\r\n\r\n"[..],
            b"GET /v1/acme/ws HTTP/1.1\r\n\r\n",
            b"GET /v1/acme/state/public.tasks HTTP/1.1\r\n\r\n",
            b"POST /v1/acme/events HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}",
            b"HEAD /v1/acme/events HTTP/1.1\r\n\r\n",
            b"GET /v1//events HTTP/1.1\r\n\r\n",
            b"GET /v1/acme/events/x HTTP/1.1\r\n\r\n",
            b"GET /v1/acme/events HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"GET /v1/acme/events HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
            b"GET /v1/acme/events HTTP/1.1\r\nbad header\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01",
        ] {
            assert!(
                matches!(sniff(head), Some(None)),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        // Decided on the request line, before the head is complete.
        assert!(matches!(sniff(b"GET /metrics HTTP/1.1\r\nHo"), Some(None)));
        assert!(matches!(sniff(b"GET /v2"), Some(None)));
    }

    #[test]
    fn http10_and_repeated_headers() {
        let head = b"GET /v1/t/events HTTP/1.0\r\nAuthorization: Bearer a\r\nauthorization: Bearer b\r\n\r\n";
        let request = sniff(head).unwrap().unwrap();
        assert!(request.http10);
        assert_eq!(request.authorization.as_deref(), Some("Bearer a"));
    }

    #[tokio::test]
    async fn prefixed_reads_the_prefix_first() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b" world").await.unwrap();
        });
        let (inner, _) = listener.accept().await.unwrap();
        let mut io = Prefixed {
            prefix: Bytes::from_static(b"hello"),
            inner,
        };
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        client.await.unwrap();
        assert_eq!(all, b"hello world");
    }
}
