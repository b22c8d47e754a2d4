//! Delivery end to end: SQL committed in a real Postgres → walcast (with a
//! real Redis) → clients we did not write: curl reading Server-Sent Events,
//! and a tungstenite WebSocket client. Filters, auth, tenant isolation,
//! resume after a disconnect and after a restart, the state + since seam,
//! slow clients, and 1,000 concurrent subscribers.

mod common;

use std::process::Command;
use std::time::Duration;

use common::client::*;
use common::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use walcast::localdev::LocalRedis;

const SECRET: &str = "delivery-test-secret-that-is-long-enough";

fn token(claims: Value) -> String {
    sign(SECRET, claims)
}

fn operator(tenant: &str) -> String {
    token(json!({"tenant": tenant, "role": "operator", "sub": "op"}))
}

/// A config with two tenants, Redis, the server and access rules; the
/// operations endpoints on a free port of their own, returned with the file.
fn config(
    dir: &TempDir,
    port: u16,
    redis: Option<&LocalRedis>,
    dbs: &[(&str, &TenantDb)],
) -> (std::path::PathBuf, u16) {
    let ops_port = walcast::localdev::free_port().unwrap();
    // Top-level keys first, then the tables.
    let mut text = String::from(if redis.is_none() {
        "print_events = false\n"
    } else {
        ""
    });
    text.push_str(&format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nops_listen = [\"127.0.0.1:{ops_port}\"]\nheartbeat_secs = 1\nsubscriber_queue = 1000\nready_grace_secs = 0\n\n"
    ));
    if let Some(redis) = redis {
        text.push_str(&format!(
            "[redis]\nurl = \"{}\"\nstream_max_len = 1000\n\n[[mirror]]\ntable = \"public.tasks\"\nhot_when = [\"status=in.(queued,running)\"]\n\n",
            redis.url()
        ));
    }
    text.push_str(&format!(
        "[auth]\nsecret = \"{SECRET}\"\n\n[[auth.rules]]\nrole = \"operator\"\ntable = \"*\"\n\n[[auth.rules]]\nrole = \"member\"\ntable = \"public.tasks\"\nfilter = [\"payload=not.is.null\", \"status=neq.{{sub}}\"]\n\n"
    ));
    for (id, db) in dbs {
        text.push_str(&db.tenant_toml(id));
        text.push('\n');
    }
    (dir.write("walcast.toml", &text), ops_port)
}

fn ids(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["new"]["id"].as_i64().or(e["key"]["id"].as_i64()).unwrap())
        .collect()
}

