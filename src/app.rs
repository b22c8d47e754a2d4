//! Wiring: the root cancellation token, one task per tenant, signals, and the
//! shutdown deadline.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, RedisConfig, TenantConfig};
use crate::http::TenantStates;
use crate::hub::{DeliveryBudget, QueueLimits, TenantHub};
use crate::model::HubFeed;
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
    #[error("could not listen for signals")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    ServerTls(#[from] crate::http::tls::ServerTlsError),
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
/// SIGHUP re-reads the configuration: added tenants start, removed ones stop
/// (their slots stay), changed ones restart, the others go on untouched; an
/// invalid file is refused and the running configuration stays.
pub async fn run(config: Config, root: CancellationToken) -> Result<(), AppError> {
    if config.tenants.is_empty() {
        return Err(AppError::NoTenants);
    }
    spawn_signal_handler(root.clone())?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(AppError::Signals)?;
    let tracker = TaskTracker::new();
    // The HTTP listeners first: a taken port is a start-up error.
    let mut server_tls = None;
    let http = match &config.server {
        Some(server) => {
            if let Some(files) = &server.tls {
                server_tls = Some(crate::http::tls::ServerTls::load(
                    &files.cert_file,
                    &files.key_file,
                )?);
            }
            let mut listeners = crate::http::bind(server).await?;
            listeners.tls = server_tls.clone();
            let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| AppError::Metrics(e.to_string()))?;
            crate::metrics::describe();
            Some((listeners, metrics))
        }
        None => None,
    };
    let started = std::time::Instant::now();
    let grace = config
        .server
        .as_ref()
        .map(|s| s.ready_grace)
        .unwrap_or(Duration::from_secs(crate::config::DEFAULT_READY_GRACE_SECS));
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
    let mut tenants = Tenants {
        root: root.clone(),
        tracker: tracker.clone(),
        stdout: Arc::new(StdoutSink::default()),
        redis,
        states: TenantStates::default(),
        hubs: crate::hub::Hubs::default(),
        budget: DeliveryBudget::new(
            config
                .server
                .as_ref()
                .map_or(crate::config::DEFAULT_DELIVERY_BUFFER_BYTES, |s| {
                    s.delivery_buffer_bytes
                }),
        ),
        running: BTreeMap::new(),
        config,
    };
    for tenant in tenants.config.tenants.clone() {
        tenants.start(tenant);
    }
    if let (Some((listeners, metrics)), Some(server)) = (http, tenants.config.server.clone()) {
        let state = Arc::new(crate::http::OpsState {
            tenants: Arc::clone(&tenants.states),
            metrics: Some(metrics),
            started,
            ready_grace: grace,
        });
        let ctx = Arc::new(crate::http::ClientContext {
            hubs: tenants.hubs.clone(),
            auth: crate::auth::Authenticator::new(&tenants.config.auth),
            heartbeat: server.heartbeat,
            max_subscriptions: server.max_subscriptions,
            match_limits: crate::hub::MatchLimits {
                max_filters: server.max_filters,
                max_in_values: server.max_in_values,
            },
            streams: crate::http::admission::TenantStreams::new(server.max_streams_per_tenant),
            shutdown: root.clone(),
        });
        let file_limit = crate::http::admission::raise_file_limit();
        let max_connections = server.max_connections.unwrap_or_else(|| {
            crate::http::admission::default_max_connections(
                file_limit,
                tenants.config.tenants.len(),
            )
        });
        if let Some(limit) = file_limit.filter(|limit| max_connections >= *limit) {
            tracing::warn!(max_connections, open_file_limit = limit, "[server] max_connections is not below the open-file limit: clients could take the descriptors that Postgres and Redis reconnects need; lower it or raise LimitNOFILE");
        }
        if listeners.ops.is_empty() {
            tracing::info!("no [server] ops_listen: /metrics and the detailed /readyz are not served (the client port answers /readyz with ready or not)");
        }
        let admission = crate::http::admission::Admission::new(
            "client",
            max_connections,
            server.max_connections_per_ip,
        );
        crate::http::serve(
            listeners,
            state,
            ctx,
            &server,
            admission,
            root.clone(),
            &tracker,
        );
    }
    spawn_systemd_notifier(
        Arc::clone(&tenants.states),
        started,
        grace,
        root.clone(),
        &tracker,
    );
    loop {
        tokio::select! {
            // SIGINT/SIGTERM (or a fatal tenant error): stop everything.
            _ = root.cancelled() => break,
            // SIGHUP: apply the configuration file's changes, and read the
            // listeners' certificate again.
            _ = hangup.recv() => {
                if let Some(tls) = &server_tls {
                    match tls.reload() {
                        Ok(()) => tracing::info!("reload: read the listeners' TLS certificate again"),
                        Err(err) => tracing::error!(error = %crate::report::error_chain(&err), "reload: the TLS certificate or key does not load; the running one stays"),
                    }
                }
                tenants.reload().await
            }
        }
    }
    tracker.close();
    wait_for(&tracker, tenants.config.shutdown_timeout).await
}

