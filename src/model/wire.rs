//! The event's JSON encoding, written once into `Bytes` and shared by every
//! subscriber. Written by hand (not through a `serde_json::Value` tree) so
//! that each event costs one buffer.

use bytes::Bytes;

use super::event::{ChangeBody, ChangeEvent, Datum, RowImage};
use super::format_pg_timestamp;

/// Encodes an event as one JSON object, fields in the documented order:
/// `id, tenant, lsn, xid, commit_ts, schema, table, op, key, new, old`, then
/// `unchanged`, `truncate` or `message` where they apply.
pub fn encode_event(event: &ChangeEvent) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(event.id.to_string().as_bytes());
    out.extend_from_slice(b"\",\"tenant\":");
    write_str(&mut out, &event.tenant);
    out.extend_from_slice(b",\"lsn\":\"");
    out.extend_from_slice(event.id.commit_lsn.to_string().as_bytes());
    out.extend_from_slice(b"\",\"xid\":");
    match event.xid {
        Some(xid) => out.extend_from_slice(xid.to_string().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"commit_ts\":");
    match event.commit_ts_micros {
        Some(ts) => write_str(&mut out, &format_pg_timestamp(ts)),
        None => out.extend_from_slice(b"null"),
    }
    match event.table() {
        Some(table) => {
            out.extend_from_slice(b",\"schema\":");
            write_str(&mut out, &table.schema);
            out.extend_from_slice(b",\"table\":");
            write_str(&mut out, &table.name);
        }
        None => out.extend_from_slice(b",\"schema\":null,\"table\":null"),
    }
    out.extend_from_slice(b",\"op\":\"");
    out.extend_from_slice(event.op.as_str().as_bytes());
    out.push(b'"');
    match &event.body {
        ChangeBody::Row {
            key,
            new,
            old,
            unchanged,
            ..
        } => {
            out.extend_from_slice(b",\"key\":");
            write_row(&mut out, key.as_ref());
            out.extend_from_slice(b",\"new\":");
            write_row(&mut out, new.as_ref());
            out.extend_from_slice(b",\"old\":");
            write_row(&mut out, old.as_ref());
            if !unchanged.is_empty() {
                out.extend_from_slice(b",\"unchanged\":[");
                for (i, column) in unchanged.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_str(&mut out, column);
                }
                out.push(b']');
            }
        }
        ChangeBody::Truncate {
            cascade,
            restart_identity,
            ..
        } => {
            out.extend_from_slice(
                b",\"key\":null,\"new\":null,\"old\":null,\"truncate\":{\"cascade\":",
            );
            out.extend_from_slice(if *cascade { b"true" } else { b"false" });
            out.extend_from_slice(b",\"restart_identity\":");
            out.extend_from_slice(if *restart_identity { b"true" } else { b"false" });
            out.push(b'}');
        }
        ChangeBody::Message {
            transactional,
            prefix,
            content,
        } => {
            out.extend_from_slice(
                b",\"key\":null,\"new\":null,\"old\":null,\"message\":{\"transactional\":",
            );
            out.extend_from_slice(if *transactional { b"true" } else { b"false" });
            out.extend_from_slice(b",\"prefix\":");
            write_str(&mut out, prefix);
            match std::str::from_utf8(content) {
                Ok(text) => {
                    out.extend_from_slice(b",\"encoding\":\"utf8\",\"content\":");
                    write_str(&mut out, text);
                }
                Err(_) => {
                    out.extend_from_slice(b",\"encoding\":\"base64\",\"content\":\"");
                    out.extend_from_slice(base64_encode(content).as_bytes());
                    out.push(b'"');
                }
            }
            out.push(b'}');
        }
    }
    out.push(b'}');
    Bytes::from(out)
}

fn write_row(out: &mut Vec<u8>, row: Option<&RowImage>) {
    let Some(row) = row else {
        out.extend_from_slice(b"null");
        return;
    };
    out.push(b'{');
    for (i, (column, value)) in row.0.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, column);
        out.push(b':');
        write_datum(out, value);
    }
    out.push(b'}');
}

/// One value as JSON text (what a mirrored hash field holds).
pub fn datum_json(value: &Datum) -> String {
    let mut out = Vec::new();
    write_datum(&mut out, value);
    // Only valid UTF-8 is ever written.
    String::from_utf8(out).unwrap_or_default()
}

/// A row image as one JSON object, with extra leading fields.
pub fn row_json(row: &RowImage, extra: &[(&str, &str)]) -> String {
    let mut out = Vec::with_capacity(128);
    out.push(b'{');
    for (i, (k, v)) in extra.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(&mut out, k);
        out.push(b':');
        write_str(&mut out, v);
    }
    for (i, (column, value)) in row.0.iter().enumerate() {
        if i > 0 || !extra.is_empty() {
            out.push(b',');
        }
        write_str(&mut out, column);
        out.push(b':');
        write_datum(&mut out, value);
    }
    out.push(b'}');
    String::from_utf8(out).unwrap_or_default()
}

fn write_datum(out: &mut Vec<u8>, value: &Datum) {
    match value {
        Datum::Null => out.extend_from_slice(b"null"),
        Datum::Bool(true) => out.extend_from_slice(b"true"),
        Datum::Bool(false) => out.extend_from_slice(b"false"),
        Datum::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Datum::Float(f) => {
            // serde_json writes the shortest text that reads back as the same f64.
            if serde_json::to_writer(&mut *out, f).is_err() || !f.is_finite() {
                out.extend_from_slice(b"null");
            }
        }
        Datum::Text(s) => write_str(out, s),
        Datum::Json(raw) => out.extend_from_slice(raw.as_bytes()),
        Datum::Object(fields) => {
            out.push(b'{');
            for (i, (name, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, name);
                out.push(b':');
                write_datum(out, item);
            }
            out.push(b'}');
        }
        Datum::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_datum(out, item);
            }
            out.push(b']');
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Standard base64 with padding (RFC 4648), for message contents that are not UTF-8.
pub fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{EventId, Lsn, Op, TableName};

    #[test]
    fn encodes_an_update_like_the_design_example() {
        let row = |pairs: Vec<(&str, Datum)>| {
            RowImage(pairs.into_iter().map(|(c, v)| (Arc::from(c), v)).collect())
        };
        let event = ChangeEvent::new(
            EventId {
                commit_lsn: Lsn(23_803_720),
                index: 0,
            },
            Arc::from("acme"),
            Some(751),
            Some(848_027_642_123_456),
            Op::Update,
            ChangeBody::Row {
                table: TableName::new("public", "tasks"),
                key: Some(row(vec![("id", Datum::Int(42))])),
                new: Some(row(vec![
                    ("id", Datum::Int(42)),
                    ("status", Datum::Text("running".into())),
                    ("progress", Datum::Float(0.4)),
                    ("meta", Datum::Json("{\"step\": \"build\"}".into())),
                    (
                        "tags",
                        Datum::Array(vec![Datum::Text("a\"b".into()), Datum::Null]),
                    ),
                ])),
                old: Some(row(vec![("id", Datum::Int(42))])),
                unchanged: vec![],
            },
        );
        let json: serde_json::Value = serde_json::from_slice(event.encoded()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":"23803720-0","tenant":"acme","lsn":"0/16B3748","xid":751,
              "commit_ts":"2026-11-15T03:14:02.123456Z","schema":"public","table":"tasks","op":"UPDATE",
              "key":{"id":42},"new":{"id":42,"status":"running","progress":0.4,"meta":{"step":"build"},
              "tags":["a\"b",null]},"old":{"id":42}})
        );
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), expected);
        }
    }
}
