//! Faults stay with the tenant they happen to: a panic in one tenant's Redis
//! writer, pipeline or delivery restarts or cuts off that tenant alone,
//! shows in `/readyz`, the metrics and the log, loses nothing, and never
//! stops another tenant or the process. The panics come from the fault hook
//! that debug builds have (`WALCAST_FAULTS`, src/fault.rs).

mod common;

use std::time::Duration;

use common::client::*;
use common::*;
use serde_json::{json, Value};
use walcast::localdev::LocalRedis;

const SECRET: &str = "containment-test-secret-that-is-long-enough";

struct Two {
    acme: TenantDb,
    globex: TenantDb,
    redis: LocalRedis,
    _dir: TempDir,
    port: u16,
    ops_port: u16,
    walcast: Walcast,
}

fn start(tag: &str, faults: &str) -> Two {
    let acme = TenantDb::start();
    let globex = TenantDb::start();
    let redis = LocalRedis::start().expect("redis");
    let dir = TempDir::new(tag);
    let port = walcast::localdev::free_port().unwrap();
    let ops_port = walcast::localdev::free_port().unwrap();
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nops_listen = [\"127.0.0.1:{ops_port}\"]\nready_grace_secs = 0\nheartbeat_secs = 1\n\n\
             [redis]\nurl = \"{}\"\n\n\
             [auth]\nsecret = \"{SECRET}\"\n\n[[auth.rules]]\nrole = \"operator\"\ntable = \"*\"\n\n{}\n{}",
            redis.url(),
            acme.tenant_toml("acme"),
            globex.tenant_toml("globex")
        ),
    );
    let walcast = Walcast::spawn_with(&config, &["run"], None, &[("WALCAST_FAULTS", faults)]);
    Two {
        acme,
        globex,
        redis,
        _dir: dir,
        port,
        ops_port,
        walcast,
    }
}

impl Two {
    fn readyz(&self) -> Value {
        let (_, body) = get(&format!("http://127.0.0.1:{}/readyz", self.ops_port), None);
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("readyz JSON: {body}"))
    }

    fn metrics(&self) -> String {
        get(&format!("http://127.0.0.1:{}/metrics", self.ops_port), None).1
    }

    fn alive(&self) {
        assert!(
            std::path::Path::new(&format!("/proc/{}", self.walcast.pid())).exists(),
            "walcast exited:\n{}",
            self.walcast.stderr()
        );
    }

    fn token(&self, tenant: &str) -> String {
        sign(
            SECRET,
            json!({"tenant": tenant, "role": "operator", "sub": "op"}),
        )
    }

    /// An SSE subscriber of globex's environments.
    fn globex_sse(&self) -> Sse {
        let sse = Sse::open(
            &format!(
                "http://127.0.0.1:{}/v1/globex/events?table=public.environments",
                self.port
            ),
            &[format!("Authorization: Bearer {}", self.token("globex"))],
        );
        std::thread::sleep(Duration::from_millis(300));
        sse
    }
}

fn ids(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["new"]["id"].as_i64().unwrap())
        .collect()
}