#[test]
fn filters_auth_isolation_resume_and_state() {
    let acme = TenantDb::start();
    let globex = TenantDb::start();
    let redis = LocalRedis::start().expect("redis");
    let port = walcast::localdev::free_port().unwrap();
    let dir = TempDir::new("delivery");
    let (config, _) = config(
        &dir,
        port,
        Some(&redis),
        &[("acme", &acme), ("globex", &globex)],
    );
    let mut walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 2);
    let base = format!("http://127.0.0.1:{port}");
    let op = operator("acme");

    // -- Auth failures answer before any stream starts; without a valid
    // token, a tenant that exists and one that does not get the same reply.
    for bearer in [None, Some("garbage")] {
        let known = get(&format!("{base}/v1/acme/events"), bearer);
        let unknown = get(&format!("{base}/v1/nobody/events"), bearer);
        assert_eq!(known, unknown);
        assert_eq!(known.0, 401);
    }
    let url = format!("{base}/v1/acme/events?table=public.tasks");
    let expired = token(
        json!({"tenant": "acme", "role": "operator", "exp": walcast::model::now_unix() - 3600}),
    );
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"tenant": "acme", "role": "operator", "exp": walcast::model::now_unix() + 60}),
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-that-is-also-long-enough"),
    )
    .unwrap();
    let member = token(json!({"tenant": "acme", "role": "member", "sub": "failed"}));
    let nobody = token(json!({"tenant": "nobody", "role": "operator"}));
    let garbage = "garbage".to_owned();
    for (bearer, url, status, code) in [
        (None, url.clone(), 401, "missing_token"),
        (Some(expired.as_str()), url.clone(), 401, "expired"),
        (Some(forged.as_str()), url.clone(), 401, "bad_signature"),
        (
            Some(op.as_str()),
            format!("{base}/v1/globex/events"),
            403,
            "wrong_tenant",
        ),
        (
            Some(member.as_str()),
            format!("{base}/v1/acme/events?table=public.environments"),
            403,
            "table_denied",
        ),
        (
            Some(op.as_str()),
            format!("{base}/v1/acme/events?table=public.nope"),
            400,
            "unknown_table",
        ),
        (
            Some(op.as_str()),
            format!("{base}/v1/acme/events?table=public.tasks&filter=nope=eq.1"),
            400,
            "unknown_column",
        ),
        (
            Some(op.as_str()),
            format!("{base}/v1/acme/events?table=public.tasks&filter=progress=gt.half"),
            400,
            "bad_filter",
        ),
        (
            Some(op.as_str()),
            format!("{base}/v1/acme/events?table=public.tasks&filter=status=like.x"),
            400,
            "bad_filter",
        ),
        (
            Some(op.as_str()),
            format!("{base}/v1/acme/events?op=UPSERT"),
            400,
            "bad_op",
        ),
        // A tenant that does not exist: without a token valid for it, the
        // same answers as for one that does, so names cannot be probed.
        (
            Some(op.as_str()),
            format!("{base}/v1/nobody/events"),
            403,
            "wrong_tenant",
        ),
        (
            None,
            format!("{base}/v1/nobody/events"),
            401,
            "missing_token",
        ),
        (
            Some(garbage.as_str()),
            format!("{base}/v1/nobody/events"),
            401,
            "malformed_token",
        ),
        (
            Some(nobody.as_str()),
            format!("{base}/v1/nobody/events"),
            404,
            "unknown_tenant",
        ),
    ] {
        let (got, body) = get(&url, bearer);
        assert_eq!(got, status, "{url}: {body}");
        let body: Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("JSON error body: {body}"));
        assert_eq!(body["error"]["code"], code, "{url}: {body}");
        assert!(
            !body.to_string().contains(&op),
            "a token never comes back in an error"
        );
    }

    // -- Every filter operator, as WebSocket subscriptions on one connection.
    let mut ws = ws_connect(port, "acme", &op);
    let cases: &[(&str, &[i64])] = &[
        ("status=eq.running", &[2, 5]),
        ("status=neq.running", &[1, 3, 4, 6]),
        ("progress=lt.0.5", &[1, 2]),
        ("progress=lte.0.5", &[1, 2, 3]),
        ("progress=gt.0.5", &[4, 5]),
        ("progress=gte.0.5", &[3, 4, 5]),
        ("status=in.(queued,failed)", &[1, 4, 6]),
        ("progress=is.null", &[6]),
        ("progress=not.is.null", &[1, 2, 3, 4, 5]),
        ("updated_at=gte.2026-11-28T01:00:00+01:00", &[3, 4, 5, 6]),
        ("id=gt.4", &[5, 6]),
    ];
    for (n, (filter, _)) in cases.iter().enumerate() {
        ws_subscribe(
            &mut ws,
            json!({"type": "subscribe", "id": format!("s{n}"), "tables": ["public.tasks"], "ops": ["INSERT"], "filters": [filter]}),
        );
    }
    let sse = Sse::open(&format!("{base}/v1/acme/events?table=public.tasks&filter=progress=gte.0.5&filter=status=neq.failed"), &[format!("Authorization: Bearer {op}")]);
    sse.quiet(Duration::from_millis(300)); // no event before any commit
    acme.sql(
        "insert into tasks (id, status, progress, updated_at) values
           (1, 'queued', 0.1, '2026-11-27T23:00:00Z'),
           (2, 'running', 0.4, '2026-11-27T23:59:59Z'),
           (3, 'done', 0.5, '2026-11-28T00:00:00Z'),
           (4, 'failed', 0.9, '2026-11-28T00:00:01Z'),
           (5, 'running', 1.0, '2026-11-28T12:00:00Z'),
           (6, 'queued', null, '2026-11-29T00:00:00Z');",
    );
    let mut got: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    let expected_total: usize = cases.iter().map(|(_, ids)| ids.len()).sum();
    for _ in 0..expected_total {
        let m = ws_next(&mut ws);
        assert_eq!(m["type"], "change", "{m}");
        got.entry(m["sub"].as_str().unwrap().to_owned())
            .or_default()
            .push(m["event"]["new"]["id"].as_i64().unwrap());
    }
    for (n, (filter, want)) in cases.iter().enumerate() {
        assert_eq!(
            got.get(&format!("s{n}")).map(Vec::as_slice).unwrap_or(&[]),
            *want,
            "filter {filter}"
        );
    }
    let sse_events = sse.changes(2);
    assert_eq!(ids(&sse_events), [3, 5], "SSE with two AND-ed filters");

    // Bad subscribe messages get an error, and the connection goes on.
    for (bad, code) in [
        (
            json!({"type": "subscribe", "id": "x", "tables": ["public.tasks"], "filters": ["progress=gt.half"]}),
            "bad_filter",
        ),
        (
            json!({"type": "subscribe", "id": "s0", "tables": ["public.tasks"]}),
            "duplicate_subscription",
        ),
        (
            json!({"type": "subscribe", "id": "y", "since": 5}),
            "bad_since",
        ),
        (json!({"type": "dance"}), "bad_message"),
    ] {
        ws_send(&mut ws, bad.clone());
        let reply = ws_next(&mut ws);
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str()),
            (Some("error"), Some(code)),
            "{bad} → {reply}"
        );
    }
    ws.send(Message::text("{not json")).unwrap();
    assert_eq!(ws_next(&mut ws)["code"], "bad_json");
    ws_send(&mut ws, json!({"type": "unsubscribe", "id": "s0"}));
    assert_eq!(ws_next(&mut ws)["type"], "unsubscribed");
    ws_send(&mut ws, json!({"type": "ping"}));
    assert_eq!(ws_next(&mut ws)["type"], "pong");

    // -- Row filters bound to claims: a member sees only what its rule
    // allows, and its own filter cannot widen that.
    let member = token(json!({"tenant": "acme", "role": "member", "sub": "failed"}));
    let member_sse = Sse::open(
        &format!("{base}/v1/acme/events?table=public.tasks&filter=status=in.(failed,running)"),
        &[format!("Authorization: Bearer {member}")],
    );
    // -- Tenant isolation: globex's subscriber sees none of acme's changes.
    let globex_sse = Sse::open(
        &format!(
            "{base}/v1/globex/events?access_token={}",
            operator("globex")
        ),
        &[],
    );
    std::thread::sleep(Duration::from_millis(300));
    acme.sql(
        "insert into tasks (id, status, progress, payload) values
           (7, 'running', 0.7, '{}'), (8, 'failed', 0.8, '{}'), (9, 'running', 0.9, null);",
    );
    assert_eq!(
        ids(&member_sse.changes(1)),
        [7],
        "status=neq.failed (bound to sub) and payload not null"
    );
    globex.sql("insert into environments (id, name, active) values (1, 'staging', true);");
    let g = globex_sse.changes(1);
    assert_eq!(
        (g[0]["tenant"].as_str(), g[0]["table"].as_str()),
        (Some("globex"), Some("environments"))
    );
    globex_sse.quiet(Duration::from_millis(500));
    member_sse.quiet(Duration::from_millis(200));

    // -- Resume after a disconnect: everything after the last id, once.
    let seen = sse.changes(2); // 7 and 8 (progress >= 0.5, not failed: 7, 9)
    assert_eq!(ids(&seen), [7, 9]);
    let last = seen[0]["id"].as_str().unwrap().to_owned();
    drop(sse);
    acme.sql("insert into tasks (id, status, progress) values (10, 'running', 0.6);");
    let sse = Sse::open(&format!("{base}/v1/acme/events?table=public.tasks&filter=progress=gte.0.5&filter=status=neq.failed"), &[format!("Authorization: Bearer {op}"), format!("Last-Event-ID: {last}")]);
    assert_eq!(
        ids(&sse.changes(2)),
        [9, 10],
        "resumed after {last} with no gap and no duplicate"
    );
    drop(sse);

    // -- State + since: rows and position in one read; a subscription since
    // that position gets exactly the later changes.
    let (status, body) = get(
        &format!("{base}/v1/acme/state/public.tasks?filter=status=eq.running"),
        Some(&op),
    );
    assert_eq!(status, 200, "{body}");
    let state: Value = serde_json::from_str(&body).unwrap();
    let mut rows: Vec<i64> = state["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    rows.sort();
    assert_eq!(rows, [2, 5, 7, 9, 10]);
    let position = state["position"].as_str().unwrap().to_owned();
    acme.sql("update tasks set status = 'done' where id = 2; insert into tasks (id, status) values (11, 'running');");
    let mut ws2 = ws_connect(port, "acme", &op);
    ws_subscribe(
        &mut ws2,
        json!({"type": "subscribe", "id": "later", "tables": ["public.tasks"], "since": position}),
    );
    let a = ws_next(&mut ws2);
    let b = ws_next(&mut ws2);
    assert_eq!(
        (a["event"]["op"].as_str(), a["event"]["new"]["id"].as_i64()),
        (Some("UPDATE"), Some(2)),
        "{a}"
    );
    assert_eq!(
        (b["event"]["op"].as_str(), b["event"]["new"]["id"].as_i64()),
        (Some("INSERT"), Some(11)),
        "{b}"
    );
    let (status, body) = get(
        &format!("{base}/v1/acme/state/public.environments"),
        Some(&op),
    );
    assert_eq!(
        (
            status,
            serde_json::from_str::<Value>(&body).unwrap()["error"]["code"].as_str()
        ),
        (404, Some("not_mirrored")),
        "{body}"
    );

    // -- Resume after a restart of walcast: no gap, no duplicate.
    let before_restart = a["event"]["id"].as_str().unwrap().to_owned();
    drop(ws2);
    let (status, _, _) = walcast.interrupt();
    assert!(status.success());
    acme.sql("insert into tasks (id, status) values (12, 'queued');");
    walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 2);
    let mut ws3 = ws_connect(port, "acme", &op);
    ws_subscribe(
        &mut ws3,
        json!({"type": "subscribe", "id": "again", "tables": ["public.tasks"], "since": before_restart}),
    );
    let got: Vec<i64> = (0..2)
        .map(|_| ws_next(&mut ws3)["event"]["new"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, [11, 12]);
    acme.sql("insert into tasks (id, status) values (13, 'queued');");
    assert_eq!(
        ws_next(&mut ws3)["event"]["new"]["id"],
        13,
        "live after the replay, no duplicate at the seam"
    );

    // -- An id older than retention gets a gap, then the kept events.
    acme.sql(
        "insert into tasks (id, status) select g, 'queued' from generate_series(100, 2600) g;",
    );
    let mut ws4 = ws_connect(port, "acme", &op);
    wait_until("the stream trimmed", || {
        let mut con = redis_conn(&redis);
        let len: usize = redis::cmd("XLEN")
            .arg("walcast:{acme}:events")
            .query(&mut con)
            .unwrap();
        let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg("walcast:{acme}:events")
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(&mut con)
            .unwrap();
        let last: String = last
            .ids
            .first()
            .and_then(|e| e.get("event"))
            .unwrap_or_default();
        len < 2000 && last.contains("\"id\":2600")
    });
    ws_subscribe(
        &mut ws4,
        json!({"type": "subscribe", "id": "old", "tables": ["public.tasks"], "since": before_restart}),
    );
    let gap = ws_next(&mut ws4);
    assert_eq!(
        (
            gap["type"].as_str(),
            gap["reason"].as_str(),
            gap["sub"].as_str()
        ),
        (Some("gap"), Some("retention"), Some("old")),
        "{gap}"
    );
    assert!(gap["resume_from"].is_string(), "{gap}");
    let log = walcast.stderr();
    assert!(
        !log.contains(&op) && !log.contains(&expired),
        "tokens never appear in the log"
    );
}

