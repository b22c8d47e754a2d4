//! `rediss://` (TLS to Redis), for walcast's redis-rs connections and for the
//! Redis writer's own: a Redis whose certificate a private CA signed is
//! refused until `[redis] tls_ca_file` names that CA; with
//! `tls-auth-clients yes`, a client certificate gets walcast in; and
//! `walcast run` streams into such a Redis (read back with redis-cli).

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::certs::make_certificates;
use common::*;
use walcast::config::parse;
use walcast::localdev::free_port;
use walcast::sink::redis::resp;
use walcast::tenant::error_chain as chain;

/// A redis-server with TLS only, on `server.crt` (for `localhost`, signed
/// by `ca.crt` in `dir`); killed on drop.
struct TlsRedis {
    child: Child,
    port: u16,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tls_redis(dir: &TempDir, client_certificates: bool) -> TlsRedis {
    let port = free_port().unwrap();
    let child = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args([
            "--tls-cert-file",
            "server.crt",
            "--tls-key-file",
            "server.key",
        ])
        .args(["--tls-ca-cert-file", "ca.crt"])
        .args([
            "--tls-auth-clients",
            if client_certificates { "yes" } else { "no" },
        ])
        .arg("--dir")
        .arg(&dir.0)
        .current_dir(&dir.0)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    let redis = TlsRedis { child, port };
    wait_until("the TLS redis-server listens", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    redis
}

/// Connects both ways walcast does: redis-rs (reads, snapshots, the
/// epoch) and the writer's own connection; `Err` with the error text.
fn connect_both(dir: &TempDir, redis: &TlsRedis, tls_keys: &str) -> [Result<(), String>; 2] {
    let text = format!(
        "[redis]\nurl = \"rediss://localhost:{}/\"\nconnect_timeout_ms = 5000\n{tls_keys}\
         [[tenants]]\nid = \"acme\"\nurl = \"postgres://u@localhost/db\"\ntables = [\"jobs\"]\n",
        redis.port
    );
    let config = parse(&dir.0.join("t.toml"), &text, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let redis_config = config.redis.clone().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let managed = rt.block_on(async {
        let mut conn = walcast::sink::redis::connect(&redis_config)
            .await
            .map_err(|e| chain(&e))?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| chain(&e))
    });
    let client = walcast::sink::redis::client(&redis_config).unwrap();
    let writer = rt.block_on(async {
        let conn = resp::Connection::open(
            client.get_connection_info(),
            &redis_config.tls,
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| chain(&e))?;
        conn.query(&[b"PING"])
            .await
            .map(|_| ())
            .map_err(|e| chain(&e))
    });
    [managed, writer]
}

#[test]
fn a_private_ca_is_trusted_only_when_configured_and_client_certificates_work() {
    let dir = TempDir::new("redis-tls");
    make_certificates(&dir.0, "walcast");
    let redis = start_tls_redis(&dir, false);

    // Without tls_ca_file only public CAs are trusted: both refuse.
    for refused in connect_both(&dir, &redis, "") {
        let refused = refused.expect_err("a private CA is not trusted by default");
        assert!(
            walcast::sink::redis::tls_problem(&refused)
                .is_some_and(|fix| fix.contains("tls_ca_file")),
            "{refused}"
        );
    }
    // With it, both connect.
    for connected in connect_both(&dir, &redis, "tls_ca_file = \"ca.crt\"\n") {
        connected.expect("connects with the CA configured");
    }
    // Another CA is refused.
    for refused in connect_both(&dir, &redis, "tls_ca_file = \"other-ca.crt\"\n") {
        refused.expect_err("a CA that did not sign redis's certificate");
    }
    drop(redis);

    // tls-auth-clients yes: no certificate, no connection; with one, both.
    let redis = start_tls_redis(&dir, true);
    for refused in connect_both(&dir, &redis, "tls_ca_file = \"ca.crt\"\n") {
        refused.expect_err("redis asks for a client certificate");
    }
    let with_client =
        "tls_ca_file = \"ca.crt\"\ntls_cert_file = \"client.crt\"\ntls_key_file = \"client.key\"\n";
    for connected in connect_both(&dir, &redis, with_client) {
        connected.expect("connects with the client certificate");
    }

    // Configuration errors name the key.
    for (keys, message) in [
        (
            "tls_cert_file = \"client.crt\"\n",
            "tls_cert_file and tls_key_file go together",
        ),
        (
            "tls_ca_file = \"missing.crt\"\n",
            "could not read tls_ca_file",
        ),
    ] {
        let text = format!(
            "[redis]\nurl = \"rediss://localhost:1/\"\n{keys}[[tenants]]\nid = \"acme\"\nurl = \"postgres://u@localhost/db\"\ntables = [\"jobs\"]\n"
        );
        let err = parse(&dir.0.join("t.toml"), &text, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(message), "{err}");
    }
    let text = "[redis]\nurl = \"redis://localhost:1/\"\ntls_ca_file = \"ca.crt\"\n[[tenants]]\nid = \"acme\"\nurl = \"postgres://u@localhost/db\"\ntables = [\"jobs\"]\n";
    let err = parse(&dir.0.join("t.toml"), text, &|_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not rediss://"), "{err}");
}

#[test]
fn run_streams_into_a_redis_that_wants_tls_and_a_client_certificate() {
    let db = TenantDb::start();
    let dir = TempDir::new("redis-tls-run");
    make_certificates(&dir.0, "walcast");
    let redis = start_tls_redis(&dir, true);
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[redis]\nurl = \"rediss://localhost:{}/\"\ntls_ca_file = \"ca.crt\"\n\
             tls_cert_file = \"client.crt\"\ntls_key_file = \"client.key\"\n\n{}",
            redis.port,
            db.tenant_toml("acme")
        ),
    );
    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 1);
    db.sql("insert into tasks (id, status) values (1, 'queued'), (2, 'running');");
    let xlen = || {
        let out = Command::new("redis-cli")
            .args([
                "--tls",
                "--cacert",
                "ca.crt",
                "--cert",
                "client.crt",
                "--key",
                "client.key",
            ])
            .args(["-h", "localhost", "-p", &redis.port.to_string()])
            .args(["XLEN", "walcast:{acme}:events"])
            .current_dir(&dir.0)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    wait_until("both rows in the stream over TLS", || xlen() == "2");
    assert!(
        !walcast.stderr().contains("cannot connect to redis"),
        "{}",
        walcast.stderr()
    );
}
