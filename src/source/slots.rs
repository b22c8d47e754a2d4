//! The state of a tenant's replication slots: activity, lag, retained WAL and
//! invalidation (`wal_status = 'lost'` after `max_slot_wal_keep_size`).

use tokio_postgres::Client;

use super::SourceError;
use crate::config::TenantConfig;
use crate::model::Lsn;

/// One slot of a tenant (its own, and temporary ones of `walcast tail`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub name: String,
    pub temporary: bool,
    pub active: bool,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL 13+).
    pub wal_status: Option<String>,
    /// WAL written since the slot's confirmed position, in bytes.
    pub lag_bytes: Option<i64>,
    /// WAL the slot keeps the server from removing, in bytes.
    pub retained_bytes: Option<i64>,
}

impl SlotInfo {
    /// The server removed WAL this slot still needed: changes were lost.
    pub fn is_lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }
}

/// The tenant's slots: its own and those `walcast tail --temporary-slot` made.
pub async fn slot_infos(
    client: &Client,
    tenant: &TenantConfig,
) -> Result<Vec<SlotInfo>, SourceError> {
    let rows = client
        .query(
            "select slot_name::text, temporary, active, wal_status, \
             (pg_current_wal_lsn() - confirmed_flush_lsn)::int8, \
             (pg_current_wal_lsn() - restart_lsn)::int8 \
             from pg_replication_slots \
             where slot_name = $1 or slot_name like $2 order by slot_name",
            &[&tenant.slot, &format!("{}\\_tail\\_%", tenant.slot)],
        )
        .await
        .map_err(|source| SourceError::Query {
            tenant: tenant.id.clone(),
            what: "reading pg_replication_slots".into(),
            source,
        })?;
    Ok(rows
        .iter()
        .map(|r| SlotInfo {
            name: r.get(0),
            temporary: r.get(1),
            active: r.get(2),
            wal_status: r.get(3),
            lag_bytes: r.get(4),
            retained_bytes: r.get(5),
        })
        .collect())
}

/// The slot's `confirmed_flush_lsn`: where a stream that asks for an
/// earlier position (or `0/0`) starts. `None` when there is no such slot.
pub async fn confirmed_flush_lsn(
    client: &Client,
    tenant: &TenantConfig,
    slot: &str,
) -> Result<Option<Lsn>, SourceError> {
    let query_error = |source| SourceError::Query {
        tenant: tenant.id.clone(),
        what: "reading the slot's confirmed_flush_lsn".into(),
        source,
    };
    let row = client
        .query_opt(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(query_error)?;
    let text: Option<String> = row.and_then(|r| r.get(0));
    Ok(text.and_then(|t| t.parse().ok()))
}

/// The error for a tenant whose slot was invalidated.
pub fn lost_slot_error(tenant: &TenantConfig, with_redis: bool) -> SourceError {
    let fix = if with_redis {
        format!(
            "run `walcast resync --tenant {}` to take a new snapshot and stream on from now",
            tenant.id
        )
    } else {
        format!(
            "run `walcast slots --tenant {} --drop --yes`, then start walcast again: it streams from now on",
            tenant.id
        )
    };
    SourceError::Setup {
        tenant: tenant.id.clone(),
        problem: format!(
            "slot {} was invalidated: the server removed WAL it still needed (max_slot_wal_keep_size), so changes since walcast last confirmed are lost",
            tenant.slot
        ),
        fix,
    }
}

/// `1.5 GiB`-style sizes for the `slots` report.
pub fn human_bytes(bytes: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(2048), "2.0 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }
}
