//! The Redis sink: the hot-row mirror, the per-tenant event stream and the
//! applied watermark, written together by one Lua script per batch so that a
//! batch is in Redis whole or not at all.
//!
//! Exactly once: every entry carries its event id; the script skips an entry
//! whose id is not above the watermark (a replay after a crash), so Postgres's
//! at-least-once delivery becomes exactly-once in the stream and mirror. A
//! transaction is confirmed to Postgres only after the script that completes
//! it succeeded. Redis unreachable: the batch is retried until Redis is back;
//! replication waits meanwhile (the replication client keeps the walsender
//! alive). Redis that lost the tenant's data (no epoch marker) fails the batch
//! with `SinkError::Lost`: the tenant reconnects and re-snapshots.

mod keys;

pub use keys::{row_key, Keys};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use redis::Script;
use tokio::sync::Mutex;

use super::{EventSink, SinkError, SinkFuture};
use crate::config::{MirrorFormat, MirrorRule, RedisConfig, TenantConfig, TenantId};
use crate::model::{
    datum_json, row_json, ChangeBody, ChangeEvent, Datum, EventId, Lsn, Op, RowImage, TableName,
};

/// Events per script call: bounds the script's run time and memory; a larger
/// transaction goes in several calls, each guarded by event id.
pub const BATCH_EVENTS: usize = 500;
/// The longest wait between retries while Redis is unreachable.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Connects to Redis (with the configured timeouts) and checks it answers.
pub async fn connect(config: &RedisConfig) -> Result<ConnectionManager, SinkError> {
    let client = redis::Client::open(config.url.as_str()).map_err(SinkError::Connect)?;
    let manager_config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.command_timeout))
        .set_number_of_retries(1);
    ConnectionManager::new_with_config(client, manager_config)
        .await
        .map_err(SinkError::Connect)
}

/// Sortable form of an event id for the script's string comparison.
pub fn sortable_id(id: EventId) -> String {
    format!("{:020}-{:010}", id.commit_lsn.0, id.index)
}

/// What runs the batch script: shared with the task that writes a batch
/// while the next one is being built.
struct ScriptRunner {
    tenant: TenantId,
    keys: Keys,
    conn: ConnectionManager,
    config: RedisConfig,
    script: Script,
}

impl ScriptRunner {
    /// Runs the batch script, retrying while Redis is unreachable.
    async fn run(
        &self,
        entries: &[Entry],
        end_lsn: Option<Lsn>,
        epoch: &str,
    ) -> Result<u64, SinkError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let mut delay = Duration::from_millis(200);
        loop {
            let mut invocation = self.script.prepare_invoke();
            invocation
                .key(self.keys.applied())
                .key(self.keys.events())
                .key(self.keys.epoch())
                .key(self.keys.stream_times())
                .arg(epoch)
                .arg(end_lsn.map(|l| l.0.to_string()).unwrap_or_default())
                .arg(
                    self.config
                        .stream_max_len
                        .map(|n| n.to_string())
                        .unwrap_or_default(),
                )
                .arg(
                    self.config
                        .stream_max_age
                        .map(|age| now.saturating_sub(age.as_secs()).to_string())
                        .unwrap_or_default(),
                )
                .arg(self.keys.row_prefix())
                .arg(self.keys.rowidx_prefix())
                .arg(entries.len());
            for entry in entries {
                entry.push_args(&mut invocation);
            }
            let mut conn = self.conn.clone();
            let started = std::time::Instant::now();
            let result = invocation.invoke_async::<u64>(&mut conn).await;
            if result.is_ok() {
                metrics::histogram!(crate::metrics::REDIS_WRITE_SECONDS, crate::metrics::TENANT => self.tenant.to_string())
                    .record(started.elapsed().as_secs_f64());
            } else {
                metrics::counter!(crate::metrics::REDIS_WRITE_ERRORS, crate::metrics::TENANT => self.tenant.to_string()).increment(1);
            }
            match result {
                Ok(applied) => return Ok(applied),
                Err(error) if error.to_string().contains("WALCAST_EPOCH") => {
                    return Err(SinkError::Lost)
                }
                Err(error)
                    if error.is_io_error()
                        || error.is_timeout()
                        || error.is_connection_dropped()
                        || error.is_connection_refusal()
                        || error.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading) =>
                {
                    tracing::warn!(tenant = %self.tenant, %error, retry_in_ms = delay.as_millis() as u64, "redis unavailable; replication waits until it is back");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
                Err(error) => return Err(SinkError::redis(error)),
            }
        }
    }
}

