//! `walcast check`: everything a tenant's database needs for walcast, with the
//! fix for each problem.

use std::fmt;

use tokio_postgres::Client;

use super::setup::{
    grant_create_sql, may_create_in_database, missing_tables, published_tables, quote_ident,
    quote_table, slot_exists,
};
use super::SourceError;
use crate::config::{PgHost, SslMode, TenantConfig};
use crate::report::error_chain;

/// What check says of a publication or slot that is missing: neither blocks,
/// `walcast run` (and `tail` on the tenant's slot) creates both on start.
const CREATED_BY_RUN: &str = "`walcast run` creates it (or run `walcast setup`)";

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckLevel {
    Ok,
    /// Works, but not as well as it could (for example no key in events).
    Warn,
    /// Streaming cannot work until this is fixed.
    Fail,
}

/// One finding, with the fix when it is not ok.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckItem {
    pub level: CheckLevel,
    pub what: String,
    pub fix: Option<String>,
}

/// The findings for one tenant.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub tenant: String,
    pub target: String,
    pub items: Vec<CheckItem>,
}

impl CheckReport {
    pub fn blocks(&self) -> bool {
        self.items.iter().any(|i| i.level == CheckLevel::Fail)
    }

    fn push(&mut self, level: CheckLevel, what: impl Into<String>, fix: Option<String>) {
        self.items.push(CheckItem {
            level,
            what: what.into(),
            fix,
        });
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "tenant {} ({})", self.tenant, self.target)?;
        for item in &self.items {
            let tag = match item.level {
                CheckLevel::Ok => "ok  ",
                CheckLevel::Warn => "WARN",
                CheckLevel::Fail => "FAIL",
            };
            writeln!(f, "  {tag}  {}", item.what)?;
            if let Some(fix) = &item.fix {
                writeln!(f, "        fix: {fix}")?;
            }
        }
        Ok(())
    }
}

/// Checks one tenant. A connection failure is a report with one failed item,
/// not an error, so that `check` goes on to the next tenant.
pub async fn check_tenant(tenant: &TenantConfig) -> CheckReport {
    let mut report = CheckReport {
        tenant: tenant.id.to_string(),
        target: tenant.pg.to_string(),
        items: Vec::new(),
    };
    let client = match super::connect(tenant, "walcast check").await {
        Ok(client) => client,
        Err(err) => {
            // A TLS failure and a timeout carry their own fix.
            let fix = match err {
                SourceError::Tls { .. } | SourceError::Timeout { .. } => None,
                SourceError::NotPostgres { .. } => Some("put the PostgreSQL server's port in the tenant's url (5432 unless the server sets another)".into()),
                _ => Some("check that the server is running and that host, port, user, password and database in the tenant's url are right (and that pg_hba.conf lets this host in)".into()),
            };
            report.push(
                CheckLevel::Fail,
                format!("cannot connect: {}", error_chain(&err)),
                fix,
            );
            return report;
        }
    };
    if let Err(err) = run_checks(&client, tenant, &mut report).await {
        report.push(
            CheckLevel::Fail,
            format!("check stopped: {}", error_chain(&err)),
            None,
        );
    }
    report
}

