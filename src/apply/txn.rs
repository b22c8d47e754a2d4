//! Assembling one transaction's messages into numbered change events.

use std::cell::Cell;
use std::sync::Arc;

use bytes::Bytes;

use super::relations::{Relation, RelationCache};
use super::values::TypeMap;
use crate::decode::{OldTuple, OldTupleKind, PgOutputMessage, TupleValue};
use crate::model::{ChangeBody, ChangeEvent, Datum, EventId, Lsn, Op, RowImage};

/// The transaction being applied: Begin gives its commit LSN up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnInfo {
    pub commit_lsn: Lsn,
    pub xid: u32,
    pub commit_ts_micros: i64,
    /// Events numbered so far (the next event's index).
    pub event_count: u32,
}

/// Why a decoded message cannot be applied. Each one means the stream and our
/// state disagree; the tenant reconnects and Postgres resends from the slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("change for relation {id} arrived before its Relation message")]
    UnknownRelation { id: u32 },
    #[error("{table}: the change has {found} columns but its Relation message lists {expected}")]
    ColumnCount {
        table: String,
        expected: usize,
        found: usize,
    },
    #[error("{message} message outside a transaction")]
    OutsideTransaction { message: &'static str },
    #[error("{table}.{column}: a value of composite type {type_oid} has another number of fields than the catalog said when it was looked up; look the type up again")]
    StaleType {
        table: String,
        column: String,
        type_oid: u32,
    },
    #[error("{table}.{column}: value is not valid UTF-8")]
    InvalidUtf8 { table: String, column: String },
}

/// Turns one tenant's decoded stream into change events.
#[derive(Debug)]
pub struct Applier {
    tenant: Arc<str>,
    relations: RelationCache,
    types: TypeMap,
    /// Report a composite value that does not fit its cached type as
    /// `ApplyError::StaleType` (else keep it as text).
    report_stale: bool,
    txn: Option<TxnInfo>,
}

impl Applier {
    pub fn new(tenant: Arc<str>) -> Self {
        Applier {
            tenant,
            relations: RelationCache::default(),
            types: TypeMap::default(),
            report_stale: true,
            txn: None,
        }
    }

    /// A new replication session: Postgres resends every Relation, and a
    /// transaction cut off by the old session will be sent again whole.
    pub fn reset(&mut self) {
        self.relations.clear();
        self.txn = None;
    }

    /// Whether `apply` fails with `ApplyError::StaleType` (the default) or
    /// keeps such a value as text: after the type was just looked up again
    /// there is nothing newer to learn.
    pub fn set_report_stale(&mut self, report: bool) {
        self.report_stale = report;
    }

    pub fn types(&self) -> &TypeMap {
        &self.types
    }

    pub fn types_mut(&mut self) -> &mut TypeMap {
        &mut self.types
    }

    pub fn in_transaction(&self) -> Option<&TxnInfo> {
        self.txn.as_ref()
    }

    pub fn begin(&mut self, final_lsn: Lsn, xid: u32, commit_ts_micros: i64) {
        self.txn = Some(TxnInfo {
            commit_lsn: final_lsn,
            xid,
            commit_ts_micros,
            event_count: 0,
        });
    }

    /// Ends the transaction, returning what it was.
    pub fn commit(&mut self) -> Result<TxnInfo, ApplyError> {
        self.txn
            .take()
            .ok_or(ApplyError::OutsideTransaction { message: "Commit" })
    }

    /// A logical decoding message. Transactional ones are numbered in their
    /// transaction; others get the id `<message lsn>-0`.
    pub fn message(
        &mut self,
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    ) -> ChangeEvent {
        let body = ChangeBody::Message {
            transactional,
            prefix,
            content,
        };
        match (transactional, self.txn.as_mut()) {
            (true, Some(txn)) => {
                let id = next_id(txn);
                let (xid, ts) = (txn.xid, txn.commit_ts_micros);
                ChangeEvent::new(
                    id,
                    Arc::clone(&self.tenant),
                    Some(xid),
                    Some(ts),
                    Op::Message,
                    body,
                )
            }
            _ => ChangeEvent::new(
                EventId {
                    commit_lsn: lsn,
                    index: 0,
                },
                Arc::clone(&self.tenant),
                None,
                None,
                Op::Message,
                body,
            ),
        }
    }