/// One tenant's Redis sink.
pub struct RedisSink {
    tenant: TenantId,
    keys: Keys,
    conn: ConnectionManager,
    rules: HashMap<TableName, MirrorRule>,
    runner: Arc<ScriptRunner>,
    state: Mutex<State>,
    on_durable: std::sync::Mutex<Option<OnDurable>>,
}

/// Told each batch's events once the batch is in Redis.
pub type OnDurable = Arc<dyn Fn(&[ChangeEvent]) + Send + Sync>;

#[derive(Default)]
struct State {
    buffer: Vec<ChangeEvent>,
    /// The epoch marker this process expects (set at start or by a snapshot).
    epoch: Option<String>,
    /// The batch being written while the next one is built: at most one, so
    /// batches reach Redis in order.
    in_flight: Option<tokio::task::JoinHandle<Result<u64, SinkError>>>,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisSink({})", self.keys.events())
    }
}

impl RedisSink {
    pub fn new(tenant: &TenantConfig, config: &RedisConfig, conn: ConnectionManager) -> RedisSink {
        let keys = Keys::new(&config.key_prefix, &tenant.id);
        RedisSink {
            tenant: tenant.id.clone(),
            keys: keys.clone(),
            conn: conn.clone(),
            rules: tenant
                .mirror
                .iter()
                .map(|r| (r.table.clone(), r.clone()))
                .collect(),
            runner: Arc::new(ScriptRunner {
                tenant: tenant.id.clone(),
                keys,
                conn,
                config: config.clone(),
                script: Script::new(include_str!("apply_batch.lua")),
            }),
            state: Mutex::new(State::default()),
            on_durable: std::sync::Mutex::new(None),
        }
    }

