//! Plain data shared by every stage: LSNs, event ids, change events and their
//! wire encoding, and the feed that hands durable events to a tenant's hub.
//! A leaf module: it depends on no other walcast module.

mod durable;
mod event;
mod lsn;
mod time;
mod wire;

pub use durable::{DurableEvents, HubFeed, HubFeedReceiver, HubInput};
pub use event::{
    ChangeBody, ChangeEvent, Datum, EventId, Op, ParseEventIdError, RowImage, TableName, TypeShape,
};
pub use lsn::{Lsn, ParseLsnError};
pub use time::{civil_from_days, format_pg_timestamp, now_pg_micros, now_unix};
pub(crate) use wire::escape_flags;
pub use wire::{base64_encode, datum_json, encode_event, row_json, write_datum_json};
