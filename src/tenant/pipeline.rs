//! One replication session of one tenant: source → decode → apply → sink →
//! confirm. Decode and apply run here, in the tenant's task (pure work, no
//! channel hop). Events go to the sink as they are decoded, so a large
//! transaction streams through without being held in memory; the transaction
//! is confirmed to Postgres only after the sink committed it.

use std::collections::HashSet;
use std::sync::Arc;

use pgwire_replication::ReplicationEvent;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Backoff, TenantState};
use crate::apply::{Applier, ApplyError};
use crate::config::TenantConfig;
use crate::decode::{decode, DecodeError, PgOutputMessage};
use crate::model::{ChangeEvent, EventId, HubFeed, HubInput, Lsn, Op, TableName};
use crate::sink::{EventSink, RedisSink, SinkError};
use crate::source::{self, PendingSession, ReplicationSession, SlotKind, SourceError};

/// How often a tenant with a Redis mirror checks that Redis still holds its
/// epoch marker (it also checks with every write).
const EPOCH_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// How often a streaming tenant reads its slot's lag.
const SLOT_LAG_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Records the slot's lag and warns past `warn_bytes` (errors reading it are
/// only logged: the stream itself reports a broken connection).
async fn check_slot_lag(client: &tokio_postgres::Client, tenant: &TenantConfig, warn_bytes: u64) {
    match source::slot_infos(client, tenant).await {
        Ok(slots) => {
            if let Some(slot) = slots.iter().find(|s| s.name == tenant.slot) {
                let lag = slot.lag_bytes.unwrap_or_default().max(0) as u64;
                metrics::gauge!(crate::metrics::SOURCE_SLOT_LAG_BYTES, crate::metrics::TENANT => tenant.id.to_string())
                    .set(lag as f64);
                if lag > warn_bytes {
                    tracing::warn!(tenant = %tenant.id, slot = %tenant.slot, lag_bytes = lag, threshold = warn_bytes, "replication slot lag above slot_lag_warn_bytes: the server keeps this much WAL for walcast");
                }
            }
        }
        Err(error) => tracing::debug!(tenant = %tenant.id, %error, "could not read the slot's lag"),
    }
}

/// Group commit: transactions are committed to the sink (and confirmed) once
/// the stream has nothing more ready, or after this many transactions, or
/// after this long, whichever comes first. One Redis round trip then covers
/// many small transactions.
const GROUP_COMMIT_TXNS: usize = 500;
const GROUP_COMMIT_MAX_DELAY: std::time::Duration = std::time::Duration::from_millis(50);
/// After a commit that carried several transactions (the source has a
/// backlog), a pause in the stream commits only once the group is this old.
/// Committing at every pause then meant a Redis round trip every few
/// transactions: the reader took each message as it came and found the
/// stream paused again at once, and each small batch cost more than the
/// time it saved (docs/benchmarks.md, seventh session). A commit of one
/// transaction (a quiet source) still goes at the first pause.
const GROUP_COMMIT_LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// Transactions handed to the sink and not yet committed there.
struct Unflushed {
    last_commit: Lsn,
    end: Lsn,
    txns: usize,
    since: std::time::Instant,
    /// The last event of the last complete transaction.
    last_event: Option<EventId>,
    /// Commit time of the last complete transaction (microseconds since 2000).
    last_commit_ts: Option<i64>,
}

impl Unflushed {
    /// Nothing handed over yet beyond what `progress` says is committed.
    fn after(progress: &Progress) -> Unflushed {
        Unflushed {
            last_commit: progress.last_commit,
            end: progress.confirmed_end,
            txns: 0,
            since: std::time::Instant::now(),
            last_event: progress.committed_event,
            last_commit_ts: None,
        }
    }
}