    /// Registers `f`, called once per batch, in stream order, right after the
    /// batch's script succeeded, with exactly the events it wrote (TOAST
    /// filled). After a reconnect a replayed batch may be reported again
    /// (the receiver skips ids it has seen); an event is never reported
    /// before it is in Redis.
    pub fn set_on_durable(&self, f: OnDurable) {
        *self.on_durable.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn rules(&self) -> impl Iterator<Item = &MirrorRule> {
        self.rules.values()
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The tenant's epoch marker in Redis, if any (retrying while Redis is down).
    pub async fn read_epoch(&self) -> String {
        let key = self.keys.epoch();
        let epoch: Option<String> = self
            .retry("reading the epoch marker", |mut conn| {
                let key = key.clone();
                async move { redis::cmd("GET").arg(&key).query_async(&mut conn).await }
            })
            .await;
        epoch.unwrap_or_default()
    }

    /// Whether Redis answered and no longer holds the epoch marker this
    /// process wrote under (a Redis that does not answer is not "lost").
    pub async fn epoch_lost(&self) -> bool {
        let Some(expected) = self.state.lock().await.epoch.clone() else {
            return false;
        };
        let mut conn = self.conn.clone();
        match redis::cmd("GET")
            .arg(self.keys.epoch())
            .query_async::<Option<String>>(&mut conn)
            .await
        {
            Ok(current) => current.as_deref() != Some(expected.as_str()),
            Err(_) => false,
        }
    }

    /// Removes the epoch marker: the tenant's next session re-snapshots.
    pub async fn forget_epoch(&self) -> Result<(), SinkError> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(self.keys.epoch())
            .query_async::<()>(&mut conn)
            .await
            .map_err(SinkError::redis)
    }

    /// Adopts `epoch` as the marker this process writes under (the one in Redis).
    pub async fn set_expected_epoch(&self, epoch: String) {
        self.state.lock().await.epoch = Some(epoch);
    }

    /// Starts a snapshot: forgets the mirrored tables' rows.
    pub async fn clear_mirror(&self) -> Result<(), SinkError> {
        let entries: Vec<Entry> = self
            .rules
            .keys()
            .map(|table| Entry {
                sortable: String::new(),
                stream_id: String::new(),
                json: Vec::new(),
                commit_time: 0,
                ops: vec![Op_::Truncate {
                    rows: self.keys.rows(table),
                    idxsets: self.keys.index_sets(table),
                }],
            })
            .collect();
        self.run_script(&entries, None, "").await.map(|_| ())
    }

    /// Writes snapshot rows (no stream entries) of one table.
    pub async fn write_snapshot_rows(
        &self,
        table: &TableName,
        rows: &[RowImage],
        key_columns: &[String],
    ) -> Result<(), SinkError> {
        let Some(rule) = self.rules.get(table) else {
            return Ok(());
        };
        let columns: Vec<&str> = key_columns.iter().map(String::as_str).collect();
        let mut entries = Vec::new();
        for row in rows {
            if !rule.hot_when.iter().all(|f| f.matches(row)) {
                continue;
            }
            let Some(key) = row_key(row, &columns) else {
                continue;
            };
            entries.push(Entry {
                sortable: String::new(),
                stream_id: String::new(),
                json: Vec::new(),
                commit_time: 0,
                // The mirror was cleared before the snapshot: every row is new.
                ops: vec![self.put_op(rule, table, &key, row, "snapshot", true, true)],
            });
        }
        self.run_script(&entries, None, "").await.map(|_| ())
    }

    /// Ends a snapshot taken at `consistent_point`: writes a new epoch marker
    /// and remembers that the stream is only complete from that point on.
    pub async fn finish_snapshot(&self, consistent_point: Lsn) -> Result<String, SinkError> {
        let epoch = format!(
            "{}-{}",
            consistent_point,
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(self.keys.epoch())
            .arg(&epoch)
            .ignore()
            .cmd("HSET")
            .arg(self.keys.applied())
            .arg("snapshot_lsn")
            .arg(consistent_point.0)
            .arg("complete_from_id")
            .arg(format!("{}-0", consistent_point.0))
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(SinkError::redis)?;
        self.state.lock().await.epoch = Some(epoch.clone());
        Ok(epoch)
    }

    async fn retry<T, F, Fut>(&self, what: &str, mut f: F) -> T
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let mut delay = Duration::from_millis(200);
        loop {
            match f(self.conn.clone()).await {
                Ok(v) => return v,
                Err(error) => {
                    tracing::warn!(tenant = %self.tenant, %error, retry_in_ms = delay.as_millis() as u64, "redis unavailable while {what}; replication waits");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
    }

    /// Runs the batch script, retrying while Redis is unreachable.
    async fn run_script(
        &self,
        entries: &[Entry],
        end_lsn: Option<Lsn>,
        epoch: &str,
    ) -> Result<u64, SinkError> {
        self.runner.run(entries, end_lsn, epoch).await
    }

    #[allow(clippy::too_many_arguments)]
    fn put_op(
        &self,
        rule: &MirrorRule,
        table: &TableName,
        key: &str,
        row: &RowImage,
        event_id: &str,
        hot: bool,
        new_row: bool,
    ) -> Op_ {
        let index: Vec<String> = if hot {
            rule.index
                .iter()
                .filter_map(|c| {
                    row.get(c)
                        .map(|v| self.keys.index(table, c, &datum_json(v)))
                })
                .collect()
        } else {
            Vec::new()
        };
        let payload = match rule.format {
            MirrorFormat::Hash => {
                let mut fields = Vec::with_capacity(row.0.len() + 1);
                fields.push(("_event_id".to_owned(), event_id.to_owned()));
                fields.extend(row.0.iter().map(|(c, v)| (c.to_string(), datum_json(v))));
                Payload::Hash(fields)
            }
            MirrorFormat::Json => Payload::Json(row_json(row, &[("_event_id", event_id)])),
        };
        Op_::Put {
            new_row,
            key: self.keys.row(table, key),
            rows: self.keys.rows(table),
            rowidx: self.keys.rowidx(table, key),
            idxsets: self.keys.index_sets(table),
            ttl: if hot {
                0
            } else {
                rule.keep_cold_for.as_secs().max(1)
            },
            index,
            payload,
        }
    }

    /// Fills unchanged TOAST columns of mirrored rows from the mirror (or
    /// from rows written earlier in this batch), so that the stream and the
    /// mirror carry whole rows.
    async fn fill_unchanged(&self, events: &mut [ChangeEvent]) -> Result<(), SinkError> {
        let needs: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(&e.body, ChangeBody::Row { unchanged, table, .. } if !unchanged.is_empty() && self.rules.contains_key(table)))
            .map(|(i, _)| i)
            .collect();
        if needs.is_empty() {
            return Ok(());
        }
        // Rows written earlier in the batch win over what Redis holds.
        let mut written: HashMap<String, RowImage> = HashMap::new();
        let mut pipe = redis::pipe();
        let mut reads = Vec::new();
        for &i in &needs {
            let ChangeBody::Row {
                table,
                new: Some(new),
                ..
            } = &events[i].body
            else {
                continue;
            };
            let rule = &self.rules[table];
            let columns = self.key_columns(rule, &events[i]);
            let Some(key) = columns
                .and_then(|c| row_key(new, &c.iter().map(String::as_str).collect::<Vec<_>>()))
            else {
                continue;
            };
            let row_key = self.keys.row(table, &key);
            match rule.format {
                MirrorFormat::Hash => pipe.cmd("HGETALL").arg(&row_key),
                MirrorFormat::Json => pipe.cmd("GET").arg(&row_key),
            };
            reads.push((i, row_key, rule.format));
        }
        let mut conn = self.conn.clone();
        let values: Vec<redis::Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(SinkError::redis)?;
        let mut mirrored: HashMap<String, RowImage> = HashMap::new();
        for ((_, key, format), value) in reads.iter().zip(values) {
            if let Some(row) = parse_mirrored(&value, *format) {
                mirrored.insert(key.clone(), row);
            }
        }
        for (i, event) in events.iter_mut().enumerate() {
            let Some((_, key, _)) = reads.iter().find(|(j, _, _)| *j == i) else {
                // Remember full rows this batch writes, for later fills.
                if let ChangeBody::Row {
                    table,
                    new: Some(new),
                    unchanged,
                    ..
                } = &event.body
                {
                    if unchanged.is_empty() && self.rules.contains_key(table) {
                        if let Some(cols) = self.key_columns(&self.rules[table], event) {
                            if let Some(k) =
                                row_key(new, &cols.iter().map(String::as_str).collect::<Vec<_>>())
                            {
                                written.insert(self.keys.row(table, &k), new.clone());
                            }
                        }
                    }
                }
                continue;
            };
            let source = written.get(key).or_else(|| mirrored.get(key));
            let ChangeBody::Row {
                table,
                key: event_key,
                new: Some(new),
                old,
                unchanged,
            } = &event.body
            else {
                continue;
            };
            let Some(source) = source else { continue };
            let mut filled = new.clone();
            let mut still = Vec::new();
            for column in unchanged {
                match source.get(column) {
                    Some(v) => filled.0.push((column.clone(), v.clone())),
                    None => still.push(column.clone()),
                }
            }
            written.insert(key.clone(), filled.clone());
            *event = ChangeEvent::new(
                event.id,
                event.tenant.clone(),
                event.xid,
                event.commit_ts_micros,
                event.op,
                ChangeBody::Row {
                    table: table.clone(),
                    key: event_key.clone(),
                    new: Some(filled),
                    old: old.clone(),
                    unchanged: still,
                },
            );
        }
        Ok(())
    }

    /// The key columns of a mirrored table for this event.
    fn key_columns(&self, rule: &MirrorRule, event: &ChangeEvent) -> Option<Vec<String>> {
        if let Some(key) = &rule.key {
            return Some(key.clone());
        }
        match &event.body {
            ChangeBody::Row { key: Some(key), .. } if !key.0.is_empty() => {
                Some(key.0.iter().map(|(c, _)| c.to_string()).collect())
            }
            _ => None,
        }
    }

    fn entry(&self, event: &ChangeEvent) -> Entry {
        let mut ops = Vec::new();
        match &event.body {
            ChangeBody::Row {
                table, new, old, ..
            } => {
                if let Some(rule) = self.rules.get(table) {
                    let image = if event.op == Op::Delete {
                        old.as_ref()
                    } else {
                        new.as_ref()
                    };
                    let key = self.key_columns(rule, event).and_then(|cols| {
                        image.and_then(|img| {
                            row_key(img, &cols.iter().map(String::as_str).collect::<Vec<_>>())
                        })
                    });
                    // An update that changed the key: the old row goes away.
                    if event.op == Op::Update {
                        if let (Some(old), Some(cols)) = (old, self.key_columns(rule, event)) {
                            if let Some(old_key) =
                                row_key(old, &cols.iter().map(String::as_str).collect::<Vec<_>>())
                            {
                                if Some(&old_key) != key.as_ref() {
                                    ops.push(self.delete_op(table, &old_key));
                                }
                            }
                        }
                    }
                    match (key, event.op) {
                        (Some(key), Op::Delete) => ops.push(self.delete_op(table, &key)),
                        (Some(key), _) => {
                            let row = new.as_ref().expect("insert and update carry a new row");
                            let hot = rule.hot_when.iter().all(|f| f.matches(row));
                            // An INSERT keyed by the replica identity
                            // that is not hot leaves nothing to remove.
                            let new_row = event.op == Op::Insert && rule.key.is_none();
                            if !hot && rule.keep_cold_for.is_zero() && new_row {
                                // nothing to write
                            } else if hot || !rule.keep_cold_for.is_zero() {
                                ops.push(self.put_op(
                                    rule,
                                    table,
                                    &key,
                                    row,
                                    &event.id.to_string(),
                                    hot,
                                    // An INSERT keyed by the replica identity
                                    // cannot find an older version.
                                    new_row,
                                ));
                            } else {
                                ops.push(self.delete_op(table, &key));
                            }
                        }
                        (None, _) => {
                            tracing::warn!(tenant = %self.tenant, %table, "row has no key columns; not mirrored (give the table a primary key or set the mirror rule's key)");
                        }
                    }
                }
            }
            ChangeBody::Truncate { table, .. } => {
                if self.rules.contains_key(table) {
                    ops.push(Op_::Truncate {
                        rows: self.keys.rows(table),
                        idxsets: self.keys.index_sets(table),
                    });
                }
            }
            ChangeBody::Message { .. } => {}
        }
        Entry {
            sortable: sortable_id(event.id),
            stream_id: event.id.to_string(),
            json: event.encoded().to_vec(),
            commit_time: event
                .commit_ts_micros
                .map(|m| m / 1_000_000 + 946_684_800)
                .unwrap_or_default(),
            ops,
        }
    }

    fn delete_op(&self, table: &TableName, key: &str) -> Op_ {
        Op_::Delete {
            key: self.keys.row(table, key),
            rows: self.keys.rows(table),
            rowidx: self.keys.rowidx(table, key),
        }
    }

    /// Waits for the batch in flight, if any, and returns its error.
    async fn settle(state: &mut State) -> Result<(), SinkError> {
        match state.in_flight.take() {
            Some(handle) => match handle.await {
                Ok(result) => result.map(|_| ()),
                Err(join) => Err(SinkError::Io(std::io::Error::other(format!(
                    "the redis write task ended abnormally: {join}"
                )))),
            },
            None => Ok(()),
        }
    }

    /// Writes the buffered events in chunks. With `wait`, returns once
    /// everything (and the watermark `end_lsn`) is in Redis; without, the
    /// last chunk may still be in flight while the caller builds the next.
    async fn flush(
        &self,
        state: &mut State,
        end_lsn: Option<Lsn>,
        wait: bool,
    ) -> Result<(), SinkError> {
        let mut events = std::mem::take(&mut state.buffer);
        if events
            .iter()
            .any(|e| matches!(&e.body, ChangeBody::Row { unchanged, .. } if !unchanged.is_empty()))
        {
            // The fill reads the mirror: the batch in flight must be in first.
            Self::settle(state).await?;
        }
        self.fill_unchanged(&mut events).await?;
        let epoch = state.epoch.clone().unwrap_or_default();
        let on_durable = self
            .on_durable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let last = events.len().div_ceil(BATCH_EVENTS).max(1) - 1;
        let mut rest = events.into_iter();
        for n in 0..=last {
            let chunk: Vec<ChangeEvent> = rest.by_ref().take(BATCH_EVENTS).collect();
            let entries: Vec<Entry> = chunk.iter().map(|e| self.entry(e)).collect();
            let end_lsn = if n == last { end_lsn } else { None };
            // One batch in flight at most: batches reach Redis in order.
            Self::settle(state).await?;
            if wait && n == last {
                self.run_script(&entries, end_lsn, &epoch).await?;
                if let Some(f) = &on_durable {
                    f(&chunk);
                }
            } else {
                let runner = Arc::clone(&self.runner);
                let epoch = epoch.clone();
                let on_durable = on_durable.clone();
                state.in_flight = Some(tokio::spawn(async move {
                    let applied = runner.run(&entries, end_lsn, &epoch).await?;
                    if let Some(f) = &on_durable {
                        f(&chunk);
                    }
                    Ok(applied)
                }));
            }
        }
        Ok(())
    }
}

impl EventSink for RedisSink {
    fn write<'a>(&'a self, events: &'a [ChangeEvent]) -> SinkFuture<'a> {
        Box::pin(async move {
            let mut state = self.state.lock().await;
            state.buffer.extend_from_slice(events);
            if state.buffer.len() >= BATCH_EVENTS {
                self.flush(&mut state, None, false).await?;
            }
            Ok(())
        })
    }

    fn commit(&self, end_lsn: Option<Lsn>) -> SinkFuture<'_> {
        Box::pin(async move {
            let mut state = self.state.lock().await;
            self.flush(&mut state, end_lsn, true).await
        })
    }

    fn reset(&self) -> SinkFuture<'_> {
        Box::pin(async move {
            let mut state = self.state.lock().await;
            // A batch of the ended session still in flight lands first (its
            // entries are guarded by id, so the replay that follows is safe).
            if let Err(error) = Self::settle(&mut state).await {
                tracing::debug!(tenant = %self.tenant, %error, "a batch of the ended session failed");
            }
            state.buffer.clear();
            Ok(())
        })
    }
}

/// A mirrored row read back: hash fields or a JSON object, JSON values.
fn parse_mirrored(value: &redis::Value, format: MirrorFormat) -> Option<RowImage> {
    let to_datum = |text: &str| -> Datum {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Null) => Datum::Null,
            Ok(serde_json::Value::Bool(b)) => Datum::Bool(b),
            Ok(serde_json::Value::String(s)) => Datum::Text(s),
            Ok(serde_json::Value::Number(n)) if n.is_i64() => {
                Datum::Int(n.as_i64().unwrap_or_default())
            }
            Ok(serde_json::Value::Number(n)) => n
                .as_f64()
                .map(Datum::Float)
                .unwrap_or(Datum::Json(text.to_owned())),
            _ => Datum::Json(text.to_owned()),
        }
    };
    match (format, value) {
        (MirrorFormat::Hash, redis::Value::Array(items)) if !items.is_empty() => {
            let mut row = Vec::new();
            for pair in items.chunks(2) {
                if let [redis::Value::BulkString(k), redis::Value::BulkString(v)] = pair {
                    let k = String::from_utf8_lossy(k);
                    if k != "_event_id" {
                        row.push((k.as_ref().into(), to_datum(&String::from_utf8_lossy(v))));
                    }
                }
            }
            Some(RowImage(row))
        }
        (MirrorFormat::Hash, redis::Value::Map(pairs)) if !pairs.is_empty() => {
            let mut row = Vec::new();
            for (k, v) in pairs {
                if let (redis::Value::BulkString(k), redis::Value::BulkString(v)) = (k, v) {
                    let k = String::from_utf8_lossy(k);
                    if k != "_event_id" {
                        row.push((k.as_ref().into(), to_datum(&String::from_utf8_lossy(v))));
                    }
                }
            }
            Some(RowImage(row))
        }
        (MirrorFormat::Json, redis::Value::BulkString(text)) => {
            let serde_json::Value::Object(map) = serde_json::from_slice(text).ok()? else {
                return None;
            };
            Some(RowImage(
                map.into_iter()
                    .filter(|(k, _)| k != "_event_id")
                    .map(|(k, v)| (k.as_str().into(), to_datum(&v.to_string())))
                    .collect(),
            ))
        }
        _ => None,
    }
}

