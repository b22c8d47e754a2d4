//! Operations endpoints: `/healthz` (the process answers), `/readyz` (every
//! tenant streams, or the start-up grace has not passed), `/metrics`
//! (Prometheus text). The full set, with each tenant's state and error in
//! `/readyz`, is served on `[server] ops_listen` only; the client listeners
//! say ready or not and nothing else, so that nobody learns tenant names,
//! database URLs or errors there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::sync::watch;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::tenant::TenantState;

/// Every running tenant's state, by id (replaced entries on reload).
pub type TenantStates = Arc<std::sync::RwLock<BTreeMap<String, watch::Receiver<TenantState>>>>;

/// What the operations endpoints read.
pub struct OpsState {
    pub tenants: TenantStates,
    pub metrics: Option<PrometheusHandle>,
    pub started: Instant,
    pub ready_grace: Duration,
}

impl OpsState {
    /// `/readyz`'s answer: whether ready, and the body.
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let in_grace = self.started.elapsed() < self.ready_grace;
        let mut all_streaming = true;
        let mut tenants = serde_json::Map::new();
        let tenants_now = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        for (id, state) in tenants_now.iter() {
            let state = state.borrow().clone();
            let value = match &state {
                TenantState::Starting => json!({"state": "starting"}),
                TenantState::Streaming => json!({"state": "streaming"}),
                TenantState::Retrying { attempt, error } => {
                    json!({"state": "retrying", "attempt": attempt, "error": error})
                }
                TenantState::Stopped => json!({"state": "stopped"}),
                TenantState::Failed { error } => json!({"state": "failed", "error": error}),
            };
            all_streaming &= state == TenantState::Streaming;
            tenants.insert(id.clone(), value);
        }
        let ready = all_streaming || in_grace;
        (
            ready,
            json!({"ready": ready, "in_start_grace": in_grace && !all_streaming, "tenants": tenants}),
        )
    }
}

/// What the client listeners serve: `/healthz`, `/readyz` as
/// `{"ready": bool}`, and a `/metrics` that says where the metrics are.
pub fn public_routes(
    state: Arc<OpsState>,
    ops_listener: bool,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&json!({"status": "ok"})));
    let readyz = warp::path!("readyz").and(warp::get()).map(move || {
        let (ready, _) = state.readiness();
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        warp::reply::with_status(warp::reply::json(&json!({"ready": ready})), status)
    });
    let metrics = warp::path!("metrics").and(warp::get()).map(move || {
        let message = if ops_listener {
            "metrics are served on the operations listener ([server] ops_listen), not on the client port"
        } else {
            "metrics are served on the operations listener only: set [server] ops_listen (for example [\"127.0.0.1:9187\"])"
        };
        super::client::error(404, "not_found", message)
    });
    healthz.or(readyz).or(metrics)
}

/// What the operations listener serves.
pub fn routes(
    state: Arc<OpsState>,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&json!({"status": "ok"})));
    let ready_state = Arc::clone(&state);
    let readyz = warp::path!("readyz").and(warp::get()).map(move || {
        let (ready, body) = ready_state.readiness();
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        warp::reply::with_status(warp::reply::json(&body), status)
    });
    let metrics_state = Arc::clone(&state);
    let metrics = warp::path!("metrics").and(warp::get()).map(move || {
        if let Some(rss) = process_rss_bytes() {
            metrics::gauge!(crate::metrics::PROCESS_RSS_BYTES).set(rss as f64);
        }
        let body = metrics_state
            .metrics
            .as_ref()
            .map(|h| h.render())
            .unwrap_or_default();
        warp::reply::with_header(body, "content-type", "text/plain; version=0.0.4")
    });
    healthz.or(readyz).or(metrics)
}

/// Resident set size of this process, from /proc.
fn process_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
