//! The regular connection, and idempotent creation of publication and slot.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::SslMode as WireSslMode;
use tokio_postgres::{Client, NoTls};

use super::SourceError;
use crate::config::{SslMode, TenantConfig};
use crate::model::TableName;

/// Opens the tenant's regular connection (its driver runs on its own task),
/// with TLS as the url's `sslmode` says.
pub async fn connect(tenant: &TenantConfig, application_name: &str) -> Result<Client, SourceError> {
    let tls = super::tls::client_config(tenant)?;
    match (tenant.pg.tls.mode, tls) {
        (_, None) => open(tenant, application_name, WireSslMode::Disable, None).await,
        // libpq's `allow`: plain first, TLS when the server wants it.
        (SslMode::Allow, Some(tls)) => {
            match open(tenant, application_name, WireSslMode::Disable, None).await {
                Err(SourceError::Tls { .. }) => {
                    open(tenant, application_name, WireSslMode::Require, Some(tls)).await
                }
                other => other,
            }
        }
        (SslMode::Prefer, Some(tls)) => {
            open(tenant, application_name, WireSslMode::Prefer, Some(tls)).await
        }
        (_, Some(tls)) => open(tenant, application_name, WireSslMode::Require, Some(tls)).await,
    }
}

async fn open(
    tenant: &TenantConfig,
    application_name: &str,
    ssl_mode: WireSslMode,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Client, SourceError> {
    let mut config = tenant.pg.tokio_config(application_name);
    config.ssl_mode(ssl_mode);
    let deadline = tenant.pg.connect_timeout;
    match tls {
        None => drive(
            tenant,
            tokio::time::timeout(deadline, config.connect(NoTls)).await,
        ),
        Some(tls) => {
            let connector = tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone());
            drive(
                tenant,
                tokio::time::timeout(deadline, config.connect(connector)).await,
            )
        }
    }
}

type Connected<S, T> = Result<
    Result<(Client, tokio_postgres::Connection<S, T>), tokio_postgres::Error>,
    tokio::time::error::Elapsed,
>;

/// Runs the connection's driver on its own task, or names what went wrong.
fn drive<S, T>(tenant: &TenantConfig, connected: Connected<S, T>) -> Result<Client, SourceError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = connected
        .map_err(|_| SourceError::Timeout {
            tenant: tenant.id.clone(),
            target: tenant.pg.to_string(),
            what: "connecting",
            after: tenant.pg.connect_timeout,
        })?
        .map_err(|source| connect_error(tenant, source))?;
    let id = tenant.id.clone();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(tenant = %id, %error, "setup connection closed");
        }
    });
    Ok(client)
}

fn connect_error(tenant: &TenantConfig, source: tokio_postgres::Error) -> SourceError {
    let text = crate::report::error_chain(&source);
    let tls_problem = super::tls::explain_failure(&text, tenant).or_else(|| {
        refused_without_tls(&source)
            .then(|| super::tls::plain_refused(tenant))
            .flatten()
    });
    match tls_problem {
        Some((reason, fix)) => SourceError::Tls {
            tenant: tenant.id.clone(),
            target: tenant.pg.to_string(),
            reason,
            fix,
        },
        None if answered_not_postgres(&source) => SourceError::NotPostgres {
            tenant: tenant.id.clone(),
            target: tenant.pg.to_string(),
            source,
        },
        None => SourceError::Connect {
            tenant: tenant.id.clone(),
            target: tenant.pg.to_string(),
            source,
        },
    }
}

/// pg_hba.conf has no `host` line (only `hostssl`) for a plain connection.
fn refused_without_tls(err: &tokio_postgres::Error) -> bool {
    err.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            && db.message().contains("no encryption")
    })
}

/// Whether a failed connection attempt got an answer that is not the
/// PostgreSQL protocol. tokio-postgres has no public error kind for it; its
/// text is one of: the codec saw the stream end inside a frame whose length
/// was garbage ("bytes remaining on stream": an HTTP or Redis reply read as a
/// length), a message type Postgres does not send, or a frame it could not
/// parse. A server error (`DbError`) is Postgres speaking.
fn answered_not_postgres(err: &tokio_postgres::Error) -> bool {
    if err.as_db_error().is_some() {
        return false;
    }
    let text = crate::report::error_chain(err);
    [
        "bytes remaining on stream",
        "unexpected message from server",
        "error parsing response from server",
        "unknown message tag",
    ]
    .iter()
    .any(|sign| text.contains(sign))
}

