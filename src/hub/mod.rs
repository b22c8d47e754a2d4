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
//! The hub is fed by value: each tenant's hub task (`run_feed`) drains a
//! `model::HubFeed` that the sinks (durable events) and the pipeline (stream
//! restarts) send into, so that fan-out never runs on the task that writes
//! Redis, and another feed (an instance that does not hold the slot, reading
//! the Redis stream) can be added without touching the transports.

pub mod fanout;
pub mod feed;
pub mod history;
pub mod schema;
pub mod state;
pub mod subscription;

pub use fanout::{DeliveryBudget, Fanout, QueueLimits};
pub use feed::{Feed, FeedEnd, FeedItem, GapReason};
pub use history::History;
pub use schema::Schema;
pub use subscription::{MatchLimits, RequestError, Subscription, SubscriptionRequest};

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;

use crate::config::{MirrorRule, TenantConfig, TenantId};
use crate::model::{HubFeedReceiver, HubInput, TableName};

/// One tenant's delivery state.
pub struct TenantHub {
    pub tenant: TenantId,
    /// The tables the tenant streams (its configuration's `tables`).
    pub tables: Vec<TableName>,
    pub fanout: Arc<Fanout>,
    pub history: History,
    /// Mirror rules by table (empty without Redis): what `/state` can read.
    pub mirror: Vec<MirrorRule>,
    /// Turns for `/state` reads (`state::READS_PER_TENANT`).
    pub state_reads: tokio::sync::Semaphore,
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
        limits: QueueLimits,
        budget: Arc<DeliveryBudget>,
    ) -> Arc<TenantHub> {
        Arc::new(TenantHub {
            tenant: tenant.id.clone(),
            tables: tenant.tables.clone(),
            fanout: Fanout::new(tenant.id.as_arc(), limits, budget),
            history,
            mirror,
            state_reads: tokio::sync::Semaphore::new(state::READS_PER_TENANT),
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

/// The hub's task: hands what the feed brings to the subscribers, in order,
/// until the tenant stops (then what is queued still goes out) or every
/// sender is gone. A panic while matching (a bug) is contained: every
/// subscriber is cut off with its resume id and gets the events from the
/// history, and the task goes on.
pub async fn run_feed(hub: Arc<TenantHub>, mut feed: HubFeedReceiver, cancel: CancellationToken) {
    loop {
        let input = tokio::select! {
            biased;
            // Something to deliver.
            input = feed.recv() => match input {
                Some(input) => input,
                None => return,
            },
            // The tenant stopped: deliver what is queued, then end.
            _ = cancel.cancelled() => {
                while let Some(input) = feed.try_recv() {
                    deliver(&hub, input).await;
                }
                return;
            }
        };
        deliver(&hub, input).await;
    }
}

/// Hands one input of the feed to the subscribers.
async fn deliver(hub: &TenantHub, input: HubInput) {
    match input {
        HubInput::Events(events) => {
            let mut start = 0;
            while start < events.len() {
                let end = (start + fanout::PUBLISH_CHUNK).min(events.len());
                let chunk = (start..end).filter_map(|i| events.get(i));
                let published = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    crate::fault::inject("hub", hub.tenant.as_str());
                    hub.fanout.publish(chunk)
                }));
                if let Err(panic) = published {
                    let message = crate::report::panic_message(&*panic);
                    tracing::error!(tenant = %hub.tenant, panic = %message, "delivering events panicked; cutting this tenant's subscribers off (they resume from the history)");
                    metrics::counter!(crate::metrics::HUB_PANICS, crate::metrics::TENANT => hub.tenant.to_string()).increment(1);
                    let from = events.get(start).map(|e| e.id);
                    hub.fanout.cut_all(from, events.last_id());
                    return;
                }
                start = end;
                // Other tenants' hubs and connections get the thread.
                tokio::task::yield_now().await;
            }
        }
        HubInput::Reset { complete_from } => hub.fanout.reset(complete_from),
        HubInput::Lost { from, up_to } => {
            tracing::warn!(tenant = %hub.tenant, "delivery fell behind the stream; cutting this tenant's subscribers off (they resume from the history)");
            hub.fanout.cut_all(from, up_to);
        }
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
