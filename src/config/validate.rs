//! Raw configuration → validated newtypes, each error pointing at the value.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::{invalid, Config, ConfigError, RawConfig, DEFAULT_SHUTDOWN_TIMEOUT_SECS};
use crate::model::TableName;

/// Session settings pinned on every connection so that values print the same
/// way whatever the server's defaults are (see docs/events.md, "Types").
pub const SESSION_OPTIONS: &str =
    "-c DateStyle=ISO,YMD -c IntervalStyle=iso_8601 -c TimeZone=UTC -c extra_float_digits=3 -c bytea_output=hex";

/// A tenant id: `[a-z0-9][a-z0-9_-]{0,47}`; it appears in URLs, Redis keys and
/// (with `-` as `_`) in slot names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_arc(&self) -> Arc<str> {
        Arc::clone(&self.0)
    }

    fn parse(s: &str) -> Result<TenantId, String> {
        let ok = !s.is_empty()
            && s.len() <= 48
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(TenantId(s.into()))
        } else {
            Err(format!(
                "tenant id {s:?} is not valid: use 1 to 48 lowercase letters, digits, '_' or '-', starting with a letter or digit (for example \"acme\" or \"org-42\")"
            ))
        }
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How to reach a tenant's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgHost {
    Tcp(String),
    /// A directory holding the server's unix socket.
    Unix(PathBuf),
}

/// TLS use on the connection (`sslmode` in the URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
}

/// A tenant's Postgres connection parameters. `Debug` and `Display` never show
/// the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PgConnInfo {
    pub host: PgHost,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub ssl_mode: SslMode,
}

impl fmt::Debug for PgConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgConnInfo({self})")
    }
}

impl fmt::Display for PgConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            PgHost::Tcp(host) => write!(
                f,
                "postgres://{}@{}:{}/{}",
                self.user, host, self.port, self.dbname
            ),
            PgHost::Unix(dir) => write!(
                f,
                "postgres://{}@[{}]:{}/{}",
                self.user,
                dir.display(),
                self.port,
                self.dbname
            ),
        }
    }
}

impl PgConnInfo {
    /// Parameters for a regular (setup, catalog) connection.
    pub fn tokio_config(&self, application_name: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        match &self.host {
            PgHost::Tcp(host) => config.host(host),
            PgHost::Unix(dir) => config.host_path(dir),
        };
        config
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(application_name)
            .options(SESSION_OPTIONS)
            .connect_timeout(Duration::from_secs(10))
            .ssl_mode(match self.ssl_mode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            });
        if let Some(password) = &self.password {
            config.password(password);
        }
        config
    }

    /// Parameters for the replication connection.
    pub fn replication_config(
        &self,
        slot: &str,
        publication: &str,
        application_name: &str,
    ) -> pgwire_replication::ReplicationConfig {
        let host = match &self.host {
            PgHost::Tcp(host) => host.clone(),
            PgHost::Unix(dir) => dir.display().to_string(),
        };
        let tls = match self.ssl_mode {
            SslMode::Disable => pgwire_replication::TlsConfig::disabled(),
            SslMode::Prefer => pgwire_replication::TlsConfig {
                mode: pgwire_replication::SslMode::Prefer,
                ..Default::default()
            },
        };
        pgwire_replication::ReplicationConfig::new(
            host,
            &self.user,
            self.password.clone().unwrap_or_default(),
            &self.dbname,
            slot,
            publication,
        )
        .with_port(self.port)
        .with_tls(tls)
        .with_options(SESSION_OPTIONS)
        .with_application_name(application_name)
    }
}

/// One tenant, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantConfig {
    pub id: TenantId,
    pub pg: PgConnInfo,
    pub slot: String,
    pub publication: String,
    pub tables: Vec<TableName>,
    /// Ask pgoutput for column values in binary send format (PostgreSQL 14+).
    pub binary: bool,
}

