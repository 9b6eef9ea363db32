//! TLS for registries that are not on loopback: rustls with the `ring`
//! provider and Mozilla's root certificates (`webpki-roots`), so a pull
//! does not depend on the host's certificate store, plus any extra roots
//! the configuration gives (a private registry's CA).

use std::sync::{Arc, OnceLock};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

fn build(extra_pem: &[String]) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for (i, pem) in extra_pem.iter().enumerate() {
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("extra registry root #{i}: bad PEM: {e}"))?;
            roots.add(cert).map_err(|e| format!("extra registry root #{i}: {e}"))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("extra registry root #{i}: no CERTIFICATE block in the PEM"));
        }
    }
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
        .map_err(|e| format!("tls set-up: {e}"))
}

/// The client configuration: Mozilla's roots plus `extra_pem` (each a PEM
/// text of one or more certificates).
pub fn client_config(extra_pem: &[String]) -> Result<Arc<ClientConfig>, String> {
    if !extra_pem.is_empty() {
        return build(extra_pem);
    }
    static DEFAULT: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    DEFAULT.get_or_init(|| build(&[])).clone()
}

/// A TLS session to `host` (a name or an IP address) over `tcp`, the
/// server's name and chain checked against `config`'s roots.
pub async fn connect(config: Arc<ClientConfig>, host: &str, tcp: TcpStream) -> Result<TlsStream<TcpStream>, String> {
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?;
    TlsConnector::from(config).connect(name, tcp).await.map_err(|e| format!("tls handshake with {host}: {e}"))
}
