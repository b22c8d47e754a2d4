//! The live half of delivery: the hub's task publishes a tenant's events
//! here once they are durable (the Redis write succeeded, or the in-memory
//! ring committed them), and each event goes, as the bytes it was encoded to
//! once, into the bounded queue of every subscriber whose subscription
//! matches.
//!
//! A queue is bounded in events (`[server] subscriber_queue`) and in bytes
//! (`subscriber_queue_bytes`); a publication (up to `PUBLISH_CHUNK` events of
//! a transaction) into an empty queue is always taken, so that a burst from
//! one large transaction does not count as a slow client. All queues
//! together are bounded by one `DeliveryBudget` (`delivery_buffer_bytes`),
//! which counts each queued event's bytes once however many queues hold it,
//! for as long as any does: past it, only subscribers with nothing queued
//! take more.
//!
//! Subscribers are indexed by table, so an event costs nothing for the
//! subscribers of other tables. Publishing never waits: a subscriber whose
//! queue is full is marked lagged and dropped from the index; it reads what
//! its queue still holds, then learns it lagged (and its client is told the
//! id to resume from).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::subscription::Subscription;
use crate::model::{ChangeEvent, EventId, TableName};

/// Events published at once: the hub's task yields between publications,
/// so one tenant's large transaction does not hold a worker thread, and
/// subscribing never waits long for the registry.
pub const PUBLISH_CHUNK: usize = 64;

/// The bounds of one subscriber's queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub events: usize,
    pub bytes: usize,
}

