//! Test certificates made with openssl: a CA, and server and client
//! certificates it signed.

use std::path::Path;
use std::process::{Command, Stdio};

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl (apt-get install openssl) makes the test certificates");
    assert!(status.success(), "openssl {args:?}");
}

/// In `dir`: `ca.crt` (and `ca.key`), `server.crt`/`server.key` signed by it
/// for `localhost` only (no IP address), `client.crt`/`client.key` with
/// common name `client_cn`, and an unrelated `other-ca.crt`.
pub fn make_certificates(dir: &Path, client_cn: &str) {
    for (name, subject) in [
        ("ca", "/CN=walcast test CA"),
        ("other-ca", "/CN=another CA"),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                subject,
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }
    std::fs::write(dir.join("server.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, subject, ext) in [
        ("server", "/CN=localhost", Some("server.ext")),
        ("client", &*format!("/CN={client_cn}"), Some("client.ext")),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                subject,
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &*format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &*format!("{name}.crt"),
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        if let Some(ext) = ext {
            args.extend(["-extfile".to_owned(), ext.to_owned()]);
        }
        openssl(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    }
}
