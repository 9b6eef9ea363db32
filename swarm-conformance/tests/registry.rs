//! The test registry over real loopback connections, spoken to by a
//! minimal HTTP/1.1 client here: auth refused without (or with wrong)
//! credentials, manifests by tag and by digest, blobs whose digest matches
//! their bytes, the Bearer token flow with its blob redirect, a corrupted
//! layer, and HTTPS with the test CA (trusted, then not).

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use swarm_conformance::registry::{Auth, Image, ManifestFormat, TestCa, TestRegistry, digest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

async fn exchange<IO: AsyncRead + AsyncWrite + Unpin>(
    mut conn: IO,
    method: &str,
    path: &str,
    authz: Option<&str>,
) -> Answer {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: registry\r\n");
    if let Some(a) = authz {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer { status, headers, body: raw[split + 4..].to_vec() }
}

async fn get(addr: SocketAddr, path: &str, authz: Option<&str>) -> Answer {
    exchange(TcpStream::connect(addr).await.unwrap(), "GET", path, authz).await
}

fn image(format: ManifestFormat) -> Image {
    Image::new(format, br#"{"os":"linux"}"#.to_vec(), vec![b"layer one".to_vec(), b"layer two".to_vec()])
}

const ALICE: &str = "Basic YWxpY2U6czNjcmV0"; // alice:s3cret

#[tokio::test]
async fn basic_auth_manifests_by_tag_and_digest_and_blobs() {
    let reg = TestRegistry::start(Auth::basic("alice", "s3cret")).await.unwrap();
    let pushed = reg.push("team/app", "v1", &image(ManifestFormat::Oci)).unwrap();
    let addr = reg.addr();
    // Refused without credentials and with wrong ones, with a Basic challenge.
    for authz in [None, Some("Basic YWxpY2U6d3Jvbmc=")] {
        for path in ["/v2/", "/v2/team/app/manifests/v1", &format!("/v2/team/app/blobs/{}", pushed.config_digest)] {
            let a = get(addr, path, authz).await;
            assert_eq!(a.status, 401, "{path} with {authz:?}");
            assert!(a.header("www-authenticate").starts_with("Basic realm="), "{a:?}");
            assert!(String::from_utf8_lossy(&a.body).contains("UNAUTHORIZED"));
        }
    }
    let a = get(addr, "/v2/", Some(ALICE)).await;
    assert_eq!((a.status, a.header("docker-distribution-api-version")), (200, "registry/2.0"));
    // The manifest by tag and by digest: the same bytes, whose digest is the one given.
    let by_tag = get(addr, "/v2/team/app/manifests/v1", Some(ALICE)).await;
    let by_digest = get(addr, &format!("/v2/team/app/manifests/{}", pushed.manifest_digest), Some(ALICE)).await;
    assert_eq!((by_tag.status, by_digest.status), (200, 200));
    assert_eq!(by_tag.body, by_digest.body);
    assert_eq!(format!("sha256:{:x}", Sha256::digest(&by_tag.body)), pushed.manifest_digest);
    assert_eq!(by_tag.header("docker-content-digest"), pushed.manifest_digest);
    assert_eq!(by_tag.header("content-type"), "application/vnd.oci.image.manifest.v1+json");
    let m: serde_json::Value = serde_json::from_slice(&by_tag.body).unwrap();
    assert_eq!(m["config"]["digest"], pushed.config_digest.as_str());
    let layers: Vec<&str> = m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap()).collect();
    assert_eq!(layers, pushed.layer_digests.iter().map(String::as_str).collect::<Vec<_>>());
    // Every blob the manifest names is served with bytes matching its digest.
    for d in layers.iter().copied().chain([pushed.config_digest.as_str()]) {
        let b = get(addr, &format!("/v2/team/app/blobs/{d}"), Some(ALICE)).await;
        assert_eq!(b.status, 200);
        assert_eq!(format!("sha256:{:x}", Sha256::digest(&b.body)), d);
        assert_eq!(b.header("content-length"), b.body.len().to_string());
    }
    assert_eq!(
        get(addr, &format!("/v2/team/app/blobs/{}", pushed.layer_digests[1]), Some(ALICE)).await.body,
        b"layer two"
    );
    // HEAD: the length, no body.
    let head =
        exchange(TcpStream::connect(addr).await.unwrap(), "HEAD", "/v2/team/app/manifests/v1", Some(ALICE)).await;
    assert_eq!((head.status, head.header("content-length")), (200, by_tag.body.len().to_string().as_str()));
    assert!(head.body.is_empty());
    // Unknown tags, blobs and repositories.
    let missing = get(addr, "/v2/team/app/manifests/v2", Some(ALICE)).await;
    assert_eq!(missing.status, 404);
    assert!(String::from_utf8_lossy(&missing.body).contains("MANIFEST_UNKNOWN"));
    assert_eq!(get(addr, &format!("/v2/team/app/blobs/{}", digest(b"nothing")), Some(ALICE)).await.status, 404);
    assert_eq!(get(addr, "/v2/other/manifests/v1", Some(ALICE)).await.status, 404);
    // No storage path to get round the credentials, no token endpoint with basic auth.
    assert_eq!(get(addr, &format!("/storage/v2/team/app/blobs/{}", pushed.config_digest), None).await.status, 404);
    assert_eq!(get(addr, "/token?service=x", Some(ALICE)).await.status, 404);
    let log = reg.requests();
    assert_eq!(log.first().map(String::as_str), Some("/v2/"));
    // Refused twice, then GET and HEAD.
    assert_eq!(log.iter().filter(|p| *p == "/v2/team/app/manifests/v1").count(), 4, "{log:?}");
}

#[tokio::test]
async fn a_tls_hello_on_plain_http_is_closed_at_once() {
    let reg = TestRegistry::start(Auth::Anonymous).await.unwrap();
    let mut conn = TcpStream::connect(reg.addr()).await.unwrap();
    conn.write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 1, 0, 0, 0]).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "{read:?} {rest:?}");
    assert!(reg.requests().is_empty());
    // Anonymous: served without credentials.
    assert_eq!(get(reg.addr(), "/v2/", None).await.status, 200);
}

