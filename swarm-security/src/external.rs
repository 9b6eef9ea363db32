//! An external CA: a signing service that holds the root key, so that the
//! key is never in the cluster's store (as Swarm's `--external-ca
//! protocol=cfssl,url=...`).
//!
//! The protocol is CFSSL's `POST /api/v1/cfssl/sign` (JSON): the managers
//! send the node's certificate request with the subject and host names
//! they decide (CN = node id, OU = role, O = cluster id; SANs the node id
//! and the role's server name), and check what comes back before anyone
//! uses it: the subject must be exactly the one asked for, the public key
//! the request's, and the certificate must verify against the cluster's
//! root alone. The lifetime and usages are the signing service's (its
//! profile must allow server and client authentication).
//!
//! The client speaks HTTP/1.1 over plain TCP (`http://host:port[/prefix]`):
//! run the signer on the managers' hosts or a trusted network (a request
//! or an answer changed on the way is refused by the checks above, but
//! the signer itself must be protected, e.g. by CFSSL's authentication).
//! HTTPS to the signer is not implemented.

use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::identity::NodeIdentity;
use crate::role::Role;

/// Largest answer read from the signer.
const MAX_ANSWER: u64 = 1 << 20;

/// Why the external CA could not be used or refused.
#[derive(Debug, thiserror::Error)]
pub enum ExternalCaError {
    /// The URL is not `http://host:port[/prefix]`.
    #[error("external CA URL {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The signer could not be reached or the exchange failed.
    #[error("external CA at {url}: {reason}")]
    Unreachable {
        /// The signer's URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The signer answered with an error.
    #[error("external CA at {url} refused to sign: {reason}")]
    Refused {
        /// The signer's URL.
        url: String,
        /// Its errors.
        reason: String,
    },
    /// The signer answered a certificate the managers will not hand out.
    #[error("external CA at {url} answered an unusable certificate: {reason}")]
    BadCertificate {
        /// The signer's URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Where an external CA is and which root it signs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalSigner {
    url: String,
    authority: String,
    path: String,
    root: CertificateDer<'static>,
}

#[derive(Serialize)]
struct SignName<'a> {
    #[serde(rename = "O")]
    o: &'a str,
    #[serde(rename = "OU")]
    ou: &'a str,
}

#[derive(Serialize)]
struct SignSubject<'a> {
    #[serde(rename = "CN")]
    cn: &'a str,
    names: [SignName<'a>; 1],
}

#[derive(Serialize)]
struct SignRequest<'a> {
    certificate_request: &'a str,
    hosts: [&'a str; 2],
    subject: SignSubject<'a>,
}

#[derive(Deserialize)]
struct SignAnswer {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    result: Option<SignResult>,
    #[serde(default)]
    errors: Vec<SignMessage>,
}

#[derive(Deserialize)]
struct SignResult {
    certificate: String,
}

#[derive(Deserialize)]
struct SignMessage {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

impl ExternalSigner {
    /// A signer at `url` (`http://host:port[/prefix]`) whose certificates
    /// chain to the root `root_pem`.
    pub fn new(url: &str, root_pem: &str) -> Result<Self, ExternalCaError> {
        let bad = |reason: &str| ExternalCaError::Url { url: url.to_owned(), reason: reason.to_owned() };
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            bad(if url.starts_with("https://") {
                "https is not supported; use http:// on a trusted network"
            } else {
                "must start with http://"
            })
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || !authority.contains(':') {
            return Err(bad("needs host:port"));
        }
        let root = CertificateDer::from_pem_slice(root_pem.as_bytes())
            .map_err(|e| bad(&format!("the external CA's root certificate: {e}")))?;
        Ok(ExternalSigner { url: url.to_owned(), authority: authority.to_owned(), path: path.to_owned(), root })
    }

    /// The signer's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> ExternalCaError {
        ExternalCaError::Unreachable { url: self.url.clone(), reason: reason.to_string() }
    }

    /// Has the signer sign `csr_pem` for `node_id` in `role` of
    /// `cluster_id`, and checks the answer (see the [module docs](self)).
    /// Returns the certificate, PEM.
    pub async fn sign(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: Role,
        cluster_id: &str,
    ) -> Result<String, ExternalCaError> {
        let request = SignRequest {
            certificate_request: csr_pem,
            hosts: [node_id, role.server_name()],
            subject: SignSubject { cn: node_id, names: [SignName { o: cluster_id, ou: role.as_str() }] },
        };
        let body = serde_json::to_vec(&request).map_err(|e| self.unreachable(e))?;
        let answer = tokio::time::timeout(Duration::from_secs(10), self.post("/api/v1/cfssl/sign", &body))
            .await
            .map_err(|_| self.unreachable("no answer within 10 s"))??;
        let answer: SignAnswer = serde_json::from_slice(&answer)
            .map_err(|e| self.unreachable(format!("the answer is not CFSSL's JSON: {e}")))?;
        let cert_pem = match (answer.success, answer.result) {
            (true, Some(r)) => r.certificate,
            _ => {
                let reason = answer
                    .errors
                    .iter()
                    .map(|e| format!("{} (code {})", e.message, e.code))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(ExternalCaError::Refused { url: self.url.clone(), reason });
            }
        };
        self.check(&cert_pem, csr_pem, node_id, role, cluster_id)?;
        tracing::info!(node_id, %role, signer = %self.url, "the external CA issued a node certificate");
        Ok(cert_pem)
    }

