//! `/state` and the seam to the live stream, with real Postgres and Redis:
//! a client that loads the state page by page while rows change, then
//! applies the events since its position, ends with exactly what Postgres
//! holds, value by value (floats to the last bit, big numbers in jsonb to
//! the last digit).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::client::*;
use common::*;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use walcast::localdev::LocalRedis;
use walcast::model::EventId;

const SECRET: &str = "state-test-secret-that-is-long-enough";

type Fields = HashMap<String, Box<RawValue>>;

/// A page of `/state`, values kept as the bytes walcast sent.
#[derive(Deserialize)]
struct Page {
    position: String,
    rows: Vec<Fields>,
    event_ids: Vec<String>,
    cursor: Option<String>,
}

/// An event, values kept as the bytes walcast sent.
#[derive(Deserialize)]
struct Event {
    id: String,
    op: String,
    new: Option<Fields>,
    key: Option<Fields>,
}

fn id_of(fields: &Fields) -> i64 {
    fields["id"].get().parse().unwrap()
}

#[test]
fn state_pages_and_the_events_since_end_equal_to_postgres() {
    let db = TenantDb::start();
    let redis = LocalRedis::start().expect("redis");
    let dir = TempDir::new("state-seam");
    let port = walcast::localdev::free_port().unwrap();
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nready_grace_secs = 0\n\n\
             [redis]\nurl = \"{}\"\n\n[[mirror]]\ntable = \"public.tasks\"\n\n\
             [auth]\nsecret = \"{SECRET}\"\n\n[[auth.rules]]\nrole = \"operator\"\ntable = \"*\"\n\n{}",
            redis.url(),
            db.tenant_toml("acme")
        ),
    );
    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 1);
    let token = sign(
        SECRET,
        json!({"tenant": "acme", "role": "operator", "sub": "op"}),
    );
    let base = format!("http://127.0.0.1:{port}");
    // Floats that need all 17 digits, and jsonb numbers no f64 or i64 holds.
    db.sql(
        "insert into tasks (id, status, progress, payload) \
         select g, 'running', g / 7.0::float8 + 1e-9, \
                jsonb_build_object('n', 123456789012345678901234567890 + g, \
                                   'x', 1.00000000000000000001, 'm', -9223372036854775809) \
           from generate_series(1, 3000) g;",
    );
    let mut con = redis_conn(&redis);
    wait_until("the rows in the mirror", || {
        redis::cmd("HLEN")
            .arg("walcast:{acme}:rowindex:public.tasks")
            .query::<usize>(&mut con)
            .unwrap_or(0)
            == 3000
    });
    // Rows change, come and go while the client reads the pages: one
    // transaction every few milliseconds.
    let url = db.url();
    let writer = std::thread::spawn(move || {
        let sql = "do $$ begin for i in 1..400 loop \
             update tasks set progress = random() * 1000 / 7, \
                    payload = jsonb_set(payload, '{n}', to_jsonb(987654321098765432109876543210 + i)) \
              where id = 1 + (i * 7919) % 3000; \
             if i % 10 = 0 then delete from tasks where id = 1 + (i * 104729) % 3000; end if; \
             if i % 10 = 5 then insert into tasks (id, status, progress) values (3000 + i, 'queued', i / 3.0::float8); end if; \
             commit; perform pg_sleep(0.005); end loop; end $$;";
        let out = std::process::Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &url, "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    std::thread::sleep(Duration::from_millis(300));
    // -- Load the state, 100 rows a page.
    let mut held: HashMap<i64, (EventId, Fields)> = HashMap::new();
    let mut position: Option<String> = None;
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(c) => format!("{base}/v1/acme/state/public.tasks?limit=100&cursor={c}"),
            None => format!("{base}/v1/acme/state/public.tasks?limit=100"),
        };
        let (code, body) = get(&url, Some(&token));
        assert_eq!(code, 200, "{body}");
        let page: Page = serde_json::from_str(&body).unwrap();
        // Every page repeats the first page's position.
        assert_eq!(
            position.get_or_insert_with(|| page.position.clone()),
            &page.position
        );
        assert_eq!(page.rows.len(), page.event_ids.len());
        for (row, id) in page.rows.into_iter().zip(page.event_ids) {
            let id: EventId = id.parse().unwrap();
            // A row read twice: the later copy is the newer.
            let newer = held.get(&id_of(&row)).is_none_or(|(seen, _)| *seen <= id);
            if newer {
                held.insert(id_of(&row), (id, row));
            }
        }
        pages += 1;
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert!(pages >= 30, "3,000 rows in pages of 100: {pages}");
    let position = position.unwrap();
    writer.join().unwrap();
    // A last change, so the client knows when it has caught up.
    db.sql("insert into tasks (id, status) values (0, 'marker');");
    // -- Apply the events since the position; for each row skip those it
    // already reflects.
    let sse = Sse::open(
        &format!("{base}/v1/acme/events?table=public.tasks&last_event_id={position}"),
        &[format!("Authorization: Bearer {token}")],
    );
    let mut applied = 0;
    loop {
        let frame = sse.next();
        assert_eq!(frame.event.as_deref(), Some("change"), "{frame:?}");
        let event: Event = serde_json::from_str(&frame.data).unwrap();
        let id: EventId = event.id.parse().unwrap();
        let row = match event.op.as_str() {
            "DELETE" => id_of(event.key.as_ref().unwrap()),
            _ => id_of(event.new.as_ref().unwrap()),
        };
        if held.get(&row).is_some_and(|(version, _)| *version >= id) {
            continue;
        }
        applied += 1;
        match event.op.as_str() {
            "DELETE" => {
                held.remove(&row);
            }
            "INSERT" | "UPDATE" => {
                held.insert(row, (id, event.new.unwrap()));
            }
            other => panic!("unexpected op {other}"),
        }
        if row == 0 {
            break;
        }
    }
    assert!(
        applied > 1,
        "changes happened after the position: {applied}"
    );
    // -- The client holds what Postgres holds, value by value.
    let expected = db.sql(
        "select id, status, coalesce(progress::text, 'null'), coalesce(payload::text, 'null') \
           from tasks order by id",
    );
    let mut rows: Vec<_> = held.into_iter().collect();
    rows.sort_by_key(|(id, _)| *id);
    assert_eq!(rows.len(), expected.lines().count(), "row count");
    for ((id, (_, fields)), line) in rows.iter().zip(expected.lines()) {
        let cols: Vec<&str> = line.splitn(4, '|').collect();
        assert_eq!(id.to_string(), cols[0]);
        let status: String = serde_json::from_str(fields["status"].get()).unwrap();
        assert_eq!(status, cols[1], "status of {id}");
        let progress = fields["progress"].get();
        if cols[2] == "null" {
            assert_eq!(progress, "null", "progress of {id}");
        } else {
            assert_eq!(
                progress.parse::<f64>().unwrap().to_bits(),
                cols[2].parse::<f64>().unwrap().to_bits(),
                "progress of {id}: walcast {progress}, postgres {}",
                cols[2]
            );
        }
        assert_eq!(fields["payload"].get(), cols[3], "payload of {id}");
    }
}
