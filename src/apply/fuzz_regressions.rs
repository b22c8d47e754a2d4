//! Inputs the fuzz targets (`fuzz/`, docs/fuzzing.md) found, kept as they
//! were found and run the way the target runs them.

use std::sync::Arc;

use bytes::Bytes;

use super::Applier;
use crate::decode::decode;
use crate::model::Lsn;

/// `fuzz/artifacts/apply/crash-55e3c3afd4c0c3d79770fc74143aa380c0221110`:
/// a Relation of tasks, then Updates whose jsonb text is `{"step": "build"&`.
/// It was embedded as it was and made the event invalid JSON.
const INVALID_JSONB: &str = concat!(
    "007d52000040007075626c6963007461736b73006400070169640000000014ffffffff007374617475730000",
    "000019ffffffff0070726f677265737300000002bdffffffff006d6574610000000edaffffffff0074616773",
    "00000003f1ffffffff006372656174656400000004a0ffffffff00626967000000001a04ffffff007f550000",
    "40004b0007740000000234326e6e6e8c6e6e4e000774000000023433740000000772756e6e696e6774000000",
    "03302e3474000000117b2273746570223a20226275696c64227d740000000e7b612c22622063222c4e554c4c",
    "7d740000001d323032362d31312d32382030333a31343a30322e3132333435362b30306e007f55000040004b",
    "0007740000000234326e6e6e6e6e6e4e000774000000023433740000000772756e6e696e677400000003302e",
    "3474000000117b2273746570223a20226275696c642226740000000e7b612c22622063222c4e554c4c7d7400",
    "00001d323032362d31312d32382030333a31343a30322e3132333435362b30306e",
);

/// The `apply` target's loop: `[u16 length][message]` frames, the first one
/// cached before a transaction opens for the rest; returns the events as JSON.
fn run_apply_input(input: &Bytes) -> Vec<serde_json::Value> {
    let mut applier = Applier::new(Arc::from("fuzz"));
    let mut events = Vec::new();
    let mut json = Vec::new();
    let (mut pos, mut first) = (0, true);
    while pos + 2 <= input.len() {
        let len = usize::from(u16::from_be_bytes([input[pos], input[pos + 1]]));
        pos += 2;
        let end = (pos + len).min(input.len());
        if let Ok(msg) = decode(&input.slice(pos..end)) {
            let _ = applier.apply(msg, &mut events);
        }
        pos = end;
        if first {
            applier.begin(Lsn(0x1000), 7, 0);
            first = false;
        }
        for event in events.drain(..) {
            json.push(
                serde_json::from_slice(event.encoded()).unwrap_or_else(|err| {
                    panic!(
                        "event is not valid JSON ({err}): {}",
                        String::from_utf8_lossy(event.encoded())
                    )
                }),
            );
        }
    }
    json
}

fn hex(text: &str) -> Bytes {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect::<Vec<u8>>()
        .into()
}

#[test]
fn jsonb_text_that_is_not_json_is_kept_as_a_string() {
    let events = run_apply_input(&hex(INVALID_JSONB));
    // The first Update's old key has a bad column kind (0x8c) and fails to
    // decode; the second one applies.
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["new"]["meta"], "{\"step\": \"build\"&");
    assert_eq!(events[0]["new"]["status"], "running");
}
