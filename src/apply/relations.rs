//! The relation cache: the latest Relation message of each table, by OID.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::decode::RelationMessage;
use crate::model::TableName;

/// One column of a cached relation.
#[derive(Debug, Clone, PartialEq)]
pub struct RelationColumnInfo {
    pub name: Arc<str>,
    pub type_oid: u32,
    pub is_key: bool,
}

/// The shape of a table as the stream last described it.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub id: u32,
    pub table: TableName,
    pub replica_identity: u8,
    pub columns: Vec<RelationColumnInfo>,
}

impl Relation {
    pub fn has_key(&self) -> bool {
        self.columns.iter().any(|c| c.is_key)
    }
}

impl From<RelationMessage> for Relation {
    fn from(msg: RelationMessage) -> Self {
        // pgoutput sends an empty namespace for pg_catalog.
        let schema = if msg.namespace.is_empty() {
            "pg_catalog"
        } else {
            &msg.namespace
        };
        Relation {
            id: msg.id,
            table: TableName::new(schema, &msg.name),
            replica_identity: msg.replica_identity,
            columns: msg
                .columns
                .into_iter()
                .map(|c| RelationColumnInfo {
                    name: c.name.into(),
                    type_oid: c.type_oid,
                    is_key: c.is_key,
                })
                .collect(),
        }
    }
}

/// Relations by OID. A Relation message replaces the entry (after ALTER TABLE
/// Postgres sends a new one before the next change of that table).
#[derive(Debug, Default)]
pub struct RelationCache {
    by_id: HashMap<u32, Arc<Relation>, BuildHasherDefault<OidHasher>>,
}

/// Hashes a relation OID by one multiplication (Fibonacci hashing) instead
/// of SipHash: it runs once per change, and the OIDs come from the
/// tenant's own catalog, not from an adversary choosing collisions.
#[derive(Debug, Default)]
struct OidHasher(u64);

impl Hasher for OidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for u32 keys; correct for anything else.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl RelationCache {
    pub fn insert(&mut self, relation: Relation) -> Arc<Relation> {
        let relation = Arc::new(relation);
        self.by_id.insert(relation.id, Arc::clone(&relation));
        relation
    }

    pub fn get(&self, id: u32) -> Option<&Arc<Relation>> {
        self.by_id.get(&id)
    }

    /// Forget everything: a new replication session resends every Relation.
    pub fn clear(&mut self) {
        self.by_id.clear();
    }
}
