//! The in-memory resume buffer used when no Redis is configured: a bounded
//! ring of each tenant's most recent committed events, so that a client that
//! reconnects shortly after a disconnect can resume without a gap. Events
//! become visible at their transaction's commit; when the ring is full the
//! oldest go, and a resume from before them is an explicit gap.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::{EventSink, SinkFuture};
use crate::model::{ChangeEvent, DurableEvents, EventId, HubFeed, HubInput, Lsn};

/// Events kept per tenant when `[redis]` is not configured.
pub const DEFAULT_RING_EVENTS: usize = 10_000;

/// What `since` found.
#[derive(Debug, Clone)]
pub enum Resume {
    /// Every committed event after the given id, oldest first.
    Events(Vec<Arc<ChangeEvent>>),
    /// Events after the given id were dropped from the ring; the oldest one
    /// still kept is `oldest` (None: the ring is empty). Reload state.
    Gap { oldest: Option<EventId> },
}

/// One tenant's ring.
pub struct MemoryRing {
    capacity: usize,
    state: Mutex<RingState>,
    feed: Mutex<Option<HubFeed>>,
}

impl std::fmt::Debug for MemoryRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRing")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct RingState {
    committed: VecDeque<Arc<ChangeEvent>>,
    /// Events of the transaction in hand, visible at its commit.
    pending: Vec<Arc<ChangeEvent>>,
    /// The newest event ever dropped (from the ring or from a pending
    /// transaction larger than the ring).
    dropped_up_to: Option<EventId>,
}

impl MemoryRing {
    pub fn new(capacity: usize) -> MemoryRing {
        MemoryRing {
            capacity: capacity.max(1),
            state: Mutex::new(RingState::default()),
            feed: Mutex::new(None),
        }
    }

    /// Every committed event after `after` (`None`: all kept), or a gap.
    pub fn since(&self, after: Option<EventId>) -> Resume {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = state.committed.front().map(|e| e.id);
        match (after, state.dropped_up_to) {
            (Some(after), Some(dropped)) if after < dropped => Resume::Gap { oldest },
            (None, Some(_)) => Resume::Gap { oldest },
            _ => Resume::Events(
                state
                    .committed
                    .iter()
                    .filter(|e| after.is_none_or(|a| e.id > a))
                    .cloned()
                    .collect(),
            ),
        }
    }

    /// Up to `limit` committed events after `after`, oldest first, and
    /// whether some after it were dropped (`Resume::Gap`, with the oldest
    /// kept; `Resume::Events` holds nothing then).
    pub fn page(&self, after: Option<EventId>, limit: usize) -> (Resume, Vec<Arc<ChangeEvent>>) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = state.committed.front().map(|e| e.id);
        let gap = match (after, state.dropped_up_to) {
            (Some(after), Some(dropped)) => after < dropped,
            (None, Some(_)) => true,
            _ => false,
        };
        let start = match after {
            Some(after) => state.committed.partition_point(|e| e.id <= after),
            None => 0,
        };
        let events = state
            .committed
            .range(start..)
            .take(limit)
            .cloned()
            .collect();
        let resume = if gap {
            Resume::Gap { oldest }
        } else {
            Resume::Events(Vec::new())
        };
        (resume, events)
    }

    /// Where to send each transaction's events once they are committed to
    /// the ring (the hub publishes them to live subscribers).
    pub fn set_feed(&self, feed: HubFeed) {
        *self.feed.lock().unwrap_or_else(|p| p.into_inner()) = Some(feed);
    }

    /// The newest committed event id.
    pub fn last_id(&self) -> Option<EventId> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.committed.back().map(|e| e.id)
    }
}

impl EventSink for MemoryRing {
    fn write<'a>(&'a self, events: &'a [ChangeEvent]) -> SinkFuture<'a> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for event in events {
            state.pending.push(Arc::new(event.clone()));
        }
        // A transaction larger than the ring: keep only its newest events.
        if state.pending.len() > self.capacity {
            let excess = state.pending.len() - self.capacity;
            let last_dropped = state.pending[excess - 1].id;
            state.pending.drain(..excess);
            state.dropped_up_to = state.dropped_up_to.max(Some(last_dropped));
        }
        Box::pin(async { Ok(()) })
    }

    fn commit(&self, _end_lsn: Option<Lsn>) -> SinkFuture<'_> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let pending = std::mem::take(&mut state.pending);
        state.committed.extend(pending.iter().cloned());
        while state.committed.len() > self.capacity {
            if let Some(dropped) = state.committed.pop_front() {
                state.dropped_up_to = state.dropped_up_to.max(Some(dropped.id));
            }
        }
        drop(state);
        // Called by the one pipeline task, so in commit order; the ring
        // holds the events before subscribers see them.
        let feed = self.feed.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(feed) = feed.filter(|_| !pending.is_empty()) {
            feed.send(HubInput::Events(DurableEvents::Shared(pending)));
        }
        Box::pin(async { Ok(()) })
    }

    fn reset(&self) -> SinkFuture<'_> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .clear();
        Box::pin(async { Ok(()) })
    }
}

/// Writes to several sinks in order (for example standard output and the
/// ring). After a reconnect the pipeline hands a cut-off transaction over
/// again in full; sinks that already wrote its first part for good (standard
/// output) do not get that part twice.
pub struct TeeSink {
    sinks: Vec<Arc<dyn EventSink>>,
    /// The last event given to the sinks that keep uncommitted events.
    kept_up_to: Mutex<Option<EventId>>,
}

impl TeeSink {
    pub fn new(sinks: Vec<Arc<dyn EventSink>>) -> TeeSink {
        TeeSink {
            sinks,
            kept_up_to: Mutex::new(None),
        }
    }
}