/// `"name"` with inner quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."table"`.
pub fn quote_table(table: &TableName) -> String {
    format!(
        "{}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.name)
    )
}

/// One statement `walcast setup` runs (or prints with `--dry-run`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupAction {
    pub sql: String,
    pub why: String,
}

fn query_err(
    tenant: &TenantConfig,
    what: &str,
) -> impl FnOnce(tokio_postgres::Error) -> SourceError {
    let tenant = tenant.id.clone();
    let what = what.to_owned();
    move |source| SourceError::Query {
        tenant,
        what,
        source,
    }
}

/// A configured table that the tenant's database does not have, with the
/// existing tables whose names are closest (a typo, another schema).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingTable {
    pub table: TableName,
    pub similar: Vec<TableName>,
}

impl MissingTable {
    /// "table public.taks does not exist in database platform; did you mean public.tasks?"
    pub fn describe(&self, database: &str) -> String {
        let names: Vec<String> = self.similar.iter().map(ToString::to_string).collect();
        match names.as_slice() {
            [] => format!(
                "table {} does not exist in database {database} (and no table has a similar name)",
                self.table
            ),
            [one] => format!(
                "table {} does not exist in database {database}; did you mean {one}?",
                self.table
            ),
            more => format!(
                "table {} does not exist in database {database}; did you mean one of {}?",
                self.table,
                more.join(", ")
            ),
        }
    }
}

/// Suggestions offered for a missing table at most.
const MAX_SUGGESTIONS: usize = 3;

