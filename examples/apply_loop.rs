//! Decode + apply + encode over the bench fixture, `passes` times, with no
//! timing: for counting instructions, which repeat exactly whatever else
//! the machine runs (docs/benchmarks.md):
//!
//! ```sh
//! cargo build --release --example apply_loop
//! valgrind --tool=cachegrind --cache-sim=no target/release/examples/apply_loop 1
//! valgrind --tool=cachegrind --cache-sim=no target/release/examples/apply_loop 3
//! ```
//!
//! (instructions of 3 passes - instructions of 1 pass) / 200,000 is the cost
//! of one event, without loading the fixture. `apply_loop dump` writes every
//! event, one per line, to standard output instead: two versions of the code
//! must write the same bytes.

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use walcast::apply::Applier;
use walcast::decode::decode;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/benches/fixtures/tasks_100k.pgoutput.gz"
);

fn main() {
    let arg = std::env::args().nth(1);
    let dump = arg.as_deref() == Some("dump");
    let passes: usize = match (dump, arg) {
        (true, _) | (_, None) => 1,
        (false, Some(a)) => a.parse().expect("passes: a number or `dump`"),
    };
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let file = std::fs::File::open(FIXTURE).unwrap_or_else(|e| panic!("{FIXTURE}: {e}"));
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut raw)
        .expect("gunzip fixture");
    let raw = Bytes::from(raw);
    let mut messages = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        let len = u32::from_be_bytes(raw[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        messages.push(raw.slice(pos + 4..pos + 4 + len));
        pos += 4 + len;
    }
    let mut bytes = 0usize;
    for _ in 0..passes {
        // As the criterion bench: a fresh applier per pass.
        let mut applier = Applier::new(Arc::from("acme"));
        let mut events = Vec::with_capacity(16);
        for message in &messages {
            let msg = decode(message).expect("decode");
            applier.apply(msg, &mut events).expect("apply");
            for event in events.drain(..) {
                bytes += black_box(event.encoded()).len();
                if dump {
                    stdout.write_all(event.encoded()).expect("stdout");
                    stdout.write_all(b"\n").expect("stdout");
                }
            }
        }
    }
    if !dump {
        writeln!(stdout, "{passes} passes, {bytes} bytes of events").expect("stdout");
    }
}
