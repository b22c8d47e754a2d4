//! The Redis mirror and stream against real Postgres and a real redis-server:
//! the mirror converges to the hot rows of Postgres, the stream holds every
//! committed change exactly once in commit order (checked against the
//! workload's own record of what it committed), through kill -9 of walcast,
//! a FLUSHALL and a paused Redis.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const SCHEMA: &str = "
create table jobs (id int primary key, status text not null, attempt int not null, owner text, payload jsonb);
create table hosts (id int primary key, name text not null, active bool not null);
create table notes (id int primary key, body text);
";

/// One committed change as the workload saw it: (table, op, id).
type Change = (String, String, Option<i64>);

struct Tenant {
    id: &'static str,
    db: TenantDb,
    ledger: Arc<Mutex<Vec<Change>>>,
}

fn tenant(id: &'static str) -> Tenant {
    let db = TenantDb::start();
    db.sql(SCHEMA);
    Tenant {
        id,
        db,
        ledger: Arc::new(Mutex::new(Vec::new())),
    }
}

fn config(redis: &LocalRedis, tenants: &[&Tenant], dir: &TempDir) -> std::path::PathBuf {
    let mut text = format!(
        "[redis]\nurl = \"{}\"\ncommand_timeout_ms = 1000\n\n\
         [[mirror]]\ntable = \"jobs\"\nhot_when = [\"status=in.(queued,running)\"]\nindex = [\"status\", \"owner\"]\n\n\
         [[mirror]]\ntable = \"hosts\"\nformat = \"json\"\n\n",
        redis.url()
    );
    for t in tenants {
        text.push_str(&format!(
            "[[tenants]]\nid = \"{}\"\nurl = \"{}\"\ntables = [\"jobs\", \"hosts\", \"notes\"]\n\n",
            t.id,
            t.db.url()
        ));
    }
    dir.write("walcast.toml", &text)
}

/// A small deterministic random generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Runs `txns` random transactions (1-4 changes each, over the three
/// tables, hot and cold rows, rare truncates), recording each committed
/// change in the ledger in commit order.
async fn workload(
    url: String,
    seed: u64,
    txns: usize,
    ledger: Arc<Mutex<Vec<Change>>>,
    pause: Duration,
) {
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let mut rng = Rng(seed | 1);
    let statuses = ["queued", "running", "succeeded", "failed"];
    let owners = ["ana", "bo", "cy"];
    for _ in 0..txns {
        client.batch_execute("begin").await.unwrap();
        let mut changes = Vec::new();
        for _ in 0..=rng.next(4) {
            let id = rng.next(40) as i64;
            let (table, sql, op) = match rng.next(20) {
                0..=7 => {
                    let status = statuses[rng.next(4) as usize];
                    let owner = owners[rng.next(3) as usize];
                    (
                        "jobs",
                        format!(
                            "insert into jobs values ({id}, '{status}', 1, '{owner}', '{{\"n\": {id}, \"tag\": \"t{}\"}}') \
                             on conflict (id) do update set status = excluded.status, attempt = jobs.attempt + 1, owner = excluded.owner"
                            , rng.next(5)
                        ),
                        "UPSERT",
                    )
                }
                8..=10 => (
                    "jobs",
                    format!("delete from jobs where id = {id}"),
                    "DELETE",
                ),
                11..=13 => {
                    let active = rng.next(2) == 0;
                    (
                        "hosts",
                        format!("insert into hosts values ({id}, 'h{id}', {active}) on conflict (id) do update set active = excluded.active, name = excluded.name || '+'"),
                        "UPSERT",
                    )
                }
                14 => (
                    "hosts",
                    format!("delete from hosts where id = {id}"),
                    "DELETE",
                ),
                15..=18 => (
                    "notes",
                    format!(
                        "insert into notes values ({}, 'n') on conflict do nothing",
                        rng.next(1_000_000)
                    ),
                    "INSERT?",
                ),
                _ => ("jobs", "truncate jobs".to_string(), "TRUNCATE"),
            };
            // Learn what Postgres did (an upsert may insert or update, a
            // delete may find nothing) from the row count and RETURNING-free
            // checks before the change.
            let existed = if op == "TRUNCATE" || op == "INSERT?" {
                None
            } else {
                Some(
                    client
                        .query_opt(
                            &format!("select 1 from {table} where id = $1"),
                            &[&(id as i32)],
                        )
                        .await
                        .unwrap()
                        .is_some(),
                )
            };
            let count = client.execute(sql.as_str(), &[]).await.unwrap();
            let recorded = match (op, existed) {
                ("UPSERT", Some(true)) => Some("UPDATE"),
                ("UPSERT", Some(false)) => Some("INSERT"),
                ("DELETE", Some(true)) => Some("DELETE"),
                ("DELETE", _) => None,
                ("INSERT?", _) if count == 1 => Some("INSERT"),
                ("INSERT?", _) => None,
                ("TRUNCATE", _) => Some("TRUNCATE"),
                _ => None,
            };
            if let Some(kind) = recorded {
                let key = match kind {
                    "TRUNCATE" | "INSERT" if table == "notes" => None,
                    "TRUNCATE" => None,
                    _ => Some(id),
                };
                changes.push((table.to_string(), kind.to_string(), key));
            }
        }
        client.batch_execute("commit").await.unwrap();
        ledger.lock().unwrap().extend(changes);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

fn run_workload(
    t: &Tenant,
    seed: u64,
    txns: usize,
    pause: Duration,
) -> std::thread::JoinHandle<()> {
    let url = t.db.url();
    let ledger = Arc::clone(&t.ledger);
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(workload(url, seed, txns, ledger, pause))
    })
}

