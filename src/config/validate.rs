//! Raw configuration → validated newtypes, each error pointing at the value.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::{
    invalid, Config, ConfigError, RawConfig, RawMirror, RawRedis, DEFAULT_SHUTDOWN_TIMEOUT_SECS,
};
use crate::filter::RowFilter;
use crate::model::TableName;

/// Defaults of the `[redis]` section.
pub const DEFAULT_KEY_PREFIX: &str = "walcast";
pub const DEFAULT_REDIS_CONNECT_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_REDIS_COMMAND_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_STREAM_MAX_LEN: u64 = 100_000;

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

    /// A tenant id for tests (not validated).
    #[doc(hidden)]
    pub fn for_tests(s: &str) -> TenantId {
        TenantId(s.into())
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

/// TLS on the tenant's connections: libpq's `sslmode`, with libpq's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// Plain first; TLS if the server refuses a plain connection.
    Allow,
    /// TLS if the server offers it, else plain; the certificate is not checked.
    Prefer,
    /// TLS or nothing; the certificate is not checked (unless `sslrootcert`
    /// names a file: then as `VerifyCa`, like libpq).
    Require,
    /// TLS with a certificate signed by a trusted CA.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host.
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Which CAs a verified connection trusts (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// The operating system's CA bundle (`sslrootcert` left out, or `system`).
    System,
    /// The certificates in this PEM file.
    File(PathBuf),
}

/// The TLS parameters of a tenant's URL. Files are read at every connect,
/// so renewed certificates need no restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    pub mode: SslMode,
    pub root_certs: RootCerts,
    /// `sslcert` and `sslkey`: a client certificate (chain) and its key, PEM.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl PgTls {
    /// Whether the server's certificate is checked against the CAs.
    pub fn verifies_chain(&self) -> bool {
        match self.mode {
            SslMode::VerifyCa | SslMode::VerifyFull => true,
            SslMode::Require => matches!(self.root_certs, RootCerts::File(_)),
            _ => false,
        }
    }
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
    pub tls: PgTls,
    /// How long connecting may take, TCP connect to authenticated session
    /// (`connect_timeout` in the URL, seconds; default 10).
    pub connect_timeout: Duration,
}

/// Default for `connect_timeout` in a tenant's URL.
pub const DEFAULT_PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Catalog look-ups, checks and setup statements on the regular connection
/// are cancelled by the server after this long (the snapshot copy and slot
/// creation lift it for their own statements).
pub const CATALOG_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Keepalives on both connections: first probe after this much silence...
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// ...then one every 10 s, and three unanswered end the connection.
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const TCP_KEEPALIVE_RETRIES: u32 = 3;
/// Data sent (a status update, a query) unacknowledged this long ends the
/// connection (Linux `TCP_USER_TIMEOUT`).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Parameters for a regular (setup, catalog) connection, TLS aside
    /// (`source::tls` adds it).
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
            .options(format!(
                "{SESSION_OPTIONS} -c statement_timeout={}",
                CATALOG_STATEMENT_TIMEOUT.as_millis()
            ))
            .connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(TCP_KEEPALIVE_IDLE)
            .keepalives_interval(TCP_KEEPALIVE_INTERVAL)
            .keepalives_retries(TCP_KEEPALIVE_RETRIES)
            .tcp_user_timeout(TCP_USER_TIMEOUT);
        if let Some(password) = &self.password {
            config.password(password);
        }
        config
    }

    /// Parameters for the replication connection, TLS aside (`source::tls`
    /// adds it).
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
        pgwire_replication::ReplicationConfig::new(
            host,
            &self.user,
            self.password.clone().unwrap_or_default(),
            &self.dbname,
            slot,
            publication,
        )
        .with_port(self.port)
        .with_options(SESSION_OPTIONS)
        .with_application_name(application_name)
        .with_tcp(pgwire_replication::TcpOptions {
            keepalive_idle: Some(TCP_KEEPALIVE_IDLE),
            keepalive_interval: Some(TCP_KEEPALIVE_INTERVAL),
            keepalive_retries: Some(TCP_KEEPALIVE_RETRIES),
            user_timeout: Some(TCP_USER_TIMEOUT),
        })
    }
}

