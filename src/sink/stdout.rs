//! Events as JSON lines on standard output.

use std::io::ErrorKind;

use tokio::io::{AsyncWriteExt, BufWriter, Stdout};
use tokio::sync::Mutex;

use super::{EventSink, SinkError, SinkFuture};
use crate::model::{ChangeEvent, Lsn};

/// Writes each event's encoded JSON followed by a newline. Shared by all
/// tenants: a line is written whole under the lock, so lines never interleave.
pub struct StdoutSink {
    out: Mutex<BufWriter<Stdout>>,
}

impl Default for StdoutSink {
    fn default() -> Self {
        StdoutSink {
            out: Mutex::new(BufWriter::with_capacity(64 * 1024, tokio::io::stdout())),
        }
    }
}

fn map_err(err: std::io::Error) -> SinkError {
    if err.kind() == ErrorKind::BrokenPipe {
        SinkError::Closed
    } else {
        SinkError::Output(err)
    }
}

impl EventSink for StdoutSink {
    fn write<'a>(&'a self, events: &'a [ChangeEvent]) -> SinkFuture<'a> {
        Box::pin(async move {
            let mut out = self.out.lock().await;
            for event in events {
                out.write_all(event.encoded()).await.map_err(map_err)?;
                out.write_all(b"\n").await.map_err(map_err)?;
            }
            Ok(())
        })
    }

    fn keeps_uncommitted(&self) -> bool {
        true
    }

    fn commit(&self, _end_lsn: Option<Lsn>) -> SinkFuture<'_> {
        Box::pin(async move { self.out.lock().await.flush().await.map_err(map_err) })
    }
}
