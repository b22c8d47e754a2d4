//! `walcast demo`: the whole system on one machine with nothing set up.
//!
//! Owns the demo's throwaway world and nothing else: two Postgres clusters
//! (tenants `acme` and `globex`, each with `sql/example_schema.sql` in a
//! `platform` database) and a redis-server, all from the installed binaries
//! in temp dirs (`localdev`); a generated configuration with a random HS256
//! secret; tokens for each tenant; and a generator writing task, environment,
//! deployment and audit activity. walcast itself runs unchanged as
//! [`app::run`](crate::app::run) on that configuration, serving the inspector
//! and the client API on 127.0.0.1. Once every tenant streams, the demo prints
//! the URLs, tokens and commands to try on standard output (progress goes to
//! standard error). Ctrl-C (or SIGTERM) stops walcast, the generator, both
//! clusters and Redis, and removes their temp dirs.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::app::AppError;
use crate::config::{self, Config};
use crate::localdev::{LocalError, LocalPostgres, LocalRedis};

const EXAMPLE_SCHEMA: &str = include_str!("../sql/example_schema.sql");
/// The tenants, one cluster each.
const TENANTS: [&str; 2] = ["acme", "globex"];
/// The tables each tenant streams (those of sql/example_schema.sql).
const TABLES: [&str; 4] = [
    "public.tasks",
    "public.environments",
    "public.deployments",
    "public.audit_log",
];
/// The database the example schema lives in.
const DATABASE: &str = "platform";
/// Where the inspector and API listen unless `--port` says otherwise.
const DEFAULT_PORT: u16 = 8080;
/// How long the printed tokens are valid.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The generator writes one step per tenant every this long, plus up to
/// [`GENERATOR_JITTER_MS`].
const GENERATOR_INTERVAL: Duration = Duration::from_millis(500);
const GENERATOR_JITTER_MS: u64 = 500;
/// Tasks a tenant works on at once; also its number of environments.
const MAX_TASKS_IN_FLIGHT: usize = 3;
/// Tasks inserted by the printed psql line get ids above this; the
/// generator's ids count up from 1 (one task every few seconds).
const HAND_TASK_IDS: i64 = 1_000_000;
/// How long a task stays in the mirror after leaving the hot set (succeeded
/// or failed), so a client sees how it ended: `keep_cold_for_secs`.
const KEEP_COLD_SECS: u64 = 60;
/// How often `/readyz` is asked while the tenants connect.
const READY_POLL: Duration = Duration::from_millis(200);
/// After this long without every tenant streaming, say what `/readyz` says.
const READY_PATIENCE: Duration = Duration::from_secs(30);

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Programs the demo needs are not installed; says what to install.
    #[error("demo needs {0}")]
    Missing(String),
    #[error("demo: could not start {what}")]
    Start {
        what: String,
        // Boxed: a LocalError is large, and every demo step returns DemoError.
        #[source]
        source: Box<LocalError>,
    },
    #[error("demo: could not load the example schema into {tenant}'s cluster")]
    Schema {
        tenant: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("demo: could not read random bytes for the token secret from /dev/urandom")]
    Random(#[source] std::io::Error),
    #[error("demo: internal config is invalid")]
    Config(#[source] config::ConfigError),
    #[error("demo: could not sign a token")]
    Token(#[source] jsonwebtoken::errors::Error),
    #[error("demo: could not serve HTTP on 127.0.0.1:{port}; choose another port with --port")]
    PortTaken {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("demo: could not serve HTTP on 127.0.0.1:{port}; choose another port with --port")]
    Listen {
        port: u16,
        #[source]
        source: crate::http::ListenError,
    },
    #[error(transparent)]
    App(#[from] AppError),
}

/// One tenant's cluster.
struct Tenant {
    id: &'static str,
    pg: LocalPostgres,
}

/// How waiting for the tenants to stream ended.
enum Wait {
    /// `/readyz` says every tenant streams.
    Ready,
    /// Ctrl-C came first.
    Cancelled,
    /// walcast ended by itself (e.g. the port is taken), with this result.
    Ended(AppResult),
}

type AppResult = Result<Result<(), AppError>, tokio::task::JoinError>;

/// `walcast demo [--port PORT]`: runs until `root` is cancelled (Ctrl-C),
/// then removes everything it started.
pub async fn demo(port: Option<u16>, root: CancellationToken) -> Result<(), DemoError> {
    let started = Instant::now();
    check_installed()?;
    cancel_on_signal(&root)?;
    let port = choose_port(port)?;

    eprintln!("demo: starting two throwaway PostgreSQL clusters (wal_level=logical) and a redis-server...");
    let (redis, tenants) = start_servers().await?;
    let dirs: Vec<PathBuf> = tenants
        .iter()
        .map(|t| t.pg.socket_dir().to_owned())
        .chain([redis.dir().to_owned()])
        .collect();
    let result = serve(port, started, &redis, &tenants, &dirs, &root).await;

    eprintln!("demo: stopping the clusters and redis-server, removing their temp dirs...");
    tokio::task::spawn_blocking(move || drop((tenants, redis)))
        .await
        .expect("dropping the demo servers panicked");
    let left: Vec<String> = dirs
        .iter()
        .filter(|d| d.exists())
        .map(|d| d.display().to_string())
        .collect();
    if left.is_empty() {
        eprintln!("demo: stopped; everything it started is gone");
    } else {
        eprintln!("demo: stopped, but could not remove {}", left.join(", "));
    }
    result
}

/// Loads the example schema, runs walcast on the demo configuration and,
/// once every tenant streams, the generator, until Ctrl-C; then stops both.
async fn serve(
    port: u16,
    started: Instant,
    redis: &LocalRedis,
    tenants: &[Tenant],
    dirs: &[PathBuf],
    root: &CancellationToken,
) -> Result<(), DemoError> {
    // One connection per tenant, for the generator.
    let mut clients = Vec::new();
    for tenant in tenants {
        clients.push(load_schema(tenant).await?);
    }
    let secret = random_secret()?;
    let urls: Vec<(&str, String)> = tenants.iter().map(|t| (t.id, t.pg.url(DATABASE))).collect();
    let config = demo_config(port, &secret, &redis.url(), &urls)?;
    let shutdown_timeout = config.shutdown_timeout;
    let tokens = tenants
        .iter()
        .map(|t| mint_token(&secret, t.id))
        .collect::<Result<Vec<_>, _>>()?;
    if root.is_cancelled() {
        return Ok(());
    }

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    eprintln!("demo: starting walcast for tenants acme and globex on http://{addr}...");
    let mut app = tokio::spawn(crate::app::run(config, root.clone()));
    let generators = CancellationToken::new();
    let mut running = Vec::new();
    let ended = match wait_ready(addr, &mut app, root).await {
        Wait::Ready => {
            for (index, (tenant, client)) in tenants.iter().zip(clients).enumerate() {
                let activity = Activity::new(tenant.id, index as u64);
                running.push(tokio::spawn(generate(client, activity, generators.clone())));
            }
            print_ready(addr, started.elapsed(), tenants, &tokens, redis, dirs);
            tokio::select! {
                // Ctrl-C or SIGTERM (or a tenant's fatal error, which cancels root too).
                _ = root.cancelled() => None,
                // walcast ended by itself; its result says why.
                result = &mut app => Some(result),
            }
        }
        Wait::Cancelled => None,
        Wait::Ended(result) => Some(result),
    };
    root.cancel();
    generators.cancel();
    for generator in running {
        let _ = generator.await;
    }
    let result = match ended {
        Some(result) => result,
        None => {
            eprintln!("demo: stopping walcast...");
            // app::run keeps to shutdown_timeout itself; the margin is for its last words.
            tokio::time::timeout(shutdown_timeout + Duration::from_secs(5), app)
                .await
                .map_err(|_| AppError::ShutdownTimeout(shutdown_timeout))?
        }
    };
    match result {
        Ok(Err(AppError::Listen(source))) => Err(DemoError::Listen { port, source }),
        Ok(result) => result.map_err(DemoError::from),
        Err(join) => panic!("walcast task panicked: {join}"),
    }
}

/// Cancels `root` on SIGINT or SIGTERM from now on, so that a Ctrl-C during
/// start-up still cleans up. (`app::run` adds its own handler, which logs.)
fn cancel_on_signal(root: &CancellationToken) -> Result<(), DemoError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).map_err(AppError::Signals)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(AppError::Signals)?;
    let root = root.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        root.cancel();
    });
    Ok(())
}