/// One tenant, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    pub id: TenantId,
    pub pg: PgConnInfo,
    pub slot: String,
    pub publication: String,
    pub tables: Vec<TableName>,
    /// Which tables are mirrored into Redis, and how.
    pub mirror: Vec<MirrorRule>,
    /// Ask pgoutput for column values in binary send format (PostgreSQL 14+).
    pub binary: bool,
}

/// Where Redis is and how long the per-tenant event streams are kept.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// redis://, rediss:// or redis+unix:// (may hold a password: never printed).
    pub url: String,
    pub key_prefix: String,
    /// The CA and client certificate for `rediss://`.
    pub tls: RedisTls,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// Approximate maximum number of entries per tenant stream.
    pub stream_max_len: Option<u64>,
    /// Entries older than this are trimmed (by id, whose first part is the commit LSN, so by age of arrival at trim time).
    pub stream_max_age: Option<Duration>,
}

/// TLS files for `rediss://`, read at every connect. Without `ca_file` the
/// server's certificate must be signed by a public CA (the webpki roots).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    pub ca_file: Option<PathBuf>,
    /// A client certificate (chain) and its key, PEM, for Redis's
    /// `tls-auth-clients`.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &"<redacted>")
            .field("key_prefix", &self.key_prefix)
            .field("stream_max_len", &self.stream_max_len)
            .finish()
    }
}

/// How a mirrored row is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorFormat {
    /// A hash: one field per column, each value JSON-encoded.
    Hash,
    /// A string holding the row as one JSON object.
    Json,
}

