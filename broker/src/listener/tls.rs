//! TLS for STOMP over TCP and for WebSocket (wss), with rustls and the `ring` provider.
//!
//! The certificate chain and the private key are PEM files (`tls_cert`, `tls_key`). The
//! handshake runs in the connection's own task under the connect timeout, never in the accept
//! loop, so a client that opens a socket and stalls the handshake delays no one else.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The TLS settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no certificate.
    #[error("tls_cert {path}: {reason}")]
    Certificate {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The key file could not be read or holds no private key.
    #[error("tls_key {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the pair (for example, the key does not match the certificate).
    #[error("cannot use the TLS certificate and key: {0}")]
    Config(String),
}

/// The broker's certificate and key, shared by every TLS listener (STOMP over TLS, wss, the
/// management HTTPS listener) and replaceable while they run: a SIGHUP swaps in a renewed
/// certificate without closing a listener or a connection. Handshakes already under way keep
/// the certificate they started with; the next one gets the new pair.
#[derive(Clone, Debug)]
pub struct Certificate {
    current: Arc<CurrentKey>,
    provider: Arc<CryptoProvider>,
}

/// A certificate and key read and checked by [`Certificate::read_replacement`].
#[derive(Debug)]
pub struct Replacement(Arc<CertifiedKey>);

/// What rustls asks for a certificate at each handshake.
#[derive(Debug)]
struct CurrentKey(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner())))
    }
}

impl Certificate {
    /// Reads the certificate chain and key.
    ///
    /// # Errors
    /// When a file cannot be read or parsed, or the key does not fit the certificate.
    pub fn load(cert: &Path, key: &Path) -> Result<Certificate, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = read_pair(cert, key, &provider)?;
        Ok(Certificate { current: Arc::new(CurrentKey(RwLock::new(Arc::new(pair)))), provider })
    }

    /// Reads and checks a new pair for [`Certificate::install`], so that a reload can check
    /// everything it changes before it changes anything.
    ///
    /// # Errors
    /// As [`Certificate::load`].
    pub fn read_replacement(&self, cert: &Path, key: &Path) -> Result<Replacement, TlsError> {
        read_pair(cert, key, &self.provider).map(|pair| Replacement(Arc::new(pair)))
    }

    /// Every listener presents `replacement` from its next handshake on.
    pub fn install(&self, replacement: Replacement) {
        *self.current.0.write().unwrap_or_else(|p| p.into_inner()) = replacement.0;
    }

    /// An acceptor presenting this certificate. `alpn` lists the protocols to offer
    /// (`http/1.1` for wss and HTTPS; none for STOMP).
    ///
    /// # Errors
    /// When rustls has no safe protocol version with this provider (never with `ring`).
    pub fn acceptor(&self, alpn: &[&[u8]]) -> Result<TlsAcceptor, TlsError> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&self.current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// Reads a certificate chain and its key and checks that they belong together.
fn read_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Certificate { path: cert.display().to_string(), reason: e.to_string() })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Certificate { path: cert.display().to_string(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Certificate {
            path: cert.display().to_string(),
            reason: "no CERTIFICATE block found".to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key { path: key.display().to_string(), reason: e.to_string() })?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| TlsError::Config(e.to_string()))
}