/// Fails with one line naming what to install when the server programs
/// are missing (both at once when both are).
fn check_installed() -> Result<(), DemoError> {
    let postgres = LocalPostgres::check_installed();
    let redis = LocalRedis::check_installed();
    let postgres_missing = matches!(postgres, Err(LocalError::PostgresNotInstalled));
    let redis_missing = matches!(redis, Err(LocalError::RedisNotInstalled));
    let missing = match (postgres_missing, redis_missing) {
        (true, true) => Some("the PostgreSQL server binaries (initdb, pg_ctl) and redis-server: apt-get install postgresql redis-server"),
        (true, false) => Some("the PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql"),
        (false, true) => Some("redis-server: apt-get install redis-server"),
        (false, false) => None,
    };
    if let Some(missing) = missing {
        return Err(DemoError::Missing(missing.to_string()));
    }
    // Anything else (e.g. root without a `postgres` user) says its own fix.
    postgres.map_err(|source| DemoError::Start {
        what: "PostgreSQL".into(),
        source: Box::new(source),
    })?;
    redis.map_err(|source| DemoError::Start {
        what: "redis-server".into(),
        source: Box::new(source),
    })
}

/// `--port`, or 8080 when it is free, or else any free port (saying so).
fn choose_port(requested: Option<u16>) -> Result<u16, DemoError> {
    if let Some(port) = requested {
        // Fail before starting any server; walcast binds it again later.
        TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .map_err(|source| DemoError::PortTaken { port, source })?;
        return Ok(port);
    }
    // Someone may take it before walcast binds; walcast then says so.
    if TcpListener::bind((Ipv4Addr::LOCALHOST, DEFAULT_PORT)).is_ok() {
        return Ok(DEFAULT_PORT);
    }
    let port = crate::localdev::free_port().map_err(|source| DemoError::Start {
        what: "the HTTP server (no free port)".into(),
        source: Box::new(source),
    })?;
    eprintln!("demo: 127.0.0.1:{DEFAULT_PORT} is taken; serving on 127.0.0.1:{port} instead (choose with --port)");
    Ok(port)
}