/// How a tenant's pipeline runs.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub slot: SlotKind,
    /// Only events of these tables reach the sink (all when `None`; logical
    /// messages only pass when there is no table filter).
    pub tables: Option<HashSet<TableName>>,
    /// Create a missing publication or slot before streaming.
    pub create_missing: bool,
    /// Stop at the first error that needs a human instead of retrying.
    pub give_up_on_definite: bool,
    /// The tenant's Redis sink (the same object as the pipeline's sink),
    /// for the initial snapshot and the epoch check.
    pub mirror: Option<Arc<RedisSink>>,
    /// The tenant's delivery hub: told the tables' columns.
    pub hub: Option<Arc<crate::hub::TenantHub>>,
    /// The hub's feed: told when the stream restarts at a new snapshot.
    pub feed: Option<HubFeed>,
    /// Warn when the slot holds more unconfirmed WAL than this.
    pub slot_lag_warn_bytes: u64,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            slot: SlotKind::Permanent,
            tables: None,
            create_missing: true,
            give_up_on_definite: false,
            mirror: None,
            hub: None,
            feed: None,
            slot_lag_warn_bytes: crate::config::DEFAULT_SLOT_LAG_WARN_BYTES,
        }
    }
}

/// Why a session ended. `super::policy::directive` decides what follows.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("tenant {tenant}: bad pgoutput data, reconnecting from the last confirmed position")]
    Decode {
        tenant: String,
        #[source]
        source: DecodeError,
    },
    #[error(
        "tenant {tenant}: cannot apply the stream, reconnecting from the last confirmed position"
    )]
    Apply {
        tenant: String,
        #[source]
        source: ApplyError,
    },
    #[error("tenant {tenant}: writing events failed")]
    Sink {
        tenant: String,
        #[source]
        source: SinkError,
    },
    #[error("tenant {tenant}: the server ended the replication stream")]
    StreamEnded { tenant: String },
    #[error("tenant {tenant}: initial snapshot failed")]
    Snapshot {
        tenant: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bug: the session's code panicked. The tenant restarts from its last
    /// confirmed position; other tenants go on.
    #[error("tenant {tenant}: the pipeline panicked ({message}); restarting the tenant from its last confirmed position")]
    Panicked { tenant: String, message: String },
}

/// What survives a reconnect: what the sink has, and what Postgres was told.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// Commit LSN of the last transaction the sink committed: a replayed
    /// transaction at or before it is skipped (never written twice).
    last_commit: Lsn,
    /// End LSN of that transaction: where the next session starts.
    confirmed_end: Lsn,
    /// The last event handed to the sink: a transaction cut off by a
    /// reconnect is sent again whole, and its first part is not written twice.
    last_written: Option<EventId>,
    /// The last event of the last transaction the sink committed.
    committed_event: Option<EventId>,
}