    /// Applies one decoded message, appending the events it makes to `out`.
    pub fn apply(
        &mut self,
        msg: PgOutputMessage,
        out: &mut Vec<ChangeEvent>,
    ) -> Result<(), ApplyError> {
        match msg {
            PgOutputMessage::Begin {
                final_lsn,
                commit_ts,
                xid,
            } => self.begin(Lsn(final_lsn), xid, commit_ts),
            PgOutputMessage::Commit { .. } => {
                self.commit()?;
            }
            PgOutputMessage::Relation(rel) => {
                self.relations.insert(Relation::from(rel));
            }
            // Postgres (re)describes a non-built-in type before a Relation
            // that uses it: it may have changed, so look it up again.
            PgOutputMessage::Type { id, .. } => self.types.forget(id),
            // Origin names where a replicated transaction came from.
            PgOutputMessage::Origin { .. } => {}
            PgOutputMessage::Insert { relation_id, new } => {
                let rel = relation(&self.relations, relation_id)?;
                let image = row_image(
                    rel,
                    &self.types,
                    self.report_stale,
                    &new,
                    RowPart::All,
                    true,
                )?;
                let change = RowChange {
                    op: Op::Insert,
                    key: image.key,
                    new: Some(image.row),
                    old: None,
                    unchanged: image.unchanged,
                };
                out.push(row_event(
                    &mut self.txn,
                    &self.tenant,
                    rel,
                    change,
                    "Insert",
                )?);
            }
            PgOutputMessage::Update {
                relation_id,
                old,
                new,
            } => {
                let rel = relation(&self.relations, relation_id)?;
                let mut image = row_image(
                    rel,
                    &self.types,
                    self.report_stale,
                    &new,
                    RowPart::All,
                    true,
                )?;
                let old = match old {
                    // The event's key is the new row's.
                    Some(old) => {
                        let old = old_image(rel, &self.types, self.report_stale, &old, false)?.row;
                        // REPLICA IDENTITY FULL: the old tuple holds the
                        // values the new one left out as unchanged TOAST.
                        fill_unchanged(rel, &mut image, &old);
                        Some(old)
                    }
                    // Without an old tuple the key did not change: the key is
                    // what we know of the old row.
                    None => image.key.clone(),
                };
                let change = RowChange {
                    op: Op::Update,
                    key: image.key,
                    new: Some(image.row),
                    old,
                    unchanged: image.unchanged,
                };
                out.push(row_event(
                    &mut self.txn,
                    &self.tenant,
                    rel,
                    change,
                    "Update",
                )?);
            }
            PgOutputMessage::Delete { relation_id, old } => {
                let rel = relation(&self.relations, relation_id)?;
                let Image { row: old, key, .. } =
                    old_image(rel, &self.types, self.report_stale, &old, true)?;
                let change = RowChange {
                    op: Op::Delete,
                    key,
                    new: None,
                    old: Some(old),
                    unchanged: Vec::new(),
                };
                out.push(row_event(
                    &mut self.txn,
                    &self.tenant,
                    rel,
                    change,
                    "Delete",
                )?);
            }
            PgOutputMessage::Truncate {
                cascade,
                restart_identity,
                relation_ids,
            } => {
                for id in relation_ids {
                    let rel = relation(&self.relations, id)?;
                    let txn = self.txn.as_mut().ok_or(ApplyError::OutsideTransaction {
                        message: "Truncate",
                    })?;
                    out.push(ChangeEvent::new(
                        next_id(txn),
                        Arc::clone(&self.tenant),
                        Some(txn.xid),
                        Some(txn.commit_ts_micros),
                        Op::Truncate,
                        ChangeBody::Truncate {
                            table: rel.table.clone(),
                            cascade,
                            restart_identity,
                        },
                    ));
                }
            }
            PgOutputMessage::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => out.push(self.message(transactional, Lsn(lsn), prefix, content)),
        }
        Ok(())
    }
}

/// The cached relation (borrowed: the applier's other fields stay usable).
fn relation(relations: &RelationCache, id: u32) -> Result<&Relation, ApplyError> {
    relations
        .get(id)
        .map(|rel| &**rel)
        .ok_or(ApplyError::UnknownRelation { id })
}

/// A row change, before it is numbered.
struct RowChange {
    op: Op,
    key: Option<RowImage>,
    new: Option<RowImage>,
    old: Option<RowImage>,
    unchanged: Vec<Arc<str>>,
}

/// Numbers a row change in the open transaction and makes its event.
fn row_event(
    txn: &mut Option<TxnInfo>,
    tenant: &Arc<str>,
    rel: &Relation,
    change: RowChange,
    message: &'static str,
) -> Result<ChangeEvent, ApplyError> {
    let txn = txn
        .as_mut()
        .ok_or(ApplyError::OutsideTransaction { message })?;
    Ok(ChangeEvent::new(
        next_id(txn),
        Arc::clone(tenant),
        Some(txn.xid),
        Some(txn.commit_ts_micros),
        change.op,
        ChangeBody::Row {
            table: rel.table.clone(),
            key: change.key,
            new: change.new,
            old: change.old,
            unchanged: change.unchanged,
        },
    ))
}