/// Starts Redis and both clusters in parallel (initdb takes a moment).
async fn start_servers() -> Result<(LocalRedis, Vec<Tenant>), DemoError> {
    let redis = tokio::task::spawn_blocking(LocalRedis::start);
    let clusters = TENANTS.map(|id| (id, tokio::task::spawn_blocking(LocalPostgres::start)));
    // Await every start before failing, so that whatever did start is dropped (removed).
    let redis = redis.await.expect("redis start task panicked");
    let mut tenants = Vec::new();
    let mut failed = None;
    for (id, start) in clusters {
        match start.await.expect("postgres start task panicked") {
            Ok(pg) => tenants.push(Tenant { id, pg }),
            Err(source) => {
                failed.get_or_insert(DemoError::Start {
                    what: format!("a PostgreSQL cluster for tenant {id}"),
                    source: Box::new(source),
                });
            }
        }
    }
    let redis = redis.map_err(|source| DemoError::Start {
        what: "redis-server".into(),
        source: Box::new(source),
    })?;
    match failed {
        Some(error) => Err(error),
        None => Ok((redis, tenants)),
    }
}

/// Creates the `platform` database with the example schema and returns a
/// connection to it (the generator's).
async fn load_schema(tenant: &Tenant) -> Result<tokio_postgres::Client, DemoError> {
    let schema_error = |source| DemoError::Schema {
        tenant: tenant.id,
        source,
    };
    let admin = connect(&tenant.pg.url("postgres"))
        .await
        .map_err(schema_error)?;
    admin
        .batch_execute(&format!("create database {DATABASE}"))
        .await
        .map_err(schema_error)?;
    let client = connect(&tenant.pg.url(DATABASE))
        .await
        .map_err(schema_error)?;
    client
        .batch_execute(EXAMPLE_SCHEMA)
        .await
        .map_err(schema_error)?;
    Ok(client)
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    // Ends when the client is dropped.
    tokio::spawn(connection);
    Ok(client)
}