pub(super) async fn run_session(
    tenant: &TenantConfig,
    options: &PipelineOptions,
    sink: &dyn EventSink,
    cancel: &CancellationToken,
    state: &watch::Sender<TenantState>,
    progress: &mut Progress,
    backoff: &mut Backoff,
) -> Result<(), PipelineError> {
    sink.reset().await.map_err(|source| PipelineError::Sink {
        tenant: tenant.id.to_string(),
        source,
    })?;
    if !sink.keeps_uncommitted() {
        // What the sink dropped must be handed to it again.
        progress.last_written = progress.committed_event;
    }
    // The regular connection stays open for catalog look-ups of column types.
    let (catalog, pending) = prepare(tenant, options).await?;
    if let (Some(feed), Some(pending)) = (&options.feed, &pending) {
        // A new snapshot: what live subscribers had may have a hole.
        feed.send(HubInput::Reset {
            complete_from: EventId {
                commit_lsn: pending.streams_from(),
                index: 0,
            },
        });
    }
    if let Some(hub) = &options.hub {
        learn_columns(&catalog, tenant, hub).await;
    }
    let slot = slot_name(tenant, &options.slot);
    let (mut session, from) = match pending {
        // A new slot with a snapshot: stream from the snapshot's point.
        Some(pending) => {
            let from = pending.streams_from();
            (pending.start().await?, from)
        }
        None => {
            let session =
                ReplicationSession::open(tenant, &options.slot, progress.confirmed_end).await?;
            // Postgres streams from the later of the requested position and
            // the slot's confirmed_flush_lsn (a restart asks for 0/0).
            let from = match source::confirmed_flush_lsn(&catalog, tenant, slot).await {
                Ok(confirmed) => {
                    confirmed.map_or(progress.confirmed_end, |c| c.max(progress.confirmed_end))
                }
                Err(error) => {
                    tracing::debug!(tenant = %tenant.id, %error, "could not read the slot's confirmed position");
                    progress.confirmed_end
                }
            };
            (session, from)
        }
    };
    tracing::info!(tenant = %tenant.id, slot = %slot, from = %from, "streaming");
    state.send_replace(TenantState::Streaming);
    metrics::gauge!(crate::metrics::SOURCE_SLOT_ACTIVE, crate::metrics::TENANT => tenant.id.to_string()).set(1.0);
    // Whatever way this session ends, the slot is no longer read by it.
    let _inactive_on_exit = SlotInactiveOnDrop(tenant.id.to_string());
    backoff.reset();
    crate::fault::inject("pipeline", tenant.id.as_str());

    let mut applier = Applier::new(tenant.id.as_arc());
    let mut events: Vec<ChangeEvent> = Vec::new();
    // Inside a transaction that was already written before a reconnect.
    let mut skipping = false;
    let tenant_name = || tenant.id.to_string();
    let mut unflushed: Option<Unflushed> = None;
    // The last commit carried more than one transaction: the next group
    // lingers (GROUP_COMMIT_LINGER), on this timer, armed for the group
    // that started at `linger_for`.
    let mut busy = false;
    let linger = tokio::time::sleep(GROUP_COMMIT_LINGER);
    tokio::pin!(linger);
    let mut linger_for: Option<std::time::Instant> = None;
    let counters = ChangeCounters::new(&tenant.id.to_string());
    let mut lag_check = tokio::time::interval(SLOT_LAG_CHECK_INTERVAL);
    lag_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut epoch_check = tokio::time::interval(EPOCH_CHECK_INTERVAL);
    epoch_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if let (true, Some(u)) = (busy, &unflushed) {
            if linger_for != Some(u.since) {
                linger_for = Some(u.since);
                linger.as_mut().reset(tokio::time::Instant::from_std(
                    u.since + GROUP_COMMIT_LINGER,
                ));
            }
        }
        let event = tokio::select! {
            biased;
            // Shutdown between transactions; inside one we read on to its
            // Commit so that what was written gets confirmed.
            _ = cancel.cancelled(), if applier.in_transaction().is_none() && !skipping && unflushed.is_none() => break,
            // An idle tenant notices too when Redis lost its data.
            _ = epoch_check.tick(), if options.mirror.is_some() => {
                if let Some(mirror) = &options.mirror {
                    if mirror.epoch_lost().await {
                        return Err(PipelineError::Sink { tenant: tenant_name(), source: SinkError::Lost });
                    }
                }
                continue;
            }
            // How much WAL the slot holds back: a metric, and a warning
            // past the configured threshold.
            _ = lag_check.tick(), if options.slot == SlotKind::Permanent => {
                check_slot_lag(&catalog, tenant, options.slot_lag_warn_bytes).await;
                continue;
            }
            // The next message from the server.
            event = session.recv() => event?,
            // Nothing more is ready: commit what the sink holds, at once
            // unless the source has a backlog (see GROUP_COMMIT_LINGER).
            _ = std::future::ready(()), if unflushed.is_some() && !busy => {
                busy = flush(sink, tenant, &mut unflushed, progress, &mut session).await? > 1;
                continue;
            }
            _ = &mut linger, if unflushed.is_some() && busy => {
                busy = flush(sink, tenant, &mut unflushed, progress, &mut session).await? > 1;
                continue;
            }
        };
        let Some(event) = event else {
            return Err(PipelineError::StreamEnded {
                tenant: tenant_name(),
            });
        };
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                let commit_lsn = Lsn::from(final_lsn);
                if commit_lsn <= progress.last_commit {
                    skipping = true;
                } else {
                    applier.begin(commit_lsn, xid, commit_time_micros);
                }
            }
            ReplicationEvent::XLogData { data, .. } => {
                let msg = decode(&data).map_err(|source| {
                    metrics::counter!(crate::metrics::SOURCE_DECODE_ERRORS, crate::metrics::TENANT => tenant.id.to_string()).increment(1);
                    PipelineError::Decode {
                    tenant: tenant_name(),
                    source,
                }
                })?;
                if let PgOutputMessage::Relation(relation) = &msg {
                    let types = relation.columns.iter().map(|c| c.type_oid);
                    learn_types(&catalog, tenant, &mut applier, types).await?;
                    // Postgres describes each table at its first change of a
                    // session; read the catalog again only when the columns
                    // differ from what the hub knows (ALTER TABLE).
                    if let Some(hub) = options.hub.as_ref().filter(|hub| {
                        let table = TableName::new(&relation.namespace, &relation.name);
                        let names = relation.columns.iter().map(|c| c.name.as_str());
                        !hub.knows_columns(&table, names)
                    }) {
                        learn_columns(&catalog, tenant, hub).await;
                    }
                }
                // A skipped transaction still updates the relation cache.
                if skipping
                    && !matches!(
                        msg,
                        PgOutputMessage::Relation(_) | PgOutputMessage::Type { .. }
                    )
                {
                    continue;
                }
                let applied = match applier.apply(msg, &mut events) {
                    // A composite type changed without Postgres describing
                    // it again (ALTER TYPE … ADD ATTRIBUTE sends no Type or
                    // Relation message): look it up anew and apply the
                    // message again; what still does not fit stays text.
                    Err(ApplyError::StaleType { type_oid, .. }) => {
                        applier.types_mut().forget(type_oid);
                        learn_types(&catalog, tenant, &mut applier, [type_oid]).await?;
                        let msg = decode(&data).map_err(|source| PipelineError::Decode {
                            tenant: tenant_name(),
                            source,
                        })?;
                        applier.set_report_stale(false);
                        let applied = applier.apply(msg, &mut events);
                        applier.set_report_stale(true);
                        applied
                    }
                    applied => applied,
                };
                applied.map_err(|source| PipelineError::Apply {
                    tenant: tenant_name(),
                    source,
                })?;
                write(
                    sink,
                    options,
                    &mut events,
                    tenant,
                    &counters,
                    &mut progress.last_written,
                )
                .await?;
            }
            ReplicationEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => {
                let lsn = Lsn::from(lsn);
                if skipping || (!transactional && lsn <= progress.last_commit) {
                    continue;
                }
                events.push(applier.message(transactional, lsn, prefix, content));
                write(
                    sink,
                    options,
                    &mut events,
                    tenant,
                    &counters,
                    &mut progress.last_written,
                )
                .await?;
                if !transactional && applier.in_transaction().is_none() {
                    // Committed when the stream pauses, like a transaction.
                    unflushed
                        .get_or_insert_with(|| Unflushed::after(progress))
                        .last_event = progress.last_written;
                }
            }
            ReplicationEvent::Commit {
                lsn,
                end_lsn,
                commit_time_micros,
            } => {
                let end = Lsn::from(end_lsn);
                if skipping {
                    skipping = false;
                    match &mut unflushed {
                        Some(u) => u.end = u.end.max(end),
                        None => {
                            progress.confirmed_end = progress.confirmed_end.max(end);
                            session.confirm(progress.confirmed_end);
                        }
                    }
                    continue;
                }
                applier.commit().map_err(|source| PipelineError::Apply {
                    tenant: tenant_name(),
                    source,
                })?;
                let u = unflushed.get_or_insert_with(|| Unflushed::after(progress));
                u.last_commit = Lsn::from(lsn);
                u.end = u.end.max(end);
                u.txns += 1;
                u.last_event = progress.last_written;
                u.last_commit_ts = Some(commit_time_micros);
                if u.txns >= GROUP_COMMIT_TXNS || u.since.elapsed() >= GROUP_COMMIT_MAX_DELAY {
                    busy = flush(sink, tenant, &mut unflushed, progress, &mut session).await? > 1;
                }
            }
            // Idle: the walsender has decoded everything up to `wal_end` and
            // sent every transaction that committed before it (a keepalive
            // carries the position it has sent up to). With nothing in
            // flight here, confirming it lets the server recycle WAL that
            // only other tables' changes wrote; otherwise an idle tenant's
            // slot would pin WAL forever.
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                if applier.in_transaction().is_none() && !skipping && unflushed.is_none() {
                    progress.confirmed_end = progress.confirmed_end.max(Lsn::from(wal_end));
                    session.confirm(progress.confirmed_end);
                }
            }
            ReplicationEvent::StoppedAt { .. } => {}
        }
    }
    tracing::info!(tenant = %tenant.id, confirmed = %progress.confirmed_end, "stopping: closing the replication stream");
    session.close().await;
    Ok(())
}

