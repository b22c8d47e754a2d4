//! Wiring: the root cancellation token, one task per tenant, signals, and the
//! shutdown deadline.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, RedisConfig, TenantConfig};
use crate::sink::{EventSink, MemoryRing, RedisSink, StdoutSink, TeeSink};
use crate::source::SlotKind;
use crate::tenant::{run_tenant, PipelineError, PipelineOptions, TenantState};

/// Why the daemon or tail stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("no tenant {0:?} in the config; tenants: {1}")]
    UnknownTenant(String, String),
    #[error("--table {0:?} is not listed in tenant {1}'s tables ({2}); add it to the config or pick one of those")]
    UnknownTable(String, String, String),
    #[error("the config has no [[tenants]]; add one (see config.example.toml)")]
    NoTenants,
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Listen(#[from] crate::http::ListenError),
    #[error("could not set up the metrics recorder: {0}")]
    Metrics(String),
    #[error(
        "shutdown took longer than {0:?}; exiting anyway (unconfirmed changes will be sent again)"
    )]
    ShutdownTimeout(Duration),
}

/// Resolves on the first SIGINT or SIGTERM.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let (Ok(mut term), Ok(mut int)) = (term, int) else {
            // Without signal handling only cancellation stops us.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing the transaction in hand, then stopping"),
            _ = int.recv() => tracing::info!("SIGINT: finishing the transaction in hand, then stopping"),
        }
    }
}

/// Cancels `root` on SIGINT or SIGTERM.
fn spawn_signal_handler(root: CancellationToken) -> Result<(), AppError> {
    let signal = shutdown_signal();
    tokio::spawn(async move {
        signal.await;
        root.cancel();
    });
    Ok(())
}

/// `walcast run`: every tenant, until a signal (or `root` is cancelled).
pub async fn run(config: Config, root: CancellationToken) -> Result<(), AppError> {
    if config.tenants.is_empty() {
        return Err(AppError::NoTenants);
    }
    spawn_signal_handler(root.clone())?;
    let tracker = TaskTracker::new();
    // The HTTP listeners first: a taken port is a start-up error.
    let http = match &config.server {
        Some(server) => {
            let listeners = crate::http::bind(&server.listen).await?;
            let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| AppError::Metrics(e.to_string()))?;
            crate::metrics::describe();
            Some((listeners, metrics, server.ready_grace))
        }
        None => None,
    };
    let started = std::time::Instant::now();
    let mut tenant_states = std::collections::BTreeMap::new();
    let stdout: Arc<dyn EventSink> = Arc::new(StdoutSink::default());
    let redis = match &config.redis {
        Some(redis) => {
            let conn = tokio::select! {
                // Shutdown while Redis is still unreachable.
                _ = root.cancelled() => return Ok(()),
                conn = connect_redis(redis) => conn,
            };
            tracing::info!(tenants = config.tenants.len(), prefix = %redis.key_prefix, "starting; events go to redis (mirror and per-tenant streams)");
            Some(conn)
        }
        None => {
            tracing::info!(tenants = config.tenants.len(), ring_events = crate::sink::memory::DEFAULT_RING_EVENTS, "starting without [redis]: no mirror; events go to standard output, and the most recent per tenant are kept in memory for resuming");
            None
        }
    };
    for tenant in config.tenants.clone() {
        let (state_tx, state_rx) = watch::channel(TenantState::Starting);
        tenant_states.insert(tenant.id.to_string(), state_rx);
        let cancel = root.child_token();
        let (sink, options) = match (&config.redis, &redis) {
            (Some(redis_config), Some(conn)) => {
                let mirror = Arc::new(RedisSink::new(&tenant, redis_config, conn.clone()));
                let options = PipelineOptions {
                    mirror: Some(Arc::clone(&mirror)),
                    slot_lag_warn_bytes: config.slot_lag_warn_bytes,
                    ..PipelineOptions::default()
                };
                (mirror as Arc<dyn EventSink>, options)
            }
            _ => {
                let ring: Arc<dyn EventSink> =
                    Arc::new(MemoryRing::new(crate::sink::memory::DEFAULT_RING_EVENTS));
                let tee: Arc<dyn EventSink> =
                    Arc::new(TeeSink::new(vec![Arc::clone(&stdout), ring]));
                let options = PipelineOptions {
                    slot_lag_warn_bytes: config.slot_lag_warn_bytes,
                    ..PipelineOptions::default()
                };
                (tee, options)
            }
        };
        let root_for_fatal = root.clone();
        tracker.spawn(async move {
            let id = tenant.id.clone();
            if let Err(err) = run_tenant(tenant, options, sink, cancel, state_tx).await {
                tracing::error!(tenant = %id, error = %crate::tenant::error_chain(&err), "tenant stopped");
                // Only a fatal error (the output is gone) ends run_tenant here.
                root_for_fatal.cancel();
            }
        });
    }
    if let Some((listeners, metrics, ready_grace)) = http {
        let state = Arc::new(crate::http::OpsState {
            tenants: tenant_states,
            metrics: Some(metrics),
            started,
            ready_grace,
        });
        crate::http::serve(listeners, state, root.clone(), &tracker);
    }
    tracker.close();
    root.cancelled().await;
    wait_for(&tracker, config.shutdown_timeout).await
}

