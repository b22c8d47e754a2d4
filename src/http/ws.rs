//! `GET /v1/{tenant}/ws`: a WebSocket carrying JSON messages, with several
//! subscriptions per connection.
//!
//! Client → server: `subscribe` (`id`, `tables`, `ops`, `filters`, `since`),
//! `unsubscribe` (`id`), `auth` (`token`: a fresh token before the current
//! one expires), `ping`. Server → client: `subscribed`, `unsubscribed`,
//! `change` (`sub`, `event`), `gap`, `error`, `authenticated`, `pong`.
//! The token is checked at the upgrade (header, or `access_token` in the
//! query for browsers). When it expires the socket closes with code 4001.
//! A client that falls behind gets a `gap` (reason `lagged`) with the last
//! id it received, then close code 1013; it can resume with `since`.
//! The server pings every `heartbeat_secs` and closes a connection that has
//! not been heard from for three of them (at least 10 s).
//!
//! The upgrade is finished here, not by warp's `ws` filter, so that the
//! connection's buffers are ours to size: tungstenite would otherwise hold a
//! 128 KiB read buffer per connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use warp::reply::Response;

use super::admission::Ticket;
use super::client::{gap_json, sleep_until, ClientContext, SubscriberGauge};
use crate::auth::Principal;
use crate::hub::{Feed, FeedEnd, FeedItem, Subscription, SubscriptionRequest, TenantHub};
use crate::model::EventId;

/// Largest message a client may send.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 64 * 1024;
/// Longest subscription id.
const MAX_SUB_ID_CHARS: usize = 128;
/// Messages waiting for the socket, from all subscriptions of a connection.
const OUTBOX: usize = 64;

/// Close codes.
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_TRY_AGAIN: u16 = 1013;
const CLOSE_TOKEN_EXPIRED: u16 = 4001;
const CLOSE_SILENT: u16 = 4002;
const CLOSE_TENANT_STOPPED: u16 = 1012;
/// How long a closing connection waits for the client's close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// The same, for a client cut off for being slow.
const CLOSE_WAIT_LAGGED: Duration = Duration::from_secs(15);

enum Out {
    /// A change: the subscription's message prefix and the event's JSON,
    /// joined only when written, so that what waits holds no copy.
    Change(Arc<str>, Bytes),
    Text(String),
    Close(u16, String),
}

struct SubTask {
    cancel: CancellationToken,
    /// What the client asked for, built again with a refreshed token.
    request: SubscriptionRequest,
    /// The subscription's tables, which a refresh may not change.
    tables: Vec<String>,
    /// New subscriptions (a refreshed token's claims) for the task.
    update: mpsc::UnboundedSender<Subscription>,
}

impl Drop for SubTask {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Read buffer per connection (tungstenite's default is 128 KiB, which
/// 10,000 idle clients would turn into 1.3 GB).
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Bytes written per socket write, and queued before writes wait.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// Whether a request is for the WebSocket endpoint (`/v1/<tenant>/ws`);
/// returns the tenant.
pub fn ws_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/")?;
    let (tenant, tail) = rest.split_once('/')?;
    (tail == "ws" && !tenant.is_empty()).then_some(tenant)
}

/// Answers a request to the WebSocket endpoint: refuses it (CORS, token,
/// not an upgrade) with a JSON error, or switches protocols and runs the
/// session.
pub fn upgrade(
    ctx: Arc<ClientContext>,
    cors_origins: &[String],
    tenant: &str,
    mut req: hyper::Request<Incoming>,
    ticket: Arc<Ticket>,
) -> Response {
    use super::client::error;
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if req.method() != hyper::Method::GET {
        return error(405, "method_not_allowed", "the client API takes GET only");
    }
    if let Err(reply) = super::client::check_origin(cors_origins, header("origin")) {
        return reply;
    }
    let is_upgrade = header("connection")
        .is_some_and(|c| c.to_ascii_lowercase().contains("upgrade"))
        && header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let Some(key) = header("sec-websocket-key")
        .filter(|_| is_upgrade)
        .map(str::to_owned)
    else {
        return error(400, "not_a_websocket", "this is the WebSocket endpoint: connect with a WebSocket client (SSE is /v1/<tenant>/events)");
    };
    if header("sec-websocket-version") != Some("13") {
        return error(
            400,
            "bad_websocket_version",
            "walcast speaks WebSocket version 13 (RFC 6455)",
        );
    }
    let query = req.uri().query().unwrap_or("").to_owned();
    let authorization = header("authorization").map(str::to_owned);
    let (hub, _query, principal) = match ctx.open(tenant, &query, authorization.as_deref()) {
        Ok(opened) => opened,
        Err(reply) => return reply,
    };
    // Over the tenant's stream cap the upgrade still happens, so that the
    // client can read why in the close frame.
    let stream = ctx
        .stream_ticket(&hub)
        .map_err(|_| format!("too many streams for tenant {}; retry shortly", hub.tenant));
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        // The connection's place (and the tenant's) is held until it closes.
        let _ticket = ticket;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "websocket upgrade failed");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(WRITE_BUFFER_BYTES)
            .max_message_size(Some(MAX_CLIENT_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_CLIENT_MESSAGE_BYTES));
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        match stream {
            Ok(_stream) => session(socket, ctx, hub, principal).await,
            Err(reason) => refuse(socket, reason).await,
        }
    });
    let mut response = Response::new(Default::default());
    *response.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    use warp::http::HeaderValue;
    headers.insert("connection", HeaderValue::from_static("upgrade"));
    headers.insert("upgrade", HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert("sec-websocket-accept", accept);
    }
    response
}

