//! `GET /v1/{tenant}/events`: Server-Sent Events, as a browser's
//! `EventSource` reads them.
//!
//! Frames: `retry:` first; `id:` + `event: change` + `data: <event JSON>` per
//! event (the event's bytes as encoded once, not copied); `event: gap` and
//! `event: error` with a JSON body; a comment every `heartbeat_secs`, with an
//! `id:` line when the stream moved past events the filters skipped (so a
//! reconnect does not read them again). Resume with the `Last-Event-ID`
//! header (an `EventSource` sends it by itself) or `last_event_id` in the
//! query. The stream ends with a comment at shutdown, with an `error` when the
//! token expires, and with a `gap` (reason `lagged`) when the client falls
//! too far behind.

// A refused request's `Err` is the reply itself, made once per request.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;
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
    out: VecDeque<Bytes>,
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
    let mut out = VecDeque::new();
    // An `id:` at once: a browser that reconnects before the first event
    // resumes from here instead of from "now".
    let start = match feed.start() {
        Some(id) => format!("id: {id}\n"),
        None => String::new(),
    };
    out.push_back(Bytes::from(format!(
        "retry: {RETRY_MS}\n{start}: walcast {} events for tenant {tenant}\n\n",
        env!("CARGO_PKG_VERSION")
    )));
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
    // The stream is produced by its own task: the body hyper polls must be
    // Sync, the feed's futures are not.
    let (tx, rx) = mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    tokio::spawn(async move {
        let mut state = state;
        loop {
            let chunk = tokio::select! {
                // The client went away.
                _ = tx.closed() => break,
                chunk = state.next_chunk() => chunk,
            };
            let Some(chunk) = chunk else { break };
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
    });
    let mut response = warp::reply::stream(Chunks(rx)).into_response();
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
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.out.pop_front() {
                return Some(chunk);
            }
            if self.done {
                return None;
            }
            let expiry = self.expiry;
            tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled() => {
                    self.done = true;
                    self.out.push_back(Bytes::from_static(b": walcast is shutting down; reconnect (with Last-Event-ID) to resume\n\n"));
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
                        self.out.push_back(Bytes::from(format!("id: {cursor}\n: keep-alive\n\n")));
                    } else {
                        self.out.push_back(Bytes::from_static(b": keep-alive\n\n"));
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
                    .push_back(Bytes::from(format!("id: {id}\nevent: change\ndata: ")));
                self.out.push_back(json);
                self.out.push_back(Bytes::from_static(b"\n\n"));
            }
            FeedItem::Gap {
                after,
                resume_from,
                reason,
            } => {
                let body = gap_json(None, after.or(self.client_id), resume_from, reason.as_str());
                self.out
                    .push_back(Bytes::from(format!("event: gap\ndata: {body}\n\n")));
            }
            FeedItem::End(end) => {
                self.done = true;
                match end {
                    FeedEnd::Lagged => {
                        let body = gap_json(None, self.client_id, None, "lagged");
                        self.out
                            .push_back(Bytes::from(format!("event: gap\ndata: {body}\n\n")));
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
            .push_back(Bytes::from(format!("event: error\ndata: {body}\n\n")));
    }
}

/// Frames waiting for the socket; beyond them, the subscriber's queue fills.
const CHUNKS_IN_FLIGHT: usize = 16;

/// The body: the frames the stream's task produces.
struct Chunks(mpsc::Receiver<Bytes>);

impl futures_util::Stream for Chunks {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(Ok))
    }
}

/// Sleeps until `deadline`, or forever without one.
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