/// Reads the published tables' columns for subscriptions' typed filters.
/// A failure only leaves filters untyped until the next try.
async fn learn_columns(
    catalog: &tokio_postgres::Client,
    tenant: &TenantConfig,
    hub: &crate::hub::TenantHub,
) {
    match crate::hub::Schema::load(catalog, &tenant.publication).await {
        Ok(schema) => hub.set_schema(schema),
        Err(error) => {
            tracing::warn!(tenant = %tenant.id, %error, "could not read the published tables' columns; subscription filters compare by the values' JSON types until the next session")
        }
    }
}

/// Looks up the types among `oids` (and those they are built from) that the
/// applier does not know: domains, enums, composites, ranges, arrays of
/// them, extension types.
async fn learn_types(
    catalog: &tokio_postgres::Client,
    tenant: &TenantConfig,
    applier: &mut Applier,
    oids: impl IntoIterator<Item = u32>,
) -> Result<(), PipelineError> {
    let missing = applier.types().missing(oids);
    if missing.is_empty() {
        return Ok(());
    }
    let types = applier.types();
    let shapes = source::load_types(catalog, &tenant.id, &missing, &|oid| types.knows(oid)).await?;
    tracing::debug!(tenant = %tenant.id, count = shapes.len(), "looked up column types");
    for (oid, shape) in shapes {
        applier.types_mut().insert(oid, shape);
    }
    Ok(())
}