/// The configured tables that do not exist in the tenant's database.
pub(crate) async fn missing_tables(
    client: &Client,
    tenant: &TenantConfig,
) -> Result<Vec<MissingTable>, SourceError> {
    // pg_tables lists ordinary and partitioned tables, the kinds a
    // publication takes, whatever the role may read.
    let rows = client
        .query(
            "select schemaname::text, tablename::text from pg_tables \
             where schemaname not in ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .map_err(query_err(tenant, "reading pg_tables"))?;
    let existing: Vec<TableName> = rows
        .iter()
        .map(|r| TableName::new(r.get::<_, &str>(0), r.get::<_, &str>(1)))
        .collect();
    Ok(tenant
        .tables
        .iter()
        .filter(|t| !existing.contains(t))
        .map(|t| MissingTable {
            table: t.clone(),
            similar: similar_tables(t, &existing),
        })
        .collect())
}

/// The existing tables closest to `wanted` by edit distance on
/// `schema.table`, nearest first; a table of the same name in another schema
/// counts as one edit. Only names within about a third of the length.
fn similar_tables(wanted: &TableName, existing: &[TableName]) -> Vec<TableName> {
    let target = wanted.to_string();
    let limit = (target.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &TableName)> = existing
        .iter()
        .map(|t| {
            let distance = if t.name == wanted.name {
                1
            } else {
                edit_distance(&target, &t.to_string())
            };
            (distance, t)
        })
        .filter(|(d, _)| *d <= limit)
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(MAX_SUGGESTIONS)
        .map(|(_, t)| t.clone())
        .collect()
}

/// Levenshtein distance over characters, ignoring case (Postgres folds
/// unquoted names to lower case, a configured `Tasks` is a typo for `tasks`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// The statements that bring publication and slot to what the config says,
/// given what exists now. Empty when nothing is missing. A configured table
/// that does not exist is an error naming it (and what it may be a typo of):
/// no statement could add it to the publication.
pub async fn setup_sql(
    client: &Client,
    tenant: &TenantConfig,
) -> Result<Vec<SetupAction>, SourceError> {
    let missing = missing_tables(client, tenant).await?;
    if !missing.is_empty() {
        let problems: Vec<String> = missing
            .iter()
            .map(|m| m.describe(&tenant.pg.dbname))
            .collect();
        return Err(SourceError::Setup {
            tenant: tenant.id.clone(),
            problem: problems.join("; "),
            fix:
                "correct the name in the tenant's tables (or create the table); nothing was changed"
                    .into(),
        });
    }
    let mut actions = Vec::new();
    let publication = client
        .query_opt(
            "select puballtables from pg_publication where pubname = $1",
            &[&tenant.publication],
        )
        .await
        .map_err(query_err(tenant, "reading pg_publication"))?;
    match publication {
        None => {
            let tables: Vec<String> = tenant.tables.iter().map(quote_table).collect();
            actions.push(SetupAction {
                // Via the partition root: a change of a partitioned table is
                // reported under the table the tenant configured, not under
                // the partition that holds the row.
                sql: format!(
                    "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true);",
                    quote_ident(&tenant.publication),
                    tables.join(", ")
                ),
                why: format!("publication {} does not exist", tenant.publication),
            });
        }
        Some(row) if row.get::<_, bool>(0) => {}
        Some(_) => {
            let published = published_tables(client, tenant).await?;
            let missing: Vec<&TableName> = tenant
                .tables
                .iter()
                .filter(|t| !published.contains(t))
                .collect();
            if !missing.is_empty() {
                let names: Vec<String> = missing.iter().map(|t| quote_table(t)).collect();
                actions.push(SetupAction {
                    sql: format!(
                        "ALTER PUBLICATION {} ADD TABLE {};",
                        quote_ident(&tenant.publication),
                        names.join(", ")
                    ),
                    why: format!(
                        "publication {} does not cover {}",
                        tenant.publication,
                        names.join(", ")
                    ),
                });
            }
        }
    }
    if !slot_exists(client, tenant).await? {
        actions.push(SetupAction {
            sql: format!(
                "SELECT pg_create_logical_replication_slot('{}', 'pgoutput');",
                tenant.slot
            ),
            why: format!("slot {} does not exist", tenant.slot),
        });
    }
    Ok(actions)
}

pub(crate) async fn published_tables(
    client: &Client,
    tenant: &TenantConfig,
) -> Result<Vec<TableName>, SourceError> {
    // pg_publication_tables lists the partitions, not the partitioned table
    // itself, of a publication without publish_via_partition_root: the
    // tables named in the publication come from pg_publication_rel.
    let rows = client
        .query(
            "select schemaname::text, tablename::text from pg_publication_tables where pubname = $1
             union
             select n.nspname::text, c.relname::text
               from pg_publication_rel r
               join pg_publication p on p.oid = r.prpubid
               join pg_class c on c.oid = r.prrelid
               join pg_namespace n on n.oid = c.relnamespace
              where p.pubname = $1",
            &[&tenant.publication],
        )
        .await
        .map_err(query_err(tenant, "reading pg_publication_tables"))?;
    Ok(rows
        .iter()
        .map(|r| TableName::new(r.get::<_, &str>(0), r.get::<_, &str>(1)))
        .collect())
}

pub(crate) async fn slot_exists(
    client: &Client,
    tenant: &TenantConfig,
) -> Result<bool, SourceError> {
    Ok(client
        .query_opt(
            "select 1 from pg_replication_slots where slot_name = $1",
            &[&tenant.slot],
        )
        .await
        .map_err(query_err(tenant, "reading pg_replication_slots"))?
        .is_some())
}

/// Whether the session's role has the CREATE privilege on its database,
/// which CREATE PUBLICATION needs (superusers always have it).
pub(crate) async fn may_create_in_database(
    client: &Client,
    tenant: &TenantConfig,
) -> Result<bool, SourceError> {
    let row = client
        .query_one(
            "select has_database_privilege(current_user, current_database(), 'CREATE')",
            &[],
        )
        .await
        .map_err(query_err(tenant, "reading the database privileges"))?;
    Ok(row.get(0))
}

/// `GRANT CREATE ON DATABASE "db" TO "role";`
pub(crate) fn grant_create_sql(database: &str, role: &str) -> String {
    format!(
        "GRANT CREATE ON DATABASE {} TO {};",
        quote_ident(database),
        quote_ident(role)
    )
}

/// Creates or extends the publication so that it covers the configured tables.
pub async fn ensure_publication(client: &Client, tenant: &TenantConfig) -> Result<(), SourceError> {
    for action in setup_sql(client, tenant).await? {
        if action.sql.contains("PUBLICATION") {
            if let Err(source) = client.batch_execute(&action.sql).await {
                let denied =
                    source.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE);
                // "permission denied for database": the role may own every
                // table and still lack CREATE on the database.
                if denied
                    && action.sql.starts_with("CREATE")
                    && !may_create_in_database(client, tenant).await.unwrap_or(true)
                {
                    return Err(SourceError::Setup {
                        tenant: tenant.id.clone(),
                        problem: format!(
                            "{} and role {} may not create it: CREATE PUBLICATION needs the CREATE privilege on database {}",
                            action.why, tenant.pg.user, tenant.pg.dbname
                        ),
                        fix: format!(
                            "{}  (as the database owner or a superuser), then run `walcast setup` again",
                            grant_create_sql(&tenant.pg.dbname, &tenant.pg.user)
                        ),
                    });
                }
                return Err(setup_failure(tenant, &action, source));
            }
            let done = if action.sql.starts_with("CREATE") {
                "created publication"
            } else {
                "added tables to publication"
            };
            tracing::info!(tenant = %tenant.id, publication = %tenant.publication, "{done}");
        }
    }
    Ok(())
}

