//! What matching and fan-out cost per event in a tenant's hub
//! (`Fanout::publish`), for the subscriptions `[server]`'s limits allow:
//!
//! - `worst_connection`: one WebSocket at every default limit: 32
//!   subscriptions of the table, each with 8 different `in.(…)` filters of
//!   100 values (the row passes all of them, so every filter is evaluated);
//! - `one_subscription`: one subscription without filters, for the floor;
//! - `eq_1000`: 1,000 subscriptions with `id=eq.N` each, one of them
//!   matching.
//!
//! Each iteration publishes one chunk of 64 events (as the hub's task does)
//! and drains the queues; throughput is per event. Run:
//! `cargo bench --bench delivery`. Results: docs/benchmarks.md.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use walcast::auth::Authenticator;
use walcast::filter::ColumnKind;
use walcast::hub::{
    DeliveryBudget, Fanout, QueueLimits, Schema, Subscription, SubscriptionRequest,
};
use walcast::model::{ChangeBody, ChangeEvent, Datum, EventId, Lsn, Op, RowImage, TableName};

fn table() -> TableName {
    TableName::new("public", "tasks")
}

fn events(lsn: u64, n: u32) -> Vec<ChangeEvent> {
    (0..n)
        .map(|index| {
            let row = RowImage(vec![
                ("id".into(), Datum::Int(i64::from(index))),
                ("status".into(), Datum::Text("queued".into())),
                ("progress".into(), Datum::Float(0.5)),
                ("payload".into(), Datum::Json("{\"step\":\"build\"}".into())),
                (
                    "updated_at".into(),
                    Datum::Text("2026-12-04T05:00:00Z".into()),
                ),
            ]);
            ChangeEvent::new(
                EventId {
                    commit_lsn: Lsn(lsn),
                    index,
                },
                "acme".into(),
                Some(1),
                Some(0),
                Op::Insert,
                ChangeBody::Row {
                    table: table(),
                    key: Some(RowImage(vec![("id".into(), Datum::Int(i64::from(index)))])),
                    new: Some(row),
                    old: None,
                    unchanged: Vec::new(),
                },
            )
        })
        .collect()
}

fn subscription(filters: Vec<String>) -> Subscription {
    let principal = Authenticator::anonymous_reader("acme");
    let schema = Schema::new([(
        table(),
        vec![
            ("id".to_string(), ColumnKind::Number),
            ("status".to_string(), ColumnKind::Text),
            ("progress".to_string(), ColumnKind::Number),
            ("payload".to_string(), ColumnKind::Structured),
            ("updated_at".to_string(), ColumnKind::Time),
        ],
    )]);
    let request = SubscriptionRequest {
        tables: vec!["public.tasks".into()],
        ops: Vec::new(),
        filters,
    };
    Subscription::build(&request, &principal, &[table()], Some(&schema)).expect("subscription")
}

fn bench(c: &mut Criterion, name: &str, subscriptions: Vec<Subscription>) {
    let fanout = Fanout::new(
        "acme".into(),
        QueueLimits {
            events: 1 << 20,
            bytes: 1 << 40,
        },
        DeliveryBudget::new(1 << 40),
    );
    let mut receivers: Vec<_> = subscriptions
        .into_iter()
        .map(|s| fanout.subscribe(Arc::new(s)))
        .collect();
    let mut group = c.benchmark_group("delivery");
    group.throughput(Throughput::Elements(64));
    let lsn = std::cell::Cell::new(1);
    group.bench_function(name, |b| {
        b.iter_batched(
            || {
                lsn.set(lsn.get() + 1);
                events(lsn.get(), 64)
            },
            |chunk| {
                fanout.publish(black_box(&chunk));
                for receiver in &mut receivers {
                    while let Some(live) = receiver.try_recv() {
                        black_box(live);
                    }
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// 8 different `in.(…)` filters of 100 values, each with the row's status.
fn worst_filters() -> Vec<String> {
    (0..8)
        .map(|f| {
            let mut values: Vec<String> = (0..99).map(|v| format!("s{f}-{v}")).collect();
            values.push("queued".into());
            format!("status=in.({})", values.join(","))
        })
        .collect()
}

fn delivery(c: &mut Criterion) {
    bench(
        c,
        "worst_connection",
        (0..32).map(|_| subscription(worst_filters())).collect(),
    );
    bench(c, "one_subscription", vec![subscription(Vec::new())]);
    bench(
        c,
        "eq_1000",
        (0..1000)
            .map(|n| subscription(vec![format!("id=eq.{n}")]))
            .collect(),
    );
}

criterion_group!(benches, delivery);
criterion_main!(benches);
