//! Pure pgoutput decoding (protocol version 1): bytes in, messages out.
//!
//! Owns the wire format of the pgoutput plugin. Never panics, never awaits,
//! never logs values; every length on the wire is checked before it is used.
//! Column values stay as slices of the input `Bytes` (no copy): turning them
//! into typed values is `apply`'s job.

mod pgoutput;

pub use pgoutput::{
    decode, DecodeError, OldTuple, OldTupleKind, PgOutputMessage, RelationColumn, RelationMessage,
    TupleValue,
};
