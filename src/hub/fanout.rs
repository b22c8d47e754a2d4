//! The live half of delivery: sinks publish a tenant's events here once they
//! are durable (the Redis script succeeded, or the in-memory ring committed
//! them), and each event goes, as the bytes it was encoded to once, into the
//! bounded queue of every subscriber whose subscription matches. The bound
//! counts events not yet read; a publication (a transaction, or 500 events of
//! a large one) into an empty queue is always taken, so that a burst from one
//! large transaction does not count as a slow client.
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

/// What a live subscriber receives.
#[derive(Debug, Clone)]
pub enum Live {
    /// The matching events of one publication (a transaction, or a chunk
    /// of up to 500 events of a large one), in order.
    Events(Vec<(EventId, Bytes)>),
    /// The stream restarted after Redis lost the tenant's data: events
    /// before `complete_from` may be missing.
    Reset { complete_from: EventId },
}

/// One tenant's subscribers.
pub struct Fanout {
    tenant: Arc<str>,
    queue: usize,
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
    /// What is already queued, without waiting (None: nothing now, or the
    /// end, which `recv` reports).
    pub fn try_recv(&mut self) -> Option<Live> {
        let live = self.rx.try_recv().ok()?;
        Some(self.taken(live))
    }

    fn taken(&self, live: Live) -> Live {
        if let Live::Events(events) = &live {
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
    pub fn new(tenant: Arc<str>, queue: usize) -> Arc<Fanout> {
        Arc::new(Fanout {
            tenant,
            queue: queue.max(1),
            registry: Mutex::new(Registry::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a subscriber; events published from now on reach it.
    pub fn subscribe(self: &Arc<Self>, subscription: Arc<Subscription>) -> LiveReceiver {
        let (tx, rx) = mpsc::channel(self.queue);
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
        let mut lagged: Vec<u64> = Vec::new();
        let (mut delivered, mut dropped) = (0u64, 0u64);
        // Each subscriber's matching events of this publication.
        let mut batches: HashMap<u64, (Slot, Vec<(EventId, Bytes)>)> = HashMap::new();
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
            for slot in slots {
                if slot.subscription.matches(event) {
                    batches
                        .entry(slot.id)
                        .or_insert_with(|| (slot.clone(), Vec::new()))
                        .1
                        .push((event.id, event.encoded().clone()));
                }
            }
        }
        for (id, (slot, batch)) in batches {
            let n = batch.len();
            // A publication into an empty queue is taken whatever its size (a
            // large transaction is not a slow client); on top of events not
            // yet read, it must fit the bound.
            let queued = slot.shared.queued.load(Ordering::Acquire);
            let fits = queued == 0 || queued + n <= self.queue;
            let sent = if fits {
                slot.shared.queued.fetch_add(n, Ordering::AcqRel);
                let sent = slot.tx.try_send(Live::Events(batch));
                if sent.is_err() {
                    slot.shared.queued.fetch_sub(n, Ordering::AcqRel);
                }
                sent
            } else {
                Err(mpsc::error::TrySendError::Full(Live::Events(batch)))
            };
            let n = n as u64;
            match sent {
                Ok(()) => delivered += n,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    slot.shared.lagged.store(true, Ordering::Release);
                    dropped += n;
                    lagged.push(id);
                }
                // The receiver is being dropped; it unregisters itself.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        if !lagged.is_empty() {
            remove_from(&mut registry, &lagged);
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
            metrics::counter!(crate::metrics::DELIVERY_SLOW_DISCONNECTS, tenant => self.tenant.to_string())
                .increment(lagged.len() as u64);
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
