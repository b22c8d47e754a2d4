//! `/state`: a mirrored table's rows, read from Redis a page at a time in
//! bounded calls, each with the stream position it is consistent with, so
//! that a client can load state and then subscribe `since` that position
//! with no gap and no duplicate.
//!
//! A page is read in chunks of [`CHUNK_ROWS`] row keys: one Lua call scans
//! that many entries of the table's `rowindex` hash (`HSCAN`), reads those
//! rows and the `applied` watermark, and returns. So no call holds Redis for
//! longer than a few hundred rows take, whatever the table's size. Values
//! are kept as the JSON text the mirror holds: nothing is re-parsed into a
//! float or an integer on the way out.
//!
//! Rows read in later chunks may be newer than the answer's `position`;
//! each row carries the id of the event that wrote it, so that a client
//! that applies events since `position` skips, for that row, the events it
//! already holds (docs/protocol.md).

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::history::just_before;
use super::subscription::Subscription;
use super::{History, TenantHub};
use crate::config::MirrorFormat;
use crate::model::{Datum, EventId, Lsn, Op, RowImage, TableName};

/// Rows in one answer when the request gives no `limit`.
pub const DEFAULT_LIMIT: usize = 1_000;
/// The largest `limit` a request may give.
pub const MAX_LIMIT: usize = 10_000;
/// Row keys one Redis call reads at most.
const CHUNK_ROWS: usize = 250;
/// Row keys one answer scans at most: a filter that selects few rows ends
/// a page early (with a cursor), rather than scanning the whole table in
/// one request.
const MAX_SCANNED: usize = 2 * MAX_LIMIT;
/// `/state` reads of one tenant at a time; more wait their turn.
pub const READS_PER_TENANT: usize = 2;
/// How long a read waits for its turn before it is refused with 503.
const QUEUE_WAIT: Duration = Duration::from_secs(5);

/// Scans `ARGV[2]` entries of the row index from cursor `ARGV[1]`, reads
/// those rows (`ARGV[3]`: `h` hash, `j` JSON string) and the watermark.
const READ_CHUNK: &str = r"
local scan = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', tonumber(ARGV[2]))
local entries = scan[2]
local keys = {}
local rows = {}
for i = 1, #entries, 2 do
  local key = entries[i]
  local row
  if ARGV[3] == 'h' then
    row = redis.call('HGETALL', key)
    if #row == 0 then row = nil end
  else
    row = redis.call('GET', key)
  end
  if row then
    keys[#keys + 1] = key
    rows[#rows + 1] = row
  end
end
local applied = redis.call('HMGET', KEYS[2], 'event_id', 'complete_from_id')
return {scan[1], applied[1] or '', applied[2] or '', keys, rows}
";

/// What a request asks for. A page ends once it holds `limit` rows; it can
/// hold a few more, since Redis scans its index in whole buckets (and a
/// table of at most 128 mirrored rows, kept as one listpack, in one go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: usize,
    /// Where an earlier answer stopped; `None` for the first page.
    pub cursor: Option<Cursor>,
}

/// Where an answer stopped, and the position and snapshot it started from:
/// every page of one read gives the first page's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    scan: u64,
    position: EventId,
    complete_from: Option<EventId>,
}

impl fmt::Display for Cursor {
    /// Only characters that need no escaping in a URL.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = |id: EventId| format!("{}_{}", id.commit_lsn.0, id.index);
        write!(
            f,
            "{}_{}_{}",
            self.scan,
            id(self.position),
            self.complete_from.map(id).unwrap_or_else(|| "n".into())
        )
    }
}

impl std::str::FromStr for Cursor {
    type Err = ();

    fn from_str(text: &str) -> Result<Cursor, ()> {
        let parts: Vec<&str> = text.split('_').collect();
        let id = |lsn: &str, index: &str| -> Result<EventId, ()> {
            Ok(EventId {
                commit_lsn: Lsn(lsn.parse().map_err(|_| ())?),
                index: index.parse().map_err(|_| ())?,
            })
        };
        let (scan, position, complete_from) = match parts.as_slice() {
            [scan, lsn, index, "n"] => (scan, id(lsn, index)?, None),
            [scan, lsn, index, c_lsn, c_index] => {
                (scan, id(lsn, index)?, Some(id(c_lsn, c_index)?))
            }
            _ => return Err(()),
        };
        Ok(Cursor {
            scan: scan.parse().map_err(|_| ())?,
            position,
            complete_from,
        })
    }
}

