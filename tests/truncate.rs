//! TRUNCATE: one event per truncated table, with the CASCADE and RESTART
//! IDENTITY flags, all in the statement's transaction.

mod common;

use common::*;
use serde_json::{json, Value};

#[test]
fn one_event_per_truncated_table_with_flags() {
    let db = TenantDb::start();
    db.sql(
        "create table parent (id int primary key);
         create table child (id int primary key, parent_id int references parent);
         create table other (id serial primary key);",
    );
    let dir = TempDir::new("truncate");
    let tail = tail(&db, &dir, "\"parent\", \"child\", \"other\"", "");

    db.sql("insert into parent values (1); insert into child values (1, 1); insert into other default values;");
    assert_eq!(tail.events(3).len(), 3);

    // One statement, two named tables, one more by CASCADE.
    db.sql("truncate parent, other restart identity cascade");
    let events = tail.events(3);
    let flags = json!({"cascade": true, "restart_identity": true});
    let mut tables: Vec<&str> = Vec::new();
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["op"], "TRUNCATE", "{event}");
        assert_eq!(event["truncate"], flags, "{event}");
        assert_eq!(
            (&event["key"], &event["new"], &event["old"]),
            (&Value::Null, &Value::Null, &Value::Null),
            "{event}"
        );
        // One transaction: same commit LSN, consecutive indexes.
        assert_eq!(event["lsn"], events[0]["lsn"]);
        let id = event["id"].as_str().unwrap();
        assert!(id.ends_with(&format!("-{i}")), "{id}");
        tables.push(event["table"].as_str().unwrap());
    }
    tables.sort_unstable();
    assert_eq!(tables, ["child", "other", "parent"]);

    // No flags.
    db.sql("truncate other");
    let event = change(&tail.events(1)[0]);
    assert_eq!(
        event,
        json!({"schema": "public", "table": "other", "op": "TRUNCATE", "key": null, "new": null,
               "old": null, "truncate": {"cascade": false, "restart_identity": false}})
    );
}
