//! The rustls client configuration behind `tls://`, `stomp+ssl://` and `wss://`.
//!
//! Public brokers are trusted through the Mozilla roots compiled in (webpki-roots), so a client
//! behaves the same on every machine whatever its system store holds. A private broker's CA is
//! added from a PEM file ([`TlsOptions::ca_file`]). Turning verification off is possible only by
//! asking for it by name ([`TlsOptions::insecure_skip_verify`]): the handshake still checks that
//! the server holds the key of the certificate it shows, but anyone can show one, so the
//! connection is encrypted yet not authenticated.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, ring};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::ClientError;

/// How the server's certificate is checked on a TLS connection.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// A PEM file of CA certificates trusted in addition to the public roots: for a broker whose
    /// certificate a private CA signed (or a self-signed certificate itself).
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate. Only for testing against a broker whose certificate cannot be
    /// checked; the connection is then open to a man in the middle.
    pub insecure_skip_verify: bool,
}

impl TlsOptions {
    /// The rustls configuration these options describe.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, ClientError> {
        let provider = Arc::new(ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(format!("no usable TLS version: {e}")))?;
        let config = if self.insecure_skip_verify {
            let verifier = AcceptAnyCertificate { algorithms: provider.signature_verification_algorithms };
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth()
        } else {
            builder.with_root_certificates(self.roots()?).with_no_client_auth()
        };
        Ok(Arc::new(config))
    }

    fn roots(&self) -> Result<RootCertStore, ClientError> {
        let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(path) = &self.ca_file {
            let unreadable = |e: &dyn std::fmt::Display| {
                ClientError::Tls(format!("cannot read the CA file {}: {e}", path.display()))
            };
            let mut added = 0;
            for certificate in CertificateDer::pem_file_iter(path).map_err(|e| unreadable(&e))? {
                let certificate = certificate.map_err(|e| unreadable(&e))?;
                roots.add(certificate).map_err(|e| unreadable(&e))?;
                added += 1;
            }
            if added == 0 {
                return Err(unreadable(&"it holds no PEM certificate"));
            }
        }
        Ok(roots)
    }
}

/// The name the server's certificate must carry: the URL's host.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, ClientError> {
    ServerName::try_from(host.to_owned())
        .map_err(|_| ClientError::Tls(format!("{host:?} is not a host name or IP address TLS can check")))
}

/// What `insecure_skip_verify` installs: every certificate is accepted, signatures are still
/// checked so the handshake itself is sound.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
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
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, certificate, signature, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, certificate, signature, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