/// One page of rows.
#[derive(Debug)]
pub struct StatePage {
    /// Subscribe `since` this id to get the later changes.
    pub position: EventId,
    pub rows: Vec<StateRow>,
    /// Where the next page starts; `None` when this was the last.
    pub next: Option<Cursor>,
}

/// One mirrored row: its columns in the table's order, each value the JSON
/// text the mirror holds, and the id of the event that wrote it.
#[derive(Debug)]
pub struct StateRow {
    pub event_id: EventId,
    pub fields: Vec<(String, Box<RawValue>)>,
}

/// Why the state cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("tenant {tenant} has no mirror: /state reads the rows walcast mirrors into Redis; configure [redis] and a [[mirror]] rule for {table}")]
    NoRedis { tenant: String, table: TableName },
    #[error("table {table} is not mirrored for tenant {tenant}: add a [[mirror]] rule for it (mirrored: {mirrored})")]
    NotMirrored {
        tenant: String,
        table: TableName,
        mirrored: String,
    },
    #[error("walcast rebuilt tenant {tenant}'s mirror from a new snapshot while this read went on; read /state again from the first page (without cursor)")]
    Rebuilt { tenant: String },
    #[error("{READS_PER_TENANT} /state reads of tenant {tenant} are under way and this one waited {}s for its turn; retry shortly", QUEUE_WAIT.as_secs())]
    Busy { tenant: String },
    #[error("could not read the mirror from redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Reads one page of `table`'s mirrored rows that pass `subscription`'s
