//! Delivery to subscribers, independent of the transport: per tenant, the
//! live fanout (fed by the sinks once events are durable), the kept history
//! (Redis stream or in-memory ring) to resume from, the tables' column
//! kinds for typed filters, and the mirror read behind `/state`.
//!
//! - `subscription`: what a client asked for and may see; matching.
//! - `fanout`: live events → bounded per-subscriber queues, indexed by table.
//! - `history`: kept events after an id, and gaps.
//! - `feed`: history then live, without gap or duplicate at the seam.
//! - `state`: the mirror's hot rows with the stream position they match.
//! - `schema`: column kinds from the catalog.
//!
//! The HTTP transports (`http::sse`, `http::ws`) turn feeds into frames.
//! Feeding the hub goes through `Fanout::publish`, so that another feed (an
//! instance that does not hold the slot, reading the Redis stream) can be
//! added without touching the transports.

pub mod fanout;
pub mod feed;
pub mod history;
pub mod schema;
pub mod state;
pub mod subscription;

pub use fanout::Fanout;
pub use feed::{Feed, FeedEnd, FeedItem, GapReason};
pub use history::History;
pub use schema::Schema;
pub use subscription::{RequestError, Subscription, SubscriptionRequest};

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::config::{MirrorRule, TenantConfig, TenantId};
use crate::model::TableName;

/// One tenant's delivery state.
pub struct TenantHub {
    pub tenant: TenantId,
    /// The tables the tenant streams (its configuration's `tables`).
    pub tables: Vec<TableName>,
    pub fanout: Arc<Fanout>,
    pub history: History,
    /// Mirror rules by table (empty without Redis): what `/state` can read.
    pub mirror: Vec<MirrorRule>,
    schema: RwLock<Option<Arc<Schema>>>,
}

impl std::fmt::Debug for TenantHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantHub")
            .field("tenant", &self.tenant)
            .field("subscribers", &self.fanout.subscribers())
            .finish_non_exhaustive()
    }
}

impl TenantHub {
    pub fn new(
        tenant: &TenantConfig,
        history: History,
        mirror: Vec<MirrorRule>,
        queue: usize,
    ) -> Arc<TenantHub> {
        Arc::new(TenantHub {
            tenant: tenant.id.clone(),
            tables: tenant.tables.clone(),
            fanout: Fanout::new(tenant.id.as_arc(), queue),
            history,
            mirror,
            schema: RwLock::new(None),
        })
    }

    /// The columns as last read from the catalog (None until the tenant's
    /// first session connected).
    pub fn schema(&self) -> Option<Arc<Schema>> {
        self.schema
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the known schema has `table` with exactly these columns.
    pub fn knows_columns<'a>(
        &self,
        table: &TableName,
        names: impl Iterator<Item = &'a str>,
    ) -> bool {
        let schema = self.schema();
        let known = schema.as_ref().and_then(|s| s.columns(table));
        known.is_some_and(|c| c.names().into_iter().eq(names))
    }

    pub fn set_schema(&self, schema: Schema) {
        *self.schema.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(schema));
    }

    pub fn mirror_rule(&self, table: &TableName) -> Option<&MirrorRule> {
        self.mirror.iter().find(|r| &r.table == table)
    }
}

/// Every running tenant's hub, shared by the tenants' tasks and the HTTP
/// server.
#[derive(Default, Clone)]
pub struct Hubs(Arc<RwLock<BTreeMap<String, Arc<TenantHub>>>>);

impl Hubs {
    pub fn get(&self, tenant: &str) -> Option<Arc<TenantHub>> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .cloned()
    }

    /// Adds (or replaces: the old one's subscribers end) a tenant's hub.
    pub fn insert(&self, hub: Arc<TenantHub>) {
        let old = self
            .0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hub.tenant.to_string(), hub);
        if let Some(old) = old {
            old.fanout.close();
        }
    }

    /// Removes a tenant's hub; its subscribers' feeds end.
    pub fn remove(&self, tenant: &str) {
        let hub = self
            .0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tenant);
        if let Some(hub) = hub {
            hub.fanout.close();
        }
    }
}
