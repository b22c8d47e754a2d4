//! Slot hygiene: `walcast slots` lists and drops the tenant's slot, and a
//! slot the server invalidated (max_slot_wal_keep_size) is reported with the
//! way back instead of streaming on with a silent hole.

mod common;

use common::*;

fn setup(db: &TenantDb, dir: &TempDir) -> std::path::PathBuf {
    let config = dir.write("walcast.toml", &db.tenant_toml("acme"));
    let (status, _, stderr) = walcast_output(&config, &["setup"]);
    assert!(status.success(), "{stderr}");
    config
}

#[test]
fn slots_lists_and_drops_only_with_confirmation() {
    let db = TenantDb::start();
    let dir = TempDir::new("slots");
    let config = setup(&db, &dir);
    let (status, stdout, _) = walcast_output(&config, &["slots"]);
    assert!(status.success());
    assert!(
        stdout.contains("walcast_acme") && stdout.contains("reserved"),
        "{stdout}"
    );

    // No terminal to confirm on: nothing is dropped.
    let (status, _, stderr) = walcast_output(&config, &["slots", "--tenant", "acme", "--drop"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("not confirmed; nothing was dropped"),
        "{stderr}"
    );
    assert_eq!(
        db.sql("select count(*) from pg_replication_slots").trim(),
        "1"
    );

    let (status, stdout, _) =
        walcast_output(&config, &["slots", "--tenant", "acme", "--drop", "--yes"]);
    assert!(status.success());
    assert!(stdout.contains("dropped slot walcast_acme"), "{stdout}");
    assert_eq!(
        db.sql("select count(*) from pg_replication_slots").trim(),
        "0"
    );
}

#[test]
fn an_invalidated_slot_is_reported_with_the_way_back() {
    let db = TenantDb::start_with(PostgresOptions {
        settings: vec![("max_slot_wal_keep_size".into(), "1MB".into())],
        ..PostgresOptions::default()
    });
    let dir = TempDir::new("slots-lost");
    let config = setup(&db, &dir);
    // Write and switch WAL past the keep size; the checkpoint invalidates.
    for _ in 0..4 {
        db.sql("insert into tasks (id, status) select g, 'x' from generate_series(1, 5000) g on conflict do nothing; select pg_switch_wal();");
    }
    db.sql("checkpoint");
    wait_until("the slot to be invalidated", || {
        db.sql("checkpoint; select wal_status from pg_replication_slots")
            .trim()
            == "lost"
    });
    let (status, stdout, _) = walcast_output(&config, &["slots"]);
    assert!(status.success());
    assert!(stdout.contains("LOST"), "{stdout}");

    let (status, _, stderr) = walcast_output(&config, &["tail", "--tenant", "acme"]);
    assert_eq!(status.code(), Some(1));
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("slot walcast_acme was invalidated"),
        "{stderr}"
    );
    assert!(
        last.contains("walcast slots --tenant acme --drop --yes"),
        "{stderr}"
    );

    // The way back works: drop, then stream from now on.
    let (status, _, _) = walcast_output(&config, &["slots", "--tenant", "acme", "--drop", "--yes"]);
    assert!(status.success());
    let tail = Walcast::spawn(&config, &["tail", "--tenant", "acme"]);
    tail.wait_log("streaming tenant=", 1);
    db.sql("insert into tasks (id, status) values (-1, 'after')");
    assert_eq!(tail.events(1)[0]["new"]["status"], "after");
    let (status, _, _) = tail.interrupt();
    assert!(status.success());
}

/// The `from=` of the last "streaming tenant=" line in `stderr`.
fn streaming_from(stderr: &str) -> String {
    let line = stderr
        .lines()
        .rfind(|l| l.contains("streaming tenant="))
        .unwrap_or_else(|| panic!("no streaming line in:\n{stderr}"));
    line.split_once(" from=")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no from= in {line}"))
        .to_owned()
}

#[test]
fn a_restart_logs_the_slots_confirmed_position() {
    let db = TenantDb::start();
    let dir = TempDir::new("slots-from");
    let config = setup(&db, &dir);
    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 1);
    db.sql("insert into tasks (id, status) values (1, 'queued');");
    walcast.events(1);
    let (status, _, stderr) = walcast.interrupt();
    assert!(status.success(), "{stderr}");
    let confirmed = db.sql(
        "select confirmed_flush_lsn from pg_replication_slots where slot_name = 'walcast_acme'",
    );
    let confirmed = confirmed.trim();

    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 1);
    let from = streaming_from(&walcast.stderr());
    assert_ne!(from, "0/0", "{}", walcast.stderr());
    assert_eq!(from, confirmed, "{}", walcast.stderr());
    let (status, _, stderr) = walcast.interrupt();
    assert!(status.success(), "{stderr}");
}
