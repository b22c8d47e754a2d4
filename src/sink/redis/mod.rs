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
//!
//! In order, overlapped: one writer task per sink encodes the batches and
//! sends them on the multiplexed connection in submission order, up to
//! `WINDOW` before the oldest has answered, so Redis runs one batch while the
//! next is encoded and on its way. Redis runs a connection's commands in the
//! order they arrive; in case they do not arrive in order (a reconnect, a
//! retry) each batch names the last event of the batches sent before it and
//! the script refuses it, writing nothing, unless those are in. The writer
//! then sends it again after them. Results are taken strictly in order: a
//! batch counts (and is reported durable) only after every batch before it.

mod keys;

pub use keys::{row_key, row_key_of, Keys};

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use redis::{Cmd, RedisResult, Script, Value};
use tokio::sync::{mpsc, oneshot, Mutex};

use super::{EventSink, SinkError, SinkFuture};
use crate::config::{MirrorFormat, MirrorRule, RedisConfig, TenantConfig, TenantId};
use crate::model::{
    row_json, write_datum_json, ChangeBody, ChangeEvent, Datum, EventId, Lsn, Op, RowImage,
    TableName,
};

/// Events per script call: bounds the script's run time and memory; a larger
/// transaction goes in several calls, each guarded by event id.
pub const BATCH_EVENTS: usize = 500;
/// Batches sent before the oldest one answered. Two keep Redis busy while the
/// next is encoded and sent; a third absorbs jitter between the two sides.
const WINDOW: usize = 3;
/// The longest wait between retries while Redis is unreachable.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Called with each batch of events once it is durably in Redis (see
/// `RedisSink::set_on_durable`).
pub type OnDurable = Arc<dyn Fn(&[ChangeEvent]) + Send + Sync>;

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
    let mut out = Vec::with_capacity(31);
    write_sortable(&mut out, id);
    String::from_utf8(out).unwrap_or_default()
}

fn write_sortable(out: &mut Vec<u8>, id: EventId) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{:020}-{:010}", id.commit_lsn.0, id.index);
}

/// What the script needs to know of one mirrored table, computed once.
struct TablePlan {
    rule: MirrorRule,
    /// `<prefix>:{t}:row:<table>:`
    row_prefix: String,
    /// Each index column with the prefix of its index sets.
    index: Vec<(String, String)>,
    rowindex: String,
    idxsets: String,
}

/// Turns batches into script calls (`EVALSHA` with the arguments laid out as
/// apply_batch.lua reads them) and sends them.
struct Encoder {
    tenant: TenantId,
    keys: Keys,
    config: RedisConfig,
    tables: HashMap<TableName, TablePlan>,
    script: Script,
}

/// A row write or removal of one entry, before it is encoded.
enum RowOp<'a> {
    Put {
        table: usize,
        key: String,
        /// The row cannot exist yet: no clean-up of an older version.
        new_row: bool,
        hot: bool,
        row: &'a RowImage,
    },
    Delete {
        table: usize,
        key: String,
    },
    Truncate {
        table: usize,
    },
}

/// The script's arguments being written.
struct Call<'a> {
    cmd: Cmd,
    tables: Vec<&'a TablePlan>,
    /// Reused for values that are built before they are written.
    scratch: Vec<u8>,
    timed: bool,
    /// The sortable id of the newest event in the call.
    newest: Option<EventId>,
}

