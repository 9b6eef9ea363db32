//! A certificate authority of the test's own, for the registry in HTTPS
//! (feature `registry-tls`): a CA and a server certificate for one IP
//! address signed by it (P-256 keys, valid two days), made with the
//! `openssl` command line tool in a temporary directory that is removed
//! afterwards. A client trusts the registry by adding [`TestCa::ca_pem`]
//! to its roots.

use super::RegistryError;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A test CA and the server identity it signed for one address.
#[derive(Clone)]
pub struct TestCa {
    ca_pem: String,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("ca_pem", &format_args!("<{} bytes>", self.ca_pem.len())).finish()
    }
}

/// Tells apart the directories of several CAs made by one process.
static SEQ: AtomicU32 = AtomicU32::new(0);

impl TestCa {
    /// A CA and a server certificate for `ip` (its subject alternative
    /// name) signed by it.
    pub fn for_ip(ip: IpAddr) -> Result<Self, RegistryError> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("swarm-test-registry-pki-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| pki(format!("creating {}: {e}", dir.display())))?;
        let made = make(&dir, ip);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "test CA: removing the temporary directory failed");
        }
        made
    }

    /// The CA certificate in PEM, for a client's roots.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server side of the TLS handshake, with the certificate for the
    /// address.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }
}

fn pki(what: String) -> RegistryError {
    RegistryError::Pki(what)
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), RegistryError> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .map_err(|e| pki(format!("running openssl (is it installed?): {e}")))?;
    if !out.status.success() {
        return Err(pki(format!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

fn make(dir: &Path, ip: IpAddr) -> Result<TestCa, RegistryError> {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let ca_args = ["-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=swarm test registry ca", "-days", "2"];
    openssl(dir, &[&["req", "-x509"][..], &ec, &ca_args].concat())?;
    let subject = format!("/CN={ip}");
    openssl(dir, &[&["req"][..], &ec, &["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", &subject]].concat())?;
    let ext = format!("subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n");
    std::fs::write(dir.join("ext"), ext).map_err(|e| pki(format!("writing the extensions file: {e}")))?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    )?;
    let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| pki(format!("reading {name}: {e}")));
    let ca_pem = String::from_utf8(read("ca.pem")?).map_err(|e| pki(format!("ca.pem is not text: {e}")))?;
    let leaf = CertificateDer::from_pem_slice(&read("leaf.pem")?).map_err(|e| pki(format!("leaf.pem: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&read("leaf.key")?).map_err(|e| pki(format!("leaf.key: {e}")))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(vec![leaf], key))
        .map_err(|e| pki(format!("the server TLS config: {e}")))?;
    Ok(TestCa { ca_pem, acceptor: TlsAcceptor::from(Arc::new(cfg)) })
}