/// 32 random bytes as 64 hex characters (HS256 wants at least 32 bytes).
fn random_secret() -> Result<String, DemoError> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(DemoError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The configuration walcast runs with: both tenants, the local Redis with
/// mirror rules for tasks and environments, the server on 127.0.0.1:`port`,
/// and `[auth]` letting the operator role read every table.
fn demo_config(
    port: u16,
    secret: &str,
    redis_url: &str,
    tenants: &[(&str, String)],
) -> Result<Config, DemoError> {
    let tables = TABLES.map(|t| format!("\"{t}\"")).join(", ");
    let mut text = format!(
        r#"print_events = false

[server]
listen = ["127.0.0.1:{port}"]
# /readyz answers 200 only once every tenant streams: the demo waits for it.
ready_grace_secs = 0

[redis]
url = "{redis_url}"

[[mirror]]
table = "public.tasks"
hot_when = ["status=in.(queued,running)"]
keep_cold_for_secs = {KEEP_COLD_SECS}
index = ["status"]

[[mirror]]
table = "public.environments"
hot_when = ["status=neq.released"]
index = ["status"]

[auth]
secret = "{secret}"

[[auth.rules]]
role = "operator"
table = "*"
"#
    );
    for (id, url) in tenants {
        text.push_str(&format!(
            "\n[[tenants]]\nid = \"{id}\"\nurl = \"{url}\"\ntables = [{tables}]\n"
        ));
    }
    config::parse(Path::new("<demo>"), &text, &|_| None).map_err(DemoError::Config)
}

/// An operator token for `tenant`, valid for [`TOKEN_TTL`].
fn mint_token(secret: &str, tenant: &str) -> Result<String, DemoError> {
    let claims = serde_json::json!({
        "tenant": tenant,
        "role": "operator",
        "sub": "demo",
        "exp": crate::model::now_unix() + TOKEN_TTL.as_secs(),
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(DemoError::Token)
}

/// Waits until `/readyz` says every tenant streams, Ctrl-C, or walcast
/// ending by itself.
async fn wait_ready(
    addr: SocketAddr,
    app: &mut tokio::task::JoinHandle<Result<(), AppError>>,
    root: &CancellationToken,
) -> Wait {
    let since = Instant::now();
    let mut told = false;
    loop {
        tokio::select! {
            biased;
            // Ctrl-C while the tenants connect.
            _ = root.cancelled() => return Wait::Cancelled,
            // walcast gave up (e.g. the port is taken).
            result = &mut *app => return Wait::Ended(result),
            _ = tokio::time::sleep(READY_POLL) => {}
        }
        match get_readyz(addr).await {
            Some((true, _)) => return Wait::Ready,
            Some((false, body)) if !told && since.elapsed() > READY_PATIENCE => {
                eprintln!("demo: still waiting for every tenant to stream; /readyz says {body}");
                told = true;
            }
            _ => {}
        }
    }
}

/// `GET /readyz` over a plain HTTP/1.0 connection: (200?, body), or `None`
/// while walcast does not answer yet.
async fn get_readyz(addr: SocketAddr) -> Option<(bool, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status_ok = text.split(' ').nth(1) == Some("200");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim();
        Some((status_ok, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

/// What to try, on standard output.
fn print_ready(
    addr: SocketAddr,
    took: Duration,
    tenants: &[Tenant],
    tokens: &[String],
    redis: &LocalRedis,
    dirs: &[PathBuf],
) {
    let base = format!("http://{addr}");
    let acme = &tokens[0];
    let mut out = format!(
        "\nwalcast demo is ready ({:.1} s): tenants acme and globex stream into Redis at {}, \
         and a generator writes task, environment, deployment and audit activity into both.\n\n",
        took.as_secs_f64(),
        redis.url()
    );
    out.push_str(&format!(
        "Inspector (acme's tasks, live), open in a browser:\n  {base}/?tenant=acme&table=public.tasks&token={acme}&autostart=1\n\n"
    ));
    out.push_str("Tokens (role operator, every table, valid 24 h):\n");
    for (tenant, token) in tenants.iter().zip(tokens) {
        out.push_str(&format!("  {:<7} {token}\n", tenant.id));
    }
    out.push_str(&format!(
        "\nRunning tasks as Server-Sent Events:\n  curl -N -H \"Authorization: Bearer {acme}\" \"{base}/v1/acme/events?table=public.tasks&filter=status=eq.running\"\n"
    ));
    out.push_str(&format!(
        "Hot tasks (queued, running; rows that left stay {KEEP_COLD_SECS} s) mirrored in Redis:\n  curl -H \"Authorization: Bearer {acme}\" {base}/v1/acme/state/public.tasks\n"
    ));
    // Node.js has a WebSocket client built in from 20.10 (behind this flag
    // until 22); websocat and wscat are not in Debian.
    out.push_str(&format!(
        "globex's environments over the WebSocket API (Node.js 20.10 or later):\n  node --experimental-websocket --no-warnings -e 'const ws = new WebSocket(\"ws://{addr}/v1/globex/ws?access_token={}\"); ws.onopen = () => ws.send(JSON.stringify({{type: \"subscribe\", id: \"t\", tables: [\"public.environments\"]}})); ws.onmessage = (m) => console.log(m.data); ws.onclose = (e) => console.log(\"closed\", e.code, e.reason)'\n",
        tokens[1]
    ));
    out.push_str("Write a change yourself (it shows up in the SSE stream above):\n");
    // Repeatable: each run takes the next id above HAND_TASK_IDS, a range the
    // generator (counting up from 1) does not reach.
    out.push_str(&format!(
        "  psql {} -c \"insert into tasks (id, status, tags) select coalesce(max(id), {HAND_TASK_IDS}) + 1, 'running', '{{by-hand}}' from tasks where id > {HAND_TASK_IDS}\"\n",
        tenants[0].pg.url(DATABASE)
    ));
    for tenant in &tenants[1..] {
        out.push_str(&format!(
            "  psql {}   # {}\n",
            tenant.pg.url(DATABASE),
            tenant.id
        ));
    }
    out.push_str(&format!(
        "\nFiles: {} (removed on exit). Ctrl-C stops and removes everything.\n",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    print!("{out}");
    // The test (and a user piping the output) reads this before any event.
    let _ = std::io::Write::flush(&mut std::io::stdout());
}

/// Writes `activity`'s steps into one tenant's database until cancelled.
async fn generate(
    client: tokio_postgres::Client,
    mut activity: Activity,
    cancel: CancellationToken,
) {
    loop {
        let pause =
            GENERATOR_INTERVAL + Duration::from_millis(activity.random(GENERATOR_JITTER_MS));
        tokio::select! {
            biased;
            // Ctrl-C: stop writing.
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let sql = activity.next_step();
        tokio::select! {
            biased;
            // Ctrl-C mid-write: the transaction is rolled back or committed; either is fine.
            _ = cancel.cancelled() => return,
            result = client.batch_execute(&sql) => {
                if let Err(error) = result {
                    tracing::warn!(tenant = activity.tenant, %error, "demo generator write failed");
                }
            }
        }
    }
}

/// One tenant's simulated platform, as SQL: tasks are queued, then run on
/// an environment from a small pool (allocated), report progress, and
/// succeed (deploying to their environment) or fail; the environment is
/// released; every step adds an audit_log row.
struct Activity {
    tenant: &'static str,
    /// xorshift64 state; the demo needs variety, not quality.
    rng: u64,
    next_task: i64,
    next_version: u64,
    tasks: Vec<SimTask>,
    free_environments: Vec<i32>,
}

struct SimTask {
    id: i64,
    /// The environment it runs on; `None` while queued.
    environment: Option<i32>,
    progress: f64,
}

/// What tasks run, by tag.
const TASK_KINDS: [(&str, &str); 4] = [
    ("build", "api"),
    ("test", "web"),
    ("migrate", "billing"),
    ("lint", "docs"),
];
/// Owners of the tasks (owner_id).
const OWNERS: [&str; 3] = [
    "6f1c2a3e-0000-4000-8000-00000000a001",
    "6f1c2a3e-0000-4000-8000-00000000a002",
    "6f1c2a3e-0000-4000-8000-00000000a003",
];
/// The steps a running task reports, in order.
const STEPS: [&str; 4] = ["checkout", "build", "test", "package"];

impl Activity {
    fn new(tenant: &'static str, index: u64) -> Activity {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
        Activity {
            tenant,
            // Never zero, which xorshift cannot leave.
            rng: (nanos ^ (index + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1,
            next_task: 1,
            next_version: 1,
            tasks: Vec::new(),
            free_environments: (1..=MAX_TASKS_IN_FLIGHT as i32).rev().collect(),
        }
    }

    /// A number in `0..bound`.
    fn random(&mut self, bound: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % bound.max(1)
    }

    /// The SQL of the next step: queue a task, or move one along.
    fn next_step(&mut self) -> String {
        let room = self.tasks.len() < MAX_TASKS_IN_FLIGHT;
        if self.tasks.is_empty() || (room && self.random(3) == 0) {
            return self.queue();
        }
        let index = self.random(self.tasks.len() as u64) as usize;
        if self.tasks[index].environment.is_none() {
            self.start(index)
        } else if self.tasks[index].progress < 0.7 {
            self.progress(index)
        } else {
            self.finish(index)
        }
    }

    fn queue(&mut self) -> String {
        let id = self.next_task;
        self.next_task += 1;
        let (kind, service) = TASK_KINDS[self.random(TASK_KINDS.len() as u64) as usize];
        let owner = OWNERS[self.random(OWNERS.len() as u64) as usize];
        self.tasks.push(SimTask {
            id,
            environment: None,
            progress: 0.0,
        });
        format!(
            "insert into tasks (id, status, payload, tags, owner_id) \
               values ({id}, 'queued', '{{\"service\": \"{service}\"}}', '{{{kind},{service}}}', '{owner}');
             insert into audit_log (actor, action, detail) \
               values ('scheduler', 'task.queued', '{{\"task\": {id}, \"service\": \"{service}\"}}');"
        )
    }

    /// Allocates an environment and runs the task on it.
    fn start(&mut self, index: usize) -> String {
        // As many environments as tasks in flight, so one is always free.
        let environment = self
            .free_environments
            .pop()
            .expect("an environment per task in flight");
        let task = &mut self.tasks[index];
        task.environment = Some(environment);
        task.progress = 0.1;
        let id = task.id;
        format!(
            "begin;
             update tasks set status = 'running', progress = 0.1, \
               payload = payload || '{{\"step\": \"{}\", \"environment\": {environment}}}', updated_at = now() \
               where id = {id};
             insert into environments (id, name, status, allocated_to) \
               values ({environment}, 'env-{environment}', 'active', {id}) \
               on conflict (id) do update set status = 'active', allocated_to = {id}, updated_at = now();
             insert into audit_log (actor, action, detail) \
               values ('scheduler', 'environment.allocated', '{{\"task\": {id}, \"environment\": {environment}}}');
             commit;",
            STEPS[0]
        )
    }

    fn progress(&mut self, index: usize) -> String {
        let advance = 0.15 + self.random(20) as f64 / 100.0;
        let task = &mut self.tasks[index];
        task.progress = (task.progress + advance).min(0.95);
        let step = STEPS[((task.progress * STEPS.len() as f64) as usize).min(STEPS.len() - 1)];
        format!(
            "update tasks set progress = {:.2}, payload = payload || '{{\"step\": \"{step}\"}}', updated_at = now() \
               where id = {};",
            task.progress, task.id
        )
    }

    /// Ends the task (one in five fails), deploys on success, releases the
    /// environment.
    fn finish(&mut self, index: usize) -> String {
        let failed = self.random(5) == 0;
        let task = self.tasks.swap_remove(index);
        let environment = task.environment.expect("finish only runs started tasks");
        self.free_environments.push(environment);
        let id = task.id;
        let (status, outcome) = if failed {
            (
                "failed",
                format!(
                    "update tasks set status = 'failed', \
                       payload = payload || '{{\"error\": \"step {} exited with status 1\"}}', updated_at = now() \
                       where id = {id};",
                    STEPS[2]
                ),
            )
        } else {
            let version = self.next_version;
            self.next_version += 1;
            (
                "succeeded",
                format!(
                    "update tasks set status = 'succeeded', progress = 1, updated_at = now() where id = {id};
                     insert into deployments (environment_id, version, status, finished_at) \
                       values ({environment}, 'v1.{version}.0', 'succeeded', now());"
                ),
            )
        };
        format!(
            "begin;
             {outcome}
             update environments set status = 'released', allocated_to = null, updated_at = now() \
               where id = {environment};
             insert into audit_log (actor, action, detail) \
               values ('worker', 'task.{status}', '{{\"task\": {id}, \"environment\": {environment}}}');
             commit;"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_moves_tasks_through_their_lifecycle() {
        let mut activity = Activity::new("acme", 0);
        let mut sql = String::new();
        for _ in 0..200 {
            assert!(activity.tasks.len() <= MAX_TASKS_IN_FLIGHT);
            assert_eq!(
                activity
                    .tasks
                    .iter()
                    .filter(|t| t.environment.is_some())
                    .count()
                    + activity.free_environments.len(),
                MAX_TASKS_IN_FLIGHT,
                "every environment is either allocated or free"
            );
            sql.push_str(&activity.next_step());
        }
        for expected in [
            "'queued'",
            "status = 'running'",
            "progress = 0.",
            "status = 'succeeded'",
            "status = 'failed'",
            "insert into environments",
            "status = 'released'",
            "insert into deployments",
            "'task.queued'",
            "'environment.allocated'",
        ] {
            assert!(sql.contains(expected), "200 steps never wrote {expected}");
        }
    }

    #[test]
    fn config_parses_with_two_tenants_and_auth() {
        let tenants = [
            (
                "acme",
                "postgres://postgres@127.0.0.1:5001/platform".to_string(),
            ),
            (
                "globex",
                "postgres://postgres@127.0.0.1:5002/platform".to_string(),
            ),
        ];
        let secret = random_secret().unwrap();
        assert_eq!(secret.len(), 64);
        let config = demo_config(8080, &secret, "redis://127.0.0.1:6379/", &tenants)
            .unwrap_or_else(|e| panic!("demo config does not parse: {e}"));
        let ids: Vec<&str> = config.tenants.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, TENANTS);
        assert!(config
            .tenants
            .iter()
            .all(|t| t.tables.len() == TABLES.len()));
        assert!(config.redis.is_some());
        assert!(!config.print_events);
        assert_eq!(
            config.server.as_ref().map(|s| s.listen.clone()),
            Some(vec!["127.0.0.1:8080".parse().unwrap()])
        );
        assert!(mint_token(&secret, "acme").unwrap().starts_with("eyJ"));
    }
}
