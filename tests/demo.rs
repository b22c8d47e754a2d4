//! `walcast demo` as a user runs it: started as a child process, it prints
//! URLs, tokens and curl lines; we use them as printed (curl for the
//! inspector page, the SSE stream and the state endpoint), then press
//! Ctrl-C (SIGINT to its process group, as a terminal does) and check that it
//! exits 0 and that its clusters, Redis and temp dirs are gone.

mod common;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{curl_stream, lines_of, text_of, walcast_bin, WAIT};

/// The generator writes every 0.5-1 s, so a change is due well within this.
const EVENT_WAIT: Duration = Duration::from_secs(15);

/// The demo as a child process in its own process group; stdout lines on a
/// channel, stderr collected. Killed (with its group) on drop.
struct Demo {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Demo {
    fn spawn(port: u16) -> Demo {
        let mut child = Command::new(walcast_bin())
            .args(["demo", "--port", &port.to_string()])
            .env("WALCAST_LOG", "info")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn walcast demo");
        let lines = lines_of(child.stdout.take().unwrap());
        let stderr = text_of(child.stderr.take().unwrap());
        Demo {
            child,
            lines,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Stdout up to and including the line that ends the ready block.
    fn ready_block(&self) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut block = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let last = line.contains("Ctrl-C stops and removes everything");
                    block.push(line);
                    if last {
                        return block;
                    }
                }
                Err(_) => panic!(
                    "the demo did not print its ready block within {WAIT:?}; stdout so far:\n{}\nstderr:\n{}",
                    block.join("\n"),
                    self.stderr()
                ),
            }
        }
    }

    /// Ctrl-C as a terminal sends it: SIGINT to the whole process group.
    fn interrupt(&mut self) -> std::process::ExitStatus {
        let group = format!("-{}", self.child.id());
        let sent = Command::new("kill")
            .args(["-INT", "--", &group])
            .status()
            .expect("kill -INT");
        assert!(sent.success());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "the demo did not exit within {WAIT:?} of Ctrl-C; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .status();
            let _ = self.child.wait();
        }
    }
}

/// The line after the one containing `heading`, trimmed.
fn line_after<'a>(block: &'a [String], heading: &str) -> &'a str {
    let at = block
        .iter()
        .position(|l| l.contains(heading))
        .unwrap_or_else(|| panic!("no {heading:?} in the demo's output:\n{}", block.join("\n")));
    block[at + 1].trim()
}

/// The double-quoted parts of a printed shell line.
fn quoted(line: &str) -> Vec<&str> {
    line.split('"').skip(1).step_by(2).collect()
}

/// Runs a printed shell line with `bash -c` (in its own process group,
/// killed after) until a line of its stdout contains `wanted`; returns the
/// lines up to that one, or panics after [`EVENT_WAIT`].
fn first_line_with(line: &str, wanted: &str) -> String {
    let mut child = Command::new("bash")
        .args(["-c", line])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bash");
    let rx = lines_of(child.stdout.take().unwrap());
    let stderr = text_of(child.stderr.take().unwrap());
    let deadline = Instant::now() + EVENT_WAIT;
    let mut seen = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(out) => {
                let done = out.contains(wanted);
                seen.push(out);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.wait();
    assert!(
        found,
        "no {wanted} from {line} within {EVENT_WAIT:?}; stdout:\n{}\nstderr:\n{}",
        seen.join("\n"),
        stderr.lock().unwrap()
    );
    seen.join("\n")
}

/// Runs a printed shell line with `bash -c`, stdin closed.
fn run_in_bash(line: &str) -> std::process::Output {
    Command::new("bash")
        .args(["-c", line])
        .stdin(Stdio::null())
        .output()
        .expect("run bash")
}

/// Runs curl and returns (status code, content type, body).
fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{content_type}",
        ])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, meta) = text.rsplit_once('\n').unwrap_or(("", "0 "));
    let (code, content_type) = meta.split_once(' ').unwrap_or((meta, ""));
    (
        code.parse().unwrap_or(0),
        content_type.to_owned(),
        body.to_owned(),
    )
}

/// Streams `curl -sN` (with `headers`) and returns its output once it holds
/// an `event: change` frame, or panics after [`EVENT_WAIT`].
fn first_change(url: &str, headers: &[&str]) -> String {
    let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let mut child = curl_stream(url, &headers, 60);
    let rx = lines_of(child.stdout.take().unwrap());
    let deadline = Instant::now() + EVENT_WAIT;
    let mut seen = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line == "event: change" => {
                // The data line follows.
                if let Ok(data) = rx.recv_timeout(Duration::from_secs(2)) {
                    seen.push(line);
                    seen.push(data);
                }
                break true;
            }
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        found,
        "no `event: change` from {url} within {EVENT_WAIT:?}; curl got:\n{}",
        seen.join("\n")
    );
    seen.join("\n")
}