/// The bytes of events queued for all subscribers of all tenants, against
/// `[server] delivery_buffer_bytes`.
#[derive(Debug)]
pub struct DeliveryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl DeliveryBudget {
    pub fn new(limit: usize) -> Arc<DeliveryBudget> {
        Arc::new(DeliveryBudget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes queued now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn exceeded(&self) -> bool {
        self.used() > self.limit
    }
}

/// One published event's bytes, counted against the budget until the last
/// queue that holds it lets go.
#[derive(Debug)]
pub struct Queued {
    bytes: Bytes,
    budget: Arc<DeliveryBudget>,
}

impl Queued {
    fn new(bytes: Bytes, budget: &Arc<DeliveryBudget>) -> Arc<Queued> {
        budget.used.fetch_add(bytes.len(), Ordering::AcqRel);
        Arc::new(Queued {
            bytes,
            budget: Arc::clone(budget),
        })
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.budget
            .used
            .fetch_sub(self.bytes.len(), Ordering::AcqRel);
    }
}

/// What one queue entry costs besides the event's bytes (its id, the shared
/// pointer, its part of the channel): counted against both bounds.
pub const ENTRY_BYTES: usize = 48;

/// The matching events of one publication for one subscriber, in order;
/// their entries are counted against the budget until dropped.
#[derive(Debug)]
pub struct QueuedEvents {
    events: Vec<(EventId, Arc<Queued>)>,
    counted: usize,
    budget: Arc<DeliveryBudget>,
}

impl QueuedEvents {
    fn new(events: Vec<(EventId, Arc<Queued>)>, budget: &Arc<DeliveryBudget>) -> QueuedEvents {
        let counted = events.len() * ENTRY_BYTES;
        budget.used.fetch_add(counted, Ordering::AcqRel);
        QueuedEvents {
            events,
            counted,
            budget: Arc::clone(budget),
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The bytes this publication counts against a subscriber's queue.
    fn bytes(&self) -> usize {
        self.events
            .iter()
            .map(|(_, q)| q.bytes.len() + ENTRY_BYTES)
            .sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = &(EventId, Arc<Queued>)> {
        self.events.iter()
    }
}

impl Drop for QueuedEvents {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.counted, Ordering::AcqRel);
    }
}

/// What a live subscriber receives.
#[derive(Debug)]
pub enum Live {
    /// The matching events of one publication, in order.
    Events(QueuedEvents),
    /// The stream restarted after Redis lost the tenant's data: events
    /// before `complete_from` may be missing.
    Reset { complete_from: EventId },
}

/// One tenant's subscribers.
pub struct Fanout {
    tenant: Arc<str>,
    limits: QueueLimits,
    budget: Arc<DeliveryBudget>,
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    /// The tenant stopped: no more events, new subscribers end at once.
    closed: bool,
    by_table: HashMap<TableName, Vec<Slot>>,
    messages: Vec<Slot>,
    last_published: Option<EventId>,
    next_id: u64,
    count: usize,
}

/// One subscriber's matching events of the publication being made.
struct Pending {
    slot: Slot,
    events: Vec<(EventId, Arc<Queued>)>,
    bytes: usize,
}

struct Slot {
    id: u64,
    subscription: Arc<Subscription>,
    tx: mpsc::Sender<Live>,
    shared: Arc<Shared>,
}

impl Clone for Slot {
    fn clone(&self) -> Self {
        Slot {
            id: self.id,
            subscription: Arc::clone(&self.subscription),
            tx: self.tx.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

#[derive(Default)]
struct Shared {
    lagged: AtomicBool,
    /// Events handed over and not yet taken by the receiver.
    queued: AtomicUsize,
    /// Their bytes.
    queued_bytes: AtomicUsize,
    /// Set when the subscriber was cut off because events did not reach
    /// the hub: it resumes after this id (just before the first of them)
    /// if it has no later position of its own.
    resume_after: std::sync::OnceLock<EventId>,
}

/// The receiving end of one subscription; unsubscribes when dropped.
pub struct LiveReceiver {
    rx: mpsc::Receiver<Live>,
    id: u64,
    shared: Arc<Shared>,
    fanout: Arc<Fanout>,
}

/// Why a live receiver ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveEnd {
    /// Its queue overflowed: the client is too slow.
    Lagged,
    /// The tenant stopped (removed or reconfigured).
    Closed,
}

impl LiveReceiver {
    /// The next event, or why there are no more.
    pub async fn recv(&mut self) -> Result<Live, LiveEnd> {
        match self.rx.recv().await {
            Some(live) => Ok(self.taken(live)),
            None if self.shared.lagged.load(Ordering::Acquire) => Err(LiveEnd::Lagged),
            None => Err(LiveEnd::Closed),
        }
    }
}

impl LiveReceiver {
    /// Where a subscriber cut off by `Fanout::cut_all` resumes if it has no
    /// position of its own.
    pub fn resume_after(&self) -> Option<EventId> {
        self.shared.resume_after.get().copied()
    }

    /// What is already queued, without waiting (None: nothing now, or the
    /// end, which `recv` reports).
    pub fn try_recv(&mut self) -> Option<Live> {
        let live = self.rx.try_recv().ok()?;
        Some(self.taken(live))
    }

    /// Matches this subscriber's later events with `subscription`.
    pub fn set_subscription(&self, subscription: &Arc<Subscription>) {
        self.fanout.replace(self.id, subscription);
    }

    fn taken(&self, live: Live) -> Live {
        if let Live::Events(events) = &live {
            self.shared
                .queued_bytes
                .fetch_sub(events.bytes(), Ordering::AcqRel);
            self.shared.queued.fetch_sub(events.len(), Ordering::AcqRel);
        }
        live
    }
}

impl Drop for LiveReceiver {
    fn drop(&mut self) {
        self.fanout.remove(self.id);
    }
}

impl Fanout {
    pub fn new(tenant: Arc<str>, limits: QueueLimits, budget: Arc<DeliveryBudget>) -> Arc<Fanout> {
        Arc::new(Fanout {
            tenant,
            limits: QueueLimits {
                events: limits.events.max(1),
                bytes: limits.bytes.max(1),
            },
            budget,
            registry: Mutex::new(Registry::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a subscriber; events published from now on reach it.
    pub fn subscribe(self: &Arc<Self>, subscription: Arc<Subscription>) -> LiveReceiver {
        // The bound in events is kept by `Shared::queued`; the channel only
        // needs room for publications, each at least one event.
        let (tx, rx) = mpsc::channel(self.limits.events);
        let shared = Arc::new(Shared::default());
        let mut registry = self.lock();
        registry.next_id += 1;
        let id = registry.next_id;
        if registry.closed {
            // Its sender goes now: the receiver ends at once.
            return LiveReceiver {
                rx,
                id,
                shared,
                fanout: Arc::clone(self),
            };
        }
        let slot = Slot {
            id,
            subscription: Arc::clone(&subscription),
            tx,
            shared: Arc::clone(&shared),
        };
        for table in subscription.tables() {
            registry
                .by_table
                .entry(table.clone())
                .or_default()
                .push(slot.clone());
        }
        if subscription.wants_messages() {
            registry.messages.push(slot);
        }
        registry.count += 1;
        LiveReceiver {
            rx,
            id,
            shared,
            fanout: Arc::clone(self),
        }
    }

    /// Matches subscriber `id`'s events with `subscription` from the next
    /// publication on (a refreshed token's claims). It stays registered for
    /// the tables it was registered for: the caller keeps those the same.
    fn replace(&self, id: u64, subscription: &Arc<Subscription>) {
        let mut registry = self.lock();
        let Registry {
            by_table, messages, ..
        } = &mut *registry;
        for slot in by_table.values_mut().flatten().chain(messages.iter_mut()) {
            if slot.id == id {
                slot.subscription = Arc::clone(subscription);
            }
        }
    }

    /// How many subscribers are registered.
    pub fn subscribers(&self) -> usize {
        self.lock().count
    }

    /// The newest event published.
    pub fn last_published(&self) -> Option<EventId> {
        self.lock().last_published
    }

    fn remove(&self, id: u64) {
        let mut registry = self.lock();
        remove_from(&mut registry, &[id]);
    }

    /// Hands durable events to the subscribers they match, in order. An
    /// event at or below the last one published (a replay after a
    /// reconnect) is skipped.
    pub fn publish<'a>(&self, events: impl IntoIterator<Item = &'a ChangeEvent>) {
        let mut registry = self.lock();
        let (mut delivered, mut dropped) = (0u64, 0u64);
        // Each subscriber's matching events of this publication.
        let mut batches: HashMap<u64, Pending> = HashMap::new();
        for event in events {
            if registry.last_published.is_some_and(|last| event.id <= last) {
                continue;
            }
            registry.last_published = Some(event.id);
            let slots = match event.table() {
                Some(table) => match registry.by_table.get(table) {
                    Some(slots) => slots,
                    None => continue,
                },
                None => &registry.messages,
            };
            let mut queued: Option<Arc<Queued>> = None;
            for slot in slots {
                if slot.subscription.matches(event) {
                    let queued = queued
                        .get_or_insert_with(|| Queued::new(event.encoded().clone(), &self.budget));
                    let pending = batches.entry(slot.id).or_insert_with(|| Pending {
                        slot: slot.clone(),
                        events: Vec::new(),
                        bytes: 0,
                    });
                    pending.events.push((event.id, Arc::clone(queued)));
                    pending.bytes += event.encoded().len() + ENTRY_BYTES;
                }
            }
        }
        let mut lagged: Vec<(u64, &'static str)> = Vec::new();
        for (
            id,
            Pending {
                slot,
                events: batch,
                bytes,
            },
        ) in batches
        {
            let n = batch.len();
            // A publication into an empty queue is taken whatever its size (a
            // large transaction is not a slow client); on top of events not
            // yet read, it must fit the queue's bounds and the budget.
            let queued = slot.shared.queued.load(Ordering::Acquire);
            let queued_bytes = slot.shared.queued_bytes.load(Ordering::Acquire);
            let refused = if queued == 0 {
                None
            } else if queued + n > self.limits.events {
                Some("queue_events")
            } else if queued_bytes + bytes > self.limits.bytes {
                Some("queue_bytes")
            } else if self.budget.exceeded() {
                Some("delivery_buffer")
            } else {
                None
            };
            let sent = match refused {
                Some(reason) => Err(reason),
                None => {
                    slot.shared.queued.fetch_add(n, Ordering::AcqRel);
                    slot.shared.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
                    let batch = QueuedEvents::new(batch, &self.budget);
                    match slot.tx.try_send(Live::Events(batch)) {
                        Ok(()) => Ok(()),
                        Err(err) => {
                            slot.shared.queued.fetch_sub(n, Ordering::AcqRel);
                            slot.shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                            match err {
                                mpsc::error::TrySendError::Full(_) => Err("queue_events"),
                                // The receiver is being dropped; it
                                // unregisters itself.
                                mpsc::error::TrySendError::Closed(_) => Ok(()),
                            }
                        }
                    }
                }
            };
            match sent {
                Ok(()) => delivered += n as u64,
                Err(reason) => {
                    slot.shared.lagged.store(true, Ordering::Release);
                    dropped += n as u64;
                    lagged.push((id, reason));
                }
            }
        }
        if !lagged.is_empty() {
            let ids: Vec<u64> = lagged.iter().map(|(id, _)| *id).collect();
            remove_from(&mut registry, &ids);
        }
        drop(registry);
        let tenant = crate::metrics::TENANT;
        if delivered > 0 {
            metrics::counter!(crate::metrics::DELIVERY_EVENTS, tenant => self.tenant.to_string())
                .increment(delivered);
        }
        if dropped > 0 {
            metrics::counter!(crate::metrics::DELIVERY_DROPPED, tenant => self.tenant.to_string())
                .increment(dropped);
            for (_, reason) in &lagged {
                metrics::counter!(crate::metrics::DELIVERY_SLOW_DISCONNECTS, tenant => self.tenant.to_string(), crate::metrics::REASON => *reason)
                    .increment(1);
            }
        }
    }

    /// Cuts every subscriber off, as if each lagged: each reads what its
    /// queue holds, then its client is told the id to resume from (the hub
    /// fell behind its feed and events from `from` on did not reach it;
    /// they are in the history). Events up to `up_to` count as published.
    pub fn cut_all(&self, from: Option<EventId>, up_to: Option<EventId>) {
        let mut registry = self.lock();
        for slot in registry
            .by_table
            .values()
            .flatten()
            .chain(registry.messages.iter())
        {
            if let Some(from) = from {
                let _ = slot.shared.resume_after.set(from.just_before());
            }
            slot.shared.lagged.store(true, Ordering::Release);
        }
        let cut = registry.count as u64;
        registry.by_table.clear();
        registry.messages.clear();
        registry.count = 0;
        registry.last_published = registry.last_published.max(up_to);
        drop(registry);
        if cut > 0 {
            metrics::counter!(crate::metrics::DELIVERY_SLOW_DISCONNECTS, crate::metrics::TENANT => self.tenant.to_string(), crate::metrics::REASON => "hub_behind")
                .increment(cut);
        }
    }

    /// The tenant stopped: every subscriber's feed ends (after what its
    /// queue holds), and so does every later one.
    pub fn close(&self) {
        let mut registry = self.lock();
        registry.closed = true;
        registry.by_table.clear();
        registry.messages.clear();
        registry.count = 0;
    }

    /// Tells every subscriber that the stream restarted at `complete_from`
    /// (Redis lost the tenant's data and it was snapshotted again).
    pub fn reset(&self, complete_from: EventId) {
        let mut registry = self.lock();
        let mut lagged = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for slot in registry
            .by_table
            .values()
            .flatten()
            .chain(registry.messages.iter())
        {
            if seen.insert(slot.id) && slot.tx.try_send(Live::Reset { complete_from }).is_err() {
                slot.shared.lagged.store(true, Ordering::Release);
                lagged.push(slot.id);
            }
        }
        remove_from(&mut registry, &lagged);
    }
}

fn remove_from(registry: &mut Registry, ids: &[u64]) {
    let before: std::collections::HashSet<u64> = registry
        .by_table
        .values()
        .flatten()
        .chain(registry.messages.iter())
        .map(|s| s.id)
        .filter(|id| ids.contains(id))
        .collect();
    if before.is_empty() {
        return;
    }
    for slots in registry.by_table.values_mut() {
        slots.retain(|s| !ids.contains(&s.id));
    }
    registry.by_table.retain(|_, slots| !slots.is_empty());
    registry.messages.retain(|s| !ids.contains(&s.id));
    registry.count = registry.count.saturating_sub(before.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Authenticator;
    use crate::hub::SubscriptionRequest;
    use crate::model::{ChangeBody, Datum, Lsn, Op, RowImage};

    fn table() -> TableName {
        TableName::new("public", "tasks")
    }

    fn subscription() -> Arc<Subscription> {
        let principal = Authenticator::anonymous_reader("acme");
        Arc::new(
            Subscription::build(
                &SubscriptionRequest::default(),
                &principal,
                &[table()],
                None,
            )
            .unwrap(),
        )
    }

    fn event(lsn: u64, body_bytes: usize) -> ChangeEvent {
        ChangeEvent::new(
            EventId {
                commit_lsn: Lsn(lsn),
                index: 0,
            },
            "acme".into(),
            None,
            None,
            Op::Insert,
            ChangeBody::Row {
                table: table(),
                key: None,
                new: Some(RowImage(vec![(
                    "body".into(),
                    Datum::Text("x".repeat(body_bytes)),
                )])),
                old: None,
                unchanged: Vec::new(),
            },
        )
    }

    #[test]
    fn queued_bytes_are_counted_once_and_given_back() {
        let budget = DeliveryBudget::new(1 << 30);
        let fanout = Fanout::new(
            "acme".into(),
            QueueLimits {
                events: 100,
                bytes: 1 << 20,
            },
            Arc::clone(&budget),
        );
        let mut a = fanout.subscribe(subscription());
        let b = fanout.subscribe(subscription());
        let big = event(10, 10_000);
        fanout.publish([&big]);
        // One copy of the bytes for both queues, and an entry each.
        let used = budget.used();
        assert_eq!(used, big.encoded().len() + 2 * ENTRY_BYTES);
        // Read by one, dropped unread by the other: nothing is left counted.
        assert!(matches!(a.try_recv(), Some(Live::Events(e)) if e.len() == 1));
        assert_eq!(budget.used(), big.encoded().len() + ENTRY_BYTES);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_queue_over_its_bytes_or_the_budget_is_cut_off() {
        let budget = DeliveryBudget::new(1 << 30);
        let fanout = Fanout::new(
            "acme".into(),
            QueueLimits {
                events: 100,
                bytes: 25_000,
            },
            Arc::clone(&budget),
        );
        let mut slow = fanout.subscribe(subscription());
        // Into an empty queue: taken whatever its size.
        fanout.publish([&event(10, 30_000)]);
        assert_eq!(fanout.subscribers(), 1);
        // On top of it, over the bytes: cut off.
        fanout.publish([&event(11, 100)]);
        assert_eq!(fanout.subscribers(), 0);
        assert!(matches!(slow.try_recv(), Some(Live::Events(_))));
        assert!(slow.try_recv().is_none());

        // The budget: past it, only empty queues take more.
        let small = DeliveryBudget::new(20_000);
        let fanout = Fanout::new(
            "acme".into(),
            QueueLimits {
                events: 100,
                bytes: 1 << 20,
            },
            Arc::clone(&small),
        );
        let _behind = fanout.subscribe(subscription());
        fanout.publish([&event(10, 30_000)]);
        let mut keeping_up = fanout.subscribe(subscription());
        fanout.publish([&event(11, 100)]);
        assert_eq!(
            fanout.subscribers(),
            1,
            "the one with a queue over the budget went"
        );
        assert!(keeping_up.try_recv().is_some());
    }
}
