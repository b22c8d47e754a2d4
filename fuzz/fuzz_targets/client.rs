//! What clients send, through the code that reads it: a query string (SSE,
//! state), a WebSocket `subscribe` message, and the filters in them, built
//! into a subscription against a known schema and matched against rows of
//! every column kind. Input: text; its first byte picks the form. Nothing
//! may panic; a built subscription must answer `matches` for any row.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use walcast::auth::Authenticator;
use walcast::filter::{ColumnKind, RowFilter};
use walcast::http::client::Query;
use walcast::hub::{Schema, Subscription};
use walcast::model::{Datum, Op, RowImage, TableName};

fn rows() -> Vec<RowImage> {
    let row = |values: [Datum; 5]| {
        RowImage(
            ["id", "status", "at", "done", "tags"]
                .iter()
                .zip(values)
                .map(|(c, v)| (Arc::from(*c), v))
                .collect(),
        )
    };
    vec![
        row([
            Datum::Int(42),
            Datum::Text("running".into()),
            Datum::Text("2026-11-28T03:14:02.5Z".into()),
            Datum::Bool(false),
            Datum::Array(vec![Datum::Text("a".into())]),
        ]),
        row([
            Datum::Text("123456789012345678901234567890.5".into()),
            Datum::Null,
            Datum::Text("infinity".into()),
            Datum::Null,
            Datum::Null,
        ]),
        row([
            Datum::Float(-0.5),
            Datum::Text("".into()),
            Datum::Text("-0043-03-15".into()),
            Datum::Bool(true),
            Datum::Json("{}".into()),
        ]),
    ]
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(first) = text.chars().next() else {
        return;
    };
    let rest = &text[first.len_utf8()..];
    let table = TableName::new("public", "tasks");
    let kinds = [
        ColumnKind::Number,
        ColumnKind::Text,
        ColumnKind::Time,
        ColumnKind::Bool,
        ColumnKind::Structured,
    ];
    match u32::from(first) % 3 {
        // One filter, against every kind and row.
        0 => {
            if let Ok(filter) = RowFilter::parse(rest) {
                let _ = filter.to_string();
                for row in rows() {
                    let _ = filter.matches(&row);
                    for kind in kinds {
                        let _ = filter.check_kind(kind).map_err(|e| e.to_string());
                        let _ = filter.matches_as(&row, Some(kind));
                    }
                }
            }
        }
        // A query string or a WebSocket message, built into a subscription.
        n => {
            let request = if n == 1 {
                match Query::parse(rest) {
                    Ok(query) => query.subscription(),
                    Err(_) => return,
                }
            } else {
                let Ok(message) = serde_json::from_str::<serde_json::Value>(rest) else {
                    return;
                };
                match walcast::http::ws::subscribe_request(&message) {
                    Ok((request, _since)) => request,
                    Err(_) => return,
                }
            };
            let principal = Authenticator::anonymous_reader("t");
            let schema = Schema::new([(
                table.clone(),
                ["id", "status", "at", "done", "tags"]
                    .iter()
                    .zip(kinds)
                    .map(|(c, k)| (c.to_string(), k))
                    .collect(),
            )]);
            let tables = [table.clone(), TableName::new("public", "environments")];
            for schema in [Some(&schema), None] {
                if let Ok(subscription) = Subscription::build(&request, &principal, &tables, schema) {
                    for row in rows() {
                        for op in [Op::Insert, Op::Update, Op::Delete, Op::Truncate, Op::Message] {
                            let _ = subscription.matches_parts(Some(&table), op, Some(&row));
                        }
                    }
                    let _ = subscription.matches_parts(None, Op::Message, None);
                }
            }
        }
    }
});
