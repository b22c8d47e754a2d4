//! The Redis sink: the hot-row mirror, the per-tenant event stream and the
//! applied watermark, written together by one MULTI/EXEC transaction per
//! batch so that a batch is in Redis whole or not at all.
//!
//! A transaction is apply_batch.lua first (the epoch and order guards, every
//! row write that reads before it writes, the watermark), then plain
//! commands: each event's XADD, and the writes of new rows that nothing else
//! in the batch touches. Plain commands cost Redis about half of what the
//! same writes cost through Lua (docs/benchmarks.md).
//!
//! Exactly once: every event carries its event id. The stream refuses an
//! XADD whose id is not above its last one, and the script skips an entry
//! whose id is not above the watermark (a replay after a crash). The writer
//! reads the watermark when it opens its connection and leaves out what is
//! in already, so the plain row writes are never replays. That reading stays
//! true because the writer first closes every other writer connection of
//! its tenant (`CLIENT KILL`): a command an earlier process sent cannot run
//! after it. Where Redis refuses the CLIENT commands, every row goes through
//! the script. A transaction is confirmed to Postgres only after it
//! succeeded. Redis unreachable: the batch is retried on a new connection
//! until Redis is back; replication waits meanwhile (the replication client
//! keeps the walsender alive). Redis that lost the tenant's data (no epoch
//! marker, or no stream: XADD is NOMKSTREAM) fails the batch with
//! `SinkError::Lost`: the tenant reconnects and re-snapshots, which also
//! clears what such a batch's plain commands wrote.
//!
//! In order: the plain commands of a transaction run even when its script
//! refuses, so one batch must never overtake another. The writer task
//! therefore sends a batch only after the one before it was answered as
//! written, on a connection of its own, and encodes the next batch while
//! Redis runs the current one. That connection is walcast's own (`resp`):
//! a batch's commands are written straight into one buffer.

mod keys;
pub mod resp;

use keys::push_row_key;
pub use keys::{row_key, row_key_of, Keys};

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::{Cmd, RedisResult, Script, Value};
use resp::Args;
use tokio::sync::{mpsc, oneshot, Mutex};

use super::{EventSink, SinkError, SinkFuture};
use crate::config::{MirrorFormat, MirrorRule, RedisConfig, TenantConfig, TenantId};
use crate::model::{
    row_json, write_datum_json, ChangeBody, ChangeEvent, Datum, DurableEvents, EventId, HubFeed,
    HubInput, Lsn, Op, RowImage, TableName,
};

/// Events per script call: bounds the script's run time and memory; a larger
/// transaction goes in several calls, each guarded by event id.
pub const BATCH_EVENTS: usize = 500;
/// Batches handed to the writer task and not yet answered: the one Redis
/// runs, the next (encoded meanwhile), and one waiting.
const WINDOW: usize = 3;
/// Creates an empty stream (a consumer group made with MKSTREAM, then
/// dropped) unless there is one.
const CREATE_STREAM: &str = "if redis.call('EXISTS', KEYS[1]) == 0 then \
    redis.call('XGROUP', 'CREATE', KEYS[1], 'walcast-init', '$', 'MKSTREAM') \
    redis.call('XGROUP', 'DESTROY', KEYS[1], 'walcast-init') end";
/// The script's text, sent whole inside transactions (`EVAL`).
const SCRIPT_SOURCE: &str = include_str!("apply_batch.lua");
/// The longest wait between retries while Redis is unreachable.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// A client for the configured URL whose TCP connections send at once
/// (TCP_NODELAY; redis-rs leaves Nagle's algorithm on, which holds a small
/// request back while earlier bytes are unacknowledged).
///
/// Also makes aws-lc-rs the process's TLS crypto provider: two crates in the
/// tree enable rustls's `ring` and `aws-lc-rs` features both, and rustls then
/// cannot pick one for redis-rs's `rediss://` connections (it panicked).
pub fn client(config: &RedisConfig) -> RedisResult<redis::Client> {
    // Err: a provider is installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let info = redis::IntoConnectionInfo::into_connection_info(config.url.as_str())?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    let info = info.set_tcp_settings(tcp);
    if config.tls == crate::config::RedisTls::default() {
        return redis::Client::open(info);
    }
    let read = |path: &std::path::Path, key: &str| {
        std::fs::read(path).map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::Io,
                "could not read a [redis] TLS file",
                format!("{key} {}: {e}", path.display()),
            ))
        })
    };
    let root_cert = match &config.tls.ca_file {
        Some(path) => Some(read(path, "tls_ca_file")?),
        None => None,
    };
    let client_tls = match &config.tls.client_cert {
        Some((cert, key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert, "tls_cert_file")?,
            client_key: read(key, "tls_key_file")?,
        }),
        None => None,
    };
    redis::Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
}

/// What a failed `rediss://` connection's error text means for the
/// operator, when it is about the certificate.
pub fn tls_problem(text: &str) -> Option<&'static str> {
    use crate::report::{cert_failure, CertFailure};
    Some(match cert_failure(text)? {
        CertFailure::UnknownCa => "redis's certificate is not signed by a CA walcast trusts (unknown CA): set [redis] tls_ca_file to the CA certificate that signed it",
        CertFailure::NameMismatch => "redis's certificate is not for the host in [redis] url (name mismatch): write the host name the certificate names",
        CertFailure::NotYetValid => "redis's certificate is not valid yet: check the clocks of this host and Redis's, or the certificate's start date",
        CertFailure::Expired => "redis's certificate has expired: renew it (tls-cert-file in redis.conf)",
        CertFailure::ClientCertRequired => "redis asks for a client certificate (tls-auth-clients): set [redis] tls_cert_file and tls_key_file",
        CertFailure::Other => "redis's certificate does not verify: check [redis] tls_ca_file and the server's certificate",
    })
}

/// Connects to Redis (with the configured timeouts) and checks it answers.
pub async fn connect(config: &RedisConfig) -> Result<ConnectionManager, SinkError> {
    let client = client(config).map_err(SinkError::Connect)?;
    let manager_config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.command_timeout))
        .set_number_of_retries(1);
    ConnectionManager::new_with_config(client, manager_config)
        .await
        .map_err(SinkError::Connect)
}

/// How many bytes the transaction that writes `events` as one batch takes
/// (MULTI, the script call, the plain commands), new rows going plain as on
/// a writer's own connection. For benchmarks: benches/pgoutput.rs times the
/// encoding of the stream it decodes.
pub fn encoded_batch_len(
    tenant: &TenantConfig,
    config: &RedisConfig,
    events: &[ChangeEvent],
) -> usize {
    let batch = Encoder::new(tenant, config).batch(events, None, "1", None, None, true);
    batch.body.iter().map(Bytes::len).sum()
}