/// Checks (and with `create_missing` creates) publication and slot, and
/// returns the regular connection. With a Redis mirror whose epoch marker is
/// missing (first start, or Redis lost its data), (re)creates the slot with an
/// exported snapshot, copies the hot rows, and also returns the pending
/// session that streams from the snapshot's point.
async fn prepare(
    tenant: &TenantConfig,
    options: &PipelineOptions,
) -> Result<(tokio_postgres::Client, Option<PendingSession>), PipelineError> {
    let client = source::connect(tenant, "walcast").await?;
    if options.create_missing {
        source::ensure_publication(&client, tenant).await?;
    } else {
        let missing: Vec<String> = source::setup_sql(&client, tenant)
            .await?
            .into_iter()
            .filter(|a| options.slot == SlotKind::Permanent || !a.sql.contains("replication_slot"))
            .map(|a| a.why)
            .collect();
        if !missing.is_empty() {
            return Err(SourceError::Setup {
                tenant: tenant.id.clone(),
                problem: missing.join(", "),
                fix: "run `walcast setup` (or `walcast setup --dry-run` to see the SQL)".into(),
            }
            .into());
        }
    }
    if options.slot != SlotKind::Permanent {
        return Ok((client, None));
    }
    let own = source::slot_infos(&client, tenant).await?;
    if own.iter().any(|s| s.name == tenant.slot && s.is_lost()) {
        let err = source::lost_slot_error(tenant, options.mirror.is_some());
        tracing::error!(tenant = %tenant.id, slot = %tenant.slot, error = %err, "replication slot invalidated: changes were lost");
        return Err(err.into());
    }
    let Some(mirror) = &options.mirror else {
        if options.create_missing {
            source::ensure_slot(&client, tenant).await?;
        }
        return Ok((client, None));
    };
    mirror.set_default_keys(&source::mirror_keys(&client, tenant).await?);
    let epoch = mirror.read_epoch().await;
    let slot = source::slot_state(&client, tenant).await?;
    if !epoch.is_empty() && slot.is_some() {
        mirror.set_expected_epoch(epoch).await;
        return Ok((client, None));
    }
    let pending = snapshot_into(&client, tenant, mirror, slot).await?;
    Ok((client, Some(pending)))
}

