//! The load of `bench/abuse.sh`: every attack of the hardening review at
//! once against `walcast run` with the default `[server]` limits, while a
//! normal subscriber's commit → client latency is measured.
//!
//! It starts its own Postgres, redis-server and walcast (the binary given
//! with `--bin`), then:
//!
//! - quiet (`--quiet-secs`): a writer commits one environment row every 50 ms;
//!   a normal SSE subscriber of `public.environments` records the latency of
//!   each (arrival time minus the event's `commit_ts`);
//! - abuse (`--abuse-secs`), the same, and at once: 2,000 connections that
//!   send unfinished request heads to various paths and are reopened when
//!   walcast closes them; 10 WebSockets with 32 subscriptions each that
//!   never read (replaced every 40 s) and 20 rows of 100 KB every 5 s for
//!   them; a WebSocket with the costliest subscriptions the limits allow
//!   (32 × 8 filters of 100 values) that reads, and 1,500 task rows every
//!   10 s; 12 clients asking for `/state` of the mirrored table in a loop;
//!   a client probing an unknown tenant and `/metrics` on the client port.
//!
//! It prints p50/p99/max of each phase, walcast's peak RSS in each, its
//! refusal and timeout counters, and whether it is still the same process.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use walcast::localdev::LocalRedis;

#[path = "support/mod.rs"]
mod support;
use support::*;

const SECRET: &str = "abuse-bench-secret-that-is-long-enough";

#[derive(Parser, Debug)]
struct Args {
    /// The walcast binary to run.
    #[arg(long, default_value = "target/release/walcast")]
    bin: String,
    #[arg(long, default_value_t = 30)]
    quiet_secs: u64,
    #[arg(long, default_value_t = 120)]
    abuse_secs: u64,
    /// Leave out the `/state` readers (to tell what they cost from what
    /// the rest does).
    #[arg(long)]
    no_state: bool,
}

const QUIET: u8 = 0;
const ABUSE: u8 = 1;
const DONE: u8 = 2;

fn main() {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(args));
}