/// Sortable form of an event id for the script's string comparison.
pub fn sortable_id(id: EventId) -> String {
    let mut out = Vec::with_capacity(31);
    write_sortable(&mut out, id);
    String::from_utf8(out).unwrap_or_default()
}

fn write_sortable(out: &mut Vec<u8>, id: EventId) {
    // `{:020}-{:010}`, without the formatting machinery (once per event).
    let mut buf = itoa::Buffer::new();
    let lsn = buf.format(id.commit_lsn.0);
    out.resize(out.len() + 20 - lsn.len(), b'0');
    out.extend_from_slice(lsn.as_bytes());
    out.push(b'-');
    let index = buf.format(id.index);
    out.resize(out.len() + 10 - index.len(), b'0');
    out.extend_from_slice(index.as_bytes());
}

/// An event id as the stream id `<commit lsn>-<index>` (its Display form).
fn write_event_id(out: &mut Vec<u8>, id: EventId) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(id.commit_lsn.0).as_bytes());
    out.push(b'-');
    out.extend_from_slice(buf.format(id.index).as_bytes());
}

/// What the script needs to know of one mirrored table, computed once.
struct TablePlan {
    rule: MirrorRule,
    /// Without a configured key: the table's primary key (or replica
    /// identity index), read from the catalog when the tenant starts.
    default_key: std::sync::OnceLock<Vec<String>>,
    /// `<prefix>:{t}:row:<table>:`
    row_prefix: String,
    /// Each index column with the prefix of its index sets.
    index: Vec<(String, String)>,
    rowindex: String,
    idxsets: String,
}

impl TablePlan {
    /// The configured key, else the catalog's (once known).
    fn key_columns(&self) -> Option<&[String]> {
        self.rule
            .key
            .as_deref()
            .or_else(|| self.default_key.get().map(Vec::as_slice))
    }
}

/// Turns batches into transactions (the script call, laid out as
/// apply_batch.lua reads it, then plain commands) and sends them.
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

impl RowOp<'_> {
    fn key(&self) -> Option<&str> {
        match self {
            RowOp::Put { key, .. } | RowOp::Delete { key, .. } => Some(key),
            RowOp::Truncate { .. } => None,
        }
    }
}

/// The script's arguments being written.
struct Call<'a> {
    cmd: Args,
    tables: Vec<&'a TablePlan>,
    /// Reused for values that are built before they are written.
    scratch: Vec<u8>,
}

/// What one reply of a batch's `EXEC` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// The script: guards, row clean-ups, the watermark.
    Script,
    /// An event's `XADD … NOMKSTREAM`.
    Xadd,
    /// A plain write of new rows, their index sets or commit times.
    Write,
}

/// One batch as a transaction: `MULTI`, the script, plain commands (the
/// body); `EXEC` follows on its own.
struct Batch {
    /// The body's commands, encoded: `MULTI` and the script call, then the
    /// plain commands (two parts, so that neither is copied into the other).
    body: [Bytes; 2],
    /// How many commands the body holds (`MULTI` included).
    commands: usize,
    replies: Vec<Reply>,
    /// The newest event written (the next batch's order guard).
    newest: Option<EventId>,
    /// New rows went as plain commands.
    plain_rows: usize,
}