/// Closes an upgraded connection at once with 1013 (try again later).
async fn refuse(mut socket: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>, reason: String) {
    let frame = CloseFrame {
        code: CloseCode::from(CLOSE_TRY_AGAIN),
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, socket.close(Some(frame))).await;
}

/// Runs one upgraded connection until it closes.
pub async fn session(
    socket: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
    ctx: Arc<ClientContext>,
    hub: Arc<TenantHub>,
    principal: Principal,
) {
    let _gauge = SubscriberGauge::new(hub.tenant.as_str(), "ws");
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(OUTBOX);
    let mut subs: HashMap<String, SubTask> = HashMap::new();
    let mut principal = principal;
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval_at(Instant::now() + ctx.heartbeat, ctx.heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let close = |code: u16, reason: String| {
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        }))
    };
    'session: loop {
        let expiry = expiry(&ctx, &principal);
        let outgoing = tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => {
                Some(close(CLOSE_GOING_AWAY, "walcast is shutting down; reconnect and subscribe with since to resume".into()))
            }
            _ = sleep_until(expiry) => {
                let error = json!({"type": "error", "code": "token_expired", "message": "the token expired; reconnect with a fresh token (send {\"type\":\"auth\",\"token\":...} before it expires to continue)"});
                let _ = sink.send(Message::text(error.to_string())).await;
                Some(close(CLOSE_TOKEN_EXPIRED, "token expired".into()))
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > silent_after(ctx.heartbeat) {
                    Some(close(CLOSE_SILENT, "no pong or message for three heartbeats".into()))
                } else {
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        break;
                    }
                    None
                }
            }
            incoming = stream.next() => match incoming {
                None => break,
                Some(Err(err)) => {
                    use tokio_tungstenite::tungstenite::Error;
                    if matches!(err, Error::Capacity(_)) {
                        let _ = sink.send(close(CLOSE_TOO_BIG, format!("messages are limited to {MAX_CLIENT_MESSAGE_BYTES} bytes"))).await;
                    }
                    break;
                }
                Some(Ok(message)) => {
                    last_heard = Instant::now();
                    if message.is_close() {
                        break;
                    }
                    if message.is_ping() || message.is_pong() {
                        continue;
                    }
                    let reply = match &message {
                        Message::Text(text) => handle(text, &ctx, &hub, &mut principal, &mut subs, &out_tx),
                        _ => Some(error_json(None, "bad_message", "send JSON text frames, like {\"type\":\"subscribe\",\"id\":\"s1\",\"tables\":[\"public.tasks\"]}")),
                    };
                    if let Some(reply) = reply {
                        if sink.send(Message::text(reply.to_string())).await.is_err() {
                            break;
                        }
                    }
                    None
                }
            },
            out = out_rx.recv() => {
                // Everything already waiting goes out with one flush.
                let mut next = out;
                let mut closing = None;
                let mut batched = 0;
                while let Some(out) = next.take() {
                    match out {
                        Out::Change(prefix, json) => {
                            let mut text = String::with_capacity(prefix.len() + json.len() + 1);
                            text.push_str(&prefix);
                            text.push_str(&String::from_utf8_lossy(&json));
                            text.push('}');
                            if sink.feed(Message::text(text)).await.is_err() {
                                break 'session;
                            }
                        }
                        Out::Text(text) => {
                            if sink.feed(Message::text(text)).await.is_err() {
                                break 'session;
                            }
                        }
                        Out::Close(code, reason) => {
                            closing = Some(close(code, reason));
                            break;
                        }
                    }
                    batched += 1;
                    if batched < OUTBOX {
                        next = out_rx.try_recv().ok();
                    }
                }
                if sink.flush().await.is_err() {
                    break;
                }
                closing
            }
        };
        if let Some(close) = outgoing {
            // A client cut off for being slow still has a backlog to read
            // before it sees the close: give it longer.
            let wait = match &close {
                Message::Close(Some(frame)) if u16::from(frame.code) == CLOSE_TRY_AGAIN => {
                    CLOSE_WAIT_LAGGED
                }
                _ => CLOSE_WAIT,
            };
            if tokio::time::timeout(wait, sink.send(close)).await.is_err() {
                break;
            }
            // Let the client read what was sent and answer the close: a
            // socket closed with unread input would be reset, and the
            // client would lose the last messages.
            let _ = tokio::time::timeout(wait, async {
                while let Some(Ok(message)) = stream.next().await {
                    if message.is_close() {
                        break;
                    }
                }
            })
            .await;
            break;
        }
    }
    drop(subs);
    // A client that stopped reading does not get to hold the connection
    // for the close handshake.
    let _ = tokio::time::timeout(CLOSE_WAIT, sink.close()).await;
}

