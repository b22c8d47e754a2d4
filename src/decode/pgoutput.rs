//! pgoutput message formats, as documented in "Logical Replication Message
//! Formats" of the PostgreSQL manual (protocol version 1; no streamed
//! transactions, so no xid fields inside messages).

use bytes::Bytes;

/// A decoded pgoutput message.
#[derive(Debug, Clone, PartialEq)]
pub enum PgOutputMessage {
    Begin {
        final_lsn: u64,
        commit_ts: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: u64,
        end_lsn: u64,
        commit_ts: i64,
    },
    Origin {
        commit_lsn: u64,
        name: String,
    },
    Relation(RelationMessage),
    Type {
        id: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation_id: u32,
        new: Vec<TupleValue>,
    },
    Update {
        relation_id: u32,
        old: Option<OldTuple>,
        new: Vec<TupleValue>,
    },
    Delete {
        relation_id: u32,
        old: OldTuple,
    },
    Truncate {
        cascade: bool,
        restart_identity: bool,
        relation_ids: Vec<u32>,
    },
    Message {
        transactional: bool,
        lsn: u64,
        prefix: String,
        content: Bytes,
    },
}

/// A Relation message: the shape of a table, sent before its first change in a
/// session and again after it changes.
#[derive(Debug, Clone, PartialEq)]
pub struct RelationMessage {
    pub id: u32,
    /// Empty for pg_catalog.
    pub namespace: String,
    pub name: String,
    /// `relreplident`: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

/// One column of a Relation message.
#[derive(Debug, Clone, PartialEq)]
pub struct RelationColumn {
    /// Part of the replica identity (the key).
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// One column value of a TupleData part.
#[derive(Debug, Clone, PartialEq)]
pub enum TupleValue {
    Null,
    /// An unchanged TOASTed value: Postgres did not send it.
    UnchangedToast,
    Text(Bytes),
    Binary(Bytes),
}

/// Which old row image an Update or Delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldTupleKind {
    /// `K`: the replica identity columns only (others are NULL).
    Key,
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full,
}

/// The old row image of an Update or Delete.
#[derive(Debug, Clone, PartialEq)]
pub struct OldTuple {
    pub kind: OldTupleKind,
    pub values: Vec<TupleValue>,
}

/// Why bytes are not a valid pgoutput message. Offsets count from the
/// message's first byte (its tag).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error("unknown pgoutput message tag {tag:#04x} at byte 0")]
    UnknownTag { tag: u8 },
    #[error(
        "truncated {message} message at byte {offset}: needed {needed} bytes, {available} left"
    )]
    Truncated {
        message: &'static str,
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("{message} message: string at byte {offset} has no terminating NUL")]
    UnterminatedString {
        message: &'static str,
        offset: usize,
    },
    #[error("{message} message: string at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        message: &'static str,
        offset: usize,
    },
    #[error(
        "{message} message: unexpected byte {found:#04x} at byte {offset}, expected {expected}"
    )]
    Unexpected {
        message: &'static str,
        offset: usize,
        found: u8,
        expected: &'static str,
    },
    #[error("{message} message: negative {what} {value} at byte {offset}")]
    Negative {
        message: &'static str,
        offset: usize,
        what: &'static str,
        value: i64,
    },
    #[error("{message} message: {extra} unexpected trailing bytes at byte {offset}")]
    Trailing {
        message: &'static str,
        offset: usize,
        extra: usize,
    },
}