/// Recreates the tenant's slot with an exported snapshot and copies the hot
/// rows of its mirrored tables into Redis. `slot`: whether the slot exists
/// and is in use. Returns the session that streams from the snapshot's point.
pub(crate) async fn snapshot_into(
    client: &tokio_postgres::Client,
    tenant: &TenantConfig,
    mirror: &RedisSink,
    slot: Option<bool>,
) -> Result<PendingSession, PipelineError> {
    let mut slot = slot;
    // Our own previous session may still be ending on the server.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while slot == Some(true) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        slot = source::slot_state(client, tenant).await?;
    }
    if let Some(active) = slot {
        if active {
            return Err(SourceError::Setup {
                tenant: tenant.id.clone(),
                problem: format!("redis has no data for this tenant and needs a new snapshot, but slot {} is in use by another session", tenant.slot),
                fix: "stop the other reader of the slot (another walcast?); walcast retries".into(),
            }
            .into());
        }
        tracing::warn!(tenant = %tenant.id, slot = %tenant.slot, "redis holds no epoch marker for this tenant (first start with redis, or redis lost its data): recreating the slot with a snapshot; the stream restarts at the snapshot");
        source::drop_slot(client, tenant).await?;
    }
    let snapshot_err = |source: Box<dyn std::error::Error + Send + Sync>| PipelineError::Snapshot {
        tenant: tenant.id.to_string(),
        source,
    };
    let (pending, snapshot) = ReplicationSession::create_slot_with_snapshot(tenant).await?;
    tracing::info!(tenant = %tenant.id, consistent_point = %snapshot.consistent_point, "created slot with snapshot; copying hot rows into redis");
    let rows = super::snapshot::copy(client, tenant, mirror, &snapshot)
        .await
        .map_err(|e| snapshot_err(Box::new(e)))?;
    mirror
        .finish_snapshot(snapshot.consistent_point)
        .await
        .map_err(|e| snapshot_err(Box::new(e)))?;
    tracing::info!(tenant = %tenant.id, rows, "snapshot complete; streaming from its consistent point");
    Ok(pending)
}

/// The tenant's change counters (`walcast_source_changes_total` by
/// operation), looked up once per session rather than once per change.
struct ChangeCounters([metrics::Counter; 5]);

impl ChangeCounters {
    const OPS: [Op; 5] = [
        Op::Insert,
        Op::Update,
        Op::Delete,
        Op::Truncate,
        Op::Message,
    ];

    fn new(tenant: &str) -> ChangeCounters {
        ChangeCounters(Self::OPS.map(|op| {
            metrics::counter!(crate::metrics::SOURCE_CHANGES, crate::metrics::TENANT => tenant.to_owned(), crate::metrics::OP => op.as_str())
        }))
    }

    fn count(&self, events: &[ChangeEvent]) {
        let mut counts = [0u64; 5];
        for event in events {
            let slot = match event.op {
                Op::Insert => 0,
                Op::Update => 1,
                Op::Delete => 2,
                Op::Truncate => 3,
                Op::Message => 4,
            };
            counts[slot] += 1;
        }
        for (counter, n) in self.0.iter().zip(counts) {
            if n > 0 {
                counter.increment(n);
            }
        }
    }
}