/// How one table is mirrored into Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorRule {
    pub table: TableName,
    /// Key columns; `None`: the table's primary key, else its replica
    /// identity index (read from the catalog at start, `source::mirror_keys`).
    pub key: Option<Vec<String>>,
    /// A row is hot (kept) when it passes all of these; empty: every row.
    pub hot_when: Vec<RowFilter>,
    /// A row that leaves the hot set stays this long before it expires.
    pub keep_cold_for: Duration,
    /// Columns kept as sets of row keys (for example tasks by status).
    pub index: Vec<String>,
    pub format: MirrorFormat,
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
    let mut tenant_secrets = BTreeMap::new();
    for raw in &raw.tenants {
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
        let pg = parse_url(&url, path.parent().unwrap_or(Path::new("")))
            .map_err(|m| at(raw.url.span(), m))?;
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
        let mut mirror = Vec::new();
        for rule in &raw.mirror {
            let parsed = mirror_rule(rule).map_err(|(s, m)| at(s, m))?;
            if !tables.contains(&parsed.table) {
                return Err(at(
                    rule.table.span(),
                    format!("mirror table {} is not in tenant {}'s tables; add it to tables or remove the rule", parsed.table, id),
                ));
            }
            if mirror.iter().any(|r: &MirrorRule| r.table == parsed.table) {
                return Err(at(
                    rule.table.span(),
                    format!("table {} has two mirror rules; keep one", parsed.table),
                ));
            }
            mirror.push(parsed);
        }
        if let Some(secret) = &raw.jwt_secret {
            let secret = super::auth::secret_from(secret, env).map_err(|(s, m)| at(s, m))?;
            tenant_secrets.insert(id.as_str().to_owned(), secret);
        }
        tenants.push(TenantConfig {
            id,
            pg,
            slot,
            publication,
            tables,
            mirror,
            binary: raw.binary,
        });
    }
    // Shared rules apply to every tenant that streams the table and has no
    // rule of its own for it.
    for rule in &raw.mirror {
        let parsed = mirror_rule(rule).map_err(|(s, m)| at(s, m))?;
        let mut used = false;
        for tenant in tenants
            .iter_mut()
            .filter(|t| t.tables.contains(&parsed.table))
        {
            used = true;
            if !tenant.mirror.iter().any(|r| r.table == parsed.table) {
                tenant.mirror.push(parsed.clone());
            }
        }
        if !used {
            return Err(at(
                rule.table.span(),
                format!("mirror table {} is not in any tenant's tables; add it to a tenant's tables or remove the rule", parsed.table),
            ));
        }
    }
    let redis = raw
        .redis
        .as_ref()
        .map(|r| redis_config(r, env, path.parent().unwrap_or(Path::new(""))))
        .transpose()
        .map_err(|(s, m)| at(s, m))?;
    if redis.is_none() {
        if let Some(rule) = raw.mirror.first() {
            return Err(at(
                rule.table.span(),
                "mirror rules need a [redis] section with a url; add one, or remove the rules"
                    .into(),
            ));
        }
        if tenants.iter().any(|t| !t.mirror.is_empty()) {
            return Err(at(0..0, "tenant mirror rules need a [redis] section with a url; add one, or remove the rules".into()));
        }
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
    let slot_lag_warn_bytes =
        match raw.slot_lag_warn_bytes {
            Some(v) if *v.get_ref() == 0 => return Err(at(
                v.span(),
                "slot_lag_warn_bytes must be at least 1 (leave it out for the default of 1 GiB)"
                    .into(),
            )),
            Some(v) => *v.get_ref(),
            None => super::DEFAULT_SLOT_LAG_WARN_BYTES,
        };
    let server = match &raw.server {
        None => None,
        Some(server) => {
            if server.listen.get_ref().is_empty() {
                return Err(at(
                    server.listen.span(),
                    "listen is empty; give at least one address, like listen = [\"127.0.0.1:8080\"]".into(),
                ));
            }
            let addresses = |list: &[Spanned<String>], key: &str| {
                let mut parsed = Vec::new();
                for addr in list {
                    parsed.push(addr.get_ref().parse::<std::net::SocketAddr>().map_err(|_| {
                        at(
                            addr.span(),
                            format!("{key} address {:?} is not an IP address with a port; write it like \"127.0.0.1:8080\" or \"[::1]:8080\"", addr.get_ref()),
                        )
                    })?);
                }
                Ok::<_, ConfigError>(parsed)
            };
            let listen = addresses(server.listen.get_ref(), "listen")?;
            let ops_listen = match &server.ops_listen {
                Some(list) => addresses(list.get_ref(), "ops_listen")?,
                None => Vec::new(),
            };
            if let Some(shared) = ops_listen.iter().find(|a| listen.contains(a)) {
                let span = server
                    .ops_listen
                    .as_ref()
                    .map(|l| l.span())
                    .unwrap_or_default();
                return Err(at(
                    span,
                    format!("ops_listen address {shared} is also in listen; give the operations endpoints an address of their own (for example \"127.0.0.1:9187\"), so that /metrics stays off the client port"),
                ));
            }
            let ready_grace = match &server.ready_grace_secs {
                Some(v) if *v.get_ref() > 3600 => {
                    return Err(at(v.span(), "ready_grace_secs must be at most 3600".into()))
                }
                Some(v) => Duration::from_secs(*v.get_ref()),
                None => Duration::from_secs(super::DEFAULT_READY_GRACE_SECS),
            };
            let mut cors_origins = Vec::new();
            for origin in &server.cors_origins {
                let text = origin.get_ref().trim_end_matches('/');
                let valid = text == "*"
                    || ((text.starts_with("http://") || text.starts_with("https://"))
                        && !text["https://".len().min(text.len())..].contains('/'));
                if !valid {
                    return Err(at(
                        origin.span(),
                        format!("cors_origins entry {:?} is not an origin; write scheme://host[:port] like \"https://app.example.com\" (no path), or \"*\" for any origin", origin.get_ref()),
                    ));
                }
                cors_origins.push(text.to_owned());
            }
            let ranged = |value: &Option<Spanned<u64>>,
                          name: &str,
                          min: u64,
                          max: u64,
                          default: u64| {
                match value {
                Some(v) if !(min..=max).contains(v.get_ref()) => Err(at(
                    v.span(),
                    format!("{name} must be between {min} and {max} (leave it out for the default of {default})"),
                )),
                Some(v) => Ok(*v.get_ref()),
                None => Ok(default),
            }
            };
            let subscriber_queue = ranged(
                &server.subscriber_queue,
                "subscriber_queue",
                16,
                1_000_000,
                super::DEFAULT_SUBSCRIBER_QUEUE as u64,
            )? as usize;
            let heartbeat = Duration::from_secs(ranged(
                &server.heartbeat_secs,
                "heartbeat_secs",
                1,
                300,
                super::DEFAULT_HEARTBEAT_SECS,
            )?);
            let max_subscriptions = ranged(
                &server.max_subscriptions,
                "max_subscriptions",
                1,
                10_000,
                super::DEFAULT_MAX_SUBSCRIPTIONS as u64,
            )? as usize;
            let optional =
                |value: &Option<Spanned<u64>>, name: &str, min: u64, max: u64| match value {
                    Some(v) if !(min..=max).contains(v.get_ref()) => Err(at(
                        v.span(),
                        format!(
                            "{name} must be between {min} and {max} (leave it out for no such cap)"
                        ),
                    )),
                    Some(v) => Ok(Some(*v.get_ref() as usize)),
                    None => Ok(None),
                };
            let max_connections = match &server.max_connections {
                Some(v) if !(16..=10_000_000).contains(v.get_ref()) => {
                    return Err(at(
                        v.span(),
                        "max_connections must be between 16 and 10000000 (leave it out to derive it from the open-file limit)".into(),
                    ))
                }
                Some(v) => Some(*v.get_ref() as usize),
                None => None,
            };
            let tls = match (&server.tls_cert_file, &server.tls_key_file) {
                (None, None) => None,
                (Some(cert), Some(key)) => {
                    let base = path.parent().unwrap_or(Path::new(""));
                    let file = |value: &Spanned<String>, key: &str| {
                        readable_file(base, value, key).map_err(|(span, m)| at(span, m))
                    };
                    Some(super::ServerTlsFiles {
                        cert_file: file(cert, "tls_cert_file")?,
                        key_file: file(key, "tls_key_file")?,
                    })
                }
                (Some(one), None) | (None, Some(one)) => return Err(at(
                    one.span(),
                    "tls_cert_file and tls_key_file go together; give both (PEM files) or neither"
                        .into(),
                )),
            };
            Some(super::ServerConfig {
                listen,
                ops_listen,
                tls,
                max_connections,
                max_connections_per_ip: optional(
                    &server.max_connections_per_ip,
                    "max_connections_per_ip",
                    1,
                    10_000_000,
                )?,
                max_streams_per_tenant: optional(
                    &server.max_streams_per_tenant,
                    "max_streams_per_tenant",
                    1,
                    10_000_000,
                )?,
                head_timeout: Duration::from_secs(ranged(
                    &server.head_timeout_secs,
                    "head_timeout_secs",
                    1,
                    300,
                    super::DEFAULT_HEAD_TIMEOUT_SECS,
                )?),
                write_timeout: Duration::from_secs(ranged(
                    &server.write_timeout_secs,
                    "write_timeout_secs",
                    1,
                    600,
                    super::DEFAULT_WRITE_TIMEOUT_SECS,
                )?),
                subscriber_queue_bytes: ranged(
                    &server.subscriber_queue_bytes,
                    "subscriber_queue_bytes",
                    64 * 1024,
                    1 << 34,
                    super::DEFAULT_SUBSCRIBER_QUEUE_BYTES as u64,
                )? as usize,
                delivery_buffer_bytes: ranged(
                    &server.delivery_buffer_bytes,
                    "delivery_buffer_bytes",
                    1 << 20,
                    1 << 40,
                    super::DEFAULT_DELIVERY_BUFFER_BYTES as u64,
                )? as usize,
                max_filters: ranged(
                    &server.max_filters,
                    "max_filters",
                    1,
                    64,
                    super::DEFAULT_MAX_FILTERS as u64,
                )? as usize,
                max_in_values: ranged(
                    &server.max_in_values,
                    "max_in_values",
                    1,
                    1000,
                    super::DEFAULT_MAX_IN_VALUES as u64,
                )? as usize,
                ready_grace,
                cors_origins,
                subscriber_queue,
                heartbeat,
                max_subscriptions,
                inspector: server.inspector.unwrap_or(true),
            })
        }
    };
    let auth = super::auth::auth_config(path, raw.auth.as_ref(), tenant_secrets, &tenants, env)
        .map_err(|(s, m)| at(s, m))?;
    Ok(Config {
        path: path.to_owned(),
        tenants,
        shutdown_timeout,
        slot_lag_warn_bytes,
        server,
        redis,
        print_events: raw.print_events.unwrap_or(true),
        auth,
    })
}

