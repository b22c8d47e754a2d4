//! The Redis sink's exactly-once guard, deterministically: a batch written
//! twice (as after a crash before the slot was confirmed), and a transaction
//! replayed after a partial (chunked) write, each end up in the stream once.

mod common;

use std::sync::Arc;

use common::*;
use walcast::config::{parse, TenantConfig};
use walcast::model::{ChangeBody, ChangeEvent, Datum, EventId, Lsn, Op, RowImage, TableName};
use walcast::sink::{EventSink, RedisSink};

/// A change of the row `id` of `public.jobs` (`status`: its new status;
/// None for a delete).
fn row_change(lsn: u64, index: u32, op: Op, id: i64, status: Option<&str>) -> ChangeEvent {
    let key = RowImage(vec![("id".into(), Datum::Int(id))]);
    let row = status.map(|status| {
        RowImage(vec![
            ("id".into(), Datum::Int(id)),
            ("status".into(), Datum::Text(status.into())),
        ])
    });
    ChangeEvent::new(
        EventId {
            commit_lsn: Lsn(lsn),
            index,
        },
        Arc::from("acme"),
        Some(1),
        Some(0),
        op,
        ChangeBody::Row {
            table: TableName::new("public", "jobs"),
            key: Some(key.clone()),
            old: row.is_none().then_some(key),
            new: row,
            unchanged: vec![],
        },
    )
}

fn event(lsn: u64, index: u32, id: i64, status: &str) -> ChangeEvent {
    row_change(lsn, index, Op::Insert, id, Some(status))
}

#[test]
fn replayed_batches_are_written_once() {
    let redis = LocalRedis::start().expect("redis");
    let text = format!(
        "[redis]\nurl = \"{}\"\n[[mirror]]\ntable = \"jobs\"\n[[tenants]]\nid = \"acme\"\nurl = \"postgres://u@localhost/db\"\ntables = [\"jobs\"]\n",
        redis.url()
    );
    let config = parse(std::path::Path::new("t.toml"), &text, &|_| None).unwrap();
    let tenant: TenantConfig = config.tenants[0].clone();
    let redis_config = config.redis.clone().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = walcast::sink::redis::connect(&redis_config).await.unwrap();
        let sink = RedisSink::new(&tenant, &redis_config, conn);
        let epoch = sink.finish_snapshot(Lsn(1)).await.unwrap();
        sink.set_expected_epoch(epoch).await;

        let first: Vec<ChangeEvent> = (0..3)
            .map(|i| event(100, i, i64::from(i), "queued"))
            .collect();
        sink.write(&first).await.unwrap();
        sink.commit(Some(Lsn(150))).await.unwrap();
        // The same transaction again (Postgres resends what was not confirmed).
        sink.write(&first).await.unwrap();
        sink.commit(Some(Lsn(150))).await.unwrap();

        // A large transaction: the first chunk lands, then the session dies
        // before its commit; the replay carries the whole transaction.
        let big: Vec<ChangeEvent> = (0..(walcast::sink::redis::BATCH_EVENTS as u32 + 10))
            .map(|i| event(200, i, 1000 + i64::from(i), "running"))
            .collect();
        sink.write(&big).await.unwrap(); // flushes the first full chunks
        sink.reset().await.unwrap(); // the session ended: the rest is dropped
        sink.write(&big).await.unwrap();
        sink.commit(Some(Lsn(250))).await.unwrap();
    });
    let mut con = redis_conn(&redis);
    let events = stream_events(&mut con, "acme");
    assert_eq!(events.len(), 3 + walcast::sink::redis::BATCH_EVENTS + 10);
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_by_key(|id| {
        let (l, i) = id.split_once('-').unwrap();
        (l.parse::<u64>().unwrap(), i.parse::<u32>().unwrap())
    });
    sorted.dedup();
    assert_eq!(ids, sorted, "stream ids are unique and in order");
    let applied: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg("walcast:{acme}:applied")
        .query(&mut con)
        .unwrap();
    assert!(
        applied.contains(&("end_lsn".into(), "250".into())),
        "{applied:?}"
    );
    assert!(
        applied.contains(&(
            "event_id".into(),
            format!("200-{}", walcast::sink::redis::BATCH_EVENTS + 9)
        )),
        "{applied:?}"
    );
    let rows: i64 = redis::cmd("HLEN")
        .arg("walcast:{acme}:rowindex:public.jobs")
        .query(&mut con)
        .unwrap();
    assert_eq!(rows, 3 + walcast::sink::redis::BATCH_EVENTS as i64 + 10);
}