/// The stream as (table, op, id) in stream order, ignoring notes' ids.
fn stream_changes(events: &[Value]) -> Vec<Change> {
    events
        .iter()
        .map(|e| {
            let table = e["table"].as_str().unwrap().to_string();
            let op = e["op"].as_str().unwrap().to_string();
            let key = if op == "TRUNCATE" || table == "notes" {
                None
            } else {
                e["key"]["id"].as_i64()
            };
            (table, op, key)
        })
        .collect()
}

fn assert_stream_matches_ledger(con: &mut redis::Connection, t: &Tenant) {
    let ledger = t.ledger.lock().unwrap().clone();
    assert!(
        ledger.len() > 100,
        "the workload committed too little to prove anything: {}",
        ledger.len()
    );
    for op in ["INSERT", "UPDATE", "DELETE", "TRUNCATE"] {
        assert!(
            ledger.iter().any(|(_, o, _)| o == op),
            "the workload made no {op}"
        );
    }
    wait_until(
        &format!("{}'s stream to hold {} events", t.id, ledger.len()),
        || stream_events(con, t.id).len() >= ledger.len(),
    );
    let events = stream_events(con, t.id);
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "an event is in the stream twice");
    assert_eq!(
        stream_changes(&events),
        ledger,
        "{}: stream differs from what was committed",
        t.id
    );
}