/// Connects to Redis, retrying (with a warning) until it answers.
async fn connect_redis(config: &RedisConfig) -> redis::aio::ConnectionManager {
    let mut delay = Duration::from_millis(500);
    loop {
        match crate::sink::redis::connect(config).await {
            Ok(conn) => return conn,
            Err(err) => {
                tracing::warn!(error = %crate::tenant::error_chain(&err), retry_in_ms = delay.as_millis() as u64, "cannot reach redis; retrying (check [redis] url)");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// `walcast tail`: one tenant to standard output.
pub async fn tail(
    config: Config,
    tenant_id: &str,
    tables: &[String],
    temporary_slot: bool,
    root: CancellationToken,
) -> Result<(), AppError> {
    let tenant = find_tenant(&config, tenant_id)?.clone();
    let tables = table_filter(&tenant, tables)?;
    let slot = if temporary_slot {
        // Slot names are at most 63 bytes.
        let mut name = format!("{}_tail_{}", tenant.slot, std::process::id());
        name.truncate(63);
        SlotKind::Temporary(name)
    } else {
        SlotKind::Permanent
    };
    let options = PipelineOptions {
        slot,
        tables,
        create_missing: !temporary_slot,
        give_up_on_definite: true,
        mirror: None,
        slot_lag_warn_bytes: config.slot_lag_warn_bytes,
    };
    spawn_signal_handler(root.clone())?;
    let (state_tx, _state_rx) = watch::channel(TenantState::Starting);
    let sink: Arc<dyn EventSink> = Arc::new(StdoutSink::default());
    let tracker = TaskTracker::new();
    let cancel = root.child_token();
    let handle = tracker.spawn(run_tenant(tenant, options, sink, cancel, state_tx));
    tracker.close();
    tokio::select! {
        // The tenant gave up (or stopped): report why.
        result = handle => {
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(PipelineError::Sink { source: crate::sink::SinkError::Closed, .. })) => Ok(()),
                Ok(Err(err)) => Err(err.into()),
                Err(join) => panic!("tail task panicked: {join}"),
            };
        }
        // Ctrl-C: let it finish its transaction and close.
        _ = root.cancelled() => {}
    }
    wait_for(&tracker, config.shutdown_timeout).await
}

async fn wait_for(tracker: &TaskTracker, deadline: Duration) -> Result<(), AppError> {
    match tokio::time::timeout(deadline, tracker.wait()).await {
        Ok(()) => {
            tracing::info!("stopped");
            Ok(())
        }
        Err(_) => Err(AppError::ShutdownTimeout(deadline)),
    }
}

pub fn find_tenant<'a>(config: &'a Config, id: &str) -> Result<&'a TenantConfig, AppError> {
    config.tenant(id).ok_or_else(|| {
        let ids: Vec<&str> = config.tenants.iter().map(|t| t.id.as_str()).collect();
        AppError::UnknownTenant(id.to_owned(), ids.join(", "))
    })
}

fn table_filter(
    tenant: &TenantConfig,
    tables: &[String],
) -> Result<Option<HashSet<crate::model::TableName>>, AppError> {
    if tables.is_empty() {
        return Ok(None);
    }
    let mut set = HashSet::new();
    for text in tables {
        let (schema, name) = text.split_once('.').unwrap_or(("public", text));
        let table = crate::model::TableName::new(schema, name);
        if !tenant.tables.contains(&table) {
            let known: Vec<String> = tenant.tables.iter().map(|t| t.to_string()).collect();
            return Err(AppError::UnknownTable(
                text.clone(),
                tenant.id.to_string(),
                known.join(", "),
            ));
        }
        set.insert(table);
    }
    Ok(Some(set))
}