    fn check(
        &self,
        cert_pem: &str,
        csr_pem: &str,
        node_id: &str,
        role: Role,
        cluster_id: &str,
    ) -> Result<(), ExternalCaError> {
        let bad = |reason: String| ExternalCaError::BadCertificate { url: self.url.clone(), reason };
        let id = NodeIdentity::from_pem(cert_pem).map_err(|e| bad(e.to_string()))?;
        if (id.node_id.as_str(), id.role, id.cluster_id.as_str()) != (node_id, role, cluster_id) {
            return Err(bad(format!(
                "it names {} ({}) of cluster {}, not {node_id} ({role}) of {cluster_id}: the signer must use the subject it is given",
                id.node_id, id.role, id.cluster_id
            )));
        }
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| bad(e.to_string()))?;
        let (_, x) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad(e.to_string()))?;
        if x.public_key().subject_public_key.data.as_ref() != rcgen::PublicKeyData::der_bytes(&csr.public_key) {
            return Err(bad("it does not carry the public key of the request".into()));
        }
        if !crate::tls::issued_by(&der, role, &self.root) {
            return Err(bad(
                "it does not verify against the cluster's root certificate alone (another key signed it, it is not valid now, or it lacks server and client authentication)".into(),
            ));
        }
        Ok(())
    }

    /// One `POST` of `body` to `path` (under the URL's prefix); the
    /// answer's body when the status is 2xx (CFSSL also answers its errors
    /// as JSON with 4xx/5xx: those bodies are returned too, to be read).
    async fn post(&self, path: &str, body: &[u8]) -> Result<Vec<u8>, ExternalCaError> {
        let mut stream = TcpStream::connect(&self.authority).await.map_err(|e| self.unreachable(e))?;
        let head = format!(
            "POST {}{path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.path,
            self.authority,
            body.len()
        );
        stream.write_all(head.as_bytes()).await.map_err(|e| self.unreachable(e))?;
        stream.write_all(body).await.map_err(|e| self.unreachable(e))?;
        let mut raw = Vec::new();
        stream.take(MAX_ANSWER).read_to_end(&mut raw).await.map_err(|e| self.unreachable(e))?;
        parse_http_answer(&raw).map_err(|e| self.unreachable(e))
    }
}

/// The body of an HTTP/1.1 answer read to its end (`Connection: close`):
/// by `Content-Length`, chunked, or up to the end.
fn parse_http_answer(raw: &[u8]) -> Result<Vec<u8>, String> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no complete HTTP header in the answer")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "the HTTP header is not text")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code: u16 = status
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {status:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| format!("bad Content-Length {value:?}"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n).ok_or("the answer ended before its Content-Length")?.to_vec()
    } else {
        rest.to_vec()
    };
    if !(200..300).contains(&code) && !body.starts_with(b"{") {
        return Err(format!("HTTP status {code}"));
    }
    Ok(body)
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n").ok_or("a chunk size line is cut")?;
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| "a chunk size is not text")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(rest.get(..size).ok_or("a chunk is cut")?);
        rest = rest.get(size + 2..).ok_or("a chunk's end is cut")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let root = crate::ca::ClusterCa::generate("c", Duration::from_secs(3600)).unwrap();
        let pem = root.cert_pem();
        let s = ExternalSigner::new("http://127.0.0.1:8888/ca/", pem).unwrap();
        assert_eq!((s.authority.as_str(), s.path.as_str()), ("127.0.0.1:8888", "/ca"));
        assert!(ExternalSigner::new("https://x:1", pem).unwrap_err().to_string().contains("https is not supported"));
        assert!(ExternalSigner::new("ftp://x:1", pem).is_err());
        assert!(ExternalSigner::new("http://x", pem).unwrap_err().to_string().contains("host:port"));
        assert!(ExternalSigner::new("http://x:1", "not pem").is_err());
    }

    #[test]
    fn http_answers_are_read_by_length_chunks_or_end() {
        let by_length = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}xx";
        assert_eq!(parse_http_answer(by_length).unwrap(), b"{}");
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n3;x=y\r\n\":1\r\n1\r\n}\r\n0\r\n\r\n";
        assert_eq!(parse_http_answer(chunked).unwrap(), b"{\"a\":1}");
        assert_eq!(parse_http_answer(b"HTTP/1.0 200 OK\r\n\r\n{}").unwrap(), b"{}");
        assert_eq!(parse_http_answer(b"HTTP/1.1 400 Bad\r\nContent-Length: 2\r\n\r\n{}").unwrap(), b"{}");
        assert!(parse_http_answer(b"HTTP/1.1 502 Bad Gateway\r\n\r\nnope").unwrap_err().contains("502"));
        assert!(parse_http_answer(b"garbage").is_err());
        assert!(parse_http_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}").is_err());
    }
}