/// The mirror equals the hot rows of Postgres, field by field.
fn assert_mirror_matches(con: &mut redis::Connection, t: &Tenant) {
    let expected_jobs: BTreeMap<String, Value> = t
        .db
        .sql("select id, json_build_object('id', id, 'status', status, 'attempt', attempt, 'owner', owner, 'payload', payload)::text from jobs where status in ('queued', 'running')")
        .lines()
        .map(|l| {
            let (id, row) = l.split_once('|').unwrap();
            (id.to_string(), serde_json::from_str(row).unwrap())
        })
        .collect();
    let expected_hosts: BTreeMap<String, Value> =
        t.db.sql("select id, row_to_json(hosts)::text from hosts")
            .lines()
            .map(|l| {
                let (id, row) = l.split_once('|').unwrap();
                (id.to_string(), serde_json::from_str(row).unwrap())
            })
            .collect();
    let prefix = format!("walcast:{{{}}}:row:", t.id);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(con)
        .unwrap();
    let mut jobs = BTreeMap::new();
    let mut hosts = BTreeMap::new();
    for key in keys {
        let rest = key.strip_prefix(&prefix).unwrap();
        if let Some(id) = rest.strip_prefix("public.jobs:") {
            let fields: Vec<(String, String)> = redis::cmd("HGETALL").arg(&key).query(con).unwrap();
            let mut row = serde_json::Map::new();
            for (f, v) in fields {
                if f != "_event_id" {
                    row.insert(f, serde_json::from_str(&v).unwrap());
                }
            }
            jobs.insert(id.to_string(), Value::Object(row));
        } else if let Some(id) = rest.strip_prefix("public.hosts:") {
            let text: String = redis::cmd("GET").arg(&key).query(con).unwrap();
            let mut row: Value = serde_json::from_str(&text).unwrap();
            row.as_object_mut().unwrap().remove("_event_id");
            hosts.insert(id.to_string(), row);
        } else {
            panic!("unexpected mirrored key {key}");
        }
    }
    assert_eq!(
        jobs, expected_jobs,
        "{}: jobs mirror differs from Postgres",
        t.id
    );
    assert_eq!(
        hosts, expected_hosts,
        "{}: hosts mirror differs from Postgres",
        t.id
    );
    // Index sets hold exactly the hot rows with that value.
    for (id, row) in &expected_jobs {
        let status = &row["status"];
        let member: bool = redis::cmd("SISMEMBER")
            .arg(format!(
                "walcast:{{{}}}:idx:public.jobs:status:{status}",
                t.id
            ))
            .arg(format!("{prefix}public.jobs:{id}"))
            .query(con)
            .unwrap();
        assert!(member, "{}: job {id} missing from its status index", t.id);
    }
    for status in ["\"succeeded\"", "\"failed\""] {
        let count: i64 = redis::cmd("SCARD")
            .arg(format!(
                "walcast:{{{}}}:idx:public.jobs:status:{status}",
                t.id
            ))
            .query(con)
            .unwrap();
        assert_eq!(count, 0, "cold rows are not indexed");
    }
}

fn wait_for_applied(con: &mut redis::Connection, t: &Tenant) {
    let ledger_len = t.ledger.lock().unwrap().len();
    wait_until("the stream to catch up", || {
        stream_events(con, t.id).len() >= ledger_len
    });
}

#[test]
fn mirror_and_stream_follow_a_random_workload_of_two_tenants() {
    let redis = LocalRedis::start().expect("redis");
    let acme = tenant("acme");
    let globex = tenant("globex");
    // Rows that exist before walcast starts come in through the snapshot.
    acme.db.sql("insert into jobs values (1000, 'running', 1, 'ana', '{}'), (1001, 'succeeded', 1, 'bo', null); insert into hosts values (1000, 'pre', true)");
    let dir = TempDir::new("redis-mirror");
    let config = config(&redis, &[&acme, &globex], &dir);
    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 2);
    let mut con = redis_conn(&redis);
    let snapshot: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg("walcast:{acme}:row:public.jobs:1000")
        .query(&mut con)
        .unwrap();
    assert!(
        snapshot.contains(&("status".into(), "\"running\"".into())),
        "{snapshot:?}"
    );
    assert!(
        snapshot.contains(&("_event_id".into(), "snapshot".into())),
        "{snapshot:?}"
    );
    let cold: bool = redis::cmd("EXISTS")
        .arg("walcast:{acme}:row:public.jobs:1001")
        .query(&mut con)
        .unwrap();
    assert!(!cold, "a cold row is not mirrored");

    let a = run_workload(&acme, 7, 150, Duration::ZERO);
    let g = run_workload(&globex, 11, 150, Duration::ZERO);
    a.join().unwrap();
    g.join().unwrap();
    for t in [&acme, &globex] {
        assert_stream_matches_ledger(&mut con, t);
        assert_mirror_matches(&mut con, t);
    }
    // Each slot is confirmed up to what Redis holds.
    for t in [&acme, &globex] {
        wait_until("the slot to be confirmed", || {
            t.db.sql("select confirmed_flush_lsn >= pg_current_wal_lsn() - 1024 from pg_replication_slots").trim() == "t"
        });
    }
    let (status, _, stderr) = walcast.interrupt();
    assert!(status.success(), "{stderr}");
}