pub(super) type SpanError = (std::ops::Range<usize>, String);

/// The path of a file a key names (relative to the config file's
/// directory), once it opens for reading.
fn readable_file(
    base_dir: &Path,
    value: &Spanned<String>,
    key: &str,
) -> Result<PathBuf, SpanError> {
    let path = base_dir.join(value.get_ref());
    std::fs::File::open(&path).map(|_| path.clone()).map_err(|err| {
        (
            value.span(),
            format!("could not read {key} {}: {err}; check the path (relative paths start at the config file's directory) and that the walcast user may read it", path.display()),
        )
    })
}

fn redis_config(
    raw: &RawRedis,
    env: &dyn Fn(&str) -> Option<String>,
    base_dir: &Path,
) -> Result<RedisConfig, SpanError> {
    let url = interpolate(raw.url.get_ref(), env).map_err(|m| (raw.url.span(), m))?;
    if !(url.starts_with("redis://")
        || url.starts_with("rediss://")
        || url.starts_with("redis+unix://")
        || url.starts_with("unix://"))
    {
        return Err((
            raw.url.span(),
            "redis url must start with redis://, rediss:// (TLS) or redis+unix:// (a socket path); for example redis://127.0.0.1:6379/".into(),
        ));
    }
    redis::parse_redis_url(&url).ok_or_else(|| {
        (
            raw.url.span(),
            "redis url is not valid; write redis://[user:password@]host:port/[db]".to_string(),
        )
    })?;
    let key_prefix = match &raw.key_prefix {
        Some(p) => {
            let ok = !p.get_ref().is_empty()
                && p.get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
            if !ok {
                return Err((
                    p.span(),
                    format!(
                        "key_prefix {:?} is not valid: use letters, digits, '_', '-' or '.'",
                        p.get_ref()
                    ),
                ));
            }
            p.get_ref().clone()
        }
        None => DEFAULT_KEY_PREFIX.to_owned(),
    };
    let millis =
        |v: &Option<Spanned<u64>>, default: u64, key: &str| -> Result<Duration, SpanError> {
            match v {
                Some(v) if *v.get_ref() == 0 || *v.get_ref() > 600_000 => Err((
                    v.span(),
                    format!("{key} must be between 1 and 600000 milliseconds"),
                )),
                Some(v) => Ok(Duration::from_millis(*v.get_ref())),
                None => Ok(Duration::from_millis(default)),
            }
        };
    let stream_max_len = match &raw.stream_max_len {
        Some(v) if *v.get_ref() == 0 => {
            return Err((
                v.span(),
                "stream_max_len must be at least 1 (leave it out for the default 100000)".into(),
            ))
        }
        Some(v) => Some(*v.get_ref()),
        None if raw.stream_max_age_secs.is_some() => None,
        None => Some(DEFAULT_STREAM_MAX_LEN),
    };
    let stream_max_age = match &raw.stream_max_age_secs {
        Some(v) if *v.get_ref() == 0 => {
            return Err((v.span(), "stream_max_age_secs must be at least 1".into()))
        }
        Some(v) => Some(Duration::from_secs(*v.get_ref())),
        None => None,
    };
    let file = |value: &Spanned<String>, key: &str| readable_file(base_dir, value, key);
    let ca_file = raw
        .tls_ca_file
        .as_ref()
        .map(|v| file(v, "tls_ca_file"))
        .transpose()?;
    let client_cert = match (&raw.tls_cert_file, &raw.tls_key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((file(cert, "tls_cert_file")?, file(key, "tls_key_file")?)),
        (Some(one), None) | (None, Some(one)) => {
            return Err((
                one.span(),
                "tls_cert_file and tls_key_file go together; give both (the client certificate and its key, PEM) or neither".into(),
            ))
        }
    };
    let tls = RedisTls {
        ca_file,
        client_cert,
    };
    if tls != RedisTls::default() && !url.starts_with("rediss://") {
        let span = [&raw.tls_ca_file, &raw.tls_cert_file, &raw.tls_key_file]
            .into_iter()
            .flatten()
            .next()
            .map_or(raw.url.span(), |v| v.span());
        return Err((
            span,
            "TLS files are set but the redis url is not rediss://; write rediss://host:port/ to connect with TLS (or remove the tls_* keys)".into(),
        ));
    }
    Ok(RedisConfig {
        url,
        key_prefix,
        tls,
        connect_timeout: millis(
            &raw.connect_timeout_ms,
            DEFAULT_REDIS_CONNECT_TIMEOUT_MS,
            "connect_timeout_ms",
        )?,
        command_timeout: millis(
            &raw.command_timeout_ms,
            DEFAULT_REDIS_COMMAND_TIMEOUT_MS,
            "command_timeout_ms",
        )?,
        stream_max_len,
        stream_max_age,
    })
}

