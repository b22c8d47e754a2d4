//! The replication session on `pgwire-replication`: open (optionally on a
//! temporary slot), receive, confirm, close cleanly.

use std::time::Duration;

use pgwire_replication::{PgWireError, ReplicationClient, ReplicationEvent};

use super::SourceError;
use crate::config::{SslMode, TenantConfig};
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

/// A snapshot exported by slot creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedSnapshot {
    /// The slot streams transactions that commit after this point.
    pub consistent_point: Lsn,
    /// The name for `SET TRANSACTION SNAPSHOT`.
    pub name: String,
}

/// An authenticated replication session that has not started streaming.
pub struct PendingSession {
    client: ReplicationClient,
    tenant: TenantConfig,
    start: Lsn,
    /// The new slot's consistent point, for a session that created it.
    consistent_point: Option<Lsn>,
}

/// A gated replication session that has connected and authenticated:
/// the session does both on its own task, and its first answer proves it
/// did, within the connect timeout.
async fn authenticated(
    tenant: &TenantConfig,
    config: pgwire_replication::ReplicationConfig,
) -> Result<ReplicationClient, SourceError> {
    let mut client = ReplicationClient::connect_gated(config)
        .await
        .map_err(|source| replication_error(tenant, "connect", source))?;
    let timeout = tenant.pg.connect_timeout;
    tokio::time::timeout(timeout, client.identify_system())
        .await
        .map_err(|_| SourceError::Timeout {
            tenant: tenant.id.clone(),
            target: tenant.pg.to_string(),
            what: "connecting the replication session",
            after: timeout,
        })?
        .map_err(|source| replication_error(tenant, "connect", source))?;
    Ok(client)
}

impl PendingSession {
    /// Where the stream really starts: the consistent point of the slot this
    /// session created, else the requested position.
    pub fn streams_from(&self) -> Lsn {
        self.consistent_point.unwrap_or(self.start)
    }

    async fn connect(
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
        let tls = super::tls::client_config(tenant)?;
        let mode = tenant.pg.tls.mode;
        let client = if mode == SslMode::Allow {
            // libpq's `allow`: plain first, TLS when the server wants it.
            let plain = config
                .clone()
                .with_tls(pgwire_replication::TlsConfig::disabled());
            match authenticated(tenant, plain).await {
                Err(SourceError::Tls { .. }) => {
                    authenticated(
                        tenant,
                        config.with_tls(super::tls::replication_tls(mode, tls)),
                    )
                    .await?
                }
                other => other?,
            }
        } else {
            authenticated(
                tenant,
                config.with_tls(super::tls::replication_tls(mode, tls)),
            )
            .await?
        };
        Ok(PendingSession {
            client,
            tenant: tenant.clone(),
            start,
            consistent_point: None,
        })
    }

    async fn query(
        &mut self,
        sql: &str,
        what: &'static str,
    ) -> Result<Vec<pgwire_replication::QueryRow>, SourceError> {
        self.client
            .simple_query(sql)
            .await
            .map_err(|source| replication_error(&self.tenant, what, source))
    }

