//! Where change events go once decoded: standard output, one JSON object per
//! line (`walcast tail`, and `walcast run` without Redis), or Redis (the
//! mirror and the per-tenant stream). A sink says when a transaction is
//! durably written; only then does the source confirm it to Postgres.

pub mod memory;
pub mod redis;
mod stdout;

pub use self::redis::RedisSink;
pub use memory::{MemoryRing, Resume, TeeSink};
pub use stdout::StdoutSink;

use std::future::Future;
use std::pin::Pin;

use crate::model::{ChangeEvent, Lsn};

/// Why a sink could not take events.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The reader went away (for example `walcast tail | head`): stop quietly.
    #[error("output closed by its reader")]
    Closed,
    /// Standard output (or the file it points to) refused a write.
    #[error("writing events to standard output failed")]
    Output(#[source] std::io::Error),
    /// The task that writes a tenant's batches to Redis ended abnormally
    /// (a panic): a new session starts a new one.
    #[error("the redis writer task ended abnormally: {0}")]
    WriterFailed(String),
    #[error("redis refused the write")]
    Redis(#[source] ::redis::RedisError),
    #[error("could not connect to redis")]
    Connect(#[source] ::redis::RedisError),
    /// Redis lost the tenant's data (restart without persistence, FLUSHALL):
    /// the tenant must be snapshotted again.
    #[error("redis lost this tenant's data (its epoch marker is gone); re-snapshotting")]
    Lost,
    /// An earlier batch of the session failed, so this one was not written
    /// (it would have landed out of order).
    #[error("not written: an earlier batch of this session failed")]
    Abandoned,
}

impl SinkError {
    pub fn redis(err: ::redis::RedisError) -> SinkError {
        SinkError::Redis(err)
    }
}

/// A boxed future, so that sinks can be chosen at run time.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// A destination for change events.
pub trait EventSink: Send + Sync {
    /// Takes events in commit order. They may be buffered until `commit`.
    fn write<'a>(&'a self, events: &'a [ChangeEvent]) -> SinkFuture<'a>;
    /// `write` for events the caller is done with: a sink that keeps them
    /// until `commit` takes them without copying.
    fn write_owned(&self, events: Vec<ChangeEvent>) -> SinkFuture<'_> {
        Box::pin(async move { self.write(&events).await })
    }
    /// Makes everything written so far durable; after it returns the
    /// transaction (ending at `end_lsn`, if it is one) may be confirmed.
    fn commit(&self, end_lsn: Option<Lsn>) -> SinkFuture<'_>;
    /// Whether events handed to `write` are out for good even before
    /// `commit` (standard output): then a transaction cut off by a reconnect
    /// is not handed over again. Sinks that drop uncommitted events on
    /// `reset` say `false` and get them again.
    fn keeps_uncommitted(&self) -> bool {
        false
    }
    /// A new replication session starts: forget what was written but not
    /// committed (Postgres sends that transaction again).
    fn reset(&self) -> SinkFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}