/// Inputs a tenant's hub may fall behind by (batches of up to 500 events,
/// stream restarts) before its subscribers are cut off to resume from the
/// history.
const HUB_FEED_CAPACITY: usize = 1024;

/// The running tenants of `walcast run`, and what starting one needs.
struct Tenants {
    root: CancellationToken,
    tracker: TaskTracker,
    stdout: Arc<dyn EventSink>,
    redis: Option<redis::aio::ConnectionManager>,
    states: TenantStates,
    /// Every tenant's delivery hub, read by the HTTP server.
    hubs: crate::hub::Hubs,
    /// The bytes queued for all subscribers of all tenants.
    budget: Arc<DeliveryBudget>,
    running: BTreeMap<String, RunningTenant>,
    config: Config,
}

struct RunningTenant {
    config: TenantConfig,
    cancel: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl Tenants {
    fn start(&mut self, tenant: TenantConfig) {
        let (state_tx, state_rx) = watch::channel(TenantState::Starting);
        let id = tenant.id.to_string();
        let cancel = self.root.child_token();
        let limits = self.config.server.as_ref().map_or(
            QueueLimits {
                events: crate::config::DEFAULT_SUBSCRIBER_QUEUE,
                bytes: crate::config::DEFAULT_SUBSCRIBER_QUEUE_BYTES,
            },
            |s| QueueLimits {
                events: s.subscriber_queue,
                bytes: s.subscriber_queue_bytes,
            },
        );
        // The hub's feed: sinks send durable events, the pipeline restarts.
        let (feed, feed_rx) = HubFeed::channel(HUB_FEED_CAPACITY);
        let (sink, hub, options) = match (&self.config.redis, &self.redis) {
            (Some(redis_config), Some(conn)) => {
                let mirror = Arc::new(RedisSink::new(&tenant, redis_config, conn.clone()));
                let history = crate::hub::History::Redis {
                    conn: conn.clone(),
                    keys: mirror.keys().clone(),
                };
                let hub = TenantHub::new(
                    &tenant,
                    history,
                    tenant.mirror.clone(),
                    limits,
                    Arc::clone(&self.budget),
                );
                mirror.set_feed(feed.clone());
                let options = PipelineOptions {
                    mirror: Some(Arc::clone(&mirror)),
                    hub: Some(Arc::clone(&hub)),
                    feed: Some(feed),
                    slot_lag_warn_bytes: self.config.slot_lag_warn_bytes,
                    ..PipelineOptions::default()
                };
                (mirror as Arc<dyn EventSink>, hub, options)
            }
            _ => {
                let ring = Arc::new(MemoryRing::new(crate::sink::memory::DEFAULT_RING_EVENTS));
                let hub = TenantHub::new(
                    &tenant,
                    crate::hub::History::Ring(Arc::clone(&ring)),
                    Vec::new(),
                    limits,
                    Arc::clone(&self.budget),
                );
                ring.set_feed(feed.clone());
                let mut sinks: Vec<Arc<dyn EventSink>> = Vec::new();
                if self.config.print_events {
                    sinks.push(Arc::clone(&self.stdout));
                }
                sinks.push(ring);
                let tee: Arc<dyn EventSink> = Arc::new(TeeSink::new(sinks));
                let options = PipelineOptions {
                    hub: Some(Arc::clone(&hub)),
                    feed: Some(feed),
                    slot_lag_warn_bytes: self.config.slot_lag_warn_bytes,
                    ..PipelineOptions::default()
                };
                (tee, hub, options)
            }
        };
        self.hubs.insert(Arc::clone(&hub));
        // The hub's task ends once the tenant's sinks and pipeline are gone.
        self.tracker
            .spawn(crate::hub::run_feed(hub, feed_rx, cancel.clone()));
        let config = tenant.clone();
        let task_cancel = cancel.clone();
        let handle = self.tracker.spawn(async move {
            let id = tenant.id.clone();
            // Only an output that is gone ends run_tenant here; the tenant
            // stays "failed" in /readyz, and the others go on.
            if let Err(err) = run_tenant(tenant, options, sink, task_cancel, state_tx).await {
                tracing::error!(tenant = %id, error = %crate::tenant::error_chain(&err), "tenant stopped");
            }
        });
        self.states
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), state_rx);
        self.running.insert(
            id,
            RunningTenant {
                config,
                cancel,
                handle,
            },
        );
    }

    /// Stops one tenant the way shutdown does (finish the transaction in
    /// hand, confirm, close), within the shutdown deadline.
    async fn stop(&mut self, id: &str) {
        let Some(tenant) = self.running.remove(id) else {
            return;
        };
        tenant.cancel.cancel();
        if tokio::time::timeout(self.config.shutdown_timeout, tenant.handle)
            .await
            .is_err()
        {
            tracing::warn!(tenant = %id, "tenant did not stop within shutdown_timeout_secs; it goes on stopping in the background");
        }
        self.states
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        // Its subscribers are told, and can resume once it is back.
        self.hubs.remove(id);
    }

    /// SIGHUP: re-read the file and apply what changed in the tenants.
    async fn reload(&mut self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            let _ = sd_notify::notify(&[now]);
        }
        let path = self.config.path.clone();
        match crate::config::load(&path) {
            Err(err) => tracing::error!(error = %crate::tenant::error_chain(&err), "reload refused: the configuration file is invalid; the running configuration stays"),
            Ok(new) if new.tenants.is_empty() => tracing::error!("reload refused: the new configuration has no [[tenants]]; the running configuration stays"),
            Ok(new) => {
                if new.redis != self.config.redis || new.server != self.config.server {
                    tracing::warn!("reload: changes to [redis] or [server] take effect at the next restart; applying the tenants' changes");
                }
                let wanted: BTreeMap<String, TenantConfig> =
                    new.tenants.iter().map(|t| (t.id.to_string(), t.clone())).collect();
                let gone: Vec<String> = self.running.keys().filter(|id| !wanted.contains_key(*id)).cloned().collect();
                for id in gone {
                    tracing::info!(tenant = %id, "reload: tenant removed; stopping it (its slot stays: drop it with walcast slots --drop)");
                    self.stop(&id).await;
                }
                let (mut added, mut changed) = (0, 0);
                self.config.slot_lag_warn_bytes = new.slot_lag_warn_bytes;
                for (id, tenant) in wanted {
                    match self.running.get(&id) {
                        Some(running) if running.config == tenant => {}
                        Some(_) => {
                            tracing::info!(tenant = %id, "reload: tenant changed; restarting it");
                            self.stop(&id).await;
                            changed += 1;
                            self.start(tenant);
                        }
                        None => {
                            tracing::info!(tenant = %id, "reload: tenant added; starting it");
                            added += 1;
                            self.start(tenant);
                        }
                    }
                }
                tracing::info!(added, changed, tenants = self.running.len(), "reload done");
                let redis = self.config.redis.clone();
                let server = self.config.server.clone();
                self.config = Config { redis, server, ..new };
            }
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }
}