#[test]
fn kill_9_five_times_loses_nothing_and_doubles_nothing() {
    let redis = LocalRedis::start().expect("redis");
    let acme = tenant("acme");
    let dir = TempDir::new("redis-kill");
    let config = config(&redis, &[&acme], &dir);
    let mut walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 1);
    let work = run_workload(&acme, 3, 400, Duration::from_millis(5));
    let mut rng = Rng(99);
    for round in 0..5 {
        std::thread::sleep(Duration::from_millis(300 + rng.next(700)));
        let status = Command::new("kill")
            .args(["-9", &walcast.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -9 round {round}");
        drop(walcast);
        walcast = Walcast::spawn(&config, &["run"]);
    }
    work.join().unwrap();
    let mut con = redis_conn(&redis);
    wait_for_applied(&mut con, &acme);
    assert_stream_matches_ledger(&mut con, &acme);
    assert_mirror_matches(&mut con, &acme);
    drop(walcast);
}

#[test]
fn flushall_rebuilds_the_mirror_and_a_paused_redis_loses_nothing() {
    let redis = LocalRedis::start().expect("redis");
    let acme = tenant("acme");
    let dir = TempDir::new("redis-flush");
    let config = config(&redis, &[&acme], &dir);
    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 1);
    let mut con = redis_conn(&redis);

    // Redis unreachable for 10 s under load: replication waits, nothing is lost.
    let pid = redis.pid().unwrap().to_string();
    let work = run_workload(&acme, 5, 300, Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(500));
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_secs(10));
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    work.join().unwrap();
    walcast.wait_log("redis unavailable", 1);
    assert_stream_matches_ledger(&mut con, &acme);
    assert_mirror_matches(&mut con, &acme);

    // FLUSHALL: walcast notices the missing epoch marker and re-snapshots.
    let before: String = redis::cmd("GET")
        .arg("walcast:{acme}:epoch")
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("FLUSHALL").query(&mut con).unwrap();
    wait_until("a new epoch marker", || {
        redis::cmd("GET")
            .arg("walcast:{acme}:epoch")
            .query::<Option<String>>(&mut con)
            .unwrap()
            .is_some_and(|e| e != before)
    });
    acme.db
        .sql("insert into jobs values (5000, 'queued', 1, 'ana', '{}')");
    wait_until("the new row in the mirror", || {
        redis::cmd("EXISTS")
            .arg("walcast:{acme}:row:public.jobs:5000")
            .query::<bool>(&mut con)
            .unwrap()
    });
    assert_mirror_matches(&mut con, &acme);
    // Readers can tell the stream is only complete from the new snapshot on.
    let complete_from: String = redis::cmd("HGET")
        .arg("walcast:{acme}:applied")
        .arg("complete_from_id")
        .query(&mut con)
        .unwrap();
    let first_new = &stream_events(&mut con, "acme")[0];
    assert_eq!(first_new["new"]["id"], json!(5000));
    let lsn = |id: &str| id.split('-').next().unwrap().parse::<u64>().unwrap();
    assert!(lsn(first_new["id"].as_str().unwrap()) >= lsn(&complete_from));
    let (status, _, stderr) = walcast.interrupt();
    assert!(status.success(), "{stderr}");
}