fn next_id(txn: &mut TxnInfo) -> EventId {
    let id = EventId {
        commit_lsn: txn.commit_lsn,
        index: txn.event_count,
    };
    txn.event_count += 1;
    id
}

#[derive(Clone, Copy, PartialEq)]
enum RowPart {
    All,
    KeyOnly,
}

/// One tuple as typed values.
struct Image {
    row: RowImage,
    /// The replica-identity columns of `row` (None when the table has none
    /// or they were not asked for), taken in the same pass: an event
    /// carries both.
    key: Option<RowImage>,
    /// Columns left out as unchanged TOAST.
    unchanged: Vec<Arc<str>>,
}

/// Typed values of a tuple, its key columns (when `with_key`), and the
/// columns left out as unchanged TOAST.
fn row_image(
    rel: &Relation,
    types: &TypeMap,
    report_stale: bool,
    values: &[TupleValue],
    part: RowPart,
    with_key: bool,
) -> Result<Image, ApplyError> {
    if values.len() != rel.columns.len() {
        return Err(ApplyError::ColumnCount {
            table: rel.table.to_string(),
            expected: rel.columns.len(),
            found: values.len(),
        });
    }
    let key_count = rel.columns.iter().filter(|c| c.is_key).count();
    let mut key = (with_key && key_count > 0).then(|| Vec::with_capacity(key_count));
    let mut row = Vec::with_capacity(match part {
        RowPart::All => values.len(),
        RowPart::KeyOnly => key_count,
    });
    let mut unchanged = Vec::new();
    let stale = Cell::new(None);
    for (column, value) in rel.columns.iter().zip(values) {
        if part == RowPart::KeyOnly && !column.is_key {
            continue;
        }
        let datum = match value {
            TupleValue::Null => Datum::Null,
            TupleValue::UnchangedToast => {
                unchanged.push(Arc::clone(&column.name));
                continue;
            }
            TupleValue::Text(bytes) => {
                let text = std::str::from_utf8(bytes).map_err(|_| ApplyError::InvalidUtf8 {
                    table: rel.table.to_string(),
                    column: column.name.to_string(),
                })?;
                types.text_to_datum_checked(column.type_oid, text, &stale)
            }
            // Only sent when the tenant asked for binary mode.
            TupleValue::Binary(bytes) => {
                types.binary_to_datum_checked(column.type_oid, bytes, &stale)
            }
        };
        if let (true, Some(type_oid)) = (report_stale, stale.get()) {
            return Err(ApplyError::StaleType {
                table: rel.table.to_string(),
                column: column.name.to_string(),
                type_oid,
            });
        }
        if let (true, Some(key)) = (column.is_key, key.as_mut()) {
            key.push((Arc::clone(&column.name), datum.clone()));
        }
        row.push((Arc::clone(&column.name), datum));
    }
    Ok(Image {
        row: RowImage(row),
        key: key.map(RowImage),
        unchanged,
    })
}

/// Takes the columns `image` left out as unchanged TOAST from `old` (the
/// old tuple of REPLICA IDENTITY FULL, which carries every value): the new
/// row and its key get them in column order, and they are no longer listed
/// as unchanged. Columns `old` lacks stay listed.
fn fill_unchanged(rel: &Relation, image: &mut Image, old: &RowImage) {
    if image.unchanged.is_empty() || !image.unchanged.iter().any(|c| old.get(c).is_some()) {
        return;
    }
    let value = |column: &str, from: &RowImage| {
        from.0
            .iter()
            .find(|(name, _)| &**name == column)
            .map(|(_, d)| d.clone())
    };
    let unchanged = std::mem::take(&mut image.unchanged);
    let filled = |column: &Arc<str>| unchanged.contains(column) && old.get(column).is_some();
    let mut row = Vec::with_capacity(rel.columns.len());
    let mut key = image.key.as_ref().map(|_| Vec::new());
    for column in &rel.columns {
        let datum = if filled(&column.name) {
            value(&column.name, old)
        } else {
            value(&column.name, &image.row)
        };
        let Some(datum) = datum else { continue };
        if let (true, Some(key)) = (column.is_key, key.as_mut()) {
            key.push((Arc::clone(&column.name), datum.clone()));
        }
        row.push((Arc::clone(&column.name), datum));
    }
    image.unchanged = unchanged
        .into_iter()
        .filter(|c| old.get(c).is_none())
        .collect();
    image.row = RowImage(row);
    if let Some(key) = key {
        image.key = Some(RowImage(key));
    }
}

