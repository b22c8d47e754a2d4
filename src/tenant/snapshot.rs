//! The initial snapshot: copies the hot rows of a tenant's mirrored tables
//! into Redis, consistently with the point where its slot starts streaming,
//! so that the mirror has no gap and no row goes back to an older version.

use std::io::IsTerminal;
use std::time::Instant;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::apply::TypeMap;
use crate::config::TenantConfig;
use crate::model::{Datum, RowImage, TableName};
use crate::sink::RedisSink;
use crate::source::{quote_table, ExportedSnapshot};

/// Rows fetched from Postgres per round trip.
const FETCH_ROWS: usize = 1_000;

/// Why a snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("reading {table} failed")]
    Query {
        table: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{table} has no primary key or replica identity columns to key the mirror by; add a primary key or set `key` in its mirror rule")]
    NoKey { table: String },
    #[error("looking up column types failed")]
    Types(#[source] Box<crate::source::SourceError>),
    #[error("writing the snapshot to redis failed")]
    Sink(#[source] crate::sink::SinkError),
}

/// Copies every mirrored table under the exported snapshot. `client` is a
/// regular connection of the tenant with no transaction open.
pub async fn copy(
    client: &Client,
    tenant: &TenantConfig,
    sink: &RedisSink,
    snapshot: &ExportedSnapshot,
) -> Result<u64, SnapshotError> {
    let q = |table: &TableName| {
        let table = table.to_string();
        move |source| SnapshotError::Query { table, source }
    };
    let any = TableName::new("", "");
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'; SET LOCAL statement_timeout = 0",
            snapshot.name.replace('\'', "''")
        ))
        .await
        .map_err(q(&any))?;
    sink.clear_mirror().await.map_err(SnapshotError::Sink)?;
    let mut total = 0u64;
    let progress = Progress::new(&tenant.id.to_string());
    let mut types = TypeMap::default();
    let mut rules: Vec<_> = sink.rules().cloned().collect();
    rules.sort_by(|a, b| a.table.cmp(&b.table));
    for rule in rules {
        let table = &rule.table;
        let qualified = quote_table(table);
        let columns = client
            .query(
                "select a.attname::text, a.atttypid::int8 from pg_attribute a \
                 where a.attrelid = $1::text::regclass and a.attnum > 0 and not a.attisdropped order by a.attnum",
                &[&qualified],
            )
            .await
            .map_err(q(table))?;
        let columns: Vec<(String, u32)> = columns
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u32))
            .collect();
        // Domains, enums, composites…: typed the way the stream types them.
        let missing = types.missing(columns.iter().map(|(_, oid)| *oid));
        if !missing.is_empty() {
            let known = types.clone();
            let shapes =
                crate::source::load_types(client, &tenant.id, &missing, &|oid| known.knows(oid))
                    .await
                    .map_err(|e| SnapshotError::Types(Box::new(e)))?;
            for (oid, shape) in shapes {
                types.insert(oid, shape);
            }
        }
        let key_columns = match sink.key_of_table(table) {
            Some(key) => key,
            None => {
                let rows = client
                    .query(
                        "select a.attname::text from pg_index i join pg_attribute a \
                         on a.attrelid = i.indrelid and a.attnum = any(i.indkey) \
                         where i.indrelid = $1::text::regclass and (i.indisprimary or i.indisreplident) \
                         order by i.indisprimary desc, array_position(i.indkey::int2[], a.attnum)",
                        &[&qualified],
                    )
                    .await
                    .map_err(q(table))?;
                let mut key: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                key.dedup();
                if key.is_empty() {
                    return Err(SnapshotError::NoKey {
                        table: table.to_string(),
                    });
                }
                key
            }
        };
        let count: i64 = client
            .query_one(&format!("select count(*) from {qualified}"), &[])
            .await
            .map_err(q(table))?
            .get(0);
        client
            .batch_execute(&format!(
                "DECLARE walcast_snapshot NO SCROLL CURSOR FOR SELECT * FROM {qualified}"
            ))
            .await
            .map_err(q(table))?;
        let mut done = 0u64;
        loop {
            let messages = client
                .simple_query(&format!("FETCH {FETCH_ROWS} FROM walcast_snapshot"))
                .await
                .map_err(q(table))?;
            let mut rows = Vec::with_capacity(FETCH_ROWS);
            for message in messages {
                if let SimpleQueryMessage::Row(row) = message {
                    let image = columns
                        .iter()
                        .enumerate()
                        .map(|(i, (name, oid))| {
                            let value = match row.get(i) {
                                Some(text) => types.text_to_datum(*oid, text),
                                None => Datum::Null,
                            };
                            (name.as_str().into(), value)
                        })
                        .collect();
                    rows.push(RowImage(image));
                }
            }
            if rows.is_empty() {
                break;
            }
            done += rows.len() as u64;
            metrics::counter!(crate::metrics::SNAPSHOT_ROWS_COPIED, crate::metrics::TENANT => tenant.id.to_string(), crate::metrics::TABLE => table.to_string())
                .increment(rows.len() as u64);
            sink.write_snapshot_rows(table, &rows, &key_columns)
                .await
                .map_err(SnapshotError::Sink)?;
            progress.report(table, done, count.max(0) as u64);
        }
        client
            .batch_execute("CLOSE walcast_snapshot")
            .await
            .map_err(q(table))?;
        progress.finish(table, done);
        total += done;
    }
    client.batch_execute("COMMIT").await.map_err(q(&any))?;
    Ok(total)
}

/// Snapshot progress: a bar on a terminal, log lines otherwise.
struct Progress {
    tenant: String,
    terminal: bool,
    started: Instant,
}

impl Progress {
    fn new(tenant: &str) -> Progress {
        Progress {
            tenant: tenant.to_owned(),
            terminal: std::io::stderr().is_terminal(),
            started: Instant::now(),
        }
    }

    fn report(&self, table: &TableName, done: u64, total: u64) {
        let total = total.max(done);
        if self.terminal {
            let width = 30usize;
            let filled = if total == 0 {
                width
            } else {
                (done as usize * width) / total as usize
            };
            eprint!(
                "\rsnapshot {} {table} [{}{}] {done}/{total} rows",
                self.tenant,
                "#".repeat(filled),
                " ".repeat(width - filled)
            );
        } else if done % 50_000 < FETCH_ROWS as u64 {
            tracing::info!(tenant = %self.tenant, %table, done, total, "snapshot progress");
        }
    }

    fn finish(&self, table: &TableName, done: u64) {
        if self.terminal {
            eprintln!();
        }
        tracing::info!(tenant = %self.tenant, %table, rows = done, elapsed_ms = self.started.elapsed().as_millis() as u64, "snapshot of table done");
    }
}
