//! The Redis writer's own wire: its commands written straight into one
//! buffer per batch (RESP2), and a connection that sends such buffers and
//! reads their replies in order.
//!
//! A batch of a large transaction is a command per event and per new row,
//! and redis-rs builds each command and parses each reply as objects: in a
//! perf profile of the benchmark's large transaction that was about a
//! quarter of walcast's CPU samples (docs/benchmarks.md, "Fifth session").
//! Every other Redis connection of walcast (reads, snapshots, the epoch)
//! still goes through redis-rs; this one speaks only what the writer needs.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use crate::config::RedisTls;
use bytes::{Buf, Bytes, BytesMut};
use redis::{ConnectionAddr, ConnectionInfo, RedisError, RedisResult, RedisWrite, ToRedisArgs};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Writes one command of known arguments.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    header(out, b'*', args.len());
    for arg in args {
        bulk(out, arg);
    }
}

fn header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, arg: &[u8]) {
    header(out, b'$', arg.len());
    out.extend_from_slice(arg);
    out.extend_from_slice(b"\r\n");
}

/// A command whose arguments are counted as they are written (the count
/// heads the command, so it is written out at the end).
#[derive(Debug, Default)]
pub struct Args {
    buf: Vec<u8>,
    count: usize,
}

impl Args {
    pub fn with_capacity(bytes: usize) -> Args {
        Args {
            buf: Vec::with_capacity(bytes),
            count: 0,
        }
    }

    /// Appends `value`'s arguments, as redis-rs would.
    pub fn arg<T: ToRedisArgs>(&mut self, value: T) -> &mut Args {
        value.write_redis_args(self);
        self
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Bytes of the arguments written so far (the count not included).
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Starts over, keeping the buffer.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
    }

    /// Writes the whole command.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        header(out, b'*', self.count);
        out.extend_from_slice(&self.buf);
    }

    /// The same command for redis-rs.
    pub fn to_cmd(&self) -> redis::Cmd {
        let mut encoded = Vec::with_capacity(self.buf.len() + 16);
        self.write_to(&mut encoded);
        let mut cmd = redis::Cmd::new();
        if let Ok(Some((Reply::Array(args), _))) = parse(&encoded) {
            for arg in args {
                if let Reply::Bulk(arg) = arg {
                    cmd.arg(arg);
                }
            }
        }
        cmd
    }
}

impl RedisWrite for Args {
    fn write_arg(&mut self, arg: &[u8]) {
        self.count += 1;
        bulk(&mut self.buf, arg);
    }

    fn writer_for_next_arg(&mut self) -> impl io::Write + '_ {
        NextArg {
            args: self,
            value: Vec::new(),
        }
    }
}

/// One argument written through `io::Write`; added when dropped.
struct NextArg<'a> {
    args: &'a mut Args,
    value: Vec<u8>,
}

impl io::Write for NextArg<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.value.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for NextArg<'_> {
    fn drop(&mut self) {
        self.args.write_arg(&self.value);
    }
}

/// One reply (RESP2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A status line; `OK` and `QUEUED` (one per command of a batch) without
    /// an allocation.
    Status(Cow<'static, str>),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
}

impl Reply {
    /// A server error as redis-rs would have given it (its kind, such as
    /// `NOSCRIPT` or `LOADING`, decides what the writer does).
    pub fn into_result(self) -> RedisResult<Reply> {
        match self {
            Reply::Error(text) => Err(server_error(&text)),
            other => Ok(other),
        }
    }
}

/// redis-rs's error for the server error line `text`.
pub fn server_error(text: &str) -> RedisError {
    let line = format!("-{}\r\n", text.replace(['\r', '\n'], " "));
    match redis::parse_redis_value(line.as_bytes()) {
        Ok(redis::Value::ServerError(error)) => error.into(),
        Err(error) => error,
        Ok(_) => RedisError::from((redis::ErrorKind::Client, "redis error", text.to_owned())),
    }
}

/// Redis answered something that is not RESP2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable reply from redis: {0}")]
pub struct ProtocolError(&'static str);

/// Nesting deeper than any reply the writer asks for.
const MAX_DEPTH: usize = 8;
/// A length line longer than this is not one.
const MAX_LINE: usize = 64 * 1024;

/// Parses one reply at the start of `buf`: the reply and how many bytes it
/// took, or None when `buf` does not hold all of it yet.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
    let mut at = 0;
    Ok(parse_at(buf, &mut at, 0)?.map(|reply| (reply, at)))
}