fn mirror_rule(raw: &RawMirror) -> Result<MirrorRule, SpanError> {
    let table = parse_table(raw.table.get_ref()).map_err(|m| (raw.table.span(), m))?;
    let key = match &raw.key {
        Some(k) if k.get_ref().is_empty() => {
            return Err((
                k.span(),
                "key is empty; list the key columns, or leave it out to use the primary key".into(),
            ))
        }
        Some(k) => Some(k.get_ref().clone()),
        None => None,
    };
    let mut hot_when = Vec::new();
    if let Some(filters) = &raw.hot_when {
        for f in filters.get_ref() {
            hot_when.push(RowFilter::parse(f.get_ref()).map_err(|e| (f.span(), e.to_string()))?);
        }
    }
    let format = match raw
        .format
        .as_ref()
        .map(|f| (f.get_ref().as_str(), f.span()))
    {
        None | Some(("hash", _)) => MirrorFormat::Hash,
        Some(("json", _)) => MirrorFormat::Json,
        Some((other, span)) => {
            return Err((
                span,
                format!("format {other:?} is not known; write \"hash\" or \"json\""),
            ))
        }
    };
    Ok(MirrorRule {
        table,
        key,
        hot_when,
        keep_cold_for: Duration::from_secs(
            raw.keep_cold_for_secs.as_ref().map_or(0, |v| *v.get_ref()),
        ),
        index: raw.index.iter().map(|c| c.get_ref().clone()).collect(),
        format,
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
pub(super) fn interpolate(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
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

/// libpq's TLS parameters, which walcast reads itself; the rest of the URL
/// goes to tokio-postgres.
const TLS_PARAMS: [&str; 5] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslnegotiation",
];

/// Splits the URL's query into walcast's TLS parameters (decoded) and the
/// URL with the others.
fn split_tls_params(url: &str) -> Result<(String, BTreeMap<&'static str, String>), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), BTreeMap::new()));
    };
    let mut rest = Vec::new();
    let mut tls = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match TLS_PARAMS.iter().find(|k| **k == key) {
            Some(known) => {
                let value = percent_encoding::percent_decode_str(value)
                    .decode_utf8()
                    .map_err(|_| format!("{key} in url is not valid UTF-8 once decoded"))?;
                tls.insert(*known, value.into_owned());
            }
            None => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, tls))
}

fn parse_tls(
    mut params: BTreeMap<&'static str, String>,
    host: &PgHost,
    base_dir: &Path,
) -> Result<PgTls, String> {
    let mode = match params.remove("sslmode").as_deref() {
        None | Some("prefer") => SslMode::Prefer,
        Some("disable") => SslMode::Disable,
        Some("allow") => SslMode::Allow,
        Some("require") => SslMode::Require,
        Some("verify-ca") => SslMode::VerifyCa,
        Some("verify-full") => SslMode::VerifyFull,
        Some(other) => return Err(format!(
            "sslmode={other} is not known; use disable, allow, prefer, require, verify-ca or verify-full"
        )),
    };
    match params.remove("sslnegotiation").as_deref() {
        None | Some("postgres") => {}
        Some("direct") => return Err(
            "sslnegotiation=direct (PostgreSQL 17's TLS without the SSLRequest round trip) is not supported yet; leave it out or write sslnegotiation=postgres".into(),
        ),
        Some(other) => return Err(format!(
            "sslnegotiation={other} is not known; leave it out (postgres)"
        )),
    }
    let file = |key: &str, value: &str| -> Result<PathBuf, String> {
        let path = base_dir.join(value);
        std::fs::File::open(&path).map(|_| path.clone()).map_err(|err| {
            format!("could not read {key}={} in url: {err}; check the path (relative paths start at the config file's directory) and that the walcast user may read it", path.display())
        })
    };
    let root_certs = match params.remove("sslrootcert").as_deref() {
        None | Some("system") => RootCerts::System,
        Some(path) => RootCerts::File(file("sslrootcert", path)?),
    };
    let client_cert = match (params.remove("sslcert"), params.remove("sslkey")) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((file("sslcert", &cert)?, file("sslkey", &key)?)),
        _ => return Err(
            "sslcert and sslkey go together in url: give both (the client certificate and its key, PEM) or neither".into(),
        ),
    };
    let tls = PgTls {
        // libpq uses no TLS on a unix socket whatever sslmode says.
        mode: if matches!(host, PgHost::Unix(_)) {
            SslMode::Disable
        } else {
            mode
        },
        root_certs,
        client_cert,
    };
    Ok(tls)
}