async fn write(
    sink: &dyn EventSink,
    options: &PipelineOptions,
    events: &mut Vec<ChangeEvent>,
    tenant: &TenantConfig,
    counters: &ChangeCounters,
    last_written: &mut Option<EventId>,
) -> Result<(), PipelineError> {
    if let Some(last) = *last_written {
        events.retain(|e| e.id > last);
    }
    if let Some(last) = events.last() {
        *last_written = Some(last.id);
    }
    counters.count(events);
    if let Some(tables) = &options.tables {
        events.retain(|e| e.table().is_some_and(|t| tables.contains(t)));
    }
    if !events.is_empty() {
        sink.write_owned(std::mem::take(events))
            .await
            .map_err(|source| PipelineError::Sink {
                tenant: tenant.id.to_string(),
                source,
            })?;
    }
    Ok(())
}

/// Commits what the sink holds, then confirms it to Postgres; the number of
/// transactions it committed.
async fn flush(
    sink: &dyn EventSink,
    tenant: &TenantConfig,
    unflushed: &mut Option<Unflushed>,
    progress: &mut Progress,
    session: &mut ReplicationSession,
) -> Result<usize, PipelineError> {
    let Some(u) = unflushed.take() else {
        return Ok(0);
    };
    sink.commit(Some(u.end))
        .await
        .map_err(|source| PipelineError::Sink {
            tenant: tenant.id.to_string(),
            source,
        })?;
    metrics::counter!(crate::metrics::SOURCE_TRANSACTIONS, crate::metrics::TENANT => tenant.id.to_string())
        .increment(u.txns as u64);
    if let Some(ts) = u.last_commit_ts {
        // From commit in Postgres to durably in the sink.
        let lag = (crate::model::now_pg_micros() - ts).max(0) as f64 / 1e6;
        metrics::gauge!(crate::metrics::SOURCE_LAG_SECONDS, crate::metrics::TENANT => tenant.id.to_string()).set(lag);
    }
    progress.last_commit = progress.last_commit.max(u.last_commit);
    progress.confirmed_end = progress.confirmed_end.max(u.end);
    progress.committed_event = progress.committed_event.max(u.last_event);
    session.confirm(progress.confirmed_end);
    Ok(u.txns)
}

fn slot_name<'a>(tenant: &'a TenantConfig, slot: &'a SlotKind) -> &'a str {
    match slot {
        SlotKind::Permanent => &tenant.slot,
        SlotKind::Temporary(name) => name,
    }
}

/// Sets the tenant's slot-active gauge to 0 when the session ends.
struct SlotInactiveOnDrop(String);

impl Drop for SlotInactiveOnDrop {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::SOURCE_SLOT_ACTIVE, crate::metrics::TENANT => self.0.clone()).set(0.0);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::tenant::error_chain;
    use crate::tenant::policy::{directive, Directive};

    /// Bad bytes end the session with an error that says which message and
    /// byte, and that `run_tenant` retries (transient, not fatal): the next
    /// session starts from `Progress::confirmed_end`, the last acknowledged
    /// position, and Postgres sends everything after it again.
    #[test]
    fn malformed_pgoutput_is_transient_and_names_message_and_offset() {
        // An Insert whose 5-byte text value is cut after 2 bytes.
        let bad = Bytes::from_static(b"I\0\0\x40\0N\0\x01t\0\0\0\x05ab");
        let err = PipelineError::Decode {
            tenant: "acme".into(),
            source: decode(&bad).unwrap_err(),
        };
        assert_eq!(directive(&err), Directive::Retry);
        assert_eq!(
            error_chain(&err),
            "tenant acme: bad pgoutput data, reconnecting from the last confirmed position: \
             truncated Insert message at byte 13: needed 5 bytes, 2 left"
        );
        let unknown = PipelineError::Decode {
            tenant: "acme".into(),
            source: decode(&Bytes::from_static(b"Zxyz")).unwrap_err(),
        };
        assert_eq!(directive(&unknown), Directive::Retry);
        assert!(error_chain(&unknown).ends_with("unknown pgoutput message tag 0x5a at byte 0"));
    }
}
