//! TLS to Postgres on both connections, with libpq's url parameters:
//! against a server that takes only `hostssl` connections (replication
//! included), with a CA and certificates made here by openssl.

mod common;

use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::Path;

use common::certs::make_certificates;
use common::*;

/// Turns TLS on in `db` and lets TCP connections in over TLS only
/// (`certuser` with a client certificate).
fn tls_only(db: &TenantDb, certs: &Path) {
    let data = db.pg.data_dir();
    let owner = std::fs::metadata(data).unwrap();
    for file in ["server.crt", "server.key", "ca.crt"] {
        let to = data.join(file);
        std::fs::copy(certs.join(file), &to).unwrap();
        chown(&to, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nlocal replication all trust\n\
         hostssl all certuser 127.0.0.1/32 cert\n\
         hostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
    )
    .unwrap();
    db.sql(
        "alter system set ssl = on; alter system set ssl_cert_file = 'server.crt'; \
         alter system set ssl_key_file = 'server.key'; alter system set ssl_ca_file = 'ca.crt';",
    );
    db.sql("select pg_reload_conf();");
    wait_until("the server serves TLS", || {
        db.sql("show ssl;").trim() == "on"
    });
    db.sql("create role certuser login;");
}

fn tenant(db: &TenantDb, host: &str, user: &str, query: &str) -> String {
    format!(
        "[[tenants]]\nid = \"acme\"\nurl = \"postgres://{user}@{host}:{}/platform?{query}\"\ntables = [\"public.tasks\"]\n",
        db.pg.port()
    )
}

#[test]
fn both_connections_speak_tls_as_libpq_parameters_say() {
    let db = TenantDb::start();
    let dir = TempDir::new("pg-tls");
    make_certificates(&dir.0, "certuser");
    tls_only(&db, &dir.0);

    // verify-full against the CA, by the name in the certificate: check
    // says so, and tail streams with both connections encrypted.
    let config = dir.write(
        "walcast.toml",
        &tenant(
            &db,
            "localhost",
            "postgres",
            "sslmode=verify-full&sslrootcert=ca.crt",
        ),
    );
    let (status, stdout, stderr) = walcast_output(&config, &["setup"]);
    assert!(status.success(), "setup over TLS: {stdout}{stderr}");
    let (status, stdout, stderr) = walcast_output(&config, &["check"]);
    assert!(
        stdout.contains("certificate verified: trusted CA and host name (sslmode=verify-full)"),
        "{stdout}{stderr}"
    );
    assert!(stdout.contains("TLS TLSv1."), "{stdout}");
    assert!(status.success(), "{stdout}{stderr}");
    let tail = Walcast::spawn(&config, &["tail", "--tenant", "acme"]);
    tail.wait_log("streaming tenant=", 1);
    db.sql("insert into tasks (id, status) values (1, 'queued');");
    let events = tail.events(1);
    assert_eq!(events[0]["new"]["id"], 1, "{events:?}");
    let encrypted = db.sql(
        "select count(*) from pg_stat_ssl s join pg_stat_activity a using (pid) \
         where a.application_name = 'walcast' and s.ssl",
    );
    assert_eq!(
        encrypted.trim(),
        "2",
        "the regular and the replication connection"
    );
    let (status, _, stderr) = tail.interrupt();
    assert!(status.success(), "{stderr}");

    // require: encrypted, the certificate not checked; check says so.
    let config = dir.write(
        "walcast.toml",
        &tenant(&db, "127.0.0.1", "postgres", "sslmode=require"),
    );
    let (_, stdout, _) = walcast_output(&config, &["check"]);
    assert!(
        stdout.contains("but the server's certificate is not verified (sslmode=require)"),
        "{stdout}"
    );
    let tail = Walcast::spawn(&config, &["tail", "--tenant", "acme"]);
    tail.wait_log("streaming tenant=", 1);
    db.sql("insert into tasks (id, status) values (2, 'queued');");
    assert_eq!(tail.events(1)[0]["new"]["id"], 2);
    let (status, _, stderr) = tail.interrupt();
    assert!(status.success(), "{stderr}");

    // allow: plain first; this server refuses it, so TLS (both connections).
    let config = dir.write(
        "walcast.toml",
        &tenant(&db, "localhost", "postgres", "sslmode=allow"),
    );
    let (_, stdout, _) = walcast_output(&config, &["check"]);
    assert!(stdout.contains("not verified (sslmode=allow)"), "{stdout}");
    let tail = Walcast::spawn(&config, &["tail", "--tenant", "acme"]);
    tail.wait_log("streaming tenant=", 1);
    db.sql("insert into tasks (id, status) values (3, 'queued');");
    assert_eq!(tail.events(1)[0]["new"]["id"], 3);
    drop(tail);

    // verify-ca checks the CA only: an address the certificate does not
    // name passes.
    let config = dir.write(
        "walcast.toml",
        &tenant(
            &db,
            "127.0.0.1",
            "postgres",
            "sslmode=verify-ca&sslrootcert=ca.crt",
        ),
    );
    let (_, stdout, _) = walcast_output(&config, &["check"]);
    assert!(
        stdout.contains("certificate verified: trusted CA, host name not compared"),
        "{stdout}"
    );

    // A client certificate, for a role pg_hba.conf lets in only with one.
    let config = dir.write(
        "walcast.toml",
        &tenant(
            &db,
            "localhost",
            "certuser",
            "sslmode=verify-full&sslrootcert=ca.crt&sslcert=client.crt&sslkey=client.key",
        ),
    );
    let (_, stdout, _) = walcast_output(&config, &["check"]);
    assert!(
        stdout.contains("connected (PostgreSQL") && stdout.contains("sslmode=verify-full"),
        "{stdout}"
    );
}

#[test]
fn a_certificate_that_does_not_verify_is_a_definite_error_naming_the_reason() {
    let db = TenantDb::start();
    let dir = TempDir::new("pg-tls-fail");
    make_certificates(&dir.0, "certuser");
    tls_only(&db, &dir.0);
    let cases = [
        (
            "localhost",
            "postgres",
            "sslmode=verify-full&sslrootcert=other-ca.crt",
            "not signed by a CA walcast trusts (unknown CA)",
            "sslrootcert",
        ),
        (
            "127.0.0.1",
            "postgres",
            "sslmode=verify-full&sslrootcert=ca.crt",
            "is not for that name (name mismatch)",
            "sslmode=verify-ca",
        ),
        (
            "localhost",
            "postgres",
            "sslmode=disable",
            "no entry for a plain connection of this user and sslmode=disable kept TLS off",
            "sslmode=verify-full",
        ),
        (
            "localhost",
            "certuser",
            "sslmode=verify-full&sslrootcert=ca.crt",
            "asks for a client certificate",
            "sslcert=PATH and sslkey=PATH",
        ),
    ];
    for (host, user, query, reason, fix) in cases {
        let config = dir.write("walcast.toml", &tenant(&db, host, user, query));
        let (status, stdout, _) = walcast_output(&config, &["check"]);
        assert_eq!(status.code(), Some(1), "{query}: {stdout}");
        assert!(
            stdout.contains(reason) && stdout.contains(fix) && stdout.contains(host),
            "{query}: {stdout}"
        );
        // tail gives up on it at once: it is not retried as a passing fault.
        let (status, _, stderr) = walcast_output(&config, &["tail", "--tenant", "acme"]);
        assert_eq!(status.code(), Some(1), "{query}: {stderr}");
        assert!(stderr.contains(reason), "{query}: {stderr}");
    }

    // Bad parameters are configuration errors, pointing at the url.
    for (query, message) in [
        (
            "sslmode=verify-everything",
            "sslmode=verify-everything is not known",
        ),
        ("sslcert=client.crt", "sslcert and sslkey go together"),
        ("sslrootcert=missing.crt", "could not read sslrootcert="),
        ("sslnegotiation=direct", "sslnegotiation=direct"),
    ] {
        let config = dir.write("walcast.toml", &tenant(&db, "localhost", "postgres", query));
        let (status, _, stderr) = walcast_output(&config, &["check"]);
        assert!(!status.success(), "{query}");
        assert!(stderr.contains(message), "{query}: {stderr}");
    }
}
