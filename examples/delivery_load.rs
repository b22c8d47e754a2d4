//! The delivery benchmark (issue #5): opens N subscribers to a real
//! `walcast run` and measures commit → client latency, fan-out throughput
//! and walcast's resident memory per connection.
//!
//! It starts a throwaway Postgres (`walcast::localdev`, `wal_level=logical`,
//! the shared tasks table) and redis-server, writes a config (server, Redis
//! with a mirror rule for tasks, HS256 auth with an operator rule for every
//! table), spawns the walcast binary given (normally the release build),
//! mints one operator token and opens the subscribers: Server-Sent Events
//! over raw TCP (HTTP/1.1, chunked, parsed here with no copy of the JSON into
//! a parser), or WebSockets (tokio-tungstenite). Then a writer commits rows,
//! and every arrival's latency is its arrival wall-clock time minus the
//! event's `commit_ts` (Postgres's commit timestamp; both clocks are this
//! machine's). The arrival time is taken once per socket read, for every
//! event that read completed.
//!
//! Scenarios:
//! - `rate`: single-row INSERT transactions at `--rate` per second for
//!   `--duration` seconds (the first `--warmup` seconds are not measured);
//! - `fanout`: `--batch` rows per transaction, as fast as the subscribers
//!   take them: the writer stays at most `--window` events ahead of the
//!   slowest live subscriber, so no queue overflows and the rate measured is
//!   the rate walcast sustains;
//! - `idle`: opens the connections, writes nothing, measures walcast's RSS
//!   (then delivers one event to everyone and measures again).
//!
//! `--groups G` gives subscriber i the filter `owner=eq.<uuid of i % G>` and
//! the writer row j the owner of group j % G, so each change matches N / G
//! subscribers (1: every subscriber matches every change).
//!
//! The client runs on the same machine and competes for the same cores; its
//! CPU time is printed next to walcast's, Redis's and the wal sender's.
//!
//! Run: `bench/delivery_load.sh` (builds, raises `ulimit -n`, runs the
//! scenarios). Results: docs/benchmarks.md.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use walcast::localdev::LocalRedis;

#[path = "support/mod.rs"]
mod support;
use support::*;

const SECRET: &str = "delivery-bench-secret-that-is-long-enough";
const TENANT: &str = "acme";
/// Connections being opened at once (the listen backlog is finite).
const CONNECTING: usize = 256;
/// Read buffer of one subscriber.
const READ_BUFFER: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Rate,
    Fanout,
    Idle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    Sse,
    Ws,
}

#[derive(Debug, Parser)]
#[command(about = "walcast delivery benchmark (issue #5)")]
struct Args {
    /// The walcast binary to run.
    #[arg(long, default_value = "target/release/walcast")]
    bin: String,
    #[arg(long, value_enum, default_value = "rate")]
    scenario: Scenario,
    #[arg(long, value_enum, default_value = "sse")]
    transport: Transport,
    /// Subscribers (one connection each).
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Filter groups: each change matches subscribers / groups subscribers.
    #[arg(long, default_value_t = 1)]
    groups: usize,
    /// `rate`: transactions (one row each) per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of writing (`rate`, `fanout`).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds at the start of the writing that are not measured.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// `fanout`: rows per transaction.
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// `fanout`: most events the writer may be ahead of the slowest subscriber.
    #[arg(long, default_value_t = 1000)]
    window: u64,
    /// `[server] subscriber_queue`.
    #[arg(long, default_value_t = 4096)]
    queue: usize,
    /// Worker threads of the client's runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Read /metrics from the client port, without `[server] ops_listen`
    /// (for builds from before it existed, in A/B runs).
    #[arg(long)]
    no_ops_listen: bool,
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(args));
}

/// What one subscriber counts; shared with the writer and the report.
#[derive(Default)]
struct SubStats {
    received: AtomicU64,
    /// Cut off (a `lagged` gap, an error or the connection closed).
    ended: AtomicBool,
}

/// Everything the subscribers share.
struct Shared {
    /// Events received by all subscribers together.
    delivered: AtomicU64,
    /// Only events committed at or after this (µs since the Unix epoch) have
    /// their latency recorded; i64::MAX until the measurement starts.
    measure_from: AtomicI64,
    cancel: CancellationToken,
}

