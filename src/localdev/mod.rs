//! Throwaway local Postgres clusters and redis-servers for integration tests
//! (and the `walcast demo` command).
//!
//! This module owns everything needed to run private database servers on this
//! machine: it finds the installed binaries, creates a unique temporary
//! directory per server, picks a free TCP port on 127.0.0.1 (retrying when the
//! port turns out to be taken), starts the server, waits until it answers, and
//! stops it and removes the directory again when the handle is dropped — also
//! while a panic unwinds. Servers never share a directory or a port, so tests
//! may start as many as they like in parallel.
//!
//! Nothing here touches a system-wide server: the clusters listen only on
//! 127.0.0.1 and on a unix socket inside their own directory.

mod postgres;
mod redis;

pub use postgres::{LocalPostgres, PostgresOptions};
pub use redis::LocalRedis;

use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How often a server start is retried with a new port when the port turned
/// out to be taken by someone else between [`free_port`] and the server's bind.
const START_ATTEMPTS: usize = 5;

/// How many lines of a server log are quoted in error messages.
const LOG_TAIL_LINES: usize = 20;

/// Longest temp dir path we accept; the unix socket `<dir>/.s.PGSQL.<port>`
/// must stay below the kernel's 108-byte `sun_path` limit.
const MAX_DIR_LEN: usize = 90;

/// Why a local server could not be set up, run or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// No PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`) were found.
    #[error(
        "postgresql server binaries not found (looked at `pg_config --bindir`, /usr/lib/postgresql/*/bin and PATH); \
         install them, e.g. with `apt-get install postgresql` (Debian)"
    )]
    PostgresNotInstalled,

    /// `redis-server` is not on PATH.
    #[error("redis-server not found on PATH; install redis-server (apt-get install redis-server)")]
    RedisNotInstalled,

    /// We run as root, the Postgres tools refuse that, and there is no
    /// `postgres` user to run them as instead.
    #[error(
        "running as root, but initdb/pg_ctl refuse to run as root and /etc/passwd has no `postgres` user \
         to run them as; create that user (installing postgresql does) or run as a non-root user"
    )]
    NoPostgresUser,

    /// An operating-system call failed; `action` says what we were doing.
    #[error("{action}: {source}")]
    Io {
        /// What we tried to do, e.g. "could not create temp dir /tmp/x".
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A helper program (initdb, pg_ctl, ...) ran but reported failure.
    #[error("{what} failed ({}): {output}", status_text(status))]
    CommandFailed {
        /// The command and what it was for, e.g. "initdb in /tmp/x".
        what: String,
        /// How it exited.
        status: ExitStatus,
        /// Its (trimmed) stderr and stdout.
        output: String,
    },

    /// A server was launched but did not come up.
    #[error("could not start {server} in {}: {reason}; last lines of the log {}:\n{tail}", dir.display(), log.display())]
    StartFailed {
        /// "postgres" or "redis-server".
        server: &'static str,
        /// The server's temp dir.
        dir: PathBuf,
        /// What went wrong, e.g. "pg_ctl exited with status 1".
        reason: String,
        /// The server's log file.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },

    /// `psql` reported an error for the given SQL.
    #[error("psql on database {db:?} failed ({}): {stderr}", status_text(status))]
    Psql {
        /// The database the SQL ran in.
        db: String,
        /// How psql exited.
        status: ExitStatus,
        /// psql's stderr (the server's error message).
        stderr: String,
    },
}

impl LocalError {
    /// Shorthand for [`LocalError::Io`].
    fn io(action: impl Into<String>, source: io::Error) -> Self {
        LocalError::Io {
            action: action.into(),
            source,
        }
    }
}

/// A throwaway cluster with a `platform` database that holds the tasks
/// table: what the tests, examples and benchmarks start from.
pub fn start_tasks_database(options: PostgresOptions) -> Result<LocalPostgres, LocalError> {
    let pg = LocalPostgres::start_with(options)?;
    pg.psql("postgres", "create database platform")?;
    pg.psql("platform", TASKS_TABLE_DDL)?;
    Ok(pg)
}

/// The tasks table the tests, examples and benchmarks share (bigint id, text
/// status, float progress, jsonb payload, text[] tags, timestamptz, uuid).
pub const TASKS_TABLE_DDL: &str = "
create table tasks (
    id bigint primary key,
    status text not null,
    progress float8,
    payload jsonb,
    tags text[],
    updated_at timestamptz,
    owner uuid
);
";

/// Returns a TCP port on 127.0.0.1 that is free right now: binds port 0, reads
/// the port the kernel picked and releases it again. Someone else may grab it
/// before it is used, which is why server starts retry with another port.
pub fn free_port() -> Result<u16, LocalError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| LocalError::io("could not bind 127.0.0.1:0 to find a free port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| LocalError::io("could not read the address of a bound socket", e))?
        .port();
    Ok(port)
}

/// The effective uid of this process, read from the owner of `/proc/self`
/// (the kernel makes it the process's effective uid).
fn effective_uid() -> Result<u32, LocalError> {
    fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(|e| LocalError::io("could not stat /proc/self to find our effective uid", e))
}

/// Creates a fresh, empty directory `<tmp>/<prefix>-<pid>-<counter>-<nanos>`
/// with mode 0700. Falls back to `/tmp` when the temp dir path is too long
/// for a unix socket, or (`need_world_traversable`) when other users — the
/// `postgres` user — could not reach into it.
fn create_temp_dir(prefix: &str, need_world_traversable: bool) -> Result<PathBuf, LocalError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut base = std::env::temp_dir();
    if base.as_os_str().len() + 45 > MAX_DIR_LEN
        || (need_world_traversable && !world_traversable(&base))
    {
        base = PathBuf::from("/tmp");
    }
    loop {
        let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!("{prefix}-{}-{counter}-{nanos}", std::process::id()));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(LocalError::io(
                    format!("could not create temp dir {}", dir.display()),
                    e,
                ))
            }
        }
    }
}

/// Whether every directory from `/` down to `path` lets other users pass
/// through (the "others" execute bit), so a different user can use a
/// directory created inside it.
fn world_traversable(path: &Path) -> bool {
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    path.ancestors().all(|dir| {
        fs::metadata(dir)
            .map(|m| m.mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

/// The size of a file, or 0 when it does not exist (yet).
fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The part of a log file after byte `offset` (lossily decoded), or "" when
/// it cannot be read. Used to look only at what the latest start attempt wrote.
fn read_from(path: &Path, offset: u64) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(_) => String::new(),
    }
}

/// The last [`LOG_TAIL_LINES`] lines of a log file, or a note saying why
/// there are none.
fn log_tail(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            if lines.is_empty() {
                "(the log is empty)".to_string()
            } else {
                lines[start..].join("\n")
            }
        }
        Err(e) => format!("(could not read the log: {e})"),
    }
}

/// "exited with status 1" / "killed by signal 9", for error messages.
fn status_text(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// Joins a program's stderr and stdout into one trimmed message.
fn command_output(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let parts: Vec<&str> = [stderr.trim(), stdout.trim()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    if parts.is_empty() {
        "(no output)".to_string()
    } else {
        parts.join("\n")
    }
}

/// Finds a program: a path containing `/` that is a file, or a bare name
/// looked up in the PATH directories (first executable match).
fn find_on_path(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        return path.is_file().then_some(path);
    }
    let path_var = std::env::var_os("PATH")?;
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            fs::metadata(candidate)
                .map(|m| m.is_file() && m.mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}