impl Encoder {
    /// Starts a call: keys, header, the tables it touches.
    /// `capacity`: about how many arguments and bytes the call will hold (a
    /// command that grows as it is written is copied each time it does).
    fn begin<'a>(
        &'a self,
        capacity: (usize, usize),
        tables: Vec<&'a TablePlan>,
        end_lsn: Option<Lsn>,
        epoch: &str,
        after: Option<EventId>,
    ) -> Call<'a> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let mut cmd = Cmd::with_capacity(capacity.0, capacity.1);
        cmd.arg("EVALSHA")
            .arg(self.script.get_hash())
            .arg(4)
            .arg(self.keys.applied())
            .arg(self.keys.events())
            .arg(self.keys.epoch())
            .arg(self.keys.stream_times())
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
            .arg(after.map(sortable_id).unwrap_or_default())
            .arg(tables.len());
        for plan in &tables {
            cmd.arg(&plan.rowindex)
                .arg(&plan.idxsets)
                .arg(match plan.rule.format {
                    MirrorFormat::Hash => "h",
                    MirrorFormat::Json => "j",
                });
        }
        Call {
            cmd,
            tables,
            scratch: Vec::with_capacity(256),
            timed: self.config.stream_max_age.is_some(),
            newest: None,
        }
    }

    /// The mirrored tables these events touch, each once.
    fn tables_of<'a>(&'a self, events: &[ChangeEvent]) -> Vec<&'a TablePlan> {
        let mut tables: Vec<&TablePlan> = Vec::new();
        for event in events {
            if let Some(plan) = event.table().and_then(|t| self.tables.get(t)) {
                if !tables.iter().any(|p| std::ptr::eq(*p, plan)) {
                    tables.push(plan);
                }
            }
        }
        tables
    }

    /// The script call that writes `events` (`after`: the newest event sent
    /// before them in this session, for the order guard).
    fn events_call(
        &self,
        events: &[ChangeEvent],
        end_lsn: Option<Lsn>,
        epoch: &str,
        after: Option<EventId>,
    ) -> (Cmd, Option<EventId>) {
        // An event's JSON, and as much again for its row when mirrored.
        let bytes: usize = events.iter().map(|e| 2 * e.encoded().len() + 128).sum();
        let capacity = (32 * events.len() + 32, bytes + 1024);
        let mut call = self.begin(capacity, self.tables_of(events), end_lsn, epoch, after);
        for event in events {
            self.push_event(&mut call, event);
        }
        (call.cmd, call.newest)
    }

    /// The key of a mirrored row in `image`: the rule's key columns, else the
    /// event's replica identity columns.
    fn key_of(&self, rule: &MirrorRule, event: &ChangeEvent, image: &RowImage) -> Option<String> {
        if let Some(columns) = &rule.key {
            return row_key_of(image, columns.iter().map(String::as_str));
        }
        match &event.body {
            ChangeBody::Row { key: Some(key), .. } if !key.0.is_empty() => {
                row_key_of(image, key.0.iter().map(|(c, _)| &**c))
            }
            _ => None,
        }
    }

    fn push_event(&self, call: &mut Call<'_>, event: &ChangeEvent) {
        let mut ops: Vec<RowOp<'_>> = Vec::new();
        match &event.body {
            ChangeBody::Row {
                table, new, old, ..
            } => {
                if let Some(plan) = self.tables.get(table) {
                    let t = table_number(call, plan);
                    let rule = &plan.rule;
                    let image = if event.op == Op::Delete {
                        old.as_ref()
                    } else {
                        new.as_ref()
                    };
                    let key = image.and_then(|img| self.key_of(rule, event, img));
                    // An update that changed the key: the old row goes away.
                    if event.op == Op::Update {
                        if let Some(old_key) =
                            old.as_ref().and_then(|o| self.key_of(rule, event, o))
                        {
                            if Some(&old_key) != key.as_ref() {
                                ops.push(RowOp::Delete {
                                    table: t,
                                    key: format!("{}{old_key}", plan.row_prefix),
                                });
                            }
                        }
                    }
                    let key = key.map(|k| format!("{}{k}", plan.row_prefix));
                    match (key, event.op) {
                        (Some(key), Op::Delete) => ops.push(RowOp::Delete { table: t, key }),
                        (Some(key), _) => {
                            let row = new.as_ref().expect("insert and update carry a new row");
                            let hot = rule.hot_when.iter().all(|f| f.matches(row));
                            // An INSERT keyed by the replica identity cannot
                            // find an older version.
                            let new_row = event.op == Op::Insert && rule.key.is_none();
                            if !hot && rule.keep_cold_for.is_zero() && new_row {
                                // a cold INSERT leaves nothing to write or remove
                            } else if hot || !rule.keep_cold_for.is_zero() {
                                ops.push(RowOp::Put {
                                    table: t,
                                    key,
                                    new_row,
                                    hot,
                                    row,
                                });
                            } else {
                                ops.push(RowOp::Delete { table: t, key });
                            }
                        }
                        (None, _) => {
                            tracing::warn!(tenant = %self.tenant, %table, "row has no key columns; not mirrored (give the table a primary key or set the mirror rule's key)");
                        }
                    }
                }
            }
            ChangeBody::Truncate { table, .. } => {
                if let Some(plan) = self.tables.get(table) {
                    let t = table_number(call, plan);
                    ops.push(RowOp::Truncate { table: t });
                }
            }
            ChangeBody::Message { .. } => {}
        }
        call.scratch.clear();
        write_sortable(&mut call.scratch, event.id);
        call.cmd.arg(&call.scratch[..]);
        call.scratch.clear();
        // Writing into a Vec cannot fail.
        let _ = write!(call.scratch, "{}", event.id);
        call.cmd.arg(&call.scratch[..]).arg(&event.encoded()[..]);
        if call.timed {
            call.cmd.arg(
                event
                    .commit_ts_micros
                    .map(|m| m / 1_000_000 + 946_684_800)
                    .unwrap_or_default(),
            );
        }
        call.newest = Some(event.id);
        self.push_ops(call, &ops, Some(event.id));
    }

    /// Writes an entry's op count and ops (`event_id`: None for snapshot rows).
    fn push_ops(&self, call: &mut Call<'_>, ops: &[RowOp<'_>], event_id: Option<EventId>) {
        call.cmd.arg(ops.len());
        for op in ops {
            match op {
                RowOp::Put {
                    table,
                    key,
                    new_row,
                    hot,
                    row,
                } => {
                    let plan = call.tables[*table - 1];
                    if *hot {
                        let present: Vec<(&str, &Datum)> = plan
                            .index
                            .iter()
                            .filter_map(|(c, prefix)| row.get(c).map(|v| (prefix.as_str(), v)))
                            .collect();
                        call.cmd
                            .arg(if *new_row { "N" } else { "R" })
                            .arg(*table)
                            .arg(key)
                            .arg(present.len());
                        for (prefix, value) in present {
                            call.scratch.clear();
                            call.scratch.extend_from_slice(prefix.as_bytes());
                            write_datum_json(&mut call.scratch, value);
                            call.cmd.arg(&call.scratch[..]);
                        }
                    } else {
                        call.cmd
                            .arg("C")
                            .arg(*table)
                            .arg(key)
                            .arg(plan.rule.keep_cold_for.as_secs().max(1));
                    }
                    match plan.rule.format {
                        MirrorFormat::Hash => {
                            // The script adds `_event_id`.
                            call.cmd.arg(row.0.len());
                            for (column, value) in &row.0 {
                                call.scratch.clear();
                                write_datum_json(&mut call.scratch, value);
                                call.cmd.arg(column.as_bytes()).arg(&call.scratch[..]);
                            }
                        }
                        MirrorFormat::Json => {
                            let id =
                                event_id.map_or_else(|| "snapshot".to_owned(), |id| id.to_string());
                            call.cmd.arg(row_json(row, &[("_event_id", &id)]));
                        }
                    }
                }
                RowOp::Delete { table, key } => {
                    call.cmd.arg("D").arg(*table).arg(key);
                }
                RowOp::Truncate { table } => {
                    call.cmd.arg("T").arg(*table);
                }
            }
        }
    }

    /// A snapshot entry: row writes without a stream entry or guard.
    fn push_unguarded(&self, call: &mut Call<'_>, ops: &[RowOp<'_>]) {
        call.cmd.arg("").arg("").arg("");
        if call.timed {
            call.cmd.arg(0);
        }
        self.push_ops(call, ops, None);
    }

    /// Sends one call on its own, retrying while Redis is unreachable, and
    /// loading the script when Redis does not have it (`NOSCRIPT`).
    async fn send(&self, conn: &ConnectionManager, cmd: &Cmd) -> Result<(), SinkError> {
        let mut delay = Duration::from_millis(200);
        loop {
            let mut conn = conn.clone();
            let started = Instant::now();
            // A server error comes back as a value: make it an error.
            let result = conn
                .send_packed_command(cmd)
                .await
                .and_then(Value::extract_error);
            match self.judge(result, started) {
                Verdict::Applied => return Ok(()),
                Verdict::Failed(error) => return Err(error),
                Verdict::Again(error) => {
                    if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
                        // The script cache was flushed: load it and send again.
                        if self.script.load_async(&mut conn).await.is_ok() {
                            continue;
                        }
                    } else if is_order_refusal(&error) {
                        // Sent on its own after every batch before it answered:
                        // the watermark is not where this session left it.
                        return Err(SinkError::redis(error));
                    }
                    tracing::warn!(tenant = %self.tenant, %error, retry_in_ms = delay.as_millis() as u64, "redis unavailable; replication waits until it is back");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
    }

    /// What a script call's answer means, counted in the metrics.
    fn judge(&self, result: RedisResult<Value>, started: Instant) -> Verdict {
        let tenant = || self.tenant.to_string();
        match result {
            Ok(_) => {
                metrics::histogram!(crate::metrics::REDIS_WRITE_SECONDS, crate::metrics::TENANT => tenant())
                    .record(started.elapsed().as_secs_f64());
                Verdict::Applied
            }
            Err(error) => {
                if is_order_refusal(&error) {
                    // Expected after an earlier batch failed: not an error yet.
                    return Verdict::Again(error);
                }
                metrics::counter!(crate::metrics::REDIS_WRITE_ERRORS, crate::metrics::TENANT => tenant()).increment(1);
                if error.to_string().contains("WALCAST_EPOCH") {
                    Verdict::Failed(SinkError::Lost)
                } else if error.is_io_error()
                    || error.is_timeout()
                    || error.is_connection_dropped()
                    || error.is_connection_refusal()
                    || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
                    || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                {
                    Verdict::Again(error)
                } else {
                    Verdict::Failed(SinkError::redis(error))
                }
            }
        }
    }
}

fn is_order_refusal(error: &redis::RedisError) -> bool {
    error.to_string().contains("WALCAST_ORDER")
}

/// The table's number in this call (from 1, as the script counts).
fn table_number(call: &Call<'_>, plan: &TablePlan) -> usize {
    call.tables
        .iter()
        .position(|p| std::ptr::eq(*p, plan))
        .map(|i| i + 1)
        .expect("tables_of lists every mirrored table of the batch")
}

enum Verdict {
    Applied,
    /// Worth sending again (Redis unreachable, script not loaded, or sent
    /// ahead of a batch that has not landed).
    Again(redis::RedisError),
    Failed(SinkError),
}

/// One batch for the writer task.
struct Job {
    events: Vec<ChangeEvent>,
    end_lsn: Option<Lsn>,
    epoch: String,
    /// The first batch of a session: no order guard before it, and a failure
    /// of the previous session is forgotten.
    fresh: bool,
    done: oneshot::Sender<Result<(), SinkError>>,
}

type Request = Pin<Box<dyn Future<Output = RedisResult<Value>> + Send>>;

/// A batch sent and not yet taken back.
struct InFlight {
    job: Job,
    cmd: Arc<Cmd>,
    request: Option<Request>,
    answer: Option<RedisResult<Value>>,
    started: Instant,
}

enum Next {
    Job(Job),
    Answer,
    Closed,
}

/// The writer task: encodes batches, sends them in order (up to `WINDOW`
/// unanswered), takes the answers in order, reports each batch once durable.
async fn write_batches(
    encoder: Arc<Encoder>,
    conn: ConnectionManager,
    mut jobs: mpsc::Receiver<Job>,
    on_durable: Arc<RwLock<Option<OnDurable>>>,
) {
    let mut flight: VecDeque<InFlight> = VecDeque::new();
    // The newest event sent in this session: the next batch's order guard.
    let mut newest: Option<EventId> = None;
    // A batch failed: later ones of the session are not written.
    let mut broken = false;
    let mut closed = false;
    loop {
        if closed && flight.is_empty() {
            return;
        }
        let next = std::future::poll_fn(|cx| {
            // Every request is polled, oldest first: a request is handed to
            // the connection on its first poll, so they go out in order.
            for batch in flight.iter_mut() {
                if let Some(request) = batch.request.as_mut() {
                    if let Poll::Ready(answer) = request.as_mut().poll(cx) {
                        batch.answer = Some(answer);
                        batch.request = None;
                    }
                }
            }
            if flight.front().is_some_and(|b| b.answer.is_some()) {
                return Poll::Ready(Next::Answer);
            }
            if !closed && flight.len() < WINDOW {
                match jobs.poll_recv(cx) {
                    Poll::Ready(Some(job)) => return Poll::Ready(Next::Job(job)),
                    Poll::Ready(None) => return Poll::Ready(Next::Closed),
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await;
        match next {
            Next::Closed => closed = true,
            Next::Job(job) => {
                if job.fresh {
                    newest = None;
                    broken = false;
                }
                if broken {
                    let _ = job.done.send(Err(SinkError::Abandoned));
                    continue;
                }
                let (cmd, last) = encoder.events_call(&job.events, job.end_lsn, &job.epoch, newest);
                newest = last.or(newest);
                let cmd = Arc::new(cmd);
                let mut request_conn = conn.clone();
                let request_cmd = Arc::clone(&cmd);
                flight.push_back(InFlight {
                    job,
                    cmd,
                    request: Some(Box::pin(async move {
                        // A server error comes back as a value: make it an error.
                        request_conn
                            .send_packed_command(&request_cmd)
                            .await
                            .and_then(Value::extract_error)
                    })),
                    answer: None,
                    started: Instant::now(),
                });
            }
            Next::Answer => {
                let Some(mut batch) = flight.pop_front() else {
                    continue;
                };
                let answer = batch.answer.take().expect("answered");
                if broken {
                    let _ = batch.job.done.send(Err(SinkError::Abandoned));
                    continue;
                }
                let outcome = match encoder.judge(answer, batch.started) {
                    Verdict::Applied => Ok(()),
                    Verdict::Failed(error) => Err(error),
                    // Everything before it is in now: send it again on its own.
                    Verdict::Again(_) => encoder.send(&conn, &batch.cmd).await,
                };
                match outcome {
                    Ok(()) => {
                        let report = on_durable.read().unwrap_or_else(|p| p.into_inner()).clone();
                        if let Some(report) = report {
                            if !batch.job.events.is_empty() {
                                report(&batch.job.events);
                            }
                        }
                        let _ = batch.job.done.send(Ok(()));
                    }
                    Err(error) => {
                        broken = true;
                        let _ = batch.job.done.send(Err(error));
                    }
                }
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
    encoder: Arc<Encoder>,
    on_durable: Arc<RwLock<Option<OnDurable>>>,
    state: Mutex<State>,
}

struct State {
    buffer: Vec<ChangeEvent>,
    /// The epoch marker this process expects (set at start or by a snapshot).
    epoch: Option<String>,
    /// The writer task's queue, started with the first batch.
    writer: Option<mpsc::Sender<Job>>,
    /// The answers of the batches handed to the writer, oldest first.
    pending: VecDeque<oneshot::Receiver<Result<(), SinkError>>>,
    /// The next batch starts a session.
    fresh: bool,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisSink({})", self.keys.events())
    }
}

impl RedisSink {
    pub fn new(tenant: &TenantConfig, config: &RedisConfig, conn: ConnectionManager) -> RedisSink {
        let keys = Keys::new(&config.key_prefix, &tenant.id);
        let tables = tenant
            .mirror
            .iter()
            .map(|rule| {
                let table = &rule.table;
                let plan = TablePlan {
                    rule: rule.clone(),
                    row_prefix: keys.row_prefix(table),
                    index: rule
                        .index
                        .iter()
                        .map(|c| (c.clone(), keys.index_prefix(table, c)))
                        .collect(),
                    rowindex: keys.rowindex(table),
                    idxsets: keys.index_sets(table),
                };
                (table.clone(), plan)
            })
            .collect();
        RedisSink {
            tenant: tenant.id.clone(),
            keys: keys.clone(),
            conn,
            rules: tenant
                .mirror
                .iter()
                .map(|r| (r.table.clone(), r.clone()))
                .collect(),
            encoder: Arc::new(Encoder {
                tenant: tenant.id.clone(),
                keys,
                config: config.clone(),
                tables,
                script: Script::new(include_str!("apply_batch.lua")),
            }),
            on_durable: Arc::new(RwLock::new(None)),
            state: Mutex::new(State {
                buffer: Vec::new(),
                epoch: None,
                writer: None,
                pending: VecDeque::new(),
                fresh: true,
            }),
        }
    }

    /// Registers `f` to hear of every batch of events once it is durably in
    /// Redis, replacing any earlier one.
    ///
    /// `f` is called once per script call that wrote events (at most
    /// `BATCH_EVENTS` of them), strictly in stream order, only after that
    /// call succeeded, with exactly the events it wrote: unchanged TOAST
    /// columns already filled in from the mirror. A batch that only moves the
    /// watermark (no events) is not reported. After a reconnect Postgres sends
    /// unconfirmed transactions again, and `f` may then hear of events it was
    /// already given (dedup by event id); it never hears of an event that is
    /// not in Redis, and never misses one that went in during a session that
    /// goes on. It runs on the sink's writer task: keep it short (hand the
    /// events to a channel).
    pub fn set_on_durable(&self, f: OnDurable) {
        *self.on_durable.write().unwrap_or_else(|p| p.into_inner()) = Some(f);
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
        for table in self.rules.keys() {
            self.drop_legacy_rows(table).await?;
        }
        let encoder = &self.encoder;
        let mut call = encoder.begin(
            (64, 1024),
            encoder.tables.values().collect(),
            None,
            "",
            None,
        );
        for t in 1..=call.tables.len() {
            encoder.push_unguarded(&mut call, &[RowOp::Truncate { table: t }]);
        }
        encoder.send(&self.conn, &call.cmd).await
    }

    /// Removes the rows a version before the `rowindex` hash wrote (listed
    /// in a set `rows:<table>`, with one `rowidx:<table>:<key>` set per row),
    /// so that a resync after an upgrade leaves no stale rows behind.
    async fn drop_legacy_rows(&self, table: &TableName) -> Result<(), SinkError> {
        let base = self.keys.rowindex(table);
        let (prefix, table_part) = base
            .split_once(":rowindex:")
            .expect("rowindex keys contain :rowindex:");
        let rows = format!("{prefix}:rows:{table_part}");
        let mut conn = self.conn.clone();
        let kind: String = redis::cmd("TYPE")
            .arg(&rows)
            .query_async(&mut conn)
            .await
            .map_err(SinkError::redis)?;
        if kind != "set" {
            return Ok(());
        }
        let keys: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&rows)
            .query_async(&mut conn)
            .await
            .map_err(SinkError::redis)?;
        let row_prefix = self.keys.row_prefix(table);
        for chunk in keys.chunks(500) {
            let mut del = redis::cmd("UNLINK");
            for key in chunk {
                del.arg(key);
                if let Some(row) = key.strip_prefix(&row_prefix) {
                    del.arg(format!("{prefix}:rowidx:{table_part}:{row}"));
                }
            }
            del.query_async::<()>(&mut conn)
                .await
                .map_err(SinkError::redis)?;
        }
        redis::cmd("UNLINK")
            .arg(&rows)
            .query_async::<()>(&mut conn)
            .await
            .map_err(SinkError::redis)
    }

    /// Writes snapshot rows (no stream entries) of one table.
    pub async fn write_snapshot_rows(
        &self,
        table: &TableName,
        rows: &[RowImage],
        key_columns: &[String],
    ) -> Result<(), SinkError> {
        let encoder = &self.encoder;
        let Some(plan) = encoder.tables.get(table) else {
            return Ok(());
        };
        let mut call = encoder.begin(
            (32 * rows.len() + 32, 512 * rows.len() + 1024),
            vec![plan],
            None,
            "",
            None,
        );
        for row in rows {
            if !plan.rule.hot_when.iter().all(|f| f.matches(row)) {
                continue;
            }
            let Some(key) = row_key_of(row, key_columns.iter().map(String::as_str)) else {
                continue;
            };
            let key = format!("{}{key}", plan.row_prefix);
            // The mirror was cleared before the snapshot: every row is new.
            let op = RowOp::Put {
                table: 1,
                key,
                new_row: true,
                hot: true,
                row,
            };
            encoder.push_unguarded(&mut call, &[op]);
        }
        encoder.send(&self.conn, &call.cmd).await
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

    /// Waits until at most `keep` batches are unanswered. On a failure it
    /// still waits for every batch handed over (so nothing of this session
    /// is in flight afterwards) and returns the first error.
    async fn settle(state: &mut State, keep: usize) -> Result<(), SinkError> {
        let mut first_error = None;
        while state.pending.len() > keep || (first_error.is_some() && !state.pending.is_empty()) {
            let Some(answer) = state.pending.pop_front() else {
                break;
            };
            let result = answer.await.unwrap_or_else(|_| {
                Err(SinkError::Io(std::io::Error::other(
                    "the redis writer task ended abnormally",
                )))
            });
            if let Err(error) = result {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Hands one batch to the writer task (starting it if needed).
    async fn submit(
        &self,
        state: &mut State,
        events: Vec<ChangeEvent>,
        end_lsn: Option<Lsn>,
    ) -> Result<(), SinkError> {
        // Bounded: the batches sent plus one waiting to be encoded.
        Self::settle(state, WINDOW).await?;
        let writer = state.writer.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(write_batches(
                Arc::clone(&self.encoder),
                self.conn.clone(),
                rx,
                Arc::clone(&self.on_durable),
            ));
            tx
        });
        let (done, answer) = oneshot::channel();
        let job = Job {
            events,
            end_lsn,
            epoch: state.epoch.clone().unwrap_or_default(),
            fresh: std::mem::take(&mut state.fresh),
            done,
        };
        if writer.send(job).await.is_err() {
            state.writer = None;
            return Err(SinkError::Io(std::io::Error::other(
                "the redis writer task ended abnormally",
            )));
        }
        state.pending.push_back(answer);
        Ok(())
    }

    /// Writes the buffered events in chunks. With `wait`, returns once
    /// everything (and the watermark `end_lsn`) is in Redis; without, the
    /// last chunks may still be in flight while the caller goes on.
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
            // The fill reads the mirror: the batches in flight must be in first.
            Self::settle(state, 0).await?;
        }
        self.fill_unchanged(&mut events).await?;
        let mut rest = events.into_iter().peekable();
        loop {
            let chunk: Vec<ChangeEvent> = rest.by_ref().take(BATCH_EVENTS).collect();
            let last = rest.peek().is_none();
            self.submit(state, chunk, if last { end_lsn } else { None })
                .await?;
            if last {
                break;
            }
        }
        if wait {
            Self::settle(state, 0).await?;
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

    fn write_owned(&self, mut events: Vec<ChangeEvent>) -> SinkFuture<'_> {
        Box::pin(async move {
            let mut state = self.state.lock().await;
            if state.buffer.is_empty() {
                std::mem::swap(&mut state.buffer, &mut events);
            } else {
                state.buffer.append(&mut events);
            }
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
            // Batches of the ended session still in flight land first (their
            // entries are guarded by id, so the replay that follows is safe).
            if let Err(error) = Self::settle(&mut state, 0).await {
                tracing::debug!(tenant = %self.tenant, %error, "a batch of the ended session failed");
            }
            state.buffer.clear();
            state.fresh = true;
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
