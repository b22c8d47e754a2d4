//! Arbitrary text as the value of a `json` and a `jsonb` column, through
//! decode and apply: every event must be one line (no CR or LF byte, so
//! that `tail`, SSE `data:` lines and WebSocket text frames each carry one
//! whole event) and valid JSON.
#![no_main]

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use walcast::apply::Applier;
use walcast::decode::decode;
use walcast::model::Lsn;

const RELATION: u32 = 16_384;

/// A pgoutput Relation for `public.docs (j json, b jsonb)`.
fn relation() -> Bytes {
    let mut m = BytesMut::new();
    m.put_u8(b'R');
    m.put_u32(RELATION);
    m.put_slice(b"public\0docs\0");
    m.put_u8(b'd');
    m.put_u16(2);
    for (name, oid) in [(&b"j\0"[..], 114u32), (&b"b\0"[..], 3802)] {
        m.put_u8(0);
        m.put_slice(name);
        m.put_u32(oid);
        m.put_i32(-1);
    }
    m.freeze()
}

/// An Insert of `text` into both columns.
fn insert(text: &[u8]) -> Bytes {
    let mut m = BytesMut::new();
    m.put_u8(b'I');
    m.put_u32(RELATION);
    m.put_u8(b'N');
    m.put_u16(2);
    for _ in 0..2 {
        m.put_u8(b't');
        m.put_u32(text.len() as u32);
        m.put_slice(text);
    }
    m.freeze()
}

fuzz_target!(|data: &[u8]| {
    let mut applier = Applier::new(Arc::from("fuzz"));
    let mut events = Vec::new();
    let relation = decode(&relation()).expect("the Relation decodes");
    let _ = applier.apply(relation, &mut events);
    applier.begin(Lsn(0x1000), 7, 0);
    if let Ok(msg) = decode(&insert(data)) {
        let _ = applier.apply(msg, &mut events);
    }
    for event in events.drain(..) {
        let bytes = event.encoded();
        assert!(
            !bytes.iter().any(|b| matches!(b, b'\n' | b'\r')),
            "event is not one line: {}",
            String::from_utf8_lossy(bytes)
        );
        if let Err(err) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            panic!(
                "event is not valid JSON ({err}): {}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
});