#[test]
fn resync_rebuilds_the_mirror_offline_and_online() {
    let redis = LocalRedis::start().expect("redis");
    let acme = tenant("acme");
    acme.db.sql(
        "insert into jobs values (1, 'queued', 1, 'ana', '{}'), (2, 'running', 1, 'bo', '{}')",
    );
    let dir = TempDir::new("redis-resync");
    let config = config(&redis, &[&acme], &dir);
    let mut con = redis_conn(&redis);

    // Offline: resync takes the snapshot itself.
    let (status, stdout, stderr) = walcast_output(&config, &["resync", "--tenant", "acme"]);
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains("mirror rebuilt from a new snapshot"),
        "{stdout}"
    );
    assert!(stderr.contains("snapshot of table done"), "{stderr}");
    let exists: bool = redis::cmd("EXISTS")
        .arg("walcast:{acme}:row:public.jobs:2")
        .query(&mut con)
        .unwrap();
    assert!(exists);

    // Online: a row changed behind walcast's back is repaired by resync.
    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 1);
    let _: () = redis::cmd("DEL")
        .arg("walcast:{acme}:row:public.jobs:1")
        .query(&mut con)
        .unwrap();
    let (status, stdout, _) = walcast_output(&config, &["resync", "--tenant", "acme"]);
    assert!(status.success());
    assert!(stdout.contains("is in use"), "{stdout}");
    wait_until("the repaired row", || {
        redis::cmd("EXISTS")
            .arg("walcast:{acme}:row:public.jobs:1")
            .query::<bool>(&mut con)
            .unwrap()
    });
    acme.db
        .sql("update jobs set status = 'succeeded' where id = 2");
    wait_until("the cold row to leave the mirror", || {
        !redis::cmd("EXISTS")
            .arg("walcast:{acme}:row:public.jobs:2")
            .query::<bool>(&mut con)
            .unwrap()
    });
    let (status, _, stderr) = walcast.interrupt();
    assert!(status.success(), "{stderr}");
}

#[test]
fn a_large_transaction_cut_off_midway_is_completed_exactly_once() {
    let redis = LocalRedis::start().expect("redis");
    let acme = tenant("acme");
    let dir = TempDir::new("redis-cutoff");
    let config = config(&redis, &[&acme], &dir);
    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 1);
    let mut con = redis_conn(&redis);
    const ROWS: i64 = 100_000;
    // Rows wide enough that the transaction cannot sit whole in socket and
    // client buffers: the server is still sending it when it is cut off.
    acme.db.sql(&format!(
        "insert into jobs select g, 'queued', 1, repeat(md5(g::text), 6), '{{}}' from generate_series(1, {ROWS}) g"
    ));
    // Part of the transaction is in Redis (chunks of 500), not all of it.
    let mut seen = 0;
    wait_until("the first chunks in the stream", || {
        seen = redis::cmd("XLEN")
            .arg("walcast:{acme}:events")
            .query::<i64>(&mut con)
            .unwrap();
        seen >= 1_000
    });
    // Stall walcast (its Redis pauses), so the server blocks mid-send, then
    // cut the replication connection and let Redis go on.
    let pid = redis.pid().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_secs(1));
    acme.db
        .sql("select pg_terminate_backend(active_pid) from pg_replication_slots where active");
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    assert!(
        seen < ROWS,
        "the transaction was already complete ({seen} events): the test proves nothing"
    );
    walcast.wait_log("tenant stream failed, retrying", 1);
    wait_until("the whole transaction in the stream", || {
        redis::cmd("XLEN")
            .arg("walcast:{acme}:events")
            .query::<i64>(&mut con)
            .unwrap()
            >= ROWS
    });
    let events = stream_events(&mut con, "acme");
    assert_eq!(events.len() as i64, ROWS, "every row once");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e["new"]["id"],
            json!(i as i64 + 1),
            "in order, no gap, no repeat"
        );
    }
    let rows: i64 = redis::cmd("HLEN")
        .arg("walcast:{acme}:rowindex:public.jobs")
        .query(&mut con)
        .unwrap();
    assert_eq!(rows, ROWS);
    let (status, _, stderr) = walcast.interrupt();
    assert!(status.success(), "{stderr}");
}

