//! `/state`: a mirrored table's rows, read from Redis in one script together
//! with the stream position they are consistent with, so that a client can
//! load state and then subscribe `since` that position with no gap and no
//! duplicate.

use redis::Script;

use super::history::{json_row, just_before};
use super::subscription::Subscription;
use super::{History, TenantHub};
use crate::config::MirrorFormat;
use crate::model::{EventId, Op, TableName};

/// At most this many rows in one answer; a larger hot set is refused.
pub const MAX_STATE_ROWS: usize = 100_000;

/// Reads every row of the table (the keys of its row index) and the applied
/// watermark atomically.
const READ_STATE: &str = r"
local keys = redis.call('HKEYS', KEYS[1])
if #keys > tonumber(ARGV[1]) then return {'too_many', #keys} end
local rows = {}
for _, key in ipairs(keys) do
  if ARGV[2] == 'h' then
    local fields = redis.call('HGETALL', key)
    if #fields > 0 then rows[#rows + 1] = fields end
  else
    local value = redis.call('GET', key)
    if value then rows[#rows + 1] = value end
  end
end
local applied = redis.call('HMGET', KEYS[2], 'event_id', 'complete_from_id')
return {'ok', applied[1] or '', applied[2] or '', rows}
";

/// The rows and their position.
#[derive(Debug)]
pub struct State {
    /// Subscribe `since` this id to get exactly the later changes.
    pub position: EventId,
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
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
    #[error("table {table} has {count} mirrored rows, more than /state returns ({max}); narrow the mirror's hot_when")]
    TooMany {
        table: TableName,
        count: i64,
        max: usize,
    },
    #[error("could not read the mirror from redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Reads `table`'s mirrored rows that pass `subscription`'s filters.
pub async fn read(
    hub: &TenantHub,
    table: &TableName,
    subscription: &Subscription,
) -> Result<State, StateError> {
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
    let format = match rule.format {
        MirrorFormat::Hash => "h",
        MirrorFormat::Json => "j",
    };
    let mut conn = conn.clone();
    let reply: redis::Value = Script::new(READ_STATE)
        .key(keys.rowindex(table))
        .key(keys.applied())
        .arg(MAX_STATE_ROWS)
        .arg(format)
        .invoke_async(&mut conn)
        .await?;
    let redis::Value::Array(parts) = reply else {
        return Err(unexpected());
    };
    if let [status, count] = parts.as_slice() {
        if text(status).as_deref() == Some("too_many") {
            let count = match count {
                redis::Value::Int(n) => *n,
                _ => -1,
            };
            return Err(StateError::TooMany {
                table: table.clone(),
                count,
                max: MAX_STATE_ROWS,
            });
        }
    }
    let [_, applied, complete_from, redis::Value::Array(raw_rows)] = parts.as_slice() else {
        return Err(unexpected());
    };
    let applied = text(applied).and_then(|t| t.parse::<EventId>().ok());
    let complete_from = text(complete_from)
        .and_then(|t| t.parse::<EventId>().ok())
        .map(just_before);
    let position = applied.max(complete_from).unwrap_or(EventId {
        commit_lsn: crate::model::Lsn(0),
        index: 0,
    });
    let mut rows = Vec::new();
    for raw in raw_rows {
        let Some(row) = row_object(raw, rule.format) else {
            continue;
        };
        let image = json_row(row.clone());
        if subscription.matches_parts(Some(table), Op::Insert, Some(&image)) {
            rows.push(row);
        }
    }
    Ok(State { position, rows })
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

/// A mirrored row as a JSON object without walcast's bookkeeping fields.
fn row_object(
    raw: &redis::Value,
    format: MirrorFormat,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut map = match (format, raw) {
        (MirrorFormat::Hash, redis::Value::Array(items)) => {
            let mut map = serde_json::Map::new();
            for pair in items.chunks(2) {
                if let [k, v] = pair {
                    let (Some(k), Some(v)) = (text(k), text(v)) else {
                        continue;
                    };
                    let value = serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v));
                    map.insert(k, value);
                }
            }
            map
        }
        (MirrorFormat::Json, value) => match serde_json::from_str(&text(value)?).ok()? {
            serde_json::Value::Object(map) => map,
            _ => return None,
        },
        _ => return None,
    };
    map.retain(|k, _| !k.starts_with("_event_id") && !k.starts_with("_walcast"));
    Some(map)
}