fn old_image(
    rel: &Relation,
    types: &TypeMap,
    report_stale: bool,
    old: &OldTuple,
    with_key: bool,
) -> Result<Image, ApplyError> {
    let part = match old.kind {
        // A key tuple sends the other columns as NULL: leave them out.
        OldTupleKind::Key => RowPart::KeyOnly,
        OldTupleKind::Full => RowPart::All,
    };
    row_image(rel, types, report_stale, &old.values, part, with_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode;

    fn captured(name: &str) -> PgOutputMessage {
        let text = include_str!("../decode/testdata/captured.hex");
        let hex = text
            .lines()
            .find(|l| l.split(' ').next() == Some(name))
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or_else(|| panic!("no captured message {name}"));
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        decode(&Bytes::from(bytes)).unwrap()
    }

    fn json(event: &ChangeEvent) -> serde_json::Value {
        serde_json::from_slice(event.encoded()).unwrap()
    }

    #[test]
    fn captured_transaction_becomes_typed_numbered_events() {
        let mut applier = Applier::new(Arc::from("acme"));
        let mut out = Vec::new();
        for name in ["begin", "relation_tasks", "insert_tasks", "update_with_key"] {
            applier.apply(captured(name), &mut out).unwrap();
        }
        let txn = applier.commit().unwrap();
        assert_eq!(txn.commit_lsn, Lsn(0x15454B8));
        assert_eq!(out.len(), 2);
        assert_eq!(
            json(&out[0]),
            serde_json::json!({"id":"22303928-0","tenant":"acme","lsn":"0/15454B8","xid":728,
              "commit_ts":"2026-11-28T04:45:38.340696Z","schema":"public","table":"tasks","op":"INSERT",
              "key":{"id":42},
              "new":{"id":42,"status":"queued","progress":0.4,"meta":{"step":"build"},
                     "tags":["a","b c",null],"created":"2026-11-28T03:14:02.123456Z","big":null},
              "old":null})
        );
        let second = json(&out[1]);
        assert_eq!(second["id"], "22303928-1");
        assert_eq!(second["op"], "UPDATE");
        assert_eq!(second["key"], serde_json::json!({"id":43}));
        assert_eq!(second["old"], serde_json::json!({"id":42}));
    }

    #[test]
    fn unchanged_toast_is_listed_never_null() {
        let mut applier = Applier::new(Arc::from("acme"));
        let mut out = Vec::new();
        applier.begin(Lsn(1), 1, 0);
        applier.apply(captured("relation_t2"), &mut out).unwrap();
        applier
            .apply(captured("update_unchanged_toast"), &mut out)
            .unwrap();
        let event = json(&out[0]);
        assert_eq!(event["new"], serde_json::json!({"id":1,"m":"bad"}));
        assert_eq!(event["unchanged"], serde_json::json!(["big"]));
    }

    #[test]
    fn full_identity_and_truncate() {
        let mut applier = Applier::new(Arc::from("acme"));
        let mut out = Vec::new();
        applier.begin(Lsn(7), 9, 0);
        for name in [
            "relation_tasks",
            "relation_nokey_full",
            "update_with_old",
            "delete_with_old",
            "truncate_cascade_restart",
        ] {
            applier.apply(captured(name), &mut out).unwrap();
        }
        let update = json(&out[0]);
        assert_eq!(update["old"], serde_json::json!({"a":1,"b":"x"}));
        assert_eq!(update["new"], serde_json::json!({"a":1,"b":"y"}));
        let delete = json(&out[1]);
        assert_eq!(delete["new"], serde_json::Value::Null);
        assert_eq!(delete["old"], serde_json::json!({"a":1,"b":"y"}));
        let ids: Vec<String> = out.iter().map(|e| e.id.to_string()).collect();
        assert_eq!(ids, ["7-0", "7-1", "7-2", "7-3"]);
        assert_eq!(json(&out[2])["table"], "tasks");
        assert_eq!(json(&out[3])["table"], "nokey");
        assert_eq!(
            json(&out[3])["truncate"],
            serde_json::json!({"cascade":true,"restart_identity":true})
        );
    }

    #[test]
    fn changes_without_relation_or_transaction_are_errors() {
        let mut applier = Applier::new(Arc::from("acme"));
        let mut out = Vec::new();
        applier.begin(Lsn(7), 9, 0);
        assert_eq!(
            applier.apply(captured("insert_tasks"), &mut out),
            Err(ApplyError::UnknownRelation { id: 16384 })
        );
        applier.reset();
        applier.apply(captured("relation_tasks"), &mut out).unwrap();
        assert!(matches!(
            applier.apply(captured("insert_tasks"), &mut out),
            Err(ApplyError::OutsideTransaction { .. })
        ));
    }
}
