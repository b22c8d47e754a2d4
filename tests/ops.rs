//! Operations endpoints against a running `walcast run`, read with curl:
//! on `[server] ops_listen`, /healthz, /readyz with per-tenant state (503
//! while a tenant is down), /metrics in Prometheus text with live values; on
//! the client port, /readyz says ready or not and nothing about tenants.

mod common;

use std::process::Command;

use common::*;

/// (status code, body) of a GET.
fn get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--max-time",
            "5",
            url,
        ])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn health_readiness_and_metrics() {
    let acme = TenantDb::start();
    let globex = TenantDb::start();
    let port = walcast::localdev::free_port().unwrap();
    let ops_port = walcast::localdev::free_port().unwrap();
    let dir = TempDir::new("ops");
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nops_listen = [\"127.0.0.1:{ops_port}\"]\nready_grace_secs = 0\n\n{}\n{}",
            acme.tenant_toml("acme"),
            globex.tenant_toml("globex")
        ),
    );
    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 2);
    let base = format!("http://127.0.0.1:{ops_port}");
    let client = format!("http://127.0.0.1:{port}");

    // The client port: ready or not, and nothing else.
    let (code, body) = get(&format!("{client}/healthz"));
    assert_eq!((code, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (code, body) = get(&format!("{client}/readyz"));
    assert_eq!((code, body.as_str()), (200, r#"{"ready":true}"#));
    let (code, body) = get(&format!("{client}/metrics"));
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("ops_listen"), "{body}");
    assert!(!body.contains("acme"), "{body}");

    let (code, body) = get(&format!("{base}/healthz"));
    assert_eq!((code, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (code, body) = get(&format!("{base}/readyz"));
    assert_eq!(code, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["tenants"]["acme"]["state"], "streaming");
    assert_eq!(ready["tenants"]["globex"]["state"], "streaming");

    acme.sql("insert into tasks (id, status) values (1, 'queued'); update tasks set status = 'running' where id = 1;");
    walcast.events(2);
    wait_until("the change counters", || {
        let (_, metrics) = get(&format!("{base}/metrics"));
        metrics.contains(r#"walcast_source_changes_total{tenant="acme",op="INSERT"} 1"#)
            && metrics.contains(r#"walcast_source_changes_total{tenant="acme",op="UPDATE"} 1"#)
    });
    let (code, metrics) = get(&format!("{base}/metrics"));
    assert_eq!(code, 200);
    for family in [
        "walcast_source_transactions_total{tenant=\"acme\"} 2",
        "walcast_process_rss_bytes ",
        "walcast_source_slot_lag_bytes{tenant=\"acme\"} ",
        "# TYPE walcast_source_changes_total counter",
        "walcast_source_lag_seconds{tenant=\"acme\"} ",
        "walcast_source_slot_active{tenant=\"acme\"} 1",
        "walcast_source_slot_active{tenant=\"globex\"} 1",
    ] {
        assert!(
            metrics.contains(family),
            "missing {family:?} in:\n{metrics}"
        );
    }

    // One tenant down: not ready, and the body says which and why.
    globex.pg.stop().unwrap();
    wait_until("readyz to report globex", || {
        let (code, body) = get(&format!("{base}/readyz"));
        code == 503 && body.contains(r#""globex":{"attempt""#)
    });
    let (_, body) = get(&format!("{base}/readyz"));
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], false);
    let (code, body) = get(&format!("{client}/readyz"));
    assert_eq!((code, body.as_str()), (503, r#"{"ready":false}"#));
    assert_eq!(ready["tenants"]["globex"]["state"], "retrying");
    assert_eq!(ready["tenants"]["acme"]["state"], "streaming");
    wait_until("globex's slot to be reported inactive", || {
        get(&format!("{base}/metrics"))
            .1
            .contains("walcast_source_slot_active{tenant=\"globex\"} 0")
    });
    wait_until("the reconnect counter", || {
        get(&format!("{base}/metrics"))
            .1
            .contains("walcast_tenant_reconnects_total{tenant=\"globex\"}")
    });

    let (status, _, stderr) = walcast.interrupt();
    assert!(status.success(), "{stderr}");
}

#[test]
fn a_taken_listen_address_is_a_clear_start_up_error() {
    let db = TenantDb::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = TempDir::new("ops-taken");
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\n\n{}",
            db.tenant_toml("acme")
        ),
    );
    let (status, _, stderr) = walcast_output(&config, &["run"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains(&format!(
            "could not listen on 127.0.0.1:{port} (change [server] listen"
        )),
        "{stderr}"
    );
}

/// A fresh start with a Redis mirror (snapshot, then live batches) counts
/// no Redis write errors: `rate(walcast_redis_write_errors_total[5m]) > 0`
/// is a suggested alert (docs/operations.md).
#[test]
fn fresh_start_counts_no_redis_write_errors() {
    let acme = TenantDb::start();
    acme.sql("insert into tasks (id, status) values (1, 'queued');");
    let redis = LocalRedis::start().expect("start redis-server");
    let port = walcast::localdev::free_port().unwrap();
    let ops_port = walcast::localdev::free_port().unwrap();
    let dir = TempDir::new("ops-redis");
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nops_listen = [\"127.0.0.1:{ops_port}\"]\n\n\
             [redis]\nurl = \"{}\"\n\n\
             [[mirror]]\ntable = \"public.tasks\"\nhot_when = [\"status=in.(queued,running)\"]\n\n{}",
            redis.url(),
            acme.tenant_toml("acme")
        ),
    );
    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 1);
    // The stream starts at the new slot's consistent point, and says so.
    let stderr = walcast.stderr();
    let field = |name: &str| {
        stderr
            .split_once(&format!(" {name}="))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {name}= in:\n{stderr}"))
            .to_owned()
    };
    assert_eq!(field("from"), field("consistent_point"), "{stderr}");
    acme.sql("update tasks set status = 'running' where id = 1;");
    let base = format!("http://127.0.0.1:{ops_port}");
    // The snapshot and the live batch were written (a histogram sample each).
    wait_until("two redis writes", || {
        get(&format!("{base}/metrics")).1.lines().any(|l| {
            l.starts_with(r#"walcast_redis_write_seconds_count{tenant="acme"}"#)
                && l.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()) >= Some(2)
        })
    });
    let (_, metrics) = get(&format!("{base}/metrics"));
    let errors: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("walcast_redis_write_errors_total{"))
        .collect();
    assert!(
        errors.iter().all(|l| l.ends_with(" 0")),
        "a fresh start counted redis write errors: {errors:?}\nstderr:\n{}",
        walcast.stderr()
    );
    let (status, _, stderr) = walcast.interrupt();
    assert!(status.success(), "{stderr}");
}