fn parse_at(buf: &[u8], at: &mut usize, depth: usize) -> Result<Option<Reply>, ProtocolError> {
    let Some(line) = line(buf, *at)? else {
        return Ok(None);
    };
    let start = *at;
    *at += line.len() + 2;
    let (kind, rest) = match line.split_first() {
        Some(split) => split,
        None => return Err(ProtocolError("an empty line")),
    };
    let text = || String::from_utf8_lossy(rest).into_owned();
    let reply = match kind {
        b'+' => Reply::Status(match rest {
            b"QUEUED" => Cow::Borrowed("QUEUED"),
            b"OK" => Cow::Borrowed("OK"),
            _ => Cow::Owned(text()),
        }),
        b'-' => Reply::Error(text()),
        b':' => Reply::Int(number(rest)?),
        b'$' => {
            let n = number(rest)?;
            if n < 0 {
                Reply::Nil
            } else {
                let n = n as usize;
                let end = at.checked_add(n).ok_or(ProtocolError("a bulk length"))?;
                if buf.len() < end + 2 {
                    *at = start;
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(ProtocolError("a bulk string not ended by CRLF"));
                }
                let value = buf[*at..end].to_vec();
                *at = end + 2;
                Reply::Bulk(value)
            }
        }
        b'*' => {
            let n = number(rest)?;
            if n < 0 {
                Reply::Nil
            } else {
                if depth >= MAX_DEPTH {
                    return Err(ProtocolError("arrays nested too deep"));
                }
                // Each element takes at least 3 bytes: a count beyond what
                // the buffer could hold is not allocated for.
                let mut items = Vec::with_capacity((n as usize).min(buf.len() / 3 + 1));
                for _ in 0..n {
                    match parse_at(buf, at, depth + 1)? {
                        Some(item) => items.push(item),
                        None => {
                            *at = start;
                            return Ok(None);
                        }
                    }
                }
                Reply::Array(items)
            }
        }
        _ => return Err(ProtocolError("an unknown reply type")),
    };
    Ok(Some(reply))
}

/// The line at `at`, without its CRLF; None if it is not complete yet.
fn line(buf: &[u8], at: usize) -> Result<Option<&[u8]>, ProtocolError> {
    let rest = buf.get(at..).unwrap_or_default();
    match memchr::memchr(b'\r', rest) {
        Some(end) if end > MAX_LINE => Err(ProtocolError("a line too long")),
        Some(end) => match rest.get(end + 1) {
            Some(b'\n') => Ok(Some(&rest[..end])),
            Some(_) => Err(ProtocolError("a CR without LF")),
            None => Ok(None),
        },
        None if rest.len() > MAX_LINE => Err(ProtocolError("a line too long")),
        None => Ok(None),
    }
}

fn number(text: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(ProtocolError("a number"))
}

/// Something that carries RESP both ways.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Commands to send and how many replies they get.
struct Request {
    parts: Vec<Bytes>,
    replies: usize,
    done: oneshot::Sender<io::Result<Vec<Reply>>>,
}

/// A connection: requests go out in the order they are sent, and each gets
/// its replies. Clones share it; it closes when the last clone is gone (or
/// at the first error: every request then fails).
#[derive(Clone)]
pub struct Connection {
    requests: mpsc::UnboundedSender<Request>,
    response_timeout: Duration,
}

