//! What a tenant's delivery hub is fed, by value and in order: events once
//! they are durable (in Redis, or in the in-memory ring), and restarts of
//! the stream. The sinks and the pipeline send into a `HubFeed`; the hub's
//! task drains it. Sending never waits: when the hub falls so far behind
//! that the channel is full, what cannot be queued is dropped and the hub is
//! told, after the inputs queued before, that events up to some id were
//! lost here, so that it cuts every subscriber off with its resume id (the
//! events are durable: the clients get them from the history) instead of
//! leaving a silent hole.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::{ChangeEvent, EventId};

/// Events that are durable, in commit order.
#[derive(Debug, Clone)]
pub enum DurableEvents {
    /// A batch as the Redis sink wrote it.
    Batch(Arc<Vec<ChangeEvent>>),
    /// Events as the in-memory ring keeps them.
    Shared(Vec<Arc<ChangeEvent>>),
}

impl DurableEvents {
    pub fn len(&self) -> usize {
        match self {
            DurableEvents::Batch(events) => events.len(),
            DurableEvents::Shared(events) => events.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, index: usize) -> Option<&ChangeEvent> {
        match self {
            DurableEvents::Batch(events) => events.get(index),
            DurableEvents::Shared(events) => events.get(index).map(|e| &**e),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &ChangeEvent> {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    pub fn first_id(&self) -> Option<EventId> {
        self.get(0).map(|e| e.id)
    }

    pub fn last_id(&self) -> Option<EventId> {
        self.len()
            .checked_sub(1)
            .and_then(|i| self.get(i))
            .map(|e| e.id)
    }
}

/// One input of a tenant's hub.
#[derive(Debug, Clone)]
pub enum HubInput {
    /// Events that are durable now.
    Events(DurableEvents),
    /// The stream restarted at a new snapshot (Redis lost the tenant's
    /// data): events before `complete_from` may be missing.
    Reset { complete_from: EventId },
    /// The hub fell behind and inputs were dropped here: events from
    /// `from` up to `up_to` (when known) did not reach it.
    Lost {
        from: Option<EventId>,
        up_to: Option<EventId>,
    },
}

/// The sending side of a tenant's hub feed; cheap to clone.
#[derive(Debug, Clone)]
pub struct HubFeed {
    tx: mpsc::Sender<HubInput>,
    /// `Some` while inputs are being dropped.
    lost: Arc<Mutex<Option<Dropped>>>,
}

/// What a feed dropped: the oldest and the newest id.
#[derive(Debug, Clone, Copy, Default)]
struct Dropped {
    from: Option<EventId>,
    up_to: Option<EventId>,
}

/// The receiving side, drained by the hub's task.
#[derive(Debug)]
pub struct HubFeedReceiver {
    rx: mpsc::Receiver<HubInput>,
    lost: Arc<Mutex<Option<Dropped>>>,
}

impl HubFeed {
    /// A feed that queues up to `capacity` inputs.
    pub fn channel(capacity: usize) -> (HubFeed, HubFeedReceiver) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let lost = Arc::new(Mutex::new(None));
        (
            HubFeed {
                tx,
                lost: Arc::clone(&lost),
            },
            HubFeedReceiver { rx, lost },
        )
    }

    /// Queues `input` without waiting (see the module docs for a full
    /// channel). A closed feed (the tenant's hub is gone) takes nothing.
    pub fn send(&self, input: HubInput) {
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        let ids = |input: &HubInput| match input {
            HubInput::Events(events) => (events.first_id(), events.last_id()),
            HubInput::Reset { .. } => (None, None),
            HubInput::Lost { from, up_to } => (*from, *up_to),
        };
        if let Some(dropped) = lost.as_mut() {
            let (from, up_to) = ids(&input);
            dropped.from = dropped.from.or(from);
            dropped.up_to = dropped.up_to.max(up_to);
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(input)) = self.tx.try_send(input) {
            let (from, up_to) = ids(&input);
            *lost = Some(Dropped { from, up_to });
        }
    }
}

impl HubFeedReceiver {
    /// The next input; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<HubInput> {
        if let Some(lost) = self.take_lost() {
            return Some(lost);
        }
        let input = self.rx.recv().await?;
        Some(input)
    }

    /// An input already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<HubInput> {
        match self.rx.try_recv() {
            Ok(input) => Some(input),
            Err(_) => self.take_lost(),
        }
    }

    /// The loss marker, once everything queued before it was taken: while
    /// it is set nothing new is queued, so an empty channel stays empty.
    fn take_lost(&mut self) -> Option<HubInput> {
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        if lost.is_some() && self.rx.is_empty() {
            return lost
                .take()
                .map(|Dropped { from, up_to }| HubInput::Lost { from, up_to });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(lsn: u64) -> ChangeEvent {
        ChangeEvent::new(
            EventId {
                commit_lsn: crate::model::Lsn(lsn),
                index: 0,
            },
            "t".into(),
            None,
            None,
            crate::model::Op::Message,
            crate::model::ChangeBody::Message {
                transactional: false,
                prefix: "p".into(),
                content: bytes::Bytes::new(),
            },
        )
    }

    fn events(lsn: u64) -> HubInput {
        HubInput::Events(DurableEvents::Batch(Arc::new(vec![event(lsn)])))
    }

    #[tokio::test]
    async fn a_full_feed_reports_the_loss_after_what_was_queued() {
        let (feed, mut rx) = HubFeed::channel(2);
        feed.send(events(1));
        feed.send(events(2));
        // Full: these are dropped, and so is what follows until the hub
        // took the loss marker.
        feed.send(events(3));
        feed.send(events(4));
        let ids: Vec<_> = [rx.recv().await, rx.recv().await]
            .into_iter()
            .map(|i| match i {
                Some(HubInput::Events(e)) => e.last_id().unwrap().commit_lsn.0,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, [1, 2]);
        feed.send(events(5));
        match rx.recv().await {
            Some(HubInput::Lost {
                from: Some(from),
                up_to: Some(up_to),
            }) => assert_eq!((from.commit_lsn.0, up_to.commit_lsn.0), (3, 5)),
            other => panic!("{other:?}"),
        }
        // After the marker, inputs flow again.
        feed.send(events(6));
        assert!(matches!(rx.try_recv(), Some(HubInput::Events(_))));
        assert!(rx.try_recv().is_none());
    }
}
