//! The HTTP server: listening, routes, and the mapping of failures to status
//! codes. It holds no database connections.
//!
//! - `admission`: caps on connections (in all, per address) and streams
//!   (per tenant);
//! - `accept`: the accept loop, deadlines, and which connections hyper
//!   serves;
//! - `ops`: `/healthz`, `/readyz`, `/metrics` (the detailed ones only on
//!   `[server] ops_listen`);
//! - `client`: what the client API routes share (context, tokens, queries,
//!   error replies);
//! - `sse`: `GET /v1/{tenant}/events`;
//! - `ws`: `GET /v1/{tenant}/ws`;
//! - `state`: `GET /v1/{tenant}/state/{schema.table}`;
//! - `tls`: the listeners' certificate, re-read on SIGHUP;
//! - the inspector page at `/` (`inspector.html`, embedded in the binary).

pub mod accept;
pub mod admission;
pub mod client;
pub mod ops;
pub mod sse;
pub mod state;
pub mod tls;
pub mod ws;

pub use client::ClientContext;
pub use ops::{OpsState, TenantStates};

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::config::ServerConfig;

/// The inspector page.
const INSPECTOR_HTML: &str = include_str!("inspector.html");

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("could not listen on {addr} (change [server] listen, or stop what uses that address)")]
pub struct ListenError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// The bound sockets: the client API's, and the operations endpoints'.
pub struct Listeners {
    pub client: Vec<TcpListener>,
    pub ops: Vec<TcpListener>,
    /// TLS on both (`[server] tls_cert_file`); `bind` leaves it unset.
    pub tls: Option<Arc<tls::ServerTls>>,
}

/// Binds every configured address first, so a taken port is an error at
/// start-up, not a panic later.
pub async fn bind(server: &ServerConfig) -> Result<Listeners, ListenError> {
    async fn all(addresses: &[SocketAddr]) -> Result<Vec<TcpListener>, ListenError> {
        let mut listeners = Vec::with_capacity(addresses.len());
        for addr in addresses {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ListenError {
                    addr: *addr,
                    source,
                })?;
            listeners.push(listener);
        }
        Ok(listeners)
    }
    Ok(Listeners {
        client: all(&server.listen).await?,
        ops: all(&server.ops_listen).await?,
        tls: None,
    })
}

/// Connections the operations listener takes at once (Prometheus, probes).
const MAX_OPS_CONNECTIONS: usize = 64;

/// The query string, or "" when there is none.
fn raw_query() -> impl Filter<Extract = (String,), Error = std::convert::Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// The client API routes under `/v1`.
pub fn client_routes(
    ctx: Arc<ClientContext>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let with_ctx = {
        let ctx = Arc::clone(&ctx);
        warp::any().map(move || Arc::clone(&ctx))
    };
    let events = warp::path!("v1" / String / "events")
        .and(warp::get())
        .and(with_ctx.clone())
        .and(raw_query())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("last-event-id"))
        .map(
            |tenant: String,
             ctx: Arc<ClientContext>,
             query: String,
             authorization,
             last_event_id| {
                sse::events(ctx, tenant, query, authorization, last_event_id)
            },
        );
    let state = warp::path!("v1" / String / "state" / String)
        .and(warp::get())
        .and(with_ctx.clone())
        .and(raw_query())
        .and(warp::header::optional::<String>("authorization"))
        .then(
            |tenant: String,
             table: String,
             ctx: Arc<ClientContext>,
             query: String,
             authorization| async move {
                let table = percent_decoded(&table);
                state::state(ctx, tenant, table, query, authorization).await
            },
        );
    events.or(state).unify()
}

/// A path segment with `%XX` decoded (`public.%22My%20Table%22`).
fn percent_decoded(segment: &str) -> String {
    client::Query::parse(&format!("x={}", segment.replace('+', "%2B")))
        .ok()
        .and_then(|q| q.one("x").map(str::to_owned))
        .unwrap_or_else(|| segment.to_owned())
}

