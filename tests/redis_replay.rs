//! The Redis sink's exactly-once guard, deterministically: a batch written
//! twice (as after a crash before the slot was confirmed), and a transaction
//! replayed after a partial (chunked) write, each end up in the stream once.

mod common;

use std::sync::Arc;

use common::*;
use walcast::config::{parse, TenantConfig};
use walcast::model::{ChangeBody, ChangeEvent, Datum, EventId, Lsn, Op, RowImage, TableName};
use walcast::sink::{EventSink, RedisSink};

fn event(lsn: u64, index: u32, id: i64, status: &str) -> ChangeEvent {
    let row = RowImage(vec![
        ("id".into(), Datum::Int(id)),
        ("status".into(), Datum::Text(status.into())),
    ]);
    ChangeEvent::new(
        EventId {
            commit_lsn: Lsn(lsn),
            index,
        },
        Arc::from("acme"),
        Some(1),
        Some(0),
        Op::Insert,
        ChangeBody::Row {
            table: TableName::new("public", "jobs"),
            key: Some(RowImage(vec![("id".into(), Datum::Int(id))])),
            new: Some(row),
            old: None,
            unchanged: vec![],
        },
    )
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
    let rows: i64 = redis::cmd("SCARD")
        .arg("walcast:{acme}:rows:public.jobs")
        .query(&mut con)
        .unwrap();
    assert_eq!(rows, 3 + walcast::sink::redis::BATCH_EVENTS as i64 + 10);
}