#[tokio::test]
async fn the_bearer_flow_tokens_redirects_and_a_corrupt_layer() {
    let reg = TestRegistry::start(Auth::bearer("puller", "s3cret", "tok-123", "test-registry")).await.unwrap();
    let img = image(ManifestFormat::DockerSchema2).in_index("amd64").corrupt_layer(1);
    let pushed = reg.push("team/busybox", "1", &img).unwrap();
    let addr = reg.addr();
    let a = get(addr, "/v2/team/busybox/manifests/1", None).await;
    assert_eq!(a.status, 401);
    assert_eq!(
        a.header("www-authenticate"),
        format!(
            "Bearer realm=\"http://{addr}/token\",service=\"test-registry\",scope=\"repository:team/busybox:pull\""
        )
    );
    assert!(!get(addr, "/v2/", None).await.header("www-authenticate").contains("scope"));
    // The token endpoint: credentials, service and a held repository's pull scope.
    let creds = "Basic cHVsbGVyOnMzY3JldA=="; // puller:s3cret
    let query = "/token?service=test-registry&scope=repository%3Ateam%2Fbusybox%3Apull";
    assert_eq!(get(addr, query, None).await.status, 401);
    assert_eq!(get(addr, query, Some("Basic cHVsbGVyOndyb25n")).await.status, 401);
    assert_eq!(
        get(addr, "/token?service=other&scope=repository%3Ateam%2Fbusybox%3Apull", Some(creds)).await.status,
        400
    );
    assert_eq!(
        get(addr, "/token?service=test-registry&scope=repository%3Aother%3Apull", Some(creds)).await.status,
        400
    );
    let t = get(addr, query, Some(creds)).await;
    assert_eq!(t.status, 200);
    let token: serde_json::Value = serde_json::from_slice(&t.body).unwrap();
    assert_eq!(token["token"], "tok-123");
    // With the token: the tag is an index that names the manifest for amd64.
    let bearer = Some("Bearer tok-123");
    assert_eq!(get(addr, "/v2/team/busybox/manifests/1", Some(creds)).await.status, 401);
    let ix = get(addr, "/v2/team/busybox/manifests/1", bearer).await;
    assert_eq!((ix.status, ix.header("content-type")), (200, "application/vnd.oci.image.index.v1+json"));
    assert_eq!(Some(ix.header("docker-content-digest").to_string()), pushed.index_digest);
    let ix: serde_json::Value = serde_json::from_slice(&ix.body).unwrap();
    assert_eq!(ix["manifests"][1]["digest"], pushed.manifest_digest.as_str());
    assert_eq!(ix["manifests"][1]["platform"]["architecture"], "amd64");
    let m = get(addr, &format!("/v2/team/busybox/manifests/{}", pushed.manifest_digest), bearer).await;
    assert_eq!(m.header("content-type"), "application/vnd.docker.distribution.manifest.v2+json");
    // Blobs are redirected to storage that needs no auth; the corrupt layer does not match its digest.
    for (i, d) in pushed.layer_digests.iter().enumerate() {
        let r = get(addr, &format!("/v2/team/busybox/blobs/{d}"), bearer).await;
        assert_eq!(r.status, 307);
        let location = r.header("location").to_string();
        assert!(location.starts_with("/storage/"), "{location}");
        let b = get(addr, &location, None).await;
        assert_eq!(b.status, 200);
        assert_eq!(digest(&b.body) == *d, i == 0, "layer {i}");
    }
    assert_eq!(get(addr, "/storage/v2/team/busybox/manifests/1", None).await.status, 404);
    assert!(reg.requests().iter().any(|p| p.starts_with("/token?")));
}

fn client(roots: &[&str]) -> TlsConnector {
    let mut store = RootCertStore::empty();
    for pem in roots {
        store.add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()).unwrap();
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(cfg))
}

#[tokio::test]
async fn https_with_the_test_ca() {
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let ca = match TestCa::for_ip(ip) {
        Ok(ca) => ca,
        Err(e) => {
            swarm_conformance::skip::skip(&format!("needs the openssl CLI: {e}"));
            return;
        }
    };
    let reg = TestRegistry::start_https(ip, Auth::bearer("u", "p", "t", "s"), &ca).await.unwrap();
    reg.push("r", "1", &image(ManifestFormat::Oci)).unwrap();
    let name = ServerName::IpAddress(ip.into());
    let tls =
        client(&[ca.ca_pem()]).connect(name.clone(), TcpStream::connect(reg.addr()).await.unwrap()).await.unwrap();
    let a = exchange(tls, "GET", "/v2/r/manifests/1", None).await;
    assert_eq!(a.status, 401);
    assert!(a.header("www-authenticate").contains(&format!("realm=\"https://{}/token\"", reg.addr())), "{a:?}");
    // Another CA's client does not trust it.
    let other = TestCa::for_ip(ip).unwrap();
    let refused = client(&[other.ca_pem()]).connect(name, TcpStream::connect(reg.addr()).await.unwrap()).await;
    assert!(refused.is_err());
    assert_eq!(reg.requests(), ["/v2/r/manifests/1"]);
}
