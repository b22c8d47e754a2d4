//! Redis replies, as the Redis writer's own connection reads them
//! (`sink::redis::resp::parse`). Input: arbitrary bytes, as if Redis (or
//! something in its place) had sent them. Nothing may panic; a reply that
//! parses takes at least one byte and no more than there are; any cut of
//! the input gives either nothing yet or the same reply; a parsed reply,
//! written out again, parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walcast::sink::redis::resp::{parse, Reply};

fn write(reply: &Reply, out: &mut Vec<u8>) {
    match reply {
        Reply::Status(text) => out.extend_from_slice(format!("+{text}\r\n").as_bytes()),
        Reply::Error(text) => out.extend_from_slice(format!("-{text}\r\n").as_bytes()),
        Reply::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
        Reply::Bulk(bytes) => {
            out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
            out.extend_from_slice(bytes);
            out.extend_from_slice(b"\r\n");
        }
        Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
        Reply::Array(items) => {
            out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
            for item in items {
                write(item, out);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some((reply, used))) = parse(&data[at..]) {
        assert!(used > 0 && at + used <= data.len());
        for cut in [at, at + used / 2, at + used - 1] {
            match parse(&data[at..cut]) {
                Ok(None) => {}
                other => panic!("a cut reply parsed as {other:?}"),
            }
        }
        let mut again = Vec::new();
        write(&reply, &mut again);
        let reparsed = parse(&again).expect("written back, it parses");
        assert_eq!(reparsed, Some((reply, again.len())));
        at += used;
    }
});
