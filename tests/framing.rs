//! One event is one line: a `json` value keeps its input's layout in
//! Postgres (`'{\n "pretty": 1\n}'`), and walcast must still write each event
//! as one line of JSON to `tail`, an SSE `data:` line, a WebSocket text frame
//! and the Redis stream, with the value unchanged.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::client::*;
use common::*;
use serde_json::{json, Value};
use walcast::localdev::LocalRedis;

const SECRET: &str = "framing-test-secret-that-is-long-enough";
const DDL: &str = "create table docs (id int primary key, j json, b jsonb, t text, n int generated always as (id * 2) stored);";
/// Line breaks and a tab between tokens, a `\n` escape inside a string, and
/// a raw line break in a text column (escaped by JSON as any string is).
const INSERT: &str = "insert into docs values (1, E'{\\n \"pretty\": 1,\\r\\n\\t\"s\": \"a\\\\nb\"\\n}', E'{\\n \"x\": [1,\\n 2]}', E'two\\nlines');";

fn assert_values(event: &Value) {
    assert_eq!(
        event["new"]["j"],
        json!({"pretty": 1, "s": "a\nb"}),
        "{event}"
    );
    assert_eq!(event["new"]["b"], json!({"x": [1, 2]}), "{event}");
    assert_eq!(event["new"]["t"], "two\nlines", "{event}");
}

#[test]
fn a_json_value_with_line_breaks_is_one_line_on_every_path() {
    let db = TenantDb::start();
    db.sql(DDL);
    let dir = TempDir::new("framing");

    // tail: one JSON object per stdout line.
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[[tenants]]\nid = \"acme\"\nurl = \"{}\"\ntables = [\"public.docs\"]\n",
            db.url()
        ),
    );
    // check names the generated column events will not carry.
    let (_, stdout, _) = walcast_output(&config, &["check"]);
    assert!(
        stdout.contains("public.docs: generated column(s) n are not sent"),
        "{stdout}"
    );
    let tail = Walcast::spawn(&config, &["tail", "--tenant", "acme"]);
    tail.wait_log("streaming tenant=", 1);
    db.sql(INSERT);
    assert_values(&tail.events(1)[0]);
    tail.no_more_events(std::time::Duration::from_millis(500));
    drop(tail);
    db.sql("select pg_drop_replication_slot('walcast_acme');");
    db.sql("delete from docs;");

    // run: Redis stream, SSE and WebSocket.
    let redis = LocalRedis::start().expect("redis");
    let port = walcast::localdev::free_port().unwrap();
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nready_grace_secs = 0\n\n\
             [redis]\nurl = \"{}\"\n\n[auth]\nsecret = \"{SECRET}\"\n\n\
             [[auth.rules]]\nrole = \"operator\"\ntable = \"*\"\n\n\
             [[tenants]]\nid = \"acme\"\nurl = \"{}\"\ntables = [\"public.docs\"]\n",
            redis.url(),
            db.url()
        ),
    );
    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 1);
    let token = sign(
        SECRET,
        json!({"tenant": "acme", "role": "operator", "sub": "op"}),
    );
    let mut sse = curl_stream(
        &format!("http://127.0.0.1:{port}/v1/acme/events?table=public.docs"),
        &[format!("Authorization: Bearer {token}")],
        60,
    );
    let mut sse_lines = BufReader::new(sse.stdout.take().unwrap()).lines();
    // The stream is open once its `retry:` line arrives.
    let first = sse_lines.next().unwrap().unwrap();
    assert!(first.starts_with("retry:"), "{first}");
    let mut ws = ws_connect(port, "acme", &token);
    ws_subscribe(
        &mut ws,
        json!({"type": "subscribe", "id": "s", "tables": ["public.docs"]}),
    );

    db.sql(INSERT);

    // SSE: the event is one `data:` line, and that line alone parses.
    let mut frame = Vec::new();
    for line in sse_lines.by_ref() {
        let line = line.unwrap();
        if line.is_empty()
            && frame
                .iter()
                .any(|l: &String| l.starts_with("event: change"))
        {
            break;
        }
        if line.is_empty() {
            frame.clear();
        } else {
            frame.push(line);
        }
    }
    let data: Vec<&String> = frame.iter().filter(|l| l.starts_with("data: ")).collect();
    assert_eq!(data.len(), 1, "one data line: {frame:#?}");
    assert_eq!(frame.len(), 3, "id, event and data lines only: {frame:#?}");
    assert_values(&serde_json::from_str(&data[0]["data: ".len()..]).unwrap());
    let _ = sse.kill();
    let _ = sse.wait();
    // JSON columns are not compared in filters, as text or otherwise.
    let (status, body) = get(
        &format!("http://127.0.0.1:{port}/v1/acme/events?table=public.docs&filter=b=eq.x"),
        Some(&token),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad_filter") && body.contains('b'), "{body}");

    // WebSocket: one text frame holding the event.
    let message = ws_next(&mut ws);
    assert_eq!(message["type"], "change", "{message}");
    assert_values(&message["event"]);

    // The Redis stream entry, read with redis-cli (raw output).
    let out = std::process::Command::new("redis-cli")
        .args([
            "-u",
            &redis.url(),
            "--raw",
            "XRANGE",
            "walcast:{acme}:events",
            "-",
            "+",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("redis-cli");
    let text = String::from_utf8(out.stdout).unwrap();
    let event_line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no event in the stream: {text}"));
    assert_values(&serde_json::from_str(event_line).unwrap());
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().starts_with("\"pretty\"")),
        "the stored event spans lines: {text}"
    );
}
