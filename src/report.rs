//! How errors and panics become one line of text: for logs, `/readyz` and
//! the message `main` prints before exiting.

/// An error and its causes on one line, joined by ": ".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their cause in their own text: say it once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Why a TLS peer's certificate was refused, read off the error's text
/// (rustls's, as tokio-postgres, pgwire-replication and redis-rs pass it on;
/// none of them keeps the typed error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertFailure {
    UnknownCa,
    NameMismatch,
    NotYetValid,
    Expired,
    /// The server asks for a client certificate and got none.
    ClientCertRequired,
    /// Some other reason the certificate does not verify.
    Other,
}

/// The certificate failure `text` describes, if it is one.
pub fn cert_failure(text: &str) -> Option<CertFailure> {
    let lower = text.to_ascii_lowercase();
    let has = |signs: &[&str]| signs.iter().any(|s| lower.contains(s));
    if has(&["unknownissuer", "unknown issuer"]) {
        Some(CertFailure::UnknownCa)
    } else if has(&["notvalidforname", "not valid for name"]) {
        Some(CertFailure::NameMismatch)
    } else if has(&["notvalidyet", "not valid yet", "not valid before"]) {
        Some(CertFailure::NotYetValid)
    } else if has(&["expired"]) {
        Some(CertFailure::Expired)
    } else if has(&[
        "certificaterequired",
        "certificate required",
        // Postgres's own refusal under `cert` authentication.
        "requires a valid client certificate",
    ]) {
        Some(CertFailure::ClientCertRequired)
    } else if has(&[
        "invalid peer certificate",
        "badsignature",
        "causedasendentity",
        "caused as end entity",
    ]) {
        Some(CertFailure::Other)
    } else {
        None
    }
}

/// The text a panic was raised with.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
