//! Clients for the integration tests of the client API: signed tokens,
//! curl for plain GETs and Server-Sent Events, a tungstenite WebSocket, and
//! slow readers with small socket buffers.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};

use super::{curl_stream, WAIT};

/// An HS256 token signed with `secret`; valid for an hour unless `claims`
/// has an `exp`.
pub fn sign(secret: &str, claims: Value) -> String {
    let mut claims = claims;
    if claims.get("exp").is_none() {
        claims["exp"] = json!(walcast::model::now_unix() + 3600);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// (status, body) of a GET with curl.
pub fn get(url: &str, bearer: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10"]);
    if let Some(t) = bearer {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(url).output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// An SSE frame as curl printed it.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub comment: String,
}

impl Frame {
    /// Adds one line of the frame.
    pub fn push_line(&mut self, line: &str) {
        if let Some(v) = line.strip_prefix(':') {
            self.comment.push_str(v);
        } else if let Some(v) = line.strip_prefix("id: ") {
            self.id = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("event: ") {
            self.event = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("data: ") {
            self.data.push_str(v);
        }
    }
}

/// `curl -N` reading an SSE stream; frames arrive on a channel.
pub struct Sse {
    pub child: Child,
    pub frames: mpsc::Receiver<Frame>,
}

impl Sse {
    pub fn open(url: &str, headers: &[String]) -> Sse {
        let mut child = curl_stream(url, headers, 120);
        let stdout = child.stdout.take().unwrap();
        let (tx, frames) = mpsc::channel();
        std::thread::spawn(move || {
            let mut frame = Frame::default();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.is_empty() {
                    let _ = tx.send(std::mem::take(&mut frame));
                } else {
                    frame.push_line(&line);
                }
            }
        });
        Sse { child, frames }
    }

    /// The next frame with an event (comments and bare ids skipped).
    pub fn next(&self) -> Frame {
        loop {
            let frame = self
                .frames
                .recv_timeout(WAIT)
                .expect("an SSE frame within the wait");
            if frame.event.is_some() || !frame.data.is_empty() {
                return frame;
            }
        }
    }

    /// Waits for a comment containing `text`.
    pub fn comment(&self, text: &str) {
        loop {
            let frame = self
                .frames
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("a comment with {text:?}"));
            if frame.comment.contains(text) {
                return;
            }
        }
    }

    /// The next `n` change events.
    pub fn changes(&self, n: usize) -> Vec<Value> {
        (0..n)
            .map(|_| {
                let frame = self.next();
                assert_eq!(frame.event.as_deref(), Some("change"), "{frame:?}");
                let event: Value = serde_json::from_str(&frame.data).unwrap();
                assert_eq!(frame.id.as_deref(), event["id"].as_str());
                event
            })
            .collect()
    }

    /// Asserts that no event arrives for `for_` (heartbeats may).
    pub fn quiet(&self, for_: Duration) {
        let deadline = std::time::Instant::now() + for_;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.frames.recv_timeout(left) {
                Ok(frame) if frame.event.is_some() => panic!("expected nothing, got {frame:?}"),
                Ok(_) => continue,
                Err(_) => return,
            }
        }
    }
}

impl Drop for Sse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

pub fn ws_connect(port: u16, tenant: &str, token: &str) -> Ws {
    let url = format!("ws://127.0.0.1:{port}/v1/{tenant}/ws");
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tungstenite::connect(request).expect("websocket connects");
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(WAIT)).unwrap();
    }
    ws
}

/// A WebSocket whose socket holds at most 64 KiB unread, like a client on a
/// slow link (loopback would otherwise let the kernel buffer tens of MB).
pub fn ws_connect_slow(port: u16, tenant: &str, token: &str) -> Ws {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut request = format!("ws://127.0.0.1:{port}/v1/{tenant}/ws")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tungstenite::client(request, tungstenite::stream::MaybeTlsStream::Plain(stream))
        .expect("websocket connects");
    ws
}

/// An SSE client on a socket that holds at most 64 KiB unread, reading
/// the HTTP/1.1 response itself (chunked encoding included). Returns the
/// frames it read, one every 10 ms (a slow reader), until the stream ends.
pub fn sse_slow_reader(port: u16, path: &str) -> std::thread::JoinHandle<Vec<Frame>> {
    use std::io::{Read, Write};
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_lowercase());
    }
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("\r\ndate: "), "{head}");
    std::thread::spawn(move || {
        let mut frames = Vec::new();
        let mut text = String::new();
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim_end(), 16).expect("a chunk size line");
            let mut chunk = vec![0u8; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            assert_eq!(&chunk[size..], b"\r\n", "chunk framing");
            if size == 0 {
                break;
            }
            text.push_str(std::str::from_utf8(&chunk[..size]).unwrap());
            while let Some(end) = text.find("\n\n") {
                let mut frame = Frame::default();
                for line in text[..end].lines() {
                    frame.push_line(line);
                }
                text.drain(..end + 2);
                if frame.event.is_some() {
                    frames.push(frame);
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        assert!(text.is_empty(), "a frame cut off: {text:?}");
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "bytes after the last chunk");
        frames
    })
}

pub fn ws_send(ws: &mut Ws, message: Value) {
    ws.send(Message::text(message.to_string())).unwrap();
}

/// The next JSON message (pings are answered by tungstenite).
pub fn ws_next(ws: &mut Ws) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        // Pings keep the socket busy: the read timeout alone never fires.
        assert!(
            std::time::Instant::now() < deadline,
            "no websocket message within {WAIT:?}"
        );
        match ws.read().expect("a websocket message") {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Close(frame) => {
                return json!({"type": "closed", "frame": frame.map(|f| (u16::from(f.code), f.reason.to_string()))})
            }
            _ => continue,
        }
    }
}

pub fn ws_subscribe(ws: &mut Ws, message: Value) {
    ws_send(ws, message.clone());
    let reply = ws_next(ws);
    assert_eq!(reply["type"], "subscribed", "{message} → {reply}");
}