async fn run(args: Args) {
    println!("== walcast delivery benchmark: {args:?}");
    println!("load average at start: {}", loadavg());

    // -- Postgres, Redis, config, walcast.
    let pg = walcast::localdev::start_tasks_database(Default::default())
        .unwrap_or_else(|e| panic!("starting postgres with the tasks table: {e}"));
    let redis = LocalRedis::start().unwrap_or_else(|e| panic!("starting redis: {e}"));
    let port = walcast::localdev::free_port().expect("free port");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ops_addr: SocketAddr = if args.no_ops_listen {
        addr
    } else {
        format!(
            "127.0.0.1:{}",
            walcast::localdev::free_port().expect("free port")
        )
        .parse()
        .unwrap()
    };
    let ops_listen = if args.no_ops_listen {
        String::new()
    } else {
        format!("ops_listen = [\"{ops_addr}\"]\n")
    };
    let dir = std::env::temp_dir().join(format!("walcast-delivery-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("walcast.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"{addr}\"]\n{ops_listen}subscriber_queue = {queue}\n\n\
             [redis]\nurl = \"{redis}\"\n\n\
             [[mirror]]\ntable = \"public.tasks\"\nhot_when = [\"status=in.(queued,running)\"]\n\n\
             [auth]\nsecret = \"{SECRET}\"\n\n[[auth.rules]]\nrole = \"operator\"\ntable = \"*\"\n\n\
             [[tenants]]\nid = \"{TENANT}\"\nurl = \"{pg}\"\ntables = [\"public.tasks\"]\n",
            queue = args.queue,
            redis = redis.url(),
            pg = pg.url("platform"),
        ),
    )
    .unwrap();
    let mut walcast = spawn_walcast(&args.bin, &config);
    let pid = walcast.child.id();
    println!(
        "walcast pid {pid}, open files limit {}",
        max_open_files(pid)
    );

    let (db, connection) = tokio_postgres::connect(&pg.url("platform"), tokio_postgres::NoTls)
        .await
        .expect("connect to postgres");
    tokio::spawn(connection);
    // Warm the pipeline with a few rows nobody subscribes to, then delete
    // them (the deletes flow through too).
    db.batch_execute(
        "insert into tasks (id, status) select -g, 'queued' from generate_series(1, 10) g;
         delete from tasks where id < 0;",
    )
    .await
    .expect("warm-up rows");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let walsender: u32 = pg
        .psql("postgres", "select pid from pg_stat_replication")
        .expect("pg_stat_replication")
        .trim()
        .parse()
        .expect("one wal sender");
    let redis_pid = redis.pid().expect("redis pid");
    let rss_before = proc_status_kib(pid, "VmRSS");
    println!("walcast VmRSS before connecting: {rss_before} KiB");

    // -- Subscribers.
    let token = token();
    let shared = Arc::new(Shared {
        delivered: AtomicU64::new(0),
        measure_from: AtomicI64::new(i64::MAX),
        cancel: CancellationToken::new(),
    });
    let stats: Vec<Arc<SubStats>> = (0..args.subscribers)
        .map(|_| Arc::new(SubStats::default()))
        .collect();
    let connecting = Arc::new(Semaphore::new(CONNECTING));
    let opened = Instant::now();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(1024);
    let mut tasks = Vec::with_capacity(args.subscribers);
    for (i, sub) in stats.iter().enumerate() {
        let group = i % args.groups;
        let task = tokio::spawn(subscriber(
            args.transport,
            addr,
            token.clone(),
            (args.groups > 1).then(|| owner(group)),
            Arc::clone(sub),
            Arc::clone(&shared),
            Arc::clone(&connecting),
            ready_tx.clone(),
        ));
        tasks.push(task);
    }
    drop(ready_tx);
    let mut failed = 0;
    for _ in 0..args.subscribers {
        match ready_rx.recv().await.expect("a subscriber's start") {
            Ok(()) => {}
            Err(why) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("subscriber failed to start: {why}");
                }
            }
        }
    }
    let open_secs = opened.elapsed().as_secs_f64();
    assert_eq!(failed, 0, "{failed} subscribers could not subscribe");
    println!(
        "{} {:?} subscribers open in {open_secs:.2} s",
        args.subscribers, args.transport
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_open = proc_status_kib(pid, "VmRSS");
    println!(
        "walcast VmRSS with the connections open (3 s later): {rss_open} KiB; \
         per connection: {:.2} KiB",
        (rss_open as f64 - rss_before as f64) / args.subscribers as f64
    );

    // -- Write, measure.
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).collect::<Vec<f64>>();
    let me = std::process::id();
    let cpu_pids = [pid, redis_pid, walsender, me];
    let started = Instant::now();
    let written = match args.scenario {
        Scenario::Idle => {
            // One row per group: one event to every subscriber.
            let rows = write_batch(&db, 0, args.groups as u64, args.groups).await;
            wait_delivered(&stats, &args, rows, Duration::from_secs(30)).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rss_after = proc_status_kib(pid, "VmRSS");
            println!(
                "walcast VmRSS after one event to every subscriber: {rss_after} KiB; \
                 per connection: {:.2} KiB",
                (rss_after as f64 - rss_before as f64) / args.subscribers as f64
            );
            rows
        }
        Scenario::Rate | Scenario::Fanout => {
            let written = Arc::new(AtomicU64::new(0));
            let writer = {
                let written = Arc::clone(&written);
                let stats = stats.clone();
                let shared = Arc::clone(&shared);
                let (scenario, rate, duration, warmup, batch, window, groups) = (
                    args.scenario,
                    args.rate,
                    args.duration,
                    args.warmup,
                    args.batch,
                    args.window,
                    args.groups,
                );
                let db = &db;
                async move {
                    let start = Instant::now();
                    let end = start + Duration::from_secs(duration);
                    let measure = start + Duration::from_secs(warmup);
                    let mut measuring: Option<(Instant, u64, Vec<f64>)> = None;
                    let mut n = 0u64;
                    while Instant::now() < end {
                        if measuring.is_none() && Instant::now() >= measure {
                            shared.measure_from.store(unix_micros(), Ordering::Release);
                            measuring = Some((
                                Instant::now(),
                                shared.delivered.load(Ordering::Acquire),
                                cpu(&cpu_pids),
                            ));
                        }
                        match scenario {
                            Scenario::Rate => {
                                let due = start + Duration::from_micros(n * 1_000_000 / rate);
                                tokio::time::sleep_until(due.into()).await;
                                n += write_one(db, n, groups).await;
                            }
                            _ => {
                                // Stay at most `window` events ahead of the
                                // slowest live subscriber.
                                while lag(&stats, n, groups) + batch > window.max(batch) {
                                    if Instant::now() >= end {
                                        break;
                                    }
                                    tokio::time::sleep(Duration::from_micros(500)).await;
                                }
                                n += write_batch(db, n, batch, groups).await;
                            }
                        }
                        written.store(n, Ordering::Release);
                    }
                    let measured = measuring.map(|(at, delivered, cpu_at)| {
                        (
                            at.elapsed().as_secs_f64(),
                            shared.delivered.load(Ordering::Acquire) - delivered,
                            cpu(&cpu_pids)
                                .iter()
                                .zip(cpu_at)
                                .map(|(now, then)| now - then)
                                .collect::<Vec<f64>>(),
                        )
                    });
                    (n, start.elapsed().as_secs_f64(), measured)
                }
            };
            let (n, write_secs, measured) = writer.await;
            println!(
                "written: {n} events in {write_secs:.2} s ({:.0} events/s, {:.0} transactions/s)",
                n as f64 / write_secs,
                match args.scenario {
                    Scenario::Rate => n as f64 / write_secs,
                    _ => n as f64 / args.batch as f64 / write_secs,
                }
            );
            if let Some((secs, delivered, cpu)) = measured {
                println!(
                    "measured window ({secs:.2} s after the warm-up): {delivered} deliveries, \
                     {:.0} events delivered/s",
                    delivered as f64 / secs
                );
                println!(
                    "CPU in that window, % of one core: walcast {:.0} %, redis-server {:.0} %, \
                     wal sender {:.0} %, this client {:.0} %",
                    cpu[0] * 100.0 / secs,
                    cpu[1] * 100.0 / secs,
                    cpu[2] * 100.0 / secs,
                    cpu[3] * 100.0 / secs
                );
            }
            let drained = wait_delivered(&stats, &args, n, Duration::from_secs(20)).await;
            println!(
                "drained {:.2} s after the last commit",
                drained.as_secs_f64()
            );
            n
        }
    };
    let total_secs = started.elapsed().as_secs_f64();

    // -- Collect and report (walcast's counters while the subscribers are
    // still connected).
    println!("walcast delivery metrics:");
    for line in metrics(ops_addr)
        .lines()
        .filter(|l| l.starts_with("walcast_delivery_"))
    {
        println!("  {line}");
    }
    shared.cancel.cancel();
    let mut latencies: Vec<u32> = Vec::new();
    for task in tasks {
        if let Ok(mut samples) = task.await {
            latencies.append(&mut samples);
        }
    }
    let ended = stats
        .iter()
        .filter(|s| s.ended.load(Ordering::Acquire))
        .count();
    let expected: u64 = (0..args.subscribers)
        .map(|i| matching(written, i % args.groups, args.groups))
        .sum();
    let received: u64 = stats
        .iter()
        .map(|s| s.received.load(Ordering::Acquire))
        .sum();
    println!(
        "deliveries: {received} of {expected} expected ({:.3} %); subscribers cut off: {ended}",
        received as f64 * 100.0 / expected.max(1) as f64
    );
    latencies.sort_unstable();
    if !latencies.is_empty() {
        let p = |q: f64| {
            let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
            latencies[i] as f64 / 1000.0
        };
        println!(
            "latency commit → client over {} measured deliveries: p50 {:.2} ms, p90 {:.2} ms, \
             p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            latencies.len(),
            p(0.5),
            p(0.9),
            p(0.99),
            p(0.999),
            *latencies.last().unwrap() as f64 / 1000.0
        );
    }
    println!(
        "walcast VmRSS at the end {} KiB, VmHWM {} KiB",
        proc_status_kib(pid, "VmRSS"),
        proc_status_kib(pid, "VmHWM")
    );
    println!(
        "run took {total_secs:.1} s; load average at the end: {}",
        loadavg()
    );

    walcast.stop();
    drop(redis);
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The events among the first `written` that group `group` matches.
fn matching(written: u64, group: usize, groups: usize) -> u64 {
    let (g, groups) = (group as u64, groups as u64);
    written / groups + u64::from(g < written % groups)
}

