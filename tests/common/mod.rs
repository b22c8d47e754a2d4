//! Shared test harness: a tenant database on a throwaway Postgres cluster,
//! and the walcast binary run as a child process that tests read like a user
//! would (JSON lines on stdout, logs on stderr). Everything is stopped and
//! removed on drop, also when a test panics.

#![allow(dead_code)]

pub mod certs;
pub mod client;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use walcast::localdev::{LocalPostgres, PostgresOptions};

/// How long a test waits for something walcast should do promptly.
pub const WAIT: Duration = Duration::from_secs(30);

/// A Postgres cluster with a `platform` database holding the example tables.
pub struct TenantDb {
    pub pg: LocalPostgres,
}

pub const ENVIRONMENTS_DDL: &str =
    "create table environments (id int primary key, name varchar(40), active bool);";

impl TenantDb {
    pub fn start() -> TenantDb {
        TenantDb::start_with(PostgresOptions::default())
    }

    pub fn start_with(options: PostgresOptions) -> TenantDb {
        let pg = walcast::localdev::start_tasks_database(options)
            .unwrap_or_else(|e| panic!("starting postgres with the tasks table: {e}"));
        pg.psql("platform", ENVIRONMENTS_DDL)
            .expect("create the environments table");
        TenantDb { pg }
    }

    pub fn sql(&self, sql: &str) -> String {
        self.pg
            .psql("platform", sql)
            .unwrap_or_else(|e| panic!("sql failed: {e}\n{sql}"))
    }

    pub fn url(&self) -> String {
        self.pg.url("platform")
    }

    /// `[[tenants]]` TOML for this database.
    pub fn tenant_toml(&self, id: &str) -> String {
        format!(
            "[[tenants]]\nid = \"{id}\"\nurl = \"{}\"\ntables = [\"public.tasks\", \"public.environments\"]\n",
            self.url()
        )
    }
}

/// A temp directory for config files, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("walcast-test-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The walcast binary built by cargo for these tests.
pub fn walcast_bin() -> &'static str {
    env!("CARGO_BIN_EXE_walcast")
}