fn sink_for(redis: &LocalRedis, extra: &str) -> (RedisSink, tokio::runtime::Runtime) {
    sink_at(&redis.url(), extra)
}

fn sink_at(url: &str, extra: &str) -> (RedisSink, tokio::runtime::Runtime) {
    let text = format!(
        "[redis]\nurl = \"{url}\"\n{extra}\n[[tenants]]\nid = \"acme\"\nurl = \"postgres://u@localhost/db\"\ntables = [\"jobs\"]\n",
    );
    let config =
        parse(std::path::Path::new("t.toml"), &text, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let tenant = config.tenants[0].clone();
    let redis_config = config.redis.clone().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sink = rt.block_on(async {
        let conn = walcast::sink::redis::connect(&redis_config).await.unwrap();
        let sink = RedisSink::new(&tenant, &redis_config, conn);
        let epoch = sink.finish_snapshot(Lsn(1)).await.unwrap();
        sink.set_expected_epoch(epoch).await;
        sink
    });
    (sink, rt)
}

fn update(lsn: u64, id: i64, status: &str, name: &str, commit_ts: i64) -> ChangeEvent {
    let row = RowImage(vec![
        ("id".into(), Datum::Int(id)),
        ("status".into(), Datum::Text(status.into())),
        ("name".into(), Datum::Text(name.into())),
    ]);
    ChangeEvent::new(
        EventId {
            commit_lsn: Lsn(lsn),
            index: 0,
        },
        Arc::from("acme"),
        Some(1),
        Some(commit_ts),
        Op::Update,
        ChangeBody::Row {
            table: TableName::new("public", "jobs"),
            key: Some(RowImage(vec![("id".into(), Datum::Int(id))])),
            new: Some(row),
            old: None,
            unchanged: vec![],
        },
    )
}

/// Microseconds since 2000-01-01 for "now".
fn pg_now() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    unix.as_micros() as i64 - 946_684_800_000_000
}

#[test]
fn cold_rows_linger_unindexed_with_a_custom_key_in_json() {
    let redis = LocalRedis::start().expect("redis");
    let (sink, rt) = sink_for(
        &redis,
        "[[mirror]]\ntable = \"jobs\"\nkey = [\"name\"]\nhot_when = [\"status=eq.running\"]\nkeep_cold_for_secs = 60\nindex = [\"status\"]\nformat = \"json\"\n",
    );
    rt.block_on(async {
        sink.write(&[update(10, 1, "running", "build:{x}", pg_now())])
            .await
            .unwrap();
        sink.commit(Some(Lsn(11))).await.unwrap();
    });
    let mut con = redis_conn(&redis);
    let key = "walcast:{acme}:row:public.jobs:build%3A%7Bx%7D";
    let row: String = redis::cmd("GET").arg(key).query(&mut con).unwrap();
    let row: serde_json::Value = serde_json::from_str(&row).unwrap();
    assert_eq!(
        row,
        serde_json::json!({"_event_id": "10-0", "id": 1, "status": "running", "name": "build:{x}"})
    );
    let ttl: i64 = redis::cmd("TTL").arg(key).query(&mut con).unwrap();
    assert_eq!(ttl, -1, "a hot row does not expire");
    let running: Vec<String> = redis::cmd("SMEMBERS")
        .arg("walcast:{acme}:idx:public.jobs:status:\"running\"")
        .query(&mut con)
        .unwrap();
    assert_eq!(running, [key]);

    rt.block_on(async {
        sink.write(&[update(20, 1, "succeeded", "build:{x}", pg_now())])
            .await
            .unwrap();
        sink.commit(Some(Lsn(21))).await.unwrap();
    });
    let ttl: i64 = redis::cmd("TTL").arg(key).query(&mut con).unwrap();
    assert!(
        (1..=60).contains(&ttl),
        "a cold row lingers for keep_cold_for_secs: ttl {ttl}"
    );
    let row: String = redis::cmd("GET").arg(key).query(&mut con).unwrap();
    assert!(row.contains("\"succeeded\""), "{row}");
    for status in ["running", "succeeded"] {
        let n: i64 = redis::cmd("SCARD")
            .arg(format!(
                "walcast:{{acme}}:idx:public.jobs:status:\"{status}\""
            ))
            .query(&mut con)
            .unwrap();
        assert_eq!(n, 0, "a cold row is in no index ({status})");
    }
}

