//! `ChangeEvent`: one row change (or truncate, or logical message) of one
//! tenant, with its stable id and its JSON encoding made once.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;

use super::{encode_event, Lsn};

/// The stable id of an event: `<commit_lsn as u64>-<index in txn>`, a valid
/// Redis stream id, strictly increasing per tenant in commit order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub commit_lsn: Lsn,
    pub index: u32,
}

impl EventId {
    /// An id just before this one: every event before this one is at or
    /// below it, so resuming after it starts exactly at this event.
    pub fn just_before(self) -> EventId {
        match self.index.checked_sub(1) {
            Some(index) => EventId { index, ..self },
            None => EventId {
                commit_lsn: crate::model::Lsn(self.commit_lsn.0.saturating_sub(1)),
                index: u32::MAX,
            },
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.commit_lsn.0, self.index)
    }
}

/// Why a text is not an event id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid event id {0:?}: expected <commit lsn as a decimal number>-<index>, like 23803720-0"
)]
pub struct ParseEventIdError(pub String);

impl FromStr for EventId {
    type Err = ParseEventIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseEventIdError(s.to_string());
        let (lsn, index) = s.split_once('-').ok_or_else(err)?;
        Ok(EventId {
            commit_lsn: Lsn(lsn.parse().map_err(|_| err())?),
            index: index.parse().map_err(|_| err())?,
        })
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    /// A logical decoding message (`pg_logical_emit_message`).
    Message,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
            Op::Truncate => "TRUNCATE",
            Op::Message => "MESSAGE",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A schema-qualified table name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: Arc<str>,
    pub name: Arc<str>,
}

impl TableName {
    pub fn new(schema: &str, name: &str) -> Self {
        TableName {
            schema: schema.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// A typed column value, as it appears in the event JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Datum {
    Null,
    Bool(bool),
    Int(i64),
    /// A finite float; NaN and infinities are `Text` (JSON has no such numbers).
    Float(f64),
    Text(String),
    /// Text that is already valid JSON (json, jsonb), embedded as it is.
    Json(String),
    Array(Vec<Datum>),
    /// A JSON object: composite values by field, ranges by bound.
    Object(Vec<(Arc<str>, Datum)>),
}

impl Datum {
    /// A JSON value read back (from the mirror, `/state`) as a datum, with
    /// no rounding: integers that fit stay integers, a float as the encoder
    /// writes it parses back exactly, any other number (a jsonb
    /// `1.00000000000000000001`) and every object or array stay their JSON
    /// text, so the event writes the same bytes again.
    pub fn from_json_text(raw: &str) -> Datum {
        match raw.as_bytes().first() {
            Some(b'"') => {
                serde_json::from_str(raw).map_or_else(|_| Datum::Json(raw.to_owned()), Datum::Text)
            }
            Some(b'n') if raw == "null" => Datum::Null,
            Some(b't') if raw == "true" => Datum::Bool(true),
            Some(b'f') if raw == "false" => Datum::Bool(false),
            Some(b'-' | b'0'..=b'9') => match raw.parse::<i64>() {
                Ok(i) if i.to_string() == raw => Datum::Int(i),
                _ => match raw.parse::<f64>() {
                    // A float8 is written as the shortest text that reads
                    // back as the same f64; any other number text is JSON.
                    Ok(f) if serde_json::to_string(&f).is_ok_and(|t| t == raw) => Datum::Float(f),
                    _ => Datum::Json(raw.to_owned()),
                },
            },
            _ => Datum::Json(raw.to_owned()),
        }
    }
}

/// How the values of a type that is not a built-in scalar are built from
/// other types, as the catalog (`pg_type`) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeShape {
    /// A domain: its values are values of the base type.
    Domain { base: u32 },
    /// An array; `delimiter` separates elements in its text form (`,`, but
    /// `;` for box).
    Array { element: u32, delimiter: u8 },
    /// A composite (row) type: field names and types in order.
    Composite { fields: Vec<(Arc<str>, u32)> },
    /// A range over `subtype`.
    Range { subtype: u32 },
    /// A multirange of the range type `range`.
    Multirange { range: u32 },
    /// An enum: its label (also in binary mode, where it is sent as text).
    Enum,
    /// Base types of extensions, and anything else: the text form.
    Text,
}

impl TypeShape {
    /// The types this one is built from.
    pub fn referenced(&self) -> Vec<u32> {
        match self {
            TypeShape::Domain { base } => vec![*base],
            TypeShape::Array { element, .. } => vec![*element],
            TypeShape::Composite { fields } => fields.iter().map(|(_, t)| *t).collect(),
            TypeShape::Range { subtype } => vec![*subtype],
            TypeShape::Multirange { range } => vec![*range],
            TypeShape::Enum | TypeShape::Text => Vec::new(),
        }
    }
}

/// Column values of one row version, in table column order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowImage(pub Vec<(Arc<str>, Datum)>);

impl RowImage {
    pub fn get(&self, column: &str) -> Option<&Datum> {
        self.0.iter().find(|(c, _)| &**c == column).map(|(_, v)| v)
    }
}

/// The event-specific part of a change.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeBody {
    Row {
        table: TableName,
        /// The replica-identity columns of the row (None when the table has none).
        key: Option<RowImage>,
        new: Option<RowImage>,
        old: Option<RowImage>,
        /// Columns whose TOASTed value did not change and was not sent.
        unchanged: Vec<Arc<str>>,
    },
    Truncate {
        table: TableName,
        cascade: bool,
        restart_identity: bool,
    },
    Message {
        transactional: bool,
        prefix: String,
        content: Bytes,
    },
}