/// The plain writes of new rows of one table, collected over a batch so
/// that each set and the row-index hash get one command.
#[derive(Default)]
struct NewRows<'a> {
    /// Row-index entries: row key, where its index sets ("\n"-separated)
    /// are in `sets`.
    rowindex: Vec<(&'a str, std::ops::Range<usize>)>,
    sets: Vec<u8>,
    /// Index set -> the rows that join it.
    members: Vec<(Vec<u8>, Vec<&'a str>)>,
}

impl Encoder {
    fn new(tenant: &TenantConfig, config: &RedisConfig) -> Encoder {
        let keys = Keys::new(&config.key_prefix, &tenant.id);
        let tables = tenant
            .mirror
            .iter()
            .map(|rule| {
                let table = &rule.table;
                let plan = TablePlan {
                    rule: rule.clone(),
                    default_key: std::sync::OnceLock::new(),
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
        Encoder {
            tenant: tenant.id.clone(),
            keys,
            config: config.clone(),
            tables,
            script: Script::new(SCRIPT_SOURCE),
        }
    }

    /// Starts a script call: keys, header, the tables it touches.
    /// `capacity`: about how many bytes the call will hold (a command that
    /// grows as it is written is copied each time it does).
    /// `eval`: the script's text (inside a transaction, where `NOSCRIPT`
    /// would not stop the commands after it) rather than its hash.
    #[allow(clippy::too_many_arguments)]
    fn begin<'a>(
        &'a self,
        capacity: usize,
        tables: Vec<&'a TablePlan>,
        end_lsn: Option<Lsn>,
        epoch: &str,
        after: Option<EventId>,
        newest: Option<EventId>,
        eval: bool,
    ) -> Call<'a> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let source = if eval { SCRIPT_SOURCE.len() } else { 0 };
        let mut cmd = Args::with_capacity(capacity + source);
        if eval {
            cmd.arg("EVAL").arg(SCRIPT_SOURCE);
        } else {
            cmd.arg("EVALSHA").arg(self.script.get_hash());
        }
        cmd.arg(4)
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
            .arg(newest.map(sortable_id).unwrap_or_default())
            .arg(newest.map(|id| id.to_string()).unwrap_or_default())
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
        }
    }

    /// The mirrored tables these events touch, each once.
    fn tables_of<'a, 'e>(
        &'a self,
        events: impl IntoIterator<Item = &'e ChangeEvent>,
    ) -> Vec<&'a TablePlan> {
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

    /// The transaction that writes `events` (those after `applied` only:
    /// the ones at or before it are in Redis already). `after`: the newest
    /// event sent before them in this session, for the order guard.
    /// `plain_rows`: new rows that no other entry of the batch touches may
    /// be written with plain commands (only when no earlier writer's
    /// command can still run: see `open_session`).
    fn batch(
        &self,
        events: &[ChangeEvent],
        end_lsn: Option<Lsn>,
        epoch: &str,
        after: Option<EventId>,
        applied: Option<EventId>,
        plain_rows: bool,
    ) -> Batch {
        let events: Vec<&ChangeEvent> = events
            .iter()
            .filter(|e| applied.is_none_or(|a| e.id > a))
            .collect();
        let tables = self.tables_of(events.iter().copied());
        // Every event's ops in one list; `spans[i]`: event i's part of it.
        let mut ops: Vec<RowOp<'_>> = Vec::with_capacity(events.len());
        let spans: Vec<std::ops::Range<usize>> = events
            .iter()
            .map(|e| {
                let start = ops.len();
                self.ops_of(&tables, e, &mut ops);
                start..ops.len()
            })
            .collect();
        // A new row goes plain only when nothing else in the batch touches
        // its key or its table's rows as a whole: then the order between
        // the script's writes and the plain ones does not matter.
        let is_new_row = |op: &RowOp<'_>| {
            matches!(
                op,
                RowOp::Put {
                    new_row: true,
                    hot: true,
                    ..
                }
            )
        };
        // Only new rows (a bulk load): two of them can share a key only
        // when the table has no key of its own (REPLICA IDENTITY FULL), and
        // then writing both is what the script would do too.
        let only_new_rows = ops.iter().all(is_new_row);
        let mut touched: HashMap<&str, u32> = HashMap::new();
        let mut truncated = vec![false; tables.len() + 1];
        if plain_rows && !only_new_rows {
            for op in &ops {
                match op {
                    RowOp::Truncate { table } => truncated[*table] = true,
                    _ => {
                        if let Some(key) = op.key() {
                            *touched.entry(key).or_default() += 1;
                        }
                    }
                }
            }
        }
        let goes_plain = |op: &RowOp<'_>| match op {
            RowOp::Put {
                table,
                key,
                new_row: true,
                hot: true,
                ..
            } => {
                plain_rows
                    && (only_new_rows
                        || (!truncated[*table] && touched.get(key.as_str()) == Some(&1)))
            }
            _ => false,
        };

        let newest = events.last().map(|e| e.id);
        let script_bytes: usize = ops.iter().filter(|op| !goes_plain(op)).count() * 512;
        let mut call = self.begin(
            script_bytes + 1024,
            tables,
            end_lsn,
            epoch,
            after,
            newest,
            true,
        );
        // The plain commands, encoded; they follow the script call, which
        // is complete only after the last event.
        let mut plain: Vec<u8> = Vec::with_capacity(events.len() * 640);
        let mut replies = vec![Reply::Script];
        let mut args = Args::with_capacity(512);
        let mut new_rows: Vec<NewRows> = (0..=call.tables.len())
            .map(|_| NewRows::default())
            .collect();
        let mut plain_count = 0;
        let mut times = self.config.stream_max_age.map(|_| {
            let mut zadd = Args::with_capacity(32 * events.len() + 64);
            zadd.arg("ZADD").arg(self.keys.stream_times()).arg("NX");
            zadd
        });
        let stream = self.keys.events();
        let mut id_buf: Vec<u8> = Vec::with_capacity(32);
        for (event, span) in events.iter().zip(spans) {
            let ops = &ops[span];
            id_buf.clear();
            write_event_id(&mut id_buf, event.id);
            let id = &id_buf[..];
            let scripted: Vec<&RowOp<'_>> = ops.iter().filter(|op| !goes_plain(op)).collect();
            if !scripted.is_empty() {
                call.scratch.clear();
                write_sortable(&mut call.scratch, event.id);
                call.cmd.arg(&call.scratch[..]).arg(id);
                self.push_ops(&mut call, &scripted, Some(event.id));
            }
            for op in ops.iter().filter(|op| goes_plain(op)) {
                plain_count += 1;
                let RowOp::Put {
                    table, key, row, ..
                } = op
                else {
                    continue;
                };
                let plan = call.tables[*table - 1];
                args.clear();
                match plan.rule.format {
                    MirrorFormat::Hash => {
                        args.arg("HSET").arg(key).arg("_event_id").arg(id);
                        for (column, value) in &row.0 {
                            call.scratch.clear();
                            write_datum_json(&mut call.scratch, value);
                            args.arg(column.as_bytes()).arg(&call.scratch[..]);
                        }
                    }
                    MirrorFormat::Json => {
                        let id = String::from_utf8_lossy(id);
                        args.arg("SET")
                            .arg(key)
                            .arg(row_json(row, &[("_event_id", &id)]));
                    }
                }
                args.write_to(&mut plain);
                replies.push(Reply::Write);
                let rows = &mut new_rows[*table];
                let first = rows.sets.len();
                for (column, prefix) in &plan.index {
                    let Some(value) = row.get(column) else {
                        continue;
                    };
                    if rows.sets.len() > first {
                        rows.sets.push(b'\n');
                    }
                    let start = rows.sets.len();
                    rows.sets.extend_from_slice(prefix.as_bytes());
                    write_datum_json(&mut rows.sets, value);
                    let set = &rows.sets[start..];
                    match rows.members.iter_mut().find(|(s, _)| s == set) {
                        Some((_, members)) => members.push(key),
                        None => rows.members.push((set.to_vec(), vec![key])),
                    }
                }
                rows.rowindex.push((key, first..rows.sets.len()));
            }
            let encoded = event.encoded();
            if epoch.is_empty() {
                resp::command(
                    &mut plain,
                    &[b"XADD", stream.as_bytes(), id, b"event", &encoded[..]],
                );
            } else {
                resp::command(
                    &mut plain,
                    &[
                        b"XADD",
                        stream.as_bytes(),
                        b"NOMKSTREAM",
                        id,
                        b"event",
                        &encoded[..],
                    ],
                );
            }
            replies.push(Reply::Xadd);
            if let Some(zadd) = times.as_mut() {
                zadd.arg(
                    event
                        .commit_ts_micros
                        .map(|m| m / 1_000_000 + 946_684_800)
                        .unwrap_or_default(),
                )
                .arg(id);
            }
        }
        for (table, rows) in new_rows.iter().enumerate().skip(1) {
            if rows.rowindex.is_empty() {
                continue;
            }
            let plan = call.tables[table - 1];
            args.clear();
            args.arg("HSET").arg(&plan.rowindex);
            for (key, sets) in &rows.rowindex {
                args.arg(*key).arg(&rows.sets[sets.clone()]);
            }
            args.write_to(&mut plain);
            replies.push(Reply::Write);
            if !rows.members.is_empty() {
                let mut registry = Args::with_capacity(256);
                registry.arg("SADD").arg(&plan.idxsets);
                for (set, members) in &rows.members {
                    registry.arg(&set[..]);
                    args.clear();
                    args.arg("SADD").arg(&set[..]).arg(members);
                    args.write_to(&mut plain);
                    replies.push(Reply::Write);
                }
                registry.write_to(&mut plain);
                replies.push(Reply::Write);
            }
        }
        if let Some(zadd) = times {
            if !events.is_empty() {
                zadd.write_to(&mut plain);
                replies.push(Reply::Write);
            }
        }
        // The script runs first: its guards come before the plain writes.
        // EXEC is sent on its own (see write_batches).
        let mut head = Vec::with_capacity(call.cmd.encoded_len() + 64);
        resp::command(&mut head, &[b"MULTI"]);
        call.cmd.write_to(&mut head);
        Batch {
            body: [head.into(), plain.into()],
            commands: replies.len() + 1,
            replies,
            newest,
            plain_rows: plain_count,
        }
    }

    /// The full key of a mirrored row in `image` (`plan`'s row prefix and
    /// the key part): the rule's key columns, else the event's replica
    /// identity columns.
    fn key_of(&self, plan: &TablePlan, event: &ChangeEvent, image: &RowImage) -> Option<String> {
        let mut key = String::with_capacity(plan.row_prefix.len() + 24);
        key.push_str(&plan.row_prefix);
        let complete = if let Some(columns) = plan.key_columns() {
            push_row_key(&mut key, image, columns.iter().map(String::as_str))
        } else {
            match &event.body {
                ChangeBody::Row { key: Some(k), .. } if !k.0.is_empty() => {
                    push_row_key(&mut key, image, k.0.iter().map(|(c, _)| &**c))
                }
                _ => false,
            }
        };
        complete.then_some(key)
    }

    /// The mirror writes of one event (`tables`: the call's table list).
    fn ops_of<'a>(&self, tables: &[&TablePlan], event: &'a ChangeEvent, ops: &mut Vec<RowOp<'a>>) {
        let number = |plan: &TablePlan| {
            tables
                .iter()
                .position(|p| std::ptr::eq(*p, plan))
                .map(|i| i + 1)
                .expect("the call lists every mirrored table of the batch")
        };
        match &event.body {
            ChangeBody::Row {
                table, new, old, ..
            } => {
                if let Some(plan) = self.tables.get(table) {
                    let t = number(plan);
                    let rule = &plan.rule;
                    let image = if event.op == Op::Delete {
                        old.as_ref()
                    } else {
                        new.as_ref()
                    };
                    let key = image.and_then(|img| self.key_of(plan, event, img));
                    // An update that changed the key: the old row goes away.
                    if event.op == Op::Update {
                        if let Some(old_key) =
                            old.as_ref().and_then(|o| self.key_of(plan, event, o))
                        {
                            if Some(&old_key) != key.as_ref() {
                                ops.push(RowOp::Delete {
                                    table: t,
                                    key: old_key,
                                });
                            }
                        }
                    }
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
                    ops.push(RowOp::Truncate {
                        table: number(plan),
                    });
                }
            }
            ChangeBody::Message { .. } => {}
        }
    }

    /// Writes an entry's op count and ops (`event_id`: None for snapshot rows).
    fn push_ops(&self, call: &mut Call<'_>, ops: &[&RowOp<'_>], event_id: Option<EventId>) {
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

    /// A snapshot entry: row writes without a guard.
    fn push_unguarded(&self, call: &mut Call<'_>, ops: &[RowOp<'_>]) {
        call.cmd.arg("").arg("");
        let ops: Vec<&RowOp<'_>> = ops.iter().collect();
        self.push_ops(call, &ops, None);
    }

    /// Sends one script call on its own (a snapshot's), retrying while
    /// Redis is unreachable, and loading the script when Redis does not have
    /// it (`NOSCRIPT`).
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
                        if self.script.load_async(&mut conn).await.is_ok() {
                            // The script cache lacked it: loaded, send again.
                            continue;
                        }
                        // Not counted by judge; loading failed, so it is one.
                        metrics::counter!(crate::metrics::REDIS_WRITE_ERRORS, crate::metrics::TENANT => self.tenant.to_string()).increment(1);
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
                let no_script =
                    error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript);
                // NOSCRIPT is no failed write: Redis's script cache does not
                // have the script yet (every fresh server, and after a restart
                // or SCRIPT FLUSH); `send` loads it and sends again. The batch
                // writer counts it where it retries (and logs).
                if !no_script {
                    metrics::counter!(crate::metrics::REDIS_WRITE_ERRORS, crate::metrics::TENANT => tenant()).increment(1);
                }
                let text = error.to_string();
                if text.contains("WALCAST_EPOCH") {
                    Verdict::Failed(SinkError::Lost)
                } else if text.contains("WALCAST_ORDER") {
                    // The batches sent before this one were answered as
                    // written, and Redis does not have them (a failover to a
                    // replica that had not received them): the stream has a
                    // hole that only a new snapshot (and a gap) can account for.
                    tracing::error!(tenant = %self.tenant, "redis no longer holds batches it acknowledged (a failover to a lagging replica?); re-snapshotting");
                    Verdict::Failed(SinkError::Lost)
                } else if is_unavailable(&error)
                    || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                {
                    Verdict::Again(error)
                } else {
                    Verdict::Failed(SinkError::redis(error))
                }
            }
        }
    }

    /// What a batch's `EXEC` answered, reply by reply.
    fn judge_batch(
        &self,
        batch: &Batch,
        queued: RedisResult<Vec<resp::Reply>>,
        result: RedisResult<resp::Reply>,
        started: Instant,
    ) -> Verdict {
        // A command Redis would not queue (out of memory, too few replicas)
        // made EXEC discard the transaction: its own error says why.
        if let Ok(queued) = &queued {
            if let Some(resp::Reply::Error(error)) =
                queued.iter().find(|v| matches!(v, resp::Reply::Error(_)))
            {
                return self.judge(Err(resp::server_error(error)), started);
            }
        }
        let replies = match result.and_then(|exec| queued.map(|_| exec)) {
            Ok(resp::Reply::Array(replies)) if replies.len() == batch.replies.len() => replies,
            Ok(other) => {
                return self.judge(
                    Err(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "unexpected answer to EXEC",
                        format!("{other:?}"),
                    ))),
                    started,
                )
            }
            Err(error) => return self.judge(Err(error), started),
        };
        // The script's verdict first: a lost epoch explains the rest.
        if let Some(resp::Reply::Error(error)) = replies.first() {
            return self.judge(Err(resp::server_error(error)), started);
        }
        for (reply, kind) in replies.into_iter().zip(&batch.replies) {
            match (kind, reply) {
                // The stream is gone while the epoch marker is there (deleted
                // or evicted): events would silently go nowhere.
                (Reply::Xadd, resp::Reply::Nil) => {
                    tracing::error!(tenant = %self.tenant, stream = %self.keys.events(), "the event stream is gone from redis while its epoch marker is there; re-snapshotting");
                    return Verdict::Failed(SinkError::Lost);
                }
                // In the stream already: a command of an earlier writer ran
                // after this session read the watermark (its script guarded
                // the rows).
                (Reply::Xadd, resp::Reply::Error(error)) if error.contains("equal or smaller") => {}
                (_, resp::Reply::Error(error)) => {
                    return self.judge(Err(resp::server_error(&error)), started);
                }
                _ => {}
            }
        }
        self.judge(Ok(Value::Okay), started)
    }
}

