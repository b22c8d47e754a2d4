//! The event's JSON encoding, written once into `Bytes` and shared by every
//! subscriber. Written by hand (not through a `serde_json::Value` tree) so
//! that each event costs one buffer.

use std::cell::RefCell;
use std::sync::Arc;

use bytes::Bytes;

use super::event::{ChangeBody, ChangeEvent, Datum, RowImage};
use super::time::write_pg_timestamp;

/// Encodes an event as one JSON object, fields in the documented order:
/// `id, tenant, lsn, xid, commit_ts, schema, table, op, key, new, old`, then
/// `unchanged`, `truncate` or `message` where they apply.
pub fn encode_event(event: &ChangeEvent) -> Bytes {
    ENCODER.with(|encoder| {
        let mut encoder = encoder.borrow_mut();
        let Encoder { buf, header } = &mut *encoder;
        buf.clear();
        write_event(buf, header, event);
        // One allocation of the exact size; `Bytes::from(Vec)` of a longer
        // buffer would allocate a second time for its reference count.
        let encoded = Bytes::copy_from_slice(buf);
        if buf.capacity() > MAX_KEPT_BUFFER {
            *buf = Vec::new();
        }
        encoded
    })
}

/// A buffer larger than this (an event with a large value) is given back
/// rather than kept for the next event.
const MAX_KEPT_BUFFER: usize = 64 * 1024;

thread_local! {
    /// The encoding buffer and the last transaction header of this thread.
    static ENCODER: RefCell<Encoder> = const {
        RefCell::new(Encoder {
            buf: Vec::new(),
            header: None,
        })
    };
}

struct Encoder {
    buf: Vec<u8>,
    header: Option<TxnHeader>,
}