fn parse_url(url: &str, base_dir: &Path) -> Result<PgConnInfo, String> {
    const EXAMPLE: &str = "write postgres://user:password@host:5432/dbname (a unix socket directory works as host: postgres://user@%2Fvar%2Frun%2Fpostgresql/dbname)";
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!("url must start with postgres://; {EXAMPLE}"));
    }
    let (url, tls_params) = split_tls_params(url)?;
    let config = tokio_postgres::Config::from_str(&url)
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
    let tls = parse_tls(tls_params, &host, base_dir)?;
    let connect_timeout = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(DEFAULT_PG_CONNECT_TIMEOUT);
    Ok(PgConnInfo {
        host,
        port,
        user,
        password,
        dbname,
        tls,
        connect_timeout,
    })
}

/// `schema.table` or `table` (schema `public`), plain identifiers as Postgres
/// folds them; quote mixed-case names: `"MySchema"."MyTable"`.
pub(crate) fn parse_table(text: &str) -> Result<TableName, String> {
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
    fn libpq_tls_parameters_are_read_and_the_rest_passed_on() {
        let dir = std::env::temp_dir();
        let ca = dir.join(format!("walcast-unit-ca-{}.crt", std::process::id()));
        std::fs::write(&ca, "x").unwrap();
        let url = format!(
            "postgres://u@db.example:5433/app?connect_timeout=3&sslmode=verify-full&sslrootcert={}&application_name=x",
            ca.display().to_string().replace('/', "%2F")
        );
        let pg = parse_url(&url, Path::new("/")).unwrap();
        std::fs::remove_file(&ca).unwrap();
        assert_eq!(pg.tls.mode, SslMode::VerifyFull);
        assert_eq!(pg.tls.root_certs, RootCerts::File(ca));
        assert!(pg.tls.verifies_chain());
        assert_eq!(pg.connect_timeout, Duration::from_secs(3));
        let pg = parse_url("postgres://u@h/app", Path::new("/")).unwrap();
        assert_eq!(pg.tls.mode, SslMode::Prefer);
        assert_eq!(pg.tls.root_certs, RootCerts::System);
        assert!(!pg.tls.verifies_chain());
        // libpq: no TLS over a unix socket, whatever sslmode says.
        let pg = parse_url(
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/app?sslmode=require",
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(pg.tls.mode, SslMode::Disable);
        for (query, error) in [
            ("sslmode=on", "sslmode=on is not known"),
            ("sslkey=k.pem", "sslcert and sslkey go together"),
            ("sslnegotiation=direct", "not supported yet"),
        ] {
            let err =
                parse_url(&format!("postgres://u@h/app?{query}"), Path::new("/")).unwrap_err();
            assert!(err.contains(error), "{query}: {err}");
        }
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../config.example.toml");
        // Long enough for an HS256 secret, too.
        let config = parse(Path::new("config.example.toml"), text, &|_| {
            Some("pw-0123456789-0123456789-0123456789".into())
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
    fn redis_and_mirror_rules() {
        let base =
            "[[tenants]]\nid = \"a\"\nurl = \"postgres://u@h/d\"\ntables = [\"tasks\", \"envs\"]\n";
        let config = load(&format!(
            "[redis]\nurl = \"redis://:${{PGPASS}}@r:6379/\"\n[[mirror]]\ntable = \"tasks\"\nhot_when = [\"status=in.(queued,running)\"]\nindex = [\"status\"]\n{base}[[tenants.mirror]]\ntable = \"envs\"\nformat = \"json\"\n"
        ))
        .unwrap();
        let redis = config.redis.as_ref().unwrap();
        assert_eq!(redis.url, "redis://:s3cret@r:6379/");
        assert!(!format!("{redis:?}").contains("s3cret"));
        assert_eq!(redis.stream_max_len, Some(DEFAULT_STREAM_MAX_LEN));
        let mirror = &config.tenants[0].mirror;
        assert_eq!(mirror.len(), 2);
        assert_eq!(mirror[0].format, MirrorFormat::Json);
        assert_eq!(
            mirror[1].hot_when[0].to_string(),
            "status=in.(queued,running)"
        );

        for (text, expected) in [
            (format!("[[mirror]]\ntable = \"tasks\"\n{base}"), "mirror rules need a [redis] section"),
            (format!("[redis]\nurl = \"http://r\"\n{base}"), "redis url must start with redis://"),
            (format!("[redis]\nurl = \"redis://r\"\n[[mirror]]\ntable = \"other\"\n{base}"), "mirror table public.other is not in any tenant's tables"),
            (format!("[redis]\nurl = \"redis://r\"\n[[mirror]]\ntable = \"tasks\"\nhot_when = [\"status=like.x\"]\n{base}"), "unknown operator \"like\""),
            (format!("[redis]\nurl = \"redis://r\"\n[[mirror]]\ntable = \"tasks\"\nformat = \"xml\"\n{base}"), "format \"xml\" is not known"),
        ] {
            let err = load(&text).unwrap_err();
            assert!(err.contains(expected), "{err:?} should contain {expected:?}");
            assert!(err.starts_with("walcast.toml:"), "{err}");
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
