//! A throwaway PostgreSQL cluster: `initdb` into a private temp dir, `pg_ctl
//! start` on a free port with logical replication enabled, and `pg_ctl stop`
//! plus removal of the directory on drop.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{
    command_output, create_temp_dir, effective_uid, file_len, find_on_path, free_port, log_tail,
    read_from, status_text, LocalError, START_ATTEMPTS,
};

/// Set once `initdb --locale=C.UTF-8` failed for lack of that locale; later
/// clusters then go straight to `--no-locale`.
static NO_C_UTF8: AtomicBool = AtomicBool::new(false);

/// How a [`LocalPostgres`] cluster is set up.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The server's `wal_level`; `"logical"` by default, which walcast needs.
    pub wal_level: String,
    /// Extra server settings, passed as `-c name=value` after the built-in
    /// ones (`port`, `listen_addresses`, `unix_socket_directories`,
    /// `wal_level`, `fsync=off`, `max_wal_senders=10`,
    /// `max_replication_slots=10`), so they can override those too.
    pub settings: Vec<(String, String)>,
    /// When set, the superuser `postgres` gets this password and TCP
    /// connections (the `host` lines of pg_hba.conf) require
    /// `scram-sha-256`; connections over the unix socket stay `trust`.
    /// Only the first line of the password is used.
    pub password: Option<String>,
}

impl Default for PostgresOptions {
    /// `wal_level=logical`, no extra settings, no password (everything is
    /// `trust`). `max_wal_senders` and `max_replication_slots` are always 10
    /// unless overridden in `settings`.
    fn default() -> Self {
        PostgresOptions {
            wal_level: "logical".to_string(),
            settings: Vec::new(),
            password: None,
        }
    }
}

/// A running throwaway PostgreSQL cluster with its own temp dir, port and
/// unix socket. The superuser is `postgres`. Dropping it stops the server
/// (`pg_ctl stop -m immediate`) and deletes the directory, also during a
/// panic unwind.
#[derive(Debug)]
pub struct LocalPostgres {
    /// The temp dir that holds everything; also the unix socket directory.
    dir: PathBuf,
    /// `<dir>/data`, the cluster's data directory.
    data_dir: PathBuf,
    /// `<dir>/postgres.log`, the server's log (appended to on every start).
    log: PathBuf,
    /// Where `initdb`, `pg_ctl` and `postgres` live.
    bindir: PathBuf,
    /// Whether the server tools run as the `postgres` user via `runuser`
    /// (because we are root).
    as_postgres_user: bool,
    /// The TCP port on 127.0.0.1.
    port: u16,
    /// The superuser's password, if any.
    password: Option<String>,
    /// The `pg_ctl -o` string (server flags) the server runs with.
    server_flags: String,
}

impl LocalPostgres {
    /// Checks, without starting anything, that a cluster could start here:
    /// the server binaries are installed and, when we run as root, there is
    /// a `postgres` user to run them as.
    pub fn check_installed() -> Result<(), LocalError> {
        find_bindir()?;
        postgres_owner()?;
        Ok(())
    }

    /// Creates and starts a cluster with [`PostgresOptions::default`].
    pub fn start() -> Result<Self, LocalError> {
        Self::start_with(PostgresOptions::default())
    }

    /// Creates and starts a cluster with the given options, on a free port
    /// (retrying with another port when the chosen one gets taken).
    pub fn start_with(opts: PostgresOptions) -> Result<Self, LocalError> {
        Self::start_on_ports(opts, &mut free_port)
    }

