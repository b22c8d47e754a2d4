//! `[server] tls_cert_file` / `tls_key_file`: the client listener speaks
//! HTTPS to clients we did not write (curl, openssl s_client), streams SSE
//! over it, reads a renewed certificate on SIGHUP and keeps the running one
//! when the new files do not load.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::client::sign;
use common::*;
use serde_json::json;

const SECRET: &str = "listener-tls-secret-that-is-long-enough";

/// A self-signed certificate for `localhost` and 127.0.0.1 with `serial`.
fn make_certificate(dir: &Path, serial: u32) {
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-set_serial", &serial.to_string()])
        .args(["-keyout", "key.pem", "-out", "cert.pem"])
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .expect("openssl (apt-get install openssl) makes the test certificate");
    assert!(made.success(), "openssl could not make a certificate");
}

/// The serial of the certificate the listener presents, as openssl prints
/// it (`serial=0A`).
fn served_serial(port: u16) -> String {
    let mut client = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "localhost"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(client.stdout.take().unwrap())
        .output()
        .expect("openssl x509");
    let _ = client.wait();
    x509.stdout.retain(|b| *b != b'\n');
    String::from_utf8_lossy(&x509.stdout).into_owned()
}

fn curl_https(dir: &Path, url: &str) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert"])
        .arg(dir.join("cert.pem"))
        .arg(url)
        .output()
        .expect("curl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_listener_serves_https_and_reads_a_renewed_certificate_on_sighup() {
    let db = TenantDb::start();
    let dir = TempDir::new("listener-tls");
    make_certificate(&dir.0, 10);
    let port = walcast::localdev::free_port().unwrap();
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nready_grace_secs = 0\n\
             tls_cert_file = \"cert.pem\"\ntls_key_file = \"key.pem\"\n\n\
             [auth]\nsecret = \"{SECRET}\"\n\n[[auth.rules]]\nrole = \"operator\"\ntable = \"*\"\n\n{}",
            db.tenant_toml("acme")
        ),
    );
    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 1);
    assert!(
        walcast.stderr().contains("tls=true"),
        "{}",
        walcast.stderr()
    );
    let base = format!("https://localhost:{port}");

    // curl verifies the certificate against its CA and gets an answer.
    let (ok, body) = curl_https(&dir.0, &format!("{base}/healthz"));
    assert!(ok, "https /healthz: {body}");
    assert!(body.contains("ok"), "{body}");
    // Plain HTTP on the TLS port gets no answer, and no hang.
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://127.0.0.1:{port}/healthz"))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&out.stdout), "200");
    assert_ne!(
        out.status.code(),
        Some(28),
        "plain HTTP timed out instead of failing"
    );

    // An SSE stream over TLS.
    let token = sign(
        SECRET,
        json!({"tenant": "acme", "role": "operator", "sub": "op"}),
    );
    let mut stream = Command::new("curl")
        .args(["-sN", "--max-time", "60", "--cacert"])
        .arg(dir.0.join("cert.pem"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("{base}/v1/acme/events?table=public.tasks"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(stream.stdout.take().unwrap()).lines();
    // The stream is open once its `retry:` line arrives.
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("retry:"), "{first}");
    db.sql("insert into tasks (id, status) values (1, 'running');");
    let data = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.starts_with("data: "))
        .expect("an event over TLS");
    let event: serde_json::Value = serde_json::from_str(&data["data: ".len()..]).unwrap();
    assert_eq!(event["new"]["id"], 1, "{event}");
    let _ = stream.kill();
    let _ = stream.wait();

    // SIGHUP reads a renewed certificate.
    assert_eq!(served_serial(port), "serial=0A");
    make_certificate(&dir.0, 11);
    let hup = |walcast: &Walcast| {
        let killed = Command::new("kill")
            .args(["-HUP", &walcast.pid().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    };
    hup(&walcast);
    walcast.wait_log("read the listeners' TLS certificate again", 1);
    assert_eq!(served_serial(port), "serial=0B");
    let (ok, _) = curl_https(&dir.0, &format!("{base}/healthz"));
    assert!(ok, "the renewed certificate verifies");

    // A key that does not load is refused; the running certificate stays.
    std::fs::write(dir.0.join("key.pem"), "not a key\n").unwrap();
    hup(&walcast);
    walcast.wait_log("the TLS certificate or key does not load", 1);
    assert!(
        walcast.stderr().contains("tls_key_file"),
        "{}",
        walcast.stderr()
    );
    assert_eq!(served_serial(port), "serial=0B");
}

#[test]
fn a_certificate_without_its_key_is_a_config_error() {
    let db = TenantDb::start();
    let dir = TempDir::new("listener-tls-config");
    make_certificate(&dir.0, 1);
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_cert_file = \"cert.pem\"\n\n{}",
            db.tenant_toml("acme")
        ),
    );
    let (status, _, stderr) = walcast_output(&config, &["run"]);
    assert!(!status.success());
    assert!(
        stderr.contains("tls_cert_file and tls_key_file go together"),
        "{stderr}"
    );
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_cert_file = \"cert.pem\"\ntls_key_file = \"missing.pem\"\n\n{}",
            db.tenant_toml("acme")
        ),
    );
    let (status, _, stderr) = walcast_output(&config, &["run"]);
    assert!(!status.success());
    assert!(
        stderr.contains("could not read tls_key_file") && stderr.contains("missing.pem"),
        "{stderr}"
    );
}
