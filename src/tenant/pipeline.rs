//! One replication session of one tenant: source → decode → apply → sink →
//! confirm. Decode and apply run here, in the tenant's task (pure work, no
//! channel hop). Events go to the sink as they are decoded, so a large
//! transaction streams through without being held in memory; the transaction
//! is confirmed to Postgres only after the sink committed it.

use std::collections::HashSet;

use pgwire_replication::ReplicationEvent;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Backoff, TenantState};
use crate::apply::{Applier, ApplyError, TxnInfo};
use crate::config::TenantConfig;
use crate::decode::{decode, DecodeError, PgOutputMessage};
use crate::model::{ChangeEvent, EventId, Lsn, TableName};
use crate::sink::{EventSink, SinkError};
use crate::source::{self, ReplicationSession, SlotKind, SourceError};

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
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            slot: SlotKind::Permanent,
            tables: None,
            create_missing: true,
            give_up_on_definite: false,
        }
    }
}

/// Why a session ended. `is_transient` decides how soon to retry.
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
}

impl PipelineError {
    /// Retrying soon may help (a network blip, a restarting server, bad bytes).
    pub fn is_transient(&self) -> bool {
        match self {
            PipelineError::Source(e) => e.is_transient(),
            PipelineError::Decode { .. }
            | PipelineError::Apply { .. }
            | PipelineError::StreamEnded { .. } => true,
            PipelineError::Sink { .. } => false,
        }
    }

    /// Nothing can continue (the output is gone).
    pub fn is_fatal(&self) -> bool {
        matches!(self, PipelineError::Sink { .. })
    }
}

/// What survives a reconnect: what the sink has, and what Postgres was told.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// Commit LSN of the last transaction the sink committed: a replayed
    /// transaction at or before it is skipped (never written twice).
    last_commit: Lsn,
    /// End LSN of that transaction: where the next session starts.
    confirmed_end: Lsn,
    /// The transaction in hand and how many of its events the sink has
    /// taken. A session that ends inside a transaction (bad bytes, a network
    /// error) gets it again whole from Postgres; event numbering is
    /// deterministic, so the next session drops the events already written
    /// instead of writing them twice.
    partial: Option<(Lsn, u32)>,
}

impl Progress {
    /// The sink took every event of the transaction in hand numbered so far.
    fn written(&mut self, txn: Option<&TxnInfo>) {
        self.partial = txn.map(|txn| (txn.commit_lsn, txn.event_count));
    }

    /// Whether an earlier session already handed this event to the sink.
    fn already_written(&self, id: &EventId) -> bool {
        matches!(self.partial, Some((lsn, count)) if id.commit_lsn == lsn && id.index < count)
    }
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
    prepare(tenant, options).await?;
    let mut session =
        ReplicationSession::open(tenant, &options.slot, progress.confirmed_end).await?;
    tracing::info!(tenant = %tenant.id, slot = %slot_name(tenant, &options.slot), from = %progress.confirmed_end, "streaming");
    state.send_replace(TenantState::Streaming);
    backoff.reset();

    let mut applier = Applier::new(tenant.id.as_arc());
    let mut events: Vec<ChangeEvent> = Vec::new();
    // Inside a transaction that was already written before a reconnect.
    let mut skipping = false;
    let tenant_name = || tenant.id.to_string();
    loop {
        let event = tokio::select! {
            biased;
            // Shutdown between transactions; inside one we read on to its
            // Commit so that what was written gets confirmed.
            _ = cancel.cancelled(), if applier.in_transaction().is_none() && !skipping => break,
            // The next message from the server.
            event = session.recv() => event?,
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
                let msg = decode(&data).map_err(|source| PipelineError::Decode {
                    tenant: tenant_name(),
                    source,
                })?;
                // A skipped transaction still updates the relation cache.
                if skipping
                    && !matches!(
                        msg,
                        PgOutputMessage::Relation(_) | PgOutputMessage::Type { .. }
                    )
                {
                    continue;
                }
                applier
                    .apply(msg, &mut events)
                    .map_err(|source| PipelineError::Apply {
                        tenant: tenant_name(),
                        source,
                    })?;
                write(sink, options, &mut events, tenant, progress).await?;
                progress.written(applier.in_transaction());
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
                write(sink, options, &mut events, tenant, progress).await?;
                if transactional {
                    progress.written(applier.in_transaction());
                }
                if !transactional {
                    commit_sink(sink, tenant).await?;
                }
            }
            ReplicationEvent::Commit { lsn, end_lsn, .. } => {
                if skipping {
                    skipping = false;
                } else {
                    applier.commit().map_err(|source| PipelineError::Apply {
                        tenant: tenant_name(),
                        source,
                    })?;
                    commit_sink(sink, tenant).await?;
                    progress.last_commit = Lsn::from(lsn);
                    progress.partial = None;
                }
                progress.confirmed_end = progress.confirmed_end.max(Lsn::from(end_lsn));
                session.confirm(progress.confirmed_end);
            }
            ReplicationEvent::KeepAlive { .. } | ReplicationEvent::StoppedAt { .. } => {}
        }
    }
    tracing::info!(tenant = %tenant.id, confirmed = %progress.confirmed_end, "stopping: closing the replication stream");
    session.close().await;
    Ok(())
}