/// One change of one tenant, with its JSON encoding made once and shared by
/// every consumer.
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    pub id: EventId,
    pub tenant: Arc<str>,
    pub xid: Option<u32>,
    pub commit_ts_micros: Option<i64>,
    pub op: Op,
    pub body: ChangeBody,
    encoded: Bytes,
}

impl ChangeEvent {
    pub fn new(
        id: EventId,
        tenant: Arc<str>,
        xid: Option<u32>,
        commit_ts_micros: Option<i64>,
        op: Op,
        body: ChangeBody,
    ) -> Self {
        let mut event = ChangeEvent {
            id,
            tenant,
            xid,
            commit_ts_micros,
            op,
            body,
            encoded: Bytes::new(),
        };
        event.encoded = encode_event(&event);
        event
    }

    /// The event as one JSON object (no trailing newline).
    pub fn encoded(&self) -> &Bytes {
        &self.encoded
    }

    /// The table the change is about, if any (messages have none).
    pub fn table(&self) -> Option<&TableName> {
        match &self.body {
            ChangeBody::Row { table, .. } | ChangeBody::Truncate { table, .. } => Some(table),
            ChangeBody::Message { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn just_before_is_between_an_id_and_everything_before_it() {
        let first = EventId {
            commit_lsn: Lsn(500),
            index: 0,
        };
        let earlier = EventId {
            commit_lsn: Lsn(499),
            index: 7,
        };
        assert!(earlier <= first.just_before() && first.just_before() < first);
        let third = EventId {
            commit_lsn: Lsn(500),
            index: 2,
        };
        assert_eq!(third.just_before().to_string(), "500-1");
        assert_eq!(first.just_before().to_string(), "499-4294967295");
    }

    #[test]
    fn event_id_text_round_trips_and_orders() {
        let id = EventId {
            commit_lsn: Lsn(23_803_720),
            index: 0,
        };
        assert_eq!(id.to_string(), "23803720-0");
        assert_eq!("23803720-0".parse::<EventId>(), Ok(id));
        let later = EventId {
            commit_lsn: Lsn(23_803_720),
            index: 1,
        };
        assert!(later > id);
        assert!("abc-1".parse::<EventId>().is_err());
        assert!("12".parse::<EventId>().is_err());
    }
}
