//! Arbitrary bytes as one pgoutput message: decode must return a message or a
//! `DecodeError`, never panic, never allocate more than the input can describe.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    if let Err(err) = walcast::decode::decode(&bytes) {
        // Formatting the error must not panic either (offsets, tags).
        let _ = err.to_string();
    }
});
