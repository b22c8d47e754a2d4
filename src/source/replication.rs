//! The replication session on `pgwire-replication`: open (optionally on a
//! temporary slot), receive, confirm, close cleanly.

use std::time::Duration;

use pgwire_replication::{PgWireError, ReplicationClient, ReplicationEvent};

use super::SourceError;
use crate::config::TenantConfig;
use crate::model::Lsn;

/// How often the confirmed position is reported to the server at most; also
/// bounds how long a clean shutdown waits for its last acknowledgement.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Which slot a session reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotKind {
    /// The tenant's configured slot, which must exist.
    Permanent,
    /// A slot of this name created for the session and dropped by the server
    /// when the session ends.
    Temporary(String),
}

/// One replication session of one tenant.
pub struct ReplicationSession {
    client: ReplicationClient,
    tenant: TenantConfig,
    confirmed: Lsn,
}

impl ReplicationSession {
    /// Connects, creates the temporary slot if asked, and starts streaming
    /// after `start` (zero: from the slot's confirmed position).
    pub async fn open(
        tenant: &TenantConfig,
        slot: &SlotKind,
        start: Lsn,
    ) -> Result<Self, SourceError> {
        let slot_name = match slot {
            SlotKind::Permanent => tenant.slot.as_str(),
            SlotKind::Temporary(name) => name.as_str(),
        };
        let config = tenant
            .pg
            .replication_config(slot_name, &tenant.publication, "walcast")
            .with_start_lsn(start.into())
            .with_binary(tenant.binary)
            .with_status_interval(STATUS_INTERVAL);
        let err = |what: &'static str| {
            let tenant = tenant.clone();
            move |source: PgWireError| replication_error(&tenant, what, source)
        };
        let mut client = ReplicationClient::connect_gated(config)
            .await
            .map_err(err("connect"))?;
        if let SlotKind::Temporary(name) = slot {
            client
                .simple_query(&format!(
                    "CREATE_REPLICATION_SLOT {name} TEMPORARY LOGICAL pgoutput"
                ))
                .await
                .map_err(err("creating the temporary slot"))?;
        }
        client.start().await.map_err(err("start"))?;
        client.wait_started().await.map_err(err("start"))?;
        Ok(ReplicationSession {
            client,
            tenant: tenant.clone(),
            confirmed: start,
        })
    }

    /// The next event; `None` when the server ended the stream.
    pub async fn recv(&mut self) -> Result<Option<ReplicationEvent>, SourceError> {
        self.client
            .recv()
            .await
            .map_err(|source| replication_error(&self.tenant, "stream", source))
    }

    /// Everything up to `lsn` is durably handled: the slot may move past it.
    pub fn confirm(&mut self, lsn: Lsn) {
        if lsn > self.confirmed {
            self.confirmed = lsn;
            self.client.update_applied_lsn(lsn.into());
        }
    }

    /// Sends the last confirmation (waiting up to the status interval and a
    /// little more for it to go out), then ends the stream with CopyDone.
    pub async fn close(mut self) {
        let target = self.confirmed;
        let deadline = tokio::time::Instant::now() + STATUS_INTERVAL * 3;
        let metrics = self.client.metrics();
        while Lsn::from(metrics.last_applied_lsn()) < target
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Err(error) = self.client.shutdown().await {
            tracing::debug!(tenant = %self.tenant.id, %error, "replication session ended with an error while closing");
        }
    }
}

fn replication_error(
    tenant: &TenantConfig,
    what: &'static str,
    source: PgWireError,
) -> SourceError {
    let text = source.to_string();
    let hint = if text.contains("does not exist") && text.contains("slot") {
        format!(
            "; create the slot with `walcast setup` (slot {})",
            tenant.slot
        )
    } else if text.contains("publication") && text.contains("does not exist") {
        format!(
            "; create the publication with `walcast setup` (publication {})",
            tenant.publication
        )
    } else if text.contains("is active for PID") {
        format!("another process is reading slot {} (another walcast?): stop it or give this tenant its own slot", tenant.slot)
    } else if text.contains("unrecognized pgoutput option") && text.contains("binary") {
        // pgoutput learned the binary option in PostgreSQL 14.
        format!(
            "binary = true needs PostgreSQL 14 or newer: remove it from tenant {}",
            tenant.id
        )
    } else if text.contains("logical decoding requires wal_level") || text.contains("wal_level") {
        "; set wal_level = logical (ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL)"
            .to_string()
    } else if matches!(source, PgWireError::Auth(_))
        || text.contains("28P01")
        || text.contains("password")
    {
        "check the user and password in the tenant's url".to_string()
    } else if text.contains("42501")
        || text.contains("permission denied")
        || text.contains("must be superuser or replication")
    {
        format!(
            "give the role the REPLICATION attribute: ALTER ROLE {} REPLICATION;",
            super::quote_ident(&tenant.pg.user)
        )
    } else if text.contains("no pg_hba.conf entry") {
        "allow this host in pg_hba.conf with a `host replication <user> <address> scram-sha-256` line".to_string()
    } else if source.is_io() {
        "check that the server is running and reachable at the url's host and port".to_string()
    } else {
        String::new()
    };
    let hint = if hint.is_empty() {
        hint
    } else {
        format!(" (to fix: {hint})")
    };
    SourceError::Replication {
        tenant: tenant.id.clone(),
        what,
        hint,
        source,
    }
}
