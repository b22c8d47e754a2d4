//! TLS to a tenant's Postgres: one rustls client configuration, built from
//! the URL's libpq parameters (`sslmode`, `sslrootcert`, `sslcert`,
//! `sslkey`) at every connect, used by both the regular connection
//! (through tokio-postgres-rustls) and the replication session
//! (pgwire-replication); and what to tell the operator when a certificate
//! does not verify.
//!
//! Owns the verification policy of each `sslmode`. Opens no connections.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};

use super::SourceError;
use crate::config::{PgHost, PgTls, RootCerts, SslMode, TenantConfig};

/// The rustls configuration for the tenant's `sslmode`; `None` for
/// `disable` (and for a unix socket, where libpq uses no TLS either).
pub fn client_config(tenant: &TenantConfig) -> Result<Option<Arc<ClientConfig>>, SourceError> {
    let tls = &tenant.pg.tls;
    if tls.mode == SslMode::Disable {
        return Ok(None);
    }
    build(tls)
        .map(|c| Some(Arc::new(c)))
        .map_err(|(reason, fix)| SourceError::Tls {
            tenant: tenant.id.clone(),
            target: tenant.pg.to_string(),
            reason,
            fix,
        })
}

type Problem = (String, String);

fn build(tls: &PgTls) -> Result<ClientConfig, Problem> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| {
            (
                format!("rustls refused its own defaults: {e}"),
                "report this as a bug".into(),
            )
        })?;
    let builder = if tls.verifies_chain() {
        let roots = Arc::new(root_store(&tls.root_certs)?);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
            .build()
            .map_err(|e| {
                (
                    format!("the CA certificates do not load: {e}"),
                    "check sslrootcert".into(),
                )
            })?;
        if tls.mode == SslMode::VerifyFull {
            builder.dangerous().with_custom_certificate_verifier(webpki)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
        }
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
    };
    match &tls.client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    (
                        format!("sslcert {} does not load: {e}", cert.display()),
                        "give a PEM certificate (chain) file".into(),
                    )
                })?;
            if chain.is_empty() {
                return Err((
                    format!("sslcert {} holds no certificate", cert.display()),
                    "give a PEM certificate (chain) file".into(),
                ));
            }
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                (
                    format!("sslkey {} does not load: {e}", key.display()),
                    "give the client certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1)"
                        .into(),
                )
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                (
                    format!("sslcert and sslkey do not go together: {e}"),
                    "give the key that belongs to the certificate".into(),
                )
            })
        }
    }
}

fn root_store(roots: &RootCerts) -> Result<rustls::RootCertStore, Problem> {
    let mut store = rustls::RootCertStore::empty();
    match roots {
        RootCerts::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err((
                    "no CA certificates found on this system to verify the server with".into(),
                    "install the ca-certificates package, or set sslrootcert=PATH to the CA that signed the server's certificate".into(),
                ));
            }
        }
        RootCerts::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    (
                        format!("sslrootcert {} does not load: {e}", path.display()),
                        "give a PEM file of CA certificates".into(),
                    )
                })?;
            store.add_parsable_certificates(certs);
            if store.is_empty() {
                return Err((
                    format!("sslrootcert {} holds no CA certificate", path.display()),
                    "give a PEM file of CA certificates".into(),
                ));
            }
        }
    }
    Ok(store)
}

/// `allow`, `prefer`, `require` without `sslrootcert`: encrypted, and the
/// certificate is whatever the server shows (libpq does the same). The
/// handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca` (and `require` with `sslrootcert`): the chain must lead to a
/// trusted CA; the names in the certificate are not compared with the host.
/// webpki checks the chain before the name, so a name mismatch means the
/// chain passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// What a TLS failure's text (of either driver) means, and what to change;
/// `None` when it is not a TLS failure walcast knows.
pub fn explain_failure(text: &str, tenant: &TenantConfig) -> Option<Problem> {
    use crate::report::{cert_failure, CertFailure};
    let host = match &tenant.pg.host {
        PgHost::Tcp(host) => host.clone(),
        PgHost::Unix(dir) => dir.display().to_string(),
    };
    let problem = match cert_failure(text) {
        Some(CertFailure::UnknownCa) => (
            format!("the certificate of {host} is not signed by a CA walcast trusts (unknown CA)"),
            "set sslrootcert=PATH in the url to the CA certificate that signed it (sslrootcert=system: the system's CAs)",
        ),
        Some(CertFailure::NameMismatch) => (
            format!("the certificate of {host} is not for that name (name mismatch)"),
            "connect with a host name the certificate lists, or use sslmode=verify-ca to check only the CA",
        ),
        Some(CertFailure::NotYetValid) => (
            format!("the certificate of {host} is not valid yet"),
            "check the clocks of this host and the server, or the certificate's start date",
        ),
        Some(CertFailure::Expired) => (
            format!("the certificate of {host} has expired"),
            "renew the server's certificate (ssl_cert_file in postgresql.conf) and reload Postgres",
        ),
        Some(CertFailure::ClientCertRequired) => (
            format!("{host} asks for a client certificate"),
            "give sslcert=PATH and sslkey=PATH in the url",
        ),
        Some(CertFailure::Other) => (
            format!("the certificate of {host} does not verify ({text})"),
            "check sslrootcert and the server's certificate",
        ),
        None => {
            let lower = text.to_ascii_lowercase();
            if !["does not support tls", "server does not support ssl", "sslrequest rejected"]
                .iter()
                .any(|s| lower.contains(s))
            {
                return None;
            }
            (
                format!(
                    "{host} does not accept TLS connections (sslmode={})",
                    tenant.pg.tls.mode.as_str()
                ),
                "turn on ssl in the server's postgresql.conf, or use sslmode=prefer to connect without TLS",
            )
        }
    };
    Some((problem.0, problem.1.to_owned()))
}

/// The server turned a plain connection away ("no pg_hba.conf entry …, no
/// encryption") while `sslmode` kept TLS off: it may take the user only over
/// TLS (`hostssl`). `None` under other modes, where the same words mean
/// pg_hba.conf has no line for this host at all.
pub fn plain_refused(tenant: &TenantConfig) -> Option<Problem> {
    let mode = tenant.pg.tls.mode;
    matches!(mode, SslMode::Disable | SslMode::Allow).then(|| {
        (
            format!(
                "pg_hba.conf has no entry for a plain connection of this user and sslmode={} kept TLS off: the server may take it only over TLS (hostssl)",
                mode.as_str()
            ),
            format!(
                "use sslmode=verify-full (with sslrootcert=PATH for a private CA) or sslmode=require, or add a `host {} {} <address> scram-sha-256` line to pg_hba.conf",
                tenant.pg.dbname, tenant.pg.user
            ),
        )
    })
}

/// pgwire-replication's TLS settings around walcast's rustls configuration.
pub fn replication_tls(
    mode: SslMode,
    config: Option<Arc<ClientConfig>>,
) -> pgwire_replication::TlsConfig {
    let Some(config) = config else {
        return pgwire_replication::TlsConfig::disabled();
    };
    pgwire_replication::TlsConfig {
        mode: match mode {
            SslMode::Prefer => pgwire_replication::SslMode::Prefer,
            _ => pgwire_replication::SslMode::Require,
        },
        client_config: Some(pgwire_replication::RustlsClientConfig(config)),
        ..Default::default()
    }
}
