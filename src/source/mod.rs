//! The tenant's Postgres: the regular connection for setup, checks and catalog
//! look-ups, and the replication session that carries the pgoutput stream.
//!
//! Owns connecting, slot and publication management, `walcast check`, and
//! confirming LSNs. Does not decode rows, and knows nothing of sinks.

mod check;
mod replication;
mod setup;

pub use check::{check_tenant, CheckItem, CheckLevel, CheckReport};
pub use replication::{ReplicationSession, SlotKind};
pub use setup::{
    connect, ensure_publication, ensure_slot, quote_ident, quote_table, setup_sql, SetupAction,
};

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
    /// changing configuration, grants or the server.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Connect { source, .. } | SourceError::Query { source, .. } => {
                // A server error (wrong password, missing privilege) needs a
                // fix; a closed or refused connection may heal.
                source.as_db_error().is_none()
            }
            SourceError::Setup { .. } => false,
            SourceError::Replication { source, .. } => {
                !matches!(
                    source,
                    pgwire_replication::PgWireError::Auth(_)
                        | pgwire_replication::PgWireError::Tls(_)
                ) && !source.to_string().contains("42501")
            }
        }
    }
}
