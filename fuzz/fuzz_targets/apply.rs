//! A stream of pgoutput messages through decode and apply, so that the typed
//! value conversion (numbers, timestamps, arrays, JSON) sees arbitrary column
//! text. Input framing: repeated `[u16 big-endian length][message]`; the first
//! message should be a Relation (the seeds start with one), which the applier
//! caches before a transaction is opened for the rest. Every event produced
//! must encode to valid JSON (RFC 8259 syntax).
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use walcast::apply::Applier;
use walcast::decode::decode;
use walcast::model::Lsn;

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);
    let mut applier = Applier::new(Arc::from("fuzz"));
    let mut events = Vec::new();
    let mut pos = 0;
    let mut first = true;
    while pos + 2 <= input.len() {
        let len = usize::from(u16::from_be_bytes([input[pos], input[pos + 1]]));
        pos += 2;
        let end = (pos + len).min(input.len());
        let message = input.slice(pos..end);
        pos = end;
        if let Ok(msg) = decode(&message) {
            let _ = applier.apply(msg, &mut events);
        }
        if first {
            // The Relation is cached; the changes after it are in a transaction.
            applier.begin(Lsn(0x1000), 7, 0);
            first = false;
        }
        for event in events.drain(..) {
            // Syntax, not serde_json::Value: a jsonb number beyond f64 (1e400)
            // is valid JSON that Postgres sends and Value refuses.
            if let Err(err) = serde_json::from_slice::<serde::de::IgnoredAny>(event.encoded()) {
                panic!(
                    "event is not valid JSON ({err}): {}",
                    String::from_utf8_lossy(event.encoded())
                );
            }
        }
    }
});