#[test]
fn stream_retention_by_length_and_by_age() {
    let redis = LocalRedis::start().expect("redis");
    let (sink, rt) = sink_for(&redis, "stream_max_len = 10\n");
    rt.block_on(async {
        for i in 0..100u64 {
            sink.write(&[update(100 + i, 1, "running", "a", pg_now())])
                .await
                .unwrap();
            sink.commit(Some(Lsn(100 + i))).await.unwrap();
        }
    });
    let mut con = redis_conn(&redis);
    let len: i64 = redis::cmd("XLEN")
        .arg("walcast:{acme}:events")
        .query(&mut con)
        .unwrap();
    // MAXLEN ~ trims whole macro nodes: about 10, never all 100.
    assert!((10..100).contains(&len), "stream length {len}");

    let redis2 = LocalRedis::start().expect("redis");
    let (sink, rt) = sink_for(&redis2, "stream_max_age_secs = 3600\n");
    let hour = 3_600_000_000i64;
    rt.block_on(async {
        // Two events committed two hours ago, then one now: the old ones go.
        sink.write(&[update(10, 1, "running", "a", pg_now() - 2 * hour)])
            .await
            .unwrap();
        sink.commit(Some(Lsn(10))).await.unwrap();
        sink.write(&[update(20, 1, "running", "a", pg_now() - 2 * hour)])
            .await
            .unwrap();
        sink.commit(Some(Lsn(20))).await.unwrap();
        sink.write(&[update(30, 1, "running", "a", pg_now())])
            .await
            .unwrap();
        sink.commit(Some(Lsn(30))).await.unwrap();
    });
    let mut con = redis_conn(&redis2);
    let ids: Vec<String> = stream_events(&mut con, "acme")
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["30-0"]);
}

/// The hub's feed hears of every batch once it is in Redis, in stream order,
/// with exactly the events written; a batch Redis refused is never sent. Several batches are in flight at once here (a transaction
/// of several chunks), and the script cache is flushed midway (NOSCRIPT).
#[test]
fn the_hub_feed_gets_batches_in_order_once_in_redis() {
    let redis = LocalRedis::start().expect("redis");
    let (sink, rt) = sink_for(
        &redis,
        "[[mirror]]\ntable = \"jobs\"\nindex = [\"status\"]\n",
    );
    let (feed, mut received) = walcast::model::HubFeed::channel(1024);
    sink.set_feed(feed);
    let mut reported: Vec<Vec<EventId>> = Vec::new();
    let mut drain = |reported: &mut Vec<Vec<EventId>>| {
        while let Some(input) = received.try_recv() {
            match input {
                walcast::model::HubInput::Events(events) => {
                    reported.push(events.iter().map(|e| e.id).collect())
                }
                other => panic!("only events are sent here: {other:?}"),
            }
        }
    };
    let batch = walcast::sink::redis::BATCH_EVENTS as u32;
    let big: Vec<ChangeEvent> = (0..(3 * batch + 7))
        .map(|i| event(100, i, i64::from(i), "running"))
        .collect();
    let mut con = redis_conn(&redis);
    rt.block_on(async {
        // Written in pieces, as the pipeline hands them over.
        for piece in big.chunks(200) {
            sink.write(piece).await.unwrap();
        }
        sink.commit(Some(Lsn(150))).await.unwrap();
    });
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut con).unwrap();
    rt.block_on(async {
        for n in 0..3u32 {
            let txn: Vec<ChangeEvent> = (0..batch + 1)
                .map(|i| {
                    event(
                        200 + u64::from(n),
                        i,
                        10_000 + i64::from(n * 1000 + i),
                        "queued",
                    )
                })
                .collect();
            sink.write(&txn).await.unwrap();
            sink.commit(Some(Lsn(250 + u64::from(n)))).await.unwrap();
        }
    });
    let stream: Vec<String> = stream_events(&mut con, "acme")
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    drain(&mut reported);
    {
        assert!(
            reported
                .iter()
                .all(|b| !b.is_empty() && b.len() <= batch as usize),
            "one call per batch of at most {batch} events"
        );
        let flat: Vec<String> = reported.iter().flatten().map(|id| id.to_string()).collect();
        assert_eq!(
            flat, stream,
            "reported exactly the events in the stream, in order"
        );
    }

    // Redis lost the tenant's data: the next transaction is refused and not
    // reported.
    let before = reported.len();
    let _: () = redis::cmd("DEL")
        .arg("walcast:{acme}:epoch")
        .query(&mut con)
        .unwrap();
    let refused = rt.block_on(async {
        let txn: Vec<ChangeEvent> = (0..2 * batch)
            .map(|i| event(300, i, 50_000 + i64::from(i), "queued"))
            .collect();
        sink.write(&txn).await?;
        sink.commit(Some(Lsn(350))).await
    });
    assert!(
        matches!(refused, Err(walcast::sink::SinkError::Lost)),
        "{refused:?}"
    );
    drain(&mut reported);
    assert_eq!(reported.len(), before, "nothing refused is sent");
}

