//! The HTTP server: listening, routes, and the mapping of failures to status
//! codes. It holds no database connections. For now it serves the operations
//! endpoints (`ops`): `/healthz`, `/readyz` and `/metrics`; the client API
//! (SSE, WebSocket, state) joins these routes.

pub mod ops;

pub use ops::{OpsState, TenantStates};

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::Filter;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("could not listen on {addr} (change [server] listen, or stop what uses that address)")]
pub struct ListenError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds every configured address first, so a taken port is an error at
/// start-up, not a panic later.
pub async fn bind(listen: &[SocketAddr]) -> Result<Vec<TcpListener>, ListenError> {
    let mut listeners = Vec::with_capacity(listen.len());
    for addr in listen {
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

/// Serves the routes on every listener until `cancel` fires.
pub fn serve(
    listeners: Vec<TcpListener>,
    state: Arc<OpsState>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) {
    let routes = ops::routes(state).with(warp::log::custom(|info| {
        tracing::debug!(method = %info.method(), path = info.path(), status = info.status().as_u16(), "http request");
    }));
    for listener in listeners {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "http listening (/healthz, /readyz, /metrics)");
        }
        let cancel = cancel.clone();
        let server = warp::serve(routes.clone())
            .incoming(listener)
            .graceful(async move { cancel.cancelled().await });
        tracker.spawn(server.run());
    }
}