impl Connection {
    /// Connects as `info` says (TCP, TLS, a Unix socket), authenticates and
    /// selects the database.
    pub async fn open(
        info: &ConnectionInfo,
        tls: &RedisTls,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> RedisResult<Connection> {
        let stream = tokio::time::timeout(connect_timeout, connect(info.addr(), tls))
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "connecting to redis timed out")
            })??;
        let (requests, queue) = mpsc::unbounded_channel();
        tokio::spawn(drive(stream, queue));
        let conn = Connection {
            requests,
            response_timeout,
        };
        let settings = info.redis_settings();
        let mut setup = Vec::new();
        let mut replies = 0;
        if let Some(password) = settings.password() {
            match settings.username() {
                Some(user) => command(&mut setup, &[b"AUTH", user.as_bytes(), password.as_bytes()]),
                None => command(&mut setup, &[b"AUTH", password.as_bytes()]),
            }
            replies += 1;
        }
        if settings.db() != 0 {
            command(
                &mut setup,
                &[b"SELECT", settings.db().to_string().as_bytes()],
            );
            replies += 1;
        }
        if replies > 0 {
            for reply in conn.send(vec![setup.into()], replies).await? {
                reply.into_result()?;
            }
        }
        Ok(conn)
    }

    /// Sends `parts` (`replies` commands in all) and waits for their replies.
    pub async fn send(&self, parts: Vec<Bytes>, replies: usize) -> RedisResult<Vec<Reply>> {
        let (done, answer) = oneshot::channel();
        let request = Request {
            parts,
            replies,
            done,
        };
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "the redis connection closed");
        self.requests.send(request).map_err(|_| closed())?;
        match tokio::time::timeout(self.response_timeout, answer).await {
            Ok(Ok(answer)) => Ok(answer?),
            Ok(Err(_)) => Err(closed().into()),
            Err(_) => {
                Err(io::Error::new(io::ErrorKind::TimedOut, "redis did not answer in time").into())
            }
        }
    }

    /// One command of known arguments; its reply.
    pub async fn query(&self, args: &[&[u8]]) -> RedisResult<Reply> {
        let mut out = Vec::new();
        command(&mut out, args);
        let reply = self.send(vec![out.into()], 1).await?;
        reply.into_iter().next().unwrap_or(Reply::Nil).into_result()
    }
}

async fn connect(addr: &ConnectionAddr, tls: &RedisTls) -> io::Result<Box<dyn Stream>> {
    match addr {
        ConnectionAddr::Tcp(host, port) => {
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream))
        }
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            ..
        } => {
            if *insecure {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "rediss:// with #insecure is not supported: set [redis] tls_ca_file to the CA that signed redis's certificate",
                ));
            }
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            stream.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let stream = tls_connector(tls)?.connect(name, stream).await?;
            Ok(Box::new(stream))
        }
        ConnectionAddr::Unix(path) => Ok(Box::new(tokio::net::UnixStream::connect(path).await?)),
        _ => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kind of redis address is not supported by walcast's writer",
        )),
    }
}

/// TLS as redis-rs sets it up for `rediss://`: the server's certificate
/// signed by the configured CA (else one of the webpki roots) and naming
/// the host, a client certificate when configured; with the crypto provider
/// named rather than left to rustls's features.
fn tls_connector(tls: &RedisTls) -> io::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} {} does not load: {e}", path.display()),
        )
    };
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad("tls_ca_file", path, &e))?;
            roots.add_parsable_certificates(certs);
            if roots.is_empty() {
                return Err(bad("tls_ca_file", path, &"no CA certificate in it"));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots);
    let config = match &tls.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad("tls_cert_file", cert, &e))?;
            let key_der =
                PrivateKeyDer::from_pem_file(key).map_err(|e| bad("tls_key_file", key, &e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| bad("tls_cert_file", cert, &e))?
        }
    };
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

/// Replies still owed to a request.
struct Owed {
    replies: usize,
    got: Vec<Reply>,
    done: oneshot::Sender<io::Result<Vec<Reply>>>,
}