#[test]
fn demo_streams_to_the_printed_urls_and_ctrl_c_removes_everything() {
    let port = walcast::localdev::free_port().unwrap();
    let started = Instant::now();
    let mut demo = Demo::spawn(port);
    let block = demo.ready_block();
    let ready_after = started.elapsed();
    eprintln!(
        "demo ready after {:.1} s:\n{}",
        ready_after.as_secs_f64(),
        block.join("\n")
    );
    let base = format!("http://127.0.0.1:{port}");

    // The inspector, prefilled for acme's tasks with a token.
    let inspector = line_after(&block, "Inspector");
    let prefix = format!("{base}/?tenant=acme&table=public.tasks&token=");
    assert!(
        inspector.starts_with(&prefix) && inspector.ends_with("&autostart=1"),
        "{inspector}"
    );
    let token = &inspector[prefix.len()..inspector.len() - "&autostart=1".len()];
    let (code, content_type, page) = curl(&[&format!("{base}/")]);
    assert_eq!(code, 200, "GET / answered {code}: {page}");
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(page.contains("walcast inspector"), "{page}");

    // The SSE line, run as printed.
    let sse = line_after(&block, "Server-Sent Events");
    assert!(sse.starts_with("curl -N -H "), "{sse}");
    let parts = quoted(sse);
    assert_eq!(parts.len(), 2, "{sse}");
    assert_eq!(parts[0], format!("Authorization: Bearer {token}"));
    assert_eq!(
        parts[1],
        format!("{base}/v1/acme/events?table=public.tasks&filter=status=eq.running")
    );
    let frames = first_change(parts[1], &[parts[0]]);
    assert!(frames.contains(r#""status":"running""#), "{frames}");
    // The way the inspector page subscribes: the token in the query.
    first_change(
        &format!("{base}/v1/acme/events?table=public.tasks&access_token={token}"),
        &[],
    );

    // The state line, run as printed.
    assert!(
        block
            .iter()
            .any(|l| l.starts_with("Hot tasks (queued, running; rows that left stay 60 s)")),
        "the state heading says cold rows stay:\n{}",
        block.join("\n")
    );
    let state = line_after(&block, "mirrored in Redis");
    let header = quoted(state)[0];
    let url = state.rsplit(' ').next().unwrap();
    assert_eq!(url, format!("{base}/v1/acme/state/public.tasks"));
    let (code, _, body) = curl(&["-H", header, url]);
    assert_eq!(code, 200, "state answered {code}: {body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("state is JSON");
    assert!(body["rows"].is_array(), "{body}");

    // globex has its own token, which acme's stream refuses.
    let globex = line_after(&block, "Tokens").to_owned();
    assert!(globex.starts_with("acme "), "{globex}");
    let globex_token = block
        .iter()
        .find_map(|l| l.trim().strip_prefix("globex "))
        .expect("a globex token line")
        .trim();
    let (code, _, _) = curl(&[
        "-H",
        &format!("Authorization: Bearer {globex_token}"),
        &format!("{base}/v1/acme/state/public.tasks"),
    ]);
    assert_eq!(code, 403, "globex's token must not read acme");

    // The WebSocket line, run as printed: a change of globex arrives.
    let ws = line_after(&block, "WebSocket API");
    assert!(ws.starts_with("node "), "{ws}");
    let frames = first_line_with(ws, r#""type":"change""#);
    assert!(frames.contains(r#""type":"subscribed""#), "{frames}");
    assert!(frames.contains("public.environments"), "{frames}");

    // The psql lines, pasted into bash as printed (stdin closed: the one
    // without -c connects and exits).
    let psql: Vec<&str> = block
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.starts_with("psql "))
        .collect();
    assert_eq!(
        psql.len(),
        2,
        "a psql line per tenant:\n{}",
        block.join("\n")
    );
    for line in &psql {
        let out = run_in_bash(line);
        assert!(
            out.status.success(),
            "{line}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The insert works again (no duplicate key).
    let insert = psql
        .iter()
        .find(|l| l.contains("insert into tasks"))
        .expect("a psql insert line");
    let out = run_in_bash(insert);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("INSERT 0 1"),
        "second run of {insert}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let files = block
        .iter()
        .find_map(|l| l.strip_prefix("Files: "))
        .expect("a Files line");
    let dirs: Vec<PathBuf> = files
        .split(" (removed")
        .next()
        .unwrap()
        .split(", ")
        .map(PathBuf::from)
        .collect();
    assert_eq!(dirs.len(), 3, "two clusters and redis: {files}");
    assert!(dirs.iter().all(|d| d.is_dir()), "{dirs:?}");

    let status = demo.interrupt();
    assert!(
        status.success(),
        "demo exited with {status} after Ctrl-C; stderr:\n{}",
        demo.stderr()
    );
    for dir in &dirs {
        assert!(!dir.exists(), "{} is still there", dir.display());
    }
    let stderr = demo.stderr();
    assert!(stderr.contains("everything it started is gone"), "{stderr}");
    let (code, _, _) = curl(&[&format!("{base}/healthz")]);
    assert_eq!(code, 0, "walcast still answers on {base}");
}

#[test]
fn demo_without_redis_says_what_to_install() {
    // No redis-server on PATH. (The Postgres binaries are found in
    // /usr/lib/postgresql on Debian; elsewhere both are reported missing.)
    let out = Command::new(walcast_bin())
        .args(["demo", "--port", "1"])
        .env("PATH", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .expect("run walcast demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("walcast: demo needs "), "{stderr}");
    assert!(
        stderr.contains("redis-server") && stderr.contains("apt-get install "),
        "{stderr}"
    );
}
