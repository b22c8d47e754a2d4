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
//! backlog). The stream ends with a comment at shutdown, with an `error` when the
//! token expires, and with a `gap` (reason `lagged`) when the client falls
//! too far behind.

// A refused request's `Err` is the reply itself, made once per request.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::json;
use tokio::time::Instant;
use warp::reply::Response;
use warp::Reply;

use super::client::{error, gap_json, ClientContext, SubscriberGauge};
use crate::hub::{Feed, FeedEnd, FeedItem};
use crate::model::EventId;

/// Query parameters `/events` knows.
const KNOWN: &[&str] = &["table", "op", "filter", "access_token", "last_event_id"];
/// How long a browser waits before reconnecting, in milliseconds.
const RETRY_MS: u64 = 2000;

/// Answers one SSE request.
pub fn events(
    ctx: Arc<ClientContext>,
    tenant: String,
    raw_query: String,
    authorization: Option<String>,
    last_event_id: Option<String>,
) -> Response {
    match start(&ctx, &tenant, &raw_query, authorization, last_event_id) {
        Ok((feed, principal_expiry)) => stream(ctx, tenant, feed, principal_expiry),
        Err(reply) => reply,
    }
}

fn start(
    ctx: &ClientContext,
    tenant: &str,
    raw_query: &str,
    authorization: Option<String>,
    last_event_id: Option<String>,
) -> Result<(Feed, Option<Instant>), Response> {
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
    Ok((Feed::new(hub, subscription, since), expiry))
}

struct SseStream {
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
}

fn stream(
    ctx: Arc<ClientContext>,
    tenant: String,
    feed: Feed,
    expiry: Option<Instant>,
) -> Response {
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
    let state = SseStream {
        client_id: feed.start(),
        ctx,
        feed,
        expiry,
        heartbeat,
        out,
        done: false,
        _gauge: SubscriberGauge::new(&tenant, "sse"),
    };
    let body = futures_util::stream::unfold(state, |mut state| async move {
        let chunk = state.next_chunk().await?;
        Some((Ok::<Bytes, Infallible>(chunk), state))
    });
    let mut response =
        warp::reply::stream(SyncStream(std::sync::Mutex::new(Box::pin(body)))).into_response();
    let headers = response.headers_mut();
    use warp::http::HeaderValue;
    headers.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    // Proxies such as nginx would otherwise buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
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
                        let body = gap_json(None, self.client_id, None, "lagged");
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

/// Sleeps until `deadline`, or forever without one.
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