/// rules and filters.
pub async fn read_page(
    hub: &TenantHub,
    table: &TableName,
    subscription: &Subscription,
    request: PageRequest,
) -> Result<StatePage, StateError> {
    let History::Redis { conn, keys } = &hub.history else {
        return Err(StateError::NoRedis {
            tenant: hub.tenant.to_string(),
            table: table.clone(),
        });
    };
    let Some(rule) = hub.mirror_rule(table) else {
        return Err(StateError::NotMirrored {
            tenant: hub.tenant.to_string(),
            table: table.clone(),
            mirrored: hub
                .mirror
                .iter()
                .map(|r| r.table.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let _turn = match tokio::time::timeout(QUEUE_WAIT, hub.state_reads.acquire()).await {
        Ok(Ok(permit)) => permit,
        _ => {
            return Err(StateError::Busy {
                tenant: hub.tenant.to_string(),
            })
        }
    };
    let (format, code) = match rule.format {
        MirrorFormat::Hash => (MirrorFormat::Hash, "h"),
        MirrorFormat::Json => (MirrorFormat::Json, "j"),
    };
    let columns: Option<Vec<String>> = hub.schema().and_then(|schema| {
        schema
            .columns(table)
            .map(|c| c.names().into_iter().map(str::to_owned).collect())
    });
    let script = Script::new(READ_CHUNK);
    let mut conn = conn.clone();
    let mut cursor = request.cursor;
    let mut scan = cursor.map_or(0, |c| c.scan);
    let mut rows = Vec::new();
    let mut seen = HashSet::new();
    let mut scanned = 0;
    loop {
        let reply: redis::Value = script
            .key(keys.rowindex(table))
            .key(keys.applied())
            .arg(scan)
            .arg(CHUNK_ROWS.min(request.limit.saturating_sub(rows.len()).max(1)))
            .arg(code)
            .invoke_async(&mut conn)
            .await?;
        let chunk = Chunk::parse(reply)?;
        let start = match cursor {
            Some(start) => start,
            None => {
                let first = Cursor {
                    scan: 0,
                    position: chunk
                        .applied
                        .max(chunk.complete_from.map(just_before))
                        .unwrap_or(EventId {
                            commit_lsn: Lsn(0),
                            index: 0,
                        }),
                    complete_from: chunk.complete_from,
                };
                cursor = Some(first);
                first
            }
        };
        if chunk.complete_from != start.complete_from {
            return Err(StateError::Rebuilt {
                tenant: hub.tenant.to_string(),
            });
        }
        // A row copied by the snapshot holds the state just before the
        // first event after it.
        let snapshot_version = start.complete_from.map(just_before).unwrap_or(EventId {
            commit_lsn: Lsn(0),
            index: 0,
        });
        scanned += chunk.rows.len().max(1);
        for (key, raw) in chunk.keys.into_iter().zip(chunk.rows) {
            // HSCAN may return a key twice while Redis rehashes.
            if !seen.insert(key) {
                continue;
            }
            let Some(row) = state_row(raw, format, columns.as_deref(), snapshot_version) else {
                continue;
            };
            if subscription.matches_parts(Some(table), Op::Insert, Some(&row_image(&row))) {
                rows.push(row);
            }
        }
        scan = chunk.next_scan;
        if scan == 0 {
            return Ok(StatePage {
                position: start.position,
                rows,
                next: None,
            });
        }
        if rows.len() >= request.limit || scanned >= MAX_SCANNED {
            return Ok(StatePage {
                position: start.position,
                rows,
                next: Some(Cursor { scan, ..start }),
            });
        }
    }
}

/// One Lua call's reply.
struct Chunk {
    next_scan: u64,
    applied: Option<EventId>,
    complete_from: Option<EventId>,
    keys: Vec<Vec<u8>>,
    rows: Vec<redis::Value>,
}

impl Chunk {
    fn parse(reply: redis::Value) -> Result<Chunk, StateError> {
        let redis::Value::Array(parts) = reply else {
            return Err(unexpected());
        };
        let Ok(
            [next_scan, applied, complete_from, redis::Value::Array(keys), redis::Value::Array(rows)],
        ) = <[redis::Value; 5]>::try_from(parts)
        else {
            return Err(unexpected());
        };
        let next_scan = text(&next_scan)
            .and_then(|t| t.parse().ok())
            .ok_or_else(unexpected)?;
        let keys = keys
            .into_iter()
            .map(|k| match k {
                redis::Value::BulkString(b) => b,
                _ => Vec::new(),
            })
            .collect();
        Ok(Chunk {
            next_scan,
            applied: text(&applied).and_then(|t| t.parse().ok()),
            complete_from: text(&complete_from).and_then(|t| t.parse().ok()),
            keys,
            rows,
        })
    }
}

fn unexpected() -> StateError {
    StateError::Redis(redis::RedisError::from((
        redis::ErrorKind::Client,
        "unexpected reply from the state script",
    )))
}

fn text(value: &redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(b) if !b.is_empty() => {
            Some(String::from_utf8_lossy(b).into_owned())
        }
        redis::Value::SimpleString(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// A mirrored row without walcast's bookkeeping fields, its columns in the
/// table's order (those the catalog does not list last, as stored).
fn state_row(
    raw: redis::Value,
    format: MirrorFormat,
    columns: Option<&[String]>,
    snapshot_version: EventId,
) -> Option<StateRow> {
    let mut fields: Vec<(String, Box<RawValue>)> = match (format, raw) {
        (MirrorFormat::Hash, redis::Value::Array(items)) => items
            .chunks(2)
            .filter_map(|pair| {
                let [k, v] = pair else { return None };
                let (k, v) = (text(k)?, text(v).unwrap_or_default());
                // Each value is the JSON text walcast wrote; anything else
                // (a hand-edited key) is returned as a string.
                let value = match RawValue::from_string(v.clone()) {
                    Ok(value) => value,
                    Err(_) => RawValue::from_string(serde_json::to_string(&v).ok()?).ok()?,
                };
                Some((k, value))
            })
            .collect(),
        (MirrorFormat::Json, value) => {
            serde_json::from_str::<OrderedFields>(&text(&value)?)
                .ok()?
                .0
        }
        _ => return None,
    };
    let mut event_id = snapshot_version;
    fields.retain(|(k, v)| {
        if k == "_event_id" {
            let id = v.get().trim_matches('"');
            if let Ok(id) = id.parse::<EventId>() {
                event_id = id;
            }
            return false;
        }
        !k.starts_with("_walcast")
    });
    if let Some(columns) = columns {
        let rank = |name: &str| columns.iter().position(|c| c == name).unwrap_or(usize::MAX);
        fields.sort_by_key(|(k, _)| rank(k));
    }
    Some(StateRow { event_id, fields })
}

/// A JSON object's members in their order, values as they are written.
struct OrderedFields(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for OrderedFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = OrderedFields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedFields, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    fields.push(entry);
                }
                Ok(OrderedFields(fields))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// The row as the filters see it: the same values an event carries.
fn row_image(row: &StateRow) -> RowImage {
    RowImage(
        row.fields
            .iter()
            .map(|(k, v)| (Arc::from(k.as_str()), Datum::from_json_text(v.get())))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_and_refuses_anything_else() {
        let cursor = Cursor {
            scan: 1234,
            position: EventId {
                commit_lsn: Lsn(0x16B_3F28),
                index: 7,
            },
            complete_from: None,
        };
        let text = cursor.to_string();
        assert_eq!(text, "1234_23805736_7_n");
        assert_eq!(text.parse::<Cursor>(), Ok(cursor));
        let rebuilt = Cursor {
            complete_from: Some(EventId {
                commit_lsn: Lsn(0x10),
                index: 0,
            }),
            ..cursor
        };
        assert_eq!(rebuilt.to_string().parse::<Cursor>(), Ok(rebuilt));
        for bad in [
            "",
            "x",
            "1_2_3",
            "1_x1_3_n",
            "-1_1_1_n",
            "1_1_1_1",
            "1_1_1_n_1",
        ] {
            assert_eq!(bad.parse::<Cursor>(), Err(()), "{bad}");
        }
    }

    #[test]
    fn values_keep_their_bytes_and_the_table_order() {
        // A hash row as HGETALL returns it, in another order than the table.
        let bulk = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
        let raw = redis::Value::Array(vec![
            bulk("payload"),
            bulk("{\"n\": 123456789012345678901234567890, \"x\": 1.00000000000000000001}"),
            bulk("_event_id"),
            bulk("23803720-2"),
            bulk("ratio"),
            bulk("1.5996"),
            bulk("id"),
            bulk("-9223372036854775809"),
        ]);
        let columns = ["id".to_owned(), "ratio".to_owned(), "payload".to_owned()];
        let zero = EventId {
            commit_lsn: Lsn(0),
            index: 0,
        };
        let row = state_row(raw, MirrorFormat::Hash, Some(&columns), zero).unwrap();
        assert_eq!(row.event_id.to_string(), "23803720-2");
        let fields: Vec<(&str, &str)> = row
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.get()))
            .collect();
        assert_eq!(
            fields,
            [
                ("id", "-9223372036854775809"),
                ("ratio", "1.5996"),
                (
                    "payload",
                    "{\"n\": 123456789012345678901234567890, \"x\": 1.00000000000000000001}"
                ),
            ]
        );
        // The JSON format keeps the stored member order and bytes.
        let json = bulk("{\"_event_id\":\"snapshot\",\"b\":1e400,\"a\":\"x\"}");
        let row = state_row(json, MirrorFormat::Json, None, zero).unwrap();
        assert_eq!(row.event_id, zero);
        let fields: Vec<(&str, &str)> = row
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.get()))
            .collect();
        assert_eq!(fields, [("b", "1e400"), ("a", "\"x\"")]);
    }

    #[test]
    fn datums_are_what_an_event_would_carry() {
        assert_eq!(Datum::from_json_text("42"), Datum::Int(42));
        assert_eq!(Datum::from_json_text("1.5996"), Datum::Float(1.5996));
        assert_eq!(
            Datum::from_json_text("\"running\""),
            Datum::Text("running".into())
        );
        assert_eq!(Datum::from_json_text("null"), Datum::Null);
        assert_eq!(Datum::from_json_text("true"), Datum::Bool(true));
        assert_eq!(
            Datum::from_json_text("123456789012345678901234567890"),
            Datum::Json("123456789012345678901234567890".into())
        );
        assert_eq!(
            Datum::from_json_text("{\"a\":1}"),
            Datum::Json("{\"a\":1}".into())
        );
    }
}