/// Tells systemd (when it started us with `Type=notify`) that walcast is
/// ready once every tenant streams or the start-up grace passed, keeps a
/// `STATUS=` line with tenant counts, and pings the watchdog from this task:
/// a wedged runtime stops pinging and systemd restarts the service.
fn spawn_systemd_notifier(
    states: TenantStates,
    started: std::time::Instant,
    grace: Duration,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) {
    let watchdog = sd_notify::watchdog_enabled();
    let tick = watchdog
        .map(|w| (w / 2).min(Duration::from_secs(1)))
        .unwrap_or(Duration::from_secs(1));
    tracker.spawn(async move {
        let mut ready = false;
        let mut last_status = String::new();
        let mut interval = tokio::time::interval(tick);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping, sd_notify::NotifyState::Status("stopping")]);
                    return;
                }
                _ = interval.tick() => {}
            }
            let (streaming, total) = {
                let states = states.read().unwrap_or_else(|p| p.into_inner());
                let streaming = states.values().filter(|s| *s.borrow() == TenantState::Streaming).count();
                (streaming, states.len())
            };
            let status = format!("streaming {streaming} of {total} tenants");
            if status != last_status {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status)]);
                last_status = status;
            }
            if !ready && (streaming == total || started.elapsed() >= grace) {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                ready = true;
            }
            if watchdog.is_some() {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        }
    });
}

/// Connects to Redis, retrying until it answers: every 250 ms at first,
/// then every second at most, so walcast goes on within a second of Redis
/// being back; logged at the first failure and then every 10 s. A
/// certificate that does not verify is an error with its fix, retried
/// every 10 s (the fix is on the operator's side).
async fn connect_redis(config: &RedisConfig) -> redis::aio::ConnectionManager {
    let mut delay = Duration::from_millis(250);
    let mut logged: Option<std::time::Instant> = None;
    loop {
        match crate::sink::redis::connect(config).await {
            Ok(conn) => return conn,
            Err(err) => {
                let text = crate::tenant::error_chain(&err);
                let tls = crate::sink::redis::tls_problem(&text);
                let wait = if tls.is_some() {
                    Duration::from_secs(10)
                } else {
                    delay
                };
                if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) || tls.is_some()
                {
                    match tls {
                        Some(fix) => {
                            tracing::error!(error = %text, retry_in_ms = wait.as_millis() as u64, "cannot connect to redis: {fix}")
                        }
                        None => {
                            tracing::warn!(error = %text, retry_in_ms = wait.as_millis() as u64, "cannot reach redis; retrying (check [redis] url)")
                        }
                    }
                    logged = Some(std::time::Instant::now());
                }
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(Duration::from_secs(1));
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
        hub: None,
        feed: None,
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
