//! `rediss://` (TLS to Redis), for walcast's redis-rs connections and for the
//! Redis writer's own. Against a Redis whose certificate no public CA signed
//! (here a self-signed one), both refuse with a certificate error. Before,
//! rustls could not choose a crypto provider (two crates in the tree enable
//! both of its providers) and the first `rediss://` connection panicked.

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use walcast::config::parse;
use walcast::localdev::free_port;
use walcast::sink::redis::resp;
use walcast::tenant::error_chain as chain;

/// A redis-server with TLS only, on a certificate made for `localhost`;
/// killed on drop.
struct TlsRedis {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tls_redis() -> TlsRedis {
    let dir = TempDir::new("tls");
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ])
        .current_dir(&dir.0)
        .stderr(Stdio::null())
        .status()
        .expect("openssl (apt-get install openssl) makes the test certificate");
    assert!(made.success(), "openssl could not make a certificate");
    let port = free_port().unwrap();
    let child = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--tls-cert-file", "cert.pem", "--tls-key-file", "key.pem"])
        .args(["--tls-ca-cert-file", "cert.pem", "--tls-auth-clients", "no"])
        .arg("--dir")
        .arg(&dir.0)
        .current_dir(&dir.0)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    let redis = TlsRedis {
        child,
        port,
        _dir: dir,
    };
    wait_until("the TLS redis-server listens", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    redis
}

#[test]
fn a_self_signed_tls_redis_is_refused_with_a_certificate_error() {
    let redis = start_tls_redis();
    let text = format!(
        "[redis]\nurl = \"rediss://localhost:{}/\"\nconnect_timeout_ms = 5000\n\
         [[tenants]]\nid = \"acme\"\nurl = \"postgres://u@localhost/db\"\ntables = [\"jobs\"]\n",
        redis.port
    );
    let config =
        parse(std::path::Path::new("t.toml"), &text, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let redis_config = config.redis.clone().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // walcast's redis-rs connections (reads, snapshots, the epoch).
    let refused = rt
        .block_on(walcast::sink::redis::connect(&redis_config))
        .expect_err("a certificate no known CA signed is refused");
    let refused = chain(&refused);
    assert!(refused.contains("certificate"), "{refused}");

    // The writer's own connection.
    let client = walcast::sink::redis::client(&redis_config).unwrap();
    let refused = rt
        .block_on(resp::Connection::open(
            client.get_connection_info(),
            Duration::from_secs(5),
            Duration::from_secs(5),
        ))
        .err()
        .expect("the writer refuses it too");
    let refused = chain(&refused);
    assert!(refused.contains("certificate"), "{refused}");
}