/// Unknown paths and wrong methods, as JSON errors.
async fn rejection(err: Rejection) -> Result<Response, Rejection> {
    use client::error;
    if err.is_not_found() {
        return Ok(error(404, "not_found", "no such route; the client API is /v1/<tenant>/events, /v1/<tenant>/ws and /v1/<tenant>/state/<schema.table> (docs/protocol.md)"));
    }
    if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        return Ok(error(
            405,
            "method_not_allowed",
            "the client API takes GET only",
        ));
    }
    if err.find::<warp::reject::MissingHeader>().is_some()
        || err.find::<warp::reject::InvalidHeader>().is_some()
    {
        return Ok(error(400, "bad_request", "a header is missing or invalid"));
    }
    if err.find::<warp::reject::PayloadTooLarge>().is_some() {
        return Ok(error(
            413,
            "payload_too_large",
            "requests to walcast carry no body",
        ));
    }
    if let Some(cors) = err.find::<warp::cors::CorsForbidden>() {
        return Ok(error(
            403,
            "cors_forbidden",
            &format!("{cors}; add the page's origin to [server] cors_origins"),
        ));
    }
    Ok(error(
        400,
        "bad_request",
        "the request could not be understood",
    ))
}

/// Serves the client API (and the short `/healthz` and `/readyz`) on the
/// client listeners and the operations endpoints on the ops listeners, until
/// `cancel` fires.
pub fn serve(
    listeners: Listeners,
    ops_state: Arc<OpsState>,
    ctx: Arc<ClientContext>,
    server: &ServerConfig,
    admission: Arc<admission::Admission>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) {
    let log = warp::log::custom(|info| {
        // The path only: a query may hold an access token.
        tracing::debug!(method = %info.method(), path = info.path(), status = info.status().as_u16(), "http request");
    });
    let inspector_enabled = server.inspector;
    let inspector = warp::path::end()
        .and(warp::get())
        .and_then(move || async move {
            if inspector_enabled {
                Ok(warp::reply::html(INSPECTOR_HTML).into_response())
            } else {
                Err(warp::reject::not_found())
            }
        });
    let api = client_routes(Arc::clone(&ctx));
    let api: warp::filters::BoxedFilter<(Response,)> = if server.cors_origins.is_empty() {
        api.boxed()
    } else {
        let mut cors = warp::cors()
            .allow_methods(vec!["GET"])
            .allow_headers(vec!["authorization", "last-event-id", "content-type"])
            .max_age(600);
        if server.cors_origins.iter().any(|o| o == "*") {
            cors = cors.allow_any_origin();
        } else {
            cors = cors.allow_origins(server.cors_origins.iter().map(String::as_str));
        }
        api.with(cors).map(Reply::into_response).boxed()
    };
    let public_ops = ops::public_routes(Arc::clone(&ops_state), !listeners.ops.is_empty())
        .map(Reply::into_response);
    let client_routes = public_ops.or(inspector).unify().or(api).unify();
    let finish = |routes: warp::filters::BoxedFilter<(Response,)>| {
        warp::service(
            routes
                .recover(rejection)
                .unify()
                .with(warp::reply::with::header(
                    "x-content-type-options",
                    "nosniff",
                ))
                .with(log),
        )
    };
    let client_service = finish(client_routes.boxed());
    let ops_service = finish(ops::routes(ops_state).map(Reply::into_response).boxed());
    let client = accept::Listener {
        service: client_service,
        client: Some((ctx, Arc::new(server.cors_origins.clone()))),
        admission,
        head_timeout: server.head_timeout,
        write_timeout: server.write_timeout,
        tls: listeners.tls.clone(),
    };
    let ops = accept::Listener {
        service: ops_service,
        client: None,
        admission: admission::Admission::new("ops", MAX_OPS_CONNECTIONS, None),
        head_timeout: server.head_timeout,
        write_timeout: server.write_timeout,
        tls: listeners.tls.clone(),
    };
    for listener in listeners.client {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, max_connections = client.admission.max_connections(), tls = client.tls.is_some(), "http listening (/v1 client API, /healthz, /readyz)");
        }
        tracker.spawn(accept::accept_loop(
            listener,
            client.clone(),
            cancel.clone(),
        ));
    }
    for listener in listeners.ops {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "ops listening (/metrics, /readyz with each tenant's state, /healthz)");
        }
        tracker.spawn(accept::accept_loop(listener, ops.clone(), cancel.clone()));
    }
}