fn token() -> String {
    let claims = serde_json::json!({
        "tenant": "acme", "role": "operator", "sub": "bench",
        "exp": walcast::model::now_unix() + 7200,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

async fn run(args: Args) {
    let pg = walcast::localdev::start_tasks_database(Default::default())
        .unwrap_or_else(|e| panic!("starting postgres: {e}"));
    pg.psql(
        "platform",
        "create table environments (id bigint primary key, name text, active bool)",
    )
    .expect("environments table");
    let redis = LocalRedis::start().unwrap_or_else(|e| panic!("starting redis: {e}"));
    let port = walcast::localdev::free_port().unwrap();
    let ops_port = walcast::localdev::free_port().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ops: SocketAddr = format!("127.0.0.1:{ops_port}").parse().unwrap();
    let dir = std::env::temp_dir().join(format!("walcast-abuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("walcast.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"{addr}\"]\nops_listen = [\"{ops}\"]\n\n\
             [redis]\nurl = \"{}\"\n\n\
             [[mirror]]\ntable = \"public.tasks\"\nhot_when = [\"status=in.(queued,running)\"]\n\n\
             [auth]\nsecret = \"{SECRET}\"\n\n[[auth.rules]]\nrole = \"operator\"\ntable = \"*\"\n\n\
             [[tenants]]\nid = \"acme\"\nurl = \"{}\"\ntables = [\"public.tasks\", \"public.environments\"]\n",
            redis.url(),
            pg.url("platform")
        ),
    )
    .unwrap();
    let mut walcast = spawn_walcast(&args.bin, &config);
    let pid = walcast.child.id();
    let (db, connection) = tokio_postgres::connect(&pg.url("platform"), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let db = Arc::new(db);

    let phase = Arc::new(AtomicU8::new(QUIET));
    let latencies: Arc<Mutex<Vec<(u8, u32)>>> = Arc::default();
    tokio::spawn(subscriber(addr, Arc::clone(&phase), Arc::clone(&latencies)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The writer.
    {
        let db = Arc::clone(&db);
        let phase = Arc::clone(&phase);
        tokio::spawn(async move {
            let mut n = 0i64;
            while phase.load(Ordering::Relaxed) != DONE {
                n += 1;
                let _ = db
                    .execute("insert into environments values ($1, 'env', true)", &[&n])
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    let mut peak = [0u64; 2];
    let sample = |peak: &mut u64| *peak = (*peak).max(proc_status_kib(pid, "VmRSS") * 1024);
    let quiet_end = Instant::now() + Duration::from_secs(args.quiet_secs);
    while Instant::now() < quiet_end {
        sample(&mut peak[0]);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    println!("abuse starts");
    phase.store(ABUSE, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let heads_open = Arc::new(AtomicUsize::new(0));
    tokio::spawn(unfinished_heads(
        addr,
        Arc::clone(&stop),
        Arc::clone(&heads_open),
    ));
    tokio::spawn(stalled_websockets(addr, Arc::clone(&stop)));
    tokio::spawn(heavy_matcher(addr, Arc::clone(&stop)));
    for _ in 0..if args.no_state { 0 } else { 12 } {
        tokio::spawn(state_reader(addr, Arc::clone(&stop)));
    }
    tokio::spawn(prober(addr, Arc::clone(&stop)));
    {
        let db = Arc::clone(&db);
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut round = 0i64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let base = round * 100_000;
                let _ = db
                    .batch_execute(&format!(
                        "insert into tasks (id, status, payload) select {base} + g, 'big', jsonb_build_object('blob', repeat('x', 100000)) from generate_series(1, 20) g"
                    ))
                    .await;
                if round % 2 == 0 {
                    let _ = db
                        .batch_execute(&format!(
                            "insert into tasks (id, status) select {base} + 1000 + g, 'queued' from generate_series(1, 1500) g"
                        ))
                        .await;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
    }
    let abuse_end = Instant::now() + Duration::from_secs(args.abuse_secs);
    while Instant::now() < abuse_end {
        sample(&mut peak[1]);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    phase.store(DONE, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let latencies = latencies.lock().unwrap().clone();
    for (name, which) in [("quiet", QUIET), ("under abuse", ABUSE)] {
        let mut of: Vec<u32> = latencies
            .iter()
            .filter(|(p, _)| *p == which)
            .map(|(_, l)| *l)
            .collect();
        of.sort_unstable();
        let at = |q: f64| -> f64 {
            if of.is_empty() {
                return f64::NAN;
            }
            of[((of.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0
        };
        println!(
            "{name}: {} changes, commit → client p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; walcast peak RSS {:.1} MiB",
            of.len(),
            at(0.5),
            at(0.99),
            at(1.0),
            peak[usize::from(which)] as f64 / (1 << 20) as f64,
        );
    }
    let metrics = metrics(ops);
    for line in metrics.lines().filter(|l| {
        l.starts_with("walcast_http_")
            || l.starts_with("walcast_delivery_slow_disconnects_total")
            || l.starts_with("walcast_tenant_reconnects_total")
    }) {
        println!("  {line}");
    }
    let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
    println!("walcast still running as pid {pid}: {alive}");
    walcast.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The normal subscriber: SSE over HTTP/1.0 (the body ends at close).
async fn subscriber(addr: SocketAddr, phase: Arc<AtomicU8>, latencies: Arc<Mutex<Vec<(u8, u32)>>>) {
    let mut stream = TcpStream::connect(addr).await.expect("subscriber connects");
    let request = format!(
        "GET /v1/acme/events?table=public.environments HTTP/1.0\r\nAuthorization: Bearer {}\r\n\r\n",
        token()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        const KEY: &str = "\"commit_ts\":\"";
        let Some(at) = data.find(KEY) else { continue };
        let Some(commit) = parse_timestamp(&data.as_bytes()[at + KEY.len()..]) else {
            continue;
        };
        let latency = (unix_micros() - commit).clamp(0, i64::from(u32::MAX)) as u32;
        latencies
            .lock()
            .unwrap()
            .push((phase.load(Ordering::Relaxed), latency));
    }
    eprintln!("the normal subscriber's stream ended");
}

async fn unfinished_heads(addr: SocketAddr, stop: Arc<AtomicBool>, open: Arc<AtomicUsize>) {
    const HEADS: [&str; 5] = [
        "GET /healthz HTTP/1.1\r\nHost: x\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\n",
        "GET /v1/acme/ws HTTP/1.1\r\nHost: x\r\n",
        "GET /v1/acme/state/public.tasks HTTP/1.1\r\nHost: x\r\n",
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        while open.load(Ordering::Relaxed) < 2000 && !stop.load(Ordering::Relaxed) {
            let Ok(mut socket) = TcpStream::connect(addr).await else {
                break;
            };
            n += 1;
            let _ = socket.write_all(HEADS[n % HEADS.len()].as_bytes()).await;
            open.fetch_add(1, Ordering::Relaxed);
            let open = Arc::clone(&open);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(read) = socket.read(&mut buf).await {
                    if read == 0 {
                        break;
                    }
                }
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A WebSocket on a socket that holds at most 64 KiB unread.
async fn websocket(addr: SocketAddr) -> Option<Ws> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.set_recv_buffer_size(64 * 1024).ok()?;
    let stream = socket.connect(addr).await.ok()?;
    let url = format!("ws://{addr}/v1/acme/ws?access_token={}", token());
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await.ok()?;
    Some(ws)
}

async fn subscribe(ws: &mut Ws, id: usize, filters: &[String]) -> Option<()> {
    let message = serde_json::json!({"type": "subscribe", "id": format!("s{id}"), "tables": ["public.tasks"], "filters": filters});
    ws.send(Message::text(message.to_string())).await.ok()?;
    loop {
        match ws.next().await?.ok()? {
            Message::Text(text) if text.contains("subscribed") => return Some(()),
            Message::Text(_) => return None,
            _ => continue,
        }
    }
}

async fn stalled_websockets(addr: SocketAddr, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let mut held = Vec::new();
        for _ in 0..10 {
            if let Some(mut ws) = websocket(addr).await {
                for s in 0..32 {
                    if subscribe(&mut ws, s, &[]).await.is_none() {
                        break;
                    }
                }
                held.push(ws);
            }
        }
        // They read nothing from here on.
        tokio::time::sleep(Duration::from_secs(40)).await;
        drop(held);
    }
}

async fn heavy_matcher(addr: SocketAddr, stop: Arc<AtomicBool>) {
    let filters: Vec<String> = (0..8)
        .map(|f| {
            let mut values: Vec<String> = (0..99).map(|v| format!("s{f}-{v}")).collect();
            values.push("queued".into());
            format!("status=in.({})", values.join(","))
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let Some(mut ws) = websocket(addr).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        for s in 0..32 {
            if subscribe(&mut ws, s, &filters).await.is_none() {
                break;
            }
        }
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_secs(1), ws.next()).await {
                Ok(Some(Ok(_))) | Err(_) => {}
                Ok(_) => break,
            }
        }
    }
}

async fn get(addr: SocketAddr, path: &str, bearer: Option<&str>) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return;
    };
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.0\r\n{auth}\r\n");
    if stream.write_all(request.as_bytes()).await.is_ok() {
        let mut body = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut body)).await;
    }
}

async fn state_reader(addr: SocketAddr, stop: Arc<AtomicBool>) {
    let token = token();
    while !stop.load(Ordering::Relaxed) {
        get(addr, "/v1/acme/state/public.tasks", Some(&token)).await;
    }
}

async fn prober(addr: SocketAddr, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        get(addr, "/v1/nobody/events", None).await;
        get(addr, "/metrics", None).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