/// One transaction that touches the same rows several times, so that its
/// new rows go through the script, next to rows that go as plain commands.
fn mixed_transaction(lsn: u64) -> Vec<ChangeEvent> {
    vec![
        event(lsn, 0, 1, "queued"),
        row_change(lsn, 1, Op::Update, 1, Some("running")),
        event(lsn, 2, 2, "queued"),
        row_change(lsn, 3, Op::Delete, 2, None),
        event(lsn, 4, 3, "queued"),
        event(lsn, 5, 4, "running"),
    ]
}

/// Writes `mixed_transaction` and commits it.
fn write_mixed(sink: &RedisSink, rt: &tokio::runtime::Runtime) {
    rt.block_on(async {
        sink.write(&mixed_transaction(100)).await.unwrap();
        sink.commit(Some(Lsn(150))).await.unwrap();
    });
}

/// Redis after `mixed_transaction`: its six events once each, and rows 1
/// (running), 3 and 4, indexed.
fn assert_mixed_written(con: &mut redis::Connection) {
    assert_eq!(stream_events(con, "acme").len(), 6);
    let row = |con: &mut redis::Connection, id: i64| -> Option<String> {
        redis::cmd("HGET")
            .arg(format!("walcast:{{acme}}:row:public.jobs:{id}"))
            .arg("status")
            .query(con)
            .unwrap()
    };
    assert_eq!(row(con, 1).as_deref(), Some("\"running\""));
    assert_eq!(row(con, 2), None, "inserted and deleted in one transaction");
    assert_eq!(row(con, 3).as_deref(), Some("\"queued\""));
    assert_eq!(row(con, 4).as_deref(), Some("\"running\""));
    let members = |con: &mut redis::Connection, status: &str| -> Vec<String> {
        let mut m: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!(
                "walcast:{{acme}}:idx:public.jobs:status:\"{status}\""
            ))
            .query(con)
            .unwrap();
        m.sort();
        m
    };
    assert_eq!(members(con, "queued"), ["walcast:{acme}:row:public.jobs:3"]);
    assert_eq!(
        members(con, "running"),
        [
            "walcast:{acme}:row:public.jobs:1",
            "walcast:{acme}:row:public.jobs:4"
        ]
    );
    let rowindex: i64 = redis::cmd("HLEN")
        .arg("walcast:{acme}:rowindex:public.jobs")
        .query(con)
        .unwrap();
    assert_eq!(rowindex, 3);
}

/// The names of the connections Redis has open.
fn client_names(con: &mut redis::Connection) -> Vec<String> {
    let list: String = redis::cmd("CLIENT").arg("LIST").query(con).unwrap();
    list.lines()
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("name=")))
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A command that an earlier writer sent but Redis had not run yet cannot
/// run once a new writer started: the new writer closes the old
/// connection before it reads the watermark. Here the earlier writer is a
/// connection of the writer's name holding an open MULTI.
#[test]
fn a_new_writer_fences_off_an_earlier_writers_connection() {
    let redis = LocalRedis::start().expect("redis");
    let (sink, rt) = sink_for(
        &redis,
        "[[mirror]]\ntable = \"jobs\"\nindex = [\"status\"]\n",
    );
    let mut stale = redis_conn(&redis);
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("walcast-writer:walcast:{acme}:events")
        .query(&mut stale)
        .unwrap();
    let _: () = redis::cmd("MULTI").query(&mut stale).unwrap();
    let _: () = redis::cmd("SET")
        .arg("walcast:{acme}:stale")
        .arg("1")
        .query(&mut stale)
        .unwrap();
    write_mixed(&sink, &rt);
    let exec: redis::RedisResult<redis::Value> = redis::cmd("EXEC").query(&mut stale);
    assert!(exec.is_err(), "the earlier writer's EXEC ran: {exec:?}");
    let mut con = redis_conn(&redis);
    let stale_written: bool = redis::cmd("EXISTS")
        .arg("walcast:{acme}:stale")
        .query(&mut con)
        .unwrap();
    assert!(!stale_written);
    assert_eq!(
        client_names(&mut con),
        ["walcast-writer:walcast:{acme}:events"],
        "the new writer's connection is named, the old one is gone"
    );
    assert_mixed_written(&mut con);
}