/// How long a connection may stay silent (no message, no pong) before it
/// counts as half-open: three heartbeats, and never less than 10 s, since a
/// client busy reading a backlog answers pings late.
fn silent_after(heartbeat: Duration) -> Duration {
    (3 * heartbeat).max(Duration::from_secs(10))
}

fn expiry(ctx: &ClientContext, principal: &Principal) -> Option<Instant> {
    principal.expires_at.map(|exp| {
        let left = exp
            .saturating_add(ctx.auth.leeway_secs())
            .saturating_sub(crate::model::now_unix());
        Instant::now() + Duration::from_secs(left)
    })
}

fn error_json(id: Option<&str>, code: &str, message: &str) -> Value {
    let mut value = json!({"type": "error", "code": code, "message": message});
    if let Some(id) = id {
        value["id"] = json!(id);
    }
    value
}

/// A string or a list of strings (`"a"` or `["a","b"]`), for lenient fields.
fn strings(value: Option<&Value>, field: &str) -> Result<Vec<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{field} must be a list of strings"))
            })
            .collect(),
        Some(_) => Err(format!("{field} must be a string or a list of strings")),
    }
}

/// Handles one client message; returns the direct reply, if any.
fn handle(
    text: &str,
    ctx: &ClientContext,
    hub: &Arc<TenantHub>,
    principal: &mut Principal,
    subs: &mut HashMap<String, SubTask>,
    out: &mpsc::Sender<Out>,
) -> Option<Value> {
    let message: Value =
        match serde_json::from_str(text) {
            Ok(Value::Object(map)) => Value::Object(map),
            Ok(_) | Err(_) => return Some(error_json(
                None,
                "bad_json",
                "messages are JSON objects with a \"type\": subscribe, unsubscribe, auth or ping",
            )),
        };
    let id = message.get("id").and_then(Value::as_str);
    match message.get("type").and_then(Value::as_str) {
        Some("ping") => Some(json!({"type": "pong"})),
        Some("subscribe") => Some(subscribe(&message, ctx, hub, principal, subs, out)),
        Some("unsubscribe") => {
            let Some(id) = id else {
                return Some(error_json(
                    None,
                    "bad_message",
                    "unsubscribe needs the \"id\" of the subscription",
                ));
            };
            match subs.remove(id) {
                Some(_) => Some(json!({"type": "unsubscribed", "id": id})),
                None => Some(error_json(
                    Some(id),
                    "unknown_subscription",
                    "no subscription with this id on this connection",
                )),
            }
        }
        Some("auth") => {
            let Some(token) = message.get("token").and_then(Value::as_str) else {
                return Some(error_json(
                    None,
                    "bad_message",
                    "auth needs a \"token\" (a JWT)",
                ));
            };
            match ctx.auth.verify(token, hub.tenant.as_str(), crate::model::now_unix()) {
                Ok(fresh) if fresh.role == principal.role && fresh.claims.get("sub") == principal.claims.get("sub") => {
                    *principal = fresh;
                    let ended = refresh(ctx, hub, principal, subs, out);
                    Some(json!({"type": "authenticated", "expires_at": principal.expires_at, "ended": ended}))
                }
                Ok(_) => Some(error_json(None, "token_mismatch", "the new token has another role or sub than the connection's; open a new connection with it")),
                Err(err) => {
                    metrics::counter!(crate::metrics::DELIVERY_AUTH_FAILURES, crate::metrics::REASON => err.code()).increment(1);
                    Some(error_json(None, err.code(), &err.to_string()))
                }
            }
        }
        Some(other) => Some(error_json(
            id,
            "bad_message",
            &format!(
                "unknown message type {:?}; use subscribe, unsubscribe, auth or ping",
                super::client::shorten(other)
            ),
        )),
        None => Some(error_json(
            id,
            "bad_message",
            "the message has no \"type\"; use subscribe, unsubscribe, auth or ping",
        )),
    }
}

