//! `GET /v1/{tenant}/events`: Server-Sent Events, as a browser's
//! `EventSource` reads them.
//!
//! Frames: `retry:` first; `id:` + `event: change` + `data: <event JSON>` per
//! event (the event's JSON as encoded once); `event: gap` and
//! `event: error` with a JSON body; a comment every `heartbeat_secs`, with an
//! `id:` line when the stream moved past events the filters skipped (so a
//! reconnect does not read them again). Resume with the `Last-Event-ID`
//! header (an `EventSource` sends it by itself) or `last_event_id` in the
//! query. Frames ready together go out as one chunk (one write for a
//! backlog). A connection's first request is served by `serve_socket` on
//! the bare socket (see `http::accept`); a later one on a kept-alive
//! connection goes through warp as a response body. The stream ends with a comment at shutdown, with an `error` when the
//! token expires, and with a `gap` (reason `lagged`) when the client falls
//! too far behind.

// A refused request's `Err` is the reply itself, made once per request.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::accept::{ClientIo, ClientStream};
use super::admission::StreamTicket;
use super::client::{check_origin, error, gap_json, sleep_until, ClientContext, SubscriberGauge};
use crate::hub::{Feed, FeedEnd, FeedItem};
use crate::model::EventId;

/// Query parameters `/events` knows.
const KNOWN: &[&str] = &["table", "op", "filter", "access_token", "last_event_id"];
/// How long a browser waits before reconnecting, in milliseconds.
const RETRY_MS: u64 = 2000;

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

/// Answers one SSE request that came through warp (a later request on a
/// kept-alive connection; the first goes to `serve_socket`).
pub fn events(
    ctx: Arc<ClientContext>,
    tenant: String,
    raw_query: String,
    authorization: Option<String>,
    last_event_id: Option<String>,
) -> Response {
    match open(ctx, &tenant, &raw_query, authorization, last_event_id) {
        Ok(stream) => stream.into_response(),
        Err(reply) => reply,
    }
}

/// Checks the request and opens its stream, or says why not.
pub fn open(
    ctx: Arc<ClientContext>,
    tenant: &str,
    raw_query: &str,
    authorization: Option<String>,
    last_event_id: Option<String>,
) -> Result<SseStream, Response> {
    let (feed, expiry, ticket) = start(&ctx, tenant, raw_query, authorization, last_event_id)?;
    Ok(SseStream::new(ctx, tenant, feed, expiry, ticket))
}

/// The response headers of an event stream (both paths).
const STREAM_HEADERS: &[(&str, &str)] = &[
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    // Proxies such as nginx would otherwise buffer the stream.
    ("x-accel-buffering", "no"),
];

/// How long a write may wait for a client that does not read.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// The same, for the last frames at shutdown.
const WRITE_STALL_AT_SHUTDOWN: Duration = Duration::from_secs(2);

/// Serves a `GET /v1/<tenant>/events` request on a connection that
/// `accept` handed over with its request head read: the reply, then the
/// stream in chunked encoding, then the connection is closed. This holds no
/// buffer between frames, unlike a hyper connection (8 KiB read + 8 KiB
/// write for its lifetime).
pub async fn serve_socket<T: ClientStream>(
    mut socket: ClientIo<T>,
    ctx: Arc<ClientContext>,
    cors_origins: &[String],
    request: SseRequest,
) {
    let origin = match check_origin(cors_origins, request.origin.as_deref()) {
        Ok(origin) => origin,
        Err(reply) => return write_reply(&mut socket, &request.path, None, reply).await,
    };
    let opened = open(
        Arc::clone(&ctx),
        &request.tenant,
        &request.query,
        request.authorization,
        request.last_event_id,
    );
    let mut stream = match opened {
        Ok(stream) => stream,
        Err(reply) => return write_reply(&mut socket, &request.path, origin, reply).await,
    };
    tracing::debug!(method = "GET", path = %request.path, status = 200, "http request");
    let mut head = response_head(StatusCode::OK, origin);
    for (name, value) in STREAM_HEADERS {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let chunked = !request.http10;
    if chunked {
        head.push_str("transfer-encoding: chunked\r\n");
    }
    head.push_str("connection: close\r\n\r\n");
    let mut head = Some(head);
    let (mut reader, mut writer) = tokio::io::split(socket);
    loop {
        let chunk = tokio::select! {
            chunk = stream.next_chunk() => chunk,
            () = client_gone(&mut reader) => return,
        };
        let head = head.take().unwrap_or_default();
        let (size, body, end): (String, &[u8], &[u8]) = match (&chunk, chunked) {
            (Some(chunk), true) => (format!("{:x}\r\n", chunk.len()), chunk, b"\r\n"),
            (Some(chunk), false) => (String::new(), chunk, b""),
            (None, true) => (String::new(), b"", b"0\r\n\r\n"),
            (None, false) => (String::new(), b"", b""),
        };
        let stall = if ctx.shutdown.is_cancelled() {
            WRITE_STALL_AT_SHUTDOWN
        } else {
            WRITE_STALL
        };
        let written = write_all(
            &mut writer,
            &mut [
                IoSlice::new(head.as_bytes()),
                IoSlice::new(size.as_bytes()),
                IoSlice::new(body),
                IoSlice::new(end),
            ],
            stall,
        )
        .await;
        if let Err(error) = written {
            tracing::debug!(%error, "event stream client gone");
            return;
        }
        if chunk.is_none() {
            break;
        }
    }
    let _ = writer.shutdown().await;
}

/// A response's status line and the headers every reply of this path
/// carries: `date` (RFC 9110 asks an origin server for one), `nosniff` (as
/// the warp routes add), and the CORS headers for an allowed origin.
fn response_head(status: StatusCode, origin: Option<&str>) -> String {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ndate: {}\r\nx-content-type-options: nosniff\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        httpdate::fmt_http_date(std::time::SystemTime::now())
    );
    if let Some(origin) = origin {
        head.push_str(&format!(
            "access-control-allow-origin: {origin}\r\nvary: origin\r\n"
        ));
    }
    head
}

