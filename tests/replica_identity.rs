//! The event's `key` and `old` for every replica identity (DEFAULT with a
//! primary key, FULL, NOTHING, USING INDEX, DEFAULT without a primary key),
//! and partitioned tables with and without `publish_via_partition_root`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const DDL: &str = "
create table t_default (id int primary key, v text);
create table t_full (id int, v text);
alter table t_full replica identity full;
create table t_nothing (id int primary key, v text);
alter table t_nothing replica identity nothing;
create table t_index (id int primary key, code text not null, v text);
create unique index t_index_code on t_index (code);
alter table t_index replica identity using index t_index_code;
create table t_nopk (id int, v text);
create table measurements (id int, region text, v int, primary key (id, region))
    partition by list (region);
create table measurements_eu partition of measurements for values in ('eu');
create table measurements_us partition of measurements for values in ('us');
-- A publication made by hand without publish_via_partition_root (the
-- default): changes carry the partition's name.
create publication leaves for table measurements;
";

fn row(table: &str, op: &str, key: Value, new: Value, old: Value) -> Value {
    json!({"schema": "public", "table": table, "op": op, "key": key, "new": new, "old": old})
}

/// Each statement (its own transaction) and the events it must give.
fn cases() -> Vec<(&'static str, Vec<Value>)> {
    vec![
        // DEFAULT with a primary key: the key; `old` is the key, also when
        // Postgres sends no old tuple because the key did not change.
        (
            "insert into t_default values (1, 'a')",
            vec![row(
                "t_default",
                "INSERT",
                json!({"id": 1}),
                json!({"id": 1, "v": "a"}),
                Value::Null,
            )],
        ),
        (
            "update t_default set v = 'b' where id = 1",
            vec![row(
                "t_default",
                "UPDATE",
                json!({"id": 1}),
                json!({"id": 1, "v": "b"}),
                json!({"id": 1}),
            )],
        ),
        (
            "update t_default set id = 2 where id = 1",
            vec![row(
                "t_default",
                "UPDATE",
                json!({"id": 2}),
                json!({"id": 2, "v": "b"}),
                json!({"id": 1}),
            )],
        ),
        (
            "delete from t_default where id = 2",
            vec![row(
                "t_default",
                "DELETE",
                json!({"id": 2}),
                Value::Null,
                json!({"id": 2}),
            )],
        ),
        // FULL: every column is the key; `old` is the whole old row.
        (
            "insert into t_full values (1, 'a')",
            vec![row(
                "t_full",
                "INSERT",
                json!({"id": 1, "v": "a"}),
                json!({"id": 1, "v": "a"}),
                Value::Null,
            )],
        ),
        (
            "update t_full set v = 'b'",
            vec![row(
                "t_full",
                "UPDATE",
                json!({"id": 1, "v": "b"}),
                json!({"id": 1, "v": "b"}),
                json!({"id": 1, "v": "a"}),
            )],
        ),
        (
            "delete from t_full",
            vec![row(
                "t_full",
                "DELETE",
                json!({"id": 1, "v": "b"}),
                Value::Null,
                json!({"id": 1, "v": "b"}),
            )],
        ),
        // NOTHING, and DEFAULT without a primary key: no key. (Postgres
        // refuses their UPDATE and DELETE once they are published.)
        (
            "insert into t_nothing values (1, 'a')",
            vec![row(
                "t_nothing",
                "INSERT",
                Value::Null,
                json!({"id": 1, "v": "a"}),
                Value::Null,
            )],
        ),
        (
            "insert into t_nopk values (1, 'a')",
            vec![row(
                "t_nopk",
                "INSERT",
                Value::Null,
                json!({"id": 1, "v": "a"}),
                Value::Null,
            )],
        ),
        // USING INDEX: the index's columns.
        (
            "insert into t_index values (1, 'x', 'a')",
            vec![row(
                "t_index",
                "INSERT",
                json!({"code": "x"}),
                json!({"id": 1, "code": "x", "v": "a"}),
                Value::Null,
            )],
        ),
        (
            "update t_index set v = 'b'",
            vec![row(
                "t_index",
                "UPDATE",
                json!({"code": "x"}),
                json!({"id": 1, "code": "x", "v": "b"}),
                json!({"code": "x"}),
            )],
        ),
        (
            "update t_index set code = 'y'",
            vec![row(
                "t_index",
                "UPDATE",
                json!({"code": "y"}),
                json!({"id": 1, "code": "y", "v": "b"}),
                json!({"code": "x"}),
            )],
        ),
        (
            "delete from t_index",
            vec![row(
                "t_index",
                "DELETE",
                json!({"code": "y"}),
                Value::Null,
                json!({"code": "y"}),
            )],
        ),
    ]
}

