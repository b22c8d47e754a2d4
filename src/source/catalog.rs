//! Catalog look-ups over the tenant's regular connection: the shape of types
//! that are not built in (domains, enums, composites, ranges, multirange,
//! arrays of them, extension types), so that `apply` can type their values.
//!
//! Owns the SQL against `pg_type`, `pg_range` and `pg_attribute`; knows
//! nothing of values. The answer is what the catalog says now, which can be
//! newer than the change being decoded (a type dropped since reads as text).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio_postgres::Client;

use super::SourceError;
use crate::config::TenantId;
use crate::model::TypeShape;

/// More rounds than any real nesting needs (a domain over an array of a
/// composite with a range field is four); stops a cycle in a broken catalog.
const MAX_ROUNDS: usize = 16;

/// Looks up `oids` and every type they are built from that `known` does not
/// already cover. A type the catalog does not have (dropped meanwhile) is
/// `TypeShape::Text`: its values stay text.
pub async fn load_types(
    client: &Client,
    tenant: &TenantId,
    oids: &[u32],
    known: &(dyn Fn(u32) -> bool + Sync),
) -> Result<Vec<(u32, TypeShape)>, SourceError> {
    let query_err = |what: &str| {
        let tenant = tenant.clone();
        let what = what.to_owned();
        move |source| SourceError::Query {
            tenant,
            what,
            source,
        }
    };
    let mut found: HashMap<u32, TypeShape> = HashMap::new();
    let mut wanted: Vec<u32> = oids.to_vec();
    for _ in 0..MAX_ROUNDS {
        wanted.retain(|oid| !known(*oid) && !found.contains_key(oid));
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            break;
        }
        // pg_range.rngmultitypid exists from PostgreSQL 14, like multiranges
        // themselves: find a multirange's range in a second query.
        let rows = client
            .query(
                "select t.oid, t.typtype::text, t.typbasetype, t.typelem, t.typdelim::text,
                        t.typrelid, t.typinput::text, r.rngsubtype
                   from pg_type t left join pg_range r on r.rngtypid = t.oid
                  where t.oid = any($1)",
                &[&wanted],
            )
            .await
            .map_err(query_err("looking up column types in pg_type"))?;
        let mut composites: Vec<(u32, u32)> = Vec::new();
        let mut multiranges: Vec<u32> = Vec::new();
        for row in &rows {
            let oid: u32 = row.get(0);
            let typtype: &str = row.get(1);
            let base: u32 = row.get(2);
            let element: u32 = row.get(3);
            let delimiter: &str = row.get(4);
            let relid: u32 = row.get(5);
            let input: &str = row.get(6);
            let subtype: Option<u32> = row.get(7);
            let shape = match typtype {
                "d" => TypeShape::Domain { base },
                "e" => TypeShape::Enum,
                "c" => {
                    composites.push((oid, relid));
                    continue;
                }
                "r" => match subtype {
                    Some(subtype) => TypeShape::Range { subtype },
                    None => TypeShape::Text,
                },
                "m" => {
                    multiranges.push(oid);
                    continue;
                }
                // A true array reads its text with array_in (point, name,
                // int2vector also have a typelem but are not written as
                // `{…}`).
                "b" if input == "array_in" && element != 0 => TypeShape::Array {
                    element,
                    delimiter: delimiter.bytes().next().unwrap_or(b','),
                },
                // Base types of extensions, pseudo-types.
                _ => TypeShape::Text,
            };
            found.insert(oid, shape);
        }
        if !composites.is_empty() {
            let relids: Vec<u32> = composites.iter().map(|(_, r)| *r).collect();
            let rows = client
                .query(
                    "select attrelid, attname::text, atttypid from pg_attribute
                      where attrelid = any($1) and attnum > 0 and not attisdropped
                      order by attrelid, attnum",
                    &[&relids],
                )
                .await
                .map_err(query_err(
                    "looking up composite type fields in pg_attribute",
                ))?;
            let mut fields: HashMap<u32, Vec<(Arc<str>, u32)>> = HashMap::new();
            for row in &rows {
                let relid: u32 = row.get(0);
                let name: &str = row.get(1);
                fields
                    .entry(relid)
                    .or_default()
                    .push((Arc::from(name), row.get(2)));
            }
            for (oid, relid) in composites {
                let shape = match fields.remove(&relid) {
                    Some(fields) => TypeShape::Composite { fields },
                    None => TypeShape::Text,
                };
                found.insert(oid, shape);
            }
        }
        if !multiranges.is_empty() {
            let rows = client
                .query(
                    "select rngmultitypid, rngtypid from pg_range where rngmultitypid = any($1)",
                    &[&multiranges],
                )
                .await
                .map_err(query_err("looking up multirange types in pg_range"))?;
            let ranges: HashMap<u32, u32> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            for oid in multiranges {
                let shape = match ranges.get(&oid) {
                    Some(range) => TypeShape::Multirange { range: *range },
                    None => TypeShape::Text,
                };
                found.insert(oid, shape);
            }
        }
        let answered: HashSet<u32> = found.keys().copied().collect();
        let mut next = Vec::new();
        for oid in &wanted {
            if !answered.contains(oid) {
                // Not in the catalog (any more): its values stay text.
                found.insert(*oid, TypeShape::Text);
            }
        }
        for shape in found.values() {
            next.extend(shape.referenced());
        }
        wanted = next;
    }
    Ok(found.into_iter().collect())
}

