//! Captures the benchmark fixture `benches/fixtures/tasks_100k.pgoutput.gz`
//! from a real Postgres: starts a throwaway cluster (`walcast::localdev`),
//! creates a tasks table like the platform's, creates a pgoutput slot, runs
//! 500 transactions of 100 inserts and then 500 transactions of 100 updates
//! (100,000 row changes), and drains the slot with
//! `pg_logical_slot_get_binary_changes(slot, NULL, NULL, 'proto_version', '1',
//! 'publication_names', 'p')`.
//!
//! The fixture is every pgoutput message the slot returned, in order, each as
//! `[u32 big-endian length][message bytes]`, gzip-compressed (about 25 MB raw;
//! the values repeat enough that gzip keeps it small enough for git).
//!
//! Run: `cargo run --release --example capture_fixture [OUT]`.

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;

const DEFAULT_OUT: &str = "benches/fixtures/tasks_100k.pgoutput.gz";
const TXNS: u32 = 500;
const ROWS_PER_TXN: u32 = 100;

/// The publication and slot for the shared tasks table
/// (`walcast::localdev::TASKS_TABLE_DDL`).
const SETUP: &str = "
create publication p for table tasks;
select pg_create_logical_replication_slot('bench', 'pgoutput');
";

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_OUT.into());
    let pg = walcast::localdev::start_tasks_database(Default::default())
        .unwrap_or_else(|e| panic!("starting postgres with the tasks table: {e}"));
    pg.psql("platform", SETUP).expect("publication and slot");

    // psql runs each statement in its own transaction (autocommit).
    let mut sql = String::new();
    for t in 0..TXNS {
        let (lo, hi) = (t * ROWS_PER_TXN + 1, (t + 1) * ROWS_PER_TXN);
        sql.push_str(&format!(
            "insert into tasks select i, 'queued', 0, \
               jsonb_build_object('step', 'checkout', 'attempt', 1 + i % 3, 'worker', 'w-' || (i % 32), \
                                  'log_url', 'https://ci.example.com/logs/' || i), \
               array['linux', 'x86_64', case when i % 5 = 0 then 'gpu' else 'cpu' end, 'team ' || (i % 7)], \
               now() + i * interval '1.234 ms', md5('owner' || (i % 64))::uuid \
             from generate_series({lo}, {hi}) i;\n"
        ));
    }
    for t in 0..TXNS {
        let (lo, hi) = (t * ROWS_PER_TXN + 1, (t + 1) * ROWS_PER_TXN);
        sql.push_str(&format!(
            "update tasks set status = (array['running', 'succeeded', 'failed'])[1 + id % 3], \
               progress = round(random()::numeric, 3)::float8, \
               payload = payload || jsonb_build_object('step', (array['build', 'test', 'deploy'])[1 + id % 3], \
                                                       'exit_code', id % 2), \
               updated_at = now() + id * interval '2.5 ms' \
             where id between {lo} and {hi};\n"
        ));
    }
    pg.psql("platform", &sql).expect("workload");

    // Hex: psql prints one row per line and hex has no line breaks.
    let rows = pg
        .psql(
            "platform",
            "select encode(data, 'hex') from pg_logical_slot_get_binary_changes('bench', NULL, NULL, \
             'proto_version', '1', 'publication_names', 'p')",
        )
        .expect("drain slot");
    let file = std::fs::File::create(&out).unwrap_or_else(|e| panic!("creating {out}: {e}"));
    let mut gz = GzEncoder::new(file, Compression::best());
    let (mut messages, mut raw) = (0usize, 0usize);
    for line in rows.lines().filter(|l| !l.is_empty()) {
        let bytes = hex(line);
        gz.write_all(&u32::try_from(bytes.len()).unwrap().to_be_bytes())
            .unwrap();
        gz.write_all(&bytes).unwrap();
        messages += 1;
        raw += bytes.len() + 4;
    }
    gz.finish().unwrap().sync_all().unwrap();
    let packed = std::fs::metadata(&out).unwrap().len();
    println!("{out}: {messages} messages, {raw} bytes raw, {packed} bytes gzipped");
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex from psql"))
        .collect()
}