#[test]
fn without_redis_slow_clients_expiry_shutdown_and_a_thousand_subscribers() {
    let acme = TenantDb::start();
    let port = walcast::localdev::free_port().unwrap();
    let dir = TempDir::new("delivery-ring");
    let (config, ops_port) = config(&dir, port, None, &[("acme", &acme)]);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[auth]\n", "[auth]\nleeway_secs = 0\n")
        .replace(
            "[server]\n",
            "[server]\ncors_origins = [\"http://app.example\"]\n",
        );
    std::fs::write(&config, text).unwrap();
    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 1);
    let base = format!("http://127.0.0.1:{port}");
    let op = operator("acme");

    // -- Resume from the in-memory ring.
    let sse = Sse::open(
        &format!("{base}/v1/acme/events?table=public.tasks"),
        &[format!("Authorization: Bearer {op}")],
    );
    std::thread::sleep(Duration::from_millis(300));
    acme.sql("insert into tasks (id, status) values (1, 'queued'), (2, 'queued');");
    let first = sse.changes(2);
    drop(sse);
    acme.sql("update tasks set status = 'running' where id = 1;");
    let last = first[0]["id"].as_str().unwrap();
    let sse = Sse::open(
        &format!("{base}/v1/acme/events?table=public.tasks&last_event_id={last}&access_token={op}"),
        &[],
    );
    let resumed = sse.changes(2);
    assert_eq!(
        (resumed[0]["new"]["id"].as_i64(), resumed[1]["op"].as_str()),
        (Some(2), Some("UPDATE"))
    );
    sse.quiet(Duration::from_millis(300));
    // A new stream starts with the position it starts from.
    let fresh = Sse::open(&format!("{base}/v1/acme/events?access_token={op}"), &[]);
    let opening = fresh.frames.recv_timeout(WAIT).unwrap();
    assert_eq!(
        opening.id.as_deref(),
        resumed[1]["id"].as_str(),
        "{opening:?}"
    );
    drop(fresh);
    let (status, body) = get(&format!("{base}/v1/acme/state/public.tasks"), Some(&op));
    assert_eq!(status, 404, "no mirror without redis: {body}");

    // -- A WebSocket whose token expires is closed with a reason; one that
    // sends a fresh token in-band goes on.
    let short = token(
        json!({"tenant": "acme", "role": "operator", "sub": "op", "exp": walcast::model::now_unix() + 2}),
    );
    let mut expiring = ws_connect(port, "acme", &short);
    let mut renewed = ws_connect(port, "acme", &short);
    ws_send(&mut renewed, json!({"type": "auth", "token": op}));
    assert_eq!(ws_next(&mut renewed)["type"], "authenticated");
    let error = ws_next(&mut expiring);
    assert_eq!(error["code"], "token_expired", "{error}");
    let closed = ws_next(&mut expiring);
    assert_eq!(closed["frame"][0], 4001, "{closed}");
    ws_subscribe(
        &mut renewed,
        json!({"type": "subscribe", "id": "r", "tables": ["public.tasks"]}),
    );

    // -- A client that does not read is cut off with a gap telling where to
    // resume; replication and other subscribers go on.
    let mut slow = ws_connect_slow(port, "acme", &op);
    ws_subscribe(
        &mut slow,
        json!({"type": "subscribe", "id": "slow", "tables": ["public.tasks"]}),
    );
    let slow_sse = sse_slow_reader(
        port,
        &format!("/v1/acme/events?table=public.tasks&access_token={op}"),
    );
    let fast = Sse::open(
        &format!("{base}/v1/acme/events?table=public.tasks&access_token={op}"),
        &[],
    );
    std::thread::sleep(Duration::from_millis(300));
    // 2,000 transactions of one large row each.
    let inserts: String = (100..2100).map(|g| format!("insert into tasks (id, status, payload) values ({g}, 'queued', jsonb_build_object('blob', repeat(md5('{g}'), 600)));\n")).collect();
    acme.sql(&inserts);
    let fast_events = fast.changes(2000);
    assert_eq!(
        fast_events.last().unwrap()["new"]["id"],
        2099,
        "the fast subscriber got everything"
    );
    let mut received: Vec<String> = Vec::new();
    let gap = loop {
        // A client that reads, but slowly.
        std::thread::sleep(Duration::from_millis(10));
        let m = ws_next(&mut slow);
        match m["type"].as_str() {
            Some("change") => {
                received.push(m["event"]["id"].as_str().unwrap().to_owned());
            }
            Some("gap") => break m,
            other => panic!("unexpected {other:?}: {m}"),
        }
    };
    assert_eq!(gap["reason"], "lagged", "{gap}");
    assert!(
        received.len() < 2000,
        "the slow client was cut off before the end"
    );
    assert_eq!(
        gap["last_event_id"].as_str(),
        received.last().map(String::as_str),
        "resume from the last id it received"
    );
    let closed = ws_next(&mut slow);
    assert_eq!(closed["frame"][0], 1013, "{closed}");
    // The same over SSE: changes, then a gap naming the last one, then the
    // end of the response.
    let frames = slow_sse
        .join()
        .expect("the slow SSE client read to the end");
    let (sse_gap, changes) = frames.split_last().unwrap();
    assert_eq!(sse_gap.event.as_deref(), Some("gap"), "{sse_gap:?}");
    let sse_gap: Value = serde_json::from_str(&sse_gap.data).unwrap();
    assert_eq!(sse_gap["reason"], "lagged", "{sse_gap}");
    assert!(changes.len() < 2000, "the slow SSE client was cut off");
    assert!(changes.iter().all(|f| f.event.as_deref() == Some("change")));
    assert_eq!(
        sse_gap["last_event_id"].as_str(),
        changes.last().and_then(|f| f.id.as_deref()),
        "resume from the last id it received"
    );
    // It resumes from there and gets the rest, once.
    let mut again = ws_connect(port, "acme", &op);
    ws_subscribe(
        &mut again,
        json!({"type": "subscribe", "id": "again", "tables": ["public.tasks"], "since": gap["last_event_id"]}),
    );
    let rest: Vec<i64> = (0..2000 - received.len())
        .map(|_| ws_next(&mut again)["event"]["new"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(rest.last(), Some(&2099));
    assert_eq!(rest[0], 100 + received.len() as i64);
    drop(again);
    drop(renewed);
    drop(fast);

    // -- Delivery metrics, with live values.
    let (_, metrics) = get(&format!("http://127.0.0.1:{ops_port}/metrics"), None);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        value("walcast_delivery_events_total") >= 4000.0,
        "{metrics}"
    );
    assert!(
        value("walcast_delivery_slow_disconnects_total") >= 1.0,
        "{metrics}"
    );
    assert!(
        value("walcast_delivery_dropped_events_total") >= 1.0,
        "{metrics}"
    );
    assert!(
        value("walcast_delivery_gaps_total{reason=\"lagged\"}") >= 1.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("walcast_delivery_subscribers{tenant=\"acme\",transport=\"ws\"}"),
        "{metrics}"
    );
    let (status, _) = get(&format!("{base}/v1/acme/events"), Some("garbage"));
    assert_eq!(status, 401);
    let (_, metrics) = get(&format!("http://127.0.0.1:{ops_port}/metrics"), None);
    assert!(
        metrics.contains("walcast_delivery_auth_failures_total{reason=\"malformed_token\"}"),
        "{metrics}"
    );

    // -- Garbage and oversized client messages.
    let mut ws = ws_connect(port, "acme", &op);
    ws.send(Message::binary(vec![0u8, 159, 146, 150])).unwrap();
    assert_eq!(ws_next(&mut ws)["code"], "bad_message");
    ws.send(Message::text("x".repeat(100_000))).unwrap();
    let closed = ws_next(&mut ws);
    assert_eq!(closed["frame"][0], 1009, "{closed}");

    // -- CORS: configured origins only; GET only.
    let out = Command::new("curl")
        .args([
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-X",
            "OPTIONS",
            "-H",
            "Origin: http://app.example",
            "-H",
            "Access-Control-Request-Method: GET",
            "-H",
            "Access-Control-Request-Headers: authorization",
        ])
        .arg(format!("{base}/v1/acme/events"))
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        headers.contains("access-control-allow-origin: http://app.example"),
        "{headers}"
    );
    let out = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            "-H",
            "Origin: http://evil.example",
        ])
        .arg(format!(
            "{base}/v1/acme/state/public.tasks?access_token={op}"
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.ends_with("403") && text.contains("cors_forbidden"),
        "{text}"
    );
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-X", "POST", "--data", "x"])
        .arg(format!("{base}/v1/acme/events"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).ends_with("405"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The same rules on an event stream (walcast's own SSE writer).
    let stream_head = |origin: &str| {
        let out = Command::new("curl")
            .args(["-s", "-D", "-", "-o", "/dev/null", "--max-time", "1"])
            .args(["-H", &format!("Origin: {origin}")])
            .arg(format!("{base}/v1/acme/events?access_token={op}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_lowercase()
    };
    let allowed = stream_head("http://app.example");
    assert!(
        allowed.starts_with("http/1.1 200")
            && allowed.contains("access-control-allow-origin: http://app.example"),
        "{allowed}"
    );
    let refused = stream_head("http://evil.example");
    assert!(refused.starts_with("http/1.1 403"), "{refused}");
    // A stream asked for on a kept-alive connection, after another request,
    // is served through warp: the same stream.
    let out = Command::new("curl")
        .args(["-sv", "--max-time", "2"])
        .arg(format!("{base}/healthz"))
        .arg(format!("{base}/v1/acme/events?access_token={op}"))
        .output()
        .unwrap();
    let (body, log) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(log.contains("Re-using existing connection"), "{log}");
    assert!(body.contains("retry: 2000\n"), "{body}");

    // -- 1,000 concurrent subscribers, each receiving only its rows.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let per_subscriber: Vec<Vec<i64>> = rt.block_on(async {
        use futures_util::{SinkExt, StreamExt};
        let mut clients = Vec::new();
        for n in 0..1000 {
            let url = format!("ws://127.0.0.1:{port}/v1/acme/ws?access_token={op}");
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
            let sub = json!({"type": "subscribe", "id": "t", "tables": ["public.tasks"], "filters": [format!("id=eq.{}", 5000 + n % 50)]});
            ws.send(Message::text(sub.to_string())).await.unwrap();
            clients.push(ws);
        }
        for ws in clients.iter_mut() {
            let reply = ws.next().await.unwrap().unwrap();
            assert!(reply.to_text().unwrap().contains("subscribed"), "{reply:?}");
        }
        tokio::task::spawn_blocking({
            let url = acme.url();
            move || {
                let out = Command::new("psql").args([&url, "-qAtc", "insert into tasks (id, status) select g, 'queued' from generate_series(5000, 5049) g; insert into tasks (id, status) values (9999, 'queued');"]).output().unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            }
        })
        .await
        .unwrap();
        // Each client's row, then nothing else within a short while; read
        // concurrently.
        futures_util::future::join_all(clients.into_iter().map(|mut ws| async move {
            let mut ids = Vec::new();
            loop {
                let wait = Duration::from_millis(if ids.is_empty() { 30_000 } else { 500 });
                let Ok(Some(Ok(message))) = tokio::time::timeout(wait, ws.next()).await else {
                    break;
                };
                if let Message::Text(text) = message {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    ids.push(v["event"]["new"]["id"].as_i64().unwrap());
                }
            }
            ids
        }))
        .await
    });
    for (n, ids) in per_subscriber.iter().enumerate() {
        assert_eq!(ids, &[5000 + (n as i64) % 50], "subscriber {n}");
    }

    // -- Shutdown: streams say goodbye (SSE comment, WebSocket close 1001).
    let sse = Sse::open(&format!("{base}/v1/acme/events?access_token={op}"), &[]);
    let mut ws = ws_connect(port, "acme", &op);
    std::thread::sleep(Duration::from_millis(300));
    let (status, _, _) = walcast.interrupt();
    assert!(status.success());
    sse.comment("shutting down");
    let closed = ws_next(&mut ws);
    assert_eq!(closed["frame"][0], 1001, "{closed}");
}

#[test]
fn a_rebuilt_mirror_tells_live_subscribers_where_the_stream_is_complete_from() {
    let acme = TenantDb::start();
    let redis = LocalRedis::start().expect("redis");
    let port = walcast::localdev::free_port().unwrap();
    let dir = TempDir::new("delivery-resync");
    let (config, _) = config(&dir, port, Some(&redis), &[("acme", &acme)]);
    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 1);
    let op = operator("acme");
    let sse = Sse::open(
        &format!("http://127.0.0.1:{port}/v1/acme/events?table=public.tasks"),
        &[format!("Authorization: Bearer {op}")],
    );
    acme.sql("insert into tasks (id, status) values (1, 'queued');");
    assert_eq!(ids(&sse.changes(1)), [1]);

    // Redis loses everything: walcast takes a new snapshot; the subscriber
    // is told from where the stream is complete, the same id Redis says.
    let mut con = redis_conn(&redis);
    let _: () = redis::cmd("FLUSHALL").query(&mut con).unwrap();
    // The first snapshot was at start; this is the second.
    walcast.wait_log("snapshot complete", 2);
    let frame = loop {
        let frame = sse.next();
        if frame.event.is_some() {
            break frame;
        }
    };
    assert_eq!(frame.event.as_deref(), Some("gap"), "{frame:?}");
    let gap: Value = serde_json::from_str(&frame.data).unwrap();
    assert_eq!(gap["reason"], "resync", "{gap}");
    let complete_from: String = redis::cmd("HGET")
        .arg("walcast:{acme}:applied")
        .arg("complete_from_id")
        .query(&mut con)
        .unwrap();
    assert_eq!(gap["resume_from"], complete_from.as_str(), "{gap}");
    assert_ne!(complete_from, "0-0");
}