/// How far the slowest live subscriber is behind `written`.
fn lag(stats: &[Arc<SubStats>], written: u64, groups: usize) -> u64 {
    stats
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.ended.load(Ordering::Relaxed))
        .map(|(i, s)| {
            matching(written, i % groups, groups).saturating_sub(s.received.load(Ordering::Relaxed))
        })
        .max()
        .unwrap_or(0)
}

/// Waits until every live subscriber has its events of the first `written`;
/// returns how long that took.
async fn wait_delivered(
    stats: &[Arc<SubStats>],
    args: &Args,
    written: u64,
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    while lag(stats, written, args.groups) > 0 {
        if start.elapsed() > timeout {
            println!(
                "gave up waiting after {} s: the slowest subscriber is {} events behind",
                timeout.as_secs(),
                lag(stats, written, args.groups)
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

/// The owner uuid of a filter group.
fn owner(group: usize) -> String {
    format!("00000000-0000-4000-8000-{group:012}")
}

/// The row image of the writer: the shape of the large_txn bench (about 480
/// bytes of event JSON).
const ROW: &str = "'queued', (g % 1000) / 1000.0, \
    jsonb_build_object('step', 'checkout', 'attempt', 1 + g % 3, 'worker', 'w-' || (g % 32)), \
    array['linux', 'x86_64', 'team ' || (g % 7)], now(), \
    ('00000000-0000-4000-8000-' || lpad((g % $3)::text, 12, '0'))::uuid";

/// One single-row INSERT transaction (row id `n`); returns 1.
async fn write_one(db: &tokio_postgres::Client, n: u64, groups: usize) -> u64 {
    write_batch(db, n, 1, groups).await
}

/// One transaction inserting rows `n .. n + rows`; returns `rows`.
async fn write_batch(db: &tokio_postgres::Client, n: u64, rows: u64, groups: usize) -> u64 {
    let sql =
        format!("insert into tasks select g, {ROW} from generate_series($1::bigint, $2::bigint) g");
    let first = n as i64;
    let last = (n + rows - 1) as i64;
    let groups = groups as i64;
    db.execute(&sql, &[&first, &last, &groups])
        .await
        .expect("insert");
    rows
}

fn token() -> String {
    let claims = serde_json::json!({
        "tenant": TENANT, "role": "operator", "sub": "bench",
        "exp": walcast::model::now_unix() + 7200,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

/// One subscriber: connects, subscribes, reports readiness, then counts and
/// times its events until cancelled. Returns its latencies in µs.
#[allow(clippy::too_many_arguments)]
async fn subscriber(
    transport: Transport,
    addr: SocketAddr,
    token: String,
    owner: Option<String>,
    stats: Arc<SubStats>,
    shared: Arc<Shared>,
    connecting: Arc<Semaphore>,
    ready: tokio::sync::mpsc::Sender<Result<(), String>>,
) -> Vec<u32> {
    let permit = connecting.acquire_owned().await.expect("semaphore");
    let opened = match transport {
        Transport::Sse => open_sse(addr, &token, owner.as_deref())
            .await
            .map(Conn::Sse),
        Transport::Ws => open_ws(addr, &token, owner.as_deref())
            .await
            .map(|ws| Conn::Ws(Box::new(ws))),
    };
    drop(permit);
    let conn = match opened {
        Ok(conn) => {
            let _ = ready.send(Ok(())).await;
            conn
        }
        Err(why) => {
            stats.ended.store(true, Ordering::Release);
            let _ = ready.send(Err(why)).await;
            return Vec::new();
        }
    };
    drop(ready);
    let mut latencies = Vec::new();
    match conn {
        Conn::Sse((stream, leftover, chunked)) => {
            read_sse(stream, leftover, chunked, &stats, &shared, &mut latencies).await
        }
        Conn::Ws(ws) => read_ws(*ws, &stats, &shared, &mut latencies).await,
    }
    latencies
}

type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

enum Conn {
    /// The socket, body bytes read with the head, and whether the body is
    /// chunked.
    Sse((TcpStream, Vec<u8>, bool)),
    Ws(Box<WsStream>),
}

async fn open_sse(
    addr: SocketAddr,
    token: &str,
    owner: Option<&str>,
) -> Result<(TcpStream, Vec<u8>, bool), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let filter = owner
        .map(|o| format!("&filter=owner=eq.{o}"))
        .unwrap_or_default();
    let request = format!(
        "GET /v1/{TENANT}/events?table=public.tasks{filter} HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write request: {e}"))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let end = loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read head: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed before the head: {}",
                String::from_utf8_lossy(&head)
            ));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = memmem::find(&head, b"\r\n\r\n") {
            break end + 4;
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
    if !text.starts_with("http/1.1 200") {
        return Err(format!("{}", String::from_utf8_lossy(&head)));
    }
    let chunked = text.contains("transfer-encoding: chunked");
    Ok((stream, head[end..].to_vec(), chunked))
}

async fn open_ws(addr: SocketAddr, token: &str, owner: Option<&str>) -> Result<WsStream, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let mut request = format!("ws://{addr}/v1/{TENANT}/ws")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| format!("websocket connect: {e}"))?;
    let mut subscribe =
        serde_json::json!({"type": "subscribe", "id": "s", "tables": ["public.tasks"]});
    if let Some(o) = owner {
        subscribe["filters"] = serde_json::json!([format!("owner=eq.{o}")]);
    }
    ws.send(Message::text(subscribe.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.contains("\"subscribed\"") => return Ok(ws),
            Some(Ok(Message::Text(text))) => return Err(text.to_string()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed before subscribed".into()),
        }
    }
}

async fn read_sse(
    mut stream: TcpStream,
    leftover: Vec<u8>,
    chunked: bool,
    stats: &SubStats,
    shared: &Shared,
    latencies: &mut Vec<u32>,
) {
    let mut decoder = Chunked::new(chunked);
    let mut body: Vec<u8> = Vec::new();
    decoder.feed(&leftover, &mut body);
    let mut buf = vec![0u8; READ_BUFFER];
    let cancelled = shared.cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        let n = tokio::select! {
            biased;
            _ = &mut cancelled => return,
            n = stream.read(&mut buf) => n,
        };
        let n = match n {
            Ok(0) | Err(_) => {
                stats.ended.store(true, Ordering::Release);
                return;
            }
            Ok(n) => n,
        };
        let now = unix_micros();
        let measure_from = shared.measure_from.load(Ordering::Relaxed);
        decoder.feed(&buf[..n], &mut body);
        let mut start = 0;
        let mut events = 0u64;
        while let Some(pos) = memmem::find(&body[start..], b"\n\n") {
            let frame = &body[start..start + pos];
            start += pos + 2;
            if memmem::find(frame, b"event: change\n").is_some() {
                events += 1;
                record(frame, now, measure_from, latencies);
            } else if memmem::find(frame, b"event: gap").is_some()
                || memmem::find(frame, b"event: error").is_some()
            {
                eprintln!("subscriber ended: {}", String::from_utf8_lossy(frame));
                stats.ended.store(true, Ordering::Release);
            }
        }
        body.drain(..start);
        if events > 0 {
            stats.received.fetch_add(events, Ordering::AcqRel);
            shared.delivered.fetch_add(events, Ordering::AcqRel);
        }
    }
}

async fn read_ws(mut ws: WsStream, stats: &SubStats, shared: &Shared, latencies: &mut Vec<u32>) {
    use tokio_tungstenite::tungstenite::Message;
    let cancelled = shared.cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        let message = tokio::select! {
            biased;
            _ = &mut cancelled => return,
            m = ws.next() => m,
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                let bytes = text.as_bytes();
                if bytes.starts_with(b"{\"type\":\"change\"") {
                    record(
                        bytes,
                        unix_micros(),
                        shared.measure_from.load(Ordering::Relaxed),
                        latencies,
                    );
                    stats.received.fetch_add(1, Ordering::AcqRel);
                    shared.delivered.fetch_add(1, Ordering::AcqRel);
                } else {
                    eprintln!("subscriber got: {text}");
                    if text.contains("\"gap\"") || text.contains("\"error\"") {
                        stats.ended.store(true, Ordering::Release);
                    }
                }
            }
            Some(Ok(Message::Close(frame))) => {
                eprintln!("subscriber closed: {frame:?}");
                stats.ended.store(true, Ordering::Release);
                return;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                stats.ended.store(true, Ordering::Release);
                return;
            }
        }
    }
}

