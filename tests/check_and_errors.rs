//! `walcast check` and the errors a user can cause: each is one clear line
//! that names the tenant, what failed and what to do, and a non-zero exit.

mod common;

use common::*;

#[test]
fn check_on_wal_level_replica_exits_1_and_names_the_fix() {
    let db = TenantDb::start_with(PostgresOptions {
        wal_level: "replica".into(),
        ..PostgresOptions::default()
    });
    let dir = TempDir::new("check-replica");
    let config = dir.write("walcast.toml", &db.tenant_toml("acme"));
    let (status, stdout, _) = walcast_output(&config, &["check"]);
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  wal_level is replica"), "{stdout}");
    assert!(
        stdout.contains("ALTER SYSTEM SET wal_level = logical;"),
        "{stdout}"
    );
    // What `walcast run` creates is a warning, publication and slot alike.
    assert!(
        stdout.contains("WARN  publication walcast_acme does not exist yet: `walcast run` creates it (or run `walcast setup`)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("WARN  slot walcast_acme does not exist yet (")
            && stdout
                .contains("slots are free): `walcast run` creates it (or run `walcast setup`)"),
        "{stdout}"
    );
    assert!(!stdout.contains("FAIL  publication"), "{stdout}");
}

#[test]
fn check_warns_of_what_run_creates_and_exits_0() {
    let db = TenantDb::start();
    let dir = TempDir::new("check-missing");
    let config = dir.write("walcast.toml", &db.tenant_toml("acme"));
    let (status, stdout, _) = walcast_output(&config, &["check"]);
    assert!(
        status.success(),
        "missing publication and slot do not block: {stdout}"
    );
    assert!(
        stdout.contains("WARN  publication walcast_acme does not exist yet")
            && stdout.contains("WARN  slot walcast_acme does not exist yet"),
        "{stdout}"
    );
    assert!(
        stdout.contains("by hand: CREATE PUBLICATION \"walcast_acme\" FOR TABLE \"public\".\"tasks\", \"public\".\"environments\""),
        "{stdout}"
    );

    // A publication that misses a table: also a warning (run adds it).
    db.sql("create publication walcast_acme for table tasks");
    let (status, stdout, _) = walcast_output(&config, &["check"]);
    assert!(status.success(), "{stdout}");
    assert!(
        stdout.contains(
            "WARN  publication walcast_acme does not cover \"public\".\"environments\" yet"
        ),
        "{stdout}"
    );
}

#[test]
fn check_passes_after_setup_and_warns_on_weak_replica_identity() {
    let db = TenantDb::start();
    db.sql("create table nokey (a int)");
    let dir = TempDir::new("check-setup");
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[[tenants]]\nid = \"acme\"\nurl = \"{}\"\ntables = [\"tasks\", \"nokey\"]\n",
            db.url()
        ),
    );
    let (status, stdout, _) = walcast_output(&config, &["setup", "--dry-run"]);
    assert!(status.success());
    assert!(stdout.contains("CREATE PUBLICATION \"walcast_acme\" FOR TABLE \"public\".\"tasks\", \"public\".\"nokey\" WITH (publish_via_partition_root = true);"), "{stdout}");
    assert_eq!(
        db.sql("select count(*) from pg_publication").trim(),
        "0",
        "dry run changed nothing"
    );

    let (status, _, stderr) = walcast_output(&config, &["setup"]);
    assert!(status.success(), "{stderr}");
    let (status, stdout, _) = walcast_output(&config, &["setup"]);
    assert!(status.success());
    assert!(
        stdout.contains("nothing to do"),
        "setup is idempotent: {stdout}"
    );

    let (status, stdout, _) = walcast_output(&config, &["check"]);
    assert!(status.success(), "{stdout}");
    assert!(
        stdout.contains("WARN  public.nokey: replica identity DEFAULT but no primary key"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ALTER TABLE \"public\".\"nokey\" REPLICA IDENTITY FULL;"),
        "{stdout}"
    );
}

