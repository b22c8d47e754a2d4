//! Attacks from outside, against the default configuration: no careless or
//! hostile client can hurt anybody else. Each test starts walcast with real
//! Postgres and Redis, connects a normal subscriber before the attack, keeps
//! a writer committing a change every 100 ms, runs the attack, and asserts
//! that the normal subscriber's longest gap stays under a second, that
//! walcast's memory stays under a bound, and that walcast never restarts.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::client::*;
use common::*;
use serde_json::{json, Value};
use walcast::localdev::LocalRedis;

const SECRET: &str = "hardening-test-secret-that-is-long-enough";

fn operator() -> String {
    sign(
        SECRET,
        json!({"tenant": "acme", "role": "operator", "sub": "op"}),
    )
}

/// Postgres, Redis and a running walcast with the default `[server]`
/// settings (plus `extra`), an ops listener and HS256 tokens.
struct Stack {
    db: TenantDb,
    _redis: LocalRedis,
    _dir: TempDir,
    port: u16,
    ops_port: u16,
    walcast: Walcast,
}

impl Stack {
    fn start(tag: &str, extra_server: &str, file_limit: Option<u64>) -> Stack {
        let db = TenantDb::start();
        let redis = LocalRedis::start().expect("redis");
        let dir = TempDir::new(tag);
        let port = walcast::localdev::free_port().unwrap();
        let ops_port = walcast::localdev::free_port().unwrap();
        let config = dir.write(
            "walcast.toml",
            &format!(
                "[server]\nlisten = [\"127.0.0.1:{port}\"]\nops_listen = [\"127.0.0.1:{ops_port}\"]\nready_grace_secs = 0\n{extra_server}\n\
                 [redis]\nurl = \"{}\"\n\n\
                 [[mirror]]\ntable = \"public.tasks\"\nhot_when = [\"status=in.(queued,running)\"]\n\n\
                 [auth]\nsecret = \"{SECRET}\"\n\n[[auth.rules]]\nrole = \"operator\"\ntable = \"*\"\n\n{}",
                redis.url(),
                db.tenant_toml("acme")
            ),
        );
        let walcast = Walcast::spawn_limited(&config, &["run"], file_limit);
        walcast.wait_log("streaming tenant=", 1);
        Stack {
            db,
            _redis: redis,
            _dir: dir,
            port,
            ops_port,
            walcast,
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.walcast.pid()))
            .expect("walcast is running");
        let kib: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kib * 1024
    }

    /// The sum of the values of the metric lines that start with `name`.
    fn metric(&self, name: &str) -> f64 {
        let (_, metrics) = get(&format!("http://127.0.0.1:{}/metrics", self.ops_port), None);
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Asserts that walcast is still the same process, and streaming.
    fn still_running(&self) {
        let (code, body) = get(&format!("http://127.0.0.1:{}/readyz", self.ops_port), None);
        assert_eq!(code, 200, "walcast is ready: {body}");
        assert!(
            std::path::Path::new(&format!("/proc/{}", self.walcast.pid())).exists(),
            "walcast exited:\n{}",
            self.walcast.stderr()
        );
    }
}