fn subscribe(
    message: &Value,
    ctx: &ClientContext,
    hub: &Arc<TenantHub>,
    principal: &Principal,
    subs: &mut HashMap<String, SubTask>,
    out: &mpsc::Sender<Out>,
) -> Value {
    let Some(id) = message.get("id").and_then(Value::as_str) else {
        return error_json(
            None,
            "bad_message",
            "subscribe needs an \"id\" (a string naming the subscription, echoed in its messages)",
        );
    };
    if id.is_empty() || id.chars().count() > MAX_SUB_ID_CHARS {
        return error_json(
            None,
            "bad_message",
            &format!("a subscription id is 1 to {MAX_SUB_ID_CHARS} characters"),
        );
    }
    if subs.contains_key(id) {
        return error_json(Some(id), "duplicate_subscription", "this connection already has a subscription with this id; unsubscribe it first or pick another id");
    }
    if subs.len() >= ctx.max_subscriptions {
        return error_json(
            Some(id),
            "too_many_subscriptions",
            &format!(
                "a connection holds at most {} subscriptions ([server] max_subscriptions)",
                ctx.max_subscriptions
            ),
        );
    }
    let (request, since) = match subscribe_request(message) {
        Ok(parsed) => parsed,
        Err((code, problem)) => return error_json(Some(id), code, &problem),
    };
    let subscription = match ctx.subscription(hub, &request, principal) {
        Ok(subscription) => subscription,
        Err(err) => return error_json(Some(id), err.code, &err.message),
    };
    let tables = table_names(&subscription);
    let feed = Feed::new(Arc::clone(hub), subscription, since);
    let position = feed.start().map(|id| id.to_string());
    let cancel = CancellationToken::new();
    let (update, updates) = mpsc::unbounded_channel();
    tokio::spawn(run_subscription(
        id.to_owned(),
        feed,
        out.clone(),
        cancel.clone(),
        updates,
    ));
    subs.insert(
        id.to_owned(),
        SubTask {
            cancel,
            request,
            tables: tables.clone(),
            update,
        },
    );
    json!({"type": "subscribed", "id": id, "tables": tables, "since": since.map(|s| s.to_string()), "position": position})
}

/// The request and `since` of a `subscribe` message, or the error code and
/// what is wrong. Pure: fuzzed (fuzz/fuzz_targets/client.rs).
pub fn subscribe_request(
    message: &Value,
) -> Result<(SubscriptionRequest, Option<EventId>), (&'static str, String)> {
    let bad = |problem: String| ("bad_message", problem);
    let mut tables = strings(message.get("tables"), "tables").map_err(bad)?;
    tables.extend(strings(message.get("table"), "table").map_err(bad)?);
    let mut ops = strings(message.get("ops"), "ops").map_err(bad)?;
    ops.extend(strings(message.get("op"), "op").map_err(bad)?);
    let mut filters = strings(message.get("filters"), "filters").map_err(bad)?;
    filters.extend(strings(message.get("filter"), "filter").map_err(bad)?);
    let since = match message.get("since") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(
            text.parse::<EventId>()
                .map_err(|err| ("bad_since", err.to_string()))?,
        ),
        Some(_) => {
            return Err((
                "bad_since",
                "since is an event id string, like \"23803720-0\"".to_owned(),
            ))
        }
    };
    Ok((
        SubscriptionRequest {
            tables,
            ops,
            filters,
        },
        since,
    ))
}

