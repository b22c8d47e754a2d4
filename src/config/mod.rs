//! The TOML configuration: file → validated `Config`.
//!
//! Owns the schema (unknown keys are errors), the defaults, `${VAR}`
//! interpolation and validation. Every error names the file, line and column,
//! what is wrong and what to write instead. Never touches the network and
//! never prints secrets.

mod auth;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub(crate) use validate::parse_table;
pub use validate::{
    MirrorFormat, MirrorRule, PgConnInfo, PgHost, PgTls, RedisConfig, RedisTls, RootCerts, SslMode,
    TenantConfig, TenantId,
};

/// Where the configuration is read from when neither `--config` nor
/// `WALCAST_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/walcast/walcast.toml";
/// How long shutdown may take before walcast exits anyway (keep it below
/// systemd's `TimeoutStopSec`).
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 10;
/// Slot lag that turns into a warning: 1 GiB of WAL not yet confirmed.
pub const DEFAULT_SLOT_LAG_WARN_BYTES: u64 = 1 << 30;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub tenants: Vec<TenantConfig>,
    pub shutdown_timeout: Duration,
    /// Warn (and show in the slot lag metric) when a tenant's slot holds
    /// more than this much WAL that walcast has not confirmed.
    pub slot_lag_warn_bytes: u64,
    /// The HTTP server (operations endpoints); `None`: no HTTP at all.
    pub server: Option<ServerConfig>,
    /// Without it: no mirror, events only in memory and on standard output.
    pub redis: Option<RedisConfig>,
    /// Without `[redis]`: also print every event to standard output.
    pub print_events: bool,
    /// Token keys, claims and access rules; without `[auth]` every request is refused.
    pub auth: crate::auth::AuthConfig,
}

impl Config {
    pub fn tenant(&self, id: &str) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| t.id.as_str() == id)
    }
}

/// Where the HTTP server listens, and the bounds on what clients may cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub listen: Vec<std::net::SocketAddr>,
    /// Where `/metrics` and the detailed `/readyz` are served (empty: not
    /// served; the client listeners answer `/readyz` with ready or not only).
    pub ops_listen: Vec<std::net::SocketAddr>,
    /// Open client connections at most (None: derived from the file limit,
    /// keeping room for Postgres and Redis sockets).
    pub max_connections: Option<usize>,
    /// Open connections per client address at most (None: no such cap).
    pub max_connections_per_ip: Option<usize>,
    /// Streams (SSE, WebSocket) per tenant at most (None: no such cap).
    pub max_streams_per_tenant: Option<usize>,
    /// How long a connection may take to send a complete request head, and
    /// stay idle between requests.
    pub head_timeout: Duration,
    /// How long a write to a client may wait for the client to read.
    pub write_timeout: Duration,
    /// Bytes of events queued for one subscription before its client counts
    /// as too slow (with `subscriber_queue` events, whichever comes first).
    pub subscriber_queue_bytes: usize,
    /// Bytes of events queued for all clients together.
    pub delivery_buffer_bytes: usize,
    /// Row filters in one subscription at most (the client's and its rules').
    pub max_filters: usize,
    /// Values in one `in.(…)` filter at most.
    pub max_in_values: usize,
    /// TLS on the listeners: the certificate chain and key files (PEM).
    pub tls: Option<ServerTlsFiles>,
    /// `/readyz` reports ready during this long after start even while
    /// tenants are still connecting.
    pub ready_grace: Duration,
    /// Browser origins allowed to call the client API (CORS); `*` allows any.
    /// Empty: no CORS headers (same-origin pages and non-browser clients only).
    pub cors_origins: Vec<String>,
    /// Events queued per subscription before the client counts as too slow
    /// and is cut off (with the id to resume from). A transaction (or 500
    /// events of a large one) arriving at an empty queue is always taken.
    pub subscriber_queue: usize,
    /// How often idle SSE streams get a comment and WebSockets a ping.
    pub heartbeat: Duration,
    /// Subscriptions one WebSocket may hold at once.
    pub max_subscriptions: usize,
    /// Serve the inspector page at `/`.
    pub inspector: bool,
}

/// Default of `[server] subscriber_queue`.
pub const DEFAULT_SUBSCRIBER_QUEUE: usize = 4096;
/// Default of `[server] heartbeat_secs`.
pub const DEFAULT_HEARTBEAT_SECS: u64 = 15;
/// Default of `[server] max_subscriptions`.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 32;

/// `[server] tls_cert_file` and `tls_key_file`, resolved against the
/// config file's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Default of `[server] head_timeout_secs`.
pub const DEFAULT_HEAD_TIMEOUT_SECS: u64 = 10;
/// Default of `[server] write_timeout_secs`.
pub const DEFAULT_WRITE_TIMEOUT_SECS: u64 = 30;
/// Default of `[server] subscriber_queue_bytes`: 4 MiB.
pub const DEFAULT_SUBSCRIBER_QUEUE_BYTES: usize = 4 << 20;
/// Default of `[server] delivery_buffer_bytes`: 256 MiB.
pub const DEFAULT_DELIVERY_BUFFER_BYTES: usize = 256 << 20;
/// Default of `[server] max_filters`.
pub const DEFAULT_MAX_FILTERS: usize = 8;
/// Default of `[server] max_in_values`.
pub const DEFAULT_MAX_IN_VALUES: usize = 100;