/// The writer's own connection speaks what the URL says, as redis-rs does
/// for walcast's other connections: a Unix socket, a user and password,
/// and a database other than 0.
#[test]
fn the_writer_follows_the_url_to_a_unix_socket_a_user_and_a_database() {
    let redis = LocalRedis::start().expect("redis");
    let mut con = redis_conn(&redis);
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("writer")
        .arg("on")
        .arg(">s3cret")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query(&mut con)
        .unwrap();
    let url = format!(
        "redis+unix://{}?db=3&user=writer&pass=s3cret",
        redis.socket_path().display()
    );
    let (sink, rt) = sink_at(&url, "[[mirror]]\ntable = \"jobs\"\nindex = [\"status\"]\n");
    write_mixed(&sink, &rt);
    assert!(
        stream_events(&mut con, "acme").is_empty(),
        "nothing in database 0"
    );
    let _: () = redis::cmd("SELECT").arg(3).query(&mut con).unwrap();
    assert_mixed_written(&mut con);
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("normal")
        .query(&mut con)
        .unwrap();
    let writer = list
        .lines()
        .find(|l| l.contains("name=walcast-writer:"))
        .unwrap_or_else(|| panic!("no writer connection in {list}"));
    assert!(
        writer.contains("user=writer") && writer.contains(" db=3 "),
        "{writer}"
    );
    assert!(
        writer.contains("addr=/") || writer.contains("laddr=/"),
        "{writer}"
    );
}

/// A Redis user that may not use CLIENT (no fence): every row goes through
/// the script, and the result is the same.
#[test]
fn without_client_commands_every_row_goes_through_the_script() {
    let redis = LocalRedis::start().expect("redis");
    let mut con = redis_conn(&redis);
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("nofence")
        .arg("on")
        .arg(">secret")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-client")
        .query(&mut con)
        .unwrap();
    let url = format!("redis://nofence:secret@127.0.0.1:{}/", redis.port());
    let (sink, rt) = sink_at(&url, "[[mirror]]\ntable = \"jobs\"\nindex = [\"status\"]\n");
    write_mixed(&sink, &rt);
    // Replayed whole (a restart before the slot was confirmed).
    rt.block_on(sink.reset()).unwrap();
    write_mixed(&sink, &rt);
    assert!(
        client_names(&mut con).is_empty(),
        "the writer could not name its connection"
    );
    assert_mixed_written(&mut con);
}

/// The stream deleted (or evicted) while the epoch marker stays: the batch
/// fails as a lost tenant (a re-snapshot and a gap follow) instead of its
/// events going nowhere, and the stream is not recreated half-empty.
#[test]
fn a_vanished_stream_is_a_lost_tenant() {
    let redis = LocalRedis::start().expect("redis");
    let (sink, rt) = sink_for(&redis, "[[mirror]]\ntable = \"jobs\"\n");
    let mut con = redis_conn(&redis);
    let exists = |con: &mut redis::Connection| -> bool {
        redis::cmd("EXISTS")
            .arg("walcast:{acme}:events")
            .query(con)
            .unwrap()
    };
    assert!(exists(&mut con), "the snapshot's end creates the stream");
    let _: () = redis::cmd("DEL")
        .arg("walcast:{acme}:events")
        .query(&mut con)
        .unwrap();
    let result = rt.block_on(async {
        sink.write(&[event(100, 0, 1, "queued")]).await?;
        sink.commit(Some(Lsn(150))).await
    });
    assert!(
        matches!(result, Err(walcast::sink::SinkError::Lost)),
        "{result:?}"
    );
    assert!(!exists(&mut con));
}