pub(super) fn validate(
    path: &Path,
    text: &str,
    raw: RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let at =
        |span: std::ops::Range<usize>, message: String| invalid(path, text, span.start, message);
    let mut tenants = Vec::with_capacity(raw.tenants.len());
    let mut seen_ids = HashSet::new();
    let mut seen_slots = HashSet::new();
    for raw in raw.tenants {
        let id = TenantId::parse(raw.id.get_ref()).map_err(|m| at(raw.id.span(), m))?;
        if !seen_ids.insert(id.clone()) {
            return Err(at(
                raw.id.span(),
                format!(
                    "tenant id {:?} appears twice; give every [[tenants]] entry its own id",
                    id.as_str()
                ),
            ));
        }
        let default_name = format!("walcast_{}", id.as_str().replace('-', "_"));
        let slot = name_or_default(&raw.slot, &default_name, "slot").map_err(|(s, m)| at(s, m))?;
        if !seen_slots.insert(slot.clone()) {
            let span = raw.slot.as_ref().map_or(raw.id.span(), |s| s.span());
            return Err(at(
                span,
                format!(
                    "slot {slot:?} is used by two tenants; each tenant needs its own slot name"
                ),
            ));
        }
        let publication = name_or_default(&raw.publication, &default_name, "publication")
            .map_err(|(s, m)| at(s, m))?;
        let url = interpolate(raw.url.get_ref(), env).map_err(|m| at(raw.url.span(), m))?;
        let pg = parse_url(&url).map_err(|m| at(raw.url.span(), m))?;
        if raw.tables.get_ref().is_empty() {
            return Err(at(
                raw.tables.span(),
                "tables is empty; list the tables to stream, like tables = [\"public.tasks\"]"
                    .into(),
            ));
        }
        let mut tables = Vec::new();
        for table in raw.tables.get_ref() {
            let name = parse_table(table.get_ref()).map_err(|m| at(table.span(), m))?;
            if tables.contains(&name) {
                return Err(at(
                    table.span(),
                    format!("table {name} is listed twice; list it once"),
                ));
            }
            tables.push(name);
        }
        tenants.push(TenantConfig {
            id,
            pg,
            slot,
            publication,
            tables,
            binary: raw.binary,
        });
    }
    let shutdown_timeout = match raw.shutdown_timeout_secs {
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > 3600 => {
            return Err(at(
                v.span(),
                "shutdown_timeout_secs must be between 1 and 3600 seconds".into(),
            ))
        }
        Some(v) => Duration::from_secs(*v.get_ref()),
        None => Duration::from_secs(DEFAULT_SHUTDOWN_TIMEOUT_SECS),
    };
    Ok(Config {
        path: path.to_owned(),
        tenants,
        shutdown_timeout,
    })
}

/// A slot or publication name: a plain lowercase SQL identifier (Postgres
/// allows only `[a-z0-9_]` in slot names, at most 63 bytes).
fn name_or_default(
    value: &Option<Spanned<String>>,
    default: &str,
    what: &str,
) -> Result<String, (std::ops::Range<usize>, String)> {
    let Some(value) = value else {
        return Ok(default.to_owned());
    };
    let name = value.get_ref();
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(name.clone())
    } else {
        Err((
            value.span(),
            format!("{what} {name:?} is not valid: use 1 to 63 lowercase letters, digits or '_' (or leave it out for the default {default:?})"),
        ))
    }
}

/// Replaces `${VAR}` with the variable's value; `$$` is a literal `$`.
fn interpolate(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after.find('}').ok_or_else(|| {
                "unclosed ${ in value; write ${NAME} (or $$ for a literal $)".to_string()
            })?;
            let name = &after[..end];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("${{{name}}} is not a valid variable reference; write ${{NAME}} with letters, digits and '_'"));
            }
            let value = env(name).ok_or_else(|| {
                format!("environment variable {name} is not set; export it before starting walcast, or write the value in the file")
            })?;
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn parse_url(url: &str) -> Result<PgConnInfo, String> {
    const EXAMPLE: &str = "write postgres://user:password@host:5432/dbname (a unix socket directory works as host: postgres://user@%2Fvar%2Frun%2Fpostgresql/dbname)";
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!("url must start with postgres://; {EXAMPLE}"));
    }
    let config = tokio_postgres::Config::from_str(url)
        .map_err(|e| format!("url is not a valid Postgres URL ({e}); {EXAMPLE}"))?;
    let host = match config.get_hosts() {
        [tokio_postgres::config::Host::Tcp(h)] => PgHost::Tcp(h.clone()),
        [tokio_postgres::config::Host::Unix(dir)] => PgHost::Unix(dir.clone()),
        [] => return Err(format!("url names no host; {EXAMPLE}")),
        _ => {
            return Err(format!(
                "url names several hosts; walcast needs the one primary; {EXAMPLE}"
            ))
        }
    };
    let port = match config.get_ports() {
        [] => 5432,
        [port] => *port,
        _ => return Err(format!("url names several ports; {EXAMPLE}")),
    };
    let user = config
        .get_user()
        .ok_or_else(|| format!("url names no user; {EXAMPLE}"))?
        .to_owned();
    let password = match config.get_password() {
        Some(p) => Some(
            String::from_utf8(p.to_vec())
                .map_err(|_| "the password in url is not valid UTF-8".to_string())?,
        ),
        None => None,
    };
    let dbname = config.get_dbname().unwrap_or(&user).to_owned();
    let ssl_mode = match config.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => SslMode::Disable,
        tokio_postgres::config::SslMode::Prefer => SslMode::Prefer,
        _ => return Err(
            "sslmode=require is not supported yet (TLS on the setup connection is still to be built); use sslmode=disable or sslmode=prefer".into(),
        ),
    };
    Ok(PgConnInfo {
        host,
        port,
        user,
        password,
        dbname,
        ssl_mode,
    })
}

