//! Deadlines on the Postgres connections: a host that accepts and never
//! answers is given up on within the connect timeout by `check`, retried by
//! `run`, and does not hold up shutdown; both connections carry TCP
//! keepalives (seen from outside with `ss`).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A listener that accepts connections and never says a word. The first
/// `forward` connections are instead relayed to `upstream`.
fn silent_host(forward: usize, upstream: Option<u16>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for (n, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { continue };
            match upstream {
                Some(upstream) if n < forward => relay(client, upstream),
                _ => held.push(client),
            }
        }
    });
    port
}

fn relay(client: TcpStream, upstream: u16) {
    let server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
    let pipe = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Both);
        });
    };
    pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
    pipe(server, client);
}

#[test]
fn a_silent_host_is_given_up_on_in_check_retried_in_run_and_does_not_hold_up_shutdown() {
    let port = silent_host(0, None);
    let dir = TempDir::new("pg-silent");
    let tenant = |query: &str| {
        format!(
            "[[tenants]]\nid = \"acme\"\nurl = \"postgres://walcast@127.0.0.1:{port}/platform{query}\"\ntables = [\"public.tasks\"]\n"
        )
    };

    // The default connect timeout is 10 s.
    let config = dir.write("walcast.toml", &tenant(""));
    let started = Instant::now();
    let (status, stdout, stderr) = walcast_output(&config, &["check"]);
    let took = started.elapsed();
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(20),
        "check gave up after {took:?}"
    );
    assert!(
        stdout.contains(&format!("127.0.0.1:{port}")) && stdout.contains("within 10 s"),
        "check names the host and the timeout: {stdout}"
    );

    // `run` logs each timeout and tries again; SIGINT ends it at once.
    let config = dir.write("walcast.toml", &tenant("?connect_timeout=2"));
    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("within 2 s while connecting", 2);
    let log = walcast.stderr();
    assert!(log.contains("tenant stream failed, retrying"), "{log}");
    assert!(log.contains(&format!("127.0.0.1:{port}")), "{log}");
    let stopping = Instant::now();
    let (status, _, stderr) = walcast.interrupt();
    assert!(status.success(), "{stderr}");
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        stopping.elapsed()
    );
}

#[test]
fn the_replication_session_has_the_same_deadline_and_both_connections_keepalives() {
    let db = TenantDb::start();
    let dir = TempDir::new("pg-deadlines");

    // The regular connection gets through; the replication session does not.
    let port = silent_host(1, Some(db.pg.port()));
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[[tenants]]\nid = \"acme\"\nurl = \"postgres://postgres@127.0.0.1:{port}/platform?connect_timeout=2\"\ntables = [\"public.tasks\"]\n"
        ),
    );
    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("within 2 s while connecting the replication session", 1);
    let (status, _, stderr) = walcast.interrupt();
    assert!(status.success(), "{stderr}");

    // Against the real server, both of walcast's connections keep alive.
    let config = dir.write("walcast.toml", &db.tenant_toml("acme"));
    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 1);
    let pid = walcast.pid();
    let sockets = || {
        let out = Command::new("ss")
            .args(["-Htnpo", "state", "established"])
            .arg(format!("dport = :{}", db.pg.port()))
            .output()
            .expect("ss (iproute2)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&format!("pid={pid},")))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let mine = sockets();
    assert_eq!(
        mine.len(),
        2,
        "regular and replication connection: {mine:#?}"
    );
    for socket in &mine {
        // `timer:(keepalive,29sec,0)`: the first probe is due within 30 s
        // (the kernel default would read `119min`).
        let timer = socket
            .split_once("timer:(keepalive,")
            .map(|(_, rest)| rest.split(',').next().unwrap_or_default())
            .unwrap_or_else(|| panic!("no keepalive: {socket}"));
        let secs: f64 = if let Some(s) = timer.strip_suffix("sec") {
            s.parse().unwrap()
        } else if let Some(ms) = timer.strip_suffix("ms") {
            ms.parse::<f64>().unwrap() / 1000.0
        } else {
            panic!("keepalive timer {timer} is not within 30 s: {socket}")
        };
        assert!(secs <= 30.0, "{socket}");
    }
    // The replication session is the one `pg_stat_replication` lists.
    let walsenders =
        db.sql("select count(*) from pg_stat_replication where application_name = 'walcast'");
    assert_eq!(walsenders.trim(), "1");
}
