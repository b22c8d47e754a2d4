//! SIGHUP reload: added tenants start, removed ones stop, the others never
//! notice; an invalid file is refused and the running configuration stays.
//! And the systemd notification protocol (READY=1, STATUS=, WATCHDOG=1)
//! on a socket the test listens on, as systemd would.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn hup(walcast: &Walcast) {
    assert!(Command::new("kill")
        .args(["-HUP", &walcast.pid().to_string()])
        .status()
        .unwrap()
        .success());
}

#[test]
fn reload_adds_and_removes_tenants_without_disturbing_the_others() {
    let acme = TenantDb::start();
    let globex = TenantDb::start();
    let initech = TenantDb::start();
    let dir = TempDir::new("reload");
    let config = dir.write(
        "walcast.toml",
        &format!(
            "{}\n{}",
            acme.tenant_toml("acme"),
            globex.tenant_toml("globex")
        ),
    );
    let walcast = Walcast::spawn(&config, &["run"]);
    walcast.wait_log("streaming tenant=", 2);

    // globex goes, initech comes, acme stays as it is.
    dir.write(
        "walcast.toml",
        &format!(
            "{}\n{}",
            acme.tenant_toml("acme"),
            initech.tenant_toml("initech")
        ),
    );
    hup(&walcast);
    walcast.wait_log("reload done", 1);
    walcast.wait_log("streaming tenant=", 3);
    let log = walcast.stderr();
    assert!(
        log.contains("reload: tenant removed; stopping it") && log.contains("tenant=globex"),
        "{log}"
    );
    assert_eq!(
        log.matches("streaming tenant=acme").count(),
        1,
        "acme was not restarted:\n{log}"
    );
    acme.sql("insert into tasks (id, status) values (1, 'acme')");
    initech.sql("insert into tasks (id, status) values (2, 'initech')");
    globex.sql("insert into tasks (id, status) values (3, 'globex')");
    let events = walcast.events(2);
    let mut tenants: Vec<&str> = events
        .iter()
        .map(|e| e["tenant"].as_str().unwrap())
        .collect();
    tenants.sort();
    assert_eq!(tenants, ["acme", "initech"]);
    walcast.no_more_events(Duration::from_secs(1));
    // globex's slot is kept (and no longer read).
    assert_eq!(
        globex.sql("select active from pg_replication_slots").trim(),
        "f"
    );

    // An invalid file is refused; everything goes on.
    dir.write("walcast.toml", "[[tenants]]\nid = \"Bad Id\"\n");
    hup(&walcast);
    walcast.wait_log("reload refused", 1);
    acme.sql("insert into tasks (id, status) values (4, 'still')");
    assert_eq!(walcast.events(1)[0]["new"]["status"], "still");
    let (status, _, stderr) = walcast.interrupt();
    assert!(status.success(), "{stderr}");
}

#[test]
fn systemd_hears_ready_status_and_watchdog() {
    let db = TenantDb::start();
    let dir = TempDir::new("notify");
    let config = dir.write("walcast.toml", &db.tenant_toml("acme"));
    let socket_path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut child = Command::new(walcast_bin())
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut heard = String::new();
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while !(heard.contains("READY=1")
        && heard.contains("STATUS=streaming 1 of 1 tenants")
        && heard.contains("WATCHDOG=1"))
    {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("systemd did not hear everything; heard:\n{heard}");
        }
        if let Ok(n) = socket.recv(&mut buf) {
            heard.push_str(&String::from_utf8_lossy(&buf[..n]));
            heard.push('\n');
        }
    }
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success());
    while let Ok(n) = socket.recv(&mut buf) {
        heard.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(heard.contains("STOPPING=1"), "{heard}");
}