fn write_event(out: &mut Vec<u8>, cached: &mut Option<TxnHeader>, event: &ChangeEvent) {
    if !cached.as_ref().is_some_and(|header| header.is_for(event)) {
        *cached = Some(TxnHeader::new(event));
    }
    if let Some(header) = cached {
        out.extend_from_slice(header.id_prefix());
        write_u64(out, event.id.index.into());
        out.extend_from_slice(header.rest());
    }
    match event.table() {
        Some(table) => {
            out.extend_from_slice(b",\"schema\":");
            write_str(out, &table.schema);
            out.extend_from_slice(b",\"table\":");
            write_str(out, &table.name);
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
            write_row(out, key.as_ref());
            out.extend_from_slice(b",\"new\":");
            write_row(out, new.as_ref());
            out.extend_from_slice(b",\"old\":");
            write_row(out, old.as_ref());
            if !unchanged.is_empty() {
                out.extend_from_slice(b",\"unchanged\":[");
                for (i, column) in unchanged.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_str(out, column);
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
            write_str(out, prefix);
            match std::str::from_utf8(content) {
                Ok(text) => {
                    out.extend_from_slice(b",\"encoding\":\"utf8\",\"content\":");
                    write_str(out, text);
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
}

/// What every event of one transaction repeats: `{"id":"<commit lsn>-`
/// before the event's index, and `",tenant":…,"lsn":…,"xid":…,"commit_ts":…`
/// after it. A transaction's events are
/// encoded one after another on its tenant's task, so this is written once
/// per transaction and copied after that (it was a tenth of the encoding
/// time). Keyed by everything it is made of, so a miss only costs a rewrite.
struct TxnHeader {
    tenant: Arc<str>,
    commit_lsn: u64,
    xid: Option<u32>,
    commit_ts_micros: Option<i64>,
    /// The part before the index, then the part after it.
    bytes: Vec<u8>,
    /// Where the index goes in `bytes`.
    index_at: usize,
}

impl TxnHeader {
    fn new(event: &ChangeEvent) -> Self {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(b"{\"id\":\"");
        write_u64(&mut out, event.id.commit_lsn.0);
        out.push(b'-');
        let index_at = out.len();
        out.extend_from_slice(b"\",\"tenant\":");
        write_str(&mut out, &event.tenant);
        out.extend_from_slice(b",\"lsn\":\"");
        // As `Lsn`'s Display (`0/16B3748`), without a temporary String.
        write_hex(&mut out, (event.id.commit_lsn.0 >> 32) as u32);
        out.push(b'/');
        write_hex(&mut out, event.id.commit_lsn.0 as u32);
        out.extend_from_slice(b"\",\"xid\":");
        match event.xid {
            Some(xid) => write_u64(&mut out, xid.into()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"commit_ts\":");
        match event.commit_ts_micros {
            Some(ts) => {
                // The timestamp's characters need no JSON escaping.
                out.push(b'"');
                write_pg_timestamp(&mut out, ts);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        TxnHeader {
            tenant: Arc::clone(&event.tenant),
            commit_lsn: event.id.commit_lsn.0,
            xid: event.xid,
            commit_ts_micros: event.commit_ts_micros,
            bytes: out,
            index_at,
        }
    }

    fn id_prefix(&self) -> &[u8] {
        &self.bytes[..self.index_at]
    }

    fn rest(&self) -> &[u8] {
        &self.bytes[self.index_at..]
    }

    fn is_for(&self, event: &ChangeEvent) -> bool {
        self.commit_lsn == event.id.commit_lsn.0
            && self.xid == event.xid
            && self.commit_ts_micros == event.commit_ts_micros
            && *self.tenant == *event.tenant
    }
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
/// Appends a value's JSON text (as `datum_json` returns it) to `out`.
pub fn write_datum_json(out: &mut Vec<u8>, value: &Datum) {
    write_datum(out, value);
}

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
        Datum::Int(i) => write_i64(out, *i),
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

/// Writes a JSON string: the bytes as they are when nothing needs escaping
/// (the common case: names, statuses, timestamps, uuids), else serde_json's
/// escaping. About thirty strings per event go through here.
fn write_str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        // Writing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether a JSON string needs escapes: a control character (below 0x20),
/// a quote or a backslash. Eight bytes at a time ([`escape_flags`]);
/// a short text is read as overlapping pieces of one word (every byte is in
/// one of them), so there is no loop over its bytes.
#[inline]
fn needs_escape(bytes: &[u8]) -> bool {
    let len = bytes.len();
    let word = if len >= 8 {
        let mut at = 0;
        while at + 8 < len {
            if escape_flags(word_at(bytes, at)) != 0 {
                return true;
            }
            at += 8;
        }
        word_at(bytes, len - 8)
    } else if len >= 4 {
        let mut low = [0u8; 4];
        let mut high = [0u8; 4];
        low.copy_from_slice(&bytes[..4]);
        high.copy_from_slice(&bytes[len - 4..]);
        u64::from(u32::from_le_bytes(low)) | (u64::from(u32::from_le_bytes(high)) << 32)
    } else if len > 0 {
        // Three bytes cover a text of one to three; the rest needs no escape.
        let pad = b'a';
        u64::from_le_bytes([
            bytes[0],
            bytes[len / 2],
            bytes[len - 1],
            pad,
            pad,
            pad,
            pad,
            pad,
        ])
    } else {
        return false;
    };
    escape_flags(word) != 0
}

/// Eight bytes from `at` (which has eight bytes after it), little-endian.
#[inline]
fn word_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// The high bit of each byte of `v` that is below 0x20, a quote or a
/// backslash ("determine if a word has a byte less than n", Bit Twiddling
/// Hacks). A byte can be flagged wrongly only above a byte that really
/// matches, so the lowest flag (the first byte, read little-endian) is exact.
#[inline]
pub(crate) fn escape_flags(v: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let quote = v ^ (ONES * u64::from(b'"'));
    let backslash = v ^ (ONES * u64::from(b'\\'));
    let control = v.wrapping_sub(ONES * 0x20) & !v;
    let quote = quote.wrapping_sub(ONES) & !quote;
    let backslash = backslash.wrapping_sub(ONES) & !backslash;
    (control | quote | backslash) & HIGH
}

/// Writes an unsigned integer in decimal without a temporary String, two
/// digits at a time.
fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    while n >= 100 {
        let pair = 2 * (n % 100) as usize;
        n /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = 2 * n as usize;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + n as u8;
    }
    out.extend_from_slice(&buf[i..]);
}

fn write_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    write_u64(out, n.unsigned_abs());
}

/// Writes `n` in upper-case hexadecimal without leading zeros (as Postgres
/// shows the halves of an LSN).
fn write_hex(out: &mut Vec<u8>, n: u32) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut buf = [0u8; 8];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = DIGITS[(n & 0xF) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
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

    /// The hand-written number and string writers say exactly what the
    /// formatting machinery and serde_json say.
    #[test]
    fn writers_match_std_and_serde_json() {
        let mut numbers = vec![0u64, 1, 9, 10, 99, 100, u64::from(u32::MAX), u64::MAX];
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            numbers.push(x >> (x % 64));
        }
        for n in numbers {
            let mut out = Vec::new();
            write_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
            let i = n as i64;
            out.clear();
            write_i64(&mut out, i);
            assert_eq!(out, i.to_string().as_bytes());
            out.clear();
            write_hex(&mut out, n as u32);
            assert_eq!(out, format!("{:X}", n as u32).as_bytes());
        }
        let mut out = Vec::new();
        write_i64(&mut out, i64::MIN);
        assert_eq!(out, i64::MIN.to_string().as_bytes());
        for s in [
            "",
            "plain",
            "with \"quotes\"",
            "back\\slash",
            "line\nbreak",
            "tab\t",
            "\u{1}\u{1f}",
            "\u{7f}",
            "ünïcode ✓",
            "</script>",
        ] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn needs_escape_finds_every_special_byte_at_every_position() {
        for len in 0..40 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    let expected = b < 0x20 || b == b'"' || b == b'\\';
                    assert_eq!(
                        needs_escape(&bytes),
                        expected,
                        "byte {b:#x} at {at} of {len}"
                    );
                }
            }
        }
        assert!(!needs_escape(b""));
        // Bytes that border the searched ones, and UTF-8 continuation bytes.
        assert!(!needs_escape("!#[]^ ünïcode ✓ \u{7f}".as_bytes()));
    }

    /// The position of the first byte a JSON string must escape, or
    /// `bytes.len()`, by the lowest flag of [`escape_flags`] (as the json
    /// validity check scans strings): checks that the lowest flag is exact.
    fn escape_position(bytes: &[u8]) -> usize {
        let len = bytes.len();
        if len < 8 {
            return bytes
                .iter()
                .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
                .unwrap_or(len);
        }
        let mut at = 0;
        while at + 8 <= len {
            let flags = escape_flags(word_at(bytes, at));
            if flags != 0 {
                return at + (flags.trailing_zeros() / 8) as usize;
            }
            at += 8;
        }
        if at < len {
            // The last eight bytes, some of them checked already: those have no
            // match, so the lowest flag is still exact.
            let flags = escape_flags(word_at(bytes, len - 8));
            if flags != 0 {
                return len - 8 + (flags.trailing_zeros() / 8) as usize;
            }
        }
        len
    }

    #[test]
    fn escape_position_finds_the_first_special_byte_at_every_position() {
        for len in 0..20 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    let special = b < 0x20 || b == b'"' || b == b'\\';
                    let expected = if special { at } else { len };
                    assert_eq!(
                        escape_position(&bytes),
                        expected,
                        "byte {b:#x} at {at} of {len}"
                    );
                    // A second special byte after the first does not move it.
                    if special && at + 1 < len {
                        bytes[at + 1] = b'"';
                        assert_eq!(escape_position(&bytes), at, "{b:#x} then a quote");
                    }
                }
            }
        }
        // Bytes that border the searched ones, and UTF-8 continuation bytes.
        let clean = "!#[]^ ünïcode ✓ \u{7f}";
        assert_eq!(escape_position(clean.as_bytes()), clean.len());
    }

    #[test]
    fn lsn_and_id_are_written_as_displayed() {
        for lsn in [0u64, 0x16B3748, (1 << 32) | 0xA, u64::MAX] {
            let event = ChangeEvent::new(
                EventId {
                    commit_lsn: Lsn(lsn),
                    index: 7,
                },
                Arc::from("acme"),
                None,
                None,
                Op::Truncate,
                ChangeBody::Truncate {
                    table: TableName::new("public", "tasks"),
                    cascade: false,
                    restart_identity: false,
                },
            );
            let json: serde_json::Value = serde_json::from_slice(event.encoded()).unwrap();
            assert_eq!(json["id"], event.id.to_string());
            assert_eq!(json["lsn"], Lsn(lsn).to_string());
            assert_eq!(json["xid"], serde_json::Value::Null);
        }
    }

    /// The per-transaction header is reused only for the same tenant,
    /// commit, xid and time.
    #[test]
    fn events_of_different_transactions_get_their_own_header() {
        let event = |tenant: &str, lsn: u64, xid: Option<u32>, ts: Option<i64>| {
            let event = ChangeEvent::new(
                EventId {
                    commit_lsn: Lsn(lsn),
                    index: 0,
                },
                Arc::from(tenant),
                xid,
                ts,
                Op::Message,
                ChangeBody::Message {
                    transactional: xid.is_some(),
                    prefix: "p".into(),
                    content: Bytes::from_static(b"x"),
                },
            );
            serde_json::from_slice::<serde_json::Value>(event.encoded()).unwrap()
        };
        let cases = [
            ("acme", 16, Some(1), Some(0)),
            ("acme", 16, Some(1), Some(0)),
            ("beta", 16, Some(1), Some(0)),
            ("beta", 17, Some(1), Some(0)),
            ("beta", 17, Some(2), Some(0)),
            ("beta", 17, Some(2), Some(1)),
            ("beta", 17, None, None),
        ];
        for (tenant, lsn, xid, ts) in cases {
            let json = event(tenant, lsn, xid, ts);
            assert_eq!(json["tenant"], tenant);
            assert_eq!(json["lsn"], Lsn(lsn).to_string());
            assert_eq!(json["xid"], serde_json::json!(xid));
            assert_eq!(
                json["commit_ts"],
                serde_json::json!(ts.map(crate::model::format_pg_timestamp))
            );
        }
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
