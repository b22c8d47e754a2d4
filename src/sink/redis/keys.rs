//! Redis key names. Every key of a tenant starts with `<prefix>:{<tenant>}:`:
//! the braces are a Redis Cluster hash tag, so all of a tenant's keys live in
//! one slot and one script can touch them atomically. Table names and key
//! values are percent-encoded so that `:` `{` `}` in data can neither collide
//! nor escape the tenant.

use crate::config::TenantId;
use crate::model::{Datum, RowImage, TableName};

/// The key names of one tenant.
#[derive(Debug, Clone)]
pub struct Keys {
    base: String,
}

impl Keys {
    pub fn new(prefix: &str, tenant: &TenantId) -> Keys {
        Keys {
            base: format!("{prefix}:{{{}}}", tenant.as_str()),
        }
    }

    /// The per-tenant event stream.
    pub fn events(&self) -> String {
        format!("{}:events", self.base)
    }

    /// The applied watermark: `last_id` (sortable), `event_id`, `end_lsn`.
    pub fn applied(&self) -> String {
        format!("{}:applied", self.base)
    }

    /// The epoch marker: written by a snapshot; its absence means Redis lost
    /// the tenant's data.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.base)
    }

    /// Commit times of stream entries, for age-based trimming.
    pub fn stream_times(&self) -> String {
        format!("{}:stream_times", self.base)
    }

    /// Prefix of one table's mirrored rows: `<prefix>:{t}:row:<table>:`.
    pub fn row_prefix(&self, table: &TableName) -> String {
        format!("{}:row:{}:", self.base, table_part(table))
    }

    /// One mirrored row.
    pub fn row(&self, table: &TableName, key: &str) -> String {
        format!("{}{key}", self.row_prefix(table))
    }

    /// The row index of a mirrored table: a hash from every row key walcast
    /// wrote to the index sets that row is in (newline-separated).
    pub fn rowindex(&self, table: &TableName) -> String {
        format!("{}:rowindex:{}", self.base, table_part(table))
    }

    /// Every index set key of a mirrored table.
    pub fn index_sets(&self, table: &TableName) -> String {
        format!("{}:idxsets:{}", self.base, table_part(table))
    }

    /// The set of rows whose `column` has the value whose JSON text is `value_json`.
    pub fn index(&self, table: &TableName, column: &str, value_json: &str) -> String {
        format!("{}{value_json}", self.index_prefix(table, column))
    }

    /// The index sets of one column, without the value's JSON text.
    pub fn index_prefix(&self, table: &TableName, column: &str) -> String {
        format!(
            "{}:idx:{}:{}:",
            self.base,
            table_part(table),
            escape(column)
        )
    }
}

fn table_part(table: &TableName) -> String {
    format!("{}.{}", escape(&table.schema), escape(&table.name))
}

/// The key part of a row: its key columns' values, each percent-encoded,
/// joined by `,`. `None` when a key column is missing from the image.
pub fn row_key(image: &RowImage, columns: &[&str]) -> Option<String> {
    row_key_of(image, columns.iter().copied())
}

/// `row_key` for columns given one by one.
pub fn row_key_of<'a>(
    image: &RowImage,
    columns: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let mut out = String::new();
    push_row_key(&mut out, image, columns).then_some(out)
}

/// Appends the key part of a row to `out` (a row key's prefix, say), without
/// a string per column. False, with `out` partly written, when a key column
/// is missing from the image.
pub fn push_row_key<'a>(
    out: &mut String,
    image: &RowImage,
    columns: impl IntoIterator<Item = &'a str>,
) -> bool {
    for (i, column) in columns.into_iter().enumerate() {
        let Some(value) = image.get(column) else {
            return false;
        };
        if i > 0 {
            out.push(',');
        }
        match value {
            Datum::Int(n) => out.push_str(itoa::Buffer::new().format(*n)),
            Datum::Text(s) => push_escaped(out, s),
            other => push_escaped(out, &crate::model::datum_json(other)),
        }
    }
    true
}

/// Percent-encodes every byte outside `[A-Za-z0-9_.-]` (and `.` itself in
/// names, where it separates schema and table).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    push_escaped(&mut out, text);
    out
}

fn push_escaped(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hash_tagged_and_data_cannot_escape() {
        let keys = Keys::new("walcast", &crate::config::TenantId::for_tests("acme"));
        let table = TableName::new("public", "tasks");
        assert_eq!(keys.events(), "walcast:{acme}:events");
        assert_eq!(keys.row(&table, "42"), "walcast:{acme}:row:public.tasks:42");
        let image = RowImage(vec![("id".into(), Datum::Text("a:b}{c,d".into()))]);
        let key = row_key(&image, &["id"]).unwrap();
        assert_eq!(key, "a%3Ab%7D%7Bc%2Cd");
        let odd = TableName::new("my.schema", "t:{x}");
        assert_eq!(
            keys.rowindex(&odd),
            "walcast:{acme}:rowindex:my%2Eschema.t%3A%7Bx%7D"
        );
        let two = RowImage(vec![
            ("a".into(), Datum::Int(1)),
            ("b".into(), Datum::Text("x,y".into())),
        ]);
        assert_eq!(row_key(&two, &["a", "b"]).unwrap(), "1,x%2Cy");
        assert_eq!(row_key(&two, &["c"]), None);
    }
}