/// Redis did not answer, or cannot yet: worth trying again later.
fn is_unavailable(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
}

enum Verdict {
    Applied,
    /// Worth sending again (Redis unreachable, or the script not loaded).
    Again(redis::RedisError),
    Failed(SinkError),
}

/// One batch for the writer task.
struct Job {
    /// Shared with the task that encodes it ahead.
    events: Arc<Vec<ChangeEvent>>,
    end_lsn: Option<Lsn>,
    epoch: String,
    /// The first batch of a session: no order guard before it, and a failure
    /// of the previous session is forgotten.
    fresh: bool,
    done: oneshot::Sender<Result<(), SinkError>>,
}

/// The writer's own connection, and what it learnt when it was opened.
struct Session {
    conn: resp::Connection,
    /// Every other writer connection of this tenant was closed before this
    /// one wrote: nothing an earlier writer sent can run from now on, so the
    /// watermark read below stays true and new rows may go as plain
    /// commands, unguarded.
    fenced: bool,
    /// The newest event in Redis when the session began.
    applied: Option<EventId>,
    /// The newest event this session wrote (the next batch's order guard).
    newest: Option<EventId>,
}

/// Opens the writer's connection: names it, closes every other connection
/// of this tenant's writer (an earlier process's, or this one's before a
/// timeout), then reads the watermark.
async fn open_session(encoder: &Encoder, client: &redis::Client) -> RedisResult<Session> {
    let conn = resp::Connection::open(
        client.get_connection_info(),
        &encoder.config.tls,
        encoder.config.connect_timeout,
        encoder.config.command_timeout,
    )
    .await?;
    let name = format!("walcast-writer:{}", encoder.keys.events());
    let fenced = match fence(&conn, &name).await {
        Ok(0) => true,
        Ok(closed) => {
            tracing::info!(tenant = %encoder.tenant, closed, "closed connections of an earlier redis writer of this tenant");
            true
        }
        Err(error) if is_unavailable(&error) => return Err(error),
        Err(error) => {
            tracing::warn!(tenant = %encoder.tenant, %error, "redis refused CLIENT SETNAME/LIST/KILL, so an earlier writer's late commands cannot be fenced off; every row goes through the Lua script, which costs Redis more CPU. To write new rows as plain commands, allow walcast's Redis user +client|setname +client|list +client|kill");
            false
        }
    };
    let applied = match conn
        .query(&[b"HGET", encoder.keys.applied().as_bytes(), b"event_id"])
        .await?
    {
        resp::Reply::Bulk(id) => std::str::from_utf8(&id).ok().and_then(|id| id.parse().ok()),
        _ => None,
    };
    Ok(Session {
        conn,
        fenced,
        applied,
        newest: None,
    })
}