/// The TLS state of the connection, as the server sees it, and whether
/// walcast verified the server's certificate.
async fn tls_item(
    client: &Client,
    tenant: &TenantConfig,
    report: &mut CheckReport,
) -> Result<(), SourceError> {
    let row = client
        .query_opt(
            "select version, cipher from pg_stat_ssl where pid = pg_backend_pid() and ssl",
            &[],
        )
        .await
        .map_err(|source| SourceError::Query {
            tenant: tenant.id.clone(),
            what: "reading pg_stat_ssl".into(),
            source,
        })?;
    let tls = &tenant.pg.tls;
    let mode = tls.mode.as_str();
    let stronger = "use sslmode=verify-full (with sslrootcert=PATH for a private CA)";
    match row {
        Some(row) => {
            let (version, cipher): (Option<String>, Option<String>) = (row.get(0), row.get(1));
            let protocol = format!(
                "TLS {} ({})",
                version.unwrap_or_default(),
                cipher.unwrap_or_default()
            );
            if tls.mode == SslMode::VerifyFull {
                report.push(
                    CheckLevel::Ok,
                    format!("{protocol}; certificate verified: trusted CA and host name (sslmode={mode})"),
                    None,
                );
            } else if tls.verifies_chain() {
                report.push(
                    CheckLevel::Ok,
                    format!("{protocol}; certificate verified: trusted CA, host name not compared (sslmode={mode})"),
                    None,
                );
            } else {
                report.push(
                    CheckLevel::Warn,
                    format!("{protocol}, but the server's certificate is not verified (sslmode={mode}): anyone between could pose as the server"),
                    Some(stronger.into()),
                );
            }
        }
        None => match &tenant.pg.host {
            PgHost::Unix(_) => report.push(CheckLevel::Ok, "no TLS (unix socket)", None),
            PgHost::Tcp(host) if is_loopback(host) => report.push(
                CheckLevel::Ok,
                format!("no TLS (local connection to {host})"),
                None,
            ),
            PgHost::Tcp(host) => report.push(
                CheckLevel::Warn,
                format!("no TLS: the connection to {host} is plain text (sslmode={mode})"),
                Some(format!(
                    "turn on ssl in the server's postgresql.conf and {stronger}"
                )),
            ),
        },
    }
    Ok(())
}