/// `schema.table` or `table` (schema `public`), plain identifiers as Postgres
/// folds them; quote mixed-case names: `"MySchema"."MyTable"`.
fn parse_table(text: &str) -> Result<TableName, String> {
    let err = || {
        format!("table {text:?} is not valid: write schema.table, like \"public.tasks\" (quote mixed-case names: '\"MySchema\".\"MyTable\"')")
    };
    let mut parts = Vec::new();
    let mut rest = text;
    loop {
        let (part, after) = if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').ok_or_else(err)?;
            (quoted[..end].to_owned(), &quoted[end + 1..])
        } else {
            let end = rest.find('.').unwrap_or(rest.len());
            let part = &rest[..end];
            let valid = part
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$');
            if !valid {
                return Err(err());
            }
            (part.to_ascii_lowercase(), &rest[end..])
        };
        if part.is_empty() {
            return Err(err());
        }
        parts.push(part);
        match after.strip_prefix('.') {
            Some(next) => rest = next,
            None if after.is_empty() => break,
            None => return Err(err()),
        }
    }
    match parts.as_slice() {
        [table] => Ok(TableName::new("public", table)),
        [schema, table] => Ok(TableName::new(schema, table)),
        _ => Err(err()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "PGPASS").then(|| "s3cret".to_string())
    }

    fn load(text: &str) -> Result<Config, String> {
        parse(Path::new("walcast.toml"), text, &env).map_err(|e| e.to_string())
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../config.example.toml");
        let config = parse(Path::new("config.example.toml"), text, &|_| {
            Some("pw".into())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!config.tenants.is_empty());
    }

    #[test]
    fn defaults_and_interpolation() {
        let config = load(
            r#"
[[tenants]]
id = "org-42"
url = "postgres://walcast:${PGPASS}@db.internal:6543/platform?sslmode=disable"
tables = ["tasks", "audit.Log", '"Mixed"."Case"']
"#,
        )
        .unwrap();
        let t = &config.tenants[0];
        assert_eq!(t.slot, "walcast_org_42");
        assert_eq!(t.publication, "walcast_org_42");
        assert_eq!(t.pg.password.as_deref(), Some("s3cret"));
        assert_eq!(t.pg.port, 6543);
        assert_eq!(t.pg.host, PgHost::Tcp("db.internal".into()));
        assert_eq!(
            t.tables,
            [
                TableName::new("public", "tasks"),
                TableName::new("audit", "log"),
                TableName::new("Mixed", "Case")
            ]
        );
        assert!(!format!("{:?}", t.pg).contains("s3cret"));
        assert!(!t.binary);
        assert_eq!(config.shutdown_timeout, Duration::from_secs(10));
        let binary =
            load("[[tenants]]\nid = \"a\"\nurl = \"postgres://u@h/d\"\ntables = [\"t\"]\nbinary = true\n")
                .unwrap();
        assert!(binary.tenants[0].binary);
    }

    #[test]
    fn unix_socket_host() {
        let config = load(
            "[[tenants]]\nid = \"a\"\nurl = \"postgres://walcast@%2Fvar%2Frun%2Fpostgresql/db\"\ntables = [\"t\"]\n",
        )
        .unwrap();
        assert_eq!(
            config.tenants[0].pg.host,
            PgHost::Unix("/var/run/postgresql".into())
        );
    }

    #[test]
    fn errors_point_at_the_value_and_say_what_to_write() {
        let cases = [
            (
                "[[tenants]]\nid = \"a\"\nurl = \"postgres://u@h/d\"\ntables = [\"t\"]\nslott = \"x\"\n",
                "walcast.toml:5:1: unknown field `slott`",
            ),
            (
                "[[tenants]]\nid = \"a\"\nurl = \"postgres://u@h/d\"\ntables = [\"t\"]\n[[tenants]]\nid = \"a\"\nurl = \"postgres://u@h/d\"\ntables = [\"t\"]\n",
                "walcast.toml:6:6: tenant id \"a\" appears twice",
            ),
            (
                "[[tenants]]\nid = \"Acme Corp\"\nurl = \"postgres://u@h/d\"\ntables = [\"t\"]\n",
                "walcast.toml:2:6: tenant id \"Acme Corp\" is not valid",
            ),
            (
                "[[tenants]]\nid = \"a\"\nurl = \"postgres://u@h/d\"\ntables = [\"public.tasks; drop\"]\n",
                "walcast.toml:4:11: table \"public.tasks; drop\" is not valid",
            ),
            (
                "[[tenants]]\nid = \"a\"\nslot = \"My-Slot\"\nurl = \"postgres://u@h/d\"\ntables = [\"t\"]\n",
                "walcast.toml:3:8: slot \"My-Slot\" is not valid",
            ),
            (
                "[[tenants]]\nid = \"a\"\nurl = \"postgres://u:${MISSING}@h/d\"\ntables = [\"t\"]\n",
                "walcast.toml:3:7: environment variable MISSING is not set",
            ),
            (
                "[[tenants]]\nid = \"a\"\nurl = \"mysql://u@h/d\"\ntables = [\"t\"]\n",
                "walcast.toml:3:7: url must start with postgres://",
            ),
            (
                "[[tenants]]\nid = \"a\"\nurl = \"postgres://u@h/d\"\n",
                "missing field `tables`",
            ),
        ];
        for (text, expected) in cases {
            let err = load(text).unwrap_err();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn unreadable_file_says_how_to_fix() {
        let err = super::super::load(Path::new("/nonexistent/walcast.toml")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/nonexistent/walcast.toml") && text.contains("--config"),
            "{text}"
        );
    }
}