#[test]
fn unreachable_database_and_wrong_password_are_one_clear_line() {
    let db = TenantDb::start_with(PostgresOptions {
        password: Some("right-password".into()),
        ..PostgresOptions::default()
    });
    let dir = TempDir::new("errors");
    let port = walcast::localdev::free_port().unwrap();
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[[tenants]]\nid = \"down\"\nurl = \"postgres://postgres@127.0.0.1:{port}/platform\"\ntables = [\"tasks\"]\n\
             [[tenants]]\nid = \"badpw\"\nurl = \"postgres://postgres:wrong@127.0.0.1:{}/platform\"\ntables = [\"tasks\"]\n",
            db.pg.port()
        ),
    );
    let (status, stdout, _) = walcast_output(&config, &["check"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stdout.contains("tenant down") && stdout.contains("cannot connect"),
        "{stdout}"
    );
    assert!(
        stdout.contains("password authentication failed"),
        "{stdout}"
    );

    // tail gives up on a definite error with one line naming the tenant.
    let (status, stdout, stderr) = walcast_output(&config, &["tail", "--tenant", "badpw"]);
    assert_eq!(status.code(), Some(1));
    assert!(stdout.is_empty());
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("walcast: tenant badpw: could not connect")
            && last.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("wrong"),
        "no panic, no password in output: {stderr}"
    );
}

#[test]
fn config_errors_point_at_the_line() {
    let dir = TempDir::new("config-errors");
    let config = dir.write(
        "walcast.toml",
        "[[tenants]]\nid = \"acme\"\nurl = \"postgres://u@localhost/db\"\ntables = [\"tasks\"]\npublication = \"Bad-Name\"\n",
    );
    let (status, _, stderr) = walcast_output(&config, &["check"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("walcast.toml:5:15: publication \"Bad-Name\" is not valid: use 1 to 63 lowercase letters"),
        "{stderr}"
    );

    let missing = dir.0.join("nope.toml");
    let (status, _, stderr) = walcast_output(&missing, &["run"]);
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        stderr.trim_end(),
        format!(
            "walcast: cannot read config file {}: No such file or directory; pass --config PATH (or set WALCAST_CONFIG), or create it (config.example.toml shows every key)",
            missing.display()
        ),
        "one line, the cause said once"
    );

    // A directory is not a config file either.
    let (status, _, stderr) = walcast_output(&dir.0, &["check"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("cannot read config file")
            && stderr.matches("directory").count() == 1
            && !stderr.contains("os error"),
        "{stderr}"
    );

    let (status, _, stderr) = walcast_output(&config, &["tail", "--tenant", "nobody"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("publication"),
        "validation runs before anything else: {stderr}"
    );
}

#[test]
fn missing_replication_privilege_names_the_grant() {
    let db = TenantDb::start();
    db.sql("create role plain login; grant select on tasks to plain; create publication walcast_acme for table tasks;");
    let dir = TempDir::new("privileges");
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[[tenants]]\nid = \"acme\"\nurl = \"postgres://plain@127.0.0.1:{}/platform\"\ntables = [\"tasks\"]\n",
            db.pg.port()
        ),
    );
    let (status, stdout, _) = walcast_output(&config, &["check"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stdout.contains("FAIL  role plain lacks the REPLICATION attribute"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ALTER ROLE \"plain\" REPLICATION;"),
        "{stdout}"
    );
    for args in [
        &["tail", "--tenant", "acme"][..],
        &["tail", "--tenant", "acme", "--temporary-slot"][..],
    ] {
        let (status, _, stderr) = walcast_output(&config, args);
        assert_eq!(status.code(), Some(1), "{args:?}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("walcast: tenant acme: ")
                && last.contains("ALTER ROLE \"plain\" REPLICATION;"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn setup_goes_on_after_a_failing_tenant_and_exits_1() {
    let db = TenantDb::start();
    let dir = TempDir::new("setup-partial");
    let port = walcast::localdev::free_port().unwrap();
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[[tenants]]\nid = \"down\"\nurl = \"postgres://postgres@127.0.0.1:{port}/platform\"\ntables = [\"tasks\"]\n{}",
            db.tenant_toml("acme")
        ),
    );
    let (status, stdout, stderr) = walcast_output(&config, &["setup"]);
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("walcast: tenant down: could not connect"),
        "{stderr}"
    );
    assert_eq!(
        stdout.matches("-- done").count(),
        1,
        "only the reachable tenant is done: {stdout}"
    );
    assert!(
        stdout.contains("-- 1 of 2 tenant(s) failed: down"),
        "{stdout}"
    );
    assert_eq!(
        db.sql("select count(*) from pg_publication where pubname = 'walcast_acme'")
            .trim(),
        "1",
        "the tenant after the failing one was set up"
    );
}

/// A TCP port that answers like an HTTP server whatever it is sent.
fn http_like_listener() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut buf = [0u8; 1024];
            // Read the client's first bytes (the startup message), so that
            // closing does not reset the connection before it reads ours.
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            let _ = stream.shutdown(std::net::Shutdown::Write);
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    port
}

#[test]
fn a_port_that_is_not_postgres_is_named_as_such() {
    let port = http_like_listener();
    let dir = TempDir::new("not-postgres");
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[[tenants]]\nid = \"web\"\nurl = \"postgres://walcast@127.0.0.1:{port}/platform\"\ntables = [\"tasks\"]\n"
        ),
    );
    let (status, stdout, _) = walcast_output(&config, &["check"]);
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "postgres://walcast@127.0.0.1:{port}/platform is not a PostgreSQL server (it answered with something else); check the port in the tenant's url"
        )),
        "{stdout}"
    );

    let (status, stdout, stderr) = walcast_output(&config, &["setup"]);
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(
        stderr.contains("tenant web: ") && stderr.contains("is not a PostgreSQL server"),
        "{stderr}"
    );
}

