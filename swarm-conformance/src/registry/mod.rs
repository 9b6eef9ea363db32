//! A container registry for the runtimes' pull tests (feature `registry`):
//! a small Docker Registry HTTP API v2 server, on loopback or any local
//! address, that serves the images a test loads into it.
//!
//! - What it serves: `GET`/`HEAD` of `/v2/` (the API check),
//!   `/v2/<repo>/manifests/<tag or digest>` and `/v2/<repo>/blobs/<digest>`,
//!   with `Content-Type` and `Docker-Content-Digest`. An [`Image`] (a config
//!   and layers) is loaded with [`TestRegistry::push`] as an OCI or a Docker
//!   schema2 manifest, optionally behind an OCI index, optionally with a
//!   layer whose bytes do not match its digest.
//! - Auth ([`Auth`]): anonymous; basic (user and password on every `/v2/`
//!   request); or the Bearer token flow as Docker Hub does it: a `401` with
//!   a `Bearer realm=".../token",service=..,scope="repository:<repo>:pull"`
//!   challenge, a token endpoint at `/token` that wants the user and
//!   password in basic auth, the service and a pull scope of a repository
//!   it holds, and blob requests redirected (`307`) to `/storage/...`,
//!   which needs no auth, as a storage bucket's signed URL would not
//!   (there is no `/storage/` in the other modes).
//! - HTTP, or HTTPS with the certificate of a [`TestCa`] made for its
//!   address (feature `registry-tls`). On plain HTTP a TLS ClientHello is
//!   answered by closing the connection, so a client that tries TLS first
//!   (the Docker Engine) falls back to HTTP at once.
//! - [`TestRegistry::requests`] lists the paths asked for, in order, for
//!   tests that check the flow a client took.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use swarm_conformance::registry::{Auth, Image, ManifestFormat, TestRegistry};
//! let reg = TestRegistry::start(Auth::basic("alice", "s3cret")).await.unwrap();
//! let image = Image::new(ManifestFormat::Oci, b"{}".to_vec(), vec![b"a layer".to_vec()]);
//! let pushed = reg.push("team/app", "v1", &image).unwrap();
//! let reference = format!("{}/team/app:v1", reg.addr());
//! # let _ = (pushed, reference);
//! # }
//! ```
//!
//! Each connection carries one request and is closed after the answer.

mod http;
mod image;
#[cfg(feature = "registry-tls")]
mod tls;

pub use image::{Image, ImageFiles, ManifestFormat, Served, digest};
#[cfg(feature = "registry-tls")]
pub use tls::TestCa;

use base64::Engine as _;
use http::{Request, Response, query_values, read_request, write_response};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What can go wrong starting or loading the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The listening socket could not be bound.
    #[error("binding the test registry on {ip}: {source}")]
    Bind {
        /// The address asked for.
        ip: IpAddr,
        /// Why.
        source: std::io::Error,
    },
    /// An image document could not be encoded.
    #[error("encoding an image document: {0}")]
    Json(#[from] serde_json::Error),
    /// Making the test CA or the server certificate failed.
    #[error("making the test certificates: {0}")]
    Pki(String),
}

/// How the registry authenticates clients.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// No credentials asked for.
    Anonymous,
    /// `Authorization: Basic` with this user and password on every `/v2/`
    /// request.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// The Bearer token flow: the token endpoint `/token` takes `user` and
    /// `password` in basic auth and hands out `token`, for `service`.
    Bearer {
        /// User name.
        user: String,
        /// Password.
        password: String,
        /// The token handed out and then required.
        token: String,
        /// The service named in the challenge and required in the token
        /// request.
        service: String,
    },
}

impl Auth {
    /// Basic auth with `user` and `password`.
    pub fn basic(user: &str, password: &str) -> Self {
        Auth::Basic { user: user.into(), password: password.into() }
    }

    /// The Bearer token flow for `user` and `password`, handing out
    /// `token` for `service`.
    pub fn bearer(user: &str, password: &str, token: &str, service: &str) -> Self {
        Auth::Bearer { user: user.into(), password: password.into(), token: token.into(), service: service.into() }
    }
}

