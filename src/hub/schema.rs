//! The columns of a tenant's published tables and how each compares
//! (`ColumnKind`), read from the catalog when a session starts and again
//! when Postgres describes a table anew. Subscriptions use it to refuse an
//! unknown column or a literal of the wrong type, and to compare typed.

use std::collections::HashMap;

use crate::filter::ColumnKind;
use crate::model::TableName;

/// The columns of one table, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Columns(Vec<(String, ColumnKind)>);

impl Columns {
    pub fn get(&self, name: &str) -> Option<&ColumnKind> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, k)| k)
    }

    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// Every published table's columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schema(HashMap<TableName, Columns>);

impl Schema {
    /// A schema from known columns (tests and fuzzing; `load` reads one).
    pub fn new(tables: impl IntoIterator<Item = (TableName, Vec<(String, ColumnKind)>)>) -> Schema {
        Schema(tables.into_iter().map(|(t, c)| (t, Columns(c))).collect())
    }

    pub fn columns(&self, table: &TableName) -> Option<&Columns> {
        self.0.get(table)
    }

    /// Reads the columns of the tables in `publication`.
    pub async fn load(
        client: &tokio_postgres::Client,
        publication: &str,
    ) -> Result<Schema, tokio_postgres::Error> {
        // Domains carry their base type's category. json and jsonb are
        // category U (user-defined) in pg_type: marked J here, so that they
        // are structured for filters, not text.
        let rows = client
            .query(
                "select n.nspname::text, c.relname::text, a.attname::text,
                        case when t.oid in (114, 3802) or t.typbasetype in (114, 3802) then 'J'
                             else t.typcategory::text end
                   from pg_publication_tables p
                   join pg_namespace n on n.nspname = p.schemaname
                   join pg_class c on c.relnamespace = n.oid and c.relname = p.tablename
                   join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
                   join pg_type t on t.oid = a.atttypid
                  where p.pubname = $1
                  order by 1, 2, a.attnum",
                &[&publication],
            )
            .await?;
        let mut tables: HashMap<TableName, Columns> = HashMap::new();
        for row in rows {
            let (schema, table, column, category): (String, String, String, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let kind = ColumnKind::from_category(category.bytes().next().unwrap_or(b'X'));
            tables
                .entry(TableName::new(&schema, &table))
                .or_default()
                .0
                .push((column, kind));
        }
        Ok(Schema(tables))
    }
}