/// One script entry: an event (with its stream entry) or a snapshot row.
struct Entry {
    sortable: String,
    stream_id: String,
    json: Vec<u8>,
    commit_time: i64,
    ops: Vec<Op_>,
}

enum Payload {
    Hash(Vec<(String, String)>),
    Json(String),
}

#[allow(non_camel_case_types)]
enum Op_ {
    Put {
        /// The row cannot exist yet: no clean-up of an older version.
        new_row: bool,
        key: String,
        rows: String,
        rowidx: String,
        idxsets: String,
        ttl: u64,
        index: Vec<String>,
        payload: Payload,
    },
    Delete {
        key: String,
        rows: String,
        rowidx: String,
    },
    Truncate {
        rows: String,
        idxsets: String,
    },
}

impl Entry {
    fn push_args(&self, inv: &mut redis::ScriptInvocation<'_>) {
        inv.arg(&self.sortable)
            .arg(&self.stream_id)
            .arg(&self.json[..])
            .arg(self.commit_time)
            .arg(self.ops.len());
        for op in &self.ops {
            match op {
                Op_::Put {
                    new_row,
                    key,
                    rows,
                    rowidx,
                    idxsets,
                    ttl,
                    index,
                    payload,
                } => {
                    inv.arg(if *new_row { "N" } else { "R" })
                        .arg(key)
                        .arg(rows)
                        .arg(rowidx)
                        .arg(idxsets)
                        .arg(*ttl);
                    match payload {
                        Payload::Hash(_) => inv.arg("h"),
                        Payload::Json(_) => inv.arg("j"),
                    };
                    inv.arg(index.len());
                    for i in index {
                        inv.arg(i);
                    }
                    match payload {
                        Payload::Hash(fields) => {
                            inv.arg(fields.len());
                            for (f, v) in fields {
                                inv.arg(f).arg(v);
                            }
                        }
                        Payload::Json(json) => {
                            inv.arg(json);
                        }
                    }
                }
                Op_::Delete { key, rows, rowidx } => {
                    inv.arg("D").arg(key).arg(rows).arg(rowidx);
                }
                Op_::Truncate { rows, idxsets } => {
                    inv.arg("T").arg(rows).arg(idxsets);
                }
            }
        }
    }
}
