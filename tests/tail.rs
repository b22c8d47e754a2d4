//! `walcast tail`: exact typed values; a permanent slot acknowledges what was
//! printed (a restart continues after it, nothing twice); a temporary slot
//! leaves nothing behind on the server.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const ALL_TYPES_DDL: &str = "
create table typed (
    id int primary key,
    i2 int2, i4 int4, i8 int8,
    f4 float4, f8 float8, f8_nan float8, f8_inf float8,
    num numeric, big_num numeric,
    flag bool, t text, vc varchar(10),
    j json, jb jsonb,
    u uuid, d date, ts timestamp, tstz timestamptz,
    nothing text
);
";

fn config_for(db: &TenantDb, dir: &TempDir, tables: &str) -> std::path::PathBuf {
    dir.write(
        "walcast.toml",
        &format!(
            "[[tenants]]\nid = \"acme\"\nurl = \"{}\"\ntables = [{tables}]\n",
            db.url()
        ),
    )
}

#[test]
fn tail_prints_exact_typed_values() {
    let db = TenantDb::start();
    db.sql(ALL_TYPES_DDL);
    let dir = TempDir::new("tail-types");
    let config = config_for(&db, &dir, "\"public.typed\"");
    let tail = Walcast::spawn(&config, &["tail", "--tenant", "acme"]);
    tail.wait_log("streaming tenant=", 1);
    db.sql(
        "insert into typed values (1, -32768, 2147483647, 9223372036854775807,
           1.5, 0.1, 'NaN', '-Infinity',
           '3.14', '123456789012345678901234567890.000000000000000001',
           true, 'line\nbreak \"quoted\" ünïcode', 'short',
           '{\"b\": 1,  \"a\": [true, null]}', '{\"b\": 1, \"a\": [true, null]}',
           '6ecd8c99-4036-403d-bf84-cf8400f67836', '2026-11-28', '2026-11-28 03:14:02.5',
           '2026-11-28 04:14:02.123456+01', NULL)",
    );
    let events = tail.events(1);
    assert_eq!(
        events[0]["new"],
        json!({
            "id": 1, "i2": -32768, "i4": 2147483647, "i8": 9223372036854775807i64,
            "f4": 1.5, "f8": 0.1, "f8_nan": "NaN", "f8_inf": "-Infinity",
            "num": "3.14", "big_num": "123456789012345678901234567890.000000000000000001",
            "flag": true, "t": "line\nbreak \"quoted\" ünïcode", "vc": "short",
            "j": {"b": 1, "a": [true, null]}, "jb": {"a": [true, null], "b": 1},
            "u": "6ecd8c99-4036-403d-bf84-cf8400f67836", "d": "2026-11-28",
            "ts": "2026-11-28T03:14:02.5", "tstz": "2026-11-28T03:14:02.123456Z",
            "nothing": null
        })
    );
    // json keeps the text as written (whitespace and key order), jsonb as Postgres normalised it.
    let (status, _, _) = tail.interrupt();
    assert!(status.success());
}

#[test]
fn permanent_slot_acknowledges_what_was_printed() {
    let db = TenantDb::start();
    let dir = TempDir::new("tail-permanent");
    let config = config_for(&db, &dir, "\"public.tasks\", \"public.environments\"");

    let tail = Walcast::spawn(
        &config,
        &["tail", "--tenant", "acme", "--table", "public.tasks"],
    );
    tail.wait_log("streaming tenant=", 1);
    db.sql("insert into tasks (id, status) values (1, 'queued')");
    db.sql("insert into environments values (1, 'not printed: filtered out', true)");
    db.sql("insert into tasks (id, status) values (2, 'queued')");
    let first = tail.events(2);
    assert_eq!(first[0]["new"]["id"], 1);
    assert_eq!(first[1]["new"]["id"], 2);
    let (status, rest, stderr) = tail.interrupt();
    assert!(
        status.success(),
        "tail should exit 0 on SIGINT: {status}\n{stderr}"
    );
    assert!(rest.is_empty(), "{rest:?}");

    // The slot's confirmed position is past the last printed commit.
    let confirmed_past = db.sql(&format!(
        "select confirmed_flush_lsn > '{}'::pg_lsn from pg_replication_slots where slot_name = 'walcast_acme'",
        first[1]["lsn"].as_str().unwrap()
    ));
    assert_eq!(confirmed_past.trim(), "t");

    // Committed while nobody tails: printed by the next tail, the old ones not again.
    db.sql("update tasks set status = 'running' where id = 2");
    let tail = Walcast::spawn(&config, &["tail", "--tenant", "acme"]);
    let second = tail.events(1);
    assert_eq!(second[0]["op"], "UPDATE");
    assert_eq!(second[0]["new"]["status"], "running");
    tail.no_more_events(Duration::from_secs(2));
    let (status, _, _) = tail.interrupt();
    assert!(status.success());
}

