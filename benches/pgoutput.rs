//! The pure hot path over a stream captured from a real Postgres 15
//! (`benches/fixtures/tasks_100k.pgoutput.gz`, made by
//! `examples/capture_fixture.rs`): 1,000 transactions, 50,000 inserts and
//! 50,000 updates of a tasks table (bigint, text, float8, jsonb, text[],
//! timestamptz, uuid). Groups:
//!
//! - `decode`: walcast's pgoutput decoder over every message of the stream
//!   (Begin, Relation, Insert, Update, Commit), counted per row message;
//! - `decode_apply_encode`: decode, apply (typed values, event ids) and the
//!   JSON encoding of each event, counted per event; and the same followed
//!   by the Redis writer's encoding of the events in batches of its size
//!   (`walcast+redis_batches`: mirror writes and stream appends, as bytes
//!   ready to send);
//! - `pg_walstream`: the `pg_walstream` crate on the same bytes, its parser
//!   alone and its parser plus `ChangeEvent` plus serde_json, for a ratio.
//!
//! Run: `cargo bench --bench pgoutput`. Results: docs/benchmarks.md.

use std::hint::black_box;
use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use walcast::apply::Applier;
use walcast::decode::decode;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/benches/fixtures/tasks_100k.pgoutput.gz"
);

/// The captured stream: each message a `Bytes` slice of one buffer, as the
/// replication client hands them over.
struct Stream {
    messages: Vec<Bytes>,
    row_messages: u64,
}

fn load() -> Stream {
    let file = std::fs::File::open(FIXTURE).unwrap_or_else(|e| panic!("{FIXTURE}: {e}"));
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut raw)
        .expect("gunzip fixture");
    let raw = Bytes::from(raw);
    let mut messages = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        let len = u32::from_be_bytes(raw[pos..pos + 4].try_into().unwrap()) as usize;
        messages.push(raw.slice(pos + 4..pos + 4 + len));
        pos += 4 + len;
    }
    let row_messages = messages
        .iter()
        .filter(|m| matches!(m[0], b'I' | b'U' | b'D'))
        .count() as u64;
    Stream {
        messages,
        row_messages,
    }
}

fn benches(c: &mut Criterion) {
    let stream = load();
    let rows = stream.row_messages;

    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(rows));
    group.sample_size(20);
    group.bench_function("walcast", |b| {
        b.iter(|| {
            for message in &stream.messages {
                black_box(decode(black_box(message)).unwrap());
            }
        })
    });
    group.bench_function("pg_walstream", |b| {
        b.iter_batched(
            || pg_walstream::LogicalReplicationParser::with_protocol_version(1),
            |mut parser| {
                for message in &stream.messages {
                    // The parser takes the message by value (a cheap Bytes clone).
                    black_box(parser.parse_wal_message_bytes(message.clone()).unwrap());
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("decode_apply_encode");
    group.throughput(Throughput::Elements(rows));
    group.sample_size(10);
    group.bench_function("walcast", |b| {
        b.iter_batched(
            || (Applier::new(Arc::from("acme")), Vec::with_capacity(16)),
            |(mut applier, mut events)| {
                for message in &stream.messages {
                    let msg = decode(message).unwrap();
                    applier.apply(msg, &mut events).unwrap();
                    // What a sink does with an event: take its encoded JSON.
                    for event in events.drain(..) {
                        black_box(event.encoded());
                    }
                }
            },
            BatchSize::SmallInput,
        )
    });
    // The same events as the Redis writer encodes them, in batches of its
    // size: the mirror's writes (status queued/running hot, indexed by
    // status) and the stream's XADDs.
    let config = walcast::config::parse(
        std::path::Path::new("bench.toml"),
        "[redis]\nurl = \"redis://127.0.0.1:1/\"\n[[mirror]]\ntable = \"public.tasks\"\n\
         hot_when = [\"status=in.(queued,running)\"]\nindex = [\"status\"]\n[[tenants]]\n\
         id = \"acme\"\nurl = \"postgres://u@localhost/db\"\ntables = [\"public.tasks\"]\n",
        &|_| None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (tenant, redis) = (&config.tenants[0], config.redis.as_ref().unwrap());
    group.bench_function("walcast+redis_batches", |b| {
        b.iter_batched(
            || (Applier::new(Arc::from("acme")), Vec::with_capacity(16)),
            |(mut applier, mut events)| {
                for message in &stream.messages {
                    applier
                        .apply(decode(message).unwrap(), &mut events)
                        .unwrap();
                    if events.len() >= walcast::sink::redis::BATCH_EVENTS {
                        black_box(walcast::sink::redis::encoded_batch_len(
                            tenant, redis, &events,
                        ));
                        events.clear();
                    }
                }
                black_box(walcast::sink::redis::encoded_batch_len(
                    tenant, redis, &events,
                ));
            },
            BatchSize::SmallInput,
        )
    });
    // pg_walstream's events keep column values as untyped text and have no
    // encoding of their own: serde_json (which its docs name for shipping
    // events) stands in for walcast's encode-once step.
    group.bench_function("pg_walstream+serde_json", |b| {
        b.iter_batched(
            || pg_walstream::PgOutputDecoder::with_protocol_version(1),
            |mut decoder| {
                for message in &stream.messages {
                    let event = decoder
                        .decode_message(message.clone(), pg_walstream::Lsn::new(0))
                        .unwrap();
                    if let Some(event) = event {
                        black_box(serde_json::to_vec(&event).unwrap());
                    }
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(pgoutput, benches);
criterion_main!(pgoutput);
