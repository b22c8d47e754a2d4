//! Measures walcast's memory and time on one large transaction: starts a
//! throwaway Postgres (`walcast::localdev`), a tasks table and a tenant
//! config, runs `walcast tail` (the binary given, normally the release build)
//! with its standard output read and counted here, inserts ROWS rows in one
//! transaction, waits for the ROWS-th event line, and reports walcast's peak
//! resident memory (VmHWM from /proc/<pid>/status) and the times.
//!
//! Run: `cargo build --release && cargo run --release --example large_txn -- \
//!       target/release/walcast 2000000` (also with 200000, to compare).
//! `bench/large_txn.sh` runs both. Results: docs/benchmarks.md.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let bin = args
        .next()
        .unwrap_or_else(|| "target/release/walcast".into());
    let rows: u64 = args
        .next()
        .map(|n| n.parse().expect("ROWS must be a number"))
        .unwrap_or(2_000_000);

    let pg = walcast::localdev::start_tasks_database(Default::default())
        .unwrap_or_else(|e| panic!("starting postgres with the tasks table: {e}"));
    let dir = std::env::temp_dir().join(format!("walcast-large-txn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("walcast.toml");
    std::fs::write(
        &config,
        format!(
            "[[tenants]]\nid = \"acme\"\nurl = \"{}\"\ntables = [\"public.tasks\"]\n",
            pg.url("platform")
        ),
    )
    .unwrap();

    let mut tail = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .args(["tail", "--tenant", "acme"])
        .env("WALCAST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {bin}: {e}"));
    let pid = tail.id();

    // Wait for "streaming" on stderr, then keep draining stderr.
    let stderr = BufReader::new(tail.stderr.take().unwrap());
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("streaming") {
                let _ = started_tx.send(());
            }
            if line.contains("ERROR") || line.contains("WARN") {
                eprintln!("walcast: {line}");
            }
        }
    });
    started_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("walcast tail did not start streaming");
    let idle_hwm = vm_hwm_kib(pid);
    // The wal sender serving walcast: its CPU time says which side limits
    // the end-to-end rate.
    let walsender: u32 = pg
        .psql("postgres", "select pid from pg_stat_replication")
        .expect("pg_stat_replication")
        .trim()
        .parse()
        .expect("one wal sender");
    let cpu_before = (cpu_seconds(pid), cpu_seconds(walsender));

    // Count event lines (and bytes) as a consumer would read them.
    let stdout = BufReader::with_capacity(1 << 20, tail.stdout.take().unwrap());
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut lines, mut bytes) = (0u64, 0u64);
        let mut first = None;
        for line in stdout.split(b'\n') {
            let line = line.expect("read walcast stdout");
            first.get_or_insert_with(Instant::now);
            lines += 1;
            bytes += line.len() as u64 + 1;
            if lines == rows {
                break;
            }
        }
        let _ = done_tx.send((lines, bytes, first, Instant::now()));
    });

    let started = Instant::now();
    pg.psql(
        "platform",
        &format!(
            "insert into tasks select i, 'queued', (i % 1000) / 1000.0, \
               jsonb_build_object('step', 'checkout', 'attempt', 1 + i % 3, 'worker', 'w-' || (i % 32)), \
               array['linux', 'x86_64', 'team ' || (i % 7)], \
               now() + i * interval '1.234 ms', md5('owner' || (i % 64))::uuid \
             from generate_series(1, {rows}) i"
        ),
    )
    .expect("large insert");
    let committed = Instant::now();
    let (lines, bytes, first, last) = done_rx
        .recv_timeout(Duration::from_secs(1800))
        .expect("walcast did not print every event in time");
    let peak_hwm = vm_hwm_kib(pid);
    let walcast_cpu = cpu_seconds(pid) - cpu_before.0;
    let walsender_cpu = cpu_seconds(walsender) - cpu_before.1;

    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let _ = tail.wait();
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);

    let first = first.unwrap_or(last);
    println!("rows                     {rows}");
    println!(
        "event lines read         {lines} ({:.1} MiB)",
        bytes as f64 / 1048576.0
    );
    println!(
        "insert (one transaction) {:.2} s",
        (committed - started).as_secs_f64()
    );
    println!(
        "commit → first event     {:.2} s (Postgres decodes the transaction after its commit)",
        first.saturating_duration_since(committed).as_secs_f64()
    );
    println!(
        "first → last event       {:.2} s ({:.0} events/s)",
        (last - first).as_secs_f64(),
        lines as f64 / (last - first).as_secs_f64().max(1e-9)
    );
    println!(
        "CPU during the run        walcast {walcast_cpu:.2} s ({:.1} µs/event), Postgres wal sender {walsender_cpu:.2} s",
        walcast_cpu * 1e6 / lines.max(1) as f64
    );
    println!("walcast VmHWM when idle  {} KiB", idle_hwm);
    println!("walcast VmHWM at the end {} KiB", peak_hwm);
}

/// User + system CPU time of a process so far, from /proc/<pid>/stat
/// (fields 14 and 15, in clock ticks of 1/100 s on Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // The command name (field 2) may hold spaces: count from after its ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat format") + 2..]
        .split(' ')
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Peak resident set size of a process so far, from /proc/<pid>/status.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}
