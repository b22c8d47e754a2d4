//! One subscription's sequence of events: first the kept events after the
//! client's `since` (page by page), then live ones, with no gap and no
//! duplicate at the seam.
//!
//! The seam: after the last short page the feed registers with the fanout,
//! then reads one more page. Whatever was published before registering is
//! in that page (sinks publish only what is already kept); whatever comes
//! later is in the live queue; ids at or below the last one read are
//! skipped, so an event in both is sent once.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::fanout::{Live, LiveEnd, LiveReceiver};
use super::history::PAGE_EVENTS;
use super::subscription::Subscription;
use super::TenantHub;
use crate::model::EventId;

/// What a feed yields.
#[derive(Debug, Clone)]
pub enum FeedItem {
    /// A matching event: its id and its JSON.
    Change { id: EventId, json: Bytes },
    /// Events after `after` are not all kept; the stream goes on from
    /// `resume_from` (the oldest kept; None: none kept yet). The client
    /// should reload state.
    Gap {
        after: Option<EventId>,
        resume_from: Option<EventId>,
        reason: GapReason,
    },
    /// No more events.
    End(FeedEnd),
}

/// Why events were not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// Older than the stream's retention (or the in-memory ring's size).
    Retention,
    /// Redis lost the tenant's data and the mirror was rebuilt.
    Resync,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::Retention => "retention",
            GapReason::Resync => "resync",
        }
    }
}

/// Why a feed ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEnd {
    /// The client did not keep up and its queue overflowed.
    Lagged,
    /// The tenant was stopped or reconfigured.
    TenantStopped,
    /// The kept events could not be read.
    HistoryFailed(String),
}

enum State {
    /// Reading kept events; `first`: the gap check is still to do.
    Replay {
        first: bool,
    },
    /// Registered live; reading the page that closes the seam.
    Seam(LiveReceiver),
    Live(LiveReceiver),
    Done,
}

/// One subscription's events.
pub struct Feed {
    hub: Arc<TenantHub>,
    subscription: Arc<Subscription>,
    /// Everything up to here was sent or filtered out.
    cursor: Option<EventId>,
    start: Option<EventId>,
    state: State,
    ready: VecDeque<FeedItem>,
}

impl Feed {
    /// A feed from `since` (exclusive), or from now. Without `since` the
    /// subscriber is registered before this returns, so nothing committed
    /// after it is missed.
    pub fn new(hub: Arc<TenantHub>, subscription: Subscription, since: Option<EventId>) -> Feed {
        let subscription = Arc::new(subscription);
        // Read before registering: everything after it is in the live queue
        // or later, so it is a safe point to resume from.
        let start = since.or_else(|| hub.fanout.last_published());
        let state = match since {
            Some(_) => State::Replay { first: true },
            None => State::Live(hub.fanout.subscribe(Arc::clone(&subscription))),
        };
        Feed {
            hub,
            subscription,
            cursor: since,
            start,
            state,
            ready: VecDeque::new(),
        }
    }

    /// Matches the events from now on with `subscription` (the same tables;
    /// a refreshed token's claims). Events matched before and already
    /// queued are still delivered.
    pub fn set_subscription(&mut self, subscription: Subscription) {
        self.subscription = Arc::new(subscription);
        if let State::Seam(live) | State::Live(live) = &self.state {
            live.set_subscription(&self.subscription);
        }
    }

    /// Where this feed starts: `since`, or the last event published before
    /// it was registered (None when nothing was published since walcast
    /// started). A client that resumes from it misses nothing.
    pub fn start(&self) -> Option<EventId> {
        self.start
    }

    /// Every event up to this id was sent or did not match: a resume point
    /// as good as the last event sent, and often a later one.
    pub fn cursor(&self) -> Option<EventId> {
        self.cursor
    }

    /// The next item. Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> FeedItem {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return item;
            }
            match &mut self.state {
                State::Done => return FeedItem::End(FeedEnd::TenantStopped),
                State::Replay { first } => {
                    let first = *first;
                    let Some(after) = self.cursor else {
                        self.state =
                            State::Live(self.hub.fanout.subscribe(Arc::clone(&self.subscription)));
                        continue;
                    };
                    let page = match self.hub.history.page(after, PAGE_EVENTS, first).await {
                        Ok(page) => page,
                        Err(err) => return self.fail(err.to_string()),
                    };
                    if let Some(resume_from) = page.gap {
                        self.ready.push_back(FeedItem::Gap {
                            after: Some(after),
                            resume_from,
                            reason: GapReason::Retention,
                        });
                    }
                    let full = page.events.len() >= PAGE_EVENTS;
                    self.take(page.events);
                    self.state = if full {
                        State::Replay { first: false }
                    } else {
                        State::Seam(self.hub.fanout.subscribe(Arc::clone(&self.subscription)))
                    };
                }
                State::Seam(_) => {
                    let Some(after) = self.cursor else {
                        self.go_live();
                        continue;
                    };
                    let page = match self.hub.history.page(after, PAGE_EVENTS, false).await {
                        Ok(page) => page,
                        Err(err) => return self.fail(err.to_string()),
                    };
                    let full = page.events.len() >= PAGE_EVENTS;
                    self.take(page.events);
                    if !full {
                        self.go_live();
                    }
                }
                State::Live(live) => match live.recv().await {
                    Ok(live) => self.take_live(live),
                    Err(LiveEnd::Lagged) => {
                        // Cut off before it had a position of its own: it
                        // resumes where the events it missed begin.
                        if self.cursor.is_none() {
                            self.cursor = live.resume_after();
                        }
                        self.state = State::Done;
                        return FeedItem::End(FeedEnd::Lagged);
                    }
                    Err(LiveEnd::Closed) => {
                        self.state = State::Done;
                        return FeedItem::End(FeedEnd::TenantStopped);
                    }
                },
            }
        }
    }

    /// The next item if one is ready now, without waiting (for batching
    /// what is queued into one write). The end is reported by `next`.
    pub fn try_next(&mut self) -> Option<FeedItem> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            let State::Live(live) = &mut self.state else {
                return None;
            };
            let live = live.try_recv()?;
            self.take_live(live);
        }
    }

    fn take_live(&mut self, live: Live) {
        match live {
            Live::Events(events) => {
                for (id, queued) in events.iter() {
                    if self.cursor.is_some_and(|c| *id <= c) {
                        continue;
                    }
                    self.cursor = Some(*id);
                    self.ready.push_back(FeedItem::Change {
                        id: *id,
                        json: queued.bytes().clone(),
                    });
                }
            }
            Live::Reset { complete_from } => self.ready.push_back(FeedItem::Gap {
                after: self.cursor,
                resume_from: Some(complete_from),
                reason: GapReason::Resync,
            }),
        }
    }

    fn go_live(&mut self) {
        if let State::Seam(live) = std::mem::replace(&mut self.state, State::Done) {
            self.state = State::Live(live);
        }
    }

    fn fail(&mut self, error: String) -> FeedItem {
        self.state = State::Done;
        FeedItem::End(FeedEnd::HistoryFailed(error))
    }

    fn take(&mut self, events: Vec<super::history::Replayed>) {
        for event in events {
            let id = event.id();
            if self.cursor.is_some_and(|c| id <= c) {
                continue;
            }
            self.cursor = Some(id);
            if event.matches(&self.subscription) {
                self.ready.push_back(FeedItem::Change {
                    id,
                    json: event.json(),
                });
            }
        }
    }
}
