//! The inspector page at `/`, driven in headless Chromium (Debian's
//! `chromium` package) over the DevTools protocol: load the page, fill in
//! tenant, table and token, subscribe, commit a row in Postgres, and see it
//! on the page.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message};

const SECRET: &str = "inspector-test-secret-that-is-long-enough";

/// Headless Chromium with a DevTools endpoint; killed on drop.
struct Chromium {
    child: Child,
    devtools_port: u16,
    _profile: TempDir,
}

impl Chromium {
    fn start() -> Chromium {
        let profile = TempDir::new("chromium");
        let mut child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--no-first-run",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run chromium: install Debian's chromium package (apt-get install chromium); .ci/run does");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("DevTools listening on ws://127.0.0.1:").nth(1) {
                    let port: u16 = rest.split('/').next().unwrap().parse().unwrap();
                    let _ = tx.send(port);
                }
            }
        });
        let devtools_port = rx.recv_timeout(WAIT).expect("chromium's DevTools endpoint");
        Chromium {
            child,
            devtools_port,
            _profile: profile,
        }
    }

    /// A DevTools connection to the open page.
    fn page(&self) -> Page {
        let out = Command::new("curl")
            .args([
                "-s",
                &format!("http://127.0.0.1:{}/json/list", self.devtools_port),
            ])
            .output()
            .unwrap();
        let targets: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        let url = targets
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        let (ws, _) = tungstenite::connect(url).expect("devtools websocket");
        Page { ws, next_id: 0 }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Page {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next_id: u64,
}

impl Page {
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": method, "params": params});
        self.ws.send(Message::text(request.to_string())).unwrap();
        loop {
            if let Message::Text(text) = self.ws.read().unwrap() {
                let reply: Value = serde_json::from_str(&text).unwrap();
                if reply["id"] == id {
                    assert!(reply.get("error").is_none(), "{method}: {reply}");
                    return reply["result"].clone();
                }
            }
        }
    }

    /// Evaluates a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        result["result"]["value"].clone()
    }

    /// Waits until `expression` yields a string containing `text`.
    fn wait_for(&mut self, expression: &str, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.eval(expression);
            let shown = value.as_str().unwrap_or_default().to_owned();
            if shown.contains(text) {
                return shown;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {text:?}; last: {shown:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn inspector_shows_committed_rows_live() {
    let acme = TenantDb::start();
    let port = walcast::localdev::free_port().unwrap();
    let dir = TempDir::new("inspector");
    let config = dir.write(
        "walcast.toml",
        &format!(
            "print_events = false\n[server]\nlisten = [\"127.0.0.1:{port}\"]\n\n[auth]\nsecret = \"{SECRET}\"\n[[auth.rules]]\nrole = \"operator\"\ntable = \"*\"\n\n{}",
            acme.tenant_toml("acme")
        ),
    );
    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 1);
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"tenant": "acme", "role": "operator", "exp": walcast::model::now_unix() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();

    let chromium = Chromium::start();
    let mut page = chromium.page();
    page.call("Page.enable", json!({}));
    page.call(
        "Page.navigate",
        json!({"url": format!("http://127.0.0.1:{port}/")}),
    );
    page.wait_for("document.title", "walcast inspector");
    // Fill in the form as an operator would, and subscribe.
    page.eval(&format!(
        "document.getElementById('tenant').value = 'acme';
         document.getElementById('table').value = 'public.tasks';
         document.getElementById('filter').value = 'status=eq.shown-in-chromium';
         document.getElementById('token').value = '{token}';
         document.getElementById('connect').click(); 'ok'"
    ));
    page.wait_for(
        "document.getElementById('status').textContent",
        "waiting for changes",
    );

    acme.sql(
        "insert into tasks (id, status) values (1, 'filtered-out'), (2, 'shown-in-chromium');",
    );
    let shown = page.wait_for(
        "document.getElementById('events').textContent",
        "shown-in-chromium",
    );
    assert!(shown.contains("INSERT public.tasks"), "{shown}");
    assert!(
        !shown.contains("filtered-out"),
        "the filter applies: {shown}"
    );
    let status = page.eval("document.getElementById('status').textContent");
    assert_eq!(status, "subscribed — 1 change");

    // A wrong token: the page says the subscription was refused.
    page.eval(
        "document.getElementById('disconnect').click();
         document.getElementById('token').value = 'not-a-token';
         document.getElementById('connect').click(); 'ok'",
    );
    page.wait_for(
        "document.getElementById('status').textContent",
        "refused or closed",
    );
}