/// Completes when the client closes its side (or the connection fails);
/// anything it sends meanwhile is read and ignored.
async fn client_gone(reader: &mut (impl AsyncRead + Unpin)) {
    let mut buf = [0u8; 128];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Writes every slice, or fails when the client has not taken them within
/// `stall`.
async fn write_all(
    writer: &mut (impl AsyncWrite + Unpin),
    mut slices: &mut [IoSlice<'_>],
    stall: Duration,
) -> std::io::Result<()> {
    let write = async {
        // Drops leading empty slices (an empty `slices` is then done).
        IoSlice::advance_slices(&mut slices, 0);
        while !slices.is_empty() {
            let n = writer.write_vectored(slices).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut slices, n);
        }
        Ok(())
    };
    tokio::time::timeout(stall, write).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the client read nothing for {} s", stall.as_secs()),
        )
    })?
}

/// Writes a refusal (JSON error reply) and closes the connection.
async fn write_reply(
    socket: &mut (impl AsyncWrite + Unpin),
    path: &str,
    origin: Option<&str>,
    reply: Response,
) {
    use http_body_util::BodyExt;
    let status = reply.status();
    tracing::debug!(method = "GET", %path, status = status.as_u16(), "http request");
    let (parts, body) = reply.into_parts();
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut head = response_head(status, origin);
    for (name, value) in &parts.headers {
        if let Ok(value) = value.to_str() {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let written = write_all(
        socket,
        &mut [IoSlice::new(head.as_bytes()), IoSlice::new(&body)],
        WRITE_STALL_AT_SHUTDOWN,
    )
    .await;
    if written.is_ok() {
        let _ = socket.shutdown().await;
    }
}

fn start(
    ctx: &ClientContext,
    tenant: &str,
    raw_query: &str,
    authorization: Option<String>,
    last_event_id: Option<String>,
) -> Result<(Feed, Option<Instant>, StreamTicket), Response> {
    let (hub, query, principal) = ctx.open(tenant, raw_query, authorization.as_deref())?;
    if let Some(unknown) = query.unknown(KNOWN) {
        return Err(error(
            400,
            "unknown_parameter",
            &format!("unknown query parameter {:?}; /events takes table, op, filter, access_token and last_event_id", super::client::shorten(&unknown)),
        ));
    }
    let since =
        match last_event_id.as_deref().or(query.one("last_event_id")) {
            None | Some("") => None,
            Some(text) => Some(text.trim().parse::<EventId>().map_err(|err| {
                error(400, "bad_last_event_id", &format!("Last-Event-ID: {err}"))
            })?),
        };
    let subscription = ctx.subscription(&hub, &query.subscription(), &principal)?;
    let expiry = principal.expires_at.map(|exp| {
        let now = crate::model::now_unix();
        let left = exp
            .saturating_add(ctx.auth.leeway_secs())
            .saturating_sub(now);
        Instant::now() + Duration::from_secs(left)
    });
    let ticket = ctx.stream_ticket(&hub)?;
    Ok((Feed::new(hub, subscription, since), expiry, ticket))
}

/// One client's event stream: frames waiting to go out, and what makes
/// more.
pub struct SseStream {
    ctx: Arc<ClientContext>,
    feed: Feed,
    expiry: Option<Instant>,
    heartbeat: tokio::time::Interval,
    /// The id the client would resume from now.
    client_id: Option<EventId>,
    /// Frames not yet handed to the server, written as one chunk.
    out: BytesMut,
    done: bool,
    _gauge: SubscriberGauge,
    /// The stream's place under `[server] max_streams_per_tenant`.
    _ticket: StreamTicket,
}

impl SseStream {
    fn new(
        ctx: Arc<ClientContext>,
        tenant: &str,
        feed: Feed,
        expiry: Option<Instant>,
        ticket: StreamTicket,
    ) -> SseStream {
        let mut heartbeat = tokio::time::interval_at(Instant::now() + ctx.heartbeat, ctx.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut out = BytesMut::new();
        // An `id:` at once: a browser that reconnects before the first event
        // resumes from here instead of from "now".
        let start = match feed.start() {
            Some(id) => format!("id: {id}\n"),
            None => String::new(),
        };
        out.extend_from_slice(
            format!(
                "retry: {RETRY_MS}\n{start}: walcast {} events for tenant {tenant}\n\n",
                env!("CARGO_PKG_VERSION")
            )
            .as_bytes(),
        );
        SseStream {
            client_id: feed.start(),
            ctx,
            feed,
            expiry,
            heartbeat,
            out,
            done: false,
            _gauge: SubscriberGauge::new(tenant, "sse"),
            _ticket: ticket,
        }
    }

    /// The stream as a response body for hyper.
    fn into_response(self) -> Response {
        let body = futures_util::stream::unfold(self, |mut state| async move {
            let chunk = state.next_chunk().await?;
            Some((Ok::<Bytes, Infallible>(chunk), state))
        });
        let mut response =
            warp::reply::stream(SyncStream(std::sync::Mutex::new(Box::pin(body)))).into_response();
        let headers = response.headers_mut();
        for (name, value) in STREAM_HEADERS {
            headers.insert(*name, warp::http::HeaderValue::from_static(value));
        }
        response
    }
}

impl SseStream {
    /// The next chunk for the socket: every frame ready now, up to
    /// `MAX_CHUNK` bytes, so that a backlog goes out in few writes.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if !self.out.is_empty() {
                while self.out.len() < MAX_CHUNK && !self.done {
                    match self.feed.try_next() {
                        Some(item) => self.item(item),
                        None => break,
                    }
                }
                return Some(self.out.split().freeze());
            }
            if self.done {
                return None;
            }
            let expiry = self.expiry;
            tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled() => {
                    self.done = true;
                    self.out.extend_from_slice(b": walcast is shutting down; reconnect (with Last-Event-ID) to resume\n\n");
                }
                _ = sleep_until(expiry) => {
                    self.done = true;
                    self.error("token_expired", "the token expired; reconnect with a fresh token (the stream resumes from Last-Event-ID)");
                }
                item = self.feed.next() => self.item(item),
                _ = self.heartbeat.tick() => {
                    let client_id = self.client_id;
                    if let Some(cursor) = self.feed.cursor().filter(|c| Some(*c) > client_id) {
                        self.client_id = Some(cursor);
                        self.out.extend_from_slice(format!("id: {cursor}\n: keep-alive\n\n").as_bytes());
                    } else {
                        self.out.extend_from_slice(b": keep-alive\n\n");
                    }
                }
            }
        }
    }

    fn item(&mut self, item: FeedItem) {
        match item {
            FeedItem::Change { id, json } => {
                self.client_id = Some(id);
                self.out
                    .extend_from_slice(format!("id: {id}\nevent: change\ndata: ").as_bytes());
                self.out.extend_from_slice(&json);
                self.out.extend_from_slice(b"\n\n");
            }
            FeedItem::Gap {
                after,
                resume_from,
                reason,
            } => {
                let body = gap_json(None, after.or(self.client_id), resume_from, reason.as_str());
                self.out
                    .extend_from_slice(format!("event: gap\ndata: {body}\n\n").as_bytes());
            }
            FeedItem::End(end) => {
                self.done = true;
                match end {
                    FeedEnd::Lagged => {
                        let resume = self.client_id.or(self.feed.cursor());
                        let body = gap_json(None, resume, None, "lagged");
                        self.out
                            .extend_from_slice(format!("event: gap\ndata: {body}\n\n").as_bytes());
                    }
                    FeedEnd::TenantStopped => self.error(
                        "tenant_stopped",
                        "the tenant was stopped or reconfigured; reconnect to resume",
                    ),
                    FeedEnd::HistoryFailed(why) => self.error("history_unavailable", &why),
                }
            }
        }
    }

    fn error(&mut self, code: &str, message: &str) {
        let body = json!({"type": "error", "code": code, "message": message});
        self.out
            .extend_from_slice(format!("event: error\ndata: {body}\n\n").as_bytes());
    }
}

/// The largest chunk a stream hands over at once.
const MAX_CHUNK: usize = 64 * 1024;

/// The body hyper polls must be `Sync`; the feed's futures are not. A mutex
/// makes the stream `Sync`, and, since polling has `&mut`, is never locked.
struct SyncStream<S>(std::sync::Mutex<S>);

impl<S: futures_util::Stream + Unpin> futures_util::Stream for SyncStream<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let inner = self.0.get_mut().unwrap_or_else(|p| p.into_inner());
        std::pin::Pin::new(inner).poll_next(cx)
    }
}
