//! Unchanged TOASTed values: Postgres does not send them with an UPDATE;
//! walcast lists them in `unchanged` and leaves them out of `new`, never
//! reporting them as null or inventing them, except under REPLICA IDENTITY
//! FULL, where the old tuple carries them; in text and in binary mode.

mod common;

use common::*;
use serde_json::json;

/// A value stored out of line (in the TOAST table): 64 kB of hex digits,
/// far above the TOAST threshold of about 2 kB.
const BIG: &str = "(select string_agg(md5(i::text), '') from generate_series(1, 2000) i)";

#[test]
fn unchanged_toast_is_listed_never_null() {
    unchanged_toast("");
}

#[test]
fn unchanged_toast_is_listed_never_null_in_binary_mode() {
    unchanged_toast("binary = true\n");
}

fn unchanged_toast(extra: &str) {
    let db = TenantDb::start();
    db.sql(
        "create table docs (id int primary key, title text, body text, extra text);
         create table docs_full (id int primary key, title text, body text);
         alter table docs_full replica identity full;",
    );
    let big = db.sql(&format!("select {BIG}")).trim().to_owned();
    assert_eq!(big.len(), 64_000);
    let dir = TempDir::new("toast");
    let tail = tail(&db, &dir, "\"docs\", \"docs_full\"", extra);

    db.sql(&format!("insert into docs values (1, 'a', {BIG}, {BIG})"));
    let insert = &tail.events(1)[0];
    assert_eq!(insert["new"]["body"], big.as_str());
    assert_eq!(insert["new"]["extra"], big.as_str());
    assert!(insert.get("unchanged").is_none(), "{insert}");
    // The value really is stored out of line.
    assert_eq!(
        db.sql("select pg_relation_size(reltoastrelid) > 0 from pg_class where relname = 'docs'")
            .trim(),
        "t"
    );

    db.sql("update docs set title = 'b' where id = 1");
    let update = change(&tail.events(1)[0]);
    assert_eq!(
        update,
        json!({"schema": "public", "table": "docs", "op": "UPDATE", "key": {"id": 1},
               "new": {"id": 1, "title": "b"}, "old": {"id": 1}, "unchanged": ["body", "extra"]})
    );

    // Changing one of them sends it; the other stays listed.
    db.sql("update docs set extra = 'small now' where id = 1");
    let update = change(&tail.events(1)[0]);
    assert_eq!(
        update["new"],
        json!({"id": 1, "title": "b", "extra": "small now"})
    );
    assert_eq!(update["unchanged"], json!(["body"]));

    db.sql("delete from docs where id = 1");
    let delete = change(&tail.events(1)[0]);
    assert_eq!(delete["old"], json!({"id": 1}));
    assert!(delete.get("unchanged").is_none(), "{delete}");

    // REPLICA IDENTITY FULL: the old row is logged whole, TOASTed values
    // included, so `old` has them, and walcast takes the unchanged one from
    // there into `new` and `key` (nothing is listed as unchanged).
    db.sql(&format!("insert into docs_full values (1, 'a', {BIG})"));
    tail.events(1);
    db.sql("update docs_full set title = 'b'");
    let update = change(&tail.events(1)[0]);
    assert_eq!(update["new"], json!({"id": 1, "title": "b", "body": big}));
    assert_eq!(update["key"], update["new"]);
    assert!(update.get("unchanged").is_none(), "{update}");
    assert_eq!(update["old"]["title"], "a");
    assert_eq!(update["old"]["body"], big.as_str());
}