/// The columns that tell a mirrored table's rows apart, for each mirror
/// rule of `tenant` without a configured `key`: the primary key, else the
/// replica identity index. A table with neither (replica identity FULL or
/// NOTHING, or DEFAULT without a primary key) is an error with the fix:
/// under FULL identity every column would be the key, so an update would
/// leave the old row's copy behind and key names would hold row values.
pub async fn mirror_keys(
    client: &Client,
    tenant: &crate::config::TenantConfig,
) -> Result<Vec<(crate::model::TableName, Vec<String>)>, SourceError> {
    const SQL: &str = "select c.relreplident::text, \
        (select array_agg(a.attname::text order by array_position(i.indkey::int2[], a.attnum)) \
           from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey) \
          where i.indrelid = c.oid and i.indisprimary), \
        (select array_agg(a.attname::text order by array_position(i.indkey::int2[], a.attnum)) \
           from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey) \
          where i.indrelid = c.oid and i.indisreplident) \
        from pg_class c where c.oid = to_regclass($1)";
    let mut keys = Vec::new();
    for rule in tenant.mirror.iter().filter(|r| r.key.is_none()) {
        let quoted = super::quote_table(&rule.table);
        let row = client
            .query_opt(SQL, &[&quoted])
            .await
            .map_err(|source| SourceError::Query {
                tenant: tenant.id.clone(),
                what: format!("reading the key of mirrored table {}", rule.table),
                source,
            })?;
        // A table that does not exist is reported where the tables are
        // checked (setup and check); it has no rows to key.
        let Some(row) = row else { continue };
        let identity: String = row.get(0);
        let primary: Option<Vec<String>> = row.get(1);
        let index: Option<Vec<String>> = row.get(2);
        match (primary, index) {
            (Some(columns), _) => keys.push((rule.table.clone(), columns)),
            (None, Some(columns)) if identity == "i" => keys.push((rule.table.clone(), columns)),
            _ => {
                let identity = match identity.as_str() {
                    "f" => "replica identity FULL",
                    "n" => "replica identity NOTHING",
                    _ => "no replica identity index",
                };
                return Err(SourceError::Setup {
                    tenant: tenant.id.clone(),
                    problem: format!(
                        "mirrored table {} has no primary key ({identity}), so walcast cannot tell its rows apart in Redis",
                        rule.table
                    ),
                    fix: format!(
                        "give {} a primary key, or set key = [\"column\", …] (columns that identify a row) in its [[mirror]] rule",
                        rule.table
                    ),
                });
            }
        }
    }
    Ok(keys)
}