/// Names this connection `name` and closes the others of that name: once
/// `CLIENT KILL` returned, nothing they sent can still run. Returns how many.
async fn fence(conn: &resp::Connection, name: &str) -> RedisResult<usize> {
    let unexpected = |what: &str, reply: resp::Reply| {
        redis::RedisError::from((
            redis::ErrorKind::Client,
            "unexpected answer from redis",
            format!("{what}: {reply:?}"),
        ))
    };
    let own = match conn.query(&[b"CLIENT", b"ID"]).await? {
        resp::Reply::Int(id) => id,
        other => return Err(unexpected("CLIENT ID", other)),
    };
    conn.query(&[b"CLIENT", b"SETNAME", name.as_bytes()])
        .await?;
    let list = match conn
        .query(&[b"CLIENT", b"LIST", b"TYPE", b"normal"])
        .await?
    {
        resp::Reply::Bulk(list) => String::from_utf8_lossy(&list).into_owned(),
        other => return Err(unexpected("CLIENT LIST", other)),
    };
    let mut closed = 0;
    for id in stale_writers(&list, name, own) {
        // 0: it went away meanwhile.
        if let resp::Reply::Int(n) = conn
            .query(&[b"CLIENT", b"KILL", b"ID", id.to_string().as_bytes()])
            .await?
        {
            closed += n.max(0) as usize;
        }
    }
    Ok(closed)
}

/// The ids of the connections in a `CLIENT LIST` answer named `name`, other
/// than `own`. (Public for the fuzz target.)
pub fn stale_writers(list: &str, name: &str, own: i64) -> Vec<i64> {
    list.lines()
        .filter_map(|line| {
            let mut id = None;
            let mut named = false;
            for field in line.split(' ') {
                if let Some(v) = field.strip_prefix("id=") {
                    id = v.parse::<i64>().ok();
                } else if let Some(v) = field.strip_prefix("name=") {
                    named = v == name;
                }
            }
            id.filter(|&id| named && id != own)
        })
        .collect()
}

/// A batch whose body (`MULTI` and its commands) was sent, so that Redis
/// parses and queues it while the batch before it runs; its `EXEC` waits
/// for that batch's answer.
struct Queued {
    /// Encodes the batch and sends its body, on a task of its own so that
    /// the writer sees the answer of the batch before at once; gives the
    /// batch and the answers to its body: `OK`, then `QUEUED` or an error
    /// per command.
    task: tokio::task::JoinHandle<(Arc<Batch>, RedisResult<Vec<resp::Reply>>)>,
    /// The session it was sent on (`generation`): on another session (after
    /// a reconnect) it is encoded and sent again.
    generation: u64,
}

/// Sends a batch's body: `MULTI` and its commands.
async fn send_body(conn: resp::Connection, batch: &Batch) -> RedisResult<Vec<resp::Reply>> {
    conn.send(batch.body.to_vec(), batch.commands).await
}

/// `EXEC`, encoded.
const EXEC: Bytes = Bytes::from_static(b"*1\r\n$4\r\nEXEC\r\n");

