//! Accepting connections: what `warp::serve` does, with admission control,
//! deadlines, and two differences that keep a long-lived client connection
//! small.
//!
//! - Every connection needs a `Ticket` (`admission`): over a cap it gets a
//!   `503` with `Retry-After` and is closed. Accept errors (out of file
//!   descriptors) back off instead of spinning.
//! - Every connection has a head deadline (`[server] head_timeout_secs`) for
//!   its first request head and, through hyper's header timer, for every
//!   later one and the idle time between them; every write waits at most
//!   `[server] write_timeout_secs` for the client to read (`ClientIo`), on
//!   every path (hyper's, the SSE writer's, an upgraded WebSocket's).
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
//! handed over first.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::reply::Response;

use super::admission::{Admission, RateLimitedLog, Refusal, Ticket};
use super::sse::SseRequest;
use super::tls::ServerTls;
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

/// A byte stream a client connection runs on (plain TCP, or TLS over it).
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> ClientStream for S {}

/// A request head larger than this is left to hyper.
const MAX_SNIFFED_HEAD: usize = 16 * 1024;
/// The longest wait after a failed accept (out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// How long a refusal may take to write, and to read the refused request
/// (so that closing does not reset the connection before the client read
/// the reply).
const REFUSAL_DEADLINE: Duration = Duration::from_millis(100);

/// How one listener serves its connections.
#[derive(Clone)]
pub struct Listener<S> {
    pub service: S,
    pub client: ClientRoute,
    pub admission: Arc<Admission>,
    pub head_timeout: Duration,
    pub write_timeout: Duration,
    /// TLS on this listener (`[server] tls_cert_file`).
    pub tls: Option<Arc<ServerTls>>,
}