#[test]
fn a_panicking_redis_writer_restarts_its_tenant_alone() {
    let two = start("containment-writer", "redis_writer:acme:1");
    two.walcast.wait_log("streaming tenant=", 2);
    let globex_sse = two.globex_sse();
    for id in 1..=3 {
        two.acme.sql(&format!(
            "insert into tasks (id, status) values ({id}, 'queued')"
        ));
        two.globex.sql(&format!(
            "insert into environments values ({id}, 'e{id}', true)"
        ));
    }
    // Globex never noticed.
    assert_eq!(ids(&globex_sse.changes(3)), [1, 2, 3]);
    two.walcast
        .wait_log("the redis writer task ended abnormally", 1);
    // Acme restarted from its confirmed position: every change once.
    let mut con = redis_conn(&two.redis);
    wait_until("acme's three changes in its stream", || {
        stream_events(&mut con, "acme").len() >= 3
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ids(&stream_events(&mut con, "acme")), [1, 2, 3]);
    assert_eq!(ids(&stream_events(&mut con, "globex")), [1, 2, 3]);
    wait_until("acme streaming again", || {
        two.readyz()["tenants"]["acme"]["state"] == "streaming"
    });
    assert!(two
        .metrics()
        .contains("walcast_tenant_reconnects_total{tenant=\"acme\"}"));
    assert!(!two
        .metrics()
        .contains("walcast_tenant_reconnects_total{tenant=\"globex\"}"));
    two.alive();
}

#[test]
fn a_panicking_pipeline_shows_in_readyz_and_the_other_tenant_goes_on() {
    let two = start("containment-pipeline", "pipeline:acme:1000");
    two.walcast.wait_log("streaming tenant=globex", 1);
    two.walcast.wait_log("the pipeline panicked", 2);
    // The failing tenant is told apart, with why.
    wait_until("readyz to show acme retrying after a panic", || {
        let ready = two.readyz();
        ready["ready"] == false
            && ready["tenants"]["acme"]["state"] == "retrying"
            && ready["tenants"]["acme"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("panicked") && e.contains("WALCAST_FAULTS"))
            && ready["tenants"]["globex"]["state"] == "streaming"
    });
    let (code, body) = get(&format!("http://127.0.0.1:{}/readyz", two.port), None);
    assert_eq!((code, body.as_str()), (503, r#"{"ready":false}"#));
    let metrics = two.metrics();
    let panics: f64 = metrics
        .lines()
        .find(|l| l.starts_with("walcast_tenant_panics_total{tenant=\"acme\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(panics >= 2.0, "{metrics}");
    // The other tenant streams on.
    let sse = two.globex_sse();
    two.globex
        .sql("insert into environments values (1, 'e', true)");
    assert_eq!(ids(&sse.changes(1)), [1]);
    two.alive();
}

#[test]
fn a_panic_while_delivering_cuts_off_and_the_clients_resume_exactly_once() {
    let two = start("containment-hub", "hub:acme:1");
    two.walcast.wait_log("streaming tenant=", 2);
    let op = two.token("acme");
    let mut ws = ws_connect(two.port, "acme", &op);
    ws_subscribe(
        &mut ws,
        json!({"type": "subscribe", "id": "t", "tables": ["public.tasks"]}),
    );
    let globex_sse = two.globex_sse();
    two.acme
        .sql("insert into tasks (id, status) values (1, 'queued')");
    // Delivering it panicked: the subscriber is told to resume, and where.
    let gap = ws_next(&mut ws);
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["reason"], "lagged", "{gap}");
    // It had received nothing yet: it resumes just before what it missed.
    assert!(gap["last_event_id"].is_string(), "{gap}");
    let closed = ws_next(&mut ws);
    assert_eq!(closed["frame"][0], 1013, "{closed}");
    two.walcast.wait_log("delivering events panicked", 1);
    // It resumes from there and gets the change once, then the next live.
    let mut again = ws_connect(two.port, "acme", &op);
    ws_subscribe(
        &mut again,
        json!({"type": "subscribe", "id": "t", "tables": ["public.tasks"], "since": gap["last_event_id"]}),
    );
    assert_eq!(ws_next(&mut again)["event"]["new"]["id"], 1);
    two.acme
        .sql("insert into tasks (id, status) values (2, 'queued')");
    assert_eq!(ws_next(&mut again)["event"]["new"]["id"], 2);
    // The other tenant's subscriber was not touched.
    two.globex
        .sql("insert into environments values (1, 'e', true)");
    assert_eq!(ids(&globex_sse.changes(1)), [1]);
    assert!(two
        .metrics()
        .contains("walcast_hub_panics_total{tenant=\"acme\"} 1"));
    two.alive();
}
