//! ALTER TABLE in the middle of a stream: Postgres re-sends the Relation
//! message before the next change of the table, and events after it use the
//! new columns and types, including types walcast has to look up then; in
//! text and in binary mode.

mod common;

use common::*;
use serde_json::{json, Value};

#[test]
fn events_after_alter_table_use_the_new_columns() {
    events_after_alter_table("");
}

#[test]
fn events_after_alter_table_use_the_new_columns_in_binary_mode() {
    events_after_alter_table("binary = true\n");
}

fn events_after_alter_table(extra: &str) {
    let db = TenantDb::start();
    db.sql(
        "create table sc (id int primary key, a int);
         create domain percent as numeric(5,2) check (value between 0 and 100);
         create type stage as enum ('build', 'test');
         create type pair as (n int, s text);",
    );
    let dir = TempDir::new("schema-change");
    let tail = tail(&db, &dir, "\"sc\"", extra);
    let new_rows =
        |n: usize| -> Vec<Value> { tail.events(n).iter().map(|e| e["new"].clone()).collect() };

    // (statement, `new` of the events it gives)
    let steps: Vec<(&str, Vec<Value>)> = vec![
        (
            "insert into sc values (1, 10)",
            vec![json!({"id": 1, "a": 10})],
        ),
        (
            "alter table sc add column b text default 'x'; insert into sc values (2, 20, 'y')",
            vec![json!({"id": 2, "a": 20, "b": "y"})],
        ),
        (
            "update sc set a = 11 where id = 1",
            vec![json!({"id": 1, "a": 11, "b": "x"})],
        ),
        (
            "alter table sc drop column a; insert into sc values (3, 'z')",
            vec![json!({"id": 3, "b": "z"})],
        ),
        (
            "alter table sc alter column b drop default, alter column b type int using length(b);
             insert into sc values (4, 7)",
            vec![json!({"id": 4, "b": 7})],
        ),
        // Columns of types walcast has not seen yet in this session: looked
        // up in the catalog when the new Relation arrives.
        (
            "alter table sc add column p percent, add column st stage[], add column pr pair;
             insert into sc values (5, 1, 12.5, '{test,build}', '(1,one)')",
            vec![
                json!({"id": 5, "b": 1, "p": "12.50", "st": ["test", "build"], "pr": {"n": 1, "s": "one"}}),
            ],
        ),
        // Several changes of one transaction around an ALTER TABLE.
        (
            "begin; insert into sc (id) values (6); alter table sc drop column pr;
             insert into sc (id) values (7); commit;",
            vec![
                json!({"id": 6, "b": null, "p": null, "st": null, "pr": null}),
                json!({"id": 7, "b": null, "p": null, "st": null}),
            ],
        ),
        (
            "alter table sc add column q pair; insert into sc (id, q) values (8, '(2,two)')",
            vec![json!({"id": 8, "b": null, "p": null, "st": null, "q": {"n": 2, "s": "two"}})],
        ),
        (
            "alter type pair add attribute f bool; insert into sc (id, q) values (9, '(3,three,t)')",
            vec![json!({"id": 9, "b": null, "p": null, "st": null, "q": {"n": 3, "s": "three", "f": true}})],
        ),
    ];
    for (sql, expected) in steps {
        db.sql(sql);
        assert_eq!(new_rows(expected.len()), expected, "after {sql}");
    }
}
