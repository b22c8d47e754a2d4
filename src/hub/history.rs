//! The kept half of delivery: what a client resumes from. With Redis, the
//! tenant's event stream (`XRANGE` after an id); without, the in-memory ring.
//! Either one says when events after the asked id are no longer kept
//! (trimmed by retention, or lost with Redis's data) so that the client gets
//! an explicit gap, never a silent hole.

use std::sync::Arc;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use serde::Deserialize;

use super::subscription::Subscription;
use crate::model::{ChangeEvent, Datum, EventId, Lsn, Op, RowImage, TableName};
use crate::sink::redis::Keys;
use crate::sink::{MemoryRing, Resume};

/// Events read per round trip while catching up.
pub const PAGE_EVENTS: usize = 500;

/// Where a tenant's recent events are kept.
#[derive(Clone)]
pub enum History {
    Redis { conn: ConnectionManager, keys: Keys },
    Ring(Arc<MemoryRing>),
}

/// One page of kept events after an id.
#[derive(Debug, Default)]
pub struct Page {
    /// Set when events after the asked id were not kept: `oldest` is the
    /// first one that is (None: nothing is kept).
    pub gap: Option<Option<EventId>>,
    pub events: Vec<Replayed>,
}

/// A kept event.
#[derive(Debug, Clone)]
pub enum Replayed {
    /// From the in-memory ring: the event itself.
    Event(Arc<ChangeEvent>),
    /// From the Redis stream: its JSON, and the parts filters look at.
    Stored {
        id: EventId,
        json: Bytes,
        table: Option<TableName>,
        op: Op,
        row: Option<RowImage>,
    },
}

impl Replayed {
    pub fn id(&self) -> EventId {
        match self {
            Replayed::Event(e) => e.id,
            Replayed::Stored { id, .. } => *id,
        }
    }

    pub fn json(&self) -> Bytes {
        match self {
            Replayed::Event(e) => e.encoded().clone(),
            Replayed::Stored { json, .. } => json.clone(),
        }
    }

    pub fn matches(&self, subscription: &Subscription) -> bool {
        match self {
            Replayed::Event(e) => subscription.matches(e),
            Replayed::Stored { table, op, row, .. } => {
                subscription.matches_parts(table.as_ref(), *op, row.as_ref())
            }
        }
    }
}

