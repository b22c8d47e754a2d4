//! An in-band token refresh (`{"type":"auth"}` on a WebSocket) re-applies
//! the new token's claims to every live subscription of the connection: a
//! narrowed `teams` claim stops the rows of the team it lost, and a
//! subscription the new token no longer allows ends with an `error`.

mod common;

use common::client::*;
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "refresh-test-secret-that-is-long-enough";

fn member(claims: Value) -> String {
    let mut claims = claims;
    claims["tenant"] = json!("acme");
    claims["role"] = json!("member");
    claims["sub"] = json!("u1");
    claims["exp"] = json!(walcast::model::now_unix() + 3600);
    sign(SECRET, claims)
}

#[test]
fn a_refreshed_token_narrows_live_subscriptions_and_ends_those_it_no_longer_allows() {
    let db = TenantDb::start();
    db.sql("create table envs (id int primary key, team_id int, name text);");
    let dir = TempDir::new("refresh");
    let port = walcast::localdev::free_port().unwrap();
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nready_grace_secs = 0\n\n\
             [auth]\nsecret = \"{SECRET}\"\n\n\
             [[auth.rules]]\nrole = \"member\"\ntable = \"public.envs\"\nfilter = [\"team_id=in.({{teams}})\"]\n\n\
             [[auth.rules]]\nrole = \"member\"\ntable = \"public.tasks\"\nfilter = [\"status=eq.{{watch}}\"]\n\n\
             [[tenants]]\nid = \"acme\"\nurl = \"{}\"\ntables = [\"public.envs\", \"public.tasks\"]\n",
            db.url()
        ),
    );
    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 1);

    let mut ws = ws_connect(
        port,
        "acme",
        &member(json!({"teams": [10, 20], "watch": "running"})),
    );
    ws_subscribe(
        &mut ws,
        json!({"type": "subscribe", "id": "envs", "tables": ["public.envs"]}),
    );
    ws_subscribe(
        &mut ws,
        json!({"type": "subscribe", "id": "tasks", "tables": ["public.tasks"]}),
    );
    db.sql("insert into envs values (1, 10, 'a'), (2, 20, 'b');");
    let before: Vec<i64> = (0..2)
        .map(|_| ws_next(&mut ws)["event"]["new"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(before, [1, 2]);

    // The new token: team 20 is gone, and the `watch` claim the tasks rule
    // needs.
    ws_send(
        &mut ws,
        json!({"type": "auth", "token": member(json!({"teams": [10]}))}),
    );
    let mut replies = Vec::new();
    // The reply and the ended subscription's error, in either order.
    while !(replies.iter().any(|m: &Value| m["type"] == "authenticated")
        && replies.iter().any(|m: &Value| m["type"] == "error"))
    {
        replies.push(ws_next(&mut ws));
    }
    let authenticated = replies
        .iter()
        .find(|m| m["type"] == "authenticated")
        .unwrap();
    assert_eq!(authenticated["ended"], json!(["tasks"]), "{replies:?}");
    let error = replies
        .iter()
        .find(|m| m["type"] == "error")
        .unwrap_or_else(|| panic!("the tasks subscription ends with an error: {replies:?}"));
    assert_eq!(error["id"], "tasks", "{error}");

    db.sql("insert into envs values (3, 10, 'c'), (4, 20, 'd');");
    db.sql("insert into tasks (id, status) values (1, 'running');");
    db.sql("insert into envs values (5, 10, 'e');");
    let after: Vec<Value> = (0..2).map(|_| ws_next(&mut ws)).collect();
    let ids: Vec<(Value, Value)> = after
        .iter()
        .map(|m| (m["sub"].clone(), m["event"]["new"]["id"].clone()))
        .collect();
    assert_eq!(
        ids,
        [(json!("envs"), json!(3)), (json!("envs"), json!(5))],
        "team 20's row 4 and the ended tasks subscription deliver nothing: {after:?}"
    );
    // The ended subscription's id is free again; subscribing with the new
    // token fails the same way.
    ws_send(
        &mut ws,
        json!({"type": "subscribe", "id": "tasks", "tables": ["public.tasks"]}),
    );
    let reply = ws_next(&mut ws);
    assert_eq!(reply["type"], "error", "{reply}");
}
