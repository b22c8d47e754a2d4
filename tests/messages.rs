//! Logical decoding messages (`pg_logical_emit_message`): transactional ones
//! are numbered in their transaction, non-transactional ones stand alone;
//! UTF-8 content is text, anything else base64.

mod common;

use common::*;
use serde_json::{json, Value};

#[test]
fn transactional_and_not_utf8_and_not() {
    let db = TenantDb::start();
    db.sql("create table t (id int primary key)");
    let dir = TempDir::new("messages");
    let tail = tail(&db, &dir, "\"t\"", "");

    db.sql(
        "begin;
         insert into t values (1);
         select pg_logical_emit_message(true, 'app', 'hello ünïcode');
         select pg_logical_emit_message(true, 'bin', '\\xff00fe'::bytea);
         commit;",
    );
    let events = tail.events(3);
    assert_eq!(events[0]["op"], "INSERT");
    let lsn = events[0]["lsn"].as_str().unwrap();
    let txn_id = events[0]["id"].as_str().unwrap().trim_end_matches("-0");
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["id"], format!("{txn_id}-{i}"));
        assert_eq!(event["lsn"], lsn);
        assert_eq!(event["xid"], events[0]["xid"]);
        assert_eq!(event["commit_ts"], events[0]["commit_ts"]);
    }
    assert!(events[1]["xid"].is_u64() && events[1]["commit_ts"].is_string());
    assert_eq!(
        change(&events[1]),
        json!({"schema": null, "table": null, "op": "MESSAGE", "key": null, "new": null, "old": null,
               "message": {"transactional": true, "prefix": "app", "encoding": "utf8", "content": "hello ünïcode"}})
    );
    assert_eq!(
        events[2]["message"],
        json!({"transactional": true, "prefix": "bin", "encoding": "base64", "content": "/wD+"})
    );

    // Not transactional: sent at once, outside any transaction.
    let message_lsn = db.sql("select pg_logical_emit_message(false, 'ping', 'now')");
    let event = &tail.events(1)[0];
    assert_eq!(event["xid"], Value::Null);
    assert_eq!(event["commit_ts"], Value::Null);
    assert_eq!(event["lsn"], message_lsn.trim());
    let lsn_number = {
        let (hi, lo) = message_lsn.trim().split_once('/').unwrap();
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
    };
    assert_eq!(event["id"], format!("{lsn_number}-0"));
    assert_eq!(
        event["message"],
        json!({"transactional": false, "prefix": "ping", "encoding": "utf8", "content": "now"})
    );

    // A transactional message of a rolled-back transaction never arrives.
    db.sql("begin; select pg_logical_emit_message(true, 'app', 'rolled back'); rollback;");
    db.sql("insert into t values (2)");
    assert_eq!(tail.events(1)[0]["new"], json!({"id": 2}));
}