/// Records the latency of one event (its JSON somewhere in `frame`) that
/// arrived at `now`, when it committed at or after `measure_from`.
fn record(frame: &[u8], now: i64, measure_from: i64, latencies: &mut Vec<u32>) {
    const KEY: &[u8] = b"\"commit_ts\":\"";
    let Some(at) = memmem::find(frame, KEY) else {
        return;
    };
    let Some(commit) = parse_timestamp(&frame[at + KEY.len()..]) else {
        return;
    };
    if commit >= measure_from {
        latencies.push((now - commit).clamp(0, u32::MAX as i64) as u32);
    }
}

/// HTTP/1.1 chunked transfer decoding (or none, for a body that is not).
struct Chunked {
    chunked: bool,
    state: ChunkState,
    size_line: Vec<u8>,
}

enum ChunkState {
    Size,
    Data(usize),
    /// The CRLF after a chunk's data: bytes of it still to skip.
    DataEnd(usize),
    Done,
}

impl Chunked {
    fn new(chunked: bool) -> Chunked {
        Chunked {
            chunked,
            state: ChunkState::Size,
            size_line: Vec::new(),
        }
    }

    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        if !self.chunked {
            out.extend_from_slice(input);
            return;
        }
        while !input.is_empty() {
            match self.state {
                ChunkState::Size => match memchr::memchr(b'\n', input) {
                    Some(i) => {
                        self.size_line.extend_from_slice(&input[..i]);
                        input = &input[i + 1..];
                        let line = String::from_utf8_lossy(&self.size_line);
                        let hex = line.split(';').next().unwrap_or("").trim();
                        let size = usize::from_str_radix(hex, 16).unwrap_or(0);
                        self.size_line.clear();
                        self.state = if size == 0 {
                            ChunkState::Done
                        } else {
                            ChunkState::Data(size)
                        };
                    }
                    None => {
                        self.size_line.extend_from_slice(input);
                        return;
                    }
                },
                ChunkState::Data(left) => {
                    let take = left.min(input.len());
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.state = if take == left {
                        ChunkState::DataEnd(2)
                    } else {
                        ChunkState::Data(left - take)
                    };
                }
                ChunkState::DataEnd(left) => {
                    let skip = left.min(input.len());
                    input = &input[skip..];
                    self.state = if skip == left {
                        ChunkState::Size
                    } else {
                        ChunkState::DataEnd(left - skip)
                    };
                }
                ChunkState::Done => return,
            }
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// User + system CPU time of a process so far, from /proc/<pid>/stat
/// (fields 14 and 15, in clock ticks of 1/100 s on Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces: count from after its ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat format") + 2..]
        .split(' ')
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// The soft "Max open files" of a process.
fn max_open_files(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| l.split_whitespace().nth(3).unwrap_or("?").to_owned())
        })
        .unwrap_or_else(|| "?".into())
}