/// Accepts connections until `cancel` fires, then lets open requests
/// finish (hyper connections are told to close once their current response
/// is sent; SSE streams end by themselves at shutdown).
pub async fn accept_loop<S: Routes>(
    listener: TcpListener,
    serve: Listener<S>,
    cancel: CancellationToken,
) {
    let connections = TaskTracker::new();
    let accept_errors = RateLimitedLog::default();
    let mut backoff = Duration::ZERO;
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, for example: wait longer each
                    // time, so that a full table does not spin a core.
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                    accept_errors.warn_error("accepting a connection failed; backing off", &error);
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => continue,
                    }
                }
            },
        };
        backoff = Duration::ZERO;
        // Frames are batched into writes already; each goes out at once.
        let _ = stream.set_nodelay(true);
        match serve.admission.admit(peer.ip()) {
            Ok(ticket) => match serve.tls.clone() {
                None => {
                    connections.spawn(connection(stream, ticket, serve.clone(), cancel.clone()));
                }
                Some(tls) => {
                    connections.spawn(tls_connection(
                        stream,
                        tls,
                        ticket,
                        serve.clone(),
                        cancel.clone(),
                    ));
                }
            },
            // A TLS client cannot read a plain-text 503: it is closed, and
            // the refusal is counted and logged all the same.
            Err(_) if serve.tls.is_some() => drop(stream),
            Err(refusal) => match serve.admission.refusal_slot() {
                Some(slot) => {
                    connections.spawn(async move {
                        refuse(stream, refusal).await;
                        drop(slot);
                    });
                }
                // Too many refusals in flight: the reply goes into the empty
                // send buffer of the new socket, and the socket closes now.
                None => {
                    let _ = stream.try_write(&refusal_reply(refusal));
                }
            },
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// The `503` with `Retry-After` that a connection over a cap gets.
fn refusal_reply(refusal: Refusal) -> Vec<u8> {
    let message = match refusal {
        Refusal::MaxConnections => "walcast has as many client connections open as it allows ([server] max_connections); retry shortly",
        Refusal::MaxConnectionsPerIp => "this address has as many connections open as walcast allows one address ([server] max_connections_per_ip); close some, or retry shortly",
        Refusal::MaxStreamsPerTenant => "this tenant has as many streams open as walcast allows ([server] max_streams_per_tenant); retry shortly",
    };
    super::client::refusal_bytes(503, refusal.as_str(), message, Some(1))
}

/// Answers a connection over a cap with `503` and `Retry-After`, then closes.
async fn refuse<S: ClientStream>(mut stream: S, refusal: Refusal) {
    let reply = refusal_reply(refusal);
    let _ = tokio::time::timeout(REFUSAL_DEADLINE, async {
        stream.write_all(&reply).await?;
        stream.shutdown().await?;
        // Read what the client sent, so that the close is not a reset that
        // could discard the reply before the client reads it.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// Serves one connection over TLS: the handshake is part of the head, and
/// must end within the head timeout.
async fn tls_connection<S: Routes>(
    stream: TcpStream,
    tls: Arc<ServerTls>,
    ticket: Ticket,
    serve: Listener<S>,
    cancel: CancellationToken,
) {
    let handshake = tokio::select! {
        _ = cancel.cancelled() => return,
        handshake = tokio::time::timeout(serve.head_timeout, tls.acceptor().accept(stream)) => handshake,
    };
    match handshake {
        Ok(Ok(stream)) => connection(stream, ticket, serve, cancel).await,
        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed; connection closed"),
        Err(_elapsed) => {
            metrics::counter!(crate::metrics::HTTP_TIMEOUTS, crate::metrics::KIND => "head")
                .increment(1);
            tracing::debug!("TLS handshake did not end within the head timeout; connection closed");
        }
    }
}

/// Serves one connection.
async fn connection<S: Routes, T: ClientStream>(
    stream: T,
    ticket: Ticket,
    serve: Listener<S>,
    cancel: CancellationToken,
) {
    let mut stream = ClientIo::new(stream, serve.write_timeout);
    let ticket = Arc::new(ticket);
    let first = tokio::select! {
        _ = cancel.cancelled() => return,
        first = tokio::time::timeout(serve.head_timeout, first_head(&mut stream, serve.client.is_some())) => first,
    };
    match first {
        Err(_elapsed) => {
            metrics::counter!(crate::metrics::HTTP_TIMEOUTS, crate::metrics::KIND => "head")
                .increment(1);
            tracing::debug!(
                timeout_secs = serve.head_timeout.as_secs(),
                "connection sent no complete request head in time; closed"
            );
            return;
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, "connection ended before its first request");
            return;
        }
        Ok(Ok(Sniffed::Sse(request))) => {
            if let Some((ctx, origins)) = &serve.client {
                sse::serve_socket(stream, Arc::clone(ctx), origins, request).await;
            }
            return;
        }
        Ok(Ok(Sniffed::Other(read))) => stream.prefix = read,
    }
    let client = serve.client.clone();
    let service = serve.service.clone();
    let handler = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut service = service.clone();
        let client = client.clone();
        let ticket = Arc::clone(&ticket);
        async move {
            if let Some((ctx, origins)) = &client {
                if let Some(tenant) = ws::ws_path(req.uri().path()).map(str::to_owned) {
                    return Ok(ws::upgrade(Arc::clone(ctx), origins, &tenant, req, ticket));
                }
            }
            tower_service::Service::call(&mut service, req).await
        }
    });
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(serve.head_timeout);
    let io = hyper_util::rt::TokioIo::new(stream);
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
        // A client that went away mid-response, or a head timeout: normal.
        if error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
        {
            metrics::counter!(crate::metrics::HTTP_TIMEOUTS, crate::metrics::KIND => "head")
                .increment(1);
        }
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

/// Reads until the first request head is complete, or until it is clear
/// that the request is not one for `sse::serve_socket` (never, without the
/// client API: then only the first bytes, for hyper's head timer to take
/// over a connection that did send something).
async fn first_head<T: ClientStream>(
    stream: &mut ClientIo<T>,
    client_api: bool,
) -> io::Result<Sniffed> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity());
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if !client_api {
            return Ok(Sniffed::Other(buf.freeze()));
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

/// A client connection: bytes already read from it put back in front, and
/// a deadline on every write that the client does not make room for.
pub struct ClientIo<T> {
    prefix: Bytes,
    inner: T,
    write_timeout: Duration,
    /// Armed when a write found the socket full; disarmed by progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The deadline passed once: every later write fails at once.
    timed_out: bool,
}

impl<T> ClientIo<T> {
    pub fn new(inner: T, write_timeout: Duration) -> ClientIo<T> {
        ClientIo {
            prefix: Bytes::new(),
            inner,
            write_timeout,
            stalled: None,
            timed_out: false,
        }
    }

    /// The write could not go on: whether the client has left it waiting
    /// past the deadline.
    fn stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let timeout = self.write_timeout;
        if self.timed_out {
            return Poll::Ready(Err(Self::timed_out_error(timeout)));
        }
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stalled = None;
                self.timed_out = true;
                metrics::counter!(crate::metrics::HTTP_TIMEOUTS, crate::metrics::KIND => "write")
                    .increment(1);
                Poll::Ready(Err(Self::timed_out_error(timeout)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn timed_out_error(timeout: Duration) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client read nothing for {} s ([server] write_timeout_secs)",
                timeout.as_secs()
            ),
        )
    }

    fn progressed<R>(&mut self, result: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if result.is_ready() {
            self.stalled = None;
        }
        result
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ClientIo<T> {
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

impl<T: AsyncWrite + Unpin> AsyncWrite for ClientIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.timed_out {
            return this.stall(cx);
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => this.stall(cx),
            ready => this.progressed(ready),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.timed_out {
            return this.stall(cx);
        }
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.stall(cx),
            ready => this.progressed(ready),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.stall(cx).map_ok(|_| ()),
            ready => this.progressed(ready),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

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
    async fn a_write_the_client_does_not_make_room_for_fails_at_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (inner, _) = listener.accept().await.unwrap();
        let mut io = ClientIo::new(inner, Duration::from_millis(300));
        let started = std::time::Instant::now();
        let chunk = vec![b'x'; 64 * 1024];
        let error = loop {
            if let Err(error) = io.write_all(&chunk).await {
                break error;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the writes never blocked"
            );
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(300));
        // Once timed out, a later write fails at once.
        let again = std::time::Instant::now();
        assert!(io.write_all(b"x").await.is_err());
        assert!(again.elapsed() < Duration::from_millis(100));
        drop(client);
    }

    #[tokio::test]
    async fn client_io_reads_the_prefix_first() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b" world").await.unwrap();
        });
        let (inner, _) = listener.accept().await.unwrap();
        let mut io = ClientIo::new(inner, Duration::from_secs(1));
        io.prefix = Bytes::from_static(b"hello");
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        client.await.unwrap();
        assert_eq!(all, b"hello world");
    }
}