fn table_names(subscription: &Subscription) -> Vec<String> {
    let mut tables: Vec<String> = subscription.tables().map(|t| t.to_string()).collect();
    tables.sort();
    tables
}

/// A refreshed token: every subscription of the connection is built again
/// with its claims and matches with them from the next event on. One the
/// token no longer allows (a table gone from its rules, a claim a rule
/// needs) ends with an `error`; the ids of those are returned.
fn refresh(
    ctx: &ClientContext,
    hub: &Arc<TenantHub>,
    principal: &Principal,
    subs: &mut HashMap<String, SubTask>,
    out: &mpsc::Sender<Out>,
) -> Vec<String> {
    let mut ended = Vec::new();
    for (id, task) in subs.iter() {
        let problem = match ctx.subscription(hub, &task.request, principal) {
            Ok(subscription) if table_names(&subscription) == task.tables => {
                match task.update.send(subscription) {
                    Ok(()) => None,
                    Err(_) => Some((
                        "subscription_ended".to_owned(),
                        "the subscription had ended".to_owned(),
                    )),
                }
            }
            Ok(_) => Some((
                "not_allowed".to_owned(),
                "the new token does not allow every table of this subscription; subscribe again"
                    .to_owned(),
            )),
            Err(err) => Some((
                err.code.to_owned(),
                format!("with the new token: {}", err.message),
            )),
        };
        if let Some((code, message)) = problem {
            let _ = out.try_send(Out::Text(error_json(Some(id), &code, &message).to_string()));
            ended.push(id.clone());
        }
    }
    for id in &ended {
        subs.remove(id);
    }
    ended.sort();
    ended
}

/// Feeds one subscription's items into the connection's outbox.
async fn run_subscription(
    sub: String,
    mut feed: Feed,
    out: mpsc::Sender<Out>,
    cancel: CancellationToken,
    mut updates: mpsc::UnboundedReceiver<Subscription>,
) {
    let prefix: Arc<str> = format!(
        "{{\"type\":\"change\",\"sub\":{},\"event\":",
        Value::String(sub.clone())
    )
    .into();
    let mut last_sent: Option<EventId> = None;
    loop {
        let item = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            Some(subscription) = updates.recv() => {
                feed.set_subscription(subscription);
                continue;
            }
            item = feed.next() => item,
        };
        let message = match item {
            FeedItem::Change { id, json } => {
                last_sent = Some(id);
                Out::Change(Arc::clone(&prefix), json)
            }
            FeedItem::Gap {
                after,
                resume_from,
                reason,
            } => Out::Text(
                gap_json(
                    Some(&sub),
                    after.or(last_sent),
                    resume_from,
                    reason.as_str(),
                )
                .to_string(),
            ),
            FeedItem::End(FeedEnd::Lagged) => {
                let resume = feed.cursor().or(last_sent);
                let gap = gap_json(Some(&sub), resume, None, "lagged").to_string();
                let _ = out.send(Out::Text(gap)).await;
                let reason = match resume {
                    Some(id) => format!("too slow; resume with since={id}"),
                    None => "too slow; reconnect".to_owned(),
                };
                let _ = out.send(Out::Close(CLOSE_TRY_AGAIN, reason)).await;
                return;
            }
            FeedItem::End(FeedEnd::TenantStopped) => {
                let error = error_json(Some(&sub), "tenant_stopped", "the tenant was stopped or reconfigured; reconnect and subscribe with since to resume");
                let _ = out.send(Out::Text(error.to_string())).await;
                let _ = out
                    .send(Out::Close(CLOSE_TENANT_STOPPED, "tenant stopped".into()))
                    .await;
                return;
            }
            FeedItem::End(FeedEnd::HistoryFailed(why)) => {
                let error = error_json(
                    Some(&sub),
                    "history_unavailable",
                    &format!("{why}; subscribe again (with since) to retry"),
                );
                let _ = out.send(Out::Text(error.to_string())).await;
                return;
            }
        };
        if out.send(message).await.is_err() {
            return;
        }
    }
}
