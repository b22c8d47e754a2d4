//! Command-line interface: arguments → `Cli`. No config parsing, no sockets.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::DEFAULT_CONFIG_PATH;

/// walcast streams committed Postgres changes (from a pgoutput logical
/// replication slot per tenant) as typed JSON events.
///
/// Start with `walcast check` to see what each tenant's database still needs,
/// `walcast setup` to create the publication and slot, then `walcast tail
/// --tenant ID` to watch changes arrive, or `walcast run` for the daemon.
#[derive(Debug, Parser)]
#[command(name = "walcast", version, propagate_version = true)]
pub struct Cli {
    /// The configuration file (TOML; see config.example.toml).
    #[arg(long, short = 'c', global = true, env = "WALCAST_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// Log line format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: stream every configured tenant, reconnecting on errors,
    /// until SIGINT or SIGTERM. Events go to Redis (mirror and per-tenant
    /// stream) with [redis], else to standard output as JSON lines; with
    /// [server], clients subscribe over SSE and WebSocket. Each transaction
    /// is acknowledged to Postgres once durably written.
    Run,
    /// Check each tenant's database (wal_level, privileges, free slots and
    /// senders, publication, replica identity) and print what to fix.
    /// Exits 1 if anything blocks streaming.
    Check {
        /// Check only this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Create each tenant's publication and replication slot if they are
    /// missing (safe to run again).
    Setup {
        /// Print the SQL instead of running it.
        #[arg(long)]
        dry_run: bool,
        /// Set up only this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Print one tenant's changes as JSON lines on standard output, until
    /// Ctrl-C. With the tenant's slot, what was printed is acknowledged (the
    /// next tail or run continues after it).
    Tail {
        /// The tenant to follow (its `id` in the config).
        #[arg(long)]
        tenant: String,
        /// Print only changes of this table (schema.table); repeatable.
        #[arg(long = "table", value_name = "SCHEMA.TABLE")]
        tables: Vec<String>,
        /// Read from a temporary slot that the server drops when tail exits,
        /// leaving the tenant's own slot untouched. Shows changes committed
        /// from now on.
        #[arg(long)]
        temporary_slot: bool,
    },
    /// List each tenant's replication slots: whether a session reads them,
    /// how much WAL they hold back (lag since the confirmed position, and
    /// retained WAL), and whether the server invalidated them. With --drop,
    /// remove walcast's own slot of one tenant (after confirmation): the
    /// server then frees the WAL it held; the next start creates a new slot
    /// and streams from then on.
    Slots {
        /// Only this tenant (required with --drop).
        #[arg(long)]
        tenant: Option<String>,
        /// Drop the tenant's slot (walcast must not be running for it).
        #[arg(long, requires = "tenant")]
        drop: bool,
        /// Do not ask before dropping.
        #[arg(long)]
        yes: bool,
    },
    /// Rebuild a tenant's Redis mirror from a new consistent snapshot. When
    /// `walcast run` holds the tenant's slot, it is told to do it (within a
    /// few seconds; its log shows the progress); otherwise resync does it
    /// here, with a progress bar. The stream restarts at the snapshot.
    Resync {
        /// The tenant to resync.
        #[arg(long)]
        tenant: String,
    },
    /// Try walcast with nothing set up: starts two throwaway PostgreSQL
    /// clusters (tenants acme and globex) and a redis-server (needs the
    /// PostgreSQL server binaries and redis-server installed), writes example
    /// task and environment activity into them, serves the inspector and the
    /// client API, and prints a token with URLs and curl lines to try.
    /// Ctrl-C stops and removes it all. Ignores --config.
    Demo {
        /// Serve HTTP on 127.0.0.1:PORT. Default: 8080, or a free port when
        /// 8080 is taken.
        #[arg(long)]
        port: Option<u16>,
    },
}