    /// [`start_with`](Self::start_with), taking the ports to try from
    /// `next_port` (tests hand it a taken port first).
    fn start_on_ports(
        opts: PostgresOptions,
        next_port: &mut dyn FnMut() -> Result<u16, LocalError>,
    ) -> Result<Self, LocalError> {
        let bindir = find_bindir()?;
        let owner = postgres_owner()?;
        let dir = create_temp_dir("walcast-pg", owner.is_some())?;
        // From here on, Drop cleans up whatever exists.
        let mut pg = LocalPostgres {
            data_dir: dir.join("data"),
            log: dir.join("postgres.log"),
            dir,
            bindir,
            as_postgres_user: owner.is_some(),
            port: 0,
            password: opts
                .password
                .as_deref()
                .map(|p| p.lines().next().unwrap_or("").to_string()),
            server_flags: String::new(),
        };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&pg.dir, Some(uid), Some(gid)).map_err(|e| {
                LocalError::io(
                    format!("could not hand {} to the postgres user", pg.dir.display()),
                    e,
                )
            })?;
        }
        pg.initdb(owner)?;
        pg.write_hba()?;

        let mut attempt = 0;
        loop {
            attempt += 1;
            pg.port = next_port()?;
            pg.server_flags = server_flags(pg.port, &pg.dir, &opts);
            match pg.pg_ctl_start() {
                Ok(()) => return Ok(pg),
                Err((true, _)) if attempt < START_ATTEMPTS => continue,
                Err((_, e)) => return Err(e),
            }
        }
    }

    /// The TCP port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the server's unix socket (`.s.PGSQL.<port>`);
    /// use it as the host for socket connections.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A TCP connection URL for the superuser on database `db`:
    /// `postgres://postgres@127.0.0.1:{port}/{db}`, or
    /// `postgres://postgres:{password}@127.0.0.1:{port}/{db}` when a password
    /// is set. Nothing is percent-encoded.
    pub fn url(&self, db: &str) -> String {
        match &self.password {
            Some(password) => format!(
                "postgres://postgres:{password}@127.0.0.1:{}/{db}",
                self.port
            ),
            None => format!("postgres://postgres@127.0.0.1:{}/{db}", self.port),
        }
    }

    /// Stops the server (`pg_ctl stop -m fast -w`) but keeps its data, so a
    /// test can simulate an outage; [`restart`](Self::restart) brings it back.
    pub fn stop(&self) -> Result<(), LocalError> {
        let output = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "stop"])
            .output()
            .map_err(|e| self.spawn_error("pg_ctl", e))?;
        if !output.status.success() {
            return Err(LocalError::CommandFailed {
                what: format!("pg_ctl stop in {}", self.dir.display()),
                status: output.status,
                output: command_output(&output),
            });
        }
        Ok(())
    }

    /// Starts the server again on the same port and data dir
    /// (`pg_ctl start -w`) after [`stop`](Self::stop). If it is still
    /// running, it is stopped first. Fails if the port was taken meanwhile.
    pub fn restart(&self) -> Result<(), LocalError> {
        if self.is_running() {
            self.stop()?;
        }
        self.pg_ctl_start().map_err(|(_, e)| e)
    }

    /// Runs SQL (one or more statements) with `psql` over the unix socket as
    /// user `postgres` on database `db` and returns psql's stdout (unaligned,
    /// tuples only: one row per line, columns separated by `|`). Stops at the
    /// first error and returns it, with psql's stderr in the message.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, LocalError> {
        let psql = self.bindir.join("psql");
        let program = if psql.is_file() {
            psql
        } else {
            PathBuf::from("psql")
        };
        let port = self.port.to_string();
        let mut child = Command::new(&program)
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args(["-p", &port, "-U", "postgres", "-d", db, "-f", "-"])
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                LocalError::io(
                    format!(
                        "could not run {} (install the postgresql client)",
                        program.display()
                    ),
                    e,
                )
            })?;
        // Feed stdin from another thread so a large result cannot deadlock us.
        let writer = child.stdin.take().map(|mut stdin| {
            let sql = sql.to_string();
            std::thread::spawn(move || {
                // psql may exit early (e.g. cannot connect); that shows in its status.
                let _ = stdin.write_all(sql.as_bytes());
            })
        });
        let output = child
            .wait_with_output()
            .map_err(|e| LocalError::io("could not wait for psql", e))?;
        if let Some(writer) = writer {
            let _ = writer.join();
        }
        if !output.status.success() {
            return Err(LocalError::Psql {
                db: db.to_string(),
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// A command for one of the server tools, run as the `postgres` user
    /// when we are root, from inside our temp dir, with English messages.
    fn pg_command(&self, tool: &str) -> Command {
        let program = self.bindir.join(tool);
        let mut cmd = if self.as_postgres_user {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        };
        cmd.current_dir(&self.dir)
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        cmd
    }

    /// The error for a server tool that could not be run at all.
    fn spawn_error(&self, tool: &str, e: std::io::Error) -> LocalError {
        if self.as_postgres_user {
            LocalError::io(
                format!(
                    "could not run `runuser -u postgres -- {tool}` (runuser, from util-linux, \
                     is needed to run the postgres tools as the postgres user when running as root)"
                ),
                e,
            )
        } else {
            LocalError::io(
                format!("could not run {}", self.bindir.join(tool).display()),
                e,
            )
        }
    }

    /// Runs initdb into `<dir>/data`, with C.UTF-8 when the machine has that
    /// locale, else with `--no-locale`.
    fn initdb(&self, owner: Option<(u32, u32)>) -> Result<(), LocalError> {
        let pwfile = self.dir.join("pwfile");
        if let Some(password) = &self.password {
            write_private_file(&pwfile, &format!("{password}\n"), owner)
                .map_err(|e| LocalError::io(format!("could not write {}", pwfile.display()), e))?;
        }
        let result = (|| {
            if !NO_C_UTF8.load(Ordering::Relaxed) {
                match self.run_initdb("--locale=C.UTF-8", &pwfile) {
                    Err(LocalError::CommandFailed { output, .. })
                        if output
                            .lines()
                            .any(|l| l.contains("error") && l.contains("locale")) =>
                    {
                        NO_C_UTF8.store(true, Ordering::Relaxed);
                        // initdb removes what it created, but make sure.
                        let _ = fs::remove_dir_all(&self.data_dir);
                    }
                    other => return other,
                }
            }
            self.run_initdb("--no-locale", &pwfile)
        })();
        let _ = fs::remove_file(&pwfile);
        result
    }

    /// One `initdb` run with the given locale flag.
    fn run_initdb(&self, locale_flag: &str, pwfile: &Path) -> Result<(), LocalError> {
        let mut cmd = self.pg_command("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .arg(locale_flag);
        if self.password.is_some() {
            cmd.arg(format!("--pwfile={}", pwfile.display()));
        }
        let output = cmd.output().map_err(|e| self.spawn_error("initdb", e))?;
        if !output.status.success() {
            return Err(LocalError::CommandFailed {
                what: format!("initdb {locale_flag} in {}", self.dir.display()),
                status: output.status,
                output: command_output(&output),
            });
        }
        Ok(())
    }

    /// Replaces the pg_hba.conf written by initdb: unix socket `trust`, TCP
    /// from localhost `trust` or `scram-sha-256` when a password is set.
    fn write_hba(&self) -> Result<(), LocalError> {
        let method = if self.password.is_some() {
            "scram-sha-256"
        } else {
            "trust"
        };
        // No `replication` lines: walcast's logical replication sessions
        // match `all` (the database name) like its regular connections, so
        // every test also proves the pg_hba.conf that docs/configuration.md
        // asks for is enough.
        let hba = format!(
            "# written by walcast localdev\n\
             local all all trust\n\
             host all all 127.0.0.1/32 {method}\n\
             host all all ::1/128 {method}\n"
        );
        let path = self.data_dir.join("pg_hba.conf");
        // Overwriting keeps initdb's owner and mode, so the server can read it.
        fs::write(&path, hba)
            .map_err(|e| LocalError::io(format!("could not write {}", path.display()), e))
    }

    /// `pg_ctl start -w` with our flags. On failure also says whether the
    /// log shows that the port was taken (worth retrying on another port).
    fn pg_ctl_start(&self) -> Result<(), (bool, LocalError)> {
        let log_offset = file_len(&self.log);
        let output = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "-o", &self.server_flags, "start"])
            .output()
            .map_err(|e| (false, self.spawn_error("pg_ctl", e)))?;
        if output.status.success() {
            return Ok(());
        }
        let new_log = read_from(&self.log, log_offset);
        let port_taken =
            new_log.contains("could not bind") || new_log.contains("Address already in use");
        Err((
            port_taken,
            LocalError::StartFailed {
                server: "postgres",
                dir: self.dir.clone(),
                reason: format!(
                    "pg_ctl {} on port {} ({})",
                    status_text(&output.status),
                    self.port,
                    String::from_utf8_lossy(&output.stderr)
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
                log: self.log.clone(),
                tail: log_tail(&self.log),
            },
        ))
    }

    /// Whether `pg_ctl status` sees a running server.
    fn is_running(&self) -> bool {
        self.pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("status")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Drop for LocalPostgres {
    /// Stops the server right away (`pg_ctl stop -m immediate -w`, errors
    /// ignored) and removes the temp dir. Never panics.
    fn drop(&mut self) {
        if self.data_dir.join("postmaster.pid").exists() {
            let _ = self
                .pg_command("pg_ctl")
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Creates `path` with mode 0600 and the given content, owned by `owner`
/// (uid, gid) when given.
fn write_private_file(
    path: &Path,
    content: &str,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content.as_bytes())?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// The `pg_ctl -o` string: our fixed `-c` settings followed by the caller's,
/// each shell-quoted (pg_ctl runs the server through `/bin/sh`).
fn server_flags(port: u16, dir: &Path, opts: &PostgresOptions) -> String {
    let fixed = [
        ("port", port.to_string()),
        ("listen_addresses", "127.0.0.1".to_string()),
        ("unix_socket_directories", dir.display().to_string()),
        ("wal_level", opts.wal_level.clone()),
        ("fsync", "off".to_string()),
        ("max_wal_senders", "10".to_string()),
        ("max_replication_slots", "10".to_string()),
    ];
    fixed
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .chain(
            opts.settings
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        )
        .map(|(name, value)| format!("-c {}", shell_quote(&format!("{name}={value}"))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes a string for `/bin/sh`: `'...'`, with embedded `'` as `'\''`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The directory with `initdb`, `pg_ctl` and `postgres`: `pg_config --bindir`
/// if that has initdb, else the highest-versioned `/usr/lib/postgresql/*/bin`,
/// else the directory of the `initdb` on PATH (if pg_ctl is next to it).
fn find_bindir() -> Result<PathBuf, LocalError> {
    if find_on_path("pg_config").is_some() {
        if let Ok(output) = Command::new("pg_config")
            .arg("--bindir")
            .stderr(Stdio::null())
            .output()
        {
            let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
            if output.status.success() && dir.join("initdb").is_file() {
                return Ok(dir);
            }
        }
    }
    let mut best: Option<(Vec<u64>, PathBuf)> = None;
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(version) = name
                .split('.')
                .map(str::parse::<u64>)
                .collect::<Result<Vec<_>, _>>()
            else {
                continue;
            };
            let bin = entry.path().join("bin");
            let newer = best.as_ref().is_none_or(|(v, _)| version > *v);
            if newer && bin.join("initdb").is_file() {
                best = Some((version, bin));
            }
        }
    }
    if let Some((_, bin)) = best {
        return Ok(bin);
    }
    // Fedora and others put initdb on PATH and pg_config in a -devel package.
    find_on_path("initdb")
        .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
        .filter(|bin| bin.join("pg_ctl").is_file())
        .ok_or(LocalError::PostgresNotInstalled)
}

/// When we are root: the uid and gid of the `postgres` user (from
/// /etc/passwd), which must own the cluster. `None` when we are not root and
/// run the tools directly.
fn postgres_owner() -> Result<Option<(u32, u32)>, LocalError> {
    if effective_uid()? != 0 {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd")
        .map_err(|e| LocalError::io("could not read /etc/passwd", e))?;
    passwd
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            if fields.next() != Some("postgres") {
                return None;
            }
            let _password = fields.next();
            let uid = fields.next()?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some(Some((uid, gid)))
        })
        .ok_or(LocalError::NoPostgresUser)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// The one value a query returns, trimmed.
    fn one(pg: &LocalPostgres, sql: &str) -> String {
        pg.psql("postgres", sql).unwrap().trim().to_string()
    }

    #[test]
    fn two_clusters_in_parallel() {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                std::thread::spawn(|| {
                    let pg = LocalPostgres::start().unwrap();
                    assert_eq!(one(&pg, "select 1"), "1");
                    assert_eq!(one(&pg, "show wal_level"), "logical");
                    assert_eq!(one(&pg, "show max_replication_slots"), "10");
                    assert_eq!(one(&pg, "show max_wal_senders"), "10");
                    assert_eq!(one(&pg, "show fsync"), "off");
                    (pg.port(), pg.data_dir().to_path_buf())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_ne!(results[0].0, results[1].0);
        assert_ne!(results[0].1, results[1].1);
        for (_, data_dir) in results {
            assert!(!data_dir.exists());
        }
    }

    #[test]
    fn stop_and_restart() {
        let pg = LocalPostgres::start().unwrap();
        pg.psql(
            "postgres",
            "create table t (id int); insert into t values (42);",
        )
        .unwrap();
        pg.stop().unwrap();
        let err = pg.psql("postgres", "select 1").unwrap_err();
        assert!(matches!(err, LocalError::Psql { .. }), "{err}");
        pg.restart().unwrap();
        assert_eq!(one(&pg, "select id from t"), "42");
        // restart() on a running server stops it first.
        pg.restart().unwrap();
        assert_eq!(one(&pg, "select 1"), "1");
    }

    #[test]
    fn password_protects_tcp_only() {
        let pg = LocalPostgres::start_with(PostgresOptions {
            password: Some("s3cret".to_string()),
            ..PostgresOptions::default()
        })
        .unwrap();
        let url = pg.url("postgres");
        assert!(url.contains(":s3cret@"), "{url}");
        assert_eq!(
            url,
            format!(
                "postgres://postgres:s3cret@127.0.0.1:{}/postgres",
                pg.port()
            )
        );
        // The unix socket stays trust.
        assert_eq!(one(&pg, "select 1"), "1");
        // TCP needs the password: none, a wrong one and the right one.
        let over_tcp = |url: &str| {
            Command::new(pg.bindir.join("psql"))
                .args(["-X", "-At", "-w", "-c", "select 7", url])
                .env_remove("PGPASSWORD")
                .output()
                .unwrap()
        };
        let no_password = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port());
        let out = over_tcp(&no_password);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("password"), "{stderr}");
        assert!(!over_tcp(&url.replace("s3cret", "wrong")).status.success());
        let out = over_tcp(&url);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7");
    }

    #[test]
    fn no_password_url() {
        let pg = LocalPostgres::start().unwrap();
        assert_eq!(
            pg.url("app"),
            format!("postgres://postgres@127.0.0.1:{}/app", pg.port())
        );
        assert!(pg
            .socket_dir()
            .join(format!(".s.PGSQL.{}", pg.port()))
            .exists());
    }

    #[test]
    fn drop_removes_dir() {
        let pg = LocalPostgres::start().unwrap();
        let dir = pg.socket_dir().to_path_buf();
        assert!(pg.data_dir().join("PG_VERSION").exists());
        drop(pg);
        assert!(!dir.exists(), "{} still exists", dir.display());
    }

    #[test]
    fn panic_still_cleans_up() {
        let mut dir = None;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let pg = LocalPostgres::start().unwrap();
            dir = Some(pg.socket_dir().to_path_buf());
            panic!("test panic with a running cluster");
        }));
        assert!(result.is_err());
        let dir = dir.unwrap();
        assert!(!dir.exists(), "{} still exists", dir.display());
    }

    #[test]
    fn settings_multi_statements_and_errors() {
        let pg = LocalPostgres::start_with(PostgresOptions {
            settings: vec![
                ("cluster_name".to_string(), "it's walcast".to_string()),
                ("max_replication_slots".to_string(), "4".to_string()),
            ],
            ..PostgresOptions::default()
        })
        .unwrap();
        assert_eq!(one(&pg, "show max_replication_slots"), "4");
        assert_eq!(one(&pg, "show cluster_name"), "it's walcast");
        assert_eq!(one(&pg, "show server_encoding"), "UTF8");
        let out = pg
            .psql(
                "postgres",
                "create table t (a int, b text);\ninsert into t values (1, 'x'), (2, 'y');\nselect a, b from t order by a;",
            )
            .unwrap();
        assert_eq!(out, "1|x\n2|y\n");
        let err = pg
            .psql(
                "postgres",
                "select 1; select * from missing_table; select 2;",
            )
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("missing_table"), "{msg}");
        let err = pg.psql("nodb", "select 1").unwrap_err().to_string();
        assert!(err.contains("nodb"), "{err}");
    }

    #[test]
    fn retries_when_port_is_taken() {
        let taken = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let mut ports = vec![taken_port];
        let mut next = || match ports.pop() {
            Some(port) => Ok(port),
            None => free_port(),
        };
        let pg = LocalPostgres::start_on_ports(PostgresOptions::default(), &mut next).unwrap();
        assert_ne!(pg.port(), taken_port);
        assert_eq!(one(&pg, "select 1"), "1");
        let log = fs::read_to_string(&pg.log).unwrap();
        assert!(log.contains("could not bind"), "{log}");
    }

    #[test]
    fn gives_up_after_attempts_with_log_tail() {
        let taken = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let mut calls = 0;
        let mut next = || {
            calls += 1;
            Ok(taken_port)
        };
        let err = LocalPostgres::start_on_ports(PostgresOptions::default(), &mut next).unwrap_err();
        assert_eq!(calls, START_ATTEMPTS);
        let msg = err.to_string();
        assert!(msg.starts_with("could not start postgres in "), "{msg}");
        assert!(msg.contains("last lines of the log"), "{msg}");
        assert!(msg.contains("Address already in use"), "{msg}");
        let LocalError::StartFailed { dir, .. } = err else {
            panic!("unexpected error {err:?}");
        };
        assert!(!dir.exists());
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("a=b c"), "'a=b c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