    /// Sends START_REPLICATION and waits until the server accepted it.
    pub async fn start(mut self) -> Result<ReplicationSession, SourceError> {
        let tenant = self.tenant.clone();
        self.client
            .start()
            .await
            .map_err(|source| replication_error(&tenant, "start", source))?;
        self.client
            .wait_started()
            .await
            .map_err(|source| replication_error(&tenant, "start", source))?;
        Ok(ReplicationSession {
            client: self.client,
            tenant: self.tenant,
            confirmed: self.start,
        })
    }
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
        let mut pending = PendingSession::connect(tenant, slot, start).await?;
        if let SlotKind::Temporary(name) = slot {
            pending
                .query(
                    &format!("CREATE_REPLICATION_SLOT {name} TEMPORARY LOGICAL pgoutput"),
                    "creating the temporary slot",
                )
                .await?;
        }
        pending.start().await
    }

    /// Creates the tenant's (permanent) slot on a new replication session
    /// with an exported snapshot: a regular connection that runs
    /// `SET TRANSACTION SNAPSHOT '<name>'` sees exactly the rows committed
    /// before the slot's consistent point, and the stream started afterwards
    /// carries what came later. The snapshot stays valid until the pending
    /// session runs its next command (`start`).
    pub async fn create_slot_with_snapshot(
        tenant: &TenantConfig,
    ) -> Result<(PendingSession, ExportedSnapshot), SourceError> {
        let mut pending = PendingSession::connect(tenant, &SlotKind::Permanent, Lsn::ZERO).await?;
        let rows = pending
            .query(
                &format!(
                    "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')",
                    tenant.slot
                ),
                "creating the slot",
            )
            .await?;
        let text = |row: &pgwire_replication::QueryRow, i: usize| {
            row.get(i)
                .and_then(|v| v.as_ref())
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let row = rows.first().ok_or_else(|| SourceError::Setup {
            tenant: tenant.id.clone(),
            problem: "CREATE_REPLICATION_SLOT returned no row".into(),
            fix: "check the server log; this is unexpected".into(),
        })?;
        let consistent_point = text(row, 1)
            .parse::<Lsn>()
            .map_err(|e| SourceError::Setup {
                tenant: tenant.id.clone(),
                problem: format!("CREATE_REPLICATION_SLOT returned {e}"),
                fix: "check the server log; this is unexpected".into(),
            })?;
        pending.consistent_point = Some(consistent_point);
        let snapshot = ExportedSnapshot {
            consistent_point,
            name: text(row, 2),
        };
        Ok((pending, snapshot))
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
    // Only connecting negotiates TLS: a later error that happens to say
    // "expired" is not about a certificate.
    let tls_problem = (what == "connect")
        .then(|| {
            super::tls::explain_failure(&text, tenant).or_else(|| {
                (text.contains("no pg_hba.conf entry") && text.contains("no encryption"))
                    .then(|| super::tls::plain_refused(tenant))
                    .flatten()
            })
        })
        .flatten();
    if let Some((reason, fix)) = tls_problem {
        return SourceError::Tls {
            tenant: tenant.id.clone(),
            target: tenant.pg.to_string(),
            reason,
            fix,
        };
    }
    let hint = if text.contains("does not exist") && text.contains("slot") {
        format!(
            "create the slot with `walcast setup` (slot {})",
            tenant.slot
        )
    } else if text.contains("publication") && text.contains("does not exist") {
        format!(
            "create the publication with `walcast setup` (publication {})",
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
        "set wal_level = logical (ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL)"
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
        // A logical walsender is matched by the database name like any
        // connection, not by the `replication` keyword (PostgreSQL docs,
        // pg_hba.conf: "replication" ... physical replication connections).
        format!(
            "allow this host in pg_hba.conf with a `host {} {} <address> scram-sha-256` line (logical replication matches the database name, not `replication`)",
            tenant.pg.dbname, tenant.pg.user
        )
    } else if what == "connect"
        && matches!(
            source,
            PgWireError::Protocol(_) | PgWireError::MessageTooLarge { .. }
        )
    {
        // Garbage where the startup answer should be: an HTTP or Redis reply
        // read as a message tag and length.
        format!(
            "{} is not a PostgreSQL server (it answered with something else); check the port in the tenant's url",
            tenant.pg
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantConfig {
        let text = "[[tenants]]\nid = \"acme\"\nurl = \"postgres://walcast@127.0.0.1:6379/platform\"\ntables = [\"tasks\"]\n";
        crate::config::parse(std::path::Path::new("walcast.toml"), text, &|_| None)
            .expect("valid config")
            .tenants
            .remove(0)
    }

    #[test]
    fn garbage_on_connect_says_the_port_is_not_postgres() {
        let tenant = tenant();
        for source in [
            PgWireError::Protocol("unexpected message type 'H'".into()),
            PgWireError::MessageTooLarge {
                payload_bytes: 1_414_811_695,
                limit_bytes: 1 << 30,
            },
        ] {
            let text = crate::report::error_chain(&replication_error(&tenant, "connect", source));
            assert!(
                text.contains("127.0.0.1:6379")
                    && text.contains("is not a PostgreSQL server")
                    && text.contains("check the port in the tenant's url"),
                "{text}"
            );
        }
        // Mid-stream, a protocol error is not about the port.
        let text = crate::report::error_chain(&replication_error(
            &tenant,
            "stream",
            PgWireError::Protocol("empty CopyData payload".into()),
        ));
        assert!(!text.contains("not a PostgreSQL server"), "{text}");
    }

    #[test]
    fn pg_hba_hint_names_the_database_not_replication() {
        let text = crate::report::error_chain(&replication_error(
            &tenant(),
            "connect",
            PgWireError::Server("no pg_hba.conf entry for replication connection from host \"10.0.0.5\", user \"walcast\", no encryption (SQLSTATE 28000)".into()),
        ));
        assert!(
            text.contains("`host platform walcast <address> scram-sha-256`"),
            "{text}"
        );
    }
}
