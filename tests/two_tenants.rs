//! `walcast run` with two tenants on two separate clusters: both stream, in
//! commit order, with typed values and strictly increasing ids; one tenant's
//! outage leaves the other streaming, and when it comes back nothing is lost
//! and nothing is printed twice.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn of_tenant<'a>(events: &'a [Value], tenant: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["tenant"] == tenant).collect()
}

fn id_key(event: &Value) -> (u64, u32) {
    let id = event["id"].as_str().unwrap();
    let (lsn, index) = id.split_once('-').unwrap();
    (lsn.parse().unwrap(), index.parse().unwrap())
}

fn assert_strictly_increasing(events: &[&Value]) {
    for pair in events.windows(2) {
        assert!(
            id_key(pair[0]) < id_key(pair[1]),
            "ids not increasing: {} then {}",
            pair[0]["id"],
            pair[1]["id"]
        );
    }
}

#[test]
fn two_tenants_stream_independently_and_survive_an_outage() {
    let acme = TenantDb::start();
    let globex = TenantDb::start();
    let dir = TempDir::new("two-tenants");
    let config = dir.write(
        "walcast.toml",
        &format!(
            "{}\n{}",
            acme.tenant_toml("acme"),
            globex.tenant_toml("globex")
        ),
    );
    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 2);

    acme.sql(
        "begin; insert into tasks values (1, 'queued', 0.25, '{\"step\": \"build\", \"n\": [1, 2]}', '{a,\"b c\",NULL}', '2026-11-28 03:14:02.123456+00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
         update tasks set status = 'running', progress = 0.5 where id = 1; commit;",
    );
    globex.sql("insert into environments values (7, 'staging', true);");
    acme.sql("delete from tasks where id = 1;");
    globex.sql("update environments set active = false where id = 7; delete from environments where id = 7;");

    let events = walcast.events(6);
    let a = of_tenant(&events, "acme");
    let g = of_tenant(&events, "globex");
    assert_eq!(a.len(), 3);
    assert_eq!(g.len(), 3);
    let ops = |es: &[&Value]| {
        es.iter()
            .map(|e| e["op"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(ops(&a), ["INSERT", "UPDATE", "DELETE"]);
    assert_eq!(ops(&g), ["INSERT", "UPDATE", "DELETE"]);
    assert_strictly_increasing(&a);
    assert_strictly_increasing(&g);
    assert_eq!(
        a[0]["new"],
        json!({"id": 1, "status": "queued", "progress": 0.25, "payload": {"step": "build", "n": [1, 2]},
               "tags": ["a", "b c", null], "updated_at": "2026-11-28T03:14:02.123456Z",
               "owner": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"})
    );
    assert_eq!(a[1]["new"]["status"], "running");
    assert_eq!(a[1]["old"], json!({"id": 1}));
    assert_eq!(a[2]["key"], json!({"id": 1}));
    assert_eq!(a[2]["new"], Value::Null);
    assert_eq!(
        g[0]["new"],
        json!({"id": 7, "name": "staging", "active": true})
    );
    assert_eq!(g[0]["schema"], "public");
    assert_eq!(g[0]["table"], "environments");
    // The two updates of the first transaction share its commit LSN.
    assert_eq!(a[0]["lsn"], a[1]["lsn"]);
    assert_eq!(a[0]["xid"], a[1]["xid"]);

    // Globex's server goes away: acme keeps streaming.
    globex.pg.stop().expect("stop globex");
    acme.sql("insert into tasks (id, status) values (2, 'queued');");
    let during = walcast.events(1);
    assert_eq!(during[0]["tenant"], "acme");
    assert_eq!(during[0]["new"]["id"], 2);
    walcast.wait_log("tenant stream failed, retrying", 1);

    // Globex comes back; changes committed before walcast reconnects arrive.
    globex.pg.restart().expect("restart globex");
    globex.sql("insert into environments values (8, 'prod', true); insert into environments values (9, 'dev', false);");
    acme.sql("insert into tasks (id, status) values (3, 'queued');");
    let after = walcast.events(3);
    let g_after = of_tenant(&after, "globex");
    let names: Vec<&Value> = g_after.iter().map(|e| &e["new"]["name"]).collect();
    assert_eq!(names, [&json!("prod"), &json!("dev")]);
    assert_eq!(of_tenant(&after, "acme")[0]["new"]["id"], 3);

    // Nothing was printed twice.
    walcast.no_more_events(Duration::from_secs(3));
    let all: Vec<&Value> = events.iter().chain(&during).chain(&after).collect();
    let ids: HashSet<String> = all
        .iter()
        .map(|e| format!("{}/{}", e["tenant"], e["id"]))
        .collect();
    assert_eq!(ids.len(), all.len(), "an event was printed twice: {all:#?}");
    let g_all: Vec<&Value> = all
        .iter()
        .copied()
        .filter(|e| e["tenant"] == "globex")
        .collect();
    assert_strictly_increasing(&g_all);

    let (status, rest, stderr) = walcast.interrupt();
    assert!(
        status.success(),
        "walcast run should exit 0 after SIGINT: {status}\n{stderr}"
    );
    assert!(rest.is_empty(), "{rest:?}");
}