/// Creates the replication slot if it does not exist. Returns whether it was created.
pub async fn ensure_slot(client: &Client, tenant: &TenantConfig) -> Result<bool, SourceError> {
    if slot_exists(client, tenant).await? {
        return Ok(false);
    }
    // Creating a slot waits for the transactions running at that moment to
    // end, however long they take: no statement timeout for it.
    let sql = "select pg_create_logical_replication_slot($1, 'pgoutput')";
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .map_err(query_err(tenant, "lifting the statement timeout"))?;
    let created = client.execute(sql, &[&tenant.slot]).await;
    client
        .batch_execute("RESET statement_timeout")
        .await
        .map_err(query_err(tenant, "restoring the statement timeout"))?;
    match created {
        Ok(_) => {
            tracing::info!(tenant = %tenant.id, slot = %tenant.slot, "created replication slot");
            Ok(true)
        }
        // Another walcast (or a concurrent setup) created it first.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => Ok(false),
        Err(source) => Err(setup_failure(
            tenant,
            &SetupAction {
                sql: format!(
                    "SELECT pg_create_logical_replication_slot('{}', 'pgoutput');",
                    tenant.slot
                ),
                why: format!("slot {} does not exist", tenant.slot),
            },
            source,
        )),
    }
}

fn setup_failure(
    tenant: &TenantConfig,
    action: &SetupAction,
    source: tokio_postgres::Error,
) -> SourceError {
    let detail = source
        .as_db_error()
        .map(|db| db.message().to_owned())
        .unwrap_or_else(|| source.to_string());
    let fix = match source.code() {
        Some(c) if *c == tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE && action.sql.contains("replication_slot") => format!(
            "give the role the REPLICATION attribute: ALTER ROLE {} REPLICATION;",
            quote_ident(&tenant.pg.user)
        ),
        Some(c) if *c == tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE => format!(
            "run it as a role that owns the tables (or a superuser): {}",
            action.sql
        ),
        Some(c) if *c == tokio_postgres::error::SqlState::UNDEFINED_TABLE => {
            "create the table, or remove it from the tenant's tables".to_string()
        }
        Some(c) if *c == tokio_postgres::error::SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE => {
            "set wal_level = logical (ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL)".to_string()
        }
        _ => format!("run `walcast check` for a full report, or run by hand: {}", action.sql),
    };
    SourceError::Setup {
        tenant: tenant.id.clone(),
        problem: format!("{} and creating it failed: {detail}", action.why),
        fix,
    }
}

/// Whether the tenant's slot exists (`Some`) and is in use by a session.
pub async fn slot_state(
    client: &Client,
    tenant: &TenantConfig,
) -> Result<Option<bool>, SourceError> {
    Ok(client
        .query_opt(
            "select active from pg_replication_slots where slot_name = $1",
            &[&tenant.slot],
        )
        .await
        .map_err(query_err(tenant, "reading pg_replication_slots"))?
        .map(|r| r.get::<_, bool>(0)))
}

/// Drops the tenant's slot (it must not be in use).
pub async fn drop_slot(client: &Client, tenant: &TenantConfig) -> Result<(), SourceError> {
    client
        .execute("select pg_drop_replication_slot($1)", &[&tenant.slot])
        .await
        .map_err(query_err(tenant, "dropping the replication slot"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("public.tasks", "public.tasks"), 0);
        assert_eq!(edit_distance("public.taks", "public.tasks"), 1);
        assert_eq!(edit_distance("public.Tasks", "public.tasks"), 0);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn similar_tables_are_the_nearest_few() {
        let existing = [
            TableName::new("public", "tasks"),
            TableName::new("public", "task_log"),
            TableName::new("app", "environments"),
            TableName::new("public", "audit_log"),
        ];
        assert_eq!(
            similar_tables(&TableName::new("public", "taks"), &existing),
            vec![TableName::new("public", "tasks")]
        );
        // The same name in another schema.
        assert_eq!(
            similar_tables(&TableName::new("public", "environments"), &existing),
            vec![TableName::new("app", "environments")]
        );
        assert!(similar_tables(&TableName::new("public", "invoices"), &existing).is_empty());
    }
}
