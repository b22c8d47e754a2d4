//! TLS on the client and ops listeners (`[server] tls_cert_file` and
//! `tls_key_file`), for sidecar deployments without a proxy in front: the
//! certificate chain and key are read at start, and again on SIGHUP (a
//! renewed certificate takes effect for new connections; a file that does
//! not load is refused and the running certificate stays).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Why the listener's certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error("[server] tls_cert_file {path}: no PEM certificate could be read ({reason}); give the server's certificate chain in PEM, leaf first")]
    Certificate { path: PathBuf, reason: String },
    #[error("[server] tls_key_file {path}: no PEM private key could be read ({reason}); give the certificate's private key in PEM (PKCS#8, PKCS#1 or SEC1)")]
    Key { path: PathBuf, reason: String },
    #[error("[server] tls_cert_file and tls_key_file do not go together; give the key of the certificate's first entry")]
    Mismatch(#[source] rustls::Error),
}

/// The listener's TLS settings, replaceable while it runs.
pub struct ServerTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    acceptor: RwLock<TlsAcceptor>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the certificate chain and key.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerTls>, ServerTlsError> {
        let acceptor = acceptor(cert_file, key_file)?;
        Ok(Arc::new(ServerTls {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            acceptor: RwLock::new(acceptor),
        }))
    }

    /// Reads the files again (SIGHUP); on an error the running certificate
    /// stays.
    pub fn reload(&self) -> Result<(), ServerTlsError> {
        let fresh = acceptor(&self.cert_file, &self.key_file)?;
        *self.acceptor.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// What accepts the next connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, ServerTlsError> {
    let certificate = |reason: String| ServerTlsError::Certificate {
        path: cert_file.to_owned(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| certificate(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(certificate("the file holds no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| ServerTlsError::Key {
        path: key_file.to_owned(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ServerTlsError::Mismatch)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(ServerTlsError::Mismatch)?;
    // HTTP/1.1 only: walcast serves no HTTP/2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
