//! What the client API routes share: their context, the token and query
//! parsing, and error replies (`{"error": {"code", "message"}}` with the
//! status that fits). Tokens are read here and never logged: request logs
//! carry the path only, and errors never quote a token.

// A refused request's `Err` is the reply itself, made once per request.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::admission::{StreamTicket, TenantStreams};
use crate::auth::{AuthError, Authenticator, Principal};
use crate::hub::{Hubs, MatchLimits, RequestError, Subscription, SubscriptionRequest, TenantHub};

/// Longest query string accepted (tables, filters and a token fit easily).
pub const MAX_QUERY_BYTES: usize = 16 * 1024;

/// What the client routes need.
pub struct ClientContext {
    pub hubs: Hubs,
    pub auth: Authenticator,
    pub heartbeat: Duration,
    pub max_subscriptions: usize,
    /// What one subscription may cost to match.
    pub match_limits: MatchLimits,
    /// Open streams per tenant, against `[server] max_streams_per_tenant`.
    pub streams: Arc<TenantStreams>,
    /// Fires at shutdown: streams say goodbye and end.
    pub shutdown: CancellationToken,
}

/// An error reply.
pub fn error(status: u16, code: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut reply = warp::reply::with_status(
        warp::reply::json(&json!({"error": {"code": code, "message": message}})),
        status,
    )
    .into_response();
    if status == StatusCode::UNAUTHORIZED {
        reply.headers_mut().insert(
            warp::http::header::WWW_AUTHENTICATE,
            warp::http::HeaderValue::from_static("Bearer"),
        );
    }
    reply
}

/// A complete HTTP/1.1 error reply as bytes, for the paths that write to the
/// socket themselves (refusals at accept); `retry_after` in seconds.
pub fn refusal_bytes(status: u16, code: &str, message: &str, retry_after: Option<u64>) -> Vec<u8> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let body = json!({"error": {"code": code, "message": message}}).to_string();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if let Some(secs) = retry_after {
        head.push_str(&format!("retry-after: {secs}\r\n"));
    }
    head.push_str("\r\n");
    let mut reply = head.into_bytes();
    reply.extend_from_slice(body.as_bytes());
    reply
}

/// The CORS check for the paths that bypass warp's cors filter (the SSE
/// writer, WebSocket upgrades). With `[server] cors_origins` set, a request
/// from another origin must be listed (or `*`); `Ok(Some(origin))` is the
/// origin to name in `access-control-allow-origin`. Without it, no CORS
/// headers are sent and a browser keeps the page from reading the reply.
pub fn check_origin<'a>(
    cors_origins: &[String],
    origin: Option<&'a str>,
) -> Result<Option<&'a str>, Response> {
    let Some(origin) = origin.filter(|_| !cors_origins.is_empty()) else {
        return Ok(None);
    };
    if cors_origins.iter().any(|o| o == "*" || o == origin) {
        Ok(Some(origin))
    } else {
        Err(error(
            403,
            "cors_forbidden",
            &format!(
                "origin {:?} is not allowed; add it to [server] cors_origins",
                shorten(origin)
            ),
        ))
    }
}

impl From<RequestError> for Response {
    fn from(err: RequestError) -> Self {
        error(err.status, err.code, &err.message)
    }
}

/// A query string's parameters; repeated names keep every value.
#[derive(Debug, Default)]
pub struct Query(HashMap<String, Vec<String>>);

impl Query {
    pub fn parse(raw: &str) -> Result<Query, Response> {
        if raw.len() > MAX_QUERY_BYTES {
            return Err(error(
                414,
                "query_too_long",
                &format!("the query string is longer than {MAX_QUERY_BYTES} bytes; use fewer filters or the WebSocket subscribe message"),
            ));
        }
        let mut params: HashMap<String, Vec<String>> = HashMap::new();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (Some(name), Some(value)) = (percent_decode(name), percent_decode(value)) else {
                return Err(error(
                    400,
                    "bad_query",
                    "the query string is not valid percent-encoded UTF-8; encode values with encodeURIComponent",
                ));
            };
            params.entry(name).or_default().push(value);
        }
        Ok(Query(params))
    }

    pub fn all(&self, name: &str) -> &[String] {
        self.0.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn one(&self, name: &str) -> Option<&str> {
        self.all(name).last().map(String::as_str)
    }

    /// `table`, `op` and `filter` as a subscription request.
    pub fn subscription(&self) -> SubscriptionRequest {
        SubscriptionRequest {
            tables: self.all("table").to_vec(),
            ops: self.all("op").to_vec(),
            filters: self.all("filter").to_vec(),
        }
    }

    /// Names the client sent that the route does not know.
    pub fn unknown(&self, known: &[&str]) -> Option<String> {
        let mut unknown: Vec<&str> = self
            .0
            .keys()
            .map(String::as_str)
            .filter(|k| !known.contains(k))
            .collect();
        unknown.sort_unstable();
        unknown.first().map(|k| k.to_string())
    }
}

/// `%XX` and `+` decoding.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