/// Runs walcast to completion; returns (status, stdout, stderr).
pub fn walcast_output(config: &Path, args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(walcast_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .env("WALCAST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("run walcast");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running walcast whose stdout lines arrive on a channel. Killed on drop.
pub struct Walcast {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Walcast {
    pub fn spawn(config: &Path, args: &[&str]) -> Walcast {
        Walcast::spawn_limited(config, args, None)
    }

    /// `spawn`, with the open-file limit (soft and hard) set to `files`.
    pub fn spawn_limited(config: &Path, args: &[&str], files: Option<u64>) -> Walcast {
        Walcast::spawn_with(config, args, files, &[])
    }

    /// `spawn`, with an open-file limit and more environment variables.
    pub fn spawn_with(
        config: &Path,
        args: &[&str],
        files: Option<u64>,
        env: &[(&str, &str)],
    ) -> Walcast {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(walcast_bin());
        command
            .arg("--config")
            .arg(config)
            .args(args)
            .env("WALCAST_LOG", "info,walcast=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(files) = files {
            // SAFETY: setrlimit is async-signal-safe; it runs in the child
            // between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: files,
                        rlim_max: files,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command.spawn().expect("spawn walcast");
        let lines = lines_of(child.stdout.take().unwrap());
        let stderr = text_of(child.stderr.take().unwrap());
        Walcast {
            child,
            lines,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `text` `count` times. To wait for tenants
    /// to stream, count `"streaming tenant="`: the line each logs when it
    /// starts streaming. (A bare "streaming" also matches a tenant's
    /// "snapshot complete; streaming from …", so two such lines of one
    /// tenant could pass for two tenants.)
    pub fn wait_log(&self, text: &str, count: usize) {
        let deadline = Instant::now() + WAIT;
        while self.stderr().matches(text).count() < count {
            if Instant::now() > deadline {
                panic!(
                    "walcast did not log {text:?} {count} times within {WAIT:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The next `n` events (parsed JSON lines).
    pub fn events(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => out.push(
                    serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}")),
                ),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => panic!(
                    "expected {n} events, got {}: {out:#?}\nstderr:\n{}",
                    out.len(),
                    self.stderr()
                ),
            }
        }
        out
    }

    /// Asserts that no further event arrives within `quiet`.
    pub fn no_more_events(&self, quiet: Duration) {
        if let Ok(line) = self.lines.recv_timeout(quiet) {
            panic!("unexpected event: {line}\nstderr:\n{}", self.stderr());
        }
    }

    /// Sends SIGINT and waits for the exit status.
    pub fn interrupt(mut self) -> (ExitStatus, Vec<String>, String) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill -INT");
        assert!(status.success());
        let deadline = Instant::now() + WAIT;
        let exit = loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                break exit;
            }
            if Instant::now() > deadline {
                panic!(
                    "walcast did not exit after SIGINT; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Give the reader threads a moment to drain the pipes.
        std::thread::sleep(Duration::from_millis(100));
        let rest: Vec<String> = self.lines.try_iter().collect();
        let stderr = self.stderr();
        (exit, rest, stderr)
    }
}

impl Drop for Walcast {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use walcast::localdev::LocalRedis;

/// A synchronous connection to a test Redis.
pub fn redis_conn(redis: &LocalRedis) -> redis::Connection {
    redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| panic!("connecting to test redis: {e}"))
}

/// Every event in a tenant's Redis stream, in stream order.
pub fn stream_events(con: &mut redis::Connection, tenant: &str) -> Vec<serde_json::Value> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("walcast:{{{tenant}}}:events"))
        .arg("-")
        .arg("+")
        .query(con)
        .expect("XRANGE");
    entries
        .into_iter()
        .map(|(id, fields)| {
            let json = &fields
                .iter()
                .find(|(f, _)| f == "event")
                .expect("event field")
                .1;
            let event: serde_json::Value =
                serde_json::from_str(json).expect("stream entry is JSON");
            assert_eq!(event["id"], id.as_str(), "stream id is the event id");
            event
        })
        .collect()
}

/// Each line `reader` yields, sent on the returned channel by a thread.
pub fn lines_of(reader: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// Everything `reader` yields, gathered by a thread into a shared string.
pub fn text_of(mut reader: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// `curl -sN` streaming `url` (with `headers`) for at most `max_secs`; its
/// standard output is piped.
pub fn curl_stream(url: &str, headers: &[String], max_secs: u32) -> Child {
    let mut cmd = Command::new("curl");
    cmd.args(["-sN", "--max-time", &max_secs.to_string()]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run curl")
}

/// Polls `check` every 100 ms until it returns true or `WAIT` passes.
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A config file with one `[[tenants]]` entry per `(id, tables, extra)` on
/// `db`; `tables` is TOML (`"\"public.t\""`), `extra` more keys
/// (`"binary = true\n"`).
pub fn config_file(dir: &TempDir, db: &TenantDb, tenants: &[(&str, &str, &str)]) -> PathBuf {
    let mut text = String::new();
    for (id, tables, extra) in tenants {
        text.push_str(&format!(
            "[[tenants]]\nid = \"{id}\"\nurl = \"{}\"\ntables = [{tables}]\n{extra}\n",
            db.url()
        ));
    }
    dir.write("walcast.toml", &text)
}

/// `walcast tail --tenant acme` on its permanent slot (created, with the
/// publication, on start) for `tables`, once it is streaming.
pub fn tail(db: &TenantDb, dir: &TempDir, tables: &str, extra: &str) -> Walcast {
    let config = config_file(dir, db, &[("acme", tables, extra)]);
    let tail = Walcast::spawn(&config, &["tail", "--tenant", "acme"]);
    tail.wait_log("streaming tenant=", 1);
    tail
}

/// The parts of an event a test asserts on: everything but the id, LSN,
/// xid and commit time, which change from run to run.
pub fn change(event: &serde_json::Value) -> serde_json::Value {
    let mut event = event.clone();
    if let Some(object) = event.as_object_mut() {
        for field in ["id", "lsn", "xid", "commit_ts", "tenant"] {
            object.remove(field);
        }
    }
    event
}
