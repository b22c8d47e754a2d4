//! The tenant's Postgres: the regular connection for setup, checks and catalog
//! look-ups (`catalog`: the shape of non-built-in column types), and the replication session that carries the pgoutput stream.
//!
//! Owns connecting, slot and publication management, `walcast check`, and
//! confirming LSNs. Does not decode rows, and knows nothing of sinks.

mod catalog;
mod check;
mod replication;
mod setup;
mod slots;
mod tls;

pub use catalog::{load_types, mirror_keys};
pub use check::{check_tenant, CheckItem, CheckLevel, CheckReport};
pub use replication::{ExportedSnapshot, PendingSession, ReplicationSession, SlotKind};
pub use setup::{
    connect, drop_slot, ensure_publication, ensure_slot, quote_ident, quote_table, setup_sql,
    slot_state, SetupAction,
};
pub use slots::{confirmed_flush_lsn, human_bytes, lost_slot_error, slot_infos, SlotInfo};

use crate::config::TenantId;

/// What went wrong talking to a tenant's Postgres, with the fix where we know it.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("tenant {tenant}: could not connect to {target} (check that the server is running and that host, port, user, password and database in its url are right)")]
    Connect {
        tenant: TenantId,
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// Something answered at the url's host and port, but not in the
    /// PostgreSQL protocol (a Redis or HTTP server on that port, say).
    #[error("tenant {tenant}: {target} is not a PostgreSQL server (it answered with something else); check the port in the tenant's url")]
    NotPostgres {
        tenant: TenantId,
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("tenant {tenant}: no answer from {target} within {} s while {what} (check that host and port are the Postgres server's and that no firewall drops the traffic; on a slow network raise connect_timeout in the url, like ?connect_timeout=30)", after.as_secs())]
    Timeout {
        tenant: TenantId,
        target: String,
        what: &'static str,
        after: std::time::Duration,
    },
    #[error("tenant {tenant}: TLS to {target} failed: {reason}; {fix}")]
    Tls {
        tenant: TenantId,
        target: String,
        reason: String,
        fix: String,
    },
    #[error("tenant {tenant}: {what} failed")]
    Query {
        tenant: TenantId,
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("tenant {tenant}: {problem}; {fix}")]
    Setup {
        tenant: TenantId,
        problem: String,
        fix: String,
    },
    #[error("tenant {tenant}: replication {what} failed{hint}")]
    Replication {
        tenant: TenantId,
        what: &'static str,
        hint: String,
        #[source]
        source: pgwire_replication::PgWireError,
    },
}

impl SourceError {
    /// Whether retrying the same thing later can succeed without anybody
    /// changing configuration, grants or the server: network failures, and
    /// server errors of the SQLSTATE classes that describe a passing state
    /// (the server starting up or shutting down, too many connections, the
    /// slot held by another session).
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Connect { source, .. } | SourceError::Query { source, .. } => {
                match source.code() {
                    Some(code) => transient_sqlstate(code.code()),
                    None => true,
                }
            }
            SourceError::Setup { .. } | SourceError::NotPostgres { .. } => false,
            SourceError::Timeout { .. } => true,
            SourceError::Tls { .. } => false,
            SourceError::Replication { source, .. } => match source {
                pgwire_replication::PgWireError::Auth(_)
                | pgwire_replication::PgWireError::Tls(_) => false,
                pgwire_replication::PgWireError::Server(text) => text
                    .rsplit_once("SQLSTATE ")
                    .map(|(_, code)| transient_sqlstate(code.trim_end_matches(')')))
                    .unwrap_or(true),
                _ => true,
            },
        }
    }
}

/// SQLSTATEs that say "try again later": the classes 08 connection
/// exception, 40 transaction rollback, 53 insufficient resources, 57
/// operator intervention (shutdown, starting up) and 58 system error, and of
/// class 55 only 55006 object in use (a slot held by another session) and
/// 55P03 lock not available. The rest of class 55, "object not in
/// prerequisite state" (55000: `wal_level` is not `logical`), needs a human.
fn transient_sqlstate(code: &str) -> bool {
    ["08", "40", "53", "57", "58"]
        .iter()
        .any(|class| code.starts_with(class))
        || code == "55006"
        || code == "55P03"
}

#[cfg(test)]
mod tests {
    use super::transient_sqlstate;

    #[test]
    fn sqlstate_classes() {
        assert!(transient_sqlstate("57P03")); // the database system is starting up
        assert!(transient_sqlstate("55006")); // replication slot is active
        assert!(transient_sqlstate("53300")); // too many connections
        assert!(!transient_sqlstate("55000")); // logical decoding requires wal_level >= logical
        assert!(!transient_sqlstate("28P01")); // wrong password
        assert!(!transient_sqlstate("42501")); // insufficient privilege
        assert!(!transient_sqlstate("42704")); // slot does not exist
    }
}