impl ClientContext {
    /// The tenant's hub, or a 404. Asked only after the token verified for
    /// this tenant, so that tenant names cannot be probed without one.
    pub fn hub(&self, tenant: &str) -> Result<Arc<TenantHub>, Response> {
        self.hubs.get(tenant).ok_or_else(|| {
            error(
                404,
                "unknown_tenant",
                &format!(
                    "no tenant {:?} here; check the tenant id in the URL (/v1/<tenant>/...)",
                    shorten(tenant)
                ),
            )
        })
    }

    /// Verifies the request's token (the `Authorization` header, else the
    /// `access_token` query parameter) for `tenant`.
    pub fn authenticate(
        &self,
        tenant: &str,
        authorization: Option<&str>,
        query_token: Option<&str>,
    ) -> Result<Principal, Response> {
        let token = match authorization {
            Some(header) => crate::auth::bearer_token(header),
            None => Ok(query_token.unwrap_or("")),
        };
        let principal =
            token.and_then(|token| self.auth.verify(token, tenant, crate::model::now_unix()));
        principal.map_err(|err| self.refused(&err))
    }

    /// What every client route starts with: the tenant's hub, the query,
    /// and the verified principal. The token is checked first: a request
    /// without a valid one gets the same 401 for a tenant that exists and
    /// for one that does not.
    pub fn open(
        &self,
        tenant: &str,
        raw_query: &str,
        authorization: Option<&str>,
    ) -> Result<(Arc<TenantHub>, Query, Principal), Response> {
        let query = Query::parse(raw_query)?;
        let principal = self.authenticate(tenant, authorization, query.one("access_token"))?;
        let hub = self.hub(tenant)?;
        Ok((hub, query, principal))
    }

    /// A place for one more stream of the tenant, or a 503 that says which
    /// cap it would pass.
    pub fn stream_ticket(&self, hub: &TenantHub) -> Result<StreamTicket, Response> {
        self.streams.open(&hub.tenant.as_arc()).map_err(|cap| {
            let mut reply = error(
                503,
                "too_many_streams",
                &format!("tenant {} has {cap} streams open, as many as walcast allows one tenant ([server] max_streams_per_tenant); retry shortly", hub.tenant),
            );
            reply
                .headers_mut()
                .insert("retry-after", warp::http::HeaderValue::from_static("1"));
            reply
        })
    }

    /// Builds a subscription for `principal`; access refusals are counted.
    pub fn subscription(
        &self,
        hub: &TenantHub,
        request: &SubscriptionRequest,
        principal: &Principal,
    ) -> Result<Subscription, RequestError> {
        request.check_limits(self.match_limits)?;
        let schema = hub.schema();
        Subscription::build(request, principal, &hub.tables, schema.as_deref()).inspect_err(|err| {
            if err.status == 403 {
                metrics::counter!(crate::metrics::DELIVERY_AUTH_FAILURES, crate::metrics::REASON => err.code).increment(1);
            }
        })
    }

    /// Counts and answers a refused request.
    pub fn refused(&self, err: &AuthError) -> Response {
        metrics::counter!(crate::metrics::DELIVERY_AUTH_FAILURES, crate::metrics::REASON => err.code())
            .increment(1);
        tracing::debug!(code = err.code(), "request refused");
        error(err.status(), err.code(), &err.to_string())
    }
}

/// Request text shown back in an error, cut short.
pub fn shorten(text: &str) -> String {
    text.chars().take(64).collect()
}

/// A gauge of connected subscribers that goes down when dropped.
pub struct SubscriberGauge {
    tenant: String,
    transport: &'static str,
}

impl SubscriberGauge {
    pub fn new(tenant: &str, transport: &'static str) -> SubscriberGauge {
        metrics::gauge!(crate::metrics::DELIVERY_SUBSCRIBERS, crate::metrics::TENANT => tenant.to_owned(), crate::metrics::TRANSPORT => transport).increment(1.0);
        SubscriberGauge {
            tenant: tenant.to_owned(),
            transport,
        }
    }
}

impl Drop for SubscriberGauge {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::DELIVERY_SUBSCRIBERS, crate::metrics::TENANT => self.tenant.clone(), crate::metrics::TRANSPORT => self.transport).decrement(1.0);
    }
}

/// The JSON of a `gap` message (SSE data, WebSocket message body); counted.
pub fn gap_json(
    sub: Option<&str>,
    after: Option<crate::model::EventId>,
    resume_from: Option<crate::model::EventId>,
    reason: &str,
) -> serde_json::Value {
    metrics::counter!(crate::metrics::DELIVERY_GAPS, crate::metrics::REASON => reason.to_owned())
        .increment(1);
    let message = match reason {
        "lagged" => "this client did not keep up and was disconnected; reconnect and resume after last_event_id",
        "resync" => "the tenant's stream restarted (Redis lost its data and the mirror was rebuilt); events before resume_from may be missing: reload state",
        _ => "events after last_event_id are no longer kept; the stream continues from resume_from: reload state (GET /v1/<tenant>/state/<table>) to be complete",
    };
    let mut value = json!({
        "type": "gap",
        "reason": reason,
        "last_event_id": after.map(|id| id.to_string()),
        "resume_from": resume_from.map(|id| id.to_string()),
        "message": message,
    });
    if let Some(sub) = sub {
        value["sub"] = json!(sub);
    }
    value
}

/// Sleeps until `deadline`, or forever without one.
pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