#[test]
fn unchanged_toast_columns_are_filled_from_the_mirror() {
    let redis = LocalRedis::start().expect("redis");
    let acme = tenant("acme");
    acme.db.sql("create table docs (id int primary key, status text, body text); alter table docs alter column body set storage external");
    let dir = TempDir::new("redis-toast");
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[redis]\nurl = \"{}\"\n[[mirror]]\ntable = \"docs\"\n[[tenants]]\nid = \"acme\"\nurl = \"{}\"\ntables = [\"docs\"]\n",
            redis.url(),
            acme.db.url()
        ),
    );
    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 1);
    // Stored out of line (storage external, 8 kB): an update of another
    // column does not send it.
    acme.db
        .sql("insert into docs values (1, 'draft', repeat('x', 8000))");
    acme.db.sql("update docs set status = 'final' where id = 1");
    let mut con = redis_conn(&redis);
    wait_until("both events", || stream_events(&mut con, "acme").len() >= 2);
    let events = stream_events(&mut con, "acme");
    assert_eq!(events[1]["op"], "UPDATE");
    assert_eq!(events[1]["new"]["status"], "final");
    assert_eq!(
        events[1]["new"]["body"].as_str().map(str::len),
        Some(8000),
        "filled from the mirror"
    );
    assert!(
        events[1].get("unchanged").is_none(),
        "nothing left unchanged: {}",
        events[1]
    );
    let body: String = redis::cmd("HGET")
        .arg("walcast:{acme}:row:public.docs:1")
        .arg("body")
        .query(&mut con)
        .unwrap();
    assert_eq!(body.len(), 8002, "the mirror keeps the JSON string");
    let (status, _, stderr) = walcast.interrupt();
    assert!(status.success(), "{stderr}");
}

/// The raw stream entry of the tenant's `n`th event (0-based), as stored.
fn raw_stream_event(con: &mut redis::Connection, n: usize) -> String {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("walcast:{acme}:events")
        .arg("-")
        .arg("+")
        .query(con)
        .unwrap();
    entries[n]
        .1
        .iter()
        .find(|(f, _)| f == "event")
        .map(|(_, v)| v.clone())
        .unwrap()
}

#[test]
fn a_filled_toast_value_keeps_every_digit_in_both_mirror_formats() {
    for format in ["hash", "json"] {
        let redis = LocalRedis::start().expect("redis");
        let acme = tenant("acme");
        acme.db.sql(
            "create table docs (id int primary key, status text, payload jsonb);
             alter table docs alter column payload set storage external",
        );
        let dir = TempDir::new("redis-toast-exact");
        let config = dir.write(
            "walcast.toml",
            &format!(
                "[redis]\nurl = \"{}\"\n[[mirror]]\ntable = \"docs\"\nformat = \"{format}\"\n[[tenants]]\nid = \"acme\"\nurl = \"{}\"\ntables = [\"docs\"]\n",
                redis.url(),
                acme.db.url()
            ),
        );
        let walcast = Walcast::spawn(&config, &["run"]);
        walcast.wait_log("streaming tenant=", 1);
        // Numbers no f64 holds, a float8-looking one, and keys jsonb orders
        // by length: all must come back byte for byte.
        acme.db.sql(
            "insert into docs values (1, 'draft', jsonb_build_object(
               'big', 123456789012345678901234567890::numeric,
               'tiny', 1.00000000000000000001::numeric,
               'f', 1.5996::numeric,
               'neg', -9223372036854775809::numeric,
               'pad', repeat('x', 6000)))",
        );
        acme.db.sql("update docs set status = 'final' where id = 1");
        let mut con = redis_conn(&redis);
        wait_until("both events", || stream_events(&mut con, "acme").len() >= 2);
        let insert = raw_stream_event(&mut con, 0);
        let update = raw_stream_event(&mut con, 1);
        // new.payload as the bytes it was written with.
        let payload = |event: &str| {
            #[derive(serde::Deserialize)]
            struct Event {
                new: std::collections::HashMap<String, Box<serde_json::value::RawValue>>,
            }
            let event: Event = serde_json::from_str(event).unwrap();
            event.new["payload"].get().to_owned()
        };
        assert_eq!(
            payload(&update),
            payload(&insert),
            "{format}: {update:.300}"
        );
        for digits in [
            "123456789012345678901234567890",
            "1.00000000000000000001",
            "1.5996",
            "-9223372036854775809",
        ] {
            assert!(
                update.contains(digits),
                "{format}: {digits} in {update:.300}"
            );
        }
        let (status, _, stderr) = walcast.interrupt();
        assert!(status.success(), "{stderr}");
    }
}