#[test]
fn temporary_slot_leaves_nothing_behind() {
    let db = TenantDb::start();
    let dir = TempDir::new("tail-temporary");
    let config = config_for(&db, &dir, "\"public.tasks\"");
    // A temporary-slot tail does not create the publication: say what to do.
    let (status, _, stderr) =
        walcast_output(&config, &["tail", "--tenant", "acme", "--temporary-slot"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("publication walcast_acme does not exist")
            && stderr.contains("walcast setup"),
        "{stderr}"
    );

    db.sql("create publication walcast_acme for table tasks");
    let tail = Walcast::spawn(&config, &["tail", "--tenant", "acme", "--temporary-slot"]);
    tail.wait_log("streaming tenant=", 1);
    assert_eq!(
        db.sql("select count(*) from pg_replication_slots where temporary")
            .trim(),
        "1"
    );
    db.sql("insert into tasks (id, status) values (5, 'queued')");
    assert_eq!(tail.events(1)[0]["new"]["id"], 5);
    let (status, _, _) = tail.interrupt();
    assert!(status.success());
    assert_eq!(
        db.sql("select count(*) from pg_replication_slots").trim(),
        "0"
    );
}

#[test]
fn an_idle_slot_does_not_pin_wal() {
    // Keepalives every second (wal_sender_timeout / 2).
    let db = TenantDb::start_with(PostgresOptions {
        settings: vec![("wal_sender_timeout".into(), "2s".into())],
        ..PostgresOptions::default()
    });
    db.sql("create table other (id int primary key, body text)");
    let dir = TempDir::new("tail-idle");
    let config = config_for(&db, &dir, "\"public.tasks\"");
    let tail = Walcast::spawn(&config, &["tail", "--tenant", "acme"]);
    tail.wait_log("streaming tenant=", 1);
    // Only a table walcast does not stream changes: nothing to print, but
    // the slot's confirmed position must follow the WAL.
    db.sql("insert into other select g, repeat('x', 1000) from generate_series(1, 20000) g");
    let written = db.sql("select pg_current_wal_lsn()");
    wait_until(
        "the idle slot to confirm past the other table's WAL",
        || {
            db.sql(&format!(
            "select confirmed_flush_lsn >= '{}'::pg_lsn from pg_replication_slots where slot_name = 'walcast_acme'",
            written.trim()
        ))
        .trim()
            == "t"
        },
    );
    tail.no_more_events(Duration::from_millis(200));
    let (status, _, _) = tail.interrupt();
    assert!(status.success());
}

#[test]
fn temporary_slot_on_wal_level_replica_exits_1_with_the_fix() {
    let db = TenantDb::start_with(PostgresOptions {
        wal_level: "replica".into(),
        ..PostgresOptions::default()
    });
    db.sql("create publication walcast_acme for table tasks");
    let dir = TempDir::new("tail-replica");
    let config = config_for(&db, &dir, "\"public.tasks\"");
    // It needs a human: tail says so and exits 1, it does not retry.
    let mut child = std::process::Command::new(walcast_bin())
        .arg("--config")
        .arg(&config)
        .args(["tail", "--tenant", "acme", "--temporary-slot"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run walcast tail");
    let stderr = text_of(child.stderr.take().unwrap());
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "tail --temporary-slot did not exit on wal_level=replica:\n{}",
                stderr.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(100));
    let stderr = stderr.lock().unwrap().clone();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("(to fix: set wal_level = logical (ALTER SYSTEM SET wal_level = logical;"),
        "{stderr}"
    );
    assert!(!stderr.contains("to fix: ;"), "{stderr}");
}