/// Decodes one pgoutput message (the payload of one XLogData).
pub fn decode(data: &Bytes) -> Result<PgOutputMessage, DecodeError> {
    let tag = *data.first().ok_or(DecodeError::Empty)?;
    let message = match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        tag => return Err(DecodeError::UnknownTag { tag }),
    };
    let mut r = Reader {
        data,
        pos: 1,
        message,
    };
    let decoded = match tag {
        b'B' => PgOutputMessage::Begin {
            final_lsn: r.u64()?,
            commit_ts: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => PgOutputMessage::Commit {
            flags: r.u8()?,
            commit_lsn: r.u64()?,
            end_lsn: r.u64()?,
            commit_ts: r.i64()?,
        },
        b'O' => PgOutputMessage::Origin {
            commit_lsn: r.u64()?,
            name: r.string()?,
        },
        b'R' => {
            let id = r.u32()?;
            let namespace = r.string()?;
            let name = r.string()?;
            let replica_identity = r.u8()?;
            let count = r.count16("column count")?;
            // Each column takes at least 1 + 1 + 4 + 4 bytes: bound the
            // allocation by what the message can hold.
            let mut columns = Vec::with_capacity(count.min(r.remaining() / 10));
            for _ in 0..count {
                let flags = r.u8()?;
                columns.push(RelationColumn {
                    is_key: flags & 1 == 1,
                    name: r.string()?,
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            PgOutputMessage::Relation(RelationMessage {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => PgOutputMessage::Type {
            id: r.u32()?,
            namespace: r.string()?,
            name: r.string()?,
        },
        b'I' => {
            let relation_id = r.u32()?;
            r.expect(b'N', "'N' (new tuple)")?;
            PgOutputMessage::Insert {
                relation_id,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation_id = r.u32()?;
            let offset = r.pos;
            let old = match r.u8()? {
                b'K' => Some(OldTuple {
                    kind: OldTupleKind::Key,
                    values: r.tuple()?,
                }),
                b'O' => Some(OldTuple {
                    kind: OldTupleKind::Full,
                    values: r.tuple()?,
                }),
                b'N' => None,
                found => {
                    return Err(DecodeError::Unexpected {
                        message,
                        offset,
                        found,
                        expected: "'K', 'O' or 'N'",
                    })
                }
            };
            if old.is_some() {
                r.expect(b'N', "'N' (new tuple)")?;
            }
            PgOutputMessage::Update {
                relation_id,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation_id = r.u32()?;
            let offset = r.pos;
            let kind = match r.u8()? {
                b'K' => OldTupleKind::Key,
                b'O' => OldTupleKind::Full,
                found => {
                    return Err(DecodeError::Unexpected {
                        message,
                        offset,
                        found,
                        expected: "'K' or 'O'",
                    })
                }
            };
            PgOutputMessage::Delete {
                relation_id,
                old: OldTuple {
                    kind,
                    values: r.tuple()?,
                },
            }
        }
        b'T' => {
            let count = r.count32("relation count")?;
            let options = r.u8()?;
            let mut relation_ids = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                relation_ids.push(r.u32()?);
            }
            PgOutputMessage::Truncate {
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                relation_ids,
            }
        }
        b'M' => {
            let flags = r.u8()?;
            let lsn = r.u64()?;
            let prefix = r.string()?;
            let len = r.count32("content length")?;
            PgOutputMessage::Message {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.bytes(len)?,
            }
        }
        _ => unreachable!("tag was matched above"),
    };
    r.finish()?;
    Ok(decoded)
}

/// A bounds-checked cursor over one message.
struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
    message: &'static str,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, needed: usize) -> Result<&[u8], DecodeError> {
        if self.remaining() < needed {
            return Err(DecodeError::Truncated {
                message: self.message,
                offset: self.pos,
                needed,
                available: self.remaining(),
            });
        }
        let slice = &self.data[self.pos..self.pos + needed];
        self.pos += needed;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn count16(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let value = self.i16()?;
        usize::try_from(value).map_err(|_| self.negative(offset, what, value.into()))
    }

    fn count32(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let value = self.i32()?;
        usize::try_from(value).map_err(|_| self.negative(offset, what, value.into()))
    }

    fn negative(&self, offset: usize, what: &'static str, value: i64) -> DecodeError {
        DecodeError::Negative {
            message: self.message,
            offset,
            what,
            value,
        }
    }

    fn bytes(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(len)?;
        Ok(self.data.slice(start..start + len))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let start = self.pos;
        let rest = &self.data[start..];
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString {
                message: self.message,
                offset: start,
            })?;
        let text = std::str::from_utf8(&rest[..len]).map_err(|_| DecodeError::InvalidUtf8 {
            message: self.message,
            offset: start,
        })?;
        self.pos += len + 1;
        Ok(text.to_owned())
    }

    fn expect(&mut self, byte: u8, expected: &'static str) -> Result<(), DecodeError> {
        let offset = self.pos;
        let found = self.u8()?;
        if found == byte {
            Ok(())
        } else {
            Err(DecodeError::Unexpected {
                message: self.message,
                offset,
                found,
                expected,
            })
        }
    }

    /// A TupleData part: Int16 column count, then per column a kind byte
    /// (`n` null, `u` unchanged TOAST, `t` text, `b` binary) and, for `t` and
    /// `b`, an Int32 length and that many bytes.
    fn tuple(&mut self) -> Result<Vec<TupleValue>, DecodeError> {
        let count = self.count16("column count")?;
        // Each column takes at least one byte.
        let mut values = Vec::with_capacity(count.min(self.remaining()));
        for _ in 0..count {
            let offset = self.pos;
            let value = match self.u8()? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let len = self.count32("value length")?;
                    TupleValue::Text(self.bytes(len)?)
                }
                b'b' => {
                    let len = self.count32("value length")?;
                    TupleValue::Binary(self.bytes(len)?)
                }
                found => {
                    return Err(DecodeError::Unexpected {
                        message: self.message,
                        offset,
                        found,
                        expected: "a column kind 'n', 'u', 't' or 'b'",
                    })
                }
            };
            values.push(value);
        }
        Ok(values)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::Trailing {
                message: self.message,
                offset: self.pos,
                extra,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPTURED: &str = include_str!("testdata/captured.hex");

    fn captured(name: &str) -> Bytes {
        let line = CAPTURED
            .lines()
            .find(|l| l.split(' ').next() == Some(name))
            .unwrap_or_else(|| panic!("no captured message {name}"));
        let hex = line.split(' ').nth(1).unwrap();
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>();
        Bytes::from(bytes)
    }

    fn text(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn begin_and_commit() {
        assert_eq!(
            decode(&captured("begin")).unwrap(),
            PgOutputMessage::Begin {
                final_lsn: 0x15454B8,
                commit_ts: 0x3044d9de7d358,
                xid: 728
            }
        );
        assert_eq!(
            decode(&captured("commit")).unwrap(),
            PgOutputMessage::Commit {
                flags: 0,
                commit_lsn: 0x15454B8,
                end_lsn: 0x15454E8,
                commit_ts: 0x3044d9de7d358
            }
        );
    }

    #[test]
    fn relation_lists_columns_with_key_flag_and_types() {
        let PgOutputMessage::Relation(rel) = decode(&captured("relation_tasks")).unwrap() else {
            panic!("not a relation");
        };
        assert_eq!(
            (rel.namespace.as_str(), rel.name.as_str()),
            ("public", "tasks")
        );
        assert_eq!(rel.replica_identity, b'd');
        let cols: Vec<_> = rel
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.is_key, c.type_oid))
            .collect();
        assert_eq!(
            cols,
            [
                ("id", true, 20),
                ("status", false, 25),
                ("progress", false, 701),
                ("meta", false, 3802),
                ("tags", false, 1009),
                ("created", false, 1184),
                ("big", false, 25)
            ]
        );
        let PgOutputMessage::Relation(full) = decode(&captured("relation_nokey_full")).unwrap()
        else {
            panic!("not a relation");
        };
        assert_eq!(full.replica_identity, b'f');
        assert!(full.columns.iter().all(|c| c.is_key));
    }

    #[test]
    fn insert_carries_text_values_and_nulls() {
        let PgOutputMessage::Insert { relation_id, new } =
            decode(&captured("insert_tasks")).unwrap()
        else {
            panic!("not an insert");
        };
        assert_eq!(relation_id, 16384);
        assert_eq!(new[0], text("42"));
        assert_eq!(new[1], text("queued"));
        assert_eq!(new[2], text("0.4"));
        assert_eq!(new[3], text("{\"step\": \"build\"}"));
        assert_eq!(new[4], text("{a,\"b c\",NULL}"));
        assert_eq!(new[6], TupleValue::Null);
    }

    #[test]
    fn update_forms() {
        match decode(&captured("update_new_only")).unwrap() {
            PgOutputMessage::Update { old: None, new, .. } => assert_eq!(new[1], text("running")),
            other => panic!("unexpected {other:?}"),
        }
        match decode(&captured("update_with_key")).unwrap() {
            PgOutputMessage::Update {
                old: Some(old),
                new,
                ..
            } => {
                assert_eq!(old.kind, OldTupleKind::Key);
                assert_eq!(old.values[0], text("42"));
                assert!(old.values[1..].iter().all(|v| *v == TupleValue::Null));
                assert_eq!(new[0], text("43"));
            }
            other => panic!("unexpected {other:?}"),
        }
        match decode(&captured("update_with_old")).unwrap() {
            PgOutputMessage::Update {
                old: Some(old),
                new,
                ..
            } => {
                assert_eq!(old.kind, OldTupleKind::Full);
                assert_eq!(old.values, vec![text("1"), text("x")]);
                assert_eq!(new, vec![text("1"), text("y")]);
            }
            other => panic!("unexpected {other:?}"),
        }
        match decode(&captured("update_unchanged_toast")).unwrap() {
            PgOutputMessage::Update { old: None, new, .. } => {
                assert_eq!(
                    new,
                    vec![text("1"), text("bad"), TupleValue::UnchangedToast]
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn delete_forms() {
        match decode(&captured("delete_with_key")).unwrap() {
            PgOutputMessage::Delete { old, .. } => {
                assert_eq!(old.kind, OldTupleKind::Key);
                assert_eq!(old.values[0], text("43"));
            }
            other => panic!("unexpected {other:?}"),
        }
        match decode(&captured("delete_with_old")).unwrap() {
            PgOutputMessage::Delete { old, .. } => {
                assert_eq!(old.kind, OldTupleKind::Full);
                assert_eq!(old.values, vec![text("1"), text("y")]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn truncate_with_flags_and_several_relations() {
        assert_eq!(
            decode(&captured("truncate_cascade_restart")).unwrap(),
            PgOutputMessage::Truncate {
                cascade: true,
                restart_identity: true,
                relation_ids: vec![16384, 16392]
            }
        );
    }

    #[test]
    fn type_and_messages() {
        assert_eq!(
            decode(&captured("type_mood")).unwrap(),
            PgOutputMessage::Type {
                id: 16408,
                namespace: "public".into(),
                name: "mood".into()
            }
        );
        match decode(&captured("message_transactional")).unwrap() {
            PgOutputMessage::Message {
                transactional,
                prefix,
                content,
                ..
            } => {
                assert!(transactional);
                assert_eq!(prefix, "walcast.test");
                assert_eq!(&content[..], b"hello");
            }
            other => panic!("unexpected {other:?}"),
        }
        match decode(&captured("message_non_transactional")).unwrap() {
            PgOutputMessage::Message {
                transactional,
                content,
                ..
            } => {
                assert!(!transactional);
                assert_eq!(&content[..], &[0xff, 0x00]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn every_truncation_of_every_captured_message_is_an_error_not_a_panic() {
        for line in CAPTURED.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(' ').next().unwrap();
            let full = captured(name);
            assert!(decode(&full).is_ok(), "{name} decodes");
            for len in 0..full.len() {
                let cut = full.slice(..len);
                assert!(decode(&cut).is_err(), "{name} cut at {len} must fail");
            }
            let mut longer = full.to_vec();
            longer.push(0);
            assert!(matches!(
                decode(&Bytes::from(longer)),
                Err(DecodeError::Trailing { .. })
            ));
        }
    }

    #[test]
    fn errors_name_the_message_and_offset() {
        let err = decode(&captured("insert_tasks").slice(..10)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "truncated Insert message at byte 9: needed 4 bytes, 1 left"
        );
        assert_eq!(
            decode(&Bytes::from_static(b"Z")).unwrap_err(),
            DecodeError::UnknownTag { tag: b'Z' }
        );
        // a negative value length
        let bad = Bytes::from_static(b"I\0\0\0\x01N\0\x01t\xff\xff\xff\xff");
        assert!(matches!(
            decode(&bad).unwrap_err(),
            DecodeError::Negative { offset: 9, .. }
        ));
        // a column count far larger than the message must not allocate it
        let huge = Bytes::from_static(b"I\0\0\0\x01N\x7f\xff");
        assert!(matches!(
            decode(&huge).unwrap_err(),
            DecodeError::Truncated { .. }
        ));
    }
}