#[test]
fn key_and_old_for_every_replica_identity() {
    key_and_old("");
}

/// Binary mode gives the same events (old tuples and keys included).
#[test]
fn key_and_old_for_every_replica_identity_in_binary_mode() {
    key_and_old("binary = true\n");
}

fn key_and_old(extra: &str) {
    let db = TenantDb::start();
    db.sql(DDL);
    let dir = TempDir::new("replica-identity");
    let tail = tail(
        &db,
        &dir,
        "\"t_default\", \"t_full\", \"t_nothing\", \"t_index\", \"t_nopk\"",
        extra,
    );
    for (sql, expected) in cases() {
        db.sql(sql);
        let got: Vec<Value> = tail.events(expected.len()).iter().map(change).collect();
        assert_eq!(got, expected, "after {sql}");
    }
    // Postgres refuses to update a published table without replica identity.
    let refused = db.pg.psql("platform", "update t_nopk set v = 'b'");
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("does not have a replica identity")),
        "{refused:?}"
    );
    tail.no_more_events(Duration::from_millis(500));
}

#[test]
fn partitioned_tables_with_and_without_publish_via_partition_root() {
    let db = TenantDb::start();
    db.sql(DDL);
    let dir = TempDir::new("partitions");
    // `root`: walcast creates its publication (via the partition root);
    // `leaves`: the hand-made publication without it.
    let config = config_file(
        &dir,
        &db,
        &[
            ("root", "\"public.measurements\"", ""),
            (
                "leaves",
                "\"public.measurements\"",
                "publication = \"leaves\"\n",
            ),
        ],
    );
    let run = Walcast::spawn(&config, &["run"]);
    run.wait_log("streaming tenant=", 2);
    // Both publications cover the partitioned table (pg_publication_tables
    // lists only the partitions of `leaves`).
    let (_, stdout, _) = walcast_output(&config, &["check"]);
    for publication in ["walcast_root", "leaves"] {
        assert!(
            stdout.contains(&format!(
                "publication {publication} covers the 1 configured tables"
            )),
            "{stdout}"
        );
    }
    db.sql("insert into measurements values (1, 'eu', 10)");
    db.sql("update measurements set v = 11 where id = 1");
    // Moving a row to another partition is a delete there and an insert here.
    db.sql("update measurements set region = 'us' where id = 1");
    let events = run.events(8);
    let of = |tenant: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["tenant"] == tenant)
            .map(change)
            .collect()
    };
    let k = |region: &str| json!({"id": 1, "region": region});
    let r = |region: &str, v: i32| json!({"id": 1, "region": region, "v": v});
    assert_eq!(
        of("root"),
        vec![
            row("measurements", "INSERT", k("eu"), r("eu", 10), Value::Null),
            row("measurements", "UPDATE", k("eu"), r("eu", 11), k("eu")),
            row("measurements", "DELETE", k("eu"), Value::Null, k("eu")),
            row("measurements", "INSERT", k("us"), r("us", 11), Value::Null),
        ]
    );
    assert_eq!(
        of("leaves"),
        vec![
            row(
                "measurements_eu",
                "INSERT",
                k("eu"),
                r("eu", 10),
                Value::Null
            ),
            row("measurements_eu", "UPDATE", k("eu"), r("eu", 11), k("eu")),
            row("measurements_eu", "DELETE", k("eu"), Value::Null, k("eu")),
            row(
                "measurements_us",
                "INSERT",
                k("us"),
                r("us", 11),
                Value::Null
            ),
        ]
    );
}