impl EventSink for TeeSink {
    fn write<'a>(&'a self, events: &'a [ChangeEvent]) -> SinkFuture<'a> {
        Box::pin(async move {
            let kept_up_to = *self.kept_up_to.lock().unwrap_or_else(|p| p.into_inner());
            let fresh_from = events.partition_point(|e| kept_up_to.is_some_and(|k| e.id <= k));
            for sink in &self.sinks {
                let events = if sink.keeps_uncommitted() {
                    &events[fresh_from..]
                } else {
                    events
                };
                if !events.is_empty() {
                    sink.write(events).await?;
                }
            }
            if let Some(last) = events.last() {
                let mut kept = self.kept_up_to.lock().unwrap_or_else(|p| p.into_inner());
                *kept = (*kept).max(Some(last.id));
            }
            Ok(())
        })
    }

    fn commit(&self, end_lsn: Option<Lsn>) -> SinkFuture<'_> {
        Box::pin(async move {
            for sink in &self.sinks {
                sink.commit(end_lsn).await?;
            }
            Ok(())
        })
    }

    fn reset(&self) -> SinkFuture<'_> {
        Box::pin(async move {
            for sink in &self.sinks {
                sink.reset().await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ChangeBody, Op};

    fn event(lsn: u64, index: u32) -> ChangeEvent {
        ChangeEvent::new(
            EventId {
                commit_lsn: Lsn(lsn),
                index,
            },
            Arc::from("t"),
            None,
            None,
            Op::Message,
            ChangeBody::Message {
                transactional: true,
                prefix: "p".into(),
                content: bytes::Bytes::new(),
            },
        )
    }

    fn ids(resume: Resume) -> Vec<String> {
        match resume {
            Resume::Events(events) => events.iter().map(|e| e.id.to_string()).collect(),
            Resume::Gap { .. } => panic!("unexpected gap"),
        }
    }

    #[tokio::test]
    async fn events_are_visible_at_commit_and_resume_after_an_id() {
        let ring = MemoryRing::new(4);
        ring.write(&[event(10, 0), event(10, 1)]).await.unwrap();
        assert_eq!(
            ids(ring.since(None)),
            Vec::<String>::new(),
            "not visible before commit"
        );
        ring.commit(Some(Lsn(11))).await.unwrap();
        ring.write(&[event(20, 0)]).await.unwrap();
        ring.commit(Some(Lsn(21))).await.unwrap();
        assert_eq!(ids(ring.since(None)), ["10-0", "10-1", "20-0"]);
        let after = EventId {
            commit_lsn: Lsn(10),
            index: 0,
        };
        assert_eq!(ids(ring.since(Some(after))), ["10-1", "20-0"]);
        // A session that ended mid-transaction: its pending events go.
        ring.write(&[event(30, 0)]).await.unwrap();
        ring.reset().await.unwrap();
        assert_eq!(ring.last_id().unwrap().to_string(), "20-0");
    }

    #[tokio::test]
    async fn tee_gives_a_replayed_part_only_to_sinks_that_dropped_it() {
        let ring = Arc::new(MemoryRing::new(10));
        let printed = Arc::new(Printed::default());
        let tee = TeeSink::new(vec![printed.clone(), ring.clone()]);
        tee.write(&[event(5, 0), event(5, 1)]).await.unwrap();
        tee.reset().await.unwrap(); // the session ended inside the transaction
        tee.write(&[event(5, 0), event(5, 1), event(5, 2)])
            .await
            .unwrap();
        tee.commit(None).await.unwrap();
        assert_eq!(ids(ring.since(None)), ["5-0", "5-1", "5-2"]);
        assert_eq!(*printed.0.lock().unwrap(), ["5-0", "5-1", "5-2"]);
    }

    /// A sink that, like standard output, keeps what it was given.
    #[derive(Default)]
    struct Printed(Mutex<Vec<String>>);

    impl EventSink for Printed {
        fn write<'a>(&'a self, events: &'a [ChangeEvent]) -> SinkFuture<'a> {
            self.0
                .lock()
                .unwrap()
                .extend(events.iter().map(|e| e.id.to_string()));
            Box::pin(async { Ok(()) })
        }
        fn commit(&self, _: Option<Lsn>) -> SinkFuture<'_> {
            Box::pin(async { Ok(()) })
        }
        fn keeps_uncommitted(&self) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn overflow_is_an_explicit_gap() {
        let ring = MemoryRing::new(2);
        for lsn in [1, 2, 3] {
            ring.write(&[event(lsn, 0)]).await.unwrap();
            ring.commit(None).await.unwrap();
        }
        let old = EventId {
            commit_lsn: Lsn(1),
            index: 0,
        };
        match ring.since(Some(EventId {
            commit_lsn: Lsn(0),
            index: 0,
        })) {
            Resume::Gap { oldest } => assert_eq!(
                oldest,
                Some(EventId {
                    commit_lsn: Lsn(2),
                    index: 0
                })
            ),
            Resume::Events(e) => panic!("expected a gap, got {} events", e.len()),
        }
        assert_eq!(
            ids(ring.since(Some(old))),
            ["2-0", "3-0"],
            "resuming right after the dropped one is complete"
        );
        assert!(matches!(ring.since(None), Resume::Gap { .. }));
        // A transaction larger than the ring keeps its newest events.
        ring.write(&[event(9, 0), event(9, 1), event(9, 2)])
            .await
            .unwrap();
        ring.commit(None).await.unwrap();
        assert_eq!(
            ids(ring.since(Some(EventId {
                commit_lsn: Lsn(9),
                index: 0
            }))),
            ["9-1", "9-2"]
        );
        assert!(matches!(
            ring.since(Some(EventId {
                commit_lsn: Lsn(3),
                index: 0
            })),
            Resume::Gap { .. }
        ));
    }
}
