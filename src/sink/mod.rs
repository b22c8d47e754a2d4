//! Where change events go once decoded. For now: standard output, one JSON
//! object per line (`walcast tail`, and `walcast run` until the Redis and
//! HTTP sinks exist). A sink says when a transaction is durably written;
//! only then does the source confirm it to Postgres.

mod stdout;

pub use stdout::StdoutSink;

use std::future::Future;
use std::pin::Pin;

use crate::model::ChangeEvent;

/// Why a sink could not take events.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The reader went away (for example `walcast tail | head`): stop quietly.
    #[error("output closed by its reader")]
    Closed,
    #[error("writing events failed")]
    Io(#[source] std::io::Error),
}

/// A boxed future, so that sinks can be chosen at run time.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// A destination for change events.
pub trait EventSink: Send + Sync {
    /// Takes events in commit order. They may be buffered until `commit`.
    fn write<'a>(&'a self, events: &'a [ChangeEvent]) -> SinkFuture<'a>;
    /// Makes everything written so far durable; after it returns the
    /// transaction may be confirmed to Postgres.
    fn commit(&self) -> SinkFuture<'_>;
}