/// Default of `[server] ready_grace_secs`.
pub const DEFAULT_READY_GRACE_SECS: u64 = 30;

/// A configuration that cannot be used, with where and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The message says the cause in words (without the `os error` number),
    /// so `cause` is not a `#[source]`: the error chain would say it twice.
    #[error(
        "cannot read config file {path}: {}; {}",
        io_reason(cause),
        read_fix(cause)
    )]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

/// An I/O error's text without the " (os error N)" that std appends.
fn io_reason(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.rsplit_once(" (os error ") {
        Some((reason, _)) => reason.to_owned(),
        None => text,
    }
}

/// What to do when the config file cannot be read.
fn read_fix(err: &std::io::Error) -> &'static str {
    match err.kind() {
        std::io::ErrorKind::NotFound => {
            "pass --config PATH (or set WALCAST_CONFIG), or create it (config.example.toml shows every key)"
        }
        std::io::ErrorKind::PermissionDenied => {
            "make it readable by the user walcast runs as, or pass --config PATH"
        }
        _ => "pass --config PATH (or set WALCAST_CONFIG) naming a readable TOML file (config.example.toml shows every key)",
    }
}

/// The file as written (before validation).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub shutdown_timeout_secs: Option<Spanned<u64>>,
    #[serde(default)]
    pub slot_lag_warn_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    pub print_events: Option<bool>,
    #[serde(default)]
    pub server: Option<RawServer>,
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
    #[serde(default)]
    pub redis: Option<RawRedis>,
    /// Mirror rules shared by every tenant that streams the table.
    #[serde(default)]
    pub mirror: Vec<RawMirror>,
    #[serde(default)]
    pub auth: Option<Spanned<auth::RawAuth>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub listen: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub ops_listen: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub max_connections: Option<Spanned<u64>>,
    #[serde(default)]
    pub max_connections_per_ip: Option<Spanned<u64>>,
    #[serde(default)]
    pub max_streams_per_tenant: Option<Spanned<u64>>,
    #[serde(default)]
    pub head_timeout_secs: Option<Spanned<u64>>,
    #[serde(default)]
    pub write_timeout_secs: Option<Spanned<u64>>,
    #[serde(default)]
    pub subscriber_queue_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    pub delivery_buffer_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    pub max_filters: Option<Spanned<u64>>,
    #[serde(default)]
    pub max_in_values: Option<Spanned<u64>>,
    #[serde(default)]
    pub tls_cert_file: Option<Spanned<String>>,
    #[serde(default)]
    pub tls_key_file: Option<Spanned<String>>,
    #[serde(default)]
    pub ready_grace_secs: Option<Spanned<u64>>,
    #[serde(default)]
    pub cors_origins: Vec<Spanned<String>>,
    #[serde(default)]
    pub subscriber_queue: Option<Spanned<u64>>,
    #[serde(default)]
    pub heartbeat_secs: Option<Spanned<u64>>,
    #[serde(default)]
    pub max_subscriptions: Option<Spanned<u64>>,
    #[serde(default)]
    pub inspector: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedis {
    pub url: Spanned<String>,
    #[serde(default)]
    pub key_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub tls_ca_file: Option<Spanned<String>>,
    #[serde(default)]
    pub tls_cert_file: Option<Spanned<String>>,
    #[serde(default)]
    pub tls_key_file: Option<Spanned<String>>,
    #[serde(default)]
    pub connect_timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub command_timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub stream_max_len: Option<Spanned<u64>>,
    #[serde(default)]
    pub stream_max_age_secs: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMirror {
    pub table: Spanned<String>,
    #[serde(default)]
    pub key: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub hot_when: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub keep_cold_for_secs: Option<Spanned<u64>>,
    #[serde(default)]
    pub index: Vec<Spanned<String>>,
    #[serde(default)]
    pub format: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTenant {
    pub id: Spanned<String>,
    pub url: Spanned<String>,
    #[serde(default)]
    pub slot: Option<Spanned<String>>,
    #[serde(default)]
    pub publication: Option<Spanned<String>>,
    pub tables: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub mirror: Vec<RawMirror>,
    #[serde(default)]
    pub binary: bool,
    /// HS256 secret for this tenant's tokens (replaces `[auth] secret`).
    #[serde(default)]
    pub jwt_secret: Option<Spanned<String>>,
}

/// Reads and validates the configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.to_owned(),
        cause,
    })?;
    parse(path, &text, &|name| std::env::var(name).ok())
}

/// Parses and validates configuration text; `env` looks up `${VAR}`s.
pub fn parse(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|err| {
        let offset = err.span().map(|s| s.start).unwrap_or(0);
        let mut message = err.message().trim_end().replace('\n', " ");
        if message.starts_with("unknown field") {
            message.push_str(
                "; check the spelling against config.example.toml, which lists every key",
            );
        } else if message.starts_with("missing field") {
            message.push_str("; add it (config.example.toml shows an example)");
        }
        invalid(path, text, offset, message)
    })?;
    validate::validate(path, text, raw, env)
}

/// An error at byte `offset` of the file.
pub(crate) fn invalid(path: &Path, text: &str, offset: usize, message: String) -> ConfigError {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ConfigError::Invalid {
        path: path.to_owned(),
        line,
        column,
        message,
    }
}