impl std::fmt::Debug for Auth {
    // Test credentials, but credentials: no passwords or tokens in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Anonymous => f.write_str("Anonymous"),
            Auth::Basic { user, .. } => f.debug_struct("Basic").field("user", user).finish_non_exhaustive(),
            Auth::Bearer { user, service, .. } => {
                f.debug_struct("Bearer").field("user", user).field("service", service).finish_non_exhaustive()
            }
        }
    }
}

/// The `Authorization` value of basic auth for `user` and `password`.
fn basic_authorization(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

/// The path a redirected blob is served at, without auth.
const STORAGE: &str = "/storage";

/// What the server task and the handle share.
#[derive(Debug)]
struct Shared {
    auth: Auth,
    /// `http` or `https`, for the token realm.
    scheme: &'static str,
    addr: SocketAddr,
    files: Mutex<HashMap<String, Served>>,
    requests: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread cannot leave these maps half-written.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running test registry; the server stops when it is dropped.
#[derive(Debug)]
pub struct TestRegistry {
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TestRegistry {
    /// A registry on 127.0.0.1 (a free port), plain HTTP.
    pub async fn start(auth: Auth) -> Result<Self, RegistryError> {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), auth).await
    }

    /// A registry on `ip` (a free port), plain HTTP.
    pub async fn start_on(ip: IpAddr, auth: Auth) -> Result<Self, RegistryError> {
        let listener = TcpListener::bind((ip, 0)).await.map_err(|source| RegistryError::Bind { ip, source })?;
        let shared = Self::shared(&listener, ip, auth, "http")?;
        let s = shared.clone();
        let server = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(s.clone(), conn));
            }
        });
        Ok(TestRegistry { shared, server })
    }

    /// A registry on `ip` (a free port) in HTTPS, with the server
    /// certificate of `ca`, which must be made for `ip`.
    #[cfg(feature = "registry-tls")]
    pub async fn start_https(ip: IpAddr, auth: Auth, ca: &TestCa) -> Result<Self, RegistryError> {
        let listener = TcpListener::bind((ip, 0)).await.map_err(|source| RegistryError::Bind { ip, source })?;
        let shared = Self::shared(&listener, ip, auth, "https")?;
        let (s, acceptor) = (shared.clone(), ca.acceptor());
        let server = tokio::spawn(async move {
            while let Ok((conn, peer)) = listener.accept().await {
                let (s, acceptor) = (s.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor.accept(conn).await {
                        Ok(stream) => serve(s, stream).await,
                        Err(e) => tracing::debug!(%peer, error = %e, "test registry: TLS handshake failed"),
                    }
                });
            }
        });
        Ok(TestRegistry { shared, server })
    }

    fn shared(
        listener: &TcpListener,
        ip: IpAddr,
        auth: Auth,
        scheme: &'static str,
    ) -> Result<Arc<Shared>, RegistryError> {
        let addr = listener.local_addr().map_err(|source| RegistryError::Bind { ip, source })?;
        tracing::debug!(%addr, scheme, ?auth, "test registry listening");
        Ok(Arc::new(Shared { auth, scheme, addr, files: Mutex::new(HashMap::new()), requests: Mutex::new(Vec::new()) }))
    }

    /// The address it listens on: the registry part of an image reference.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Loads `image` into repository `repo` under `tag` (replacing what
    /// the tag named); what it serves from now on.
    pub fn push(&self, repo: &str, tag: &str, image: &Image) -> Result<ImageFiles, RegistryError> {
        let files = image.files(repo, tag)?;
        lock(&self.shared.files).extend(files.files.iter().cloned());
        Ok(files)
    }

    /// The path (with query) of every request so far, in arrival order.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared.requests).clone()
    }
}

/// Answers the one request of connection `conn`.
async fn serve<IO: AsyncRead + AsyncWrite + Unpin>(shared: Arc<Shared>, mut conn: IO) {
    let Some(req) = read_request(&mut conn).await else { return };
    lock(&shared.requests).push(req.target.clone());
    let resp = shared.answer(&req);
    tracing::debug!(method = %req.method, target = %req.target, status = resp.status, "test registry");
    write_response(&mut conn, &resp, req.method == "HEAD").await;
}