#[test]
fn a_table_name_typo_gets_a_did_you_mean_and_is_left_out_of_the_sql() {
    let db = TenantDb::start();
    let dir = TempDir::new("typo");
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[[tenants]]\nid = \"acme\"\nurl = \"{}\"\ntables = [\"tasks\", \"enviroments\"]\n",
            db.url()
        ),
    );
    let (status, stdout, _) = walcast_output(&config, &["check"]);
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL  table public.enviroments does not exist in database platform; did you mean public.environments?"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "by hand: CREATE PUBLICATION \"walcast_acme\" FOR TABLE \"public\".\"tasks\" WITH"
        ),
        "the suggested SQL leaves the missing table out: {stdout}"
    );

    for args in [&["setup", "--dry-run"][..], &["setup"][..]] {
        let (status, stdout, stderr) = walcast_output(&config, args);
        assert_eq!(status.code(), Some(1), "{args:?}: {stdout}");
        assert!(
            stderr.contains("walcast: tenant acme: table public.enviroments does not exist in database platform; did you mean public.environments?; correct the name in the tenant's tables"),
            "{args:?}: {stderr}"
        );
        assert!(!stdout.contains("CREATE PUBLICATION"), "{args:?}: {stdout}");
    }
    assert_eq!(
        db.sql("select count(*) from pg_publication").trim(),
        "0",
        "setup changed nothing"
    );
}

#[test]
fn owning_the_tables_without_create_on_the_database_names_the_grant() {
    let db = TenantDb::start();
    db.sql(
        "create role owner login replication; \
         alter table tasks owner to owner; alter table environments owner to owner;",
    );
    let dir = TempDir::new("create-privilege");
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[[tenants]]\nid = \"acme\"\nurl = \"postgres://owner@127.0.0.1:{}/platform\"\ntables = [\"tasks\", \"environments\"]\n",
            db.pg.port()
        ),
    );
    let grant = "GRANT CREATE ON DATABASE \"platform\" TO \"owner\";";
    let (status, stdout, _) = walcast_output(&config, &["check"]);
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL  publication walcast_acme does not exist, and role owner may not create it: CREATE PUBLICATION needs the CREATE privilege on database platform"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("fix: {grant}")), "{stdout}");

    let (status, _, stderr) = walcast_output(&config, &["setup"]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(grant) && !stderr.contains("owns the tables"),
        "{stderr}"
    );

    db.sql("grant create on database platform to owner");
    let (status, stdout, stderr) = walcast_output(&config, &["setup"]);
    assert!(status.success(), "{stdout}\n{stderr}");
    let (status, stdout, _) = walcast_output(&config, &["check"]);
    assert!(status.success(), "{stdout}");
    assert!(!stdout.contains("WARN"), "{stdout}");
}

#[test]
fn a_role_that_does_not_own_the_tables_is_told_which_and_how() {
    let db = TenantDb::start();
    db.sql(
        "create role streamer login replication; grant create on database platform to streamer; \
         grant select on tasks, environments to streamer; alter table environments owner to streamer;",
    );
    let dir = TempDir::new("table-owner");
    let config = dir.write(
        "walcast.toml",
        &format!(
            "[[tenants]]\nid = \"acme\"\nurl = \"postgres://streamer@127.0.0.1:{}/platform\"\ntables = [\"tasks\", \"environments\"]\n",
            db.pg.port()
        ),
    );
    let (status, stdout, _) = walcast_output(&config, &["check"]);
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL  role streamer does not own \"public\".\"tasks\": adding a table to a publication needs its owner"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ALTER TABLE \"public\".\"tasks\" OWNER TO \"streamer\";")
            && !stdout.contains("\"environments\" OWNER"),
        "{stdout}"
    );
    db.sql("alter table tasks owner to streamer");
    let (_, stdout, _) = walcast_output(&config, &["check"]);
    assert!(!stdout.contains("does not own"), "{stdout}");
}
