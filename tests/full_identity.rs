//! A mirrored table with REPLICA IDENTITY FULL: rows are keyed by the
//! primary key (not by every column, which left stale copies behind and put
//! row values into key names), unchanged TOAST values are taken from the
//! old tuple into `new` and `key`, and after a random workload the mirror
//! equals `SELECT`, field by field. A FULL-identity table without a primary
//! key is refused, by `check` and at start, with the fix.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::Value;

const DDL: &str = "
create table docs (id int primary key, status text, secret text, big text);
alter table docs replica identity full;
-- Stored out of line and uncompressed, so that an update that leaves it
-- alone sends it as unchanged TOAST.
alter table docs alter column big set storage external;
create table loose (a int, b text);
alter table loose replica identity full;
";

fn mirror(con: &mut redis::Connection) -> BTreeMap<String, Value> {
    let prefix = "walcast:{acme}:row:public.docs:";
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(con)
        .unwrap();
    keys.into_iter()
        .map(|key| {
            let fields: Vec<(String, String)> = redis::cmd("HGETALL").arg(&key).query(con).unwrap();
            let row: serde_json::Map<String, Value> = fields
                .into_iter()
                .filter(|(f, _)| f != "_event_id")
                .map(|(f, v)| (f, serde_json::from_str(&v).unwrap()))
                .collect();
            (
                key.strip_prefix(prefix).unwrap().to_owned(),
                Value::Object(row),
            )
        })
        .collect()
}

fn postgres(db: &TenantDb) -> BTreeMap<String, Value> {
    db.sql("select id, row_to_json(docs)::text from docs")
        .lines()
        .map(|l| {
            let (id, row) = l.split_once('|').unwrap();
            (id.to_owned(), serde_json::from_str(row).unwrap())
        })
        .collect()
}

#[test]
fn a_full_identity_table_is_mirrored_by_its_primary_key_and_converges() {
    let db = TenantDb::start();
    db.sql(DDL);
    let redis = LocalRedis::start().expect("redis");
    let dir = TempDir::new("full-identity");
    let tenant = |tables: &str, mirror: &str| {
        format!(
            "[redis]\nurl = \"{}\"\n\n[[tenants]]\nid = \"acme\"\nurl = \"{}\"\ntables = [{tables}]\n{mirror}",
            redis.url(),
            db.url()
        )
    };

    // No primary key under FULL identity: refused with the fix.
    let config = dir.write(
        "walcast.toml",
        &tenant(
            "\"public.loose\"",
            "[[tenants.mirror]]\ntable = \"public.loose\"\n",
        ),
    );
    let (status, stdout, _) = walcast_output(&config, &["check"]);
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("mirrored table public.loose has no primary key (replica identity FULL)")
            && stdout.contains("key = [\"column\", …]"),
        "{stdout}"
    );
    let refused = Walcast::spawn(&config, &["run"]);
    refused.wait_log("has no primary key (replica identity FULL)", 1);
    drop(refused);

    let config = dir.write(
        "walcast.toml",
        &tenant(
            "\"public.docs\"",
            "[[tenants.mirror]]\ntable = \"public.docs\"\n",
        ),
    );
    let tail = Walcast::spawn(&config, &["run"]);
    tail.wait_log("streaming tenant=", 1);
    db.sql(
        "insert into docs select g, 'new', 'S' || g, repeat(md5(g::text), 200) from generate_series(1, 20) g;",
    );
    // A random workload: status and secret change (big left alone, so sent
    // as unchanged TOAST), rows deleted and inserted again.
    db.sql(
        "select setseed(0.42);
         do $$
         declare i int; k int;
         begin
           for i in 1..200 loop
             k := 1 + floor(random() * 25)::int;
             case floor(random() * 4)::int
               when 0 then update docs set status = (array['new','running','done'])[1 + floor(random() * 3)::int] where id = k;
               when 1 then update docs set secret = md5(random()::text) where id = k;
               when 2 then delete from docs where id = k;
               else insert into docs values (k, 'new', 'S' || k, repeat(md5(random()::text), 200)) on conflict (id) do update set status = 'again';
             end case;
           end loop;
         end $$;",
    );
    db.sql("update docs set status = 'last' where id = (select min(id) from docs);");
    let mut con = redis_conn(&redis);
    wait_until("the mirror to converge", || {
        mirror(&mut con) == postgres(&db)
    });
    let rows = postgres(&db);
    assert!(rows.len() > 5, "the workload left rows: {}", rows.len());
    // Keys are the primary key alone: no secret in any key name.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("walcast:{acme}:*")
        .query(&mut con)
        .unwrap();
    assert!(
        keys.iter().all(|k| !k.contains("S1") && !k.contains('"')),
        "{keys:?}"
    );

    // The stream's update events carry big in `new` and `key`, not as
    // unchanged.
    let events = stream_events(&mut con, "acme");
    let last = events
        .iter()
        .rev()
        .find(|e| e["op"] == "UPDATE" && e["new"]["status"] == "last")
        .expect("the last update in the stream");
    assert!(
        last["unchanged"].as_array().is_none_or(|u| u.is_empty()),
        "{last}"
    );
    let big = last["new"]["big"].as_str().expect("big in new");
    assert_eq!(big.len(), 32 * 200);
    assert_eq!(last["key"]["big"], last["new"]["big"]);
}