/// Runs one connection: writes each request whole, in order, and hands out
/// the replies as they complete. Redis never stops reading to write its
/// replies (it buffers them), so writing a request before reading on is
/// safe.
async fn drive(stream: Box<dyn Stream>, mut requests: mpsc::UnboundedReceiver<Request>) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut owed: VecDeque<Owed> = VecDeque::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let error = loop {
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        tokio::select! {
            request = requests.recv() => {
                let Some(request) = request else { return };
                let mut failed = None;
                for part in &request.parts {
                    if let Err(error) = writer.write_all(part).await {
                        failed = Some(error);
                        break;
                    }
                }
                if request.replies == 0 {
                    let _ = request.done.send(Ok(Vec::new()));
                } else {
                    owed.push_back(Owed {
                        replies: request.replies,
                        got: Vec::with_capacity(request.replies),
                        done: request.done,
                    });
                }
                if let Some(error) = failed {
                    break error;
                }
            }
            read = reader.read_buf(&mut buf) => {
                match read {
                    Ok(0) => break io::Error::new(io::ErrorKind::UnexpectedEof, "redis closed the connection"),
                    Ok(_) => {}
                    Err(error) => break error,
                }
                let mut failed = None;
                loop {
                    match parse(&buf) {
                        Ok(Some((reply, used))) => {
                            buf.advance(used);
                            let Some(front) = owed.front_mut() else {
                                failed = Some(io::Error::new(io::ErrorKind::InvalidData, "redis sent a reply nothing asked for"));
                                break;
                            };
                            front.got.push(reply);
                            if front.got.len() == front.replies {
                                let front = owed.pop_front().expect("front exists");
                                let _ = front.done.send(Ok(front.got));
                            }
                        }
                        Ok(None) => break,
                        Err(error) => {
                            failed = Some(io::Error::new(io::ErrorKind::InvalidData, error));
                            break;
                        }
                    }
                }
                if let Some(error) = failed {
                    break error;
                }
            }
        }
    };
    // Everything still owed fails, as does every request still queued.
    requests.close();
    let fail = |done: oneshot::Sender<io::Result<Vec<Reply>>>| {
        let _ = done.send(Err(io::Error::new(error.kind(), error.to_string())));
    };
    for owed in owed {
        fail(owed.done);
    }
    while let Ok(request) = requests.try_recv() {
        fail(request.done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_written_as_redis_rs_writes_them() {
        let mut args = Args::with_capacity(64);
        args.arg("HSET")
            .arg("k")
            .arg(12usize)
            .arg(&b"v\r\n"[..])
            .arg(vec!["a", "b"]);
        let mut ours = Vec::new();
        args.write_to(&mut ours);
        let theirs = redis::cmd("HSET")
            .arg("k")
            .arg(12usize)
            .arg(&b"v\r\n"[..])
            .arg(vec!["a", "b"])
            .get_packed_command();
        assert_eq!(ours, theirs);
        assert_eq!(args.count(), 6);
        assert_eq!(args.to_cmd().get_packed_command(), theirs);

        let mut fixed = Vec::new();
        command(&mut fixed, &[b"EXEC"]);
        assert_eq!(fixed, redis::cmd("EXEC").get_packed_command());
    }

    /// The answers to a batch as Redis 7.0.15 sent them, read off the
    /// socket: `OK` to MULTI, `QUEUED` per command (a script, an XADD, an
    /// HSET of eight fields, an XADD of the same id again), then EXEC's
    /// array: the script's nil, the XADD's id, the HSET's count and the
    /// second XADD's refusal.
    const CAPTURED: &[u8] = b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n\
*4\r\n$-1\r\n$10\r\n23803720-0\r\n:8\r\n-ERR The ID specified in XADD is equal or smaller than the target stream top item\r\n";

    #[test]
    fn a_captured_batch_answer_parses_whole_and_in_any_split() {
        let mut replies = Vec::new();
        let mut at = 0;
        while let Some((reply, used)) = parse(&CAPTURED[at..]).unwrap() {
            replies.push(reply);
            at += used;
        }
        assert_eq!(at, CAPTURED.len());
        assert_eq!(replies.len(), 6);
        assert_eq!(replies[0], Reply::Status("OK".into()));
        assert_eq!(
            replies[5],
            Reply::Array(vec![
                Reply::Nil,
                Reply::Bulk(b"23803720-0".to_vec()),
                Reply::Int(8),
                Reply::Error(
                    "ERR The ID specified in XADD is equal or smaller than the target stream top item"
                        .into()
                ),
            ])
        );
        // Cut anywhere, the first part gives the complete replies before the
        // cut and nothing of the one it cuts.
        for cut in 0..CAPTURED.len() {
            let mut at = 0;
            while let Some((_, used)) = parse(&CAPTURED[at..cut]).unwrap() {
                at += used;
            }
            assert!(at <= cut);
            let mut whole = 0;
            while whole < at {
                whole += parse(&CAPTURED[whole..]).unwrap().unwrap().1;
            }
            assert_eq!(whole, at, "cut at {cut}");
        }
    }

    #[test]
    fn what_is_not_resp_is_an_error_not_a_panic() {
        for bad in [
            &b"?\r\n"[..],
            b"\r\n",
            b":x\r\n",
            b"$3\r\nabcXY",
            b"+OK\rX",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
            b"$9223372036854775807\r\n",
        ] {
            assert!(
                parse(bad).is_err() || parse(bad).unwrap().is_none(),
                "{bad:?}"
            );
        }
        assert!(parse(b"*9999999999\r\n:1\r\n").unwrap().is_none());
    }

    #[test]
    fn server_errors_keep_their_kind() {
        let error = server_error("NOSCRIPT No matching script. Please use EVAL.");
        assert_eq!(
            error.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
        );
        let error = server_error("WALCAST_EPOCH the epoch marker is gone");
        assert!(error.to_string().contains("WALCAST_EPOCH"));
    }
}