/// Why the kept events could not be read.
#[derive(Debug, thiserror::Error)]
#[error("could not read the tenant's event stream from redis: {0}")]
pub struct HistoryError(#[from] redis::RedisError);

impl History {
    /// Up to `limit` kept events after `after`; with `check_gap`, also
    /// whether some after it were not kept.
    pub async fn page(
        &self,
        after: EventId,
        limit: usize,
        check_gap: bool,
    ) -> Result<Page, HistoryError> {
        match self {
            History::Ring(ring) => {
                let (resume, events) = ring.page(Some(after), limit);
                let gap = match resume {
                    Resume::Gap { oldest } if check_gap => Some(oldest),
                    _ => None,
                };
                Ok(Page {
                    gap,
                    events: events.into_iter().map(Replayed::Event).collect(),
                })
            }
            History::Redis { conn, keys } => {
                let mut conn = conn.clone();
                let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                    .arg(keys.events())
                    .arg(format!("({after}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(&mut conn)
                    .await?;
                let events: Vec<Replayed> = reply
                    .ids
                    .into_iter()
                    .filter_map(|entry| {
                        let id: EventId = entry.id.parse().ok()?;
                        let json = match entry.map.get("event")? {
                            redis::Value::BulkString(b) => Bytes::from(b.clone()),
                            _ => return None,
                        };
                        Some(stored(id, json))
                    })
                    .collect();
                let gap = if check_gap {
                    match missing_up_to(&mut conn, keys).await? {
                        Some(missing) if after < missing => Some(events.first().map(Replayed::id)),
                        _ => None,
                    }
                } else {
                    None
                };
                Ok(Page { gap, events })
            }
        }
    }
}

/// The id up to which events may be missing from the Redis stream: when
/// retention trimmed it, the one just before the first kept entry (a client
/// exactly at the edge is told of a gap too: Redis does not say which ids it
/// trimmed); after a re-snapshot, the one just before `complete_from_id`.
/// None: nothing is missing.
async fn missing_up_to(
    conn: &mut ConnectionManager,
    keys: &Keys,
) -> Result<Option<EventId>, HistoryError> {
    let complete_from: Option<String> = redis::cmd("HGET")
        .arg(keys.applied())
        .arg("complete_from_id")
        .query_async(conn)
        .await?;
    let mut bound = complete_from
        .and_then(|c| c.parse::<EventId>().ok())
        .map(just_before);
    // XINFO STREAM fails on a missing key; no stream, nothing trimmed.
    let info: Result<redis::Value, _> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(keys.events())
        .query_async(conn)
        .await;
    if let Ok(info) = info {
        // Trimming (MAXLEN, MINID) does not move max-deleted-entry-id: when
        // fewer entries are kept than were added, everything before the
        // first kept one may be gone.
        let number = |name: &str| field(&info, name).and_then(|v| v.parse::<u64>().ok());
        let trimmed = matches!((number("entries-added"), number("length")), (Some(added), Some(len)) if added > len);
        let first = first_entry_id(&info);
        if trimmed {
            if let Some(first) = first {
                bound = bound.max(Some(just_before(first)));
            }
        }
        if let Some(deleted) = field(&info, "max-deleted-entry-id")
            .and_then(|v| v.parse::<EventId>().ok())
            .filter(|id| id.commit_lsn.0 != 0 || id.index != 0)
        {
            bound = bound.max(Some(deleted));
        }
    }
    Ok(bound)
}

/// The greatest id below `id`: a position from which everything at `id` and
/// after is "later". (`n-0` → `(n-1)-4294967295`.)
pub fn just_before(id: EventId) -> EventId {
    if id.index > 0 {
        EventId {
            commit_lsn: id.commit_lsn,
            index: id.index - 1,
        }
    } else {
        EventId {
            commit_lsn: Lsn(id.commit_lsn.0.saturating_sub(1)),
            index: u32::MAX,
        }
    }
}

/// The id of `first-entry` in an `XINFO STREAM` reply.
fn first_entry_id(info: &redis::Value) -> Option<EventId> {
    let entry = match info {
        redis::Value::Array(items) => items
            .chunks(2)
            .find(|pair| matches!(&pair[0], redis::Value::BulkString(b) if b == b"first-entry"))
            .and_then(|pair| pair.get(1)),
        redis::Value::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| matches!(k, redis::Value::BulkString(b) if b == b"first-entry"))
            .map(|(_, v)| v),
        _ => None,
    }?;
    match entry {
        redis::Value::Array(parts) => match parts.first()? {
            redis::Value::BulkString(id) => std::str::from_utf8(id).ok()?.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// A field of a RESP2 (flat array) or RESP3 (map) reply, as text.
fn field(value: &redis::Value, name: &str) -> Option<String> {
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::Int(n) => Some(n.to_string()),
        _ => None,
    };
    match value {
        redis::Value::Array(items) => items
            .chunks(2)
            .find(|pair| pair.first().and_then(text).as_deref() == Some(name))
            .and_then(|pair| pair.get(1).and_then(text)),
        redis::Value::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| text(k).as_deref() == Some(name))
            .and_then(|(_, v)| text(v)),
        _ => None,
    }
}

/// The parts of a stored event filters look at.
#[derive(Deserialize)]
struct StoredShape {
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    table: Option<String>,
    op: String,
    #[serde(default)]
    new: Option<RawRow>,
    #[serde(default)]
    old: Option<RawRow>,
    #[serde(default)]
    key: Option<RawRow>,
}

fn stored(id: EventId, json: Bytes) -> Replayed {
    let shape: Option<StoredShape> = serde_json::from_slice(&json).ok();
    let (table, op, row) = match shape {
        Some(shape) => {
            let op = match shape.op.as_str() {
                "INSERT" => Op::Insert,
                "UPDATE" => Op::Update,
                "DELETE" => Op::Delete,
                "TRUNCATE" => Op::Truncate,
                _ => Op::Message,
            };
            let table = match (&shape.schema, &shape.table) {
                (Some(s), Some(t)) => Some(TableName::new(s, t)),
                _ => None,
            };
            let row = match op {
                Op::Delete => shape.old.or(shape.key),
                _ => shape.new,
            };
            (table, op, row.map(json_row))
        }
        // Not an event walcast wrote: it matches nothing.
        None => (None, Op::Message, None),
    };
    Replayed::Stored {
        id,
        json,
        table,
        op,
        row,
    }
}

/// A stored row's values as the bytes they were written with.
type RawRow = std::collections::HashMap<String, Box<serde_json::value::RawValue>>;

/// A JSON object (an event's row) as a row image, values unrounded
/// (`Datum::from_json_text`).
fn json_row(map: RawRow) -> RowImage {
    RowImage(
        map.into_iter()
            .map(|(k, v)| (Arc::from(k.as_str()), Datum::from_json_text(v.get())))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn just_before_orders_below_and_above_everything_earlier() {
        let id: EventId = "100-0".parse().unwrap();
        let before = just_before(id);
        assert!(before < id);
        assert!(before > "99-7".parse().unwrap());
        assert_eq!(just_before("100-3".parse().unwrap()).to_string(), "100-2");
    }

    #[test]
    fn stored_events_are_matched_on_their_row() {
        let json = Bytes::from_static(br#"{"id":"5-0","tenant":"t","schema":"public","table":"tasks","op":"DELETE","key":{"id":7},"old":{"id":7,"status":"done"}}"#);
        let Replayed::Stored { table, op, row, .. } = stored("5-0".parse().unwrap(), json) else {
            panic!("stored")
        };
        assert_eq!(table, Some(TableName::new("public", "tasks")));
        assert_eq!(op, Op::Delete);
        assert_eq!(
            row.unwrap().get("status"),
            Some(&Datum::Text("done".into()))
        );
    }
}
