//! What the load tools in `examples/` share: running `walcast run` and
//! waiting until its tenants stream, reading a process's memory, and reading
//! an event's commit timestamp for commit → client latency.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `2026-11-28T07:36:48.123456` (UTC; fraction optional) → µs since the
/// Unix epoch.
pub fn parse_timestamp(text: &[u8]) -> Option<i64> {
    let num = |from: usize, to: usize| -> Option<i64> {
        let mut value = 0i64;
        for &b in text.get(from..to)? {
            if !b.is_ascii_digit() {
                return None;
            }
            value = value * 10 + i64::from(b - b'0');
        }
        Some(value)
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let mut micros = 0i64;
    if text.get(19) == Some(&b'.') {
        let mut scale = 100_000;
        for &b in text.iter().skip(20).take(6) {
            if !b.is_ascii_digit() {
                break;
            }
            micros += i64::from(b - b'0') * scale;
            scale /= 10;
        }
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(seconds * 1_000_000 + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as i64
}

/// The walcast child; interrupted and reaped on stop.
pub struct WalcastProcess {
    pub child: Child,
}

impl WalcastProcess {
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for WalcastProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `walcast run` and waits until its tenant streams.
pub fn spawn_walcast(bin: &str, config: &std::path::Path) -> WalcastProcess {
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("WALCAST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {bin}: {e}"));
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("streaming") {
                let _ = started_tx.send(());
            }
            // warp logs every connection the client drops at the end as an
            // ERROR ("server connection error"); that is not news here.
            if (line.contains("ERROR") || line.contains("WARN"))
                && !line.contains("server connection error")
            {
                eprintln!("walcast: {line}");
            }
        }
    });
    let process = WalcastProcess { child };
    started_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("walcast run did not start streaming");
    process
}

/// GET /metrics (plain HTTP/1.0, read to the end).
pub fn metrics(addr: SocketAddr) -> String {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

/// A `kB` field of /proc/<pid>/status (VmRSS, VmHWM).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}