/// The writer task: sends the batches one transaction at a time, in order,
/// and reports each batch once durable. The plain commands in a transaction
/// run even when its script refuses, so no batch may overtake another: a
/// batch's `EXEC` is sent only after the batch before it was answered as
/// written. Its body goes ahead: while Redis runs batch k, batch k+1 is
/// already encoded, sent and queued (`MULTI` … `QUEUED`), so that Redis
/// spends the wait between two batches on the next one's parsing. When
/// batch k fails, k+1's open transaction dies with the connection, unrun.
/// A batch with nothing before it in flight (a small transaction, say) goes
/// whole, body and EXEC, in one round trip.
async fn write_batches(
    encoder: Arc<Encoder>,
    client: redis::Client,
    mut jobs: mpsc::Receiver<Job>,
    feed: Arc<RwLock<Option<HubFeed>>>,
) {
    let mut session: Option<Session> = None;
    let mut generation = 0u64;
    // A batch failed: later ones of the session are not written.
    let mut broken = false;
    let mut next: Option<(Job, Option<Queued>)> = None;
    let mut closed = false;
    loop {
        let (job, queued) = match next.take() {
            Some(next) => next,
            None if closed => return,
            None => match jobs.recv().await {
                Some(job) => (job, None),
                None => return,
            },
        };
        crate::fault::inject("redis_writer", encoder.tenant.as_str());
        if job.fresh {
            // A new replication session replays from the confirmed position:
            // read the watermark again.
            broken = false;
            session = None;
        }
        if broken {
            let _ = job.done.send(Err(SinkError::Abandoned));
            continue;
        }
        let mut queued = queued.filter(|q| q.generation == generation);
        let mut delay = Duration::from_millis(200);
        let outcome = loop {
            let current = match session.as_mut() {
                Some(current) => current,
                None => match open_session(&encoder, &client).await {
                    Ok(opened) => {
                        generation += 1;
                        queued = None;
                        session.insert(opened)
                    }
                    Err(error) if is_unavailable(&error) => {
                        tracing::warn!(tenant = %encoder.tenant, %error, retry_in_ms = delay.as_millis() as u64, "redis unavailable; replication waits until it is back");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(MAX_RETRY_DELAY);
                        continue;
                    }
                    Err(error) => break Err(SinkError::Connect(error)),
                },
            };
            let started = Instant::now();
            // The answers to the body (`OK`, `QUEUED`…) and to EXEC.
            type Answers = (RedisResult<Vec<resp::Reply>>, RedisResult<resp::Reply>);
            let (batch, request): (Arc<Batch>, Pin<Box<dyn Future<Output = Answers> + Send>>) =
                match queued.take() {
                    Some(queued) => {
                        let (batch, body) = match queued.task.await {
                            Ok(done) => done,
                            Err(error) => break Err(SinkError::WriterFailed(error.to_string())),
                        };
                        // The body's answers are in: EXEC goes after the body
                        // on the connection.
                        if let Err(error) = &body {
                            if is_unavailable(error) {
                                tracing::warn!(tenant = %encoder.tenant, %error, retry_in_ms = delay.as_millis() as u64, "redis unavailable; replication waits until it is back");
                                session = None;
                                tokio::time::sleep(delay).await;
                                delay = (delay * 2).min(MAX_RETRY_DELAY);
                                continue;
                            }
                        }
                        let conn = current.conn.clone();
                        let exec = async move {
                            let exec = conn
                                .send(vec![EXEC], 1)
                                .await
                                .map(|mut replies| replies.pop().unwrap_or(resp::Reply::Nil));
                            (body, exec)
                        };
                        (batch, Box::pin(exec))
                    }
                    None => {
                        let batch = Arc::new(encoder.batch(
                            &job.events,
                            job.end_lsn,
                            &job.epoch,
                            current.newest,
                            current.applied.max(current.newest),
                            current.fenced,
                        ));
                        if batch.newest.is_none() && job.end_lsn.is_none() {
                            // Everything was in Redis already.
                            break Ok(());
                        }
                        // Nothing before it is in flight: body and EXEC together,
                        // one round trip.
                        let whole = vec![batch.body[0].clone(), batch.body[1].clone(), EXEC];
                        let replies = batch.commands + 1;
                        let conn = current.conn.clone();
                        let exec = async move {
                            match conn.send(whole, replies).await {
                                Ok(mut answers) => {
                                    let exec = answers.pop().unwrap_or(resp::Reply::Nil);
                                    (Ok(answers), Ok(exec))
                                }
                                Err(error) => (Ok(Vec::new()), Err(error)),
                            }
                        };
                        (batch, Box::pin(exec))
                    }
                };
            let mut exec = request;
            // While Redis runs this batch, encode the next and send its body.
            // `exec` is polled first: its first poll hands EXEC to the
            // connection's queue (which has room: this writer is the
            // connection's only user and has at most two requests on it), so
            // the next body always follows this EXEC.
            let answer = loop {
                tokio::select! {
                    biased;
                    answer = &mut exec => break answer,
                    received = jobs.recv(), if next.is_none() && !closed => match received {
                        Some(following) => {
                            let ahead = (!following.fresh).then(|| {
                                let encoder = Arc::clone(&encoder);
                                let conn = current.conn.clone();
                                let events = Arc::clone(&following.events);
                                let end_lsn = following.end_lsn;
                                let epoch = following.epoch.clone();
                                let after = batch.newest.or(current.newest);
                                let applied = current.applied.max(batch.newest).max(current.newest);
                                let fenced = current.fenced;
                                let task = tokio::spawn(async move {
                                    let batch = Arc::new(encoder.batch(
                                        &events, end_lsn, &epoch, after, applied, fenced,
                                    ));
                                    let body = send_body(conn, &batch).await;
                                    (batch, body)
                                });
                                Queued { task, generation }
                            });
                            next = Some((following, ahead));
                        }
                        None => closed = true,
                    },
                }
            };
            let (body, answer) = answer;
            match encoder.judge_batch(&batch, body, answer, started) {
                Verdict::Applied => {
                    if batch.plain_rows > 0 {
                        metrics::counter!(crate::metrics::REDIS_PLAIN_ROWS, crate::metrics::TENANT => encoder.tenant.to_string())
                            .increment(batch.plain_rows as u64);
                    }
                    current.newest = batch.newest.or(current.newest);
                    break Ok(());
                }
                Verdict::Failed(error) => break Err(error),
                Verdict::Again(error) => {
                    if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
                        // Not counted by judge_batch; here it costs a retry.
                        metrics::counter!(crate::metrics::REDIS_WRITE_ERRORS, crate::metrics::TENANT => encoder.tenant.to_string()).increment(1);
                    }
                    // Whether it ran is unknown: a new session fences the old
                    // connection off and reads the watermark again.
                    tracing::warn!(tenant = %encoder.tenant, %error, retry_in_ms = delay.as_millis() as u64, "redis unavailable; replication waits until it is back");
                    session = None;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        };
        match outcome {
            Ok(()) => {
                let feed = feed.read().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some(feed) = feed {
                    if !job.events.is_empty() {
                        feed.send(HubInput::Events(DurableEvents::Batch(Arc::clone(
                            &job.events,
                        ))));
                    }
                }
                let _ = job.done.send(Ok(()));
            }
            Err(error) => {
                broken = true;
                // What the failed transaction left is unknown, and the next
                // batch's transaction may be open on this connection: closing
                // it discards that one, and the next session reads the
                // watermark again.
                session = None;
                let _ = job.done.send(Err(error));
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
    feed: Arc<RwLock<Option<HubFeed>>>,
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
        let encoder = Encoder::new(tenant, config);
        RedisSink {
            tenant: tenant.id.clone(),
            keys: encoder.keys.clone(),
            conn,
            rules: tenant
                .mirror
                .iter()
                .map(|r| (r.table.clone(), r.clone()))
                .collect(),
            encoder: Arc::new(encoder),
            feed: Arc::new(RwLock::new(None)),
            state: Mutex::new(State {
                buffer: Vec::new(),
                epoch: None,
                writer: None,
                pending: VecDeque::new(),
                fresh: true,
            }),
        }
    }

    /// Where to send each batch of events once it is durably in Redis:
    /// once per batch that wrote events (at most `BATCH_EVENTS` of them),
    /// strictly in stream order, only after it succeeded, with exactly the
    /// events it wrote (unchanged TOAST columns filled in from the mirror).
    /// A batch that only moves the watermark is not sent. After a reconnect
    /// Postgres sends unconfirmed transactions again, and the hub may then
    /// hear of events it was already given (it skips them by id); it never
    /// hears of an event that is not in Redis, and never misses one that
    /// went in during a session that goes on. Sending never waits.
    pub fn set_feed(&self, feed: HubFeed) {
        *self.feed.write().unwrap_or_else(|p| p.into_inner()) = Some(feed);
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn rules(&self) -> impl Iterator<Item = &MirrorRule> {
        self.rules.values()
    }

    /// The key columns of mirrored tables without a configured `key`, from
    /// the catalog (`source::mirror_keys`). Set once per process: a table
    /// whose primary key changed afterwards keeps the first until restart.
    pub fn set_default_keys(&self, keys: &[(TableName, Vec<String>)]) {
        for (table, columns) in keys {
            let Some(plan) = self.encoder.tables.get(table) else {
                continue;
            };
            if let Err(columns) = plan.default_key.set(columns.clone()) {
                if plan.default_key.get() != Some(&columns) {
                    tracing::warn!(tenant = %self.tenant, %table, "the table's primary key changed while walcast ran; restart walcast to key its mirror rows by the new one");
                }
            }
        }
    }

    /// The key columns of a mirrored table: the configured key, else the
    /// catalog's.
    pub fn key_of_table(&self, table: &TableName) -> Option<Vec<String>> {
        self.encoder
            .tables
            .get(table)
            .and_then(TablePlan::key_columns)
            .map(<[String]>::to_vec)
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
            1024,
            encoder.tables.values().collect(),
            None,
            "",
            None,
            None,
            false,
        );
        for t in 1..=call.tables.len() {
            encoder.push_unguarded(&mut call, &[RowOp::Truncate { table: t }]);
        }
        encoder.send(&self.conn, &call.cmd.to_cmd()).await
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
            512 * rows.len() + 1024,
            vec![plan],
            None,
            "",
            None,
            None,
            false,
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
        encoder.send(&self.conn, &call.cmd.to_cmd()).await
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
            // The writer's XADDs do not create the stream (NOMKSTREAM: a
            // stream that vanished must not silently start over), so it
            // exists, empty if need be, from the moment the epoch does.
            .cmd("EVAL")
            .arg(CREATE_STREAM)
            .arg(1)
            .arg(self.keys.events())
            .ignore()
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
        if let Some(key) = self
            .encoder
            .tables
            .get(&rule.table)
            .and_then(TablePlan::key_columns)
        {
            return Some(key.to_vec());
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
                // The writer dropped the answer unsent: it panicked. The
                // next batch starts a new writer.
                state.writer = None;
                Err(SinkError::WriterFailed(
                    "it dropped a batch unanswered".into(),
                ))
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
        // Bounded: the batch Redis runs, the next, and one waiting.
        Self::settle(state, WINDOW).await?;
        if state.writer.is_none() {
            // The writer has a connection of its own (see write_batches).
            let client = client(&self.encoder.config).map_err(SinkError::Connect)?;
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(write_batches(
                Arc::clone(&self.encoder),
                client,
                rx,
                Arc::clone(&self.feed),
            ));
            state.writer = Some(tx);
        }
        let writer = state.writer.as_mut().expect("started above");
        let (done, answer) = oneshot::channel();
        let job = Job {
            events: Arc::new(events),
            end_lsn,
            epoch: state.epoch.clone().unwrap_or_default(),
            fresh: std::mem::take(&mut state.fresh),
            done,
        };
        if writer.send(job).await.is_err() {
            state.writer = None;
            return Err(SinkError::WriterFailed("it stopped taking batches".into()));
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
    let to_datum = Datum::from_json_text;
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
            // Each value as the bytes it was stored with (RawValue): no
            // round trip through f64 or a re-ordered object.
            let map: std::collections::HashMap<String, Box<serde_json::value::RawValue>> =
                serde_json::from_slice(text).ok()?;
            Some(RowImage(
                map.into_iter()
                    .filter(|(k, _)| k != "_event_id")
                    .map(|(k, v)| (k.as_str().into(), to_datum(v.get())))
                    .collect(),
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RowImage;

    fn encoder() -> Encoder {
        let text = "[redis]\nurl = \"redis://127.0.0.1:1/\"\n[[mirror]]\ntable = \"jobs\"\nindex = [\"status\"]\n[[tenants]]\nid = \"acme\"\nurl = \"postgres://u@localhost/db\"\ntables = [\"jobs\"]\n";
        let config = crate::config::parse(std::path::Path::new("t.toml"), text, &|_| None)
            .unwrap_or_else(|e| panic!("{e}"));
        Encoder::new(&config.tenants[0], config.redis.as_ref().unwrap())
    }

    fn change(index: u32, op: Op, id: i64, status: &str) -> ChangeEvent {
        let row = RowImage(vec![
            ("id".into(), Datum::Int(id)),
            ("status".into(), Datum::Text(status.into())),
        ]);
        let key = RowImage(vec![("id".into(), Datum::Int(id))]);
        ChangeEvent::new(
            EventId {
                commit_lsn: Lsn(100),
                index,
            },
            Arc::from("acme"),
            Some(1),
            Some(0),
            op,
            ChangeBody::Row {
                table: TableName::new("public", "jobs"),
                key: Some(key.clone()),
                new: (op != Op::Delete).then_some(row),
                old: (op == Op::Delete).then_some(key),
                unchanged: vec![],
            },
        )
    }

    /// `n` inserts of rows 0..n, queued.
    fn inserts(n: u32) -> Vec<ChangeEvent> {
        (0..n)
            .map(|i| change(i, Op::Insert, i64::from(i), "queued"))
            .collect()
    }

    fn commands(batch: &Batch) -> Vec<String> {
        let mut names = Vec::new();
        let mut at = 0;
        let body = batch.body.concat();
        while let Some((command, used)) = resp::parse(&body[at..]).unwrap() {
            at += used;
            let resp::Reply::Array(args) = command else {
                panic!("a command is an array: {command:?}");
            };
            let Some(resp::Reply::Bulk(name)) = args.first() else {
                panic!("a command starts with its name: {args:?}");
            };
            names.push(String::from_utf8_lossy(name).into_owned());
        }
        assert_eq!(at, body.len(), "the body is whole commands");
        names
    }

    /// A new row goes as plain commands only when nothing else in the batch
    /// touches its key: here row 1 is inserted and then updated (both in the
    /// script, in order), row 2 is only inserted (plain).
    #[test]
    fn new_rows_touched_once_go_plain_the_rest_through_the_script() {
        let encoder = encoder();
        let events = vec![
            change(0, Op::Insert, 1, "queued"),
            change(1, Op::Update, 1, "running"),
            change(2, Op::Insert, 2, "queued"),
        ];
        let batch = encoder.batch(&events, Some(Lsn(150)), "e", None, None, true);
        assert_eq!(batch.plain_rows, 1);
        assert_eq!(
            commands(&batch),
            ["MULTI", "EVAL", "XADD", "XADD", "HSET", "XADD", "HSET", "SADD", "SADD"]
        );
        assert_eq!(
            batch.replies,
            [
                Reply::Script,
                Reply::Xadd,
                Reply::Xadd,
                Reply::Write,
                Reply::Xadd,
                Reply::Write,
                Reply::Write,
                Reply::Write
            ]
        );
        assert_eq!(
            batch.commands,
            batch.replies.len() + 1,
            "MULTI has no reply slot in EXEC"
        );
        assert_eq!(commands(&batch).len(), batch.commands);
        assert_eq!(batch.newest, Some(events[2].id));

        // Without the fence every row goes through the script.
        let batch = encoder.batch(&events, Some(Lsn(150)), "e", None, None, false);
        assert_eq!(batch.plain_rows, 0);
        assert_eq!(commands(&batch), ["MULTI", "EVAL", "XADD", "XADD", "XADD"]);
    }

    /// A bulk load (only new rows) goes plain without counting keys; a
    /// delete in the batch sends a re-inserted key through the script.
    #[test]
    fn a_bulk_load_goes_plain_and_a_reinsert_does_not() {
        let encoder = encoder();
        let load = inserts(4);
        assert_eq!(
            encoder.batch(&load, None, "e", None, None, true).plain_rows,
            4
        );
        let reinsert = vec![
            change(0, Op::Delete, 7, "queued"),
            change(1, Op::Insert, 7, "queued"),
            change(2, Op::Insert, 8, "queued"),
        ];
        assert_eq!(
            encoder
                .batch(&reinsert, None, "e", None, None, true)
                .plain_rows,
            1
        );
    }

    /// Events at or before the watermark are in Redis already: left out.
    #[test]
    fn events_at_or_before_the_watermark_are_left_out() {
        let encoder = encoder();
        let events = inserts(3);
        let batch = encoder.batch(&events, None, "e", None, Some(events[1].id), true);
        assert_eq!(batch.plain_rows, 1);
        assert_eq!(batch.newest, Some(events[2].id));
        let all_in = encoder.batch(&events, None, "e", None, Some(events[2].id), true);
        assert_eq!(all_in.newest, None);
        assert_eq!(commands(&all_in), ["MULTI", "EVAL"]);
    }

    #[test]
    fn event_ids_are_written_as_formatting_would() {
        for (lsn, index) in [(0, 0), (23_803_720, 7), (u64::MAX, u32::MAX)] {
            let id = EventId {
                commit_lsn: Lsn(lsn),
                index,
            };
            let mut out = b"x".to_vec();
            write_sortable(&mut out, id);
            assert_eq!(out, format!("x{lsn:020}-{index:010}").into_bytes());
            out.clear();
            write_event_id(&mut out, id);
            assert_eq!(out, id.to_string().into_bytes());
        }
    }

    /// `CLIENT LIST TYPE normal` as Redis 7.0.15 answered it, with two
    /// connections named as this tenant's writer (3 and 5, this one) and
    /// another (4).
    #[test]
    fn stale_writers_are_the_other_connections_of_the_name() {
        let list = "id=3 addr=127.0.0.1:54918 laddr=127.0.0.1:7391 fd=8 name=walcast-writer:walcast:{acme}:events age=0 idle=0 flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=20474 argv-mem=0 multi-mem=0 rbs=16384 rbp=16384 obl=0 oll=0 omem=0 tot-mem=37632 events=r cmd=client|setname user=default redir=-1 resp=2\nid=4 addr=127.0.0.1:54934 laddr=127.0.0.1:7391 fd=9 name=dashboard age=0 idle=0 flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=20474 argv-mem=0 multi-mem=0 rbs=16384 rbp=16384 obl=0 oll=0 omem=0 tot-mem=37632 events=r cmd=client|setname user=default redir=-1 resp=2\nid=5 addr=127.0.0.1:54942 laddr=127.0.0.1:7391 fd=11 name=walcast-writer:walcast:{acme}:events age=0 idle=0 flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=89 qbuf-free=20385 argv-mem=20 multi-mem=0 rbs=16384 rbp=16384 obl=9 oll=0 omem=0 tot-mem=37684 events=r cmd=client|list user=default redir=-1 resp=2\n";
        assert_eq!(
            stale_writers(list, "walcast-writer:walcast:{acme}:events", 5),
            [3]
        );
        assert!(stale_writers(list, "walcast-writer:walcast:{globex}:events", 5).is_empty());
        assert!(stale_writers("", "x", 1).is_empty());
    }
}