impl Shared {
    fn answer(&self, req: &Request) -> Response {
        let path = req.target.as_str();
        let authz = req.header("authorization");
        if let Some(query) = path.strip_prefix("/token?").or((path == "/token").then_some("")) {
            return self.token(query, authz);
        }
        if let Some(blob) = path.strip_prefix(STORAGE)
            && matches!(self.auth, Auth::Bearer { .. })
        {
            return match lock(&self.files).get(blob) {
                Some(s) if blob.contains("/blobs/") => self.found(s),
                _ => Response::error("404 Not Found", "BLOB_UNKNOWN", "no such blob"),
            };
        }
        if !path.starts_with("/v2/") {
            return Response::error("404 Not Found", "NOT_FOUND", "not a registry path");
        }
        let authorized = match &self.auth {
            Auth::Anonymous => true,
            Auth::Basic { user, password } => authz == basic_authorization(user, password),
            Auth::Bearer { token, .. } => authz == format!("Bearer {token}"),
        };
        if !authorized {
            return Response::error("401 Unauthorized", "UNAUTHORIZED", "authentication required")
                .header("WWW-Authenticate", self.challenge(path));
        }
        if path == "/v2/" {
            return Response::new("200 OK", "{}").header("Content-Type", "application/json");
        }
        let files = lock(&self.files);
        match files.get(path) {
            Some(_) if matches!(self.auth, Auth::Bearer { .. }) && path.contains("/blobs/") => {
                Response::new("307 Temporary Redirect", "").header("Location", format!("{STORAGE}{path}"))
            }
            Some(s) => self.found(s),
            None if path.contains("/blobs/") => Response::error("404 Not Found", "BLOB_UNKNOWN", "no such blob"),
            None => Response::error("404 Not Found", "MANIFEST_UNKNOWN", "no such manifest"),
        }
    }

    fn found(&self, s: &Served) -> Response {
        Response::new("200 OK", s.body.clone())
            .header("Content-Type", s.content_type.clone())
            .header("Docker-Content-Digest", s.digest.clone())
    }

    /// The `WWW-Authenticate` challenge for a request to `path`.
    fn challenge(&self, path: &str) -> String {
        match &self.auth {
            Auth::Anonymous | Auth::Basic { .. } => "Basic realm=\"swarm-test-registry\"".to_string(),
            Auth::Bearer { service, .. } => {
                let mut c = format!("Bearer realm=\"{}://{}/token\",service=\"{service}\"", self.scheme, self.addr);
                if let Some(repo) = repository_of(path) {
                    c.push_str(&format!(",scope=\"repository:{repo}:pull\""));
                }
                c
            }
        }
    }

    /// The token endpoint: credentials, the service and a pull scope of a
    /// repository it holds are required.
    fn token(&self, query: &str, authz: &str) -> Response {
        let Auth::Bearer { user, password, token, service } = &self.auth else {
            return Response::error("404 Not Found", "NOT_FOUND", "no token endpoint without Bearer auth");
        };
        if authz != basic_authorization(user, password) {
            return Response::error("401 Unauthorized", "UNAUTHORIZED", "bad credentials");
        }
        let files = lock(&self.files);
        let held = |scope: &String| {
            scope.strip_prefix("repository:").and_then(|s| s.strip_suffix(":pull")).is_some_and(|repo| {
                let prefix = format!("/v2/{repo}/");
                files.keys().any(|p| p.starts_with(&prefix))
            })
        };
        if query_values(query, "service") != [service.as_str()] || !query_values(query, "scope").iter().any(held) {
            return Response::error("400 Bad Request", "DENIED", "bad scope or service");
        }
        let body = serde_json::json!({ "token": token }).to_string();
        Response::new("200 OK", body).header("Content-Type", "application/json")
    }
}

/// The repository of `/v2/<repo>/manifests/..` or `/v2/<repo>/blobs/..`.
fn repository_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    ["/manifests/", "/blobs/"].iter().find_map(|k| rest.rfind(k).map(|i| &rest[..i])).filter(|r| !r.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_is_read_from_the_path() {
        assert_eq!(repository_of("/v2/team/busybox/manifests/1"), Some("team/busybox"));
        assert_eq!(repository_of("/v2/a/blobs/sha256:00"), Some("a"));
        assert_eq!(repository_of("/v2/"), None);
        assert_eq!(repository_of("/v2//blobs/x"), None);
    }

    #[test]
    fn credentials_stay_out_of_debug() {
        let text = format!("{:?}", Auth::bearer("u", "pw-secret", "tok-secret", "svc"));
        assert!(!text.contains("secret") && text.contains("svc"), "{text}");
    }
}