/// Inserts an environment row every 100 ms until dropped (a psql per
/// insert, so that a Postgres restart only costs the inserts meanwhile).
struct Writer {
    stop: Arc<Mutex<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(db: &TenantDb) -> Writer {
        let url = db.url();
        let stop = Arc::new(Mutex::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !*flag.lock().unwrap() {
                n += 1;
                let _ = Command::new("psql")
                    .args([
                        &url,
                        "-qAtc",
                        &format!("insert into environments values ({n}, 'env-{n}', true)"),
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Writer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        *self.stop.lock().unwrap() = true;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A normal SSE subscriber (curl) of the environments table, recording when
/// each change arrives.
struct Watcher {
    child: Child,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl Watcher {
    fn start(stack: &Stack) -> Watcher {
        let mut child = curl_stream(
            &format!("{}/v1/acme/events?table=public.environments", stack.base()),
            &[format!("Authorization: Bearer {}", operator())],
            600,
        );
        let stdout = child.stdout.take().unwrap();
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&arrivals);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "event: change" {
                    seen.lock().unwrap().push(Instant::now());
                }
            }
        });
        let watcher = Watcher { child, arrivals };
        wait_until("the watcher's first change", || watcher.count() >= 3);
        watcher
    }

    fn count(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }

    /// The longest time between two changes (or since the last one) from
    /// `since` on.
    fn max_gap(&self, since: Instant) -> Duration {
        let arrivals = self.arrivals.lock().unwrap();
        let mut last = since;
        let mut max = Duration::ZERO;
        for at in arrivals.iter().filter(|at| **at >= since) {
            max = max.max(*at - last);
            last = *at;
        }
        max.max(last.elapsed())
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the server closed `stream` (read gives EOF or an error) within
/// `wait`; bytes it sent first are read and ignored.
fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        // Past the deadline, one short read still tells a socket the
        // server already closed from one it keeps open.
        let left = deadline.saturating_duration_since(Instant::now());
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) if Instant::now() < deadline => continue,
            Ok(_) => return false,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn unfinished_heads_and_idle_connections_cannot_exhaust_the_process() {
    // The file limit of the issue's report: 200 descriptors.
    let stack = Stack::start("hardening-heads", "", Some(200));
    let _writer = Writer::start(&stack.db);
    let watcher = Watcher::start(&stack);
    let rss_before = stack.rss_bytes();
    // 2000 connections, each sending an unfinished head to a different
    // path, and some finished requests left idle on a kept-alive connection.
    let heads = [
        "GET /healthz HTTP/1.1\r\nHost: x\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\n",
        "GET /v1/acme/ws HTTP/1.1\r\nHost: x\r\n",
        "GET /v1/acme/state/public.tasks HTTP/1.1\r\nHost: x\r\n",
        "GET /v1/acme/events HTTP/1.1\r\nHost: x\r\n",
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    let mut sockets = Vec::new();
    for n in 0..2000 {
        let Ok(mut socket) = TcpStream::connect(("127.0.0.1", stack.port)) else {
            continue;
        };
        let _ = socket.write_all(heads[n % heads.len()].as_bytes());
        sockets.push(socket);
    }
    let attack_connected = Instant::now();
    assert!(sockets.len() > 1000, "the attack connected");
    // New clients get an answer at once: a 503 with Retry-After while the
    // connections are taken, never a hang.
    let out = Command::new("curl")
        .args([
            "-s",
            "-i",
            "--max-time",
            "5",
            &format!("{}/healthz", stack.base()),
        ])
        .output()
        .unwrap();
    let reply = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        reply.starts_with("http/1.1 200")
            || (reply.starts_with("http/1.1 503") && reply.contains("retry-after: 1")),
        "{reply}"
    );
    // A Postgres restart during the attack: the tenant's replication
    // reconnect still finds descriptors.
    let streaming_before = stack.walcast.stderr().matches("streaming tenant=").count();
    stack.db.pg.restart().expect("restart postgres");
    stack
        .walcast
        .wait_log("streaming tenant=", streaming_before + 1);
    // Every attacking connection is closed by walcast once the head
    // timeout (10 s by default) passed.
    let deadline = attack_connected + Duration::from_secs(10) + Duration::from_secs(8);
    let mut open = Vec::new();
    for (n, socket) in sockets.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if !closed_within(socket, left) {
            open.push(heads[n % heads.len()]);
        }
    }
    assert!(
        open.is_empty(),
        "{} connections left open past the head timeout, for example {:?}",
        open.len(),
        &open[..open.len().min(5)]
    );
    let attack_ended = Instant::now();
    drop(sockets);
    // The normal subscriber never waited a second, but across the
    // Postgres restart.
    let gap = watcher.max_gap(attack_ended);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        watcher.max_gap(attack_ended) < Duration::from_secs(1),
        "gap {gap:?}"
    );
    let stderr = stack.walcast.stderr();
    assert!(!stderr.contains("Too many open files"), "{stderr}");
    let warnings = stderr.matches("refusing client connections").count();
    assert!(
        warnings <= 3,
        "refusals are logged at most every 10 s: {warnings}"
    );
    let (_, metrics) = get(
        &format!("http://127.0.0.1:{}/metrics", stack.ops_port),
        None,
    );
    assert!(
        metrics.contains("walcast_http_refused_total{reason=\"max_connections\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("walcast_http_timeouts_total{kind=\"head\"}"),
        "{metrics}"
    );
    let rss = stack.rss_bytes();
    assert!(
        rss < rss_before + (32 << 20),
        "RSS {rss} (before {rss_before})"
    );
    stack.still_running();
    // And new requests are served again.
    let (code, _) = get(&format!("{}/healthz", stack.base()), None);
    assert_eq!(code, 200);
}

#[test]
fn clients_that_stop_reading_are_cut_off_and_memory_stays_bounded() {
    let stack = Stack::start("hardening-readers", "", None);
    let _writer = Writer::start(&stack.db);
    let watcher = Watcher::start(&stack);
    let rss_before = stack.rss_bytes();
    let op = operator();
    // Ten WebSocket clients with as many subscriptions as allowed (32),
    // that never read.
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut ws = ws_connect_slow(stack.port, "acme", &op);
        for s in 0..32 {
            ws_subscribe(
                &mut ws,
                json!({"type": "subscribe", "id": format!("s{s}"), "tables": ["public.tasks"]}),
            );
        }
        stalled.push(ws);
    }
    // An SSE stream asked for as the second request of a kept-alive
    // connection, that stops reading too.
    let mut second = small_buffer_socket(stack.port);
    write!(second, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut head = [0u8; 512];
    let n = second.read(&mut head).unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    write!(
        second,
        "GET /v1/acme/events?table=public.tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {op}\r\n\r\n"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let attack_started = Instant::now();
    // 60 rows of 100 KB.
    stack.db.sql(
        "insert into tasks (id, status, payload) select g, 'queued', jsonb_build_object('blob', repeat('x', 100000)) from generate_series(1, 60) g",
    );
    // The stalled clients read nothing, so they cannot see a close: ask
    // walcast how many client connections it holds (the watcher's is one).
    let mut peak = 0;
    let deadline = attack_started + Duration::from_secs(30 + 15);
    let mut open = f64::MAX;
    while Instant::now() < deadline && open > 1.0 {
        peak = peak.max(stack.rss_bytes());
        open = stack.metric("walcast_http_connections{listener=\"client\"}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        open, 1.0,
        "every stalled connection is closed within the write timeout (30 s)"
    );
    assert_eq!(
        stack.metric("walcast_delivery_subscribers{tenant=\"acme\",transport=\"ws\"}"),
        0.0
    );
    drop(stalled);
    drop(second);
    assert!(
        peak < rss_before + (96 << 20),
        "peak RSS {peak} (before {rss_before}): the 192 MB each stalled connection was sent stayed shared"
    );
    assert!(watcher.max_gap(attack_started) < Duration::from_secs(1));
    assert!(stack.metric("walcast_http_timeouts_total{kind=\"write\"}") >= 1.0);
    stack.still_running();
}

/// A socket that holds at most 64 KiB unread.
fn small_buffer_socket(port: u16) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.into()
}

#[test]
fn matching_cost_is_bounded_and_does_not_delay_others() {
    let stack = Stack::start("hardening-matching", "", None);
    let _writer = Writer::start(&stack.db);
    let watcher = Watcher::start(&stack);
    let op = operator();
    let mut ws = ws_connect(stack.port, "acme", &op);
    // The reported attack: 64 filters of in.(150 values) per subscription.
    let values: Vec<String> = (0..150).map(|v| format!("s{v}")).collect();
    let big = format!("status=in.({})", values.join(","));
    ws_send(
        &mut ws,
        json!({"type": "subscribe", "id": "x", "tables": ["public.tasks"], "filters": vec![big.clone(); 64]}),
    );
    let reply = ws_next(&mut ws);
    assert_eq!(reply["code"], "too_many_filters", "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("max_filters"),
        "{reply}"
    );
    ws_send(
        &mut ws,
        json!({"type": "subscribe", "id": "x", "tables": ["public.tasks"], "filters": [big]}),
    );
    let reply = ws_next(&mut ws);
    assert_eq!(reply["code"], "too_many_values", "{reply}");
    // The worst allowed by default: 32 subscriptions of 8 different
    // filters of 100 values, all of which the rows pass.
    let filters: Vec<String> = (0..8)
        .map(|f| {
            let mut values: Vec<String> = (0..99).map(|v| format!("s{f}-{v}")).collect();
            values.push("queued".into());
            format!("status=in.({})", values.join(","))
        })
        .collect();
    for s in 0..32 {
        ws_subscribe(
            &mut ws,
            json!({"type": "subscribe", "id": format!("s{s}"), "tables": ["public.tasks"], "filters": filters}),
        );
    }
    ws_send(
        &mut ws,
        json!({"type": "subscribe", "id": "one-too-many", "tables": ["public.tasks"]}),
    );
    assert_eq!(ws_next(&mut ws)["code"], "too_many_subscriptions");
    let started = Instant::now();
    stack
        .db
        .sql("insert into tasks (id, status) select g, 'queued' from generate_series(1, 1500) g");
    // Every subscription gets every event.
    let mut received = 0;
    while received < 32 * 1500 {
        let message = ws_next(&mut ws);
        assert_eq!(message["type"], "change", "{message}");
        received += 1;
    }
    let took = started.elapsed();
    // A subscriber of another table did not wait for that matching.
    assert!(
        watcher.max_gap(started) < Duration::from_secs(1),
        "delivery took {took:?}"
    );
    stack.still_running();
}

#[test]
fn unauthenticated_requests_learn_nothing() {
    let stack = Stack::start("hardening-info", "", None);
    let base = stack.base();
    // The client port says ready or not, and has no metrics.
    let (code, body) = get(&format!("{base}/readyz"), None);
    assert_eq!((code, body.as_str()), (200, r#"{"ready":true}"#));
    let (code, body) = get(&format!("{base}/metrics"), None);
    assert_eq!(code, 404);
    assert!(!body.contains("acme"), "{body}");
    // A tenant that exists and one that does not: the same answers.
    for path in ["events", "ws", "state/public.tasks"] {
        for bearer in [None, Some("garbage")] {
            let known = get(&format!("{base}/v1/acme/{path}"), bearer);
            let unknown = get(&format!("{base}/v1/zz-nobody/{path}"), bearer);
            assert_eq!(known, unknown, "{path} {bearer:?}");
            // (A plain GET of the WebSocket path is refused as not a
            // WebSocket before the token is looked at, for both alike.)
            let expected = if path == "ws" { 400 } else { 401 };
            assert_eq!(known.0, expected, "{path}");
        }
    }
    // The ops listener has the details.
    let (_, body) = get(&format!("http://127.0.0.1:{}/readyz", stack.ops_port), None);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["tenants"]["acme"]["state"], "streaming");
}

#[test]
fn state_reads_are_paged_and_cannot_block_redis() {
    let stack = Stack::start("hardening-state", "", None);
    // The issue's 15,000 mirrored rows.
    stack.db.sql(
        "insert into tasks (id, status, progress) \
         select g, 'running', g / 15000.0 from generate_series(1, 15000) g;",
    );
    let mut redis = redis_conn(&stack._redis);
    wait_until("the 15,000 rows in the mirror", || {
        redis::cmd("HLEN")
            .arg("walcast:{acme}:rowindex:public.tasks")
            .query::<usize>(&mut redis)
            .unwrap_or(0)
            == 15_000
    });
    // From here, any Redis call that takes 50 ms or more is logged.
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(50_000)
        .query::<()>(&mut redis)
        .unwrap();
    redis::cmd("SLOWLOG")
        .arg("RESET")
        .query::<()>(&mut redis)
        .unwrap();
    let _writer = Writer::start(&stack.db);
    let watcher = Watcher::start(&stack);
    let started = Instant::now();
    // Twelve clients read the whole table at once, page by page.
    let readers: Vec<_> = (0..12)
        .map(|_| {
            let base = stack.base();
            std::thread::spawn(move || {
                let mut ids = std::collections::HashSet::new();
                let (mut pages, mut busy) = (0, 0);
                let mut cursor: Option<String> = None;
                loop {
                    let url = match &cursor {
                        Some(c) => format!("{base}/v1/acme/state/public.tasks?cursor={c}"),
                        None => format!("{base}/v1/acme/state/public.tasks"),
                    };
                    let (code, body) = get(&url, Some(&operator()));
                    if code == 503 && body.contains("state_busy") {
                        busy += 1;
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                    assert_eq!(code, 200, "{body}");
                    let page: Value = serde_json::from_str(&body).unwrap();
                    let rows = page["rows"].as_array().unwrap();
                    // The default limit of 1,000, plus what Redis's scan
                    // of whole buckets adds.
                    assert!(rows.len() <= 1050, "the default limit: {}", rows.len());
                    assert_eq!(
                        page["event_ids"].as_array().unwrap().len(),
                        rows.len(),
                        "one event id per row"
                    );
                    ids.extend(rows.iter().map(|r| r["id"].as_i64().unwrap()));
                    pages += 1;
                    match page["cursor"].as_str() {
                        Some(c) => cursor = Some(c.to_owned()),
                        None => break,
                    }
                }
                (ids.len(), pages, busy)
            })
        })
        .collect();
    for reader in readers {
        let (rows, pages, busy) = reader.join().unwrap();
        assert_eq!(rows, 15_000, "every row, in {pages} pages ({busy} busy)");
        assert!(pages >= 15, "pages of at most 1,000 rows: {pages}");
    }
    let slow: Vec<Vec<redis::Value>> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(100)
        .query(&mut redis)
        .unwrap();
    assert!(slow.is_empty(), "Redis calls of 50 ms or more: {slow:?}");
    assert!(
        watcher.max_gap(started) < Duration::from_secs(1),
        "gap {:?} while /state was read",
        watcher.max_gap(started)
    );
    // A bad limit or cursor says what is wrong.
    let (code, body) = get(
        &format!("{}/v1/acme/state/public.tasks?limit=20000", stack.base()),
        Some(&operator()),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("bad_limit") && body.contains("10000"),
        "{body}"
    );
    let (code, body) = get(
        &format!("{}/v1/acme/state/public.tasks?cursor=x", stack.base()),
        Some(&operator()),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("bad_cursor"), "{body}");
    stack.still_running();
}