/// Stored generated columns are not in pgoutput's rows (before PostgreSQL
/// 18), so events and the mirror lack them: said once per table.
async fn generated_columns_item(
    client: &Client,
    tenant: &TenantConfig,
    report: &mut CheckReport,
) -> Result<(), SourceError> {
    let quoted: Vec<String> = tenant.tables.iter().map(quote_table).collect();
    let rows = client
        .query(
            "select n, string_agg(a.attname::text, ', ' order by a.attnum) \
             from unnest($1::text[]) with ordinality u(t, n) \
             join pg_attribute a on a.attrelid = to_regclass(t) \
             where a.attnum > 0 and not a.attisdropped and a.attgenerated <> '' \
             group by n order by n",
            &[&quoted],
        )
        .await
        .map_err(|source| SourceError::Query {
            tenant: tenant.id.clone(),
            what: "reading the generated columns of the tables".into(),
            source,
        })?;
    for row in rows {
        let (n, names): (i64, String) = (row.get(0), row.get(1));
        let table = &tenant.tables[(n - 1) as usize];
        report.push(
            CheckLevel::Warn,
            format!(
                "{table}: generated column(s) {names} are not sent by logical replication, so events and the mirror do not carry them"
            ),
            Some("compute them in the client, or make them ordinary columns the application writes".into()),
        );
    }
    Ok(())
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn run_checks(
    client: &Client,
    tenant: &TenantConfig,
    report: &mut CheckReport,
) -> Result<(), SourceError> {
    let q = |what: &'static str| {
        let id = tenant.id.clone();
        move |source| SourceError::Query {
            tenant: id,
            what: what.into(),
            source,
        }
    };
    let row = client
        .query_one(
            "select current_setting('server_version'), current_setting('wal_level'), current_user::text, \
             (select rolreplication or rolsuper from pg_roles where rolname = current_user), \
             current_setting('max_replication_slots')::int, (select count(*)::int from pg_replication_slots), \
             current_setting('max_wal_senders')::int, (select count(*)::int from pg_stat_replication)",
            &[],
        )
        .await
        .map_err(q("reading server settings"))?;
    let version: String = row.get(0);
    report.push(
        CheckLevel::Ok,
        format!("connected (PostgreSQL {version})"),
        None,
    );
    tls_item(client, tenant, report).await?;
    generated_columns_item(client, tenant, report).await?;
    match super::mirror_keys(client, tenant).await {
        Ok(_) => {}
        Err(SourceError::Setup { problem, fix, .. }) => {
            report.push(CheckLevel::Fail, problem, Some(fix));
        }
        Err(err) => return Err(err),
    }

    let wal_level: String = row.get(1);
    if wal_level == "logical" {
        report.push(CheckLevel::Ok, "wal_level is logical", None);
    } else {
        report.push(
            CheckLevel::Fail,
            format!("wal_level is {wal_level}; logical replication needs logical"),
            Some("ALTER SYSTEM SET wal_level = logical;  then restart PostgreSQL".into()),
        );
    }

    let user: String = row.get(2);
    if row.get::<_, Option<bool>>(3) == Some(true) {
        report.push(CheckLevel::Ok, format!("role {user} may replicate"), None);
    } else {
        report.push(
            CheckLevel::Fail,
            format!("role {user} lacks the REPLICATION attribute"),
            Some(format!("ALTER ROLE {} REPLICATION;", quote_ident(&user))),
        );
    }

    let slot_exists = slot_exists(client, tenant).await?;
    let (max_slots, used_slots): (i32, i32) = (row.get(4), row.get(5));
    if slot_exists {
        report.push(CheckLevel::Ok, format!("slot {} exists", tenant.slot), None);
    } else if used_slots < max_slots {
        report.push(
            CheckLevel::Warn,
            format!(
                "slot {} does not exist yet ({} of {max_slots} slots are free): {CREATED_BY_RUN}",
                tenant.slot,
                max_slots - used_slots
            ),
            Some(format!(
                "by hand: SELECT pg_create_logical_replication_slot('{}', 'pgoutput');",
                tenant.slot
            )),
        );
    } else {
        report.push(
            CheckLevel::Fail,
            format!("no free replication slot: {used_slots} of {max_slots} in use"),
            Some(format!(
                "ALTER SYSTEM SET max_replication_slots = {};  then restart PostgreSQL (or drop an unused slot)",
                max_slots + 4
            )),
        );
    }

    let (max_senders, used_senders): (i32, i32) = (row.get(6), row.get(7));
    if used_senders < max_senders {
        report.push(
            CheckLevel::Ok,
            format!(
                "{} of {max_senders} wal senders free",
                max_senders - used_senders
            ),
            None,
        );
    } else {
        report.push(
            CheckLevel::Fail,
            format!("no free wal sender: {used_senders} of {max_senders} in use"),
            Some(format!(
                "ALTER SYSTEM SET max_wal_senders = {};  then restart PostgreSQL",
                max_senders + 4
            )),
        );
    }

    let all_tables = client
        .query_opt(
            "select puballtables from pg_publication where pubname = $1",
            &[&tenant.publication],
        )
        .await
        .map_err(q("reading pg_publication"))?
        .map(|r| r.get::<_, bool>(0));
    // A table that does not exist cannot be published: the statements
    // suggested here leave it out (it has its own FAIL line below).
    let absent = missing_tables(client, tenant).await?;
    let exists = |t: &&crate::model::TableName| !absent.iter().any(|m| m.table == **t);
    let tables: Vec<String> = tenant
        .tables
        .iter()
        .filter(exists)
        .map(quote_table)
        .collect();
    let may_create = all_tables.is_some() || may_create_in_database(client, tenant).await?;
    // The tables a publication still needs (all of them when it does not
    // exist): CREATE and ALTER PUBLICATION … TABLE need the role to own
    // each (or to be a member of the owning role).
    let to_publish: Vec<String> = match all_tables {
        Some(true) => Vec::new(),
        Some(false) => {
            let published = published_tables(client, tenant).await?;
            tenant
                .tables
                .iter()
                .filter(exists)
                .filter(|t| !published.contains(t))
                .map(quote_table)
                .collect()
        }
        None => tables.clone(),
    };
    let not_owned: Vec<String> = client
        .query(
            "select t from unnest($1::text[]) with ordinality u(t, n) \
             join pg_class c on c.oid = to_regclass(t) \
             where not pg_has_role(current_user, c.relowner, 'USAGE') order by n",
            &[&to_publish],
        )
        .await
        .map_err(q("reading the owners of the tables"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !not_owned.is_empty() {
        report.push(
            CheckLevel::Fail,
            format!(
                "role {user} does not own {}: adding a table to a publication needs its owner",
                not_owned.join(", ")
            ),
            Some(format!(
                "{}  (as the owner or a superuser), or run `walcast setup` once as the tables' owner",
                not_owned
                    .iter()
                    .map(|t| format!("ALTER TABLE {t} OWNER TO {};", quote_ident(&user)))
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
        );
    }
    match all_tables {
        None if tables.is_empty() => report.push(
            CheckLevel::Warn,
            format!(
                "publication {} does not exist yet, and none of the tenant's tables exists",
                tenant.publication
            ),
            Some("correct the tenant's tables first (the FAIL lines below)".into()),
        ),
        // CREATE PUBLICATION needs the CREATE privilege on the database
        // (besides owning the tables), which a role that owns the tables
        // does not have by default; superusers have it.
        None if !may_create => report.push(
            CheckLevel::Fail,
            format!(
                "publication {} does not exist, and role {user} may not create it: CREATE PUBLICATION needs the CREATE privilege on database {}",
                tenant.publication, tenant.pg.dbname
            ),
            Some(format!(
                "{}  (as the database owner or a superuser), then `walcast setup`",
                grant_create_sql(&tenant.pg.dbname, &user)
            )),
        ),
        None => report.push(
            CheckLevel::Warn,
            format!(
                "publication {} does not exist yet: {CREATED_BY_RUN}",
                tenant.publication
            ),
            Some(format!(
                "by hand: CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true);",
                quote_ident(&tenant.publication),
                tables.join(", ")
            )),
        ),
        Some(_) => {
            let missing = &to_publish;
            if missing.is_empty() {
                report.push(
                    CheckLevel::Ok,
                    format!(
                        "publication {} covers the {} configured tables",
                        tenant.publication,
                        tenant.tables.len()
                    ),
                    None,
                );
            } else {
                report.push(
                    CheckLevel::Warn,
                    format!(
                        "publication {} does not cover {} yet: `walcast run` adds them (or run `walcast setup`)",
                        tenant.publication,
                        missing.join(", ")
                    ),
                    Some(format!(
                        "by hand: ALTER PUBLICATION {} ADD TABLE {};",
                        quote_ident(&tenant.publication),
                        missing.join(", ")
                    )),
                );
            }
        }
    }

    for table in &tenant.tables {
        if let Some(missing) = absent.iter().find(|m| m.table == *table) {
            report.push(
                CheckLevel::Fail,
                missing.describe(&tenant.pg.dbname),
                Some("correct the name in the tenant's tables, or create the table".into()),
            );
            continue;
        }
        let row = client
            .query_opt(
                "select c.relreplident::text, \
                 exists(select 1 from pg_index i where i.indrelid = c.oid and i.indisprimary), \
                 has_table_privilege(c.oid, 'SELECT') \
                 from pg_class c join pg_namespace n on n.oid = c.relnamespace \
                 where n.nspname = $1 and c.relname = $2 and c.relkind in ('r', 'p')",
                &[&&*table.schema, &&*table.name],
            )
            .await
            .map_err(q("reading pg_class"))?;
        let name = quote_table(table);
        let Some(row) = row else {
            report.push(
                CheckLevel::Fail,
                format!("table {table} does not exist"),
                Some("create it, or remove it from the tenant's tables".into()),
            );
            continue;
        };
        let (identity, has_pk, can_select): (String, bool, bool) =
            (row.get(0), row.get(1), row.get(2));
        match (identity.as_str(), has_pk) {
            ("d", true) => report.push(CheckLevel::Ok, format!("{table}: replica identity is its primary key"), None),
            ("d", false) => report.push(
                CheckLevel::Warn,
                format!("{table}: replica identity DEFAULT but no primary key: updates and deletes are not streamed (Postgres refuses them once the table is published)"),
                Some(format!("add a primary key, or ALTER TABLE {name} REPLICA IDENTITY FULL;")),
            ),
            ("n", _) => report.push(
                CheckLevel::Warn,
                format!("{table}: replica identity NOTHING: updates and deletes are not streamed"),
                Some(format!("ALTER TABLE {name} REPLICA IDENTITY DEFAULT;  (with a primary key) or REPLICA IDENTITY FULL;")),
            ),
            ("f", _) => report.push(CheckLevel::Ok, format!("{table}: replica identity FULL"), None),
            _ => report.push(CheckLevel::Ok, format!("{table}: replica identity is an index"), None),
        }
        if !can_select {
            report.push(
                CheckLevel::Warn,
                format!("{table}: no SELECT privilege (needed for snapshots)"),
                Some(format!("GRANT SELECT ON {name} TO {};", quote_ident(&user))),
            );
        }
    }
    Ok(())
}