/// Checks (and with `create_missing` creates) publication and slot.
async fn prepare(tenant: &TenantConfig, options: &PipelineOptions) -> Result<(), PipelineError> {
    let client = source::connect(tenant, "walcast").await?;
    if options.create_missing {
        source::ensure_publication(&client, tenant).await?;
        if options.slot == SlotKind::Permanent {
            source::ensure_slot(&client, tenant).await?;
        }
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
    Ok(())
}

async fn write(
    sink: &dyn EventSink,
    options: &PipelineOptions,
    events: &mut Vec<ChangeEvent>,
    tenant: &TenantConfig,
    progress: &Progress,
) -> Result<(), PipelineError> {
    events.retain(|e| !progress.already_written(&e.id));
    if let Some(tables) = &options.tables {
        events.retain(|e| e.table().is_some_and(|t| tables.contains(t)));
    }
    if !events.is_empty() {
        sink.write(events)
            .await
            .map_err(|source| PipelineError::Sink {
                tenant: tenant.id.to_string(),
                source,
            })?;
        events.clear();
    }
    Ok(())
}

async fn commit_sink(sink: &dyn EventSink, tenant: &TenantConfig) -> Result<(), PipelineError> {
    sink.commit().await.map_err(|source| PipelineError::Sink {
        tenant: tenant.id.to_string(),
        source,
    })
}

fn slot_name<'a>(tenant: &'a TenantConfig, slot: &'a SlotKind) -> &'a str {
    match slot {
        SlotKind::Permanent => &tenant.slot,
        SlotKind::Temporary(name) => name,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::tenant::error_chain;

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
        assert!(err.is_transient());
        assert!(!err.is_fatal());
        assert_eq!(
            error_chain(&err),
            "tenant acme: bad pgoutput data, reconnecting from the last confirmed position: \
             truncated Insert message at byte 13: needed 5 bytes, 2 left"
        );
        let unknown = PipelineError::Decode {
            tenant: "acme".into(),
            source: decode(&Bytes::from_static(b"Zxyz")).unwrap_err(),
        };
        assert!(unknown.is_transient());
        assert!(error_chain(&unknown).ends_with("unknown pgoutput message tag 0x5a at byte 0"));
    }

    /// A session cut inside a transaction: when Postgres sends it again, the
    /// events the sink already has are dropped by id, the rest pass.
    #[test]
    fn a_replayed_partial_transaction_writes_each_event_once() {
        let mut applier = Applier::new("acme".into());
        let mut progress = Progress::default();
        let id = |commit: u64, index| EventId {
            commit_lsn: Lsn(commit),
            index,
        };
        applier.begin(Lsn(100), 7, 0);
        for _ in 0..3 {
            applier.message(true, Lsn(90), "p".into(), Bytes::new());
        }
        progress.written(applier.in_transaction());
        // The session ends here; the next one gets transaction 100 again.
        assert!(progress.already_written(&id(100, 0)));
        assert!(progress.already_written(&id(100, 2)));
        assert!(!progress.already_written(&id(100, 3)));
        assert!(!progress.already_written(&id(200, 0)));
        // A non-transactional message in between is its own id.
        assert!(!progress.already_written(&id(95, 0)));
        applier.commit().unwrap();
        progress.written(applier.in_transaction());
        assert!(!progress.already_written(&id(100, 0)));
    }
}
