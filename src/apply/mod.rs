//! Decoded pgoutput messages to typed change events.
//!
//! Owns the relation cache, the mapping of type OIDs to JSON values, unchanged
//! TOAST handling and event numbering (Begin already carries the commit LSN, so
//! every event gets its final id as soon as it is decoded). Pure: no sockets,
//! no Redis, no subscribers.

#[cfg(test)]
mod fuzz_regressions;
mod json;
mod relations;
mod txn;
mod values;

pub use relations::{Relation, RelationCache, RelationColumnInfo};
pub use txn::{Applier, ApplyError, TxnInfo};
pub use values::{builtin_shape, text_to_datum, type_oid, TypeMap};
